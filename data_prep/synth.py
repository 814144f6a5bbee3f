"""The labelled synthetic video dataset: the embedded default data set and test bed of vssl.

    vssl synth --out data/synth --workers 2                       # the default preset
    vssl synth --out data/synth --preset hard --per-class 100      # a preset, one setting overridden
    from data_prep.synth import generate
    summary = generate("data/synth", preset="hard", per_class=10, num_frames=16, size=64, workers=2)

Each video shows a textured target shape whose motion over the clip is its class (see
synth_render.py), with distractors and a drifting background. The dataset folder:

    classes.txt     one class name per line; line index = label id
    synth.json      every generation parameter (preset, ranges) + seed + version, and the counts
    kinetics.csv    label,youtube_id,time_start,time_end,split (label = class name)
    videos/, davis/ per video, see synth_export.py
    davis/ImageSets/2017/train.txt, val.txt   sequence names per split

Video i is `sample_params(seed, i, ...)` with label i % 8; the first round(per_class *
val_fraction) videos of each class are val. So the output does not depend on the number of
workers. Everything is written into a sibling `<out>.partial-*` folder that is renamed
to `<out>` only once complete, so a folder named `<out>` is always a whole dataset.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import io
import json
import multiprocessing
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Callable

from data_prep.synth_export import DAVIS_SETS_DIR, X264_PRESET, X264_THREADS, VideoEntry, write_video
from data_prep.synth_render import CLASSES, NOISE_GRID, DrawingRanges, render_video, sample_params
from pipeline.config import ConfigError
from pipeline.durable import replace_folder

SYNTH_VERSION = 2
SPLITS = ("train", "val")
CSV_HEADER = ("label", "youtube_id", "time_start", "time_end", "split")

# Named settings, each given as what it changes from SynthConfig() and DrawingRanges() (keys under
# "ranges"). "hard" is the version-1 default: colours drawn from the same range for objects and
# background, and 10 videos per class. docs/EXPERIMENTS.md has what each preset is measured to teach.
PRESETS: dict[str, dict[str, Any]] = {
    "default": {},
    "hard": {"per_class": 10, "ranges": {"object_colors": (0.0, 255.0), "background_colors": (40.0, 200.0)}},
}


@dataclass(frozen=True)
class SynthConfig:
    """Everything that determines the dataset's bytes (worker count does not)."""

    per_class: int = 150   # what recipes/finetune/supervised_synth.yaml needs to generalise (docs/EXPERIMENTS.md)
    num_frames: int = 16
    size: int = 64
    fps: float = 25.0
    seed: int = 0
    val_fraction: float = 0.2
    davis: bool = True
    gop: int = 8
    crf: int = 20
    preset: str = "default"   # the PRESETS row the fields started from (preset_config applies it)
    ranges: DrawingRanges = DrawingRanges()

    def validate(self) -> None:
        checks = [
            ("per_class", isinstance(self.per_class, int) and self.per_class >= 1, "an integer >= 1"),
            ("num_frames", isinstance(self.num_frames, int) and 2 <= self.num_frames <= 512,
             "an integer in [2, 512]"),
            ("size", isinstance(self.size, int) and 32 <= self.size <= 512 and self.size % 2 == 0,
             "an even integer in [32, 512] (H.264 needs even sides)"),
            ("fps", isinstance(self.fps, (int, float)) and 0 < self.fps <= 240, "a number in (0, 240]"),
            ("seed", isinstance(self.seed, int) and self.seed >= 0, "an integer >= 0"),
            ("val_fraction", isinstance(self.val_fraction, (int, float)) and 0 <= self.val_fraction < 1,
             "a number in [0, 1)"),
            ("gop", isinstance(self.gop, int) and self.gop >= 1, "an integer >= 1"),
            ("crf", isinstance(self.crf, int) and 0 <= self.crf <= 51, "an integer in [0, 51]"),
        ]
        if not isinstance(self.davis, bool):
            raise ConfigError(f"synth.davis: must be true or false, got {self.davis!r}")
        for name, ok, expected in checks:
            if not ok or isinstance(getattr(self, name), bool):
                raise ConfigError(f"synth.{name}: must be {expected}, got {getattr(self, name)!r}")
        if self.preset not in PRESETS:
            raise ConfigError(f"synth.preset: must be one of {', '.join(PRESETS)}, got {self.preset!r}")
        if not isinstance(self.ranges, DrawingRanges):
            raise ConfigError(f"synth.ranges: must be a DrawingRanges, got {self.ranges!r}")
        try:
            self.ranges.validate(self.size)
        except ValueError as e:
            raise ConfigError(f"synth.ranges.{e}") from None

    @property
    def val_count(self) -> int:
        """Val videos per class: the fraction rounded; at least one if asked for, but never all."""
        if self.val_fraction == 0 or self.per_class == 1:
            return 0
        return min(self.per_class - 1, max(1, round(self.per_class * self.val_fraction)))

    @property
    def num_videos(self) -> int:
        return self.per_class * len(CLASSES)

    def entry(self, index: int) -> VideoEntry:
        return VideoEntry.make(index, len(CLASSES), self.per_class, self.val_count,
                               self.num_frames, self.fps)


