"""BatchNormalization: the kernels against Keras 3's layer (forward in training and inference, the
moving statistics, the gradients), 5-epoch trajectories against Keras, native against the NumPy
reference and float64 finite differences, bit equality across thread counts, saving, placement in a
model, argument errors, and the backends that refuse it.

The Keras values come from tests/fixtures/make_keras_batchnorm_goldens.py (its docstring lists them).
"""

import json
import os
import re
import zipfile

import fastmlp
import h5py
import numpy as np
import pytest
import conftest
from conftest import assert_close
from fastmlp import _core, regularizers
from fastmlp._core import kernels
from fastmlp.layers import Activation, BatchNormalization, Dense, Dropout, Flatten, Input
from fastmlp.models import Sequential, load_model
from fastmlp.optimizers import SGD, Adam, RMSprop
from fastmlp.reference import ReferenceEngine
from fastmlp.reference import kernels as ref

GOLDENS = os.path.join(os.path.dirname(__file__), "fixtures", "keras_batchnorm_goldens.npz")


@pytest.fixture(scope="module")
def goldens():
    with np.load(GOLDENS) as data:
        return {k: data[k] for k in data.files}


@pytest.fixture(autouse=True)
def _restore_threads():
    saved = _core.get_num_threads()
    yield
    _core.set_num_threads(saved)


# ---- kernels against Keras's layer ----

LAYER_CASES = {"f32": dict(momentum=0.9, epsilon=1e-3), "f32_nocenter": dict(momentum=0.5, epsilon=1e-2),
               "f64": dict(momentum=0.99, epsilon=1e-3)}


@pytest.mark.parametrize("case", sorted(LAYER_CASES))
@pytest.mark.parametrize("impl", ["native", "naive", "reference"])
def test_kernels_match_keras_forward_moving_statistics_and_gradients(goldens, case, impl):
    g = {k.split("/", 1)[1]: v for k, v in goldens.items() if k.startswith(f"layer_{case}/")}
    settings = LAYER_CASES[case]
    x, gamma, beta, eps = g["x"], g["gamma"], g.get("beta"), settings["epsilon"]
    if impl == "reference":
        y, xhat, mean, var, inv = ref.batchnorm_forward_train(x, gamma, beta, eps)
        y_infer = ref.batchnorm_forward_infer(x, g["moving_mean"], g["moving_variance"], gamma, beta, eps)
        moving = (ref.batchnorm_update_moving(g["moving_mean"], mean, settings["momentum"]),
                  ref.batchnorm_update_moving(g["moving_variance"], var, settings["momentum"]))
        dx, dgamma, dbeta = ref.batchnorm_backward(g["r"], xhat, gamma, inv)
    else:
        naive = impl == "naive"
        y, xhat, mean, var, inv = kernels.batchnorm_forward_train(x, gamma, beta, eps, naive=naive)
        y_infer = kernels.batchnorm_forward_infer(x, g["moving_mean"], g["moving_variance"], gamma, beta, eps)
        moving = kernels.batchnorm_update_moving(g["moving_mean"], g["moving_variance"], mean, var,
                                                 settings["momentum"])
        dx, dgamma, dbeta = kernels.batchnorm_backward(g["r"], xhat, gamma, inv, naive=naive)
    assert y.dtype == x.dtype and dx.dtype == x.dtype
    # Keras computes the layer in float32 whatever its dtype (f64 included: see the goldens' script),
    # with var = mean(x^2) - mean^2, which loses a few bits to cancellation (the features have offsets
    # up to 2) that the two-pass float64 sums here keep: float32 tolerances, a little looser forward.
    fwd = dict(rtol=2e-6, atol=2e-6)
    assert_close(y_infer, g["y_infer"], **fwd)
    assert_close(y, g["y_train"], **fwd)
    assert_close(moving[0], g["moving_mean_after"], **fwd)
    assert_close(moving[1], g["moving_variance_after"], **fwd)
    grad = dict(rtol=1e-4, atol=1e-5)
    assert_close(dx, g["dx"], kind="grad", **grad)
    assert_close(dgamma, g["dgamma"], kind="grad", **grad)
    if beta is not None:
        assert_close(dbeta, g["dbeta"], kind="grad", **grad)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("B, N", [(1, 3), (7, 1), (33, 70), (600, 300)])
