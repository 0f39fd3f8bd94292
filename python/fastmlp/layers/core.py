"""Core layers: ``Dense``, ``Dropout``, ``Activation``, ``Flatten`` and ``InputLayer`` (importable as
``fastmlp.layers.core.Dense``)."""

import numbers

import numpy as np

from .. import _keras_config, activations, backend, initializers, regularizers, utils

_NAME_COUNTS = {}


def _auto_name(prefix):
    n = _NAME_COUNTS.get(prefix, 0)
    _NAME_COUNTS[prefix] = n + 1
    return prefix if n == 0 else f"{prefix}_{n}"


def _positive_int(value, name, owner):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise ValueError(
            f"Received an invalid value for `{name}` of {owner}, expected a positive integer. "
            f"Received: {name}={value!r}"
        )
    return int(value)


def _input_dim_from_shape(input_shape, owner):
    if not isinstance(input_shape, (tuple, list)) or len(input_shape) != 1:
        raise ValueError(
            f"{owner} takes flat inputs: expected `input_shape` to be a 1-tuple such as (features,). "
            f"Received: input_shape={input_shape!r}"
        )
    return _positive_int(input_shape[0], "input_shape[0]", owner)


class Layer:
    def __init__(self, name=None):
        if name is not None and not isinstance(name, str):
            raise TypeError(f"Expected `name` to be a string. Received: name={name!r}")
        self.name = name or _auto_name(self._name_prefix)
        self.built = False
        self.input_dim = None
        self._owner = None  # weak reference to the model this layer was added to

    _name_prefix = "layer"

    def get_weights(self):
        return []

    def set_weights(self, weights):
        if len(weights):
            raise ValueError(f"Layer {self.name!r} has no weights; received {len(weights)} arrays.")

    @property
    def weights(self):
        return []

    @property
    def trainable_weights(self):
        return self.weights

    @property
    def non_trainable_weights(self):
        return []

    def count_params(self):
        return int(sum(np.prod(w.shape) for w in self.weights))

    # The keys of Keras's config this layer reads (besides "trainable" and "dtype").
    _config_keys = ("name",)

    def _dtype_name(self):
        return self.weights[0].dtype.name if self.weights else backend.floatx()

    def get_config(self):
        """Keras 3's config of this layer (what ``config.json`` holds for it)."""
        return {"name": self.name, "trainable": True, "dtype": self._dtype_name()}

    @classmethod
    def from_config(cls, config):
        """A layer from Keras's config. Keys fastmlp does not need are ignored when they hold
        Keras's defaults; a setting it does not implement raises ValueError."""
        config = dict(config)
        if config.pop("trainable", True) is not True:
            raise ValueError(f"{cls.__name__} {config.get('name')!r}: trainable=False (frozen layers) is not "
                             "supported by fastmlp.")
        config.pop("dtype", None)  # the model's float type, read by Sequential.from_config
        return cls(**_keras_config.keyword_args(cls, config, cls._config_keys, "Layer"))


def _sample_shape(shape, owner):
    if not isinstance(shape, (tuple, list)) or not shape:
        raise ValueError(f"{owner} expects a shape tuple such as (features,) or (height, width). Received: {shape!r}")
    return tuple(_positive_int(d, "shape", owner) for d in shape)


class InputLayer(Layer):
    """Declares the model's input: ``InputLayer(shape=(features,))``; ``fastmlp.layers.Input`` makes one.
    A shape of more than one dimension must be followed by ``Flatten()``."""

    _name_prefix = "input_layer"

    def __init__(self, shape=None, batch_size=None, name=None, input_shape=None):
        super().__init__(name)
        shape = shape if shape is not None else input_shape
        self.shape = _sample_shape(shape, "InputLayer")
        self.input_dim = int(np.prod(self.shape))
        self.batch_size = batch_size
        self.units = self.input_dim
        self.built = True

    def get_config(self):
        return {"batch_shape": [self.batch_size, *self.shape], "dtype": backend.floatx(), "sparse": False,
                "name": self.name}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        shape = config.pop("batch_shape", None) or config.pop("batch_input_shape", None)
        if shape is not None:
            config["batch_size"], config["shape"] = shape[0], tuple(shape[1:])
        config.pop("dtype", None)
        return cls(**_keras_config.keyword_args(cls, config, ("shape", "batch_size", "name"), "Layer",
                                                ignored=("ragged", "optional")))


class Flatten(Layer):
    """Flattens each sample to one dimension: inputs of shape (N, h, w) feed the next Dense as
    (N, h*w). It must come first (or right after an Input); it has no weights."""

    _name_prefix = "flatten"

    def __init__(self, input_shape=None, name=None, data_format=None):
        super().__init__(name)
        if data_format not in (None, "channels_last"):
            raise ValueError(f"Flatten supports data_format='channels_last' only. Received: {data_format!r}")
        self.shape = _sample_shape(input_shape, "Flatten") if input_shape is not None else None
        self.built = True

    _config_keys = ("name", "data_format")

    def get_config(self):
        return dict(super().get_config(), data_format="channels_last")


class Activation(Layer):
    """Applies an activation to the previous layer's output: ``Activation('softmax')``. fastmlp fuses
    it into the preceding Dense, which must be linear."""

    _name_prefix = "activation"

    def __init__(self, activation, name=None):
        super().__init__(name)
        self.activation = activations.get(activation)
        self.built = True

    _config_keys = ("name", "activation")

    def get_config(self):
        return dict(super().get_config(), activation=self.activation)


