"""Callbacks, as in ``keras.callbacks``: ``Callback`` and ``CallbackList``, ``History``,
``ProgbarLogger``, ``EarlyStopping``, ``ModelCheckpoint``, ``LearningRateScheduler``,
``ReduceLROnPlateau``, ``TerminateOnNaN``, ``CSVLogger``, ``LambdaCallback``.

Whole epochs run natively. ``fit`` steps the engine one batch at a time, and calls the batch
hooks, only while some callback overrides ``on_train_batch_begin``/``on_train_batch_end`` (or
their aliases ``on_batch_begin``/``on_batch_end``); the per-batch logs are then Keras 3's, the
running means of the loss and metrics over the epoch so far. ``evaluate`` and ``predict`` likewise
run per batch only for callbacks that override their batch hooks.
"""

import collections.abc
import csv
import os
import sys
import time
import warnings

import numpy as np

from .optimizers.schedules import LearningRateSchedule

_HOOKS = {
    "train": ("on_train_batch_begin", "on_train_batch_end", "on_batch_begin", "on_batch_end"),
    "test": ("on_test_batch_begin", "on_test_batch_end"),
    "predict": ("on_predict_batch_begin", "on_predict_batch_end"),
}

# The stream on which a live progress bar has drawn a line not yet ended, if any.
_open_line = {"stream": None}


def print_msg(message):
    """Print a callback's message on its own line, ending first a progress bar drawn in place."""
    stream = _open_line["stream"]
    if stream is not None:
        stream.write("\n")
        _open_line["stream"] = None
    print(message, flush=True)


class Callback:
    """Base class: override the hooks you need. ``self.model`` is the model being trained and
    ``self.params`` holds ``verbose``, ``epochs`` and ``steps`` (batches per epoch)."""

    rank_zero_only = False  # True: a distributed fit runs it on rank 0 only

    def __init__(self):
        self.model = None
        self.params = {}

    def set_model(self, model):
        self.model = model

    def set_params(self, params):
        self.params = params

    def on_train_begin(self, logs=None):
        """Called once at the start of ``fit``."""

    def on_train_end(self, logs=None):
        """Called once at the end of ``fit``, with the last epoch's logs."""

    def on_epoch_begin(self, epoch, logs=None):
        """Called at the start of each epoch (0-based `epoch`)."""

    def on_epoch_end(self, epoch, logs=None):
        """Called at the end of each epoch with its logs: the loss and metrics, and ``val_``
        counterparts when there is validation data."""

    def on_batch_begin(self, batch, logs=None):
        """Alias of ``on_train_batch_begin`` (Keras 2)."""

    def on_batch_end(self, batch, logs=None):
        """Alias of ``on_train_batch_end`` (Keras 2)."""

    def on_train_batch_begin(self, batch, logs=None):
        """Called before each training batch (0-based within the epoch)."""
        self.on_batch_begin(batch, logs=logs)

    def on_train_batch_end(self, batch, logs=None):
        """Called after each training batch with the running means of the loss and metrics over
        the epoch so far."""
        self.on_batch_end(batch, logs=logs)

    def on_test_begin(self, logs=None):
        """Called at the start of ``evaluate`` and of each validation."""

    def on_test_end(self, logs=None):
        """Called at the end of ``evaluate`` and of each validation, with its logs."""

    def on_test_batch_begin(self, batch, logs=None):
        """Called before each batch of ``evaluate`` and of validation."""

    def on_test_batch_end(self, batch, logs=None):
        """Called after each batch of ``evaluate`` and of validation, with running means."""

    def on_predict_begin(self, logs=None):
        """Called at the start of ``predict``."""

    def on_predict_end(self, logs=None):
        """Called at the end of ``predict``."""

    def on_predict_batch_begin(self, batch, logs=None):
        """Called before each batch of ``predict``."""

    def on_predict_batch_end(self, batch, logs=None):
        """Called after each batch of ``predict`` with ``{'outputs': batch_outputs}``."""

    def _overridden_hooks(self):
        """The batch hooks this callback overrides: those that make the engine run batch by batch."""
        names = [name for group in _HOOKS.values() for name in group]
        return {name for name in names
                if getattr(getattr(self, name), "__func__", getattr(self, name)) is not getattr(Callback, name)}


