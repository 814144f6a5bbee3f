"""Clip sampling: which frame indices of a video make each clip. Pure numpy (it runs in the decode
helper process, which does not import torch).

    from pipeline.data.sampling import ClipSampling
    sampling = ClipSampling(mode="random", num_frames=16, frame_stride=4, clips=2, train=True)
    clips = sampling.clips_for(num_video_frames=300, fps=30.0, rng=np.random.default_rng(0))
    frames, where = union_indices(clips)   # decode `frames` once; clip i = frames[where[i]]

Modes (each returns `clips` index arrays of length num_frames, all inside [0, num_video_frames)):

    random   Kinetics-style: num_frames frames `frame_stride` apart from a random start
    segment  SSv2-style: the video cut into num_frames equal segments, one frame from each
             (random within the segment when training, its middle otherwise)
    fps      like random, with the stride set by time: one frame every 1/target_fps seconds

train=True draws `clips` independent clips (repeated sampling: k clips, one decode). train=False
is deterministic multi-view evaluation: `clips` temporal views spread evenly over the video.
A video shorter than a clip's span repeats its last frame (indices are clamped).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import get_args

import numpy as np

from pipeline.config import Sampling



def strided_clip(num_video_frames: int, num_frames: int, step: float, start: float) -> np.ndarray:
    """num_frames indices `step` apart from `start`, clamped to the video."""
    idx = np.floor(start + np.arange(num_frames) * step + 1e-6).astype(np.int64)
    return np.clip(idx, 0, num_video_frames - 1)


def view_starts(num_video_frames: int, span: float, views: int) -> list[float]:
    """Evenly spread start positions of `views` clips of length `span` (one view: centred)."""
    room = max(0.0, num_video_frames - span)
    if views == 1:
        return [room / 2]
    return [room * j / (views - 1) for j in range(views)]


def segment_clip(num_video_frames: int, num_frames: int, offset: float | np.ndarray) -> np.ndarray:
    """One frame per segment, at fraction `offset` in [0, 1) of each segment (scalar or per segment)."""
    seg = num_video_frames / num_frames
    idx = np.floor((np.arange(num_frames) + offset) * seg).astype(np.int64)
    return np.clip(idx, 0, num_video_frames - 1)


@dataclass(frozen=True)
class ClipSampling:
    mode: Sampling = "random"
    num_frames: int = 16
    frame_stride: int = 4
    target_fps: float = 0.0
    clips: int = 1
    train: bool = True

    def __post_init__(self) -> None:
        if self.mode not in get_args(Sampling):
            raise ValueError(f"sampling mode {self.mode!r}: must be one of {', '.join(get_args(Sampling))}")
        if self.mode == "fps" and self.target_fps <= 0:
            raise ValueError("sampling mode 'fps' needs target_fps > 0")

    def step(self, fps: float) -> float:
        if self.mode == "fps":
            return fps / self.target_fps if fps > 0 else float(self.frame_stride)
        return float(self.frame_stride)

    def clips_for(self, num_video_frames: int, fps: float, rng: np.random.Generator) -> list[np.ndarray]:
        """The index arrays of this sample's clips."""
        if num_video_frames < 1:
            raise ValueError("video has no frames")
        n, t = num_video_frames, self.num_frames
        if self.mode == "segment":
            if self.train:
                return [segment_clip(n, t, rng.random(t)) for _ in range(self.clips)]
            return [segment_clip(n, t, (j + 0.5) / self.clips) for j in range(self.clips)]
        step = self.step(fps)
        span = (t - 1) * step + 1
        if self.train:
            room = max(0.0, n - span)
            return [strided_clip(n, t, step, float(np.floor(rng.random() * (room + 1))))
                    for _ in range(self.clips)]
        return [strided_clip(n, t, step, s) for s in view_starts(n, span, self.clips)]


def union_indices(clips: list[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
    """Sorted unique frames to decode, and for each clip the positions of its frames in them."""
    frames = np.unique(np.concatenate(clips))
    return frames, [np.searchsorted(frames, c) for c in clips]
