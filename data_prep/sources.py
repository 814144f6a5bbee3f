"""What an input item is (`Item`, `Blob`), and the two plain sources: folder trees and path lists.

    from data_prep.sources import list_folder, list_paths
    items = list_folder(Path("videos/"), split="train", labels="auto")
    items, classes = list_paths(Path("paths.csv"), root=None, split="train")

folder: a directory tree, walked in sorted order; with labels="auto" it is labelled by folder
when every video sits at ROOT/<class>/<video>, else unlabelled (label -1); "dirs" / "none" force
either. A directory named like a video (x.mp4/) is listed, to be quarantined as a directory.
list: .txt with one path per line (# comments), or .csv with path[,label], in row order;
relative paths are taken from `root`, else from the list's folder; integer labels are label ids.

Annotation sidecars beside a video file, `<stem>.boxes.json` and `<stem>.masks.npz`, are
attached to its item. data_prep/listing.py picks the source for an input and numbers the items.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.data.shard_format import make_key

VIDEO_SUFFIXES = (".mp4", ".webm", ".mkv", ".avi", ".mov", ".m4v", ".mpg", ".mpeg", ".flv", ".wmv", ".3gp")


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
    """A path list, and its class list when its labels are integers (label ids; else class names)."""
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
        by = {"label": int(label)} if numeric and label else {"label_name": label}
        items.append(file_item(path, strip_suffix(text), f"{list_path.name}:{line_no}", split, **by))
    return items, classes
