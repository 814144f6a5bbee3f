"""`vssl shard INPUT --out OUT`: raw videos (or existing shards) -> WebDataset tar shards + manifest.json.

    vssl shard videos/ --out shards/                     # folder tree; classes from sub-folders
    vssl shard kinetics.csv --root videos/ --out shards/ --transcode --short-side 128 --fps 15
    vssl shard train.json --root 20bn/ --classes labels.json --split train --out shards/   # SSv2
    vssl shard paths.txt --out shards/ --segment-s 2 --workers 8
    vssl shard old_shards/ --out new_shards/ --transcode --gop 8
    vssl shard s3://bucket/raw/ --out s3://bucket/shards/                  # object storage in and out
    vssl shard s3://bucket/k400.csv --root s3://bucket/videos/ --out s3://bucket/k400/ \
        --storage-endpoint http://minio:9000                               # an S3-compatible store
    vssl shard s3://bucket/raw/ --out s3://bucket/shards/ --backend ray --ray-address auto --workers 256
    vssl shard k400.csv --root videos/ --out shards/ --num-nodes 8 --node-rank 3   # one of 8 machines
    vssl shard k400.csv --root videos/ --out shards/ --num-nodes 8 --merge         # once all 8 are done

Inputs, --root, --classes and OUT may be URLs (s3://, gs://; https:// for inputs), with credentials
from the usual places (AWS_* variables, ~/.aws, AWS_ENDPOINT_URL for S3-compatible stores; see
pipeline/storage.py). Writes OUT/{split}-{index:06d}.tar, OUT/quarantine.jsonl (every rejected input
with its reason), OUT/manifest.json (last) and prints a summary. Shard i of a split holds the samples
of a fixed run of --inputs-per-shard of its inputs (data_prep/plan.py), so the output does not depend
on --workers, --backend, --num-nodes or where it is written. Re-running the same command resumes an
interrupted run (data_prep/shard_run.py). With --num-nodes N, node R writes its share of the shards
and its journal part into OUT; the same command with --merge instead of --node-rank then writes
quarantine.jsonl and manifest.json, or names the planned shards still missing and their nodes.
Exit status: 0 when samples were written (a partitioned node: when its share is done), 1 when every
input was quarantined, 2 on a usage error, a store or Ray cluster that cannot be used, or shards
missing at a merge (one line; re-running resumes).
"""

from __future__ import annotations

import argparse
import sys

from data_prep.listing import FORMATS, list_inputs
from data_prep.plan import Node
from data_prep.ray_pool import RayPoolError
from data_prep.shard_run import ShardRunError, merge_nodes, shard_dataset
from data_prep.sources import ListingError
from pipeline import storage
from pipeline.config import ShardConfig, from_dict

