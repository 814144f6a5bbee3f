"""Where `vssl shard` writes -- a local folder or an object-store prefix -- and how each commits.

    output = open_output("s3://bucket/shards/")          # or a local path: LocalOutput
    journal = output.open_log(part, keep)                # a node part's journal (data_prep/writer.py)
    extra = output.commit(tmp_path, "train-000000.tar")  # the finished shard under its final name

Both follow the commit protocol written down in pipeline/data/shard_format.py: a shard exists under
its final name only whole; the journal records it only after that; manifest.json is written last,
and readers trust only shards a manifest lists.

LocalOutput: shards are built at their temporary name OUT/NAME.tar.tmp-PID, fsync'ed and renamed
(pipeline.durable.commit_file); each node part's journal (shard-journal{part}.jsonl) is JSON lines,
each fsync'ed (data_prep.writer.JsonLines). OUR_FILES knows these names, temporary ones included,
so a crash's leftovers are ours to remove.

StoreOutput (s3://, gs://): shards are built in a local staging folder (one open shard per split)
and uploaded under their final name (one PUT, or a multipart upload completed last: either way the
object appears whole or not at all); the object's ETag goes into its journal record. Each node part's journal
lives in OUT/shard-journal{part}/ as immutable chunk objects `g{generation:04d}-{sequence:08d}.jsonl`
of journal lines. Records are buffered and written as one chunk whenever a shard's "done" record is
appended (after its upload) and when the run ends, so a chunk holds every quarantine record that came
before its "done" -- what resuming needs. A resumed run reads the newest generation's chunks
0, 1, ... up to the first gap, writes what it keeps as chunk 0 of a new generation, then deletes the
older ones.

On both, `finish` writes quarantine.jsonl whole (atomically) and then manifest.json, last.

Uploads and journal writes run on one background thread, in the order the writer asked for them,
so the workers keep going while a shard uploads (at most 2 finished shards wait in staging; the
writer blocks beyond that). The order is the synchronous one, so what is persisted at any moment
is a prefix of what a synchronous run would have persisted. After a failed upload nothing more is
written; the error (a StorageError) is raised to the writer at its next step, or by `settle()`.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import tempfile
import threading
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

from data_prep.writer import JOURNAL_STEM, JsonLines, journal_name, json_lines
from pipeline import storage
from pipeline.data.shard_format import QUARANTINE_NAME, Manifest, sha256_file
from pipeline.durable import TMP_PATTERN, atomic_write, commit_file

log = logging.getLogger("vssl.shard")
_PART = r"(\.node-\d{5}-of-\d{5})?"  # data_prep.plan.Node.part
OUR_FILES = re.compile(r"^([A-Za-z0-9_]+-\d{6}\.tar|manifest\.json|quarantine\.jsonl|"
                       + re.escape(JOURNAL_STEM) + _PART + r"\.jsonl)(" + TMP_PATTERN + ")?$")
_STORE_JOURNAL = re.compile(r"^(" + re.escape(JOURNAL_STEM) + _PART + r")/(g\d{4}-\d{8}\.jsonl)$")
_CHUNK = re.compile(r"^g(\d{4})-(\d{8})\.jsonl$")


class LocalOutput:
    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.staging = self.folder

    def __str__(self) -> str:
        return str(self.folder)

    def names(self) -> list[str]:
        """Names of the files in OUT that a run writes (shards, partial shards, manifest, logs)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        return sorted(p.name for p in self.folder.iterdir() if OUR_FILES.match(p.name))

    def read_log(self, part: str) -> list[dict]:
        return JsonLines.read(self.folder / journal_name(part))

    def open_log(self, part: str, keep: list[dict]) -> JsonLines:
        return JsonLines(self.folder / journal_name(part), keep)

    def remove(self, names: list[str]) -> None:
        for name in names:
            (self.folder / name).unlink(missing_ok=True)

    def shard_intact(self, record: dict[str, Any], deep: bool = True) -> bool:
        """The shard a journal record names is there with its size (and, if deep, its sha256)."""
        path = self.folder / record["name"]
        return (path.is_file() and path.stat().st_size == record["bytes"]
                and (not deep or sha256_file(path) == record["sha256"]))

    def commit(self, tmp: Path, name: str) -> dict[str, Any]:
        commit_file(tmp, self.folder / name)
        return {}

    def settle(self) -> None:
        pass  # commits are done when commit() returns

    def finish(self, quarantine: list[dict], manifest: Manifest) -> None:
        atomic_write(self.folder / QUARANTINE_NAME, lambda tmp: tmp.write_text(json_lines(quarantine)))
        manifest.write(self.folder)

    def close(self) -> None:
        pass


