"""Weight regularizers (Keras 3): a penalty added to the loss, computed natively each step.

``L1(l1)``: ``l1 * sum(|w|)``; ``L2(l2)``: ``l2 * sum(w^2)`` (no 1/2); ``L1L2(l1, l2)``: both.
"""

import math
import numbers

from . import _keras_config


def _coefficient(value, name):
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) or value < 0:
        raise ValueError(f"Expected `{name}` to be a non-negative number. Received: {name}={value!r}")
    return float(value)


class Regularizer:
    """Base class: ``(l1, l2)`` coefficients of the penalty ``l1 * sum|w| + l2 * sum w^2``."""

    l1 = 0.0
    l2 = 0.0

    def __call__(self, w):
        import numpy as np

        w = np.asarray(w, dtype=np.float64)
        return float(self.l1 * np.abs(w).sum() + self.l2 * (w * w).sum())

    def get_config(self):
        return {"l1": self.l1, "l2": self.l2}


class L1L2(Regularizer):
    def __init__(self, l1=0.0, l2=0.0):
        self.l1 = _coefficient(l1, "l1")
        self.l2 = _coefficient(l2, "l2")


class L1(L1L2):
    def __init__(self, l1=0.01):
        super().__init__(l1=l1)

    def get_config(self):
        return {"l1": self.l1}


class L2(L1L2):
    def __init__(self, l2=0.01):
        super().__init__(l2=l2)

    def get_config(self):
        return {"l2": self.l2}


_BY_NAME = {"l1": L1, "l2": L2, "l1_l2": L1L2, "l1l2": L1L2}


def get(identifier):
    """A Regularizer from None, a name (``'l1'``, ``'l2'``, ``'l1_l2'``) or an instance."""
    if identifier is None or isinstance(identifier, Regularizer):
        return identifier
    if isinstance(identifier, dict):  # Keras's serialized form
        return deserialize(identifier)
    if isinstance(identifier, str) and identifier in _BY_NAME:
        return _BY_NAME[identifier]()
    raise ValueError(
        f"Unknown regularizer {identifier!r}. Expected one of {', '.join(_BY_NAME)}, None, "
        "or an instance such as fastmlp.regularizers.L2(0.01)."
    )


_CLASSES = {"L1": L1, "L2": L2, "L1L2": L1L2}


def serialize(regularizer):
    """Keras 3's serialized form (``{'module': 'keras.regularizers', 'class_name': 'L2', ...}``), or None."""
    if regularizer is None:
        return None
    return _keras_config.keras_object("keras.regularizers", type(regularizer).__name__, regularizer.get_config())


def deserialize(config):
    """A regularizer from Keras's serialized form, a name, or None."""
    if config is None or isinstance(config, str):
        return get(config)
    class_name, settings = _keras_config.unpack(config, "regularizer")
    cls = _CLASSES.get(class_name)
    if cls is None:
        raise ValueError(f"Regularizer {class_name!r} is not supported by fastmlp. Supported: {', '.join(_CLASSES)}.")
    allowed = {"L1": {"l1"}, "L2": {"l2"}, "L1L2": {"l1", "l2"}}[class_name]
    return cls(**_keras_config.keyword_args(cls, settings, allowed, "Regularizer"))
