"""Atomic, resumable checkpoints: one folder per step, metadata written last.

    out/checkpoints/
      step-000200/        complete: metadata.json present and every file it lists has its size
        model.safetensors  optimizer.pt  rank0.json  rank1.json  metadata.json
      step-000300.tmp/    an interrupted write: never read, removed by the next save

A save writes into `step-NNNNNN.tmp/`, fsyncs every file, writes `metadata.json` (file sizes,
step, config) last, then renames the folder. `latest_checkpoint` scans for complete folders only,
so a crash or a full disk at any moment leaves the previous checkpoint in charge.

Formats are chosen so loading never unpickles: weights are safetensors; the optimizer state is
tensors and numbers (`torch.load(weights_only=True)`); per-rank state (RNG, data position,
scheduler, step) is JSON, with torch RNG states stored as byte lists.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from pipeline.durable import fsync_dir, fsync_file

STEP_DIR = re.compile(r"^step-(\d{6,})$")
METADATA = "metadata.json"
FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """Any checkpoint - a run's step folder, a backbone folder, an imported one - cannot be written
    or read, or does not fit the model; the one-line message names the file or folder (and key)."""


def step_dir(root: str | Path, step: int) -> Path:
    return Path(root) / f"step-{step:06d}"


def rng_state() -> dict[str, Any]:
    """Python, NumPy and torch (CPU + CUDA) generator states as JSON-safe data."""
    np_state = np.random.get_state()
    state = {
        "python": [random.getstate()[0], list(random.getstate()[1]), random.getstate()[2]],
        "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
        "torch": torch.get_rng_state().tolist(),
    }
    if torch.cuda.is_available():
        state["cuda"] = [s.tolist() for s in torch.cuda.get_rng_state_all()]
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([torch.tensor(s, dtype=torch.uint8) for s in state["cuda"]])


def begin_save(root: str | Path, step: int) -> Path:
    """Create (afresh) the temporary folder a save writes into."""
    tmp = Path(root) / f"step-{step:06d}.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    return tmp


def write_model(tmp: Path, state_dict: dict[str, torch.Tensor]) -> None:
    tensors = {k: v.detach().contiguous().cpu() for k, v in state_dict.items()}
    save_file(tensors, str(tmp / "model.safetensors"))


def write_optimizer(tmp: Path, state_dict: dict) -> None:
    torch.save(state_dict, tmp / "optimizer.pt")


def write_rank_state(tmp: Path, rank: int, state: dict[str, Any]) -> None:
    (tmp / f"rank{rank}.json").write_text(json.dumps(state))


def finish_save(tmp: Path, step: int, extra: dict[str, Any], keep_last: int) -> Path:
    """fsync everything, write metadata last, rename into place, prune old checkpoints."""
    files = {}
    for p in sorted(tmp.rglob("*")):
        if p.is_file():
            fsync_file(p)
            files[str(p.relative_to(tmp))] = p.stat().st_size
    meta = {"format_version": FORMAT_VERSION, "step": step, "files": files, **extra}
    meta_path = tmp / METADATA
    meta_path.write_text(json.dumps(meta, indent=2, sort_keys=True))
    fsync_file(meta_path)
    final = step_dir(tmp.parent, step)
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    fsync_dir(final.parent)
    prune(final.parent, keep_last)
    return final


def read_metadata(folder: Path) -> dict | None:
    """The metadata of a complete checkpoint folder, or None if it is incomplete or damaged."""
    try:
        meta = json.loads((folder / METADATA).read_text())
        for name, size in meta["files"].items():
            if (folder / name).stat().st_size != size:
                return None
        return meta
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def complete_checkpoints(root: str | Path) -> list[Path]:
    root = Path(root)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and STEP_DIR.match(p.name) and read_metadata(p)]
    return sorted(found, key=lambda p: int(STEP_DIR.match(p.name).group(1)))


def latest_checkpoint(root: str | Path) -> Path | None:
    found = complete_checkpoints(root)
    return found[-1] if found else None


def prune(root: Path, keep_last: int) -> None:
    """Remove leftover .tmp folders and all but the newest `keep_last` complete checkpoints."""
    for p in root.glob("step-*.tmp"):
        shutil.rmtree(p, ignore_errors=True)
    if keep_last > 0:
        for p in complete_checkpoints(root)[:-keep_last]:
            shutil.rmtree(p, ignore_errors=True)


def _refused(path: Path, what: str, error: Exception) -> CheckpointError:
    first = " ".join(str(error).split("\n")[0].split())[:200]
    return CheckpointError(f"{path}: refused: {what} ({error.__class__.__name__}: {first})")


def load_model_state(folder: Path) -> dict[str, torch.Tensor]:
    path = folder / "model.safetensors"
    try:
        return load_file(str(path))
    except Exception as e:  # safetensors raises its own error types on a damaged file
        raise _refused(path, "not a readable safetensors file", e) from None


def load_optimizer_state(folder: Path) -> dict:
    path = folder / "optimizer.pt"
    try:
        return torch.load(path, weights_only=True, map_location="cpu")
    except Exception as e:  # an UnpicklingError for any object that is not plain tensors and numbers
        raise _refused(path, "holds more than tensors and numbers, or is damaged", e) from None


def load_rank_state(folder: Path, rank: int) -> dict[str, Any]:
    path = folder / f"rank{rank}.json"
    if not path.is_file():
        raise CheckpointError(f"{folder}: no state for rank {rank} (saved with a different world size?)")
    try:
        return json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise _refused(path, "not valid JSON", e) from None
