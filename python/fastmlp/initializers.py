"""Weight initializers (Keras names and classes), drawing from fastmlp's seeded generator."""

import inspect

import numpy as np

from . import _keras_config, utils


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


class _Random(Initializer):
    """Draws from fastmlp's seeded generator, or from its own when given a `seed`."""

    def __init__(self, seed=None):
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0):
            raise ValueError(f"Expected `seed` to be a non-negative integer or None. Received: seed={seed!r}")
        self.seed = seed

    def _rng(self):
        return utils.rng() if self.seed is None else np.random.default_rng(self.seed)

    def _truncated_normal(self, mean, std, shape):
        rng = self._rng()
        out = rng.normal(0.0, std, size=shape)
        bad = np.abs(out) > 2 * std
        while bad.any():
            out[bad] = rng.normal(0.0, std, size=int(bad.sum()))
            bad = np.abs(out) > 2 * std
        return out + mean

    def get_config(self):
        return {"seed": self.seed}


class RandomNormal(_Random):
    def __init__(self, mean=0.0, stddev=0.05, seed=None):
        super().__init__(seed)
        self.mean, self.stddev = float(mean), float(stddev)

    def __call__(self, shape, dtype="float32"):
        return self._rng().normal(self.mean, self.stddev, size=shape).astype(dtype)

    def get_config(self):
        return {"mean": self.mean, "stddev": self.stddev, "seed": self.seed}


class RandomUniform(_Random):
    def __init__(self, minval=-0.05, maxval=0.05, seed=None):
        super().__init__(seed)
        self.minval, self.maxval = float(minval), float(maxval)

    def __call__(self, shape, dtype="float32"):
        return self._rng().uniform(self.minval, self.maxval, size=shape).astype(dtype)

    def get_config(self):
        return {"minval": self.minval, "maxval": self.maxval, "seed": self.seed}


class TruncatedNormal(_Random):
    """Normal draws redrawn until within 2 standard deviations of the mean."""

    def __init__(self, mean=0.0, stddev=0.05, seed=None):
        super().__init__(seed)
        self.mean, self.stddev = float(mean), float(stddev)

    def __call__(self, shape, dtype="float32"):
        return self._truncated_normal(self.mean, self.stddev, shape).astype(dtype)

    def get_config(self):
        return {"mean": self.mean, "stddev": self.stddev, "seed": self.seed}


class VarianceScaling(_Random):
    """Keras's variance scaling: n = fan_in, fan_out or their mean (`mode`); uniform draws in
    [-sqrt(3 scale / n), +]; truncated normal with stddev sqrt(scale / n) / 0.8796 (the stddev of a
    standard normal truncated at 2); untruncated normal with stddev sqrt(scale / n)."""

    def __init__(self, scale=1.0, mode="fan_in", distribution="truncated_normal", seed=None):
        super().__init__(seed)
        if mode not in ("fan_in", "fan_out", "fan_avg"):
            raise ValueError(f"Expected `mode` to be fan_in, fan_out or fan_avg. Received: mode={mode!r}")
        if distribution not in ("truncated_normal", "untruncated_normal", "uniform"):
            raise ValueError(
                "Expected `distribution` to be truncated_normal, untruncated_normal or uniform. "
                f"Received: distribution={distribution!r}"
            )
        self.scale, self.mode, self.distribution = float(scale), mode, distribution

    def __call__(self, shape, dtype="float32"):
        fan_in, fan_out = _fans(shape)
        n = {"fan_in": fan_in, "fan_out": fan_out, "fan_avg": (fan_in + fan_out) / 2}[self.mode]
        if self.distribution == "uniform":
            limit = np.sqrt(3.0 * self.scale / n)
            return self._rng().uniform(-limit, limit, size=shape).astype(dtype)
        if self.distribution == "untruncated_normal":
            return self._rng().normal(0.0, np.sqrt(self.scale / n), size=shape).astype(dtype)
        return self._truncated_normal(0.0, np.sqrt(self.scale / n) / 0.87962566103423978, shape).astype(dtype)

    def get_config(self):
        return {"scale": self.scale, "mode": self.mode, "distribution": self.distribution, "seed": self.seed}


