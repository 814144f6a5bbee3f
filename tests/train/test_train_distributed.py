"""Two processes train as one job: DDP (one launcher) and two "nodes" over loopback (two
launchers) both equal one process fed the two ranks' batches together. (Engines, precisions,
backbones and resume: tests/train/test_train_matrix.py.)"""

from __future__ import annotations

import subprocess
import sys

import pytest

from pipeline.config import PretrainConfig, load_config
from pipeline.train import checkpoint as ck
from pipeline.train.build import build_objective
from pipeline.train.trainer import train
from pipeline.testing.tiny_train import ROOT, BothRanks, assert_same_weights, env, free_port, losses, tiny_recipe, tiny_shards

pytestmark = pytest.mark.slow
STEPS = "train.max_steps=4"


def launch(recipe, out, *, machines: int, port: int, rank: int = 0) -> subprocess.Popen:
    # --num_processes counts all processes of the job: with two machines, one on each
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", str(machines), "--machine_rank", str(rank), "--main_process_ip", "127.0.0.1",
           "--main_process_port", str(port), "--mixed_precision", "no", "--dynamo_backend", "no",
           "-m", "pipeline.cli", "pretrain", str(recipe), "--set", f"train.output_dir={out}", "--set", STEPS]
    return subprocess.Popen(cmd, cwd=ROOT, env=env(ACCELERATE_USE_CPU="1"), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def finished(procs, out) -> str:
    logs = "".join(p.communicate(timeout=300)[0] for p in procs)
    # gloo sometimes aborts at exit after a correct run; the final checkpoint is the proof of success
    final = ck.latest_checkpoint(out / "checkpoints")
    assert final is not None and final.name == "step-000004", logs[-3000:]
    return logs


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ddp")
    shards = tiny_shards(tmp / "shards")
    recipe = tiny_recipe(tmp / "r.yaml", shards, tmp / "ref")
    cfg = load_config(PretrainConfig, recipe, [STEPS])
    train(cfg, build_objective, lambda c, rank, world, obj: BothRanks(c, obj.encoder.patch_size))
    weights = ck.load_model_state(ck.latest_checkpoint(tmp / "ref" / "checkpoints"))
    return recipe, losses(tmp / "ref"), weights, tmp


def _same_as_reference(reference, out):
    _, ref_losses, ref_weights, _ = reference
    assert losses(out) == pytest.approx(ref_losses, rel=1e-5, abs=1e-6)
    assert_same_weights(ck.load_model_state(ck.latest_checkpoint(out / "checkpoints")), ref_weights)


def test_two_process_ddp_equals_one_process_with_the_global_batch(reference):
    recipe, _, _, tmp = reference
    out = tmp / "ddp"
    finished([launch(recipe, out, machines=1, port=free_port())], out)
    _same_as_reference(reference, out)


def test_two_nodes_over_loopback_train_as_one_job(reference):
    recipe, _, _, tmp = reference
    out = tmp / "nodes"
    port = free_port()
    procs = [launch(recipe, out, machines=2, port=port, rank=r) for r in (0, 1)]
    finished(procs, out)
    _same_as_reference(reference, out)
