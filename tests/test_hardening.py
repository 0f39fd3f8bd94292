"""The native engine under stress: Ctrl-C, non-finite losses, threads, and memory over many models."""

import json
import os
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest

import fastmlp
from fastmlp.layers import Dense
from fastmlp.models import Sequential
from fastmlp.optimizers import SGD


def _model(lr=0.05, widths=(8, 16, 3), backend="cpu", momentum=0.9, hidden="tanh"):
    model = Sequential([Dense(widths[1], activation=hidden, input_dim=widths[0]),
                        Dense(widths[2], activation="softmax")])
    model.compile(loss="categorical_crossentropy", optimizer=SGD(learning_rate=lr, momentum=momentum),
                  metrics=["accuracy"], backend=backend)
    return model


def _data(n=512, features=8, classes=3, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, features)).astype(np.float32)
    y = np.eye(classes, dtype=np.float32)[x[:, :classes].argmax(1)]
    return x, y


# ---- Ctrl-C ----

CTRL_C_SCRIPT = textwrap.dedent("""
    import json, os, signal, threading, time
    import numpy as np
    import fastmlp
    from fastmlp.layers import Dense
    from fastmlp.models import Sequential

    import sys
    fastmlp.utils.set_random_seed(0)
    if sys.argv[1] == "long":
        model = Sequential([Dense(256, activation="relu", input_dim=64), Dense(10, activation="softmax")])
        rows, batch = 4096, 64
    else:
        model = Sequential([Dense(4, activation="relu", input_dim=64), Dense(10, activation="softmax")])
        rows, batch = 100, 100
    model.compile(loss="sparse_categorical_crossentropy", optimizer="sgd", metrics=["accuracy"])
    x = np.random.default_rng(0).standard_normal((rows, 64)).astype(np.float32)
    y = np.random.default_rng(1).integers(0, 10, rows)
    # "long": about 30 ms per epoch, the interrupt lands in the middle of a native epoch; "tiny":
    # epochs of one step of a few microseconds, all in one native call, the interrupt lands between two.
    sent = {}
    def interrupt():
        time.sleep(0.5)
        sent["t"] = time.perf_counter()
        os.kill(os.getpid(), signal.SIGINT)
    threading.Thread(target=interrupt, daemon=True).start()
    out = {}
    try:
        model.fit(x, y, epochs=10**9, batch_size=batch, verbose=0)
        out["raised"] = False
    except KeyboardInterrupt:
        out["raised"] = True
        out["latency"] = time.perf_counter() - sent["t"]
    out["epochs"] = len(model.history.epoch)
    out["logged"] = len(model.history.history["loss"])
    out["finite"] = bool(all(np.isfinite(w).all() for w in model.get_weights()))
    # Still usable: predict and another fit work.
    out["predict_shape"] = list(model.predict(x[:5]).shape)
    out["refit_loss"] = model.fit(x, y, epochs=1, verbose=0).history["loss"][0]
    print(json.dumps(out))
""")


