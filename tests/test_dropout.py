"""Dropout: counter-based masks (the same bits natively, in the feature-major layout and in the NumPy
reference), inverted scaling in training only, gradients against the reference and finite
differences, reproducibility (seeds, thread counts, save and resume), and the layer's API."""

import json

import fastmlp
import numpy as np
import pytest
from conftest import assert_close
from fastmlp import _core
from fastmlp.layers import Activation, Dense, Dropout, Flatten, Input
from fastmlp.models import Sequential, load_model
from fastmlp.optimizers import SGD, Adam
from fastmlp.reference import ReferenceEngine
from fastmlp.reference import kernels as ref


@pytest.mark.parametrize("rows, cols, rate, seed, iteration", [(1, 1, 0.5, 0, 0), (37, 5, 0.2, 12345, 7),
                                                                (64, 33, 0.9, 2**63 + 5, 2**40), (5, 300, 0.0, 3, 1)])
def test_masks_are_the_same_bits_natively_in_both_layouts_and_in_the_reference(rows, cols, rate, seed, iteration):
    expected = ref.dropout_mask(rows, cols, rate, seed, iteration)
    assert np.array_equal(_core.kernels.dropout_mask(rows, cols, rate, seed, iteration), expected)
    lanes = -(-rows // 16) * 16
    assert np.array_equal(_core.kernels.dropout_mask(rows, cols, rate, seed, iteration, lanes), expected)
    if rate == 0:
        assert expected.all()


def test_masks_keep_the_expected_fraction_and_change_with_seed_and_step():
    a = ref.dropout_mask(200, 500, 0.3, 1, 0)
    assert abs(a.mean() - 0.7) < 0.005  # 100,000 draws: 4 standard deviations is 0.0058
    assert abs(a.mean(axis=0) - 0.7).max() < 0.15 and abs(a.mean(axis=1) - 0.7).max() < 0.1
    for other in (ref.dropout_mask(200, 500, 0.3, 2, 0), ref.dropout_mask(200, 500, 0.3, 1, 1)):
        assert 0.5 < (a == other).mean() < 0.65  # independent masks agree on 0.7^2 + 0.3^2 = 58 %


def test_dropout_forward_and_backward_scale_kept_units():
    x = np.arange(1, 13, dtype=np.float32).reshape(3, 4)
    mask = ref.dropout_mask(3, 4, 0.25, 9, 0)
    out = ref.dropout_forward(x, mask, 0.25)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, np.where(mask, x / np.float32(0.75), 0))
    np.testing.assert_array_equal(ref.dropout_backward(x, mask, 0.25), out)


def _specs(widths, rate_in, rate_hidden, out_act="softmax"):
    return [(widths[0], widths[1], "tanh", True, 0, 0, 0, 0, rate_in, 11),
            (widths[1], widths[2], "gelu", True, 0, 0, 0, 0, rate_hidden, 12),
            (widths[2], 3, out_act, True, 0, 0, 0, 0, rate_hidden, 13)]


@pytest.mark.parametrize("widths", [(3, 6, 5), (20, 24, 17)], ids=["narrow", "rowmajor"])
@pytest.mark.parametrize("loss", ["categorical_crossentropy", "mean_squared_error"])
def test_gradients_with_dropout_match_reference_and_finite_differences(widths, loss):
    specs = _specs(widths, 0.2, 0.4, "softmax" if loss != "mean_squared_error" else "linear")
    rng = np.random.default_rng(3)
    size = sum(s[0] * s[1] + s[1] for s in specs)
    params = rng.standard_normal(size) * 0.25  # no probability near Keras's clip at 1e-7 (losses.hpp)
    x = rng.standard_normal((21, widths[0]))
    y = np.eye(3)[rng.integers(0, 3, 21)]
    native = _core.Engine64(specs, loss, [], {})
    reference = ReferenceEngine(specs, loss, [], {}, dtype=np.float64)
    for engine in (native, reference):
        engine.params[:] = params
        engine.iterations = 5  # the masks of update number 5
    total = native.compute_gradients(x, y)
    assert_close(total, reference.compute_gradients(x, y), rtol=1e-12)
    assert_close(native.grads, reference.grads, kind="grad")
    grads = native.grads.copy()
    h = 1e-6
    for i in rng.choice(size, 12, replace=False):  # the masks stay those of update 5
        native.params[:] = params
        native.params[i] += h
        up = native.compute_gradients(x, y)
        native.params[i] -= 2 * h
        down = native.compute_gradients(x, y)
        assert abs((up - down) / (2 * h) / len(x) - grads[i]) <= 1e-7 + 1e-6 * abs(grads[i])
    # Another update number draws other masks, hence another gradient.
    native.params[:] = params
    native.iterations = 6
    native.compute_gradients(x, y)
    assert not np.allclose(native.grads, grads)


