"""fastmlp.callbacks: hook order and batch mode, and the built-in callbacks, in tests that mirror
Keras 3's own (keras/src/callbacks/*_test.py), adapted where fastmlp differs on purpose (Python
float learning rates instead of float32 variables; no validation_freq; inf targets are refused)."""

import contextlib
import csv
import io
import os
import re
import warnings

import numpy as np
import pytest

import fastmlp
from fastmlp import callbacks, initializers, layers, optimizers
from fastmlp.models import Sequential, load_model

TRAIN_SAMPLES, TEST_SAMPLES, INPUT_DIM = 10, 10, 3


def xor_data(n, seed=0):
    x = np.random.RandomState(seed).randn(n, 2).astype(np.float32)
    return x, np.eye(2, dtype=np.float32)[(x[:, 0] * x[:, 1] <= 0).astype(np.int64)]


def seed_model(metrics=None, optimizer=None):
    model = Sequential([layers.Dense(4, activation="relu", input_dim=2), layers.Dense(4, activation="relu"),
                        layers.Dense(2, activation="softmax")])
    model.compile(loss="binary_crossentropy", optimizer=optimizer or optimizers.SGD(0.05, momentum=0.9),
                  metrics=metrics)
    return model


def keras_test_data(num_classes=2, seed=1337):
    rs = np.random.RandomState(seed)
    x_train, x_test = rs.random_sample((TRAIN_SAMPLES, INPUT_DIM)), rs.random_sample((TEST_SAMPLES, INPUT_DIM))
    y_train = np.eye(num_classes)[rs.randint(0, num_classes, TRAIN_SAMPLES)]
    y_test = np.eye(num_classes)[rs.randint(0, num_classes, TEST_SAMPLES)]
    return (x_train, y_train), (x_test, y_test)


class CountingEngine:
    """Wraps a model's engine and records the `max_steps` of each train_steps call, and
    ("epochs", n) for each train_epochs call (n whole epochs in one call)."""

    def __init__(self, model):
        self.engine = model._engine
        self.calls = []
        model._engine = self

    def train_steps(self, x, y, max_steps, **kwargs):
        self.calls.append(max_steps)
        return self.engine.train_steps(x, y, max_steps, **kwargs)

    def train_epochs(self, x, y, epochs, *args, **kwargs):
        self.calls.append(("epochs", epochs))
        return self.engine.train_epochs(x, y, epochs, *args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.engine, name)


