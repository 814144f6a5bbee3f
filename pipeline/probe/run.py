"""Frozen evaluation of one encoder: features once per split, then every probe of probe.methods.

    report = run_probes(load_config(ProbeConfig, "recipes/probe/synth.yaml", overrides))
    report["knn"]["k20"], report["linear"]["top1"], report["attentive"]["top1"]

For each grid method (linear, attentive) the members are trained on the training split minus a
held-out part of it (probe.holdout_fraction per class), the member best on the held-out part is
chosen, trained again on the whole training split, and scored on probe.eval_split - the only
number reported for it. k-NN has nothing to choose: each k is reported. The report (JSON) also
records what every grid member scored on the held-out part.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from pipeline.config import ConfigError, ProbeConfig, to_dict
from pipeline.models.build import build_encoder
from pipeline.probe.attentive import attentive_grid
from pipeline.probe.features import FeatureSet, split_features
from pipeline.probe.grid import grid, holdout_rows, top1, train_grid, view_scores
from pipeline.probe.knn import knn_predict, video_vectors
from pipeline.probe.linear import linear_grid


def _views(x: torch.Tensor) -> torch.Tensor:
    """(N, V, ...) -> (N*V, ...): every view a training row."""
    return x.reshape(x.shape[0] * x.shape[1], *x.shape[2:])


def _fit(method: str, train: FeatureSet, num_classes: int, members: int, lrs, wds, cfg) -> tuple:
    """(forward, params) of `members` probes trained on `train`'s views."""
    p = cfg.probe
    if method == "linear":
        inputs, epochs = train.pooled, p.linear_epochs
        forward, params = linear_grid(_views(inputs), num_classes, members)
    else:
        inputs, epochs = train.tokens, p.attentive_epochs
        forward, params = attentive_grid(inputs.shape[-1], num_classes, members, p.seed)
    labels = train.labels.repeat_interleave(inputs.shape[1])
    train_grid(forward, params, _views(inputs), labels, lrs, wds, epochs, p.batch_size, p.seed)
    return forward, params


def grid_probe(method: str, train: FeatureSet, test: FeatureSet, num_classes: int, cfg: ProbeConfig) -> dict:
    p = cfg.probe
    lrs, wds = grid(*((p.linear_lrs, p.linear_weight_decays) if method == "linear"
                      else (p.attentive_lrs, p.attentive_weight_decays)))
    held = holdout_rows(train.labels, train.keys, p.holdout_fraction)
    fit, check = train.subset((~held).nonzero().flatten()), train.subset(held.nonzero().flatten())
    forward, params = _fit(method, fit, num_classes, len(lrs), lrs, wds, cfg)
    pick = (lambda fs: fs.pooled) if method == "linear" else (lambda fs: fs.tokens)
    held_top1 = top1(view_scores(forward, params, pick(check)), check.labels)
    best = int(held_top1.argmax())
    forward, params = _fit(method, train, num_classes, 1, lrs[best:best + 1], wds[best:best + 1], cfg)
    test_top1 = float(top1(view_scores(forward, params, pick(test)), test.labels)[0])
    return {"top1": test_top1, "lr": float(lrs[best]), "weight_decay": float(wds[best]),
            "holdout_top1": float(held_top1[best]),
            "grid": [{"lr": float(lr), "weight_decay": float(wd), "holdout_top1": float(acc)}
                     for lr, wd, acc in zip(lrs, wds, held_top1)]}


def knn_probe(train: FeatureSet, test: FeatureSet, num_classes: int, cfg: ProbeConfig) -> dict:
    bank, queries = video_vectors(train.pooled), video_vectors(test.pooled)
    return {f"k{k}": float((knn_predict(bank, train.labels, queries, k, cfg.probe.knn_temperature, num_classes)
                            == test.labels).float().mean()) for k in cfg.probe.knn_k}


def run_probes(cfg: ProbeConfig, out: Path | None = None) -> dict:
    """Every probe of cfg.probe.methods on cfg.model's encoder; writes OUT/probe.json."""
    p = cfg.probe
    out = Path(out or p.output_dir)
    torch.manual_seed(p.seed)  # the random-init baseline's weights
    encoder = build_encoder(cfg.model, cfg.data.num_frames, cfg.data.crop_size)
    started = time.perf_counter()
    cache = out / "features" if p.cache else None
    tokens = "attentive" in p.methods
    sets, cached = {}, {}
    for role, split in (("train", p.train_split), ("eval", p.eval_split)):
        features, cached[role] = split_features(encoder, cfg.data, split, p.max_tokens, tokens, cache)
        sets[role] = features.labelled()
        if not sets[role].keys:
            raise ConfigError(f"probe.{role}_split: no labelled video in split {split!r} of {cfg.data.shards}")
    train, test = sets["train"], sets["eval"]
    num_classes = int(max(train.labels.max(), test.labels.max())) + 1
    seconds = {"features": time.perf_counter() - started}
    report = {"encoder": cfg.model.pretrained or f"{cfg.model.name} (random init, seed {p.seed})",
              "videos": {"train": len(train.keys), "eval": len(test.keys)}, "views": int(train.pooled.shape[1]),
              "features_cached": cached, "num_classes": num_classes}
    for method in p.methods:
        t0 = time.perf_counter()
        report[method] = knn_probe(train, test, num_classes, cfg) if method == "knn" else \
            grid_probe(method, train, test, num_classes, cfg)
        seconds[method] = time.perf_counter() - t0
    report["seconds"] = seconds
    report["config"] = to_dict(cfg)
    out.mkdir(parents=True, exist_ok=True)
    (out / "probe.json").write_text(json.dumps(report, indent=2))
    report["output"] = str(out / "probe.json")
    return report


def table(report: dict) -> str:
    """The report as a few aligned lines."""
    lines = [f"probe of {report['encoder']}: {report['videos']['train']} train / {report['videos']['eval']} eval "
             f"videos, {report['views']} view(s) each",
             f"{'method':<12}{'top-1':>8}   chosen on held-out training labels"]
    for k, value in report.get("knn", {}).items():
        lines.append(f"{'knn ' + k:<12}{value:>8.4f}")
    for method in ("linear", "attentive"):
        if method in report:
            r = report[method]
            lines.append(f"{method:<12}{r['top1']:>8.4f}   lr {r['lr']:g}, weight decay {r['weight_decay']:g} "
                         f"(held-out {r['holdout_top1']:.4f})")
    return "\n".join(lines)
