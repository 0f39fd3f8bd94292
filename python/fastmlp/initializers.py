"""Weight initializers (Keras names and classes), drawing from fastmlp's seeded generator."""

import numpy as np

from . import utils


class Initializer:
    def __call__(self, shape, dtype="float32"):
        raise NotImplementedError

    def get_config(self):
        return {}


class Zeros(Initializer):
    def __call__(self, shape, dtype="float32"):
        return np.zeros(shape, dtype)


class Ones(Initializer):
    def __call__(self, shape, dtype="float32"):
        return np.ones(shape, dtype)


class Constant(Initializer):
    def __init__(self, value=0.0):
        self.value = float(value)

    def __call__(self, shape, dtype="float32"):
        return np.full(shape, self.value, dtype)

    def get_config(self):
        return {"value": self.value}


def _fans(shape):
    if len(shape) == 1:
        return shape[0], shape[0]
    return shape[0], shape[1]


class GlorotUniform(Initializer):
    """U(-L, L) with L = sqrt(6 / (fan_in + fan_out))."""

    def __call__(self, shape, dtype="float32"):
        fan_in, fan_out = _fans(shape)
        limit = np.sqrt(6.0 / (fan_in + fan_out))
        return utils.rng().uniform(-limit, limit, size=shape).astype(dtype)


class GlorotNormal(Initializer):
    """Truncated normal (at 2 standard deviations) with stddev sqrt(2 / (fan_in + fan_out))."""

    def __call__(self, shape, dtype="float32"):
        fan_in, fan_out = _fans(shape)
        # 0.8796... is the stddev of a standard normal truncated to [-2, 2] (Keras's correction).
        std = np.sqrt(2.0 / (fan_in + fan_out)) / 0.87962566103423978
        out = utils.rng().normal(0.0, std, size=shape)
        bad = np.abs(out) > 2 * std
        while bad.any():
            out[bad] = utils.rng().normal(0.0, std, size=int(bad.sum()))
            bad = np.abs(out) > 2 * std
        return out.astype(dtype)


_BY_NAME = {
    "zeros": Zeros,
    "ones": Ones,
    "glorot_uniform": GlorotUniform,
    "glorot_normal": GlorotNormal,
}


def get(identifier):
    """Resolve an initializer given by name, class instance or class."""
    if isinstance(identifier, Initializer):
        return identifier
    if isinstance(identifier, type) and issubclass(identifier, Initializer):
        return identifier()
    if isinstance(identifier, str) and identifier in _BY_NAME:
        return _BY_NAME[identifier]()
    raise ValueError(
        f"Unknown initializer {identifier!r}. Expected one of {', '.join(_BY_NAME)}, "
        "or an instance of fastmlp.initializers.Initializer."
    )


def name_of(init):
    for name, cls in _BY_NAME.items():
        if type(init) is cls:
            return name
    return type(init).__name__
