"""Probe and validate one video's bytes with PyAV (bundled FFmpeg): what it is, and proof it decodes.

    from data_prep.probe import probe, check_decodes, count_decoded_frames, remux_mp4
    info = probe(data)             # demux only: codec, size, fps, real frame count, keyframes
    check_decodes(data, info)      # decodes the first, middle and last frames
    count_decoded_frames(data)     # decodes everything (vssl inspect --decode)
    mp4 = remux_mp4(data)          # same packets in a fresh MP4 container (no re-encode)

`num_frames` counts the video packets really present, not what the container header claims
(`reported_frames`): decord trusts the header and can spin forever on a file that over-reports,
so a file whose header disagrees is stored remuxed, with an index that matches its content. The
same goes for the frame size an MP4 header claims (`header_size`, read from the video track's
sample description): FFmpeg takes the real size from the bitstream, other readers may not.
Every failure is a `VideoError` whose message is a one-line reason for quarantine.
"""

from __future__ import annotations

import io
import struct
from dataclasses import dataclass
from fractions import Fraction
from typing import Iterator

import av


class VideoError(ValueError):
    """The bytes are not a usable video; the message is the reason, on one line."""


@dataclass
class VideoInfo:
    container: str  # FFmpeg's demuxer name, e.g. "mov,mp4,m4a,3gp,3g2,mj2"
    codec: str
    width: int
    height: int
    fps: float
    num_frames: int  # video packets present in the file
    reported_frames: int  # the container's own count (0 = it does not say)
    duration: float  # seconds, first frame to the end of the last
    pts: list[int]  # presentation timestamps in display order (stream time base)
    time_base: Fraction
    keyframes: list[int]  # display-order indices of the keyframes
    header_size: tuple[int, int] | None = None  # (width, height) an MP4 header claims; None: not MP4

    @property
    def keyframe_interval(self) -> int:
        """Longest stretch of frames from one keyframe to the next (or to the end)."""
        bounds = self.keyframes + [self.num_frames]
        return max(b - a for a, b in zip(bounds, bounds[1:])) if len(bounds) > 1 else self.num_frames

    @property
    def frame_times(self) -> list[float]:
        """Display time of each frame in seconds, from the first frame."""
        return [float((p - self.pts[0]) * self.time_base) for p in self.pts]

    @property
    def is_mp4(self) -> bool:
        return "mp4" in self.container.split(",")


_MP4_NESTED = (b"moov", b"trak", b"mdia", b"minf", b"stbl")


def _mp4_boxes(data: bytes, start: int, end: int) -> Iterator[tuple[bytes, int, int]]:
    """(type, payload start, box end) of each whole MP4 box in data[start:end]."""
    pos = start
    while pos + 8 <= end:
        size, kind = struct.unpack_from(">I4s", data, pos)
        head = 8
        if size == 1 and pos + 16 <= end:
            size, head = struct.unpack_from(">Q", data, pos + 8)[0], 16
        elif size == 0:
            size = end - pos
        if size < head or pos + size > end:
            return
        yield kind, pos + head, pos + size
        pos += size


def mp4_header_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) in the sample description of an MP4's first video track, or None."""

    def walk(start: int, end: int, video: bool) -> tuple[int, int] | None:
        boxes = list(_mp4_boxes(data, start, end))
        video = video or any(kind == b"hdlr" and data[body + 8:body + 12] == b"vide" for kind, body, _ in boxes)
        for kind, body, stop in boxes:
            if kind in _MP4_NESTED and (found := walk(body, stop, video and kind != b"trak")):
                return found
            # stsd: version/flags, entry count, then the first entry: its 8-byte box header and
            # 24 bytes of reserved/pre-defined fields before its width and height
            if kind == b"stsd" and video and body + 44 <= stop:
                return struct.unpack_from(">HH", data, body + 40)
        return None

    return walk(0, len(data), False)


def one_line(e: Exception) -> str:
    """FFmpeg's own words for an error (PyAV's str() adds errno and a placeholder file name)."""
    return " ".join(str(getattr(e, "strerror", None) or e).split()) or e.__class__.__name__


def open_video(data: bytes) -> av.container.InputContainer:
    """Open bytes as a container with at least one video stream, or raise VideoError."""
    try:
        container = av.open(io.BytesIO(data), mode="r")
    except av.FFmpegError as e:
        raise VideoError(f"not a readable video ({one_line(e)})") from None
    if not container.streams.video:
        kinds = sorted({s.type for s in container.streams})
        container.close()
        raise VideoError("no video stream" + (f" (only {', '.join(kinds)})" if kinds else ""))
    return container


