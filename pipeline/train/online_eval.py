"""Representation monitors while pretraining (train.eval_every > 0): is the encoder learning, or
collapsing?

    online = OnlineEval(cfg, objective)
    stats = online.run(step, device)   # {"knn_top1", "feature_std", "rankme", "dead_channels"}

Every train.eval_every steps the frozen encoder (eval mode, no gradient) encodes the first
train.eval_videos videos of train.eval_split (the train split when the shards have no such
split), one centre view each, in the loader's fixed evaluation order - the same videos every
time. From their pooled features: the label-free health figures of pipeline/probe/health.py and,
when the videos carry labels of at least two classes, the weighted k-NN top-1 (k 20, T 0.07) of a
held-out half (per class, by key hash) against the other half. Nothing here draws from the
training RNG or moves the training loader, so a resumed run logs the same losses.
After COLLAPSE_PATIENCE evaluations in a row below the collapse thresholds, one warning line.
"""

from __future__ import annotations

import dataclasses

import torch

from pipeline.config import ConfigError, PretrainConfig
from pipeline.probe.features import extract
from pipeline.probe.grid import holdout_rows
from pipeline.probe.health import COLLAPSE_PATIENCE, COLLAPSE_RANK, COLLAPSE_STD, collapsed, feature_health
from pipeline.probe.knn import knn_predict, video_vectors
from pipeline.train.build import encoder_of

KNN_K, KNN_TEMPERATURE = 20, 0.07


class OnlineEval:
    def __init__(self, cfg: PretrainConfig, objective) -> None:
        tc = cfg.train
        self.encoder = encoder_of(objective)
        if self.encoder is None:
            raise ConfigError("train.eval_every: this objective has no encoder to evaluate")
        self.videos, self.split, self.bad_in_row = tc.eval_videos, tc.eval_split, 0
        self.data = dataclasses.replace(cfg.data, crop="center", eval_clips=1, eval_crops=1, mask_type="none",
                                        num_workers=min(cfg.data.num_workers, 2), sources=list(cfg.data.sources))

    def _features(self, device: torch.device):
        try:
            return extract(self.encoder, self.data, self.split, max_tokens=1, tokens=False, device=device,
                           limit=self.videos)
        except ConfigError:
            if self.split == "train":
                raise
            self.split = "train"  # the shards have no such split: evaluate on training videos
            return self._features(device)

    @torch.no_grad()
    def run(self, device: torch.device) -> tuple[dict[str, float], str | None]:
        """(figures, a warning line or None). Under ZeRO-3 every rank must call it."""
        was_training = self.encoder.training
        try:
            features = self._features(device)
        finally:
            self.encoder.train(was_training)
        stats = feature_health(features.pooled[:, 0])
        labelled = features.labelled()
        if labelled.labels.unique().numel() >= 2:
            held = holdout_rows(labelled.labels, labelled.keys, 0.5)
            bank, queries = video_vectors(labelled.pooled[~held]), video_vectors(labelled.pooled[held])
            predicted = knn_predict(bank, labelled.labels[~held], queries, KNN_K, KNN_TEMPERATURE,
                                    int(labelled.labels.max()) + 1)
            stats["knn_top1"] = float((predicted == labelled.labels[held]).float().mean())
        self.bad_in_row = self.bad_in_row + 1 if collapsed(stats) else 0
        warning = None
        if self.bad_in_row == COLLAPSE_PATIENCE:
            warning = (f"representation collapse: feature_std {stats['feature_std']:.3f} (collapse < {COLLAPSE_STD}), "
                       f"rankme {stats['rankme']:.2f} (collapse < {COLLAPSE_RANK}) for {COLLAPSE_PATIENCE} "
                       f"evaluations in a row on {len(features.keys)} {self.split} videos")
        return stats, warning
