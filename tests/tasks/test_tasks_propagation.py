"""Label propagation (pipeline/tasks/propagation.py) and per-frame features (features.py).

    python -m pytest -q tests/tasks/test_tasks_propagation.py
"""

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.models import create_model
from pipeline.models.base import BackboneOutput, VideoBackbone
from pipeline.objectives.common import patchify
from pipeline.tasks import davis, propagation
from pipeline.tasks.features import frame_features, sequence_features, to_model_input, tokens_to_grid
from pipeline.tasks.propagation import PropagationConfig

CELL = 8


class PatchPixels(VideoBackbone):
    """The identity encoder: a token is the raw pixels of its 1x8x8 patch."""

    def __init__(self):
        super().__init__()
        self.patch_size, self.embed_dim, self.num_frames, self.img_size = (1, CELL, CELL), 3 * CELL * CELL, 1, 64

    def forward(self, video, mask=None, return_layers=()):
        tokens = patchify(video, self.patch_size)
        return BackboneOutput(tokens, self.token_grid(*video.shape[2:]), tokens.mean(1))


def moving_square(frames=6, cells=10, side=4, seed=0):
    """Static dark random background; a bright random side x side-cell object moving 1 cell/frame
    right. (Textures of one brightness range would make the background it uncovers, never seen
    before, as similar to the object as to the background.)

    Bilinear upsampling of the cell labels rounds the object's corners by a few pixels each, so
    a perfect propagation scores J = 1 - 24 / 32^2 here, not 1.
    """
    rng = np.random.default_rng(seed)
    size = cells * CELL
    background = rng.integers(0, 96, (size, size, 3), dtype=np.uint8)
    texture = rng.integers(160, 256, (side * CELL, side * CELL, 3), dtype=np.uint8)
    video = np.repeat(background[None], frames, 0)
    masks = np.zeros((frames, size, size), np.uint8)
    for t in range(frames):
        rows, cols = slice(3 * CELL, (3 + side) * CELL), slice(t * CELL, (t + side) * CELL)
        video[t, rows, cols] = texture
        masks[t, rows, cols] = 1
    return video, masks


def test_identity_encoder_follows_the_moving_object():
    frames, masks = moving_square()
    config = PropagationConfig(context=3, topk=5, temperature=0.07, radius=3)
    predicted = propagation.segment_sequence(PatchPixels(), frames, masks[0], config)
    assert predicted.shape == masks.shape and predicted.dtype == np.uint8
    # exactly what upsampling the true cell labels gives: the propagation itself made no error
    grid = (masks.shape[1] // CELL, masks.shape[2] // CELL)
    true_cells = torch.stack([propagation.grid_labels(torch.as_tensor(m), grid) for m in masks])
    np.testing.assert_array_equal(predicted[1:], propagation.masks_from_labels(true_cells, masks.shape[1:])[1:])
    scores = propagation.davis_sequence_scores(predicted, masks)
    assert scores["J"].min() == pytest.approx(1 - 24 / 32 ** 2) and scores["F"].min() > 0.9


def test_evaluate_sequence_from_a_davis_folder(tmp_path):
    frames, masks = moving_square(seed=1)
    davis.write_masks(tmp_path, "square", masks)
    folder = tmp_path / davis.FRAME_DIR / "480p" / "square"
    folder.mkdir(parents=True)
    for t, frame in enumerate(frames):
        Image.fromarray(frame).save(folder / f"{t:05d}.jpg", quality=95)
    result = propagation.evaluate_sequence(PatchPixels(), davis.read_sequence(tmp_path, "square"),
                                           PropagationConfig(context=3, radius=3))
    summary = propagation.summarize([result])
    assert summary["objects"] == 1 and summary["J&F"] > 0.9 and result.summary == summary


def test_neighbourhood_limit_rejects_a_far_away_twin():
    """Frame 1's object matches a background twin at the far side exactly and itself only roughly;
    without a radius the best match is the twin (label 0), within the radius only itself (label 1)."""
    torch.manual_seed(0)
    dim, h, w = 16, 1, 8
    object_feature = torch.randn(dim)
    frame0 = torch.randn(w, dim)
    frame0[0] = object_feature + 0.5 * torch.randn(dim)
    frame0[7] = object_feature  # the twin, background
    frame1 = frame0.clone()
    frame1[0] = object_feature
    features = torch.stack([frame0, frame1]).transpose(1, 2).reshape(2, dim, h, w)
    first = torch.zeros(1, w, dtype=torch.uint8)
    first[0, 0] = 1
    labels0 = propagation.grid_labels(first, (h, w))
    far = propagation.propagate(features, labels0, PropagationConfig(context=0, topk=1, radius=-1))
    near = propagation.propagate(features, labels0, PropagationConfig(context=0, topk=1, radius=2))
    assert far[1].argmax(0)[0, 0] == 0 and near[1].argmax(0)[0, 0] == 1


def test_neighbourhood_is_a_square_window():
    near = propagation.neighbourhood((3, 4), 1)
    assert near.shape == (12, 12)
    assert near[0].view(3, 4).tolist() == [[True, True, False, False], [True, True, False, False],
                                           [False, False, False, False]]
    assert propagation.neighbourhood((3, 4), -1) is None


def test_grid_labels_area_average_and_void_as_background():
    mask = torch.zeros(4, 4, dtype=torch.uint8)
    mask[:2, :1] = 1
    mask[3, 3] = 255
    labels = propagation.grid_labels(mask, (2, 2))
    assert labels.shape == (2, 2, 2)
    assert labels[1].tolist() == [[0.5, 0.0], [0.0, 0.0]] and labels[0, 1, 1] == 1.0


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="temperature > 0"):
        PropagationConfig(temperature=0)