class CallbackList(Callback):
    """Calls a list of callbacks together; ``fit`` adds a ``History`` and, when ``verbose``, a
    ``ProgbarLogger``, unless the list holds one already."""

    def __init__(self, callbacks=None, add_history=False, add_progbar=False, model=None, **params):
        super().__init__()
        self.callbacks = list(callbacks or [])
        for cb in self.callbacks:
            if not isinstance(cb, Callback):
                raise TypeError(f"Expected callbacks to be fastmlp.callbacks.Callback instances. Received: {cb!r}")
        self.history = next((cb for cb in self.callbacks if isinstance(cb, History)), None)
        self.progbar = next((cb for cb in self.callbacks if isinstance(cb, ProgbarLogger)), None)
        if self.history is None and add_history:
            self.history = History()
            self.callbacks.append(self.history)
        if self.progbar is None and add_progbar:
            self.progbar = ProgbarLogger()
            self.callbacks.append(self.progbar)
        if model is not None:
            self.set_model(model)
        if params:
            self.set_params(params)

    def set_model(self, model):
        super().set_model(model)
        if self.history is not None:
            model.history = self.history
        for cb in self.callbacks:
            cb.set_model(model)

    def set_params(self, params):
        super().set_params(params)
        for cb in self.callbacks:
            cb.set_params(params)

    def needs_batches(self, mode):
        """Whether any callback overrides a batch hook of `mode` ('train', 'test' or 'predict')."""
        return any(set(_HOOKS[mode]) & cb._overridden_hooks() for cb in self.callbacks)

    def _call(self, name, *args):
        for cb in self.callbacks:
            getattr(cb, name)(*args)

    def on_train_begin(self, logs=None):
        self._call("on_train_begin", logs)

    def on_train_end(self, logs=None):
        self._call("on_train_end", logs)

    def on_epoch_begin(self, epoch, logs=None):
        self._call("on_epoch_begin", epoch, logs)

    def on_epoch_end(self, epoch, logs=None):
        self._call("on_epoch_end", epoch, logs)

    def on_train_batch_begin(self, batch, logs=None):
        self._call("on_train_batch_begin", batch, logs)

    def on_train_batch_end(self, batch, logs=None):
        self._call("on_train_batch_end", batch, logs)

    def on_test_begin(self, logs=None):
        self._call("on_test_begin", logs)

    def on_test_end(self, logs=None):
        self._call("on_test_end", logs)

    def on_test_batch_begin(self, batch, logs=None):
        self._call("on_test_batch_begin", batch, logs)

    def on_test_batch_end(self, batch, logs=None):
        self._call("on_test_batch_end", batch, logs)

    def on_predict_begin(self, logs=None):
        self._call("on_predict_begin", logs)

    def on_predict_end(self, logs=None):
        self._call("on_predict_end", logs)

    def on_predict_batch_begin(self, batch, logs=None):
        self._call("on_predict_batch_begin", batch, logs)

    def on_predict_batch_end(self, batch, logs=None):
        self._call("on_predict_batch_end", batch, logs)

    def _overridden_hooks(self):
        return set().union(*(cb._overridden_hooks() for cb in self.callbacks))


class History(Callback):
    """Records the logs of every epoch: ``history.history['loss']``, ``history.epoch``."""

    def __init__(self):
        super().__init__()
        self.history = {}
        self.epoch = []

    def on_train_begin(self, logs=None):
        self.epoch = []

    def on_epoch_end(self, epoch, logs=None):
        self._record(range(epoch, epoch + 1), {k: [v] for k, v in (logs or {}).items()})

    def _record(self, epochs, columns):
        """Epochs and their logs, a list per key: on_epoch_end's for each epoch, at once (fit's
        one-call path hands over all its epochs so)."""
        self.epoch.extend(epochs)
        for k, v in columns.items():
            self.history.setdefault(k, []).extend(v)
        if self.model is not None:
            self.model.history = self


