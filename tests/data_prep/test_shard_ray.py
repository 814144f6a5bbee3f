"""`vssl shard --backend ray` on a local Ray cluster (2 CPUs, one for the module): the local
backend's bytes, quarantine (broken, hung and crashing inputs alike) and manifest; refusals."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from data_prep.pool import TaskFailed
from data_prep.process import FAULT_ENV, parse_faults
from data_prep.ray_pool import RayPool
from pipeline.cli import main
from pipeline.testing.sharding import broken_in_quarantine, kinetics_args, kinetics_inputs, quarantine, same_dataset

ray = pytest.importorskip("ray")
FAULTS = "hang=y04;crash=y10"  # a decoder that never returns, one that kills its process


@pytest.fixture(scope="module")
def ray_cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def kinetics(tmp_path_factory) -> Path:
    return kinetics_inputs(tmp_path_factory.mktemp("kinetics"))


def test_ray_backend_writes_the_local_backends_bytes(ray_cluster, kinetics, tmp_path, monkeypatch):
    monkeypatch.setenv(FAULT_ENV, FAULTS)
    for backend in ("local", "ray"):
        assert main(kinetics_args(kinetics, tmp_path / backend, 2, "--timeout-s", "2", "--backend", backend)) == 0
    same_dataset(tmp_path / "local", tmp_path / "ray")
    reasons = {e["key"][:3]: e["reason"] for e in quarantine(tmp_path / "ray")}
    assert (reasons["y04"], reasons["y10"]) == ("timeout after 2s", "worker died (signal 9)")
    monkeypatch.delenv(FAULT_ENV)
    assert main(kinetics_args(kinetics, tmp_path / "clean", 2, "--backend", "ray")) == 0
    assert broken_in_quarantine(tmp_path / "clean")


def test_ray_pool_keeps_order_and_reports_exceptions(ray_cluster):
    tasks = ["hang=a", "", 3, "crash=b;vanish=c", None]  # parse_faults of a non-string raises
    with RayPool(parse_faults, workers=2, timeout_s=30) as pool:
        results = list(pool.map(tasks, ahead=3))
    assert [task for task, _ in results] == tasks
    assert [r for _, r in results] == [
        {"hang": "a"}, {}, TaskFailed("error: AttributeError: 'int' object has no attribute 'split'"),
        {"crash": "b", "vanish": "c"}, TaskFailed("error: AttributeError: 'NoneType' object has no attribute 'split'")]


def test_ray_refusals_are_one_line(ray_cluster, kinetics, tmp_path, capsys, monkeypatch):
    assert main(kinetics_args(kinetics, tmp_path / "out", 3, "--backend", "ray")) == 2
    assert "--workers 3: the Ray cluster has 2 CPUs; use at most that many" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "ray", None)  # as if ray were not installed
    assert main(kinetics_args(kinetics, tmp_path / "out", 2, "--backend", "ray")) == 2
    err = capsys.readouterr().err.strip()
    assert err == "vssl shard: error: --backend ray: ray is not installed (pip install 'vssl[ray]')"
