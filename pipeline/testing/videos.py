"""Small real test videos, made on the fly (no downloads): moving gradients encoded to H.264."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from data_prep.encode import encode_mp4


def moving_frames(num_frames: int = 16, height: int = 64, width: int = 64, seed: int = 0) -> np.ndarray:
    """(T, H, W, 3) uint8: a textured square drifting over a gradient; distinct per seed."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    base = np.stack([(xx * 255 // max(width - 1, 1)), (yy * 255 // max(height - 1, 1)),
                     np.full_like(xx, int(rng.integers(0, 256)))], -1).astype(np.uint8)
    tex = rng.integers(0, 256, size=(height // 4, width // 4, 3), dtype=np.uint8)
    frames = np.repeat(base[None], num_frames, axis=0)
    dx, dy = rng.integers(-2, 3, size=2)
    x0, y0 = int(rng.integers(0, width // 2)), int(rng.integers(0, height // 2))
    for t in range(num_frames):
        x = (x0 + dx * t) % (width - width // 4)
        y = (y0 + dy * t) % (height - height // 4)
        frames[t, y:y + height // 4, x:x + width // 4] = tex
    return frames


def write_video(path: str | Path, num_frames: int = 16, height: int = 64, width: int = 64,
                fps: float = 25.0, seed: int = 0, gop: int = 8) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(encode_mp4(moving_frames(num_frames, height, width, seed), fps=fps, gop=gop))
    return path