# ShardConfig field -> (flag, help); a flag left out keeps the config default
_CONFIG_FLAGS = {
    "workers": ("--workers", "worker processes, or with --backend ray Ray tasks at once (the output does "
                             "not depend on it)"),
    "timeout_s": ("--timeout-s", "seconds one input may take before it is quarantined"),
    "inputs_per_shard": ("--inputs-per-shard", "inputs of a split per shard (a shard holds their samples)"),
    "backend": ("--backend", "where the per-input work runs: local (processes) or ray"),
    "ray_address": ("--ray-address", "with --backend ray: the cluster to join (auto, HOST:PORT, ray://HOST:PORT; "
                                     "empty starts a local one)"),
    "short_side": ("--short-side", "with --transcode: scale so the short side is this (even)"),
    "fps": ("--fps", "with --transcode: resample to this frame rate"),
    "gop": ("--gop", "keyframe interval of re-encoded video"),
    "crf": ("--crf", "x264 quality (0-51, lower is better)"),
    "preset": ("--preset", "x264 preset"),
    "segment_s": ("--segment-s", "cut every clip into consecutive segments of this many seconds "
                                 "(a shorter tail is dropped)"),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("input", help="folder, Kinetics .csv, SSv2 .json, path list .txt/.csv, or shards "
                                       "(paths or URLs)")
    parser.add_argument("--out", required=True, help="output folder or URL (s3://bucket/prefix/)")
    parser.add_argument("--storage-endpoint", default="", metavar="URL",
                        help="S3-compatible endpoint (default: AWS_ENDPOINT_URL, else AWS)")
    parser.add_argument("--format", default="auto", choices=FORMATS, help="input format (default: guess)")
    parser.add_argument("--root", help="folder holding the videos of a csv/json/list input")
    parser.add_argument("--split", default="train", help="split of inputs that do not name one")
    parser.add_argument("--classes", help="class names in label order: .txt, or .json {name: index}")
    parser.add_argument("--labels", default="auto", choices=("auto", "dirs", "none"),
                        help="folder input: labels from sub-folders (dirs), none, or guess")
    parser.add_argument("--label-key", help="shards input: the json field holding the label, e.g. a column "
                                            "video2dataset saved (default: label, where a sample has it)")
    parser.add_argument("--transcode", action="store_true", default=None, help="re-encode to H.264")
    defaults = ShardConfig()
    for name, (flag, help_text) in _CONFIG_FLAGS.items():
        default = getattr(defaults, name)
        parser.add_argument(flag, dest=name, type=type(default), default=None,
                            metavar=flag[2:].upper().replace("-", "_"), help=f"{help_text} (default: {default})")
    parser.add_argument("--num-nodes", type=int, metavar="N", help="split the run over N machines, each run "
                        "with --node-rank; then once with --merge")
    parser.add_argument("--node-rank", type=int, metavar="R", help="with --num-nodes: this machine's share, 0..N-1")
    parser.add_argument("--merge", action="store_true", help="with --num-nodes: merge the nodes' parts into "
                        "manifest.json and quarantine.jsonl")
    parser.add_argument("--overwrite", action="store_true", help="delete OUT's shard files first")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def _config(args: argparse.Namespace) -> ShardConfig:
    given = {name: getattr(args, name) for name in ("transcode", *_CONFIG_FLAGS)}
    return from_dict(ShardConfig, {k: v for k, v in given.items() if v is not None}, prefix="shard")


def _command(args: argparse.Namespace, cfg: ShardConfig) -> list[str]:
    """The command as a canonical argv (input options and the settings that differ from defaults)."""
    command = ["vssl", "shard", args.input, "--out", args.out]
    for opt in ("format", "root", "split", "classes", "labels", "label_key"):
        value = getattr(args, opt)
        if value is not None and value != {"format": "auto", "split": "train", "labels": "auto"}.get(opt):
            command += [f"--{opt.replace('_', '-')}", str(value)]
    if cfg.transcode:
        command.append("--transcode")
    defaults = ShardConfig()
    for name, (flag, _) in _CONFIG_FLAGS.items():
        if getattr(cfg, name) != getattr(defaults, name):
            command += [flag, str(getattr(cfg, name))]
    return command


def _node(args: argparse.Namespace) -> Node:
    """The share of the run this process does, from --num-nodes / --node-rank / --merge."""
    count, rank = args.num_nodes, args.node_rank
    if count is None:
        if rank is not None or args.merge:
            raise ShardRunError(f"{'--node-rank' if rank is not None else '--merge'}: needs --num-nodes")
        return Node()
    if count < 1:
        raise ShardRunError(f"--num-nodes: must be >= 1, got {count}")
    if args.merge == (rank is not None):
        raise ShardRunError("--num-nodes: give --node-rank R (a node's share) or --merge (after every node), not "
                            + ("both" if args.merge else "neither"))
    if rank is not None and not 0 <= rank < count:
        raise ShardRunError(f"--node-rank: must be in 0..{count - 1} (--num-nodes {count}), got {rank}")
    return Node(rank or 0, count, partitioned=True)


def run(args: argparse.Namespace) -> int:
    cfg = _config(args)
    inputs = {"input": args.input, "format": args.format, "root": args.root, "split": args.split,
              "classes": args.classes, "labels": args.labels,
              **({"label_key": args.label_key} if args.label_key is not None else {})}
    storage.set_endpoint(args.storage_endpoint)
    try:
        node = _node(args)
        listing = list_inputs(args.input, fmt=args.format, root=args.root, split=args.split,
                              classes_file=args.classes, labels=args.labels, label_key=args.label_key)
        if args.merge:
            summary = merge_nodes(listing, args.out, cfg, node.count, command=_command(args, cfg), inputs=inputs)
        else:
            summary = shard_dataset(listing, args.out, cfg, command=_command(args, cfg), inputs=inputs,
                                    overwrite=args.overwrite, progress=False if args.no_progress else None, node=node)
    except (ListingError, ShardRunError, RayPoolError, storage.StorageError) as e:
        print(f"vssl shard: error: {e}", file=sys.stderr)
        return 2
    print("\n".join(summary.lines()))
    return 0 if summary.samples or node.partitioned and not args.merge else 1