def _variance_scaling(name, scale, mode, distribution, doc):
    def __init__(self, seed=None):
        VarianceScaling.__init__(self, scale, mode, distribution, seed)

    def get_config(self):
        return {"seed": self.seed}

    return type(name, (VarianceScaling,), {"__init__": __init__, "get_config": get_config, "__doc__": doc})


GlorotUniform = _variance_scaling("GlorotUniform", 1.0, "fan_avg", "uniform",
                                  "U(-L, L) with L = sqrt(6 / (fan_in + fan_out)).")
GlorotNormal = _variance_scaling("GlorotNormal", 1.0, "fan_avg", "truncated_normal",
                                 "Truncated normal with stddev sqrt(2 / (fan_in + fan_out)).")
HeUniform = _variance_scaling("HeUniform", 2.0, "fan_in", "uniform", "U(-L, L) with L = sqrt(6 / fan_in).")
HeNormal = _variance_scaling("HeNormal", 2.0, "fan_in", "truncated_normal",
                             "Truncated normal with stddev sqrt(2 / fan_in).")
LecunUniform = _variance_scaling("LecunUniform", 1.0, "fan_in", "uniform", "U(-L, L) with L = sqrt(3 / fan_in).")
LecunNormal = _variance_scaling("LecunNormal", 1.0, "fan_in", "truncated_normal",
                                "Truncated normal with stddev sqrt(1 / fan_in).")


_BY_NAME = {
    "zeros": Zeros,
    "ones": Ones,
    "glorot_uniform": GlorotUniform,
    "glorot_normal": GlorotNormal,
    "he_uniform": HeUniform,
    "he_normal": HeNormal,
    "lecun_uniform": LecunUniform,
    "lecun_normal": LecunNormal,
    "random_normal": RandomNormal,
    "random_uniform": RandomUniform,
    "truncated_normal": TruncatedNormal,
}


def get(identifier):
    """Resolve an initializer given by name, class instance or class."""
    if isinstance(identifier, Initializer):
        return identifier
    if isinstance(identifier, type) and issubclass(identifier, Initializer):
        return identifier()
    if isinstance(identifier, dict):  # Keras's serialized form
        return deserialize(identifier)
    if isinstance(identifier, str) and identifier in _BY_NAME:
        return _BY_NAME[identifier]()
    raise ValueError(
        f"Unknown initializer {identifier!r}. Expected one of {', '.join(_BY_NAME)}, "
        "or an instance of fastmlp.initializers.Initializer."
    )


_CLASSES = {cls.__name__: cls for cls in (Zeros, Ones, Constant, RandomNormal, RandomUniform, TruncatedNormal,
                                           VarianceScaling, GlorotUniform, GlorotNormal, HeUniform, HeNormal,
                                           LecunUniform, LecunNormal)}


def serialize(initializer):
    """Keras 3's serialized form: ``{'module': 'keras.initializers', 'class_name': 'GlorotUniform', ...}``."""
    return _keras_config.keras_object("keras.initializers", type(initializer).__name__, initializer.get_config())


def deserialize(config):
    """An initializer from Keras's serialized form (or a name)."""
    if isinstance(config, str):
        return get(config)
    class_name, settings = _keras_config.unpack(config, "initializer")
    cls = _CLASSES.get(class_name)
    if cls is None:
        raise ValueError(f"Initializer {class_name!r} is not supported by fastmlp. Supported: {', '.join(_CLASSES)}.")
    allowed = set(inspect.signature(cls.__init__).parameters) - {"self"}
    return cls(**_keras_config.keyword_args(cls, settings, allowed, "Initializer"))
