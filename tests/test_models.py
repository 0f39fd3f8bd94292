"""Sequential's Keras API: structure, weights, fit/evaluate/predict semantics, input checking, output."""

import math
import re
import subprocess
import sys

import numpy as np
import pytest
from conftest import assert_close

import fastmlp
from fastmlp.callbacks import History
from fastmlp.layers import Dense, Input
from fastmlp.models import Sequential
from fastmlp.optimizers import SGD
from fastmlp.reference import kernels as K

SEED_LAYERS = [(4, "relu"), (4, "relu"), (2, "softmax")]


def xor_data(n, seed=0, dtype=np.float32):
    x = np.random.RandomState(seed).randn(n, 2).astype(dtype)
    y = np.eye(2, dtype=dtype)[(x[:, 0] * x[:, 1] <= 0).astype(np.int64)]
    return x, y


def seed_model(optimizer=None, loss="binary_crossentropy", metrics=None, backend="cpu", weights=None):
    """The seed's 2-4-4-2 network, compiled; `weights` (a get_weights list) fixes its start."""
    model = Sequential([Dense(4, activation="relu", input_dim=2), Dense(4, activation="relu"), Dense(2, "softmax")])
    if weights is not None:
        model.set_weights(weights)
    model.compile(optimizer=optimizer if optimizer is not None else SGD(0.05, momentum=0.9), loss=loss,
                  metrics=metrics, backend=backend)
    return model


@pytest.fixture
def start_weights():
    return Sequential([Dense(4, "relu", input_dim=2), Dense(4, "relu"), Dense(2, "softmax")]).get_weights()


def forward(weights, x, activations):
    """The model's output with the reference kernels (weights as from get_weights)."""
    for (w, b), act in zip(zip(weights[::2], weights[1::2]), activations):
        x = K.dense_forward(x, w, b, act)
    return x


def assert_weights_equal(actual, expected):
    assert len(actual) == len(expected)
    for a, b in zip(actual, expected):
        np.testing.assert_array_equal(a, b)


# ---- structure ----


def test_list_constructor_and_add_build_the_same_model():
    listed = Sequential([Dense(4, activation="relu", input_dim=2), Dense(4, activation="relu"), Dense(2, "softmax")])
    added = Sequential()
    added.add(Dense(4, activation="relu", input_dim=2))
    added.add(Dense(4, activation="relu"))
    added.add(Dense(2, activation="softmax"))
    for model in (listed, added):
        assert model.built
        assert [layer.units for layer in model.layers] == [4, 4, 2]
        assert [layer.activation for layer in model.layers] == ["relu", "relu", "softmax"]
        assert [w.shape for w in model.get_weights()] == [(2, 4), (4,), (4, 4), (4,), (4, 2), (2,)]
        assert all(w.dtype == np.float32 for w in model.get_weights())
        # glorot_uniform kernels, zero biases
        for k, (fan_in, fan_out) in zip(model.get_weights()[::2], [(2, 4), (4, 4), (4, 2)]):
            assert np.abs(k).max() <= math.sqrt(6 / (fan_in + fan_out)) and np.any(k != 0)
        assert all(not b.any() for b in model.get_weights()[1::2])
    assert model.count_params() == 42


def test_input_first_declares_the_input_size():
    model = Sequential([Input(shape=(2,)), Dense(4, activation="relu"), Dense(2, activation="softmax")])
    assert model.built
    assert [w.shape for w in model.get_weights()] == [(2, 4), (4,), (4, 2), (2,)]
    assert len(model.layers) == 2

    later = Sequential([Dense(4)])
    with pytest.raises(ValueError, match="first"):
        later.add(Input(shape=(2,)))
    assert len(later.layers) == 1


def test_deferred_build_takes_the_width_of_x():
    model = Sequential([Dense(4, activation="relu"), Dense(2, activation="softmax")])
    assert not model.built
    assert model.get_weights() == []
    with pytest.raises(ValueError, match="no weights"):
        model.set_weights([])
    model.compile(optimizer="sgd", loss="categorical_crossentropy")
    assert not model.built

    x = np.random.RandomState(0).randn(20, 3).astype(np.float32)
    y = np.eye(2, dtype=np.float32)[(x[:, 0] > 0).astype(int)]
    model.fit(x, y, epochs=1, verbose=0)
    assert model.built
    assert [w.shape for w in model.get_weights()] == [(3, 4), (4,), (4, 2), (2,)]
    assert model.predict(x).shape == (20, 2)
    with pytest.raises(ValueError, match="expects 3"):
        model.fit(x[:, :2], y, verbose=0)


