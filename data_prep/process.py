"""One listed item -> its shard samples (or the reason it is quarantined); runs in a worker process.

    from data_prep.process import process_item
    outcome = process_item(item, ShardConfig(transcode=True, short_side=128), faults={})
    outcome.samples[0].members   # [("mp4", b"..."), ("json", b"..."), ("boxes.json", b"...")]

Steps: read the bytes, probe them (data_prep.probe), check the annotation sidecars against the
real frame count, then either
  * keep the video (no transcode, cut or segments): decode-check first/middle/last frames and
    store the bytes as they are, or remuxed into MP4 when the container is not MP4 or its header
    misstates the frame count or size (or re-encoded when MP4 cannot hold the codec); or
  * re-encode (transcode, a clip cut [start, end), or fixed-length segments): one decode pass
    feeds one encoder per output clip; cuts are frame-accurate, so they always re-encode.
Each output clip is described by the list of source frames it shows (`frame_plan`), and the
annotations follow that same list. The stored bytes are probed again for the SampleMeta, so the
metadata describes exactly what is in the shard.

An input read from a URL (pipeline.storage) is held in memory like a local one; a missing object
is quarantined ("video not found"), but a store that stays unreachable or refuses the credentials
is no fault of the input: the Outcome is `fatal` and the run stops there (re-running resumes).

Test hooks (the env var VSSL_SHARD_TEST_FAULT, read by the parent and handed to the workers as
`faults`): "hang=TEXT" sleeps forever, "crash=TEXT" SIGKILLs the worker and "vanish=TEXT" deletes the
video file or object (listed, then gone before it is read) on items whose source contains TEXT; several are
joined with ";".
"""

from __future__ import annotations

import bisect
import math
import os
import signal
import time
from dataclasses import dataclass

import av
from av.video.reformatter import VideoReformatter

from data_prep.annotations import AnnotationError, Annotations, load_annotations
from data_prep.encode import encode_mp4
from data_prep.probe import VideoError, VideoInfo, check_decodes, one_line, open_video, probe, remux_mp4
from data_prep.sources import Blob, Item
from pipeline import storage
from pipeline.config import ShardConfig
from pipeline.data.shard_format import SampleMeta, sha256_bytes

FAULT_ENV = "VSSL_SHARD_TEST_FAULT"
_EPS = 1e-6


def parse_faults(text: str) -> dict[str, str]:
    """The test hooks of VSSL_SHARD_TEST_FAULT: "hang=TEXT;vanish=TEXT" -> {"hang": TEXT, "vanish": TEXT}."""
    return {name.strip(): value for name, value in (part.split("=", 1) for part in text.split(";") if "=" in part)}


@dataclass
class Sample:
    key: str
    members: list[tuple[str, bytes]]  # (extension, bytes) in tar order
    duration: float
    keyframe_interval: int  # of the stored video: the longest run of frames from one keyframe to the next


@dataclass
class Outcome:
    samples: list[Sample]
    reason: str = ""  # non-empty: the item is quarantined for this reason
    fatal: bool = False  # the reason is the store's, not the item's: stop the run, do not quarantine


def read_blob(blob: Blob, what: str) -> bytes:
    """The bytes of an input file, or VideoError with a one-line reason."""
    try:
        data = blob.read()
    except FileNotFoundError:
        dangling = not storage.is_url(blob.path) and os.path.islink(blob.path)
        raise VideoError(f"{what} not found" + (" (dangling symlink)" if dangling else "")) from None
    except IsADirectoryError:
        raise VideoError(f"{what} is a directory") from None
    except PermissionError:
        raise VideoError(f"{what} is not readable (permission denied)") from None
    except (OSError, EOFError) as e:
        raise VideoError(f"{what} cannot be read ({e.__class__.__name__}: {e})") from None
    if not data:
        raise VideoError(f"{what} is empty (0 bytes)")
    return data


