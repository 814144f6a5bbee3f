"""Writes one rendered synthetic video to disk: mp4 + annotation sidecars (+ DAVIS-2017 frames).

    from data_prep.synth_export import VideoEntry, write_video
    entry = VideoEntry.make(index=5, num_classes=8, per_class=10, val_count=2, num_frames=16, fps=25)
    size_bytes = write_video(root, entry, frames, boxes, masks, fps=25, gop=8, crf=20, davis=True)

Paths (relative to the dataset root; the layout the Kinetics downloader and DAVIS-2017 use):

    videos/<split>/<class>/<youtube_id>_<time_start:06d>_<time_end:06d>.mp4
    videos/<split>/<class>/<same stem>.boxes.json     {"format": "xyxy", "boxes": [[x0,y0,x1,y1], ...]}
    videos/<split>/<class>/<same stem>.masks.npz      "masks": uint8 (T, H, W), 1 = target
    davis/JPEGImages/480p/<youtube_id>/00000.jpg ...
    davis/Annotations/480p/<youtube_id>/00000.png ... palette PNG, index 1 = target

Every byte written is a function of the inputs (no timestamps), so a dataset is byte-identical
however many processes wrote it.
"""

from __future__ import annotations

import io
import json
import math
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from data_prep.encode import encode_mp4
from data_prep.synth_render import CLASSES
from pipeline.tasks.davis import davis_palette

# x264's macroblock-tree rate control made output depend on what the process encoded before
# (measured with PyAV 18: ~15% of 64 px clips differed between runs); "superfast" turns it off.
X264_PRESET = "superfast"
X264_THREADS = 1   # x264's bytes depend on its thread count: fixed, they match on every machine
JPEG_QUALITY = 90
DAVIS_FRAME_DIR = "davis/JPEGImages/480p"
DAVIS_MASK_DIR = "davis/Annotations/480p"
DAVIS_SETS_DIR = "davis/ImageSets/2017"


@dataclass(frozen=True)
class VideoEntry:
    """Where video `index` goes and what it is called; a function of the counts, not of the seed."""

    index: int
    label: int
    split: str
    time_end: int

    @classmethod
    def make(cls, index: int, num_classes: int, per_class: int, val_count: int,
             num_frames: int, fps: float) -> "VideoEntry":
        # Videos interleave classes (label = index % C); the first `val_count` of each class are val.
        position = index // num_classes
        if position >= per_class:
            raise ValueError(f"video index {index} out of range for {per_class} per class")
        return cls(index=index, label=index % num_classes,
                   split="val" if position < val_count else "train",
                   time_end=math.ceil(num_frames / fps))

    @property
    def class_name(self) -> str:
        return CLASSES[self.label]

    @property
    def youtube_id(self) -> str:
        return f"synth{self.index:06d}"

    @property
    def stem(self) -> str:
        return f"{self.youtube_id}_{0:06d}_{self.time_end:06d}"

    @property
    def video_path(self) -> str:
        return f"videos/{self.split}/{self.class_name}/{self.stem}.mp4"


def write_npz(path: Path, **arrays: np.ndarray) -> None:
    """Like np.savez_compressed, but with fixed zip timestamps so equal arrays give equal bytes."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, array in arrays.items():
            member = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            member.compress_type = zipfile.ZIP_DEFLATED
            buffer = io.BytesIO()
            np.lib.format.write_array(buffer, np.ascontiguousarray(array), allow_pickle=False)
            archive.writestr(member, buffer.getvalue())


def write_davis(root: Path, youtube_id: str, frames: np.ndarray, masks: np.ndarray) -> None:
    """JPEG frames and palette-PNG annotations in the DAVIS-2017 layout."""
    frame_dir = root / DAVIS_FRAME_DIR / youtube_id
    mask_dir = root / DAVIS_MASK_DIR / youtube_id
    frame_dir.mkdir(parents=True, exist_ok=True)
    mask_dir.mkdir(parents=True, exist_ok=True)
    palette = davis_palette()
    for t, (frame, mask) in enumerate(zip(frames, masks)):
        Image.fromarray(frame).save(frame_dir / f"{t:05d}.jpg", quality=JPEG_QUALITY)
        annotation = Image.frombytes("P", (mask.shape[1], mask.shape[0]), mask.tobytes())
        annotation.putpalette(palette)
        annotation.save(mask_dir / f"{t:05d}.png")


def write_video(root: Path, entry: VideoEntry, frames: np.ndarray, boxes: np.ndarray,
                masks: np.ndarray, fps: float, gop: int, crf: int, davis: bool) -> int:
    """Write the mp4, its sidecars and (if `davis`) the DAVIS frames; return the mp4's size."""
    video = root / entry.video_path
    video.parent.mkdir(parents=True, exist_ok=True)
    data = encode_mp4(frames, fps=fps, gop=gop, crf=crf, preset=X264_PRESET, threads=X264_THREADS)
    video.write_bytes(data)
    box_list = [[round(float(c), 2) for c in box] for box in boxes]
    video.with_name(f"{entry.stem}.boxes.json").write_text(json.dumps({"format": "xyxy", "boxes": box_list}))
    write_npz(video.with_name(f"{entry.stem}.masks.npz"), masks=masks)
    if davis:
        write_davis(root, entry.youtube_id, frames, masks)
    return len(data)
