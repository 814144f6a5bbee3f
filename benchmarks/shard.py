"""Benchmark `vssl shard`: videos/s with 1 and 2 workers in copy and transcode mode, against bare PyAV.

    python -m benchmarks shard --quick     # 32 videos, best of 3 rounds; under a minute on 2 cores
    python -m benchmarks shard             # 96 videos, best of 5 rounds

Inputs are made here, in a temp dir: H.264 videos of 320x240, 96 frames at 25 fps, keyframe
every 96 frames (a moving textured square, like pipeline/testing/videos.py). Transcode mode re-encodes to
short side 128, GOP 16, CRF 23, x264 veryfast. The peer is the bare work of that transcode done
by PyAV in this process, video after video: decode, scale (one reused VideoReformatter, as
vssl does), encode with the same settings (data_prep.encode.encode_mp4, threads=1) -- no probe,
decode checks, metadata, tar, journal or worker processes.

Each round times every configuration once, in turn, so a burst of load from other processes
hits all of them alike; each time reported is the best over the rounds.

Metrics:
    workers2_speedup     transcode time with 1 worker / with 2 workers       goal >= 1.7
    transcode_overhead   transcode time with 1 worker / peer time - 1       goal <= 0.15
    videos_per_s         transcode mode, 2 workers
    s3_vs_local          copy mode, 2 workers: time local disk -> local disk / time S3 -> S3   goal >= 0.9
    s3_vs_local_cpu      the same ratio of CPU seconds of vssl's processes (the S3 server's left out)
    ray_vs_local         transcode mode, 2 workers: time with the local pool / with --backend ray on a
                         local Ray cluster of 2 CPUs (the engine's overhead)             goal >= 0.9
    ray_vs_local_copy    the same in copy mode (little work per video: Ray's per-task cost shows most)
and, for reference, copy-mode videos/s and speedup, and the one-off worker start-up time that a
warm-up run absorbs before the timed runs.

The S3 runs read the same videos from, and write the shards to, an S3-compatible server on
127.0.0.1 (moto's, pipeline/testing/s3server.py; started here, in its own process). s3_vs_local is what
object storage costs on this machine, the server's own CPU on the same 2 cores included (moto
spends ~15-20 ms of CPU per request; a real store is another machine); s3_vs_local_cpu is what it
costs vssl (requests, staging files, uploads, journal chunks). Both null without moto. The warm-up
runs (S3 first, so the worker forkserver has s3fs imported, as a `vssl shard` of URLs starts it)
absorb the one-off start-up. The Ray cluster starts once, before the warm-up runs (a Ray warm-up
run starts its workers and their pools), and is null without ray installed.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterator

import av
from av.video.reformatter import VideoReformatter
import numpy as np

from benchmarks.loader import tree_cpu_seconds
from data_prep.encode import encode_mp4
from data_prep.process import output_size
from data_prep.ray_pool import LOCAL_SYSTEM_CONFIG
from data_prep.shard_run import shard_dataset
from data_prep.listing import list_inputs
from pipeline.config import ShardConfig
from pipeline.testing.s3server import local_s3

SIZE, FRAMES, FPS = (240, 320), 96, 25.0
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
        scaler = VideoReformatter()
        frames = (scaler.reformat(f, width=width, height=height, format="yuv420p", interpolation="AREA")
                  for f in container.decode(stream))
        return encode_mp4(frames, fps=float(stream.average_rate), gop=TRANSCODE["gop"], crf=TRANSCODE["crf"],
                          preset=TRANSCODE["preset"], threads=1)


def best_times(runs: dict[str, Callable[[int], None]], rounds: int, leave_out: tuple[int, ...] = ()
               ) -> tuple[dict[str, float], dict[str, float]]:
    """Per run, the best wall seconds and the best CPU seconds of this process tree but `leave_out`."""
    times: dict[str, list[float]] = {name: [] for name in runs}
    cpu: dict[str, list[float]] = {name: [] for name in runs}
    for round_no in range(rounds):
        for name, fn in runs.items():
            cpu0, start = tree_cpu_seconds(os.getpid(), leave_out), time.perf_counter()
            fn(round_no)
            times[name].append(time.perf_counter() - start)
            cpu[name].append(tree_cpu_seconds(os.getpid(), leave_out) - cpu0)
    return {name: min(values) for name, values in times.items()}, {name: min(values) for name, values in cpu.items()}


@contextlib.contextmanager
def local_ray(cpus: int) -> Iterator[bool]:
    """A local Ray cluster for the whole benchmark (vssl's runs use it as it is); False without ray."""
    try:
        import ray
    except ImportError:
        yield False
        return
    ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING,
             _system_config=LOCAL_SYSTEM_CONFIG)  # as `vssl shard --backend ray` starts one
    try:
        yield True
    finally:
        ray.shutdown()


