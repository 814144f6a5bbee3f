"""The worker side of the loader: plan streams -> raw samples -> decoded, transformed clips -> batches.

    dataset = ClipDataset(plan_spec, batch_spec, rank=0, world_size=1)
    dataset.epoch, dataset.start_batch = 3, 17
    for batch, events in dataset: ...      # what each DataLoader worker runs (see loader.py)

Worker w of W yields the rank's batches start_batch + w, + w + W, ...; batch j is the next batch
of stream j % S, and all of a stream's batches land on one worker (W divides S). A stream reader
walks its shard segments in order and keeps read-but-not-yet-due samples (at most the shuffle
buffer); on resume the samples already emitted are passed over unread (tar_reader extracts only
wanted members) and never decoded. In an elastic resume's remainder epoch (`remainder`, see
remainder.py) the streams are that epoch's re-split and read the same way.

Per-frame annotations (`boxes.json`, `masks.npz`) are read, decoded and carried through the
crop only when the consumer asks for them (BatchSpec.annotations; build_loader's `annotations`):
pretraining reads none, so annotated shards load as fast as plain ones.

A sample that cannot be used is skipped and counted by reason (bad_json, missing_video,
bad_annotation, decode_error, decode_timeout, decoder_crashed, truncated_shard, shard_short, ...),
its key logged; the batch keeps its place in the schedule and is smaller by that sample, so every
rank still yields the same number of batches (a batch whose every sample failed has zero clips).

A worker reads and parses a batch's samples (read_batch), then makes the batch with its
BatchMaker (batch_maker.py: decode, crop, mask); clips leave it as uint8 in a reusable shared
buffer (batch_ring.py), (B, T, H, W, C) in memory and viewed as (B, C, T, H, W)
(torch.channels_last_3d); the loader hands them over (loader.py, normalize.py). With
BatchSpec.decode_in_loader (decode_device cuda) the worker yields the parsed ReadBatch instead and
the loader's process makes the batch: no decoding, and no ring, in the workers.

Persistent workers (loader.py keeps its DataLoader workers across epochs): a worker's copy of this
object is the one it got when it started, so each new iteration's (epoch, start_batch, whether the
elastic remainder applies) comes from `iteration`, a small shared tensor the loader writes with
`publish()` before it restarts the workers' iteration. Its generation number also ends, at its next
batch, an iteration the loader has left (abandoned mid-epoch or restarted), so a worker does not
decode batches of an old epoch that would only be dropped. The worker's batch maker (with its
decode helper process) and batch ring are made once and kept for the worker's life.
"""

from __future__ import annotations

import io
import json
import os
from collections import Counter
from dataclasses import dataclass, replace
from multiprocessing.util import Finalize

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from pipeline.data.batch_maker import BatchMaker, ParsedSample, ReadBatch, SkipSample
from pipeline.data.batch_ring import BatchRing
from pipeline.data.decode_process import keep_freed_memory
from pipeline.data.plan import EpochPlan, PlanSpec, StreamPlan
from pipeline.data.remainder import Remainder, RemainderPlan
from pipeline.data.sampling import ClipSampling
from pipeline.data.shard_format import BOXES_EXT, MASKS_EXT, META_EXT, VIDEO_EXT, SampleMeta, ShardFormatError
from pipeline.data.tar_reader import RawSample, read_segment
from pipeline.data.transforms import TransformSpec

ANNOTATION_EXTS = {"boxes": BOXES_EXT, "masks": MASKS_EXT}  # batch key -> the sample member it comes from


@dataclass(frozen=True)
class BatchSpec:
    sampling: ClipSampling
    transform: TransformSpec
    decoder: str
    decode_timeout_s: float
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    grid: tuple[int, int, int]
    mask_type: str
    mask_ratio: float
    mask_block_scale: tuple[float, float]
    mask_block_aspect: tuple[float, float]
    annotations: frozenset[str] = frozenset()  # of ANNOTATION_EXTS: the ones the consumer reads
    source_strides: tuple[int, ...] = ()  # frame step per data source (DataConfig.source_strides); () = sampling's
    decode_device: str = "cpu"  # where frames are decoded and cropped (data.decode_device)
    decode_in_loader: bool = False  # workers only read; the loader's process decodes (batch_maker.py)

    def sampling_of(self, source: int) -> ClipSampling:
        """The clip sampling of a sample from data source `source`: `sampling` with that source's step."""
        if not self.source_strides or self.source_strides[source] == self.sampling.frame_stride:
            return self.sampling
        return replace(self.sampling, frame_stride=self.source_strides[source])

    @property
    def members(self) -> frozenset[str]:
        """The sample members worth extracting from a shard."""
        return frozenset([VIDEO_EXT, META_EXT] + [ANNOTATION_EXTS[a] for a in self.annotations])

    @property
    def clips_per_sample(self) -> int:
        return self.sampling.clips * (1 if self.transform.train else self.transform.eval_crops)


