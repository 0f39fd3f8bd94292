"""Every activation: Keras 3's values, the native kernels against the reference and float64 finite
differences, and the native engine (both paths) with it in a hidden layer and as the output. Gelu
and silu (swish), whose derivatives need the pre-activation, are checked through the kernel that
takes it (activation_z) and through the engine, which keeps their pre-activation."""

import math

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
    "gelu": lambda z: 0.5 * z * (1 + np.vectorize(math.erf)(z / np.sqrt(2))),
    "silu": lambda z: z / (1 + np.exp(-z)),
}
Z = np.array([[-4.0, -2.9, -1.0, -0.3, 0.2, 0.7, 1.5, 3.2]])
# Keras 3.15.1 (torch backend, float64) at Z: keras.activations.gelu (approximate=False) and silu, and
# their derivatives by torch autograd.
KERAS_GOLDEN = {
    "gelu": ([-0.00012668496733247991, -0.00541085857111373, -0.15865525393145702, -0.1146265733433142,
              0.11585194188782061, 0.5306254434438489, 1.399789198096713, 3.1978011585986694],
             [-0.0005036496612264215, -0.015396530716965931, -0.08331547058768635, 0.26767223317289013,
              0.6574682482341941, 0.9766141011336599, 1.1274691922299795, 1.0069419443067715]),
    "silu": ([-0.07194483984836623, -0.15124533292741144, -0.2689414213699951, -0.1276672449565023,
              0.1099667994624956, 0.46773144051771626, 1.2263617142904655, 3.0746696870503545],
             [-0.05266461489107291, -0.09120378683784765, 0.07232948812851325, 0.3522199896811173,
              0.59933731185485, 0.8233867834733425, 1.041294154299143, 1.0812559378578641]),
}
PREACTIVATION = ("gelu", "silu")  # derivative not expressible from the output


@pytest.mark.parametrize("act", KERAS)
def test_values_are_keras_definitions(act):
    assert fastmlp.activations.get(act) == act
    expected = KERAS[act](Z)
    assert_close(getattr(fastmlp.activations, act)(Z), expected, rtol=1e-12, atol=1e-14)
    out = _core.kernels.dense_forward(Z, np.eye(8), None, act)
    assert_close(out, expected, rtol=1e-12, atol=1e-14)  # float64: libm exp and log, the same definitions
    out32 = _core.kernels.dense_forward(Z.astype(np.float32), np.eye(8, dtype=np.float32), None, act)
    assert_close(out32, expected.astype(np.float32), kind="forward")


@pytest.mark.parametrize("act", KERAS_GOLDEN)
def test_gelu_and_silu_match_keras_3_values_and_derivatives(act):
    values, derivatives = (np.array([v]) for v in KERAS_GOLDEN[act])
    a, dz = _core.kernels.activation_z(Z, np.ones_like(Z), act)
    assert_close(a, values, rtol=1e-12, atol=1e-15)
    assert_close(dz, derivatives, rtol=1e-12, atol=1e-15)
    assert_close(ref.act_forward(Z, act), values, rtol=1e-12, atol=1e-15)
    assert_close(ref.act_backward_z(Z, np.ones_like(Z), act), derivatives, rtol=1e-12, atol=1e-15)
    a32, dz32 = _core.kernels.activation_z(Z.astype(np.float32), np.ones((1, 8), np.float32), act)
    assert a32.dtype == np.float32
    assert_close(a32, values.astype(np.float32), kind="forward")
    assert_close(dz32, derivatives.astype(np.float32), kind="grad")


@pytest.mark.parametrize("act", [a for a in KERAS if a != "linear"])
def test_derivative_from_the_preactivation_matches_finite_differences(act):
    z = np.linspace(-4, 4, 81) + 0.013  # off every kink (0, and +-3 for hard_sigmoid)
    d = np.random.default_rng(0).standard_normal(z.shape)
    a, dz = _core.kernels.activation_z(z, d, act)
    assert_close(a, KERAS[act](z), rtol=1e-12, atol=1e-14)
    h = 1e-6
    fd = d * (KERAS[act](z + h) - KERAS[act](z - h)) / (2 * h)
    assert_close(dz, fd, rtol=1e-6, atol=1e-8)  # central differences: O(h^2) truncation, rounding/h
    assert_close(ref.act_backward_z(z, d, act), dz, kind="grad")


