"""The loader streaming shards from a real S3 server (moto's, pipeline/testing/s3server.py): the same batches
as from local shards, exact mid-epoch resume, the shard cache, retries while the server is down,
and one-line failures (missing bucket, wrong credentials, a server that stays down)."""

from __future__ import annotations

import threading
import time

import pytest

from pipeline import storage
from pipeline.config import ConfigError
from pipeline.data.loader import build_loader
from pipeline.testing.shards import write_shards
from tests.data.loader_testlib import PATCH, assert_same, config, run as batches

@pytest.fixture(scope="module")
def shards(tmp_path_factory, s3_server):
    """Local shards + manifest, and the same uploaded to s3://loader/shards/."""
    folder = tmp_path_factory.mktemp("shards")
    write_shards(folder, [5, 7, 3, 9])
    url = s3_server.make_bucket("loader") + "/shards"
    s3_server.upload_tree(folder, url)
    return folder, url


@pytest.fixture(autouse=True)
def small_requests(monkeypatch):
    """Range requests of 4 KiB (forked workers inherit it): each shard streams in many, fetched ahead."""
    monkeypatch.setattr(storage, "CHUNK", 4096)


def test_s3_batches_equal_local_ones_and_resume_mid_epoch(shards):
    folder, url = shards
    local = batches(build_loader(config(str(folder), num_workers=2), patch_size=PATCH))
    s3 = build_loader(config(url + "/", num_workers=2), patch_size=PATCH)
    assert len(local) == len(s3) == 8
    first = batches(s3, limit=3)
    state = s3.state_dict()
    s3.close()
    resumed = build_loader(config(url + "/manifest.json", num_workers=2), patch_size=PATCH)
    resumed.load_state_dict(state)
    assert_same(local, first + batches(resumed))
    resumed.close()


def test_cache_keeps_whole_shards_within_its_limit(shards, tmp_path, s3_server):
    folder, url = shards
    local_loader = build_loader(config(str(folder), num_workers=2), patch_size=PATCH)
    local = [batches(local_loader), batches(local_loader)]  # epochs 0 and 1
    cache = tmp_path / "cache"
    loader = build_loader(config(url, cache_dir=str(cache), num_workers=2), patch_size=PATCH)
    assert_same(local[0], batches(loader))
    sizes = sorted(p.stat().st_size for p in folder.glob("*.tar"))
    assert sorted(p.stat().st_size for p in cache.iterdir()) == sizes  # every shard, whole, nothing partial
    s3_server.stop()
    try:  # the next epoch from the cache alone
        assert_same(local[1], batches(loader))
    finally:
        s3_server.start()
    small = tmp_path / "small"
    limit = sizes[-1] + sizes[-2]  # room for about two shards: older ones are evicted
    assert_same(local[0], batches(build_loader(config(url, cache_dir=str(small), cache_size_gb=limit / 1e9,
                                                      num_workers=2), patch_size=PATCH)))
    kept = [p.stat().st_size for p in small.iterdir()]
    assert 1 <= len(kept) < 4 and sum(kept) <= limit and all(not p.name.endswith(".part") for p in small.iterdir())


def test_server_back_within_the_retry_budget_mid_epoch(shards, s3_server, monkeypatch):
    folder, url = shards
    monkeypatch.setenv(storage.ATTEMPTS_ENV, "8")
    monkeypatch.setenv(storage.BACKOFF_ENV, "0.2")  # 0.2, 0.4, 0.8, ... s: more than the outage
    local = batches(build_loader(config(str(folder), shuffle=False), patch_size=PATCH))
    loader = iter(build_loader(config(url, shuffle=False), patch_size=PATCH))
    got = [next(loader)]
    s3_server.stop()
    threading.Timer(0.7, s3_server.start).start()
    started = time.monotonic()
    got += list(loader)
    assert time.monotonic() - started > 0.5  # it did wait for the server
    assert_same(local, got)


def test_server_that_stays_down_fails_in_one_line_naming_the_url(tmp_path, s3_server):
    write_shards(tmp_path, [3] * 8)  # one shard per batch: batches after the first few need the server
    url = s3_server.make_bucket("down-loader") + "/shards"
    s3_server.upload_tree(tmp_path, url)
    cfg = config(url, shuffle=False, num_workers=2, prefetch_factor=1)
    loader = iter(build_loader(cfg, patch_size=PATCH))
    next(loader)  # at most batches 1 and 2 are made before the server stops
    s3_server.stop()
    try:
        with pytest.raises(storage.StorageError) as failed:
            list(loader)
    finally:
        s3_server.start()
    message = str(failed.value)
    assert "\n" not in message and message.startswith(f"{url}/train-0000") and "failed 4 times" in message


def test_missing_bucket_and_wrong_credentials_fail_fast(s3_server, shards):
    _, url = shards
    started = time.monotonic()
    with pytest.raises(ConfigError, match=r"^data.shards: s3://no-bucket/shards/manifest.json: read failed: "
                                          r"bucket 'no-bucket' does not exist"):
        build_loader(config("s3://no-bucket/shards/"), patch_size=PATCH)
    s3_server.require_auth(True)
    try:
        with pytest.raises(ConfigError, match=r"read refused \(.*check the credentials"):
            build_loader(config(url), patch_size=PATCH)
    finally:
        s3_server.require_auth(False)
    assert time.monotonic() - started < 5  # neither spends the retries