class _StoreLog:
    """A store part's journal, as chunk objects (see the module docstring)."""

    def __init__(self, prefix: str, existing: list[str], keep: list[dict]):
        self.prefix = prefix
        old = [name for name in existing if _CHUNK.match(name)]
        self.generation = 1 + max((int(_CHUNK.match(n).group(1)) for n in old), default=-1)
        self.sequence = 0
        self.pending = list(keep)
        self.flush()  # chunk 0 of the new generation: what this run keeps
        storage.remove([storage.join(prefix, n) for n in old])

    @staticmethod
    def read(prefix: str, existing: list[str]) -> list[dict]:
        """The records in the chunks `existing` (names under prefix)."""
        chunks: dict[int, set[int]] = {}
        for name in existing:
            match = _CHUNK.match(name)
            if match:
                chunks.setdefault(int(match.group(1)), set()).add(int(match.group(2)))
        generation = max((g for g, seqs in chunks.items() if 0 in seqs), default=None)
        records: list[dict] = []
        sequence = 0
        while generation is not None and sequence in chunks[generation]:
            text = storage.read_text(storage.join(prefix, f"g{generation:04d}-{sequence:08d}.jsonl"))
            records += [json.loads(line) for line in text.splitlines()]
            sequence += 1
        return records

    def add(self, record: dict[str, Any], flush: bool) -> None:
        self.pending.append(record)
        if flush:
            self.flush()

    def flush(self) -> None:
        if self.pending or self.sequence == 0:
            storage.write_bytes(storage.join(self.prefix, f"g{self.generation:04d}-{self.sequence:08d}.jsonl"),
                                json_lines(self.pending).encode())
            self.sequence += 1
        self.pending = []


class _InOrder:
    """One background thread running a store run's uploads and journal writes in submission order;
    after a failure it runs nothing more, and `check()` (which callers run before they submit) raises it."""

    def __init__(self, waiting_shards: int = 2):
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="vssl-upload")
        self._slots = threading.Semaphore(waiting_shards)
        self._futures: deque[Future] = deque()
        self.error: BaseException | None = None

    def submit(self, fn: Callable[[], None], shard: bool = False) -> None:
        if shard:
            self._slots.acquire()  # bounded staging: blocks while enough finished shards wait

        def run() -> None:
            try:
                if self.error is None:
                    fn()
            except BaseException as e:  # noqa: BLE001 - handed to the writer by check()
                self.error = e
            finally:
                if shard:
                    self._slots.release()

        while self._futures and self._futures[0].done():
            self._futures.popleft()
        self._futures.append(self._pool.submit(run))

    def wait(self) -> None:
        for future in list(self._futures):
            future.result()
        self._futures.clear()

    def check(self) -> None:
        if self.error is not None:
            raise self.error

    def close(self) -> None:
        self._pool.shutdown(wait=True)


class _LogView:
    """A _StoreLog with the JsonLines interface the writer uses; appends run on the background
    thread, after the uploads asked for before them."""

    def __init__(self, output: "StoreOutput", store_log: _StoreLog, keep: list[dict]):
        self._output, self._log = output, store_log
        self.records = list(keep)

    def append(self, record: dict[str, Any]) -> None:
        self.records.append(record)
        done = record.get("event") == "done"
        uploaded = done and record["samples"] > 0

        def add() -> None:  # a shard's "done" record gets its object's ETag, known once the upload ran
            self._log.add({**record, "etag": self._output.etags.pop(record["name"])} if uploaded else record,
                          flush=done)

        self._output.in_order.check()
        self._output.in_order.submit(add)

    def close(self) -> None:
        """Write what is buffered, unless something failed (a resumed run redoes what is not written)."""
        in_order = self._output.in_order
        in_order.submit(self._log.flush)
        in_order.wait()
        if in_order.error is not None:
            log.warning("shard journal: not all written (%s)", in_order.error)