# ---- progress ----


def _format_time(seconds):
    if seconds >= 1 or seconds == 0:
        return f"{seconds:.0f}s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.0f}ms"
    return f"{seconds * 1e6:.0f}us"


def _format_eta(seconds):
    seconds = int(seconds)
    if seconds > 3600:
        return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"
    if seconds > 60:
        return f"{seconds // 60}:{seconds % 60:02d}"
    return f"{seconds}s"


def _format_value(value):
    return f"{value:.4f}" if abs(value) > 1e-3 else f"{value:.4e}"


def _format_logs(logs):
    return "".join(f" - {k}: {_format_value(v)}" for k, v in logs.items())


class ProgbarLogger(Callback):
    """Progress output in Keras 3's format.

    verbose=1 on a terminal: ``Epoch i/N``, then Keras 3's bar redrawn in place as the epoch
    advances (steps, ETA, time per step, running loss and metrics):
    ``7/10 ━━━━━━━━━━━━━━━━━━━━ 0s 5ms/step - accuracy: 0.9012 - loss: 0.2345``.
    verbose=1 elsewhere (a log file, a pipe, CI, a captured cell) and verbose=2: one plain line
    per epoch, with no carriage returns, backspaces or escape codes.

    Args:
        verbose: 1 or 2; by default the ``verbose`` given to ``fit``.
        stream: where to write; by default ``sys.stdout``.
    """

    BAR_WIDTH = 20
    REDRAW_INTERVAL = 0.05  # seconds between redraws of a live bar, as Keras's Progbar

    def __init__(self, verbose=None, stream=None):
        super().__init__()
        self._verbose = verbose
        self.verbose = 1 if verbose is None else verbose
        self.stream = stream if stream is not None else sys.stdout
        self._start = 0.0
        self._last_draw = 0.0
        self.live = False
        self._set_live()

    def _set_live(self):
        isatty = getattr(self.stream, "isatty", None)
        self.live = self.verbose == 1 and bool(isatty and isatty())

    def set_params(self, params):
        super().set_params(params)
        if self._verbose is None:
            self.verbose = 1 if params.get("verbose", 1) == "auto" else params.get("verbose", 1)
            self._set_live()

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()
        self._last_draw = 0.0
        if self.live:
            self._end_line()
            self.stream.write(f"Epoch {epoch + 1}/{self.params.get('epochs', '?')}\n")
            self.stream.flush()

    def update(self, done, total, logs, force=False):
        """Redraw the bar (terminal only) after `done` of `total` steps, at most every
        ``REDRAW_INTERVAL`` seconds unless `force`."""
        if not self.live:
            return
        now = time.perf_counter()
        if not force and now - self._last_draw < self.REDRAW_INTERVAL:
            return
        self._last_draw = now
        elapsed = now - self._start
        per_step = elapsed / done if done else 0.0
        filled = self.BAR_WIDTH * done // max(total, 1)
        bar = f"\x1b[32m{'━' * filled}\x1b[0m\x1b[37m{'━' * (self.BAR_WIDTH - filled)}\x1b[0m"
        timing = _format_eta(per_step * (total - done)) if done < total else f"{elapsed:.0f}s"
        count = f"{done:>{len(str(total))}}/{total}"
        self.stream.write(f"\r\x1b[1m{count}\x1b[0m {bar} \x1b[1m{timing}\x1b[0m "
                          f"{_format_time(per_step)}/step{_format_logs(logs)}\x1b[K")
        self.stream.flush()
        _open_line["stream"] = self.stream

    def _end_line(self):
        if _open_line["stream"] is self.stream:
            self.stream.write("\n")
            _open_line["stream"] = None

    def on_epoch_end(self, epoch, logs=None):
        if not self.verbose:
            return
        elapsed = time.perf_counter() - self._start
        steps = self.params.get("steps", 1)
        if self.live:
            self.update(steps, steps, logs or {}, force=True)
            self._end_line()
        else:
            self.stream.write(
                f"Epoch {epoch + 1}/{self.params.get('epochs', '?')} - {steps}/{steps} - {_format_time(elapsed)} "
                f"{_format_time(elapsed / max(steps, 1))}/step{_format_logs(logs or {})}\n"
            )
        self.stream.flush()


