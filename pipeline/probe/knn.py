"""Weighted k-NN classification on frozen features (the protocol of DINO and solo-learn).

    predicted = knn_predict(bank, bank_labels, queries, k=20, temperature=0.07, num_classes=8)

Features are L2-normalised (a video's views averaged first); each query takes its k most
cosine-similar bank entries, each voting for its label with weight exp(similarity / T); the
class with the largest total wins (ties: the lower class id).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def video_vectors(pooled: Tensor) -> Tensor:
    """(N, V, D) view features -> (N, D): the mean of the L2-normalised views, L2-normalised."""
    return F.normalize(F.normalize(pooled.float(), dim=-1).mean(dim=1), dim=-1)


def knn_scores(bank: Tensor, bank_labels: Tensor, queries: Tensor, k: int, temperature: float,
               num_classes: int, chunk: int = 1024) -> Tensor:
    """(Q, C) summed vote weights per class, bank (N, D) and queries (Q, D) L2-normalised."""
    k = min(k, bank.shape[0])
    out = []
    for start in range(0, queries.shape[0], chunk):
        sim = queries[start:start + chunk] @ bank.T
        top, idx = sim.topk(k, dim=1)
        votes = torch.zeros(sim.shape[0], num_classes, dtype=sim.dtype)
        out.append(votes.scatter_add_(1, bank_labels[idx], (top / temperature).exp()))
    return torch.cat(out)


def knn_predict(bank: Tensor, bank_labels: Tensor, queries: Tensor, k: int, temperature: float,
                num_classes: int) -> Tensor:
    return knn_scores(bank, bank_labels, queries, k, temperature, num_classes).argmax(dim=1)
