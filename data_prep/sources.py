"""What `vssl shard` reads: every input format becomes one deterministic list of `Item`s.

    from data_prep.sources import list_inputs
    listing = list_inputs("videos/", fmt="auto", root=None, split="train")
    for item in listing.items: print(item.index, item.key, item.label_name, item.video)

Formats (guessed from the path by `detect_format`, or named with `vssl shard --format`):

    folder    a directory tree; with `labels="auto"` it is labelled when every video sits at
              ROOT/<class>/<video>, else unlabelled (label -1); `dirs` / `none` force either
    kinetics  CSV (label, youtube_id, time_start, time_end, split) + root   (sources_datasets.py)
    ssv2      JSON list [{"id", "label", "template", "placeholders"}] + root (sources_datasets.py)
    list      .txt with one path per line, or .csv with path[,label]; relative paths are taken
              from `root`, else from the list's folder
    shards    existing WebDataset tars: a .tar, a folder of them, or a brace pattern (sources_shards.py)

Folder trees and tars are listed in sorted order, listing files in their row order. Per-item
problems found while listing (a missing video, a duplicate key, an unknown label) do not stop
the run: the item carries a `reject` reason and ends up in quarantine.jsonl in its place. A
listing that cannot be read at all raises `ListingError` (one line naming the file).

Annotation sidecars beside a video file, `<stem>.boxes.json` and `<stem>.masks.npz`, are
attached to its item.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.data.shard_format import make_key

VIDEO_SUFFIXES = (".mp4", ".webm", ".mkv", ".avi", ".mov", ".m4v", ".mpg", ".mpeg", ".flv", ".wmv", ".3gp")
FORMATS = ("auto", "folder", "kinetics", "ssv2", "list", "shards")
_SPLIT_OK = re.compile(r"^[A-Za-z0-9_]+$")


class ListingError(ValueError):
    """An input listing cannot be used at all; the message names the file and the problem."""


@dataclass(frozen=True)
class Blob:
    """Bytes on disk: a whole file (size -1) or a byte range of one (a tar member)."""

    path: str
    offset: int = 0
    size: int = -1

    def read(self) -> bytes:
        """The bytes; raises OSError (missing, directory, unreadable) or EOFError (short range)."""
        with open(self.path, "rb") as f:
            if self.size < 0:
                return f.read()
            f.seek(self.offset)
            data = f.read(self.size)
        if len(data) != self.size:
            raise EOFError(f"{self.path}: member at byte {self.offset} truncated "
                           f"({len(data)} of {self.size} bytes)")
        return data


@dataclass(frozen=True)
class Item:
    """One input video (or a reason it cannot be one) and everything known about it from listing."""

    key: str
    source: str  # where it came from, for people: a path, "list.csv:12" or "shard.tar#key"
    split: str
    video: Blob | None
    label: int = -1
    label_name: str = ""
    boxes: Blob | None = None
    masks: Blob | None = None
    clip: tuple[float, float] | None = None  # cut [start, end) seconds out of a longer video
    extra: dict[str, Any] = field(default_factory=dict)
    reject: str = ""  # non-empty: quarantined with this reason, never processed
    index: int = -1  # position in the listing, set by `finalize`


@dataclass
class Listing:
    items: list[Item]
    classes: list[str]  # label id = index
    format: str


def is_video_name(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in VIDEO_SUFFIXES


def strip_suffix(rel: str) -> str:
    return os.path.splitext(rel)[0]


def sidecars(video_path: Path) -> dict[str, Blob | None]:
    """The `boxes` / `masks` annotation files beside a video, if present."""
    stem = video_path.with_suffix("")
    found = {}
    for name, suffix in (("boxes", ".boxes.json"), ("masks", ".masks.npz")):
        path = Path(f"{stem}{suffix}")
        found[name] = Blob(str(path)) if path.is_file() else None
    return found


def file_item(path: Path, key_text: str, source: str, split: str, **fields: Any) -> Item:
    """An Item for a video file on disk, with its annotation sidecars attached.

    key_text names the item without a file suffix (a relative path, a YouTube clip id, ...).
    """
    return Item(key=make_key(key_text), source=source, split=split,
                video=Blob(str(path)), **sidecars(path), **fields)


def walk_videos(root: Path) -> list[str]:
    """Relative POSIX paths of every video-named entry under root, sorted.

    A directory named like a video (x.mp4/) is listed too, and not descended into, so it is
    quarantined as "is a directory" instead of silently vanishing.
    """
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = os.path.relpath(dirpath, root)
        for name in [d for d in dirnames if is_video_name(d)] + [f for f in filenames if is_video_name(f)]:
            found.append(Path(rel_dir, name).as_posix().removeprefix("./"))
        dirnames[:] = [d for d in dirnames if not is_video_name(d)]
    return sorted(found)


def index_videos(root: Path) -> dict[str, Path]:
    """Relative path without suffix -> video path; mp4 wins over other suffixes of the same stem."""
    if not root.is_dir():
        raise ListingError(f"{root}: --root is not a folder")
    rank = {s: i for i, s in enumerate(VIDEO_SUFFIXES)}
    index: dict[str, Path] = {}
    for rel in walk_videos(root):
        stem, suffix = os.path.splitext(rel)
        old = index.get(stem)
        if old is None or rank.get(suffix.lower(), 99) < rank.get(old.suffix.lower(), 99):
            index[stem] = root / rel
    return index


def list_folder(root: Path, split: str, labels: str = "auto") -> list[Item]:
    rels = walk_videos(root)
    if not rels:
        raise ListingError(f"{root}: no video files found (looked for {', '.join(VIDEO_SUFFIXES)})")
    labelled = labels == "dirs" or (labels == "auto" and all(rel.count("/") == 1 for rel in rels))
    if labels == "dirs" and not all(rel.count("/") == 1 for rel in rels):
        bad = next(rel for rel in rels if rel.count("/") != 1)
        raise ListingError(f"{root}: labels from folders need ROOT/<class>/<video>, found {bad}")
    return [file_item(root / rel, strip_suffix(rel), str(root / rel), split,
                      label_name=rel.split("/")[0] if labelled else "") for rel in rels]


def _read_path_rows(list_path: Path) -> list[tuple[int, str, str]]:
    """(line number, path, label) rows of a .txt or .csv path list."""
    rows = []
    with open(list_path, newline="", encoding="utf-8") as f:
        if list_path.suffix.lower() == ".csv":
            for line_no, row in enumerate(csv.reader(f), start=1):
                if not row or not row[0].strip() or (line_no == 1 and row[0].strip().lower() == "path"):
                    continue
                rows.append((line_no, row[0].strip(), row[1].strip() if len(row) > 1 else ""))
        else:
            for line_no, line in enumerate(f, start=1):
                if line.strip() and not line.lstrip().startswith("#"):
                    rows.append((line_no, line.strip(), ""))
    return rows


def list_paths(list_path: Path, root: Path | None, split: str) -> tuple[list[Item], list[str] | None]:
    """A path list; integer labels are taken as label ids, other labels as class names."""
    try:
        rows = _read_path_rows(list_path)
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise ListingError(f"{list_path}: cannot read path list ({e.__class__.__name__}: {e})") from None
    if not rows:
        raise ListingError(f"{list_path}: no paths listed")
    base = root or list_path.parent
    numeric = all(label.isdigit() for _, _, label in rows if label) and any(label for _, _, label in rows)
    classes = [str(i) for i in range(1 + max(int(lb) for _, _, lb in rows if lb))] if numeric else None
    items = []
    for line_no, text, label in rows:
        path = Path(text) if Path(text).is_absolute() else base / text
        items.append(file_item(path, strip_suffix(text), f"{list_path.name}:{line_no}", split,
                               label_name=str(int(label)) if numeric and label else label))
    return items, classes


def load_classes(path: Path) -> list[str]:
    """Class names in label order from a .txt (one per line) or .json {"name": idx} (SSv2 labels)."""
    try:
        text = path.read_text(encoding="utf-8")
        if path.suffix.lower() != ".json":
            return [line.strip() for line in text.splitlines() if line.strip()]
        mapping = json.loads(text)
        if not isinstance(mapping, dict):
            raise ListingError(f"{path}: expected a JSON object {{\"class name\": index}}")
        by_index = {int(idx): name for name, idx in mapping.items()}
    except (OSError, UnicodeDecodeError) as e:
        raise ListingError(f"{path}: cannot read class list ({e.__class__.__name__})") from None
    except json.JSONDecodeError as e:
        raise ListingError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from None
    except (TypeError, ValueError):
        raise ListingError(f"{path}: class indices must be integers") from None
    if sorted(by_index) != list(range(len(by_index))):
        raise ListingError(f"{path}: class indices must be 0..{len(by_index) - 1} without gaps")
    return [by_index[i] for i in range(len(by_index))]


def finalize(items: list[Item], classes: list[str] | None, fmt: str) -> Listing:
    """Number the items, give label ids by class name, and reject later duplicates of a key."""
    if classes is None:
        classes = sorted({it.label_name for it in items if it.label_name and it.label < 0})
    label_of = {name: i for i, name in enumerate(classes)}
    first_source: dict[str, str] = {}
    out = []
    for index, item in enumerate(items):
        changes: dict[str, Any] = {"index": index}
        if item.label < 0 and item.label_name:
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


def detect_format(spec: str) -> str:
    path = Path(spec)
    if "{" in spec or path.suffix.lower() == ".tar":
        return "shards"
    if path.is_dir():
        return "shards" if any(path.glob("*.tar")) else "folder"
    suffix = path.suffix.lower()
    if suffix == ".csv":
        try:
            with open(path, newline="", encoding="utf-8") as f:
                header = {cell.strip() for cell in next(csv.reader(f), [])}
        except (OSError, UnicodeDecodeError) as e:
            raise ListingError(f"{path}: cannot read ({e.__class__.__name__}: {e})") from None
        return "kinetics" if header & {"youtube_id", "time_start", "time_end"} else "list"
    if suffix == ".json":
        return "ssv2"
    if suffix == ".txt":
        return "list"
    raise ListingError(f"{spec}: cannot tell the input format from the name; pass --format")


def list_inputs(spec: str, fmt: str = "auto", root: str | None = None, split: str = "train",
                classes_file: str | None = None, labels: str = "auto") -> Listing:
    """List the items of one input (see the module docstring for the formats)."""
    from data_prep import sources_datasets, sources_shards

    if fmt not in FORMATS:
        raise ListingError(f"--format: must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if fmt == "auto":
        fmt = detect_format(spec)
    if fmt != "shards" and not Path(spec).exists():
        raise ListingError(f"{spec}: input not found")
    root_path = Path(root) if root else None
    if fmt in ("kinetics", "ssv2") and root_path is None:
        raise ListingError(f"{spec}: the {fmt} format needs --root (the folder holding the videos)")
    hint = None
    if fmt == "folder":
        items = list_folder(Path(spec), split, labels)
    elif fmt == "list":
        items, hint = list_paths(Path(spec), root_path, split)
    elif fmt == "kinetics":
        items = sources_datasets.list_kinetics(Path(spec), root_path, split)
    elif fmt == "ssv2":
        items = sources_datasets.list_ssv2(Path(spec), root_path, split)
    else:
        items, hint = sources_shards.list_shards(spec, split)
    classes = load_classes(Path(classes_file)) if classes_file else hint
    return finalize(items, classes, fmt)