# ---- monitoring callbacks ----

_HIGHER_IS_BETTER = ("accuracy", "acc", "binary_accuracy", "categorical_accuracy", "sparse_categorical_accuracy")
_LOWER_IS_BETTER = ("loss", "mae", "mse", "mean_absolute_error", "mean_squared_error")


class MonitorCallback(Callback):
    """Base of the callbacks that watch a quantity of the logs (Keras 3's ``MonitorCallback``).

    ``mode='auto'`` minimizes the loss and error metrics and maximizes accuracies; other names
    need ``mode='min'`` or ``'max'``. An unknown `mode` warns and falls back to ``'auto'``.
    """

    def __init__(self, monitor="val_loss", mode="auto", baseline=None, min_delta=0):
        super().__init__()
        if mode not in ("auto", "min", "max"):
            warnings.warn(f"{type(self).__name__} mode '{mode}' is unknown, fallback to auto mode.", stacklevel=2)
            mode = "auto"
        self.monitor = monitor
        self.mode = mode
        self.best = baseline
        self.min_delta = abs(min_delta)
        self.monitor_op = None

    def _set_monitor_op(self):
        if self.mode == "min":
            self.monitor_op = np.less
        elif self.mode == "max":
            self.monitor_op = np.greater
        else:
            name = self.monitor.removeprefix("val_")
            compiled = getattr(self.model, "_compile_args", None) or {}
            metrics = ["loss", *compiled.get("metrics", [])]
            if name in metrics and name in _LOWER_IS_BETTER:
                self.monitor_op = np.less
            elif name in metrics and name in _HIGHER_IS_BETTER:
                self.monitor_op = np.greater
            else:
                raise ValueError(
                    f"{type(self).__name__} callback received monitor={self.monitor}, but fastmlp isn't able to "
                    "automatically determine whether that metric should be maximized or minimized. Pass "
                    "`mode='max'` in order to monitor based on the highest metric value, or pass `mode='min'` "
                    "in order to use the lowest value."
                )
        if self.monitor_op is np.less:
            self.min_delta *= -1

    def _is_improvement(self, monitor_value, reference_value):
        if reference_value is None:
            return True
        return bool(self.monitor_op(monitor_value - self.min_delta, reference_value))


class EarlyStopping(MonitorCallback):
    """Stop training when a monitored quantity has stopped improving (Keras 3's rules).

    Args:
        monitor: the quantity to watch, e.g. ``'val_loss'`` (the default) or ``'accuracy'``.
        min_delta: a change smaller than this is no improvement.
        patience: epochs without improvement after which training stops.
        verbose: 1 prints a message when training stops and when weights are restored.
        mode: ``'auto'``, ``'min'`` or ``'max'``.
        baseline: training stops unless the quantity improves on this within `patience` epochs.
        restore_best_weights: at the end of training, restore the weights of the best epoch.
        start_from_epoch: epochs of warm-up before monitoring starts.
    """

    def __init__(self, monitor="val_loss", min_delta=0, patience=0, verbose=0, mode="auto", baseline=None,
                 restore_best_weights=False, start_from_epoch=0):
        super().__init__(monitor, mode, min_delta=min_delta)
        self.patience = patience
        self.verbose = verbose
        self.baseline = baseline
        self.wait = 0
        self.stopped_epoch = 0
        self.restore_best_weights = restore_best_weights
        self.best_weights = None
        self.best_epoch = 0
        self.start_from_epoch = start_from_epoch

    def on_train_begin(self, logs=None):
        # Reusable across fit calls.
        self.wait = 0
        self.stopped_epoch = 0
        self.best = None
        self.best_weights = None
        self.best_epoch = 0

    def on_epoch_end(self, epoch, logs=None):
        if self.monitor_op is None:
            self._set_monitor_op()
        current = self.get_monitor_value(logs)
        if current is None or epoch < self.start_from_epoch:
            return
        if self.restore_best_weights and self.best_weights is None:
            self.best_weights = self.model.get_weights()
            self.best_epoch = epoch
        self.wait += 1
        if self._is_improvement(current, self.best):
            self.best = current
            self.best_epoch = epoch
            if self.restore_best_weights:
                self.best_weights = self.model.get_weights()
            # Only restart the wait when the baseline and the previous best are both beaten.
            if self.baseline is None or self._is_improvement(current, self.baseline):
                self.wait = 0
            return
        if self.wait >= self.patience and epoch > 0:
            self.stopped_epoch = epoch
            self.model.stop_training = True

    def on_train_end(self, logs=None):
        if self.stopped_epoch > 0 and self.verbose > 0:
            print_msg(f"Epoch {self.stopped_epoch + 1}: early stopping")
        if self.restore_best_weights and self.best_weights is not None:
            if self.verbose > 0:
                print_msg(f"Restoring model weights from the end of the best epoch: {self.best_epoch + 1}.")
            self.model.set_weights(self.best_weights)

    def get_monitor_value(self, logs):
        logs = logs or {}
        value = logs.get(self.monitor)
        if value is None:
            warnings.warn(f"Early stopping conditioned on metric `{self.monitor}` which is not available. "
                          f"Available metrics are: {','.join(logs)}", stacklevel=2)
        return value


