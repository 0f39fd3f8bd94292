"""Optimizers (Keras 3's update rules), each run as one fused native update over the model's
parameter arena: SGD, Adam, AdamW, RMSprop, Adagrad."""

import numbers


def _non_negative(value, name):
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not value >= 0:
        raise ValueError(f"Expected `{name}` to be a non-negative number. Received: {name}={value!r}")
    return float(value)


class _Hyperparameter:
    """An optimizer setting that writes through to the engine of the compiled model, so that a
    change between epochs (a schedule, a callback) takes effect at the next batch, as in Keras."""

    def __init__(self, check):
        self.check = check

    def __set_name__(self, owner, name):
        self.name = name

    def __get__(self, obj, owner=None):
        return self if obj is None else obj.__dict__[self.name]

    def __set__(self, obj, value):
        value = self.check(value, self.name)
        obj.__dict__[self.name] = value
        if obj.__dict__.get("_engine") is not None:
            obj._engine.set_option(self.name, value)


def _momentum(value, name):
    value = _non_negative(value, name)
    if value > 1:
        raise ValueError(f"Expected `{name}` to be a float between [0, 1]. Received: {name}={value!r}")
    return value


def _flag(value, name):
    if not isinstance(value, bool):
        raise TypeError(f"Expected `{name}` to be True or False. Received: {name}={value!r}")
    return value


class Optimizer:
    """Base class. ``iterations`` counts the updates applied, across ``fit`` calls."""

    learning_rate = _Hyperparameter(_non_negative)

    def __init__(self, learning_rate, name):
        self._engine = None
        self.learning_rate = learning_rate
        self.name = name
        self._iterations = 0

    @property
    def iterations(self):
        return self._engine.iterations if self._engine is not None else self._iterations

    def _attach(self, engine):
        if self._engine is not None:
            self._iterations = self._engine.iterations
        self._engine = engine
        engine.iterations = self._iterations

    def _engine_config(self):
        """The settings the engine is built with (csrc/common.hpp OptimizerConfig)."""
        raise NotImplementedError

    def get_config(self):
        config = {"name": self.name}
        config.update({k: v for k, v in self._engine_config().items() if k != "kind"})
        return config


class SGD(Optimizer):
    """Gradient descent with momentum, Keras's form.

    ``v = momentum * v - lr_t * g;  w += v``  (Nesterov: ``w += momentum * v - lr_t * g``), with the
    Keras 2 time decay ``lr_t = learning_rate / (1 + decay * iterations)`` applied every batch.

    Args:
        learning_rate: float >= 0 (``lr`` is accepted as the Keras 2 alias).
        momentum: float in [0, 1].
        nesterov: whether to apply Nesterov momentum.
        decay: float >= 0, Keras 2 inverse time decay per update.
    """

    momentum = _Hyperparameter(_momentum)
    nesterov = _Hyperparameter(_flag)
    decay = _Hyperparameter(_non_negative)

    def __init__(self, learning_rate=0.01, momentum=0.0, nesterov=False, decay=0.0, name="SGD", lr=None, **kwargs):
        if kwargs:
            raise TypeError(f"SGD got unexpected keyword arguments: {', '.join(sorted(kwargs))}.")
        if lr is not None:
            learning_rate = lr
        super().__init__(learning_rate, name)
        self.momentum = momentum
        self.nesterov = nesterov
        self.decay = decay

    def _engine_config(self):
        return {"kind": "sgd", "learning_rate": self.learning_rate, "momentum": self.momentum,
                "nesterov": self.nesterov, "decay": self.decay}


def _positive(value, name):
    value = _non_negative(value, name)
    if value == 0:
        raise ValueError(f"Expected `{name}` to be a positive number. Received: {name}={value!r}")
    return value


def _unit(value, name):
    value = _non_negative(value, name)
    if value >= 1:
        raise ValueError(f"Expected `{name}` to be in [0, 1). Received: {name}={value!r}")
    return value


def _no_kwargs(cls, kwargs, unsupported=()):
    for key in unsupported:
        if kwargs.get(key):
            raise ValueError(f"{cls}({key}={kwargs[key]!r}) is not supported by fastmlp yet.")
    rest = sorted(set(kwargs) - set(unsupported))
    if rest:
        raise TypeError(f"{cls} got unexpected keyword arguments: {', '.join(rest)}.")


