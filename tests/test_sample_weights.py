"""Sample weights, class weights and weighted metrics (Keras 3 semantics), and gelu/silu training.

Keras 3 (keras/src/losses/loss.py reduce_weighted_values, reduction "sum_over_batch_size") weights
each sample's loss and divides the sum by the batch size, not by the sum of the weights; the
epoch's loss is the batch-size-weighted mean of those (torch trainer: the loss tracker updated with
sample_weight = batch size). ``metrics=`` are unweighted, ``weighted_metrics=`` are weighted
(``sum(w m) / sum(w)``) and named ``weighted_<name>`` when ``metrics`` has the name already.
Class weights become sample weights by class (argmax of one-hot targets, else the rounded label),
for the training data only. The goldens come from real Keras 3 (see
tests/fixtures/make_keras_weighted_goldens.py).
"""

import os

import fastmlp
import numpy as np
import pytest
import conftest
from conftest import assert_close
from fastmlp import _core, callbacks
from fastmlp.layers import Dense, Input
from fastmlp.models import Sequential, load_model
from fastmlp.optimizers import SGD, Adam, RMSprop
from fastmlp.reference import ReferenceEngine

GOLDENS = os.path.join(os.path.dirname(__file__), "fixtures", "keras_weighted_goldens.npz")
REL_TO_SCALE = 2e-5  # as tests/test_keras_parity.py: relative to the largest |value| of each array

# name -> (input_dim, layers, optimizer, loss, metrics, weighted_metrics)
CASES = {
    "sw_cce": (4, [(8, "tanh"), (3, "softmax")], lambda: SGD(0.05, momentum=0.9), "categorical_crossentropy",
               ["accuracy"], ["accuracy"]),
    "cw_sparse": (5, [(10, "relu"), (3, "softmax")], lambda: Adam(0.01), "sparse_categorical_crossentropy",
                  ["accuracy"], ["accuracy"]),
    "cw_binary": (3, [(6, "relu"), (1, "sigmoid")], lambda: RMSprop(0.01), "binary_crossentropy", ["accuracy"],
                  ["accuracy"]),
    "sw_gelu_silu": (6, [(24, "gelu"), (20, "swish"), (2, None)], lambda: SGD(0.02), "mse", None, None),
    "gelu_silu": (3, [(8, "gelu"), (6, "silu"), (2, "softmax")], lambda: Adam(0.01), "categorical_crossentropy",
                  ["accuracy"], None),
}


@pytest.fixture(scope="module")
def goldens():
    with np.load(GOLDENS) as data:
        return {k: data[k] for k in data.files}


def assert_scaled_close(actual, expected, err_msg=""):
    conftest.assert_scaled_close(actual, expected, REL_TO_SCALE, err_msg)


def test_goldens_come_from_keras_3(goldens):
    assert str(goldens["keras_version"]).startswith("3.") and str(goldens["backend"]) == "torch"


@pytest.mark.parametrize("backend", ["cpu", "numpy"])
@pytest.mark.parametrize("case", list(CASES))
def test_trajectory_matches_keras(goldens, case, backend):
    input_dim, layers, make_optimizer, loss, metrics, weighted = CASES[case]
    g = {k[len(case) + 1:]: v for k, v in goldens.items() if k.startswith(case + "/")}
    model = Sequential([Input(shape=(input_dim,))] + [Dense(units, activation=act) for units, act in layers])
    model.set_weights([g[f"w{i}"] for i in range(2 * len(layers))])
    model.compile(optimizer=make_optimizer(), loss=loss, metrics=metrics, weighted_metrics=weighted, backend=backend)
    kwargs = {}
    if "sw" in g:
        kwargs["sample_weight"] = g["sw"]
    if "class_weight" in g:
        kwargs["class_weight"] = {int(c): float(w) for c, w in g["class_weight"]}
    if "x_val" in g:
        kwargs["validation_data"] = (g["x_val"], g["y_val"], g["sw_val"])
    history = model.fit(g["x"], g["y"], epochs=4, batch_size=int(g["batch_size"]), shuffle=False, verbose=0,
                        validation_split=float(g["validation_split"]), **kwargs)

    keras_keys = sorted(k[len("hist_"):] for k in g if k.startswith("hist_"))
    assert sorted(history.history) == keras_keys
    for key in keras_keys:
        assert_scaled_close(history.history[key], g[f"hist_{key}"], err_msg=f"{case} {key}")
    for i, w in enumerate(model.get_weights()):
        assert_scaled_close(w, g[f"final_w{i}"], err_msg=f"{case} final_w{i}")
    logs = model.evaluate(g["x"], g["y"], sample_weight=g.get("sw"), batch_size=int(g["batch_size"]), verbose=0,
                          return_dict=True)
    assert sorted(logs) == sorted(k[len("eval_"):] for k in g if k.startswith("eval_"))
    for key, value in logs.items():
        assert_scaled_close(value, g[f"eval_{key}"], err_msg=f"{case} evaluate {key}")


