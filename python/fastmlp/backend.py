"""Global numeric settings, as in ``keras.backend``: the float type models are compiled in."""

_FLOATX = "float32"
_VALID = ("float32", "float64")


def floatx():
    """Return the default float type of compiled models: ``'float32'`` or ``'float64'``."""
    return _FLOATX


def set_floatx(value):
    """Set the float type used by models compiled from now on (``'float32'`` or ``'float64'``)."""
    global _FLOATX
    if value not in _VALID:
        raise ValueError(f"Unknown `floatx` value. Expected one of {_VALID}. Received: floatx={value!r}")
    _FLOATX = value
