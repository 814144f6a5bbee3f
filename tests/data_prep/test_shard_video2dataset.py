"""Re-sharding video2dataset output: labels from a saved column, upstream failures kept as reasons.

The input is laid out as video2dataset's webdataset writer leaves it: NNNNN.tar holding KEY.mp4,
KEY.txt (the caption) and KEY.json (the input row's columns plus key, status, error_message,
yt_meta_dict; json.dumps(indent=4)); a failed sample is KEY.json (+ KEY.txt) with no video;
NNNNN.parquet (the same rows) and NNNNN_stats.json beside each tar.
"""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

from pipeline.cli import main
from pipeline.data.shard_format import read_manifest
from pipeline.testing.sharding import metas, quarantine, run_shard, video

ERROR = "ERROR: [generic] Unable to download webpage: HTTP Error 404: Not Found\n  (caused by 404)"


def _parquet(path: Path, rows: list[dict]) -> None:
    """The shard's metadata table; a stand-in file of that name where pyarrow is missing."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        path.write_bytes(b"PAR1 stand-in: pyarrow is not installed PAR1")
        return
    pq.write_table(pa.Table.from_pylist(rows), path)


def v2d_output(folder: Path, mp4: bytes, rows: list[list[dict]]) -> Path:
    """video2dataset --output_format webdataset --save_additional_columns '[label, ...]' output:
    one shard per list of rows; a row with "status" other than success has no video."""
    folder.mkdir(parents=True)
    for shard_id, shard_rows in enumerate(rows):
        metas_written = []
        with tarfile.open(folder / f"{shard_id:05d}.tar", "w") as tf:
            for i, row in enumerate(shard_rows):
                key = f"{shard_id:05d}{i:04d}"
                meta = {"url": f"https://example.com/{key}.mp4", "caption": f"clip {key}", **row, "key": key}
                meta.setdefault("status", "success")
                meta.setdefault("error_message", None)
                meta.setdefault("yt_meta_dict", None)
                members = [] if meta["status"] != "success" else [(f"{key}.mp4", mp4)]
                members += [(f"{key}.txt", meta["caption"].encode()),
                            (f"{key}.json", json.dumps(meta, indent=4).encode())]
                for name, data in members:
                    info = tarfile.TarInfo(name)
                    info.size = len(data)
                    tf.addfile(info, io.BytesIO(data))
                metas_written.append(meta)
        _parquet(folder / f"{shard_id:05d}.parquet", metas_written)
        failed = sum(m["status"] != "success" for m in metas_written)
        (folder / f"{shard_id:05d}_stats.json").write_text(json.dumps(
            {"count": len(metas_written), "successes": len(metas_written) - failed, "failed_to_download": failed,
             "failed_to_subsample": 0, "duration": 1.0, "bytes_downloaded": len(mp4), "start_time": 0.0,
             "end_time": 1.0, "status_dict": {"success": len(metas_written) - failed}}, indent=4))
    return folder


def test_labels_from_the_saved_column_and_upstream_failures_in_quarantine(tmp_path):
    mp4 = video(tmp_path / "v.mp4").read_bytes()
    out = v2d_output(tmp_path / "v2d", mp4, [
        [{"label": "dog"}, {"label": "cat"}, {"label": "dog", "status": "failed_to_download", "error_message": ERROR}],
        [{"label": "bird"}, {"label": "cat", "status": "failed_to_subsample", "error_message": "clip too short"}]])
    run_shard(out, tmp_path / "out")
    got = {key: (m["label"], m["label_name"]) for key, m in metas(tmp_path / "out").items()}
    assert got == {"000000000": (2, "dog"), "000000001": (1, "cat"), "000010000": (0, "bird")}
    assert read_manifest(tmp_path / "out").classes == ["bird", "cat", "dog"]
    meta = metas(tmp_path / "out")["000000000"]
    assert meta["extra"]["caption"] == "clip 000000000" and meta["extra"]["source_json"]["label"] == "dog"
    reasons = {q["key"]: q["reason"] for q in quarantine(tmp_path / "out")}
    assert reasons == {
        "000000002": "video2dataset failed_to_download: ERROR: [generic] Unable to download webpage: "
                     "HTTP Error 404: Not Found (caused by 404)",
        "000010001": "video2dataset failed_to_subsample: clip too short"}


def test_integer_labels_and_another_label_key(tmp_path, capsys):
    mp4 = video(tmp_path / "v.mp4").read_bytes()
    out = v2d_output(tmp_path / "v2d", mp4, [[{"label": 3, "category": "run"}, {"label": 1, "category": "jump"}]])
    run_shard(out, tmp_path / "ids")
    assert {m["label"] for m in metas(tmp_path / "ids").values()} == {3, 1}
    assert read_manifest(tmp_path / "ids").classes == ["0", "1", "2", "3"]
    args = ["shard", str(out), "--out", str(tmp_path / "names"), "--workers", "1", "--no-progress"]
    assert main(args + ["--label-key", "category"]) == 0
    assert {m["label_name"] for m in metas(tmp_path / "names").values()} == {"run", "jump"}
    assert read_manifest(tmp_path / "names").classes == ["jump", "run"]


def test_label_key_missing_or_unusable_is_a_one_line_reason(tmp_path, capsys):
    mp4 = video(tmp_path / "v.mp4").read_bytes()
    out = v2d_output(tmp_path / "v2d", mp4, [[{"category": "run"}, {"other": 1}, {"category": [1, 2]}]])
    args = ["shard", str(out), "--out", str(tmp_path / "o"), "--workers", "1", "--no-progress"]
    assert main(args + ["--label-key", "category"]) == 0
    reasons = {q["key"]: q["reason"] for q in quarantine(tmp_path / "o")}
    assert reasons == {"000000001": "000000001.json has no 'category' (--label-key)",
                       "000000002": "000000002.json: 'category' is [1, 2], not a class id or name"}
    run_shard(out, tmp_path / "unlabelled")  # no "label" column: unlabelled, as before
    assert {m["label"] for m in metas(tmp_path / "unlabelled").values()} == {-1}


def test_label_key_refused_for_other_inputs(tmp_path, capsys):
    video(tmp_path / "in" / "a.mp4")
    args = ["shard", str(tmp_path / "in"), "--out", str(tmp_path / "o"), "--no-progress"]
    assert main(args + ["--label-key", "label"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["vssl shard: error: --label-key: reads the json of a shards input, not a folder input"]
    assert main(["shard", str(tmp_path / "in"), "--out", str(tmp_path / "o"), "--label-key", ""]) == 2
    assert capsys.readouterr().err.strip() == "vssl shard: error: --label-key: empty"
