"""`vssl shard` in and out of object storage, against a real S3 server (moto's, pipeline/testing/s3server.py):
the same bytes as a local run, quarantine of missing objects, and the commit protocol under a
killed run and a store that goes away (shard_format.py's docstring)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from data_prep.shard_run import KILL_ENV
from pipeline import storage
from pipeline.cli import main
from pipeline.config import ConfigError
from pipeline.data.shard_format import read_manifest
from pipeline.data.shards import list_shards
from pipeline.testing.sharding import metas, quarantine, run_shard, same_on_store, shard_bytes, video

ROOT = Path(__file__).resolve().parents[2]
SHARD = ["--inputs-per-shard", "3", "--no-progress"]


@pytest.fixture(scope="module")
def raw(tmp_path_factory) -> Path:
    """raw/<class>/<video>.mp4: 8 small videos in two classes and one broken file."""
    root = tmp_path_factory.mktemp("raw") / "raw"
    for n in range(8):
        video(root / f"c{n % 2}" / f"v{n}.mp4", seed=n)
    (root / "c1" / "junk.mp4").write_text("not a video")
    return root


@pytest.fixture(scope="module")
def reference(raw, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ref") / "out"
    assert main(["shard", str(raw), "--out", str(out), "--workers", "1", *SHARD]) == 0
    return out


def test_local_videos_to_s3_are_the_local_bytes(s3_server, raw, reference):
    url = s3_server.make_bucket("local-in") + "/shards/"
    assert main(["shard", str(raw), "--out", url, "--workers", "2", *SHARD]) == 0
    same_on_store(reference, s3_server, url)
    assert read_manifest(url).totals["samples"] == 8 and read_manifest(url).quarantined == 1


def test_s3_in_s3_out_equals_s3_in_local_out(s3_server, raw, tmp_path, monkeypatch):
    bucket = s3_server.make_bucket("s3-in")
    s3_server.upload_tree(raw, f"{bucket}/raw")
    # the endpoint from the flag alone
    monkeypatch.delenv("AWS_ENDPOINT_URL")
    flag = ["--storage-endpoint", s3_server.endpoint]
    assert main(["shard", f"{bucket}/raw/", "--out", f"{bucket}/shards", "--workers", "2", *flag, *SHARD]) == 0
    assert main(["shard", f"{bucket}/raw/", "--out", str(tmp_path / "out"), "--workers", "1", *flag, *SHARD]) == 0
    same_on_store(tmp_path / "out", s3_server, f"{bucket}/shards")
    sources = {m["source"] for m in metas(tmp_path / "out").values()}
    assert sources == {f"{bucket}/raw/c{n % 2}/v{n}.mp4" for n in range(8)}
    assert [e["source"] for e in quarantine(tmp_path / "out")] == [f"{bucket}/raw/c1/junk.mp4"]


def test_listing_that_names_a_missing_object_quarantines_it(s3_server, raw, tmp_path):
    bucket = s3_server.make_bucket("listing")
    s3_server.upload_tree(raw, f"{bucket}/raw")
    s3_server.client.put_object_acl(Bucket="listing", Key="raw/c1/v3.mp4", ACL="public-read")
    http = f"{s3_server.endpoint}/listing/raw/c1/v3.mp4"  # the same object over plain http(s), read only
    rows = ["c0/v0.mp4,c0", "c0/missing.mp4,c0", f"{bucket}/raw/c1/v1.mp4,c1", f"{http},c1"]
    (tmp_path / "paths.csv").write_text("\n".join(rows) + "\n")
    s3_server.upload_tree(tmp_path, f"{bucket}/lists")
    run_shard(f"{bucket}/lists/paths.csv", f"{bucket}/shards", root=f"{bucket}/raw")
    run_shard(f"{bucket}/lists/paths.csv", tmp_path / "out", root=f"{bucket}/raw")
    same_on_store(tmp_path / "out", s3_server, f"{bucket}/shards")
    assert [(e["source"], e["reason"]) for e in quarantine(tmp_path / "out")] == [("paths.csv:2", "video not found")]
    assert sorted(m["extra"]["original_path"] for m in metas(tmp_path / "out").values()) == sorted(
        [f"{bucket}/raw/c0/v0.mp4", f"{bucket}/raw/c1/v1.mp4", http])


@pytest.mark.slow
def test_killed_run_leaves_nothing_a_reader_takes_and_resumes(s3_server, raw, reference, tmp_path):
    url = s3_server.make_bucket("killed") + "/shards"
    env = {**os.environ, KILL_ENV: "2", "PYTHONPATH": str(ROOT), "TMPDIR": str(tmp_path)}
    args = ["shard", str(raw), "--out", url, "--workers", "2", *SHARD]
    killed = subprocess.run([sys.executable, "-m", "pipeline.cli", *args], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=120)
    assert killed.returncode == -9, killed.stderr
    objects, expected = s3_server.objects(url), shard_bytes(reference)
    assert "manifest.json" not in objects and "quarantine.jsonl" not in objects
    tars = {n: b for n, b in objects.items() if n.endswith(".tar")}
    assert len(tars) == 2 and all(expected[n] == b for n, b in tars.items())  # whole shards or nothing
    with pytest.raises(ConfigError, match="manifest not found"):
        list_shards(url + "/")  # readers take shards from a manifest only
    with pytest.raises(ConfigError, match="no sample count"):
        list_shards(url + "/train-{000000..000001}.tar")
    assert main(args) == 0
    same_on_store(reference, s3_server, url)
    journal = [n for n in s3_server.objects(url) if n.startswith("shard-journal/")]
    assert journal and all(n.startswith("shard-journal/g0001-") for n in journal)  # the killed run's generation gone


def _stop_server_at_upload(monkeypatch, server, number: int, restart_after_s: float | None) -> None:
    """Stop the server as the `number`-th shard upload starts (restarting it after a while, if given)."""
    real, calls = storage.put_file, []

    def put_file(local, url):
        calls.append(url)
        if len(calls) == number:
            server.stop()
            if restart_after_s is not None:
                threading.Timer(restart_after_s, server.start).start()
        return real(local, url)

    monkeypatch.setattr(storage, "put_file", put_file)


def test_store_down_mid_run_stops_in_one_line_then_resumes(s3_server, raw, reference, monkeypatch):
    url = s3_server.make_bucket("down") + "/shards"
    _stop_server_at_upload(monkeypatch, s3_server, 2, None)
    try:
        with pytest.raises(storage.StorageError) as failed:
            run_shard(raw, url, inputs_per_shard=3, workers=2)
    finally:
        s3_server.start()
    message = str(failed.value)
    assert "\n" not in message and message.startswith(f"{url}/train-000001.tar: upload failed 4 times")
    monkeypatch.undo()
    assert "manifest.json" not in s3_server.objects(url)
    summary = run_shard(raw, url, inputs_per_shard=3, workers=2)
    assert summary.skipped == 3  # the first shard's videos, recorded before the store went away
    same_on_store(reference, s3_server, url)


def test_store_back_within_the_retry_budget_completes(s3_server, raw, reference, monkeypatch):
    monkeypatch.setenv(storage.ATTEMPTS_ENV, "8")
    monkeypatch.setenv(storage.BACKOFF_ENV, "0.2")  # waits 0.2, 0.4, 0.8, ... s: > 1 s in all
    url = s3_server.make_bucket("flaky") + "/shards"
    _stop_server_at_upload(monkeypatch, s3_server, 2, restart_after_s=0.5)
    run_shard(raw, url, inputs_per_shard=3, workers=2)
    same_on_store(reference, s3_server, url)


def test_missing_bucket_and_wrong_credentials_fail_fast_in_one_line(s3_server, raw, capsys):
    started = time.monotonic()
    assert main(["shard", str(raw), "--out", "s3://no-such-bucket/shards", *SHARD]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "bucket 'no-such-bucket' does not exist" in err
    bucket = s3_server.make_bucket("auth")
    s3_server.upload_tree(raw, f"{bucket}/raw")
    s3_server.require_auth(True)  # from here moto checks keys: ours are not in its IAM
    try:
        assert main(["shard", f"{bucket}/raw/", "--out", f"{bucket}/shards", *SHARD]) == 2
    finally:
        s3_server.require_auth(False)
    err = capsys.readouterr().err.strip()
    assert "\n" not in err, err
    assert err.startswith(f"vssl shard: error: {bucket}/raw/: ") and "refused (403" in err
    assert "check the credentials" in err
    assert time.monotonic() - started < 10  # no retries spent on either