def test_frame_features_encode_each_frame_alone_with_a_real_backbone():
    torch.manual_seed(0)
    encoder = create_model("mvit_tiny", num_frames=8, img_size=64, stem_dim=16).eval()
    frames = to_model_input(np.random.default_rng(0).integers(0, 256, (3, 64, 96, 3), dtype=np.uint8))
    with torch.no_grad():
        maps = frame_features(encoder, frames, batch_size=2)
        alone = frame_features(encoder, frames[1:2])
    assert maps.shape == (3, encoder.num_features, 2, 3)
    torch.testing.assert_close(maps[1:2], alone, atol=1e-5, rtol=1e-4)


def motion_vit(**kw):
    torch.manual_seed(0)
    return create_model("vit_tiny_joint", num_frames=4, img_size=32, patch_size=(2, 8, 8), depth=2,
                        input_transform="frame_diff", **kw).eval()


def test_sequence_features_give_each_frame_its_tubelet_in_the_window_ending_at_it():
    encoder = motion_vit()
    frames = torch.randn(7, 3, 32, 32)
    with torch.no_grad():
        maps = sequence_features(encoder, frames, batch_size=8)
        grid = lambda clip: tokens_to_grid(encoder(clip.transpose(0, 1)[None]))[0]
        first = grid(frames[0:4])       # frames 0-3 all take the first window (0, 1 | 2, 3)
        late = [grid(frames[f - 3:f + 1])[:, -1] for f in range(3, 7)]  # then the last tubelet
    assert maps.shape == (7, encoder.num_features, 4, 4)
    for f in range(3):
        torch.testing.assert_close(maps[f], first[:, f // 2], atol=1e-5, rtol=1e-4)
    for f in range(3, 7):
        torch.testing.assert_close(maps[f], late[f - 3], atol=1e-5, rtol=1e-4)


def test_sequence_features_of_a_motion_encoder_see_motion_not_stills():
    encoder = motion_vit(stem="conv")
    frames = torch.randn(6, 3, 32, 32)
    still = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        maps = sequence_features(encoder, frames)
        assert not torch.allclose(maps[4], maps[5], atol=1e-3)
        torch.testing.assert_close(sequence_features(encoder, frames + still), maps, atol=1e-4, rtol=1e-4)
        short = sequence_features(encoder, frames[:3])  # shorter than the 4-frame window: padded
    assert short.shape == (3, encoder.num_features, 4, 4)


def test_motion_encoders_refuse_single_frames():
    encoder = motion_vit()
    with pytest.raises(ValueError, match="a single frame gives it nothing"):
        frame_features(encoder, torch.randn(2, 3, 32, 32))
    with pytest.raises(ValueError, match="needs at least 2 frames, got 1"):
        sequence_features(encoder, torch.randn(1, 3, 32, 32))


def test_propagation_runs_a_motion_encoder_on_windows_of_the_video():
    frames, masks = moving_square(frames=5, cells=8, side=2)
    encoder = motion_vit()
    predicted = propagation.segment_sequence(encoder, frames, masks[0], PropagationConfig(context=2))
    assert predicted.shape == masks.shape and (predicted[0] == masks[0]).all()


def test_sequence_features_of_an_appearance_encoder_are_its_frame_features():
    torch.manual_seed(0)
    encoder = create_model("vit_tiny_joint", num_frames=4, img_size=32, patch_size=(2, 8, 8), depth=2).eval()
    frames = torch.randn(5, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(sequence_features(encoder, frames), frame_features(encoder, frames))


def test_tokens_to_grid_refuses_visible_only_tokens():
    out = BackboneOutput(torch.zeros(1, 5, 4), (1, 2, 3), torch.zeros(1, 4))
    with pytest.raises(ValueError, match="5 tokens do not fill the 1x2x3 grid"):
        tokens_to_grid(out)
