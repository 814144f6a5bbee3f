"""`vssl shard` end to end: listed items -> the shard plan -> killable workers -> shards, journal, manifest.

    from data_prep.listing import list_inputs
    from data_prep.plan import Node
    from data_prep.shard_run import shard_dataset
    listing = list_inputs("videos/")
    summary = shard_dataset(listing, "shards/", ShardConfig(workers=2), command=["vssl", "shard", ...])
    summary = shard_dataset(listing, "s3://bucket/shards/", ShardConfig(workers=2, backend="ray"))
    summary = shard_dataset(listing, "shards/", cfg, node=Node(rank=1, count=3, partitioned=True))
    print("\\n".join(summary.lines()))

The plan (data_prep/plan.py) fixes which items make each shard; a node writes the shards it owns
(a run without --num-nodes owns them all), each from its items' results consumed in plan order,
so a shard's bytes do not depend on the number of workers, machines or the backend (a local
process pool, data_prep/pool.py, or Ray, data_prep/ray_pool.py) or on where it is written. Items
that give no sample are journalled as quarantined. A whole run then writes quarantine.jsonl (in
listing order) and manifest.json, last (data_prep/shard_merge.py); a partitioned node leaves its
journal part for `vssl shard ... --merge` to do that. OUT is a local folder or an object-store URL
(data_prep/output.py holds how each commits; pipeline/data/shard_format.py the protocol readers
rely on).

Resuming: re-running the same command (the same --node-rank, for a node) on the same OUT continues
an interrupted run. The node's journal (data_prep.writer) lists every finished shard with its
size and sha256; each is checked against the file (size and sha256; on a store, size and ETag).
Shards whose record is missing or untrue are written again from their items (a partial `.tar.tmp-PID`
and an unvouched `.tar` of this node's are deleted first); the rest are kept, with their items'
quarantine records. The result is the same bytes an uninterrupted run writes. A journal from a
different command or input listing is refused unless `overwrite` (whole runs only) clears OUT.
A store that stays unreachable (after pipeline.storage's retries) stops the run with a one-line
StorageError; nothing is quarantined for it, and re-running resumes.

Test hook: VSSL_SHARD_TEST_KILL_AFTER_SHARDS=K SIGKILLs this process right after the K-th shard
of the run is recorded (a crash at the worst moment, without any cleanup).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import sys
import time
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from tqdm import tqdm

from data_prep.listing import Listing
from data_prep.output import LocalOutput, StoreOutput, open_output
from data_prep.plan import Node, PlannedShard, plan_shards
from data_prep.pool import KillablePool, TaskFailed
from data_prep.process import FAULT_ENV, Outcome, parse_faults, process_item
from data_prep.ray_pool import RayPool, ray_session
from data_prep.shard_merge import ShardRunError, finished_part, write_dataset
from data_prep.sources import Item
from data_prep.writer import ShardWriter, journal_name
from pipeline import storage
from pipeline.config import ShardConfig, to_dict
from pipeline.durable import final_name, uninterrupted
from pipeline.data.shard_format import MANIFEST_NAME

KILL_ENV = "VSSL_SHARD_TEST_KILL_AFTER_SHARDS"
RUN_ONLY = ("workers", "timeout_s", "backend", "ray_address")  # settings that change how, not what


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
    node: str = ""  # a partitioned node's "node R of N"; "" for a whole run or a merge
    merged: int = 0  # a merge: the number of node parts merged

    def lines(self) -> list[str]:
        rate = self.processed / self.seconds if self.seconds else 0.0
        lines = [f"vssl shard{f' ({self.node})' if self.node else ''}: {self.items} inputs -> {self.samples} "
                 f"samples in {self.shards} shards ({self.bytes / 1e6:.1f} MB) at {self.out}; "
                 f"{self.quarantined} quarantined"]
        if self.merged:
            lines.append(f"  merged the parts of {self.merged} nodes in {self.seconds:.1f}s")
        else:
            lines.append(f"  {self.processed} inputs processed in {self.seconds:.1f}s ({rate:.2f} videos/s)"
                         + (f"; {self.skipped} already done by an earlier run" if self.skipped else ""))
        lines += [f"  quarantine: {count} x {reason}" for reason, count in self.reasons.most_common(8)]
        if self.node:
            lines.append("  no manifest yet: once every node is done, run the same command with --merge "
                         "instead of --node-rank")
        return lines


def _reasons(quarantine: list[dict[str, Any]]) -> Counter:
    """Quarantine reasons without their particulars ("timeout after 60s", "video not found", ...)."""
    return Counter(re.split(r" \(|: ", e["reason"])[0] for e in quarantine)


def fingerprint(listing: Listing, cfg: ShardConfig, inputs: dict[str, Any]) -> str:
    """What decides the output bytes: the settings (not RUN_ONLY ones) and the listing."""
    settings = {k: v for k, v in to_dict(cfg).items() if k not in RUN_ONLY}
    h = hashlib.sha256(json.dumps([settings, inputs, listing.classes], sort_keys=True).encode())
    for item in listing.items:
        h.update(repr(item).encode())  # dataclass repr: every field, in a fixed order
    return h.hexdigest()


def _open_part(output: LocalOutput | StoreOutput, node: Node, mine: list[PlannedShard], run_id: str,
               overwrite: bool) -> tuple[list[dict[str, Any]], set[str]]:
    """The journal records of an interrupted run of this same command and node (else []) and the
    names of our files in OUT; clears what it must: everything for `overwrite`, else this node's
    partial shards."""
    ours = output.names()
    if overwrite:
        output.remove(ours)
        return [], set()
    records = output.read_log(node.part)
    if records and records[0].get("fingerprint") != run_id:
        raise ShardRunError(f"{output}: holds a run of a different command or input listing "
                            f"({journal_name(node.part)}); pass --overwrite or use another --out")
    names = {shard.name for shard in mine}
    if not records and any(n in names or n == MANIFEST_NAME for n in ours):
        raise ShardRunError(f"{output}: already holds shards not made by a resumable run; "
                            f"pass --overwrite or use another --out")
    output.remove([n for n in ours if final_name(n) in names])
    return records, set(ours)


def shard_dataset(listing: Listing, out: str | Path, cfg: ShardConfig, command: list[str] | None = None,
                  inputs: dict[str, Any] | None = None, overwrite: bool = False,
                  progress: bool | None = None, node: Node = Node()) -> Summary:
    """Write (or finish writing) `node`'s shards of `listing` into `out` (a folder or URL), and for a
    whole run the quarantine and manifest; see the module docstring."""
    if overwrite and node.partitioned:
        raise ShardRunError("--overwrite: not with --num-nodes (nodes share OUT); clear OUT before starting them")
    output = open_output(out)
    try:
        return _shard(listing, output, cfg, list(command or []), inputs or {}, overwrite, progress, node)
    finally:
        output.close()


@contextmanager
def _pool(cfg: ShardConfig, args: tuple, preload: tuple[str, ...]) -> Iterator[KillablePool | RayPool]:
    """The workers that run process_item: local processes, or tasks on a Ray cluster."""
    if cfg.backend == "ray":
        with ray_session(cfg.ray_address, cfg.workers), RayPool(process_item, cfg.workers, cfg.timeout_s,
                                                                 args=args, preload=preload) as pool:
            yield pool
    else:
        with KillablePool(process_item, cfg.workers, cfg.timeout_s, args=args, preload=preload) as pool:
            yield pool


def _shard(listing: Listing, output: LocalOutput | StoreOutput, cfg: ShardConfig, command: list[str],
           inputs: dict[str, Any], overwrite: bool, progress: bool | None, node: Node) -> Summary:
    started = time.monotonic()
    run_id = fingerprint(listing, cfg, inputs)
    mine = node.shards(plan_shards(listing.items, cfg.inputs_per_shard))
    records, ours = _open_part(output, node, mine, run_id, overwrite)
    done, quarantined = finished_part(records, mine, output, deep=True)
    output.remove([s.name for s in mine if s.name not in done and s.name in ours])  # unvouched: written again
    todo = [s for s in mine if s.name not in done]
    items = listing.items
    kept = [r for s in mine if s.name in done for r in (*quarantined[s.name], done[s.name])]
    journal = output.open_log(node.part, [{"event": "start", "fingerprint": run_id, "node": [node.rank, node.count]},
                                          *kept])
    writer = ShardWriter(output, journal)
    kill_after, closed = int(os.environ.get(KILL_ENV, "0") or 0), 0

    def take(item: Item, outcome: Outcome | TaskFailed, shard: PlannedShard, last: bool) -> None:
        """Write an item's samples into its shard, or quarantine it; close the shard after its last item."""
        nonlocal closed
        if isinstance(outcome, Outcome) and outcome.fatal:
            raise ShardRunError(f"{outcome.reason} (while reading input {item.index}, {item.source}); "
                                f"re-run the same command to resume")
        if outcome.reason:
            journal.append({"event": "quarantine", "index": item.index, "key": item.key, "source": item.source,
                            "split": item.split, "reason": outcome.reason})
        else:
            writer.add(shard, outcome.samples)
        if last:
            done[shard.name] = writer.close(shard)
            closed += 1
            if kill_after and closed >= kill_after:
                output.settle()  # the shard is recorded (a store uploads and records in the background)
                os.kill(os.getpid(), signal.SIGKILL)

    faults = parse_faults(os.environ.get(FAULT_ENV, ""))
    places = iter([(s, k == len(s.items) - 1) for s in todo for k in range(len(s.items))])
    total, settled = sum(len(s.items) for s in mine), sum(len(s.items) for s in mine if s.name in done)
    bar = tqdm(total=total, initial=settled, unit="video", file=sys.stderr, dynamic_ncols=True,
               disable=None if progress is None else not progress)
    try:  # Ctrl-C stops the run only between items (in the pool's wait), never half-way through a write
        preload = tuple(storage.backend_modules(items[i].video.path for s in todo for i in s.items
                                                if items[i].video is not None))
        with _pool(cfg, (cfg, faults), preload) as pool:
            for item, outcome in pool.map(items[i] for s in todo for i in s.items):
                with uninterrupted():
                    take(item, outcome, *next(places))
                bar.update(1)
        with uninterrupted():
            output.settle()  # every shard uploaded and recorded (a failure raises here)
    except BaseException:
        with uninterrupted():
            writer.discard()
        raise
    finally:
        bar.close()
        journal.close()
    shards = [done[s.name] for s in mine]
    quarantine = [r for r in journal.records if r["event"] == "quarantine"]
    if not node.partitioned:
        with uninterrupted():
            write_dataset(output, listing, shards, quarantine, cfg, command, inputs)
    return Summary(items=total, skipped=settled, samples=sum(r["samples"] for r in shards),
                   shards=sum(r["samples"] > 0 for r in shards), bytes=sum(r["bytes"] for r in shards),
                   quarantined=len(quarantine), reasons=_reasons(quarantine), seconds=time.monotonic() - started,
                   processed=total - settled, out=str(output), node=str(node) if node.partitioned else "")