class ModelCheckpoint(MonitorCallback):
    """Save the model (``model.save``) or its weights (``save_weights``) during training.

    `filepath` may hold ``str.format`` fields filled from the epoch (1-based), the batch (with an
    integer `save_freq`) and the logs: ``'ckpt-{epoch:02d}-{val_loss:.2f}.keras'``. Each write is
    atomic, so an interrupted save leaves the previous file intact.

    Args:
        filepath: ending in ``.keras``, or in ``.weights.h5`` with ``save_weights_only=True``.
        monitor, mode: the quantity that decides what is best, with ``save_best_only``.
        verbose: 1 prints a message at each save.
        save_best_only: save only when the monitored quantity improves.
        save_weights_only: save the weights (and optimizer state) only.
        save_freq: ``'epoch'``, or an integer: save every that many batches.
        initial_value_threshold: the value to beat for the first save with ``save_best_only``.
    """

    rank_zero_only = True  # in a distributed fit (fastmlp.distributed), only rank 0 writes the file

    def __init__(self, filepath, monitor="val_loss", verbose=0, save_best_only=False, save_weights_only=False,
                 mode="auto", save_freq="epoch", initial_value_threshold=None):
        super().__init__(monitor, mode, initial_value_threshold)
        self.verbose = verbose
        self.filepath = os.fspath(filepath)
        self.save_best_only = save_best_only
        self.save_weights_only = save_weights_only
        self.save_freq = save_freq
        self._batches_seen_since_last_saving = 0
        self._last_batch_seen = None
        self._current_epoch = 0
        if save_freq != "epoch" and (isinstance(save_freq, bool) or not isinstance(save_freq, int) or save_freq < 1):
            raise ValueError(f"Unrecognized save_freq: {save_freq}. Expected save_freq are 'epoch' or integer values")
        if save_weights_only:
            if not self.filepath.endswith(".weights.h5"):
                raise ValueError("When using `save_weights_only=True` in `ModelCheckpoint`, the filepath provided "
                                 f"must end in `.weights.h5` (Keras weights format). Received: filepath={self.filepath}")
        elif not self.filepath.endswith(".keras"):
            raise ValueError(f"The filepath provided must end in `.keras` (Keras model format). "
                             f"Received: filepath={self.filepath}")

    def _overridden_hooks(self):
        hooks = super()._overridden_hooks()
        return hooks if self.save_freq != "epoch" else hooks - {"on_train_batch_end"}

    def on_train_batch_end(self, batch, logs=None):
        if self._should_save_on_batch(batch):
            self._save_model(self._current_epoch, batch, logs)

    def on_epoch_begin(self, epoch, logs=None):
        self._current_epoch = epoch

    def on_epoch_end(self, epoch, logs=None):
        if self.monitor_op is None:
            self._set_monitor_op()
        if self.save_freq == "epoch":
            self._save_model(epoch, None, logs)

    def _should_save_on_batch(self, batch):
        if self.save_freq == "epoch":
            return False
        if self._last_batch_seen is None or batch <= self._last_batch_seen:
            added = batch + 1  # a new epoch
        else:
            added = batch - self._last_batch_seen
        self._batches_seen_since_last_saving += added
        self._last_batch_seen = batch
        if self._batches_seen_since_last_saving >= self.save_freq:
            self._batches_seen_since_last_saving = 0
            return True
        return False

    def _should_save_model(self, epoch, logs, filepath):
        if not self.save_best_only:
            if self.verbose > 0:
                print_msg(f"Epoch {epoch + 1}: saving model to {filepath}")
            return True
        current = (logs or {}).get(self.monitor)
        if current is None:
            warnings.warn(f"Can save best model only with {self.monitor} available.", stacklevel=2)
            return True
        if self.monitor_op is None:
            self._set_monitor_op()
        best = "None" if self.best is None else f"{self.best:.5f}"
        if self._is_improvement(current, self.best):
            if self.verbose > 0:
                print_msg(f"Epoch {epoch + 1}: {self.monitor} improved from {best} to {current:.5f}, "
                          f"saving model to {filepath}")
            self.best = current
            return True
        if self.verbose > 0:
            print_msg(f"Epoch {epoch + 1}: {self.monitor} did not improve from {best}")
        return False

    def _save_model(self, epoch, batch, logs):
        logs = logs or {}
        try:
            if batch is None or "batch" in logs:
                filepath = self.filepath.format(epoch=epoch + 1, **logs)
            else:
                filepath = self.filepath.format(epoch=epoch + 1, batch=batch + 1, **logs)
        except KeyError as e:
            raise KeyError(f'Failed to format this callback filepath: "{self.filepath}". Reason: {e}') from None
        if not self._should_save_model(epoch, logs, filepath):
            return
        if os.path.isdir(filepath):
            raise IsADirectoryError(f"Please specify a non-directory filepath for ModelCheckpoint. Filepath used is "
                                    f"an existing directory: {filepath}")
        dirname = os.path.dirname(filepath)
        if dirname:
            os.makedirs(dirname, exist_ok=True)
        if self.save_weights_only:
            self.model.save_weights(filepath, overwrite=True)
        else:
            self.model.save(filepath, overwrite=True)
        if self.verbose > 0:
            print_msg(f"Epoch {epoch + 1}: finished saving model to {filepath}")


