"""Saving and loading in Keras 3's formats, interchangeable with Keras 3.

A ``.keras`` file is a zip of three members, as Keras 3 writes it:

- ``metadata.json``: ``keras_version`` (the Keras release whose layout is written), ``date_saved``
  and a ``fastmlp`` entry Keras does not read;
- ``config.json``: ``{"module": "keras", "class_name": "Sequential", "config": ...,
  "compile_config": ...}``, the architecture (``Sequential.get_config``) and the compile settings
  (optimizer, loss, metrics in Keras's serialized form);
- ``model.weights.h5`` (HDF5, written with h5py): each layer's variables at
  ``layers/<name>/vars/<i>``, where <name> is the layer's class in snake case numbered per class
  (``dense``, ``dense_1``, ``flatten``, ``batch_normalization``), not the layer's own name (a
  BatchNormalization's vars: gamma, beta, moving_mean, moving_variance, those it has); the
  optimizer's at ``optimizer/vars/<i>``: ``iterations``, ``learning_rate`` (absent with a
  schedule), then its slots in Keras's order, per trainable weight (the moving statistics have
  none): SGD with momentum: one momentum per weight; Adam and AdamW: momentum and velocity per
  weight, interleaved; RMSprop: every velocity, then every momentum when ``momentum > 0``;
  Adagrad: one accumulator per weight.

``.weights.h5`` files (``save_weights``) hold the same HDF5 content on their own. fastmlp adds its
shuffling state (the model's shuffle seed and epochs begun) as the ``fastmlp`` attribute of the
HDF5 root, which Keras ignores, so that a model saved during training and reloaded continues with
exactly the batches of uninterrupted training.

Saving reads the optimizer's state directly: save between training steps (from a callback, or
after ``fit``), not from another thread while a ``fit`` is running.

Writes go to a temporary file in the target's folder, renamed over the target once complete. Reads
check the whole file (zip structure, JSON, HDF5, every shape) before anything is built or
assigned: a corrupt or truncated file raises ValueError naming the file and the problem, and the
model being loaded into is unchanged.
"""

import datetime
import io
import json
import os
import re
import uuid
import warnings
import zipfile
import zlib

import numpy as np

from . import _keras_config, losses as _losses, optimizers as _optimizers

KERAS_VERSION = "3.15.1"  # the Keras release whose .keras layout fastmlp writes
_CONFIG, _METADATA, _WEIGHTS = "config.json", "metadata.json", "model.weights.h5"
_METRIC_CLASSES = {"BinaryAccuracy": "binary_accuracy",
                   "CategoricalAccuracy": "categorical_accuracy",
                   "SparseCategoricalAccuracy": "sparse_categorical_accuracy", "MeanAbsoluteError": "mae",
                   "MeanSquaredError": "mse"}


def _h5py():
    try:
        import h5py
    except ImportError:
        raise ImportError("Saving and loading need h5py: pip install h5py") from None
    return h5py


# ---- writing ----


