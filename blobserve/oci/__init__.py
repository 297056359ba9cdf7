"""Talking to image sources: references, registries, layouts and layer unpacking."""
