"""The second half of making a batch: samples read from the shards -> decoded, cropped, masked clips.

    read = dataset.read_batch(...)                     # a ReadBatch: parsed samples, no pixels yet
    maker = BatchMaker(batch_spec)                     # its decoder (and decode helper) made on first use
    batch, events = maker.make(read, ring)             # ring: a worker's BatchRing, or None
    maker.close()

ClipDataset (dataset.py) reads and parses a batch's samples (tar members, .json, annotations) in
a worker; where they are decoded is one decision, BatchSpec.decode_in_loader, made by
build_loader:

    False (decode_device cpu)  the worker also makes the batch, its clips written into its shared
                               batch ring (batch_ring.py)
    True  (decode_device cuda) the worker hands the ReadBatch over and the loader's process makes
                               the batch with its own BatchMaker (loader.py). CUDA cannot be used
                               in forked DataLoader workers, so NVDEC decoding happens in the
                               process that owns the GPU, and frames, crops and the batch stay on
                               the device. The same path runs on the CPU when build_loader is
                               asked for it (tests, benchmarks), so CPU runs test the code a GPU
                               run uses.

Not a thread: the crops draw from torch's process-wide CPU generator (seeded per clip, see
transforms.py), which a training loop in another thread would also move, and pixels would then
depend on timing. Either way a sample's pixels depend only on its seeds, so both placements give
identical batches.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from pipeline.data.batch_ring import BatchRing
from pipeline.data.decode import DecodeError
from pipeline.data.decode_process import make_decoder
from pipeline.data.masking import make_masker
from pipeline.data.plan import mix_seed
from pipeline.data.shard_format import BOXES_EXT, MASKS_EXT, SampleMeta
from pipeline.data.transforms import ClipTransform

if TYPE_CHECKING:
    from pipeline.data.dataset import BatchSpec

log = logging.getLogger("vssl.data")
MASK_IGNORE = 255  # `masks` value for clips of samples without masks in a batch that has some


class SkipSample(Exception):
    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail

    def count(self, skipped: Counter, key: str, shard: str) -> None:
        """Count this skip by its reason in `skipped` and log it in one line naming the sample."""
        skipped[self.reason] += 1
        log.warning("skipped sample %r of %s (%s): %s", key, shard, self.reason, self.detail)


@dataclass
class ParsedSample:
    """A sample as read from its shard: metadata and annotations parsed, video still encoded."""

    key: str
    shard: str
    source: int  # data.sources index: which clip sampling applies
    meta: SampleMeta
    video: bytes
    boxes: np.ndarray | None
    masks: np.ndarray | None
    seed: int  # the sample's seed in this epoch (clips, crops)
    padded: bool  # a repeat that fills an evaluation epoch's last batch


@dataclass
class ReadBatch:
    """One batch's samples as a worker read them, with what it skipped while reading."""

    samples: list[ParsedSample]
    mask_seed: int
    skipped: Counter
    worker: int
    pid: int  # of the process that read it


