"""The rest of an epoch re-split over another layout (world_size, batch_size, streams): elastic resume.

    from pipeline.data.remainder import Remainder, RemainderPlan
    rest = Remainder.of_epoch(old_spec, epoch=3, world_size=2, batches_done=17)  # what 2 ranks had left
    plan = RemainderPlan(rest, new_spec, rank=0, world_size=1)    # this rank's share, EpochPlan's interface
    rest.length % (world_size * new_spec.batch_size) == 0          # else the split is refused (loader.py)

The remainder sequence: for every stream of the epoch's original layout, rank by rank and stream by
stream, the emissions it had not handed out yet, in its emission order. It is kept as pieces
(rank, stream, first, stop) = emissions [first, stop) of that stream of the original EpochPlan, so a
state holds a few integers per stream, never a list of samples.

Its split mirrors plan.py: with R samples left, every rank yields M = R / (world_size * batch_size)
batches (a whole number, or the split is refused: DDP must never wait on a rank); rank r takes the
contiguous items [r*M*B, (r+1)*M*B) and hands batch j to stream j % S, each stream owning a contiguous
run (plan.stream_run). A stream emits its run in sequence order - the old shuffle buffers' order,
already shuffled, so nothing is shuffled again and a stream holds at most one old buffer of
read-but-not-due samples. A sample keeps the seed it had (old stream seed, old input position), so
it gives the same clips and crops as it would have; only its batch and its batch's mask differ.

Read cost: for each piece of its run, a stream walks the old stream's shard segments from the
piece's earliest input position to its latest and extracts only the piece's samples; everything else
is passed over without being extracted, and nothing skipped is decoded. Pieces are contiguous in the
old emission order, so two pieces of one old stream overlap only where the old shuffle buffer mixed
them (about one buffer, a little more where a sample waited long in it): across all new streams, the
part of each old stream still to come is walked about once, plus the head of each shard a piece
starts inside (as for any stream that starts mid-shard) - never every rank reading everything and
discarding most of it. Besides, a stream recomputes the plans of the old streams it takes pieces
from (arithmetic, no I/O).

A state saved inside a remainder epoch holds the pieces as split and the batches done: on the same
layout it resumes exactly; on another one, what each stream had not handed out is cut from the
pieces and re-split the same way (pieces always refer to the original layout, so chains stay flat).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from pipeline.data.plan import TAG_MASK, EpochPlan, PlanSpec, Segment, StreamPlan, mix_seed, stream_run

Piece = tuple[int, int, int, int]  # (original rank, original stream, first emission, stop emission)


def take(pieces: list[Piece], begin: int, end: int) -> list[Piece]:
    """Items [begin, end) of the sequence the pieces make, as pieces."""
    out, pos = [], 0
    for rank, stream, first, stop in pieces:
        a, b = max(begin, pos), min(end, pos + stop - first)
        if a < b:
            out.append((rank, stream, first + a - pos, first + b - pos))
        pos += stop - first
    return out


def cut_segments(segments: list[Segment], lo: int, hi: int) -> list[Segment]:
    """The part of a stream's segments holding its input positions [lo, hi)."""
    out, pos = [], 0
    for s in segments:
        a, b = max(lo, pos), min(hi, pos + s.stop - s.start)
        if a < b:
            out.append(Segment(s.shard, s.start + a - pos, s.start + b - pos))
        pos += s.stop - s.start
    return out


def _pending(world_size: int, batches_per_rank: int, streams: int, batch_size: int, batches_done: int):
    """(rank, stream, begin, done, end) per stream: it owns [begin, end) and handed out [begin, done)."""
    for rank in range(world_size):
        for stream in range(streams):
            begin, end = stream_run(rank, stream, batches_per_rank, streams, batch_size)
            yield rank, stream, begin, begin + len(range(stream, batches_done, streams)) * batch_size, end


