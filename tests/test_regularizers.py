"""L1/L2 weight penalties: added to the reported loss as Keras does, with gradients checked
against the reference and float64 finite differences on both engine paths."""

import numpy as np
import pytest

import fastmlp
from conftest import assert_close
from fastmlp import _core, regularizers
from fastmlp.layers import Dense
from fastmlp.models import Sequential
from fastmlp.reference import ReferenceEngine


@pytest.mark.parametrize("widths", [(3, 6, 4), (20, 24, 17)], ids=["narrow", "rowmajor"])
def test_penalty_gradients_match_reference_and_finite_differences(widths):
    rng = np.random.default_rng(0)
    specs = [(widths[0], widths[1], "tanh", True, 0.01, 0.02, 0.0, 0.05),
             (widths[1], widths[2], "sigmoid", False, 0.0, 0.03, 0.0, 0.0),
             (widths[2], 3, "softmax", True, 0.02, 0.0, 0.01, 0.01)]
    size = sum(i * o + (o if b else 0) for i, o, _a, b, *_ in specs)
    params = rng.standard_normal(size) * 0.4
    x = rng.standard_normal((17, widths[0]))
    y = np.eye(3)[rng.integers(0, 3, 17)]
    native = _core.Engine64(specs, "categorical_crossentropy", [], {})
    reference = ReferenceEngine(specs, "categorical_crossentropy", [], {}, dtype=np.float64)
    native.params[:] = params
    reference.params[:] = params
    assert_close(native.compute_gradients(x, y), reference.compute_gradients(x, y), rtol=1e-12)
    assert_close(native.grads, reference.grads, kind="grad")
    analytic = native.grads.copy()
    h = 1e-6
    for i in rng.choice(size, 30, replace=False):
        if abs(params[i]) < 1e-3:  # the L1 kink at 0
            continue
        p = params.copy()
        p[i] += h
        native.params[:] = p
        up = native.compute_gradients(x, y) / len(x)
        p[i] -= 2 * h
        native.params[:] = p
        down = native.compute_gradients(x, y) / len(x)
        assert abs((up - down) / (2 * h) - analytic[i]) <= 1e-7 + 1e-6 * abs(analytic[i])


@pytest.mark.parametrize("backend", ["cpu", "numpy"])
def test_the_reported_loss_includes_the_penalty(backend):
    x = np.random.default_rng(1).standard_normal((50, 4)).astype(np.float32)
    y = np.eye(2, dtype=np.float32)[(x[:, 0] > 0).astype(int)]
    fastmlp.utils.set_random_seed(1)
    layers = [Dense(5, activation="relu", input_dim=4, kernel_regularizer=regularizers.L2(0.1)),
              Dense(2, activation="softmax", kernel_regularizer="l1", bias_regularizer=regularizers.L1L2(0.2, 0.3))]
    model = Sequential(layers)
    model.compile(loss="categorical_crossentropy", optimizer="sgd", backend=backend)
    plain = Sequential([Dense(5, activation="relu", input_dim=4), Dense(2, activation="softmax")])
    plain.set_weights(model.get_weights())
    plain.compile(loss="categorical_crossentropy", optimizer="sgd", backend=backend)
    w = model.get_weights()
    penalty = 0.1 * (w[0] ** 2).sum() + 0.01 * np.abs(w[2]).sum() + 0.2 * np.abs(w[3]).sum() + 0.3 * (w[3] ** 2).sum()
    assert penalty == pytest.approx(layers[0].kernel_regularizer(w[0]) + layers[1].kernel_regularizer(w[2])
                                    + layers[1].bias_regularizer(w[3]), rel=1e-6)
    assert model.evaluate(x, y, verbose=0) == pytest.approx(plain.evaluate(x, y, verbose=0) + penalty, rel=1e-5)


def test_l2_shrinks_the_weights():
    x = np.random.default_rng(2).standard_normal((200, 6)).astype(np.float32)
    y = np.eye(3, dtype=np.float32)[x[:, :3].argmax(1)]
    norms = {}
    for reg in (None, regularizers.L2(0.05)):
        fastmlp.utils.set_random_seed(2)
        model = Sequential([Dense(16, activation="tanh", input_dim=6, kernel_regularizer=reg),
                            Dense(3, activation="softmax", kernel_regularizer=reg)])
        model.compile(loss="categorical_crossentropy", optimizer="adam")
        model.fit(x, y, epochs=30, batch_size=20, verbose=0)
        norms[reg is None] = sum(float((w ** 2).sum()) for w in model.get_weights()[::2])
    assert norms[False] < 0.7 * norms[True]


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: regularizers.L2(-0.1), "l2"),
        (lambda: regularizers.L1(float("nan")), "l1"),
        (lambda: regularizers.get("l3"), "Unknown regularizer"),
        (lambda: Dense(2, kernel_regularizer="dropout"), "Unknown regularizer"),
    ],
)
def test_bad_regularizer_arguments(make, match):
    with pytest.raises(ValueError, match=match):
        make()
