"""pipeline.durable: uninterrupted (a Ctrl-C inside the block is acted on after it, never inside it),
atomic_write and replace_folder (the old content or the whole new one, nothing left beside)."""

from __future__ import annotations

import signal
import threading

import pytest

from pipeline.durable import atomic_write, replace_folder, uninterrupted


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


def test_atomic_write_leaves_the_old_file_when_the_write_fails(tmp_path):
    path = atomic_write(tmp_path / "a.json", lambda tmp: tmp.write_text("old"))

    def half_then_fail(tmp):
        tmp.write_text("ne")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(path, half_then_fail)
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["a.json"]


def test_replace_folder_swaps_in_the_new_folder_and_removes_the_old(tmp_path):
    final, staging = tmp_path / "out", tmp_path / ".out.partial"
    for folder, text in ((final, "old"), (staging, "new")):
        folder.mkdir()
        (folder / "f.txt").write_text(text)
    assert replace_folder(staging, final) == final
    assert (final / "f.txt").read_text() == "new" and [p.name for p in tmp_path.iterdir()] == ["out"]
    staging.mkdir()
    assert replace_folder(staging, tmp_path / "fresh").is_dir() and not staging.exists()  # no old one
