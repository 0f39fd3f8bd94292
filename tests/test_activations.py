"""Every activation: Keras 3's values, the native kernels against the reference and float64 finite
differences, and the native engine (both paths) with it in a hidden layer."""

import numpy as np
import pytest

import fastmlp
from conftest import assert_close
from fastmlp import _core
from fastmlp.reference import ReferenceEngine
from fastmlp.reference import kernels as ref

SCALE, ALPHA = 1.0507009873554804934193349852946, 1.6732632423543772848170429916717
KERAS = {
    "linear": lambda z: z,
    "relu": lambda z: np.maximum(z, 0),
    "sigmoid": lambda z: 1 / (1 + np.exp(-z)),
    "tanh": np.tanh,
    "leaky_relu": lambda z: np.where(z > 0, z, 0.2 * z),
    "elu": lambda z: np.where(z > 0, z, np.exp(z) - 1),
    "selu": lambda z: np.where(z > 0, SCALE * z, SCALE * ALPHA * (np.exp(z) - 1)),
    "hard_sigmoid": lambda z: np.clip(z + 3, 0, 6) / 6,
    "softplus": lambda z: np.log(1 + np.exp(z)),
    "softsign": lambda z: z / (1 + np.abs(z)),
    "exponential": np.exp,
}
Z = np.array([[-4.0, -2.9, -1.0, -0.3, 0.2, 0.7, 1.5, 3.2]])


@pytest.mark.parametrize("act", KERAS)
def test_values_are_keras_definitions(act):
    assert fastmlp.activations.get(act) == act
    expected = KERAS[act](Z)
    assert_close(getattr(fastmlp.activations, act)(Z), expected, rtol=1e-12, atol=1e-14)
    out = _core.kernels.dense_forward(Z, np.eye(8), None, act)
    assert_close(out, expected, rtol=1e-12, atol=1e-14)  # float64: libm exp and log, the same definitions
    out32 = _core.kernels.dense_forward(Z.astype(np.float32), np.eye(8, dtype=np.float32), None, act)
    assert_close(out32, expected.astype(np.float32), kind="forward")


@pytest.mark.parametrize("act", KERAS)
def test_kernel_gradients_match_reference_and_finite_differences(act):
    for seed in range(100):  # draw until every pre-activation is off the kinks (0; hard_sigmoid: -3, 3)
        rng = np.random.default_rng(seed)
        x = rng.standard_normal((9, 5))
        w = rng.standard_normal((5, 6)) / 2
        b = rng.standard_normal(6) / 2
        if all(np.abs(x @ w + b + shift).min() > 0.02 for shift in (0, 3, -3)):
            break
    a = _core.kernels.dense_forward(x, w, b, act)
    assert np.array_equal(a, _core.kernels.dense_forward(x, w, b, act, naive=True))
    dy = rng.standard_normal(a.shape)
    dx, dw, db, _ = _core.kernels.dense_backward(x, w, a, dy, act)
    rdx, rdw, rdb, _ = ref.dense_backward(x, w, ref.dense_forward(x, w, b, act), dy, act)
    for got, want in ((dx, rdx), (dw, rdw), (db, rdb)):
        assert_close(got, want, kind="grad")
    h = 1e-6
    for i, j in [(0, 0), (2, 3), (4, 5)]:
        wp, wm = w.copy(), w.copy()
        wp[i, j] += h
        wm[i, j] -= h
        fd = ((dy * _core.kernels.dense_forward(x, wp, b, act)).sum()
              - (dy * _core.kernels.dense_forward(x, wm, b, act)).sum()) / (2 * h)
        assert abs(fd - dw[i, j]) <= 1e-6 + 1e-6 * abs(dw[i, j])


@pytest.mark.parametrize("widths", [(3, 6, 4), (20, 24, 17)], ids=["narrow", "rowmajor"])
@pytest.mark.parametrize("act", [a for a in KERAS if a not in ("linear", "relu", "sigmoid", "tanh")])
def test_engine_gradients_with_the_activation_in_a_hidden_layer(widths, act):
    rng = np.random.default_rng(1)
    specs = [(widths[0], widths[1], act, True), (widths[1], widths[2], act, True), (widths[2], 3, "softmax", True)]
    size = sum(i * o + o for i, o, _a, _b in specs)
    params = rng.standard_normal(size) * 0.3
    x = rng.standard_normal((21, widths[0]))
    y = np.eye(3)[rng.integers(0, 3, 21)]
    native = _core.Engine64(specs, "categorical_crossentropy", [], {})
    reference = ReferenceEngine(specs, "categorical_crossentropy", [], {}, dtype=np.float64)
    native.params[:] = params
    reference.params[:] = params
    assert_close(native.compute_gradients(x, y), reference.compute_gradients(x, y), rtol=1e-12)
    assert_close(native.grads, reference.grads, kind="grad")


def test_activations_not_supported_yet_say_so():
    for name in ("gelu", "swish", "silu"):
        with pytest.raises(ValueError, match="not supported by fastmlp yet"):
            fastmlp.layers.Dense(2, activation=name)
