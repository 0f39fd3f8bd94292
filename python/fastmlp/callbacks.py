"""Callbacks run between epochs: ``Callback``, ``History`` and ``ProgbarLogger``.

Whole epochs run natively, so the hooks here are the train- and epoch-level ones.
"""

import sys
import time


class Callback:
    """Base class: override the hooks you need. ``self.model`` is the model being trained."""

    def __init__(self):
        self.model = None
        self.params = {}

    def set_model(self, model):
        self.model = model

    def set_params(self, params):
        self.params = params

    def on_train_begin(self, logs=None):
        pass

    def on_train_end(self, logs=None):
        pass

    def on_epoch_begin(self, epoch, logs=None):
        pass

    def on_epoch_end(self, epoch, logs=None):
        pass


class History(Callback):
    """Records the logs of every epoch: ``history.history['loss']``, ``history.epoch``."""

    def __init__(self):
        super().__init__()
        self.history = {}
        self.epoch = []

    def on_train_begin(self, logs=None):
        self.epoch = []

    def on_epoch_end(self, epoch, logs=None):
        self.epoch.append(epoch)
        for k, v in (logs or {}).items():
            self.history.setdefault(k, []).append(v)
        if self.model is not None:
            self.model.history = self


def _format_time(seconds):
    if seconds >= 1:
        return f"{seconds:.0f}s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.0f}ms"
    return f"{seconds * 1e6:.0f}us"


def _format_logs(logs):
    return "".join(f" - {k}: {v:.4f}" for k, v in logs.items())


class ProgbarLogger(Callback):
    """Progress output in Keras 3's format.

    verbose=1 on a terminal: ``Epoch i/N`` then a bar redrawn in place as the epoch advances.
    verbose=1 elsewhere (a log file, CI, a captured cell) and verbose=2: one plain line per epoch,
    with no carriage returns, backspaces or escape codes.
    """

    BAR_WIDTH = 20

    def __init__(self, verbose=1, stream=None):
        super().__init__()
        self.verbose = verbose
        self.stream = stream if stream is not None else sys.stdout
        isatty = getattr(self.stream, "isatty", None)
        self.live = verbose == 1 and bool(isatty and isatty())
        self._start = 0.0

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()
        if self.live:
            self.stream.write(f"Epoch {epoch + 1}/{self.params.get('epochs', '?')}\n")
            self.stream.flush()

    def update(self, done, total, logs):
        """Redraw the bar (terminal only) after `done` of `total` steps."""
        if not self.live:
            return
        elapsed = time.perf_counter() - self._start
        filled = self.BAR_WIDTH * done // max(total, 1)
        bar = "\x1b[32m" + "━" * filled + "\x1b[0m" + "\x1b[37m" + "━" * (self.BAR_WIDTH - filled) + "\x1b[0m"
        per_step = elapsed / max(done, 1)
        left = per_step * (total - done)
        timing = f"{_format_time(left)} (eta)" if done < total else _format_time(elapsed)
        self.stream.write(f"\r\x1b[K{done}/{total} {bar} {timing} {_format_time(per_step)}/step{_format_logs(logs)}")
        self.stream.flush()

    def on_epoch_end(self, epoch, logs=None):
        elapsed = time.perf_counter() - self._start
        steps = self.params.get("steps", 1)
        if self.live:
            self.update(steps, steps, logs or {})
            self.stream.write("\n")
        else:
            self.stream.write(
                f"Epoch {epoch + 1}/{self.params.get('epochs', '?')} - {steps}/{steps} - {_format_time(elapsed)} "
                f"{_format_time(elapsed / max(steps, 1))}/step{_format_logs(logs or {})}\n"
            )
        self.stream.flush()