class Dropout(Layer):
    """Inverted dropout: ``Dropout(rate, noise_shape=None, seed=None)``.

    In training (``fit``) each input unit is set to 0 with probability `rate` and the others are
    scaled by ``1 / (1 - rate)``; in ``predict`` and ``evaluate`` it passes its input through.
    fastmlp draws the masks natively from a counter-based generator keyed by (seed, training step,
    sample position in the batch, unit) (csrc/dropout.hpp), so they do not depend on the thread
    count and the NumPy reference draws the same ones. With ``seed=None`` the seed comes from
    ``fastmlp.utils.set_random_seed``'s generator when the layer is created. It may follow the
    input (dropout on the features) or any hidden layer, not the output layer.
    """

    _name_prefix = "dropout"

    def __init__(self, rate, noise_shape=None, seed=None, name=None):
        super().__init__(name)
        if isinstance(rate, bool) or not isinstance(rate, numbers.Real) or not 0 <= rate < 1:
            raise ValueError("Invalid value received for argument `rate`. Expected a float value between 0 and 1 "
                             f"(1 excluded: nothing would be kept). Received: rate={rate!r}")
        if noise_shape is not None:
            raise ValueError(f"Dropout's noise_shape is not supported by fastmlp (each unit is dropped "
                             f"independently). Received: noise_shape={noise_shape!r}")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0):
            raise ValueError(f"Expected `seed` to be None or a non-negative integer. Received: seed={seed!r}")
        self.rate = float(rate)
        self.seed = None if seed is None else int(seed)
        self._mask_seed = self.seed if seed is not None else utils.next_seed()
        self.built = True

    _config_keys = ("name", "rate", "noise_shape", "seed")

    def get_config(self):
        return dict(super().get_config(), rate=self.rate, seed=self.seed, noise_shape=None)


def Input(shape=None, batch_size=None, name=None):
    """An input declaration for ``Sequential``: ``Input(shape=(features,))``."""
    return InputLayer(shape=shape, batch_size=batch_size, name=name)


class Dense(Layer):
    """Densely connected layer: ``output = activation(dot(input, kernel) + bias)``.

    Args:
        units: positive integer, dimensionality of the output.
        activation: activation name (``'relu'``, ``'softmax'``, ...) or None for linear.
        use_bias: whether the layer has a bias vector.
        kernel_initializer: initializer of the kernel, shape ``(input_dim, units)``.
        bias_initializer: initializer of the bias, shape ``(units,)``.
        kernel_regularizer, bias_regularizer: ``fastmlp.regularizers`` penalties added to the loss.
        input_dim, input_shape: the input size, on the first layer of a ``Sequential``.
    """

    _name_prefix = "dense"

    def __init__(self, units, activation=None, use_bias=True, kernel_initializer="glorot_uniform",
                 bias_initializer="zeros", kernel_regularizer=None, bias_regularizer=None, input_dim=None,
                 input_shape=None, name=None, **kwargs):
        if kwargs:
            raise TypeError(f"Dense got unexpected keyword arguments: {', '.join(sorted(kwargs))}.")
        super().__init__(name)
        self.units = _positive_int(units, "units", "Dense")
        self.activation = activations.get(activation)
        if not isinstance(use_bias, bool):
            raise TypeError(f"Expected `use_bias` to be True or False. Received: use_bias={use_bias!r}")
        self.use_bias = use_bias
        self.kernel_initializer = initializers.get(kernel_initializer)
        self.bias_initializer = initializers.get(bias_initializer)
        self.kernel_regularizer = regularizers.get(kernel_regularizer)
        self.bias_regularizer = regularizers.get(bias_regularizer)
        if input_dim is not None and input_shape is not None:
            raise ValueError("Pass either `input_dim` or `input_shape` to Dense, not both.")
        if input_dim is not None:
            self.input_dim = _positive_int(input_dim, "input_dim", "Dense")
        elif input_shape is not None:
            self.input_dim = _input_dim_from_shape(input_shape, "Dense")
        self.kernel = None
        self.bias = None

    def build(self, input_dim, dtype="float32"):
        """Create the weights for `input_dim` inputs, drawing them from the initializers."""
        self.input_dim = input_dim
        self.kernel = self.kernel_initializer((input_dim, self.units), dtype)
        self.bias = self.bias_initializer((self.units,), dtype) if self.use_bias else None
        self.built = True

    @property
    def weights(self):
        if not self.built:
            return []
        return [self.kernel] + ([self.bias] if self.use_bias else [])

    def get_weights(self):
        return [np.array(w) for w in self.weights]

    def check_weights(self, weights):
        """`weights` as arrays after checking them against this layer's: count, shapes, real and finite."""
        expected = self.weights
        weights = list(weights)
        if len(weights) != len(expected):
            raise ValueError(
                f"Layer {self.name!r} expects {len(expected)} weight arrays (kernel"
                f"{' and bias' if self.use_bias else ''}); received {len(weights)}."
            )
        out = []
        for target, value, what in zip(expected, weights, ("kernel", "bias")):
            value = np.asarray(value)
            if value.shape != target.shape:
                raise ValueError(
                    f"Layer {self.name!r} {what} has shape {target.shape}; received an array of shape {value.shape}."
                )
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
        view = next(trainable)
        view[...] = self.kernel
        self.kernel = view
        if self.use_bias:
            view = next(trainable)
            view[...] = self.bias
            self.bias = view

    _config_keys = ("name", "units", "activation", "use_bias", "kernel_initializer", "bias_initializer",
                    "kernel_regularizer", "bias_regularizer")

    def get_config(self):
        return dict(
            super().get_config(),
            units=self.units,
            activation=self.activation,
            use_bias=self.use_bias,
            kernel_initializer=initializers.serialize(self.kernel_initializer),
            bias_initializer=initializers.serialize(self.bias_initializer),
            kernel_regularizer=regularizers.serialize(self.kernel_regularizer),
            bias_regularizer=regularizers.serialize(self.bias_regularizer),
            kernel_constraint=None,
            bias_constraint=None,
        )
