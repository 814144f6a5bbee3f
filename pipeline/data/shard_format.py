"""The shard format: the one contract between data_prep (writer) and pipeline.data (reader).

A dataset is a folder (or an object-store prefix, s3://bucket/shards/) of POSIX tar files plus
`manifest.json` beside them:

    out/
      train-000000.tar  train-000001.tar  val-000000.tar
      manifest.json     quarantine.jsonl

Shard names are `{split}-{index:06d}.tar`. Shard j of a split holds the samples of a fixed run of
that split's inputs (data_prep/plan.py), so a shard whose inputs were all quarantined is not written
and the names in a manifest may skip a number; readers take the names from the manifest.

Commit protocol (what makes a shard count). A name ending in `.tar` only ever holds a whole shard,
and a shard counts only once a manifest.json written after it lists it:
  - on a local disk a shard is written as `NAME.tar.tmp-PID`, fsync'ed and renamed to `NAME.tar`
    (pipeline/durable.py);
  - on an object store (which has no rename) it is built in a local staging file and uploaded
    under its final name in one PUT or a multipart upload; S3-compatible stores make the object
    visible only when the PUT or CompleteMultipartUpload succeeds, so a killed upload leaves no
    object (at most invisible uploaded parts, which a bucket lifecycle rule
    AbortIncompleteMultipartUpload cleans);
  - then, on both, the writer's journal records the shard (name, size, sha256, and on a store its
    ETag): `shard-journal.jsonl`, or on a store the chunk objects under `shard-journal/`
    (data_prep/output.py); each node of a partitioned run (--num-nodes N) has its own journal,
    `shard-journal.node-RRRRR-of-NNNNN.jsonl` (or the same name without `.jsonl` as the folder);
  - when every planned shard is recorded (by the run itself, or for N nodes by `--merge` reading
    every node's journal and checking each shard's size), quarantine.jsonl is written whole and
    then manifest.json, last (local: temp file + rename; store: one PUT). manifest.json is the
    commit point of the dataset.
A killed run therefore leaves no manifest, or the old one; readers (pipeline/data/shards.py) take
shards only from a manifest, never from a listing of the store, and check each object's size
against it. Re-running the same `vssl shard` command (node) resumes: shards its journal records are
checked (local: size + sha256; store: size + ETag from one listing) and kept, shards it does not
record are deleted or rewritten under the same name with the same bytes.

Each sample is a group of tar members sharing a key (WebDataset convention: the key is the
member name up to the first dot, so keys never contain dots; see `make_key`):

    <key>.mp4         the video bytes (H.264 in MP4 unless the source was kept as is)
    <key>.json        SampleMeta below (UTF-8 JSON object)
    <key>.boxes.json  optional: {"format": "xyxy", "boxes": [[x0, y0, x1, y1] | null, ...]}
                      one entry per frame, pixel coordinates of the stored video
    <key>.masks.npz   optional: numpy .npz with array "masks", uint8 (T, H, W), 0 = background,
                      k = object k; always loaded with allow_pickle=False

No member is ever pickled, and readers never unpickle (no `.pyd`/`.pickle` decoding).

`vssl shard` fills SampleMeta.extra with: mode ("copy": the source bytes; "remux": the same
packets in a new MP4 whose index matches its real frame count; "transcode": re-encoded H.264),
codec, keyframe_interval (longest run of frames between keyframes), clip_start / clip_end
(seconds of the source the sample covers), original_path (the raw video file, kept through
re-sharding), source_codec, source_size [w, h], source_fps, source_frames, plus what the
listing knew (e.g. youtube_id, time_start, time_end; SSv2 label/template/placeholders; a
re-sharded video2dataset sample's source_json / caption).
num_frames is always the count of frames really in the stored video, never a header's claim.

manifest.json (format_version 1):

    {"format": "vssl-shards", "format_version": 1,
     "shards": [{"name": "train-000000.tar", "split": "train", "samples": 120,
                 "bytes": 52428800, "sha256": "..."}, ...],
     "classes": ["class_a", "class_b", ...],        # label id = index
     "totals": {"samples": N, "bytes": B, "shards": S, "duration": seconds,
                "by_split": {"train": N1, "val": N2}, "keyframe_interval": K},
     "quarantined": Q, "command": ["vssl", "shard", ...], "config": {...}, "created": ISO-8601}

Readers take counts from the manifest and never guess them; `read_manifest` and `Manifest.write`
take a folder or a URL (through pipeline.storage). A manifest is untrusted input: a shard name must
be a plain `.tar` file name (read_manifest refuses folders, `..`, `pipe:` and URLs). `config` is
{"shard": ShardConfig fields, "inputs": the input options}. Beside it, quarantine.jsonl has one JSON object per
rejected input: {"index", "key", "source", "split", "reason"}; shard-journal*.jsonl are the
writers' resume journals (data_prep/writer.py); readers ignore both.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pipeline import storage
from pipeline.durable import atomic_write

FORMAT_NAME = "vssl-shards"
FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
QUARANTINE_NAME = "quarantine.jsonl"
VIDEO_EXT = "mp4"
META_EXT = "json"
BOXES_EXT = "boxes.json"
MASKS_EXT = "masks.npz"
KNOWN_EXTS = (VIDEO_EXT, META_EXT, BOXES_EXT, MASKS_EXT)

_KEY_OK = re.compile(r"^[A-Za-z0-9_\-]{1,200}$")
# a shard named in a manifest is a plain file beside it: no folders, no "pipe:" or URL, no hidden name
_SHARD_FILE_OK = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]{0,200}\.tar$")
_KEY_BAD_CHARS = re.compile(r"[^A-Za-z0-9_\-]+")


class ShardFormatError(ValueError):
    """A manifest or sample does not follow the format; the message names the file/key."""


def shard_name(split: str, index: int) -> str:
    return f"{split}-{index:06d}.tar"


def is_valid_key(key: str) -> bool:
    return bool(_KEY_OK.match(key))


def make_key(text: str) -> str:
    """A deterministic, dot-free WebDataset key for a source identifier (e.g. a relative path).

    Keys already valid stay as they are; otherwise unsafe characters become '_' and a short hash
    of the original text is appended so two different sources never share a key.
    """
    if is_valid_key(text):
        return text
    stem = _KEY_BAD_CHARS.sub("_", text).strip("_")[:160] or "sample"
    digest = hashlib.sha1(text.encode("utf-8", "surrogateescape")).hexdigest()[:10]
    return f"{stem}_{digest}"


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


@dataclass
class SampleMeta:
    """`<key>.json`. label is -1 for unlabelled samples."""

    label: int
    label_name: str
    fps: float
    num_frames: int
    width: int
    height: int
    duration: float
    source: str
    sha256: str
    split: str
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True).encode("utf-8")

    @classmethod
    def from_json(cls, data: bytes | str, key: str = "?") -> "SampleMeta":
        try:
            obj = json.loads(data)
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ShardFormatError(f"{key}.json: not valid JSON ({e.__class__.__name__})") from None
        if not isinstance(obj, dict):
            raise ShardFormatError(f"{key}.json: expected an object")
        types = {"label": int, "label_name": str, "fps": (int, float), "num_frames": int,
                 "width": int, "height": int, "duration": (int, float), "source": str,
                 "sha256": str, "split": str}
        for name, tp in types.items():
            if name not in obj:
                raise ShardFormatError(f"{key}.json: missing field {name!r}")
            if not isinstance(obj[name], tp) or isinstance(obj[name], bool):
                raise ShardFormatError(f"{key}.json: field {name!r} has wrong type {type(obj[name]).__name__}")
        extra = obj.get("extra", {})
        if not isinstance(extra, dict):
            raise ShardFormatError(f"{key}.json: field 'extra' must be an object")
        unknown = set(obj) - set(types) - {"extra"}
        if unknown:
            raise ShardFormatError(f"{key}.json: unknown fields {sorted(unknown)}")
        return cls(**{k: obj[k] for k in types}, extra=extra)


@dataclass
class ShardEntry:
    name: str
    split: str
    samples: int
    bytes: int
    sha256: str


@dataclass
class Manifest:
    shards: list[ShardEntry]
    classes: list[str]
    totals: dict[str, Any]
    quarantined: int = 0
    command: list[str] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    created: str = ""
    format: str = FORMAT_NAME
    format_version: int = FORMAT_VERSION

    def shards_for(self, split: str | None = None) -> list[ShardEntry]:
        return [s for s in self.shards if split is None or s.split == split]

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    def write(self, folder: str | Path) -> str | Path:
        """Atomically write manifest.json into `folder` (temp file + rename; on a store one PUT)."""
        if storage.is_url(folder):
            url = storage.join(folder, MANIFEST_NAME)
            storage.write_bytes(url, self.to_json().encode())
            return url
        return atomic_write(Path(folder) / MANIFEST_NAME, lambda tmp: tmp.write_text(self.to_json()))


def read_manifest(path: str | Path) -> Manifest:
    """Load and check a manifest.json (or the folder holding one); a URL is read through
    pipeline.storage (a StorageError when the store cannot be used)."""
    try:
        path, text = _manifest_text(path)
        obj = json.loads(text)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ShardFormatError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(obj, dict) or obj.get("format") != FORMAT_NAME:
        raise ShardFormatError(f"{path}: not a {FORMAT_NAME} manifest (missing 'format')")
    if obj.get("format_version") != FORMAT_VERSION:
        raise ShardFormatError(
            f"{path}: format_version {obj.get('format_version')!r} unsupported (want {FORMAT_VERSION})")
    try:
        shards = [ShardEntry(**s) for s in obj["shards"]]
        bad = next((s.name for s in shards if not isinstance(s.name, str) or not _SHARD_FILE_OK.match(s.name)), None)
        if bad is not None:
            raise ShardFormatError(f"{path}: shard name {str(bad)[:100]!r} is not a plain .tar file name "
                                   f"(a manifest lists only files beside it)")
        return Manifest(
            shards=shards, classes=list(obj["classes"]), totals=dict(obj["totals"]),
            quarantined=int(obj.get("quarantined", 0)), command=list(obj.get("command", [])),
            config=dict(obj.get("config", {})), created=str(obj.get("created", "")))
    except (KeyError, TypeError) as e:
        raise ShardFormatError(f"{path}: malformed manifest ({e.__class__.__name__}: {e})") from None


def _manifest_text(path: str | Path) -> tuple[str | Path, str]:
    """(where, text) of a manifest.json, given it or its folder."""
    if storage.is_url(path):
        url = str(path) if str(path).endswith(".json") else storage.join(path, MANIFEST_NAME)
        try:
            return url, storage.read_text(url)
        except FileNotFoundError:
            raise ShardFormatError(f"{url}: manifest not found") from None
    path = Path(path)
    if path.is_dir():
        path = path / MANIFEST_NAME
    if not path.is_file():
        raise ShardFormatError(f"{path}: manifest not found")
    return path, path.read_text()