def test_a_dropped_input_unit_gets_no_kernel_gradient():
    specs = [(6, 4, "linear", True, 0, 0, 0, 0, 0.5, 21)]
    x = np.random.default_rng(0).standard_normal((1, 6))
    engine = _core.Engine64(specs, "mean_squared_error", [], {})
    engine.params[:] = 0.1
    engine.compute_gradients(x, np.ones((1, 4)))
    dropped = ~ref.dropout_mask(1, 6, 0.5, 21, 0)[0]
    assert dropped.any() and (~dropped).any()
    kernel = engine.weight_views("grads")[0]
    assert np.all(kernel[dropped] == 0) and np.all(kernel[~dropped] != 0)


def _model(rate=0.3, seed=None, backend="cpu", wide=False):
    units = 32 if wide else 8
    model = Sequential([Input(shape=(5,)), Dropout(0.1, seed=seed), Dense(units, activation="relu"),
                        Dropout(rate, seed=seed), Dense(units, activation="silu"), Dense(3, activation="softmax")])
    model.compile(optimizer=Adam(0.01), loss="categorical_crossentropy", metrics=["accuracy"], backend=backend)
    return model


def _data(n=120):
    rng = np.random.default_rng(4)
    x = rng.standard_normal((n, 5)).astype(np.float32)
    return x, np.eye(3, dtype=np.float32)[np.argmax(x[:, :3], axis=1)]


@pytest.mark.parametrize("wide", [False, True], ids=["narrow", "rowmajor"])
def test_training_with_dropout_matches_the_reference_and_reproduces(wide):
    x, y = _data()
    runs = []
    for backend in ("cpu", "numpy", "cpu"):
        fastmlp.utils.set_random_seed(8)
        model = _model(backend=backend, wide=wide)
        history = model.fit(x, y, epochs=3, batch_size=16, verbose=0)
        runs.append((history.history, model.get_weights()))
    assert runs[0][0] == runs[2][0]  # same seed, same bits
    for a, b in zip(runs[0][1], runs[2][1]):
        np.testing.assert_array_equal(a, b)
    for key in runs[0][0]:
        assert_close(runs[0][0][key], runs[1][0][key], rtol=1e-5, atol=1e-6)  # float32, differently ordered sums
    for a, b in zip(runs[0][1], runs[1][1]):
        assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_dropout_results_do_not_depend_on_the_thread_count():
    x, y = _data(600)
    results = []
    previous = fastmlp.get_num_threads()
    try:
        for threads in (1, 2):
            fastmlp.set_num_threads(threads)
            fastmlp.utils.set_random_seed(9)
            model = _model(wide=True)
            model.fit(x, y, epochs=2, batch_size=200, verbose=0)
            results.append(model.get_weights())
    finally:
        fastmlp.set_num_threads(previous)
    for a, b in zip(*results):
        np.testing.assert_array_equal(a, b)


def test_predict_and_evaluate_do_not_drop():
    x, y = _data()
    model = _model(rate=0.5)
    model.fit(x, y, epochs=1, batch_size=16, verbose=0)
    plain = Sequential([Input(shape=(5,)), Dense(8, activation="relu"), Dense(8, activation="silu"),
                        Dense(3, activation="softmax")])
    plain.set_weights(model.get_weights())
    np.testing.assert_array_equal(model.predict(x), plain.predict(x))
    plain.compile(optimizer="sgd", loss="categorical_crossentropy", metrics=["accuracy"])
    assert model.evaluate(x, y, verbose=0) == plain.evaluate(x, y, verbose=0)
    # Training does drop: the epoch's loss differs from a dropout-free run from the same weights.
    start = model.get_weights()
    plain = Sequential([Input(shape=(5,)), Dense(8, activation="relu"), Dense(8, activation="silu"),
                        Dense(3, activation="softmax")])
    plain.set_weights(start)
    plain.compile(optimizer=Adam(0.01), loss="categorical_crossentropy")
    dropped = model.fit(x, y, epochs=1, batch_size=16, shuffle=False, verbose=0).history["loss"]
    kept = plain.fit(x, y, epochs=1, batch_size=16, shuffle=False, verbose=0).history["loss"]
    assert dropped != kept


def test_seeds_choose_the_masks():
    x, y = _data()
    finals = {}
    for seed in (1, 1, 2):
        fastmlp.utils.set_random_seed(0)  # the same initial weights and shuffling
        model = _model(seed=seed)
        model.fit(x, y, epochs=1, batch_size=16, verbose=0)
        finals.setdefault(seed, []).append(model.get_weights()[0])
    np.testing.assert_array_equal(finals[1][0], finals[1][1])
    assert not np.array_equal(finals[1][0], finals[2][0])


