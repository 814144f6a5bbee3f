"""Every module here runs on one torch thread (tests/conftest.py's `one_thread`): tiny tensors gain
nothing from intra-op threads, and on a shared 2-core box two threads ran 20x slower."""

import pytest


@pytest.fixture(autouse=True, scope="module")
def _models_on_one_thread(one_thread):
    yield
