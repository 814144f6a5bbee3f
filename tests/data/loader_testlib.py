"""Helpers shared by the loader tests (tests/data/) and the object-storage tests (tests/storage/):
a small DataConfig over local shards, draining a loader, comparing batches, and the epoch plan's
samples per rank."""

from __future__ import annotations

from pathlib import Path

import torch

from pipeline.config import DataConfig
from pipeline.data.plan import EpochPlan
from pipeline.data.shards import ShardRef

PATCH = (2, 16, 16)


def config(shards: Path | str, **kw) -> DataConfig:
    """A folder's manifest.json, or a data.shards spec as given (a str: a URL, a folder, a pattern)."""
    shards = str(shards / "manifest.json") if isinstance(shards, Path) else shards
    base = dict(shards=shards, num_frames=8, frame_stride=1, crop_size=32,
                batch_size=3, num_workers=0, decode_timeout_s=0.0, shuffle_buffer=8, mask_ratio=0.5)
    return DataConfig(**{**base, **kw})


def run(loader, limit=None):
    batches = []
    for batch in loader:
        batches.append(batch)
        if limit is not None and len(batches) == limit:
            break
    return batches


def assert_same(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x["key"] == y["key"]
        for name in ("video", "label", "mask"):
            assert torch.equal(x[name], y[name]), name


def refs(sizes, prefix="s"):
    return [ShardRef(f"{prefix}{i}.tar", f"{prefix}{i}.tar", n) for i, n in enumerate(sizes)]


def rank_samples(plan: EpochPlan) -> list[tuple[str, int]]:
    """(shard, index) of every sample the rank yields, in batch order."""
    streams = {v: plan.stream(v) for v in range(plan.spec.streams)}
    inputs = {v: [(seg.shard.name, i) for seg in s.segments for i in range(seg.start, seg.stop)]
              for v, s in streams.items()}
    out = []
    for j in range(plan.batches_per_rank):
        s = streams[j % plan.spec.streams]
        b = j // plan.spec.streams
        out += [inputs[s.index][p] for p in s.order[b * s.batch_size:(b + 1) * s.batch_size]]
    return out
