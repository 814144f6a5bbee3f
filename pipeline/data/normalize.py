"""uint8 clips -> normalised float32 on the device that trains on them, and batches moved there.

    from pipeline.data.normalize import batch_to_device, normalize_video
    video = normalize_video(uint8_bcthw, device, mean, std)     # float32 (x / 255 - mean) / std
    batch = batch_to_device(batch, device, mean, std)           # every tensor moved; uint8 video
                                                                #   normalised on the device

Workers hand clips over as uint8 (4x fewer bytes than float32 through shared memory and over
PCIe). Where they become float decides who pays for it:

- on a CUDA device the uint8 batch is copied over as it is and normalised there (one fused
  elementwise kernel per batch: free next to the model's step), so the host does no per-pixel
  arithmetic at all;
- on the CPU, numpy does the arithmetic in one single-threaded pass into fresh memory: a fraction
  of what torch's intra-op threads cost when they compete with the loader's worker processes
  (docs/EXPERIMENTS.md, "Measurements behind design choices").
"""

from __future__ import annotations

import functools
import math
import mmap

import numpy as np
import torch
from torch import Tensor

_HUGE_PAGES_FROM = 32 << 20  # glibc serves smaller blocks from its heap; above, fresh mmap pages


def _empty_float(shape: tuple[int, ...]) -> Tensor:
    """torch.empty; large buffers ask for transparent huge pages, since faulting in a fresh
    4 KiB-paged buffer costs more than the conversion."""
    nbytes = math.prod(shape) * 4
    if nbytes < _HUGE_PAGES_FROM or not hasattr(mmap, "MADV_HUGEPAGE"):
        return torch.empty(shape)
    buffer = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    buffer.madvise(mmap.MADV_HUGEPAGE)
    return torch.frombuffer(buffer, dtype=torch.float32).view(shape)


def _scale_shift(mean: tuple[float, ...], std: tuple[float, ...]) -> tuple[list[float], list[float]]:
    """Per channel: (x / 255 - mean) / std == x * scale + shift."""
    return [1.0 / (255.0 * s) for s in std], [-m / s for m, s in zip(mean, std)]


def to_normalized_float(video: Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> Tensor:
    """CPU uint8 (n, C, ...) -> contiguous float32 (x / 255 - mean) / std in fresh memory, by numpy."""
    out = _empty_float(tuple(video.shape))
    array = out.numpy()
    np.copyto(array, video.numpy(), casting="unsafe")
    shape = (1, -1) + (1,) * (video.dim() - 2)
    scale, shift = _scale_shift(mean, std)
    array *= np.asarray(scale, dtype=np.float32).reshape(shape)
    array += np.asarray(shift, dtype=np.float32).reshape(shape)
    return out


def normalize_video(video: Tensor, device: torch.device | str, mean: tuple[float, ...],
                    std: tuple[float, ...]) -> Tensor:
    """uint8 (n, C, ...) on the CPU -> contiguous float32 normalised video on `device`. A float
    video is taken as normalised already and only moved."""
    device = torch.device(device)
    if video.dtype != torch.uint8:
        return video.to(device)
    if device.type == "cpu":
        return to_normalized_float(video, mean, std)
    # a CPU -> CUDA copy from pageable memory returns once the source has been read, so the
    # caller may reuse the host buffer as soon as this returns
    return normalize_tensor(video.to(device), mean, std)


@functools.lru_cache(maxsize=16)
def _scale_shift_on(device: torch.device, mean: tuple[float, ...], std: tuple[float, ...]) -> tuple[Tensor, Tensor]:
    """The per-channel scale and shift, copied to `device` once (a host -> device copy of a
    Python list waits for the device; per batch it would stall every step)."""
    return tuple(torch.tensor(v, device=device) for v in _scale_shift(mean, std))


def normalize_tensor(video: Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> Tensor:
    """uint8 (n, C, ...) -> contiguous float32 normalised, by torch on the tensor's own device."""
    shape = (1, -1) + (1,) * (video.dim() - 2)
    scale, shift = (v.view(shape) for v in _scale_shift_on(video.device, tuple(mean), tuple(std)))
    return torch.addcmul(shift, video, scale).contiguous()


def batch_to_device(batch: dict, device: torch.device | str, mean: tuple[float, ...],
                    std: tuple[float, ...]) -> dict:
    """A copy of `batch` with every tensor on `device` and a uint8 `video` normalised there;
    other values (keys, counts) as they are."""
    device = torch.device(device)
    return {k: normalize_video(v, device, mean, std) if k == "video" else
            v.to(device, non_blocking=True) if isinstance(v, Tensor) else v for k, v in batch.items()}