@pytest.mark.parametrize("act", [a for a in KERAS if a not in PREACTIVATION])
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


@pytest.mark.parametrize("widths", [(3, 6, 4), (20, 24, 17)], ids=["narrow", "rowmajor"])
@pytest.mark.parametrize("act", PREACTIVATION)
def test_engine_gradients_with_gelu_or_silu_output_match_finite_differences(widths, act):
    rng = np.random.default_rng(2)
    specs = [(widths[0], widths[1], "tanh", True), (widths[1], widths[2], act, True), (widths[2], 3, act, True)]
    size = sum(i * o + o for i, o, _a, _b in specs)
    params = rng.standard_normal(size) * 0.5
    x = rng.standard_normal((19, widths[0]))
    y = rng.standard_normal((19, 3))
    native = _core.Engine64(specs, "mean_squared_error", [], {})
    reference = ReferenceEngine(specs, "mean_squared_error", [], {}, dtype=np.float64)
    native.params[:] = params
    reference.params[:] = params
    loss = native.compute_gradients(x, y)
    assert_close(loss, reference.compute_gradients(x, y), rtol=1e-12)
    assert_close(native.grads, reference.grads, kind="grad")
    grads = native.grads.copy()
    h = 1e-6
    for i in rng.choice(size, 12, replace=False):
        native.params[:] = params
        native.params[i] += h
        up = native.compute_gradients(x, y)
        native.params[i] -= 2 * h
        down = native.compute_gradients(x, y)
        fd = (up - down) / (2 * h) / len(x)  # the loss sum over the batch, the gradient of its mean
        assert abs(fd - grads[i]) <= 1e-7 + 1e-6 * abs(grads[i]), (i, fd, grads[i])


def test_swish_is_silu_and_the_output_only_backward_refuses_them():
    assert fastmlp.activations.get("swish") == "silu"
    assert fastmlp.activations.swish is fastmlp.activations.silu
    assert fastmlp.layers.Dense(2, activation="swish").get_config()["activation"] == "silu"  # as Keras 3
    x, w = np.ones((2, 3)), np.ones((3, 2))
    for act in PREACTIVATION:
        a = _core.kernels.dense_forward(x, w, None, act)
        assert_close(a, KERAS[act](x @ w))  # forward: fused into the product's epilogue
        with pytest.raises(ValueError, match="pre-activation"):
            _core.kernels.dense_backward(x, w, a, np.ones_like(a), act)
        with pytest.raises(ValueError, match="pre-activation"):
            ref.act_backward(a, np.ones_like(a), act)


def test_float32_tanh_is_within_two_ulp_and_odd():
    # The native float32 tanh (mathfun.hpp tanh_fast): a polynomial below |z| = 0.625, exp above.
    # Every float in [-0.7, 0.7] around the switch and a dense sweep of [-20, 20], against float64.
    z = np.concatenate([np.linspace(-20, 20, 400_001), np.arange(0.6, 0.65, 1e-7), [0.625, -0.625, 1e-30, 50, -50]])
    z = z.astype(np.float32)
    a, _ = _core.kernels.activation_z(z, np.ones_like(z), "tanh")
    exact = np.tanh(z.astype(np.float64))
    ulp = np.spacing(np.abs(exact).astype(np.float32)).astype(np.float64)
    assert np.max(np.abs(a - exact) / ulp) <= 2.0
    neg, _ = _core.kernels.activation_z(-z, np.ones_like(z), "tanh")
    np.testing.assert_array_equal(neg, -a)
    edge, _ = _core.kernels.activation_z(np.array([-0.0, np.nan, np.inf, -np.inf], np.float32), np.ones(4, np.float32),
                                        "tanh")
    assert np.signbit(edge[0]) and edge[0] == 0 and np.isnan(edge[1])
    np.testing.assert_array_equal(edge[2:], [1, -1])
