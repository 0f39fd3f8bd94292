"""``Sequential``: Keras's model API over fastmlp's native training engine.

``compile`` builds an engine (``backend='cpu'``: the C++ engine in ``fastmlp._core``;
``backend='numpy'``: the pure-NumPy reference) that owns the parameters, gradients and optimizer
state in flat arenas; the layers' ``kernel`` and ``bias`` become views into that arena. ``fit``
runs each epoch as one native call with the GIL released (in slices only when a live progress bar
is shown); Python handles History, progress and callbacks between epochs.

Threads: calls into one model's engine are serialized (a predict waits for the running batch), a
second concurrent fit is refused, and get_weights/set_weights are taken between steps. The layers'
``kernel``/``bias`` arrays are the arena itself: touching them directly while another thread trains
is not synchronized.
"""

import numbers
import threading
import time
import weakref

import numpy as np

from . import _core, backend as _backend, callbacks as _callbacks, losses as _losses, metrics as _metrics
from . import cuda as _cuda, optimizers as _optimizers, utils as _utils
from .layers.core import Activation, Dense, Flatten, InputLayer, _auto_name
from .reference import ReferenceEngine

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
        self._fit_lock = threading.Lock()  # one fit at a time; other calls are serialized natively
        self._engine = None
        self._compile_args = None
        self.optimizer = None
        self.loss = None
        self.history = None
        self.stop_training = False
        for layer in layers or []:
            self.add(layer)

    # ---- structure ----

    @property
    def layers(self):
        return list(self._all_layers)

    def add(self, layer):
        """Append a layer: ``Dense``, ``Activation`` (fused into a linear Dense before it), or
        ``Flatten`` first; or declare the input with ``Input(shape=...)`` first."""
        if isinstance(layer, InputLayer):
            if self._all_layers or self._input_dim is not None:
                raise ValueError("An Input must come first in a Sequential model, before any other layer.")
            self._input_dim = layer.input_dim
            if len(layer.shape) > 1:
                self._sample_shape, self._pending_flatten = layer.shape, True
            return
        if isinstance(layer, Flatten):
            if self._layers:
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
        if isinstance(layer, Activation):
            if not self._layers or self._layers[-1].activation != "linear" or len(self._layers) - 1 in self._activations:
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
                "Only fastmlp.layers Dense, Activation and Flatten layers (and an Input first) can be added to a "
                f"Sequential model. Received: {layer!r}"
            )
        if any(existing is layer for existing in self._layers):
            raise ValueError(f"Layer {layer.name!r} is already in this model.")
        owner = layer._owner() if layer._owner is not None else None
        if owner is not None and owner is not self:
            raise ValueError(
                f"Layer {layer.name!r} already belongs to model {owner.name!r}: a fastmlp model keeps its weights "
                "in one arena of its own, so layers cannot be shared. Create a new Dense layer and copy the "
                "weights with set_weights(other.get_weights()) if you need the same values."
            )
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
        prev = self._input_dim
        for layer in self._layers:
            if not layer.built:
                layer.build(prev, _backend.floatx())
            elif layer.input_dim != prev:
                raise ValueError(f"Layer {layer.name!r} was built for {layer.input_dim} inputs, not {prev}.")
            prev = layer.units

    @property
    def built(self):
        return bool(self._layers) and all(layer.built for layer in self._layers)

    # ---- compile ----

    def compile(self, optimizer="rmsprop", loss=None, metrics=None, backend="cpu"):
        """Configure training.

        Args:
            optimizer: name (``'rmsprop'``, Keras's default, ``'sgd'``, ``'adam'``, ``'adamw'``,
                ``'adagrad'``) or instance (``fastmlp.optimizers.SGD(...)``).
            loss: ``'binary_crossentropy'``, ``'categorical_crossentropy'``,
                ``'sparse_categorical_crossentropy'`` or ``'mse'`` (or a fastmlp.losses class).
            metrics: list of metric names, e.g. ``['accuracy']``.
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
            _cuda.require()
        loss_object = _losses.get(loss)
        loss_name = loss_object.name
        opt = _optimizers.get(optimizer)
        if metrics is None:
            metrics = []
        if isinstance(metrics, str) or not isinstance(metrics, (list, tuple)):
            raise TypeError(f"Expected `metrics` to be a list of names such as ['accuracy']. Received: {metrics!r}")
        units = self._layers[-1].units
        kinds = [_metrics.resolve(m, loss_name, units) for m in metrics]
        if loss_name == "sparse_categorical_crossentropy" and units < 2:
            raise ValueError("sparse_categorical_crossentropy needs an output layer with at least 2 units.")
        self.optimizer = opt
        self.loss = loss_name
        self._loss = loss_object
        self._compile_args = {"metrics": list(metrics), "kinds": kinds, "backend": backend, "dtype": _backend.floatx()}
        self._engine = None
        if self.built:
            self._make_engine()

    @property
    def compiled(self):
        return self._compile_args is not None

    def _specs(self):
        """Each layer for the engine: (in, out, activation, use_bias, kernel l1, l2, bias l1, l2)."""

        def coefficients(regularizer):
            return (regularizer.l1, regularizer.l2) if regularizer is not None else (0.0, 0.0)

        return [(layer.input_dim, layer.units, self._activations.get(i, layer.activation), layer.use_bias,
                 *coefficients(layer.kernel_regularizer), *coefficients(layer.bias_regularizer))
                for i, layer in enumerate(self._layers)]

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
        views = engine.weight_views("params")
        i = 0
        for layer in self._layers:
            views[i][...] = layer.kernel
            layer.kernel = views[i]
            i += 1
            if layer.use_bias:
                views[i][...] = layer.bias
                layer.bias = views[i]
                i += 1
        self.optimizer._attach(engine)
        self._engine = engine

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

    def _batch_size(self, batch_size):
        return 32 if batch_size is None else _int_arg(batch_size, "batch_size", 1)

    def _logs(self, sums, prefix=""):
        n = max(sums["samples"], 1)
        logs = {prefix + name: total / n for name, total in zip(self._compile_args["metrics"], sums["metrics"])}
        logs[prefix + "loss"] = sums["loss"] / n
        return logs

    # ---- training and inference ----

    def fit(self, x=None, y=None, batch_size=None, epochs=1, verbose="auto", callbacks=None, validation_split=0.0,
            validation_data=None, shuffle=True, initial_epoch=0, on_nonfinite="stop"):
        """Train for `epochs` epochs; returns a ``History`` (``.history``, ``.epoch``).

        The epoch loss (and each metric) is the batch-size-weighted mean of the per-batch values,
        computed with the weights at each step; the last partial batch is kept.

        A batch whose loss is NaN or infinite ends training as Keras's ``TerminateOnNaN`` does, with
        a message naming the first layer whose gradient is not finite; that batch's update is not
        applied, so the weights stay finite. ``on_nonfinite='raise'`` raises ``FloatingPointError``
        instead. Ctrl-C stops within a few milliseconds, after the batch in progress, and raises
        ``KeyboardInterrupt``; ``model.history`` then holds the completed epochs.
        """
        if not self._fit_lock.acquire(blocking=False):
            raise RuntimeError(
                f"Model {self.name!r} is already training in another thread; wait for that fit to end (predict and "
                "evaluate calls from other threads are safe: they wait for the running batch)."
            )
        try:
            return self._fit(x, y, batch_size, epochs, verbose, callbacks, validation_split, validation_data,
                             shuffle, initial_epoch, on_nonfinite)
        finally:
            self._fit_lock.release()

    def _fit(self, x, y, batch_size, epochs, verbose, callbacks, validation_split, validation_data, shuffle,
             initial_epoch, on_nonfinite):
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
        x = self._prepare_x(x)
        engine = self._ready_engine(x)
        y = self._prepare_y(y, len(x))
        val = None
        if validation_data is not None:
            if not isinstance(validation_data, (tuple, list)) or len(validation_data) != 2:
                raise ValueError("`validation_data` must be a tuple (x_val, y_val).")
            vx = self._prepare_x(validation_data[0], "x_val")
            val = (vx, self._prepare_y(validation_data[1], len(vx), "y_val"))
        elif validation_split:
            split = int(len(x) * (1 - validation_split))
            if split == 0 or split == len(x):
                raise ValueError(
                    f"validation_split={validation_split} leaves an empty training or validation set "
                    f"with {len(x)} samples."
                )
            x, y, val = x[:split], y[:split], (x[split:], y[split:])

        history = _callbacks.History()
        progbar = _callbacks.ProgbarLogger(verbose) if verbose else None
        cbs = ([progbar] if progbar else []) + list(callbacks or []) + [history]
        steps = _steps(len(x), batch_size)
        for cb in cbs:
            if not isinstance(cb, _callbacks.Callback):
                raise TypeError(f"Expected callbacks to be fastmlp.callbacks.Callback instances. Received: {cb!r}")
            cb.set_model(self)
            cb.set_params({"epochs": epochs, "steps": steps, "verbose": verbose})
        seed = _utils.next_seed()
        self.stop_training = False
        self.history = history
        for cb in cbs:
            cb.on_train_begin()
        slice_steps = 1
        for epoch in range(initial_epoch, epochs):
            for cb in cbs:
                cb.on_epoch_begin(epoch)
            engine.begin_epoch(len(x), batch_size, shuffle, seed, epoch)
            while True:
                if progbar is not None and progbar.live:
                    t0 = time.perf_counter()
                    sums = engine.train_steps(x, y, slice_steps)
                    per_step = (time.perf_counter() - t0) / slice_steps
                    slice_steps = max(1, int(_REDRAW_SECONDS / max(per_step, 1e-9)))
                    progbar.update(sums["steps_done"], sums["steps_total"], self._logs(sums))
                else:
                    sums = engine.train_steps(x, y, 0)
                if sums["stop"] or sums["steps_done"] >= sums["steps_total"]:
                    break
            logs = self._logs(sums)
            if sums["stop"]:
                message = self._nonfinite_message(sums, epoch)
                if on_nonfinite == "raise":
                    raise FloatingPointError(message)
                print(message)
                if sums["stop"] == "nonfinite_loss":
                    logs["loss"] = float("nan")  # the epoch's loss is NaN, as Keras logs it
                self.stop_training = True
            if val is not None:
                logs.update(self._logs(engine.evaluate(val[0], val[1], batch_size), prefix="val_"))
            logs = {k: float(v) for k, v in logs.items()}
            for cb in cbs:
                cb.on_epoch_end(epoch, logs)
            if self.stop_training:
                break
        for cb in cbs:
            cb.on_train_end()
        self.history = history
        return history

    def _nonfinite_message(self, sums, epoch):
        step = sums["steps_done"] + 1
        if sums["stop"] == "nonfinite_loss":
            what = "the loss"
            if sums["bad_layer"] >= 0:
                layer = self._layers[sums["bad_layer"]].name
                what += f" (the first non-finite gradient is layer {layer!r}'s {sums['bad_part']})"
            return (f"Epoch {epoch + 1}, batch {step}: {what} is NaN or infinite; training stopped and that batch's "
                    "update was not applied. Lower the learning rate, scale the inputs, or check the data for "
                    "extreme values.")
        layer = self._layers[sums["bad_layer"]].name
        return (f"Epoch {epoch + 1}, batch {step - 1}: the update made layer {layer!r}'s {sums['bad_part']} NaN or "
                "infinite (the loss was finite); training stopped. Lower the learning rate.")

    def evaluate(self, x=None, y=None, batch_size=None, verbose="auto", return_dict=False):
        """Loss (and metrics) on the given data: a scalar, ``[loss, *metrics]``, or a dict."""
        batch_size = self._batch_size(batch_size)
        if not self.compiled:
            raise ValueError("You must call `compile()` before `evaluate()`.")
        x = self._prepare_x(x)
        engine = self._ready_engine(x)
        y = self._prepare_y(y, len(x))
        t0 = time.perf_counter()
        logs = {k: float(v) for k, v in self._logs(engine.evaluate(x, y, batch_size)).items()}
        if verbose in ("auto", 1, 2):
            steps = _steps(len(x), batch_size)
            elapsed = time.perf_counter() - t0
            print(
                f"{steps}/{steps} - {_callbacks._format_time(elapsed)} "
                f"{_callbacks._format_time(elapsed / steps)}/step{_callbacks._format_logs(logs)}"
            )
        if return_dict:
            return logs
        values = [logs["loss"]] + [logs[m] for m in self._compile_args["metrics"]]
        return values[0] if len(values) == 1 else values

    def predict(self, x, batch_size=None, verbose=0):
        """Outputs for `x`, a NumPy array of shape (samples, output units). Prints nothing by default."""
        batch_size = self._batch_size(batch_size)
        x = self._prepare_x(x)
        if not self.built:
            self.build((None, x.shape[1]))
        if self._engine is None:
            if self.compiled:
                self._make_engine()
            else:
                # Not compiled: run the forward pass on a throwaway inference engine.
                cls = _core.Engine64 if x.dtype == np.float64 else _core.Engine32
                engine = cls(self._specs(), "mean_squared_error", [], {}, _backend.get_isa())
                for view, w in zip(engine.weight_views("params"), self.get_weights()):
                    view[...] = w
                return engine.predict(x, batch_size)
        t0 = time.perf_counter()
        out = self._engine.predict(x, batch_size)
        if verbose:
            steps = _steps(len(x), batch_size)
            elapsed = time.perf_counter() - t0
            print(f"{steps}/{steps} - {_callbacks._format_time(elapsed)} {_callbacks._format_time(elapsed / steps)}/step")
        return out

    # ---- weights ----

    @property
    def weights(self):
        return [w for layer in self._layers for w in layer.weights]

    def get_weights(self):
        """Copies of every layer's weights, in order: per Dense ``[kernel (in, units), bias (units,)]``.
        Taken between training steps when another thread is training the model."""
        if self._engine is None:
            return [np.array(w) for w in self.weights]
        flat, out, start = self._engine.params_copy(), [], 0
        for w in self.weights:  # the arena holds them in this order, back to back
            out.append(flat[start : start + w.size].reshape(w.shape))
            start += w.size
        return out

    def set_weights(self, weights):
        """Set every weight from a list shaped like ``get_weights()``; nothing changes on error."""
        if not self.built:
            raise ValueError("The model has no weights yet: give the first layer `input_dim=` or call build().")
        current = self.weights
        weights = list(weights)
        if len(weights) != len(current):
            raise ValueError(
                f"The model has {len(current)} weight arrays (kernel and bias per Dense layer); "
                f"received a list of {len(weights)}."
            )
        checked, start = [], 0
        for layer in self._layers:
            k = len(layer.weights)
            checked.append((layer, layer.check_weights(weights[start : start + k])))
            start += k
        if self._engine is not None:  # one copy into the arena, between training steps
            dtype = self._dtype()
            self._engine.set_params(np.concatenate([np.asarray(v, dtype).ravel() for _, ws in checked for v in ws]))
            return
        for layer, ws in checked:
            for target, value in zip(layer.weights, ws):
                target[...] = value

    def count_params(self):
        return int(sum(np.prod(w.shape) for w in self.weights))

    # ---- description ----

    def summary(self, print_fn=None):
        """Print the layers, their output shapes and parameter counts, in Keras 3's layout."""
        print_fn = print_fn or print
        widths = (33, 24, 15)

        def row(cells, left="│", sep="│", right="│"):
            parts = [f" {cells[0]:<{widths[0] - 2}} ", f" {cells[1]:<{widths[1] - 2}} ", f" {cells[2]:>{widths[2] - 2}} "]
            return left + sep.join(parts) + right

        def rule(left, mid, right, ch):
            return left + mid.join(ch * w for w in widths) + right

        lines = [f'Model: "{self.name}"', rule("┏", "┳", "┓", "━"),
                 row(("Layer (type)", "Output Shape", "Param #"), "┃", "┃", "┃"), rule("┡", "╇", "┩", "━")]
        width = self._input_dim
        for i, layer in enumerate(self._all_layers):
            if isinstance(layer, Dense):
                width = layer.units
                params = str(layer.count_params()) if layer.built else "0 (unbuilt)"
            else:
                params = "0"
            shape = f"(None, {width})" if width is not None else "(None, ?)"
            lines.append(row((f"{layer.name} ({type(layer).__name__})", shape, params)))
            if i + 1 < len(self._all_layers):
                lines.append(rule("├", "┼", "┤", "─"))
        lines.append(rule("└", "┴", "┘", "─"))
        total = self.count_params()
        size = total * np.dtype(self._dtype()).itemsize
        lines += [f" Total params: {total} ({_bytes(size)})", f" Trainable params: {total} ({_bytes(size)})",
                  " Non-trainable params: 0 (0.00 B)"]
        for line in lines:
            print_fn(line)


def _bytes(n):
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.2f} {unit}"
        n /= 1024
