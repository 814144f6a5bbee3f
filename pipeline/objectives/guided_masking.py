"""Motion-guided tube masking: keep visible the tubes where the clip moves (objective.guided_masking).

    objective:
      guided_masking: motion      # none (uniform tube masks from the loader) | motion
      guide_strength: 2.0         # 0 = uniform; larger = visible tokens concentrate on motion

Uniform tube masking spends most visible tokens on static background. Here each spatial position
gets a motion score (mean absolute frame difference inside its patch column, over the whole clip),
standardised per clip; the positions kept visible are drawn without replacement with probability
proportional to exp(strength * score) (Gumbel top-k). The count of visible positions equals the
loader's tube mask, so encoder cost and mask ratio are unchanged, and the draw uses the global
torch RNG (checkpointed), so runs stay exactly resumable.
"""

from __future__ import annotations

import torch
from torch import Tensor


def motion_scores(video: Tensor, patch: tuple[int, int, int]) -> Tensor:
    """(B, C, T, H, W) -> (B, h*w): standardised mean |frame difference| per spatial patch."""
    _, ph, pw = patch
    diff = (video[:, :, 1:] - video[:, :, :-1]).abs().mean(dim=(1, 2))  # (B, H, W)
    pooled = torch.nn.functional.avg_pool2d(diff[:, None], (ph, pw))[:, 0]  # (B, h, w)
    flat = pooled.flatten(1)
    return (flat - flat.mean(1, keepdim=True)) / (flat.std(1, keepdim=True) + 1e-6)


def guided_tube_mask(video: Tensor, patch: tuple[int, int, int], num_visible: int, strength: float) -> Tensor:
    """A tube mask (B, t*h*w), True = hidden, keeping `num_visible` spatial positions per clip."""
    b = video.shape[0]
    t = video.shape[2] // patch[0]
    scores = motion_scores(video.float(), patch)
    u = torch.rand(scores.shape, device=scores.device).clamp_(1e-9, 1 - 1e-9)
    keys = strength * scores - torch.log(-torch.log(u))  # Gumbel-perturbed log-weights
    keep = keys.topk(num_visible, dim=1).indices
    spatial = torch.ones(b, scores.shape[1], dtype=torch.bool, device=video.device)
    spatial.scatter_(1, keep, False)
    return spatial.repeat(1, t)
