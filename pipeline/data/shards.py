"""Shard lists: a `data.shards` spec -> the shards to read, each with its exact sample count.

    from pipeline.data.shards import list_shards
    shards = list_shards("data/k400/manifest.json", split="train")
    shards = list_shards("data/k400/train-{000000..000099}.tar")
    shards = list_shards("s3://bucket/k400/", split="train")     # the manifest.json under that prefix
    shards = list_shards("pipe:aws s3 cp s3://bucket/train-{000000..000099}.tar -",
                         manifest="data/k400/manifest.json")

A spec is one or more parts joined by "::". A part is
  - a manifest.json, or a folder holding one: its shards (of `split`), beside it; either may be
    a URL (s3://bucket/k400/ or .../manifest.json), read through pipeline.storage;
  - a shard URL (s3://, gs://, http(s)://; brace patterns expanded): each must be listed in
    `manifest` or in the manifest.json beside it, by file name -- on a store a shard counts only
    once a manifest says so (shard_format.py's commit protocol), so nothing else is read;
  - a `pipe:` command: counts come from `manifest`, matched by the shard file name inside it;
  - local paths with braces and globs: only names ending in `.tar` count (a `.tar.tmp` is an
    unfinished shard). Counts come from a manifest.json in the shard's folder that lists it, else
    from `manifest`, else from a scan of the tar headers (exact; the data is skipped, not read).

The split filter keeps shards whose manifest split (or, without a manifest, whose
`{split}-NNNNNN.tar` name) matches; shards with no split information are kept. A part that
matches nothing is a ConfigError naming the part.
"""

from __future__ import annotations

import glob
import logging
import os
import re
import tarfile
from dataclasses import dataclass
from pathlib import Path

from webdataset.shardlists import expand_urls
from webdataset.tariterators import base_plus_ext

from pipeline import storage
from pipeline.config import ConfigError
from pipeline.data.shard_format import MANIFEST_NAME, Manifest, ShardFormatError, read_manifest

log = logging.getLogger("vssl.data")

_SHARD_NAME = re.compile(r"([A-Za-z0-9_.\-]+\.tar)\b")
_SPLIT_NAME = re.compile(r"^(.+)-\d{6}\.tar$")


@dataclass(frozen=True)
class ShardRef:
    url: str  # a path, a URL (pipeline.storage opens it) or a pipe: command (webdataset's gopen)
    name: str  # the shard's file name, its identity in a manifest
    samples: int
    split: str | None = None
    bytes: int = -1  # its size from the manifest (-1: unknown); a URL of another size is not read
    source: int = 0  # its index in the mix (data.sources); the loader sets it, its samples carry it


def _is_remote(part: str) -> bool:
    return part.startswith("pipe:") or re.match(r"^[a-zA-Z][a-zA-Z0-9+.\-]*://", part) is not None


def _load_manifest(path: str, key: str) -> Manifest:
    try:
        return read_manifest(path)
    except (ShardFormatError, storage.StorageError) as e:
        raise ConfigError(f"{key}: {e}") from None


def _manifest_path(part: str) -> str | None:
    if part.endswith(".json"):
        return part
    if storage.is_url(part):
        is_shards = "{" in part or part.endswith(".tar")
        return None if is_shards else storage.join(part, MANIFEST_NAME)
    if os.path.isdir(part) and os.path.isfile(os.path.join(part, MANIFEST_NAME)):
        return os.path.join(part, MANIFEST_NAME)
    return None


def count_tar_samples(path: str) -> int:
    """Samples (key groups) in a local tar, from its headers alone; a damaged tail ends the count."""
    keys, last = 0, None
    try:
        with tarfile.open(path, mode="r:") as tar:
            for info in tar:
                key, _ = base_plus_ext(info.name)
                if info.isreg() and key is not None and key != last:
                    keys, last = keys + 1, key
    except (tarfile.TarError, OSError, EOFError) as e:
        log.warning("%s: tar unreadable after %d samples while counting (%s)", path, keys, e)
    return keys


