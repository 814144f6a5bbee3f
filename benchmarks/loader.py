"""Loader throughput against peers on the same videos, decoder and number of worker processes.

    python -m benchmarks loader [--quick]
    python -m benchmarks loader --device cuda [--quick]     # GPU decoding only (gpu_decode_vs_cpu)

It writes textured 64-frame H.264 videos (GOP 16; 568x320, Kinetics as pretraining reads it --
short side 320 -- or 128x128 with --quick) into a temp dir, once as tar shards + manifest and once
as one mp4 per video with a CSV list, then measures 224 px crops (112 with --quick) of
16-frame clips, stride 4, with 2 DataLoader workers everywhere, in steady state (after one batch
per worker). Each ratio compares clips per CPU-second summed over every process involved (main,
workers, decode helpers; from /proc), best of interleaved rounds: on a shared 2-core machine
wall-clock rates swing with other users' load, CPU cost much less. The same ratios from wall-clock
clips/s are reported as *_wall.

    loader_vs_bare_decode  loader (multi-scale crop, flip, tube mask, killable decode helper,
                           batches handed over as the trainer takes them: uint8 to a GPU that
                           normalises them; on a CPU-only machine the uint8 batch itself) / a bare
                           loop that only reads the tars and decodes the clips
    cpu_normalize_vs_bare_decode  the same with float normalisation on the host (CPU training)
    repeat4_gain           loader with repeated_samples=4 / with 1 (clips/s, 8 clips per batch)
    vs_videomae_style      loader normalising on the CPU as the peer does / a VideoMAE-style
                           loader: a map-style dataset over the CSV,
                           decord opening each mp4 by path, per-frame PIL multi-scale crop, stack,
                           normalise, numpy tube mask, default collate
    decode_isolation_cost  1 - loader clips/s / the same loader decoding in the worker itself
    loader_vs_bare_decode_224px  (full only) loader_vs_bare_decode on 224x224 videos: the loader's
                           worst case, its crop work the same against a 3.6x cheaper decode
    persistent_epoch_start_speedup  seconds from iter() to the first batch of epoch 2 with new
                           workers (and decode helpers), as every epoch began before the loader
                           kept them, / with the workers kept (wall clock, best of the rounds;
                           also reported as epoch2_first_batch_s_new_workers / _persistent)
    annotated_vs_plain     the loader on the same videos in shards that also carry per-frame
                           boxes.json + masks.npz (as synthetic and DAVIS-style shards do), read
                           for pretraining (no annotations asked for) / the loader on plain shards
    annotated_read_vs_plain  the same, asking for boxes and masks as segmentation / tracking
                           fine-tuning does (every masks.npz inflated and cropped)
    s3_stream_vs_local     the loader streaming the same shards from an S3-compatible server on
                           127.0.0.1 (moto's, its own process; no shard cache, so every read is
                           cold) / the loader on the local shards; the server's CPU is left out
                           (a store is another machine), the _wall figure includes its load on
                           these 2 cores. null when moto is not installed.

With --device cuda (refused in one line without a CUDA device or a working torchcodec) it
measures only GPU decoding, on a machine's cores and GPU together, in wall-clock clips/s:

    gpu_decode_vs_cpu      torchcodec decoding on the GPU (NVDEC, data.decode_device=cuda: in the
                           loader's process, 2 workers reading) / torchcodec decoding on the CPU
                           in one loader worker per core; same shards (568x320, GOP 16), same
                           224 px crops of 16-frame clips, batches handed over on the GPU, a CUDA
                           sync per batch; also each rate, the worker count and whether NVDEC
                           fell back to the CPU (nvdec_cpu_fallback)
"""

from __future__ import annotations

import csv
import json
import os
import random
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import torch
import webdataset as wds
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch.utils.data import DataLoader, Dataset, IterableDataset, RandomSampler, get_worker_info

from data_prep.annotations import npz_bytes
from data_prep.encode import encode_mp4
from pipeline.config import DataConfig
from pipeline.data.loader import build_loader
from pipeline.data.shard_format import Manifest, SampleMeta, ShardEntry, sha256_file, shard_name
from pipeline.data.transforms import MULTISCALE_OFFSETS, MULTISCALE_SCALES
from pipeline.testing.s3server import local_s3

WORKERS = 2
FRAMES, STRIDE, VIDEO_FRAMES = 16, 4, 64


