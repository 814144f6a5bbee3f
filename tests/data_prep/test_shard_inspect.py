"""`vssl inspect` passes a dataset as written and names every kind of tampering, one line each."""

from __future__ import annotations

import io
import json
import shutil
import tarfile

import pytest

from data_prep.inspect_cli import inspect_dataset
from pipeline.cli import main
from pipeline.testing.sharding import run_shard, video


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    d = tmp_path_factory.mktemp("inspect")
    for n, cls in enumerate(["a", "a", "b", "b", "b"]):
        video(d / "in" / cls / f"{n}.mp4", seed=n)
    (d / "in" / "b" / "4.boxes.json").write_text(json.dumps({"format": "xyxy", "boxes": [[0, 0, 8, 8]] * 16}))
    (d / "in" / "b" / "bad.mp4").write_text("nope")
    run_shard(d / "in", d / "out", inputs_per_shard=2)
    return d / "out"


@pytest.fixture
def copy(dataset, tmp_path):
    return shutil.copytree(dataset, tmp_path / "out")


def _rewrite(shard, drop=None, edit=None):
    """Rewrite a shard without sample `drop`, or with `edit(name, bytes)` applied to each member."""
    with tarfile.open(shard) as tf:
        members = [(m, tf.extractfile(m).read()) for m in tf]
    with tarfile.open(shard, "w") as tf:
        for info, data in members:
            if drop and info.name.startswith(drop + "."):
                continue
            data = edit(info.name, data) if edit else data
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))


def test_clean_dataset_passes_with_decode_and_show(dataset, capsys):
    assert main(["inspect", str(dataset), "--decode", "--show", "2"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 3 and lines[-1].startswith("ok: 3 shards, 5 samples, 2 classes, 1 quarantined")
    assert "longest keyframe interval 8 frames" in lines[-1]
    assert lines[0].startswith("train-000000.tar a_0_") and '"label_name": "a"' in lines[0]
    assert main(["inspect", str(dataset / "manifest.json")]) == 0


def test_flipped_byte_in_a_video(copy):
    shard = copy / "train-000001.tar"
    data = bytearray(shard.read_bytes())
    data[600] ^= 0xFF  # inside the first member's video bytes (after its 512-byte header)
    shard.write_bytes(bytes(data))
    problems, _, _ = inspect_dataset(copy)
    assert problems == ["train-000001.tar: sha256 differs from the manifest",
                        f"train-000001.tar: {_first_key(shard)}: .mp4 sha256 does not match its .json"]


def _first_key(shard):
    with tarfile.open(shard) as tf:
        return tf.getnames()[0].split(".")[0]


def test_dropped_sample_and_edited_counts(copy, capsys):
    _rewrite(copy / "train-000000.tar", drop=_first_key(copy / "train-000000.tar"))
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["shards"][2]["samples"] += 1
    (copy / "manifest.json").write_text(json.dumps(manifest))
    problems, _, _ = inspect_dataset(copy)
    assert problems[0].startswith("train-000000.tar: ") and "bytes, the manifest says" in problems[0]
    assert problems[1:] == ["train-000000.tar: sha256 differs from the manifest",
                            "train-000000.tar: 1 samples, the manifest says 2",
                            "train-000002.tar: 1 samples, the manifest says 2",
                            "manifest.json: totals.samples is 5, the shards add up to 6"]
    assert main(["inspect", str(copy)]) == 1
    out = capsys.readouterr()
    assert out.out.strip().splitlines() == problems and "5 problem(s)" in out.err


def test_bad_metadata_annotations_and_stray_files(copy):
    shard = copy / "train-000002.tar"
    bad_boxes = json.dumps({"format": "xyxy", "boxes": [[0, 0, 1, 1]]}).encode()
    _rewrite(shard, edit=lambda name, data: bad_boxes if name.endswith(".boxes.json") else
             data.replace(b'"split": "train"', b'"split": "val"') if name.endswith(".json") else data)
    (copy / "train-000001.tar").unlink()
    shutil.copy(shard, copy / "extra-000000.tar")
    (copy / "quarantine.jsonl").write_text("")
    problems, _, _ = inspect_dataset(copy)
    key = _first_key(shard)
    assert problems == ["train-000001.tar: listed in the manifest but missing",
                        "train-000002.tar: sha256 differs from the manifest",
                        f"train-000002.tar: {key}: split 'val' in a 'train' shard",
                        f"train-000002.tar: {key}: boxes.json: has 1 frames, the video has 16",
                        "extra-000000.tar: shard file not listed in the manifest",
                        "quarantine.jsonl: 0 entries, the manifest says 1"]


def test_missing_or_foreign_manifest(tmp_path):
    assert inspect_dataset(tmp_path)[0] == [f"{tmp_path}/manifest.json: manifest not found"]
    (tmp_path / "manifest.json").write_text('{"format": "other"}')
    assert "not a vssl-shards manifest" in inspect_dataset(tmp_path)[0][0]


def test_keyframe_interval_checked_against_json_and_manifest(copy):
    shard = copy / "train-000002.tar"
    _rewrite(shard, edit=lambda name, data: data.replace(b'"keyframe_interval": 8', b'"keyframe_interval": 4')
             if name.endswith(".json") else data)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["totals"]["keyframe_interval"] = 16
    (copy / "manifest.json").write_text(json.dumps(manifest))
    problems, _, _ = inspect_dataset(copy)
    assert problems[1:] == [f"train-000002.tar: {_first_key(shard)}: keyframes up to 8 frames apart, .json says 4",
                            "manifest.json: totals.keyframe_interval is 16, the videos have 8"]