# ---- learning rate ----

_SCHEDULE_NOT_SETTABLE = (
    "This optimizer was created with a `LearningRateSchedule` object as its `learning_rate` constructor argument, "
    "hence its learning rate is not settable. If you need the learning rate to be settable, you should instantiate "
    "the optimizer with a float `learning_rate` argument."
)


def _current_lr(optimizer):
    """The learning rate of the next update: the schedule's value at ``iterations``, or the constant."""
    lr = optimizer.learning_rate
    return lr(optimizer.iterations) if isinstance(lr, LearningRateSchedule) else float(lr)


def _set_lr(optimizer, value):
    if isinstance(optimizer.learning_rate, LearningRateSchedule):
        raise TypeError(_SCHEDULE_NOT_SETTABLE)
    optimizer.learning_rate = value


class LearningRateScheduler(Callback):
    """Set the learning rate at the start of each epoch: ``schedule(epoch, lr)`` (or
    ``schedule(epoch)``) returns the new rate, a float. ``logs['learning_rate']`` records it.

    Args:
        schedule: a function of the epoch index (0-based) and the current learning rate.
        verbose: 1 prints each change.
    """

    def __init__(self, schedule, verbose=0):
        super().__init__()
        self.schedule = schedule
        self.verbose = verbose

    def on_epoch_begin(self, epoch, logs=None):
        optimizer = self.model.optimizer
        if isinstance(optimizer.learning_rate, LearningRateSchedule):
            raise TypeError(_SCHEDULE_NOT_SETTABLE)
        try:
            lr = self.schedule(epoch, float(optimizer.learning_rate))
        except TypeError:  # the one-argument form
            lr = self.schedule(epoch)
        if not isinstance(lr, (float, np.float32, np.float64)):
            raise ValueError(f"The output of the `schedule` function should be a float. Got: {lr}")
        _set_lr(optimizer, float(lr))
        if self.verbose > 0:
            print_msg(f"Epoch {epoch + 1}: LearningRateScheduler setting learning rate to {lr}.")

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["learning_rate"] = _current_lr(self.model.optimizer)