def test_layer_names_auto_increment_per_class():
    # The counters are process-wide (as in Keras), so the first names are checked in a fresh process.
    code = (
        "from fastmlp.models import Sequential\n"
        "from fastmlp.layers import Dense\n"
        "m = Sequential([Dense(4, input_dim=2), Dense(4), Dense(2)])\n"
        "m2 = Sequential([Dense(1, input_dim=2)])\n"
        "print(m.name, m2.name, *[l.name for l in m.layers + m2.layers])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["sequential", "sequential_1", "dense", "dense_1", "dense_2", "dense_3"]

    # In this process: consecutive layers get consecutive suffixes; an explicit name is kept.
    a, b, c = Dense(1), Dense(1), Dense(1, name="head")
    suffix = [int(m.group(1) or 0) for m in (re.fullmatch(r"dense(?:_(\d+))?", layer.name) for layer in (a, b))]
    assert suffix[1] == suffix[0] + 1
    assert c.name == "head"


# ---- weights ----


def test_get_set_weights_round_trip(start_weights):
    model = seed_model()
    model.set_weights(start_weights)
    got = model.get_weights()
    assert_weights_equal(got, start_weights)
    # get_weights returns copies
    got[0][...] = 99
    assert_weights_equal(model.get_weights(), start_weights)
    # float64 and nested lists are converted
    model.set_weights([w.astype(np.float64).tolist() for w in start_weights])
    assert_weights_equal(model.get_weights(), start_weights)
    # the weights are the ones used by predict
    x, _ = xor_data(7)
    assert_close(model.predict(x), forward(start_weights, x, ["relu", "relu", "softmax"]))


@pytest.mark.parametrize(
    "corrupt, error, match",
    [
        (lambda ws: ws[:-1], ValueError, "6 weight arrays.*5"),
        (lambda ws: ws + [np.zeros(2, np.float32)], ValueError, "6 weight arrays.*7"),
        (lambda ws: ws[:5] + [np.zeros(3, np.float32)], ValueError, r"shape \(2,\).*\(3,\)"),
        (lambda ws: [ws[0].T] + ws[1:], ValueError, r"shape \(2, 4\).*\(4, 2\)"),
        (lambda ws: ws[:4] + [np.full((4, 2), np.nan, np.float32)] + ws[5:], ValueError, "NaN"),
        (lambda ws: ws[:5] + [np.array(["a", "b"])], TypeError, "real numbers"),
    ],
    ids=["too_few", "too_many", "bias_shape", "kernel_shape", "nan", "strings"],
)
def test_set_weights_errors_leave_the_model_unchanged(start_weights, corrupt, error, match):
    model = seed_model(weights=start_weights)
    # Every array but the bad one is valid and different from the current weights.
    candidate = corrupt([w + 1 for w in start_weights])
    with pytest.raises(error, match=match):
        model.set_weights(candidate)
    assert_weights_equal(model.get_weights(), start_weights)
    x, y = xor_data(50)
    model.fit(x, y, epochs=1, verbose=0)


# ---- fit semantics ----


def test_history_records_python_floats_per_epoch():
    x, y = xor_data(64)
    model = seed_model(metrics=["accuracy"])
    history = model.fit(x, y, epochs=3, batch_size=16, verbose=0)
    assert isinstance(history, History)
    assert model.history is history
    assert history.epoch == [0, 1, 2]
    assert set(history.history) == {"loss", "accuracy"}
    for values in history.history.values():
        assert isinstance(values, list) and len(values) == 3
        assert all(type(v) is float and math.isfinite(v) for v in values)
    assert all(0 <= v <= 1 for v in history.history["accuracy"])

    again = model.fit(x, y, epochs=2, batch_size=16, verbose=0)
    assert model.history is again and again is not history
    assert again.epoch == [0, 1] and len(again.history["loss"]) == 2


@pytest.mark.parametrize("backend", ["numpy", "cpu"])
def test_epoch_loss_is_the_batch_size_weighted_mean(backend, start_weights):
    n, batch_size = 103, 25  # batches of 25, 25, 25, 25, 3
    x, y = xor_data(n)
    model = seed_model(optimizer=SGD(learning_rate=0.0), weights=start_weights, backend=backend)
    history = model.fit(x, y, epochs=2, batch_size=batch_size, shuffle=False, verbose=0)
    assert_weights_equal(model.get_weights(), start_weights)

    batch_losses, sizes = [], []
    for s in range(0, n, batch_size):
        p = forward(start_weights, x[s : s + batch_size], ["relu", "relu", "softmax"])
        batch_losses.append(float(K.loss_per_sample(p, y[s : s + batch_size], "binary_crossentropy").mean()))
        sizes.append(len(p))
    assert sizes == [25, 25, 25, 25, 3]
    weighted = float(np.dot(batch_losses, sizes) / n)
    # The losses are float32 computations: the float32 policy applies.
    assert_close(np.float32(history.history["loss"]), np.float32([weighted, weighted]))
    # The small last batch makes the unweighted mean of the batch means measurably different.
    assert abs(float(np.mean(batch_losses)) - weighted) > 1e-3


def test_last_partial_batch_is_kept():
    x, y = xor_data(103)
    model = seed_model()
    assert model.optimizer.iterations == 0
    model.fit(x, y, epochs=3, batch_size=25, verbose=0)
    assert model.optimizer.iterations == math.ceil(103 / 25) * 3
    model.fit(x, y, epochs=2, batch_size=500, verbose=0)  # one batch larger than the data
    assert model.optimizer.iterations == 15 + 2


def test_decay_persists_across_fit_calls(start_weights):
    x, y = xor_data(250)

    def make():
        return seed_model(optimizer=SGD(learning_rate=0.1, momentum=0.9, decay=0.05), weights=start_weights)

    twice = make()
    first = twice.fit(x, y, epochs=1, batch_size=32, shuffle=False, verbose=0)
    second = twice.fit(x, y, epochs=1, batch_size=32, shuffle=False, verbose=0)
    once = make()
    both = once.fit(x, y, epochs=2, batch_size=32, shuffle=False, verbose=0)

    assert_weights_equal(twice.get_weights(), once.get_weights())
    assert first.history["loss"] + second.history["loss"] == both.history["loss"]
    assert twice.optimizer.iterations == once.optimizer.iterations == 2 * 8
    # Keras 2: the reported learning rate stays the base value.
    assert twice.optimizer.learning_rate == 0.1



def test_decay_is_applied_per_batch_by_hand():
    """One linear unit, mse, plain SGD with decay, 2 fits: lr_t = lr / (1 + decay * t), t over batches."""
    rng = np.random.RandomState(3)
    x = rng.randn(10, 3).astype(np.float32)
    y = (x @ np.array([[1.0], [-2.0], [0.5]]) + 0.3).astype(np.float32)
    w0 = [rng.randn(3, 1).astype(np.float32), np.zeros(1, np.float32)]
    lr, decay, batch_size = 0.1, 0.5, 4

    model = Sequential([Dense(1, input_dim=3)])
    model.set_weights(w0)
    model.compile(optimizer=SGD(learning_rate=lr, decay=decay), loss="mse")
    model.fit(x, y, epochs=2, batch_size=batch_size, shuffle=False, verbose=0)
    model.fit(x, y, epochs=1, batch_size=batch_size, shuffle=False, verbose=0)

    w, b = (a.astype(np.float64) for a in w0)
    xd, yd = x.astype(np.float64), y.astype(np.float64)
    t = 0
    for _epoch in range(3):
        for s in range(0, len(x), batch_size):
            xb, yb = xd[s : s + batch_size], yd[s : s + batch_size]
            dz = 2 * (xb @ w + b - yb) / len(xb)
            lr_t = lr / (1 + decay * t)
            w, b = w - lr_t * xb.T @ dz, b - lr_t * dz.sum(axis=0)
            t += 1
    assert model.optimizer.iterations == t == 9
    # float32 training against a float64 hand computation over 9 steps: a few ulps per step.
    assert_close(model.get_weights()[0], w.astype(np.float32), rtol=1e-5, atol=1e-6)
    assert_close(model.get_weights()[1], b.astype(np.float32), rtol=1e-5, atol=1e-6)


def _binary_case():
    x = np.random.RandomState(1).randn(60, 2).astype(np.float32)
    return x, (x[:, :1] > 0).astype(np.float32)


def _categorical_case():
    x = np.random.RandomState(2).randn(60, 2).astype(np.float32)
    return x, np.eye(3, dtype=np.float32)[np.random.RandomState(3).randint(0, 3, 60)]


def _sparse_case():
    x = np.random.RandomState(4).randn(60, 2).astype(np.float32)
    return x, np.random.RandomState(5).randint(0, 3, 60)


@pytest.mark.parametrize(
    "units, activation, loss, data, metric, expected",
    [
        # one output column: binary accuracy at 0.5 (argmax would always say 1.0 here)
        (1, "sigmoid", "binary_crossentropy", _binary_case, "accuracy", lambda p, y: np.mean((p > 0.5) == y)),
        (1, "sigmoid", "mse", _binary_case, "acc", lambda p, y: np.mean((p > 0.5) == y)),
        # one-hot targets of the output's width: categorical (argmax)
        (3, "softmax", "categorical_crossentropy", _categorical_case, "acc",
         lambda p, y: np.mean(p.argmax(1) == y.argmax(1))),
        (3, "softmax", "mse", _categorical_case, "accuracy", lambda p, y: np.mean(p.argmax(1) == y.argmax(1))),
        # integer labels: sparse categorical
        (3, "softmax", "sparse_categorical_crossentropy", _sparse_case, "accuracy",
         lambda p, y: np.mean(p.argmax(1) == y)),
    ],
    ids=["binary", "binary_mse_acc", "categorical_acc", "categorical_mse", "sparse"],
)
def test_accuracy_kind_follows_keras3_rule(units, activation, loss, data, metric, expected):
    x, y = data()
    model = Sequential([Dense(5, activation="tanh", input_dim=2), Dense(units, activation=activation)])
    model.compile(optimizer=SGD(learning_rate=0.0), loss=loss, metrics=[metric], backend="numpy")
    history = model.fit(x, y, epochs=1, batch_size=16, shuffle=False, verbose=0)
    assert set(history.history) == {"loss", metric}
    want = float(expected(model.predict(x), y))
    assert history.history[metric][0] == pytest.approx(want, abs=1e-12)
    assert 0 < want < 1
    assert model.evaluate(x, y, verbose=0, return_dict=True)[metric] == pytest.approx(want, abs=1e-12)


def test_validation_split_takes_the_last_samples_before_shuffling(start_weights):
    x, y = xor_data(100)

    fastmlp.utils.set_random_seed(5)
    model = seed_model(metrics=["accuracy"], weights=start_weights)
    history = model.fit(x, y, epochs=3, batch_size=16, validation_split=0.2, shuffle=True, verbose=0)

    # Training saw the first 80 samples, shuffled exactly as a fit on x[:80] with the same seed.
    fastmlp.utils.set_random_seed(5)
    direct = seed_model(metrics=["accuracy"], weights=start_weights)
    direct_history = direct.fit(x[:80], y[:80], epochs=3, batch_size=16, shuffle=True, verbose=0)
    assert_weights_equal(model.get_weights(), direct.get_weights())
    assert history.history["loss"] == direct_history.history["loss"]
    assert model.optimizer.iterations == 3 * math.ceil(80 / 16)

    assert set(history.history) == {"loss", "accuracy", "val_loss", "val_accuracy"}
    val = model.evaluate(x[80:], y[80:], verbose=0, return_dict=True)
    assert_close(np.float32(history.history["val_loss"][-1]), np.float32(val["loss"]))
    assert history.history["val_accuracy"][-1] == pytest.approx(val["accuracy"], abs=1e-12)


def test_validation_split_rounds_the_training_part_down():
    x, y = xor_data(10)
    model = seed_model()
    model.fit(x, y, epochs=1, batch_size=1, validation_split=0.25, verbose=0)  # floor(10 * 0.75) = 7
    assert model.optimizer.iterations == 7
    with pytest.raises(ValueError, match="empty"):
        model.fit(x[:1], y[:1], validation_split=0.5, verbose=0)


def test_validation_data_is_evaluated_each_epoch():
    x, y = xor_data(90)
    xv, yv = xor_data(30, seed=1)
    model = seed_model(metrics=["accuracy"])
    history = model.fit(x, y, epochs=2, batch_size=32, validation_data=(xv, yv), validation_split=0.5, verbose=0)
    assert model.optimizer.iterations == 2 * 3  # validation_data overrides validation_split
    assert len(history.history["val_loss"]) == 2
    val_loss, val_acc = model.evaluate(xv, yv, verbose=0)
    assert_close(np.float32(history.history["val_loss"][-1]), np.float32(val_loss))
    assert history.history["val_accuracy"][-1] == pytest.approx(val_acc, abs=1e-12)
    with pytest.raises(ValueError, match="validation_data"):
        model.fit(x, y, validation_data=(xv,), verbose=0)


# ---- evaluate / predict ----


def test_evaluate_returns_scalar_list_or_dict(capsys):
    x, y = xor_data(40)
    plain = seed_model()
    loss = plain.evaluate(x, y, verbose=0)
    assert type(loss) is float

    model = seed_model(metrics=["accuracy"], weights=plain.get_weights())
    values = model.evaluate(x, y, verbose=0)
    assert isinstance(values, list) and len(values) == 2 and all(type(v) is float for v in values)
    assert values[0] == loss
    logs = model.evaluate(x, y, verbose=0, return_dict=True)
    assert logs == {"loss": values[0], "accuracy": values[1]}
    p = model.predict(x)
    assert values[1] == pytest.approx(np.mean(p.argmax(1) == y.argmax(1)), abs=1e-12)
    assert_close(np.float32(loss), np.float32(K.loss_per_sample(p, y, "binary_crossentropy").mean()))
    assert capsys.readouterr().out == ""


def test_predict_returns_float32_and_prints_nothing(capsys):
    x, _ = xor_data(77)
    model = seed_model()
    pred = model.predict(x)
    assert isinstance(pred, np.ndarray) and pred.shape == (77, 2) and pred.dtype == np.float32
    assert_close(pred.sum(axis=1), np.ones(77, np.float32))
    np.testing.assert_array_equal(model.predict(x, batch_size=5), pred)
    out = capsys.readouterr()
    assert out.out == "" and out.err == ""


def test_float64_int_and_list_inputs_are_accepted(start_weights):
    x, y = xor_data(40)
    model = seed_model(weights=start_weights)
    ref = model.predict(x)
    np.testing.assert_array_equal(model.predict(x.tolist()), ref)
    np.testing.assert_array_equal(model.predict(x.astype(np.float64)), ref)
    xi = np.array([[1, -2], [0, 3], [-1, -1]])
    np.testing.assert_array_equal(model.predict(xi), model.predict(xi.astype(np.float32)))

    as_lists = seed_model(weights=start_weights)
    as_lists.fit(x.astype(np.float64).tolist(), y.astype(int).tolist(), epochs=2, shuffle=False, verbose=0)
    as_arrays = seed_model(weights=start_weights)
    as_arrays.fit(x, y, epochs=2, shuffle=False, verbose=0)
    assert_weights_equal(as_lists.get_weights(), as_arrays.get_weights())
    assert type(as_lists.evaluate(xi, [[1, 0], [0, 1], [1, 0]], verbose=0)) is float


# ---- bad inputs ----


def assert_still_usable(model, weights_before, iterations_before):
    assert_weights_equal(model.get_weights(), weights_before)
    assert model.optimizer.iterations == iterations_before
    x, y = xor_data(30)
    model.fit(x, y, epochs=1, batch_size=10, verbose=0)
    assert model.optimizer.iterations == iterations_before + 3
    assert np.isfinite(model.predict(x)).all()


X10, Y10 = xor_data(10)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(x=np.ones((10, 3)), y=Y10), ValueError, "3 features.*expects 2"),
        (dict(x=X10, y=np.ones((10, 3))), ValueError, r"shape \(10, 2\).*\(10, 3\)"),
        (dict(x=X10, y=Y10[:, 0]), ValueError, r"shape \(10, 2\)"),
        (dict(x=X10, y=Y10[:6]), ValueError, "one row per sample"),
        (dict(x=X10[:, 0], y=Y10), ValueError, "2-D"),
        (dict(x=np.zeros((0, 2)), y=np.zeros((0, 2))), ValueError, "empty"),
        (dict(x=np.where(np.eye(10, 2) > 0, np.nan, X10), y=Y10), ValueError, "NaN"),
        (dict(x=X10, y=np.where(np.eye(10, 2) > 0, np.inf, Y10)), ValueError, "infinity"),
        (dict(x=X10 + 1j, y=Y10), TypeError, "complex"),
        (dict(x=X10.astype(str), y=Y10), TypeError, "real numbers"),
        (dict(x=None, y=Y10), ValueError, "required"),
        (dict(x=X10, y=Y10, batch_size=0), ValueError, "batch_size"),
        (dict(x=X10, y=Y10, batch_size=2.5), ValueError, "batch_size"),
        (dict(x=X10, y=Y10, epochs=-1), ValueError, "epochs"),
        (dict(x=X10, y=Y10, validation_split=1.5), ValueError, "validation_split"),
        (dict(x=X10, y=Y10, validation_split=-0.1), ValueError, "validation_split"),
        (dict(x=X10, y=Y10, verbose=3), ValueError, "verbose"),
        (dict(x=X10, y=Y10, shuffle="yes"), TypeError, "shuffle"),
    ],
    ids=["features", "y_width", "y_1d", "y_rows", "x_1d", "x_empty", "x_nan", "y_inf", "x_complex", "x_str",
         "x_none", "batch_size_0", "batch_size_float", "epochs_neg", "val_split_1.5", "val_split_neg",
         "verbose", "shuffle"],
)
def test_bad_fit_arguments_raise_and_leave_the_model_usable(kwargs, error, match):
    model = seed_model()
    model.fit(*xor_data(20), epochs=1, batch_size=10, verbose=0)
    before, iterations = model.get_weights(), model.optimizer.iterations
    with pytest.raises(error, match=match):
        model.fit(**{"verbose": 0, **kwargs})
    assert_still_usable(model, before, iterations)


