"""What a fine-tune trains on: the labelled subset (task.label_fraction) and clip-consistent mixing.

    python -m pytest -q tests/tasks/test_finetune_data.py
"""

from __future__ import annotations

import json
import tarfile
from collections import Counter

import pytest
import torch

from pipeline.data.shard_format import SampleMeta, read_manifest
from pipeline.tasks.label_subset import chosen_keys, write_label_subset
from pipeline.tasks.mixing import ClipMixer, cutmix_box, one_hot_targets, soft_cross_entropy
from pipeline.testing.shards import write_shards


def population(per_class: dict[int, int]) -> list[tuple[str, int]]:
    return [(f"vid{label}_{i:04d}", label) for label, n in per_class.items() for i in range(n)]


def test_label_fraction_is_balanced_deterministic_and_nested():
    samples = population({0: 100, 1: 40, 2: 7, 3: 1}) + [("unlabelled", -1)]
    kept = chosen_keys(samples, 0.1, seed=0)
    per_class = Counter(label for key, label in samples if key in kept)
    assert per_class == {0: 10, 1: 4, 2: 1, 3: 1}  # round(fraction * n), at least one
    assert "unlabelled" not in kept
    assert chosen_keys(list(reversed(samples)), 0.1, seed=0) == kept  # order of reading is irrelevant
    assert kept < chosen_keys(samples, 0.3, seed=0)  # a larger fraction keeps a superset
    assert chosen_keys(samples, 0.1, seed=1) != kept  # the seed picks another subset
    assert chosen_keys(samples, 1.0) == {k for k, label in samples if label >= 0}


def test_label_subset_shards_hold_exactly_the_chosen_samples(tmp_path):
    keys = write_shards(tmp_path / "src", [7, 6])
    labels = {}
    for shard in sorted((tmp_path / "src").glob("*.tar")):
        with tarfile.open(shard) as tar:
            for member in tar.getmembers():
                if member.name.endswith(".json"):
                    key = member.name.split(".")[0]
                    labels[key] = SampleMeta.from_json(tar.extractfile(member).read()).label
    folder = write_label_subset(str(tmp_path / "src"), "", tmp_path / "subset", 0.5, seed=3)
    expected = chosen_keys([(k, labels[k]) for k in keys], 0.5, seed=3)
    manifest = read_manifest(folder)
    assert manifest.classes == [f"c{i}" for i in range(5)] and manifest.totals["samples"] == len(expected)
    got, payload = [], {}
    for entry in manifest.shards:
        with tarfile.open(folder / entry.name) as tar:
            members = tar.getmembers()
            got += list(dict.fromkeys(m.name.split(".")[0] for m in members))
            payload.update({m.name: tar.extractfile(m).read() for m in members})
    assert got == [k for k in keys if k in expected]  # original order, nothing else
    with tarfile.open(tmp_path / "src" / "train-000000.tar") as tar:
        original = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
    assert all(payload[name] == data for name, data in original.items() if name in payload)
    stamp = (folder / "train-000000.tar").stat().st_mtime_ns
    write_label_subset(str(tmp_path / "src"), "", tmp_path / "subset", 0.5, seed=3)
    assert (folder / "train-000000.tar").stat().st_mtime_ns == stamp  # a matching subset is reused
    assert json.loads((folder / "subset.json").read_text())["keys"] == len(expected)
    other = write_label_subset(str(tmp_path / "src"), "", tmp_path / "subset", 0.5, seed=4)
    assert json.loads((other / "subset.json").read_text())["seed"] == 4  # a different one is rewritten
    assert not list(tmp_path.glob(".subset*"))  # no staging folder left behind


def clips(batch=4, frames=6, size=16):
    torch.manual_seed(0)
    return torch.randn(batch, 3, frames, size, size), torch.tensor([0, 1, 2, 3])


def test_cutmix_pastes_one_box_into_every_frame_and_weights_targets_by_its_area():
    video, labels = clips()
    torch.manual_seed(5)
    mixed, targets = ClipMixer(4, cutmix_alpha=1.0)(video, labels)
    inside = (mixed == video.flip(0)) & (mixed != video)
    box = inside[0, 0, 0]
    assert box.any() and not box.all()
    assert all(torch.equal(inside[b, c, t], box) for b in range(4) for c in range(3) for t in range(6))
    rows, cols = box.nonzero()[:, 0], box.nonzero()[:, 1]
    assert box.sum() == (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)  # a rectangle
    lam = 1 - box.float().mean().item()
    torch.testing.assert_close(targets[0], torch.tensor([lam, 0, 0, 1 - lam]))
    torch.testing.assert_close(targets.sum(dim=1), torch.ones(4))


def test_mixup_blends_whole_clips_and_the_draws_replay_from_the_torch_seed():
    video, labels = clips()
    mixer = ClipMixer(4, mixup_alpha=0.8, smoothing=0.1)
    torch.manual_seed(1)
    mixed, targets = mixer(video, labels)
    lam = ((mixed - video.flip(0)) / (video - video.flip(0)))[0].median().item()
    torch.testing.assert_close(mixed, video * lam + video.flip(0) * (1 - lam), atol=1e-5, rtol=1e-4)
    smooth = one_hot_targets(labels, 4, 0.1)
    torch.testing.assert_close(targets, smooth * lam + smooth.flip(0) * (1 - lam), atol=1e-5, rtol=1e-4)
    torch.manual_seed(1)
    again, _ = mixer(video, labels)
    assert torch.equal(again, mixed)
    assert ClipMixer(4, mixup_alpha=0.8, prob=0.0)(video, labels)[0] is video


def test_cutmix_box_is_clipped_to_the_frame_and_soft_cross_entropy_matches_torch():
    torch.manual_seed(0)
    for lam in (0.0, 0.3, 0.9):
        y0, y1, x0, x1 = cutmix_box(10, 12, lam)
        assert 0 <= y0 <= y1 <= 10 and 0 <= x0 <= x1 <= 12
    logits, labels = torch.randn(5, 7), torch.tensor([0, 3, 6, 2, 2])
    torch.testing.assert_close(soft_cross_entropy(logits, one_hot_targets(labels, 7, 0.2)),
                               torch.nn.functional.cross_entropy(logits, labels, label_smoothing=0.2))


@pytest.mark.parametrize("fraction", [0.0, 1.5])
def test_label_fraction_outside_range_is_a_config_error(fraction):
    from pipeline.config import ConfigError, FinetuneConfig, load_config

    with pytest.raises(ConfigError, match="task.label_fraction: must be in \\(0, 1\\]"):
        load_config(FinetuneConfig, None, [f"task.label_fraction={fraction}"])


def test_ranks_writing_the_same_subset_at_once_all_get_it(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    write_shards(tmp_path / "src", [8])
    write_label_subset(str(tmp_path / "src"), "", tmp_path / "subset", 0.9, seed=0)  # a stale one to replace
    with ThreadPoolExecutor(4) as pool:
        folders = list(pool.map(lambda _: write_label_subset(str(tmp_path / "src"), "", tmp_path / "subset", 0.5),
                                range(4)))
    assert all(f == tmp_path / "subset" for f in folders)
    assert json.loads((tmp_path / "subset" / "subset.json").read_text())["fraction"] == 0.5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src", "subset"]