def test_kernels_are_bitwise_their_naive_twins_on_every_thread_count(dtype, B, N):
    rng = np.random.default_rng([B, N])
    x = (rng.standard_normal((B, N)) * 3 + 1).astype(dtype)
    gamma, beta = rng.uniform(0.5, 1.5, N).astype(dtype), rng.uniform(-1, 1, N).astype(dtype)
    dy = rng.standard_normal((B, N)).astype(dtype)
    naive = kernels.batchnorm_forward_train(x, gamma, beta, 1e-3, naive=True)
    naive_back = kernels.batchnorm_backward(dy, naive[1], gamma, naive[4], naive=True)
    for threads in (1, 2, 3):  # 600 x 300 is split into column strips when there are threads
        _core.set_num_threads(threads)
        for a, b in zip(kernels.batchnorm_forward_train(x, gamma, beta, 1e-3), naive):
            assert np.array_equal(a, b)
        for a, b in zip(kernels.batchnorm_backward(dy, naive[1], gamma, naive[4]), naive_back):
            assert np.array_equal(a, b)
    assert_close(naive[0], ref.batchnorm_forward_train(x, gamma, beta, 1e-3)[0])
    for a, b in zip(naive_back, ref.batchnorm_backward(dy, naive[1], gamma, naive[4])):
        assert_close(a, b, kind="grad")
    if B == 1:  # one sample: zero variance, the output is beta
        np.testing.assert_array_equal(naive[0][0], beta)


# ---- trajectories against Keras ----


def keras_model(case):
    """The fastmlp twins of make_keras_batchnorm_goldens.py's trajectory cases."""
    if case == "sgd":
        layers = [Input((6,)), Dense(16), BatchNormalization(), Activation("relu"), Dense(8, activation="relu"),
                  BatchNormalization(momentum=0.9), Dense(3, activation="softmax")]
        return layers, SGD(0.05, momentum=0.9), "categorical_crossentropy", ["accuracy"]
    if case == "adam":
        layers = [Input((5,)), BatchNormalization(), Dense(12, activation="tanh"),
                  BatchNormalization(momentum=0.9, epsilon=0.01, gamma_regularizer=regularizers.L2(0.01),
                                     beta_regularizer=regularizers.L1(0.001)),
                  Activation("relu"), Dense(3, use_bias=False), BatchNormalization(scale=False), Activation("softmax")]
        return layers, Adam(0.01), "categorical_crossentropy", ["accuracy"]
    layers = [Input((4,)), Dense(8, activation="relu"), BatchNormalization(center=False), Dense(1)]
    return layers, RMSprop(0.005), "mse", []


def assert_scaled_close(actual, expected, rel=2e-5, err_msg=""):
    """|a - e| <= rel * max|e|: relative to each array's scale (test_keras_parity.py's rule)."""
    conftest.assert_scaled_close(actual, expected, rel, err_msg, floor=1e-12)


