"""Video decoding from in-memory bytes (no temp files) behind one interface: decord | pyav | torchcodec.

    from pipeline.data.decode import decode_clips
    decoded = decode_clips("decord", mp4_bytes, sampling, seed=7, frame_limit=meta.num_frames)
    decoded.frames          # (F, H, W, 3) uint8: only the frames the clips use, each decoded once
    decoded.where[i]        # positions in `frames` of clip i's frames
    decode_clips("torchcodec", mp4_bytes, sampling, seed=7, device="cuda")  # NVDEC: frames a CUDA tensor

The frame count used for sampling is the smaller of the container's count and `frame_limit` (the
count the shard writer measured): containers that over-report frames make decord spin forever on
indices past the real end, so indices never go there. The remaining risk of a hang is bounded by
pipeline/data/decode_process.py. decord is the default; pyav seeks to the keyframe before each
run of wanted frames; torchcodec (pip extra `torchcodec`, plus the system FFmpeg shared libraries)
is refused in one line by check_decoder when it cannot run here. All three return the same pixels
on H.264 MP4 (tests/data/test_loader_decode.py). On the CPU frames are a numpy array; torchcodec on a
CUDA device (data.decode_device=cuda) returns a torch tensor on that device, which stays there
through the crops (the loader decodes those in its own process: see loader.py).
"""

from __future__ import annotations

import importlib.util
import io
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, get_args

import numpy as np

from pipeline.config import DecodeDevice, Decoder
from pipeline.data.sampling import ClipSampling, union_indices

if TYPE_CHECKING:  # the decode helper process (decode_process.py) runs without importing torch
    import torch

# pyav: a gap of more than this many frames between wanted frames is crossed by seeking
_SEEK_GAP = 64


