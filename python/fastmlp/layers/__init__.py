"""Layers: ``Dense``, ``Activation``, ``BatchNormalization``, ``Dropout``, ``Flatten``, ``Input`` /
``InputLayer``."""

from . import core, normalization
from .core import Activation, Dense, Dropout, Flatten, Input, InputLayer, Layer
from .normalization import BatchNormalization

__all__ = ["core", "normalization", "Activation", "BatchNormalization", "Dense", "Dropout", "Flatten", "Input",
           "InputLayer", "Layer"]
