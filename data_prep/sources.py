"""What an input item is (`Item`, `Blob`), and the two plain sources: folder trees and path lists.

    from data_prep.sources import list_folder, list_paths
    items = list_folder(Path("videos/"), split="train", labels="auto")
    items, classes = list_paths(Path("paths.csv"), root=None, split="train")

folder: a directory tree (or every object under an s3:// / gs:// prefix), walked in sorted order;
with labels="auto" it is labelled by folder when every video sits at ROOT/<class>/<video>, else
unlabelled (label -1); "dirs" / "none" force either. A directory named like a video (x.mp4/) is listed, to be quarantined as a directory.
list: .txt with one path per line (# comments), or .csv with path[,label], in row order;
relative paths are taken from `root`, else from the list's folder; integer labels are label ids.
Any path here -- the input, --root, a listed path -- may be a URL (s3://, gs://, https://; read
through pipeline.storage): a listed object that does not exist is quarantined ("video not found")
like a missing file.

Annotation sidecars beside a video file, `<stem>.boxes.json` and `<stem>.masks.npz`, are
attached to its item (for URLs: found by listing the video's folder once; http(s) has none).
data_prep/listing.py picks the source for an input and numbers the items.
"""

from __future__ import annotations

import csv
import io
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline import storage
from pipeline.data.shard_format import make_key

VIDEO_SUFFIXES = (".mp4", ".webm", ".mkv", ".avi", ".mov", ".m4v", ".mpg", ".mpeg", ".flv", ".wmv", ".3gp")


class ListingError(ValueError):
    """An input listing cannot be used at all; the message names the file and the problem."""


@dataclass(frozen=True)
class Blob:
    """Bytes in a file or object (path may be a URL): all of it (size -1) or a byte range (a tar member)."""

    path: str
    offset: int = 0
    size: int = -1

    def read(self) -> bytes:
        """The bytes; raises OSError (missing, directory, unreadable), EOFError (short range) or,
        for a URL, storage.StorageError (the store unreachable or refusing)."""
        if storage.is_url(self.path):
            data = storage.read_bytes(self.path, *(() if self.size < 0 else (self.offset, self.offset + self.size)))
        else:
            data = self._read_file()
        if self.size >= 0 and len(data) != self.size:
            raise EOFError(f"{self.path}: member at byte {self.offset} truncated "
                           f"({len(data)} of {self.size} bytes)")
        return data

    def _read_file(self) -> bytes:
        with open(self.path, "rb") as f:
            if self.size < 0:
                return f.read()
            f.seek(self.offset)
            return f.read(self.size)


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


def read_text(location: str | Path) -> str:
    """A listing file's text (a path or URL); OSError / UnicodeDecodeError for the caller to word."""
    if storage.is_url(location):
        return storage.read_text(str(location))
    return Path(location).read_text(encoding="utf-8")


def base_name(location: str | Path) -> str:
    return str(location).rstrip("/").rsplit("/", 1)[-1]


def sidecars(video: str | Path, present: set[str] | None = None) -> dict[str, Blob | None]:
    """The `boxes` / `masks` annotation files beside a video (a path or URL), if present.
    present: every location known to exist, when a listing has them all (else URLs list their folder)."""
    stem, found = os.path.splitext(str(video))[0], {}
    for name, suffix in (("boxes", ".boxes.json"), ("masks", ".masks.npz")):
        where = stem + suffix
        if present is not None:
            there = where in present
        elif storage.is_url(where):
            there = storage.can_list(where) and base_name(where) in storage.listdir_cached(storage.parent(where))
        else:
            there = os.path.isfile(where)
        found[name] = Blob(where) if there else None
    return found


def file_item(path: str | Path, key_text: str, source: str, split: str, present: set[str] | None = None,
              **fields: Any) -> Item:
    """An Item for a video file or object, with its annotation sidecars attached.

    key_text names the item without a file suffix (a relative path, a YouTube clip id, ...).
    """
    return Item(key=make_key(key_text), source=source, split=split,
                video=Blob(str(path)), **sidecars(path, present), **fields)


def url_tree(root: str | Path) -> list[str] | None:
    """Every object under a URL root, relative and sorted (one listing, for the videos and their
    sidecars); None for a local folder."""
    return list(storage.find(str(root))) if storage.is_url(root) else None


