"""Task kind `propagation` (pipeline/tasks/kinds.py): semi-supervised video object segmentation by
label propagation, with no training.

    vssl eval recipes/finetune/propagation.yaml --checkpoint runs/pretrain    # any encoder, or none
    from pipeline.tasks import davis, propagation
    seq = davis.read_sequence("data/synth/davis", "synth000000")
    result = propagation.evaluate_sequence(encoder, seq, propagation.PropagationConfig(context=7))
    result.masks        # (T, H, W) uint8 object ids; frame 0 is the given annotation
    result.scores       # {"J": (objects, T-2), "F": (objects, T-2)}  (pipeline/tasks/metrics.py)
    result.summary      # {"J", "F", "J&F", "objects"} of this sequence
    propagation.summarize([result, ...])   # {"J", "F", "J&F", "objects"}

The protocol of DINO / VideoMAE-style DAVIS evaluations:
1. Features: every frame encoded alone (pipeline/tasks/features.py: repeated to one tubelet; a
   motion-input encoder gets each frame's tubelet in a window of the frames up to it), on
   the encoder's token grid (frames resized to multiples of its stride), L2-normalised per position.
2. Labels: the first annotation as soft one-hot labels on the grid (area-averaged, so a cell on an
   object's edge carries both ids); id 255 (void) counts as background.
3. For frame t, sources are frame 0 (true labels) and the last `context` frames (their propagated
   soft labels). Each target position compares its feature with every source position within
   `radius` grid cells (a square window, |dy| <= r and |dx| <= r; radius < 0: no limit), keeps
   the `topk` most similar, weights them by softmax(similarity / temperature) and averages
   their labels.
4. Soft labels are upsampled bilinearly to the frame size; the argmax is the object id.
`vssl eval` (evaluate) runs it on every sequence of a DAVIS-layout folder (task.davis_root,
task.davis_split): J, F, J&F and truth | prediction strips. The encoder may be any checkpoint
pipeline/models/build.py load_encoder reads, or none (a fresh model.name: the untrained
baseline). task.propagation_scale > 1 enlarges small videos first, so an object spans several
token cells (64 px synthetic frames: 2-4).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from pipeline.config import ConfigError, FinetuneConfig
from pipeline.models.base import VideoBackbone
from pipeline.tasks import davis, overlays
from pipeline.tasks.davis import DavisSequence
from pipeline.tasks.features import resize_to_stride, sequence_features, to_model_input
from pipeline.tasks.kinds import eval_device
from pipeline.tasks.metrics import davis_sequence_scores, davis_summary

ANNOTATIONS = ()  # it reads DAVIS folders, not shards
VOID_ID = 255


@dataclass
class PropagationConfig:
    context: int = 7  # previous frames used as sources, besides the first
    topk: int = 5
    temperature: float = 0.07
    radius: int = 12  # grid cells; < 0 disables the neighbourhood limit
    batch_size: int = 8  # frames per encoder call

    def __post_init__(self) -> None:
        if self.context < 0 or self.topk < 1 or self.temperature <= 0 or self.batch_size < 1:
            raise ValueError(f"PropagationConfig: need context >= 0, topk >= 1, temperature > 0, "
                             f"batch_size >= 1; got {self}")


@dataclass
class PropagationResult:
    name: str
    masks: np.ndarray  # (T, H, W) uint8
    scores: dict[str, Tensor]  # davis_sequence_scores: "J", "F" (objects, evaluated frames)

    @property
    def summary(self) -> dict[str, float]:
        """This sequence's J, F, J&F (means over its objects)."""
        return davis_summary([self.scores])


def grid_labels(mask: Tensor, grid: tuple[int, int]) -> Tensor:
    """(H, W) object ids -> (K, h, w) soft one-hot labels, K = largest id + 1 (void as background)."""
    ids = mask.long().masked_fill(mask == VOID_ID, 0)
    one_hot = F.one_hot(ids, int(ids.max()) + 1).permute(2, 0, 1).float()
    return F.interpolate(one_hot[None], size=grid, mode="area")[0]


def neighbourhood(grid: tuple[int, int], radius: int) -> Tensor | None:
    """(h*w, h*w) bool: position j is within `radius` cells of position i (square window)."""
    if radius < 0:
        return None
    h, w = grid
    rows, cols = torch.arange(h).repeat_interleave(w), torch.arange(w).repeat(h)
    return (((rows[:, None] - rows[None]).abs() <= radius)
            & ((cols[:, None] - cols[None]).abs() <= radius))