class StoreOutput:
    def __init__(self, url: str):
        self.url = url.rstrip("/")
        self.staging = Path(tempfile.mkdtemp(prefix="vssl-shard-"))
        self._listed: dict[str, dict[str, Any]] = {}
        self._chunks: dict[str, list[str]] = {}  # journal name -> its chunk objects
        self.in_order = _InOrder()
        self.etags: dict[str, str] = {}  # uploaded shard -> ETag, until its "done" record takes it

    def __str__(self) -> str:
        return self.url

    def names(self) -> list[str]:
        """Our objects directly under OUT (shards, manifest, quarantine) and the journal of each part
        (as its local file name); also fails fast on a missing bucket or refused credentials."""
        found = storage.find(self.url)  # one listing serves names, logs and shard checks
        self._listed = {n: i for n, i in found.items() if "/" not in n and OUR_FILES.match(n)}
        self._chunks = {}
        for name in found:
            match = _STORE_JOURNAL.match(name)
            if match:
                self._chunks.setdefault(match.group(1) + ".jsonl", []).append(match.group(3))
        return sorted([*self._listed, *self._chunks])

    def _prefix(self, part: str) -> str:
        return storage.join(self.url, journal_name(part).removesuffix(".jsonl"))

    def read_log(self, part: str) -> list[dict]:
        return _StoreLog.read(self._prefix(part), self._chunks.get(journal_name(part), []))

    def open_log(self, part: str, keep: list[dict]) -> _LogView:
        store_log = _StoreLog(self._prefix(part), self._chunks.pop(journal_name(part), []), keep)
        return _LogView(self, store_log, keep)

    def remove(self, names: list[str]) -> None:
        """Delete these objects (names from `names()`; a journal's name deletes its chunks)."""
        urls = []
        for name in names:
            chunks = self._chunks.pop(name, None)
            urls += ([storage.join(self.url, name)] if chunks is None else
                     [storage.join(self.url, name.removesuffix(".jsonl"), chunk) for chunk in chunks])
        storage.remove(urls)

    def shard_intact(self, record: dict[str, Any], deep: bool = True) -> bool:
        """The shard a journal record names is there with its size and ETag (as listed by `names`)."""
        found = self._listed.get(record["name"])
        return found is not None and found["size"] == record["bytes"] and found["etag"] == record.get("etag")

    def commit(self, tmp: Path, name: str) -> dict[str, Any]:
        """Queue the upload (the journal's "done" record, appended next, waits for it)."""
        def upload() -> None:
            url = storage.join(self.url, name)
            storage.put_file(tmp, url)
            tmp.unlink()
            self.etags[name] = storage.info(url)["etag"]

        self.in_order.check()
        self.in_order.submit(upload, shard=True)
        return {}

    def settle(self) -> None:
        """Wait for every queued upload and journal write; raise the first failure."""
        self.in_order.wait()
        self.in_order.check()

    def finish(self, quarantine: list[dict], manifest: Manifest) -> None:
        storage.write_bytes(storage.join(self.url, QUARANTINE_NAME), json_lines(quarantine).encode())
        manifest.write(self.url)

    def close(self) -> None:
        self.in_order.close()
        shutil.rmtree(self.staging, ignore_errors=True)


def open_output(out: str | Path) -> LocalOutput | StoreOutput:
    """The output for `--out`: a URL (s3://, gs://) or a local folder."""
    if storage.is_url(out):
        if not storage.can_list(str(out)):
            raise storage.StorageError(f"{out}: cannot write to http(s) URLs; use s3:// or gs://")
        return StoreOutput(str(out))
    return LocalOutput(out)
