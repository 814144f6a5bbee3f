"""Small real shards for the loader tests: tiny H.264 videos in tars that follow shard_format."""

from __future__ import annotations

import io
import json
import zlib
from pathlib import Path

import numpy as np
import webdataset as wds

from data_prep.encode import encode_mp4
from pipeline.data.shard_format import Manifest, SampleMeta, ShardEntry, sha256_file, shard_name
from pipeline.testing.videos import moving_frames


def sample_key(split: str, shard: int, index: int, prefix: str = "") -> str:
    return f"{prefix}{split}_{shard:02d}_{index:03d}"


def sample_members(key: str, label: int, frames: np.ndarray, split: str = "train",
                   annotate: bool = False) -> dict:
    t, h, w = frames.shape[:3]
    data = encode_mp4(frames, fps=25.0, gop=4)
    meta = SampleMeta(label=label, label_name=f"c{label}", fps=25.0, num_frames=t, width=w, height=h,
                      duration=t / 25.0, source=key, sha256="", split=split)
    members = {"__key__": key, "mp4": data, "json": meta.to_json()}
    if annotate:
        boxes, masks = square_annotations(frames)
        members["boxes.json"] = json.dumps({"format": "xyxy", "boxes": boxes}).encode()
        buf = io.BytesIO()
        np.savez(buf, masks=masks)
        members["masks.npz"] = buf.getvalue()
    return members


def square_frames(num_frames: int, size: int, seed: int) -> np.ndarray:
    """Dark frames with one bright square drifting right: easy to locate after transforms."""
    rng = np.random.default_rng(seed)
    frames = np.full((num_frames, size, size, 3), 16, dtype=np.uint8)
    side, y = size // 4, int(rng.integers(0, size - size // 4))
    for t in range(num_frames):
        x = (t * 2) % (size - side)
        frames[t, y:y + side, x:x + side] = 240
    return frames


def square_annotations(frames: np.ndarray) -> tuple[list, np.ndarray]:
    """Boxes (XYXY, exclusive end) and masks of the bright region of each frame."""
    bright = frames[..., 0] > 128
    boxes = []
    for frame in bright:
        ys, xs = np.nonzero(frame)
        boxes.append([int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1] if len(xs) else None)
    return boxes, bright.astype(np.uint8)


def write_shards(folder: Path, sizes: list[int], split: str = "train", num_frames: int = 8, size: int = 32,
                 annotate: bool = False, manifest: bool = True, overrides: dict | None = None,
                 key_prefix: str = "") -> list[str]:
    """Write shards of the given sample counts (+ manifest.json); returns all sample keys.

    `overrides` maps a key to replacement members (e.g. {"k": {"json": b"{"}}; None drops a member)
    to plant bad samples."""
    folder.mkdir(parents=True, exist_ok=True)
    keys, entries = [], []
    for s, count in enumerate(sizes):
        path = folder / shard_name(split, s)
        with wds.TarWriter(str(path)) as sink:
            for i in range(count):
                key = sample_key(split, s, i, key_prefix)
                seed = zlib.crc32(key.encode())
                frames = square_frames(num_frames, size, seed) if annotate else moving_frames(num_frames, size, size, seed)
                members = sample_members(key, (s * 31 + i) % 5, frames, split, annotate)
                for ext, value in (overrides or {}).get(key, {}).items():
                    if value is None:
                        members.pop(ext)
                    else:
                        members[ext] = value
                sink.write(members)
                keys.append(key)
        entries.append(ShardEntry(path.name, split, count, path.stat().st_size, sha256_file(path)))
    if manifest:
        Manifest(shards=entries, classes=[f"c{i}" for i in range(5)],
                 totals={"samples": sum(sizes), "shards": len(sizes)}).write(folder)
    return keys
