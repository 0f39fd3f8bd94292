"""Metrics by Keras name: accuracies (``'accuracy'`` picks its kind by Keras 3's shape rule) and the
mean absolute and squared errors (``'mae'``, ``'mse'``)."""

_KINDS = ("binary_accuracy", "categorical_accuracy", "sparse_categorical_accuracy")
_ERRORS = {"mae": "mean_absolute_error", "mean_absolute_error": "mean_absolute_error",
           "mse": "mean_squared_error", "mean_squared_error": "mean_squared_error"}


def resolve(identifier, loss, output_units):
    """The accuracy kind behind a metric name, for a model with `output_units` outputs.

    Keras 3's rule for 'accuracy'/'acc': binary when the prediction has one column, sparse
    categorical when the targets are integer labels (sparse loss), else categorical.
    """
    if not isinstance(identifier, str):
        raise TypeError(f"Expected each metric to be a string such as 'accuracy'. Received: {identifier!r}")
    sparse = loss == "sparse_categorical_crossentropy"
    if identifier in ("accuracy", "acc"):
        if output_units == 1:
            return "binary_accuracy"
        return "sparse_categorical_accuracy" if sparse else "categorical_accuracy"
    if identifier in _ERRORS:
        if sparse:
            raise ValueError(f"Metric {identifier!r} compares predictions with targets of the output's width, "
                             "not with sparse integer labels.")
        return _ERRORS[identifier]
    if identifier in _KINDS:
        if (identifier == "sparse_categorical_accuracy") != sparse and identifier != "binary_accuracy":
            raise ValueError(
                f"Metric {identifier!r} does not fit loss {loss!r}: sparse_categorical_accuracy needs integer "
                "labels (loss='sparse_categorical_crossentropy') and categorical_accuracy needs one-hot targets."
            )
        if identifier == "binary_accuracy" and sparse:
            raise ValueError("Metric 'binary_accuracy' needs targets of the output's width, not sparse labels.")
        return identifier
    raise ValueError(
        f"Unknown metric {identifier!r}. Expected one of: accuracy, acc, {', '.join(_KINDS)}, {', '.join(_ERRORS)}."
    )