@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda m: m.predict(np.ones((4, 5))), ValueError, "5 features.*expects 2"),
        (lambda m: m.predict(np.ones(2)), ValueError, "2-D"),
        (lambda m: m.predict(np.ones((3, 2)), batch_size=0), ValueError, "batch_size"),
        (lambda m: m.evaluate(X10, np.ones((10, 1)), verbose=0), ValueError, r"shape \(10, 2\)"),
        (lambda m: m.evaluate(np.full((10, 2), np.nan), Y10, verbose=0), ValueError, "NaN"),
    ],
    ids=["predict_features", "predict_1d", "predict_batch_size", "evaluate_y_width", "evaluate_nan"],
)
def test_bad_predict_and_evaluate_arguments_raise(call, error, match):
    model = seed_model()
    before = model.get_weights()
    with pytest.raises(error, match=match):
        call(model)
    assert_still_usable(model, before, 0)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(loss="hinge_of_nothing"), "Unknown loss"),
        (dict(loss="binary_crossentropy", optimizer="not_an_optimizer"), "Unknown optimizer"),
        (dict(loss="binary_crossentropy", metrics=["precision_at_nothing"]), "Unknown metric"),
        (dict(loss="binary_crossentropy", backend="tpu"), "Unknown backend"),
        (dict(loss=None), "loss"),
    ],
    ids=["loss", "optimizer", "metric", "backend", "no_loss"],
)
def test_bad_compile_arguments_raise_and_keep_the_previous_compile(kwargs, match):
    model = seed_model(metrics=["accuracy"])
    optimizer = model.optimizer
    with pytest.raises(ValueError, match=match):
        model.compile(**kwargs)
    assert model.optimizer is optimizer and model.loss == "binary_crossentropy"
    history = model.fit(*xor_data(20), epochs=1, verbose=0)
    assert set(history.history) == {"loss", "accuracy"}


