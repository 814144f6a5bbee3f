"""Benchmarks: `python -m benchmarks NAME [--quick]` (NAME: a module in this folder, or `all`).

Each module `benchmarks/NAME.py` defines `run(quick: bool) -> dict` returning
{"metrics": {...}, "goals": {...}} where metrics are ratios against a peer measured in the same
run. This runner prints the module's own report lines, then, as the LAST line, one JSON object:
{"benchmark": NAME, "metrics": ..., "goals": ..., "device": ..., "quick": bool}.
"""

from __future__ import annotations

import argparse
import importlib
import json
import pkgutil
import platform
import sys
from pathlib import Path


def available() -> list[str]:
    here = Path(__file__).parent
    return sorted(m.name for m in pkgutil.iter_modules([str(here)])
                  if not m.name.startswith("_") and m.name != "common")


def device_name() -> str:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"cpu:{platform.processor() or platform.machine()}x{__import__('os').cpu_count()}"


def run_one(name: str, quick: bool) -> dict:
    module = importlib.import_module(f"benchmarks.{name}")
    result = module.run(quick=quick)
    return {"benchmark": name, "metrics": result["metrics"], "goals": result.get("goals", {}),
            "device": device_name(), "quick": quick}


def main(argv: list[str] | None = None) -> int:
    names = available()
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    parser.add_argument("name", choices=names + ["all"])
    parser.add_argument("--quick", action="store_true", help="about a minute on 2 cores")
    args = parser.parse_args(argv)
    todo = names if args.name == "all" else [args.name]
    for name in todo:
        print(json.dumps(run_one(name, args.quick)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
