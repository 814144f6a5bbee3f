"""Shard files and the journal that makes `vssl shard` resumable, one node's part at a time.

    journal = output.open_log(part="", keep=[{"event": "start", ...}])
    writer = ShardWriter(LocalOutput(out), journal)
    writer.add(planned_shard, samples)       # the samples of one item of that shard, in plan order
    record = writer.close(planned_shard)     # the shard committed and recorded

A shard is written at its temporary name (`{name}.tmp-PID`, pipeline/durable.py's temporary_name)
in the output's staging folder, handed to the output to commit under its final name
(data_prep/output.py: pipeline.durable.commit_file's fsync + rename on a local disk, an upload to an
object store), and only then recorded in the journal, so a `.tar` name is always a whole shard and a
journal record always names a complete one. A planned shard (data_prep/plan.py) whose items were
all quarantined is recorded with no file. Tar headers are fixed (mtime 0, uid/gid 0, mode 0644),
so the same samples always give the same bytes.

The journal is JSON lines (`JsonLines`, each fsync'ed before `append` returns; on a store, chunk
objects with the same records, data_prep/output.py), one per node part (`journal_name`):
    {"event": "start", "fingerprint": ..., "node": [rank, count]}   the command and listing it belongs to
    {"event": "quarantine", "index", "key", "source", "split", "reason"}   an item that gave no sample
    {"event": "done", "name", "split", "samples", "bytes", "sha256", "duration", "keyframe_interval", "keys"}
The quarantine records of a shard's items come before its "done" record; a "done" record may carry
what the output adds (an object's "etag").
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from data_prep.plan import PlannedShard
from data_prep.process import Sample
from pipeline.durable import atomic_write, temporary_name

if TYPE_CHECKING:
    from data_prep.output import LocalOutput, StoreOutput

JOURNAL_STEM = "shard-journal"


def journal_name(part: str) -> str:
    """The journal file of a node part (data_prep.plan.Node.part: "" for a whole run)."""
    return f"{JOURNAL_STEM}{part}.jsonl"


def json_lines(records: list[dict[str, Any]]) -> str:
    """Records as JSON lines (keys sorted): the text of journals, their chunks and quarantine.jsonl."""
    return "".join(json.dumps(r, sort_keys=True) + "\n" for r in records)


class JsonLines:
    """An append-only JSON-lines file (a local journal), each line fsync'ed.

    Opening it rewrites the file atomically (pipeline.durable.atomic_write) with the records to
    keep, so a line torn by a crash, or records a resumed run drops, never sit in front of new ones.
    """

    def __init__(self, path: Path, keep: list[dict[str, Any]]):
        self.path, self.records = path, list(keep)
        atomic_write(path, lambda tmp: tmp.write_text(json_lines(keep), encoding="utf-8"))
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
        self._file.write(json_lines([record]))
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


class _ShardFile:
    def __init__(self, output: LocalOutput | StoreOutput, name: str):
        self.output, self.name = output, name
        self.tmp = temporary_name(output.staging / name)
        self._raw = open(self.tmp, "wb")
        self._hashing = _HashingFile(self._raw)
        self._tar = tarfile.open(fileobj=self._hashing, mode="w", format=tarfile.PAX_FORMAT)

    def add(self, sample: Sample) -> None:
        for ext, data in sample.members:
            info = tarfile.TarInfo(f"{sample.key}.{ext}")
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            self._tar.addfile(info, io.BytesIO(data))

    def close(self) -> dict[str, Any]:
        """Commit the file; what the record says of it (bytes, sha256, and what the output adds)."""
        self._tar.close()
        self._raw.close()
        extra = self.output.commit(self.tmp, self.name)
        return {"bytes": self._hashing.size, "sha256": self._hashing.sha256.hexdigest(), **extra}

    def discard(self) -> None:
        self._raw.close()
        self.tmp.unlink(missing_ok=True)


class ShardWriter:
    """A node's planned shards, written one at a time in plan order and recorded in its journal."""

    def __init__(self, output: LocalOutput | StoreOutput, journal: JsonLines):
        self.output, self.journal = output, journal
        self._file: _ShardFile | None = None
        self._samples, self._duration, self._keyframes, self._keys = 0, 0.0, 0, []

    def add(self, shard: PlannedShard, samples: list[Sample]) -> None:
        """Append one item's samples to `shard` (opened with its first sample)."""
        if samples and self._file is None:
            self._file = _ShardFile(self.output, shard.name)
        for sample in samples:
            self._file.add(sample)
            self._samples += 1
            self._duration += sample.duration
            self._keyframes = max(self._keyframes, sample.keyframe_interval)
            self._keys.append(sample.key)

    def close(self, shard: PlannedShard) -> dict[str, Any]:
        """Commit `shard` (no file when it holds nothing) and record it; returns the record."""
        written = self._file.close() if self._file is not None else {"bytes": 0, "sha256": ""}
        record = {"event": "done", "name": shard.name, "split": shard.split, "samples": self._samples,
                  "duration": round(self._duration, 6), "keyframe_interval": self._keyframes, "keys": self._keys,
                  **written}
        self._file = None
        self._samples, self._duration, self._keyframes, self._keys = 0, 0.0, 0, []
        self.journal.append(record)
        return record

    def discard(self) -> None:
        """Drop the open shard's partial file (on an error or Ctrl-C)."""
        if self._file is not None:
            self._file.discard()
            self._file = None
