"""Data prep under fire: one `vssl shard` run over a corpus of broken inputs, then `vssl inspect`
and the loader over what it wrote.

    report = shard_corpus(tmp_path)      # tests/faults/test_faults_prep.py, benchmarks/faults.py

Every good input must end in a shard exactly as it was (mode "copy"); every input whose container
lies (frame count, frame size, not MP4) must end in a shard remuxed so that its header tells the
truth; every bad one must be in quarantine.jsonl with the expected reason; nothing else. The run
must finish within a bound, `vssl inspect --decode` must find nothing wrong, decord (which trusts
headers) must read every stored sample, and no shell may ever run a file name.
"""

from __future__ import annotations

import io
import json
import os
import struct
import sys
import time
import zipfile
from pathlib import Path

import av
import numpy as np

from data_prep.process import FAULT_ENV
from pipeline.cli import main
from pipeline.config import DataConfig
from pipeline.data.loader import build_loader
from pipeline.data.shard_format import make_key, read_manifest
from pipeline.testing.faults.tally import Report
from pipeline.testing.sharding import decoded, encoded, encoded_bytes, faststart_mp4, metas, quarantine, read_samples
from pipeline.testing.videos import write_video
from pipeline.testing.tiny_train import ROOT, env

LIMIT_S = 150  # the whole shard run; each input is also bounded by --timeout-s
SHELL_NAMES = ("$(touch pwned).mp4", "a;touch pwned.mp4", "`touch pwned`.mp4")



def _patched(data: bytes, box: bytes, offset: int, fmt: str, *values: int) -> bytes:
    """`data` with struct `fmt` written `offset` bytes after the type tag of the first `box` inside
    moov (the header's own boxes; ftyp's brand list also says "avc1")."""
    at = data.find(box, data.find(b"moov"))
    out = bytearray(data)
    struct.pack_into(fmt, out, at + offset, *values)
    return bytes(out)


def _packet_ends(data: bytes) -> list[tuple[int, int]]:
    with av.open(io.BytesIO(data)) as c:
        return [(p.pos, p.size) for p in c.demux(video=0) if p.size]


