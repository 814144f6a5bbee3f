"""Spatial transforms of a clip, identical on every frame, that carry boxes and masks along.

    from pipeline.data.transforms import ClipTransform, TransformSpec
    transform = ClipTransform(TransformSpec(crop="multiscale", crop_size=224, train=True))
    views = transform(video_tchw_uint8, boxes_t4, masks_thw, seed=1234)  # [(video, boxes, masks)]

Built on torchvision.transforms.v2: the clip is a `tv_tensors.Video` (T, C, H, W), per-frame boxes
a `BoundingBoxes` (T, 4) in XYXY pixels (NaN rows = object absent) and masks a `Mask` (T, H, W),
so one draw of crop/flip parameters moves pixels, boxes and masks together.

Training (one view): crop + resize to crop_size x crop_size, then horizontal flip, then optional
RandAugment (same op and magnitude on all frames; with annotations only its photometric ops run,
as torchvision's RandAugment does not move boxes or masks). Crops:

    multiscale      VideoMAE's multi-scale crop: side lengths (1, .875, .75, .66) of the short
                    side, width and height at most one scale step apart, 13 fixed offsets
    random_resized  RandomResizedCrop with area fraction in crop_scale
    center          short side resized to crop_size, centre crop

Evaluation: short side resized to crop_size, then `eval_crops` deterministic square views spread
along the long side (1: centre; 3: start/centre/end). Boxes that leave the view become NaN rows.
Randomness comes from the torch RNG seeded per call with `seed` (the caller's RNG is restored).
Normalisation happens once per batch, in place, in `normalize_`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

CROP_MODES = ("multiscale", "random_resized", "center")
MULTISCALE_SCALES = (1.0, 0.875, 0.75, 0.66)
# 13 offsets in quarters of the free room (VideoMAE's "more fix crop" positions)
_FIXED_OFFSETS = ((0, 0), (0, 4), (4, 0), (4, 4), (2, 2), (0, 2), (4, 2), (2, 0), (2, 4),
                  (1, 1), (1, 3), (3, 1), (3, 3))
_GEOMETRIC_OPS = ("ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate")

View = tuple[Tensor, "Tensor | None", "Tensor | None"]


@dataclass(frozen=True)
class TransformSpec:
    crop: str = "multiscale"
    crop_size: int = 224
    crop_scale: tuple[float, float] = (0.08, 1.0)
    flip_prob: float = 0.5
    rand_augment_ops: int = 0
    rand_augment_magnitude: int = 9
    eval_crops: int = 1
    train: bool = True


class MultiScaleCrop(v2.Transform):
    """Crop a (h, w) region picked from scales of the short side at a fixed offset, then resize."""

    def __init__(self, size: int, scales: tuple[float, ...] = MULTISCALE_SCALES, max_distort: int = 1):
        super().__init__()
        self.size, self.scales, self.max_distort = size, scales, max_distort

    def make_params(self, flat_inputs: list) -> dict:
        height, width = v2.query_size(flat_inputs)
        sides = [max(1, int(min(height, width) * s)) for s in self.scales]
        pairs = [(h, w) for i, h in enumerate(sides) for j, w in enumerate(sides)
                 if abs(i - j) <= self.max_distort]
        crop_h, crop_w = pairs[int(torch.randint(len(pairs), ()))]
        qy, qx = _FIXED_OFFSETS[int(torch.randint(len(_FIXED_OFFSETS), ()))]
        return dict(top=(height - crop_h) * qy // 4, left=(width - crop_w) * qx // 4,
                    height=crop_h, width=crop_w)

    def transform(self, inpt, params: dict):
        return self._call_kernel(F.resized_crop, inpt, **params, size=[self.size, self.size], antialias=True)


class PhotometricRandAugment(v2.RandAugment):
    """RandAugment without its geometric ops, for clips whose boxes/masks must stay aligned."""

    _AUGMENTATION_SPACE = {k: v for k, v in v2.RandAugment._AUGMENTATION_SPACE.items()
                           if k not in _GEOMETRIC_OPS}


def _spatial_pipeline(spec: TransformSpec) -> v2.Compose:
    size = spec.crop_size
    if spec.crop == "multiscale":
        ops: list = [MultiScaleCrop(size)]
    elif spec.crop == "random_resized":
        ops = [v2.RandomResizedCrop(size, scale=spec.crop_scale, antialias=True)]
    elif spec.crop == "center":
        ops = [v2.Resize(size, antialias=True), v2.CenterCrop(size)]
    else:
        raise ValueError(f"crop {spec.crop!r}: must be one of {', '.join(CROP_MODES)}")
    if spec.flip_prob > 0:
        ops.append(v2.RandomHorizontalFlip(spec.flip_prob))
    return v2.Compose(ops)


def eval_views(inputs: tuple, size: int, num_crops: int) -> list[tuple]:
    """Short side -> size, then num_crops square views from start to end of the long side."""
    resized = v2.Resize(size, antialias=True)(inputs)
    height, width = v2.query_size(list(resized))
    room_y, room_x = height - size, width - size
    views = []
    for j in range(num_crops):
        frac = 0.5 if num_crops == 1 else j / (num_crops - 1)
        top, left = (round(room_y * frac), 0) if room_y > room_x else (0, round(room_x * frac))
        views.append(tuple(F.crop(x, top, left, size, size) for x in resized))
    return views


def _absent_to_nan(boxes: Tensor) -> Tensor:
    """Boxes squashed to zero area by a crop (the object left the view) become NaN rows."""
    boxes = boxes.as_subclass(Tensor).float()
    gone = (boxes[:, 2] <= boxes[:, 0]) | (boxes[:, 3] <= boxes[:, 1])
    return boxes.masked_fill(gone[:, None], float("nan"))


class ClipTransform:
    def __init__(self, spec: TransformSpec):
        self.spec = spec
        self._spatial = _spatial_pipeline(spec) if spec.train else None
        self._augment = self._augment_annotated = None
        if spec.train and spec.rand_augment_ops > 0:
            args = dict(num_ops=spec.rand_augment_ops, magnitude=spec.rand_augment_magnitude)
            self._augment = v2.RandAugment(**args)
            self._augment_annotated = PhotometricRandAugment(**args)

    def __call__(self, video: Tensor, boxes: Tensor | None = None, masks: Tensor | None = None,
                 seed: int = 0) -> list[View]:
        """video (T, C, H, W) uint8, boxes (T, 4) XYXY, masks (T, H, W) -> list of views."""
        inputs: tuple = (tv_tensors.Video(video),)
        if boxes is not None:
            inputs += (tv_tensors.BoundingBoxes(boxes, format="XYXY", canvas_size=tuple(video.shape[-2:])),)
        if masks is not None:
            inputs += (tv_tensors.Mask(masks),)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            if self.spec.train:
                view = list(self._spatial(inputs))
                augment = self._augment_annotated if len(inputs) > 1 else self._augment
                if augment is not None:  # RandAugment takes the video alone
                    view[0] = augment(view[0])
                views = [view]
            else:
                views = eval_views(inputs, self.spec.crop_size, self.spec.eval_crops)
        out = []
        for view in views:
            view = list(view)
            v_boxes = _absent_to_nan(view.pop(1)) if boxes is not None else None
            v_masks = view.pop(1).as_subclass(Tensor) if masks is not None else None
            out.append((view[0].as_subclass(Tensor), v_boxes, v_masks))
        return out


def normalize_(video: Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> Tensor:
    """In place: float video (n, C, T, H, W) with values in [0, 255] -> (x / 255 - mean) / std."""
    scale = torch.tensor([1.0 / (255.0 * s) for s in std]).view(1, -1, 1, 1, 1)
    bias = torch.tensor([-m / s for m, s in zip(mean, std)]).view(1, -1, 1, 1, 1)
    return video.mul_(scale).add_(bias)