class Recorder(callbacks.Callback):
    """Records the hooks it overrides: epoch- and train-level only unless `batches`."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def on_train_begin(self, logs=None):
        self.calls.append(("train_begin", logs))

    def on_train_end(self, logs=None):
        self.calls.append(("train_end", dict(logs)))

    def on_epoch_begin(self, epoch, logs=None):
        self.calls.append(("epoch_begin", epoch))

    def on_epoch_end(self, epoch, logs=None):
        self.calls.append(("epoch_end", epoch, dict(logs)))

    def on_test_begin(self, logs=None):
        self.calls.append(("test_begin", logs))

    def on_test_end(self, logs=None):
        self.calls.append(("test_end", dict(logs)))


class BatchRecorder(Recorder):
    def on_train_batch_begin(self, batch, logs=None):
        self.calls.append(("batch_begin", batch))

    def on_train_batch_end(self, batch, logs=None):
        self.calls.append(("batch_end", batch, dict(logs)))


# ---- the hooks, whole epochs and batch mode ----


def test_epoch_hooks_keep_whole_native_epochs():
    x, y = xor_data(100)
    model = seed_model(metrics=["accuracy"])
    counter = CountingEngine(model)
    recorder = Recorder()
    history = model.fit(x, y, epochs=2, batch_size=16, validation_split=0.2, callbacks=[recorder], verbose=0)
    assert counter.calls == [0, 0]  # one native call per epoch
    names = [c[0] for c in recorder.calls]
    assert names == ["train_begin", "epoch_begin", "test_begin", "test_end", "epoch_end",
                     "epoch_begin", "test_begin", "test_end", "epoch_end", "train_end"]
    epoch_ends = [c for c in recorder.calls if c[0] == "epoch_end"]
    assert [c[1] for c in epoch_ends] == [0, 1]
    assert epoch_ends[1][2] == {k: v[1] for k, v in history.history.items()}
    # Validation's on_test_end gets the unprefixed logs of the val_ entries.
    test_end = [c[1] for c in recorder.calls if c[0] == "test_end"][1]
    assert test_end == {"accuracy": history.history["val_accuracy"][1], "loss": history.history["val_loss"][1]}
    assert recorder.calls[-1] == ("train_end", epoch_ends[1][2])
    assert recorder.model is model and recorder.params == {"verbose": 0, "epochs": 2, "steps": 5}


def test_batch_hooks_run_step_by_step_with_keras_running_means():
    x, y = xor_data(50)
    fastmlp.utils.set_random_seed(3)
    model = seed_model(metrics=["accuracy"])
    first_batch = model.evaluate(x[:16], y[:16], batch_size=16, verbose=0, return_dict=True)
    counter = CountingEngine(model)
    recorder = BatchRecorder()
    history = model.fit(x, y, epochs=2, batch_size=16, shuffle=False, callbacks=[recorder], verbose=0)
    assert counter.calls == [1] * 8  # 4 steps per epoch, one engine call each
    batches = [c for c in recorder.calls if c[0].startswith("batch")]
    assert [(c[0], c[1]) for c in batches[:4]] == [("batch_begin", 0), ("batch_end", 0), ("batch_begin", 1),
                                                   ("batch_end", 1)]
    ends = [c for c in batches if c[0] == "batch_end"]
    assert [c[1] for c in ends] == [0, 1, 2, 3, 0, 1, 2, 3]
    # The first batch's logs: its loss at the starting weights; the last: the epoch's running means.
    assert ends[0][2]["loss"] == pytest.approx(first_batch["loss"], rel=1e-6)
    assert ends[0][2]["accuracy"] == pytest.approx(first_batch["accuracy"])
    assert ends[3][2] == {k: v[0] for k, v in history.history.items()}
    assert ends[7][2] == {k: v[1] for k, v in history.history.items()}


@pytest.mark.parametrize("hook", ["on_train_batch_begin", "on_train_batch_end", "on_batch_begin", "on_batch_end"])
def test_batch_mode_trains_the_same_bits_as_whole_epochs(hook):
    x, y = xor_data(300)
    runs = []
    for cbs in ([], [callbacks.LambdaCallback(**{hook: lambda batch, logs: None})] if hook.startswith(
            "on_train") else [type("Alias", (callbacks.Callback,), {hook: lambda self, batch, logs=None: None})()]):
        fastmlp.utils.set_random_seed(11)
        model = seed_model(metrics=["accuracy"])
        counter = CountingEngine(model)
        history = model.fit(x, y, epochs=3, batch_size=32, callbacks=cbs, verbose=0)
        runs.append((model.get_weights(), history.history, counter.calls))
    (w_native, h_native, calls_native), (w_batch, h_batch, calls_batch) = runs
    assert calls_native == [("epochs", 3)] and calls_batch == [1] * 30
    for a, b in zip(w_native, w_batch):
        np.testing.assert_array_equal(a, b)
    assert h_native == h_batch


@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
def test_whole_fit_in_one_native_call_is_the_epoch_by_epoch_fit(weighted):
    # With History as the only callback (verbose=0, no validation), fit hands all its epochs to
    # train_epochs at once; an epoch-level callback that does nothing brings back one call per
    # epoch. The same weights, History and model.history, bit for bit, across two fits (the
    # shuffle continues from one to the next) and a fit from initial_epoch.
    x, y = xor_data(230)
    sw = np.random.RandomState(5).rand(len(x)).astype(np.float32) + 0.5 if weighted else None
    runs = []
    for cbs in ([], [callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: None)]):
        fastmlp.utils.set_random_seed(13)
        model = seed_model(metrics=["accuracy"])
        counter = CountingEngine(model)
        first = model.fit(x, y, epochs=4, batch_size=32, callbacks=cbs, verbose=0, sample_weight=sw)
        second = model.fit(x, y, epochs=5, initial_epoch=2, batch_size=50, callbacks=cbs, verbose=0,
                           sample_weight=sw)
        runs.append((model.get_weights(), first.history, first.epoch, second.history, second.epoch,
                     model.history is second, counter.calls))
    fast, slow = runs
    assert fast[-1] == [("epochs", 4), ("epochs", 3)] and slow[-1] == [0] * 7
    for a, b in zip(fast[0], slow[0]):
        np.testing.assert_array_equal(a, b)
    assert fast[1:-1] == slow[1:-1]
    assert fast[2] == [0, 1, 2, 3] and fast[4] == [2, 3, 4] and fast[5]


@pytest.mark.parametrize("shuffle", [True, False], ids=["shuffled", "unshuffled"])
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_one_call_fit_makes_the_next_epoch_on_another_thread_to_the_same_bits(shuffle, threads):
    # With 2 threads or more, train_epochs copies and shuffles the next epoch's rows on a
    # background thread while the current epoch trains (the seed network's narrow path). The
    # weights and History equal those of epoch-by-epoch fits on one thread, which copy each epoch
    # in turn, over three fits on the same engine (the last of one epoch: nothing to copy ahead).
    # A fit that stops with a copy made for an epoch that never runs: the nonfinite test below.
    x, y = xor_data(300)
    previous = fastmlp.get_num_threads()
    runs = []
    try:
        for n_threads, cbs in ((threads, []), (1, [callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: None)])):
            fastmlp.set_num_threads(n_threads)
            fastmlp.utils.set_random_seed(21)
            model = seed_model(metrics=["accuracy"])
            counter = CountingEngine(model)
            histories = []
            for epochs in (4, 3, 1):
                histories.append(model.fit(x, y, epochs=epochs, batch_size=40, shuffle=shuffle, callbacks=cbs,
                                           verbose=0).history)
            runs.append((model.get_weights(), histories, counter.calls))
    finally:
        fastmlp.set_num_threads(previous)
    fast, slow = runs
    assert fast[2] == [("epochs", 4), ("epochs", 3), ("epochs", 1)] and slow[2] == [0] * 8
    for a, b in zip(fast[0], slow[0]):
        np.testing.assert_array_equal(a, b)
    assert fast[1] == slow[1]


@pytest.mark.parametrize("on_nonfinite", ["stop", "raise"])
def test_whole_fit_in_one_native_call_stops_on_nonfinite_as_the_epoch_by_epoch_fit(on_nonfinite, capsys):
    # A linear network whose weights overflow in the second epoch: the one-call fit stops where
    # the epoch-by-epoch fit does, with the same History and message (or exception).
    x, y = xor_data(200)
    outcomes = []
    for cbs in ([], [callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: None)]):
        fastmlp.utils.set_random_seed(2)
        model = Sequential([layers.Dense(4, input_dim=2), layers.Dense(2)])
        model.compile(loss="mean_squared_error", optimizer=optimizers.SGD(0.02, momentum=0.9))
        try:
            history = model.fit(x * 10, y, epochs=6, batch_size=40, callbacks=cbs, verbose=0,
                                on_nonfinite=on_nonfinite)
            outcome = ("stopped", history.epoch, history.history)
        except FloatingPointError as e:
            outcome = ("raised", str(e), model.history.epoch if model.history else None)
        names = {layer.name: f"layer{i}" for i, layer in enumerate(model.layers)}  # numbered per process
        outcome = tuple(re.sub("|".join(names), lambda m: names[m.group(0)], o) if isinstance(o, str) else o
                        for o in outcome)
        out = re.sub("|".join(names), lambda m: names[m.group(0)], capsys.readouterr().out)
        outcomes.append((outcome, out, [w.copy() for w in model.get_weights()]))
    (fast, fast_out, fast_w), (slow, slow_out, slow_w) = outcomes
    assert fast[:2] == (("stopped", [0, 1]) if on_nonfinite == "stop" else ("raised", fast[1]))
    assert "Epoch 2" in (fast_out if on_nonfinite == "stop" else fast[1])
    assert repr(fast) == repr(slow) and fast_out == slow_out  # repr: the stopped epoch logs a NaN loss
    for a, b in zip(fast_w, slow_w):
        np.testing.assert_array_equal(a, b)


def test_stop_training_in_a_batch_hook_ends_the_epoch_there():
    x, y = xor_data(100)
    model = seed_model()

    def stop(batch, logs):
        if batch == 2:
            model.stop_training = True

    history = model.fit(x, y, epochs=5, batch_size=10, callbacks=[callbacks.LambdaCallback(on_train_batch_end=stop)],
                        verbose=0)
    assert history.epoch == [0] and model.optimizer.iterations == 3


def test_lambda_callback_hooks():
    x, y = xor_data(40)
    model = seed_model()
    seen = []
    cb = callbacks.LambdaCallback(on_epoch_begin=lambda epoch, logs: seen.append(("begin", epoch)),
                                  on_epoch_end=lambda epoch, logs: seen.append(("end", epoch, sorted(logs))),
                                  on_train_begin=lambda logs: seen.append("train_begin"),
                                  on_train_end=lambda logs: seen.append("train_end"), extra=7)
    model.fit(x, y, epochs=2, callbacks=[cb], verbose=0)
    assert seen == ["train_begin", ("begin", 0), ("end", 0, ["loss"]), ("begin", 1), ("end", 1, ["loss"]),
                    "train_end"]
    assert cb.extra == 7 and not callbacks.CallbackList([cb]).needs_batches("train")


def test_evaluate_and_predict_hooks():
    x, y = xor_data(50)
    model = seed_model(metrics=["accuracy"])
    model.fit(x, y, epochs=1, verbose=0)

    class Hooks(callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.test, self.outputs, self.events = [], [], []

        def on_test_begin(self, logs=None):
            self.events.append("test_begin")

        def on_test_end(self, logs=None):
            self.events.append(("test_end", logs))

        def on_test_batch_end(self, batch, logs=None):
            self.test.append((batch, logs))

        def on_predict_begin(self, logs=None):
            self.events.append("predict_begin")

        def on_predict_end(self, logs=None):
            self.events.append("predict_end")

        def on_predict_batch_end(self, batch, logs=None):
            self.outputs.append((batch, logs["outputs"]))

    hooks = Hooks()
    logs = model.evaluate(x, y, batch_size=16, verbose=0, return_dict=True, callbacks=[hooks])
    assert logs == model.evaluate(x, y, batch_size=16, verbose=0, return_dict=True)
    assert [b for b, _ in hooks.test] == [0, 1, 2, 3]
    assert hooks.test[-1][1]["loss"] == pytest.approx(logs["loss"], rel=1e-12)
    assert hooks.events == ["test_begin", ("test_end", hooks.test[-1][1])]
    out = model.predict(x, batch_size=16, callbacks=[hooks])
    assert [b for b, _ in hooks.outputs] == [0, 1, 2, 3]
    np.testing.assert_array_equal(np.concatenate([o for _, o in hooks.outputs]), out)
    np.testing.assert_array_equal(out, model.predict(x, batch_size=16))
    assert hooks.events[-2:] == ["predict_begin", "predict_end"]


def test_callbacks_must_be_callbacks():
    x, y = xor_data(20)
    model = seed_model()
    with pytest.raises(TypeError, match="Callback instances"):
        model.fit(x, y, callbacks=[lambda logs: None], verbose=0)


def test_a_history_or_progbar_given_is_used_not_duplicated():
    x, y = xor_data(20)
    model = seed_model()
    history, stream = callbacks.History(), io.StringIO()
    returned = model.fit(x, y, epochs=2, callbacks=[history, callbacks.ProgbarLogger(stream=stream)], verbose=2)
    assert returned is history and model.history is history and history.epoch == [0, 1]
    assert stream.getvalue().count("Epoch ") == 2
    quiet = io.StringIO()
    model.fit(x, y, epochs=2, callbacks=[callbacks.ProgbarLogger(stream=quiet)], verbose=0)
    assert quiet.getvalue() == ""  # verbose=0 reaches a ProgbarLogger given without its own verbose


# ---- progress output ----


class Terminal(io.StringIO):
    def isatty(self):
        return True


@pytest.mark.parametrize("batch_hooks", [False, True])
def test_progress_bar_redraws_in_place_on_a_terminal(batch_hooks):
    x, y = xor_data(200)
    model = seed_model(metrics=["accuracy"])
    stream = Terminal()
    bar = callbacks.ProgbarLogger(stream=stream)
    bar.REDRAW_INTERVAL = 0.0
    extra = [callbacks.LambdaCallback(on_train_batch_end=lambda b, logs: None)] if batch_hooks else []
    model.fit(x, y, epochs=2, batch_size=20, callbacks=extra + [bar], verbose=1)
    out = stream.getvalue()
    lines = out.split("\n")
    assert lines[0] == "Epoch 1/2" and "Epoch 2/2" in lines
    epoch_line = lines[1]
    assert "\r" in epoch_line and "━" in epoch_line
    final = epoch_line.split("\r")[-1]
    assert re.match(r"\x1b\[1m10/10\x1b\[0m \S+ \x1b\[1m\d+s\x1b\[0m \d+(us|ms|s)/step - accuracy: \d\.\d{4} - "
                    r"loss: \d\.\d{4}\x1b\[K$", final), repr(final)
    if batch_hooks:  # a redraw after every batch, the last one forced at the epoch's end
        assert epoch_line.count("\r") == 11
        assert re.search(r"\r\x1b\[1m 3/10\x1b\[0m", epoch_line)


def test_verbose_1_into_a_file_has_no_control_characters(tmp_path):
    x, y = xor_data(200)
    model = seed_model(metrics=["accuracy"])
    path = tmp_path / "log.txt"
    with open(path, "w") as f, contextlib.redirect_stdout(f):
        model.fit(x, y, epochs=3, batch_size=20, validation_split=0.1, verbose=1,
                  callbacks=[callbacks.ReduceLROnPlateau(monitor="loss", patience=0, min_delta=10, verbose=1),
                             callbacks.LambdaCallback(on_train_batch_end=lambda b, logs: None)])
    out = path.read_text()
    assert not any(c in out for c in "\r\b\x1b")
    lines = out.splitlines()
    assert [line.split(" - ")[0] for line in lines if line.startswith("Epoch ") and " - " in line] == [
        "Epoch 1/3", "Epoch 2/3", "Epoch 3/3"]
    assert sum("ReduceLROnPlateau reducing learning rate" in line for line in lines) == 2  # epochs 2 and 3


def test_a_callback_message_ends_the_live_bar_line_first(capsys):
    stream = Terminal()
    bar = callbacks.ProgbarLogger(stream=stream)
    bar.set_params({"verbose": 1, "epochs": 1, "steps": 4})
    bar.on_epoch_begin(0)
    bar.update(2, 4, {"loss": 0.5}, force=True)
    with contextlib.redirect_stdout(stream):
        callbacks.print_msg("Epoch 1: something")
    assert stream.getvalue().endswith("loss: 0.5000\x1b[K\nEpoch 1: something\n")


# ---- EarlyStopping (keras/src/callbacks/early_stopping_test.py) ----


def test_early_stopping_modes():
    rs = np.random.RandomState(0)
    x_train, y_train, x_test, y_test = (rs.random_sample((10, 5)), rs.random_sample((10, 1)),
                                        rs.random_sample((10, 5)), rs.random_sample((10, 1)))
    model = Sequential([layers.Dense(1, activation="relu"), layers.Dense(1, activation="relu")])
    model.compile(loss="mae", optimizer="adam", metrics=["mse", "acc", "accuracy"])
    cases = [("max", "val_mse", np.greater), ("min", "val_loss", np.less), ("auto", "val_mse", np.less),
             ("auto", "loss", np.less), ("auto", "acc", np.greater), ("auto", "val_accuracy", np.greater)]
    for mode, monitor, expected in cases:
        cbks = [callbacks.EarlyStopping(patience=0, monitor=monitor, mode=mode)]
        model.fit(x_train, y_train, batch_size=5, validation_data=(x_test, y_test), callbacks=cbks, epochs=2,
                  verbose=0)
        assert cbks[0].monitor_op is expected, (mode, monitor)
    with pytest.raises(ValueError, match="maximized or minimized"):
        model.fit(x_train, y_train, batch_size=5, validation_data=(x_test, y_test), epochs=2, verbose=0,
                  callbacks=[callbacks.EarlyStopping(patience=0, monitor="unknown")])


def patience_model():
    model = Sequential([layers.Dense(1, input_dim=1)])
    model.compile(loss="mse", optimizer="sgd")
    return model


@pytest.mark.parametrize("patience", [0, 1, 2, 3])
def test_early_stopping_patience(patience):
    losses = [10.0, 9.0, 8.0, 9.0, 8.9, 8.8, 8.7, 8.6, 8.5]
    stopper = callbacks.EarlyStopping(monitor="loss", patience=patience)
    stopper.set_model(patience_model())
    stopper.on_train_begin()
    for epoch, loss in enumerate(losses):
        stopper.on_epoch_end(epoch=epoch, logs={"loss": loss})
        if stopper.model.stop_training:
            break
    assert stopper.stopped_epoch == max(patience, 1) + 2


def test_early_stopping_reuse_and_baseline_and_start_from_epoch():
    rs = np.random.RandomState(1)
    data = rs.random_sample((100, 1))
    labels = np.where(data > 0.5, 1, 0)
    model = Sequential([layers.Dense(1, activation="relu"), layers.Dense(1, activation="relu")])
    model.compile(optimizer="sgd", loss="mae", metrics=["mse"])
    stopper = callbacks.EarlyStopping(monitor="mse", patience=3)
    assert len(model.fit(data, labels, callbacks=[stopper], verbose=0, epochs=20).epoch) >= 3
    assert len(model.fit(data, labels, callbacks=[stopper], verbose=0, epochs=20).epoch) >= 3
    stopper = callbacks.EarlyStopping(monitor="mse", patience=3, baseline=0.6)
    assert len(model.fit(data, labels, callbacks=[stopper], verbose=0, epochs=20).epoch) >= 3
    for start, patience in ((2, 3), (2, 0)):
        stopper = callbacks.EarlyStopping(monitor="mse", patience=patience, start_from_epoch=start)
        assert len(model.fit(data, labels, callbacks=[stopper], verbose=0, epochs=20).epoch) >= patience + start


def test_early_stopping_state_resets_across_fit_calls():
    stopper = callbacks.EarlyStopping(monitor="loss", patience=3)
    stopper.set_model(patience_model())
    stopper.on_train_begin()
    stopper.best, stopper.wait, stopper.stopped_epoch, stopper.best_epoch = 0.1, 3, 5, 5
    stopper.best_weights = object()
    stopper.on_train_begin()
    assert (stopper.best, stopper.wait, stopper.stopped_epoch, stopper.best_epoch, stopper.best_weights) == (
        None, 0, 0, 0, None)


def test_early_stopping_restores_the_best_weights_as_keras():
    class DummyModel:
        def __init__(self):
            self.stop_training = False
            self.weights = -1

        def get_weights(self):
            return self.weights

        def set_weights(self, weights):
            self.weights = weights

    def run(stopper, losses, stop_at=None):
        stopper.set_model(DummyModel())
        stopper.on_train_begin()
        trained = 0
        for epoch, loss in enumerate(losses):
            trained += 1
            stopper.model.weights = epoch
            stopper.on_epoch_end(epoch, logs={"val_loss": loss})
            if epoch == stop_at:
                stopper.model.stop_training = True
            if stopper.model.stop_training:
                break
        stopper.on_train_end()
        return trained, stopper.model.get_weights()

    assert run(callbacks.EarlyStopping(patience=2, restore_best_weights=True), [0.2, 0.15, 0.1, 0.11, 0.12])[1] == 2
    baseline = dict(patience=5, baseline=0.5, restore_best_weights=True)
    assert run(callbacks.EarlyStopping(**baseline), [0.9, 0.8, 0.7, 0.71, 0.72, 0.73]) == (5, 2)
    assert run(callbacks.EarlyStopping(**baseline), [0.9, 0.8, 0.7, 0.71, 0.72, 0.73], stop_at=3) == (4, 2)


def test_early_stopping_restores_the_best_epoch_in_a_real_fit(capsys):
    x, y = xor_data(200)
    xv, yv = xor_data(100, seed=1)
    model = seed_model(optimizer=optimizers.SGD(0.5, momentum=0.9))
    snapshots = []
    record = callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: snapshots.append(
        (logs["val_loss"], model.get_weights())))
    stopper = callbacks.EarlyStopping(patience=3, restore_best_weights=True, verbose=1)
    history = model.fit(x, y, epochs=30, batch_size=20, validation_data=(xv, yv), callbacks=[record, stopper],
                        verbose=0)
    best = int(np.argmin(history.history["val_loss"]))
    assert stopper.best_epoch == best
    for a, b in zip(model.get_weights(), snapshots[best][1]):
        np.testing.assert_array_equal(a, b)
    out = capsys.readouterr().out
    assert f"Restoring model weights from the end of the best epoch: {best + 1}." in out
    if len(history.epoch) < 30:
        assert len(history.epoch) == best + 4 and f"Epoch {best + 4}: early stopping" in out


def test_early_stopping_warns_when_the_monitor_is_missing():
    x, y = xor_data(20)
    with pytest.warns(UserWarning, match="Early stopping conditioned on metric `val_loss` which is not available"):
        seed_model().fit(x, y, epochs=1, callbacks=[callbacks.EarlyStopping()], verbose=0)


# ---- ModelCheckpoint (keras/src/callbacks/model_checkpoint_test.py) ----


def checkpoint_model():
    model = Sequential([layers.Dense(5, activation="relu", input_dim=3), layers.Dense(3, activation="softmax")])
    model.compile(loss="categorical_crossentropy", optimizer="sgd", metrics=["acc"])
    return model


def checkpoint_data():
    rs = np.random.RandomState(42)
    x = rs.randn(60, 3).astype(np.float32)
    y = np.eye(3, dtype=np.float32)[rs.randint(0, 3, 60)]
    return x[:30], y[:30], x[30:], y[30:]


def test_model_checkpoint_options(tmp_path):
    model = checkpoint_model()
    x, y, xt, yt = checkpoint_data()
    filepath = str(tmp_path / "subdir" / "checkpoint.keras")
    fit = dict(batch_size=5, validation_data=(xt, yt), epochs=1, verbose=0)
    for monitor, mode, best_only in (("val_loss", "auto", False), ("val_loss", "min", False),
                                     ("val_acc", "max", False), ("val_acc", "max", True)):
        model.fit(x, y, callbacks=[callbacks.ModelCheckpoint(filepath, monitor=monitor, save_best_only=best_only,
                                                             mode=mode)], **fit)
        assert os.path.exists(filepath)
        os.remove(filepath)
    with pytest.warns(UserWarning, match="Can save best model only with unknown available"):
        model.fit(x, y, callbacks=[callbacks.ModelCheckpoint(filepath, monitor="unknown", save_best_only=True,
                                                             mode="min")], **fit)
    assert os.path.exists(filepath)
    with pytest.warns(UserWarning, match="ModelCheckpoint mode 'unknown' is unknown"):
        callbacks.ModelCheckpoint(filepath, mode="unknown")

    # An integer save_freq counts batches across epochs: 5 per epoch here, a save every 15.
    pattern = str(tmp_path / "checkpoint.epoch{epoch:02d}.keras")
    model.fit(x, y, batch_size=6, validation_data=(xt, yt), epochs=10, verbose=0,
              callbacks=[callbacks.ModelCheckpoint(pattern, save_freq=15)])
    assert [os.path.exists(pattern.format(epoch=e)) for e in range(1, 11)] == [
        False, False, True, False, False, True, False, False, True, False]
    with pytest.raises(ValueError, match="Unrecognized save_freq"):
        callbacks.ModelCheckpoint(filepath, save_freq="invalid_save_freq")
    with pytest.raises(ValueError, match="must end in `.weights.h5`"):
        callbacks.ModelCheckpoint(str(tmp_path / "w.keras"), save_weights_only=True)
    with pytest.raises(ValueError, match="must end in `.keras`"):
        callbacks.ModelCheckpoint(str(tmp_path / "m.h5"))


def test_model_checkpoint_filename_templates_and_save_best_only(tmp_path):
    model = checkpoint_model()
    x, y, xt, yt = checkpoint_data()
    snapshots = []
    template = str(tmp_path / "ckpt-{epoch:02d}-{val_loss:.4f}.keras")
    record = callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: snapshots.append(model.get_weights()))
    history = model.fit(x, y, batch_size=5, validation_data=(xt, yt), epochs=3, verbose=0,
                        callbacks=[record, callbacks.ModelCheckpoint(template)])
    names = sorted(os.listdir(tmp_path))
    assert names == [f"ckpt-{e + 1:02d}-{v:.4f}.keras" for e, v in enumerate(history.history["val_loss"])]
    for name, weights in zip(names, snapshots):
        for a, b in zip(load_model(str(tmp_path / name)).get_weights(), weights):
            np.testing.assert_array_equal(a, b)

    # save_best_only with a quantity that only worsens: only the first epoch is saved.
    best_dir = tmp_path / "best"
    model.fit(x, y, batch_size=5, epochs=4, verbose=0, callbacks=[callbacks.ModelCheckpoint(
        str(best_dir / "e{epoch}.keras"), monitor="loss", mode="max", save_best_only=True)])
    saved = sorted(os.listdir(best_dir))
    losses = model.history.history["loss"]
    expected = [f"e{e + 1}.keras" for e in range(4) if losses[e] == max(losses[: e + 1])]
    assert saved == expected and "e1.keras" in saved


def test_model_checkpoint_weights_only_and_verbose(tmp_path, capsys):
    model = checkpoint_model()
    x, y, xt, yt = checkpoint_data()
    path = str(tmp_path / "w-{epoch}.weights.h5")
    model.fit(x, y, batch_size=5, validation_data=(xt, yt), epochs=2, verbose=0, callbacks=[
        callbacks.ModelCheckpoint(path, save_weights_only=True, save_best_only=True, verbose=1)])
    out = capsys.readouterr().out
    assert "Epoch 1: val_loss improved from None to" in out and "finished saving model to" in out
    assert os.path.exists(path.format(epoch=1))
    fresh = checkpoint_model()
    fresh.load_weights(path.format(epoch=2) if os.path.exists(path.format(epoch=2)) else path.format(epoch=1))
    with pytest.raises(KeyError, match="Failed to format this callback filepath"):
        model.fit(x, y, epochs=1, verbose=0, callbacks=[callbacks.ModelCheckpoint(str(tmp_path / "{nope}.keras"))])


# ---- LearningRateScheduler (keras/src/callbacks/learning_rate_scheduler_test.py) ----


def lr_model(optimizer="sgd"):
    model = Sequential([layers.Dense(5), layers.Dense(2)])
    model.compile(loss="mse", optimizer=optimizer)
    return model


def lr_data():
    (x, y), _ = keras_test_data()
    return x, y


def test_learning_rate_scheduler_updates_the_rate(capsys):
    model = lr_model()
    model.fit(*lr_data(), callbacks=[callbacks.LearningRateScheduler(lambda step: 1.0 / (2.0 + step), verbose=1)],
              epochs=1, verbose=0)
    assert model.optimizer.learning_rate == 0.5
    assert "LearningRateScheduler setting learning rate to 0.5" in capsys.readouterr().out


def test_learning_rate_scheduler_sees_the_previous_rate():
    model = lr_model(optimizers.Adam(0.03))
    model.fit(*lr_data(), callbacks=[callbacks.LearningRateScheduler(lambda step, lr: lr / 2)], epochs=2, verbose=0)
    assert model.optimizer.learning_rate == pytest.approx(0.03 / 4)


def test_learning_rate_scheduler_refuses_a_schedule_optimizer():
    model = lr_model(optimizers.Adam(optimizers.schedules.ExponentialDecay(0.1, 10, 0.9)))
    with pytest.raises(TypeError, match="This optimizer was created with a `LearningRateSchedule`"):
        model.fit(*lr_data(), callbacks=[callbacks.LearningRateScheduler(lambda step, lr: lr / 2)], epochs=2,
                  verbose=0)


def test_learning_rate_in_history_and_a_float_is_required():
    model = lr_model()
    history = model.fit(*lr_data(), callbacks=[callbacks.LearningRateScheduler(lambda step, lr: 0.5)], epochs=1,
                        verbose=0)
    assert history.history["learning_rate"] == [0.5] and type(history.history["learning_rate"][0]) is float
    with pytest.raises(ValueError, match="should be a float"):
        model.fit(*lr_data(), callbacks=[callbacks.LearningRateScheduler(lambda step: 1)], verbose=0)


def test_learning_rate_scheduler_trains_as_setting_the_rate_by_hand():
    x, y = xor_data(200)
    rates = [0.1, 0.05, 0.02]
    fastmlp.utils.set_random_seed(5)
    scheduled = seed_model()
    scheduled.fit(x, y, epochs=3, batch_size=20, verbose=0,
                  callbacks=[callbacks.LearningRateScheduler(lambda epoch: rates[epoch])])
    fastmlp.utils.set_random_seed(5)
    by_hand = seed_model()
    for epoch, rate in enumerate(rates):
        by_hand.optimizer.learning_rate = rate
        by_hand.fit(x, y, epochs=epoch + 1, initial_epoch=epoch, batch_size=20, verbose=0)
    for a, b in zip(scheduled.get_weights(), by_hand.get_weights()):
        np.testing.assert_array_equal(a, b)


# ---- ReduceLROnPlateau (keras/src/callbacks/reduce_lr_on_plateau_test.py) ----


def plateau_fit(epochs, **kwargs):
    (x, y), (xt, yt) = keras_test_data()
    model = lr_model(optimizers.Adam(0.1))
    model.fit(x, y, validation_data=(xt, yt), callbacks=[callbacks.ReduceLROnPlateau(**kwargs)], epochs=epochs,
              verbose=0)
    return model


def test_reduce_lr_on_plateau_reduces(capsys):
    model = plateau_fit(2, patience=1, factor=0.1, monitor="val_loss", min_delta=100, verbose=1)
    assert model.optimizer.learning_rate == pytest.approx(0.01)
    assert "ReduceLROnPlateau reducing learning rate to 0.01" in capsys.readouterr().out
    assert model.history.history["learning_rate"] == [0.1, 0.1]  # logged before the reduction, as Keras


def test_reduce_lr_on_plateau_honors_min_lr_and_cooldown():
    assert plateau_fit(4, patience=1, factor=0.1, min_delta=10, min_lr=0.005).optimizer.learning_rate == 0.005
    # A cooldown of 2 epochs: a reduction every other epoch, two in four epochs.
    assert plateau_fit(4, patience=1, factor=0.1, min_delta=100, cooldown=2).optimizer.learning_rate == (
        pytest.approx(0.001))


def test_reduce_lr_on_plateau_refuses_a_schedule_optimizer_and_a_factor_of_one():
    (x, y), (xt, yt) = keras_test_data()
    model = lr_model(optimizers.Adam(optimizers.schedules.ExponentialDecay(0.1, 10, 0.9)))
    with pytest.raises(TypeError, match="This optimizer was created with a `LearningRateSchedule`"):
        model.fit(x, y, validation_data=(xt, yt), epochs=2, verbose=0,
                  callbacks=[callbacks.ReduceLROnPlateau(patience=1, factor=0.1, min_delta=100)])
    with pytest.raises(ValueError, match="factor >= 1.0"):
        callbacks.ReduceLROnPlateau(factor=1.0)


def test_reduce_lr_on_plateau_state_resets_across_fit_calls():
    reduce_lr = callbacks.ReduceLROnPlateau(patience=1, factor=0.1, monitor="loss", min_delta=0, cooldown=2)
    reduce_lr.set_model(lr_model())
    reduce_lr.on_train_begin()
    reduce_lr.best, reduce_lr.wait, reduce_lr.cooldown_counter = 0.5, 3, 2
    reduce_lr.on_train_begin()
    assert (reduce_lr.best, reduce_lr.wait, reduce_lr.cooldown_counter) == (None, 0, 0)


# ---- TerminateOnNaN (keras/src/callbacks/terminate_on_nan_test.py) ----


def exploding_model():
    model = Sequential()
    for _ in range(5):
        model.add(layers.Dense(2, activation="relu", kernel_initializer=initializers.Constant(value=1e5)))
    model.add(layers.Dense(2))
    model.compile(loss="mean_squared_error", optimizer="sgd")
    return model


def test_terminate_on_nan_stops_after_the_first_epoch(capsys):
    (x, y), (xt, yt) = keras_test_data()
    model = exploding_model()
    counter_model = exploding_model()
    history = model.fit(x, y, batch_size=4, validation_data=(xt, yt), callbacks=[callbacks.TerminateOnNaN()],
                        epochs=20, verbose=0)
    loss = history.history["loss"]
    assert len(loss) == 1 and not np.isfinite(loss[0])
    assert "Batch 0: Invalid loss, terminating training" in capsys.readouterr().out
    # It does not make training run batch by batch: the engine checks natively.
    counter_model.build((None, INPUT_DIM))
    counter_model._make_engine()
    counter = CountingEngine(counter_model)
    counter_model.fit(x, y, batch_size=4, callbacks=[callbacks.TerminateOnNaN()], epochs=2, verbose=0)
    assert counter.calls == [0]


def test_terminate_on_nan_raise_error_skips_on_train_end():
    (x, y), _ = keras_test_data()

    class Tracking(callbacks.Callback):
        train_end_called = False

        def on_train_end(self, logs=None):
            self.train_end_called = True

    tracking = Tracking()
    with pytest.raises(RuntimeError, match="NaN or Inf loss encountered at batch 0"):
        exploding_model().fit(x, y, epochs=1, callbacks=[tracking, callbacks.TerminateOnNaN(raise_error=True)],
                              verbose=0)
    assert not tracking.train_end_called


@pytest.mark.parametrize("raise_error", [False, True])
def test_terminate_on_nan_lets_normal_training_run(raise_error):
    model = Sequential([layers.Dense(1, input_dim=1)])
    model.compile(optimizer="sgd", loss="mse")
    history = model.fit(np.array([[1.0], [2.0]]), np.array([[1.0], [2.0]]), epochs=2,
                        callbacks=[callbacks.TerminateOnNaN(raise_error=raise_error)], verbose=0)
    assert len(history.history["loss"]) == 2


# ---- CSVLogger (keras/src/callbacks/csv_logger_test.py) ----


def test_csv_logger(tmp_path):
    filepath = str(tmp_path / "log.tsv")
    sep = "\t"
    (x, y), (xt, yt) = keras_test_data()
    y, yt = y[:, :1], yt[:, :1]

    def make_model():
        model = Sequential([layers.Dense(2, activation="relu"), layers.Dense(1)])
        model.compile(loss="mse", optimizer="sgd", metrics=["mse"])
        return model

    fit = dict(batch_size=4, validation_data=(xt, yt), verbose=0)
    make_model().fit(x, y, callbacks=[callbacks.CSVLogger(filepath, separator=sep)], epochs=1, **fit)
    with open(filepath) as f:
        assert csv.Sniffer().sniff(f.read()).delimiter == sep
    model = make_model()
    cbks = [callbacks.CSVLogger(filepath, separator=sep, append=True)]
    model.fit(x, y, callbacks=cbks, epochs=1, **fit)
    history = model.fit(x, y, callbacks=cbks, epochs=2, **fit)  # the same CSVLogger, reused
    with open(filepath) as f:
        lines = f.readlines()
    assert all(line.count(sep) == 4 for line in lines) and len(lines) == 5
    assert len(re.findall("epoch", " ".join(lines))) == 1
    assert lines[0].strip().split(sep) == ["epoch", "loss", "mse", "val_loss", "val_mse"]
    last = lines[-1].strip().split(sep)
    assert last[0] == "1" and float(last[1]) == history.history["loss"][1]


def test_csv_logger_without_validation_writes_na_and_survives_a_nan_stop(tmp_path):
    filepath = str(tmp_path / "log.csv")
    (x, y), _ = keras_test_data()
    exploding_model().fit(x, y, batch_size=4, epochs=3, verbose=0,
                          callbacks=[callbacks.TerminateOnNaN(), callbacks.CSVLogger(filepath)])
    with open(filepath) as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["epoch", "loss", "val_loss"] and len(rows) == 2
    assert rows[1][0] == "0" and rows[1][1] in ("nan", "inf") and rows[1][2] == "NA"


def test_monitor_callbacks_warn_for_an_unknown_mode():
    with pytest.warns(UserWarning, match="EarlyStopping mode 'sideways' is unknown"):
        stopper = callbacks.EarlyStopping(mode="sideways")
    assert stopper.mode == "auto"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        callbacks.ReduceLROnPlateau(mode="max")
