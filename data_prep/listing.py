"""`list_inputs`: one input (any format) -> a `Listing`: numbered Items, label ids, class list.

    from data_prep.listing import list_inputs
    listing = list_inputs("kinetics.csv", fmt="auto", root="videos/", split="train")
    for item in listing.items: print(item.index, item.key, item.label, item.reject or item.video)

Formats, guessed from the path by `detect_format` or named with `vssl shard --format`:
folder and list (data_prep/sources.py), kinetics and ssv2 (data_prep/sources_datasets.py),
shards (data_prep/sources_shards.py). The input, --root and --classes may be URLs (s3://, gs://,
https://): every format but shards reads them through pipeline.storage.

Per-item problems found while listing (a missing video, a duplicate key, an unknown label) do
not stop the run: the item carries a `reject` reason and takes its place in quarantine.jsonl;
of two items with one key the later is rejected. A listing that cannot be used at all raises
`ListingError` (one line naming the file). Labels: names map to ids through the class list
(`--classes` file, else what the source knows, else the sorted names); items that arrive with
an id (integer path-list labels, re-sharded samples) keep it and take their name from the list.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from data_prep.sources import Item, ListingError, base_name, list_folder, list_paths, read_text
from data_prep.sources_datasets import list_kinetics, list_ssv2
from data_prep.sources_shards import list_shards
from pipeline import storage

FORMATS = ("auto", "folder", "kinetics", "ssv2", "list", "shards")
_SPLIT_OK = re.compile(r"^[A-Za-z0-9_]+$")


@dataclass
class Listing:
    items: list[Item]
    classes: list[str]  # label id = index
    format: str


def load_classes(path: str | Path) -> list[str]:
    """Class names in label order from a .txt (one per line) or .json {"name": idx} (SSv2 labels)."""
    try:
        text = read_text(path)
        mapping = json.loads(text) if str(path).lower().endswith(".json") else None
        by_index = {int(idx): name for name, idx in mapping.items()} if isinstance(mapping, dict) else None
    except (OSError, UnicodeDecodeError) as e:
        raise ListingError(f"{path}: cannot read class list ({e.__class__.__name__})") from None
    except json.JSONDecodeError as e:
        raise ListingError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from None
    except (TypeError, ValueError):
        raise ListingError(f"{path}: class indices must be integers") from None
    if mapping is None:
        names = [line.strip() for line in text.splitlines() if line.strip()]
    elif by_index is None:
        raise ListingError(f"{path}: expected a JSON object {{\"class name\": index}}")
    elif sorted(by_index) != list(range(len(mapping))):
        raise ListingError(f"{path}: class indices must be 0..{len(mapping) - 1}, each once")
    else:
        names = [by_index[i] for i in range(len(by_index))]
    twice = [name for name, count in Counter(names).items() if count > 1]
    if twice:
        raise ListingError(f"{path}: class {twice[0]!r} is listed twice")
    return names


def finalize(items: list[Item], classes: list[str] | None, fmt: str) -> Listing:
    """Number the items, settle labels against the class list, and reject later duplicates of a key."""
    if classes is None:
        classes = sorted({it.label_name for it in items if it.label_name and it.label < 0})
    label_of = {name: i for i, name in enumerate(classes)}
    first_source: dict[str, str] = {}
    out = []
    for index, item in enumerate(items):
        changes: dict[str, Any] = {"index": index}
        if item.label >= 0:
            if item.label < len(classes):
                changes["label_name"] = classes[item.label]
            elif not item.reject:
                changes["reject"] = f"label {item.label} is outside the class list of {len(classes)}"
        elif item.label_name:
            if item.label_name in label_of:
                changes["label"] = label_of[item.label_name]
            elif not item.reject:
                changes["reject"] = f"label {item.label_name!r} is not in the class list"
        if not _SPLIT_OK.match(item.split) and not item.reject:
            changes["reject"] = f"split {item.split!r} is not a plain name (letters, digits, _)"
        if item.key in first_source and not item.reject:
            changes["reject"] = f"duplicate key {item.key} (first from {first_source[item.key]})"
        first_source.setdefault(item.key, item.source)
        out.append(dataclasses.replace(item, **changes))
    return Listing(items=out, classes=list(classes), format=fmt)


def _is_folder(spec: str) -> bool:
    return storage.isdir(spec) if storage.is_url(spec) else os.path.isdir(spec)


def _has_tars(spec: str) -> bool:
    if storage.is_url(spec):
        return any(name.endswith(".tar") for name in storage.listdir_cached(spec))
    return any(Path(spec).glob("*.tar"))


def detect_format(spec: str) -> str:
    suffix = os.path.splitext(base_name(spec))[1].lower()
    if "{" in spec or suffix == ".tar":
        return "shards"
    if _is_folder(spec):
        return "shards" if _has_tars(spec) else "folder"
    if suffix == ".csv":
        try:
            with io.StringIO(read_text(spec), newline="") as f:
                header = {cell.strip() for cell in next(csv.reader(f), [])}
        except (OSError, UnicodeDecodeError) as e:
            raise ListingError(f"{spec}: cannot read ({e.__class__.__name__}: {e})") from None
        return "kinetics" if header & {"youtube_id", "time_start", "time_end"} else "list"
    if suffix == ".json":
        return "ssv2"
    if suffix == ".txt":
        return "list"
    raise ListingError(f"{spec}: cannot tell the input format from the name; pass --format")


def list_inputs(spec: str, fmt: str = "auto", root: str | None = None, split: str = "train",
                classes_file: str | None = None, labels: str = "auto", label_key: str | None = None) -> Listing:
    """List the items of one input (see the module docstring). label_key: the json field holding a
    shards input's labels (data_prep/sources_shards.py)."""
    if fmt not in FORMATS:
        raise ListingError(f"--format: must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if label_key is not None and not label_key.strip():
        raise ListingError("--label-key: empty")
    if not _SPLIT_OK.match(split):
        raise ListingError(f"--split: {split!r} is not a plain name (letters, digits, _)")
    exists = storage.exists(spec) or storage.isdir(spec) if storage.is_url(spec) else Path(spec).exists()
    if "{" not in spec and not exists:
        raise ListingError(f"{spec}: input not found")
    if fmt == "auto":
        fmt = detect_format(spec)
    if label_key is not None and fmt != "shards":
        raise ListingError(f"--label-key: reads the json of a shards input, not a {fmt} input")
    if fmt in ("kinetics", "ssv2") and not root:
        raise ListingError(f"{spec}: the {fmt} format needs --root (the folder holding the videos)")
    hint = None
    if fmt == "folder":
        items = list_folder(spec, split, labels)
    elif fmt == "list":
        items, hint = list_paths(spec, root or None, split)
    elif fmt == "kinetics":
        items = list_kinetics(spec, root, split)
    elif fmt == "ssv2":
        items = list_ssv2(spec, root, split)
    else:
        items, hint = list_shards(spec, split, label_key)
    classes = load_classes(classes_file) if classes_file else hint
    return finalize(items, classes, fmt)
