"""Dataset listings with their own metadata files: Kinetics CSV and Something-Something v2 JSON.

    vssl shard kinetics.csv --root videos/ --out shards/
    vssl shard something-something-v2-train.json --root 20bn/ --classes labels.json --split train --out shards/

Kinetics: columns label, youtube_id, time_start, time_end, split. The video of a row is found as
the first of ROOT/<split>/<label>/<ytid>_<start:06d>_<end:06d>.<ext>, ROOT/<label>/<same>,
ROOT/<same>, where <label> may use "_" for spaces, or else ROOT/<ytid>.<ext> (the full video,
then cut to [time_start, time_end)). A row with no video, or unusable times, is quarantined.

SSv2: a JSON list of {"id", "label", "template", "placeholders"}; the class is the template with
its brackets removed (the names of SSv2's labels.json, which `--classes` accepts); the video is
ROOT/<id>.webm or ROOT/<id>.mp4. Entries without a template are unlabelled.

The listing file and ROOT may be URLs (s3://bucket/kinetics.csv --root s3://bucket/videos/):
ROOT is then listed once (pipeline.storage.find) instead of walked.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from data_prep.sources import (Item, ListingError, base_name, file_item, index_videos, present_files, read_text,
                               url_tree)
from pipeline.data.shard_format import make_key

KINETICS_COLUMNS = ("label", "youtube_id", "time_start", "time_end", "split")


def _kinetics_video(index: dict[str, str], split: str, label: str, stem: str,
                    ytid: str) -> tuple[str | None, bool]:
    """(path, is_full_video) for one row, or (None, False) when no candidate exists."""
    labels = dict.fromkeys([label, label.replace(" ", "_")])
    candidates = [f"{split}/{lb}/{stem}" for lb in labels] + [f"{lb}/{stem}" for lb in labels] + [stem]
    for rel in candidates:
        if rel in index:
            return index[rel], False
    return index.get(ytid), ytid in index


def list_kinetics(csv_path: str | Path, root: str | Path, default_split: str) -> list[Item]:
    try:
        with io.StringIO(read_text(csv_path), newline="") as f:
            reader = csv.DictReader(f)
            header = [name.strip() for name in reader.fieldnames or []]
            missing = [name for name in KINETICS_COLUMNS if name not in header]
            if missing:
                raise ListingError(f"{csv_path}: missing column {missing[0]!r} "
                                   f"(columns: {', '.join(header) or 'none'})")
            rows = [{k.strip(): (v or "").strip() for k, v in row.items() if k} for row in reader]
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise ListingError(f"{csv_path}: cannot read CSV ({e.__class__.__name__}: {e})") from None
    tree = url_tree(root)
    index, present = index_videos(root, tree), present_files(root, tree)
    items = []
    for line_no, row in enumerate(rows, start=2):
        ytid, label, split = row["youtube_id"], row["label"], row["split"] or default_split
        source = f"{base_name(csv_path)}:{line_no}"
        common = {"source": source, "split": split, "label_name": label}
        try:
            start, end = float(row["time_start"]), float(row["time_end"])
        except ValueError:
            items.append(Item(key=make_key(f"{ytid}_line{line_no}"), video=None, **common,
                              reject=f"time_start/time_end {row['time_start']!r}/{row['time_end']!r} are not numbers"))
            continue
        stem = f"{ytid}_{int(start):06d}_{int(end):06d}"
        extra = {"youtube_id": ytid, "time_start": start, "time_end": end}
        path, full = _kinetics_video(index, split, label, stem, ytid)
        if path is None or end <= start:
            why = f"no video for {stem} under {root}" if path is None else f"time_end {end} <= time_start {start}"
            items.append(Item(key=make_key(stem), video=None, extra=extra, reject=why, **common))
            continue
        items.append(file_item(path, stem, clip=(start, end) if full else None, extra=extra, present=present,
                               **common))
    return items


def list_ssv2(json_path: str | Path, root: str | Path, split: str) -> list[Item]:
    try:
        entries = json.loads(read_text(json_path))
    except (OSError, UnicodeDecodeError) as e:
        raise ListingError(f"{json_path}: cannot read ({e.__class__.__name__})") from None
    except json.JSONDecodeError as e:
        raise ListingError(f"{json_path}: not valid JSON ({e.msg} at line {e.lineno})") from None
    if not isinstance(entries, list):
        raise ListingError(f"{json_path}: expected a JSON list of {{\"id\", \"label\", \"template\"}} objects")
    tree = url_tree(root)
    index, present = index_videos(root, tree), present_files(root, tree)
    items = []
    for n, entry in enumerate(entries):
        if not isinstance(entry, dict) or "id" not in entry:
            raise ListingError(f"{json_path}: entry {n} is not an object with an 'id'")
        vid = str(entry["id"])
        template = entry.get("template")
        common = {"source": f"{base_name(json_path)}[{n}]", "split": split,
                  "label_name": template.replace("[", "").replace("]", "") if isinstance(template, str) else "",
                  "extra": {k: entry[k] for k in ("label", "template", "placeholders") if k in entry}}
        if vid in index:
            items.append(file_item(index[vid], vid, present=present, **common))
        else:
            items.append(Item(key=make_key(vid), video=None, reject=f"no video {vid}.webm/.mp4 under {root}", **common))
    return items