def test_resume_from_a_saved_model_is_bit_exact(tmp_path):
    x, y = _data()
    fastmlp.utils.set_random_seed(10)
    model = _model()
    model.fit(x, y, epochs=2, batch_size=16, verbose=0)
    path = str(tmp_path / "m.keras")
    model.save(path)
    model.fit(x, y, epochs=4, initial_epoch=2, batch_size=16, verbose=0)
    fastmlp.utils.set_random_seed(99)  # another seed: the reloaded model must not depend on it
    resumed = load_model(path)
    resumed.fit(x, y, epochs=4, initial_epoch=2, batch_size=16, verbose=0)
    for a, b in zip(model.get_weights(), resumed.get_weights()):
        np.testing.assert_array_equal(a, b)
    # load_weights into a trained model with other mask seeds takes the file's.
    fastmlp.utils.set_random_seed(11)
    other = _model()
    other.fit(x, y, epochs=1, batch_size=16, verbose=0)
    other.load_weights(path)
    other.fit(x, y, epochs=4, initial_epoch=2, batch_size=16, verbose=0)
    for a, b in zip(model.get_weights(), other.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_layer_api_config_and_errors():
    layer = Dropout(0.25, seed=3)
    assert layer.get_config() == {"name": layer.name, "trainable": True, "dtype": "float32", "rate": 0.25,
                                  "seed": 3, "noise_shape": None}
    for bad in (1, 1.5, -0.1, "0.5", True):
        with pytest.raises(ValueError, match="rate"):
            Dropout(bad)
    with pytest.raises(ValueError, match="noise_shape"):
        Dropout(0.5, noise_shape=(None, 1))
    with pytest.raises(ValueError, match="seed"):
        Dropout(0.5, seed=-1)
    with pytest.raises(ValueError, match="one Dropout between layers"):
        Sequential([Input(shape=(3,)), Dropout(0.1), Dropout(0.2)])
    with pytest.raises(ValueError, match="Activation"):
        Sequential([Input(shape=(3,)), Dense(4), Dropout(0.1), Activation("relu")])
    trailing = Sequential([Input(shape=(3,)), Dense(2), Dropout(0.1)])
    with pytest.raises(ValueError, match="follows the output layer"):
        trailing.compile(optimizer="sgd", loss="mse")
    image = Sequential([Input(shape=(2, 3)), Flatten(), Dropout(0.5), Dense(2)])
    assert image.predict(np.ones((4, 2, 3))).shape == (4, 2)


def test_keras_config_round_trip():
    # A Sequential config as Keras 3.15 writes it (keras.Sequential.get_config), Dropout entries included.
    policy = {"module": "keras", "class_name": "DTypePolicy", "config": {"name": "float32"}, "registered_name": None}
    config = {"name": "sequential", "trainable": True, "dtype": policy, "layers": [
        {"module": "keras.layers", "class_name": "InputLayer", "config": {
            "batch_shape": [None, 3], "dtype": "float32", "sparse": False, "ragged": False, "name": "input_layer",
            "optional": False}, "registered_name": None},
        {"module": "keras.layers", "class_name": "Dropout", "config": {
            "name": "dropout", "trainable": True, "dtype": policy, "rate": 0.2, "seed": None, "noise_shape": None},
         "registered_name": None},
        {"module": "keras.layers", "class_name": "Dense", "config": {
            "name": "dense", "trainable": True, "dtype": policy, "units": 4, "activation": "gelu", "use_bias": True,
            "kernel_initializer": {"module": "keras.initializers", "class_name": "GlorotUniform",
                                   "config": {"seed": None}, "registered_name": None},
            "bias_initializer": {"module": "keras.initializers", "class_name": "Zeros", "config": {},
                                 "registered_name": None},
            "kernel_regularizer": None, "bias_regularizer": None, "kernel_constraint": None, "bias_constraint": None},
         "registered_name": None, "build_config": {"input_shape": [None, 3]}},
        {"module": "keras.layers", "class_name": "Dropout", "config": {
            "name": "dropout_1", "trainable": True, "dtype": policy, "rate": 0.5, "seed": 3, "noise_shape": None},
         "registered_name": None},
        {"module": "keras.layers", "class_name": "Dense", "config": {
            "name": "dense_1", "trainable": True, "dtype": policy, "units": 1, "activation": "silu", "use_bias": True,
            "kernel_initializer": "glorot_uniform", "bias_initializer": "zeros"},
         "registered_name": None, "build_config": {"input_shape": [None, 4]}}]}
    model = Sequential.from_config(config)
    assert [type(layer).__name__ for layer in model.layers] == ["Dropout", "Dense", "Dropout", "Dense"]
    assert model.layers[0].rate == 0.2 and model.layers[0].seed is None and model.layers[2].seed == 3
    again = model.get_config()
    assert [(entry["class_name"], entry["config"].get("rate"), entry["config"].get("seed")) for entry in again["layers"]
            ] == [("InputLayer", None, None), ("Dropout", 0.2, None), ("Dense", None, None), ("Dropout", 0.5, 3),
                  ("Dense", None, None)]
    assert "build_config" not in again["layers"][1]
    json.dumps(again)
    model.compile(optimizer=SGD(0.1), loss="mse")
    model.fit(np.ones((8, 3)), np.ones((8, 1)), verbose=0)
