"""Every input format of `vssl shard` lists, labels and shards its videos."""

from __future__ import annotations

import io
import json
import pickle
import tarfile

import numpy as np
import pytest

from data_prep.annotations import npz_bytes
from data_prep.listing import list_inputs
from data_prep.probe import probe
from data_prep.sources import ListingError
from pipeline.cli import main
from pipeline.data.shard_format import SampleMeta, make_key, read_manifest
from pipeline.testing.sharding import encoded, metas, quarantine, read_samples, run_shard, video


def test_folder_tree_labelled(tmp_path):
    for n, cls in enumerate(["dog", "cat", "cat"]):
        video(tmp_path / "in" / cls / f"clip{n}.mp4", seed=n)
    summary = run_shard(tmp_path / "in", tmp_path / "out")
    manifest = read_manifest(tmp_path / "out")
    assert manifest.classes == ["cat", "dog"]
    got = {m["source"].split("/in/")[1]: (m["label"], m["label_name"], m["num_frames"])
           for m in metas(tmp_path / "out").values()}
    assert got == {"cat/clip1.mp4": (0, "cat", 16), "cat/clip2.mp4": (0, "cat", 16), "dog/clip0.mp4": (1, "dog", 16)}
    assert summary.samples == 3 and manifest.totals["samples"] == 3


def test_folder_tree_unlabelled_and_byte_copy(tmp_path):
    a = video(tmp_path / "in" / "a.mp4", seed=1)
    video(tmp_path / "in" / "deep" / "er" / "b.mp4", seed=2)
    run_shard(tmp_path / "in", tmp_path / "out")
    samples = read_samples(tmp_path / "out")
    assert [json.loads(s["json"])["label"] for s in samples.values()] == [-1, -1]
    assert read_manifest(tmp_path / "out").classes == []
    first = samples["a"]
    assert first["mp4"] == a.read_bytes()  # copy mode keeps the bytes
    meta = SampleMeta.from_json(first["json"])
    assert meta.extra["mode"] == "copy" and meta.extra["codec"] == "h264" and meta.extra["keyframe_interval"] == 8
    assert (meta.width, meta.height, meta.fps, meta.duration) == (64, 48, 25.0, 0.64)


def _kinetics_tree(root):
    video(root / "train" / "bowling" / "aaa_000001_000002.mp4", seed=1)
    video(root / "riding bike" / "bbb_000003_000004.mp4", seed=2)
    video(root / "ccc_000000_000010.mp4", seed=3)
    video(root / "full1.mp4", frames=50, seed=4)  # 2 s at 25 fps, cut below


def test_kinetics_csv_layouts_and_cut(tmp_path):
    root = tmp_path / "k"
    _kinetics_tree(root)
    csv = tmp_path / "k.csv"
    csv.write_text("label,youtube_id,time_start,time_end,split\n"
                   "bowling,aaa,1,2,train\n"
                   "riding bike,bbb,3,4,val\n"
                   "bowling,ccc,0,10,train\n"
                   "riding bike,full1,0.4,1.2,train\n"
                   "bowling,gone,5,15,train\n"
                   "bowling,full1,1.6,3,train\n")
    run_shard(csv, tmp_path / "out", root=root)
    by_id = {m["extra"]["youtube_id"]: m for m in metas(tmp_path / "out").values()}
    assert sorted(by_id) == ["aaa", "bbb", "ccc", "full1"]
    assert by_id["bbb"]["split"] == "val" and by_id["bbb"]["label_name"] == "riding bike"
    cut = by_id["full1"]
    assert cut["num_frames"] == 20 and cut["extra"]["clip_start"] == 0.4 and cut["extra"]["clip_end"] == 1.2
    assert cut["extra"]["mode"] == "transcode"
    reasons = {q["key"]: q["reason"] for q in quarantine(tmp_path / "out")}
    assert reasons["gone_000005_000015"].startswith("no video for gone_000005_000015")
    assert reasons["full1_000001_000003"].startswith("video is 2.00s, shorter than the requested clip")
    manifest = read_manifest(tmp_path / "out")
    assert manifest.classes == ["bowling", "riding bike"]
    assert manifest.totals["by_split"] == {"train": 3, "val": 1}
    assert sorted(s.name for s in manifest.shards) == ["train-000000.tar", "val-000000.tar"]