def textured_frames(size: tuple[int, int], seed: int) -> np.ndarray:
    """(64, height, width, 3): a noisy texture panning diagonally, so H.264 has real work to do."""
    (height, width), rng = size, np.random.default_rng(seed)
    tile = rng.integers(0, 256, size=(height // 4 + VIDEO_FRAMES, width // 4 + VIDEO_FRAMES, 3), dtype=np.uint8)
    texture = np.kron(tile, np.ones((4, 4, 1), dtype=np.uint8))
    frames = np.stack([texture[2 * t:2 * t + height, 3 * t:3 * t + width] for t in range(VIDEO_FRAMES)])
    return frames // 2 + rng.integers(0, 24, size=frames.shape, dtype=np.uint8)


def annotation_members(size: tuple[int, int], seed: int) -> dict[str, bytes]:
    """boxes.json + masks.npz members: a square of a quarter of the short side drifting across."""
    (height, width), rng = size, np.random.default_rng(seed)
    side = min(height, width) // 4
    y, masks, boxes = int(rng.integers(0, height - side)), np.zeros((VIDEO_FRAMES, height, width), np.uint8), []
    for t in range(VIDEO_FRAMES):
        x = t * (width - side) // VIDEO_FRAMES
        masks[t, y:y + side, x:x + side] = 1
        boxes.append([x, y, x + side, y + side])
    return {"boxes.json": json.dumps({"format": "xyxy", "boxes": boxes}).encode(), "masks.npz": npz_bytes(masks=masks)}


def write_dataset(folder: Path, videos: int, size: tuple[int, int], shards: int = 4, annotate: bool = False) -> Path:
    """Shards + manifest, and the same videos as mp4 files listed in videos.csv; `annotate` adds
    per-frame boxes and masks to every sample."""
    folder.mkdir(parents=True, exist_ok=True)
    entries, rows = [], []
    per_shard = videos // shards
    for s in range(shards):
        path = folder / shard_name("train", s)
        with wds.TarWriter(str(path)) as sink:
            for i in range(per_shard):
                key = f"v{s:02d}{i:03d}"
                data = encode_mp4(textured_frames(size, s * 1000 + i), fps=25.0, gop=16)
                meta = SampleMeta(label=i % 10, label_name=str(i % 10), fps=25.0, num_frames=VIDEO_FRAMES,
                                  width=size[1], height=size[0], duration=VIDEO_FRAMES / 25.0, source=key,
                                  sha256="", split="train")
                extra = annotation_members(size, s * 1000 + i) if annotate else {}
                sink.write({"__key__": key, "mp4": data, "json": meta.to_json(), **extra})
                (folder / f"{key}.mp4").write_bytes(data)
                rows.append((str(folder / f"{key}.mp4"), i % 10))
        entries.append(ShardEntry(path.name, "train", per_shard, path.stat().st_size, sha256_file(path)))
    Manifest(shards=entries, classes=[str(c) for c in range(10)], totals={"samples": len(rows)}).write(folder)
    with open(folder / "videos.csv", "w", newline="") as f:
        csv.writer(f, delimiter=" ").writerows(rows)
    return folder


def tree_cpu_seconds(root: int, leave_out: tuple[int, ...] = ()) -> float:
    """CPU seconds used so far by process `root` and its live descendants, each with its reaped
    children (Linux /proc), so a decode helper that exits mid-measurement still counts; the
    processes in `leave_out` (and theirs) do not count."""
    parent, used = {}, {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            parent[int(entry)], used[int(entry)] = int(fields[1]), sum(int(f) for f in fields[11:15])
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        total += used.get(pid, 0)
        todo += [p for p, pp in parent.items() if pp == pid and p not in leave_out]
    return total / os.sysconf("SC_CLK_TCK")


def measure(batches: Iterable, clips_of: Callable, num_batches: int, warmup: int = WORKERS,
            leave_out: tuple[int, ...] = ()) -> tuple[float, float]:
    """(clips per CPU-second of all processes but `leave_out`, clips per wall second) after `warmup`
    batches, read before the workers exit."""
    it = iter(batches)
    clips = 0
    for i in range(num_batches):
        batch = next(it)
        if i == warmup - 1:
            cpu0, wall0 = tree_cpu_seconds(os.getpid(), leave_out), time.perf_counter()
        elif i >= warmup:
            clips += clips_of(batch)
    cpu, wall = tree_cpu_seconds(os.getpid(), leave_out) - cpu0, time.perf_counter() - wall0
    for _ in it:  # let the workers finish
        pass
    return clips / cpu, clips / wall


def random_clip(num_video_frames: int, rng: random.Random) -> list[int]:
    start = rng.randint(0, num_video_frames - (FRAMES - 1) * STRIDE - 1)
    return list(range(start, start + FRAMES * STRIDE, STRIDE))


class BareDecode(IterableDataset):
    """Read the tars and decode the clips, nothing else: yields clip counts per 8 clips."""

    def __init__(self, folder: Path, clips: int):
        self.shards, self.clips = sorted(str(p) for p in folder.glob("*.tar")), clips

    def __iter__(self):
        import decord
        import io
        import tarfile

        info = get_worker_info()
        rng = random.Random(info.id)
        shards = self.shards[info.id::info.num_workers]
        done = 0
        while done < self.clips // info.num_workers:
            for shard in shards:
                with tarfile.open(shard) as tar:
                    for member in tar:
                        if member.name.endswith(".mp4") and done < self.clips // info.num_workers:
                            vr = decord.VideoReader(io.BytesIO(tar.extractfile(member).read()), num_threads=1)
                            vr.get_batch(random_clip(len(vr), rng)).asnumpy()
                            done += 1
                            if done % 8 == 0:
                                yield 8


class VideoMAEStyle(Dataset):
    """A VideoMAE-style pretraining dataset: a path list, decord by path, PIL per-frame crops."""

    def __init__(self, csv_path: Path, size: int):
        with open(csv_path) as f:
            self.rows = [line.split() for line in f]
        self.size = size

    def __len__(self) -> int:
        return len(self.rows)

    def _multiscale_crop(self, images: list) -> list:
        w, h = images[0].size
        sides = [int(min(w, h) * s) for s in MULTISCALE_SCALES]
        pairs = [(a, b) for i, a in enumerate(sides) for j, b in enumerate(sides) if abs(i - j) <= 1]
        cw, ch = random.choice(pairs)
        y, x = random.choice(MULTISCALE_OFFSETS)
        box = ((w - cw) * x // 4, (h - ch) * y // 4)
        box = (*box, box[0] + cw, box[1] + ch)
        return [img.crop(box).resize((self.size, self.size), 2) for img in images]  # 2 = bilinear

    def __getitem__(self, i: int):
        import decord
        from PIL import Image

        path, label = self.rows[i]
        vr = decord.VideoReader(path, num_threads=1, ctx=decord.cpu(0))
        frames = vr.get_batch(random_clip(len(vr), random)).asnumpy()
        images = self._multiscale_crop([Image.fromarray(f) for f in frames])
        video = torch.from_numpy(np.stack([np.asarray(img) for img in images])).float().div_(255)
        mean, std = torch.tensor(IMAGENET_DEFAULT_MEAN), torch.tensor(IMAGENET_DEFAULT_STD)
        video = ((video - mean) / std).permute(3, 0, 1, 2)
        spatial = (self.size // 16) ** 2
        mask = np.hstack([np.zeros(spatial - int(0.9 * spatial)), np.ones(int(0.9 * spatial))])
        np.random.shuffle(mask)
        return video, torch.from_numpy(np.tile(mask, FRAMES // 2)).bool(), int(label)


# where the loader hands batches over, as the trainer asks for it: on a GPU the uint8 batch goes
# to the device and is normalised there; without one, the same uint8 batch is what a device
# would receive (the "cpu" hand-over, normalising on the host, is measured as well)
HAND_OVER = "cuda" if torch.cuda.is_available() else None


def clip_loader(folder: Path | str, size: int, clips: int, repeat: int = 1, timeout: float = 30.0,
                device: str | None = HAND_OVER, annotations: tuple[str, ...] = ()):
    cfg = DataConfig(shards=str(folder), num_frames=FRAMES, frame_stride=STRIDE, crop_size=size,
                     batch_size=8 // repeat, repeated_samples=repeat, num_workers=WORKERS,
                     resampled=True, epoch_samples=clips // repeat, decode_timeout_s=timeout)
    return build_loader(cfg, patch_size=(2, 16, 16), device=device, annotations=annotations)


def epoch_start_seconds(folder: Path, crop: int, persistent: bool) -> float:
    """Seconds from iter() to the first batch of epoch 2; persistent=False closes the workers first,
    so that epoch starts new ones."""
    loader = clip_loader(folder, crop, clips=16)  # 2 batches per epoch
    for _ in range(2):
        for _ in loader:
            pass
    if not persistent:
        loader.close()
    started = time.perf_counter()
    next(iter(loader))
    seconds = time.perf_counter() - started
    loader.close()
    return seconds


def best_rates(contenders: dict, clips: int, rounds: int, leave_out: tuple[int, ...] = ()
               ) -> dict[str, tuple[float, float]]:
    """name -> (clips per CPU-second, clips/s), each the best of interleaved rounds: other load on
    the machine only slows a round down."""
    best = {name: (0.0, 0.0) for name in contenders}
    for _ in range(rounds):
        for name, make in contenders.items():
            rates = measure(*make(), num_batches=clips // 8, leave_out=leave_out)
            best[name] = tuple(max(a, b) for a, b in zip(best[name], rates))
    return best


def contenders_for(folder: Path, crop: int, clips: int, videos: int, peers: bool = True) -> dict:
    keys = lambda b: len(b["key"])  # noqa: E731
    out = {
        "bare decode": lambda: (DataLoader(BareDecode(folder, clips), batch_size=None, num_workers=WORKERS), int),
        "loader": lambda: (clip_loader(folder, crop, clips), keys),
    }
    if peers:
        out.update({
            "loader, decoding in the worker": lambda: (clip_loader(folder, crop, clips, timeout=0.0), keys),
            "loader k=4": lambda: (clip_loader(folder, crop, clips, repeat=4), keys),
            "loader, normalising on the CPU": lambda: (clip_loader(folder, crop, clips, device="cpu"), keys),
            "VideoMAE-style": lambda: (DataLoader(VideoMAEStyle(folder / "videos.csv", crop), batch_size=8,
                                                  num_workers=WORKERS, sampler=RandomSampler(
                                                      range(videos), replacement=True, num_samples=clips)),
                                       lambda b: len(b[2])),
        })
    return out


def print_rates(best: dict, size: tuple[int, int], crop: int, clips: int, rounds: int) -> None:
    for name, (per_cpu_s, per_s) in best.items():
        print(f"{name:32s} {per_cpu_s:7.1f} clips per CPU-second {per_s:7.1f} clips/s", flush=True)
    print(f"[{size[1]}x{size[0]} videos, {crop}px crops, {WORKERS} workers, {clips} clips, best of {rounds} rounds; "
          f"batches handed over {'on ' + HAND_OVER if HAND_OVER else 'as uint8'}]", flush=True)


def gpu_decode_comparison(quick: bool) -> dict:
    """gpu_decode_vs_cpu: see the module docstring."""
    from pipeline.data.decode import torchcodec_problem

    if not torch.cuda.is_available():
        raise SystemExit("python -m benchmarks loader --device cuda: torch sees no CUDA device here")
    problem = torchcodec_problem()
    if problem is not None:
        raise SystemExit(f"python -m benchmarks loader --device cuda: {problem}")
    from torchcodec.decoders import VideoDecoder

    size, crop, cores = (320, 568), 224, os.cpu_count() or 1
    videos, clips, rounds = (32, 640, 1) if quick else (64, 1920, 2)
    sync = lambda b: (torch.cuda.synchronize(), len(b["key"]))[1]  # noqa: E731
    with tempfile.TemporaryDirectory() as tmp:
        folder = write_dataset(Path(tmp) / "main", videos, size)
        probe = VideoDecoder((folder / "v00000.mp4").read_bytes(), device="cuda")
        probe.get_frame_at(0)
        fallback = bool(probe.cpu_fallback)
        best = {"cpu": 0.0, "gpu": 0.0}
        for _ in range(rounds):
            for name, decode_device, workers in (("cpu", "cpu", cores), ("gpu", "cuda", WORKERS)):
                cfg = DataConfig(shards=str(folder), num_frames=FRAMES, frame_stride=STRIDE, crop_size=crop,
                                 batch_size=8, num_workers=workers, resampled=True, epoch_samples=clips,
                                 decoder="torchcodec", decode_device=decode_device, decode_timeout_s=0.0)
                loader = build_loader(cfg, patch_size=(2, 16, 16), device="cuda")
                _, per_s = measure(loader, sync, clips // 8, warmup=workers)
                loader.close()
                best[name] = max(best[name], per_s)
                print(f"torchcodec on {name:3s}: {per_s:7.1f} clips/s ({workers} workers)", flush=True)
    ratio = best["gpu"] / best["cpu"]
    print(f"GPU decode / CPU decode ({cores} cores): {ratio:.2f}x; NVDEC fell back to the CPU: {fallback}", flush=True)
    metrics = {"gpu_decode_vs_cpu": round(ratio, 3), "gpu_decode_clips_per_s": round(best["gpu"], 1),
               "cpu_decode_clips_per_s": round(best["cpu"], 1), "cpu_decode_workers": cores,
               "nvdec_cpu_fallback": fallback}
    return {"metrics": metrics, "goals": {"gpu_decode_vs_cpu": ">= 3.0"}}


def run(quick: bool, device: str = "cpu") -> dict:
    if device == "cuda":
        return gpu_decode_comparison(quick)
    # full: Kinetics as pretraining reads it (short side 320, 16:9), then the 224x224 worst case
    # for the loader (the cheapest decode against the same crop work) for loader_vs_bare_decode_224px
    size, crop, videos, clips, rounds = ((128, 128), 112, 24, 320, 2) if quick else ((320, 568), 224, 48, 640, 3)
    small = None if quick else (224, 224)
    with tempfile.TemporaryDirectory() as tmp, local_s3() as server:
        folder = write_dataset(Path(tmp) / "main", videos, size)
        contenders, leave_out = contenders_for(folder, crop, clips, videos), ()
        annotated = write_dataset(Path(tmp) / "annotated", videos, size, annotate=True)
        keys = lambda b: len(b["key"])  # noqa: E731
        contenders["loader, annotated shards"] = lambda: (clip_loader(annotated, crop, clips), keys)
        contenders["loader, annotated, boxes+masks"] = lambda: (
            clip_loader(annotated, crop, clips, annotations=("boxes", "masks")), keys)
        if server is not None:
            url = server.make_bucket("bench") + "/main"
            for pattern in ("*.tar", "manifest.json"):
                server.upload_tree(folder, url, pattern)
            contenders["loader from S3"] = lambda: (clip_loader(url, crop, clips), lambda b: len(b["key"]))
            leave_out = (server.pid,)
        best = best_rates(contenders, clips, rounds, leave_out)
        print_rates(best, size, crop, clips, rounds)
        starts = {kept: min(epoch_start_seconds(folder, crop, kept) for _ in range(rounds)) for kept in (False, True)}
        print(f"first batch of epoch 2: {starts[False]:.3f} s with new workers, {starts[True]:.3f} s with "
              f"persistent ones", flush=True)
        if small is not None:
            folder = write_dataset(Path(tmp) / "small", videos, small)
            best_small = best_rates(contenders_for(folder, crop, clips, videos, peers=False), clips, rounds)
            print_rates(best_small, small, crop, clips, rounds)

    def ratios(i: int) -> dict:
        r = {name: rates[i] for name, rates in best.items()}
        out = {"loader_vs_bare_decode": r["loader"] / r["bare decode"], "repeat4_gain": r["loader k=4"] / r["loader"],
               "vs_videomae_style": r["loader, normalising on the CPU"] / r["VideoMAE-style"],
               "decode_isolation_cost": 1 - r["loader"] / r["loader, decoding in the worker"],
               "cpu_normalize_vs_bare_decode": r["loader, normalising on the CPU"] / r["bare decode"],
               "annotated_vs_plain": r["loader, annotated shards"] / r["loader"],
               "annotated_read_vs_plain": r["loader, annotated, boxes+masks"] / r["loader"]}
        if small is not None:
            out["loader_vs_bare_decode_224px"] = best_small["loader"][i] / best_small["bare decode"][i]
        out["s3_stream_vs_local"] = r["loader from S3"] / r["loader"] if "loader from S3" in r else None
        return out

    metrics = {k: None if v is None else round(v, 3) for k, v in ratios(0).items()}
    metrics.update({f"{k}_wall": None if v is None else round(v, 3) for k, v in ratios(1).items()})
    metrics.update(persistent_epoch_start_speedup=round(starts[False] / starts[True], 3),
                   epoch2_first_batch_s_new_workers=round(starts[False], 3),
                   epoch2_first_batch_s_persistent=round(starts[True], 3))
    goals = {"loader_vs_bare_decode": ">= 0.90", "repeat4_gain": ">= 2.5", "vs_videomae_style": ">= 1.0",
             "s3_stream_vs_local": ">= 0.90", "annotated_vs_plain": ">= 0.90"}
    return {"metrics": metrics, "goals": goals}