class BatchMaker:
    def __init__(self, spec: BatchSpec):
        self.spec = spec
        self.transform = ClipTransform(spec.transform)
        self.masker = make_masker(spec.mask_type, spec.mask_ratio, spec.grid, spec.mask_block_scale,
                                  spec.mask_block_aspect)
        self._decoder = None

    @property
    def decoder(self):
        """This maker's decoder (a killable helper process when decode_timeout_s > 0), made on first use."""
        if self._decoder is None:
            spec = self.spec
            self._decoder = make_decoder(spec.decoder, spec.sampling, spec.decode_timeout_s, spec.decode_device)
        return self._decoder

    def close(self) -> None:
        if self._decoder is not None:
            self._decoder.close()
            self._decoder = None

    def views(self, sample: ParsedSample) -> list:
        """The sample's views [(video, boxes, masks)], or SkipSample saying why it cannot be used.
        Video views are on the decode device; boxes and masks on the CPU."""
        try:
            decoded = self.decoder.decode(sample.key, sample.video, mix_seed(sample.seed, 0), sample.meta.num_frames,
                                          self.spec.sampling_of(sample.source))
        except DecodeError as e:
            raise SkipSample(e.reason, e.detail) from None
        frames = decoded.frames
        if sample.masks is not None and sample.masks.shape[1:] != tuple(frames.shape[1:3]):
            raise SkipSample("bad_annotation", f"{sample.key}.{MASKS_EXT}: size {sample.masks.shape[1:]}, "
                                               f"video {tuple(frames.shape[1:3])}")
        views = []
        for c, where in enumerate(decoded.where):
            whole = len(where) == len(frames) and bool((where == np.arange(len(where))).all())
            if isinstance(frames, np.ndarray):
                # numpy gathers frames at memcpy speed; torch's advanced indexing is ~30x slower on uint8
                clip = torch.from_numpy(frames if whole else frames[where])
            else:
                clip = frames if whole else frames[torch.from_numpy(where).to(frames.device)]
            ids = decoded.frame_ids[where]
            views.extend(self.transform(clip.permute(0, 3, 1, 2), _frames_of(sample.boxes, ids, sample.key, BOXES_EXT),
                                        _frames_of(sample.masks, ids, sample.key, MASKS_EXT),
                                        seed=mix_seed(sample.seed, 1 + c)))
        return views

    def make(self, read: ReadBatch, ring: BatchRing | None = None) -> tuple[dict, dict]:
        """(batch, events): the batch as loader.py documents it, video uint8 on the decode device
        (in `ring` when given); events count samples, clips and skips, and name the worker, its
        ring slot (None without a ring) and the reading process."""
        spec = self.spec
        size, frames = spec.transform.crop_size, spec.sampling.num_frames
        # uint8 (B, T, H, W, C) memory: the crops come out of the transform channels-last, so each
        # clip lands with one plain copy; handed over as a (B, C, T, H, W) view of it
        shape = (len(read.samples) * spec.clips_per_sample, frames, size, size, 3)
        if ring is not None:
            video, slot = ring.buffer(shape)
        else:
            video, slot = torch.empty(shape, dtype=torch.uint8, device=spec.decode_device), None
        labels, keys, boxes, masks, padded = [], [], [], [], []
        skipped = Counter(read.skipped)
        decoded = 0
        for sample in read.samples:
            try:
                views = self.views(sample)
            except SkipSample as e:
                e.count(skipped, sample.key, sample.shard)
                continue
            decoded += 1
            for clip, clip_boxes, clip_masks in views:
                video[len(keys)].copy_(clip.permute(0, 2, 3, 1))  # copy now: clip may view decoder memory
                keys.append(sample.key)
                labels.append(sample.meta.label)
                padded.append(sample.padded)
                boxes.append(clip_boxes)
                masks.append(clip_masks)
        n = len(keys)
        video = video[:n].permute(0, 4, 1, 2, 3)
        generator = torch.Generator().manual_seed(read.mask_seed)
        batch = {"video": video, "label": torch.tensor(labels, dtype=torch.long), "key": keys,
                 "mask": self.masker(n, generator), "clips_per_sample": spec.clips_per_sample,
                 "padded": torch.tensor(padded, dtype=torch.bool)}
        if any(b is not None for b in boxes):
            nan = torch.full((frames, 4), float("nan"))
            batch["boxes"] = torch.stack([nan if b is None else b for b in boxes])
        if any(m is not None for m in masks):
            ignore = torch.full((frames, size, size), MASK_IGNORE, dtype=torch.uint8)
            batch["masks"] = torch.stack([ignore if m is None else m for m in masks])
        return batch, {"samples": decoded, "clips": n, "skipped": dict(skipped), "worker": read.worker,
                       "slot": slot, "pid": read.pid}


def _frames_of(annotation: np.ndarray | None, ids: np.ndarray, key: str, ext: str) -> torch.Tensor | None:
    """The clip's frames of a per-frame annotation array."""
    if annotation is None:
        return None
    if ids.max() >= len(annotation):
        raise SkipSample("bad_annotation", f"{key}.{ext}: {len(annotation)} frames, clip needs frame {ids.max()}")
    return torch.from_numpy(annotation[ids])
