"""Losses beyond the seed's: from_logits, label_smoothing, mean absolute error and Huber, against
Keras 3's formulas; the whole-network gradients are in test_engine.py."""

import numpy as np
import pytest

import fastmlp
from fastmlp import losses
from fastmlp.layers import Dense
from fastmlp.models import Sequential
from fastmlp.optimizers import SGD

Z = np.array([[2.0, -1.0, 0.5], [-3.0, 0.25, 4.0]])
Y = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
LABELS = np.array([0, 2])


def _keras_values():
    sig = 1 / (1 + np.exp(-Z))
    logsm = Z - np.log(np.exp(Z).sum(axis=1, keepdims=True))
    e = sig - Y
    return {
        "binary_crossentropy_from_logits": -(Y * np.log(sig) + (1 - Y) * np.log(1 - sig)).mean(axis=1),
        "categorical_crossentropy_from_logits": -(Y * logsm).sum(axis=1),
        "sparse_categorical_crossentropy_from_logits": -logsm[np.arange(2), LABELS],
        "mean_absolute_error": np.abs(e).mean(axis=1),
        "huber": np.where(np.abs(e) <= 0.3, 0.5 * e**2, 0.3 * np.abs(e) - 0.5 * 0.3**2).mean(axis=1),
    }


def _loss_of(name, out, y, **options):
    """The model loss of a linear 3->3 identity network on inputs `out` (so its output is `out`)."""
    model = Sequential([Dense(3, input_dim=3, use_bias=False)])
    model.set_weights([np.eye(3)])
    loss = {"binary_crossentropy_from_logits": losses.BinaryCrossentropy(from_logits=True, **options),
            "categorical_crossentropy_from_logits": losses.CategoricalCrossentropy(from_logits=True, **options),
            "sparse_categorical_crossentropy_from_logits": losses.SparseCategoricalCrossentropy(from_logits=True),
            "mean_absolute_error": "mae", "huber": losses.Huber(delta=0.3),
            "binary_crossentropy": losses.BinaryCrossentropy(**options),
            "categorical_crossentropy": losses.CategoricalCrossentropy(**options)}[name]
    fastmlp.backend.set_floatx("float64")
    try:
        values = {}
        for backend in ("cpu", "numpy"):
            model.compile(loss=loss, optimizer=SGD(0.0), backend=backend)
            values[backend] = model.evaluate(out, y, verbose=0)
    finally:
        fastmlp.backend.set_floatx("float32")
    return values


@pytest.mark.parametrize("name", list(_keras_values()))
def test_loss_values_are_keras_formulas(name):
    sig = 1 / (1 + np.exp(-Z))
    out = Z if "logits" in name else sig
    y = LABELS if name.startswith("sparse") else Y
    for backend, value in _loss_of(name, out, y).items():
        assert value == pytest.approx(_keras_values()[name].mean(), rel=1e-12), backend


@pytest.mark.parametrize("name, k", [("binary_crossentropy", 0.5), ("categorical_crossentropy", 1 / 3),
                                     ("binary_crossentropy_from_logits", 0.5),
                                     ("categorical_crossentropy_from_logits", 1 / 3)])
def test_label_smoothing_is_applied_to_the_loss_targets(name, k):
    p = np.array([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6]])
    out = np.log(p) if "logits" in name else p
    smoothed = Y * 0.8 + 0.2 * k
    expected = {}
    for key in ("plain", "smoothed"):
        yy = Y if key == "plain" else smoothed
        if name.startswith("binary"):
            q = 1 / (1 + np.exp(-out)) if "logits" in name else p
            expected[key] = -(yy * np.log(q) + (1 - yy) * np.log(1 - q)).mean(axis=1).mean()
        else:
            q = np.exp(out) / np.exp(out).sum(1, keepdims=True) if "logits" in name else p / p.sum(1, keepdims=True)
            expected[key] = -(yy * np.log(q)).sum(axis=1).mean()
    for value in _loss_of(name, out, Y, label_smoothing=0.2).values():
        assert value == pytest.approx(expected["smoothed"], rel=1e-12)


def test_label_smoothing_leaves_the_metric_on_the_true_labels():
    x = np.random.default_rng(0).standard_normal((200, 2)).astype(np.float32)
    y = (x[:, :1] > 0).astype(np.float32)
    fastmlp.utils.set_random_seed(0)
    model = Sequential([Dense(8, activation="tanh", input_dim=2), Dense(1, activation="sigmoid")])
    model.compile(loss=losses.BinaryCrossentropy(label_smoothing=0.2), optimizer="adam", metrics=["accuracy"])
    history = model.fit(x, y, epochs=60, batch_size=20, verbose=0)
    assert history.history["accuracy"][-1] > 0.95  # accuracy is measured against the 0/1 labels


def test_from_logits_trains_a_linear_output():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((300, 4)).astype(np.float32)
    y = x[:, :3].argmax(1)
    fastmlp.utils.set_random_seed(1)
    model = Sequential([Dense(16, activation="relu", input_dim=4), Dense(3)])
    model.compile(loss=losses.SparseCategoricalCrossentropy(from_logits=True), optimizer="adam",
                  metrics=["accuracy"])
    history = model.fit(x, y, epochs=40, batch_size=30, verbose=0)
    assert history.history["loss"][-1] < 0.3 * history.history["loss"][0]


@pytest.mark.parametrize(
    "make, error, match",
    [
        (lambda: losses.Huber(delta=0), ValueError, "delta"),
        (lambda: losses.BinaryCrossentropy(label_smoothing=1.5), ValueError, "label_smoothing"),
        (lambda: losses.CategoricalCrossentropy(from_logits="yes"), TypeError, "from_logits"),
        (lambda: losses.SparseCategoricalCrossentropy(label_smoothing=0.1), TypeError, "label_smoothing"),
        (lambda: losses.get("hinge"), ValueError, "mae, huber"),
    ],
    ids=["huber_delta", "smoothing_range", "from_logits_type", "sparse_smoothing", "unknown"],
)
def test_bad_loss_arguments(make, error, match):
    with pytest.raises(error, match=match):
        make()


@pytest.mark.parametrize("backend", ["cpu", "numpy"])
@pytest.mark.parametrize("width", [2, 20], ids=["narrow", "rowmajor"])
def test_mae_and_mse_metrics(backend, width):
    rng = np.random.default_rng(4)
    x = rng.standard_normal((60, 3)).astype(np.float32)
    y = rng.standard_normal((60, width)).astype(np.float32)
    fastmlp.utils.set_random_seed(4)
    model = Sequential([Dense(width, input_dim=3)])
    model.compile(loss="huber", optimizer=SGD(0.0), metrics=["mae", "mean_squared_error"], backend=backend)
    history = model.fit(x, y, epochs=1, batch_size=16, verbose=0)
    p = model.predict(x).astype(np.float64)
    assert history.history["mae"][0] == pytest.approx(np.abs(p - y).mean(), rel=1e-5)
    assert history.history["mean_squared_error"][0] == pytest.approx(((p - y) ** 2).mean(), rel=1e-5)
    with pytest.raises(ValueError, match="sparse integer labels"):
        model.compile(loss="sparse_categorical_crossentropy", metrics=["mae"])
