"""Existing WebDataset shards as an input (re-sharding vssl output or video2dataset output).

    vssl shard old_shards/ --out new_shards/ --transcode --short-side 128
    vssl shard 'v2d/{00000..00009}.tar' --out new_shards/
    vssl shard v2d/ --out new_shards/ --label-key category   # video2dataset's saved column

A sample is `<key>.<video ext>` plus optional `<key>.json` (a vssl SampleMeta, or any JSON
object such as video2dataset's, kept as extra.source_json), `<key>.cls` (an integer label),
`<key>.txt` (kept as extra.caption) and the annotation members `<key>.boxes.json` /
`<key>.masks.npz`. A foreign json's label is its `label` field when it has one (video2dataset
writes the columns saved with --save_additional_columns there); `label_key` (--label-key) names
another field, read from every sample's json (a vssl one too) and required in each. An integer
is a label id, a string a class name; null is unlabelled. A `.cls` member counts only without
`label_key`. A sample video2dataset could not fetch (a json with no video, status
`failed_to_download` / `failed_to_subsample`) is quarantined with its own error_message. Members are grouped into samples by webdataset's own rule
(`webdataset.tariterators.base_plus_ext`, consecutive members sharing a key), so a sample here is
what a WebDataset reader sees. Listing reads tar headers and the small json/cls/txt members only;
each video is later read by its byte offset in a worker, so nothing large is held in memory.
Nothing is unpickled: other members (.pyd, .pickle, ...) are ignored.

A missing, unreadable or truncated tar becomes a quarantine entry; the samples before the
break are kept. Label ids are kept; the class list comes from the source's manifest.json when
there is one, else from the (id, name) pairs seen, else from the class names seen (sorted).
"""

from __future__ import annotations

import json
import tarfile
from pathlib import Path
from typing import Any

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


def _upstream_failure(obj: Any) -> str | None:
    """video2dataset's own reason for a sample it wrote without a video, if the json gives one."""
    status = obj.get("status") if isinstance(obj, dict) else None
    if not (isinstance(status, str) and status.startswith("failed_to_")):
        return None
    message = " ".join(str(obj.get("error_message") or "").split())
    return f"video2dataset {status}" + (f": {message}" if message else "")


def _json_label(obj: Any, key: str, label_key: str | None) -> tuple[int, str] | str:
    """(label id, class name) from the json's label field (module docstring), or why it cannot be used."""
    field = label_key or "label"
    if not isinstance(obj, dict) or field not in obj:
        return f"{key}.json has no {field!r} (--label-key)" if label_key else (-1, "")
    value = obj[field]
    if isinstance(value, float) and (value != value or value.is_integer()):  # pandas: NaN, or 3.0 for 3
        value = None if value != value else int(value)
    if value is None or value == -1:
        return -1, ""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value, ""
    if isinstance(value, str) and value.strip():
        return -1, value.strip()
    return f"{key}.json: {field!r} is {repr(value)[:60]}, not a class id or name"


def _sample_item(tar: Path, tf: tarfile.TarFile, key: str, members: dict[str, tarfile.TarInfo],
                 split: str, label_key: str | None) -> Item:
    def rejected(reason: str) -> Item:
        return Item(key=make_key(key), source=f"{tar}#{key}", split=split, video=None, reject=reason)

    label, label_name, extra = -1, "", {}
    meta_text, cls_text, caption = (_text(tf, members.get(ext)) for ext in ("json", "cls", "txt"))
    try:
        obj = None if meta_text is None else json.loads(meta_text)
    except json.JSONDecodeError:
        return rejected(f"{key}.json is not valid JSON")
    video_ext = next((ext for ext in members if f".{ext}" in VIDEO_SUFFIXES), None)
    if video_ext is None:
        return rejected(_upstream_failure(obj) or f"no video member (has: {', '.join(sorted(members))})")
    if meta_text is not None:
        try:
            meta = SampleMeta.from_json(meta_text, key)
            label, label_name, split, extra = meta.label, meta.label_name, meta.split, dict(meta.extra)
        except ShardFormatError:
            extra["source_json"] = obj
            meta = None
        if label_key or meta is None:
            found = _json_label(obj, key, label_key)
            if isinstance(found, str):
                return rejected(found)
            label, label_name = found
    elif label_key:
        return rejected(f"{key}: no .json member to read {label_key!r} from (--label-key)")
    if cls_text is not None and not label_key:
        if not cls_text.strip().isdigit():
            return rejected(f"{key}.cls is not a label id: {cls_text.strip()[:40]!r}")
        label = int(cls_text.strip())
    if caption is not None:
        extra["caption"] = caption
    blobs = {ext: Blob(str(tar), m.offset_data, m.size) for ext, m in members.items()}
    return Item(key=make_key(key), source=f"{tar}#{key}", split=split, video=blobs[video_ext],
                label=label, label_name=label_name, extra=extra,
                boxes=blobs.get("boxes.json"), masks=blobs.get("masks.npz"))


def _list_tar(tar: Path, split: str, label_key: str | None) -> list[Item]:
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
        items = [_sample_item(tar, tf, key, members, split, label_key) for key, members in groups]
    return items + [broken(error, len(items))] if error else items


def list_shards(spec: str, split: str, label_key: str | None = None) -> tuple[list[Item], list[str] | None]:
    """Items of every sample of the shards in `spec`, and the class list (see module docstring;
    None when the samples name their classes: data_prep/listing.py sorts the names)."""
    paths = shard_paths(spec)
    items = [item for tar in paths for item in _list_tar(tar, split, label_key)]
    manifest = paths[0].parent / "manifest.json"
    if manifest.is_file():
        try:
            classes = read_manifest(manifest).classes
        except ShardFormatError as e:
            raise ListingError(str(e)) from None
    else:
        names = {it.label: it.label_name or str(it.label) for it in items if it.label >= 0}
        if not names:
            return items, None
        classes = [names.get(i, str(i)) for i in range(1 + max(names, default=-1))]
    return items, classes
