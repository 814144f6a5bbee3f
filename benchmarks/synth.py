"""Benchmark of `vssl synth`: generation throughput, worker scaling, and where the time goes.

    python -m benchmarks synth --quick      # 80 videos, 16 frames, 64 px (10-20 s on 2 cores)
    python -m benchmarks synth              # 160 videos, 32 frames, 128 px (about 1-2 min)

Peers measured in the same run: the same dataset with 1 vs 2 workers (scaling), and the bare
H.264 encode of the same frames (the floor any generator writing mp4 pays), against which the
numpy rendering and the whole generation are expressed. Times are the best of `repeats`.
"""

from __future__ import annotations

import itertools
import tempfile
import time
from pathlib import Path
from typing import Callable

from data_prep.encode import encode_mp4
from data_prep.synth import SynthConfig, generate
from data_prep.synth_export import X264_PRESET, X264_THREADS
from data_prep.synth_render import render_video, sample_params


def _best_seconds(action: Callable[[], object], repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        action()
        best = min(best, time.perf_counter() - start)
    return best


def run(quick: bool) -> dict:
    config = SynthConfig(per_class=10 if quick else 20, num_frames=16 if quick else 32,
                         size=64 if quick else 128, seed=0)
    repeats = 2 if quick else 3
    with tempfile.TemporaryDirectory(prefix="bench-synth-") as tmp:
        runs = itertools.count()

        def make(workers: int, davis: bool = True) -> Callable[[], object]:
            return lambda: generate(Path(tmp) / f"run{next(runs)}", config, workers=workers, davis=davis)

        one = _best_seconds(make(1), repeats)
        two = _best_seconds(make(2), repeats)
        no_davis = _best_seconds(make(1, davis=False), repeats)
    indices = range(config.num_videos)
    params = [sample_params(config.seed, i, config.num_frames, config.size) for i in indices]

    def render_all() -> None:
        for p in params:
            render_video(p)

    render = _best_seconds(render_all, repeats)
    clips = [render_video(p)[0] for p in params]
    encode = _best_seconds(lambda: [encode_mp4(c, fps=config.fps, gop=config.gop, crf=config.crf,
                                               preset=X264_PRESET, threads=X264_THREADS)
                                   for c in clips], repeats)
    print(f"synth: {config.num_videos} videos x {config.num_frames} frames at {config.size} px: "
          f"1 worker {one:.2f} s, 2 workers {two:.2f} s, no DAVIS {no_davis:.2f} s, "
          f"render only {render:.2f} s, encode only {encode:.2f} s")
    metrics = {
        "videos_per_s": round(config.num_videos / two, 1),
        "workers2_speedup": round(one / two, 2),
        "render_vs_encode": round(render / encode, 2),
        "generate_vs_encode": round(no_davis / encode, 2),
        "davis_overhead": round(one / no_davis, 2),
    }
    goals = {"workers2_speedup": ">= 1.5", "render_vs_encode": "<= 1.25", "generate_vs_encode": "<= 2.5"}
    return {"metrics": metrics, "goals": goals}