class DecodeError(Exception):
    """A sample cannot be decoded: `reason` names the skip counter, `detail` goes to the log."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason, self.detail = reason, detail


class VideoReader(Protocol):
    num_frames: int
    fps: float

    def get_frames(self, indices: np.ndarray) -> np.ndarray:
        """(len(indices), H, W, 3) uint8 RGB for sorted, unique indices."""


class DecordReader:
    def __init__(self, data: bytes):
        import decord

        self._vr = decord.VideoReader(io.BytesIO(data), ctx=decord.cpu(0), num_threads=1)
        self.num_frames = len(self._vr)
        self.fps = float(self._vr.get_avg_fps() or 0.0)

    def get_frames(self, indices: np.ndarray) -> np.ndarray:
        return self._vr.get_batch(indices.tolist()).asnumpy()


class PyAVReader:
    def __init__(self, data: bytes):
        import av

        self._container = av.open(io.BytesIO(data))
        self._stream = self._container.streams.video[0]
        self._stream.thread_count = 1
        rate = self._stream.average_rate or self._stream.guessed_rate
        self.fps = float(rate) if rate else 0.0
        duration = float(self._stream.duration * self._stream.time_base) if self._stream.duration else 0.0
        self.num_frames = self._stream.frames or int(round(duration * self.fps))
        self._start = self._stream.start_time or 0

    def _index(self, frame) -> int:
        return int(round(float((frame.pts - self._start) * self._stream.time_base) * self.fps))

    def _decode_run(self, run: np.ndarray) -> list[np.ndarray]:
        """Frames of one run of nearby indices: seek to the keyframe before it, decode forward."""
        target_pts = self._start + int(int(run[0]) / self.fps / self._stream.time_base)
        self._container.seek(target_pts, stream=self._stream, backward=True, any_frame=False)
        out: list[np.ndarray] = []
        for frame in self._container.decode(self._stream):
            idx = self._index(frame)
            while len(out) < len(run) and run[len(out)] <= idx:
                out.append(frame.to_ndarray(format="rgb24"))  # a missing index takes the next frame
            if len(out) == len(run):
                return out
        raise DecodeError("decode_error", f"video ends before frame {int(run[len(out)])}")

    def get_frames(self, indices: np.ndarray) -> np.ndarray:
        if self.fps <= 0:
            raise DecodeError("decode_error", "pyav found no frame rate")
        cuts = np.nonzero(np.diff(indices) > _SEEK_GAP)[0] + 1
        return np.stack([f for run in np.split(indices, cuts) for f in self._decode_run(run)])


class TorchCodecReader:
    """torchcodec's VideoDecoder: FFmpeg on the CPU (one thread, as the other readers), or NVDEC on a
    CUDA device, whose frames stay on it (a torch tensor)."""

    def __init__(self, data: bytes, device: str = "cpu"):
        from torchcodec.decoders import VideoDecoder

        # exact seek mode: the frame count comes from a scan, not from the container's claim
        self._dec = VideoDecoder(data, device=device, dimension_order="NHWC", num_ffmpeg_threads=1)
        self.num_frames = int(self._dec.metadata.num_frames or 0)
        self.fps = float(self._dec.metadata.average_fps or 0.0)
        self._on_cpu = device == "cpu"

    def get_frames(self, indices: np.ndarray) -> np.ndarray | torch.Tensor:
        frames = self._dec.get_frames_at(indices.tolist()).data
        return frames.numpy() if self._on_cpu else frames


_READERS = {"decord": DecordReader, "pyav": PyAVReader, "torchcodec": TorchCodecReader}
_MODULES = {"decord": "decord", "pyav": "av"}
FFMPEG_INSTALL = "apt-get install --no-install-recommends ffmpeg"


def torchcodec_problem() -> str | None:
    """Why torchcodec cannot decode video in this environment (one line), or None when it can.
    torchcodec imports without the system FFmpeg libraries (it loads them lazily), so being
    installed is not enough: its `ffmpeg_major_version` is None when no FFmpeg could be loaded."""
    try:
        import torchcodec
    except ImportError:
        return f"torchcodec is not installed (pip install torchcodec; it also needs the system FFmpeg libraries: {FFMPEG_INSTALL})"
    if torchcodec.ffmpeg_major_version is None:
        return f"torchcodec cannot load the system FFmpeg shared libraries (libavcodec, libavformat, ...): {FFMPEG_INSTALL}"
    return None


def check_decoder(name: Decoder, device: DecodeDevice = "cpu") -> None:
    """Raise a one-line ValueError if the backend is unknown or cannot decode here, or if `device`
    is cuda and torch sees no CUDA device. (Which decoder may use cuda is DataConfig.validate's
    check: it needs no torch.)"""
    if name not in _READERS:
        raise ValueError(f"data.decoder: unknown decoder {name!r} (known: {', '.join(get_args(Decoder))})")
    if name == "torchcodec":
        problem = torchcodec_problem()
        if problem is not None:
            raise ValueError(f"data.decoder: {problem}")
    elif importlib.util.find_spec(_MODULES[name]) is None:
        raise ValueError(f"data.decoder: {name} is not installed")
    if device != "cuda":
        return
    import torch

    if not torch.cuda.is_available():
        raise ValueError(f"data.decode_device: cuda, but torch {torch.__version__} sees no CUDA device "
                         f"(no GPU, or a driver too old for its CUDA {torch.version.cuda}); set data.decode_device=cpu")


def open_video(name: str, data: bytes, device: DecodeDevice = "cpu") -> VideoReader:
    return TorchCodecReader(data, device) if name == "torchcodec" else _READERS[name](data)


@dataclass
class DecodedClips:
    frames: np.ndarray | torch.Tensor  # (F, H, W, 3) uint8; a tensor on the decode device when not the CPU
    frame_ids: np.ndarray  # (F,) the video frame index of each of `frames`
    where: list[np.ndarray]  # per clip: positions into frames
    num_frames: int  # the frame count sampling used


def decode_clips(decoder: str, data: bytes, sampling: ClipSampling, seed: int, frame_limit: int = 0,
                 device: DecodeDevice = "cpu") -> DecodedClips:
    """Open, sample the clips (seeded), decode the union of their frames once, on `device`."""
    try:
        reader = open_video(decoder, data, device)
    except Exception as e:  # decoders raise their own error types on bad bytes
        raise DecodeError("decode_error", f"cannot open video ({e.__class__.__name__}: {e})") from None
    n = min(reader.num_frames, frame_limit) if frame_limit > 0 else reader.num_frames
    if n < 1:
        raise DecodeError("decode_error", "video has no frames")
    clips = sampling.clips_for(n, reader.fps, np.random.default_rng(seed))
    frames_idx, where = union_indices(clips)
    try:
        frames = reader.get_frames(frames_idx)
    except DecodeError:
        raise
    except Exception as e:
        raise DecodeError("decode_error", f"{e.__class__.__name__}: {e}") from None
    if frames.ndim != 4 or frames.shape[0] != len(frames_idx) or frames.shape[-1] != 3:
        raise DecodeError("decode_error", f"decoder returned shape {tuple(frames.shape)}")
    if isinstance(frames, np.ndarray):
        frames = np.ascontiguousarray(frames, dtype=np.uint8)
    return DecodedClips(frames, frames_idx, where, n)
