"""Helpers for files that must survive a crash or a Ctrl-C whole (shards, journals, checkpoints).

    from pipeline.durable import atomic_write, commit_file, final_name, replace_folder, temporary_name, uninterrupted
    atomic_write(path, lambda tmp: tmp.write_text(text))    # the one temporary-then-rename write
    tmp = temporary_name(path); ...; commit_file(tmp, path)   # the same, for a file written over many calls
    final_name("train-000000.tar.tmp-4242")   # "train-000000.tar": a leftover temporary is known by its name
    replace_folder(staging, final)   # a finished folder takes final's name, an old one stepping aside
    with uninterrupted():      # a Ctrl-C that lands in here is acted on when the block ends
        open_file_and_record_it()

A new file is written at its temporary name `NAME.tmp-PID` (beside NAME, so the rename stays on one
file system; the PID keeps two processes apart), flushed to disk, renamed to NAME, and the rename
flushed: NAME is absent, the old file, or the whole new one. TMP_PATTERN is that suffix as a regular
expression, for code that recognises leftovers of a crash among its own files.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

TMP_PATTERN = r"\.tmp-\d+"
_TEMPORARY = re.compile(r"^(.+)" + TMP_PATTERN + "$")


def fsync_file(path: str | Path) -> None:
    """Flush a written file's data to disk."""
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def fsync_dir(folder: str | Path) -> None:
    """Flush a folder's entries (a rename or a new file in it) to disk."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def uninterrupted() -> Iterator[None]:
    """Hold a Ctrl-C (SIGINT) back until the block ends, then act on it as usual.

    For bookkeeping that must not stop half-way (a file opened but not yet recorded, a record
    written but not yet counted): the KeyboardInterrupt is raised after the block, never inside it.
    Outside the main thread (where Python delivers no signals) the block simply runs.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: caught.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if caught:
            signal.raise_signal(signal.SIGINT)  # now handled by whatever handler was there before


def temporary_name(path: str | Path) -> Path:
    """Where this process writes a new file for `path` before it takes that name: `NAME.tmp-PID`."""
    path = Path(path)
    return path.with_name(f"{path.name}.tmp-{os.getpid()}")


def final_name(name: str) -> str | None:
    """The name a temporary file (`temporary_name`'s, of any process) was meant for; None for any other name."""
    match = _TEMPORARY.match(name)
    return match.group(1) if match else None


def commit_file(tmp: str | Path, path: str | Path) -> Path:
    """Flush the finished file `tmp` to disk, rename it to `path` and flush the rename."""
    path = Path(path)
    fsync_file(tmp)
    os.replace(tmp, path)
    fsync_dir(path.parent)
    return path


def atomic_write(path: str | Path, write: Callable[[Path], object]) -> Path:
    """`write(tmp_path)` writes the whole file at its temporary name, which then replaces `path`
    (commit_file), so `path` is either absent, the old file, or the whole new one. If `write` or
    the commit fails, the temporary file is removed and `path` is untouched."""
    tmp = temporary_name(path)
    try:
        write(tmp)
        return commit_file(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def replace_folder(staging: str | Path, final: str | Path) -> Path:
    """Rename the finished folder `staging` to `final` (same file system) and flush the rename. An
    existing `final` first steps aside to the hidden sibling `.NAME.old-PID`, which is removed once
    the new folder is in place (or put back if the rename fails)."""
    staging, final = Path(staging), Path(final)
    old = final.with_name(f".{final.name}.old-{os.getpid()}") if final.exists() else None
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
    try:
        os.replace(staging, final)
    except OSError:
        if old is not None:
            os.replace(old, final)
        raise
    if old is not None:
        shutil.rmtree(old)
    fsync_dir(final.parent)
    return final
