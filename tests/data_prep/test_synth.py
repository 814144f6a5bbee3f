"""Tests for `vssl synth`: layout, determinism, annotations, DAVIS export, and that the label
really is the target's motion (derived here from the written masks, independently of the code)."""

from __future__ import annotations

import csv
import dataclasses
import json
import math
from pathlib import Path

import decord
import numpy as np
import pytest
from PIL import Image

from data_prep import synth
from data_prep.encode import encode_mp4
from data_prep.synth import CSV_HEADER, PRESETS, SynthConfig, generate, preset_config
from data_prep.synth_export import X264_PRESET, X264_THREADS
from data_prep.synth_render import (CLASSES, DrawingRanges, labelled_target, render_video, sample_params,
                                    sprite_box)
from pipeline.cli import main as cli_main
from pipeline.config import ConfigError

SETTINGS = dict(per_class=3, num_frames=12, size=64, fps=25.0, seed=7, val_fraction=0.34)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "one_worker"
    generate(out, workers=1, **SETTINGS)
    return out


@pytest.fixture(scope="module")
def rows(dataset: Path) -> list[dict[str, str]]:
    with open(dataset / "kinetics.csv", newline="") as f:
        return list(csv.DictReader(f))


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _stem(row: dict[str, str]) -> Path:
    return Path("videos", row["split"], row["label"],
                f"{row['youtube_id']}_{int(row['time_start']):06d}_{int(row['time_end']):06d}")


def _load_annotations(dataset: Path, row: dict[str, str]) -> tuple[np.ndarray, np.ndarray]:
    stem = dataset / _stem(row)
    boxes = json.loads(stem.with_name(stem.name + ".boxes.json").read_text())
    assert boxes["format"] == "xyxy"
    with np.load(stem.with_name(stem.name + ".masks.npz"), allow_pickle=False) as npz:
        assert list(npz.keys()) == ["masks"]
        masks = npz["masks"]
    return np.asarray(boxes["boxes"], np.float64), masks


def test_same_seed_gives_identical_bytes_with_one_or_two_workers(dataset: Path, tmp_path: Path) -> None:
    summary = generate(tmp_path / "two_workers", workers=2, **SETTINGS)
    assert summary.workers == 2 and summary.num_videos == 24
    assert summary.counts == {"train": {c: 2 for c in CLASSES}, "val": {c: 1 for c in CLASSES}}
    first, second = _files(dataset), _files(tmp_path / "two_workers")
    assert sorted(first) == sorted(second)
    assert [name for name in first if first[name] != second[name]] == []
    assert not [p for p in tmp_path.iterdir() if ".partial-" in p.name]


def test_encoding_does_not_depend_on_what_the_process_encoded_before() -> None:
    # x264's default macroblock-tree rate control failed this (~1 clip in 8 changed bytes)
    clips = [render_video(sample_params(1, i, 12, 64))[0] for i in range(16)]
    settings = dict(fps=25.0, gop=8, crf=20, preset=X264_PRESET, threads=X264_THREADS)
    forward = [encode_mp4(clip, **settings) for clip in clips]
    backward = [encode_mp4(clip, **settings) for clip in clips[::-1]][::-1]
    assert [i for i, (a, b) in enumerate(zip(forward, backward)) if a != b] == []


def test_different_seed_gives_different_videos(dataset: Path, tmp_path: Path) -> None:
    other = tmp_path / "seed8"
    generate(other, **{**SETTINGS, "seed": 8, "per_class": 1, "val_fraction": 0.0, "davis": False})
    for path in sorted(other.rglob("*.mp4")):
        twin = next(dataset.rglob(path.name.split("_")[0] + "_*.mp4"))
        assert path.read_bytes() != twin.read_bytes(), path.name


def test_index_files_layout_balance_and_split(dataset: Path, rows: list[dict[str, str]]) -> None:
    assert (dataset / "classes.txt").read_text().splitlines() == list(CLASSES)
    assert (dataset / "kinetics.csv").read_text().splitlines()[0] == ",".join(CSV_HEADER)
    assert [r["youtube_id"] for r in rows] == [f"synth{i:06d}" for i in range(3 * len(CLASSES))]
    for name in CLASSES:
        splits = sorted(r["split"] for r in rows if r["label"] == name)
        assert splits == ["train", "train", "val"], name
    assert {(r["time_start"], r["time_end"]) for r in rows} == {("0", "1")}   # ceil(12 / 25)
    for row in rows:
        stem = dataset / _stem(row)
        for suffix in (".mp4", ".boxes.json", ".masks.npz"):
            assert stem.with_name(stem.name + suffix).is_file(), (row, suffix)
    meta = json.loads((dataset / "synth.json").read_text())
    assert {k: meta[k] for k in SETTINGS} == SETTINGS
    assert meta["version"] == synth.SYNTH_VERSION and meta["classes"] == list(CLASSES)
    assert meta["videos_by_split"] == {"train": 16, "val": 8}
    assert meta["ranges"]["class_shift"] == [0.16, 0.22]
    assert meta["preset"] == "default" and meta["ranges"] == json.loads(json.dumps(dataclasses.asdict(DrawingRanges())))


