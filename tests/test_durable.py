"""pipeline.durable.uninterrupted: a Ctrl-C inside the block is acted on after it, never inside it."""

from __future__ import annotations

import signal
import threading

import pytest

from pipeline.durable import uninterrupted


@pytest.fixture
def default_ctrl_c():
    """Python's own SIGINT handler, whatever this test process inherited (a shell starts
    background jobs with SIGINT ignored)."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def test_ctrl_c_inside_the_block_is_raised_after_it(default_ctrl_c):
    steps = []
    with pytest.raises(KeyboardInterrupt):
        with uninterrupted():
            signal.raise_signal(signal.SIGINT)
            steps.append("after the signal")  # still runs: the block is never cut half-way
        steps.append("after the block")  # never runs: the interrupt lands as the block ends
    assert steps == ["after the signal"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_no_signal_no_interrupt_and_handler_restored():
    seen = []
    previous = signal.signal(signal.SIGINT, lambda *_: seen.append("own handler"))
    try:
        with uninterrupted():
            pass
        assert seen == []
        with uninterrupted():
            signal.raise_signal(signal.SIGINT)
            assert seen == []
        assert seen == ["own handler"]  # the caller's handler gets the held-back signal
    finally:
        signal.signal(signal.SIGINT, previous)


def test_outside_the_main_thread_the_block_just_runs():
    done = []

    def body():
        with uninterrupted():
            done.append(threading.current_thread() is threading.main_thread())

    t = threading.Thread(target=body)
    t.start()
    t.join()
    assert done == [False]
