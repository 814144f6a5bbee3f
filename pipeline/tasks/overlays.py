"""Pictures of task results a person would look at: boxes and masks on frames, confusion matrices.

    from pipeline.tasks import overlays
    overlays.save_box_comparison("runs/eval/track.png", frames, predicted_boxes, truth_boxes)
    overlays.save_mask_comparison("runs/eval/seg.gif", frames, predicted_masks, truth_masks)
    overlays.save_confusion_matrix("runs/eval/confusion.png", conf, class_names)

Comparisons put the ground truth beside the prediction: a .png is a strip of up to `columns`
evenly spaced frames, truth on the top row and prediction on the bottom row; a .gif is an
animation of every frame with truth on the left and prediction on the right. Frames are uint8
(T, H, W, 3); boxes (T, 4) xyxy pixels; masks (T, H, W) object ids drawn in the DAVIS palette
(translucent fill, solid 1-pixel outline). Files are written atomically (image_io.save_image).
"""

from __future__ import annotations

import io
from functools import partial
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image, ImageDraw

from pipeline.tasks.davis import davis_palette
from pipeline.tasks.image_io import save_image
from pipeline.tasks.metrics import boundary_map

TRUTH_COLOUR = (40, 220, 40)
PREDICTION_COLOUR = (255, 60, 60)
GAP_COLOUR = (255, 255, 255)


def draw_box(frame: np.ndarray, box: np.ndarray, colour: tuple[int, int, int], width: int = 2) -> np.ndarray:
    """A copy of `frame` with the outline of box xyxy (pixels; x1, y1 exclusive) drawn inside its edges."""
    image = Image.fromarray(frame)
    x0, y0, x1, y1 = (int(round(float(v))) for v in box)
    if x1 > x0 and y1 > y0:
        ImageDraw.Draw(image).rectangle((x0, y0, x1 - 1, y1 - 1), outline=colour, width=width)
    return np.asarray(image)


def draw_mask(frame: np.ndarray, mask: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """A copy of `frame` with each object id > 0 filled translucently in its palette colour and outlined."""
    if mask.shape != frame.shape[:2]:
        raise ValueError(f"overlays: mask {mask.shape} does not match frame {frame.shape[:2]}")
    palette = np.array(davis_palette(), dtype=np.float32).reshape(256, 3)
    out = frame.astype(np.float32)
    colours = palette[mask]
    objects = mask > 0
    out[objects] = (1 - alpha) * out[objects] + alpha * colours[objects]
    for obj in np.unique(mask[objects]):
        edge = boundary_map(torch.from_numpy(mask == obj)).numpy()
        out[edge] = palette[obj]
    return out.round().astype(np.uint8)


def _check_frames(frames: np.ndarray, count: int, what: str) -> None:
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"overlays: frames must be uint8 (T, H, W, 3), got {frames.dtype} {frames.shape}")
    if count != len(frames):
        raise ValueError(f"overlays: {len(frames)} frames but {count} {what}")


def comparison_strip(truth: np.ndarray, predicted: np.ndarray, columns: int = 8, gap: int = 4) -> Image.Image:
    """Up to `columns` evenly spaced frames: truth (T, H, W, 3) on the top row, prediction below."""
    picks = np.unique(np.linspace(0, len(truth) - 1, min(columns, len(truth))).round().astype(int))
    height, width = truth.shape[1:3]
    canvas = np.empty((2 * height + gap, len(picks) * (width + gap) - gap, 3), np.uint8)
    canvas[:] = GAP_COLOUR
    for column, t in enumerate(picks):
        x = column * (width + gap)
        canvas[:height, x:x + width] = truth[t]
        canvas[height + gap:, x:x + width] = predicted[t]
    return Image.fromarray(canvas)


