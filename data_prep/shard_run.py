"""`vssl shard` end to end: listed items -> killable workers -> ordered shards, quarantine, manifest.

    from data_prep.listing import list_inputs
    from data_prep.shard_run import shard_dataset
    listing = list_inputs("videos/")
    summary = shard_dataset(listing, "shards/", ShardConfig(workers=2), command=["vssl", "shard", ...])
    summary = shard_dataset(listing, "s3://bucket/shards/", ShardConfig(workers=2))
    print("\\n".join(summary.lines()))

Items are processed in worker processes (data_prep.pool) and their results consumed in listing
order, so shards are byte-identical for any number of workers and wherever they are written.
Rejected items go to quarantine.jsonl (one JSON object per line, in listing order). manifest.json
is written last, atomically. OUT is a local folder or an object-store URL (data_prep/output.py
holds how each commits; pipeline/data/shard_format.py the protocol readers rely on).

Resuming: re-running the same command on the same OUT continues an interrupted run. The journal
(data_prep.writer) lists every finished shard with its cursor range and sha256; each is checked
against the file (size and sha256; on a store, size and ETag) -- a missing or altered shard is
dropped with every later shard of its split and written again -- partial `.tar.tmp` files and
shards the journal does not vouch for are deleted, and items wholly inside finished shards are
skipped. The result is the same bytes an uninterrupted run writes. A journal from a
different command or input listing is refused unless `overwrite` clears OUT's shard files.
A store that stays unreachable (after pipeline.storage's retries) stops the run with a one-line
StorageError; nothing is quarantined for it, and re-running resumes.

Test hook: VSSL_SHARD_TEST_KILL_AFTER_SHARDS=K SIGKILLs this process right after the K-th shard
of the run is recorded (a crash at the worst moment, without any cleanup).
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import re
import signal
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from data_prep.listing import Listing
from data_prep.output import LocalOutput, StoreOutput, open_output
from data_prep.pool import KillablePool, TaskFailed
from data_prep.process import FAULT_ENV, Outcome, parse_faults, process_item
from data_prep.sources import Item
from data_prep.writer import JOURNAL_NAME, Cursor, SplitWriter
from pipeline import storage
from pipeline.config import ShardConfig, to_dict
from pipeline.durable import uninterrupted
from pipeline.data.shard_format import MANIFEST_NAME, TMP_SUFFIX, Manifest, ShardEntry

KILL_ENV = "VSSL_SHARD_TEST_KILL_AFTER_SHARDS"


class ShardRunError(ValueError):
    """OUT cannot be used for this run; the message says why and what to do."""


@dataclass
class Summary:
    items: int
    skipped: int  # settled by an earlier, interrupted run
    samples: int
    shards: int
    bytes: int
    quarantined: int
    reasons: Counter = field(default_factory=Counter)
    seconds: float = 0.0
    processed: int = 0
    out: str = ""

    def lines(self) -> list[str]:
        rate = self.processed / self.seconds if self.seconds else 0.0
        lines = [f"vssl shard: {self.items} inputs -> {self.samples} samples in {self.shards} shards "
                 f"({self.bytes / 1e6:.1f} MB) at {self.out}; {self.quarantined} quarantined",
                 f"  {self.processed} inputs processed in {self.seconds:.1f}s ({rate:.2f} videos/s)"
                 + (f"; {self.skipped} already done by an earlier run" if self.skipped else "")]
        lines += [f"  quarantine: {count} x {reason}" for reason, count in self.reasons.most_common(8)]
        return lines


def fingerprint(listing: Listing, cfg: ShardConfig, inputs: dict[str, Any]) -> str:
    """What decides the output bytes: the settings (not workers or timeout) and the listing."""
    settings = {k: v for k, v in to_dict(cfg).items() if k not in ("workers", "timeout_s")}
    h = hashlib.sha256(json.dumps([settings, inputs, listing.classes], sort_keys=True).encode())
    for item in listing.items:
        h.update(repr(item).encode())  # dataclass repr: every field, in a fixed order
    return h.hexdigest()


def _open_out(output: LocalOutput | StoreOutput, run_id: str, overwrite: bool
              ) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[str]]:
    """Journal records and quarantine entries of an interrupted run of this same command (else []),
    and the names of our files left in OUT; clears what it must."""
    ours = output.names()
    if overwrite:
        output.remove(ours)
        return [], [], []
    records, quarantined = output.read_logs()
    if records and records[0].get("fingerprint") != run_id:
        raise ShardRunError(f"{output}: holds a run of a different command or input listing "
                            f"({JOURNAL_NAME}); pass --overwrite or use another --out")
    if not records and any(n.endswith(".tar") or n == MANIFEST_NAME for n in ours):
        raise ShardRunError(f"{output}: already holds shards not made by a resumable run; "
                            f"pass --overwrite or use another --out")
    output.remove([n for n in ours if n.endswith(".tar" + TMP_SUFFIX)])  # partial shards of the interrupted run
    return records, quarantined, ours


def _verified(records: list[dict[str, Any]], output: LocalOutput | StoreOutput, ours: list[str]
              ) -> tuple[list[dict], dict[str, list[dict]], dict[str, Cursor]]:
    """The journal records still true, and per split: its finished shards and its resume cursor.

    A missing or altered shard ends its split's valid prefix; it and every later shard of that
    split are written again. Shard files the journal does not vouch for are deleted.
    """
    kept: list[dict] = []
    done: dict[str, list[dict]] = {}
    cursor: dict[str, Cursor] = {}
    broken: set[str] = set()
    for rec in records:
        split = rec.get("split", "")
        if rec["event"] == "done":
            if split in broken or not output.shard_intact(rec):
                broken.add(split)
                continue
            done.setdefault(split, []).append(rec)
            cursor[split] = tuple(rec["end"])
        elif rec["event"] == "open":
            cursor.setdefault(split, tuple(rec["start"]))
        kept.append(rec)
    names = {rec["name"] for recs in done.values() for rec in recs}
    output.remove([n for n in ours if n.endswith(".tar") and n not in names])
    return kept, done, cursor


def _manifest(listing: Listing, shards: list[dict[str, Any]], quarantined: int, cfg: ShardConfig,
              command: list[str], inputs: dict[str, Any]) -> Manifest:
    shards = sorted(shards, key=lambda r: r["name"])
    by_split: Counter = Counter()
    for rec in shards:
        by_split[rec["split"]] += rec["samples"]
    totals = {"samples": sum(by_split.values()), "bytes": sum(r["bytes"] for r in shards),
              "shards": len(shards), "duration": round(sum(r["duration"] for r in shards), 3),
              "by_split": dict(sorted(by_split.items())),
              "keyframe_interval": max((r.get("keyframe_interval", 0) for r in shards), default=0)}
    manifest = Manifest(
        shards=[ShardEntry(r["name"], r["split"], r["samples"], r["bytes"], r["sha256"]) for r in shards],
        classes=listing.classes, totals=totals, quarantined=quarantined, command=command,
        config={"shard": to_dict(cfg), "inputs": inputs},
        created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"))
    return manifest


def shard_dataset(listing: Listing, out: str | Path, cfg: ShardConfig, command: list[str] | None = None,
                  inputs: dict[str, Any] | None = None, overwrite: bool = False,
                  progress: bool | None = None) -> Summary:
    """Write (or finish writing) the shards of `listing` into `out` (a folder or URL); see the module
    docstring."""
    output = open_output(out)
    try:
        return _shard(listing, output, cfg, command, inputs or {}, overwrite, progress)
    finally:
        output.close()


def _shard(listing: Listing, output: LocalOutput | StoreOutput, cfg: ShardConfig, command: list[str] | None,
           inputs: dict[str, Any], overwrite: bool, progress: bool | None) -> Summary:
    started = time.monotonic()
    run_id = fingerprint(listing, cfg, inputs)
    records, quarantined, ours = _open_out(output, run_id, overwrite)
    kept, done, cursor = _verified(records, output, ours)
    restart = min((c[0] for c in cursor.values()), default=0)

    def resume_at(split: str) -> Cursor:
        """Where this run starts writing `split`; items before it are settled (written or quarantined)."""
        return cursor.get(split, (restart, 0))

    items = listing.items
    settled = sum(1 for it in items if it.index < resume_at(it.split)[0])
    journal, quarantine = output.open_logs(
        kept or [{"event": "start", "fingerprint": run_id, "items": len(items)}],
        [e for e in quarantined if e["index"] < resume_at(e["split"])[0]])
    max_bytes = int(cfg.shard_size_mb * 1e6)
    writers = {split: SplitWriter(output, split, max_bytes, cfg.max_samples_per_shard, journal, recs)
               for split, recs in done.items()}
    seen = {key for recs in done.values() for rec in recs for key in rec["keys"]}
    kill_after, closed = int(os.environ.get(KILL_ENV, "0") or 0), 0

    def closed_one(record: dict | None) -> None:
        nonlocal closed
        closed += record is not None
        if kill_after and closed >= kill_after:
            output.settle()  # the shard is recorded (a store uploads and records in the background)
            os.kill(os.getpid(), signal.SIGKILL)

    def take(item: Item, outcome: Outcome | TaskFailed) -> None:
        """Write an item's samples (those past its split's resume cursor), or quarantine it."""
        at = resume_at(item.split)
        if isinstance(outcome, Outcome) and outcome.fatal:
            raise ShardRunError(f"{outcome.reason} (while reading input {item.index}, {item.source}); "
                                f"re-run the same command to resume")
        fresh = [] if isinstance(outcome, TaskFailed) else [
            (n, s) for n, s in enumerate(outcome.samples) if (item.index, n) >= at]
        dup = next((s.key for _, s in fresh if s.key in seen), None)
        reason = outcome.reason or (f"duplicate key {dup} (already written)" if dup else "")
        if reason:
            quarantine.append({"index": item.index, "key": item.key, "source": item.source,
                               "split": item.split, "reason": reason})
            return
        if item.split not in writers:
            writers[item.split] = SplitWriter(output, item.split, max_bytes, cfg.max_samples_per_shard, journal)
        for n, sample in fresh:
            seen.add(sample.key)
            closed_one(writers[item.split].add(sample, (item.index, n)))

    faults = parse_faults(os.environ.get(FAULT_ENV, ""))
    todo = (it for it in items if it.index >= resume_at(it.split)[0])
    bar = tqdm(total=len(items), initial=settled, unit="video", file=sys.stderr, dynamic_ncols=True,
               disable=None if progress is None else not progress)
    try:  # Ctrl-C stops the run only between items (in the pool's wait), never half-way through a write
        preload = tuple(storage.backend_modules(it.video.path for it in items if it.video is not None))
        with KillablePool(process_item, cfg.workers, cfg.timeout_s, args=(cfg, faults), preload=preload) as pool:
            for item, outcome in pool.map(todo):
                with uninterrupted():
                    take(item, outcome)
                bar.update(1)
        with uninterrupted():
            for writer in writers.values():
                closed_one(writer.finish((len(items), 0)))
            output.settle()  # every shard uploaded and recorded (a failure raises here)
    except BaseException:
        with uninterrupted():
            for writer in writers.values():
                writer.discard()
        raise
    finally:
        bar.close()
        journal.close()
        quarantine.close()
    with uninterrupted():
        manifest = _manifest(listing, [r for w in writers.values() for r in w.done], len(quarantine.records),
                             cfg, list(command or []), inputs)
        output.finish(quarantine.records, manifest)  # quarantine.jsonl whole, then manifest.json last
    reasons = Counter(re.split(r" \(|: ", e["reason"])[0] for e in quarantine.records)
    return Summary(items=len(items), skipped=settled, samples=manifest.totals["samples"],
                   shards=len(manifest.shards), bytes=manifest.totals["bytes"], quarantined=manifest.quarantined,
                   reasons=reasons, seconds=time.monotonic() - started, processed=len(items) - settled,
                   out=str(output))