def probe(data: bytes) -> VideoInfo:
    with open_video(data) as container:
        stream = container.streams.video[0]
        pts, key_pts = [], []
        try:
            for packet in container.demux(stream):
                stamp = packet.pts if packet.pts is not None else packet.dts
                if packet.size == 0 or stamp is None:
                    continue
                pts.append(stamp)
                if packet.is_keyframe:
                    key_pts.append(stamp)
        except av.FFmpegError as e:
            raise VideoError(f"demux failed after {len(pts)} frames ({one_line(e)})") from None
        if not pts:
            raise VideoError("video stream has no frames")
        ctx = stream.codec_context
        if not (ctx.width and ctx.height):
            raise VideoError("video stream has no frame size")
        pts.sort()
        time_base = stream.time_base or Fraction(1, 1)
        rate = stream.average_rate or stream.guessed_rate
        if rate:
            fps = float(rate)
        elif len(pts) > 1:
            fps = (len(pts) - 1) / float((pts[-1] - pts[0]) * time_base)
        else:
            fps = 25.0  # one frame and no rate: any rate describes it
        rank = {p: i for i, p in enumerate(pts)}
        return VideoInfo(
            container=container.format.name, codec=ctx.name, width=ctx.width, height=ctx.height,
            fps=fps, num_frames=len(pts), reported_frames=int(stream.frames or 0),
            duration=float((pts[-1] - pts[0]) * time_base) + 1.0 / fps, pts=pts,
            time_base=time_base, keyframes=sorted(rank[p] for p in key_pts),
            header_size=mp4_header_size(data) if "mp4" in container.format.name.split(",") else None)


def check_decodes(data: bytes, info: VideoInfo) -> None:
    """Decode the first, middle and last frames (each from its keyframe); raise VideoError if not."""
    n = info.num_frames
    with open_video(data) as container:
        stream = container.streams.video[0]
        for index in sorted({0, n // 2, n - 1}):
            target = info.pts[index]
            try:
                container.seek(target, stream=stream, backward=True, any_frame=False)
                reached = any(f.pts is None or f.pts >= target for f in container.decode(stream))
            except av.FFmpegError as e:
                raise VideoError(f"decoding failed near frame {index} of {n} ({one_line(e)})") from None
            if not reached:
                raise VideoError(f"frame {index} of {n} does not decode")


def count_decoded_frames(data: bytes) -> int:
    """Decode every frame of the first video stream; VideoError if decoding fails."""
    count = 0
    with open_video(data) as container:
        try:
            for _ in container.decode(container.streams.video[0]):
                count += 1
        except av.FFmpegError as e:
            raise VideoError(f"decoding failed after {count} frames ({one_line(e)})") from None
    return count


def _fill_decode_times(packets: list[av.Packet]) -> None:
    """Set every packet's dts from the presentation times. Containers that store only those
    (Matroska with B-frames) leave the first packets' dts unknown, and MP4 needs them all: the
    decode times are the sorted presentation times, shifted back just enough that no packet is
    decoded after it is shown."""
    shown = sorted(p.pts for p in packets)
    delay = max(t - p.pts for t, p in zip(shown, packets))
    for t, p in zip(shown, packets):
        p.dts = t - delay


def remux_mp4(data: bytes) -> bytes:
    """The video stream's packets, unchanged, in a new MP4 container (VideoError if MP4 cannot hold the codec)."""
    buf = io.BytesIO()
    with open_video(data) as source:
        stream = source.streams.video[0]
        try:
            packets = [p for p in source.demux(stream) if p.size and not (p.pts is None and p.dts is None)]
            if any(p.dts is None for p in packets) and all(p.pts is not None for p in packets):
                _fill_decode_times(packets)
            with av.open(buf, mode="w", format="mp4") as target:
                out = target.add_stream_from_template(stream)
                for packet in packets:
                    if packet.dts is None:
                        continue
                    packet.stream = out
                    target.mux(packet)
        except (av.FFmpegError, ValueError) as e:
            raise VideoError(f"cannot remux {stream.codec_context.name} into MP4 ({one_line(e)})") from None
    return buf.getvalue()
