"""Layers: ``Dense``, ``Input`` / ``InputLayer``."""

from . import core
from .core import Dense, Input, InputLayer, Layer

__all__ = ["core", "Dense", "Input", "InputLayer", "Layer"]
