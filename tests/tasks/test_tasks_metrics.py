"""Task metrics against values computed by hand on tiny arrays (pipeline/tasks/metrics.py).

    python -m pytest -q tests/tasks/test_tasks_metrics.py
"""

import math

import numpy as np
import pytest
import torch

from pipeline.tasks import metrics as M


def test_topk_accuracy_counts_label_among_k_best():
    scores = torch.tensor([[0.1, 0.5, 0.4], [0.8, 0.1, 0.1], [0.2, 0.3, 0.5]])
    labels = torch.tensor([2, 0, 0])
    acc = M.topk_accuracy(scores, labels, ks=(1, 2, 5))
    assert acc["top1"] == pytest.approx(1 / 3)
    assert acc["top2"] == pytest.approx(2 / 3)
    assert acc["top5"] == pytest.approx(1.0)  # k capped at the 3 classes


def test_aggregate_views_averages_softmax_per_key_in_first_seen_order():
    logits = torch.tensor([[0.0, 0.0], [math.log(3), 0.0], [0.0, math.log(4)]])
    keys, probs = M.aggregate_views(logits, ["b", "b", "a"])
    assert keys == ["b", "a"]
    torch.testing.assert_close(probs, torch.tensor([[0.625, 0.375], [0.2, 0.8]]))
    with pytest.raises(ValueError, match="3 views but 2 keys"):
        M.aggregate_views(logits, ["a", "b"])


def test_confusion_matrix_per_class_accuracy_and_iou():
    pred = torch.tensor([0, 1, 1, 2, 2, 2, 0])
    target = torch.tensor([0, 1, 2, 2, 2, 1, 255])
    conf = M.confusion_matrix(pred, target, 3, ignore_index=255)
    assert conf.tolist() == [[1, 0, 0], [0, 1, 1], [0, 1, 2]]
    torch.testing.assert_close(M.per_class_accuracy(conf), torch.tensor([1.0, 0.5, 2 / 3], dtype=torch.float64))
    torch.testing.assert_close(M.class_iou(conf), torch.tensor([1.0, 1 / 3, 0.5], dtype=torch.float64))
    assert M.mean_iou(conf) == pytest.approx((1 + 1 / 3 + 0.5) / 3)
    assert M.mean_class_accuracy(conf) == pytest.approx((1 + 0.5 + 2 / 3) / 3)


def test_absent_class_is_nan_and_left_out_of_means():
    conf = M.confusion_matrix(np.array([[0, 1], [1, 1]]), np.array([[0, 1], [1, 0]]), 3)
    assert conf.tolist() == [[1, 1, 0], [0, 2, 0], [0, 0, 0]]
    assert math.isnan(M.class_iou(conf)[2]) and math.isnan(M.per_class_accuracy(conf)[2])
    assert M.mean_iou(conf) == pytest.approx((0.5 + 2 / 3) / 2)


def test_confusion_matrix_rejects_labels_out_of_range():
    with pytest.raises(ValueError, match=r"target label outside \[0, 2\)"):
        M.confusion_matrix(torch.tensor([0, 1]), torch.tensor([0, 7]), 2)


def square(size=5, rows=(1, 3), cols=(1, 3)):
    m = torch.zeros(size, size, dtype=torch.bool)
    m[rows[0]:rows[1], cols[0]:cols[1]] = True
    return m


def test_region_iou_and_empty_masks():
    pred, truth = square(4, (0, 2), (0, 2)), square(4, (0, 2), (0, 3))
    assert M.region_iou(pred, truth).item() == pytest.approx(4 / 6)
    empty = torch.zeros(4, 4, dtype=torch.bool)
    assert M.region_iou(empty, empty).item() == 1.0
    assert M.region_iou(empty, truth).item() == 0.0


def test_boundary_map_is_the_half_pixel_shifted_ring():
    expected = torch.tensor([[1, 1, 1, 0, 0],
                             [1, 0, 1, 0, 0],
                             [1, 1, 1, 0, 0],
                             [0, 0, 0, 0, 0],
                             [0, 0, 0, 0, 0]], dtype=torch.bool)
    assert torch.equal(M.boundary_map(square()), expected)
    # a mask touching the last row/column: those use only the east / south neighbour
    full = torch.ones(3, 3, dtype=torch.bool)
    assert M.boundary_map(full).sum() == 0


def test_disk_dilation_uses_a_round_structuring_element():
    dot = torch.zeros(1, 7, 7, dtype=torch.bool)
    dot[0, 3, 3] = True
    assert M.disk_dilate(dot, 1).sum() == 5  # plus shape
    assert M.disk_dilate(dot, 2).sum() == 13  # x^2 + y^2 <= 4
    assert not M.disk_dilate(dot, 2)[0, 1, 1]  # corner (dx, dy) = (2, 2) lies outside


