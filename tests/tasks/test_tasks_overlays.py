"""Result pictures (pipeline/tasks/overlays.py): valid images, expected sizes, drawings where they belong.

    python -m pytest -q tests/tasks/test_tasks_overlays.py
"""

import numpy as np
import pytest
from PIL import Image

from pipeline.tasks import overlays
from pipeline.tasks.davis import davis_palette

T, H, W = 5, 32, 40


def dark_frames():
    return np.full((T, H, W, 3), 10, np.uint8)


def boxes(shift):
    return np.array([[4 + shift * t, 6, 20 + shift * t, 16] for t in range(T)], np.float32)


def test_draw_box_outlines_inside_the_box_edges():
    out = overlays.draw_box(dark_frames()[0], np.array([4, 6, 20, 16]), (255, 0, 0), width=2)
    red = (out == (255, 0, 0)).all(axis=-1)
    assert red[6, 4:20].all() and red[7, 4:20].all()  # top edge, 2 px thick
    assert red[6:16, 4].all() and red[6:16, 19].all() and red[15, 4:20].all()  # left, right, bottom
    assert not red[8:14, 6:18].any()  # interior untouched
    assert not red[16].any() and not red[:, 20].any() and not red[5].any()  # nothing outside
    assert red.sum() == 2 * (2 * 16) + 2 * (2 * (10 - 4))  # 16x10 box, 2-px outline


def test_draw_mask_fills_translucently_and_outlines_in_palette_colour():
    mask = np.zeros((H, W), np.uint8)
    mask[10:20, 10:20] = 2
    out = overlays.draw_mask(dark_frames()[0], mask, alpha=0.5)
    green = tuple(davis_palette()[6:9])  # id 2: (0, 128, 0)
    assert tuple(out[15, 15]) == (5, 69, 5)  # (10 + colour) / 2
    assert tuple(out[9, 9]) == green  # boundary map: half a pixel towards the origin
    assert tuple(out[0, 0]) == (10, 10, 10) and tuple(out[25, 25]) == (10, 10, 10)


def test_box_comparison_png_strip_puts_truth_above_prediction(tmp_path):
    path = overlays.save_box_comparison(tmp_path / "track.png", dark_frames(), boxes(2), boxes(0), columns=3)
    image = Image.open(path)
    image.verify()
    strip = np.asarray(Image.open(path).convert("RGB"))
    assert strip.shape == (2 * H + 4, 3 * (W + 4) - 4, 3)  # frames 0, 2, 4
    x = 2 * (W + 4)  # third column shows frame 4: predicted box shifted by 8 px
    assert tuple(strip[6, x + 4]) == overlays.TRUTH_COLOUR
    assert tuple(strip[H + 4 + 6, x + 12]) == overlays.PREDICTION_COLOUR
    assert tuple(strip[H + 4 + 6, x + 4]) == (10, 10, 10)
    assert tuple(strip[H + 1, 0]) == overlays.GAP_COLOUR
    assert sorted(p.name for p in tmp_path.iterdir()) == ["track.png"]  # no temporaries left


def test_mask_comparison_gif_animates_every_frame_side_by_side(tmp_path):
    masks = np.zeros((T, H, W), np.uint8)
    for t in range(T):  # moving, so no two frames are equal (PIL merges equal GIF frames)
        masks[t, 8:24, 8 + 2 * t:24 + 2 * t] = 1
    path = overlays.save_mask_comparison(tmp_path / "seg.gif", dark_frames(), np.zeros_like(masks), masks)
    image = Image.open(path)
    assert image.format == "GIF" and image.n_frames == T and image.size == (2 * W + 4, H)
    rgb = np.asarray(image.convert("RGB")).astype(int)
    assert rgb[16, 16, 0] > 50 and abs(rgb[16, W + 4 + 16] - 10).max() <= 8  # truth filled, prediction empty


def test_comparisons_reject_mismatched_inputs(tmp_path):
    with pytest.raises(ValueError, match="5 frames but 4 predicted boxes"):
        overlays.save_box_comparison(tmp_path / "x.png", dark_frames(), boxes(0)[:4], boxes(0))
    with pytest.raises(ValueError, match="must be uint8"):
        overlays.save_mask_comparison(tmp_path / "x.png", dark_frames().astype(float),
                                      np.zeros((T, H, W), np.uint8), np.zeros((T, H, W), np.uint8))
    with pytest.raises(ValueError, match=r"mask \(32, 41\) does not match frame \(32, 40\)"):
        overlays.save_mask_comparison(tmp_path / "x.png", dark_frames(), np.zeros((T, H, W + 1), np.uint8),
                                      np.zeros((T, H, W + 1), np.uint8))
    with pytest.raises(ValueError, match="unknown image suffix"):
        overlays.save_box_comparison(tmp_path / "x.bmpx", dark_frames(), boxes(0), boxes(0))


def test_confusion_matrix_picture_size_and_cell_shading(tmp_path):
    conf = np.array([[9, 1, 0], [0, 10, 0], [5, 0, 5]])
    path = overlays.save_confusion_matrix(tmp_path / "confusion.png", conf, ["walk", "run", "jump"], dpi=50)
    image = Image.open(path).convert("L")
    side = int(overlays.confusion_figure_inches(3) * 50)
    assert image.size == (side, side)
    pixels = np.asarray(image)
    left, bottom, width, height = overlays.MATRIX_AXES

    def cell(i, j):  # a point a quarter-cell off the centre, away from the count text
        x = (left + width * (j + 0.25) / 3) * side
        y = (1 - bottom - height + height * (i + 0.25) / 3) * side
        return int(pixels[int(y), int(x)])

    assert cell(1, 1) < cell(2, 2) < cell(0, 1) < cell(1, 0) + 1  # 1.0 darkest, 0.5, 0.1, 0 lightest
    assert cell(0, 0) < cell(2, 0) < cell(0, 2)
