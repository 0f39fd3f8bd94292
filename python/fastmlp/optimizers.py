"""Optimizers. ``SGD`` runs as one fused native update over the model's parameter arena."""

import numbers


def _non_negative(value, name):
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not value >= 0:
        raise ValueError(f"Expected `{name}` to be a non-negative number. Received: {name}={value!r}")
    return float(value)


class Optimizer:
    """Base class. ``iterations`` counts the updates applied, across ``fit`` calls."""

    def __init__(self, learning_rate, name):
        self.learning_rate = _non_negative(learning_rate, "learning_rate")
        self.name = name
        self._iterations = 0
        self._engine = None

    @property
    def iterations(self):
        return self._engine.iterations if self._engine is not None else self._iterations

    def _attach(self, engine):
        if self._engine is not None:
            self._iterations = self._engine.iterations
        self._engine = engine
        engine.iterations = self._iterations


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

    def __init__(self, learning_rate=0.01, momentum=0.0, nesterov=False, decay=0.0, name="SGD", lr=None, **kwargs):
        if kwargs:
            raise TypeError(f"SGD got unexpected keyword arguments: {', '.join(sorted(kwargs))}.")
        if lr is not None:
            learning_rate = lr
        super().__init__(learning_rate, name)
        momentum = _non_negative(momentum, "momentum")
        if momentum > 1:
            raise ValueError(f"Expected `momentum` to be a float between [0, 1]. Received: momentum={momentum!r}")
        self.momentum = momentum
        if not isinstance(nesterov, bool):
            raise TypeError(f"Expected `nesterov` to be True or False. Received: nesterov={nesterov!r}")
        self.nesterov = nesterov
        self.decay = _non_negative(decay, "decay")

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