@pytest.mark.parametrize(
    "make, error, match",
    [
        (lambda: Dense(4, activation="swoosh"), ValueError, "Unknown activation"),
        (lambda: Dense(units=0), ValueError, "units.*Received: units=0"),
        (lambda: Dense(units=2.5), ValueError, "units.*Received: units=2.5"),
        (lambda: Dense(units=-3), ValueError, "units"),
        (lambda: Dense(4, input_dim=0), ValueError, "input_dim"),
        (lambda: Dense(4, bogus=1), TypeError, "bogus"),
        (lambda: SGD(momentum=1.5), ValueError, "momentum"),
        (lambda: SGD(momentum=-0.1), ValueError, "momentum"),
        (lambda: SGD(learning_rate=-1), ValueError, "learning_rate"),
        (lambda: SGD(learning_rate=float("nan")), ValueError, "learning_rate"),
        (lambda: SGD(decay=-0.1), ValueError, "decay"),
        (lambda: Input(shape=()), ValueError, "shape"),
    ],
    ids=["activation", "units_0", "units_float", "units_neg", "input_dim_0", "unknown_kwarg", "momentum_big",
         "momentum_neg", "lr_neg", "lr_nan", "decay_neg", "input_rank"],
)
def test_bad_layer_and_optimizer_arguments_raise(make, error, match):
    with pytest.raises(error, match=match):
        make()


