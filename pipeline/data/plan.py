"""The epoch plan: which samples each rank reads, in which order, in which batch. Pure arithmetic
over the manifest counts, so every process derives the same plan and nothing is guessed.

    from pipeline.data.plan import EpochPlan, PlanSpec
    plan = EpochPlan(PlanSpec(sources=[(shards, 1.0)], batch_size=8, streams=4, seed=0),
                     epoch=3, rank=1, world_size=8)
    plan.batches_per_rank            # the same on every rank
    stream = plan.stream(2)          # segments to read + emission order of stream 2

Layout of one epoch (not resampled):
  1. the epoch's shard sequence: each source's shards repeated floor(weight) times plus a seeded
     fraction of them, then (shuffle=True) permuted by (seed, epoch);
  2. its N samples, concatenated, form a virtual sequence. Every rank yields
     M = N // (world_size * batch_size) batches (drop_last) or ceil(...) (otherwise; the tail wraps
     around to the epoch's first samples). Rank r takes the contiguous positions
     [r*M*B, (r+1)*M*B), so shard sizes never make ranks unequal and DDP never waits;
  3. a rank's batches go round-robin to its `streams`: batch j belongs to stream j % S, which
     owns a contiguous run of the rank's positions and reads only the shards under it;
  4. a stream reads its run in order through a shuffle buffer (shuffle_buffer // S samples); the
     buffer is simulated on positions here, so the emission order is known before any byte is read.

Resampled: each stream draws whole shards with replacement (shard of source s with probability
proportional to weight_s / samples_s, so a source's share of samples follows its weight) from
(seed, epoch, rank, stream), and M = epoch_samples // (world_size * batch_size).

Elastic resume (remainder.py): the rest of an epoch left by one layout (world_size, batch_size,
streams) is re-split over another by the same rules 2-3, applied to the old streams' pending
emissions instead of the virtual sequence, and read in the old buffers' order (no new shuffle).
From the next epoch on, the plan above applies to the new layout.

Nothing here depends on the number of DataLoader workers: a worker serves whole streams, so the
batch sequence of a rank is the same for any worker count that divides S.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from dataclasses import dataclass, field

import numpy as np

from pipeline.data.shards import ShardRef

_MASK64 = (1 << 64) - 1


def mix_seed(*values: int) -> int:
    """A 63-bit seed from integers (splitmix64 finaliser per value): fast, stable across runs."""
    h = 0x9E3779B97F4A7C15
    for v in values:
        h = (h ^ (v & _MASK64)) * 0xBF58476D1CE4E5B9 & _MASK64
        h = (h ^ (h >> 27)) * 0x94D049BB133111EB & _MASK64
        h ^= h >> 31
    return h >> 1


# tags that keep the random streams drawn from the same (seed, epoch, ...) apart
TAG_SHARDS, TAG_MIX, TAG_BUFFER, TAG_DRAWS, TAG_SAMPLE, TAG_MASK = range(1, 7)


@dataclass(frozen=True)
class Segment:
    """Samples [start, stop) of one shard, read in one pass."""

    shard: ShardRef
    start: int
    stop: int


@dataclass
class StreamPlan:
    index: int
    segments: list[Segment]  # the input, in reading order
    order: np.ndarray  # input positions in emission order; batch b = order[b*B:(b+1)*B]
    batch_size: int
    seed: int  # per-sample seeds derive from (seed, input position)
    pad_from: int | None = None  # input positions from here on repeat the epoch's start (padding)
    # elastic resume (remainder.py): per input position, the stream seed and input position its sample
    # had in the epoch's original layout, and whether it was padding there
    origin: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None

    def sample_seed(self, pos: int) -> int:
        """The seed a sample's clip positions and crops derive from."""
        if self.origin is None:
            return mix_seed(self.seed, pos)
        seeds, positions, _ = self.origin
        return mix_seed(int(seeds[pos]), int(positions[pos]))

    def is_padding(self, pos: int) -> bool:
        if self.origin is None:
            return self.pad_from is not None and pos >= self.pad_from
        return bool(self.origin[2][pos])

    @property
    def num_batches(self) -> int:
        return len(self.order) // self.batch_size

    @property
    def input_length(self) -> int:
        return sum(s.stop - s.start for s in self.segments)


@dataclass(frozen=True)
class PlanSpec:
    sources: list[tuple[list[ShardRef], float]]  # (shards, weight) per source
    batch_size: int
    streams: int = 1
    seed: int = 0
    shuffle: bool = True
    shuffle_buffer: int = 256
    drop_last: bool = True
    resampled: bool = False
    epoch_samples: int = 0
    source_totals: tuple[int, ...] = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "source_totals", tuple(sum(s.samples for s in shards) for shards, _ in self.sources))


