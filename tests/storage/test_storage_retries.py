"""pipeline/storage.py's retry policy against real HTTP errors from the S3 test server (throttling,
5xx), and a store that fails for good: the one-line error names the URL and what went wrong."""

from __future__ import annotations

import pytest

from pipeline import storage
from pipeline.data.loader import build_loader
from pipeline.testing.shards import write_shards
from tests.data.loader_testlib import PATCH, assert_same, config, run


@pytest.fixture(scope="module")
def bucket(s3_server) -> str:
    url = s3_server.make_bucket("retries")
    storage.write_bytes(f"{url}/blob", b"x" * 1000)
    return url


@pytest.mark.parametrize("status, code", [(503, "SlowDown"), (500, "InternalError"), (429, "TooManyRequests")])
def test_transient_errors_are_retried(s3_server, bucket, status, code):
    s3_server.fail_next(3, status, code)  # 4 attempts in all
    assert storage.read_bytes(f"{bucket}/blob", 10, 20) == b"x" * 10


def test_retries_spent_is_one_line_naming_the_url_and_the_error(s3_server, bucket):
    s3_server.fail_next(4, 503, "SlowDown")
    with pytest.raises(storage.StorageError) as failed:
        storage.read_bytes(f"{bucket}/blob")
    message = str(failed.value)
    assert "\n" not in message and message.startswith(f"{bucket}/blob: read failed 4 times")
    # a GET's error names S3's code; a HEAD's (no body, as on S3) only the status
    assert "SlowDown" in message or "503" in message, message


def test_loader_rides_out_throttling_mid_epoch(tmp_path, s3_server):
    write_shards(tmp_path, [4, 4, 4])
    url = s3_server.make_bucket("throttled") + "/shards"
    s3_server.upload_tree(tmp_path, url)
    local = run(build_loader(config(str(tmp_path), shuffle=False), patch_size=PATCH))
    loader = iter(build_loader(config(url, shuffle=False), patch_size=PATCH))
    got = [next(loader)]
    s3_server.fail_next(3, 503, "SlowDown")  # the next shard's requests
    assert_same(local, got + list(loader))
