"""Fixtures shared by the fault-injection suite (tests/faults): every test here is marked `faults`.

    pytest -q tests/faults            # the whole suite (also part of `make test`)
    pytest -q -m faults               # the same, selected by marker

The scenarios live in pipeline/testing/faults/ (prep, loading, training, security, config_errors,
distributed), so `python -m benchmarks faults` runs the same ones without importing tests/.
"""

from __future__ import annotations

from pathlib import Path

import pytest

HERE = Path(__file__).parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in Path(item.fspath).parents:
            item.add_marker(pytest.mark.faults)


@pytest.fixture(scope="session")
def train_setup(tmp_path_factory):
    """Tiny shards and recipe, and the loss trace of one uninterrupted 8-step `vssl pretrain` run."""
    from pipeline.testing.faults.training import TrainSetup

    return TrainSetup.make(tmp_path_factory.mktemp("train"))
