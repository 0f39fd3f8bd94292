"""Learning-rate schedules (Keras 3's ``keras.optimizers.schedules``), evaluated natively at every
update: ``SGD(learning_rate=ExponentialDecay(0.1, decay_steps=1000, decay_rate=0.96))``."""

import inspect
import math
import numbers

import numpy as np

from .. import _keras_config


def _number(value, name, positive=False):
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) or value < 0 or (
            positive and value == 0):
        kind = "a positive" if positive else "a non-negative"
        raise ValueError(f"Expected `{name}` to be {kind} number. Received: {name}={value!r}")
    return float(value)


class LearningRateSchedule:
    """Base class: ``schedule(step)`` is the learning rate of the update after `step` updates."""

    def __call__(self, step):
        return float(self._value(np.float32(step)))

    def _engine_config(self):
        raise NotImplementedError

    def get_config(self):
        raise NotImplementedError


class ExponentialDecay(LearningRateSchedule):
    """``initial_learning_rate * decay_rate ** (step / decay_steps)`` (floored with ``staircase``)."""

    def __init__(self, initial_learning_rate, decay_steps, decay_rate, staircase=False, name="ExponentialDecay"):
        self.initial_learning_rate = _number(initial_learning_rate, "initial_learning_rate")
        self.decay_steps = _number(decay_steps, "decay_steps", positive=True)
        self.decay_rate = _number(decay_rate, "decay_rate")
        self.staircase = bool(staircase)
        self.name = name

    def _p(self, step):
        p = np.float32(step) / np.float32(self.decay_steps)
        return np.floor(p) if self.staircase else p

    def _value(self, step):
        return np.float32(self.initial_learning_rate) * np.power(np.float32(self.decay_rate), self._p(step))

    def _engine_config(self):
        return {"schedule": "exponential", "initial": self.initial_learning_rate, "decay_steps": self.decay_steps,
                "decay_rate": self.decay_rate, "staircase": self.staircase}

    def get_config(self):
        return {"initial_learning_rate": self.initial_learning_rate, "decay_steps": self.decay_steps,
                "decay_rate": self.decay_rate, "staircase": self.staircase, "name": self.name}


class InverseTimeDecay(ExponentialDecay):
    """``initial_learning_rate / (1 + decay_rate * step / decay_steps)`` (floored with ``staircase``).
    ``InverseTimeDecay(lr, 1, decay)`` is Keras 2's ``decay=``."""

    def __init__(self, initial_learning_rate, decay_steps, decay_rate, staircase=False, name="InverseTimeDecay"):
        super().__init__(initial_learning_rate, decay_steps, decay_rate, staircase, name)

    def _value(self, step):
        return np.float32(self.initial_learning_rate) / (np.float32(1) + np.float32(self.decay_rate) * self._p(step))

    def _engine_config(self):
        return dict(super()._engine_config(), schedule="inverse_time")


class PiecewiseConstantDecay(LearningRateSchedule):
    """``values[0]`` while ``step <= boundaries[0]``, ``values[i]`` while
    ``boundaries[i-1] < step <= boundaries[i]``, ``values[-1]`` after the last boundary."""

    def __init__(self, boundaries, values, name="PiecewiseConstant"):
        boundaries, values = list(boundaries), list(values)
        if len(values) != len(boundaries) + 1:
            raise ValueError(
                "The length of `boundaries` should be 1 less than the length of `values`. "
                f"Received: boundaries={boundaries}, values={values}"
            )
        self.boundaries = [_number(b, "boundaries") for b in boundaries]
        if any(b > a for a, b in zip(self.boundaries[1:], self.boundaries)):
            raise ValueError(f"`boundaries` must be increasing. Received: boundaries={boundaries}")
        self.values = [_number(v, "values") for v in values]
        self.name = name

    def _value(self, step):
        i = 0
        while i < len(self.boundaries) and step > np.float32(self.boundaries[i]):
            i += 1
        return np.float32(self.values[i])

    def _engine_config(self):
        return {"schedule": "piecewise", "boundaries": self.boundaries, "values": self.values}

    def get_config(self):
        return {"boundaries": self.boundaries, "values": self.values, "name": self.name}


class CosineDecay(LearningRateSchedule):
    """``initial_learning_rate * ((1 - alpha) * 0.5 * (1 + cos(pi * min(step, decay_steps) / decay_steps))
    + alpha)``. Keras's linear warmup (``warmup_target``, ``warmup_steps``) is not supported yet."""

    def __init__(self, initial_learning_rate, decay_steps, alpha=0.0, name="CosineDecay", warmup_target=None,
                 warmup_steps=0):
        if warmup_target is not None or warmup_steps:
            raise ValueError("CosineDecay's warmup (warmup_target, warmup_steps) is not supported by fastmlp yet.")
        self.initial_learning_rate = _number(initial_learning_rate, "initial_learning_rate")
        self.decay_steps = _number(decay_steps, "decay_steps", positive=True)
        self.alpha = _number(alpha, "alpha")
        self.name = name

    def _value(self, step):
        f = np.float32
        progress = np.minimum(step, f(self.decay_steps)) / f(self.decay_steps)
        cosine = f(0.5) * (f(1) + np.cos(f(math.pi) * progress))
        return f(self.initial_learning_rate) * ((f(1) - f(self.alpha)) * cosine + f(self.alpha))

    def _engine_config(self):
        return {"schedule": "cosine", "initial": self.initial_learning_rate, "decay_steps": self.decay_steps,
                "alpha": self.alpha}

    def get_config(self):
        return {"initial_learning_rate": self.initial_learning_rate, "decay_steps": self.decay_steps,
                "alpha": self.alpha, "name": self.name}


_CLASSES = {cls.__name__: cls for cls in (ExponentialDecay, InverseTimeDecay, PiecewiseConstantDecay, CosineDecay)}


def serialize(schedule):
    """Keras 3's serialized form: ``{'module': 'keras.optimizers.schedules', 'class_name': ..., ...}``."""
    return _keras_config.keras_object("keras.optimizers.schedules", type(schedule).__name__, schedule.get_config())


def deserialize(config):
    """A schedule from Keras's serialized form."""
    class_name, settings = _keras_config.unpack(config, "learning-rate schedule")
    cls = _CLASSES.get(class_name)
    if cls is None:
        raise ValueError(f"Learning-rate schedule {class_name!r} is not supported by fastmlp. "
                         f"Supported: {', '.join(_CLASSES)}.")
    allowed = set(inspect.signature(cls.__init__).parameters) - {"self"}
    return cls(**_keras_config.keyword_args(cls, settings, allowed, "Schedule"))