def merge_nodes(listing: Listing, out: str | Path, cfg: ShardConfig, count: int, command: list[str] | None = None,
                inputs: dict[str, Any] | None = None) -> Summary:
    """`vssl shard ... --num-nodes COUNT --merge`: the parts of COUNT nodes -> quarantine.jsonl and
    manifest.json, once every planned shard is there (else a one-line ShardRunError naming the
    missing shards and their nodes)."""
    started, inputs = time.monotonic(), inputs or {}
    run_id = fingerprint(listing, cfg, inputs)
    plan = plan_shards(listing.items, cfg.inputs_per_shard)
    output = open_output(out)
    try:
        output.names()  # one listing of a store serves the journals and the shard checks
        shards, quarantine, missing = [], [], []
        for rank in range(count):
            node = Node(rank, count, partitioned=True)
            records, mine = output.read_log(node.part), node.shards(plan)
            if records and records[0].get("fingerprint") != run_id:
                raise ShardRunError(f"{output}: node {rank}'s journal ({journal_name(node.part)}) is from a "
                                    f"different command or input listing; merge with the nodes' own options")
            done, quarantined = finished_part(records, mine, output, deep=False)
            shards += done.values()
            quarantine += [r for s in mine if s.name in done for r in quarantined[s.name]]
            missing += [(s.name, rank) for s in mine if s.name not in done]
        if missing:
            names = ", ".join(name for name, _ in missing[:6]) + (f" and {len(missing) - 6} more" * (len(missing) > 6))
            ranks = ", ".join(str(r) for r in sorted({rank for _, rank in missing}))
            raise ShardRunError(f"{output}: {len(missing)} of {len(plan)} planned shards missing ({names}) from "
                                f"node ranks {ranks}; re-run those nodes (same command, --node-rank R), "
                                f"then merge again")
        with uninterrupted():
            manifest = write_dataset(output, listing, shards, quarantine, cfg, list(command or []), inputs)
    finally:
        output.close()
    return Summary(items=len(listing.items), skipped=0, samples=manifest.totals["samples"],
                   shards=len(manifest.shards), bytes=manifest.totals["bytes"], quarantined=manifest.quarantined,
                   reasons=_reasons(quarantine), seconds=time.monotonic() - started, out=str(output), merged=count)
