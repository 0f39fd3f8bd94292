"""Activation functions by name, and NumPy implementations of each (``fastmlp.activations.relu(x)``)."""

from .reference import kernels as _ref

ALL = ("linear", "relu", "sigmoid", "tanh", "softmax", "leaky_relu", "elu", "selu", "hard_sigmoid", "softplus",
       "softsign", "exponential")


def _make(name):
    def fn(x):
        return _ref.act_forward(_ref.as_float(x), name)

    fn.__name__ = name
    fn.__doc__ = f"The `{name}` activation, applied to a NumPy array (softmax over the last axis)."
    return fn


linear = _make("linear")
relu = _make("relu")
sigmoid = _make("sigmoid")
tanh = _make("tanh")
softmax = _make("softmax")
leaky_relu = _make("leaky_relu")
elu = _make("elu")
selu = _make("selu")
hard_sigmoid = _make("hard_sigmoid")
softplus = _make("softplus")
softsign = _make("softsign")
exponential = _make("exponential")

_BY_FUNCTION = {globals()[name]: name for name in ALL}
_MISSING = ("gelu", "swish", "silu")  # their derivatives need the pre-activation: not in the engine yet


def get(identifier):
    """Resolve an activation given by name, by one of this module's functions, or None (linear)."""
    if identifier is None:
        return "linear"
    if isinstance(identifier, str):
        if identifier in ALL:
            return identifier
        if identifier in _MISSING:
            raise ValueError(f"The {identifier!r} activation is not supported by fastmlp yet. Supported: {', '.join(ALL)}.")
        raise ValueError(
            f"Unknown activation {identifier!r}. Expected one of {', '.join(ALL)} (or None for linear)."
        )
    if callable(identifier) and identifier in _BY_FUNCTION:
        return _BY_FUNCTION[identifier]
    raise TypeError(
        "Expected `activation` to be a string naming one of "
        f"{', '.join(ALL)}, or a function from fastmlp.activations. Received: activation={identifier!r}"
    )

