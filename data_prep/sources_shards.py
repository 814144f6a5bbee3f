"""Existing WebDataset shards as an input (re-sharding vssl output or video2dataset output).

    vssl shard old_shards/ --out new_shards/ --transcode --short-side 128
    vssl shard 'v2d/{00000..00009}.tar' --out new_shards/

A sample is `<key>.<video ext>` plus optional `<key>.json` (a vssl SampleMeta, or any JSON
object such as video2dataset's, kept as extra.source_json), `<key>.cls` (an integer label),
`<key>.txt` (kept as extra.caption) and the annotation members `<key>.boxes.json` /
`<key>.masks.npz`. Members are grouped into samples by webdataset's own rule
(`webdataset.tariterators.base_plus_ext`, consecutive members sharing a key), so a sample here is
what a WebDataset reader sees. Listing reads tar headers and the small json/cls/txt members only;
each video is later read by its byte offset in a worker, so nothing large is held in memory.
Nothing is unpickled: other members (.pyd, .pickle, ...) are ignored.

A missing, unreadable or truncated tar becomes a quarantine entry; the samples before the
break are kept. Label ids are kept; the class list comes from the source's manifest.json when
there is one, else from the (id, name) pairs seen.
"""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

from data_prep.sources import VIDEO_SUFFIXES, Blob, Item, ListingError
from pipeline import storage
from pipeline.data.shard_format import SampleMeta, ShardFormatError, make_key, read_manifest


def shard_paths(spec: str) -> list[Path]:
    if storage.is_url(spec):
        raise ListingError(f"{spec}: re-sharding shards from a URL is not supported; copy them to a local "
                           f"folder first (raw videos, CSV and path lists can be URLs)")
    if "{" in spec:
        from braceexpand import braceexpand

        paths = [Path(p) for p in braceexpand(spec)]
    elif Path(spec).is_dir():
        paths = sorted(Path(spec).glob("*.tar"))
    else:
        paths = [Path(spec)]
    if not paths:
        raise ListingError(f"{spec}: no .tar shards found")
    return paths


def _text(tf: tarfile.TarFile, member: tarfile.TarInfo | None) -> str | None:
    if member is None:
        return None
    return tf.extractfile(member).read().decode("utf-8", "replace")


def _sample_item(tar: Path, tf: tarfile.TarFile, key: str, members: dict[str, tarfile.TarInfo],
                 split: str) -> Item:
    def rejected(reason: str) -> Item:
        return Item(key=make_key(key), source=f"{tar}#{key}", split=split, video=None, reject=reason)

    video_ext = next((ext for ext in members if f".{ext}" in VIDEO_SUFFIXES), None)
    if video_ext is None:
        return rejected(f"no video member (has: {', '.join(sorted(members))})")
    label, label_name, extra = -1, "", {}
    meta_text, cls_text, caption = (_text(tf, members.get(ext)) for ext in ("json", "cls", "txt"))
    if meta_text is not None:
        try:
            meta = SampleMeta.from_json(meta_text, key)
            label, label_name, split, extra = meta.label, meta.label_name, meta.split, dict(meta.extra)
        except ShardFormatError:
            try:
                extra["source_json"] = json.loads(meta_text)
            except json.JSONDecodeError:
                return rejected(f"{key}.json is not valid JSON")
    if cls_text is not None:
        if not cls_text.strip().isdigit():
            return rejected(f"{key}.cls is not a label id: {cls_text.strip()[:40]!r}")
        label = int(cls_text.strip())
    if caption is not None:
        extra["caption"] = caption
    blobs = {ext: Blob(str(tar), m.offset_data, m.size) for ext, m in members.items()}
    return Item(key=make_key(key), source=f"{tar}#{key}", split=split, video=blobs[video_ext],
                label=label, label_name=label_name, extra=extra,
                boxes=blobs.get("boxes.json"), masks=blobs.get("masks.npz"))


def _list_tar(tar: Path, split: str) -> list[Item]:
    from webdataset.tariterators import base_plus_ext

    def broken(error: Exception, kept: int) -> Item:
        after = f" after {kept} samples" if kept else ""
        return Item(key=make_key(f"{tar.stem}_unreadable"), source=str(tar), split=split, video=None,
                    reject=f"unreadable tar{after}: {error.__class__.__name__}: {error}")

    try:
        tf = tarfile.open(tar, "r:")
    except (tarfile.TarError, OSError) as e:
        return [broken(e, 0)]
    groups: list[tuple[str, dict[str, tarfile.TarInfo]]] = []
    error = None
    with tf:
        try:
            for member in tf:
                name = member.name
                if not member.isreg() or ("/" not in name and name.startswith("__") and name.endswith("__")):
                    continue
                key, ext = base_plus_ext(name)
                if key is None:
                    continue
                if groups and groups[-1][0] == key and ext.lower() not in groups[-1][1]:
                    groups[-1][1][ext.lower()] = member
                else:
                    groups.append((key, {ext.lower(): member}))
        except (tarfile.TarError, OSError, EOFError) as e:
            error = e
            groups = groups[:-1]  # the sample being read when the tar broke off may be incomplete
        items = [_sample_item(tar, tf, key, members, split) for key, members in groups]
    return items + [broken(error, len(items))] if error else items


def list_shards(spec: str, split: str) -> tuple[list[Item], list[str]]:
    """Items of every sample of the shards in `spec`, and the class list (see module docstring)."""
    paths = shard_paths(spec)
    items = [item for tar in paths for item in _list_tar(tar, split)]
    manifest = paths[0].parent / "manifest.json"
    if manifest.is_file():
        try:
            classes = read_manifest(manifest).classes
        except ShardFormatError as e:
            raise ListingError(str(e)) from None
    else:
        names = {it.label: it.label_name or str(it.label) for it in items if it.label >= 0}
        classes = [names.get(i, str(i)) for i in range(1 + max(names, default=-1))]
    return items, classes
