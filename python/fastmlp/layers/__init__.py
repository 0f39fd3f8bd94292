"""Layers: ``Dense``, ``Activation``, ``Dropout``, ``Flatten``, ``Input`` / ``InputLayer``."""

from . import core
from .core import Activation, Dense, Dropout, Flatten, Input, InputLayer, Layer

__all__ = ["core", "Activation", "Dense", "Dropout", "Flatten", "Input", "InputLayer", "Layer"]
