"""The recipes ship inside the package: a wheel built from this checkout holds every file of
recipes/ (as pipeline/recipes/), and once installed somewhere else (`pip install --target`, not
editable) pipeline/recipe_files.py finds them through importlib.resources and the verbs' config
loader reads them by name, with no checkout in reach. About 10 s (one wheel build, one install)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from pipeline.recipe_files import recipe_path, shipped_recipes
from pipeline.testing.tiny_train import ROOT

SKIP = shutil.ignore_patterns(".git", ".venv", "runs", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache")


def checkout_recipes() -> list[str]:
    folder = ROOT / "recipes"
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*")
                  if p.is_file() and "__pycache__" not in p.parts)


def test_a_recipe_is_found_by_its_shipped_name_from_any_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert shipped_recipes() == checkout_recipes()
    for name in ("pretrain/quickstart.yaml", "recipes/pretrain/quickstart.yaml"):
        assert recipe_path(name).read_bytes() == (ROOT / "recipes/pretrain/quickstart.yaml").read_bytes()
    (tmp_path / "pretrain").mkdir()
    (tmp_path / "pretrain" / "quickstart.yaml").write_text("own: 1\n")
    assert recipe_path("pretrain/quickstart.yaml") == Path("pretrain/quickstart.yaml")  # a real file wins
    assert recipe_path("pretrain/none.yaml") == Path("pretrain/none.yaml")  # left for the caller's error


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> tuple[Path, Path]:
    """The wheel built from a copy of the checkout (the build writes beside its sources), and
    the folder it was installed into."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    shutil.copytree(ROOT, src, symlinks=True, ignore=SKIP)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp / "dist"), str(src)],
                   check=True, capture_output=True, timeout=120)
    (wheel,) = (tmp / "dist").glob("vssl-*.whl")
    site = tmp / "site"
    subprocess.run([*pip, "install", "--no-deps", "--no-index", "--target", str(site), str(wheel)],
                   check=True, capture_output=True, timeout=120)
    return wheel, site


def test_the_wheel_holds_every_recipe_file(installed):
    wheel, _ = installed
    with zipfile.ZipFile(wheel) as z:
        shipped = sorted(n.removeprefix("pipeline/recipes/") for n in z.namelist() if n.startswith("pipeline/recipes/"))
    assert shipped == checkout_recipes()


INSTALLED_CHECK = """
import json, os, sys
import pipeline
from pipeline.config import FinetuneConfig, PretrainConfig, ProbeConfig, load_config
from pipeline.recipe_files import recipe_path, shipped_recipes
names = shipped_recipes()
load_config(PretrainConfig, "pretrain/quickstart.yaml")
load_config(ProbeConfig, "recipes/probe/synth.yaml")
for name in names:
    if name.startswith("finetune/"):
        load_config(FinetuneConfig, name)
print(json.dumps({"package": pipeline.__file__, "names": names,
                  "paths": [str(recipe_path(n)) for n in names]}))
"""


def test_an_installed_package_finds_its_recipes_without_the_checkout(installed):
    _, site = installed
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([sys.executable, "-c", INSTALLED_CHECK], cwd=site.parent, capture_output=True, text=True,
                          env={**env, "PYTHONPATH": str(site)}, timeout=60)
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout.splitlines()[-1])
    assert Path(found["package"]).is_relative_to(site)  # the installed copy, not this checkout
    assert found["names"] == checkout_recipes()
    assert all(Path(p).is_relative_to(site) and Path(p).is_file() for p in found["paths"])
