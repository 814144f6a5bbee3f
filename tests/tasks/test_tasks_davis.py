"""DAVIS-2017 layout reading and writing (pipeline/tasks/davis.py).

    python -m pytest -q tests/tasks/test_tasks_davis.py
"""

import numpy as np
import pytest
from PIL import Image

from pipeline.tasks import davis


def make_davis(root, name="seq", frames=4, height=24, width=32, split="val"):
    """A small DAVIS folder: flat-colour frames, a square object (id 1) and a bar (id 2)."""
    masks = np.zeros((frames, height, width), np.uint8)
    for t in range(frames):
        masks[t, 4:12, 2 + 2 * t:10 + 2 * t] = 1
        masks[t, 16:20, :] = 2
    frame_dir = root / davis.FRAME_DIR / "480p" / name
    frame_dir.mkdir(parents=True)
    for t in range(frames):
        Image.fromarray(np.full((height, width, 3), 40 * t, np.uint8)).save(frame_dir / f"{t:05d}.jpg")
    davis.write_masks(root, name, masks)
    sets = root / davis.SETS_DIR / "2017"
    sets.mkdir(parents=True, exist_ok=True)
    (sets / f"{split}.txt").write_text(f"{name}\n")
    return masks


def test_round_trip_reads_frames_masks_and_split(tmp_path):
    masks = make_davis(tmp_path)
    assert davis.sequence_names(tmp_path, "val") == ["seq"]
    seq = davis.read_sequence(tmp_path, "seq")
    assert seq.frames.shape == (4, 24, 32, 3) and seq.frames.dtype == np.uint8
    assert seq.frame_names == ["00000", "00001", "00002", "00003"]
    np.testing.assert_array_equal(seq.masks, masks)
    assert abs(int(seq.frames[2].mean()) - 80) <= 2  # JPEG is lossy


def test_written_masks_are_palette_pngs_with_davis_colours(tmp_path):
    make_davis(tmp_path)
    image = Image.open(tmp_path / "Annotations/480p/seq/00001.png")
    assert image.mode == "P"
    rgb = np.asarray(image.convert("RGB"))
    assert tuple(rgb[5, 5]) == (128, 0, 0) and tuple(rgb[17, 0]) == (0, 128, 0)
    assert davis.davis_palette()[3 * 3:3 * 4] == (128, 128, 0)


def test_write_masks_replaces_a_sequence_whole_and_leaves_no_temporaries(tmp_path):
    make_davis(tmp_path)
    out = tmp_path / "pred"
    davis.write_masks(out, "seq", np.ones((3, 8, 8), np.uint8))
    folder = davis.write_masks(out, "seq", np.zeros((2, 8, 8), np.uint8), ["00000", "00001"])
    assert sorted(p.name for p in folder.iterdir()) == ["00000.png", "00001.png"]
    assert [p.name for p in folder.parent.iterdir()] == ["seq"]
    with pytest.raises(davis.DavisError, match="masks must be \\(T, H, W\\) uint8"):
        davis.write_masks(out, "seq", np.zeros((2, 8, 8), np.int64))


def test_missing_frame_is_named(tmp_path):
    make_davis(tmp_path)
    (tmp_path / "JPEGImages/480p/seq/00002.jpg").unlink()
    with pytest.raises(davis.DavisError, match=r"'seq': frame 00002.jpg missing .* \(found 00003.jpg next\)"):
        davis.read_sequence(tmp_path, "seq")


def test_missing_annotation_is_named(tmp_path):
    make_davis(tmp_path)
    (tmp_path / "Annotations/480p/seq/00003.png").unlink()
    with pytest.raises(davis.DavisError, match=r"00003.jpg has no matching annotation \(4 frames, 3 annotations\)"):
        davis.read_sequence(tmp_path, "seq")


def test_size_mismatch_is_named(tmp_path):
    make_davis(tmp_path)
    Image.fromarray(np.zeros((24, 30, 3), np.uint8)).save(tmp_path / "JPEGImages/480p/seq/00001.jpg")
    with pytest.raises(davis.DavisError, match=r"00001.jpg is 30x24, expected 32x24"):
        davis.read_sequence(tmp_path, "seq")


def test_rgb_annotation_and_unreadable_file_are_named(tmp_path):
    make_davis(tmp_path)
    path = tmp_path / "Annotations/480p/seq/00001.png"
    Image.fromarray(np.zeros((24, 32, 3), np.uint8)).save(path)
    with pytest.raises(davis.DavisError, match=r"00001.png has mode RGB, expected a palette \(P\) PNG"):
        davis.read_sequence(tmp_path, "seq")
    path.write_bytes(b"not a png")
    with pytest.raises(davis.DavisError, match=r"'seq': cannot read .*00001.png"):
        davis.read_sequence(tmp_path, "seq")


def test_missing_sequence_and_split_are_named(tmp_path):
    make_davis(tmp_path)
    with pytest.raises(davis.DavisError, match=r"'nope': frame folder .*JPEGImages/480p/nope not found"):
        davis.read_sequence(tmp_path, "nope")
    with pytest.raises(davis.DavisError, match=r"split 'train': .*ImageSets/2017/train.txt not found"):
        davis.sequence_names(tmp_path, "train")