class ReduceLROnPlateau(MonitorCallback):
    """Multiply the learning rate by `factor` when the monitored quantity has not improved for
    `patience` epochs (Keras 3's rules); ``logs['learning_rate']`` records the rate.

    Args:
        monitor: the quantity to watch (default ``'val_loss'``).
        factor: the multiplier, below 1.
        patience: epochs without improvement before a reduction.
        verbose: 1 prints each reduction.
        mode: ``'auto'``, ``'min'`` or ``'max'``.
        min_delta: a change smaller than this is no improvement.
        cooldown: epochs to wait after a reduction before counting again.
        min_lr: the learning rate is never reduced below this.
    """

    def __init__(self, monitor="val_loss", factor=0.1, patience=10, verbose=0, mode="auto", min_delta=1e-4,
                 cooldown=0, min_lr=0.0):
        super().__init__(monitor, mode, min_delta=min_delta)
        if factor >= 1.0:
            raise ValueError(f"ReduceLROnPlateau does not support a factor >= 1.0. Received factor={factor}")
        self.factor = factor
        self.min_lr = min_lr
        self.patience = patience
        self.verbose = verbose
        self.cooldown = cooldown
        self.cooldown_counter = 0
        self.wait = 0

    def _reset(self):
        self.best = None
        self.cooldown_counter = 0
        self.wait = 0

    def on_train_begin(self, logs=None):
        self._reset()

    def in_cooldown(self):
        return self.cooldown_counter > 0

    def _reduce_lr(self, epoch):
        optimizer = self.model.optimizer
        old_lr = _current_lr(optimizer)
        if old_lr > np.float32(self.min_lr):
            new_lr = max(old_lr * self.factor, self.min_lr)
            _set_lr(optimizer, new_lr)
            if self.verbose > 0:
                print_msg(f"Epoch {epoch + 1}: ReduceLROnPlateau reducing learning rate to {new_lr}.")
            return True
        return False

    def on_epoch_end(self, epoch, logs=None):
        if self.monitor_op is None:
            self._set_monitor_op()
        logs = logs if logs is not None else {}
        logs["learning_rate"] = _current_lr(self.model.optimizer)
        current = logs.get(self.monitor)
        if current is None:
            warnings.warn(f"Learning rate reduction is conditioned on metric `{self.monitor}` which is not "
                          f"available. Available metrics are: {','.join(logs)}.", stacklevel=2)
            return
        if self.in_cooldown():
            self.cooldown_counter -= 1
            self.wait = 0
        if self._is_improvement(current, self.best):
            self.best = current
            self.wait = 0
        elif not self.in_cooldown():
            self.wait += 1
            if self.wait >= self.patience and self._reduce_lr(epoch):
                self.cooldown_counter = self.cooldown
                self.wait = 0


# ---- other callbacks ----


class TerminateOnNaN(Callback):
    """Stop training when the loss becomes NaN or infinite; with ``raise_error=True``, raise
    ``RuntimeError`` instead (``on_train_end`` is then not called).

    fastmlp's engine detects a non-finite loss natively, within the epoch, before applying that
    batch's update, so this callback does not make training run batch by batch: ``fit`` calls
    its ``on_batch_end`` with the NaN loss at the batch where the engine stopped.
    """

    def __init__(self, raise_error=False):
        super().__init__()
        self.raise_error = raise_error

    def on_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not np.isfinite(loss):
            if self.raise_error:
                raise RuntimeError(f"NaN or Inf loss encountered at batch {batch}. Loss value: {loss}. "
                                   "Terminating training immediately.")
            print_msg(f"Batch {batch}: Invalid loss, terminating training")
            self.model.stop_training = True

    def _overridden_hooks(self):
        hooks = super()._overridden_hooks()
        if type(self).on_batch_end is TerminateOnNaN.on_batch_end:
            hooks.discard("on_batch_end")
        return hooks