# ---- the engines ----

OUTPUTS = [("softmax", "categorical_crossentropy"), ("softmax", "sparse_categorical_crossentropy"),
           ("sigmoid", "binary_crossentropy"), ("softmax", "binary_crossentropy"), ("linear", "mean_squared_error"),
           ("linear", "categorical_crossentropy_from_logits"), ("linear", "mean_absolute_error"), ("tanh", "huber"),
           ("gelu", "mean_squared_error")]
SHAPES = {"narrow": (3, 6, 5), "rowmajor": (20, 24, 17)}


def _problem(shape, out_act, loss, n=23, seed=0):
    rng = np.random.default_rng(seed)
    specs = [(shape[0], shape[1], "tanh", True), (shape[1], shape[2], "silu", True), (shape[2], 3, out_act, True)]
    x = rng.standard_normal((n, shape[0]))
    labels = rng.integers(0, 3, n)
    if loss.startswith("sparse"):
        y = labels.reshape(n, 1).astype(np.float64)
    elif loss in ("mean_squared_error", "mean_absolute_error", "huber"):
        y = rng.standard_normal((n, 3))
    elif out_act == "sigmoid":
        y = (rng.random((n, 3)) < 0.5).astype(np.float64)
    else:
        y = np.eye(3)[labels]
    params = rng.standard_normal(sum(i * o + o for i, o, _a, _b in specs)) * 0.5
    w = rng.uniform(0, 2, n)
    w[::5] = 0.0
    return specs, x, y, params, w


@pytest.mark.parametrize("path", SHAPES)
@pytest.mark.parametrize("out_act, loss", OUTPUTS)
def test_weighted_gradients_match_reference_and_finite_differences(path, out_act, loss):
    specs, x, y, params, w = _problem(SHAPES[path], out_act, loss)
    native = _core.Engine64(specs, loss, [], {})
    reference = ReferenceEngine(specs, loss, [], {}, dtype=np.float64)
    native.params[:] = params
    reference.params[:] = params
    total = native.compute_gradients(x, y, w)
    assert_close(total, reference.compute_gradients(x, y, w), rtol=1e-12)
    assert_close(native.grads, reference.grads, kind="grad")
    grads = native.grads.copy()
    # The loss is sum_i w_i loss_i (over the batch B = len(x)); the gradient is that of its mean.
    rng = np.random.default_rng(1)
    h = 1e-6
    for i in rng.choice(len(params), 10, replace=False):
        native.params[:] = params
        native.params[i] += h
        up = native.compute_gradients(x, y, w)
        native.params[i] -= 2 * h
        down = native.compute_gradients(x, y, w)
        fd = (up - down) / (2 * h) / len(x)
        if loss == "mean_absolute_error" or out_act == "tanh":  # kinks of |e| and of Huber's quadratic zone
            continue
        assert abs(fd - grads[i]) <= 1e-7 + 1e-6 * abs(grads[i]), (i, fd, grads[i])


@pytest.mark.parametrize("path", SHAPES)
def test_unit_weights_change_no_bit_and_zero_weights_remove_samples(path):
    specs, x, y, params, _ = _problem(SHAPES[path], "softmax", "categorical_crossentropy")
    engine = _core.Engine32(specs, "categorical_crossentropy", [], {})
    engine.params[:] = params
    x32, y32 = x.astype(np.float32), y.astype(np.float32)
    plain = engine.compute_gradients(x32, y32)
    plain_grads = engine.grads.copy()
    assert engine.compute_gradients(x32, y32, np.ones(len(x), np.float32)) == plain
    np.testing.assert_array_equal(engine.grads, plain_grads)
    # Zero weights: the other samples' sum, still divided by the whole batch size.
    keep = np.arange(len(x)) % 3 != 0
    engine64 = _core.Engine64(specs, "categorical_crossentropy", [], {})
    engine64.params[:] = params
    total = engine64.compute_gradients(x, y, keep.astype(np.float64))
    grads = engine64.grads.copy()
    sub_total = engine64.compute_gradients(x[keep], y[keep])
    assert_close(total, sub_total, rtol=1e-12)
    assert_close(grads, engine64.grads * keep.sum() / len(x), kind="grad")