@pytest.mark.parametrize("backend", ["cpu", "numpy"])
@pytest.mark.parametrize("case", ["sgd", "adam", "rmsprop_mse"])
def test_trajectories_match_keras(goldens, case, backend):
    g = {k.split("/", 1)[1]: v for k, v in goldens.items() if k.startswith(f"{case}/")}
    layers, optimizer, loss, metrics = keras_model(case)
    model = Sequential(layers)
    model.compile(optimizer=optimizer, loss=loss, metrics=metrics, backend=backend)
    n_weights = len([k for k in g if re.fullmatch(r"w\d+", k)])
    assert [w.shape for w in model.get_weights()] == [g[f"w{i}"].shape for i in range(n_weights)]
    model.set_weights([g[f"w{i}"] for i in range(n_weights)])
    history = model.fit(g["x"], g["y"], batch_size=int(g["batch_size"]), epochs=5, shuffle=False, verbose=0,
                        validation_data=(g["x_val"], g["y_val"]))
    assert_scaled_close(history.history["loss"], g["losses"], err_msg="loss")
    assert_scaled_close(history.history["val_loss"], g["val_losses"], err_msg="val_loss (moving statistics)")
    if metrics:
        np.testing.assert_allclose(history.history["accuracy"], g["metric"], atol=1e-6)
    for i, w in enumerate(model.get_weights()):  # the moving statistics included
        assert_scaled_close(w, g[f"final_w{i}"], err_msg=f"weight {i}")
    assert_scaled_close(model.predict(g["x_val"]), g["pred"], err_msg="predict")


# ---- native against the reference, finite differences ----

BN = {"momentum": 0.9, "epsilon": 1e-3}


def specs(widths, out_act="softmax"):
    """A net with a batch normalization in every place: on the input (after dropout), after an
    activation, followed by tanh, gelu and the output activation, with center/scale off and penalties."""
    a, b, c = widths
    return [(a, b, "relu", True, 0, 0, 0, 0, 0.2, 3, dict(BN, gamma_l2=0.01), dict(BN, activation="tanh")),
            (b, c, "linear", False, 0, 0, 0, 0, 0.0, 0, None, dict(BN, activation="gelu", beta_l1=0.01)),
            (c, 3, "linear", True, 0, 0, 0, 0, 0.1, 4, dict(BN, center=False), dict(BN, activation=out_act,
                                                                                       scale=False))]


@pytest.mark.parametrize("widths", [(5, 6, 4), (20, 40, 33)], ids=["narrow", "wide"])
@pytest.mark.parametrize("loss, out_act", [("categorical_crossentropy", "softmax"), ("mean_squared_error", "silu")])
def test_gradients_match_the_reference_and_finite_differences(widths, loss, out_act):
    layer_specs = specs(widths, out_act)
    rng = np.random.default_rng(5)
    x = rng.standard_normal((23, widths[0])) * 2 + 1
    y = np.eye(3)[rng.integers(0, 3, 23)]
    native = _core.Engine64(layer_specs, loss, [], {})
    reference = ReferenceEngine(layer_specs, loss, [], {}, dtype=np.float64)
    assert len(native.params) == len(reference.params) and len(native.moving_copy()) == len(reference.moving)
    params = rng.standard_normal(len(native.params)) * 0.4
    for engine in (native, reference):
        engine.params[:] = params
        engine.iterations = 2
    moving = native.moving_copy()
    total = native.compute_gradients(x, y)
    assert_close(total, reference.compute_gradients(x, y), rtol=1e-12)
    assert_close(native.grads, reference.grads, kind="grad")
    np.testing.assert_array_equal(native.moving_copy(), moving)  # compute_gradients does not train them
    grads = native.grads.copy()
    h = 1e-6
    for i in rng.choice(len(params), 40, replace=False):
        native.params[:] = params
        native.params[i] += h
        up = native.compute_gradients(x, y)
        native.params[i] -= 2 * h
        down = native.compute_gradients(x, y)
        assert abs((up - down) / (2 * h) / len(x) - grads[i]) <= 1e-7 + 1e-6 * abs(grads[i]), i


def test_a_bias_before_a_batch_normalization_gets_no_gradient():
    engine = _core.Engine64([(4, 6, "linear", True, 0, 0, 0, 0, 0, 0, None, dict(BN)),
                             (6, 2, "linear", True)], "mean_squared_error", [], {})
    rng = np.random.default_rng(1)
    engine.params[:] = rng.standard_normal(len(engine.params))
    engine.compute_gradients(rng.standard_normal((9, 4)), rng.standard_normal((9, 2)))
    bias = engine.weight_views("grads")[1]
    assert np.abs(bias).max() < 1e-14 and np.abs(engine.weight_views("grads")[0]).max() > 1e-3