def test_fit_before_compile_raises_then_works():
    model = Sequential([Dense(4, "relu", input_dim=2), Dense(2, "softmax")])
    x, y = xor_data(20)
    before = model.get_weights()
    with pytest.raises(ValueError, match="compile"):
        model.fit(x, y, verbose=0)
    with pytest.raises(ValueError, match="compile"):
        model.evaluate(x, y, verbose=0)
    assert_weights_equal(model.get_weights(), before)
    # predict needs no compile
    assert model.predict(x).shape == (20, 2)
    model.compile(optimizer="sgd", loss="categorical_crossentropy")
    model.fit(x, y, epochs=1, verbose=0)
    assert model.optimizer.iterations == 1


# ---- losses ----


def test_sparse_labels_of_shape_n_and_n1_match_one_hot(start_weights):
    x, y = xor_data(64)
    labels = y.argmax(axis=1)
    runs = {}
    for name, targets, loss in [
        ("flat", labels, "sparse_categorical_crossentropy"),
        ("column", labels.reshape(-1, 1), "sparse_categorical_crossentropy"),
        ("one_hot", y, "categorical_crossentropy"),
    ]:
        model = seed_model(loss=loss, metrics=["accuracy"], weights=start_weights)
        runs[name] = (model.fit(x, targets, epochs=3, batch_size=16, shuffle=False, verbose=0).history,
                      model.get_weights())
    assert runs["flat"][0] == runs["column"][0]
    assert_weights_equal(runs["flat"][1], runs["column"][1])
    assert_close(np.float32(runs["flat"][0]["loss"]), np.float32(runs["one_hot"][0]["loss"]))
    assert runs["flat"][0]["accuracy"] == pytest.approx(runs["one_hot"][0]["accuracy"], abs=1e-12)
    for a, b in zip(runs["flat"][1], runs["one_hot"][1]):
        assert_close(a, b)