@dataclass
class SynthSummary:
    out_dir: Path
    entries: list[VideoEntry] = field(repr=False)
    bytes: int
    seconds: float
    workers: int
    preset: str = "default"
    classes: tuple[str, ...] = CLASSES

    @property
    def num_videos(self) -> int:
        return len(self.entries)

    @property
    def counts(self) -> dict[str, dict[str, int]]:
        """split -> class -> videos."""
        return {s: {c: sum(e.split == s and e.class_name == c for e in self.entries) for c in self.classes}
                for s in SPLITS}

    @property
    def videos_per_s(self) -> float:
        return self.num_videos / max(self.seconds, 1e-9)

    def format(self) -> str:
        width, counts = max(len(c) for c in self.classes), self.counts
        lines = [f"{'class':<{width}}  " + "  ".join(f"{s:>6}" for s in SPLITS)]
        lines += [f"{c:<{width}}  " + "  ".join(f"{counts[s][c]:>6}" for s in SPLITS)
                  for c in self.classes]
        lines.append(f"wrote {self.num_videos} videos ({self.bytes / 1e6:.1f} MB of mp4) to "
                     f"{self.out_dir} in {self.seconds:.1f} s: {self.videos_per_s:.1f} videos/s "
                     f"with {self.workers} worker(s), preset {self.preset}")
        return "\n".join(lines)


def preset_config(name: str = "default", **settings: Any) -> SynthConfig:
    """The SynthConfig of preset `name`, with `settings` (SynthConfig fields) overriding it."""
    if name not in PRESETS:
        raise ConfigError(f"synth.preset: must be one of {', '.join(PRESETS)}, got {name!r}")
    table = dict(PRESETS[name])
    ranges = DrawingRanges(**table.pop("ranges", {}))
    return _override(SynthConfig(**table, ranges=ranges, preset=name), settings)


def _override(config: SynthConfig, settings: dict[str, Any]) -> SynthConfig:
    unknown = set(settings) - {f.name for f in dataclasses.fields(SynthConfig)}
    if unknown:
        raise ConfigError(f"synth.{sorted(unknown)[0]}: unknown setting")
    return dataclasses.replace(config, **settings)


def make_video(config: SynthConfig, root: Path, index: int) -> tuple[VideoEntry, int]:
    """Render and write video `index` under `root`; return its entry and mp4 size."""
    entry = config.entry(index)
    frames, boxes, masks = render_video(sample_params(config.seed, index, config.num_frames, config.size,
                                                      config.ranges))
    size = write_video(root, entry, frames, boxes, masks, fps=config.fps, gop=config.gop,
                       crf=config.crf, davis=config.davis)
    return entry, size


