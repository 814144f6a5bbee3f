"""One of two processes lost mid-training: the other exits promptly with one clear line."""

from __future__ import annotations

import pytest

from pipeline.testing.faults.distributed import lost_peer


@pytest.mark.slow
@pytest.mark.parametrize("how", ["kill", "stop"])
def test_the_survivor_of_a_lost_peer_exits_with_a_clear_error(train_setup, how):
    report = lost_peer(train_setup, how)
    assert report.ok, "\n".join(report.failures)
    assert report.hangs == 0
