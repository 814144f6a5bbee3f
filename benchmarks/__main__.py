"""Benchmarks: `python -m benchmarks NAME [--quick]` (NAME: a module in this folder, or `all`).

Each module `benchmarks/NAME.py` defines `run(quick: bool) -> dict` returning
{"metrics": {...}, "goals": {...}} where metrics are ratios against a peer measured in the same
run. This runner prints the module's own report lines, then, as the LAST line, one JSON object:
{"benchmark": NAME, "metrics": ..., "goals": ..., "device": ..., "quick": bool}.
With --save it also keeps that object in docs/results/ and rewrites docs/RESULTS.md (_results.py).
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
import pkgutil
import platform
import sys
import time
from pathlib import Path

from benchmarks import _results


def available() -> list[str]:
    here = Path(__file__).parent
    return sorted(m.name for m in pkgutil.iter_modules([str(here)])
                  if not m.name.startswith("_") and m.name != "common")


def device_name() -> str:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"cpu:{platform.processor() or platform.machine()}x{__import__('os').cpu_count()}"


def run_one(name: str, quick: bool, device: str = "cpu") -> dict:
    module = importlib.import_module(f"benchmarks.{name}")
    if "device" in inspect.signature(module.run).parameters:
        result = module.run(quick=quick, device=device)
    elif device != "cpu":
        raise SystemExit(f"python -m benchmarks: {name} has no --device option (it measures what it measures on "
                         f"whatever is there)")
    else:
        result = module.run(quick=quick)
    return {"benchmark": name, "metrics": result["metrics"], "goals": result.get("goals", {}),
            "device": device_name(), "quick": quick}


def main(argv: list[str] | None = None) -> int:
    names = available()
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    parser.add_argument("name", nargs="?", choices=names + ["all"])
    parser.add_argument("--quick", action="store_true", help="about a minute on 2 cores")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                        help="where benchmarks that take it run (transfer scales its budgets up for one GPU)")
    parser.add_argument("--save", action="store_true",
                        help="keep the result in docs/results/NAME.json and rewrite docs/RESULTS.md")
    parser.add_argument("--render", action="store_true", help="only rewrite docs/RESULTS.md from docs/results/")
    args = parser.parse_args(argv)
    if args.render:
        print(f"wrote {_results.render()}")
        return 0
    if args.name is None:
        parser.error("a benchmark NAME (or all) is needed unless --render")
    todo = names if args.name == "all" else [args.name]
    for name in todo:
        start = time.monotonic()
        record = run_one(name, args.quick, args.device)
        print(json.dumps(record), flush=True)
        if args.save:
            _results.save(record, time.monotonic() - start)
            _results.render()
    return 0


if __name__ == "__main__":
    sys.exit(main())
