"""Classifier architectures: built-ins, the name registry and layer discovery.

Example:
    >>> import torch, gif.models
    >>> model = gif.models.build("tinynet", image_size=8)
    >>> model(torch.zeros(2, 1, 8, 8)).shape
    torch.Size([2, 10])
"""

from __future__ import annotations

from .registry import ENTRY_POINT_GROUP, available, build, register, reload_entry_points
from .zoo import BUILTINS, TRAINABLE_LAYER_TYPES, trainable_layers

__all__ = [
    "BUILTINS",
    "ENTRY_POINT_GROUP",
    "TRAINABLE_LAYER_TYPES",
    "available",
    "build",
    "register",
    "reload_entry_points",
    "trainable_layers",
]