def propagate(features: Tensor, first_labels: Tensor, config: PropagationConfig) -> Tensor:
    """features (T, D, h, w) + frame 0's labels (K, h, w) -> soft labels (T, K, h, w) for every frame."""
    frames, dim, h, w = features.shape
    feats = F.normalize(features.flatten(2).transpose(1, 2), dim=-1)  # (T, h*w, D)
    near = neighbourhood((h, w), config.radius)
    labels = [first_labels.flatten(1).T]  # each (h*w, K)
    for t in range(1, frames):
        sources = [0, *range(max(1, t - config.context), t)]
        similarity = feats[t] @ feats[sources].reshape(-1, dim).T  # (h*w, S*h*w)
        if near is not None:
            similarity = similarity.masked_fill(~near.repeat(1, len(sources)), float("-inf"))
        top, index = similarity.topk(min(config.topk, similarity.shape[1]), dim=1)
        weights = (top / config.temperature).softmax(dim=1)  # the cell itself is always in reach
        source_labels = torch.cat([labels[s] for s in sources])  # (S*h*w, K)
        labels.append(torch.einsum("nk,nkc->nc", weights, source_labels[index]))
    return torch.stack(labels).transpose(1, 2).reshape(frames, -1, h, w)


def masks_from_labels(labels: Tensor, size: tuple[int, int]) -> Tensor:
    """Soft labels (T, K, h, w) -> (T, H, W) uint8 ids: bilinear upsampling, then argmax."""
    full = F.interpolate(labels, size=size, mode="bilinear", align_corners=False)
    return full.argmax(dim=1).to(torch.uint8)


@torch.no_grad()
def segment_sequence(encoder: VideoBackbone, frames: np.ndarray, first_mask: np.ndarray,
                     config: PropagationConfig) -> np.ndarray:
    """uint8 frames (T, H, W, 3) + frame 0's ids (H, W) -> predicted ids (T, H, W) uint8."""
    was_training = encoder.training
    encoder.eval()
    try:
        x = resize_to_stride(to_model_input(frames), encoder.output_stride[1:])
        features = sequence_features(encoder, x, config.batch_size).float()
    finally:
        encoder.train(was_training)
    first = torch.as_tensor(first_mask)
    labels = propagate(features, grid_labels(first, tuple(features.shape[-2:])), config)
    masks = masks_from_labels(labels, tuple(first.shape))
    masks[0] = first  # the protocol gives frame 0
    return masks.numpy()


def evaluate_sequence(encoder: VideoBackbone, sequence: DavisSequence,
                      config: PropagationConfig) -> PropagationResult:
    """Propagate the first annotation of `sequence` and score J/F against all its annotations."""
    masks = segment_sequence(encoder, sequence.frames, sequence.masks[0], config)
    return PropagationResult(sequence.name, masks, davis_sequence_scores(masks, sequence.masks))


def summarize(results: list[PropagationResult]) -> dict[str, float]:
    return davis_summary([r.scores for r in results])


def propagate_scaled(encoder: VideoBackbone, sequence: DavisSequence, config: PropagationConfig,
                     scale: int) -> PropagationResult:
    """Label propagation on frames enlarged `scale` times (bicubic; the first mask by repetition),
    so a small video's objects span several token cells; predictions are scored at the original
    size (each enlarged block's centre pixel)."""
    if scale == 1:
        return evaluate_sequence(encoder, sequence, config)
    frames = torch.from_numpy(sequence.frames).permute(0, 3, 1, 2).float()
    frames = F.interpolate(frames, scale_factor=scale, mode="bicubic", align_corners=False)
    frames = frames.clamp(0, 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    first = np.kron(sequence.masks[0], np.ones((scale, scale), dtype=np.uint8))
    masks = segment_sequence(encoder, frames, first, config)[:, scale // 2::scale, scale // 2::scale]
    return PropagationResult(sequence.name, masks, davis_sequence_scores(masks, sequence.masks))


@torch.no_grad()
def evaluate(encoder: VideoBackbone, cfg: FinetuneConfig, out: Path) -> dict:
    task = cfg.task
    config = PropagationConfig(context=task.propagation_context, topk=task.propagation_topk,
                               temperature=task.propagation_temperature, radius=task.propagation_radius)
    encoder = encoder.to(eval_device()).eval()
    results, pictures = [], []
    try:
        names = davis.sequence_names(task.davis_root, task.davis_split)
        for name in names:
            sequence = davis.read_sequence(task.davis_root, name)
            results.append(propagate_scaled(encoder, sequence, config, task.propagation_scale))
            if len(pictures) < task.pictures:
                pictures.append(str(overlays.save_mask_comparison(
                    out / "eval" / f"propagation-{name}.png", sequence.frames, results[-1].masks, sequence.masks)))
    except davis.DavisError as e:
        raise ConfigError(f"task.davis_root: {e}") from None
    return {"metrics": summarize(results), "sequences": {r.name: r.summary for r in results},
            "pictures": pictures}