def bn_model(backend="cpu", units=40, dtype=None):
    model = Sequential([Input((7,)), Dropout(0.1, seed=3), BatchNormalization(), Dense(units),
                        BatchNormalization(momentum=0.8), Activation("relu"), Dropout(0.2, seed=4),
                        BatchNormalization(center=False), Dense(units, activation="tanh"),
                        BatchNormalization(scale=False, gamma_regularizer=regularizers.L2(0.01)),
                        Dense(3), BatchNormalization(), Activation("softmax")])
    model.compile(optimizer=SGD(0.05, momentum=0.9), loss="categorical_crossentropy", metrics=["accuracy"],
                  backend=backend)
    return model


def bn_data(n=300, k=7, seed=0):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((n, k)) * rng.uniform(0.5, 3, k) + rng.uniform(-2, 2, k)).astype(np.float32)
    return x, np.eye(3, dtype=np.float32)[np.argmax(np.tanh(x) @ rng.standard_normal((k, 3)), axis=1)]


@pytest.mark.parametrize("units", [8, 40], ids=["narrow widths", "wide"])
def test_training_matches_the_reference(units):
    x, y = bn_data()
    runs = []
    for backend in ("cpu", "numpy"):
        fastmlp.utils.set_random_seed(2)
        model = bn_model(backend, units)
        history = model.fit(x, y, epochs=3, batch_size=32, verbose=0, validation_split=0.2)
        runs.append((history.history, model.get_weights(), model.predict(x[:50])))
    for key in runs[0][0]:
        assert_close(runs[0][0][key], runs[1][0][key], rtol=1e-5, atol=1e-6)  # float32, differently ordered sums
    for a, b in zip(runs[0][1], runs[1][1]):
        assert_close(a, b, rtol=1e-4, atol=1e-5)
    assert_close(runs[0][2], runs[1][2], rtol=1e-4, atol=1e-5)


def test_results_are_bitwise_equal_on_1_2_and_3_threads():
    """Wide enough (512 features, batch 512) for the batch sums to be split into column strips."""
    x, y = bn_data(1536, 64, seed=1)
    results = []
    for threads in (1, 2, 3):
        _core.set_num_threads(threads)
        fastmlp.utils.set_random_seed(6)
        model = Sequential([Input((64,)), BatchNormalization(), Dense(512), BatchNormalization(), Activation("relu"),
                            Dense(512, activation="relu"), BatchNormalization(), Dense(3, activation="softmax")])
        model.compile(optimizer=Adam(0.001), loss="categorical_crossentropy")
        history = model.fit(x, y, epochs=2, batch_size=512, verbose=0)
        results.append((history.history["loss"], model.get_weights(), model.predict(x[:100])))
    for other in results[1:]:
        assert other[0] == results[0][0]
        for a, b in zip(other[1], results[0][1]):
            np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(other[2], results[0][2])


# ---- moving statistics: trained in fit only ----


def test_moving_statistics_change_in_training_steps_only():
    x, y = bn_data()
    model = bn_model()
    before = model.get_weights()
    model.predict(x)
    model.evaluate(x, y, verbose=0)
    for a, b in zip(model.get_weights(), before):
        np.testing.assert_array_equal(a, b)
    model.fit(x, y, epochs=1, batch_size=300, shuffle=False, verbose=0)  # one step
    bn, dropout = model.layers[1], model.layers[0]
    x64 = x.astype(np.float64) * ref.dropout_mask(300, 7, 0.1, dropout.seed, 0) / 0.9
    np.testing.assert_allclose(bn.moving_mean, 0.01 * x64.mean(axis=0), rtol=1e-5)
    np.testing.assert_allclose(bn.moving_variance, 0.99 + 0.01 * x64.var(axis=0), rtol=1e-5)
    # Inference normalizes with the moving statistics: the first layer's output is computable by hand.
    probe = Sequential([Input((7,)), BatchNormalization(epsilon=0.5), Dense(7, use_bias=False)])
    probe.set_weights([np.full(7, 2.0), np.full(7, 0.5), np.arange(7.0), np.full(7, 1.5), np.eye(7)])
    np.testing.assert_allclose(probe.predict(x), 2 * (x - np.arange(7)) / np.sqrt(2.0) + 0.5, rtol=1e-6, atol=1e-6)


