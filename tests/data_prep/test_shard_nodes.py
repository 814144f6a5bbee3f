"""`vssl shard --num-nodes N --node-rank R` then `--merge`: the same dataset as one machine makes,
from concurrent node processes (one killed mid-run and re-run), on a local folder and on S3."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from data_prep.plan import Node, plan_shards
from data_prep.listing import list_inputs
from data_prep.shard_run import KILL_ENV
from pipeline.cli import main
from pipeline.testing.sharding import broken_in_quarantine, kinetics_args, kinetics_inputs, same_dataset, same_on_store

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def kinetics(tmp_path_factory) -> Path:
    return kinetics_inputs(tmp_path_factory.mktemp("kinetics"))


@pytest.fixture(scope="module")
def reference(kinetics, tmp_path_factory) -> Path:
    """The dataset one machine makes (no --num-nodes)."""
    out = tmp_path_factory.mktemp("ref") / "out"
    assert main(kinetics_args(kinetics, out, 1)) == 0
    return out


def _node(kinetics: Path, out: Path | str, rank: int, count: int = 3) -> list[str]:
    return kinetics_args(kinetics, out, 1, "--num-nodes", str(count), "--node-rank", str(rank))


def _merge(kinetics: Path, out: Path | str, count: int = 3) -> list[str]:
    return kinetics_args(kinetics, out, 1, "--num-nodes", str(count), "--merge")


def test_plan_is_the_same_for_every_node_count(kinetics):
    listing = list_inputs(str(kinetics / "k.csv"), root=str(kinetics / "videos"))
    plan = plan_shards(listing.items, 2)
    assert [(s.name, s.items) for s in plan] == [
        ("train-000000.tar", (0, 1)), ("val-000000.tar", (2, 5)), ("train-000001.tar", (3, 4)),
        ("train-000002.tar", (6, 7)), ("val-000001.tar", (8, 11)), ("train-000003.tar", (9, 10))]
    for count in (1, 2, 3, 4, 7):
        shares = [Node(rank, count, True).shards(plan) for rank in range(count)]
        assert sorted(s.number for share in shares for s in share) == list(range(len(plan)))


@pytest.mark.slow
def test_three_concurrent_nodes_one_killed_and_rerun_merge_to_the_one_machine_bytes(kinetics, reference, tmp_path,
                                                                                   capsys):
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    nodes = [subprocess.Popen([sys.executable, "-m", "pipeline.cli", *_node(kinetics, out, rank)], cwd=ROOT,
                              env={**env, KILL_ENV: "1"} if rank == 1 else env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for rank in range(3)]
    results = [(node.wait(timeout=120), node.communicate()) for node in nodes]
    assert [rc for rc, _ in results] == [0, -9, 0], [err for _, (_, err) in results]
    assert "node 0 of 3" in results[0][1][0] and "--merge" in results[0][1][0]
    assert not (out / "manifest.json").exists()
    # node 1 owns val-000000 (recorded before the kill) and val-000001 (never written)
    assert main(_merge(kinetics, out)) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "1 of 6 planned shards missing (val-000001.tar) from node ranks 1" in err
    assert not (out / "manifest.json").exists()
    assert main(_node(kinetics, out, 1)) == 0
    assert "2 already done by an earlier run" in capsys.readouterr().out  # val-000000's two inputs
    assert main(_merge(kinetics, out)) == 0
    same_dataset(reference, out)
    assert broken_in_quarantine(out)


def test_partitioned_run_to_s3(s3_server, kinetics, reference):
    url = s3_server.make_bucket("nodes") + "/shards"
    for rank in (1, 0):
        assert main(_node(kinetics, url, rank, count=2)) == 0
    assert "manifest.json" not in s3_server.objects(url)
    assert main(_merge(kinetics, url, count=2)) == 0
    same_on_store(reference, s3_server, url)
    journals = {n.split("/")[0] for n in s3_server.objects(url) if n.startswith("shard-journal")}
    assert journals == {"shard-journal.node-00000-of-00002", "shard-journal.node-00001-of-00002"}


def test_merge_of_other_options_and_node_flags_are_refused_in_one_line(kinetics, reference, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(_node(kinetics, out, 0, count=1)) == 0
    capsys.readouterr()
    assert main(_merge(kinetics, out, count=1) + ["--gop", "4"]) == 2
    assert "node 0's journal (shard-journal.node-00000-of-00001.jsonl) is from a different command" in \
        capsys.readouterr().err
    assert main(_merge(kinetics, out, count=1)) == 0
    same_dataset(reference, out)
    for extra, needle in [(["--node-rank", "0"], "--node-rank: needs --num-nodes"),
                          (["--merge"], "--merge: needs --num-nodes"),
                          (["--num-nodes", "2"], "give --node-rank R (a node's share) or --merge"),
                          (["--num-nodes", "2", "--node-rank", "2"], "--node-rank: must be in 0..1"),
                          (["--num-nodes", "2", "--node-rank", "0", "--overwrite"],
                           "--overwrite: not with --num-nodes"),
                          (["--ray-address", "auto"], "set shard.backend=ray")]:
        assert main(kinetics_args(kinetics, tmp_path / "other", 1, *extra)) == 2
        err = capsys.readouterr().err.strip()
        assert needle in err and "\n" not in err, err
