"""A one-level model registry: `@register_model` on a factory, `create_model(name, **overrides)`.

    from pipeline.models import create_model, list_models
    model = create_model("vit_small_joint", num_frames=8, img_size=112)

Factories take keyword overrides of their defaults and return a `VideoBackbone`
(pipeline/models/base.py). Names say size and attention: `vit_small_divided`, `mvit_tiny`, ...
"""

from __future__ import annotations

from typing import Callable

_REGISTRY: dict[str, Callable] = {}


def register_model(fn: Callable) -> Callable:
    name = fn.__name__
    if name in _REGISTRY:
        raise ValueError(f"model {name!r} registered twice")
    _REGISTRY[name] = fn
    return fn


def list_models(pattern: str = "") -> list[str]:
    _import_backbones()
    return sorted(n for n in _REGISTRY if pattern in n)


def create_model(name: str, **overrides):
    _import_backbones()
    if name not in _REGISTRY:
        raise KeyError(f"model.name: unknown model {name!r} (known: {', '.join(sorted(_REGISTRY))})")
    return _REGISTRY[name](**overrides)


def _import_backbones() -> None:
    """Importing the backbone modules runs their @register_model decorators."""
    from pipeline.models import backbones  # noqa: F401
