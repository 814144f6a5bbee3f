"""pipeline.durable: uninterrupted (a Ctrl-C inside the block is acted on after it, never inside it),
atomic_write, commit_file and replace_folder (the old content or the whole new one, nothing left
beside), and the temporary name that marks a crash's leftovers."""

from __future__ import annotations

import signal
import threading

import pytest

from pipeline.durable import atomic_write, commit_file, final_name, replace_folder, temporary_name, uninterrupted


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


def test_a_temporary_name_tells_the_name_it_was_meant_for(tmp_path):
    tmp = temporary_name(tmp_path / "train-000000.tar")
    assert tmp.parent == tmp_path and final_name(tmp.name) == "train-000000.tar"
    assert final_name("train-000000.tar.tmp-4242") == "train-000000.tar"  # any process's leftover
    for other in ("train-000000.tar", "train-000000.tar.tmp", "a.tmp-", "a.tmp-12x", ".tmp-12"):
        assert final_name(other) is None, other


def test_commit_file_renames_a_file_written_over_many_calls(tmp_path):
    path = tmp_path / "shard.tar"
    tmp = temporary_name(path)
    with open(tmp, "wb") as f:
        for piece in (b"a", b"b", b"c"):
            f.write(piece)
    assert commit_file(tmp, path) == path
    assert path.read_bytes() == b"abc" and [p.name for p in tmp_path.iterdir()] == ["shard.tar"]


def test_replace_folder_swaps_in_the_new_folder_and_removes_the_old(tmp_path):
    final, staging = tmp_path / "out", tmp_path / ".out.partial"
    for folder, text in ((final, "old"), (staging, "new")):
        folder.mkdir()
        (folder / "f.txt").write_text(text)
    assert replace_folder(staging, final) == final
    assert (final / "f.txt").read_text() == "new" and [p.name for p in tmp_path.iterdir()] == ["out"]
    staging.mkdir()
    assert replace_folder(staging, tmp_path / "fresh").is_dir() and not staging.exists()  # no old one
