"""Frozen evaluation (pipeline/probe): k-NN on hand-computed cases, the grid optimizer against
torch's AdamW, held-out selection that never looks at the reported split, probes that learn what
they should, the feature cache, and `vssl probe` end to end."""

from __future__ import annotations

import json
import math

import pytest
import torch

from pipeline.cli import main as vssl
from pipeline.config import ProbeConfig, load_config
from pipeline.models import create_model
from pipeline.models.checkpoint import save_backbone
from pipeline.probe import features as feats
from pipeline.probe.attentive import attentive_grid
from pipeline.probe.grid import GridAdamW, grid, holdout_rows, top1, train_grid, view_scores
from pipeline.probe.knn import knn_predict, knn_scores, video_vectors
from pipeline.probe.linear import linear_grid
from pipeline.probe.run import grid_probe
from pipeline.testing.shards import write_shards

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def _unit(*angles_deg: float) -> torch.Tensor:
    a = torch.tensor(angles_deg) * math.pi / 180
    return torch.stack([a.cos(), a.sin()], dim=1)


def test_knn_votes_are_temperature_weighted_similarities():
    # the query at 0 deg; one class-0 neighbour at 10 deg, two class-1 neighbours at 60 and 70 deg
    bank, labels, query = _unit(10, 60, 70, 180), torch.tensor([0, 1, 1, 0]), _unit(0)
    cos = torch.cos(torch.tensor([10.0, 60.0, 70.0]) * math.pi / 180)
    for temperature in (0.07, 1.0):
        w = (cos / temperature).exp()
        expected = torch.tensor([[w[0], w[1] + w[2]]])
        torch.testing.assert_close(knn_scores(bank, labels, query, 3, temperature, 2), expected)
    # sharp votes: the single close neighbour wins; flat votes: the two farther ones do
    assert knn_predict(bank, labels, query, 3, 0.07, 2).item() == 0
    assert knn_predict(bank, labels, query, 3, 1.0, 2).item() == 1
    assert knn_predict(bank, labels, query, 1, 1.0, 2).item() == 0  # k=1: the nearest alone
    # views are averaged after normalising each, then normalised again
    views = torch.tensor([[[2.0, 0.0], [0.0, 5.0]]])
    torch.testing.assert_close(video_vectors(views), torch.tensor([[1.0, 1.0]]) / math.sqrt(2))


def test_holdout_is_per_class_by_key_hash_and_never_a_whole_class():
    labels = torch.tensor([0] * 10 + [1] * 5 + [2])
    keys = [f"video{i}" for i in range(16)]
    held = holdout_rows(labels, keys, 0.2)
    assert [int(held[labels == c].sum()) for c in range(3)] == [2, 1, 0]
    shuffled = list(reversed(range(16)))  # the same videos, listed in another order
    again = holdout_rows(labels[shuffled], [keys[i] for i in shuffled], 0.2)
    assert {keys[i] for i in shuffled if again[shuffled.index(i)]} == {keys[i] for i in range(16) if held[i]}


def test_grid_adamw_is_torch_adamw_per_member():
    torch.manual_seed(0)
    start = torch.randn(2, 3, 4)
    lrs, wds = torch.tensor([1e-2, 3e-2]), torch.tensor([0.0, 0.1])
    batched = start.clone().requires_grad_(True)
    optimizer = GridAdamW([batched], lrs, wds)
    singles = [start[g].clone().requires_grad_(True) for g in range(2)]
    references = [torch.optim.AdamW([singles[g]], lr=float(lrs[g]), weight_decay=float(wds[g])) for g in range(2)]
    for step in range(5):
        target = torch.randn(3, 4)
        ((batched - target) ** 2).sum().backward()
        optimizer.step(1.0)
        for g in range(2):
            ((singles[g] - target) ** 2).sum().backward()
            references[g].step()
            references[g].zero_grad()
    for g in range(2):
        torch.testing.assert_close(batched[g].detach(), singles[g].detach())


