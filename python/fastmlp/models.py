"""``Sequential``: Keras's model API over fastmlp's native training engine.

``compile`` builds an engine (``backend='cpu'``: the C++ engine in ``fastmlp._core``;
``backend='numpy'``: the pure-NumPy reference) that owns the parameters, gradients and optimizer
state in flat arenas; the layers' ``kernel`` and ``bias`` become views into that arena. ``fit``
runs each epoch as one native call with the GIL released (in slices only when a live progress bar
is shown, batch by batch only when a callback overrides a batch hook; all the epochs in one call
when History is the only callback); Python handles History, progress and callbacks between
epochs. ``save``/``load_model`` read and write Keras 3's ``.keras`` files (``fastmlp.saving``).

Threads: calls into one model's engine are serialized (a predict waits for the running batch), a
second concurrent fit is refused, and get_weights/set_weights are taken between steps. The layers'
``kernel``/``bias`` arrays are the arena itself: touching them directly while another thread trains
is not synchronized.
"""

import numbers
import shutil
import threading
import time
import weakref

import numpy as np

from . import _core, backend as _backend, callbacks as _callbacks, losses as _losses, metrics as _metrics
from . import _keras_config, cuda as _cuda, optimizers as _optimizers, saving as _saving, utils as _utils
from .layers.core import Activation, Dense, Dropout, Flatten, InputLayer, _auto_name
from .layers.normalization import BatchNormalization
from .reference import ReferenceEngine
from .saving import load_model

__all__ = ["Sequential", "load_model"]

BACKENDS = ("cpu", "numpy", "cuda")

# A live progress bar is redrawn about this often; the epoch runs natively in slices of this length.
_REDRAW_SECONDS = 0.1


def _int_arg(value, name, minimum):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        kind = "a positive integer" if minimum == 1 else "a non-negative integer"
        raise ValueError(f"Expected `{name}` to be {kind}. Received: {name}={value!r}")
    return int(value)