def build_corpus(folder: Path) -> dict[str, tuple[str, str]]:
    """Write the inputs; returns file name -> (expected outcome, detail): ("copy", ""),
    ("remux", frames it really holds) or ("quarantine", start of the reason)."""
    folder.mkdir(parents=True, exist_ok=True)
    good = write_video(folder / "good.mp4", num_frames=16, height=48, width=64).read_bytes()
    expect: dict[str, tuple[str, str]] = {"good.mp4": ("copy", "")}
    for n, name in enumerate(SHELL_NAMES):
        write_video(folder / name, num_frames=16, height=48, width=64, seed=10 + n)
        expect[name] = ("copy", "")
    with open(os.path.join(os.fsencode(folder), b"caf\xe9-latin1.mp4"), "wb") as f:
        f.write(good)
    expect[os.fsdecode(b"caf\xe9-latin1.mp4")] = ("copy", "")
    (folder / "matroska.mp4").write_bytes(encoded_bytes("libx264", "matroska", seed=5))  # a real video, in another container
    expect["matroska.mp4"] = ("remux", "12")
    (folder / "claims_1000_frames.mp4").write_bytes(_patched(good, b"stts", 12, ">I", 1000))  # sample count
    expect["claims_1000_frames.mp4"] = ("remux", "16")
    # avc1 (sample description) and tkhd (track header: 16.16 fixed point) claim 65000x65000
    absurd = _patched(_patched(good, b"avc1", 4 + 24, ">HH", 65000, 65000), b"tkhd", 4 + 4 + 20 + 8 + 8 + 36,
                      ">II", 65000 << 16, 65000 << 16)
    (folder / "absurd_size.mp4").write_bytes(absurd)
    expect["absurd_size.mp4"] = ("remux", "16")
    faststart = faststart_mp4(folder.parent / "faststart_source.mp4")
    pos, size = _packet_ends(faststart)[24]
    (folder / "claims_40_has_25.mp4").write_bytes(faststart[:pos + size])
    expect["claims_40_has_25.mp4"] = ("remux", "25")

    bad = {"empty.mp4": (b"", "video is empty (0 bytes)"),
           "cut_at_8_bytes.mp4": (good[:8], "not a readable video"),
           "cut_in_half.mp4": (good[:len(good) // 2], "not a readable video"),
           "cut_in_index.mp4": (good[:good.find(b"moov") + 64], "no video stream"),
           "cut_mid_frame.mp4": (faststart[:pos + size // 2], "decoding failed near frame"),
           "zip_archive.mp4": (_zip_bytes(), "not a readable video"),
           "jpeg_claims_16000px.avi": (_huge_jpeg_frames(encoded_bytes("mjpeg", "avi", frames=8, pix_fmt="yuvj420p")),
                                       "decoding failed near frame"),
           "vanishes.mp4": (good, "video not found")}
    for name, (data, reason) in bad.items():
        (folder / name).write_bytes(data)
        expect[name] = ("quarantine", reason)
    encoded(folder / "audio_only.mp4", "aac", "mp4", audio_only=True)
    expect["audio_only.mp4"] = ("quarantine", "no video stream (only audio)")
    (folder / "loop_a.mp4").symlink_to("loop_b.mp4")
    (folder / "loop_b.mp4").symlink_to("loop_a.mp4")
    for name in ("loop_a.mp4", "loop_b.mp4"):
        expect[name] = ("quarantine", "video cannot be read (OSError: [Errno 40] Too many levels of symbolic links")
    (folder / "loop_dir").symlink_to(".")  # a folder loop: the walk must not follow it
    write_video(folder / "boxes_mismatch.mp4", num_frames=16, height=48, width=64, seed=3)
    (folder / "boxes_mismatch.boxes.json").write_text('{"format": "xyxy", "boxes": [[0, 0, 4, 4]]}')
    expect["boxes_mismatch.mp4"] = ("quarantine", "boxes.json: has 1 frames, the video has 16")
    return expect


def _zip_bytes() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("clip.mp4", b"\x00" * 4096)
    return buf.getvalue()


def _huge_jpeg_frames(data: bytes) -> bytes:
    """Every JPEG frame header (SOF0) claims 16000x16000: a decoder that believed it would need
    ~770 MB per RGB frame."""
    out, at = bytearray(data), data.find(b"\xff\xc0")
    while at >= 0:
        struct.pack_into(">HH", out, at + 5, 16000, 16000)
        at = data.find(b"\xff\xc0", at + 2)
    return bytes(out)


def _key(name: str) -> str:
    return make_key(os.path.splitext(name)[0])


def shard_corpus(tmp: Path) -> Report:
    report = Report("data prep")
    expect = build_corpus(tmp / "in")
    report.inputs_tried = len(expect)
    out = tmp / "out"
    cmd = [sys.executable, "-m", "pipeline.cli", "shard", str(tmp / "in"), "--out", str(out), "--workers", "2",
           "--timeout-s", "30", "--no-progress"]
    started = time.monotonic()
    done = report.bounded("the run", cmd, LIMIT_S, cwd=tmp, env=env(**{FAULT_ENV: "vanish=vanishes.mp4"}))
    report.check("the run", done.returncode == 0, f"exit {done.returncode}: {done.stderr[-1500:]}")
    report.check("the run", time.monotonic() - started < LIMIT_S, "took longer than the bound")
    if not (out / "manifest.json").is_file():
        report.check(None, False, "no manifest.json written")
        report.samples_lost = sum(1 for outcome, _ in expect.values() if outcome != "quarantine")
        return report
    stored, held = metas(out), {q["key"]: q["reason"] for q in quarantine(out)}
    videos = {key: members["mp4"] for key, members in read_samples(out).items()}
    for name, (outcome, detail) in expect.items():
        key, fault = _key(name), f"{name}: {outcome}"
        if outcome == "quarantine":
            report.check(fault, held.get(key, "").startswith(detail), f"quarantine reason {held.get(key)!r}")
            report.check(fault, key not in stored, "also written to a shard")
            continue
        meta = stored.get(key)
        if not report.check(fault, meta is not None, f"not in any shard (quarantined: {held.get(key)!r})"):
            report.samples_lost += 1
            continue
        report.check(fault, meta["extra"]["mode"] == outcome, f"stored as {meta['extra']['mode']}")
        if detail:
            report.check(fault, meta["num_frames"] == int(detail), f"num_frames {meta['num_frames']}, holds {detail}")
            report.check(fault, np.array_equal(decoded(videos[key]), decoded((tmp / "in" / name).read_bytes())),
                         "the remuxed video shows other pixels than the source")
    manifest = read_manifest(out)
    report.check(None, manifest.totals["samples"] + manifest.quarantined == len(expect),
                 f"{len(expect)} inputs but {manifest.totals['samples']} samples + {manifest.quarantined} quarantined")
    report.check(None, set(stored) | set(held) == {_key(n) for n in expect}, "keys other than the inputs'")
    report.check("shell metacharacters in names", not list(tmp.rglob("pwned")) and not (ROOT / "pwned").exists(),
                 "a file name was run by a shell")
    inspected = main(["inspect", str(out), "--decode"])
    report.check(None, inspected == 0, "vssl inspect --decode found problems")
    _read_back_with_decord(out, len(stored), report)
    return report


def _read_back_with_decord(out: Path, samples: int, report: Report) -> None:
    """decord trusts container headers; every stored sample (remuxed ones included) must decode."""
    cfg = DataConfig(shards=str(out), num_frames=8, frame_stride=2, crop_size=32, crop="center", batch_size=samples,
                     num_workers=0, decode_timeout_s=20.0, mask_ratio=0.5, shuffle=False, drop_last=False)
    loader = build_loader(cfg, patch_size=(2, 16, 16), train=False)
    keys = [k for batch in loader for k in batch["key"]]
    stats = loader.stats()
    report.check(None, stats["skipped_total"] == 0, f"the loader skipped stored samples: {stats['skipped']}")
    report.samples_lost += samples - len(set(keys))
    report.check(None, json.dumps(sorted(set(keys))) == json.dumps(sorted(metas(out))), "loader keys differ")