def test_every_mp4_decodes_to_the_rendered_frames(dataset: Path, rows: list[dict[str, str]]) -> None:
    for index, row in enumerate(rows):
        reader = decord.VideoReader(str(dataset / _stem(row)) + ".mp4")
        assert len(reader) == 12, row
        decoded = reader.get_batch(list(range(12))).asnumpy()
        assert decoded.shape == (12, 64, 64, 3)
        assert reader.get_avg_fps() == pytest.approx(25.0)
        rendered, _, _ = render_video(sample_params(7, index, 12, 64))
        error = np.abs(decoded.astype(np.int16) - rendered).mean()
        assert error < 12, (row, error)   # yuv420p H.264 of these pictures; other videos give > 30


def test_boxes_are_the_bounds_of_the_masks(dataset: Path, rows: list[dict[str, str]]) -> None:
    errors = []
    for row in rows:
        boxes, masks = _load_annotations(dataset, row)
        assert masks.dtype == np.uint8 and masks.shape == (12, 64, 64)
        assert set(np.unique(masks)) == {0, 1}
        assert boxes.shape == (12, 4)
        for box, mask in zip(boxes, masks):
            ys, xs = np.nonzero(mask)
            errors.append(np.abs(box - [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]).max())
    assert max(errors) <= 2.0 and np.mean(errors) < 0.8


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_mask_covers_exactly_the_pixels_the_target_paints(preset: str) -> None:
    ranges = preset_config(preset).ranges
    for index in range(8):
        base = sample_params(3, index, 8, 64, ranges)
        other = dataclasses.replace(base, label=(base.label + 3) % len(CLASSES))
        frames_a, _, masks_a = render_video(base)
        frames_b, _, masks_b = render_video(other)
        # frame 0 cannot tell the classes apart: it is the same picture whatever the label
        assert np.array_equal(frames_a[0], frames_b[0]) and np.array_equal(masks_a[0], masks_b[0])
        changed = (frames_a != frames_b).any(-1)
        assert not (changed & ~(masks_a.astype(bool) | masks_b.astype(bool))).any()
        only_a = masks_a.astype(bool) & ~masks_b.astype(bool)
        assert changed[only_a].mean() > 0.8


def _mask_moments(mask: np.ndarray) -> tuple[int, float, float, float]:
    """Area, centroid and principal-axis angle (image axes: y down, so + is clockwise)."""
    ys, xs = np.nonzero(mask)
    dx, dy = xs - xs.mean(), ys - ys.mean()
    angle = 0.5 * math.atan2(2 * (dx * dy).mean(), (dx * dx).mean() - (dy * dy).mean())
    return len(xs), xs.mean(), ys.mean(), angle


def _class_from_motion(masks: np.ndarray) -> str:
    stats = [_mask_moments(m) for m in masks]
    log_area = math.log(stats[-1][0] / stats[0][0])
    turn = sum((b[3] - a[3] + math.pi / 2) % math.pi - math.pi / 2 for a, b in zip(stats, stats[1:]))
    dx, dy = stats[-1][1] - stats[0][1], stats[-1][2] - stats[0][2]
    if abs(log_area) > 0.4:
        return "grow" if log_area > 0 else "shrink"
    if abs(turn) > math.radians(30):
        return "rotate_cw" if turn > 0 else "rotate_ccw"
    if abs(dx) > abs(dy):
        return "move_right" if dx > 0 else "move_left"
    return "move_down" if dy > 0 else "move_up"


def test_label_is_determined_by_the_motion_in_the_written_masks(dataset: Path, rows: list[dict[str, str]]) -> None:
    for row in rows:
        boxes, masks = _load_annotations(dataset, row)
        assert _class_from_motion(masks) == row["label"], row
        centre = (boxes[:, :2] + boxes[:, 2:]) / 2
        if row["label"].startswith("move_"):
            assert np.abs(centre[-1] - centre[0]).max() > 0.12 * 64, row


