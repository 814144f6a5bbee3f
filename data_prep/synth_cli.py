"""`vssl synth`: write the labelled synthetic video dataset (mp4 + kinetics.csv + DAVIS export).

    vssl synth --out data/synth --per-class 10 --frames 16 --size 64 --fps 25 --seed 0 \
               --val-fraction 0.2 --workers 2 [--no-davis] [--overwrite]

The dataset layout and guarantees are described in data_prep/synth.py.
"""

from __future__ import annotations

import argparse
import sys
import time

from data_prep.synth import SynthConfig, generate

_DEFAULTS = SynthConfig()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="dataset folder to create")
    parser.add_argument("--per-class", type=int, default=_DEFAULTS.per_class, help="videos per class")
    parser.add_argument("--frames", type=int, default=_DEFAULTS.num_frames, help="frames per video")
    parser.add_argument("--size", type=int, default=_DEFAULTS.size, help="frame width = height, even")
    parser.add_argument("--fps", type=float, default=_DEFAULTS.fps)
    parser.add_argument("--seed", type=int, default=_DEFAULTS.seed)
    parser.add_argument("--val-fraction", type=float, default=_DEFAULTS.val_fraction,
                        help="fraction of each class put in the val split")
    parser.add_argument("--gop", type=int, default=_DEFAULTS.gop, help="keyframe interval")
    parser.add_argument("--crf", type=int, default=_DEFAULTS.crf, help="x264 quality (lower = better)")
    parser.add_argument("--no-davis", dest="davis", action="store_false",
                        help="skip the DAVIS-2017 JPEG/PNG export")
    parser.add_argument("--workers", type=int, default=0, help="processes; 0 = all cores")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing synth dataset at --out once the new one is complete")


class _Progress:
    """Prints done/total to stderr at most every few seconds, so long runs show they are alive."""

    def __init__(self, every_s: float = 5.0) -> None:
        self.every_s, self.last = every_s, time.monotonic()

    def __call__(self, done: int, total: int) -> None:
        if time.monotonic() - self.last >= self.every_s and done < total:
            self.last = time.monotonic()
            print(f"vssl synth: {done}/{total} videos", file=sys.stderr, flush=True)


def run(args: argparse.Namespace) -> int:
    config = SynthConfig(per_class=args.per_class, num_frames=args.frames, size=args.size,
                         fps=args.fps, seed=args.seed, val_fraction=args.val_fraction,
                         davis=args.davis, gop=args.gop, crf=args.crf)
    try:
        summary = generate(args.out, config, workers=args.workers, overwrite=args.overwrite,
                           progress=_Progress())
    except OSError as e:
        print(f"vssl synth: error: could not write {args.out}: {e}", file=sys.stderr)
        return 1
    print(summary.format())
    return 0
