"""Node journal parts -> one dataset: quarantine.jsonl and manifest.json, written last.

    done, quarantined = finished_part(output.read_log(node.part), node.shards(plan), output, deep=False)
    manifest = write_dataset(output, listing, records, quarantine, cfg, command, inputs)

A node's part of a run is its journal (data_prep/writer.py). `finished_part` reads which of the
node's planned shards it finished -- a "done" record whose shard is still there (size, and with
`deep` its sha256; on a store size and ETag) or that holds nothing -- and the quarantine records of
those shards' items. `write_dataset` writes what the parts add up to: quarantine.jsonl in listing
order, then manifest.json (shards that hold samples, by name), the same bytes whichever node or
process wrote which shard. A whole run does this itself at its end; a partitioned run does it in
`vssl shard ... --num-nodes N --merge` (data_prep.shard_run.merge_nodes), once every planned shard
is there.
"""

from __future__ import annotations

import datetime
from collections import Counter
from typing import Any

from data_prep.listing import Listing
from data_prep.output import LocalOutput, StoreOutput
from data_prep.plan import PlannedShard
from pipeline.config import ShardConfig, to_dict
from pipeline.data.shard_format import Manifest, ShardEntry

QUARANTINE_FIELDS = ("index", "key", "source", "split", "reason")


class ShardRunError(ValueError):
    """OUT cannot be used for this run, or the parts are incomplete; the message says why and what to do."""


def finished_part(records: list[dict[str, Any]], shards: list[PlannedShard], output: LocalOutput | StoreOutput,
                  deep: bool) -> tuple[dict[str, dict], dict[str, list[dict]]]:
    """Of `shards`, the "done" records of those finished and intact (by name), and per finished
    shard the quarantine records of its items, in journal order."""
    shard_of = {index: shard.name for shard in shards for index in shard.items}
    wanted = {shard.name for shard in shards}
    done = {r["name"]: r for r in records if r["event"] == "done" and r["name"] in wanted
            and (r["samples"] == 0 or output.shard_intact(r, deep))}
    quarantined: dict[str, list[dict]] = {name: [] for name in done}
    for r in records:
        if r["event"] == "quarantine" and shard_of.get(r["index"]) in done:
            quarantined[shard_of[r["index"]]].append(r)
    return done, quarantined


def write_dataset(output: LocalOutput | StoreOutput, listing: Listing, shards: list[dict[str, Any]],
                  quarantine: list[dict[str, Any]], cfg: ShardConfig, command: list[str],
                  inputs: dict[str, Any]) -> Manifest:
    """quarantine.jsonl (listing order), then manifest.json, from every planned shard's "done" record
    and every quarantine record of the run."""
    entries = [{k: r[k] for k in QUARANTINE_FIELDS} for r in sorted(quarantine, key=lambda r: r["index"])]
    written = sorted((r for r in shards if r["samples"]), key=lambda r: r["name"])
    by_split: Counter = Counter()
    for rec in written:
        by_split[rec["split"]] += rec["samples"]
    totals = {"samples": sum(by_split.values()), "bytes": sum(r["bytes"] for r in written),
              "shards": len(written), "duration": round(sum(r["duration"] for r in written), 3),
              "by_split": dict(sorted(by_split.items())),
              "keyframe_interval": max((r["keyframe_interval"] for r in written), default=0)}
    manifest = Manifest(
        shards=[ShardEntry(r["name"], r["split"], r["samples"], r["bytes"], r["sha256"]) for r in written],
        classes=listing.classes, totals=totals, quarantined=len(entries), command=command,
        config={"shard": to_dict(cfg), "inputs": inputs},
        created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"))
    output.finish(entries, manifest)  # quarantine.jsonl whole, then manifest.json last
    return manifest
