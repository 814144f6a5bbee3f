"""`vssl synth`: write the labelled synthetic video dataset (mp4 + kinetics.csv + DAVIS export).

    vssl synth --out data/synth                       # the default preset
    vssl synth --out data/synth --preset hard --per-class 100 --frames 16 --size 64 --fps 25 \
               --seed 0 --val-fraction 0.2 --workers 2 [--no-davis] [--overwrite]

--preset picks a row of data_prep/synth.py's PRESETS; every other flag given overrides it. The
dataset layout and guarantees are described in data_prep/synth.py.
"""

from __future__ import annotations

import argparse
import sys
import time

from data_prep.synth import PRESETS, SynthConfig, generate

_DEFAULTS = SynthConfig()
# flag -> SynthConfig field, for the flags that override the preset when given
_FIELDS = {"per_class": "per_class", "frames": "num_frames", "size": "size", "fps": "fps", "seed": "seed",
           "val_fraction": "val_fraction", "gop": "gop", "crf": "crf", "davis": "davis"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="dataset folder to create")
    parser.add_argument("--preset", default="default",
                        help=f"named settings: {', '.join(PRESETS)} (default: default); other flags override it")
    parser.add_argument("--per-class", type=int, help=f"videos per class (default: {_DEFAULTS.per_class})")
    parser.add_argument("--frames", type=int, help=f"frames per video (default: {_DEFAULTS.num_frames})")
    parser.add_argument("--size", type=int, help=f"frame width = height, even (default: {_DEFAULTS.size})")
    parser.add_argument("--fps", type=float, help=f"(default: {_DEFAULTS.fps:g})")
    parser.add_argument("--seed", type=int, help=f"(default: {_DEFAULTS.seed})")
    parser.add_argument("--val-fraction", type=float,
                        help=f"fraction of each class put in the val split (default: {_DEFAULTS.val_fraction})")
    parser.add_argument("--gop", type=int, help=f"keyframe interval (default: {_DEFAULTS.gop})")
    parser.add_argument("--crf", type=int, help=f"x264 quality, lower = better (default: {_DEFAULTS.crf})")
    parser.add_argument("--no-davis", dest="davis", action="store_false", default=None,
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
    explicit = {field: getattr(args, flag) for flag, field in _FIELDS.items() if getattr(args, flag) is not None}
    try:
        summary = generate(args.out, preset=args.preset, workers=args.workers, overwrite=args.overwrite,
                           progress=_Progress(), **explicit)
    except OSError as e:
        print(f"vssl synth: error: could not write {args.out}: {e}", file=sys.stderr)
        return 1
    print(summary.format())
    return 0
