"""Benchmark `vssl shard`: videos/s with 1 and 2 workers in copy and transcode mode, against bare PyAV.

    python -m benchmarks shard --quick     # 12 videos, best of 2; about a minute on 2 cores
    python -m benchmarks shard             # 32 videos, best of 3

Inputs are made here, in a temp dir: H.264 videos of 256x192, 48 frames at 25 fps, keyframe
every 48 frames (a moving textured square, like tests/videos.py). Transcode mode re-encodes to
short side 128, GOP 16, CRF 23, x264 veryfast. The peer is the bare work of that transcode done
by PyAV in this process, video after video: decode, scale, encode with the same settings
(data_prep.encode.encode_mp4, threads=1) -- no probe, decode checks, metadata, tar, journal or
worker processes.

Metrics (each time the best of the repeats, as the machine is shared):
    workers2_speedup     transcode time with 1 worker / with 2 workers       goal >= 1.7
    transcode_overhead   transcode time with 1 worker / peer time - 1       goal <= 0.15
    videos_per_s         transcode mode, 2 workers
and, for reference, copy-mode videos/s and speedup, and the one-off worker start-up time that a
warm-up run absorbs before the timed runs.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Callable

import av
import numpy as np

from data_prep.encode import encode_mp4
from data_prep.process import output_size
from data_prep.shard_run import shard_dataset
from data_prep.sources import list_inputs
from pipeline.config import ShardConfig

SIZE, FRAMES, FPS = (192, 256), 48, 25.0
TRANSCODE = {"transcode": True, "short_side": 128, "gop": 16, "crf": 23, "preset": "veryfast"}


def make_inputs(folder: Path, count: int) -> list[Path]:
    height, width = SIZE
    yy, xx = np.mgrid[0:height, 0:width]
    paths = []
    for n in range(count):
        rng = np.random.default_rng(n)
        base = np.stack([xx * 255 // width, yy * 255 // height, np.full_like(xx, 40 * n % 256)], -1).astype(np.uint8)
        tex = rng.integers(0, 256, size=(48, 64, 3), dtype=np.uint8)
        frames = np.repeat(base[None], FRAMES, axis=0)
        for t in range(FRAMES):
            y, x = (7 + 2 * t) % (height - 48), (11 + 3 * t) % (width - 64)
            frames[t, y:y + 48, x:x + 64] = tex
        path = folder / f"video{n:03d}.mp4"
        path.write_bytes(encode_mp4(frames, fps=FPS, gop=FRAMES))
        paths.append(path)
    return paths


def bare_transcode(path: Path) -> bytes:
    """The peer: PyAV decode -> scale -> encode of one video, with transcode mode's settings."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        width, height = output_size(stream.codec_context.width, stream.codec_context.height, TRANSCODE["short_side"])
        frames = (f.reformat(width=width, height=height, format="yuv420p", interpolation="AREA")
                  for f in container.decode(stream))
        return encode_mp4(frames, fps=float(stream.average_rate), gop=TRANSCODE["gop"], crf=TRANSCODE["crf"],
                          preset=TRANSCODE["preset"], threads=1)


def best_time(fn: Callable[[int], None], repeats: int) -> float:
    times = []
    for rep in range(repeats):
        start = time.perf_counter()
        fn(rep)
        times.append(time.perf_counter() - start)
    return min(times)


def run(quick: bool) -> dict:
    count, repeats = (12, 2) if quick else (32, 3)
    with tempfile.TemporaryDirectory(prefix="vssl-bench-shard-") as tmp:
        tmp_path = Path(tmp)
        (tmp_path / "in").mkdir()
        paths = make_inputs(tmp_path / "in", count)
        listing = list_inputs(str(tmp_path / "in"), labels="none")

        def shard_run(name: str, workers: int, settings: dict) -> Callable[[int], None]:
            def go(rep: int) -> None:
                cfg = ShardConfig(workers=workers, **settings)
                summary = shard_dataset(listing, tmp_path / f"{name}-{rep}", cfg, progress=False)
                assert summary.samples == count, f"{name}: {summary.samples} of {count} videos sharded"
            return go

        start = time.perf_counter()
        shard_run("warmup", 2, {})(0)
        warmup = time.perf_counter() - start
        t_peer = best_time(lambda rep: [bare_transcode(p) for p in paths], repeats)
        t = {(mode, w): best_time(shard_run(f"{mode}{w}", w, TRANSCODE if mode == "transcode" else {}), repeats)
             for mode in ("copy", "transcode") for w in (1, 2)}
    metrics = {
        "workers2_speedup": round(t["transcode", 1] / t["transcode", 2], 3),
        "transcode_overhead": round(t["transcode", 1] / t_peer - 1, 3),
        "videos_per_s": round(count / t["transcode", 2], 2),
        "transcode_videos_per_s_1worker": round(count / t["transcode", 1], 2),
        "peer_videos_per_s": round(count / t_peer, 2),
        "copy_videos_per_s_1worker": round(count / t["copy", 1], 2),
        "copy_videos_per_s_2workers": round(count / t["copy", 2], 2),
        "copy_workers2_speedup": round(t["copy", 1] / t["copy", 2], 3),
        "warmup_run_s": round(warmup, 3),
    }
    print(f"shard: {count} videos {SIZE[1]}x{SIZE[0]}x{FRAMES}, best of {repeats}: "
          f"peer {t_peer:.2f}s, transcode 1w {t['transcode', 1]:.2f}s 2w {t['transcode', 2]:.2f}s, "
          f"copy 1w {t['copy', 1]:.2f}s 2w {t['copy', 2]:.2f}s")
    return {"metrics": metrics, "goals": {"workers2_speedup": ">= 1.7", "transcode_overhead": "<= 0.15"}}
