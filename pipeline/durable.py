"""fsync helpers for files that must survive a crash whole (shards, journals, checkpoints).

    from pipeline.durable import fsync_dir, fsync_file
    fsync_file(tmp); os.replace(tmp, final); fsync_dir(final.parent)
"""

from __future__ import annotations

import os
from pathlib import Path


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