def _steps(n, batch_size):
    """Batches per epoch: the last partial batch is kept."""
    return -(-n // batch_size)


def _as_numeric_array(data, name):
    if data is None:
        raise ValueError(f"`{name}` is required; received None.")
    arr = np.asarray(data)
    if arr.dtype.kind not in "biuf":
        kind = "complex numbers" if arr.dtype.kind == "c" else f"dtype {arr.dtype}"
        raise TypeError(
            f"`{name}` must hold real numbers (float, int or bool); received {kind}. "
            f"Convert it first, e.g. np.asarray({name}, dtype='float32')."
        )
    if arr.size and arr.dtype.kind == "f" and not np.all(np.isfinite(arr)):
        bad = np.argwhere(~np.isfinite(arr))[0]
        raise ValueError(f"`{name}` contains NaN or infinity (first at index {tuple(int(i) for i in bad)}).")
    return arr


class Sequential:
    """A linear stack of layers.

    >>> model = Sequential([Dense(4, activation='relu', input_dim=2), Dense(2, activation='softmax')])
    >>> model.compile(loss='binary_crossentropy', optimizer=SGD(momentum=0.9))
    >>> history = model.fit(x, y, epochs=10, batch_size=100)
    """

    def __init__(self, layers=None, name=None):
        self.name = name or _auto_name("sequential")
        self._layers = []  # the Dense layers: what the engine runs
        self._all_layers = []  # every layer added, as model.layers shows them
        self._input_dim = None
        self._sample_shape = None  # a multi-dimensional input's shape per sample (Flatten)
        self._pending_flatten = False  # an Input of several dimensions waits for its Flatten
        self._activations = {}  # Dense index -> activation of an Activation layer fused after it
        self._dropouts = {}  # Dense index -> the Dropout on that Dense's input
        self._bn_in = {}  # Dense index -> the BatchNormalization of that Dense's input (after its Dropout)
        self._bn_out = {}  # Dense index -> the BatchNormalization of that Dense's (activated) output
        self._bn_activations = {}  # Dense index -> activation of an Activation after its output's normalization
        self._input_layer = None
        self._floatx = None  # the float type of a loaded model, else backend.floatx() at build/compile
        self._fit_lock = threading.Lock()  # one fit at a time; other calls are serialized natively
        # Shuffling: one seed per model, drawn at its first fit, and a count of the epochs begun;
        # epoch k of the model's life is shuffled by (seed, k), so a saved and reloaded model resumes
        # with the same batches as uninterrupted training.
        self._shuffle_seed = None
        self._shuffle_epochs = 0
        self._engine = None
        self._compile_args = None
        self.optimizer = None
        self.loss = None
        self.history = None
        self.stop_training = False
        self.distribute_strategy = None  # a fastmlp.distributed.DataParallel during and after a distributed fit
        for layer in layers or []:
            self.add(layer)

    # ---- structure ----

    @property
    def layers(self):
        return list(self._all_layers)

    def add(self, layer):
        """Append a layer: ``Dense``, ``Activation`` (fused into a linear Dense before it, or after a
        BatchNormalization), ``Dropout`` (on the input or between layers, one in a row),
        ``BatchNormalization`` (on the input, after a Dense layer or its Activation, or after a
        Dropout; one in a row), or ``Flatten`` first; or declare the input with ``Input(shape=...)``
        first."""
        if isinstance(layer, InputLayer):
            if self._all_layers or self._input_dim is not None:
                raise ValueError("An Input must come first in a Sequential model, before any other layer.")
            self._input_dim = layer.input_dim
            self._input_layer = layer
            if len(layer.shape) > 1:
                self._sample_shape, self._pending_flatten = layer.shape, True
            return
        if isinstance(layer, Flatten):
            if self._layers or self._bn_in:
                raise ValueError("Flatten must come first (or right after an Input): fastmlp's layers are all flat "
                                 "after it.")
            if layer.shape is not None:
                if self._sample_shape is not None and self._sample_shape != layer.shape:
                    raise ValueError(f"Flatten(input_shape={layer.shape}) does not match the Input's "
                                     f"{self._sample_shape}.")
                self._sample_shape = layer.shape
                self._input_dim = int(np.prod(layer.shape))
            self._pending_flatten = False
            self._all_layers.append(layer)
            return
        if self._pending_flatten:
            raise ValueError(f"The Input has shape {self._sample_shape}: add Flatten() after it, before {layer.name!r}.")
        if isinstance(layer, BatchNormalization):
            self._add_batchnorm(layer)
            return
        if isinstance(layer, Dropout):
            if len(self._layers) in self._bn_in:
                bn = self._bn_in[len(self._layers)]
                raise ValueError(f"Dropout {layer.name!r} follows BatchNormalization {bn.name!r}, which normalizes "
                                 f"the {'model input' if not self._layers else 'output of a Dropout'}: fastmlp "
                                 "applies a Dropout before such a normalization, not after it. Put the Dropout "
                                 "first, or drop one of them.")
            if len(self._layers) in self._dropouts:
                raise ValueError(f"Dropout {layer.name!r} follows another Dropout: fastmlp takes one Dropout between "
                                 "layers; use a single one with the combined rate 1 - (1 - r1) (1 - r2).")
            self._dropouts[len(self._layers)] = layer
            self._all_layers.append(layer)
            self._engine = None
            return
        if isinstance(layer, Activation):
            last = len(self._layers) - 1
            if (last in self._bn_out and last not in self._bn_activations and len(self._layers) not in self._dropouts
                    and len(self._layers) not in self._bn_in):
                self._bn_activations[last] = layer.activation  # right after that BatchNormalization
                self._all_layers.append(layer)
                self._engine = None
                return
            if last in self._bn_out and len(self._layers) not in self._dropouts:
                raise ValueError(f"Activation({layer.activation!r}) follows Activation("
                                 f"{self._bn_activations[last]!r}) after BatchNormalization "
                                 f"{self._bn_out[last].name!r}: fastmlp takes one activation there.")
            if len(self._layers) in self._bn_in:
                raise ValueError(f"Activation({layer.activation!r}) after BatchNormalization "
                                 f"{self._bn_in[len(self._layers)].name!r} on the model input or after a Dropout is "
                                 "not supported by fastmlp: an Activation must follow a Dense layer, or a "
                                 "BatchNormalization that follows one.")
            if (not self._layers or self._layers[-1].activation != "linear" or len(self._layers) - 1 in self._activations
                    or len(self._layers) in self._dropouts):
                raise ValueError(
                    f"Activation({layer.activation!r}) must follow a Dense layer without an activation of its own "
                    "(fastmlp fuses it into that layer); give the Dense layer activation= instead."
                )
            self._activations[len(self._layers) - 1] = layer.activation
            self._all_layers.append(layer)
            self._engine = None
            return
        if not isinstance(layer, Dense):
            raise TypeError(
                "Only fastmlp.layers Dense, Activation, Dropout, BatchNormalization and Flatten layers (and an Input "
                f"first) can be added to a Sequential model. Received: {layer!r}"
            )
        self._claim(layer)
        if self._layers and layer.input_dim is not None and layer.input_dim != self._layers[-1].units:
            raise ValueError(
                f"Layer {layer.name!r} declares input_dim={layer.input_dim} but the previous layer has "
                f"{self._layers[-1].units} units."
            )
        if not self._layers and self._input_dim is None:
            self._input_dim = layer.input_dim
        layer._owner = weakref.ref(self)
        self._all_layers.append(layer)
        self._layers.append(layer)
        self._engine = None
        if self._input_dim is not None:
            self.build()

    def _claim(self, layer):
        """Refuse a layer with weights that is already in this model or in another one."""
        if any(existing is layer for existing in self._all_layers):
            raise ValueError(f"Layer {layer.name!r} is already in this model.")
        owner = layer._owner() if layer._owner is not None else None
        if owner is not None and owner is not self:
            raise ValueError(
                f"Layer {layer.name!r} already belongs to model {owner.name!r}: a fastmlp model keeps its weights "
                f"in one arena of its own, so layers cannot be shared. Create a new {type(layer).__name__} layer and "
                "copy the weights with set_weights(other.get_weights()) if you need the same values."
            )

    def _add_batchnorm(self, layer):
        """A BatchNormalization normalizes the output of the Dense layer before it (after that layer's
        activation), or, on the model input or after a Dropout, the input of the next Dense layer."""
        self._claim(layer)
        i = len(self._layers)
        previous = self._bn_in.get(i) or (self._bn_out.get(i - 1) if i not in self._dropouts else None)
        if previous is not None:
            raise ValueError(f"BatchNormalization {layer.name!r} follows BatchNormalization {previous.name!r} with no "
                             "Dense layer between them: fastmlp takes one in a row.")
        width = self._layers[-1].units if self._layers else self._input_dim
        if layer.input_dim is not None and width is not None and layer.input_dim != width:
            raise ValueError(f"Layer {layer.name!r} declares input_shape=({layer.input_dim},) but its input has "
                             f"{width} features.")
        if width is None:
            self._input_dim = width = layer.input_dim
        if self._layers and i not in self._dropouts:
            self._bn_out[i - 1] = layer
        else:
            self._bn_in[i] = layer
        layer._owner = weakref.ref(self)
        self._all_layers.append(layer)
        self._engine = None
        if width is not None and not layer.built:
            layer.build(width, self._floatx or _backend.floatx())

    def build(self, input_shape=None):
        """Create the weights of every layer not yet built (input shape ``(None, features)``)."""
        if input_shape is not None:
            dim = input_shape[-1]
            if self._input_dim is not None and dim != self._input_dim:
                raise ValueError(f"Model expects {self._input_dim} input features; received input_shape={input_shape}.")
            self._input_dim = _int_arg(dim, "input_shape[-1]", 1)
        if self._input_dim is None:
            raise ValueError(
                "The model's input size is unknown: give the first layer `input_dim=` (or start with "
                "fastmlp.layers.Input(shape=(features,))), or call fit/predict with data."
            )
        dtype = self._floatx or _backend.floatx()
        prev = self._input_dim
        for i, layer in enumerate(self._layers + [None]):  # None: a BatchNormalization after the last Dense's Dropout
            for item in (self._bn_in.get(i), layer, self._bn_out.get(i)):
                if item is None:
                    continue
                if not item.built:
                    item.build(prev, dtype)
                elif item.input_dim != prev:
                    raise ValueError(f"Layer {item.name!r} was built for {item.input_dim} inputs, not {prev}.")
                prev = item.units

    @property
    def built(self):
        return bool(self._layers) and all(layer.built for layer in self._layers)

    # ---- compile ----

    def compile(self, optimizer="rmsprop", loss=None, metrics=None, weighted_metrics=None, backend="cpu"):
        """Configure training.

        Args:
            optimizer: name (``'rmsprop'``, Keras's default, ``'sgd'``, ``'adam'``, ``'adamw'``,
                ``'adagrad'``) or instance (``fastmlp.optimizers.SGD(...)``).
            loss: ``'binary_crossentropy'``, ``'categorical_crossentropy'``,
                ``'sparse_categorical_crossentropy'`` or ``'mse'`` (or a fastmlp.losses class).
            metrics: list of metric names, e.g. ``['accuracy']``; not weighted by sample weights
                (Keras 3).
            weighted_metrics: list of metric names weighted by the sample or class weights given to
                ``fit``/``evaluate``: ``sum(w * m) / sum(w)``. Its history key is the name, or
                ``'weighted_' + name`` when ``metrics`` has the same name (Keras 3's rule).
            backend: ``'cpu'`` (native C++ engine), ``'numpy'`` (the NumPy reference) or ``'cuda'`` (the
                GPU, when fastmlp was built with it: ``fastmlp.cuda_available()``).
        """
        if not self._layers:
            raise ValueError("Cannot compile a model with no layers: add a Dense layer first.")
        if loss is None:
            raise ValueError("compile() needs a `loss`, e.g. loss='categorical_crossentropy'.")
        if backend not in BACKENDS:
            raise ValueError(f"Unknown backend {backend!r}. Expected one of: {', '.join(BACKENDS)}.")
        if backend == "cuda":
            if self._batchnorms:
                raise ValueError(f"BatchNormalization ({self._batchnorms[0].name!r}) is not supported on "
                                 "backend='cuda' yet; use backend='cpu' (or 'numpy').")
            _cuda.require()
        loss_object = _losses.get(loss)
        loss_name = loss_object.name
        opt = _optimizers.get(optimizer)
        metrics = [] if metrics is None else metrics
        weighted_metrics = [] if weighted_metrics is None else weighted_metrics
        for arg, value in (("metrics", metrics), ("weighted_metrics", weighted_metrics)):
            if isinstance(value, str) or not isinstance(value, (list, tuple)):
                raise TypeError(f"Expected `{arg}` to be a list of names such as ['accuracy']. Received: {value!r}")
        units = self._layers[-1].units
        kinds = [_metrics.resolve(m, loss_name, units) for m in list(metrics) + list(weighted_metrics)]
        names = list(metrics)
        for m in weighted_metrics:  # Keras 3's CompileMetrics.result naming
            name = m if m not in names else f"weighted_{m}"
            base, i = name, 1
            while name in names:
                name, i = f"{base}_{i}", i + 1
            names.append(name)
        if loss_name == "sparse_categorical_crossentropy" and units < 2:
            raise ValueError("sparse_categorical_crossentropy needs an output layer with at least 2 units.")
        self.optimizer = opt
        self.loss = loss_name
        self._loss = loss_object
        self._compile_args = {"metrics": list(metrics), "weighted_metrics": list(weighted_metrics),
                              "metric_names": names, "kinds": kinds,
                              "weighted": [False] * len(metrics) + [True] * len(weighted_metrics),
                              "backend": backend, "dtype": self._floatx or _backend.floatx()}
        self._engine = None
        if self.built:
            self._make_engine()

    @property
    def compiled(self):
        return self._compile_args is not None

    def _specs(self):
        """Each layer for the engine: (in, out, activation, use_bias, kernel l1, l2, bias l1, l2,
        dropout rate on its input, dropout seed, batch normalization of its input, of its output):
        a batch normalization is None or a dict of its settings (the output one's with the
        activation after it)."""
        if len(self._layers) in self._dropouts:
            raise ValueError(f"Dropout {self._dropouts[len(self._layers)].name!r} follows the output layer: fastmlp "
                             "drops the inputs of the next Dense layer, so a Dropout must come before a Dense.")

        def coefficients(regularizer):
            return (regularizer.l1, regularizer.l2) if regularizer is not None else (0.0, 0.0)

        def dropout(i):
            layer = self._dropouts.get(i)
            return (layer.rate, layer._mask_seed) if layer is not None else (0.0, 0)

        def batchnorm(layers, i, activation=None):
            return layers[i]._engine_spec(activation) if i in layers else None

        return [(layer.input_dim, layer.units, self._activations.get(i, layer.activation), layer.use_bias,
                 *coefficients(layer.kernel_regularizer), *coefficients(layer.bias_regularizer), *dropout(i),
                 batchnorm(self._bn_in, i), batchnorm(self._bn_out, i, self._bn_activations.get(i, "linear")))
                for i, layer in enumerate(self._layers)]

    @property
    def _batchnorms(self):
        return [layer for layer in self._all_layers if isinstance(layer, BatchNormalization)]

    def _make_engine(self):
        args = self._compile_args
        specs = self._specs()
        cfg = self.optimizer._engine_config()
        if args["backend"] == "cpu":
            cls = _core.Engine64 if args["dtype"] == "float64" else _core.Engine32
            engine = cls(specs, self._loss._engine_name(), args["kinds"], cfg, _backend.get_isa())
        elif args["backend"] == "cuda":
            engine = _cuda.CudaEngine(specs, self._loss._engine_name(), args["kinds"], cfg, dtype=args["dtype"])
        else:
            engine = ReferenceEngine(specs, self._loss._engine_name(), args["kinds"], cfg, dtype=args["dtype"])
        engine.set_loss_options(**self._loss._engine_options())
        if any(args["weighted"]):
            engine.set_weighted_metrics(args["weighted"])
        # (Only the engines that run BatchNormalization know the "moving" arena.)
        trainable = iter(engine.weight_views("params"))
        moving = iter(engine.weight_views("moving") if self._batchnorms else [])
        for layer in self._all_layers:
            if layer.weights:
                layer._adopt_views(trainable, moving)
        self.optimizer._attach(engine)
        self._engine = engine

    def _rebuild_engine(self):
        """A new engine for changed layer settings, keeping the weights, the optimizer's state and
        its iteration count."""
        old = self._engine
        state = {arena: [np.array(v) for v in old.weight_views(arena)] for arena in ("velocity", "second")}
        iterations = old.iterations
        self._make_engine()
        for arena, values in state.items():
            for view, value in zip(self._engine.weight_views(arena), values):
                view[...] = value
        self._engine.iterations = iterations

    def _ready_engine(self, x):
        """Build (from the data's width) and create the engine if needed; return it."""
        if not self.compiled:
            raise ValueError("You must call `compile()` before using the model for training or evaluation.")
        if not self.built:
            self.build((None, x.shape[1]))
        if self._engine is None:
            self._make_engine()
        return self._engine

    # ---- data ----

    def _dtype(self):
        return np.float64 if (self._compile_args or {}).get("dtype", _backend.floatx()) == "float64" else np.float32

    def _prepare_x(self, x, name="x"):
        arr = _as_numeric_array(x, name)
        if self._sample_shape is not None:
            if arr.shape[1:] != self._sample_shape:
                raise ValueError(f"`{name}` must have shape (samples, {', '.join(map(str, self._sample_shape))}) "
                                 f"for this model's Flatten input; received shape {arr.shape}.")
            arr = arr.reshape(len(arr), -1)
        elif any(isinstance(layer, Flatten) for layer in self._all_layers) and arr.ndim > 2:
            arr = arr.reshape(len(arr), -1)
        if arr.ndim != 2:
            hint = f" Reshape it with {name}.reshape(-1, 1) if it holds one feature per sample." if arr.ndim == 1 else ""
            raise ValueError(
                f"`{name}` must be a 2-D array of shape (samples, features); received shape {arr.shape}.{hint}"
            )
        if arr.shape[0] == 0:
            raise ValueError(f"`{name}` is empty (0 samples); at least one sample is needed.")
        if self._input_dim is not None and arr.shape[1] != self._input_dim:
            raise ValueError(
                f"`{name}` has {arr.shape[1]} features per sample but the model expects {self._input_dim} "
                f"(input shape (None, {self._input_dim})); received shape {arr.shape}."
            )
        return np.ascontiguousarray(arr, dtype=self._dtype())

    def _prepare_y(self, y, n, name="y"):
        arr = _as_numeric_array(y, name)
        units = self._layers[-1].units
        if arr.shape[:1] != (n,):
            raise ValueError(f"`{name}` must have one row per sample ({n}); received shape {arr.shape}.")
        if self.loss == "sparse_categorical_crossentropy":
            if arr.ndim > 2 or (arr.ndim == 2 and arr.shape[1] != 1):
                raise ValueError(
                    f"sparse_categorical_crossentropy expects integer labels of shape ({n},) or ({n}, 1); "
                    f"received shape {arr.shape}. For one-hot targets use categorical_crossentropy."
                )
            labels = arr.reshape(n)
            if not np.all((labels >= 0) & (labels < units) & (labels == np.floor(labels))):
                bad = labels[~((labels >= 0) & (labels < units) & (labels == np.floor(labels)))][0]
                raise ValueError(
                    f"Sparse labels must be integers in [0, {units}) for an output of {units} units; received {bad!r}."
                )
            return np.ascontiguousarray(labels.reshape(n, 1), dtype=self._dtype())
        if arr.ndim == 1 and units == 1:
            arr = arr.reshape(n, 1)
        if arr.ndim != 2 or arr.shape[1] != units:
            raise ValueError(
                f"`{name}` must have shape ({n}, {units}) to match the output layer's {units} units; "
                f"received shape {arr.shape}."
                + (" For integer class labels use loss='sparse_categorical_crossentropy'." if arr.ndim == 1 else "")
            )
        return np.ascontiguousarray(arr, dtype=self._dtype())

    def _prepare_sample_weight(self, sample_weight, n, name="sample_weight"):
        """Keras's per-sample weights, (n,) or (n, 1), as a (n,) array of the model's dtype; None stays None."""
        if sample_weight is None:
            return None
        arr = _as_numeric_array(sample_weight, name)
        if arr.shape not in ((n,), (n, 1)):
            raise ValueError(f"`{name}` must hold one weight per sample, shape ({n},) or ({n}, 1); received shape "
                             f"{arr.shape}.")
        return np.ascontiguousarray(arr.reshape(n), dtype=self._dtype())

    def _class_sample_weights(self, class_weight, y):
        """Keras 3's class_weight: each sample weighted by its class's weight (1 for a class not in the
        dict); the class is the argmax of a one-hot target, else the rounded label (sparse labels, or
        the 0/1 target of a single sigmoid output)."""
        if not isinstance(class_weight, dict):
            raise TypeError(f"Expected `class_weight` to be a dict mapping class indices to weights. Received: "
                            f"class_weight={class_weight!r}")
        table = {}
        for key, value in class_weight.items():
            if isinstance(key, bool) or not isinstance(key, (int, np.integer)):
                raise TypeError(f"`class_weight` keys must be integer class indices; received {key!r}.")
            if isinstance(value, bool) or not isinstance(value, numbers.Real):
                raise TypeError(f"`class_weight` values must be numbers; received {value!r} for class {key}.")
            if not np.isfinite(value):
                raise ValueError(f"`class_weight` values must be finite; received {value!r} for class {key}.")
            table[int(key)] = float(value)
        labels = np.argmax(y, axis=1) if y.shape[1] > 1 else np.round(y[:, 0]).astype(np.int64)
        return np.array([table.get(int(c), 1.0) for c in labels], dtype=self._dtype())

    def _batch_size(self, batch_size):
        return 32 if batch_size is None else _int_arg(batch_size, "batch_size", 1)

    def _logs(self, sums, prefix=""):
        """Epoch or running logs from the engine's sums: the loss and the unweighted metrics per
        sample, the weighted metrics per unit of sample weight (0 when the weights sum to 0, as Keras)."""
        n = max(sums["samples"], 1)
        weight_sum = sums.get("weight_sum", n)
        args = self._compile_args
        logs = {}
        for name, weighted, total in zip(args["metric_names"], args["weighted"], sums["metrics"]):
            logs[prefix + name] = (total / weight_sum if weight_sum else 0.0) if weighted else total / n
        logs[prefix + "loss"] = sums["loss"] / n
        return logs

    # ---- training and inference ----

    def fit(self, x=None, y=None, batch_size=None, epochs=1, verbose="auto", callbacks=None, validation_split=0.0,
            validation_data=None, shuffle=True, class_weight=None, sample_weight=None, initial_epoch=0,
            on_nonfinite="stop", distributed=None):
        """Train for `epochs` epochs; returns a ``History`` (``.history``, ``.epoch``).

        The epoch loss (and each metric) is the batch-size-weighted mean of the per-batch values,
        computed with the weights at each step; the last partial batch is kept.

        `sample_weight` (one weight per sample) or `class_weight` (a dict from class index to
        weight, not both) weight the loss as Keras 3 does: a batch's loss is
        ``sum(w * loss) / batch_size`` (not divided by the weights' sum), and its gradient likewise.
        ``metrics`` stay unweighted, ``weighted_metrics`` take the weights. `validation_data` may be
        ``(x_val, y_val, val_sample_weight)``; `validation_split` splits the sample weights too, and
        class weights apply to the training part only.

        `callbacks` (``fastmlp.callbacks``) get Keras 3's hooks. Each epoch is one native call
        unless a callback overrides a batch hook; the engine then runs batch by batch, with the
        same results. With no callback but History, no progress bar (``verbose=0``) and no
        validation, all the epochs are one native call, again with the same results. Shuffling is
        seeded per model (drawn from ``fastmlp.utils``'s generator at the model's first fit) and
        per epoch of its life, and saved with it: a model saved after k epochs, reloaded and
        trained with ``initial_epoch=k`` ends where uninterrupted training does, bit for bit.

        A batch whose loss is NaN or infinite ends training as Keras's ``TerminateOnNaN`` does, with
        a message naming the first layer whose gradient is not finite; that batch's update is not
        applied, so the weights stay finite. ``on_nonfinite='raise'`` raises ``FloatingPointError``
        instead. Ctrl-C stops within a few milliseconds, after the batch in progress, and raises
        ``KeyboardInterrupt``; ``model.history`` then holds the completed epochs.

        ``distributed=True`` (or a ``fastmlp.distributed.DataParallel``) trains data-parallel over the
        processes of an ``mpiexec`` launch, each computing the gradient of its part of every batch
        (needs ``fastmlp[mpi]``; see ``fastmlp.distributed``).
        """
        if not self._fit_lock.acquire(blocking=False):
            raise RuntimeError(
                f"Model {self.name!r} is already training in another thread; wait for that fit to end (predict and "
                "evaluate calls from other threads are safe: they wait for the running batch)."
            )
        try:
            if distributed is not None and distributed is not False:
                if class_weight is not None or sample_weight is not None:
                    raise ValueError("class_weight and sample_weight are not supported with distributed=... yet; "
                                     "train without them or in one process.")
                if self._dropouts:
                    raise ValueError("Dropout layers are not supported with distributed=... yet (their masks are "
                                     "drawn per batch row, and each rank sees a part of the batch); train in one "
                                     "process or without Dropout.")
                if self._batchnorms:
                    raise ValueError(f"BatchNormalization ({self._batchnorms[0].name!r}) is not supported with "
                                     "distributed=... yet (it needs the statistics of the whole batch, and each rank "
                                     "sees a part of it); train in one process or without BatchNormalization.")
                from . import distributed as _distributed  # which imports the optional mpi4py only then

                return _distributed.fit(self, distributed, x, y, batch_size, epochs, verbose, callbacks,
                                        validation_split, validation_data, shuffle, initial_epoch, on_nonfinite)
            return self._fit(x, y, batch_size, epochs, verbose, callbacks, validation_split, validation_data,
                             shuffle, class_weight, sample_weight, initial_epoch, on_nonfinite)
        finally:
            self._fit_lock.release()

    def _fit(self, x, y, batch_size, epochs, verbose, callbacks, validation_split, validation_data, shuffle,
             class_weight, sample_weight, initial_epoch, on_nonfinite):
        if on_nonfinite not in ("stop", "raise"):
            raise ValueError(f"Expected `on_nonfinite` to be 'stop' or 'raise'. Received: on_nonfinite={on_nonfinite!r}")
        batch_size = self._batch_size(batch_size)
        epochs = _int_arg(epochs, "epochs", 0)
        initial_epoch = _int_arg(initial_epoch, "initial_epoch", 0)
        if not isinstance(shuffle, bool):
            raise TypeError(f"Expected `shuffle` to be True or False. Received: shuffle={shuffle!r}")
        if verbose not in ("auto", 0, 1, 2):
            raise ValueError(f"Expected `verbose` to be 'auto', 0, 1 or 2. Received: verbose={verbose!r}")
        verbose = 1 if verbose == "auto" else verbose
        if not (isinstance(validation_split, numbers.Real) and 0 <= validation_split < 1):
            raise ValueError(f"`validation_split` must be in [0, 1). Received: validation_split={validation_split!r}")
        if not self.compiled:
            raise ValueError("You must call `compile()` before `fit()`.")
        if class_weight is not None and sample_weight is not None:
            raise ValueError("You cannot `class_weight` and `sample_weight` at the same time.")
        x = self._prepare_x(x)
        engine = self._ready_engine(x)
        y = self._prepare_y(y, len(x))
        sw = self._prepare_sample_weight(sample_weight, len(x))
        val = None
        if validation_data is not None:
            if not isinstance(validation_data, (tuple, list)) or len(validation_data) not in (2, 3):
                raise ValueError("`validation_data` must be a tuple (x_val, y_val) or (x_val, y_val, val_sample_weight).")
            vx = self._prepare_x(validation_data[0], "x_val")
            vw = validation_data[2] if len(validation_data) == 3 else None
            val = (vx, self._prepare_y(validation_data[1], len(vx), "y_val"),
                   self._prepare_sample_weight(vw, len(vx), "val_sample_weight"))
        elif validation_split:
            split = int(len(x) * (1 - validation_split))
            if split == 0 or split == len(x):
                raise ValueError(
                    f"validation_split={validation_split} leaves an empty training or validation set "
                    f"with {len(x)} samples."
                )
            val = (x[split:], y[split:], None if sw is None else sw[split:])
            x, y, sw = x[:split], y[:split], None if sw is None else sw[:split]
        if class_weight is not None:
            sw = self._class_sample_weights(class_weight, y)
        weights = {} if sw is None else {"sample_weight": sw}  # engines take them as an optional keyword

        steps = _steps(len(x), batch_size)
        cbs = _callbacks.CallbackList(callbacks, add_history=True, add_progbar=verbose != 0, model=self,
                                      verbose=verbose, epochs=epochs, steps=steps)
        if self._shuffle_seed is None:
            self._shuffle_seed = _utils.next_seed()
        by_batch = cbs.needs_batches("train")
        live = cbs.progbar is not None and cbs.progbar.live
        self.stop_training = False
        logs = None
        if self._compile_args["backend"] == "cuda":
            engine.begin_fit()  # the device copy of the data is made again: x and y may have changed in place
        cbs.on_train_begin()
        slice_steps = 1
        # Nothing to call between epochs but History (no progress bar, validation or other
        # callback): the native engine runs all the epochs in one call, and History gets their logs.
        if (val is None and not live and hasattr(engine, "train_epochs")
                and all(type(cb) is _callbacks.History for cb in cbs.callbacks)):
            return self._fit_in_one_call(engine, x, y, weights, batch_size, epochs, initial_epoch, shuffle,
                                         on_nonfinite, cbs)
        for epoch in range(initial_epoch, epochs):
            cbs.on_epoch_begin(epoch)
            engine.begin_epoch(len(x), batch_size, shuffle, self._shuffle_seed, self._shuffle_epochs)
            self._shuffle_epochs += 1
            done = 0
            while True:
                if by_batch:  # Keras's per-batch hooks, with the running means as logs
                    cbs.on_train_batch_begin(done)
                    sums = engine.train_steps(x, y, 1, **weights)
                    if not sums["stop"]:
                        batch_logs = {k: float(v) for k, v in self._logs(sums).items()}
                        cbs.on_train_batch_end(done, batch_logs)
                        if live:
                            cbs.progbar.update(sums["steps_done"], sums["steps_total"], batch_logs)
                elif live:
                    t0 = time.perf_counter()
                    sums = engine.train_steps(x, y, slice_steps, **weights)
                    per_step = (time.perf_counter() - t0) / max(sums["steps_done"] - done, 1)
                    slice_steps = max(1, int(_REDRAW_SECONDS / max(per_step, 1e-9)))
                    cbs.progbar.update(sums["steps_done"], sums["steps_total"], self._logs(sums))
                else:
                    sums = engine.train_steps(x, y, 0, **weights)
                done = sums["steps_done"]
                if sums["stop"] or done >= sums["steps_total"] or self.stop_training:
                    break
            logs = self._logs(sums)
            if sums["stop"]:
                self._stop_nonfinite(sums, epoch, logs, on_nonfinite, cbs)
            if val is not None:
                logs.update(self._run_evaluate(val[0], val[1], batch_size, cbs, prefix="val_", sample_weight=val[2]))
            logs = {k: float(v) for k, v in logs.items()}
            cbs.on_epoch_end(epoch, logs)
            if self.stop_training:
                break
        cbs.on_train_end(logs)
        return cbs.history

    def _fit_in_one_call(self, engine, x, y, weights, batch_size, epochs, initial_epoch, shuffle, on_nonfinite,
                         cbs):
        """fit's epochs in one native call (engine.train_epochs), History the only callback: the
        same training, logs and stops as the epoch-by-epoch loop of _fit."""
        columns, last, interrupt = engine.train_epochs(x, y, max(epochs - initial_epoch, 0), batch_size, shuffle,
                                                       self._shuffle_seed, self._shuffle_epochs, **weights)
        ran = len(columns["loss"])
        self._shuffle_epochs += ran
        stop = last["stop"] if last is not None else ""
        # The epochs that ended normally: _logs's per-sample means, a column at a time (the one-call
        # tests compare them with _logs's, epoch by epoch).
        whole = ran - (1 if stop else 0)
        n = np.maximum(columns["samples"][:whole], 1.0)
        weight_sum = columns["weight_sum"][:whole]
        args = self._compile_args
        logs = {}
        for j, (name, weighted) in enumerate(zip(args["metric_names"], args["weighted"])):
            total = columns["metrics"][:whole, j]
            if weighted:
                nonzero = weight_sum != 0
                logs[name] = np.where(nonzero, total / np.where(nonzero, weight_sum, 1.0), 0.0)
            else:
                logs[name] = total / n
        logs["loss"] = columns["loss"][:whole] / n
        cbs.history._record(range(initial_epoch, initial_epoch + whole), {k: v.tolist() for k, v in logs.items()})
        last_logs = {k: v[-1].item() for k, v in logs.items()} if whole else None
        if stop in ("nonfinite_loss", "nonfinite_weights"):
            epoch = initial_epoch + whole
            last_logs = self._logs(last)
            self._stop_nonfinite(last, epoch, last_logs, on_nonfinite, cbs)
            last_logs = {k: float(v) for k, v in last_logs.items()}
            cbs.on_epoch_begin(epoch)
            cbs.on_epoch_end(epoch, last_logs)
        if interrupt is not None:
            raise interrupt
        cbs.on_train_end(last_logs)
        return cbs.history

    def _stop_nonfinite(self, sums, epoch, logs, on_nonfinite, cbs):
        """End training after the engine stopped on a non-finite loss or weights."""
        message = self._nonfinite_message(sums, epoch)
        if on_nonfinite == "raise":
            raise FloatingPointError(message)
        _callbacks.print_msg(message)
        if sums["stop"] == "nonfinite_loss":
            logs["loss"] = float("nan")  # the epoch's loss is NaN, as Keras logs it
        self.stop_training = True
        for cb in cbs.callbacks:  # the engine did TerminateOnNaN's check natively
            if isinstance(cb, _callbacks.TerminateOnNaN):
                cb.on_batch_end(sums["steps_done"], dict(logs, loss=float("nan")))

    def _bad_part(self, sums):
        """(layer name, weight) of the engine's report: a Dense layer's kernel or bias, or the gamma or
        beta of the BatchNormalization on its output (or, "input_" prefixed, on its input)."""
        index, part = sums["bad_layer"], sums["bad_part"]
        if part.startswith("input_"):
            return self._bn_in[index].name, part[len("input_"):]
        if part in ("gamma", "beta"):
            return self._bn_out[index].name, part
        return self._layers[index].name, part

    def _nonfinite_message(self, sums, epoch):
        step = sums["steps_done"] + 1
        if sums["stop"] == "nonfinite_loss":
            what = "the loss"
            if sums["bad_layer"] >= 0:
                layer, part = self._bad_part(sums)
                what += f" (the first non-finite gradient is layer {layer!r}'s {part})"
            return (f"Epoch {epoch + 1}, batch {step}: {what} is NaN or infinite; training stopped and that batch's "
                    "update was not applied. Lower the learning rate, scale the inputs, or check the data for "
                    "extreme values.")
        layer, part = self._bad_part(sums)
        return (f"Epoch {epoch + 1}, batch {step - 1}: the update made layer {layer!r}'s {part} NaN or "
                "infinite (the loss was finite); training stopped. Lower the learning rate.")

    def _run_evaluate(self, x, y, batch_size, cbs, prefix="", sample_weight=None):
        """The loss and metrics on (x, y) (weighted by `sample_weight` or not), calling the test hooks
        of `cbs`: per batch only when one of them overrides a test batch hook."""
        engine = self._engine
        cbs.on_test_begin()
        if cbs.needs_batches("test"):
            sums = None
            for step, start in enumerate(range(0, len(x), batch_size)):
                cbs.on_test_batch_begin(step)
                end = start + batch_size
                weights = {} if sample_weight is None else {"sample_weight": sample_weight[start:end]}
                part = engine.evaluate(x[start:end], y[start:end], batch_size, **weights)
                sums = part if sums is None else dict(
                    sums, loss=sums["loss"] + part["loss"], samples=sums["samples"] + part["samples"],
                    weight_sum=sums["weight_sum"] + part["weight_sum"],
                    metrics=[a + b for a, b in zip(sums["metrics"], part["metrics"])])
                cbs.on_test_batch_end(step, {k: float(v) for k, v in self._logs(sums).items()})
        else:
            sums = engine.evaluate(x, y, batch_size, **({} if sample_weight is None else {"sample_weight": sample_weight}))
        logs = {k: float(v) for k, v in self._logs(sums).items()}
        cbs.on_test_end(logs)
        return {prefix + k: v for k, v in logs.items()}

    def evaluate(self, x=None, y=None, batch_size=None, verbose="auto", sample_weight=None, return_dict=False,
                 callbacks=None):
        """Loss (and metrics) on the given data: a scalar, ``[loss, *metrics]``, or a dict.
        `sample_weight` weights the loss (``sum(w * loss) / samples``) and the weighted metrics, as
        in ``fit``. `callbacks` get the ``on_test_*`` hooks."""
        batch_size = self._batch_size(batch_size)
        if not self.compiled:
            raise ValueError("You must call `compile()` before `evaluate()`.")
        x = self._prepare_x(x)
        self._ready_engine(x)
        y = self._prepare_y(y, len(x))
        sw = self._prepare_sample_weight(sample_weight, len(x))
        steps = _steps(len(x), batch_size)
        cbs = _callbacks.CallbackList(callbacks, model=self, verbose=verbose, epochs=1, steps=steps)
        t0 = time.perf_counter()
        logs = self._run_evaluate(x, y, batch_size, cbs, sample_weight=sw)
        if verbose in ("auto", 1, 2):
            elapsed = time.perf_counter() - t0
            print(
                f"{steps}/{steps} - {_callbacks._format_time(elapsed)} "
                f"{_callbacks._format_time(elapsed / steps)}/step{_callbacks._format_logs(logs)}"
            )
        if return_dict:
            return logs
        values = [logs["loss"]] + [logs[m] for m in self._compile_args["metric_names"]]
        return values[0] if len(values) == 1 else values

    def predict(self, x, batch_size=None, verbose=0, callbacks=None):
        """Outputs for `x`, a NumPy array of shape (samples, output units). Prints nothing by default.
        `callbacks` get the ``on_predict_*`` hooks (batch hooks with ``{'outputs': ...}``)."""
        batch_size = self._batch_size(batch_size)
        x = self._prepare_x(x)
        if not self.built:
            self.build((None, x.shape[1]))
        if self._engine is None and self.compiled:
            self._make_engine()
        engine = self._engine
        if engine is None:
            # Not compiled: run the forward pass on a throwaway inference engine.
            cls = _core.Engine64 if x.dtype == np.float64 else _core.Engine32
            engine = cls(self._specs(), "mean_squared_error", [], {}, _backend.get_isa())
            for view, w in zip(engine.weight_views("params") + engine.weight_views("moving"),
                               self.trainable_weights + self.non_trainable_weights):
                view[...] = w
        steps = _steps(len(x), batch_size)
        cbs = _callbacks.CallbackList(callbacks, model=self, verbose=verbose, epochs=1, steps=steps)
        t0 = time.perf_counter()
        cbs.on_predict_begin()
        if cbs.needs_batches("predict"):
            parts = []
            for step, start in enumerate(range(0, len(x), batch_size)):
                cbs.on_predict_batch_begin(step)
                parts.append(engine.predict(x[start : start + batch_size], batch_size))
                cbs.on_predict_batch_end(step, {"outputs": parts[-1]})
            out = np.concatenate(parts)
        else:
            out = engine.predict(x, batch_size)
        cbs.on_predict_end()
        if verbose:
            elapsed = time.perf_counter() - t0
            print(f"{steps}/{steps} - {_callbacks._format_time(elapsed)} {_callbacks._format_time(elapsed / steps)}/step")
        return out

    # ---- weights ----

    @property
    def weights(self):
        """Every layer's weights in Keras's order (per BatchNormalization ``[gamma, beta,
        moving_mean, moving_variance]``)."""
        return [w for layer in self._all_layers for w in layer.weights]

    @property
    def trainable_weights(self):
        return [w for layer in self._all_layers for w in layer.trainable_weights]

    @property
    def non_trainable_weights(self):
        return [w for layer in self._all_layers for w in layer.non_trainable_weights]

    def get_weights(self):
        """Copies of every layer's weights, in order: per Dense ``[kernel (in, units), bias (units,)]``,
        per BatchNormalization ``[gamma, beta, moving_mean, moving_variance]``. Taken between
        training steps when another thread is training the model."""
        if self._engine is None:
            return [np.array(w) for w in self.weights]
        # The arenas hold the trainable weights, and the moving statistics, in this order, back to back.
        arenas = {True: [self._engine.params_copy(), 0],
                  False: [self._engine.moving_copy() if self._batchnorms else None, 0]}
        out = []
        for layer in self._all_layers:
            for trainable, ws in ((True, layer.trainable_weights), (False, layer.non_trainable_weights)):
                for w in ws:
                    flat, start = arenas[trainable]
                    out.append(flat[start : start + w.size].reshape(w.shape))
                    arenas[trainable][1] = start + w.size
        return out

    def set_weights(self, weights):
        """Set every weight from a list shaped like ``get_weights()``; nothing changes on error."""
        if not self.built:
            raise ValueError("The model has no weights yet: give the first layer `input_dim=` or call build().")
        current = self.weights
        weights = list(weights)
        if len(weights) != len(current):
            raise ValueError(
                f"The model has {len(current)} weight arrays (kernel and bias per Dense layer"
                f"{', gamma, beta, moving mean and variance per BatchNormalization' if self._batchnorms else ''}); "
                f"received a list of {len(weights)}."
            )
        checked, start = [], 0
        for layer in self._all_layers:
            k = len(layer.weights)
            if k:
                checked.append((layer, layer.check_weights(weights[start : start + k])))
            start += k
        if self._engine is not None:  # one copy into each arena, between training steps
            dtype = self._dtype()
            split = [(ws[:len(layer.trainable_weights)], ws[len(layer.trainable_weights):]) for layer, ws in checked]
            trainable = [np.asarray(v, dtype).ravel() for ws, _ in split for v in ws]
            moving = [np.asarray(v, dtype).ravel() for _, ws in split for v in ws]
            self._engine.set_params(np.concatenate(trainable))
            if moving:
                self._engine.set_moving(np.concatenate(moving))
            return
        for layer, ws in checked:
            for target, value in zip(layer.weights, ws):
                target[...] = value

    def count_params(self):
        return int(sum(np.prod(w.shape) for w in self.weights))

    # ---- description ----

    def summary(self, print_fn=None):
        """Print the layers, their output shapes and parameter counts, in Keras 3's layout: 88
        columns wide, or the terminal's width less 4 if that is narrower (76 when not a terminal).
        Once the model has trained, the optimizer's state is counted too, as Keras does."""
        print_fn = print_fn or print
        line_length = min(88, shutil.get_terminal_size().columns - 4)
        edges = [int(p * line_length) for p in (0.45, 0.80, 1.0)]
        widths = [edges[0] - 1, edges[1] - edges[0] - 2, edges[2] - edges[1] - 1]  # less the 4 borders

        def row(cells, left="│", sep="│", right="│"):
            parts = [f" {cells[0]:<{widths[0] - 2}} ", f" {cells[1]:<{widths[1] - 2}} ", f" {cells[2]:>{widths[2] - 2}} "]
            return left + sep.join(parts) + right

        def rows(cells):  # cells too long for their column wrap onto more lines, as Keras's table does
            wrapped = [_wrap(cell, w - 2) for cell, w in zip(cells, widths)]
            height = max(len(w) for w in wrapped)
            return [row([w[k] if k < len(w) else "" for w in wrapped]) for k in range(height)]

        def rule(left, mid, right, ch):
            return left + mid.join(ch * w for w in widths) + right

        lines = [f'Model: "{self.name}"', rule("┏", "┳", "┓", "━"),
                 row(("Layer (type)", "Output Shape", "Param #"), "┃", "┃", "┃"), rule("┡", "╇", "┩", "━")]
        width = self._input_dim
        for i, layer in enumerate(self._all_layers):
            if isinstance(layer, (Dense, BatchNormalization)):
                width = layer.units if layer.built else None
                params = f"{layer.count_params():,}" if layer.built else "0 (unbuilt)"
            else:
                params = "0"
            shape = f"(None, {width})" if width is not None else "?"
            lines += rows((f"{layer.name} ({type(layer).__name__})", shape, params))
            if i + 1 < len(self._all_layers):
                lines.append(rule("├", "┼", "┤", "─"))
        lines.append(rule("└", "┴", "┘", "─"))
        itemsize = np.dtype(self._dtype()).itemsize
        trainable = int(sum(w.size for w in self.trainable_weights))
        fixed = int(sum(w.size for w in self.non_trainable_weights))
        trainable_size, fixed_size = trainable * itemsize, fixed * itemsize
        optimizer = _saving.optimizer_variables(self) if self._engine is not None and self.optimizer.iterations else None
        total, total_size = trainable + fixed, trainable_size + fixed_size
        if optimizer is not None:
            optimizer_count = sum(v.size for v in optimizer)
            optimizer_size = sum(v.nbytes for v in optimizer)
            total, total_size = total + optimizer_count, total_size + optimizer_size
        lines += [f" Total params: {total:,} ({_bytes(total_size)})",
                  f" Trainable params: {trainable:,} ({_bytes(trainable_size)})",
                  f" Non-trainable params: {fixed:,} ({_bytes(fixed_size)})"]
        if optimizer is not None:
            lines.append(f" Optimizer params: {optimizer_count:,} ({_bytes(optimizer_size)})")
        for line in lines:
            print_fn(line)

    # ---- configuration and saving ----

    def _dtype_name(self):
        if self._compile_args is not None:
            return self._compile_args["dtype"]
        return self._floatx or _backend.floatx()

    def get_config(self):
        """Keras 3's config of this model (``keras.Sequential.get_config()``): its name and its
        layers, an ``InputLayer`` first when the input size is known."""
        dtype = self._dtype_name()
        layers = []
        shape = None
        if self._input_dim is not None:
            shape = [None, *(self._sample_shape or (self._input_dim,))]
            name = self._input_layer.name if self._input_layer is not None else "input_layer"
            layers.append(_keras_config.keras_object(
                "keras.layers", "InputLayer", {"batch_shape": shape, "dtype": dtype, "sparse": False, "name": name}))
        width = self._input_dim
        for layer in self._all_layers:
            entry = _keras_config.keras_object("keras.layers", type(layer).__name__, dict(layer.get_config(),
                                                                                        dtype=dtype))
            if isinstance(layer, (Dense, BatchNormalization)) and layer.built:
                entry["build_config"] = {"input_shape": [None, layer.input_dim]}
                width = layer.units
            elif isinstance(layer, Flatten) and width is not None:
                entry["build_config"] = {"input_shape": [None, *(self._sample_shape or (width,))]}
            layers.append(entry)
        config = {"name": self.name, "trainable": True, "dtype": dtype, "layers": layers}
        if shape is not None:
            config["build_input_shape"] = shape
        return config

    @classmethod
    def from_config(cls, config, custom_objects=None):
        """A model from Keras's Sequential config (what ``get_config`` returns, or the ``config``
        of a Keras 3 ``config.json``). Keras keys fastmlp does not need are ignored; a layer it
        does not support raises ValueError naming it."""
        if custom_objects:
            raise ValueError("fastmlp has no custom objects: `custom_objects` must be empty.")
        if not isinstance(config, dict) or not isinstance(config.get("layers"), list):
            raise ValueError(f"A Sequential config is a dict with a 'layers' list. Received: {config!r}")
        classes = {"InputLayer": InputLayer, "Dense": Dense, "Flatten": Flatten, "Activation": Activation,
                   "Dropout": Dropout, "BatchNormalization": BatchNormalization}
        entries = [_keras_config.unpack(entry, "layer") for entry in config["layers"]]
        unsupported = [f"{settings.get('name', '?')!r} ({name})" for name, settings in entries if name not in classes]
        if unsupported:
            raise ValueError(f"fastmlp cannot build this model: it supports the layers {', '.join(classes)}; "
                             f"unsupported: {', '.join(unsupported)}.")
        dtypes = {_policy_name(settings.get("dtype")) for name, settings in entries
                  if name in ("Dense", "BatchNormalization")} - {None}
        if len(dtypes) > 1:
            raise ValueError(f"fastmlp models have one float type; this config mixes {sorted(dtypes)}.")
        layers = []
        for name, settings in entries:
            try:
                layers.append(classes[name].from_config(settings))
            except (TypeError, ValueError) as e:
                raise ValueError(f"Layer {settings.get('name', '?')!r} ({name}): {e}") from None
        model = cls(name=config.get("name"))
        model._floatx = dtypes.pop() if dtypes else None
        shape = config.get("build_input_shape")
        if layers and not isinstance(layers[0], InputLayer) and isinstance(shape, (list, tuple)) and len(shape) > 1:
            model.add(InputLayer(shape=tuple(shape[1:])))
        for layer in layers:
            model.add(layer)
        return model

    def save(self, filepath, overwrite=True):
        """Save the model as a Keras 3 ``.keras`` file: architecture, compile settings, weights and
        optimizer state (``fastmlp.saving.save_model``). The file opens in Keras 3 and in
        ``fastmlp.models.load_model``; it is written to a temporary file and renamed, so an
        interrupted save leaves the previous file intact."""
        _saving.save_model(self, filepath, overwrite=overwrite)

    def save_weights(self, filepath, overwrite=True):
        """Save the weights and optimizer state in Keras 3's ``.weights.h5`` format."""
        _saving.save_weights(self, filepath, overwrite=overwrite)

    def load_weights(self, filepath, skip_mismatch=False):
        """Load weights (and optimizer state) from a ``.weights.h5`` or ``.keras`` file, written by
        fastmlp or Keras 3. The file is checked in full first: on any error nothing changes."""
        _saving.load_weights(self, filepath, skip_mismatch=skip_mismatch)


def _policy_name(dtype):
    """The float type of a Keras dtype policy (a name or a serialized DTypePolicy), checked."""
    if isinstance(dtype, dict):
        dtype = (dtype.get("config") or {}).get("name")
    if dtype is not None and dtype not in ("float32", "float64"):
        raise ValueError(f"fastmlp computes in float32 or float64; this model uses the dtype policy {dtype!r}.")
    return dtype


def _wrap(text, width):
    """`text` in lines of at most `width` characters, broken at spaces; a longer word is folded."""
    lines, line = [], ""
    for word in text.split(" "):
        while len(word) > width:
            if line:
                lines.append(line)
                line = ""
            lines.append(word[:width])
            word = word[width:]
        if not line:
            line = word
        elif len(line) + 1 + len(word) <= width:
            line += " " + word
        else:
            lines.append(line)
            line = word
    return lines + [line] if line or not lines else lines


def _bytes(n):
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.2f} {unit}"
        n /= 1024