def test_a_non_finite_step_leaves_the_moving_statistics():
    x, y = bn_data()
    model = Sequential([Input((7,)), Dense(5), BatchNormalization(), Dense(3, activation="softmax")])
    model.compile(optimizer=SGD(1e30), loss="categorical_crossentropy")
    model.fit(x, y, epochs=1, batch_size=300, verbose=0)  # one step: the weights become huge
    moving = [np.array(w) for w in model.non_trainable_weights]
    with pytest.raises(FloatingPointError, match="NaN or infinite"):
        model.fit(x, y, epochs=1, batch_size=300, verbose=0, on_nonfinite="raise")
    for a, b in zip(model.non_trainable_weights, moving):
        np.testing.assert_array_equal(a, b)


# ---- weights, summary, config, saving ----


def test_weights_are_in_keras_order_and_counted_like_keras():
    model = Sequential([Input((3,)), Dense(4, name="dense"), BatchNormalization(name="batch_normalization"),
                        Activation("relu", name="activation"), Dense(2, name="dense_1")], name="sequential")
    assert [w.shape for w in model.get_weights()] == [(3, 4), (4,), (4,), (4,), (4,), (4,), (4, 2), (2,)]
    bn = model.layers[1]
    np.testing.assert_array_equal(bn.gamma, np.ones(4))
    np.testing.assert_array_equal(bn.moving_variance, np.ones(4))
    assert len(model.trainable_weights) == 6 and len(model.non_trainable_weights) == 2
    assert model.count_params() == 42 and bn.count_params() == 16
    assert [w.shape for w in Sequential([Input((3,)), BatchNormalization(center=False, scale=False)]).weights] == [
        (3,), (3,)]


KERAS_SUMMARY = """\
Model: "sequential"
┏━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━┳━━━━━━━━━━━━━━━━━━━━━━━━━━━━━┳━━━━━━━━━━━━━━━━━┓
┃ Layer (type)                         ┃ Output Shape                ┃         Param # ┃
┡━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━╇━━━━━━━━━━━━━━━━━━━━━━━━━━━━━╇━━━━━━━━━━━━━━━━━┩
│ dense (Dense)                        │ (None, 4)                   │              16 │
├──────────────────────────────────────┼─────────────────────────────┼─────────────────┤
│ batch_normalization                  │ (None, 4)                   │              16 │
│ (BatchNormalization)                 │                             │                 │
├──────────────────────────────────────┼─────────────────────────────┼─────────────────┤
│ activation (Activation)              │ (None, 4)                   │               0 │
├──────────────────────────────────────┼─────────────────────────────┼─────────────────┤
│ dense_1 (Dense)                      │ (None, 2)                   │              10 │
└──────────────────────────────────────┴─────────────────────────────┴─────────────────┘
 Total params: 42 (168.00 B)
 Trainable params: 34 (136.00 B)
 Non-trainable params: 8 (32.00 B)
"""


def test_summary_matches_keras_3(monkeypatch):
    """KERAS_SUMMARY is Keras 3.15.1's summary() of the same model, printed with COLUMNS=200."""
    monkeypatch.setenv("COLUMNS", "200")
    model = Sequential([Input((3,)), Dense(4, name="dense"), BatchNormalization(name="batch_normalization"),
                        Activation("relu", name="activation"), Dense(2, name="dense_1")], name="sequential")
    lines = []
    model.summary(print_fn=lines.append)
    assert "\n".join(lines) + "\n" == KERAS_SUMMARY