def _write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def write_index_files(root: Path, config: SynthConfig, entries: list[VideoEntry]) -> None:
    """classes.txt, kinetics.csv, DAVIS ImageSets and, last, synth.json."""
    _write_text(root / "classes.txt", "".join(f"{c}\n" for c in CLASSES))
    table = io.StringIO()
    writer = csv.writer(table, lineterminator="\n")
    writer.writerow(CSV_HEADER)
    writer.writerows((e.class_name, e.youtube_id, 0, e.time_end, e.split) for e in entries)
    _write_text(root / "kinetics.csv", table.getvalue())
    if config.davis:
        for split in SPLITS:
            names = "".join(f"{e.youtube_id}\n" for e in entries if e.split == split)
            _write_text(root / DAVIS_SETS_DIR / f"{split}.txt", names)
    counts = {s: sum(e.split == s for e in entries) for s in SPLITS}
    meta = {"generator": "vssl synth", "version": SYNTH_VERSION, **dataclasses.asdict(config),
            "x264_preset": X264_PRESET, "x264_threads": X264_THREADS, "classes": list(CLASSES),
            "videos": len(entries), "videos_by_split": counts, "val_per_class": config.val_count,
            "noise_grid": NOISE_GRID}
    _write_text(root / "synth.json", json.dumps(meta, indent=2, sort_keys=True) + "\n")


def _worker_context() -> multiprocessing.context.BaseContext:
    """Workers forked from a clean server that has imported this module once: they neither
    inherit the caller's threads (e.g. torch's) nor pay spawn's ~0.5 s of imports each."""
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([__name__])
    return context


def _run_videos(config: SynthConfig, root: Path, workers: int,
                progress: Callable[[int, int], None] | None) -> list[tuple[VideoEntry, int]]:
    task = partial(make_video, config, root)
    indices = range(config.num_videos)
    with contextlib.ExitStack() as stack:
        if workers == 1:
            done = map(task, indices)
        else:
            pool = stack.enter_context(_worker_context().Pool(workers))
            done = pool.imap_unordered(task, indices, chunksize=max(1, config.num_videos // (workers * 8)))
        results = []
        for result in done:
            results.append(result)
            if progress:
                progress(len(results), config.num_videos)
    return sorted(results, key=lambda r: r[0].index)


def _prepare_out(out_dir: Path, overwrite: bool) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"synth.out: {out_dir} exists and is not a folder")
    if out_dir.is_dir() and any(out_dir.iterdir()):
        if not overwrite:
            raise ConfigError(f"synth.out: {out_dir} is not empty; pick a new folder or pass --overwrite")
        if not (out_dir / "synth.json").is_file():
            raise ConfigError(f"synth.out: {out_dir} has no synth.json, so --overwrite will not replace it")


def generate(out_dir: str | Path, config: SynthConfig | None = None, *, workers: int = 1,
             overwrite: bool = False, progress: Callable[[int, int], None] | None = None,
             **settings: Any) -> SynthSummary:
    """Write the dataset to `out_dir`. `settings` override fields of `config`, or of the preset
    named by `preset=` (default "default"), e.g. generate(out, preset="hard", per_class=2, seed=1).
    `workers` <= 0: all cores."""
    if config is None:
        config = preset_config(settings.pop("preset", "default"), **settings)
    elif "preset" in settings:
        raise ConfigError("synth.preset: give a preset or a config, not both")
    else:
        config = _override(config, settings)
    config.validate()
    if not isinstance(workers, int) or isinstance(workers, bool):
        raise ConfigError(f"synth.workers: must be an integer, got {workers!r}")
    workers = min(workers if workers > 0 else os.cpu_count() or 1, config.num_videos)
    out_dir = Path(out_dir).absolute()   # "." has no usable name or parent for the partial folder
    _prepare_out(out_dir, overwrite)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    partial_dir = Path(tempfile.mkdtemp(prefix=f"{out_dir.name}.partial-", dir=out_dir.parent))
    try:
        results = _run_videos(config, partial_dir, workers, progress)
        entries = [entry for entry, _ in results]
        write_index_files(partial_dir, config, entries)
        replace_folder(partial_dir, out_dir)
    except BaseException:
        shutil.rmtree(partial_dir, ignore_errors=True)
        raise
    return SynthSummary(out_dir=out_dir, entries=entries, bytes=sum(size for _, size in results),
                        seconds=time.perf_counter() - start, workers=workers, preset=config.preset)
