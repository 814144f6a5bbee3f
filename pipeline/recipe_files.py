"""The recipes that ship with vssl, and how a recipe argument becomes a file.

    recipe_path("pretrain/quickstart.yaml")           # a shipped recipe, by its name under recipes/
    recipe_path("recipes/pretrain/quickstart.yaml")   # the same, spelled as in a checkout, from any folder
    recipe_path("runs/mine.yaml")                     # a file that exists is itself
    shipped_recipes()                                 # every shipped file's name: ["accelerate/multi_gpu.yaml", ...]

The repository's recipes/ folder is the one source. It reaches the package as pipeline/recipes (a
symbolic link in the checkout; pyproject.toml's package-data copies the files into every wheel), so
importlib.resources finds the same files in a checkout, an editable install and a plain
`pip install .` -- the verbs (through pipeline.config.load_config) and `vssl quickstart` take a
shipped recipe by name wherever vssl is installed.
"""

from __future__ import annotations

from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path

PREFIX = "recipes/"  # how the checkout spells a shipped recipe's path


def _root() -> Traversable:
    return resources.files("pipeline").joinpath("recipes")


def shipped_recipes() -> list[str]:
    """The names (relative to recipes/, with "/") of every file that ships in recipes/."""
    names: list[str] = []

    def walk(folder: Traversable, prefix: str) -> None:
        for entry in folder.iterdir():
            if entry.is_dir() and entry.name != "__pycache__":
                walk(entry, f"{prefix}{entry.name}/")
            elif entry.is_file():
                names.append(prefix + entry.name)

    walk(_root(), "")
    return sorted(names)


def recipe_path(recipe: str | Path) -> Path:
    """`recipe` itself when it is an existing file; else the shipped recipe it names ("NAME" or
    "recipes/NAME", NAME relative to recipes/); else `recipe` unchanged, for the caller's own
    "not found" error. Installed packages are plain files (as pip installs them), so the shipped
    recipe is returned as its path on disk."""
    path = Path(recipe)
    if path.is_file() or path.is_absolute():
        return path
    name = path.as_posix().removeprefix(PREFIX)
    shipped = _root().joinpath(*name.split("/"))
    return Path(str(shipped)) if shipped.is_file() else path
