"""Features of a frozen encoder, extracted once per split and cached, for every probe to share.

    features = split_features(encoder, cfg.data, "train", max_tokens=256, cache_dir=OUT / "features")
    features.pooled       # (N, V, D) float32: each video's V views (data.eval_clips x eval_crops)
    features.tokens       # (N, V, T, D) float16: the final token grid, average-pooled to <= max_tokens
    features.labels       # (N,) long; -1 for unlabelled videos
    features.keys         # N sample keys

Views are the evaluation views of pipeline/data (fixed temporal clips x spatial crops), each
video counted once. Tokens are kept for the attentive probe: the full final grid unless it
holds more than `max_tokens`, then average-pooled in space (and, if still too many, in time) -
a cap on the cache's size (N x V x T x D half floats). The cache is one safetensors file per
(encoder weights, data settings, split, max_tokens): a probe grid re-run reads it instead of
encoding the split again.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import Tensor

from pipeline.config import DataConfig
from pipeline.durable import atomic_write
from pipeline.models.base import VideoBackbone

FEATURES_VERSION = 1


@dataclass
class FeatureSet:
    pooled: Tensor  # (N, V, D) float32
    tokens: Tensor | None  # (N, V, T, D) float16
    labels: Tensor  # (N,) long, -1 = unlabelled
    keys: list[str]

    def labelled(self) -> "FeatureSet":
        keep = self.labels >= 0
        idx = keep.nonzero().flatten()
        return FeatureSet(self.pooled[idx], None if self.tokens is None else self.tokens[idx], self.labels[idx],
                          [self.keys[i] for i in idx.tolist()])

    def subset(self, rows: Tensor) -> "FeatureSet":
        return FeatureSet(self.pooled[rows], None if self.tokens is None else self.tokens[rows], self.labels[rows],
                          [self.keys[i] for i in rows.tolist()])


def pool_grid(tokens: Tensor, grid: tuple[int, int, int], max_tokens: int) -> Tensor:
    """(B, t*h*w, D) -> (B, T', D) with T' <= max_tokens: 2x2 average pooling in space until it
    fits (a side of 1 stays 1), then halving in time."""
    t, h, w = grid
    size = [t, h, w]
    while size[0] * size[1] * size[2] > max_tokens and (size[1] > 1 or size[2] > 1):
        size[1], size[2] = max(1, size[1] // 2), max(1, size[2] // 2)
    while size[0] * size[1] * size[2] > max_tokens and size[0] > 1:
        size[0] = max(1, size[0] // 2)
    if size == [t, h, w]:
        return tokens
    b, _, d = tokens.shape
    x = tokens.transpose(1, 2).reshape(b, d, t, h, w)
    return F.adaptive_avg_pool3d(x.float(), size).flatten(2).transpose(1, 2).to(tokens.dtype)


def _encoder_digest(encoder: VideoBackbone) -> str:
    """A hash of the encoder's configuration and weights (what its features depend on)."""
    h = hashlib.sha256(json.dumps(encoder.config, sort_keys=True, default=str).encode())
    for name, value in sorted(encoder.state_dict().items()):
        h.update(name.encode())
        h.update(value.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def cache_path(cache_dir: Path, encoder_digest: str, data: DataConfig, split: str, max_tokens: int) -> Path:
    settings = {"version": FEATURES_VERSION, "encoder": encoder_digest, "data": asdict(data), "split": split,
                "max_tokens": max_tokens}
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:20]
    return cache_dir / f"{split}-{digest}.safetensors"


@torch.no_grad()
def extract(encoder: VideoBackbone, data: DataConfig, split: str, max_tokens: int, tokens: bool = True,
            device: torch.device | None = None, limit: int | None = None) -> FeatureSet:
    """Encode every video of `split` (each view once; the first `limit` videos in the loader's
    fixed evaluation order when given) with the frozen encoder, which is left in eval mode."""
    from pipeline.tasks.kinds import eval_device, fresh_batches
    from pipeline.train.engine import evaluation_autocast

    device = device or eval_device()
    encoder = encoder.to(device).eval()
    views = data.eval_clips * data.eval_crops
    pooled, grids, labels, keys = [], [], [], []
    with evaluation_autocast("auto", device.type):
        for batch, keep in fresh_batches(data, encoder.patch_size, split):
            out = encoder(batch["video"][keep].to(device))
            pooled.append(out.pooled.float().cpu())
            if tokens:
                grids.append(pool_grid(out.tokens, out.grid, max_tokens).half().cpu())
            rows = keep.tolist()
            labels += [int(batch["label"][i]) for i in rows[::views]]
            keys += [batch["key"][i] for i in rows[::views]]
            if limit is not None and len(keys) >= limit:
                break
    pooled_all = torch.cat(pooled)
    if limit is not None and len(keys) > limit:
        pooled_all, keys, labels = pooled_all[:limit * views], keys[:limit], labels[:limit]
        grids = [torch.cat(grids)[:limit * views]] if tokens else grids
    n = pooled_all.shape[0] // views
    if n * views != pooled_all.shape[0] or n != len(keys):
        raise RuntimeError(f"probe features of split {split!r}: {pooled_all.shape[0]} views for {len(keys)} videos "
                           f"at {views} views each")
    token_all = torch.cat(grids).reshape(n, views, -1, pooled_all.shape[-1]) if tokens else None
    return FeatureSet(pooled_all.reshape(n, views, -1), token_all, torch.tensor(labels, dtype=torch.long), keys)


def split_features(encoder: VideoBackbone, data: DataConfig, split: str, max_tokens: int, tokens: bool,
                   cache_dir: Path | None) -> tuple[FeatureSet, bool]:
    """`extract`, through the cache when `cache_dir` is given: (features, read from the cache)."""
    if cache_dir is None:
        return extract(encoder, data, split, max_tokens, tokens), False
    path = cache_path(cache_dir, _encoder_digest(encoder), data, split, max_tokens)
    if path.is_file():
        stored = load_file(str(path))
        if not tokens or "tokens" in stored:
            meta = json.loads(path.with_suffix(".json").read_text())
            return FeatureSet(stored["pooled"], stored.get("tokens") if tokens else None, stored["labels"],
                              meta["keys"]), True
    features = extract(encoder, data, split, max_tokens, tokens)
    tensors = {"pooled": features.pooled.contiguous(), "labels": features.labels}
    if features.tokens is not None:
        tensors["tokens"] = features.tokens.contiguous()
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path.with_suffix(".json"), lambda tmp: tmp.write_text(json.dumps({"keys": features.keys})))
    atomic_write(path, lambda tmp: save_file(tensors, str(tmp)))  # last: it marks the entry whole
    return features, False