def clip_windows(item: Item, info: VideoInfo, segment_s: float) -> list[tuple[float, float]] | None:
    """[start, end) seconds of each output clip, or None to keep the whole video as it is."""
    if item.clip is None and not segment_s:
        return None
    start, end = item.clip or (0.0, info.duration)
    if item.clip and end > info.duration + 1.0 / info.fps:
        raise VideoError(f"video is {info.duration:.2f}s, shorter than the requested clip [{start:g}, {end:g})")
    if not segment_s:
        return [(start, end)]
    count = int((end - start) / segment_s + _EPS)
    if count == 0:
        raise VideoError(f"clip of {end - start:.2f}s is shorter than one {segment_s:g}s segment")
    return [(start + k * segment_s, start + (k + 1) * segment_s) for k in range(count)]


def frame_plan(times: list[float], duration: float, start: float, end: float, fps: float) -> list[int]:
    """Source frame shown at each output frame of [start, end): all frames in it (fps 0), or
    the frame on screen at start + k / fps (resampling to a new rate)."""
    if not fps:
        return [i for i, t in enumerate(times) if start - _EPS <= t < end - _EPS]
    count = math.ceil((min(end, duration) - start) * fps - _EPS)
    return [max(0, bisect.bisect_right(times, start + k / fps + _EPS) - 1) for k in range(count)]


def output_size(width: int, height: int, short_side: int) -> tuple[int, int]:
    """Frame size after scaling the short side to `short_side` (0 keeps it); always even."""
    scale = short_side / min(width, height) if short_side else 1.0
    return max(2, 2 * round(width * scale / 2)), max(2, 2 * round(height * scale / 2))


class _DecodedFrames:
    """Decoded frames by source index, for plans that only move forward."""

    def __init__(self, container: av.container.InputContainer, info: VideoInfo):
        self._frames = container.decode(container.streams.video[0])
        self._rank = {p: i for i, p in enumerate(info.pts)}
        self._count = info.num_frames
        self.index, self.frame = -1, None

    def get(self, index: int) -> av.VideoFrame:
        while self.index < index:
            try:
                frame = next(self._frames, None)
            except av.FFmpegError as e:
                raise VideoError(f"decoding failed near frame {self.index + 1} of {self._count} "
                                 f"({one_line(e)})") from None
            if frame is None:
                raise VideoError(f"only {self.index + 1} of {self._count} frames decode")
            self.index = self._rank.get(frame.pts, self.index + 1)
            self.frame = frame
        return self.frame


def _kept(data: bytes, info: VideoInfo) -> tuple[str, bytes] | None:
    """("copy" | "remux", bytes) to store a video without re-encoding, or None if MP4 cannot hold it."""
    check_decodes(data, info)
    if info.is_mp4 and info.reported_frames in (0, info.num_frames) and info.header_size == (info.width, info.height):
        return "copy", data
    try:
        return "remux", remux_mp4(data)
    except VideoError:
        return None


def _reencode(data: bytes, info: VideoInfo, windows: list[tuple[float, float]], size: tuple[int, int],
              fps: float, cfg: ShardConfig) -> list[tuple[bytes, list[int]]]:
    """(mp4 bytes, source frame plan) per window, all from one decode pass."""
    times = info.frame_times
    plans = [frame_plan(times, info.duration, a, b, 0 if fps == info.fps else fps) for a, b in windows]
    if not all(plans):
        raise VideoError(f"clip [{windows[0][0]:g}, {windows[-1][1]:g}) holds no frames of the video")
    width, height = size
    interpolation = "AREA" if width * height < info.width * info.height else "BICUBIC"
    outputs = []
    scaler = VideoReformatter()  # one scaler for the clip: a new one per frame costs ~5x the scaling
    with open_video(data) as container:
        frames = _DecodedFrames(container, info)
        for plan in plans:
            scaled = (scaler.reformat(frames.get(i), width=width, height=height, format="yuv420p",
                                      interpolation=interpolation) for i in plan)
            outputs.append((encode_mp4(scaled, fps=fps, gop=cfg.gop, crf=cfg.crf,
                                       preset=cfg.preset, threads=1), plan))
    return outputs