class StreamReader:
    """Raw samples of one stream's batches, in emission order, from batch `first_batch` on."""

    def __init__(self, plan: StreamPlan, first_batch: int, members: frozenset[str]):
        self.plan, self.next_batch, self.members = plan, first_batch, members
        self._due = np.zeros(plan.input_length, dtype=bool)  # positions this reader will emit
        self._due[plan.order[first_batch * plan.batch_size:]] = True
        self._pending: dict[int, RawSample] = {}
        self._raw = self._read()

    def _read(self):
        pos = 0
        for segment in self.plan.segments:
            yield from read_segment(segment, pos, lambda p: self._due[p], self.members)
            pos += segment.stop - segment.start

    def take_batch(self, index: int) -> list[RawSample]:
        if index != self.next_batch:
            raise RuntimeError(f"stream {self.plan.index}: batch {index} asked, {self.next_batch} due")
        self.next_batch += 1
        size = self.plan.batch_size
        due = [int(p) for p in self.plan.order[index * size:(index + 1) * size]]
        for pos in due:
            while pos not in self._pending:
                raw = next(self._raw)  # every wanted position comes back, as a sample or a failure
                self._pending[raw.pos] = raw
        return [self._pending.pop(pos) for pos in due]

    def close(self) -> None:
        self._raw.close()


def _read_boxes(data: bytes, key: str) -> np.ndarray:
    try:
        obj = json.loads(data)
        if obj.get("format") != "xyxy":
            raise ValueError(f"format {obj.get('format')!r}, want 'xyxy'")
        rows = [[np.nan] * 4 if b is None else [float(v) for v in b] for b in obj["boxes"]]
        if any(len(r) != 4 for r in rows):
            raise ValueError("every box needs 4 numbers (or null)")
        boxes = np.asarray(rows, dtype=np.float32).reshape(-1, 4)
    except (ValueError, TypeError, KeyError, AttributeError) as e:
        raise SkipSample("bad_annotation", f"{key}.{BOXES_EXT}: {e.__class__.__name__}: {e}") from None
    return boxes


def _read_masks(data: bytes, key: str) -> np.ndarray:
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            masks = npz["masks"]
    except Exception as e:  # numpy raises many types on a damaged npz
        raise SkipSample("bad_annotation", f"{key}.{MASKS_EXT}: {e.__class__.__name__}: {e}") from None
    if masks.ndim != 3 or masks.dtype != np.uint8:
        raise SkipSample("bad_annotation", f"{key}.{MASKS_EXT}: want uint8 (T, H, W), got {masks.dtype} {masks.shape}")
    return masks


