"""The low-label setting: a deterministic, class-balanced fraction of the training labels.

    vssl finetune recipes/finetune/classification.yaml --set task.label_fraction=0.1
    from pipeline.tasks.label_subset import chosen_keys, write_label_subset
    keys = chosen_keys([(key, label), ...], fraction=0.1, seed=0)
    folder = write_label_subset("data/shards", "", "runs/ft/labelled-0.1-seed0", 0.1, seed=0)

Which samples: within each class, samples are ranked by sha256(f"{seed}:{key}") and the first
max(1, round(fraction * class size)) are kept - the same fraction of every class, the same
samples on every machine and run, and a larger fraction keeps a superset. Unlabelled samples
(label < 0) and samples whose `<key>.json` is unreadable are never chosen.

How: the kept samples are copied, members unchanged and in their original order, into shards
of their own (`train-NNNNNN.tar` + manifest.json with the source's class list) in a fresh folder
that is renamed into place when whole (every rank of a run may do it at once; one copy wins). The loader then reads them like any dataset, so its
order, resume and multi-process guarantees hold as they are. subset.json beside them records
the source shards, fraction, seed and keys; a folder whose record matches is reused as it is.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import tarfile
import tempfile
from collections import defaultdict
from pathlib import Path

import webdataset as wds
from webdataset.gopen import gopen
from webdataset.tariterators import base_plus_ext

from pipeline.config import ConfigError
from pipeline.data.plan import Segment
from pipeline.data.shard_format import (MANIFEST_NAME, META_EXT, Manifest, SampleMeta, ShardEntry, ShardFormatError,
                                        read_manifest, sha256_file, shard_name)
from pipeline.data.shards import ShardRef, list_shards
from pipeline.data.tar_reader import read_segment

log = logging.getLogger("vssl.tasks")
RECORD_NAME = "subset.json"
SAMPLES_PER_SHARD = 256


def key_rank(key: str, seed: int) -> str:
    return hashlib.sha256(f"{seed}:{key}".encode()).hexdigest()


def chosen_keys(samples: list[tuple[str, int]], fraction: float, seed: int = 0) -> set[str]:
    """Keys kept from (key, label) pairs: per class, the max(1, round(fraction * n)) lowest ranks."""
    by_class: dict[int, list[str]] = defaultdict(list)
    for key, label in samples:
        if label >= 0:
            by_class[label].append(key)
    kept: set[str] = set()
    for keys in by_class.values():
        count = max(1, round(fraction * len(keys)))
        kept.update(sorted(keys, key=lambda k: key_rank(k, seed))[:count])
    return kept


def read_labels(shard: ShardRef) -> list[tuple[str, int]]:
    """(key, label) of every sample of a shard, from its `<key>.json` members alone."""
    found = []
    stream = gopen(shard.url)
    try:
        tar = tarfile.open(fileobj=stream, mode="r|")
        for info in tar:
            key, ext = base_plus_ext(info.name)
            if info.isreg() and key is not None and ext == META_EXT:
                try:
                    found.append((key, SampleMeta.from_json(tar.extractfile(info).read(), key).label))
                except ShardFormatError as e:
                    log.warning("%s: %s; not a candidate for the labelled subset", shard.name, e)
    except (tarfile.TarError, OSError, EOFError) as e:
        log.warning("%s: damaged after %d samples (%s); the rest are not candidates", shard.name, len(found), e)
    finally:
        stream.close()
    return found


def _record(shards: list[ShardRef], fraction: float, seed: int, keys: list[str]) -> dict:
    return {"source": [[s.name, s.samples] for s in shards], "fraction": fraction, "seed": seed,
            "keys": len(keys), "keys_sha256": hashlib.sha256("\n".join(keys).encode()).hexdigest()}


def _is_current(folder: Path, record: dict) -> bool:
    try:
        return json.loads((folder / RECORD_NAME).read_text()) == record and (folder / MANIFEST_NAME).is_file()
    except (OSError, ValueError):
        return False


def _copy_samples(shards: list[ShardRef], keep: set[str], folder: Path) -> list[ShardEntry]:
    entries, writer, written = [], None, 0

    def close() -> None:
        writer.close()
        path = folder / shard_name("train", len(entries))
        entries.append(ShardEntry(path.name, "train", written, path.stat().st_size, sha256_file(path)))

    for shard in shards:
        for raw in read_segment(Segment(shard, 0, shard.samples), 0, lambda pos: True):
            if raw.error is not None or raw.key not in keep:
                continue
            if writer is None:
                writer, written = wds.TarWriter(str(folder / shard_name("train", len(entries)))), 0
            writer.write({"__key__": raw.key, **raw.members})
            written += 1
            if written == SAMPLES_PER_SHARD:
                close()
                writer = None
    if writer is not None:
        close()
    return entries


def _install(staging: Path, folder: Path, record: dict) -> None:
    """Rename `staging` to `folder`, safe against other processes (the ranks of one run) doing the
    same: the folder is never missing while a current one exists, and a current one is kept."""
    if _is_current(folder, record):
        return
    if folder.exists():
        stale = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".stale", dir=folder.parent))
        try:
            folder.rename(stale / "old")
        except FileNotFoundError:  # another process moved it first
            pass
        shutil.rmtree(stale, ignore_errors=True)
    try:
        staging.rename(folder)
    except OSError:  # another process installed its (identical) subset first
        if not _is_current(folder, record):
            raise


def write_label_subset(shards_spec: str, manifest: str, folder: str | Path, fraction: float,
                       seed: int = 0) -> Path:
    """Shards holding the chosen fraction of the training samples of `shards_spec`, in `folder`."""
    folder = Path(folder)
    shards = list_shards(shards_spec, manifest, split="train", key="data.shards")
    samples = [pair for shard in shards for pair in read_labels(shard)]
    keep = chosen_keys(samples, fraction, seed)
    if not keep:
        raise ConfigError(f"data.shards: no labelled training sample in {shards_spec!r} for task.label_fraction")
    record = _record(shards, fraction, seed, sorted(keep))
    if _is_current(folder, record):
        return folder
    classes = source_classes(shards_spec, manifest)
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".partial", dir=folder.parent))
    try:
        entries = _copy_samples(shards, keep, staging)
        total = sum(e.samples for e in entries)
        Manifest(shards=entries, classes=classes,
                 totals={"samples": total, "shards": len(entries), "by_split": {"train": total}},
                 config={"label_subset": {k: v for k, v in record.items() if k != "source"},
                         "source": shards_spec}).write(staging)
        (staging / RECORD_NAME).write_text(json.dumps(record))
        _install(staging, folder, record)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log.info("labelled subset: %d of %d samples -> %s", total, len(samples), folder)
    return folder


def source_classes(shards_spec: str, manifest: str = "") -> list[str]:
    """The class list of the manifest that data.manifest or the first part of data.shards names."""
    first = manifest or shards_spec.split("::")[0].strip()
    path = Path(first)
    if path.is_dir() and (path / MANIFEST_NAME).is_file():
        path = path / MANIFEST_NAME
    elif not path.name.endswith(".json"):
        path = path.parent / MANIFEST_NAME
    if not path.is_file():
        return []
    try:
        return read_manifest(path).classes
    except ShardFormatError as e:
        raise ConfigError(f"data.shards: {e}") from None
