"""Test-wide setup.

PyAV is imported before anything can import decord: decord's bundled FFmpeg, loaded first in a
process, makes PyAV's libvpx (VP9) encoder fail to open ("avcodec_open2 ... returned 22").
`s3_server`: a real S3-compatible server for the object-storage tests (tests/test_storage_*.py).
"""

import av  # noqa: F401  (must precede decord; see above)
import pytest


@pytest.fixture(scope="session")
def s3_server():
    """moto's S3 server on 127.0.0.1 for the session (pipeline/testing/s3server.py); its endpoint and dummy
    keys are in os.environ meanwhile, and storage retries are short (4 tries from 0.1 s)."""
    from pipeline import storage
    from pipeline.testing.s3server import S3Server

    server = S3Server()
    patch = pytest.MonkeyPatch()
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3", storage.ENDPOINT_ENV,
                 storage.CACHE_DIR_ENV, storage.CACHE_GB_ENV):
        patch.delenv(name, raising=False)
    for name, value in {**server.env(), storage.ATTEMPTS_ENV: "4", storage.BACKOFF_ENV: "0.1"}.items():
        patch.setenv(name, value)
    yield server
    patch.undo()
    server.close()