def test_config_round_trips_with_keras_keys():
    layer = BatchNormalization(momentum=0.9, epsilon=0.01, center=False, gamma_initializer="zeros",
                               gamma_regularizer=regularizers.L2(0.1), name="bn")
    config = layer.get_config()
    assert list(config)[:9] == ["name", "trainable", "dtype", "axis", "momentum", "epsilon", "center", "scale",
                                "beta_initializer"]
    assert config["gamma_initializer"]["class_name"] == "Zeros" and config["renorm"] is False
    again = BatchNormalization.from_config(config)
    assert again.get_config() == dict(config, dtype=again.get_config()["dtype"])
    assert again.gamma_regularizer.l2 == pytest.approx(0.1)
    with pytest.raises(ValueError, match="renorm"):
        BatchNormalization.from_config(dict(config, renorm=True))


def test_save_and_load_continue_training_bit_for_bit(tmp_path):
    x, y = bn_data()
    fastmlp.utils.set_random_seed(3)
    model = bn_model()
    model.fit(x, y, epochs=2, batch_size=32, verbose=0)
    model.save(tmp_path / "m.keras")
    model.save_weights(tmp_path / "m.weights.h5")
    loaded = load_model(tmp_path / "m.keras")
    for a, b in zip(loaded.get_weights(), model.get_weights()):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(loaded.predict(x), model.predict(x))
    model.fit(x, y, epochs=3, initial_epoch=2, batch_size=32, verbose=0)
    loaded.fit(x, y, epochs=3, initial_epoch=2, batch_size=32, verbose=0)
    for a, b in zip(loaded.get_weights(), model.get_weights()):
        np.testing.assert_array_equal(a, b)
    with zipfile.ZipFile(tmp_path / "m.keras") as zf, h5py.File(tmp_path / "m.weights.h5") as f:
        layers = json.loads(zf.read("config.json"))["config"]["layers"]
        assert [e["class_name"] for e in layers].count("BatchNormalization") == 5
        assert layers[2]["build_config"] == {"input_shape": [None, 7]}
        assert [f[f"layers/batch_normalization_{i}/vars"].attrs["name"] for i in (1, 2)] == [model.layers[3].name,
                                                                                         model.layers[6].name]
        bn = f["layers/batch_normalization_3/vars"]  # scale=False: beta, moving mean and variance
        assert sorted(bn) == ["0", "1", "2"] and bn["2"].shape == (40,)
        assert len(f["optimizer/vars"]) == 2 + len(model.trainable_weights)  # momentum slots: not moving stats
    other = bn_model()
    other.load_weights(tmp_path / "m.weights.h5")
    assert other.optimizer.iterations == 2 * 10


def test_set_weights_checks_every_array():
    model = Sequential([Input((3,)), Dense(4), BatchNormalization(), Dense(2)])
    weights = model.get_weights()
    with pytest.raises(ValueError, match="gamma, beta, moving mean and variance per BatchNormalization"):
        model.set_weights(weights[:-1])
    bad = list(weights)
    bad[4] = np.ones(5)
    with pytest.raises(ValueError, match=r"moving_mean has shape \(4,\); received an array of shape \(5,\)"):
        model.set_weights(bad)
    model.compile(optimizer="sgd", loss="mse")
    weights[5] = np.full(4, 3.0)
    model.set_weights(weights)
    np.testing.assert_array_equal(model.layers[1].moving_variance, np.full(4, 3.0))
    np.testing.assert_array_equal(model.get_weights()[5], np.full(4, 3.0))


# ---- placement ----


def test_first_layer_with_input_shape():
    model = Sequential([BatchNormalization(input_shape=(3,)), Dense(2)])
    assert model.built and [w.shape for w in model.weights][:4] == [(3,)] * 4
    model.compile(optimizer="sgd", loss="mse")
    model.fit(np.random.default_rng(0).standard_normal((20, 3)), np.zeros((20, 2)), verbose=0)
    with pytest.raises(ValueError, match=r"declares input_shape=\(4,\) but its input has 3 features"):
        Sequential([Input((3,)), BatchNormalization(input_shape=(4,))])