class ClipDataset(IterableDataset):
    def __init__(self, plan_spec: PlanSpec, batch_spec: BatchSpec, rank: int, world_size: int,
                 ring_slots: int = 4):
        super().__init__()
        self.plan_spec, self.batch_spec = plan_spec, batch_spec
        self.rank, self.world_size, self.ring_slots = rank, world_size, ring_slots
        self.epoch, self.start_batch = 0, 0
        self.remainder: Remainder | None = None  # set by the loader after an elastic resume
        self.released: torch.Tensor | None = None  # set by the loader when it runs workers
        self.iteration: torch.Tensor | None = None  # shared (generation, epoch, start_batch, remainder on)
        self._workers_remainder: Remainder | None = None  # the remainder the workers started with
        self._tools: tuple | None = None  # in a worker: its decoder and batch ring, kept across iterations

    def plan(self, epoch: int | None = None) -> EpochPlan | RemainderPlan:
        epoch = self.epoch if epoch is None else epoch
        if self.remainder is not None and self.remainder.epoch == epoch:
            return RemainderPlan(self.remainder, self.plan_spec, self.rank, self.world_size)
        return EpochPlan(self.plan_spec, epoch, self.rank, self.world_size)

    def share_iteration(self) -> None:
        """Make `iteration` shared, before the workers start: they read each iteration from it."""
        self.iteration = torch.zeros(4, dtype=torch.int64).share_memory_()
        self._workers_remainder = self.remainder

    def publish(self) -> bool:
        """Tell the workers the next iteration (epoch, start_batch, remainder) as a new generation.
        False when they cannot follow: a remainder other than the one they started with (load it
        into new workers)."""
        if self.remainder is not None and self.remainder != self._workers_remainder:
            return False
        generation = int(self.iteration[0]) + 1
        self.iteration.copy_(torch.tensor([generation, self.epoch, self.start_batch, self.remainder is not None]))
        return True

    def __iter__(self):
        info = get_worker_info()
        spec = self.batch_spec
        if info is None:  # in the main process: a batch maker for this iteration only, no ring
            maker = None if spec.decode_in_loader else BatchMaker(spec)
            try:
                yield from self._batches(self.plan(), self.start_batch, 0, 1, maker, None, None)
            finally:
                if maker is not None:
                    maker.close()
            return
        maker, ring = self._worker_tools(info.id)
        if ring is not None:
            ring.settle()
        if self.iteration is None:  # a plain DataLoader over this dataset: its fork-time attributes
            plan, start, generation = self.plan(), self.start_batch, None
        else:
            generation, epoch, start, remainder_on = (int(x) for x in self.iteration)
            plan = self.plan(epoch) if remainder_on else EpochPlan(self.plan_spec, epoch, self.rank, self.world_size)
        yield from self._batches(plan, start, info.id, info.num_workers, maker, ring, generation)

    def _worker_tools(self, worker: int) -> tuple:
        """This worker's batch maker (with its decoder's helper process, closed when the worker
        exits) and batch ring, made on its first iteration and kept for its life; (None, None)
        when the loader decodes (decode_in_loader): the worker then only reads."""
        if self._tools is None:
            keep_freed_memory()
            if self.batch_spec.decode_in_loader:
                self._tools = None, None
            else:
                maker = BatchMaker(self.batch_spec)
                Finalize(self, maker.close, exitpriority=0)
                self._tools = maker, BatchRing(self.released, worker, self.ring_slots)
        return self._tools

    def _batches(self, plan: EpochPlan | RemainderPlan, start: int, worker: int, workers: int,
                 maker: BatchMaker | None, ring: BatchRing | None, generation: int | None):
        """Batches start + worker, + workers, ... of the plan, until it ends or the loader publishes
        another generation than `generation` (None: never): (batch, events) made by `maker`, or
        without one the ReadBatch for the loader to make."""
        streams = self.plan_spec.streams
        readers: dict[int, StreamReader] = {}
        try:
            for j in range(start + worker, plan.batches_per_rank, workers):
                if generation is not None and int(self.iteration[0]) != generation:
                    return  # the loader has left this iteration: its batches would be dropped
                v = j % streams
                if v not in readers:
                    readers[v] = StreamReader(plan.stream(v), len(range(v, start, streams)),
                                              self.batch_spec.members)
                read = self.read_batch(readers[v].take_batch(j // streams), readers[v].plan, plan.mask_seed(j), worker)
                yield read if maker is None else maker.make(read, ring)
        finally:
            for reader in readers.values():
                reader.close()

    def _parse(self, raw: RawSample, stream: StreamPlan) -> ParsedSample:
        """The sample's metadata and annotations parsed, its video still encoded; SkipSample saying
        why it cannot be used."""
        if raw.error is not None:
            raise SkipSample(raw.error, f"position {raw.pos} of the stream")
        if META_EXT not in raw.members:
            raise SkipSample("bad_json", f"{raw.key}.{META_EXT} missing")
        try:
            meta = SampleMeta.from_json(raw.members[META_EXT], raw.key)
        except ShardFormatError as e:
            raise SkipSample("bad_json", str(e)) from None
        if VIDEO_EXT not in raw.members:
            raise SkipSample("missing_video", f"{raw.key}.{VIDEO_EXT} missing")
        boxes = _read_boxes(raw.members[BOXES_EXT], raw.key) if BOXES_EXT in raw.members else None
        masks = _read_masks(raw.members[MASKS_EXT], raw.key) if MASKS_EXT in raw.members else None
        return ParsedSample(raw.key, raw.shard, raw.source, meta, raw.members[VIDEO_EXT], boxes, masks,
                            stream.sample_seed(raw.pos), stream.is_padding(raw.pos))

    def read_batch(self, raws: list[RawSample], stream: StreamPlan, mask_seed: int, worker: int) -> ReadBatch:
        """The batch's samples parsed (skips counted and logged), ready for a BatchMaker."""
        samples, skipped = [], Counter()
        for raw in raws:
            try:
                samples.append(self._parse(raw, stream))
            except SkipSample as e:
                e.count(skipped, raw.key, raw.shard)
        return ReadBatch(samples, mask_seed, skipped, worker, os.getpid())