def _save_comparison(path: str | Path, frames: np.ndarray, predicted: np.ndarray, truth: np.ndarray,
                     what: str, draw_truth: Callable, draw_predicted: Callable, columns: int,
                     fps: float) -> Path:
    """Draw truth and prediction on copies of the frames; a .gif animates, anything else is a strip."""
    _check_frames(frames, len(predicted), f"predicted {what}")
    _check_frames(frames, len(truth), f"truth {what}")
    truth_frames = np.stack([draw_truth(f, x) for f, x in zip(frames, truth)])
    predicted_frames = np.stack([draw_predicted(f, x) for f, x in zip(frames, predicted)])
    path = Path(path)
    if path.suffix.lower() != ".gif":
        return save_image(comparison_strip(truth_frames, predicted_frames, columns), path)
    gap = np.full((frames.shape[1], 4, 3), GAP_COLOUR, np.uint8)
    animation = [Image.fromarray(np.concatenate([a, gap, b], axis=1))
                 for a, b in zip(truth_frames, predicted_frames)]
    return save_image(animation[0], path, save_all=True, append_images=animation[1:],
                      duration=int(round(1000 / fps)), loop=0)


def save_box_comparison(path: str | Path, frames: np.ndarray, predicted: np.ndarray, truth: np.ndarray,
                        columns: int = 8, fps: float = 8.0) -> Path:
    """Truth boxes (green) beside predicted boxes (red); .png strip or .gif animation by suffix."""
    return _save_comparison(path, frames, np.asarray(predicted), np.asarray(truth), "boxes",
                            partial(draw_box, colour=TRUTH_COLOUR),
                            partial(draw_box, colour=PREDICTION_COLOUR), columns, fps)


def save_mask_comparison(path: str | Path, frames: np.ndarray, predicted: np.ndarray, truth: np.ndarray,
                         columns: int = 8, fps: float = 8.0) -> Path:
    """Truth masks beside predicted masks (DAVIS colours); .png strip or .gif animation by suffix."""
    return _save_comparison(path, frames, np.asarray(predicted), np.asarray(truth), "masks",
                            draw_mask, draw_mask, columns, fps)


def confusion_figure_inches(num_classes: int) -> float:
    """Side of the square confusion-matrix figure: grows with the classes, 5 to 20 inches."""
    return float(min(20.0, max(5.0, 2.0 + 0.4 * num_classes)))


MATRIX_AXES = (0.2, 0.2, 0.62, 0.62)  # left, bottom, width, height as fractions of the figure


def save_confusion_matrix(path: str | Path, conf: torch.Tensor | np.ndarray, class_names: list[str] | None = None,
                          normalize: bool = True, dpi: int = 100) -> Path:
    """A PNG of the (C, C) matrix (rows truth, columns prediction), rows normalised to fractions
    unless `normalize` is False; counts are written in the cells when C <= 20. The figure is
    confusion_figure_inches(C) * dpi pixels square; the matrix fills MATRIX_AXES of it."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    conf = np.asarray(conf, dtype=np.float64)
    num_classes = conf.shape[0]
    if conf.shape != (num_classes, num_classes):
        raise ValueError(f"save_confusion_matrix: expected a square matrix, got {conf.shape}")
    names = class_names or [str(i) for i in range(num_classes)]
    if len(names) != num_classes:
        raise ValueError(f"save_confusion_matrix: {len(names)} class names for {num_classes} classes")
    rows = conf.sum(axis=1, keepdims=True)
    values = np.divide(conf, rows, out=np.zeros_like(conf), where=rows > 0) if normalize else conf
    side = confusion_figure_inches(num_classes)
    figure = Figure(figsize=(side, side), dpi=dpi)
    FigureCanvasAgg(figure)
    axes = figure.add_axes(MATRIX_AXES)
    shown = axes.imshow(values, cmap="Blues", aspect="auto", interpolation="nearest",
                        vmin=0.0, vmax=1.0 if normalize else max(values.max(), 1.0))
    figure.colorbar(shown, cax=figure.add_axes((0.86, 0.2, 0.03, 0.62)))
    ticks = range(num_classes)
    axes.set_xticks(ticks, names, rotation=90, fontsize=8)
    axes.set_yticks(ticks, names, fontsize=8)
    axes.set_xlabel("predicted")
    axes.set_ylabel("true")
    axes.set_title("confusion matrix" + (" (row-normalised)" if normalize else ""))
    if num_classes <= 20:
        for i in range(num_classes):
            for j in range(num_classes):
                axes.text(j, i, f"{int(conf[i, j])}", ha="center", va="center", fontsize=7,
                          color="white" if values[i, j] > 0.5 * shown.norm.vmax else "black")
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi)
    buffer.seek(0)
    return save_image(Image.open(buffer), path)
