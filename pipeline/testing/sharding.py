"""Helpers for the tests of `vssl shard` / `vssl inspect` (tests/data_prep/test_shard_*.py): tiny inputs, reading shards back."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import av
import numpy as np

from data_prep.shard_run import Summary, shard_dataset
from data_prep.listing import list_inputs
from pipeline.config import ShardConfig
from pipeline.data.shard_format import read_manifest
from pipeline.testing.videos import moving_frames, write_video


def video(path: Path, frames: int = 16, height: int = 48, width: int = 64, fps: float = 25.0,
          seed: int = 0, gop: int = 8) -> Path:
    return write_video(path, num_frames=frames, height=height, width=width, fps=fps, seed=seed, gop=gop)


def encoded_bytes(codec: str, container: str, frames: int = 12, size: int = 32, pix_fmt: str = "yuv420p",
                  seed: int = 0) -> bytes:
    """A small moving-square video in any PyAV codec/container, as bytes."""
    buf = io.BytesIO()
    with av.open(buf, "w", format=container) as out:
        stream = out.add_stream(codec, rate=25)
        stream.width = stream.height = size
        stream.pix_fmt = pix_fmt
        for rgb in moving_frames(frames, size, size, seed=seed):
            for packet in stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return buf.getvalue()


def encoded(path: Path, codec: str, container: str, frames: int = 12, size: int = 32, audio_only: bool = False) -> Path:
    """A small file in another codec/container (VP8/VP9 webm), or an audio-only file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if not audio_only:
        path.write_bytes(encoded_bytes(codec, container, frames, size))
        return path
    with av.open(str(path), "w", format=container) as out:
        stream = out.add_stream(codec, rate=16000)
        for i in range(12):
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            frame.sample_rate, frame.pts = 16000, i * 1024
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def run_shard(spec: str | Path, out: Path, root: Path | None = None, fmt: str = "auto", split: str = "train",
              classes: Path | None = None, **config) -> Summary:
    """list_inputs + shard_dataset with a test-sized ShardConfig (workers=1 unless given)."""
    cfg = ShardConfig(**{"workers": 1, **config})
    listing = list_inputs(str(spec), fmt=fmt, root=str(root) if root else None, split=split,
                          classes_file=str(classes) if classes else None)
    return shard_dataset(listing, out, cfg, command=["test"], inputs={"input": str(spec)}, progress=False)


def read_samples(out: Path) -> dict[str, dict[str, bytes]]:
    """key -> {extension: bytes} over every .tar in `out` (sorted by name)."""
    samples: dict[str, dict[str, bytes]] = {}
    for shard in sorted(out.glob("*.tar")):
        with tarfile.open(shard) as tf:
            for member in tf:
                key, ext = member.name.split(".", 1)
                samples.setdefault(key, {})[ext] = tf.extractfile(member).read()
    return samples


def metas(out: Path) -> dict[str, dict]:
    return {key: json.loads(members["json"]) for key, members in read_samples(out).items()}


def quarantine(out: Path) -> list[dict]:
    path = out / "quarantine.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def decoded(data: bytes) -> np.ndarray:
    with av.open(io.BytesIO(data)) as c:
        return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])


def shard_bytes(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.glob("*.tar"))}


def faststart_mp4(path: Path, frames: int = 40) -> bytes:
    """An MP4 with its index first (FFmpeg moves the index by re-reading the file at `path`):
    a cut-off copy still opens, and over-reports its frames."""
    with av.open(str(path), "w", format="mp4", options={"movflags": "faststart"}) as out:
        stream = out.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
        stream.options = {"x264-params": "keyint=8:min-keyint=8:scenecut=0"}
        for rgb in moving_frames(frames, 32, 32):
            for packet in stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path.read_bytes()


def kinetics_inputs(d: Path) -> Path:
    """d/k.csv + d/videos: 12 rows over two interleaved splits (val: rows 2, 5, 8, 11), one missing
    video (row 5) and one broken (row 7, junk bytes); `kinetics_args` cuts each into 3 segments."""
    rows = ["label,youtube_id,time_start,time_end,split"]
    for n in range(12):
        split, label = ("val" if n % 3 == 2 else "train"), f"class{n % 2}"
        path = d / "videos" / split / label / f"y{n:02d}_000000_000001.mp4"
        if n == 7:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("junk")
        elif n != 5:
            video(path, seed=n)
        rows.append(f"{label},y{n:02d},0,1,{split}")
    (d / "k.csv").write_text("\n".join(rows) + "\n")
    return d


def broken_in_quarantine(out: Path) -> bool:
    """quarantine.jsonl of a kinetics_inputs dataset holds exactly its missing and its broken video."""
    expected = {"y05_000000_000001": "no video for", "y07_000000_000001": "not a readable video"}
    entries = quarantine(out)
    return sorted(e["key"] for e in entries) == sorted(expected) and all(
        e["reason"].startswith(expected[e["key"]]) for e in entries)


def kinetics_args(d: Path, out: Path | str, workers: int, *extra: str) -> list[str]:
    """`vssl shard` arguments for kinetics_inputs(d): 2 inputs (6 samples) per shard, 6 shards."""
    return ["shard", str(d / "k.csv"), "--root", str(d / "videos"), "--out", str(out), "--segment-s", "0.2",
            "--inputs-per-shard", "2", "--workers", str(workers), "--no-progress", *extra]


def same_dataset(a: Path, b: Path) -> None:
    """Two local datasets hold the same shards (bytes), quarantine.jsonl and manifest contents."""
    assert shard_bytes(a) == shard_bytes(b)
    assert (a / "quarantine.jsonl").read_text() == (b / "quarantine.jsonl").read_text()
    ma, mb = read_manifest(a), read_manifest(b)
    assert (ma.shards, ma.totals, ma.classes, ma.quarantined) == (mb.shards, mb.totals, mb.classes, mb.quarantined)


def same_on_store(local: Path, server, url: str) -> None:
    """The dataset at `url` (on pipeline/testing/s3server.py's server) is byte for byte the local one."""
    objects = server.objects(url)
    assert {n: b for n, b in objects.items() if n.endswith(".tar")} == shard_bytes(local)
    assert objects["quarantine.jsonl"] == (local / "quarantine.jsonl").read_bytes()
    ma, mb = read_manifest(local), read_manifest(url)
    assert (ma.shards, ma.totals, ma.classes, ma.quarantined) == (mb.shards, mb.totals, mb.classes, mb.quarantined)