def present_files(root: str | Path, tree: list[str] | None) -> set[str] | None:
    return None if tree is None else {storage.join(root, rel) for rel in tree}


def walk_videos(root: str | Path, tree: list[str] | None = None) -> list[str]:
    """Relative POSIX paths of every video-named entry under root (a folder, or a URL prefix whose
    `url_tree` is `tree`), sorted.

    A directory named like a video (x.mp4/) is listed too, and not descended into, so it is
    quarantined as "is a directory" instead of silently vanishing.
    """
    if storage.is_url(root):
        return [rel for rel in (url_tree(root) if tree is None else tree) if is_video_name(rel)]
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = os.path.relpath(dirpath, root)
        for name in [d for d in dirnames if is_video_name(d)] + [f for f in filenames if is_video_name(f)]:
            found.append(Path(rel_dir, name).as_posix().removeprefix("./"))
        dirnames[:] = [d for d in dirnames if not is_video_name(d)]
    return sorted(found)


def index_videos(root: str | Path, tree: list[str] | None = None) -> dict[str, str]:
    """Relative path without suffix -> video path or URL; mp4 wins over other suffixes of the same stem."""
    if not (tree if storage.is_url(root) else os.path.isdir(root)):
        raise ListingError(f"{root}: --root is not a folder" + (" (no object under it)" if tree is not None else ""))
    rank = {s: i for i, s in enumerate(VIDEO_SUFFIXES)}
    index: dict[str, str] = {}
    for rel in walk_videos(root, tree):
        stem, suffix = os.path.splitext(rel)
        old = index.get(stem)
        if old is None or rank.get(suffix.lower(), 99) < rank.get(os.path.splitext(old)[1].lower(), 99):
            index[stem] = storage.join(root, rel)
    return index


def list_folder(root: str | Path, split: str, labels: str = "auto") -> list[Item]:
    tree = url_tree(root)
    rels = walk_videos(root, tree)
    if not rels:
        raise ListingError(f"{root}: no video files found (looked for {', '.join(VIDEO_SUFFIXES)})")
    labelled = labels == "dirs" or (labels == "auto" and all(rel.count("/") == 1 for rel in rels))
    if labels == "dirs" and not all(rel.count("/") == 1 for rel in rels):
        bad = next(rel for rel in rels if rel.count("/") != 1)
        raise ListingError(f"{root}: labels from folders need ROOT/<class>/<video>, found {bad}")
    present = present_files(root, tree)
    return [file_item(storage.join(root, rel), strip_suffix(rel), storage.join(root, rel), split, present,
                      label_name=rel.split("/")[0] if labelled else "") for rel in rels]


def _read_path_rows(list_path: str | Path) -> list[tuple[int, str, str]]:
    """(line number, path, label) rows of a .txt or .csv path list."""
    rows = []
    with io.StringIO(read_text(list_path), newline="") as f:
        if os.path.splitext(str(list_path))[1].lower() == ".csv":
            for line_no, row in enumerate(csv.reader(f), start=1):
                if not row or not row[0].strip() or (line_no == 1 and row[0].strip().lower() == "path"):
                    continue
                rows.append((line_no, row[0].strip(), row[1].strip() if len(row) > 1 else ""))
        else:
            for line_no, line in enumerate(f, start=1):
                if line.strip() and not line.lstrip().startswith("#"):
                    rows.append((line_no, line.strip(), ""))
    return rows


def list_paths(list_path: str | Path, root: str | Path | None, split: str) -> tuple[list[Item], list[str] | None]:
    """A path list, and its class list when its labels are integers (label ids; else class names)."""
    try:
        rows = _read_path_rows(list_path)
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise ListingError(f"{list_path}: cannot read path list ({e.__class__.__name__}: {e})") from None
    if not rows:
        raise ListingError(f"{list_path}: no paths listed")
    base = root or storage.parent(list_path)
    numeric = all(label.isdigit() for _, _, label in rows if label) and any(label for _, _, label in rows)
    classes = [str(i) for i in range(1 + max(int(lb) for _, _, lb in rows if lb))] if numeric else None
    items = []
    for line_no, text, label in rows:
        path = text if storage.is_url(text) or os.path.isabs(text) else storage.join(base, text)
        by = {"label": int(label)} if numeric and label else {"label_name": label}
        items.append(file_item(path, strip_suffix(text), f"{base_name(list_path)}:{line_no}", split, **by))
    return items, classes