def _separable(n: int, dim: int = 16, classes: int = 4, views: int = 2, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % classes
    centres = torch.randn(classes, dim, generator=gen) * 3
    x = centres[labels][:, None] + 0.5 * torch.randn(n, views, dim, generator=gen) + 10.0  # a shared offset
    return x, labels


def test_linear_probe_grid_learns_and_members_train_apart():
    x, labels = _separable(80)
    lrs, wds = grid([1e-6, 1e-2], [0.0])
    forward, params = linear_grid(x.reshape(-1, x.shape[-1]), 4, len(lrs))
    train_grid(forward, params, x.reshape(-1, x.shape[-1]), labels.repeat_interleave(2), lrs, wds, 30, 32, 0)
    held_x, held_labels = _separable(40, seed=0)
    assert top1(view_scores(forward, params, held_x), held_labels)[1] == 1.0
    norms = params["weight"].flatten(1).norm(dim=1)
    assert norms[1] > 100 * norms[0]  # each member moved at its own learning rate


def _feature_set(x, labels, tokens=None):
    return feats.FeatureSet(x, tokens, labels, [f"v{i}" for i in range(len(labels))])


def test_grid_choice_never_looks_at_the_reported_split():
    x, labels = _separable(64)
    test_x, test_labels = _separable(32, seed=0)
    cfg = load_config(ProbeConfig, None, ["probe.linear_epochs=20", "probe.batch_size=32",
                                          "probe.linear_lrs=[1e-6, 1e-3, 1e-2]", "probe.linear_weight_decays=[0.0]"])
    report = grid_probe("linear", _feature_set(x, labels), _feature_set(test_x, test_labels), 4, cfg)
    scrambled = grid_probe("linear", _feature_set(x, labels), _feature_set(test_x, test_labels.roll(1)), 4, cfg)
    assert report["lr"] == scrambled["lr"] and report["grid"] == scrambled["grid"]
    held = [member["holdout_top1"] for member in report["grid"]]
    assert report["lr"] == report["grid"][held.index(max(held))]["lr"]  # the first best on held-out labels
    assert report["top1"] == 1.0 and scrambled["top1"] < 0.5


def test_attentive_probe_grid_finds_the_one_informative_token():
    """The class is written in one token at a random position among 15 noise tokens; pooled
    features would dilute it 16 times, attention picks it out."""
    gen = torch.Generator().manual_seed(0)
    n, tokens, dim, classes = 256, 16, 32, 4
    labels = torch.arange(n) % classes
    x = torch.randn(n, 1, tokens, dim, generator=gen)
    where = torch.randint(0, tokens, (n,), generator=gen)
    x[torch.arange(n), 0, where, :classes] += 6 * torch.nn.functional.one_hot(labels, classes).float()
    x[torch.arange(n), 0, where, -1] += 6  # the informative token is marked
    lrs, wds = grid([3e-3, 1e-2], [0.01])
    forward, params = attentive_grid(dim, classes, len(lrs), seed=0)
    train_grid(forward, params, x[:192, 0], labels[:192], lrs, wds, 40, 32, 0)
    assert top1(view_scores(forward, params, x[192:]), labels[192:]).min() >= 0.95


def test_pool_grid_averages_space_then_time():
    tokens = torch.arange(4 * 4 * 4, dtype=torch.float32).reshape(1, 64, 1)
    pooled = feats.pool_grid(tokens, (4, 4, 4), 16)  # 4x4x4 -> 4x2x2
    assert pooled.shape == (1, 16, 1)
    torch.testing.assert_close(pooled[0, 0, 0], tokens.reshape(4, 4, 4)[0, :2, :2].mean())
    assert feats.pool_grid(tokens, (4, 4, 4), 2).shape == (1, 2, 1)  # then 1x1 in space, time halved
    assert feats.pool_grid(tokens, (4, 4, 4), 64) is tokens


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("probe")
    write_shards(root / "train", [10, 10], split="train", num_frames=8, size=32)
    write_shards(root / "val", [10], split="val", num_frames=8, size=32)
    return root


def _recipe(tmp_path, shards, methods="[knn, linear, attentive]") -> list[str]:
    return [f"data.shards={shards / 'train'}::{shards / 'val'}", "data.num_frames=8", "data.frame_stride=1",
            "data.crop=center", "data.crop_size=32", "data.batch_size=4", "data.num_workers=0",
            "data.mask_type=none", "data.decode_timeout_s=0", "data.eval_clips=2", "model.name=vit_tiny_joint",
            "model.overrides={embed_dim: 32, depth: 1, num_heads: 2, patch_size: [2, 8, 8]}",
            f"probe.methods={methods}", "probe.linear_epochs=5", "probe.attentive_epochs=2", "probe.max_tokens=8",
            f"probe.output_dir={tmp_path / 'out'}"]


def test_features_are_cached_per_encoder_and_data(tmp_path, shards, monkeypatch):
    cfg = load_config(ProbeConfig, None, _recipe(tmp_path, shards))
    encoder = create_model("vit_tiny_joint", embed_dim=32, depth=1, num_heads=2, patch_size=(2, 8, 8), num_frames=8,
                           img_size=32)
    calls = []
    encoder.register_forward_hook(lambda *a: calls.append(1))
    first, cached = feats.split_features(encoder, cfg.data, "val", 8, True, tmp_path / "cache")
    assert not cached and calls and first.pooled.shape == (10, 2, 32) and first.tokens.shape == (10, 2, 4, 32)
    assert first.tokens.dtype == torch.float16 and len(set(first.keys)) == 10
    calls.clear()
    again, cached = feats.split_features(encoder, cfg.data, "val", 8, True, tmp_path / "cache")
    assert cached and not calls and torch.equal(again.pooled, first.pooled) and again.keys == first.keys
    with torch.no_grad():
        encoder.norm.weight.mul_(2)  # other weights: other features
    _, cached = feats.split_features(encoder, cfg.data, "val", 8, True, tmp_path / "cache")
    assert not cached


def test_vssl_probe_end_to_end_random_init_and_a_checkpoint(tmp_path, shards, capsys):
    args = [a for o in _recipe(tmp_path, shards) for a in ("--set", o)]
    assert vssl(["probe", "recipes/probe/synth.yaml", *args]) == 0
    printed = capsys.readouterr().out
    assert "knn k10" in printed and "linear" in printed and "attentive" in printed
    report = json.loads((tmp_path / "out" / "probe.json").read_text())
    assert report["videos"] == {"train": 20, "eval": 10} and report["views"] == 2
    for key in ("k10", "k20"):
        assert 0.0 <= report["knn"][key] <= 1.0
    for method in ("linear", "attentive"):
        assert 0.0 <= report[method]["top1"] <= 1.0
        assert len(report[method]["grid"]) == len(grid(*(
            (report["config"]["probe"][f"{method}_lrs"], report["config"]["probe"][f"{method}_weight_decays"])))[0])
    assert "random init" in report["encoder"]
    encoder = create_model("vit_tiny_joint", embed_dim=32, depth=1, num_heads=2, patch_size=(2, 8, 8), num_frames=8,
                           img_size=32)
    save_backbone(encoder, tmp_path / "backbone")
    out = tmp_path / "from_checkpoint"
    assert vssl(["probe", "recipes/probe/synth.yaml", *args, "--init", str(tmp_path / "backbone"),
                 "--out", str(out), "--set", "probe.methods=[knn]"]) == 0
    report = json.loads((out / "probe.json").read_text())
    assert report["encoder"] == str(tmp_path / "backbone") and "linear" not in report
