"""Losses by Keras name or class (Keras 3 definitions), each run natively, fused with the output
activation where it can: cross-entropies on probabilities or on logits (``from_logits=True``) with
``label_smoothing``, mean squared and absolute error, Huber."""

import numbers

from . import _keras_config


class Loss:
    """Base class of the losses; ``get_config`` describes one."""

    name = None

    def __init__(self, from_logits=False, label_smoothing=0.0):
        if not isinstance(from_logits, bool):
            raise TypeError(f"Expected `from_logits` to be True or False. Received: from_logits={from_logits!r}")
        if isinstance(label_smoothing, bool) or not isinstance(label_smoothing, numbers.Real) or not (
                0 <= label_smoothing <= 1):
            raise ValueError(f"Expected `label_smoothing` in [0, 1]. Received: label_smoothing={label_smoothing!r}")
        self.from_logits = from_logits
        self.label_smoothing = float(label_smoothing)

    def _engine_name(self):
        return self.name + ("_from_logits" if self.from_logits else "")

    def _engine_options(self):
        return {"huber_delta": 1.0, "label_smoothing": self.label_smoothing}

    def get_config(self):
        """Keras 3's config of this loss (``keras.losses.BinaryCrossentropy(...).get_config()``)."""
        return {"name": self.name, "reduction": "sum_over_batch_size", "from_logits": self.from_logits,
                "label_smoothing": self.label_smoothing, "axis": -1}


class BinaryCrossentropy(Loss):
    name = "binary_crossentropy"


class CategoricalCrossentropy(Loss):
    name = "categorical_crossentropy"


class SparseCategoricalCrossentropy(Loss):
    name = "sparse_categorical_crossentropy"

    def __init__(self, from_logits=False):
        super().__init__(from_logits)

    def get_config(self):
        return {"name": self.name, "reduction": "sum_over_batch_size", "from_logits": self.from_logits}


class MeanSquaredError(Loss):
    name = "mean_squared_error"

    def __init__(self):
        super().__init__()

    def get_config(self):
        return {"name": self.name, "reduction": "sum_over_batch_size"}


class MeanAbsoluteError(Loss):
    name = "mean_absolute_error"

    def __init__(self):
        super().__init__()

    def get_config(self):
        return {"name": self.name, "reduction": "sum_over_batch_size"}


class Huber(Loss):
    """``0.5 e^2`` where ``|e| <= delta``, else ``delta * |e| - 0.5 delta^2``, averaged over the last axis."""

    name = "huber"

    def __init__(self, delta=1.0):
        super().__init__()
        if isinstance(delta, bool) or not isinstance(delta, numbers.Real) or not delta > 0:
            raise ValueError(f"Expected `delta` to be a positive number. Received: delta={delta!r}")
        self.delta = float(delta)

    def _engine_options(self):
        return {"huber_delta": self.delta, "label_smoothing": 0.0}

    def get_config(self):
        return {"name": self.name, "reduction": "sum_over_batch_size", "delta": self.delta}


_BY_NAME = {
    "binary_crossentropy": BinaryCrossentropy,
    "categorical_crossentropy": CategoricalCrossentropy,
    "sparse_categorical_crossentropy": SparseCategoricalCrossentropy,
    "mean_squared_error": MeanSquaredError,
    "mse": MeanSquaredError,
    "mean_absolute_error": MeanAbsoluteError,
    "mae": MeanAbsoluteError,
    "huber": Huber,
}


def get(identifier):
    """A Loss instance from a name (``'mse'``, ``'binary_crossentropy'``, ...), a class or an instance."""
    if isinstance(identifier, Loss):
        return identifier
    if isinstance(identifier, type) and issubclass(identifier, Loss) and identifier.name:
        return identifier()
    if isinstance(identifier, dict):  # Keras's serialized form
        return deserialize(identifier)
    if isinstance(identifier, str) and identifier in _BY_NAME:
        return _BY_NAME[identifier]()
    raise ValueError(f"Unknown loss {identifier!r}. Expected one of: {', '.join(_BY_NAME)}, or a fastmlp.losses.Loss.")


_CLASSES = {cls.__name__: cls for cls in (BinaryCrossentropy, CategoricalCrossentropy, SparseCategoricalCrossentropy,
                                           MeanSquaredError, MeanAbsoluteError, Huber)}
_KERAS_SETTINGS = {"from_logits", "label_smoothing", "delta"}


def serialize(loss):
    """Keras 3's serialized form: ``{'module': 'keras.losses', 'class_name': 'CategoricalCrossentropy', ...}``."""
    return _keras_config.keras_object("keras.losses", type(loss).__name__, loss.get_config())


def deserialize(config):
    """A Loss from Keras's serialized form, or from a name such as ``'mse'``."""
    if isinstance(config, str):
        return get(config)
    class_name, settings = _keras_config.unpack(config, "loss")
    if class_name == "function" and isinstance(settings, str):  # a loss function, e.g. keras.losses.mse
        return get(settings)
    cls = _CLASSES.get(class_name)
    if cls is None:
        raise ValueError(f"Loss {class_name!r} is not supported by fastmlp. Supported: {', '.join(_CLASSES)}.")
    if settings.get("reduction", "sum_over_batch_size") not in ("sum_over_batch_size", "auto", None):
        raise ValueError(f"Loss {class_name}: reduction={settings['reduction']!r} is not supported by fastmlp; "
                         "it computes Keras's default, 'sum_over_batch_size'.")
    if settings.get("axis", -1) != -1:
        raise ValueError(f"Loss {class_name}: axis={settings['axis']!r} is not supported; fastmlp reduces the last axis.")
    allowed = _KERAS_SETTINGS & set(cls().get_config())
    return cls(**_keras_config.keyword_args(cls, settings, allowed, "Loss", ignored=("name", "reduction", "axis",
                                                                                      "dtype")))