class CSVLogger(Callback):
    """Write each epoch's logs as a row of a CSV file: ``epoch`` then the log keys, sorted, with
    their ``val_`` counterparts (``NA`` where absent).

    Args:
        filename: the CSV file.
        separator: the field separator.
        append: append to an existing file (its header is kept) instead of overwriting it.
    """

    rank_zero_only = True  # in a distributed fit (fastmlp.distributed), only rank 0 writes the file

    def __init__(self, filename, separator=",", append=False):
        super().__init__()
        self.sep = separator
        self.filename = os.fspath(filename)
        self.append = append
        self.writer = None
        self.keys = None
        self.append_header = True
        self.csv_file = None

    def on_train_begin(self, logs=None):
        if self.append:
            if os.path.exists(self.filename):
                with open(self.filename, encoding="utf-8") as f:
                    self.append_header = not bool(len(f.readline()))
            mode = "a"
        else:
            mode = "w"
        if self.csv_file and not self.csv_file.closed:
            self.csv_file.close()
        self.csv_file = open(self.filename, mode, newline="", encoding="utf-8")
        self.writer = None
        self.keys = None

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}

        def handle_value(k):
            is_zero_dim_ndarray = isinstance(k, np.ndarray) and k.ndim == 0
            if isinstance(k, str):
                return k
            if isinstance(k, collections.abc.Iterable) and not is_zero_dim_ndarray:
                return f'"[{", ".join(map(str, k))}]"'
            return k

        if self.keys is None:
            self.keys = sorted(logs)
            if self.keys and not any(key.startswith("val_") for key in self.keys):
                self.keys.extend([f"val_{k}" for k in self.keys])
        if not self.writer:
            class Dialect(csv.excel):
                delimiter = self.sep

            self.writer = csv.DictWriter(self.csv_file, fieldnames=["epoch"] + self.keys, dialect=Dialect)
            if self.append_header:
                self.writer.writeheader()
        row = {"epoch": epoch}
        row.update((key, handle_value(logs.get(key, "NA"))) for key in self.keys)
        self.writer.writerow(row)
        self.csv_file.flush()

    def on_train_end(self, logs=None):
        if self.csv_file and not self.csv_file.closed:
            self.csv_file.close()
        self.writer = None


class LambdaCallback(Callback):
    """A callback made of functions: ``LambdaCallback(on_epoch_end=lambda epoch, logs: ...)``.

    Takes ``on_epoch_begin``/``on_epoch_end`` ``(epoch, logs)``, ``on_train_begin``/``on_train_end``
    ``(logs)`` and ``on_train_batch_begin``/``on_train_batch_end`` ``(batch, logs)``; extra keyword
    arguments become attributes (Keras accepts any ``on_*`` hook this way).
    """

    def __init__(self, on_epoch_begin=None, on_epoch_end=None, on_train_begin=None, on_train_end=None,
                 on_train_batch_begin=None, on_train_batch_end=None, **kwargs):
        super().__init__()
        self.__dict__.update(kwargs)
        hooks = {"on_epoch_begin": on_epoch_begin, "on_epoch_end": on_epoch_end, "on_train_begin": on_train_begin,
                 "on_train_end": on_train_end, "on_train_batch_begin": on_train_batch_begin,
                 "on_train_batch_end": on_train_batch_end}
        for name, fn in hooks.items():
            if fn is not None:
                setattr(self, name, fn)


__all__ = ["Callback", "CallbackList", "History", "ProgbarLogger", "MonitorCallback", "EarlyStopping",
           "ModelCheckpoint", "LearningRateScheduler", "ReduceLROnPlateau", "TerminateOnNaN", "CSVLogger",
           "LambdaCallback", "print_msg"]
