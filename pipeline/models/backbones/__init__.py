"""Backbone modules; importing this package registers every model (see pipeline/models/registry.py)."""
from pipeline.models.backbones import mvit  # noqa: F401
from pipeline.models.backbones import swin3d  # noqa: F401
from pipeline.models.backbones import vit  # noqa: F401
