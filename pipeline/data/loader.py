"""The loader the trainer calls: `build_loader(cfg, rank, world_size, patch_size, split) -> ClipLoader`.

    from pipeline.data.loader import build_loader
    loader = build_loader(cfg.data, rank=rank, world_size=world, patch_size=(2, 16, 16))
    loader.load_state_dict(checkpoint["data"])        # optional: continue exactly where it was
    for batch in loader:                               # one epoch of len(loader) batches
        batch["video"], batch["mask"], batch["label"], batch["key"]
        checkpoint["data"] = loader.state_dict()
    loader.stats()                                     # samples/s, data wait, skips by reason
    loader.close()                                     # workers stop (garbage collection does it too)

Batch: `video` float (B*k, C, T, H, W) normalised (uint8 when device is None), `label` long (B*k,), `mask` (B*k, N) bool
(True = hidden, N = T/pt * H/ph * W/pw), `key` list[str], `clips_per_sample` k, `padded` bool
(B*k,) (True for the repeats that fill an evaluation epoch's last batches; drop them from
metrics), plus `boxes` (B*k, T, 4) XYXY with NaN where the object is absent, and
`masks` (B*k, T, H, W) uint8 when samples carry annotations and build_loader's `annotations` asks
for them (no other member is read). k is data.repeated_samples when training, eval_clips *
eval_crops when evaluating; a sample's clips are consecutive.

Where `video` becomes float: workers hand clips over as uint8 in shared memory, and the loader's
`device` (build_loader(..., device=...), or set the attribute before iterating) decides:
    "cpu" (default)  normalised float32 on the CPU, every other tensor stays there
    a CUDA device    the uint8 batch is copied to the device as it is and normalised there (the
                     host does no per-pixel arithmetic); every tensor of the batch is on it
    None             uint8 (B*k, C, T, H, W) in the workers' shared memory, no copy: for a
                     consumer that normalises elsewhere (pipeline/data/normalize.py). It stays
                     valid until the next batch is asked for, in this iteration or a new one
                     (its buffer is then reused): clone it to keep it
stats()["wait_s"] counts that hand-over as time waiting for data. The trainer sets `device` to
its accelerator. Those buffers live in /dev/shm: build_loader refuses (ConfigError) a setup whose
workers' buffers (prefetch_factor + 2 batches each, for every rank on the node) would not fit it.

GPU decoding (data.decode_device=cuda, data.decoder=torchcodec, data.decode_timeout_s=0): CUDA
cannot run in forked DataLoader workers, so the workers only read and parse samples and this
process decodes them with NVDEC, crops and masks them (batch_maker.py; build_loader's
decode_in_loader runs the same path on the CPU). The uint8 video is then made on the GPU, not in
shared memory; with device None it is handed over there, with "cpu" copied back first. That time
counts in stats()["wait_s"] too.

Epochs: every rank yields exactly len(loader) batches (see plan.py for the policy); iterating to
the end moves to the next epoch; set_epoch(e) jumps to the start of epoch e. Order is a function
of (seed, epoch, rank, world_size, batch_size, streams_per_rank, shards) only (and, in the epoch
an elastic resume lands in, of the loaded state).

Workers (data.num_workers > 0) start on the first iteration and serve every later one - the next
epoch, a set_epoch() or load_state_dict() jump, an iteration restarted mid-epoch - with their decode
helpers and batch rings, until close() or garbage collection; num_workers=0 makes batches in this
process. Each new iteration publishes (epoch, start batch) to them through shared memory
(dataset.py) and restarts their iteration, which drops what they had in flight of the last one;
before that, this process releases the ring slot it still held, so a worker counts every older batch
as free (batch_ring.py). An iteration replaced by a newer one raises if resumed. Only a state whose
elastic remainder (below) differs from the one the workers started with starts new workers. A worker
that fails or dies (idle between iterations too: torch's SIGCHLD handler then raises here at once)
ends them all, the iteration under way raising; the next one starts new workers.

Exact resume: state_dict() counts the batches handed out, so after load_state_dict() the loader
yields exactly the batches an uninterrupted run would have yielded next; skipped-over samples are
not decoded. The state is the same on every rank, so any rank's restores every rank. May change
between save and load: the worker count (when it divides streams_per_rank), prefetch_factor,
decode_timeout_s, the decoder backend (same pixels on H.264). Must not change (load_state_dict
raises one line naming it): seed, shuffle, shuffle_buffer, drop_last, resampled, epoch_samples,
the shards. Augmentation settings are not checked; changing them changes pixels, not the order.

Elastic resume: a state saved with another layout - world_size, batch_size or streams_per_rank
(which follows num_workers unless set) - is loaded by re-splitting the rest of its epoch
(remainder.py): together the new ranks yield exactly the samples the old ranks had not yet yielded,
each once, with the clips and crops those samples would have given; every new rank yields the
same number of batches, so load_state_dict raises (one line) when world_size x batch_size does not
divide the samples left. Resampled epochs continue the old streams' remaining draws the same way.
From the next epoch on, the normal plan of the new layout applies. A state saved inside such a
remainder epoch resumes exactly on the same layout and is re-split again on another one. The
trainer builds the loader for the new world and loads one saved state (any old rank's) into every
new rank.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import os
import shutil
import tarfile
import time
from collections import Counter
from typing import Collection

import torch
from torch.utils.data import DataLoader

from pipeline import storage
from pipeline.config import ConfigError, DataConfig
from pipeline.data.batch_maker import BatchMaker
from pipeline.data.batch_ring import new_release_counters
from pipeline.data.dataset import ANNOTATION_EXTS, BatchSpec, ClipDataset
from pipeline.data.decode import check_decoder
from pipeline.data.masking import make_masker
from pipeline.data.plan import PlanSpec
from pipeline.data.remainder import Remainder
from pipeline.data.sampling import ClipSampling
from pipeline.data.shard_format import META_EXT, SampleMeta, ShardFormatError
from pipeline.data.shards import ShardRef, list_shards
from pipeline.data.normalize import batch_to_device
from pipeline.data.transforms import TransformSpec

STATE_VERSION = 2  # 2 added "remainder"; a version 1 state loads as one without it
_LAYOUT = ("world_size", "batch_size", "streams_per_rank")  # may change: the rest of the epoch is re-split


class ClipLoader:
    def __init__(self, dataset: ClipDataset, num_workers: int, prefetch_factor: int = 2,
                 device: torch.device | str | None = "cpu"):
        self.dataset, self.num_workers, self.prefetch_factor = dataset, num_workers, prefetch_factor
        self.device = None if device is None else torch.device(device)
        self.epoch, self.batches_done = 0, 0
        self.worker_pids: dict[int, int] = {}  # worker -> pid of the process that made its latest batch
        self._counts: Counter = Counter()
        self._skipped: Counter = Counter()
        self._wait_s = self._busy_s = 0.0
        self._workers: DataLoader | None = None  # started on first iteration, kept until close()
        self._generation = 0  # of the newest iteration; an older one raises if resumed
        self._in_use: int | None = None  # the worker whose ring slot backs the uint8 batch last handed out
        self._held: dict[tuple[int, int], torch.Tensor] = {}  # keeps each ring slot mapped in this process
        self._maker: BatchMaker | None = None  # decode_in_loader: makes the batches the workers read, here

    def __len__(self) -> int:
        return self.dataset.plan(self.epoch).batches_per_rank

    def set_epoch(self, epoch: int) -> None:
        """Start of `epoch` (no-op when already in it, so a resumed mid-epoch position is kept)."""
        if epoch != self.epoch:
            self.epoch, self.batches_done = epoch, 0
            self.dataset.remainder = None

    def __iter__(self):
        total = len(self)
        source = self._start()
        self._generation += 1
        generation = self._generation
        spec = self.dataset.batch_spec
        started = time.perf_counter()
        try:
            while self.batches_done < total:
                t0 = time.perf_counter()
                self._release_in_use()
                batch, events = self._make(self._next(source, total))
                self.worker_pids[events["worker"]] = events["pid"]
                if self.num_workers > 0 and events["slot"] is not None:
                    self._held[events["worker"], events["slot"]] = batch["video"]
                    self._in_use = events["worker"]  # device None: its slot is freed when the next batch is asked for
                if batch["video"].is_cuda and self.device is not None and self.device.type == "cpu":
                    batch["video"] = batch["video"].cpu()  # decoded on the GPU, handed over on the CPU
                if self.device is not None:
                    batch = batch_to_device(batch, self.device, spec.mean, spec.std)
                    self._release_in_use()  # copied or normalised: the slot is free again
                self._wait_s += time.perf_counter() - t0
                self.batches_done += 1
                self._counts.update(batches=1, samples=events["samples"], clips=events["clips"])
                self._skipped.update(events["skipped"])
                yield batch
                if generation != self._generation:
                    raise RuntimeError("data: this iteration was ended by a newer iter(loader) or close(); "
                                       "iterate the newest one")
        finally:
            self._busy_s += time.perf_counter() - started
            del source
        self.epoch, self.batches_done = self.epoch + 1, 0
        self.dataset.remainder = None

    def _start(self):
        """The batches of a new iteration from (epoch, batches_done): the dataset itself without
        workers; else the persistent workers, started on first use and told where to start."""
        self.dataset.epoch, self.dataset.start_batch = self.epoch, self.batches_done
        if self.num_workers == 0:
            return iter(self.dataset)
        self._release_in_use()  # asking for the new iteration's batches ends the last one handed out
        if self._workers is None or not self.dataset.publish():
            self.close()
            self.dataset.released = new_release_counters(self.num_workers)
            self.dataset.share_iteration()
            self.dataset.publish()
            self._workers = DataLoader(self.dataset, batch_size=None, num_workers=self.num_workers,
                                       prefetch_factor=self.prefetch_factor, persistent_workers=True)
        try:  # restarts the workers' iteration: what they had in flight of the last one is dropped
            return iter(self._workers)
        except BaseException:
            self.close()  # a worker died since the last iteration: the next one starts new ones
            raise

    def _make(self, item) -> tuple[dict, dict]:
        """(batch, events): as a worker made it, or made here from the ReadBatch a worker read
        (decode_in_loader: batch_maker.py)."""
        if not self.dataset.batch_spec.decode_in_loader:
            return item
        if self._maker is None:
            self._maker = BatchMaker(self.dataset.batch_spec)
        return self._maker.make(item)

    def _next(self, source, total: int):
        try:
            return next(source)
        except StopIteration:
            self.close()
            raise RuntimeError(f"data: workers stopped after {self.batches_done} of {total} batches") from None
        except BaseException:
            self.close()  # a worker failed or died: the next iteration starts new ones
            raise

    def _release_in_use(self) -> None:
        if self._in_use is not None and self.num_workers > 0:
            self.dataset.released[self._in_use] += 1
        self._in_use = None

    def close(self) -> None:
        """Stop the workers and their decode helpers now (garbage collection of the loader does too);
        an open iteration ends, and the next one starts new workers."""
        self._release_in_use()  # a worker waiting for that ring slot could not see the stop request
        self._generation += 1
        if self._workers is not None and self._workers._iterator is not None:
            self._workers._iterator._shutdown_workers()  # what torch runs when its iterator is collected
        self._workers = None
        self._held.clear()
        if self._maker is not None:
            self._maker.close()  # its decode helper, if any
            self._maker = None

    def stats(self) -> dict:
        """Counters since construction, for the trainer's logs."""
        busy = max(self._busy_s, 1e-9)
        return {"batches": self._counts["batches"], "samples": self._counts["samples"],
                "clips": self._counts["clips"], "samples_per_s": self._counts["samples"] / busy,
                "wait_s": self._wait_s, "wait_fraction": self._wait_s / busy,
                "skipped_total": sum(self._skipped.values()), "skipped": dict(self._skipped)}

    def _order_fields(self) -> dict:
        spec = self.dataset.plan_spec
        shards = hashlib.sha256(repr([([(s.name, s.samples) for s in refs], w) for refs, w in spec.sources])
                                .encode()).hexdigest()[:16]
        return {"seed": spec.seed, "world_size": self.dataset.world_size, "batch_size": spec.batch_size,
                "streams_per_rank": spec.streams, "shuffle": spec.shuffle, "shuffle_buffer": spec.shuffle_buffer,
                "drop_last": spec.drop_last, "resampled": spec.resampled, "epoch_samples": spec.epoch_samples,
                "shards": shards}

    def state_dict(self) -> dict:
        state = {"version": STATE_VERSION, "epoch": self.epoch, "batches_done": self.batches_done,
                 "order": self._order_fields()}
        if self.dataset.remainder is not None:
            state["remainder"] = self.dataset.remainder.to_state()
        return state

    def load_state_dict(self, state: dict) -> None:
        if state.get("version") not in (1, STATE_VERSION):
            raise ValueError(f"data state: version {state.get('version')!r} unsupported (want {STATE_VERSION})")
        now, saved = self._order_fields(), state["order"]
        for name, value in saved.items():
            if name not in _LAYOUT and now.get(name) != value:
                raise ValueError(f"data state: {name} was {value!r} when saved, is {now.get(name)!r} now (the rest "
                                 f"of epoch {state['epoch']} could not be reproduced); set data.{name} back to resume")
        epoch, done = int(state["epoch"]), int(state["batches_done"])
        rest = Remainder.from_state(state["remainder"]) if "remainder" in state else None
        if all(now[name] == saved[name] for name in _LAYOUT):
            self.epoch, self.batches_done, self.dataset.remainder = epoch, done, rest
            return
        world, batch, streams = (int(saved[name]) for name in _LAYOUT)
        if rest is None:
            old = dataclasses.replace(self.dataset.plan_spec, batch_size=batch, streams=streams)
            rest = Remainder.of_epoch(old, epoch, world, done)
        else:
            rest = rest.after(world, batch, streams, done)
        if rest.length % (now["world_size"] * now["batch_size"]):
            raise ValueError(
                f"data state: the {rest.length} samples left in epoch {epoch} (saved on {world} ranks x batch {batch}) "
                f"do not split into equal batches over {now['world_size']} ranks x batch {now['batch_size']}; "
                f"resume on a world_size x batch_size that divides {rest.length}, or from a checkpoint at another step")
        self.epoch, self.batches_done, self.dataset.remainder = epoch, 0, rest  # (empty if saved at its end)