@pytest.mark.parametrize("epochs", ["long", "tiny"])
def test_ctrl_c_stops_a_native_fit_quickly_and_leaves_the_model_usable(epochs):
    proc = subprocess.run([sys.executable, "-c", CTRL_C_SCRIPT, epochs], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["raised"]
    assert out["latency"] < 0.1  # a few ms of polling plus one batch; generous for a loaded machine
    assert out["epochs"] >= 1  # History holds the epochs completed before the interrupt
    assert out["logged"] == out["epochs"]
    assert out["finite"] and out["predict_shape"] == [5, 10] and np.isfinite(out["refit_loss"])


# ---- non-finite losses ----


def _nan_prone_model(backend):
    model = _model(backend=backend, hidden="linear")
    weights = model.get_weights()
    weights[0][...] = 1.0
    model.set_weights(weights)
    return model


@pytest.mark.parametrize("backend", ["cpu", "numpy"])
def test_a_nan_loss_stops_training_names_the_layer_and_keeps_finite_weights(backend, capsys):
    x, y = _data()
    x[300] = 3e38  # with an all-ones kernel the first layer's sum overflows: inf - inf = NaN downstream
    model = _nan_prone_model(backend)
    history = model.fit(x, y, epochs=3, batch_size=64, shuffle=False, verbose=0)
    message = capsys.readouterr().out
    assert "batch 5" in message and "NaN or infinite" in message
    assert f"layer {model.layers[0].name!r}'s kernel" in message
    assert len(history.epoch) == 1 and np.isnan(history.history["loss"][0])
    assert model.optimizer.iterations == 4  # the four good batches were applied, the bad one not
    assert all(np.isfinite(w).all() for w in model.get_weights())
    x[300] = 0
    assert np.isfinite(model.fit(x, y, epochs=1, verbose=0).history["loss"][0])


@pytest.mark.parametrize("backend", ["cpu", "numpy"])
def test_on_nonfinite_raise(backend):
    x, y = _data()
    x[10] = 3e38
    model = _nan_prone_model(backend)
    with pytest.raises(FloatingPointError, match="NaN or infinite"):
        model.fit(x, y, epochs=2, batch_size=64, verbose=0, on_nonfinite="raise")
    with pytest.raises(ValueError, match="on_nonfinite"):
        model.fit(x, y, on_nonfinite="ignore")


def test_a_diverging_learning_rate_is_stopped_by_name():
    x, y = _data()
    model = Sequential([Dense(16, activation="linear", input_dim=8), Dense(3)])
    model.compile(loss="mse", optimizer=SGD(learning_rate=1e4))
    history = model.fit(x * 100, y, epochs=50, batch_size=32, verbose=0)
    assert len(history.epoch) < 50 and np.isnan(history.history["loss"][-1])


# ---- threads ----


def _seeded_model(seed):
    fastmlp.utils.set_random_seed(seed)
    return _model()


FIT = dict(epochs=3, batch_size=32, shuffle=False, verbose=0)


def test_two_models_in_two_threads_match_sequential_training():
    data = [_data(2048, seed=1), _data(2048, seed=2)]
    expected = []
    for seed, (x, y) in zip((1, 2), data):
        model = _seeded_model(seed)
        model.fit(x, y, **FIT)
        expected.append(model.get_weights())
    models = [_seeded_model(1), _seeded_model(2)]
    threads = [threading.Thread(target=m.fit, args=d, kwargs=FIT) for m, d in zip(models, data)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for model, weights in zip(models, expected):
        for a, b in zip(model.get_weights(), weights):
            assert np.array_equal(a, b)


def test_predict_from_many_threads_on_one_model():
    x, y = _data()
    model = _model()
    model.fit(x, y, epochs=1, verbose=0)
    expected = model.predict(x)
    outputs = [None] * 8

    def work(i):
        for _ in range(20):
            outputs[i] = model.predict(x)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for out in outputs:
        assert np.array_equal(out, expected)


def test_predict_while_training_is_serialized():
    x, y = _data(4096)
    model = _model()
    trainer = threading.Thread(target=model.fit, args=(x, y), kwargs=dict(epochs=20, batch_size=16, verbose=0))
    trainer.start()
    seen = [model.predict(x[:7]) for _ in range(20)]
    trainer.join()
    assert all(p.shape == (7, 3) and np.isfinite(p).all() for p in seen)
    assert np.array_equal(model.predict(x[:7]), model.predict(x[:7]))


# ---- memory ----


def _rss_bytes():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/statm")
@pytest.mark.skipif(bool(os.environ.get("FASTMLP_SANITIZED")),
                    reason="AddressSanitizer holds freed memory in quarantine, so the resident set grows")
def test_a_thousand_model_lifecycles_do_not_grow_memory():
    x, y = _data(64)

    def cycle():
        model = _model()
        model.fit(x, y, epochs=1, batch_size=16, verbose=0)
        model.predict(x)
        del model

    for _ in range(50):  # warm up allocator pools and caches
        cycle()
    before = _rss_bytes()
    for _ in range(1000):
        cycle()
    assert _rss_bytes() - before < 10 * 2**20


TWO_FITS_SCRIPT = textwrap.dedent("""
    import threading, numpy as np, fastmlp
    from fastmlp.callbacks import Callback
    from fastmlp.layers import Dense
    from fastmlp.models import Sequential
    model = Sequential([Dense(64, activation="relu", input_dim=32), Dense(4, activation="softmax")])
    model.compile(loss="sparse_categorical_crossentropy", optimizer="sgd")
    x = np.random.default_rng(0).standard_normal((4096, 32)).astype(np.float32)
    y = np.random.default_rng(1).integers(0, 4, 4096)
    started = threading.Event()

    class Started(Callback):
        def on_epoch_begin(self, epoch, logs=None):
            started.set()

    trainer = threading.Thread(target=model.fit, args=(x, y),
                               kwargs=dict(epochs=30, batch_size=32, verbose=0, callbacks=[Started()]))
    trainer.start()
    started.wait()
    try:
        model.fit(x, y, epochs=1, verbose=0)
        refused = False
    except RuntimeError as exc:
        refused = "already training in another thread" in str(exc)
    for _ in range(50):  # meanwhile, option changes and predictions from this thread
        model.optimizer.learning_rate = 0.01
        model.predict(x[:8])
    trainer.join()
    assert refused
    assert all(np.isfinite(w).all() for w in model.get_weights())
    print("ok")
""")


def test_a_second_concurrent_fit_is_refused_and_nothing_deadlocks():
    proc = subprocess.run([sys.executable, "-c", TWO_FITS_SCRIPT], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr
