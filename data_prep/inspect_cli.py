"""`vssl inspect PATH`: verify shards against their manifest, and show a few samples.

    vssl inspect shards/                  # PATH: the folder, or its manifest.json
    vssl inspect shards/ --decode         # also decode every video and compare frame counts
    vssl inspect shards/ --show 3         # print the metadata of the first 3 samples

Checks that every shard the manifest lists exists with the listed size and sha256; that its
samples, read with webdataset's own tar iteration (what the loader sees), number as listed;
that each sample has .mp4 and .json, the json is a valid SampleMeta of the shard's split with a
known label and the sha256 of the mp4 bytes; that annotations match the frame count and size;
that totals agree and no .tar beside the manifest is unlisted; and that quarantine.jsonl holds
as many entries as the manifest says. Each video is demuxed (not decoded) to find its keyframes:
the longest keyframe interval must match the sample's json and, over all videos, the manifest's
totals.keyframe_interval, and the "ok" line reports it (it bounds the cost of random access).
Prints one line per problem and exits 1 if there is any, else one "ok" line.
"""

from __future__ import annotations

import argparse
import json
import sys
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from data_prep.annotations import AnnotationError, load_annotations
from data_prep.probe import VideoError, count_decoded_frames, probe
from pipeline.data.shard_format import (MANIFEST_NAME, QUARANTINE_NAME, Manifest, SampleMeta, ShardEntry,
                                        ShardFormatError, read_manifest, sha256_bytes, sha256_file)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("path", help="shard folder or its manifest.json")
    parser.add_argument("--decode", action="store_true", help="also decode every video")
    parser.add_argument("--show", type=int, default=0, metavar="N", help="print the metadata of N samples")


def _samples(shard: Path) -> Iterator[dict[str, Any]]:
    from webdataset.tariterators import group_by_keys, tar_file_iterator

    with open(shard, "rb") as f:
        yield from group_by_keys({**member, "__url__": str(shard)} for member in tar_file_iterator(f))


@dataclass
class _Walk:
    """What a pass over the shards is asked to do, and what it has seen so far."""

    classes: list[str]
    decode: bool
    show_count: int
    seen: set[str] = field(default_factory=set)
    shown: list[str] = field(default_factory=list)
    keyframe_interval: int = 0  # longest over the videos read


def _check_video(sample: dict[str, Any], meta: SampleMeta, where: str, walk: _Walk) -> list[str]:
    try:
        interval = probe(sample["mp4"]).keyframe_interval
    except VideoError as e:
        return [f"{where}: {e}"]
    walk.keyframe_interval = max(walk.keyframe_interval, interval)
    claimed = meta.extra.get("keyframe_interval", interval)
    if claimed != interval:
        return [f"{where}: keyframes up to {interval} frames apart, .json says {claimed}"]
    return []


def _check_sample(sample: dict[str, Any], entry: ShardEntry, walk: _Walk) -> list[str]:
    key = sample["__key__"]
    where = f"{entry.name}: {key}"
    missing = [ext for ext in ("mp4", "json") if ext not in sample]
    if missing:
        return [f"{where}: no .{missing[0]} member"]
    try:
        meta = SampleMeta.from_json(sample["json"], key)
    except ShardFormatError as e:
        return [f"{entry.name}: {e}"]
    problems = _check_video(sample, meta, where, walk)
    if sha256_bytes(sample["mp4"]) != meta.sha256:
        problems.append(f"{where}: .mp4 sha256 does not match its .json")
    if meta.split != entry.split:
        problems.append(f"{where}: split {meta.split!r} in a {entry.split!r} shard")
    if not -1 <= meta.label < len(walk.classes):
        problems.append(f"{where}: label {meta.label} outside the {len(walk.classes)} classes")
    if "boxes.json" in sample or "masks.npz" in sample:
        try:
            load_annotations(sample.get("boxes.json"), sample.get("masks.npz"), meta.num_frames,
                             meta.width, meta.height)
        except AnnotationError as e:
            problems.append(f"{where}: {e}")
    if walk.decode:
        try:
            frames = count_decoded_frames(sample["mp4"])
            if frames != meta.num_frames:
                problems.append(f"{where}: {frames} frames decode, .json says {meta.num_frames}")
        except VideoError as e:
            problems.append(f"{where}: {e}")
    return problems