@pytest.mark.parametrize("radius", [0, 1, 3, 8])
def test_disk_dilation_equals_the_convolution_definition(radius):
    masks = torch.rand(2, 30, 41, generator=torch.Generator().manual_seed(radius)) > 0.97
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float32)
    disk = ((offsets[:, None] ** 2 + offsets[None, :] ** 2) <= radius ** 2).float()
    expected = torch.nn.functional.conv2d(masks[:, None].float(), disk[None, None], padding=radius)[:, 0] > 0
    assert torch.equal(M.disk_dilate(masks, radius), expected)


def test_boundary_f_matches_within_the_tolerance_only():
    truth = square()[None]
    shifted = square(cols=(2, 4))[None]
    # rings of 8 pixels sharing 4: precision = recall = 1/2 with no tolerance, all matched within 1 px
    assert M.boundary_f(shifted, truth, tolerance=0).item() == pytest.approx(0.5)
    assert M.boundary_f(shifted, truth, tolerance=1).item() == pytest.approx(1.0)
    empty = torch.zeros_like(truth)
    assert M.boundary_f(empty, truth, tolerance=1).item() == 0.0
    assert M.boundary_f(truth, empty, tolerance=1).item() == 0.0
    assert M.boundary_f(empty, empty, tolerance=1).item() == 1.0
    assert M.boundary_tolerance(480, 854) == 8  # ceil(0.008 * 979.6)


def test_davis_sequence_scores_objects_from_first_frame_and_skips_ends():
    truth = torch.zeros(3, 4, 4, dtype=torch.uint8)
    truth[:, :, 0] = 1
    truth[:, :, 3] = 2
    truth[0, 0, 1] = 255  # void is not an object
    pred = torch.zeros_like(truth)
    pred[1, :, :2] = 1  # frame 1: object 1 twice too wide, object 2 missing
    pred[0] = truth[0]  # frames 0 and 2 are not evaluated
    scores = M.davis_sequence_scores(pred, truth)
    assert scores["J"].shape == (2, 1)
    assert scores["J"][:, 0].tolist() == pytest.approx([0.5, 0.0])
    assert scores["F"][1, 0].item() == 0.0
    perfect = M.davis_sequence_scores(truth, truth, skip_first_last=False)
    assert perfect["J"].shape == (2, 3) and bool((perfect["J"] == 1).all()) and bool((perfect["F"] == 1).all())
    with pytest.raises(ValueError, match="at least 3"):
        M.davis_sequence_scores(truth[:2], truth[:2])


def test_davis_summary_averages_over_objects_not_sequences():
    one = {"J": torch.tensor([[1.0, 0.5]]), "F": torch.tensor([[1.0, 1.0]])}
    two = {"J": torch.tensor([[0.0, 0.0], [1.0, 1.0]]), "F": torch.tensor([[0.5, 0.5], [0.0, 0.0]])}
    summary = M.davis_summary([one, two])
    assert summary["J"] == pytest.approx((0.75 + 0 + 1) / 3)
    assert summary["F"] == pytest.approx((1 + 0.5 + 0) / 3)
    assert summary["J&F"] == pytest.approx((summary["J"] + summary["F"]) / 2)
    assert summary["objects"] == 3


def test_otb_success_auc_and_precision():
    truth = torch.tensor([[0.0, 0, 10, 10]] * 5)
    truth[4] = float("nan")  # missing truth: frame skipped
    pred = torch.tensor([[0.0, 0, 10, 10], [5, 0, 15, 10], [20, 20, 30, 30], [0, 0, 10, 5], [0, 0, 1, 1]])
    torch.testing.assert_close(M.paired_box_iou(pred[:4], truth[:4]),
                               torch.tensor([1.0, 1 / 3, 0.0, 0.5]))
    thresholds, success = M.success_curve(pred, truth)
    assert thresholds.numel() == 21 and thresholds[-1] == 1.0
    # IoU > t: 3 frames for t <= 0.30 (7 points), 2 for 0.35-0.45 (3), 1 for 0.5-0.95 (10), 0 at 1.0
    assert M.success_auc(pred, truth) == pytest.approx((0.75 * 7 + 0.5 * 3 + 0.25 * 10) / 21)
    # centre errors 0, 5, 28.3, 2.5
    assert M.precision_at(pred, truth, 20) == pytest.approx(0.75)
    assert M.precision_at(pred, truth, 4) == pytest.approx(0.5)
