"""Test-wide setup.

PyAV is imported before anything can import decord: decord's bundled FFmpeg, loaded first in a
process, makes PyAV's libvpx (VP9) encoder fail to open ("avcodec_open2 ... returned 22").
Fixtures used by tests in more than one folder:
`s3_server`: a real S3-compatible server for the object-storage tests (tests/storage/, tests/data_prep/test_shard_nodes.py).
`one_thread`: torch on one intra-op thread for a module (tests/models/ turn it on for every module).

Tests are laid out like the code they test: tests/data_prep/ (`vssl shard`, data_prep/),
tests/data/ (pipeline/data), tests/models/, tests/objectives/, tests/train/, tests/tasks/,
tests/probe/, tests/storage/ (pipeline/storage.py), tests/recipes/, tests/benchmarks/; tests of
pipeline's top-level modules (config, durable, quickstart) sit here; fault-injection runs in tests/faults/.
"""

import av  # noqa: F401  (must precede decord; see above)
import pytest
import torch


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


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models run several times faster on one torch thread on a shared 2-core machine
    (measured: 7x for the fine-tuning tests, 20x for tiny model tensors; threads spin waiting for each other)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
