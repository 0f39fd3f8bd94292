"""Activation functions by name, and NumPy implementations of each (``fastmlp.activations.relu(x)``)."""

from .reference import kernels as _ref

ALL = ("linear", "relu", "sigmoid", "tanh", "softmax", "leaky_relu", "elu", "selu", "hard_sigmoid", "softplus",
       "softsign", "exponential", "gelu", "silu")
ALIASES = {"swish": "silu"}  # Keras 3 resolves 'swish' to silu and serializes it as 'silu'


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
gelu = _make("gelu")  # exact, Keras 3's default approximate=False: x/2 (1 + erf(x / sqrt 2))
silu = _make("silu")  # x sigmoid(x)
swish = silu

_BY_FUNCTION = {globals()[name]: name for name in ALL}


def get(identifier):
    """Resolve an activation given by name, by one of this module's functions, or None (linear)."""
    if identifier is None:
        return "linear"
    if isinstance(identifier, str):
        if identifier in ALL:
            return identifier
        if identifier in ALIASES:
            return ALIASES[identifier]
        raise ValueError(
            f"Unknown activation {identifier!r}. Expected one of {', '.join(ALL)} (or None for linear)."
        )
    if callable(identifier) and identifier in _BY_FUNCTION:
        return _BY_FUNCTION[identifier]
    raise TypeError(
        "Expected `activation` to be a string naming one of "
        f"{', '.join(ALL)}, or a function from fastmlp.activations. Received: activation={identifier!r}"
    )

