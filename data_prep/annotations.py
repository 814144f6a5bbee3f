"""Per-frame annotations that travel with a video: `<key>.boxes.json` and `<key>.masks.npz`.

    from data_prep.annotations import load_annotations
    ann = load_annotations(boxes_bytes, masks_bytes, num_frames=16, width=64, height=48)
    clip = ann.select([0, 2, 4, 6], width=32, height=24)    # follow a cut, fps change and resize
    members = clip.members()   # [("boxes.json", b"..."), ("masks.npz", b"...")]

Boxes: {"format": "xyxy", "boxes": [[x0, y0, x1, y1] | null, ...]}, one entry per frame, in pixels
of the video they belong to. Masks: an .npz holding "masks", uint8 (T, H, W), read with
allow_pickle=False. Both must have exactly one entry per real frame of the video (and masks its
frame size), else `AnnotationError` says which file and what differs, and the item is
quarantined. A transformed clip keeps the source frame chosen for each output frame (the same
index list the video uses), scales boxes, and resizes masks by nearest neighbour. Unchanged
annotations are stored as their original bytes; new .npz bytes are written without timestamps,
so shards stay byte-identical from run to run.
"""

from __future__ import annotations

import io
import json
import zipfile
from dataclasses import dataclass

import numpy as np

Box = list[float] | None


class AnnotationError(ValueError):
    """An annotation file does not match its video; the message is the reason, on one line."""


@dataclass
class Annotations:
    boxes: list[Box] | None
    masks: np.ndarray | None
    width: int  # the frame size the coordinates refer to
    height: int
    original: dict[str, bytes]  # extension -> bytes, for annotations not yet transformed

    def select(self, indices: list[int], width: int, height: int) -> "Annotations":
        """The annotations of output frames `indices` (source frame numbers) at a new frame size."""
        boxes = masks = None
        if self.boxes is not None:
            sx, sy = width / self.width, height / self.height
            boxes = [None if (b := self.boxes[i]) is None else
                     [round(b[0] * sx, 3), round(b[1] * sy, 3), round(b[2] * sx, 3), round(b[3] * sy, 3)]
                     for i in indices]
        if self.masks is not None:
            _, h, w = self.masks.shape
            rows = np.minimum((np.arange(height) + 0.5) * h / height, h - 1).astype(np.intp)
            cols = np.minimum((np.arange(width) + 0.5) * w / width, w - 1).astype(np.intp)
            masks = self.masks[np.asarray(indices, dtype=np.intp)][:, rows][:, :, cols]
        return Annotations(boxes, masks, width, height, original={})

    def members(self) -> list[tuple[str, bytes]]:
        out = []
        if self.boxes is not None:
            out.append(("boxes.json", self.original.get("boxes.json") or json.dumps(
                {"format": "xyxy", "boxes": self.boxes}, separators=(",", ":")).encode()))
        if self.masks is not None:
            out.append(("masks.npz", self.original.get("masks.npz") or npz_bytes(masks=self.masks)))
        return out


def npz_bytes(**arrays: np.ndarray) -> bytes:
    """An .npz (deflated members with fixed timestamps) readable by np.load(allow_pickle=False)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, array in arrays.items():
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            with zf.open(info, "w") as f:
                np.lib.format.write_array(f, np.ascontiguousarray(array), allow_pickle=False)
    return buf.getvalue()


def _parse_boxes(data: bytes, num_frames: int) -> list[Box]:
    try:
        obj = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise AnnotationError(f"boxes.json: not valid JSON ({e.__class__.__name__})") from None
    if not isinstance(obj, dict) or obj.get("format") != "xyxy" or not isinstance(obj.get("boxes"), list):
        raise AnnotationError('boxes.json: expected {"format": "xyxy", "boxes": [...]}')
    boxes = obj["boxes"]
    if len(boxes) != num_frames:
        raise AnnotationError(f"boxes.json: has {len(boxes)} frames, the video has {num_frames}")
    for t, box in enumerate(boxes):
        if box is not None and not (isinstance(box, list) and len(box) == 4 and all(
                isinstance(v, (int, float)) and not isinstance(v, bool) for v in box)):
            raise AnnotationError(f"boxes.json: frame {t} is not null or [x0, y0, x1, y1]")
    return boxes


def _parse_masks(data: bytes, num_frames: int, width: int, height: int) -> np.ndarray:
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            if "masks" not in npz.files:
                raise AnnotationError(f"masks.npz: no array 'masks' (has: {', '.join(npz.files) or 'none'})")
            masks = npz["masks"]
    except AnnotationError:
        raise
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as e:
        raise AnnotationError(f"masks.npz: unreadable ({' '.join(str(e).split())[:120]})") from None
    if masks.dtype != np.uint8 or masks.ndim != 3:
        raise AnnotationError(f"masks.npz: expected uint8 (T, H, W), got {masks.dtype} {masks.shape}")
    if masks.shape != (num_frames, height, width):
        raise AnnotationError(f"masks.npz: shape {masks.shape} does not match the video "
                              f"({num_frames}, {height}, {width})")
    return masks


def load_annotations(boxes: bytes | None, masks: bytes | None, num_frames: int, width: int,
                     height: int) -> Annotations:
    """Parse and check the sidecars of a video with `num_frames` frames of width x height."""
    return Annotations(boxes=None if boxes is None else _parse_boxes(boxes, num_frames),
                       masks=None if masks is None else _parse_masks(masks, num_frames, width, height),
                       width=width, height=height,
                       original={k: v for k, v in (("boxes.json", boxes), ("masks.npz", masks)) if v is not None})