def _check_shard(folder: Path, entry: ShardEntry, walk: _Walk) -> list[str]:
    path = folder / entry.name
    if not path.is_file():
        return [f"{entry.name}: listed in the manifest but missing"]
    problems = []
    size = path.stat().st_size
    if size != entry.bytes:
        problems.append(f"{entry.name}: {size} bytes, the manifest says {entry.bytes}")
    if sha256_file(path) != entry.sha256:
        problems.append(f"{entry.name}: sha256 differs from the manifest")
    count = 0
    try:
        for sample in _samples(path):
            count += 1
            if sample["__key__"] in walk.seen:
                problems.append(f"{entry.name}: duplicate key {sample['__key__']}")
            walk.seen.add(sample["__key__"])
            problems += _check_sample(sample, entry, walk)
            if len(walk.shown) < walk.show_count and "json" in sample:
                walk.shown.append(f"{entry.name} {sample['__key__']}: {sample['json'].decode('utf-8', 'replace')}")
    except (tarfile.TarError, ValueError, OSError) as e:
        problems.append(f"{entry.name}: unreadable after {count} samples ({' '.join(str(e).split())[:200]})")
    if count != entry.samples:
        problems.append(f"{entry.name}: {count} samples, the manifest says {entry.samples}")
    return problems


def _check_totals(folder: Path, manifest: Manifest, walk: _Walk) -> list[str]:
    problems = []
    written = manifest.totals.get("keyframe_interval")  # absent from manifests written before it was
    if written is not None and written != walk.keyframe_interval:
        problems.append(f"{MANIFEST_NAME}: totals.keyframe_interval is {written}, "
                        f"the videos have {walk.keyframe_interval}")
    expected = {"samples": sum(s.samples for s in manifest.shards), "bytes": sum(s.bytes for s in manifest.shards),
                "shards": len(manifest.shards)}
    for name, value in expected.items():
        if manifest.totals.get(name) != value:
            problems.append(f"{MANIFEST_NAME}: totals.{name} is {manifest.totals.get(name)}, "
                            f"the shards add up to {value}")
    names = {s.name for s in manifest.shards}
    problems += [f"{p.name}: shard file not listed in the manifest"
                 for p in sorted(folder.glob("*.tar")) if p.name not in names]
    quarantine = folder / QUARANTINE_NAME
    if quarantine.is_file():
        lines = [line for line in quarantine.read_text(encoding="utf-8").splitlines() if line.strip()]
        if len(lines) != manifest.quarantined:
            problems.append(f"{QUARANTINE_NAME}: {len(lines)} entries, the manifest says {manifest.quarantined}")
    return problems


def inspect_dataset(path: str | Path, decode: bool = False, show: int = 0) -> tuple[list[str], list[str], int]:
    """(problems, shown sample lines, longest keyframe interval) of the dataset at `path`
    (folder or manifest.json)."""
    path = Path(path)
    try:
        manifest = read_manifest(path)
    except ShardFormatError as e:
        return [str(e)], [], 0
    folder = path if path.is_dir() else path.parent
    walk, problems = _Walk(manifest.classes, decode, show), []
    for entry in manifest.shards:
        problems += _check_shard(folder, entry, walk)
    return problems + _check_totals(folder, manifest, walk), walk.shown, walk.keyframe_interval


def run(args: argparse.Namespace) -> int:
    problems, shown, keyframe_interval = inspect_dataset(args.path, decode=args.decode, show=args.show)
    for line in shown:
        print(line)
    for line in problems:
        print(line)
    if problems:
        print(f"vssl inspect: {len(problems)} problem(s) in {args.path}", file=sys.stderr)
        return 1
    manifest = read_manifest(args.path)
    print(f"ok: {len(manifest.shards)} shards, {manifest.totals.get('samples')} samples, "
          f"{len(manifest.classes)} classes, {manifest.quarantined} quarantined, "
          f"longest keyframe interval {keyframe_interval} frames"
          + (", every video decoded" if args.decode else "") + f" {json.dumps(manifest.totals.get('by_split', {}))}")
    return 0
