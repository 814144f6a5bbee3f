"""(template, search) frame pairs for the box-tracking head, cut from clips with per-frame boxes.

    from pipeline.tasks.track_pairs import random_pairs, sequence_pairs
    pairs = random_pairs(batch["video"], batch["boxes"], template_size=32, context=2.0)
    out = task_model(pairs.template, pairs.search)        # pipeline/tasks/tracking.py
    pairs = sequence_pairs(video[i], boxes[i], 32, 2.0)   # evaluation: every later frame of one clip

The template frame of a clip is its first frame whose box is known (boxes are NaN where the
object is absent or left the crop). The template is a square crop centred on that box, of side
`context` x the box's longer side, resampled to `template_size` pixels (RoIAlign; outside the
frame reads as 0, the dataset mean after normalisation), so the target fills the middle of it
at a known scale. The search is a whole later frame with a known box; the head predicts that
box in the search frame's pixels. Training takes one random later frame per clip (drawn from
the global torch generator, which checkpoints save); evaluation takes every later frame (the
OTB one-pass protocol, with the template fixed to the first frame).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor
from torchvision.ops import roi_align


class FramePairs(NamedTuple):
    template: Tensor  # (P, C, S, S) crops around the template box
    search: Tensor  # (P, C, H, W) whole frames
    boxes: Tensor  # (P, 4) xyxy pixels of the target in the search frames
    clip: Tensor  # (P,) clip index of each pair
    frame: Tensor  # (P,) search frame index of each pair


def template_crops(frames: Tensor, boxes: Tensor, size: int, context: float) -> Tensor:
    """(P, C, H, W) frames and (P, 4) xyxy boxes -> (P, C, size, size) square crops around the boxes."""
    centre = (boxes[:, :2] + boxes[:, 2:]) / 2
    half = context * (boxes[:, 2:] - boxes[:, :2]).amax(dim=1, keepdim=True).clamp(min=1.0) / 2
    regions = torch.cat([torch.arange(len(frames), device=frames.device, dtype=frames.dtype)[:, None],
                         centre - half, centre + half], dim=1)
    return roi_align(frames, regions.to(frames.dtype), output_size=size, aligned=True)


def _known(boxes: Tensor) -> Tensor:
    """(..., T) bool: the box of that frame is known and has area."""
    valid = ~boxes.isnan().any(dim=-1)
    return valid & (boxes[..., 2] > boxes[..., 0]) & (boxes[..., 3] > boxes[..., 1])


def _pairs(video: Tensor, boxes: Tensor, clips: Tensor, firsts: Tensor, frames: Tensor,
           size: int, context: float) -> FramePairs:
    template = template_crops(video[clips, :, firsts], boxes[clips, firsts], size, context)
    return FramePairs(template, video[clips, :, frames], boxes[clips, frames], clips, frames)


def random_pairs(video: Tensor, boxes: Tensor, template_size: int, context: float) -> FramePairs:
    """One pair per clip that has two frames with known boxes; video (B, C, T, H, W), boxes (B, T, 4)."""
    known = _known(boxes)
    clips, firsts, frames = [], [], []
    for clip in range(video.shape[0]):
        where = known[clip].nonzero().flatten()
        if len(where) < 2:
            continue
        later = where[1:]
        clips.append(clip)
        firsts.append(int(where[0]))
        frames.append(int(later[int(torch.randint(len(later), ()))]))
    as_tensor = lambda v: torch.tensor(v, dtype=torch.long, device=video.device)  # noqa: E731
    return _pairs(video, boxes, as_tensor(clips), as_tensor(firsts), as_tensor(frames), template_size, context)


def sequence_pairs(clip: Tensor, boxes: Tensor, template_size: int, context: float) -> FramePairs:
    """Every later frame with a known box against the first known one; clip (C, T, H, W), boxes (T, 4)."""
    where = _known(boxes).nonzero().flatten()
    later = where[1:]
    zeros = torch.zeros(len(later), dtype=torch.long, device=clip.device)
    return _pairs(clip[None], boxes[None], zeros, zeros + (where[0] if len(where) else 0), later,
                  template_size, context)
