"""Shard files and the progress journal that makes `vssl shard` resumable.

    journal = JsonLines(out / JOURNAL_NAME, keep=[])
    writer = SplitWriter(LocalOutput(out), "train", max_bytes=256 << 20, max_samples=1000, journal=journal)
    finished = writer.add(sample, cursor=(item_index, sample_number))   # a record when a shard closed
    writer.finish(end=(num_items, 0))

A shard is written as `{split}-{index:06d}.tar.tmp` in the output's staging folder, handed to the
output to commit under its final name (data_prep/output.py: fsync + rename on a local disk, an
upload to an object store), and only then recorded in the journal, so a `.tar` name is always a
whole shard and a journal record always names a complete one. Tar headers are fixed (mtime 0,
uid/gid 0, mode 0644), so the same samples always give the same bytes.

The journal is JSON lines (`JsonLines`, each fsync'ed before `append` returns; on a store, chunk
objects with the same records, data_prep/output.py):
    {"event": "start", "fingerprint": ...}         the command and input listing it belongs to
    {"event": "open", "split", "name", "start"}     a shard was started at cursor `start`
    {"event": "done", "split", "name", "start", "end", "samples", "bytes", "sha256", "duration",
                                                     "keyframe_interval", "keys"}
A cursor is [item index, sample number within the item]; a shard holds every sample of its
split with start <= cursor < end. A "done" record may carry what the output adds (an object's "etag").
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from data_prep.process import Sample
from pipeline.data.shard_format import TMP_SUFFIX, shard_name

if TYPE_CHECKING:
    from data_prep.output import LocalOutput, StoreOutput

JOURNAL_NAME = "shard-journal.jsonl"
Cursor = tuple[int, int]
_BLOCK = tarfile.BLOCKSIZE


class JsonLines:
    """An append-only JSON-lines file (the journal, quarantine.jsonl), each line fsync'ed.

    Opening it rewrites the file atomically with the records to keep, so a line torn by a crash,
    or records a resumed run drops, never sit in front of new ones.
    """

    def __init__(self, path: Path, keep: list[dict[str, Any]]):
        self.path, self.records = path, list(keep)
        tmp = path.with_name(path.name + TMP_SUFFIX)
        with open(tmp, "w", encoding="utf-8") as f:
            f.writelines(json.dumps(r, sort_keys=True) + "\n" for r in keep)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        self._file = open(path, "a", encoding="utf-8")

    @staticmethod
    def read(path: Path) -> list[dict[str, Any]]:
        """The records of a file; reading stops at a torn line (a crash mid-write)."""
        if not path.is_file():
            return []
        records = []
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                break
        return records

    def append(self, record: dict[str, Any]) -> None:
        self._file.write(json.dumps(record, sort_keys=True) + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())
        self.records.append(record)

    def close(self) -> None:
        self._file.close()


class _HashingFile:
    """The write side of a file that hashes what passes through (all tarfile needs)."""

    def __init__(self, f: io.BufferedWriter):
        self._f, self.sha256, self.size = f, hashlib.sha256(), 0

    def write(self, data: bytes) -> int:
        self.sha256.update(data)
        self.size += len(data)
        return self._f.write(data)

    def tell(self) -> int:
        return self.size


def member_bytes(size: int) -> int:
    """Bytes one member of `size` takes in a tar (header + padded data; keys keep names short)."""
    return _BLOCK + -(-size // _BLOCK) * _BLOCK


class _ShardFile:
    def __init__(self, output: LocalOutput | StoreOutput, name: str, start: Cursor):
        self.output, self.name, self.start = output, name, start
        self.tmp = output.staging / (name + TMP_SUFFIX)
        self._raw = open(self.tmp, "wb")
        self._hashing = _HashingFile(self._raw)
        self._tar = tarfile.open(fileobj=self._hashing, mode="w", format=tarfile.PAX_FORMAT)
        self.samples, self.duration, self.keys, self.keyframe_interval = 0, 0.0, [], 0

    @property
    def bytes(self) -> int:
        return self._tar.offset

    def add(self, sample: Sample) -> None:
        for ext, data in sample.members:
            info = tarfile.TarInfo(f"{sample.key}.{ext}")
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            self._tar.addfile(info, io.BytesIO(data))
        self.samples += 1
        self.duration += sample.duration
        self.keyframe_interval = max(self.keyframe_interval, sample.keyframe_interval)
        self.keys.append(sample.key)

    def close(self, end: Cursor, split: str) -> dict[str, Any]:
        self._tar.close()
        self._raw.close()
        extra = self.output.commit(self.tmp, self.name)
        return {"event": "done", "split": split, "name": self.name, "start": list(self.start),
                "end": list(end), "samples": self.samples, "bytes": self._hashing.size,
                "sha256": self._hashing.sha256.hexdigest(), "duration": round(self.duration, 6),
                "keyframe_interval": self.keyframe_interval, "keys": self.keys, **extra}

    def discard(self) -> None:
        self._raw.close()
        self.tmp.unlink(missing_ok=True)


class SplitWriter:
    """The shards of one split, rolled over by size and sample count, recorded in the journal."""

    def __init__(self, output: LocalOutput | StoreOutput, split: str, max_bytes: int, max_samples: int,
                 journal: JsonLines, done: list[dict[str, Any]] | None = None):
        self.output, self.split, self.journal = output, split, journal
        self.max_bytes, self.max_samples = max_bytes, max_samples
        self.done = list(done or [])
        self._current: _ShardFile | None = None

    def add(self, sample: Sample, cursor: Cursor) -> dict[str, Any] | None:
        """Write one sample; returns the journal record of a shard this closed, if any."""
        closed = None
        size = sum(member_bytes(len(data)) for _, data in sample.members)
        current = self._current
        if current and (current.samples >= self.max_samples or current.bytes + size + 2 * _BLOCK > self.max_bytes):
            closed = self.finish(cursor)
        if self._current is None:
            name = shard_name(self.split, len(self.done))
            self._current = _ShardFile(self.output, name, cursor)
            self.journal.append({"event": "open", "split": self.split, "name": name, "start": list(cursor)})
        self._current.add(sample)
        return closed

    def finish(self, end: Cursor) -> dict[str, Any] | None:
        """Close the open shard (if any) as covering everything before `end`."""
        if self._current is None:
            return None
        record = self._current.close(end, self.split)
        self._current = None
        self.journal.append(record)
        self.done.append(record)
        return record

    def discard(self) -> None:
        """Drop the open shard's partial file (on an error or Ctrl-C)."""
        if self._current is not None:
            self._current.discard()
            self._current = None