def test_kinetics_csv_missing_column_is_one_line_error(tmp_path, capsys):
    (tmp_path / "k").mkdir()
    csv = tmp_path / "k.csv"
    csv.write_text("label,youtube_id,time_start,split\nbowling,aaa,1,train\n")
    with pytest.raises(ListingError, match=r"k\.csv: missing column 'time_end'"):
        list_inputs(str(csv), root=str(tmp_path / "k"))
    assert main(["shard", str(csv), "--root", str(tmp_path / "k"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "missing column 'time_end'" in err


def test_synth_layout_end_to_end_through_the_cli(tmp_path, capsys):
    """`vssl synth`'s layout: videos/<split>/<class>/<id>_000000_<end>.mp4 + sidecars, kinetics.csv, classes.txt."""
    root = tmp_path / "synth"
    rows = ["label,youtube_id,time_start,time_end,split"]
    for n, (split, cls) in enumerate([("train", "circle"), ("train", "square"), ("val", "circle")]):
        stem = root / "videos" / split / cls / f"syn{n:05d}_000000_000001"
        video(stem.with_suffix(".mp4"), frames=16, seed=n)
        boxes = {"format": "xyxy", "boxes": [[1, 2, 3, 4]] * 16}
        (stem.parent / f"{stem.name}.boxes.json").write_text(json.dumps(boxes))
        (stem.parent / f"{stem.name}.masks.npz").write_bytes(npz_bytes(masks=np.full((16, 48, 64), n, np.uint8)))
        rows.append(f"{cls},syn{n:05d},0,1,{split}")
    (root / "kinetics.csv").write_text("\n".join(rows) + "\n")
    (root / "classes.txt").write_text("square\ncircle\n")
    out = tmp_path / "shards"
    assert main(["shard", str(root / "kinetics.csv"), "--root", str(root / "videos"), "--classes",
                 str(root / "classes.txt"), "--out", str(out), "--no-progress"]) == 0
    assert "3 inputs -> 3 samples in 2 shards" in capsys.readouterr().out
    samples = read_samples(out)
    assert {k: json.loads(v["json"])["label"] for k, v in samples.items()} == {
        "syn00000_000000_000001": 1, "syn00001_000000_000001": 0, "syn00002_000000_000001": 1}
    assert all(set(v) == {"mp4", "json", "boxes.json", "masks.npz"} for v in samples.values())
    assert main(["inspect", str(out), "--decode"]) == 0


def test_ssv2_json_with_labels_and_webm(tmp_path):
    root = tmp_path / "20bn"
    video(root / "1.mp4", seed=1)
    encoded(root / "2.webm", "libvpx-vp9", "webm")
    encoded(root / "3.webm", "libvpx", "webm")  # VP8 cannot live in MP4: re-encoded
    entries = [{"id": "1", "label": "putting a cup on a table", "template": "Putting [something] on [something]",
                "placeholders": ["a cup", "a table"]},
               {"id": "2", "label": "pushing a pen", "template": "Pushing [something]", "placeholders": ["a pen"]},
               {"id": 3, "template": "Pushing [something]"},
               {"id": "4", "template": "Pushing [something]"}]
    (tmp_path / "train.json").write_text(json.dumps(entries))
    (tmp_path / "labels.json").write_text(json.dumps({"Pushing something": "0", "Putting something on something": "1"}))
    run_shard(tmp_path / "train.json", tmp_path / "out", root=root, classes=tmp_path / "labels.json")
    samples = read_samples(tmp_path / "out")
    got = {k: json.loads(s["json"]) for k, s in samples.items()}
    assert {k: (m["label"], m["extra"]["mode"], m["extra"]["source_codec"]) for k, m in got.items()} == {
        "1": (1, "copy", "h264"), "2": (0, "remux", "vp9"), "3": (0, "transcode", "vp8")}
    assert got["1"]["extra"]["placeholders"] == ["a cup", "a table"]
    assert probe(samples["2"]["mp4"]).is_mp4
    assert [q["key"] for q in quarantine(tmp_path / "out")] == ["4"]
    assert read_manifest(tmp_path / "out").classes == ["Pushing something", "Putting something on something"]


def test_path_lists_txt_and_csv(tmp_path):
    video(tmp_path / "v" / "a.mp4", seed=1)
    video(tmp_path / "v" / "b.mp4", seed=2)
    (tmp_path / "list.txt").write_text("# my videos\nv/a.mp4\n\nv/b.mp4\nv/a.mp4\n")
    run_shard(tmp_path / "list.txt", tmp_path / "o1")
    assert sorted(metas(tmp_path / "o1")) == sorted([make_key("v/a"), make_key("v/b")])
    (dup,) = quarantine(tmp_path / "o1")
    assert dup["source"] == "list.txt:5"
    assert dup["reason"] == f"duplicate key {make_key('v/a')} (first from list.txt:2)"
    (tmp_path / "list.csv").write_text(f"path,label\n{tmp_path}/v/a.mp4,3\nv/b.mp4,1\n")
    run_shard(tmp_path / "list.csv", tmp_path / "o2")
    labels = sorted((m["label"], m["label_name"]) for m in metas(tmp_path / "o2").values())
    assert labels == [(1, "1"), (3, "3")]
    assert read_manifest(tmp_path / "o2").classes == ["0", "1", "2", "3"]


def test_class_lists(tmp_path):
    video(tmp_path / "v" / "a.mp4")
    (tmp_path / "list.csv").write_text("v/a.mp4,1\n")
    (tmp_path / "classes.txt").write_text("cat\ndog\n")
    listing = list_inputs(str(tmp_path / "list.csv"), classes_file=str(tmp_path / "classes.txt"))
    assert (listing.classes, listing.items[0].label, listing.items[0].label_name) == (["cat", "dog"], 1, "dog")
    bad = {"twice.txt": ("a\nb\na\n", "class 'a' is listed twice"),
           "gap.json": ('{"a": 0, "b": 2}', "class indices must be 0..1, each once"),
           "words.json": ('{"a": "zero"}', "class indices must be integers"),
           "list.json": ("[1, 2]", "expected a JSON object")}
    for name, (text, needle) in bad.items():
        (tmp_path / name).write_text(text)
        with pytest.raises(ListingError, match=needle):
            list_inputs(str(tmp_path / "list.csv"), classes_file=str(tmp_path / name))


def _v2d_tar(path, mp4: bytes):
    """A video2dataset-style shard, plus a .pyd member that must never be unpickled."""
    class Boom:
        def __reduce__(self):
            return (exec, ("raise SystemExit('unpickled!')",))

    members = [("000001.mp4", mp4), ("000001.json", json.dumps({"url": "http://x", "caption": "a dog"}).encode()),
               ("000001.txt", b"a dog"), ("000001.cls", b"1"), ("000001.pyd", pickle.dumps(Boom())),
               ("000002.json", b"{}"), ("000003.mp4", mp4), ("000003.cls", b"zero")]
    with tarfile.open(path, "w") as tf:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))


def test_reshard_vssl_and_video2dataset_shards(tmp_path):
    for n, cls in enumerate(["a", "b", "b"]):
        video(tmp_path / "in" / cls / f"{n}.mp4", seed=n)
    run_shard(tmp_path / "in", tmp_path / "first", inputs_per_shard=2)
    run_shard(tmp_path / "first", tmp_path / "second", transcode=True, short_side=32)
    before, after = metas(tmp_path / "first"), metas(tmp_path / "second")
    assert sorted(before) == sorted(after)
    for key, meta in after.items():
        assert (meta["label"], meta["label_name"]) == (before[key]["label"], before[key]["label_name"])
        assert (meta["width"], meta["height"]) == (42, 32) and meta["source"].endswith(f".tar#{key}")
        assert meta["extra"]["original_path"] == before[key]["extra"]["original_path"]  # the raw file
        assert meta["extra"]["mode"] == "transcode" and before[key]["extra"]["mode"] == "copy"
    assert read_manifest(tmp_path / "second").classes == ["a", "b"]

    _v2d_tar(tmp_path / "v2d-00000.tar", (tmp_path / "in" / "a" / "0.mp4").read_bytes())
    run_shard(tmp_path / "v2d-00000.tar", tmp_path / "third")
    (meta,) = metas(tmp_path / "third").values()
    assert meta["label"] == 1 and meta["extra"]["caption"] == "a dog"
    assert meta["extra"]["source_json"] == {"url": "http://x", "caption": "a dog"}
    reasons = sorted(q["reason"] for q in quarantine(tmp_path / "third"))
    assert reasons == ["000003.cls is not a label id: 'zero'", "no video member (has: json)"]
