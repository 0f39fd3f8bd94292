"""``BatchNormalization`` (importable as ``fastmlp.layers.normalization.BatchNormalization``)."""

import math
import numbers

import numpy as np

from .. import initializers, regularizers
from .core import Layer, _input_dim_from_shape


def _real(value, name, low, high, low_open=False):
    ok = (not isinstance(value, bool) and isinstance(value, numbers.Real) and math.isfinite(value)
          and (value > low if low_open else value >= low) and value <= high)
    if not ok:
        interval = f"{'(' if low_open else '['}{low:g}, {high:g}]" if high != math.inf else f"> {low:g}"
        raise ValueError(f"Received an invalid value for `{name}` of BatchNormalization, expected a number "
                         f"{'in ' if high != math.inf else ''}{interval}. Received: {name}={value!r}")
    return float(value)


class BatchNormalization(Layer):
    """Normalizes each feature over the batch, then scales and shifts it (Keras 3's layer).

    In training (``fit``), per feature over the batch's samples::

        mean = mean(x);  var = mean((x - mean)^2)          (the biased variance)
        y = gamma * (x - mean) / sqrt(var + epsilon) + beta
        moving_mean = moving_mean * momentum + mean * (1 - momentum)   (likewise moving_variance)

    and the gradient flows through the batch statistics. In ``predict`` and ``evaluate`` (and on
    validation data) it uses the moving statistics instead. Weights, in Keras's order:
    ``[gamma, beta, moving_mean, moving_variance]`` (``gamma`` only with ``scale=True``, ``beta``
    only with ``center=True``); ``gamma`` and ``beta`` are trained by the optimizer, the moving
    statistics are non-trainable state updated once per training step.

    It may follow the input (or a ``Dropout`` on it), a ``Dense`` layer (or the ``Activation``
    after it), or a ``Dropout``; an ``Activation`` may follow it. fastmlp runs it in the native
    engine (NumPy reference alike); not on ``backend='cuda'`` and not with ``distributed=``.

    Args:
        axis: the features' axis; fastmlp's layers are flat ``(samples, features)``: -1 (or 1).
        momentum: of the moving statistics, in [0, 1].
        epsilon: added to the variance, > 0.
        center: whether to add the offset ``beta``.
        scale: whether to multiply by ``gamma``.
        beta_initializer, gamma_initializer, moving_mean_initializer, moving_variance_initializer:
            initializers of the four weights.
        beta_regularizer, gamma_regularizer: ``fastmlp.regularizers`` penalties added to the loss.
        input_shape: ``(features,)``, when it is the model's first layer.
        beta_constraint, gamma_constraint, renorm, renorm_clipping, renorm_momentum, synchronized:
            accepted at Keras's defaults only (fastmlp has no constraints and no batch renormalization).
    """

    _name_prefix = "batch_normalization"

    def __init__(self, axis=-1, momentum=0.99, epsilon=1e-3, center=True, scale=True, beta_initializer="zeros",
                 gamma_initializer="ones", moving_mean_initializer="zeros", moving_variance_initializer="ones",
                 beta_regularizer=None, gamma_regularizer=None, beta_constraint=None, gamma_constraint=None,
                 renorm=False, renorm_clipping=None, renorm_momentum=0.99, synchronized=False, input_shape=None,
                 name=None, **kwargs):
        if kwargs:
            raise TypeError(f"BatchNormalization got unexpected keyword arguments: {', '.join(sorted(kwargs))}.")
        super().__init__(name)
        if isinstance(axis, bool) or not isinstance(axis, (int, np.integer)) or axis not in (-1, 1):
            raise ValueError("Received an invalid value for `axis` of BatchNormalization: fastmlp's layers take flat "
                             f"(samples, features) inputs, so the features' axis is -1 (or 1). Received: axis={axis!r}")
        self.axis = int(axis)
        self.momentum = _real(momentum, "momentum", 0.0, 1.0)
        self.epsilon = _real(epsilon, "epsilon", 0.0, math.inf, low_open=True)
        for arg, value in (("center", center), ("scale", scale)):
            if not isinstance(value, bool):
                raise TypeError(f"Expected `{arg}` to be True or False. Received: {arg}={value!r}")
        self.center, self.scale = center, scale
        self.beta_initializer = initializers.get(beta_initializer)
        self.gamma_initializer = initializers.get(gamma_initializer)
        self.moving_mean_initializer = initializers.get(moving_mean_initializer)
        self.moving_variance_initializer = initializers.get(moving_variance_initializer)
        self.beta_regularizer = regularizers.get(beta_regularizer)
        self.gamma_regularizer = regularizers.get(gamma_regularizer)
        for arg, value in (("beta_constraint", beta_constraint), ("gamma_constraint", gamma_constraint),
                           ("renorm", renorm), ("synchronized", synchronized)):
            if value not in (None, False):
                raise ValueError(f"BatchNormalization's `{arg}` is not supported by fastmlp (it has no weight "
                                 f"constraints and no batch renormalization). Received: {arg}={value!r}")
        self.renorm_clipping = renorm_clipping  # read by Keras only with renorm=True
        self.renorm_momentum = renorm_momentum
        if input_shape is not None:
            self.input_dim = _input_dim_from_shape(input_shape, "BatchNormalization")
        self.gamma = self.beta = self.moving_mean = self.moving_variance = None

    def build(self, input_dim, dtype="float32"):
        """Create the weights for `input_dim` features, drawing them from the initializers."""
        self.input_dim = input_dim
        shape = (input_dim,)
        self.gamma = self.gamma_initializer(shape, dtype) if self.scale else None
        self.beta = self.beta_initializer(shape, dtype) if self.center else None
        self.moving_mean = self.moving_mean_initializer(shape, dtype)
        self.moving_variance = self.moving_variance_initializer(shape, dtype)
        self.built = True

    @property
    def units(self):
        """Its output width: the features it normalizes."""
        return self.input_dim

    def _weight_names(self):
        return [n for n, on in (("gamma", self.scale), ("beta", self.center)) if on] + ["moving_mean",
                                                                                     "moving_variance"]

    @property
    def weights(self):
        return [getattr(self, n) for n in self._weight_names()] if self.built else []

    @property
    def trainable_weights(self):
        return self.weights[:-2]

    @property
    def non_trainable_weights(self):
        return self.weights[-2:]

    def get_weights(self):
        return [np.array(w) for w in self.weights]

    def check_weights(self, weights):
        """`weights` as arrays after checking them against this layer's: count, shapes, real and finite."""
        names = self._weight_names()
        weights = list(weights)
        if len(weights) != len(names):
            raise ValueError(f"Layer {self.name!r} expects {len(names)} weight arrays ({', '.join(names)}); "
                             f"received {len(weights)}.")
        out = []
        for target, value, what in zip(self.weights, weights, names):
            value = np.asarray(value)
            if value.shape != target.shape:
                raise ValueError(f"Layer {self.name!r} {what} has shape {target.shape}; received an array of shape "
                                 f"{value.shape}.")
            if value.dtype.kind not in "biuf":
                raise TypeError(f"Layer {self.name!r} {what} must be real numbers; received dtype {value.dtype}.")
            if not np.all(np.isfinite(value)):
                raise ValueError(f"Layer {self.name!r} {what} contains NaN or infinity.")
            out.append(value)
        return out

    def set_weights(self, weights):
        for target, value in zip(self.weights, self.check_weights(weights)):
            target[...] = value

    def _adopt_views(self, trainable, moving):
        """Copy the weights into the engine's views (iterators over its arenas, in Keras's order) and
        keep the views."""
        for name in self._weight_names():
            view = next(trainable if name in ("gamma", "beta") else moving)
            view[...] = getattr(self, name)
            setattr(self, name, view)

    def _engine_spec(self, activation=None):
        """Its settings for the engines' layer specs (csrc/common.hpp BatchNormSpec)."""
        spec = {"momentum": self.momentum, "epsilon": self.epsilon, "center": self.center, "scale": self.scale}
        for which, regularizer in (("gamma", self.gamma_regularizer), ("beta", self.beta_regularizer)):
            if regularizer is not None:
                spec[f"{which}_l1"], spec[f"{which}_l2"] = regularizer.l1, regularizer.l2
        if activation is not None:
            spec["activation"] = activation
        return spec

    _config_keys = ("name", "axis", "momentum", "epsilon", "center", "scale", "beta_initializer", "gamma_initializer",
                    "moving_mean_initializer", "moving_variance_initializer", "beta_regularizer", "gamma_regularizer",
                    "beta_constraint", "gamma_constraint", "renorm", "renorm_clipping", "renorm_momentum",
                    "synchronized")

    def get_config(self):
        return dict(
            super().get_config(),
            axis=self.axis,
            momentum=self.momentum,
            epsilon=self.epsilon,
            center=self.center,
            scale=self.scale,
            beta_initializer=initializers.serialize(self.beta_initializer),
            gamma_initializer=initializers.serialize(self.gamma_initializer),
            moving_mean_initializer=initializers.serialize(self.moving_mean_initializer),
            moving_variance_initializer=initializers.serialize(self.moving_variance_initializer),
            beta_regularizer=regularizers.serialize(self.beta_regularizer),
            gamma_regularizer=regularizers.serialize(self.gamma_regularizer),
            beta_constraint=None,
            gamma_constraint=None,
            synchronized=False,
            renorm=False,
            renorm_clipping=self.renorm_clipping,
            renorm_momentum=self.renorm_momentum,
        )
