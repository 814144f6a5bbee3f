"""Video backbones, heads and checkpoint import. Start at registry.py and base.py."""

from pipeline.models.registry import create_model, list_models, register_model

__all__ = ["create_model", "list_models", "register_model"]
