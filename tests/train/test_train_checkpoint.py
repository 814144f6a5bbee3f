import json
import random

import numpy as np
import pytest
import torch

from pipeline.train import checkpoint as ck
from pipeline.train.optim import build_optimizer, cosine_lr


def _save(root, step, keep=3):
    tmp = ck.begin_save(root, step)
    ck.write_model(tmp, {"w": torch.full((2, 2), float(step))})
    ck.write_rank_state(tmp, 0, {"step": step})
    return ck.finish_save(tmp, step, {"note": "x"}, keep_last=keep)


def test_save_scan_prune(tmp_path):
    for s in (10, 20, 30, 40):
        _save(tmp_path, s, keep=2)
    names = [p.name for p in ck.complete_checkpoints(tmp_path)]
    assert names == ["step-000030", "step-000040"]
    latest = ck.latest_checkpoint(tmp_path)
    assert ck.load_model_state(latest)["w"][0, 0] == 40
    assert ck.load_rank_state(latest, 0) == {"step": 40}
    with pytest.raises(ck.CheckpointError, match="rank 1"):
        ck.load_rank_state(latest, 1)


def test_interrupted_writes_are_ignored(tmp_path):
    _save(tmp_path, 10)
    # a save interrupted before metadata: the tmp folder is never taken for a checkpoint
    tmp = ck.begin_save(tmp_path, 20)
    ck.write_model(tmp, {"w": torch.zeros(2)})
    assert ck.latest_checkpoint(tmp_path).name == "step-000010"
    # a complete-looking folder whose file was truncated afterwards is rejected too
    good = _save(tmp_path, 30)
    (good / "model.safetensors").write_bytes(b"xx")
    assert ck.latest_checkpoint(tmp_path).name == "step-000010"
    # a folder with garbage metadata
    bad = tmp_path / "step-000040"
    bad.mkdir()
    (bad / "metadata.json").write_text("{not json")
    assert ck.latest_checkpoint(tmp_path).name == "step-000010"
    # the next save clears leftovers
    _save(tmp_path, 50)
    assert not list(tmp_path.glob("*.tmp"))


def test_rng_roundtrip_is_exact():
    random.seed(1); np.random.seed(1); torch.manual_seed(1)
    state = json.loads(json.dumps(ck.rng_state()))
    a = (random.random(), np.random.rand(), torch.rand(3))
    ck.set_rng_state(state)
    b = (random.random(), np.random.rand(), torch.rand(3))
    assert a[0] == b[0] and a[1] == b[1] and torch.equal(a[2], b[2])


def test_optimizer_groups_and_schedule(tmp_path):
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4))
    model.pos_embed = torch.nn.Parameter(torch.zeros(1, 3, 4))
    opt = build_optimizer(model, lr=1e-3, weight_decay=0.05)
    decay = {id(p) for g in opt.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    assert decay == {id(model[0].weight)}
    assert cosine_lr(0, 1.0, 10, 100) == pytest.approx(0.1)
    assert cosine_lr(9, 1.0, 10, 100) == pytest.approx(1.0)
    assert cosine_lr(55, 1.0, 10, 100) == pytest.approx(0.5)
    assert cosine_lr(100, 1.0, 10, 100, min_lr=0.01) == pytest.approx(0.01)
    # optimizer state survives a weights_only round trip
    model[0].weight.sum().backward()
    opt.step()
    tmp = ck.begin_save(tmp_path, 1)
    ck.write_optimizer(tmp, opt.state_dict())
    folder = ck.finish_save(tmp, 1, {}, keep_last=1)
    opt2 = build_optimizer(model, lr=1e-3, weight_decay=0.05)
    opt2.load_state_dict(ck.load_optimizer_state(folder))
    (idx,) = opt.state_dict()["state"].keys()
    assert torch.equal(opt2.state_dict()["state"][idx]["exp_avg"], opt.state_dict()["state"][idx]["exp_avg"])