@pytest.mark.parametrize("labels", [[0, 1, 3], [0, -1, 2], [0, 1.5, 2]], ids=["too_big", "negative", "fraction"])
def test_sparse_labels_out_of_range_raise(labels):
    model = Sequential([Dense(3, "softmax", input_dim=2)])
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    before = model.get_weights()
    x = np.ones((3, 2), np.float32)
    with pytest.raises(ValueError, match=r"integers in \[0, 3\)"):
        model.fit(x, labels, verbose=0)
    with pytest.raises(ValueError, match="shape"):
        model.fit(x, np.eye(3), verbose=0)  # one-hot targets need categorical_crossentropy
    assert_weights_equal(model.get_weights(), before)
    model.fit(x, [0, 1, 2], epochs=1, verbose=0)
    assert model.optimizer.iterations == 1


def test_mse_alias(start_weights):
    x, y = xor_data(50)
    runs = []
    for loss in ("mse", "mean_squared_error"):
        model = seed_model(loss=loss, weights=start_weights)
        assert model.loss == "mean_squared_error"
        runs.append((model.fit(x, y, epochs=2, batch_size=16, shuffle=False, verbose=0).history, model.get_weights()))
    assert runs[0][0] == runs[1][0]
    assert_weights_equal(runs[0][1], runs[1][1])

    frozen = seed_model(optimizer=SGD(learning_rate=0.0), loss="mse", weights=start_weights)
    loss = frozen.fit(x, y, epochs=1, batch_size=50, verbose=0).history["loss"][0]
    p = forward(start_weights, x, ["relu", "relu", "softmax"])
    # The loss is a float32 computation: the float32 policy applies.
    assert_close(np.float32(loss), np.float32(np.mean((p - y) ** 2)))