@pytest.mark.parametrize("layers, match", [
    (lambda: [Input((3,)), Dense(4), BatchNormalization(), BatchNormalization()], "one in a row"),
    (lambda: [Input((3,)), BatchNormalization(), BatchNormalization()], "one in a row"),
    (lambda: [Input((3,)), BatchNormalization(), Dropout(0.5)], "applies a Dropout before such a normalization"),
    (lambda: [Input((3,)), BatchNormalization(), Activation("relu")], "Activation must follow a Dense layer"),
    (lambda: [Input((3,)), Dense(4), BatchNormalization(), Activation("relu"), Activation("tanh")],
     r"follows Activation\('relu'\) after BatchNormalization"),
    (lambda: [Input((3,)), Dense(4), Dropout(0.5), BatchNormalization(), Activation("relu")],
     "Activation must follow a Dense layer"),
    (lambda: [Input((2, 3)), BatchNormalization()], "add Flatten"),
    (lambda: [BatchNormalization(input_shape=(6,)), Flatten()], "Flatten must come first"),
])
def test_unsupported_placements_are_refused_clearly(layers, match):
    with pytest.raises(ValueError, match=match):
        Sequential(layers())


def test_a_layer_cannot_be_in_two_models():
    bn = BatchNormalization()
    first = Sequential([Input((3,)), Dense(4), bn])
    with pytest.raises(ValueError, match=f"already belongs to model {first.name!r}"):
        Sequential([Input((3,)), Dense(4), bn])


# ---- arguments ----


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(axis=2), ValueError, r"axis is -1 \(or 1\). Received: axis=2"),
    (dict(axis=[1]), ValueError, r"Received: axis=\[1\]"),
    (dict(momentum=1.5), ValueError, r"expected a number in \[0, 1\]. Received: momentum=1.5"),
    (dict(momentum="0.9"), ValueError, "Received: momentum='0.9'"),
    (dict(epsilon=0), ValueError, r"expected a number > 0. Received: epsilon=0"),
    (dict(epsilon=float("nan")), ValueError, "Received: epsilon=nan"),
    (dict(center=1), TypeError, "Expected `center` to be True or False. Received: center=1"),
    (dict(renorm=True), ValueError, "`renorm` is not supported"),
    (dict(synchronized=True), ValueError, "`synchronized` is not supported"),
    (dict(gamma_constraint="non_neg"), ValueError, "`gamma_constraint` is not supported"),
    (dict(gamma_initializer="nope"), ValueError, "Unknown initializer 'nope'"),
    (dict(input_shape=(2, 3)), ValueError, r"expected `input_shape` to be a 1-tuple"),
    (dict(units=3), TypeError, "unexpected keyword arguments: units"),
])
def test_bad_arguments_say_what_was_expected_and_received(kwargs, error, match):
    with pytest.raises(error, match=match):
        BatchNormalization(**kwargs)


# ---- backends that refuse it ----


def test_cuda_backend_refuses_batch_normalization():
    model = Sequential([Input((3,)), Dense(4), BatchNormalization(name="bn"), Dense(2)])
    with pytest.raises(ValueError, match=r"BatchNormalization \('bn'\) is not supported on backend='cuda'"):
        model.compile(optimizer="sgd", loss="mse", backend="cuda")


def test_distributed_fit_refuses_batch_normalization():
    model = Sequential([Input((3,)), Dense(4), BatchNormalization(name="bn"), Dense(2)])
    model.compile(optimizer="sgd", loss="mse")
    with pytest.raises(ValueError, match=r"BatchNormalization \('bn'\) is not supported with distributed="):
        model.fit(np.zeros((8, 3)), np.zeros((8, 2)), distributed=True, verbose=0)
    for engine in (model._engine, ReferenceEngine(model._specs(), "mean_squared_error", [], {})):
        engine.begin_epoch(8, 4, False, 0, 0)
        with pytest.raises(ValueError, match="statistics of the whole batch"):
            engine.shard_gradients(np.zeros((8, 3), np.float32), np.zeros((8, 2), np.float32), 0, 0, 2, True)
