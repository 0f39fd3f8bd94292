"""Optimizers. ``SGD`` runs as one fused native update over the model's parameter arena."""

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
            setattr(obj._engine, self.name, value)


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
        """The settings the engine is built with: (learning_rate, momentum, decay, nesterov)."""
        raise NotImplementedError


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
        return (self.learning_rate, self.momentum, self.decay, self.nesterov)

    def get_config(self):
        return {
            "name": self.name,
            "learning_rate": self.learning_rate,
            "momentum": self.momentum,
            "nesterov": self.nesterov,
            "decay": self.decay,
        }


_BY_NAME = {"sgd": SGD}


def get(identifier):
    """Resolve an optimizer given by name (``'sgd'``) or instance."""
    if isinstance(identifier, Optimizer):
        return identifier
    if isinstance(identifier, str) and identifier.lower() in _BY_NAME:
        return _BY_NAME[identifier.lower()]()
    raise ValueError(
        f"Unknown optimizer {identifier!r}. Expected one of: {', '.join(_BY_NAME)}, "
        "or an instance such as fastmlp.optimizers.SGD(learning_rate=0.01)."
    )
