"""Optimizers (Keras 3's update rules), each run as one fused native update over the model's
parameter arena: SGD, Adam, AdamW, RMSprop, Adagrad."""

import inspect
import numbers

from .. import _keras_config
from . import schedules
from .schedules import LearningRateSchedule


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


def _learning_rate(value, name):
    return value if isinstance(value, LearningRateSchedule) else _non_negative(value, name)


_CLIPS = ("clipnorm", "clipvalue", "global_clipnorm")


class Optimizer:
    """Base class. ``iterations`` counts the updates applied, across ``fit`` calls.

    Every optimizer takes Keras's ``clipnorm`` (per weight array), ``global_clipnorm`` and
    ``clipvalue`` (at most one), and a ``learning_rate`` that is a number or a schedule from
    ``fastmlp.optimizers.schedules``.
    """

    def __init__(self, learning_rate, name, clipnorm=None, clipvalue=None, global_clipnorm=None, **kwargs):
        if kwargs:
            raise TypeError(f"{type(self).__name__} got unexpected keyword arguments: {', '.join(sorted(kwargs))}.")
        self._engine = None
        self.learning_rate = learning_rate
        self.name = name
        self._iterations = 0
        clips = {"clipnorm": clipnorm, "clipvalue": clipvalue, "global_clipnorm": global_clipnorm}
        given = [k for k, v in clips.items() if v is not None]
        if len(given) > 1:
            raise ValueError(f"Only one of `clipnorm`, `clipvalue` and `global_clipnorm` can be set. Received: {given}")
        for key, value in clips.items():
            if value is not None and (isinstance(value, bool) or not isinstance(value, numbers.Real) or value <= 0):
                raise ValueError(f"Expected `{key}` to be a positive number. Received: {key}={value!r}")
        self.clipnorm, self.clipvalue, self.global_clipnorm = clipnorm, clipvalue, global_clipnorm

    @property
    def learning_rate(self):
        return self.__dict__["learning_rate"]

    @learning_rate.setter
    def learning_rate(self, value):
        value = _learning_rate(value, "learning_rate")
        self.__dict__["learning_rate"] = value
        if self.__dict__.get("_engine") is not None:
            for key, item in self._rate_config().items():
                self._engine.set_option(key, item)

    def _rate_config(self):
        """The engine settings for the learning rate: a schedule's, or a constant's."""
        lr = self.learning_rate
        if isinstance(lr, LearningRateSchedule):
            return {**lr._engine_config(), "learning_rate": 0.0}
        return {"schedule": "", "learning_rate": lr}

    def _config(self, kind, **settings):
        clips = {k: float(getattr(self, k) or 0.0) for k in _CLIPS}
        return {"kind": kind, **settings, **clips, **self._rate_config()}

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
        lr = self.learning_rate
        config = {"name": self.name, "learning_rate": lr.get_config() if isinstance(lr, LearningRateSchedule) else lr}
        config.update({k: v for k, v in self._engine_config().items() if k in self._public})
        config.update({k: getattr(self, k) for k in _CLIPS})
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

    _public = ("momentum", "nesterov", "decay")

    def __init__(self, learning_rate=0.01, momentum=0.0, nesterov=False, decay=0.0, name="SGD", lr=None, **kwargs):
        if lr is not None:
            learning_rate = lr
        super().__init__(learning_rate, name, **kwargs)
        self.momentum = momentum
        self.nesterov = nesterov
        self.decay = decay

    def _engine_config(self):
        return self._config("sgd", momentum=self.momentum, nesterov=self.nesterov, decay=self.decay)

    def _keras_settings(self):
        return {"momentum": self.momentum, "nesterov": self.nesterov}


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


def _unsupported(cls, kwargs, keys):
    """Remove Keras options fastmlp does not implement from kwargs, refusing them when enabled."""
    for key in keys:
        if kwargs.pop(key, False):
            raise ValueError(f"{cls}({key}=True) is not supported by fastmlp yet.")


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

    _public = ("beta_1", "beta_2", "epsilon", "weight_decay", "decay")

    def __init__(self, learning_rate=0.001, beta_1=0.9, beta_2=0.999, epsilon=1e-7, weight_decay=None,
                 name="adam", decay=0.0, **kwargs):
        _unsupported(type(self).__name__, kwargs, ("amsgrad",))
        super().__init__(learning_rate, name, **kwargs)
        self.beta_1, self.beta_2, self.epsilon = beta_1, beta_2, epsilon
        self.weight_decay = 0.0 if weight_decay is None else weight_decay
        self.decay = decay

    def _engine_config(self):
        return self._config("adam", beta_1=self.beta_1, beta_2=self.beta_2, epsilon=self.epsilon,
                            weight_decay=self.weight_decay, decay=self.decay)

    def _keras_settings(self):
        return {"weight_decay": self.weight_decay or None, "beta_1": self.beta_1, "beta_2": self.beta_2,
                "epsilon": self.epsilon, "amsgrad": False}


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

    _public = ("rho", "momentum", "epsilon", "decay")

    def __init__(self, learning_rate=0.001, rho=0.9, momentum=0.0, epsilon=1e-7, name="rmsprop", decay=0.0,
                 **kwargs):
        _unsupported(type(self).__name__, kwargs, ("centered",))
        super().__init__(learning_rate, name, **kwargs)
        self.rho, self.momentum, self.epsilon, self.decay = rho, momentum, epsilon, decay

    def _engine_config(self):
        return self._config("rmsprop", rho=self.rho, momentum=self.momentum, epsilon=self.epsilon, decay=self.decay)

    def _keras_settings(self):
        return {"rho": self.rho, "momentum": self.momentum, "epsilon": self.epsilon, "centered": False}