def run(quick: bool) -> dict:
    count, rounds = (32, 3) if quick else (96, 5)
    with tempfile.TemporaryDirectory(prefix="vssl-bench-shard-") as tmp, local_s3() as server, local_ray(2) as ray:
        tmp_path = Path(tmp)
        (tmp_path / "in").mkdir()
        paths = make_inputs(tmp_path / "in", count)
        listing = list_inputs(str(tmp_path / "in"), labels="none")
        if server is not None:
            bucket = server.make_bucket("bench")
            server.upload_tree(tmp_path / "in", bucket + "/in")
            listing_s3 = list_inputs(bucket + "/in/", labels="none")

        def shard_run(name: str, workers: int, settings: dict, s3: bool = False, backend: str = "local"
                      ) -> Callable[[int], None]:
            def go(round_no: int) -> None:
                cfg = ShardConfig(workers=workers, backend=backend, **settings)
                out = f"{bucket}/{name}-{round_no}" if s3 else tmp_path / f"{name}-{round_no}"
                summary = shard_dataset(listing_s3 if s3 else listing, out, cfg, progress=False)
                assert summary.samples == count, f"{name}: {summary.samples} of {count} videos sharded"
            return go

        if server is not None:
            shard_run("warmup_s3", 2, {}, s3=True)(0)
        if ray:
            shard_run("warmup_ray", 2, TRANSCODE, backend="ray")(0)
        start = time.perf_counter()
        shard_run("warmup", 2, {})(0)
        warmup = time.perf_counter() - start
        runs = {"peer": lambda _: [bare_transcode(p) for p in paths]}
        runs.update({f"{mode}{w}": shard_run(f"{mode}{w}", w, TRANSCODE if mode == "transcode" else {})
                     for mode in ("copy", "transcode") for w in (1, 2)})
        if server is not None:
            runs["copy2_s3"] = shard_run("copy2_s3", 2, {}, s3=True)
        if ray:
            runs["transcode2_ray"] = shard_run("transcode2_ray", 2, TRANSCODE, backend="ray")
            runs["copy2_ray"] = shard_run("copy2_ray", 2, {}, backend="ray")
        t, cpu = best_times(runs, rounds, (server.pid,) if server is not None else ())
    metrics = {
        "workers2_speedup": round(t["transcode1"] / t["transcode2"], 3),
        "transcode_overhead": round(t["transcode1"] / t["peer"] - 1, 3),
        "videos_per_s": round(count / t["transcode2"], 2),
        "transcode_videos_per_s_1worker": round(count / t["transcode1"], 2),
        "peer_videos_per_s": round(count / t["peer"], 2),
        "copy_videos_per_s_1worker": round(count / t["copy1"], 2),
        "copy_videos_per_s_2workers": round(count / t["copy2"], 2),
        "copy_workers2_speedup": round(t["copy1"] / t["copy2"], 3),
        "s3_vs_local": round(t["copy2"] / t["copy2_s3"], 3) if "copy2_s3" in t else None,
        "s3_vs_local_cpu": round(cpu["copy2"] / cpu["copy2_s3"], 3) if "copy2_s3" in t else None,
        "ray_vs_local": round(t["transcode2"] / t["transcode2_ray"], 3) if ray else None,
        "ray_vs_local_copy": round(t["copy2"] / t["copy2_ray"], 3) if ray else None,
        "warmup_run_s": round(warmup, 3),
    }
    print(f"shard: {count} videos {SIZE[1]}x{SIZE[0]}x{FRAMES}, best of {rounds} rounds: "
          + ", ".join(f"{name} {seconds:.2f}s" for name, seconds in t.items()))
    return {"metrics": metrics, "goals": {"workers2_speedup": ">= 1.7", "transcode_overhead": "<= 0.15",
                                          "s3_vs_local": ">= 0.9", "ray_vs_local": ">= 0.9"}}
