"""recipes/slurm without SLURM: pretrain.sbatch and node.sh run with fake SLURM variables and
shell stubs for `srun`, `scontrol` and `accelerate` (a fake training process per node) on PATH;
the tests read the command lines they were given and drive the time-limit signal contract."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SBATCH = ROOT / "recipes" / "slurm" / "pretrain.sbatch"
RECIPE = "recipes/pretrain/videomae_vit_b_k400.yaml"
JOB_ID = 123456

SRUN = """#!/usr/bin/env bash
# fake srun: records its arguments, runs the command once per node, forwards SIGUSR1 to them
source "{root}/recipes/slurm/wait.sh"
printf '%s\\n' "$@" > "$FAKE_LOG/srun.args"
while [[ "$1" == --* ]]; do shift; done
pids=()
for ((n = 0; n < SLURM_NNODES; n++)); do
  SLURM_NODEID=$n SLURM_PROCID=$n "$@" &
  pids+=($!)
done
trap 'kill -USR1 "${{pids[@]}}"' USR1
rc=0
for p in "${{pids[@]}}"; do
  wait_through_traps "$p"; r=$?
  [ "$r" -ne 0 ] && rc=$r
done
exit $rc
"""
SCONTROL = """#!/usr/bin/env bash
case "$1" in
  show) printf 'node-a\\nnode-b\\n' ;;
  requeue) echo "requeue $2" >> "$FAKE_LOG/scontrol" ;;
esac
"""
ACCELERATE = """#!/usr/bin/env bash
# fake launcher: records its arguments and environment, runs one fake training process
printf '%s\\n' "$@" > "$FAKE_LOG/accelerate.$SLURM_NODEID"
echo "OMP_NUM_THREADS=$OMP_NUM_THREADS" > "$FAKE_LOG/env.$SLURM_NODEID"
"{python}" "$FAKE_LOG/../rank.py" &
wait $!
"""
RANK = """import os, signal, sys, time
from pathlib import Path
log, node = Path(os.environ["FAKE_LOG"]), os.environ["SLURM_NODEID"]
mode = os.environ["FAKE_RANK"]
if mode != "wait":
    sys.exit(int(mode))
got = []
signal.signal(signal.SIGUSR1, lambda *_: got.append(os.path.exists(os.environ["VSSL_STOP_FILE"])))
(log / f"ready.{node}").touch()
deadline = time.time() + 60
while not got and time.time() < deadline:
    time.sleep(0.02)
(log / f"stopped.{node}").write_text(f"signal, stop file {got[0]}" if got else "timeout")
sys.exit(0 if got else 9)
"""


def stubs(tmp_path: Path) -> Path:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in {"srun": SRUN.format(root=ROOT), "scontrol": SCONTROL,
                       "accelerate": ACCELERATE.format(python=sys.executable)}.items():
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    (tmp_path / "rank.py").write_text(RANK)
    (tmp_path / "log").mkdir()
    return bin_dir


def start(tmp_path: Path, rank: str = "0", **extra: str) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "VSSL_", "MASTER_", "OMP_"))}
    env.update(PATH=f"{stubs(tmp_path)}:{env['PATH']}", FAKE_LOG=str(tmp_path / "log"), FAKE_RANK=rank,
               SLURM_JOB_ID=str(JOB_ID), SLURM_JOB_NODELIST="node-[a-b]", SLURM_NNODES="2",
               SLURM_CPUS_PER_TASK="32", SLURM_GPUS_ON_NODE="4", SLURM_SUBMIT_DIR=str(ROOT),
               VSSL_STOP_FILE=str(tmp_path / "stop"), **extra)
    return subprocess.Popen(["bash", str(SBATCH), RECIPE, "--set", "train.max_steps=10"], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines()


def test_scripts_parse():
    for script in ("pretrain.sbatch", "node.sh", "wait.sh"):
        subprocess.run(["bash", "-n", str(ROOT / "recipes" / "slurm" / script)], check=True)


def test_one_launcher_per_node_with_its_rank_cpus_and_a_port_from_the_job_id(tmp_path):
    proc = start(tmp_path)
    out = proc.communicate(timeout=60)[0]
    assert proc.returncode == 0, out
    log = tmp_path / "log"
    srun = lines(log / "srun.args")
    assert "--cpus-per-task=32" in srun and "--kill-on-bad-exit=1" in srun
    assert srun[srun.index("bash"):] == ["bash", "recipes/slurm/node.sh", RECIPE, "--set", "train.max_steps=10"]
    port = str(15000 + JOB_ID % 15000)
    for node in (0, 1):
        assert lines(log / f"accelerate.{node}") == [
            "launch", "--multi_gpu", "--num_machines", "2", "--machine_rank", str(node), "--num_processes", "8",
            "--main_process_ip", "node-a", "--main_process_port", port, "--rdzv_backend", "static",
            "-m", "pipeline.cli", "pretrain", RECIPE, "--set", "train.max_steps=10"]
        assert lines(log / f"env.{node}") == ["OMP_NUM_THREADS=2"]
    assert not (log / "scontrol").exists()  # finished: nothing to requeue


def test_accelerate_config_and_port_override(tmp_path):
    proc = start(tmp_path, VSSL_ACCELERATE_CONFIG="recipes/accelerate/deepspeed_zero2.yaml", MASTER_PORT="29999")
    out = proc.communicate(timeout=60)[0]
    assert proc.returncode == 0, out
    args = lines(tmp_path / "log" / "accelerate.1")
    assert args[:3] == ["launch", "--config_file", "recipes/accelerate/deepspeed_zero2.yaml"]
    assert "--multi_gpu" not in args and args[args.index("--main_process_port") + 1] == "29999"


def test_a_failed_step_exits_with_its_status_and_is_not_requeued(tmp_path):
    proc = start(tmp_path, rank="3")
    proc.communicate(timeout=60)
    assert proc.returncode == 3
    assert not (tmp_path / "log" / "scontrol").exists()


def test_usr1_before_the_time_limit_stops_every_rank_then_requeues(tmp_path):
    log = tmp_path / "log"
    proc = start(tmp_path, rank="wait")
    deadline = time.time() + 30
    while not all((log / f"ready.{n}").exists() for n in (0, 1)):
        assert proc.poll() is None and time.time() < deadline, proc.communicate()[0]
        time.sleep(0.05)
    proc.send_signal(signal.SIGUSR1)  # what `#SBATCH --signal=B:USR1@300` does
    out = proc.communicate(timeout=60)[0]
    assert proc.returncode == 0, out
    for n in (0, 1):  # each training process got the signal, and the stop file existed by then
        assert (log / f"stopped.{n}").read_text() == "signal, stop file True"
    assert lines(log / "scontrol") == [f"requeue {JOB_ID}"]
    assert not (tmp_path / "stop").exists()  # removed: the requeued job must not stop at once