def buffer_shuffle_order(n_input: int, buffer: int, rng: np.random.Generator, n_output: int | None = None) -> np.ndarray:
    """Emission order of a shuffle buffer fed positions 0..n_input-1: once `buffer` positions are
    held, each arrival emits a random held one; the rest drain at the end. Stops at n_output."""
    n_output = n_input if n_output is None else n_output
    draws = iter(rng.random(n_input).tolist())
    held: list[int] = []
    out: list[int] = []

    def emit() -> None:
        j = int(next(draws) * len(held))
        held[j], held[-1] = held[-1], held[j]
        out.append(held.pop())

    for i in range(n_input):
        held.append(i)
        if len(held) >= buffer:
            emit()
        if len(out) == n_output:
            break
    while held and len(out) < n_output:
        emit()
    return np.asarray(out, dtype=np.int64)


def stream_run(rank: int, stream: int, batches_per_rank: int, streams: int, batch_size: int) -> tuple[int, int]:
    """[begin, end) of the positions stream `stream` of `rank` owns: the rank owns
    [rank*M*B, (rank+1)*M*B), batch j goes to stream j % streams, each stream a contiguous run."""
    before = sum(len(range(v, batches_per_rank, streams)) for v in range(stream))
    begin = (rank * batches_per_rank + before) * batch_size
    return begin, begin + len(range(stream, batches_per_rank, streams)) * batch_size


class EpochPlan:
    def __init__(self, spec: PlanSpec, epoch: int, rank: int, world_size: int):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world_size {world_size}")
        self.spec, self.epoch, self.rank, self.world_size = spec, epoch, rank, world_size
        per_step = world_size * spec.batch_size
        if spec.resampled:
            total = spec.epoch_samples or sum(spec.source_totals)
            self.batches_per_rank = total // per_step
            self.shards: list[ShardRef] = []
        else:
            self.shards = self._epoch_shards()
            total = sum(s.samples for s in self.shards)
            self.batches_per_rank = total // per_step if spec.drop_last else math.ceil(total / per_step)
        self.total_samples = total
        self._offsets = np.cumsum([0] + [s.samples for s in self.shards])

    def _rng(self, *tags: int) -> np.random.Generator:
        return np.random.default_rng(mix_seed(self.spec.seed, self.epoch, *tags))

    def _epoch_shards(self) -> list[ShardRef]:
        shards: list[ShardRef] = []
        for i, (refs, weight) in enumerate(self.spec.sources):
            whole, frac = divmod(weight, 1.0)
            shards.extend(refs * int(whole))
            extra = round(frac * len(refs))
            if extra:
                pick = self._rng(TAG_MIX, i).permutation(len(refs))[:extra]
                shards.extend(refs[k] for k in sorted(pick))
        if self.spec.shuffle:
            shards = [shards[k] for k in self._rng(TAG_SHARDS).permutation(len(shards))]
        return shards

    def stream_batches(self, stream: int) -> int:
        return len(range(stream, self.batches_per_rank, self.spec.streams))

    def _segments(self, begin: int, end: int) -> list[Segment]:
        """Segments covering virtual positions [begin, end); positions >= N wrap around."""
        segments, n = [], int(self._offsets[-1])
        pos = begin
        while pos < end:
            p = pos % n
            k = bisect_right(self._offsets, p) - 1
            take = min(end - pos, int(self._offsets[k + 1]) - p)
            start = p - int(self._offsets[k])
            segments.append(Segment(self.shards[k], start, start + take))
            pos += take
        return segments

    def _drawn_segments(self, stream: int, length: int) -> list[Segment]:
        refs = [(r, w / total) for (shards, w), total in zip(self.spec.sources, self.spec.source_totals)
                for r in shards if total > 0]
        prob = np.array([p for _, p in refs])
        prob /= prob.sum()
        rng = self._rng(TAG_DRAWS, self.rank, stream)
        segments, filled = [], 0
        while filled < length:
            ref = refs[int(rng.choice(len(refs), p=prob))][0]
            take = min(ref.samples, length - filled)
            if take:
                segments.append(Segment(ref, 0, take))
            filled += take
        return segments

    def stream(self, index: int) -> StreamPlan:
        spec, size = self.spec, self.spec.batch_size
        emitted = self.stream_batches(index) * size
        buffer = max(1, spec.shuffle_buffer // spec.streams) if spec.shuffle else 1
        rng = self._rng(TAG_BUFFER, self.rank, index)
        pad_from = None
        if spec.resampled:
            length = emitted + buffer - 1 if emitted else 0
            segments = self._drawn_segments(index, length)
        else:
            begin, _ = stream_run(self.rank, index, self.batches_per_rank, spec.streams, size)
            segments = self._segments(begin, begin + emitted)
            length = emitted
            if begin + emitted > self.total_samples:
                pad_from = max(0, self.total_samples - begin)
        order = buffer_shuffle_order(length, buffer, rng, emitted)
        seed = mix_seed(spec.seed, self.epoch, TAG_SAMPLE, self.rank, index)
        return StreamPlan(index, segments, order, size, seed, pad_from)

    def mask_seed(self, batch: int) -> int:
        return mix_seed(self.spec.seed, self.epoch, TAG_MASK, self.rank, batch)
