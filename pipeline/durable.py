"""Helpers for files that must survive a crash or a Ctrl-C whole (shards, journals, checkpoints).

    from pipeline.durable import atomic_write, fsync_dir, fsync_file, replace_folder, uninterrupted
    atomic_write(path, lambda tmp: tmp.write_text(text))    # the one temporary-then-rename write
    replace_folder(staging, final)   # a finished folder takes final's name, an old one stepping aside
    with uninterrupted():      # a Ctrl-C that lands in here is acted on when the block ends
        open_file_and_record_it()
"""

from __future__ import annotations

import os
import shutil
import signal
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


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


def atomic_write(path: str | Path, write) -> Path:
    """`write(tmp_path)` writes the file at a temporary sibling of `path`; it is then flushed to
    disk and renamed into place, so `path` is either absent, the old file, or the whole new one."""
    path = Path(path)
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        fsync_file(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    fsync_dir(path.parent)
    return path


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
