"""A one-level model registry: `@register_model` on a factory, `create_model(name, **overrides)`.

    from pipeline.models import create_model, list_models
    model = create_model("vit_small_joint", num_frames=8, img_size=112)

Factories take keyword overrides of their defaults and return a `VideoBackbone`
(pipeline/models/base.py). Names say size and attention: `vit_small_divided`, `mvit_tiny`, ...

A factory too big for the generic test (tests/models/test_models_generic.py runs every registered model
forward and backward on CPU) may register the overrides that shrink it there, e.g. fewer blocks
at the real width: `register_model(fn, test_overrides={"depth": 2})` or
`@register_model(test_overrides={"depth": 2})`. Plain `@register_model` means none.
"""

from __future__ import annotations

from typing import Any, Callable

_REGISTRY: dict[str, Callable] = {}
_TEST_OVERRIDES: dict[str, dict[str, Any]] = {}


def register_model(fn: Callable | None = None, *, test_overrides: dict[str, Any] | None = None):
    def add(factory: Callable) -> Callable:
        name = factory.__name__
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} registered twice")
        _REGISTRY[name] = factory
        _TEST_OVERRIDES[name] = dict(test_overrides or {})
        return factory

    return add if fn is None else add(fn)


def list_models(pattern: str = "") -> list[str]:
    _import_backbones()
    return sorted(n for n in _REGISTRY if pattern in n)


def create_model(name: str, **overrides):
    _import_backbones()
    if name not in _REGISTRY:
        raise KeyError(f"model.name: unknown model {name!r} (known: {', '.join(sorted(_REGISTRY))})")
    return _REGISTRY[name](**overrides)


def generic_test_overrides(name: str) -> dict[str, Any]:
    """The overrides a factory registered for the generic test ({} for most)."""
    _import_backbones()
    return dict(_TEST_OVERRIDES[name])


def _import_backbones() -> None:
    """Importing the backbone modules runs their @register_model decorators."""
    from pipeline.models import backbones  # noqa: F401