SHM = "/dev/shm"


def shm_free_bytes() -> int | None:
    """Free bytes of /dev/shm, where torch puts the workers' shared batch rings; None without one."""
    try:
        return shutil.disk_usage(SHM).free
    except OSError:
        return None


def _check_shared_memory(cfg: DataConfig, clips_per_sample: int, slots: int) -> None:
    """ConfigError now, rather than a bus error in a worker later, when the batch rings of this node's
    ranks (LOCAL_WORLD_SIZE, set by torchrun / accelerate) cannot fit in /dev/shm (64 MB in a default
    docker container). Counts the uint8 video of every ring slot; the other tensors are small."""
    free = shm_free_bytes()
    if free is None or cfg.num_workers == 0:
        return
    batch = cfg.batch_size * clips_per_sample * 3 * cfg.num_frames * cfg.crop_size ** 2
    ranks = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    need = ranks * cfg.num_workers * slots * batch
    if need > free:
        mib = 2 ** 20
        raise ConfigError(
            f"data.num_workers: the workers' batch buffers need {need / mib:,.1f} MiB of shared memory ({ranks} "
            f"rank(s) x {cfg.num_workers} workers x {slots} batches of {batch / mib:,.1f} MiB) but {SHM} has "
            f"{free / mib:,.1f} MiB free; enlarge it (docker run --shm-size={math.ceil(need / 2 ** 30) + 1}G, or a "
            f"Kubernetes emptyDir with medium: Memory mounted at {SHM}) or lower data.num_workers, "
            f"data.prefetch_factor or data.batch_size")