def _sample(item: Item, key: str, mp4: bytes, mode: str, window: tuple[float, float], source: VideoInfo,
            ann: Annotations | None, expect_frames: int) -> Sample:
    stored = probe(mp4)
    if stored.num_frames != expect_frames:
        raise VideoError(f"stored clip has {stored.num_frames} frames, expected {expect_frames}")
    extra = {**item.extra, "mode": mode, "codec": stored.codec, "keyframe_interval": stored.keyframe_interval,
             "clip_start": round(window[0], 6), "clip_end": round(window[1], 6),
             "original_path": item.extra.get("original_path", item.video.path), "source_codec": source.codec,
             "source_size": [source.width, source.height], "source_fps": round(source.fps, 6),
             "source_frames": source.num_frames}
    meta = SampleMeta(label=item.label, label_name=item.label_name, fps=round(stored.fps, 6),
                      num_frames=stored.num_frames, width=stored.width, height=stored.height,
                      duration=round(stored.duration, 6), source=item.source, sha256=sha256_bytes(mp4),
                      split=item.split, extra=extra)
    members = [("mp4", mp4), ("json", meta.to_json())] + (ann.members() if ann else [])
    return Sample(key=key, members=members, duration=meta.duration, keyframe_interval=stored.keyframe_interval)


def _annotations(item: Item, info: VideoInfo) -> Annotations | None:
    sidecars = {name: read_blob(blob, f"{name} annotation") if blob else None
                for name, blob in (("boxes", item.boxes), ("masks", item.masks))}
    if not any(sidecars.values()):
        return None
    return load_annotations(sidecars["boxes"], sidecars["masks"], info.num_frames, info.width, info.height)


def _samples(item: Item, cfg: ShardConfig) -> list[Sample]:
    data = read_blob(item.video, "video")
    info = probe(data)
    ann = _annotations(item, info)
    windows = clip_windows(item, info, cfg.segment_s)
    kept = _kept(data, info) if windows is None and not cfg.transcode else None
    if kept:
        mode, mp4 = kept
        return [_sample(item, item.key, mp4, mode, (0.0, info.duration), info, ann, info.num_frames)]
    size = output_size(info.width, info.height, cfg.short_side if cfg.transcode else 0)
    fps = cfg.fps if cfg.transcode and cfg.fps else info.fps
    windows = windows or [(0.0, info.duration)]
    samples = []
    for n, (window, (mp4, plan)) in enumerate(zip(windows, _reencode(data, info, windows, size, fps, cfg))):
        key = f"{item.key}_seg{n:04d}" if cfg.segment_s else item.key
        clip_ann = ann.select(plan, *size) if ann else None
        samples.append(_sample(item, key, mp4, "transcode", window, info, clip_ann, len(plan)))
    return samples


def _test_faults(item: Item, faults: dict[str, str]) -> None:
    """A fault's TEXT picks the items whose key, source or video path contains it."""
    names = " ".join([item.key, item.source, item.video.path if item.video is not None else ""])
    if faults.get("hang") and faults["hang"] in names:
        time.sleep(3600)
    if faults.get("crash") and faults["crash"] in names:
        os.kill(os.getpid(), signal.SIGKILL)
    if faults.get("vanish") and faults["vanish"] in names and item.video is not None:
        if storage.is_url(item.video.path):
            storage.remove([item.video.path])
        else:
            os.unlink(item.video.path)


def process_item(item: Item, cfg: ShardConfig, faults: dict[str, str]) -> Outcome:
    """Samples of one item, or an Outcome with the reason it is quarantined."""
    if item.reject:
        return Outcome([], item.reject)
    _test_faults(item, faults)
    try:
        return Outcome(_samples(item, cfg))
    except (VideoError, AnnotationError) as e:
        return Outcome([], str(e))
    except storage.StorageError as e:
        return Outcome([], str(e), fatal=True)