class Adagrad(Optimizer):
    """Adagrad, Keras 3's update: ``a += g^2; w -= lr * g / sqrt(a + epsilon)``, a starting at
    ``initial_accumulator_value``."""

    epsilon = _Hyperparameter(_positive)
    decay = _Hyperparameter(_non_negative)

    _public = ("epsilon", "decay")

    def __init__(self, learning_rate=0.001, initial_accumulator_value=0.1, epsilon=1e-7, name="adagrad", decay=0.0,
                 **kwargs):
        super().__init__(learning_rate, name, **kwargs)
        self.initial_accumulator_value = _non_negative(initial_accumulator_value, "initial_accumulator_value")
        self.epsilon, self.decay = epsilon, decay

    def _engine_config(self):
        return self._config("adagrad", epsilon=self.epsilon, initial_accumulator=self.initial_accumulator_value,
                            decay=self.decay)

    def get_config(self):
        return dict(super().get_config(), initial_accumulator_value=self.initial_accumulator_value)

    def _keras_settings(self):
        return {"initial_accumulator_value": self.initial_accumulator_value, "epsilon": self.epsilon}


__all__ = ["Optimizer", "SGD", "Adam", "AdamW", "RMSprop", "Adagrad", "schedules", "get", "serialize", "deserialize"]

_BY_NAME = {"sgd": SGD, "adam": Adam, "adamw": AdamW, "rmsprop": RMSprop, "adagrad": Adagrad}


def get(identifier):
    """Resolve an optimizer given by name (``'sgd'``, ``'adam'``, ...) or instance."""
    if isinstance(identifier, Optimizer):
        return identifier
    if isinstance(identifier, dict):  # Keras's serialized form
        return deserialize(identifier)
    if isinstance(identifier, str) and identifier.lower() in _BY_NAME:
        return _BY_NAME[identifier.lower()]()
    raise ValueError(
        f"Unknown optimizer {identifier!r}. Expected one of: {', '.join(_BY_NAME)}, "
        "or an instance such as fastmlp.optimizers.SGD(learning_rate=0.01)."
    )


_CLASSES = {cls.__name__: cls for cls in (SGD, Adam, AdamW, RMSprop, Adagrad)}
# Keras settings that have no effect at their defaults (ema_momentum without use_ema).
_KERAS_INERT = ("ema_momentum", "ema_overwrite_frequency")


def serialize(optimizer):
    """Keras 3's serialized form: ``{'module': 'keras.optimizers', 'class_name': 'SGD', 'config': ...}``.

    Keras 3 has no ``decay``; a constant learning rate with ``decay > 0`` is written as its Keras 3
    equivalent, ``InverseTimeDecay(learning_rate, decay_steps=1, decay_rate=decay)``.
    """
    lr = optimizer.learning_rate
    if isinstance(lr, LearningRateSchedule):
        rate = schedules.serialize(lr)
    elif getattr(optimizer, "decay", 0.0):
        rate = schedules.serialize(schedules.InverseTimeDecay(lr, 1, optimizer.decay))
    else:
        rate = lr
    config = {"name": optimizer.name, "learning_rate": rate, "weight_decay": None}
    config.update({k: getattr(optimizer, k) for k in _CLIPS})
    config.update(optimizer._keras_settings())
    return _keras_config.keras_object("keras.optimizers", type(optimizer).__name__, config)


def deserialize(config):
    """An optimizer from Keras's serialized form (or a name). Keras settings fastmlp does not
    implement (``use_ema``, ``amsgrad``, ``centered``, ``weight_decay`` outside Adam/AdamW, gradient
    accumulation, loss scaling) raise ValueError when they are enabled."""
    if isinstance(config, str):
        return get(config)
    class_name, settings = _keras_config.unpack(config, "optimizer")
    cls = _CLASSES.get(class_name)
    if cls is None:
        raise ValueError(f"Optimizer {class_name!r} is not supported by fastmlp. Supported: {', '.join(_CLASSES)}.")
    allowed = (set(inspect.signature(cls.__init__).parameters) | set(_CLIPS)) - {"self", "kwargs", "lr"}
    kwargs = _keras_config.keyword_args(cls, settings, allowed, "Optimizer", ignored=_KERAS_INERT)
    if isinstance(kwargs.get("learning_rate"), dict):
        kwargs["learning_rate"] = schedules.deserialize(kwargs["learning_rate"])
    if kwargs.get("weight_decay", 0) is None:
        del kwargs["weight_decay"]
    return cls(**kwargs)
