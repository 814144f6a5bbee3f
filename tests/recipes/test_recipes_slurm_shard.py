"""recipes/slurm sharding scripts without SLURM: shard_array.sbatch runs the real `vssl shard` as
array tasks and then merges (the one-machine bytes); shard_submit.sh and shard_ray.sbatch run with
fake SLURM variables and shell stubs for `sbatch`, `srun`, `scontrol`, `ray` and `vssl` on PATH
that record the command lines they were given."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from pipeline.cli import main
from pipeline.testing.sharding import kinetics_args, kinetics_inputs, same_dataset

ROOT = Path(__file__).resolve().parents[2]
SLURM = ROOT / "recipes" / "slurm"
RECORD = """#!/usr/bin/env bash
# fake {name}: appends its arguments (one line, NUL-free) to $FAKE_LOG/{name}; {then}
echo "$*" >> "$FAKE_LOG/{name}"
{then}
"""
STUBS = {"sbatch": 'echo "VSSL_SHARD_NODES=$VSSL_SHARD_NODES" >> "$FAKE_LOG/sbatch.env"; echo 4242',
         "srun": "", "scontrol": "printf 'node-a\\nnode-b\\nnode-c\\n'", "ray": "",
         # as the real one waits for the worker nodes to join: until the (background) srun has started
         "vssl": 'for _ in $(seq 200); do [ -e "$FAKE_LOG/srun" ] && break; sleep 0.05; done'}


def _env(tmp_path: Path, stubs: dict[str, str] | None = None, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "VSSL_"))}
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for name, then in (stubs or {}).items():
        (bin_dir / name).write_text(RECORD.format(name=name, then=then))
        (bin_dir / name).chmod(0o755)
    (tmp_path / "log").mkdir(exist_ok=True)
    path = f"{bin_dir}:{Path(sys.executable).parent}:{env['PATH']}"  # the venv's `vssl` unless stubbed
    return {**env, "PATH": path, "FAKE_LOG": str(tmp_path / "log"), "SLURM_SUBMIT_DIR": str(ROOT), **extra}


def _log(tmp_path: Path, name: str) -> list[str]:
    return (tmp_path / "log" / name).read_text().splitlines()


def test_scripts_parse():
    for script in ("shard_array.sbatch", "shard_submit.sh", "shard_ray.sbatch"):
        subprocess.run(["bash", "-n", str(SLURM / script)], check=True)


def test_array_tasks_then_merge_give_the_one_machine_dataset(tmp_path):
    data = kinetics_inputs(tmp_path)
    assert main(kinetics_args(data, tmp_path / "ref", 1)) == 0
    args = kinetics_args(data, tmp_path / "out", 1)[1:]  # without "shard"
    for task in ("1", "0", None):  # the array's two tasks in any order, then the merge job
        env = _env(tmp_path, VSSL_SHARD_NODES="2", SLURM_CPUS_PER_TASK="1",
                   **({"SLURM_ARRAY_TASK_ID": task} if task else {}))
        done = subprocess.run(["bash", str(SLURM / "shard_array.sbatch"), *args], env=env, cwd=tmp_path,
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
    same_dataset(tmp_path / "ref", tmp_path / "out")


def test_submit_runs_an_array_and_a_merge_after_it(tmp_path):
    env = _env(tmp_path, STUBS)
    done = subprocess.run(["bash", str(SLURM / "shard_submit.sh"), "16", "k.csv", "--out", "s3://b/k/"], env=env,
                          cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    script = SLURM / "shard_array.sbatch"
    assert _log(tmp_path, "sbatch") == [
        f"--parsable --array=0-15 {script} k.csv --out s3://b/k/",
        f"--parsable --dependency=afterok:4242 --cpus-per-task=2 --job-name=vssl-shard-merge --output=%x-%j.out "
        f"{script} k.csv --out s3://b/k/"]
    assert _log(tmp_path, "sbatch.env") == ["VSSL_SHARD_NODES=16"] * 2
    assert "array job 4242 (16 nodes), then merge job 4242" in done.stdout


def test_ray_script_starts_a_head_and_one_worker_per_other_node_then_drives_vssl(tmp_path):
    env = _env(tmp_path, STUBS, SLURM_JOB_ID="123", SLURM_JOB_NODELIST="node-[a-c]", SLURM_NNODES="3",
               SLURM_CPUS_PER_TASK="8")
    done = subprocess.run(["bash", str(SLURM / "shard_ray.sbatch"), "s3://b/raw/", "--out", "s3://b/shards/"],
                          env=env, cwd=tmp_path, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    address = "node-a:20123"  # the head's address (its name here: the fake node has no IP), a port per job
    assert _log(tmp_path, "ray") == [
        "start --head --node-ip-address=node-a --port=20123 --num-cpus=8 --include-dashboard=false",
        "stop --force"]
    assert _log(tmp_path, "srun") == [f"--nodes=2 --ntasks-per-node=1 --exclude=node-a --cpus-per-task=8 "
                                      f"ray start --address={address} --num-cpus=8 --block"]
    assert _log(tmp_path, "vssl") == [f"shard --workers 24 --no-progress s3://b/raw/ --out s3://b/shards/ "
                                      f"--backend ray --ray-address {address}"]
