"""Video backbones, heads and checkpoint import. Start at registry.py and base.py.

    from pipeline.models import create_model, load_backbone, save_backbone
"""

from pipeline.models.checkpoint import load_backbone, save_backbone
from pipeline.models.registry import create_model, list_models, register_model

__all__ = ["create_model", "list_models", "load_backbone", "register_model", "save_backbone"]
