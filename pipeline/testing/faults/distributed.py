"""A two-process job losing one process: the survivor must exit on its own, soon, with one clear line.

    report = lost_peer(setup, "kill")    # the peer is SIGKILLed: gloo sees the connection drop
    report = lost_peer(setup, "stop")    # the peer is SIGSTOPped: only train.dist_timeout_s ends the wait

The job runs as two "nodes" on loopback (one `accelerate launch` each), so no launcher watches
both processes: whether rank 0 exits is up to the trainer and the process group alone. (Under one
launcher, torchrun itself SIGTERMs the survivor within ~2 s.)
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from pipeline.testing.faults.tally import Report
from pipeline.testing.faults.training import TrainSetup
from pipeline.testing.tiny_train import ROOT, env

TIMEOUT_S = 6  # train.dist_timeout_s for the stopped-peer case
START_LIMIT_S = 150
EXIT_LIMIT_S = {"kill": 30, "stop": TIMEOUT_S + 30}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
        except (OSError, IndexError, ValueError):
            continue
    return found


def _launch(setup: TrainSetup, out: Path, node: int, port: int) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "2", "--machine_rank", str(node), "--main_process_ip", "127.0.0.1",
           "--main_process_port", str(port), "--mixed_precision", "no", "--dynamo_backend", "no",
           "-m", "pipeline.cli", "pretrain", str(setup.recipe), "--set", f"train.output_dir={out}",
           "--set", "train.max_steps=1000", "--set", f"train.dist_timeout_s={TIMEOUT_S}"]
    return subprocess.Popen(cmd, cwd=ROOT, env=env(ACCELERATE_USE_CPU="1"), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)


def _end(proc: subprocess.Popen, workers: list[int]) -> str:
    """Kill what is left of a launcher and its workers (torchrun starts each in a session of its
    own, and a stopped one would hold the output pipe open); the launcher's output."""
    for pid in [*workers, *_children(proc.pid)]:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    return proc.communicate(timeout=30)[0]


def lost_peer(setup: TrainSetup, how: str) -> Report:
    report = Report(f"lost peer ({how})")
    report.inputs_tried = 1
    fault = {"kill": "peer SIGKILLed mid-training", "stop": "peer frozen (SIGSTOP) mid-training"}[how]
    out = setup.tmp / f"peer_{how}"
    port = _free_port()
    nodes = [_launch(setup, out, node, port) for node in (0, 1)]
    workers: list[int] = []
    waited = 0.0
    try:
        metrics, deadline = out / "metrics.jsonl", time.monotonic() + START_LIMIT_S
        while time.monotonic() < deadline and not (metrics.is_file() and len(metrics.read_text().splitlines()) >= 2):
            time.sleep(0.1)
        workers = _children(nodes[1].pid)
        if not report.check(fault, len(workers) == 1, f"node 1 has workers {workers} after {START_LIMIT_S}s"):
            return report
        os.kill(workers[0], signal.SIGKILL if how == "kill" else signal.SIGSTOP)
        struck = time.monotonic()
        try:
            nodes[0].wait(timeout=EXIT_LIMIT_S[how])
        except subprocess.TimeoutExpired:
            report.hangs += 1
        waited = time.monotonic() - struck
    finally:
        logs = [_end(p, workers if n == 1 else []) for n, p in enumerate(nodes)]
    report.check(fault, waited < EXIT_LIMIT_S[how], f"rank 0 still running {waited:.0f}s after its peer was lost")
    lines = [line for line in logs[0].splitlines() if "vssl pretrain: error: rank 0" in line]
    report.check(fault, len(lines) == 1 and "lost contact with the other processes" in lines[0],
                 f"no clear line from rank 0: {logs[0][-2500:]}")
    report.check(fault, "[rank0]: Traceback" not in logs[0], "rank 0 died with a traceback")
    return report