# ---- float64 ----


@pytest.fixture
def float64_models():
    fastmlp.backend.set_floatx("float64")
    try:
        yield
    finally:
        fastmlp.backend.set_floatx("float32")


@pytest.mark.parametrize("backend", ["cpu", "numpy"])
def test_float64_models_train_and_predict_in_float64(float64_models, backend):
    assert fastmlp.backend.floatx() == "float64"
    x, y = xor_data(200, dtype=np.float64)
    model = seed_model(metrics=["accuracy"], backend=backend)
    assert all(w.dtype == np.float64 for w in model.get_weights())
    start = model.get_weights()
    history = model.fit(x, y, epochs=3, batch_size=32, verbose=0)
    assert history.history["loss"][-1] < history.history["loss"][0]
    pred = model.predict(x)
    assert pred.dtype == np.float64 and pred.shape == (200, 2)
    assert all(w.dtype == np.float64 for w in model.get_weights())
    assert not np.array_equal(model.get_weights()[0], start[0])
    assert_close(pred, forward(model.get_weights(), x, ["relu", "relu", "softmax"]))


def test_floatx_is_restored():
    assert fastmlp.backend.floatx() == "float32"
    with pytest.raises(ValueError, match="floatx"):
        fastmlp.backend.set_floatx("float16")
    assert fastmlp.backend.floatx() == "float32"


# ---- progress output and summary ----


@pytest.mark.parametrize("verbose", [1, "auto"])
def test_verbose_1_into_a_pipe_writes_plain_lines(capsys, verbose):
    x, y = xor_data(500)
    model = seed_model(metrics=["accuracy"])
    model.fit(x, y, epochs=3, batch_size=10, verbose=verbose, validation_split=0.1)
    out = capsys.readouterr().out
    assert not any(c in out for c in "\r\b\x1b")
    lines = out.splitlines()
    assert 1 <= len(lines) <= 3
    assert "loss:" in lines[-1] and "val_loss:" in lines[-1] and "accuracy:" in lines[-1]


def test_verbose_2_writes_one_line_per_epoch(capsys):
    x, y = xor_data(100)
    model = seed_model()
    model.fit(x, y, epochs=4, batch_size=10, verbose=2)
    out = capsys.readouterr().out
    assert not any(c in out for c in "\r\b\x1b")
    lines = out.splitlines()
    assert len(lines) == 4
    for i, line in enumerate(lines, start=1):
        assert line.startswith(f"Epoch {i}/4") and "loss:" in line


def test_verbose_0_is_silent(capsys):
    x, y = xor_data(100)
    model = seed_model(metrics=["accuracy"])
    model.fit(x, y, epochs=2, batch_size=10, verbose=0, validation_split=0.2)
    model.evaluate(x, y, verbose=0)
    model.predict(x)
    out = capsys.readouterr()
    assert out.out == "" and out.err == ""


def test_summary_lists_layers_and_param_counts(capsys):
    model = Sequential([Dense(4, "relu", input_dim=2), Dense(4, "relu"), Dense(2, "softmax")])
    model.summary()
    out = capsys.readouterr().out
    names = [layer.name for layer in model.layers]
    for name, units, params in zip(names, (4, 4, 2), (12, 20, 10)):
        assert re.search(rf"{name} \(Dense\)\s*\S\s*\(None, {units}\)\s*\S\s*{params}\b", out), out
    assert "Layer (type)" in out and "Output Shape" in out and "Param #" in out
    assert re.search(r"Total params: 42\b", out)
    assert re.search(r"Trainable params: 42\b", out)
    assert re.search(r"Non-trainable params: 0\b", out)

    lines = []
    model.summary(print_fn=lines.append)
    assert "\n".join(lines) + "\n" == out


