"""Transcoding, clip cutting and segments show in a probe of the stored video; annotations follow them."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest

from data_prep.annotations import npz_bytes
from data_prep.encode import encode_mp4
from data_prep.probe import probe
from data_prep.process import frame_plan, output_size
from pipeline.testing.sharding import decoded, metas, quarantine, read_samples, run_shard, video


def test_transcode_short_side_fps_gop(tmp_path):
    video(tmp_path / "in" / "a.mp4", frames=50, height=48, width=64, fps=25, gop=25)
    run_shard(tmp_path / "in", tmp_path / "out", transcode=True, short_side=32, fps=12.5, gop=4, crf=30)
    sample = read_samples(tmp_path / "out")["a"]
    info = probe(sample["mp4"])
    assert (info.width, info.height, info.fps, info.num_frames, info.keyframe_interval) == (42, 32, 12.5, 25, 4)
    meta = json.loads(sample["json"])
    assert (meta["width"], meta["height"], meta["fps"], meta["num_frames"]) == (42, 32, 12.5, 25)
    assert meta["extra"]["keyframe_interval"] == 4 and meta["extra"]["source_frames"] == 50
    assert meta["extra"]["source_size"] == [64, 48] and meta["extra"]["mode"] == "transcode"


def test_fps_change_picks_the_frame_on_screen(tmp_path):
    """Each output frame at 10 fps shows the source frame at k/10 s: compare pixels with the source."""
    (tmp_path / "in").mkdir()
    levels = np.arange(25) * 10  # frame t is a flat grey of level 10 t
    frames = np.broadcast_to(levels[:, None, None, None], (25, 32, 32, 3)).astype(np.uint8)
    (tmp_path / "in" / "a.mp4").write_bytes(encode_mp4(frames, fps=25, crf=0))
    run_shard(tmp_path / "in", tmp_path / "out", transcode=True, fps=10.0, crf=0)
    out = decoded(read_samples(tmp_path / "out")["a"]["mp4"])
    shown = np.abs(out.mean(axis=(1, 2, 3))[:, None] - levels[None]).argmin(axis=1)
    assert list(shown) == [0, 2, 5, 7, 10, 12, 15, 17, 20, 22]


def test_frame_plan_and_output_size():
    times = [i / 25 for i in range(25)]
    assert frame_plan(times, 1.0, 0.2, 0.4, 0) == [5, 6, 7, 8, 9]
    assert frame_plan(times, 1.0, 0.0, 1.0, 10) == [0, 2, 5, 7, 10, 12, 15, 17, 20, 22]
    assert frame_plan(times, 1.0, 0.0, 1.0, 50)[:4] == [0, 0, 1, 1]
    assert output_size(64, 48, 0) == (64, 48) and output_size(63, 47, 0) == (64, 48)
    assert output_size(320, 240, 128) == (170, 128) and output_size(240, 320, 128) == (128, 170)


def _annotated(d, name="a", frames=16, height=48, width=64):
    video(d / f"{name}.mp4", frames=frames, height=height, width=width)
    boxes = [None if t == 3 else [t, 2 * t, t + 20, 2 * t + 16] for t in range(frames)]
    (d / f"{name}.boxes.json").write_text(json.dumps({"format": "xyxy", "boxes": boxes}))
    masks = np.zeros((frames, height, width), np.uint8)
    for t in range(frames):
        masks[t, 8:24, 4 * t % 40: 4 * t % 40 + 16] = 1 + t % 3  # blocks on a 4-pixel grid
    (d / f"{name}.masks.npz").write_bytes(npz_bytes(masks=masks))
    return boxes, masks


def test_annotations_copied_unchanged(tmp_path):
    _annotated(tmp_path / "in")
    run_shard(tmp_path / "in", tmp_path / "out")
    sample = read_samples(tmp_path / "out")["a"]
    assert sample["boxes.json"] == (tmp_path / "in" / "a.boxes.json").read_bytes()
    assert sample["masks.npz"] == (tmp_path / "in" / "a.masks.npz").read_bytes()


def test_annotations_follow_cut_fps_and_resize(tmp_path):
    boxes, masks = _annotated(tmp_path / "in")
    run_shard(tmp_path / "in", tmp_path / "out", transcode=True, short_side=24, fps=12.5, segment_s=0.32)
    samples = read_samples(tmp_path / "out")
    assert sorted(samples) == ["a_seg0000", "a_seg0001"]
    for n, key in enumerate(sorted(samples)):
        plan = [8 * n + 2 * k for k in range(4)]  # 12.5 fps from 25: every second frame
        got_boxes = json.loads(samples[key]["boxes.json"])["boxes"]
        assert got_boxes == [None if boxes[t] is None else [v * 0.5 for v in boxes[t]] for t in plan]
        with np.load(io.BytesIO(samples[key]["masks.npz"]), allow_pickle=False) as npz:
            got_masks = npz["masks"]
        assert got_masks.shape == (4, 24, 32)
        assert np.array_equal(got_masks, masks[plan][:, 1::2, 1::2])
        meta = json.loads(samples[key]["json"])
        assert meta["num_frames"] == 4 and meta["extra"]["clip_start"] == pytest.approx(0.32 * n)


def test_mismatched_masks_are_quarantined(tmp_path):
    d = tmp_path / "in"
    _annotated(d, "a")
    (d / "a.masks.npz").write_bytes(npz_bytes(masks=np.zeros((16, 48, 60), np.uint8)))
    _annotated(d, "b")
    buf = io.BytesIO()
    np.savez(buf, masks=np.array([{"x": 1}], dtype=object))
    (d / "b.masks.npz").write_bytes(buf.getvalue())
    run_shard(d, tmp_path / "out")
    reasons = {q["key"]: q["reason"] for q in quarantine(tmp_path / "out")}
    assert reasons["a"] == "masks.npz: shape (16, 48, 60) does not match the video (16, 48, 64)"
    assert reasons["b"].startswith("masks.npz: unreadable (Object arrays cannot be loaded")
    assert metas(tmp_path / "out") == {}


@pytest.mark.parametrize("gop", [16, 32])
def test_transcode_puts_keyframes_exactly_every_gop(tmp_path, gop):
    """Sources with shorter (8) and longer (40) keyframe intervals than asked: the output's
    keyframes sit at 0, gop, 2 gop, ... whatever the source's were; the manifest says so."""
    video(tmp_path / "in" / "short.mp4", frames=64, gop=8)
    video(tmp_path / "in" / "long.mp4", frames=64, gop=40, seed=1)
    run_shard(tmp_path / "in", tmp_path / "out", transcode=True, gop=gop)
    for key, sample in read_samples(tmp_path / "out").items():
        assert probe(sample["mp4"]).keyframes == list(range(0, 64, gop)), key
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["totals"]["keyframe_interval"] == gop
