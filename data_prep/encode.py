"""Encode frames to H.264 MP4 bytes with PyAV (bundled FFmpeg; no system ffmpeg needed).

    from data_prep.encode import encode_mp4
    data = encode_mp4(frames_uint8_THWC, fps=25, gop=16, crf=23)

Used by the synthetic generator, by transcoding in `vssl shard`, and by tests that need a
small real video. The GOP length sets the keyframe interval, which bounds random-access cost:
keyframes land exactly at frames 0, gop, 2 gop, ... (no scene-cut keyframes, and a decoded
frame's own picture type is cleared so the source's keyframes are not carried over).
Frames may be RGB uint8 arrays or decoded `av.VideoFrame`s (already at the output size), so a
transcode never round-trips through RGB.

The same frames and settings always give the same bytes, which `vssl shard` relies on for
reproducible shards: x264's macroblock-tree rate control is off because it made the output of
small frames (e.g. 64x48) vary from run to run (docs/EXPERIMENTS.md, "Measurements behind design
choices"), and a fixed `threads` makes the bytes independent of the machine's cores.
"""

from __future__ import annotations

import io
from fractions import Fraction
from typing import Iterable

import av
import numpy as np
from av.video.frame import PictureType


def encode_mp4(frames: np.ndarray | Iterable[np.ndarray | av.VideoFrame], fps: float = 25.0,
               gop: int = 16, crf: int = 23, preset: str = "veryfast", threads: int = 0) -> bytes:
    """Encode RGB uint8 frames (T, H, W, 3) or VideoFrames to MP4 bytes (yuv420p; even H and W).

    threads: x264 threads, 0 = automatic. x264's output depends on its thread count, so a fixed
    count (1 is also the fastest for small clips) gives the same bytes on every machine.
    """
    buf = io.BytesIO()
    rate = Fraction(fps).limit_denominator(1001)
    with av.open(buf, mode="w", format="mp4") as container:
        stream = None
        for index, frame in enumerate(frames):
            if isinstance(frame, av.VideoFrame):
                # a decoded frame keeps its source picture type, which x264 obeys: a source
                # keyframe would be forced into the output wherever it falls, breaking the GOP
                vf = frame
                vf.pict_type, vf.key_frame = PictureType.NONE, False
            else:
                vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame, dtype=np.uint8), format="rgb24")
            if stream is None:
                w, h = vf.width, vf.height
                if h % 2 or w % 2:
                    raise ValueError(f"frame size {w}x{h}: H.264 yuv420p needs even width and height")
                stream = container.add_stream("libx264", rate=rate)
                stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
                stream.codec_context.gop_size = gop
                if threads:
                    stream.codec_context.thread_count = threads
                stream.options = {"crf": str(crf), "preset": preset,
                                  "x264-params": f"keyint={gop}:min-keyint={gop}:scenecut=0:mbtree=0"}
            # decoded frames carry the source's timestamps; the output is constant-rate
            vf.pts, vf.time_base = index, 1 / rate
            for packet in stream.encode(vf):
                container.mux(packet)
        if stream is None:
            raise ValueError("encode_mp4: no frames given")
        for packet in stream.encode():
            container.mux(packet)
    return buf.getvalue()