KERAS_SUMMARY = """\
Model: "sequential"
┏━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━┳━━━━━━━━━━━━━━━━━━━━━━━━━━━━━┳━━━━━━━━━━━━━━━━━┓
┃ Layer (type)                         ┃ Output Shape                ┃         Param # ┃
┡━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━╇━━━━━━━━━━━━━━━━━━━━━━━━━━━━━╇━━━━━━━━━━━━━━━━━┩
│ flatten (Flatten)                    │ (None, 6)                   │               0 │
├──────────────────────────────────────┼─────────────────────────────┼─────────────────┤
│ dense (Dense)                        │ (None, 4)                   │              28 │
├──────────────────────────────────────┼─────────────────────────────┼─────────────────┤
│ activation (Activation)              │ (None, 4)                   │               0 │
├──────────────────────────────────────┼─────────────────────────────┼─────────────────┤
│ dense_1 (Dense)                      │ (None, 2)                   │              10 │
└──────────────────────────────────────┴─────────────────────────────┴─────────────────┘
 Total params: 38 (152.00 B)
 Trainable params: 38 (152.00 B)
 Non-trainable params: 0 (0.00 B)
"""


def test_summary_matches_keras_3_on_a_wide_terminal(monkeypatch):
    """KERAS_SUMMARY is Keras 3.15.1's summary() of the same model, printed with COLUMNS=200."""
    from fastmlp.layers import Activation, Flatten

    monkeypatch.setenv("COLUMNS", "200")
    model = Sequential([Input(shape=(2, 3)), Flatten(name="flatten"), Dense(4, name="dense"),
                        Activation("relu", name="activation"), Dense(2, activation="softmax", name="dense_1")],
                       name="sequential")
    lines = []
    model.summary(print_fn=lines.append)
    assert "\n".join(lines) + "\n" == KERAS_SUMMARY
    unbuilt = []
    Sequential([Dense(4), Dense(2)]).summary(print_fn=unbuilt.append)
    assert re.search(r"│ dense\S* \(Dense\)\s+│ \?\s+│\s+0 \(unbuilt\) │", unbuilt[4]), unbuilt[4]


# ---- optimizer arguments ----


def test_sgd_lr_alias():
    assert SGD(lr=0.5).learning_rate == 0.5
    assert SGD(0.25).learning_rate == 0.25
    opt = SGD()
    assert (opt.learning_rate, opt.momentum, opt.nesterov, opt.decay) == (0.01, 0.0, False, 0.0)


def test_compile_with_optimizer_name(start_weights):
    x, y = xor_data(64)
    by_name = seed_model(optimizer="sgd", weights=start_weights)
    assert isinstance(by_name.optimizer, SGD)
    assert by_name.optimizer.learning_rate == 0.01 and by_name.optimizer.momentum == 0.0
    by_instance = seed_model(optimizer=SGD(), weights=start_weights)
    h1 = by_name.fit(x, y, epochs=2, batch_size=16, shuffle=False, verbose=0)
    h2 = by_instance.fit(x, y, epochs=2, batch_size=16, shuffle=False, verbose=0)
    assert h1.history == h2.history
    assert_weights_equal(by_name.get_weights(), by_instance.get_weights())
    assert not np.array_equal(by_name.get_weights()[0], start_weights[0])


@pytest.mark.parametrize("backend", ["cpu", "numpy"])
def test_optimizer_settings_changed_after_compile_take_effect(backend):
    model = seed_model(backend=backend)
    x, y = xor_data(40)
    model.optimizer.learning_rate = 0.0
    model.optimizer.momentum = 0.0
    before = model.get_weights()
    model.fit(x, y, epochs=2, batch_size=8, verbose=0)
    for a, b in zip(model.get_weights(), before):
        assert np.array_equal(a, b)
    model.optimizer.learning_rate = 0.1
    model.fit(x, y, epochs=1, batch_size=8, verbose=0)
    assert not np.array_equal(model.get_weights()[0], before[0])
    with pytest.raises(ValueError, match="momentum"):
        model.optimizer.momentum = 2.0


def test_a_batch_size_beyond_the_data_is_one_batch():
    x, y = xor_data(30)
    weights = []
    for batch_size in (30, 2**62):
        fastmlp.utils.set_random_seed(5)
        model = seed_model()
        model.fit(x, y, epochs=2, batch_size=batch_size, verbose=0)
        assert model.optimizer.iterations == 2
        weights.append(model.get_weights())
    for a, b in zip(*weights):
        assert np.array_equal(a, b)


def test_a_layer_cannot_join_a_second_model():
    shared = Dense(4, activation="relu", input_dim=2)
    first = Sequential([shared, Dense(2, activation="softmax")])
    with pytest.raises(ValueError, match=f"already belongs to model '{first.name}'"):
        Sequential([shared])
    del first  # once its model is gone, the layer may join another
    assert Sequential([shared]).layers == [shared]