def test_weighted_metrics_and_weight_sum_in_the_engines():
    specs, x, y, params, w = _problem(SHAPES["narrow"], "softmax", "categorical_crossentropy")
    for engine in (_core.Engine64(specs, "categorical_crossentropy", ["categorical_accuracy"] * 2, {}),
                   ReferenceEngine(specs, "categorical_crossentropy", ["categorical_accuracy"] * 2, {},
                                   dtype=np.float64)):
        engine.params[:] = params
        engine.set_weighted_metrics([False, True])
        sums = engine.evaluate(x, y, 7, w)
        p = engine.predict(x, 7)
        hits = (p.argmax(1) == y.argmax(1)).astype(np.float64)
        assert sums["metrics"][0] == hits.sum()
        assert_close(sums["metrics"][1], (hits * w).sum(), rtol=1e-12)
        assert_close(sums["weight_sum"], w.sum(), rtol=1e-12)
        engine.begin_epoch(len(x), 7, False, 0, 0)
        sums = engine.train_steps(x, y, 0, w)
        assert_close(sums["weight_sum"], w.sum(), rtol=1e-12)
        with pytest.raises(ValueError, match="one flag per metric"):
            engine.set_weighted_metrics([True])


# ---- the model API ----


def _model(units=3, act="softmax", loss="categorical_crossentropy", backend="cpu", **compile_args):
    model = Sequential([Input(shape=(4,)), Dense(6, activation="tanh"), Dense(units, activation=act)])
    model.compile(optimizer=SGD(0.1), loss=loss, backend=backend, **compile_args)
    return model


def _data(n=40, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 4)).astype(np.float32)
    labels = rng.integers(0, 3, n)
    return x, np.eye(3, dtype=np.float32)[labels], labels


def test_fit_with_unit_sample_weights_equals_fit_without():
    x, y, _ = _data()
    runs = []
    for sample_weight in (None, np.ones(len(x))):
        fastmlp.utils.set_random_seed(5)
        model = _model(metrics=["accuracy"])
        history = model.fit(x, y, epochs=3, batch_size=8, verbose=0, sample_weight=sample_weight)
        runs.append((history.history, model.get_weights()))
    assert runs[0][0] == runs[1][0]
    for a, b in zip(runs[0][1], runs[1][1]):
        np.testing.assert_array_equal(a, b)


def test_class_weight_is_the_sample_weight_of_each_samples_class():
    x, y, labels = _data()
    table = {0: 0.25, 2: 4.0}  # class 1 absent: weight 1
    expected = np.array([table.get(c, 1.0) for c in labels], np.float32)
    for loss, targets in (("categorical_crossentropy", y), ("sparse_categorical_crossentropy", labels)):
        runs = []
        for kwargs in ({"class_weight": table}, {"sample_weight": expected}):
            fastmlp.utils.set_random_seed(6)
            model = _model(loss=loss, metrics=["accuracy"], weighted_metrics=["accuracy"])
            runs.append((model.fit(x, targets, epochs=2, batch_size=16, verbose=0, **kwargs).history,
                         model.get_weights()))
        assert runs[0][0] == runs[1][0]
        for a, b in zip(runs[0][1], runs[1][1]):
            np.testing.assert_array_equal(a, b)
    # A single sigmoid output: the class is the rounded 0/1 target.
    binary = (labels == 2).astype(np.float32)
    model = _model(units=1, act="sigmoid", loss="binary_crossentropy")
    assert np.array_equal(model._class_sample_weights({1: 3.0}, model._prepare_y(binary, len(x))),
                          np.where(binary == 1, 3.0, 1.0).astype(np.float32))


def test_weighted_metric_names_and_values():
    x, y, _ = _data()
    w = np.linspace(0, 2, len(x)).astype(np.float32)
    model = _model(metrics=["accuracy", "mse"], weighted_metrics=["accuracy", "mae"])
    model.fit(x, y, epochs=1, batch_size=8, verbose=0)
    logs = model.evaluate(x, y, sample_weight=w, verbose=0, return_dict=True)
    assert sorted(logs) == ["accuracy", "loss", "mae", "mse", "weighted_accuracy"]
    p = model.predict(x)
    hits = (p.argmax(1) == y.argmax(1)).astype(np.float64)
    assert logs["accuracy"] == pytest.approx(hits.mean())
    assert logs["weighted_accuracy"] == pytest.approx((hits * w).sum() / w.sum())
    assert logs["mae"] == pytest.approx((np.abs(p - y).mean(1) * w).sum() / w.sum(), rel=1e-6)
    per_sample = -(y * np.log(np.clip(p, 1e-7, 1 - 1e-7))).sum(1)
    assert logs["loss"] == pytest.approx((per_sample * w).sum() / len(x), rel=1e-5)  # / samples, not / sum(w)
    values = model.evaluate(x, y, sample_weight=w, verbose=0)
    assert values == [logs[k] for k in ("loss", "accuracy", "mse", "weighted_accuracy", "mae")]
    # Weights that sum to zero: the weighted metric is 0, as Keras's divide_no_nan.
    zero = model.evaluate(x, y, sample_weight=np.zeros(len(x)), verbose=0, return_dict=True)
    assert zero["weighted_accuracy"] == 0.0 and zero["loss"] == 0.0