_FIT_SAMPLES = 64  # videos of the first shard looked at to see whether a clip fits one


def _check_clip_fits(shard: ShardRef, sampling: ClipSampling, stride_key: str = "data.frame_stride") -> None:
    """ConfigError when a clip is longer than every video looked at in the first shard (its tar
    headers and .json members only): every clip would be padded with repeats of a last frame.
    stride_key: the key that set sampling.frame_stride (a source's own, or data.frame_stride)."""
    if sampling.mode == "segment":
        return  # a clip spans each video, whatever its length
    longest, seen = None, 0
    try:
        with tarfile.open(shard.url, mode="r:") as tar:
            for info in tar:
                if not (info.isreg() and info.name.endswith(f".{META_EXT}") and info.name.count(".") == 1):
                    continue
                try:
                    meta = SampleMeta.from_json(tar.extractfile(info).read(), info.name)
                except ShardFormatError:
                    continue  # the loader skips and counts it
                span = (sampling.num_frames - 1) * sampling.step(meta.fps) + 1
                if meta.num_frames >= span:
                    return
                longest, seen = max(longest or meta, meta, key=lambda m: m.num_frames), seen + 1
                if seen == _FIT_SAMPLES:
                    break
    except (OSError, tarfile.TarError):
        return  # not a local, readable shard
    if longest is not None:
        step = sampling.step(longest.fps)
        raise ConfigError(f"data.num_frames: a clip of {sampling.num_frames} frames, {step:g} apart, spans "
                          f"{(sampling.num_frames - 1) * step + 1:g} frames, longer than any of the first {seen} videos of "
                          f"{shard.name} (at most {longest.num_frames} frames); lower data.num_frames or "
                          f"{stride_key}")