class Adam(Optimizer):
    """Adam, Keras 3's update (epsilon added to sqrt(v), not to the bias-corrected value):

    ``alpha = lr * sqrt(1 - beta_2^t) / (1 - beta_1^t); m += (g - m)(1 - beta_1);
    v += (g^2 - v)(1 - beta_2); w -= alpha * m / (sqrt(v) + epsilon)``, t = iterations + 1.
    ``weight_decay`` (decoupled, as AdamW) first does ``w -= w * weight_decay * lr``.
    """

    beta_1 = _Hyperparameter(_unit)
    beta_2 = _Hyperparameter(_unit)
    epsilon = _Hyperparameter(_positive)
    weight_decay = _Hyperparameter(_non_negative)
    decay = _Hyperparameter(_non_negative)

    def __init__(self, learning_rate=0.001, beta_1=0.9, beta_2=0.999, epsilon=1e-7, weight_decay=None,
                 name="adam", decay=0.0, **kwargs):
        _no_kwargs(type(self).__name__, kwargs, unsupported=("amsgrad",))
        super().__init__(learning_rate, name)
        self.beta_1, self.beta_2, self.epsilon = beta_1, beta_2, epsilon
        self.weight_decay = 0.0 if weight_decay is None else weight_decay
        self.decay = decay

    def _engine_config(self):
        return {"kind": "adam", "learning_rate": self.learning_rate, "beta_1": self.beta_1, "beta_2": self.beta_2,
                "epsilon": self.epsilon, "weight_decay": self.weight_decay, "decay": self.decay}


class AdamW(Adam):
    """Adam with decoupled weight decay (Keras 3 default ``weight_decay=0.004``)."""

    def __init__(self, learning_rate=0.001, weight_decay=0.004, beta_1=0.9, beta_2=0.999, epsilon=1e-7,
                 name="adamw", **kwargs):
        super().__init__(learning_rate, beta_1, beta_2, epsilon, weight_decay, name, **kwargs)


class RMSprop(Optimizer):
    """RMSprop, Keras 3's update (centered=False):

    ``a = rho * a + (1 - rho) g^2; inc = lr * g / sqrt(a + epsilon)``; ``w -= inc``, or with
    momentum ``s = momentum * s + inc; w -= s``.
    """

    rho = _Hyperparameter(_unit)
    momentum = _Hyperparameter(_momentum)
    epsilon = _Hyperparameter(_positive)
    decay = _Hyperparameter(_non_negative)

    def __init__(self, learning_rate=0.001, rho=0.9, momentum=0.0, epsilon=1e-7, name="rmsprop", decay=0.0,
                 **kwargs):
        _no_kwargs(type(self).__name__, kwargs, unsupported=("centered",))
        super().__init__(learning_rate, name)
        self.rho, self.momentum, self.epsilon, self.decay = rho, momentum, epsilon, decay

    def _engine_config(self):
        return {"kind": "rmsprop", "learning_rate": self.learning_rate, "rho": self.rho, "momentum": self.momentum,
                "epsilon": self.epsilon, "decay": self.decay}


class Adagrad(Optimizer):
    """Adagrad, Keras 3's update: ``a += g^2; w -= lr * g / sqrt(a + epsilon)``, a starting at
    ``initial_accumulator_value``."""

    epsilon = _Hyperparameter(_positive)
    decay = _Hyperparameter(_non_negative)

    def __init__(self, learning_rate=0.001, initial_accumulator_value=0.1, epsilon=1e-7, name="adagrad", decay=0.0,
                 **kwargs):
        _no_kwargs(type(self).__name__, kwargs)
        super().__init__(learning_rate, name)
        self.initial_accumulator_value = _non_negative(initial_accumulator_value, "initial_accumulator_value")
        self.epsilon, self.decay = epsilon, decay

    def _engine_config(self):
        return {"kind": "adagrad", "learning_rate": self.learning_rate, "epsilon": self.epsilon,
                "initial_accumulator": self.initial_accumulator_value, "decay": self.decay}


_BY_NAME = {"sgd": SGD, "adam": Adam, "adamw": AdamW, "rmsprop": RMSprop, "adagrad": Adagrad}


def get(identifier):
    """Resolve an optimizer given by name (``'sgd'``, ``'adam'``, ...) or instance."""
    if isinstance(identifier, Optimizer):
        return identifier
    if isinstance(identifier, str) and identifier.lower() in _BY_NAME:
        return _BY_NAME[identifier.lower()]()
    raise ValueError(
        f"Unknown optimizer {identifier!r}. Expected one of: {', '.join(_BY_NAME)}, "
        "or an instance such as fastmlp.optimizers.SGD(learning_rate=0.01)."
    )
