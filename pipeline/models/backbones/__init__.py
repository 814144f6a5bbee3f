"""Backbone modules; importing this package registers every model (see pipeline/models/registry.py)."""