@pytest.mark.parametrize("size,frames", [(32, 8), (48, 16), (96, 24)])
def test_label_is_determined_by_motion_across_sizes(size: int, frames: int) -> None:
    for index in range(2 * len(CLASSES)):
        params = sample_params(11, index, frames, size)
        _, boxes, masks = render_video(params)
        assert _class_from_motion(masks) == CLASSES[params.label], (size, frames, index)
        assert (boxes[:, :2] > 0).all() and (boxes[:, 2:] < size).all()   # never leaves the frame
        assert not (masks[:, [0, -1], :].any() or masks[:, :, [0, -1]].any())


def test_first_frame_statistics_do_not_depend_on_the_class() -> None:
    first, last = {name: [] for name in CLASSES}, {name: [] for name in CLASSES}
    for index in range(40 * len(CLASSES)):
        params = sample_params(5, index, 16, 64)
        target = labelled_target(params)
        for store, progress in ((first, 0.0), (last, 1.0)):
            x0, y0, x1, y1 = sprite_box(target, progress, 64, 64)
            store[CLASSES[params.label]].append(((x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0))
    pooled = np.concatenate([np.asarray(v) for v in first.values()])
    spread = pooled.max(0) - pooled.min(0)
    for name, stats in first.items():
        stats = np.asarray(stats)
        overlap = np.minimum(stats.max(0), pooled.max(0)) - np.maximum(stats.min(0), pooled.min(0))
        assert (overlap > 0.7 * spread).all(), name     # every class starts anywhere the others do
        assert (np.abs(stats.mean(0) - pooled.mean(0)) < 0.2 * spread).all(), name
    end_x = {name: np.mean([s[0] for s in v]) for name, v in last.items()}
    assert end_x["move_left"] < end_x["move_up"] < end_x["move_right"]   # the check can see motion


def test_davis_export(dataset: Path, rows: list[dict[str, str]]) -> None:
    davis = dataset / "davis"
    for split in ("train", "val"):
        listed = (davis / "ImageSets/2017" / f"{split}.txt").read_text().split()
        assert listed == [r["youtube_id"] for r in rows if r["split"] == split]
    for row in rows[:4]:
        _, masks = _load_annotations(dataset, row)
        frame_dir = davis / "JPEGImages/480p" / row["youtube_id"]
        mask_dir = davis / "Annotations/480p" / row["youtube_id"]
        assert sorted(p.name for p in frame_dir.iterdir()) == [f"{t:05d}.jpg" for t in range(12)]
        assert sorted(p.name for p in mask_dir.iterdir()) == [f"{t:05d}.png" for t in range(12)]
        for t in (0, 11):
            with Image.open(frame_dir / f"{t:05d}.jpg") as jpg:
                assert jpg.size == (64, 64) and jpg.mode == "RGB"
            with Image.open(mask_dir / f"{t:05d}.png") as png:
                assert png.mode == "P"
                assert png.getpalette()[:6] == [0, 0, 0, 128, 0, 0]
                assert np.array_equal(np.asarray(png), masks[t])


def test_no_davis_and_the_cli_summary(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cli"
    code = cli_main(["synth", "--out", str(out), "--per-class", "1", "--frames", "8", "--size", "32",
                     "--val-fraction", "0", "--workers", "1", "--no-davis"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "wrote 8 videos" in printed and "videos/s" in printed and "move_left" in printed
    assert not (out / "davis").exists()
    assert json.loads((out / "synth.json").read_text())["davis"] is False
    assert len(list(out.rglob("*.mp4"))) == 8


@pytest.mark.parametrize("flag,value,key", [
    ("--size", "63", "synth.size"), ("--frames", "1", "synth.num_frames"),
    ("--per-class", "0", "synth.per_class"), ("--val-fraction", "1.0", "synth.val_fraction")])
def test_bad_arguments_give_one_line_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                            flag: str, value: str, key: str) -> None:
    out = tmp_path / "bad"
    assert cli_main(["synth", "--out", str(out), flag, value]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and key in err and value in err
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_unwritable_output_gives_a_one_line_error(capsys: pytest.CaptureFixture[str]) -> None:
    out = "/proc/vssl-synth-test"    # cannot be created, not even by root
    assert cli_main(["synth", "--out", out, "--per-class", "1", "--frames", "4", "--workers", "1"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"could not write {out}" in err


def test_existing_output_is_kept_unless_overwrite(tmp_path: Path) -> None:
    small = dict(per_class=1, num_frames=4, size=32, davis=False)
    out = tmp_path / "data"
    generate(out, seed=1, **small)
    before = _files(out)
    with pytest.raises(ConfigError, match="not empty"):
        generate(out, seed=2, **small)
    assert _files(out) == before
    generate(out, seed=2, overwrite=True, **small)
    assert json.loads((out / "synth.json").read_text())["seed"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="no synth.json"):
        generate(foreign, overwrite=True, **small)
    assert (foreign / "notes.txt").read_text() == "mine"


def test_a_failed_run_leaves_nothing_that_looks_whole(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = synth.make_video

    def fail_on_third(config: SynthConfig, root: Path, index: int):
        if index == 2:
            raise OSError("disk full")
        return real(config, root, index)

    monkeypatch.setattr(synth, "make_video", fail_on_third)
    with pytest.raises(OSError, match="disk full"):
        generate(tmp_path / "data", per_class=1, num_frames=4, size=32, davis=False)
    assert list(tmp_path.iterdir()) == []


def test_val_count_is_balanced_and_rounded() -> None:
    assert SynthConfig(per_class=10, val_fraction=0.2).val_count == 2
    assert SynthConfig(per_class=4, val_fraction=0.01).val_count == 1
    assert SynthConfig(per_class=2, val_fraction=0.9).val_count == 1
    assert SynthConfig(per_class=1, val_fraction=0.5).val_count == 0
    assert SynthConfig(per_class=5, val_fraction=0.0).val_count == 0
    with pytest.raises(ConfigError, match="synth.colour: unknown"):
        generate("unused", colour="red")


def test_presets_resolve_and_explicit_settings_win() -> None:
    assert preset_config() == preset_config("default") == SynthConfig()
    hard = preset_config("hard")
    assert hard.preset == "hard" and hard.per_class == 10
    assert hard.ranges.background_colors == (40.0, 200.0) and hard.ranges.object_colors == (0.0, 255.0)
    mine = preset_config("hard", per_class=3, size=32)
    assert (mine.per_class, mine.size, mine.ranges) == (3, 32, hard.ranges)
    with pytest.raises(ConfigError, match="synth.preset: must be one of default, hard, got 'easy'"):
        preset_config("easy")
    with pytest.raises(ConfigError, match="synth.preset: give a preset or a config"):
        generate("unused", SynthConfig(), preset="hard")


def test_the_preset_and_its_ranges_are_recorded_in_synth_json(tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "hard"
    code = cli_main(["synth", "--out", str(out), "--preset", "hard", "--per-class", "1", "--frames", "4",
                     "--size", "32", "--val-fraction", "0", "--workers", "1", "--no-davis"])
    assert code == 0 and "preset hard" in capsys.readouterr().out
    meta = json.loads((out / "synth.json").read_text())
    assert meta["preset"] == "hard" and meta["videos"] == 8       # --per-class 1 beat the preset's 10
    assert (meta["num_frames"], meta["size"], meta["davis"]) == (4, 32, False)
    assert meta["ranges"]["background_colors"] == [40.0, 200.0] and meta["ranges"]["object_colors"] == [0.0, 255.0]
    assert cli_main(["synth", "--out", str(tmp_path / "bad"), "--preset", "easy"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "synth.preset" in err and "easy" in err


def test_presets_differ_in_colours_only() -> None:
    # same draws in the same order: the hard preset has the default's shapes, motions and masks
    for index in range(8):
        default = render_video(sample_params(2, index, 8, 64, preset_config("default").ranges))
        hard = render_video(sample_params(2, index, 8, 64, preset_config("hard").ranges))
        assert not np.array_equal(default[0], hard[0])
        assert np.array_equal(default[1], hard[1]) and np.array_equal(default[2], hard[2])


def test_default_objects_are_brighter_than_the_background_in_every_channel() -> None:
    # what lets a plain RGB ViT find the shapes; the class still needs two frames (test above)
    for index in range(8):
        frames, _, masks = render_video(sample_params(4, index, 8, 64))
        bright, dark = frames.min(-1) >= 160, frames.max(-1) <= 60
        assert (bright | dark).all()
        assert bright[masks.astype(bool)].all()
        assert dark.mean() > 0.5


def test_ranges_that_would_leave_the_frame_are_refused() -> None:
    wide = dataclasses.replace(DrawingRanges(), class_shift=(0.3, 0.4))
    with pytest.raises(ConfigError, match="synth.ranges.class_shift: .* can leave a 64 px frame"):
        generate("unused", ranges=wide)
    with pytest.raises(ConfigError, match="synth.ranges.object_colors"):
        generate("unused", ranges=dataclasses.replace(DrawingRanges(), object_colors=(200.0, 300.0)))
