"""Transformer building blocks: config, attention, MLP, layer, block."""

from .block import TransformerBlock
from .config import TransformerConfig
from .layer import TransformerLayer

__all__ = [
    "TransformerBlock",
    "TransformerConfig",
    "TransformerLayer",
]