def build_loader(cfg: DataConfig, rank: int = 0, world_size: int = 1, patch_size: tuple[int, int, int] = (2, 16, 16),
                 split: str | None = "train", train: bool | None = None,
                 device: torch.device | str | None = "cpu",
                 annotations: Collection[str] = (), decode_in_loader: bool | None = None) -> ClipLoader:
    """The loader for this rank. train (default: split == "train") picks random clips, crops,
    flips and shuffling; otherwise fixed order, multi-view clips, every sample (padded to equal
    batches by wrapping around). device: where batches are handed over (see the module doc).
    annotations: the per-frame annotations the consumer reads ("boxes", "masks"); no others are
    read from the shards (each task kind's ANNOTATIONS, pipeline/tasks/<kind>.py, says which it needs).
    decode_in_loader: workers only read and parse samples, this process decodes and crops them
    (batch_maker.py); None: exactly when data.decode_device is cuda (which requires it). True on
    the CPU runs the GPU's code path there (tests, benchmarks)."""
    cfg.validate()
    unknown = sorted(set(annotations) - set(ANNOTATION_EXTS))
    if unknown:
        raise ConfigError(f"annotations: {unknown[0]!r} is not one of {tuple(ANNOTATION_EXTS)}")
    train = split == "train" if train is None else train
    on_gpu = cfg.decode_device == "cuda"
    if decode_in_loader is False and on_gpu:
        raise ConfigError("data.decode_device: cuda decodes in the loader's process (CUDA fails in forked "
                          "DataLoader workers); decode_in_loader=False cannot apply")
    try:
        check_decoder(cfg.decoder, cfg.decode_device)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    pt, ph, pw = patch_size
    for name, value, patch in (("num_frames", cfg.num_frames, pt), ("crop_size", cfg.crop_size, ph),
                               ("crop_size", cfg.crop_size, pw)):
        if value % patch:
            raise ConfigError(f"data.{name}: {value} is not divisible by the patch size {patch}")
    streams = cfg.streams_per_rank or max(1, cfg.num_workers)
    storage.set_endpoint(cfg.storage_endpoint)  # for this process and the workers it starts
    storage.configure_cache(cfg.cache_dir, cfg.cache_size_gb)
    keyed = [("data.shards" if not cfg.sources else f"data.sources[{i}].shards", s)
             for i, s in enumerate(cfg.data_sources())]
    sources = [([dataclasses.replace(ref, source=i) for ref in list_shards(src.shards, src.manifest, split, key)],
                src.weight) for i, (key, src) in enumerate(keyed)]
    plan_spec = PlanSpec(sources=sources, batch_size=cfg.batch_size, streams=streams, seed=cfg.seed,
                         shuffle=cfg.shuffle and train, shuffle_buffer=cfg.shuffle_buffer,
                         drop_last=cfg.drop_last and train, resampled=cfg.resampled and train,
                         epoch_samples=cfg.epoch_samples)
    sampling = ClipSampling(cfg.sampling, cfg.num_frames, cfg.frame_stride, cfg.target_fps,
                            cfg.repeated_samples if train else cfg.eval_clips, train)
    strides = cfg.source_strides()  # each source's clips use its own frame step (BatchSpec.sampling_of)
    for i, (refs, _) in enumerate(sources):
        own = bool(cfg.sources) and cfg.sources[i].frame_stride > 0
        _check_clip_fits(refs[0], dataclasses.replace(sampling, frame_stride=strides[i]),
                         f"data.sources[{i}].frame_stride" if own else "data.frame_stride")
    transform = TransformSpec(cfg.crop, cfg.crop_size, cfg.crop_scale, cfg.flip_prob, cfg.rand_augment_ops,
                              cfg.rand_augment_magnitude, cfg.eval_crops, train)
    grid = (cfg.num_frames // pt, cfg.crop_size // ph, cfg.crop_size // pw)
    batch_spec = BatchSpec(sampling, transform, cfg.decoder, cfg.decode_timeout_s, cfg.mean, cfg.std, grid,
                           cfg.mask_type, cfg.mask_ratio, cfg.mask_block_scale, cfg.mask_block_aspect,
                           frozenset(annotations), strides, cfg.decode_device,
                           on_gpu if decode_in_loader is None else decode_in_loader)
    try:  # fail now, not in a worker, on a mask the grid cannot take
        make_masker(cfg.mask_type, cfg.mask_ratio, grid)
    except ValueError as e:
        raise ConfigError(f"data.mask_type: {e}") from None
    # prefetch_factor batches per worker are in flight; two more ring slots keep workers from waiting
    ring_slots = cfg.prefetch_factor + 2
    if not batch_spec.decode_in_loader:  # else the workers hand over encoded bytes, no rings
        _check_shared_memory(cfg, batch_spec.clips_per_sample, ring_slots)
    dataset = ClipDataset(plan_spec, batch_spec, rank, world_size, ring_slots=ring_slots)
    loader = ClipLoader(dataset, cfg.num_workers, cfg.prefetch_factor, device)
    if len(loader) == 0:
        total = loader.dataset.plan().total_samples
        raise ConfigError(f"data.batch_size: {total} samples of split {split!r} make no batch of "
                          f"{cfg.batch_size} per rank over {world_size} ranks")
    return loader
