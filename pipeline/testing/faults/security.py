"""Shards, manifests, checkpoints, recipes and dataset lists are untrusted input: nothing in them
may run code, or write outside the folder it was given.

    report = hostile_shards(tmp_path)              # loader, `vssl shard` re-sharding, `vssl inspect`
    report = hostile_files(tmp_path, checkpoint)   # checkpoint pickles, .pth, YAML tags, DAVIS names

Every payload, if it ever ran, would create the file `planted` names; every escaping path points
outside the folders the commands were given.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import shutil
import tarfile
from contextlib import redirect_stderr
from pathlib import Path

import numpy as np

from pipeline.cli import main
from pipeline.config import ConfigError, DataConfig
from pipeline.data.loader import build_loader
from pipeline.data.shard_format import Manifest, ShardEntry, sha256_file
from pipeline.tasks import davis
from pipeline.train import checkpoint as ck
from pipeline.testing.faults.loading import Planted
from pipeline.testing.faults.tally import Report, one_line_error
from pipeline.testing.shards import sample_members
from pipeline.testing.videos import moving_frames

SOURCE_DIRS = ("pipeline", "data_prep", "benchmarks")


def _tar_add(tf: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tf.addfile(info, io.BytesIO(data))


def _write_hostile_shard(folder: Path, planted: Path) -> None:
    """One shard: a clean sample, one carrying a pickled .pyd/.pickle member, members named with
    `../` and an absolute path, and one whose metadata names a split that climbs out of OUT."""
    folder.mkdir(parents=True)
    frames = moving_frames(8, 32, 32)
    shard = folder / "train-000000.tar"
    with tarfile.open(shard, "w") as tf:
        for key in ("clean", "carrier", "../escape", "/tmp/absolute", "climber"):
            members = sample_members(key, 0, frames)
            if key == "climber":
                meta = json.loads(members["json"])
                members["json"] = json.dumps({**meta, "split": "../../escaped"}).encode()
            for ext in ("mp4", "json"):
                _tar_add(tf, f"{key}.{ext}", members[ext])
            if key == "carrier":
                _tar_add(tf, "carrier.pyd", pickle.dumps(Planted(str(planted))))
                _tar_add(tf, "carrier.pickle", pickle.dumps(Planted(str(planted))))
    Manifest(shards=[ShardEntry(shard.name, "train", 5, shard.stat().st_size, sha256_file(shard))],
             classes=["c0"], totals={"samples": 5, "bytes": shard.stat().st_size, "shards": 1}).write(folder)


def _escaped(root: Path, allowed: list[Path]) -> list[str]:
    """Files under `root` named like the escaping members, outside the allowed folders."""
    return [str(p) for p in root.rglob("*escape*") if not any(a in p.parents for a in allowed)] + [
        str(p) for p in (Path("/tmp/absolute.mp4"), Path("/tmp/absolute.json")) if p.exists()]


def hostile_shards(tmp: Path) -> Report:
    report = Report("hostile shards")
    planted, shards = tmp / "planted", tmp / "hostile"
    _write_hostile_shard(shards, planted)
    report.inputs_tried = 5
    cfg = DataConfig(shards=str(shards), num_frames=8, frame_stride=1, crop_size=32, crop="center", batch_size=5,
                     num_workers=0, decode_timeout_s=0.0, mask_ratio=0.5, shuffle=False)
    keys = [k for batch in build_loader(cfg, patch_size=(2, 16, 16)) for k in batch["key"]]
    report.check("pickled member, loader", not planted.exists(), "the loader unpickled a member")
    report.check(None, "carrier" in keys and "clean" in keys, f"clean samples not loaded: {keys}")

    out = tmp / "resharded"
    code = main(["shard", str(shards), "--out", str(out), "--workers", "1", "--no-progress"])
    report.check("pickled member, vssl shard", not planted.exists(), "re-sharding unpickled a member")
    with tarfile.open(out / "train-000000.tar") as tf:
        names = tf.getnames()
    report.check("../ and absolute member names, vssl shard", code == 0 and all(
        "/" not in n and ".." not in n for n in names), f"exit {code}; members written: {names}")
    quarantined = [json.loads(line) for line in (out / "quarantine.jsonl").read_text().splitlines()]
    report.check("split that climbs out of OUT", [q["reason"] for q in quarantined] == [
        "split '../../escaped' is not a plain name (letters, digits, _)"], f"quarantine: {quarantined}")
    report.check(None, not _escaped(tmp, [shards]), f"files written outside OUT: {_escaped(tmp, [shards])}")

    main(["inspect", str(shards), "--decode"])
    report.check("pickled member, vssl inspect", not planted.exists(), "vssl inspect unpickled a member")
    _hostile_manifests(tmp, report)
    return report


def _hostile_manifests(tmp: Path, report: Report) -> None:
    """Manifests naming a `pipe:` command or a path outside their folder are refused by the loader
    and by vssl inspect (a relative `data.shards: manifest.json` once joined "" + "pipe:...")."""
    for n, name in enumerate(("pipe:touch planted_by_pipe.tar", "../outside.tar", "/etc/passwd.tar")):
        folder = tmp / f"manifest_{n}"
        folder.mkdir()
        Manifest(shards=[ShardEntry(name, "train", 1, 10, "0" * 64)], classes=["c0"],
                 totals={"samples": 1, "bytes": 10, "shards": 1}).write(folder)
        fault = f"manifest naming {name!r}"
        cwd = os.getcwd()
        os.chdir(folder)
        try:
            build_loader(DataConfig(shards="manifest.json", num_frames=8, crop_size=32, batch_size=1,
                                    num_workers=0, decode_timeout_s=0.0), patch_size=(2, 16, 16))
            report.check(fault, False, "the loader accepted it")
        except ConfigError as e:
            report.check(fault, "not a plain .tar file name" in str(e), f"loader error: {e}")
        finally:
            os.chdir(cwd)
        with redirect_stderr(io.StringIO()):
            code = main(["inspect", str(folder)])
        report.check(fault, code == 1 and not (folder / "planted_by_pipe.tar").exists(), f"vssl inspect exit {code}")


def _pretrain_error(args: list[str]) -> tuple[int, str | None, str]:
    stderr = io.StringIO()
    with redirect_stderr(stderr):
        code = main(["pretrain", *args])
    return code, one_line_error(stderr.getvalue(), "vssl pretrain: error:"), stderr.getvalue()


def hostile_files(tmp: Path, checkpoint: Path, recipe: Path) -> Report:
    """A checkpoint whose optimizer.pt is a code-running pickle, the same as a .pth for `vssl
    convert`, a recipe with a Python YAML tag, and DAVIS sequence names that leave ROOT."""
    report = Report("hostile files")
    planted = tmp / "planted"
    payload = pickle.dumps(Planted(str(planted)), protocol=2)  # torch.load warns on newer protocols

    out = tmp / "run"
    tampered = out / "checkpoints" / checkpoint.name
    shutil.copytree(checkpoint, tampered)
    (tampered / "optimizer.pt").write_bytes(payload)
    meta = json.loads((tampered / ck.METADATA).read_text())
    meta["files"]["optimizer.pt"] = len(payload)  # so the folder still counts as complete
    (tampered / ck.METADATA).write_text(json.dumps(meta))
    code, line, err = _pretrain_error([str(recipe), "--set", f"train.output_dir={out}"])
    report.check("pickle as optimizer.pt", code == 1 and line is not None and "optimizer.pt: refused" in line,
                 f"exit {code}: {err[-1500:]}")
    report.check("pickle as optimizer.pt", not planted.exists(), "the checkpoint's pickle ran")

    (tmp / "evil.pth").write_bytes(payload)
    with redirect_stderr(io.StringIO()):
        code = main(["convert", str(tmp / "evil.pth"), str(tmp / "converted")])
    report.check("pickle as a .pth for vssl convert", code == 2 and not planted.exists(), f"exit {code}")

    yaml_recipe = tmp / "tagged.yaml"
    yaml_recipe.write_text(f'train: !!python/object/apply:os.system ["touch {planted}"]\n')
    code, line, err = _pretrain_error([str(yaml_recipe)])
    report.check("!!python/object/apply in a recipe", code == 2 and line is not None and "invalid YAML" in line
                 and not planted.exists(), f"exit {code}: {err[-500:]}")

    root = tmp / "davis"
    (root / "ImageSets" / "2017").mkdir(parents=True)
    (root / "ImageSets" / "2017" / "val.txt").write_text("ok_seq\n../../escape_davis\n")
    for name, call in (("sequence list", lambda: davis.sequence_names(root)),
                       ("write_masks", lambda: davis.write_masks(root, "../../escape_davis", np.zeros((1, 4, 4), np.uint8)))):
        try:
            call()
            report.check(f"DAVIS name '../../escape_davis' ({name})", False, "accepted")
        except davis.DavisError as e:
            report.check(f"DAVIS name '../../escape_davis' ({name})", "not a plain folder name" in str(e), str(e))
    report.check(None, not list(tmp.rglob("*escape_davis*")), "DAVIS masks written outside ROOT")
    report.inputs_tried = 5
    return report


def shell_strings_in_source(root: Path) -> list[str]:
    """Lines of our code that could hand a string to a shell (file names must never get there).
    This file, which names what it looks for, is not searched."""
    needles = ("shell=True", "os.system(", "os.popen(", "commands.getoutput")
    this = Path(__file__).resolve()
    return [f"{p.relative_to(root)}:{n}" for d in SOURCE_DIRS for p in sorted((root / d).rglob("*.py"))
            if p.resolve() != this
            for n, line in enumerate(p.read_text().splitlines(), 1) if any(s in line for s in needles)]
