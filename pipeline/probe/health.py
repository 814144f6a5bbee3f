"""Label-free health of an encoder's pooled features: spread, effective rank, dead channels.

    stats = feature_health(pooled)     # pooled (N, D), one row per clip
    stats["feature_std"], stats["rankme"], stats["dead_channels"]

- feature_std: the mean over channels of the std across clips of the L2-normalised features,
  times sqrt(D) - about 1 for features spread evenly on the sphere, 0 when every clip maps to
  the same direction (SimSiam's collapse measure).
- rankme: exp of the entropy of the normalised singular values of the (N, D) feature matrix
  (RankMe, Garrido et al. 2023): the number of directions the features really use, between 1 and
  min(N, D).
- dead_channels: the fraction of channels whose std across clips is below 1% of the median
  channel's (a channel that no longer varies carries nothing).

COLLAPSED says when those figures mean collapse; the trainer warns after COLLAPSE_PATIENCE
evaluations in a row below it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

COLLAPSE_STD = 0.05  # feature_std below this...
COLLAPSE_RANK = 2.0  # ...or rankme below this is collapse
COLLAPSE_PATIENCE = 3  # evaluations in a row before the warning


def rankme(features: Tensor, eps: float = 1e-7) -> float:
    singular = torch.linalg.svdvals(features.double())
    p = singular / singular.sum() + eps
    return float(torch.exp(-(p * p.log()).sum()))


def feature_health(pooled: Tensor) -> dict[str, float]:
    x = pooled.double()
    std = F.normalize(x, dim=-1).std(dim=0)
    channel_std = x.std(dim=0)
    dead = channel_std < 0.01 * channel_std.median().clamp(min=1e-12)
    return {"feature_std": float(std.mean() * x.shape[1] ** 0.5), "rankme": rankme(x),
            "dead_channels": float(dead.double().mean())}


def collapsed(stats: dict[str, float]) -> bool:
    return stats["feature_std"] < COLLAPSE_STD or stats["rankme"] < COLLAPSE_RANK
