"""Losses by Keras name or class. Each runs natively, fused with the output activation where it can."""

_ALIASES = {
    "binary_crossentropy": "binary_crossentropy",
    "categorical_crossentropy": "categorical_crossentropy",
    "sparse_categorical_crossentropy": "sparse_categorical_crossentropy",
    "mean_squared_error": "mean_squared_error",
    "mse": "mean_squared_error",
}


class Loss:
    name = None

    def get_config(self):
        return {"name": self.name}


class BinaryCrossentropy(Loss):
    name = "binary_crossentropy"


class CategoricalCrossentropy(Loss):
    name = "categorical_crossentropy"


class SparseCategoricalCrossentropy(Loss):
    name = "sparse_categorical_crossentropy"


class MeanSquaredError(Loss):
    name = "mean_squared_error"


def get(identifier):
    """Canonical loss name from a string (``'mse'``, ``'binary_crossentropy'``, ...) or a Loss instance."""
    if isinstance(identifier, Loss):
        return identifier.name
    if isinstance(identifier, type) and issubclass(identifier, Loss) and identifier.name:
        return identifier.name
    if isinstance(identifier, str) and identifier in _ALIASES:
        return _ALIASES[identifier]
    raise ValueError(f"Unknown loss {identifier!r}. Expected one of: {', '.join(_ALIASES)}.")