def _atomic_write(filepath, data, overwrite):
    """Write `data` (bytes) to `filepath` through a temporary file in the same folder and a rename."""
    filepath = os.fspath(filepath)
    if not overwrite and os.path.exists(filepath):
        raise FileExistsError(f"{filepath} exists and overwrite=False.")
    if os.path.isdir(filepath):
        raise IsADirectoryError(f"Cannot save to {filepath}: it is a directory.")
    folder, base = os.path.split(os.path.abspath(filepath))
    tmp = os.path.join(folder, f".{base}.{uuid.uuid4().hex[:12]}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # the umask applies, as for open()
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, filepath)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _snake_case(name):
    name = re.sub(r"(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub(r"([a-z])([A-Z])", r"\1_\2", name).lower()


def _layer_paths(model):
    """(layer, its group in the weights file) for each layer of ``model.layers``, named as Keras
    names them: the class in snake case, numbered per class."""
    used = {}
    for layer in model.layers:
        base = _snake_case(type(layer).__name__)
        used[base] = used.get(base, -1) + 1
        yield layer, f"layers/{base}" if used[base] == 0 else f"layers/{base}_{used[base]}"


def _slots(model):
    """The optimizer's slot arrays in Keras's order, as (engine arena, weight index) pairs."""
    config = model.optimizer._engine_config()
    n = len(model.trainable_weights)
    kind = config["kind"]
    if kind == "sgd":
        return [("velocity", i) for i in range(n)] if config["momentum"] else []
    if kind == "adam":
        return [(arena, i) for i in range(n) for arena in ("velocity", "second")]
    if kind == "rmsprop":
        return [("velocity", i) for i in range(n)] + ([("second", i) for i in range(n)] if config["momentum"] else [])
    return [("velocity", i) for i in range(n)]  # adagrad


def _has_lr_variable(optimizer):
    """Keras keeps the learning rate as a variable unless it is a schedule (a decay is written as one)."""
    return not isinstance(optimizer.learning_rate, _optimizers.LearningRateSchedule) and not getattr(
        optimizer, "decay", 0.0)


def _ready(model):
    """The compiled, built model's engine (created if needed)."""
    if model._engine is None:
        model._make_engine()
    return model._engine


def optimizer_variables(model):
    """Copies of the optimizer's variables in Keras's order (``optimizer/vars``): ``iterations``,
    ``learning_rate`` unless it is a schedule, then the slots. For a compiled, built model."""
    engine = _ready(model)
    iterations = model.optimizer.iterations
    out = [np.array(iterations, np.int32 if iterations < 2**31 else np.int64)]
    if _has_lr_variable(model.optimizer):
        out.append(np.array(model.optimizer.learning_rate, np.float32))
    views = {arena: engine.weight_views(arena) for arena in ("velocity", "second")}
    out += [np.array(views[arena][i]) for arena, i in _slots(model)]
    return out


def _weights_h5(model):
    """The bytes of Keras 3's weights file for `model`."""
    h5py = _h5py()
    buffer = io.BytesIO()
    with h5py.File(buffer, "w") as f:
        weights, start = model.get_weights(), 0
        for layer, path in _layer_paths(model):
            group = f.create_group(path).create_group("vars")
            group.attrs["name"] = layer.name
            for i in range(len(layer.weights)):
                group.create_dataset(str(i), data=weights[start + i])
            start += len(layer.weights)
        if model.compiled and model.built:
            group = f.create_group("optimizer").create_group("vars")
            group.attrs["name"] = model.optimizer.name
            for i, value in enumerate(optimizer_variables(model)):
                group.create_dataset(str(i), data=value)
        f.create_group("vars").attrs["name"] = model.name
        f.attrs["fastmlp"] = json.dumps({"shuffle_seed": model._shuffle_seed, "shuffle_epochs": model._shuffle_epochs,
                                         "dropout_seeds": [layer._mask_seed for layer in _dropouts(model)]})
    return buffer.getvalue()


def _dropouts(model):
    from .layers import Dropout

    return [layer for layer in model.layers if isinstance(layer, Dropout)]


def _compile_config(model):
    metrics, weighted = model._compile_args["metrics"], model._compile_args["weighted_metrics"]
    return {"optimizer": _optimizers.serialize(model.optimizer), "loss": _losses.serialize(model._loss),
            "loss_weights": None, "metrics": list(metrics) or None, "weighted_metrics": list(weighted) or None,
            "run_eagerly": False, "steps_per_execution": 1, "jit_compile": False}


def save_model(model, filepath, overwrite=True):
    """Save `model` as a Keras 3 ``.keras`` file (see the module's docstring)."""
    filepath = os.fspath(filepath)
    if not filepath.endswith(".keras"):
        raise ValueError("Invalid filepath extension for saving: fastmlp writes Keras 3's native format, a file name "
                         f"ending in `.keras`. Received: filepath={filepath}")
    config = {"module": "keras", "class_name": "Sequential", "config": model.get_config(), "registered_name": None}
    if model.built:
        config["build_config"] = {"input_shape": config["config"]["build_input_shape"]}
    fastmlp_meta = {}
    if model.compiled:
        config["compile_config"] = _compile_config(model)
        decay = getattr(model.optimizer, "decay", 0.0)
        if decay and not isinstance(model.optimizer.learning_rate, _optimizers.LearningRateSchedule):
            fastmlp_meta["optimizer_decay"] = decay  # written as InverseTimeDecay for Keras; read back as decay
    from . import __version__

    metadata = {"keras_version": KERAS_VERSION, "date_saved": datetime.datetime.now().strftime("%Y-%m-%d@%H:%M:%S"),
                "fastmlp": dict(fastmlp_meta, version=__version__)}
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:  # stored, not compressed, as Keras writes it
        zf.writestr(_METADATA, json.dumps(metadata))
        zf.writestr(_CONFIG, json.dumps(config))
        zf.writestr(_WEIGHTS, _weights_h5(model))
    _atomic_write(filepath, buffer.getvalue(), overwrite)


def save_weights(model, filepath, overwrite=True):
    """Save the weights and optimizer state of `model` as a Keras 3 ``.weights.h5`` file."""
    filepath = os.fspath(filepath)
    if not filepath.endswith(".weights.h5"):
        raise ValueError(f"The filename must end in `.weights.h5`. Received: filepath={filepath}")
    if not model.built:
        raise ValueError("You are saving a model that has not yet been built: give the first layer `input_dim=` or "
                         "call build() or fit() first.")
    _atomic_write(filepath, _weights_h5(model), overwrite)


# ---- reading ----


def _read_archive(filepath):
    """(config, metadata, weights bytes) of a .keras file, or ValueError saying what is wrong."""
    try:
        with zipfile.ZipFile(filepath) as zf:
            names = set(zf.namelist())
            missing = [name for name in (_CONFIG, _WEIGHTS) if name not in names]
            if missing:
                raise ValueError(f"{filepath} is not a valid .keras file: it has no {' or '.join(missing)} "
                                 f"(members: {sorted(names)}).")
            raw = {name: zf.read(name) for name in (_CONFIG, _METADATA, _WEIGHTS) if name in names}
    except (zipfile.BadZipFile, EOFError, zipfile.LargeZipFile, zlib.error) as e:
        raise ValueError(f"{filepath} is not a valid .keras file: it is not a zip archive, or it is truncated or "
                         f"corrupt ({e}).") from None
    except OSError as e:
        if isinstance(e, (FileNotFoundError, IsADirectoryError, PermissionError)):
            raise
        raise ValueError(f"{filepath} is not a valid .keras file: reading it failed ({e}).") from None
    parsed = {}
    for name in (_CONFIG, _METADATA):
        if name not in raw:
            parsed[name] = {}
            continue
        try:
            parsed[name] = json.loads(raw[name])
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ValueError(f"{filepath} is corrupt: its {name} is not valid JSON ({e}).") from None
        if not isinstance(parsed[name], dict):
            raise ValueError(f"{filepath} is corrupt: its {name} is not a JSON object.")
    return parsed[_CONFIG], parsed[_METADATA], raw[_WEIGHTS]


def _read_group(group, where):
    """The datasets "0", "1", ... of a vars group, as arrays."""
    h5py = _h5py()
    keys = sorted(group.keys(), key=lambda k: int(k) if k.isdigit() else -1)
    if keys != [str(i) for i in range(len(keys))]:
        raise ValueError(f"{where} holds {keys}; expected datasets named 0, 1, ...")
    out = []
    for key in keys:
        item = group.get(key, getlink=True)
        if not isinstance(item, h5py.HardLink) or not isinstance(group[key], h5py.Dataset):
            raise ValueError(f"{where}/{key} is not a dataset stored in the file.")
        out.append(np.array(group[key]))
    return out


def _read_weights(data, source):
    """{"layers": {path: [arrays]}, "optimizer": [arrays] or None, "fastmlp": dict} from the bytes of
    a Keras 3 weights file."""
    h5py = _h5py()
    try:
        f = h5py.File(io.BytesIO(data), "r")
    except OSError as e:
        raise ValueError(f"{source} is not a valid HDF5 weights file: it is truncated or corrupt ({e}).") from None
    try:
        with f:
            layers = {}
            if "layers" in f:
                if not isinstance(f["layers"], h5py.Group):
                    raise ValueError(f"{source} is corrupt: its 'layers' entry is not a group.")
                for name, group in f["layers"].items():
                    vars_group = group.get("vars") if isinstance(group, h5py.Group) else None
                    layers[f"layers/{name}"] = _read_group(vars_group, f"{source}: layers/{name}/vars") if isinstance(
                        vars_group, h5py.Group) else []
            optimizer = None
            if "optimizer" in f and isinstance(f["optimizer"], h5py.Group) and isinstance(
                    f["optimizer"].get("vars"), h5py.Group):
                optimizer = _read_group(f["optimizer"]["vars"], f"{source}: optimizer/vars")
            state = {}
            if "fastmlp" in f.attrs:
                state = json.loads(f.attrs["fastmlp"])
                if not isinstance(state, dict):
                    raise ValueError(f"{source}: its fastmlp attribute is not a JSON object.")
    except (OSError, KeyError, RuntimeError, json.JSONDecodeError) as e:
        raise ValueError(f"{source} is corrupt: reading its HDF5 content failed ({e}).") from None
    return {"layers": layers, "optimizer": optimizer, "fastmlp": state}


def _check_shape(value, expected, what):
    if value.shape != expected:
        raise ValueError(f"{what} has shape {value.shape} in the file; the model expects {expected}.")
    if value.dtype.kind not in "biuf":
        raise ValueError(f"{what} holds {value.dtype} values; expected numbers.")


def _plan(model, stored, source, skip_mismatch):
    """Check `stored` (from _read_weights) against `model`; return what to assign:
    (weights list or None, optimizer values or None, shuffle state)."""
    weights, mismatched = [], []
    for layer, path in _layer_paths(model):
        values, expected = stored["layers"].get(path, []), layer.weights
        problem = None
        if len(values) != len(expected):
            problem = (f"layer {layer.name!r} ({type(layer).__name__}, {path}) expects {len(expected)} variables; "
                       f"{source} holds {len(values)}")
        else:
            try:
                for i, (value, target) in enumerate(zip(values, expected)):
                    what = f"{source}: {path}/vars/{i} (layer {layer.name!r})"
                    _check_shape(value, target.shape, what)
                    if not np.all(np.isfinite(value)):
                        raise ValueError(f"{what} holds NaN or infinite values")
            except ValueError as e:
                problem = str(e)
        if problem is not None:
            if not skip_mismatch:
                raise ValueError(f"Cannot load weights: {problem}.")
            mismatched.append(problem)
            values = [np.array(w) for w in layer.get_weights()]
        weights += values
    for problem in mismatched:
        warnings.warn(f"Skipping loading weights: {problem}.", stacklevel=3)

    optimizer = None
    if model.compiled and stored["optimizer"] is not None:
        current = optimizer_variables(model)
        values = stored["optimizer"]
        unbuilt = len(current) - len(_slots(model))  # Keras's optimizer before its first step: no slots yet
        if len(values) == unbuilt and len(values) < len(current):
            current = current[:unbuilt]
        if len(values) != len(current):
            warnings.warn(f"Skipping variable loading for optimizer '{model.optimizer.name}', because it has "
                          f"{len(current)} variables whereas the saved optimizer has {len(values)} variables.",
                          stacklevel=3)
        else:
            try:
                for i, (value, target) in enumerate(zip(values, current)):
                    _check_shape(value, target.shape, f"{source}: optimizer/vars/{i}")
                optimizer = values
            except ValueError as e:
                if not skip_mismatch:
                    raise
                warnings.warn(f"Skipping variable loading for optimizer '{model.optimizer.name}': {e}", stacklevel=3)
            if optimizer is not None and (values[0] < 0 or not all(np.all(np.isfinite(v)) for v in values[1:])):
                raise ValueError(f"{source}: the optimizer's state holds a negative iteration count or non-finite "
                                 "values.")
    state = stored["fastmlp"]
    seed, epochs = state.get("shuffle_seed"), state.get("shuffle_epochs", 0)
    if (seed is not None and (not isinstance(seed, int) or seed < 0)) or not isinstance(epochs, int) or epochs < 0:
        raise ValueError(f"{source}: its fastmlp shuffle state is invalid: {state!r}.")
    # The dropout layers' mask seeds, kept only when the file's layers match the model's (a file from
    # Keras, or of another model, has none: the model keeps its own).
    dropout_seeds = state.get("dropout_seeds")
    if not (isinstance(dropout_seeds, list) and len(dropout_seeds) == len(_dropouts(model))
            and all(isinstance(v, int) and v >= 0 for v in dropout_seeds)):
        dropout_seeds = None
    return weights, optimizer, (seed, epochs), dropout_seeds


def _assign(model, plan):
    weights, optimizer, (seed, epochs), dropout_seeds = plan
    dropouts = _dropouts(model)
    if dropout_seeds is not None and dropout_seeds != [layer._mask_seed for layer in dropouts]:
        for layer, value in zip(dropouts, dropout_seeds):
            layer._mask_seed = value
        if model._engine is not None:
            model._rebuild_engine()
    model.set_weights(weights)
    if optimizer is not None:
        engine = _ready(model)
        opt = model.optimizer
        values = list(optimizer)
        engine.iterations = int(values.pop(0))
        if _has_lr_variable(opt):
            lr = values.pop(0)
            if np.float32(opt.learning_rate) != np.float32(lr):  # keep the exact rate the config holds
                opt.learning_rate = float(lr)
        views = {arena: engine.weight_views(arena) for arena in ("velocity", "second")}
        if not values:  # Keras's optimizer before its first step: the slots start afresh
            config = opt._engine_config()
            values = [config.get("initial_accumulator", 0.0) if arena == "velocity" else 0.0
                      for arena, _ in _slots(model)]
        for (arena, i), value in zip(_slots(model), values):
            views[arena][i][...] = value
    model._shuffle_seed, model._shuffle_epochs = seed, epochs


def _metric_name(metric):
    if isinstance(metric, str):
        return metric
    class_name, settings = _keras_config.unpack(metric, "metric")
    if class_name == "function" and isinstance(settings, str):
        return settings
    if class_name in _METRIC_CLASSES:
        return _METRIC_CLASSES[class_name]
    raise ValueError(f"Metric {class_name!r} is not supported by fastmlp. Supported: {', '.join(_METRIC_CLASSES)} "
                     "and metric names such as 'accuracy'.")


def _compile(model, compile_config, metadata):
    optimizer = _optimizers.deserialize(compile_config.get("optimizer") or "rmsprop")
    decay = (metadata.get("fastmlp") or {}).get("optimizer_decay")
    lr = optimizer.learning_rate
    if decay and isinstance(lr, _optimizers.schedules.InverseTimeDecay) and lr.decay_steps == 1 and not lr.staircase \
            and lr.decay_rate == decay:
        optimizer.learning_rate, optimizer.decay = lr.initial_learning_rate, decay
    metrics = compile_config.get("metrics") or []
    weighted = compile_config.get("weighted_metrics") or []
    if not isinstance(metrics, list) or not isinstance(weighted, list):
        raise ValueError(f"compile_config metrics and weighted_metrics must be lists; received {metrics!r} and "
                         f"{weighted!r}.")
    model.compile(optimizer=optimizer, loss=_losses.deserialize(compile_config["loss"]),
                  metrics=[_metric_name(m) for m in metrics], weighted_metrics=[_metric_name(m) for m in weighted])


def load_model(filepath, custom_objects=None, compile=True, safe_mode=True):
    """Load a ``.keras`` file written by fastmlp or by Keras 3 (a Sequential model of the layers
    fastmlp supports): architecture, weights, and, with ``compile=True``, the compile settings and
    the optimizer state. `safe_mode` is accepted for Keras compatibility: fastmlp never runs code
    from a file. Raises ValueError naming the file and the problem if it is not a valid ``.keras``
    file, or names the layers fastmlp does not support."""
    from .models import Sequential

    filepath = os.fspath(filepath)
    if not filepath.endswith(".keras"):
        raise ValueError(f"File format not supported: filepath={filepath}. fastmlp reads Keras 3 `.keras` files "
                         "(load_weights also reads `.weights.h5`).")
    config, metadata, data = _read_archive(filepath)
    if config.get("class_name") != "Sequential":
        raise ValueError(f"{filepath} holds a {config.get('class_name')!r} model; fastmlp loads Sequential models.")
    try:
        model = Sequential.from_config(config.get("config") or {}, custom_objects=custom_objects)
        compile_config = config.get("compile_config")
        if compile and compile_config and compile_config.get("loss") is not None:
            _compile(model, compile_config, metadata)
    except (TypeError, KeyError) as e:
        raise ValueError(f"{filepath}: its config.json cannot be read as a fastmlp model ({e}).") from None
    except ValueError as e:
        raise ValueError(f"{filepath}: {e}") from None
    stored = _read_weights(data, f"{filepath} ({_WEIGHTS})")
    if model.built:
        _assign(model, _plan(model, stored, filepath, skip_mismatch=False))
    return model


def load_weights(model, filepath, skip_mismatch=False):
    """Load weights and optimizer state into `model` from a ``.weights.h5`` or ``.keras`` file.
    Everything is read and checked first; on any error the model is unchanged."""
    filepath = os.fspath(filepath)
    if not model.built:
        raise ValueError("You are loading weights into a model that has not yet been built: give the first layer "
                         "`input_dim=` or call build() first.")
    if filepath.endswith(".keras"):
        data = _read_archive(filepath)[2]
        source = f"{filepath} ({_WEIGHTS})"
    elif filepath.endswith(".weights.h5"):
        with open(filepath, "rb") as f:
            data = f.read()
        source = filepath
    else:
        raise ValueError(f"File format not supported: filepath={filepath}. Expected a `.weights.h5` or `.keras` file.")
    _assign(model, _plan(model, _read_weights(data, source), source, skip_mismatch))