@dataclass(frozen=True)
class Remainder:
    epoch: int
    world_size: int  # the epoch's original layout, which the pieces refer to
    batch_size: int
    streams: int
    pieces: tuple[Piece, ...]

    @property
    def length(self) -> int:
        return sum(stop - first for _, _, first, stop in self.pieces)

    @classmethod
    def of_epoch(cls, spec: PlanSpec, epoch: int, world_size: int, batches_done: int) -> Remainder:
        """What the ranks of a normal epoch plan had not handed out after batches_done batches each."""
        m = EpochPlan(spec, epoch, 0, world_size).batches_per_rank
        pieces = tuple((r, v, done - begin, end - begin)
                       for r, v, begin, done, end in _pending(world_size, m, spec.streams, spec.batch_size,
                                                              batches_done) if done < end)
        return cls(epoch, world_size, spec.batch_size, spec.streams, pieces)

    def after(self, world_size: int, batch_size: int, streams: int, batches_done: int) -> Remainder:
        """What the ranks of this remainder's split over (world_size, batch_size, streams) had not
        handed out after batches_done batches each."""
        m = self.length // (world_size * batch_size)
        pieces = [p for _, _, _, done, end in _pending(world_size, m, streams, batch_size, batches_done)
                  for p in take(list(self.pieces), done, end)]
        return replace(self, pieces=tuple(pieces))

    def to_state(self) -> dict:
        return {"epoch": self.epoch, "world_size": self.world_size, "batch_size": self.batch_size,
                "streams_per_rank": self.streams, "pieces": [list(p) for p in self.pieces]}

    @classmethod
    def from_state(cls, state: dict) -> Remainder:
        return cls(int(state["epoch"]), int(state["world_size"]), int(state["batch_size"]),
                   int(state["streams_per_rank"]), tuple(tuple(int(x) for x in p) for p in state["pieces"]))


def _join(parts: list[np.ndarray], dtype) -> np.ndarray:
    return np.concatenate(parts).astype(dtype, copy=False) if parts else np.zeros(0, dtype=dtype)


class RemainderPlan:
    """One rank's share of a Remainder, with EpochPlan's interface for dataset.py."""

    def __init__(self, rest: Remainder, spec: PlanSpec, rank: int, world_size: int):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world_size {world_size}")
        per_step = world_size * spec.batch_size
        if rest.length % per_step:
            raise ValueError(f"{rest.length} samples left in epoch {rest.epoch} do not split into equal batches "
                             f"of {spec.batch_size} over {world_size} ranks")
        self.rest, self.spec, self.epoch, self.rank, self.world_size = rest, spec, rest.epoch, rank, world_size
        self.batches_per_rank = rest.length // per_step
        self.total_samples = rest.length
        self._original = replace(spec, batch_size=rest.batch_size, streams=rest.streams)

    def stream_batches(self, stream: int) -> int:
        return len(range(stream, self.batches_per_rank, self.spec.streams))

    def stream(self, index: int) -> StreamPlan:
        """Stream `index`: each piece of its run read as a window of the old stream's input."""
        begin, end = stream_run(self.rank, index, self.batches_per_rank, self.spec.streams, self.spec.batch_size)
        old: dict[tuple[int, int], StreamPlan] = {}
        segments: list[Segment] = []
        order, seeds, positions, padding = [], [], [], []
        offset = 0
        for rank, stream, first, stop in take(list(self.rest.pieces), begin, end):
            if (rank, stream) not in old:
                plan = EpochPlan(self._original, self.epoch, rank, self.rest.world_size)
                old[rank, stream] = plan.stream(stream)
            source = old[rank, stream]
            wanted = source.order[first:stop]
            lo, hi = int(wanted.min()), int(wanted.max()) + 1
            segments += cut_segments(source.segments, lo, hi)
            order.append(offset + wanted - lo)
            window = np.arange(lo, hi, dtype=np.int64)
            seeds.append(np.full(hi - lo, source.seed, dtype=np.int64))
            positions.append(window)
            padding.append(window >= (hi if source.pad_from is None else source.pad_from))
            offset += hi - lo
        return StreamPlan(index, segments, _join(order, np.int64), self.spec.batch_size, 0,
                          origin=(_join(seeds, np.int64), _join(positions, np.int64), _join(padding, bool)))

    def mask_seed(self, batch: int) -> int:
        return mix_seed(self.spec.seed, self.epoch, TAG_MASK, self.rank, batch, self.world_size, self.rest.length)
