"""Layers: ``Dense``, ``Activation``, ``Flatten``, ``Input`` / ``InputLayer``."""

from . import core
from .core import Activation, Dense, Flatten, Input, InputLayer, Layer

__all__ = ["core", "Activation", "Dense", "Flatten", "Input", "InputLayer", "Layer"]
