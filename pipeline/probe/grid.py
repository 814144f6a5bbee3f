"""A grid of probes (learning rates x weight decays) trained at once, chosen on held-out labels.

    holdout = holdout_rows(labels, keys, fraction=0.2)            # per class, by key hash
    params = {"weight": torch.zeros(G, D, C), ...}                 # every tensor leads with G
    train_grid(forward, params, inputs, labels, lrs, wds, epochs=100, batch_size=256, seed=0)
    scores = view_scores(forward, params, inputs_of_videos)        # (G, N, C), views' softmax averaged

`forward(params, x)` maps a mini-batch of B views to logits (G, B, C) for all G members at once,
so the grid costs one batched computation per step rather than G trainings. Each member is
AdamW with its own (lr, weight decay) and a cosine schedule; the loss is the sum over members of
their mean cross-entropy, so members never interact. Selection is on a held-out part of the
training labels, chosen by a hash of the sample keys (the same videos whatever the encoder),
never on the reported split.
"""

from __future__ import annotations

import hashlib
import itertools
import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

Forward = Callable[[dict[str, Tensor], Tensor], Tensor]


def grid(lrs: list[float], weight_decays: list[float]) -> tuple[Tensor, Tensor]:
    """Every (lr, weight decay) pair as two (G,) tensors."""
    pairs = list(itertools.product(lrs, weight_decays))
    return torch.tensor([p[0] for p in pairs]), torch.tensor([p[1] for p in pairs])


def holdout_rows(labels: Tensor, keys: list[str], fraction: float) -> Tensor:
    """(N,) bool: per class, the round(fraction x count) samples (at least 1, never all) with the
    smallest key hashes."""
    held = torch.zeros(len(keys), dtype=torch.bool)
    order = sorted(range(len(keys)), key=lambda i: hashlib.sha256(keys[i].encode()).hexdigest())
    for c in labels.unique().tolist():
        rows = [i for i in order if int(labels[i]) == c]
        take = min(len(rows) - 1, max(1, round(fraction * len(rows))))
        held[rows[:take]] = True
    return held


class GridAdamW:
    """AdamW over tensors that lead with the grid dimension G, member g with lr[g] and wd[g]."""

    def __init__(self, params: list[Tensor], lrs: Tensor, weight_decays: Tensor,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8) -> None:
        self.params, self.lrs, self.wds, self.betas, self.eps = params, lrs, weight_decays, betas, eps
        self.m = [torch.zeros_like(p) for p in params]
        self.v = [torch.zeros_like(p) for p in params]
        self.t = 0

    @torch.no_grad()
    def step(self, scale: float) -> None:
        self.t += 1
        b1, b2 = self.betas
        for p, m, v in zip(self.params, self.m, self.v):
            shape = (-1,) + (1,) * (p.dim() - 1)
            lr, wd = (self.lrs * scale).view(shape), self.wds.view(shape)
            p.mul_(1 - lr * wd)
            m.mul_(b1).add_(p.grad, alpha=1 - b1)
            v.mul_(b2).addcmul_(p.grad, p.grad, value=1 - b2)
            denom = (v / (1 - b2 ** self.t)).sqrt_().add_(self.eps)
            p.sub_(lr * (m / (1 - b1 ** self.t)) / denom)
            p.grad = None


def train_grid(forward: Forward, params: dict[str, Tensor], inputs: Tensor, labels: Tensor, lrs: Tensor,
               wds: Tensor, epochs: int, batch_size: int, seed: int) -> dict[str, Tensor]:
    """Train every member on (inputs (M, ...), labels (M,)) - one row per view - in place."""
    for p in params.values():
        p.requires_grad_(True)
    optimizer = GridAdamW(list(params.values()), lrs, wds)
    gen = torch.Generator().manual_seed(seed)
    steps_per_epoch = math.ceil(inputs.shape[0] / batch_size)
    total = epochs * steps_per_epoch
    for epoch in range(epochs):
        order = torch.randperm(inputs.shape[0], generator=gen)
        for i in range(steps_per_epoch):
            rows = order[i * batch_size:(i + 1) * batch_size]
            logits = forward(params, inputs[rows].float())  # (G, B, C)
            loss = F.cross_entropy(logits.flatten(0, 1), labels[rows].repeat(logits.shape[0]), reduction="sum")
            (loss / rows.numel()).backward()
            step = epoch * steps_per_epoch + i
            optimizer.step(0.5 * (1 + math.cos(math.pi * step / total)))
    for p in params.values():
        p.requires_grad_(False)
    return params


@torch.no_grad()
def view_scores(forward: Forward, params: dict[str, Tensor], inputs: Tensor, batch_size: int = 512) -> Tensor:
    """inputs (N, V, ...) -> (G, N, C): each member's softmax averaged over a video's V views."""
    n, v = inputs.shape[:2]
    flat = inputs.reshape(n * v, *inputs.shape[2:])
    probs = torch.cat([forward(params, flat[i:i + batch_size].float()).softmax(-1)
                       for i in range(0, n * v, batch_size)], dim=1)
    return probs.reshape(probs.shape[0], n, v, -1).mean(dim=2)


def top1(scores: Tensor, labels: Tensor) -> Tensor:
    """(G, N, C) scores -> (G,) top-1 accuracy of each member."""
    return (scores.argmax(-1) == labels).float().mean(-1)