class _TestBatches(callbacks.Callback):
    def on_test_batch_end(self, batch, logs=None):
        self.last = logs


@pytest.mark.parametrize("backend", ["cpu", "numpy"])
def test_validation_weights_split_and_batchwise_evaluation(backend):
    x, y, _ = _data(50)
    w = np.linspace(0.5, 1.5, len(x))
    model = _model(backend=backend, weighted_metrics=["accuracy"])
    model.fit(x, y, epochs=1, batch_size=10, verbose=0)
    whole = model.evaluate(x, y, sample_weight=w, batch_size=10, verbose=0, return_dict=True)
    spy = _TestBatches()
    batchwise = model.evaluate(x, y, sample_weight=w, batch_size=10, verbose=0, return_dict=True, callbacks=[spy])
    assert batchwise == pytest.approx(whole) and spy.last == pytest.approx(whole)
    # validation_split takes the last samples' weights with them.
    fastmlp.utils.set_random_seed(2)
    model = _model(backend=backend, weighted_metrics=["accuracy"])
    weights = model.get_weights()
    history = model.fit(x, y, epochs=1, batch_size=10, verbose=0, sample_weight=w, validation_split=0.2)
    fastmlp.utils.set_random_seed(2)
    twin = _model(backend=backend, weighted_metrics=["accuracy"])
    twin.set_weights(weights)
    twin_history = twin.fit(x[:40], y[:40], epochs=1, batch_size=10, verbose=0, sample_weight=w[:40],
                            validation_data=(x[40:], y[40:], w[40:]))
    assert history.history == twin_history.history


def test_weight_arguments_are_checked():
    x, y, _ = _data()
    model = _model()
    with pytest.raises(ValueError, match="cannot `class_weight` and `sample_weight` at the same time"):
        model.fit(x, y, verbose=0, class_weight={0: 1.0}, sample_weight=np.ones(len(x)))
    with pytest.raises(ValueError, match=r"one weight per sample, shape \(40,\) or \(40, 1\); received shape \(40, 3\)"):
        model.fit(x, y, verbose=0, sample_weight=np.ones((40, 3)))
    with pytest.raises(ValueError, match="NaN"):
        model.evaluate(x, y, verbose=0, sample_weight=np.full(len(x), np.nan))
    with pytest.raises(TypeError, match="class_weight"):
        model.fit(x, y, verbose=0, class_weight=[1.0, 2.0])
    with pytest.raises(TypeError, match="keys must be integer class indices"):
        model.fit(x, y, verbose=0, class_weight={"a": 1.0})
    with pytest.raises(TypeError, match="values must be numbers"):
        model.fit(x, y, verbose=0, class_weight={0: "2"})
    with pytest.raises(ValueError, match="must be finite"):
        model.fit(x, y, verbose=0, class_weight={0: float("inf")})
    with pytest.raises(ValueError, match="val_sample_weight"):
        model.fit(x, y, verbose=0, validation_data=(x, y, np.ones(3)))
    with pytest.raises(ValueError, match=r"\(x_val, y_val\) or \(x_val, y_val, val_sample_weight\)"):
        model.fit(x, y, verbose=0, validation_data=(x, y, None, None))
    with pytest.raises(TypeError, match="weighted_metrics"):
        _model(weighted_metrics="accuracy")
    with pytest.raises(ValueError, match="sample_weight must be a 1-D array"):
        model._engine.evaluate(x, y, 8, np.ones(3, np.float32))


def test_weighted_metrics_are_saved_in_the_compile_config(tmp_path):
    x, y, _ = _data()
    model = _model(metrics=["accuracy"], weighted_metrics=["accuracy", "mae"])
    model.fit(x, y, epochs=1, verbose=0, sample_weight=np.linspace(0, 1, len(x)))
    path = str(tmp_path / "m.keras")
    model.save(path)
    loaded = load_model(path)
    assert loaded._compile_args["weighted_metrics"] == ["accuracy", "mae"]
    w = np.linspace(1, 2, len(x))
    assert loaded.evaluate(x, y, sample_weight=w, verbose=0, return_dict=True) == pytest.approx(
        model.evaluate(x, y, sample_weight=w, verbose=0, return_dict=True))
