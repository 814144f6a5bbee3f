"""Mixup and CutMix for clips: one mixing box over every frame, soft targets, label smoothing.

    from pipeline.tasks.mixing import ClipMixer, soft_cross_entropy
    mixer = ClipMixer(num_classes=400, mixup_alpha=0.8, cutmix_alpha=1.0, smoothing=0.1)
    video, targets = mixer(batch["video"], batch["label"])     # (B, C, T, H, W), (B, classes)
    loss = soft_cross_entropy(logits, targets)

timm's Mixup cuts its box out of the last two dimensions of (B, C, H, W) but pastes it with
x[:, :, y0:y1, x0:x1], which on a clip (B, C, T, H, W) would slice time and height. Here the
box is cut from (H, W) and pasted into every frame, so the pasted region moves the way the other
clip moves: a clip-consistent CutMix. As in timm, a batch is mixed with its reverse (sample i
with sample B-1-i), lam ~ Beta(alpha, alpha), the CutMix box is drawn at area 1 - lam, clipped
to the frame and lam is then corrected to the area really kept. Randomness comes from the global
torch generator, which training checkpoints save, so a resumed run mixes the same way.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


def one_hot_targets(labels: Tensor, num_classes: int, smoothing: float = 0.0) -> Tensor:
    """(B,) integer labels -> (B, classes) with `smoothing` spread evenly over every class."""
    off = smoothing / num_classes
    return torch.full((labels.shape[0], num_classes), off, device=labels.device).scatter_(
        1, labels[:, None], 1.0 - smoothing + off)


def cutmix_box(height: int, width: int, lam: float) -> tuple[int, int, int, int]:
    """(y0, y1, x0, x1): a box of area about (1 - lam) of the frame at a uniform random centre,
    clipped to the frame (so it may be smaller)."""
    ratio = math.sqrt(1.0 - lam)
    cut_h, cut_w = int(height * ratio), int(width * ratio)
    cy, cx = int(torch.randint(height, ())), int(torch.randint(width, ()))
    y0, y1 = max(cy - cut_h // 2, 0), min(cy + cut_h // 2, height)
    x0, x1 = max(cx - cut_w // 2, 0), min(cx + cut_w // 2, width)
    return y0, y1, x0, x1


class ClipMixer:
    def __init__(self, num_classes: int, mixup_alpha: float = 0.0, cutmix_alpha: float = 0.0,
                 prob: float = 1.0, switch_prob: float = 0.5, smoothing: float = 0.0) -> None:
        self.num_classes, self.mixup_alpha, self.cutmix_alpha = num_classes, mixup_alpha, cutmix_alpha
        self.prob, self.switch_prob, self.smoothing = prob, switch_prob, smoothing

    @property
    def active(self) -> bool:
        return self.prob > 0 and (self.mixup_alpha > 0 or self.cutmix_alpha > 0)

    def _draw(self) -> tuple[float, bool]:
        """(lam, use cutmix); lam = 1 means no mixing."""
        if not self.active or float(torch.rand(())) >= self.prob:
            return 1.0, False
        cutmix = self.cutmix_alpha > 0 and (self.mixup_alpha == 0 or float(torch.rand(())) < self.switch_prob)
        alpha = self.cutmix_alpha if cutmix else self.mixup_alpha
        lam = float(torch.distributions.Beta(alpha, alpha).sample())
        return lam, cutmix

    def __call__(self, video: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        """Mixed clips (a new tensor) and soft targets for a batch (B, C, T, H, W), labels (B,)."""
        targets = one_hot_targets(labels, self.num_classes, self.smoothing)
        lam, cutmix = self._draw()
        if lam == 1.0:
            return video, targets
        partner = video.flip(0)
        if cutmix:
            height, width = video.shape[-2:]
            y0, y1, x0, x1 = cutmix_box(height, width, lam)
            video = video.clone()
            video[..., y0:y1, x0:x1] = partner[..., y0:y1, x0:x1]
            lam = 1.0 - (y1 - y0) * (x1 - x0) / (height * width)
        else:
            video = video * lam + partner * (1.0 - lam)
        return video, targets * lam + targets.flip(0) * (1.0 - lam)


def soft_cross_entropy(logits: Tensor, targets: Tensor) -> Tensor:
    """Mean over the batch of -sum(targets * log_softmax(logits))."""
    return -(targets * F.log_softmax(logits.float(), dim=-1)).sum(dim=-1).mean()