class _Counts:
    """Per-shard counts by name from manifests: explicit, or found in the shard's own folder."""

    def __init__(self, manifest: str, key: str):
        self.key = key
        self.explicit = self._index(_load_manifest(manifest, key)) if manifest else {}
        self.by_folder: dict[str, dict] = {}

    @staticmethod
    def _index(m: Manifest) -> dict:
        return {s.name: s for s in m.shards}

    def lookup(self, name: str, folder: str | None):
        if folder is not None:
            if folder not in self.by_folder:
                self.by_folder[folder] = self._beside(folder)
            if name in self.by_folder[folder]:
                return self.by_folder[folder][name]
        return self.explicit.get(name)

    def _beside(self, folder: str) -> dict:
        """The counts of the manifest.json in `folder` (a path or URL), {} when it has none."""
        path = storage.join(folder, MANIFEST_NAME)
        if not storage.is_url(folder):
            return self._index(_load_manifest(path, self.key)) if os.path.isfile(path) else {}
        try:
            return self._index(read_manifest(path))
        except ShardFormatError as e:
            if "manifest not found" in str(e):
                return {}
            raise ConfigError(f"{self.key}: {e}") from None
        except storage.StorageError as e:
            raise ConfigError(f"{self.key}: {e}") from None


def _expand_part(part: str, counts: _Counts, key: str) -> list[ShardRef]:
    manifest = _manifest_path(part)
    if manifest is not None:
        m = _load_manifest(manifest, key)
        folder = storage.parent(manifest)
        join = storage.join if storage.is_url(folder) else os.path.join
        return [ShardRef(join(folder, s.name), s.name, s.samples, s.split, s.bytes) for s in m.shards]
    if _is_remote(part):
        refs = []
        for url in expand_urls(part):
            names = _SHARD_NAME.findall(url)
            folder = storage.parent(url) if storage.is_url(url) else None
            entry = counts.lookup(names[-1], folder) if names else None
            if entry is None:
                raise ConfigError(f"{key}: {url!r}: no sample count for it; name a manifest.json listing "
                                  f"{names[-1] if names else 'its shard'} in data.manifest")
            refs.append(ShardRef(url, entry.name, entry.samples, entry.split, entry.bytes))
        return refs
    paths = sorted({p for pat in expand_urls(part) for p in (glob.glob(pat) if glob.has_magic(pat) else [pat])
                    if p.endswith(".tar") and os.path.isfile(p)})
    refs = []
    for p in paths:
        name = os.path.basename(p)
        entry = counts.lookup(name, os.path.dirname(p) or ".")
        if entry is not None:
            refs.append(ShardRef(p, name, entry.samples, entry.split, entry.bytes))
        else:
            split = _SPLIT_NAME.match(name)
            refs.append(ShardRef(p, name, count_tar_samples(p), split.group(1) if split else None))
    return refs


def list_shards(spec: str, manifest: str = "", split: str | None = None, key: str = "data.shards") -> list[ShardRef]:
    """Expand `spec` into shards with counts, keeping those of `split` (None keeps all)."""
    counts = _Counts(manifest, key)
    refs: list[ShardRef] = []
    for part in (p.strip() for p in spec.split("::")):
        if not part:
            continue
        found = _expand_part(part, counts, key)
        if not found:
            raise ConfigError(f"{key}: {part!r} matches no shard (*.tar)")
        refs.extend(found)
    if not refs:
        raise ConfigError(f"{key}: no shards given")
    kept = [r for r in refs if split is None or r.split is None or r.split == split]
    if not kept:
        raise ConfigError(f"{key}: {spec!r} has {len(refs)} shards but none of split {split!r}")
    missing = [r.url for r in kept if not _is_remote(r.url) and not Path(r.url).is_file()]
    if missing:
        raise ConfigError(f"{key}: shard listed but not found: {missing[0]}"
                          + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
    return kept
