"""Spatial transforms of a clip, identical on every frame, that carry boxes and masks along.

    from pipeline.data.transforms import ClipTransform, TransformSpec
    transform = ClipTransform(TransformSpec(crop="multiscale", crop_size=224, train=True))
    views = transform(video_tchw_uint8, boxes_t4, masks_thw, seed=1234)  # [(video, boxes, masks)]

Built on torchvision.transforms.v2: the clip is a `tv_tensors.Video` (T, C, H, W), per-frame boxes
a `BoundingBoxes` (T, 4) in XYXY pixels (NaN rows = object absent) and masks a `Mask` (T, H, W);
one draw of crop/flip parameters is applied to all three by v2's functional kernels, which move
pixels, boxes and masks alike. (Called directly rather than through v2.Compose, whose dispatch
cost per clip was larger than the resize itself.)

Training (one view): crop + resize to crop_size x crop_size, then horizontal flip, then optional
RandAugment (same op and magnitude on all frames; with annotations only its photometric ops run,
as torchvision's RandAugment does not move boxes or masks). Crops:

    multiscale      VideoMAE's multi-scale crop: side lengths (1, .875, .75, .66) of the short
                    side, width and height at most one scale step apart, 13 fixed offsets
    random_resized  RandomResizedCrop with area fraction in crop_scale
    center          the central square of the short side, resized

Evaluation: short side resized to crop_size, then `eval_crops` deterministic square views spread
along the long side (1: centre; 3: start/centre/end). Boxes that leave the view become NaN rows.
Randomness comes from the torch RNG seeded per call with `seed` (the caller's RNG is restored).
Clips stay uint8 here; pipeline/data/normalize.py turns a batch into normalised float32 on the
device that trains on it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import get_args

import torch
from torch import Tensor
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from pipeline.config import Crop

MULTISCALE_SCALES = (1.0, 0.875, 0.75, 0.66)
# 13 offsets in quarters of the free room (VideoMAE's "more fix crop" positions)
MULTISCALE_OFFSETS = ((0, 0), (0, 4), (4, 0), (4, 4), (2, 2), (0, 2), (4, 2), (2, 0), (2, 4),
                  (1, 1), (1, 3), (3, 1), (3, 3))
_GEOMETRIC_OPS = ("ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate")

View = tuple[Tensor, "Tensor | None", "Tensor | None"]


@dataclass(frozen=True)
class TransformSpec:
    crop: Crop = "multiscale"
    crop_size: int = 224
    crop_scale: tuple[float, float] = (0.08, 1.0)
    flip_prob: float = 0.5
    rand_augment_ops: int = 0
    rand_augment_magnitude: int = 9
    eval_crops: int = 1
    train: bool = True


def multiscale_params(height: int, width: int, scales: tuple[float, ...] = MULTISCALE_SCALES,
                      max_distort: int = 1) -> dict:
    """A (h, w) crop picked from scales of the short side, at one of the fixed offsets."""
    sides = [max(1, int(min(height, width) * s)) for s in scales]
    pairs = [(h, w) for i, h in enumerate(sides) for j, w in enumerate(sides) if abs(i - j) <= max_distort]
    crop_h, crop_w = pairs[int(torch.randint(len(pairs), ()))]
    qy, qx = MULTISCALE_OFFSETS[int(torch.randint(len(MULTISCALE_OFFSETS), ()))]
    return dict(top=(height - crop_h) * qy // 4, left=(width - crop_w) * qx // 4, height=crop_h, width=crop_w)


def center_params(height: int, width: int) -> dict:
    """The central square of side min(height, width): resized, it is Resize(short side) + CenterCrop."""
    side = min(height, width)
    return dict(top=(height - side) // 2, left=(width - side) // 2, height=side, width=side)


class PhotometricRandAugment(v2.RandAugment):
    """RandAugment without its geometric ops, for clips whose boxes/masks must stay aligned."""

    _AUGMENTATION_SPACE = {k: v for k, v in v2.RandAugment._AUGMENTATION_SPACE.items()
                           if k not in _GEOMETRIC_OPS}


def eval_views(inputs: list, size: int, num_crops: int) -> list[list]:
    """Short side -> size, then num_crops square views from start to end of the long side."""
    resized = [F.resize(x, [size], antialias=True) for x in inputs]
    height, width = resized[0].shape[-2:]
    room_y, room_x = height - size, width - size
    views = []
    for j in range(num_crops):
        frac = 0.5 if num_crops == 1 else j / (num_crops - 1)
        top, left = (round(room_y * frac), 0) if room_y > room_x else (0, round(room_x * frac))
        views.append([F.crop(x, top, left, size, size) for x in resized])
    return views


def _absent_to_nan(boxes: Tensor) -> Tensor:
    """Boxes squashed to zero area by a crop (the object left the view) become NaN rows."""
    boxes = boxes.as_subclass(Tensor).float()
    gone = (boxes[:, 2] <= boxes[:, 0]) | (boxes[:, 3] <= boxes[:, 1])
    return boxes.masked_fill(gone[:, None], float("nan"))


class ClipTransform:
    def __init__(self, spec: TransformSpec):
        if spec.crop not in get_args(Crop):
            raise ValueError(f"crop {spec.crop!r}: must be one of {', '.join(get_args(Crop))}")
        self.spec = spec
        self._random_resized = v2.RandomResizedCrop(spec.crop_size, scale=spec.crop_scale)
        self._augment = self._augment_annotated = None
        if spec.train and spec.rand_augment_ops > 0:
            args = dict(num_ops=spec.rand_augment_ops, magnitude=spec.rand_augment_magnitude)
            self._augment = v2.RandAugment(**args)
            self._augment_annotated = PhotometricRandAugment(**args)

    def _train_view(self, inputs: list) -> list:
        """One draw of crop and flip, applied by v2's kernels to the video, boxes and masks alike."""
        height, width = inputs[0].shape[-2:]
        if self.spec.crop == "multiscale":
            params = multiscale_params(height, width)
        elif self.spec.crop == "random_resized":
            params = self._random_resized.make_params(inputs[:1])
        else:
            params = center_params(height, width)
        flip = bool(torch.rand(()) < self.spec.flip_prob)
        size = [self.spec.crop_size] * 2
        view = [F.resized_crop(x, **params, size=size, antialias=True) for x in inputs]
        if flip:
            view = [F.horizontal_flip(x) for x in view]
        augment = self._augment_annotated if len(inputs) > 1 else self._augment
        if augment is not None:  # RandAugment takes the video alone
            view[0] = augment(view[0])
        return view

    def __call__(self, video: Tensor, boxes: Tensor | None = None, masks: Tensor | None = None,
                 seed: int = 0) -> list[View]:
        """video (T, C, H, W) uint8, boxes (T, 4) XYXY, masks (T, H, W) -> list of views."""
        inputs: list = [tv_tensors.Video(video)]
        if boxes is not None:
            inputs.append(tv_tensors.BoundingBoxes(boxes, format="XYXY", canvas_size=tuple(video.shape[-2:])))
        if masks is not None:
            inputs.append(tv_tensors.Mask(masks))
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(seed)  # torch.manual_seed also queues CUDA/XPU seeding
            if self.spec.train:
                views = [self._train_view(inputs)]
            else:
                views = eval_views(inputs, self.spec.crop_size, self.spec.eval_crops)
        out = []
        for view in views:
            v_boxes = _absent_to_nan(view.pop(1)) if boxes is not None else None
            v_masks = view.pop(1).as_subclass(Tensor) if masks is not None else None
            out.append((view[0].as_subclass(Tensor), v_boxes, v_masks))
        return out
