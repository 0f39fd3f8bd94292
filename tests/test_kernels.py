"""The native kernels (fastmlp._core.kernels) against their naive twins, the NumPy reference,
float64 central differences and hand-computed Keras values.

Each kernel has a float32 and a float64 overload, picked by the input dtype; every test runs both.
"""

import itertools

import numpy as np
import pytest
from conftest import assert_close

from fastmlp._core import kernels
from fastmlp.reference import kernels as ref

DTYPES = [np.float32, np.float64]
ACTS = ["linear", "relu", "sigmoid", "tanh", "softmax"]
DIMS = [1, 2, 3, 4, 5, 7, 8, 9, 17, 33]
SHAPES_KN = list(itertools.product(DIMS, DIMS))

# Central differences in float64: step 1e-6 gives a truncation error ~1e-12 and a roundoff error
# ~1e-16 * |f| / 1e-6 ~ 1e-9 for |f| ~ 10, so the difference quotient is good to about 1e-8: it
# is compared looser than the float64 'grad' tolerance (1e-10, 1e-12), which it cannot meet.
FD_STEP = 1e-6
FD_RTOL, FD_ATOL = 1e-6, 1e-8


def dtype_id(dtype):
    return np.dtype(dtype).name


def stable_hash(s):
    """A hash of a string that, unlike hash(), is the same in every process."""
    return sum((i + 1) * ord(c) for i, c in enumerate(s))


def rng_for(*key):
    """A generator seeded by the test's parameters, so every case is reproducible on its own."""
    return np.random.default_rng([stable_hash(k) if isinstance(k, str) else int(k) for k in key])


def dense_inputs(rng, B, K, N, dtype):
    """x ~ U(-1, 1); w and b scaled as Glorot would, so z = x @ w + b is O(1) for every K."""
    x = rng.uniform(-1, 1, (B, K)).astype(dtype)
    w = (rng.uniform(-1, 1, (K, N)) * np.sqrt(3.0 / K)).astype(dtype)
    b = rng.uniform(-0.5, 0.5, N).astype(dtype)
    return x, w, b


def central_difference(f, arr):
    """df/darr by central differences, perturbing arr in place (restored afterwards)."""
    grad = np.zeros_like(arr)
    for idx in np.ndindex(arr.shape):
        old = arr[idx]
        arr[idx] = old + FD_STEP
        fp = f()
        arr[idx] = old - FD_STEP
        fm = f()
        arr[idx] = old
        grad[idx] = (fp - fm) / (2 * FD_STEP)
    return grad


# ---------------------------------------------------------------------------------------------
# dense_forward
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("B", DIMS)
@pytest.mark.parametrize("use_bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_dense_forward_optimized_equals_naive_and_reference(dtype, act, use_bias, B):
    rng = rng_for(B, use_bias, act, np.dtype(dtype).itemsize)
    for K, N in SHAPES_KN:
        x, w, b = dense_inputs(rng, B, K, N, dtype)
        bb = b if use_bias else None
        msg = f"B={B} K={K} N={N}"
        fast = kernels.dense_forward(x, w, bb, act, naive=False)
        naive = kernels.dense_forward(x, w, bb, act, naive=True)
        assert fast.dtype == dtype and fast.shape == (B, N), msg
        assert np.array_equal(fast, naive), msg
        expected = ref.dense_forward(x, w, bb, act)
        assert_close(fast, expected, kind="forward", err_msg=msg)


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_dense_forward_defaults_and_inputs_untouched(dtype):
    rng = rng_for(11)
    x, w, b = dense_inputs(rng, 5, 7, 9, dtype)
    copies = [a.copy() for a in (x, w, b)]
    y = kernels.dense_forward(x, w, b, "tanh")  # naive defaults to False
    assert np.array_equal(y, kernels.dense_forward(x, w, b, "tanh", naive=False))
    for a, c in zip((x, w, b), copies):
        assert np.array_equal(a, c)


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_dense_forward_non_contiguous_inputs_are_copied(dtype):
    rng = rng_for(12)
    x, w, b = dense_inputs(rng, 6, 5, 7, dtype)
    xf, wf = np.asfortranarray(x), w.T.copy().T
    assert not xf.flags.c_contiguous and not wf.flags.c_contiguous
    expected = kernels.dense_forward(x, w, b, "relu")
    got = kernels.dense_forward(xf, wf, b, "relu")
    # The overload follows the dtype, not the memory layout.
    assert got.dtype == dtype
    assert np.array_equal(got, expected)
    assert np.array_equal(kernels.dense_forward(x[:, ::1], w, b[::1], "relu"), expected)


@pytest.mark.parametrize("naive", [False, True], ids=["fast", "naive"])
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_dense_forward_empty_edges(dtype, naive):
    w = np.ones((3, 4), dtype)
    b = np.arange(4, dtype=dtype)
    y = kernels.dense_forward(np.zeros((0, 3), dtype), w, b, "relu", naive=naive)
    assert y.shape == (0, 4) and y.dtype == dtype
    # K == 0: the product is empty, the output is the bias.
    y = kernels.dense_forward(np.zeros((2, 0), dtype), np.zeros((0, 4), dtype), b, "linear", naive=naive)
    assert np.array_equal(y, np.tile(b, (2, 1)))


# ---------------------------------------------------------------------------------------------
# dense_backward
# ---------------------------------------------------------------------------------------------

FLAGS = [(True, True), (True, False), (False, True), (False, False)]


@pytest.mark.parametrize("use_bias,need_dx", FLAGS, ids=[f"bias{u:d}-dx{d:d}" for u, d in FLAGS])
@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_dense_backward_optimized_equals_naive_and_reference(dtype, act, use_bias, need_dx):
    rng = rng_for(use_bias, need_dx, act, np.dtype(dtype).itemsize)
    # Every remainder of the row blocks (4) and SIMD tiles (4 or 8 columns) for each of the three
    # products (dW: K x N over B, dX: B x K over N), in a subset small enough to run quickly.
    for B, K, N in itertools.product(DIMS, [1, 2, 3, 5, 8, 9, 33], [1, 3, 4, 7, 9, 17]):
        x, w, b = dense_inputs(rng, B, K, N, dtype)
        a = ref.dense_forward(x, w, b, act).astype(dtype)
        dy = rng.uniform(-1, 1, (B, N)).astype(dtype)
        dy_copy = dy.copy()
        msg = f"B={B} K={K} N={N}"
        fast = kernels.dense_backward(x, w, a, dy, act, use_bias, need_dx, False)
        naive = kernels.dense_backward(x, w, a, dy, act, use_bias, need_dx, True)
        assert np.array_equal(dy, dy_copy), msg  # dy is copied, not overwritten
        expected = ref.dense_backward(x, w, a, dy, act, use_bias, need_dx)
        for name, f, n, e, shape in zip(
            ("dx", "dw", "db", "dz"), fast, naive, expected, ((B, K), (K, N), (N,), (B, N))
        ):
            if e is None:
                assert f is None and n is None, f"{name} {msg}"
                continue
            assert f.dtype == dtype and f.shape == shape, f"{name} {msg}"
            assert np.array_equal(f, n), f"{name} {msg}"
            assert_close(f, e, kind="grad", err_msg=f"{name} {msg}")
    assert (fast[0] is None) == (not need_dx) and (fast[2] is None) == (not use_bias)


@pytest.mark.parametrize("act", ACTS)
def test_dense_gradients_match_central_differences(act):
    rng = rng_for(act, 21)
    B, K, N = 3, 4, 5
    while True:
        x, w, b = dense_inputs(rng, B, K, N, np.float64)
        # Keep every pre-activation far from the ReLU kink relative to the step.
        if np.abs(x @ w + b).min() > 0.05:
            break
    dy = rng.uniform(-1, 1, (B, N))

    def objective():
        return float(np.sum(dy * kernels.dense_forward(x, w, b, act)))

    a = kernels.dense_forward(x, w, b, act)
    for naive in (False, True):
        dx, dw, db, _ = kernels.dense_backward(x, w, a, dy, act, True, True, naive)
        assert_close(dx, central_difference(objective, x), kind="grad", rtol=FD_RTOL, atol=FD_ATOL)
        assert_close(dw, central_difference(objective, w), kind="grad", rtol=FD_RTOL, atol=FD_ATOL)
        assert_close(db, central_difference(objective, b), kind="grad", rtol=FD_RTOL, atol=FD_ATOL)


# ---------------------------------------------------------------------------------------------
# output_loss
# ---------------------------------------------------------------------------------------------

BCE, CCE, SCCE, MSE = (
    "binary_crossentropy",
    "categorical_crossentropy",
    "sparse_categorical_crossentropy",
    "mean_squared_error",
)
LOSS_ACTS = [
    (BCE, "sigmoid"),
    (BCE, "softmax"),
    (CCE, "softmax"),
    (CCE, "sigmoid"),
    (SCCE, "softmax"),
    (SCCE, "sigmoid"),
    (MSE, "linear"),
    (MSE, "sigmoid"),
    (MSE, "softmax"),
    (MSE, "tanh"),
]
FUSED = {(CCE, "softmax"), (SCCE, "softmax"), (BCE, "sigmoid")}


def loss_cases(loss, act):
    """(B, C) shapes for a loss and output activation. A single softmax unit is always 1, and a
    single-column (sparse) categorical cross-entropy always normalizes to 1: both sit in the clip."""
    single_ok = act != "softmax" and loss not in (CCE, SCCE)
    return [(B, C) for B in (1, 3, 8) for C in (1, 2, 3, 5, 9) if C > 1 or single_ok]


def loss_targets(rng, loss, B, C, dtype, soft):
    if loss == SCCE:
        return rng.integers(0, C, (B, 1)).astype(dtype)
    if loss == CCE:
        if soft:  # unnormalized soft targets exercise the sum(y) term of the fused gradient
            return rng.uniform(0, 1, (B, C)).astype(dtype)
        return np.eye(C, dtype=dtype)[rng.integers(0, C, B)]
    if loss == BCE:
        return (rng.uniform(0, 1, (B, C)) if soft else rng.integers(0, 2, (B, C))).astype(dtype)
    return rng.normal(size=(B, C)).astype(dtype)


def logits(rng, B, C, dtype):
    # |z| <= 3 keeps sigmoid in [0.047, 0.953] and a softmax over 9 classes above 2.7e-4: all
    # probabilities (and normalized ones) lie within [1e-4, 1 - 1e-4], away from the 1e-7 clip.
    return rng.uniform(-3, 3, (B, C)).astype(dtype)


def check_unclipped(p, loss):
    assert p.min() >= 1e-4 and p.max() <= 1 - 1e-4
    if loss in (CCE, SCCE):
        q = p / p.sum(axis=-1, keepdims=True)
        assert q.min() >= 1e-4 and q.max() <= 1 - 1e-4


@pytest.mark.parametrize("soft", [False, True], ids=["hard", "soft"])
@pytest.mark.parametrize("loss,act", LOSS_ACTS)
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_output_loss_matches_reference_and_naive(dtype, loss, act, soft):
    rng = rng_for(loss, act, soft, np.dtype(dtype).itemsize)
    for B, C in loss_cases(loss, act):
        msg = f"B={B} C={C}"
        p = ref.act_forward(logits(rng, B, C, dtype), act).astype(dtype)
        y = loss_targets(rng, loss, B, C, dtype, soft)
        total, dz = kernels.output_loss(p, y, loss, act, False)
        total_naive, dz_naive = kernels.output_loss(p, y, loss, act, True)
        assert isinstance(total, float) and dz.dtype == dtype and dz.shape == (B, C), msg
        # Both paths compute the loss value with the same code.
        assert total == total_naive, msg
        # The sum is accumulated in double from per-sample values of the input dtype, so it is as
        # accurate as that dtype: compare it at that dtype's tolerance.
        expected_total = ref.loss_per_sample(p, y, loss).sum()
        assert_close(np.asarray(total, dtype), np.asarray(expected_total, dtype), kind="forward", err_msg=msg)
        _, expected_dz = ref.output_loss(p, y, loss, act)
        assert_close(dz, expected_dz, kind="grad", err_msg=msg)
        if (loss, act) in FUSED:
            # Different formulas (analytic logit gradient vs dL/dp through the activation's
            # backward): equal up to rounding away from the clip.
            check_unclipped(p, loss)
            assert_close(dz, dz_naive, kind="grad", err_msg=msg)
        else:
            assert np.array_equal(dz, dz_naive), msg


@pytest.mark.parametrize("loss,act", LOSS_ACTS)
def test_output_loss_gradient_matches_central_differences_in_logits(loss, act):
    rng = rng_for(loss, act, 31)
    for B, C in loss_cases(loss, act):
        z = logits(rng, B, C, np.float64)
        y = loss_targets(rng, loss, B, C, np.float64, soft=True)
        p = ref.act_forward(z, act)
        if loss != MSE:
            check_unclipped(p, loss)

        def mean_loss():
            return kernels.output_loss(ref.act_forward(z, act), y, loss, act, False)[0] / B

        fd = central_difference(mean_loss, z)
        for naive in (False, True):
            _, dz = kernels.output_loss(p, y, loss, act, naive)
            assert_close(dz, fd, kind="grad", rtol=FD_RTOL, atol=FD_ATOL, err_msg=f"B={B} C={C} naive={naive}")


def keras_bce(p, y, dtype):
    """Keras's binary cross-entropy of one sample, computed in `dtype` as Keras does: clip p to
    [1e-7, 1 - 1e-7], then -mean(y log p + (1 - y) log(1 - p))."""
    p, y = np.asarray(p, dtype), np.asarray(y, dtype)
    eps, one = dtype(1e-7), dtype(1)
    q = np.clip(p, eps, one - eps)
    return float(-(y * np.log(q) + (one - y) * np.log(one - q)).mean())


def keras_cce(p, y, dtype):
    p, y = np.asarray(p, dtype), np.asarray(y, dtype)
    eps, one = dtype(1e-7), dtype(1)
    q = np.clip(p / p.sum(), eps, one - eps)
    return float(-(y * np.log(q)).sum())


GOLDEN_LOSSES = [
    # (loss, act, p, y, expected per-sample losses as a function of the dtype)
    (BCE, "sigmoid", [[0.7, 0.3]], [[1, 0]], lambda t: [-(np.log(0.7) + np.log(0.7)) / 2]),
    (BCE, "softmax", [[0.7, 0.3], [0.2, 0.8]], [[1, 0], [1, 0]], lambda t: [-np.log(0.7), -np.log(0.2)]),
    (CCE, "softmax", [[0.2, 0.3, 0.5]], [[0, 1, 0]], lambda t: [-np.log(0.3)]),
    (CCE, "sigmoid", [[1.0, 1.0, 2.0]], [[0, 0, 1]], lambda t: [-np.log(0.5)]),  # p / sum(p) first
    (SCCE, "softmax", [[0.1, 0.6, 0.3], [0.5, 0.25, 0.25]], [[1], [0]], lambda t: [-np.log(0.6), -np.log(0.5)]),
    (MSE, "linear", [[1.0, 2.0], [0.5, -1.0]], [[0, 0], [0.5, 1.0]], lambda t: [2.5, 2.0]),
    # The clip: log(0) becomes log(1e-7); 1 - (1 - 1e-7) is rounded in the dtype, as in Keras.
    (BCE, "sigmoid", [[0.0]], [[1]], lambda t: [keras_bce([0.0], [1], t)]),
    (BCE, "sigmoid", [[1.0]], [[0]], lambda t: [keras_bce([1.0], [0], t)]),
    (BCE, "sigmoid", [[0.0, 0.5]], [[1, 0]], lambda t: [(-np.log(t(1e-7)) - np.log(0.5)) / 2]),
    (CCE, "softmax", [[0.0, 1.0]], [[1, 0]], lambda t: [keras_cce([0.0, 1.0], [1, 0], t)]),
    (SCCE, "softmax", [[0.0, 1.0]], [[0]], lambda t: [-np.log(t(1e-7))]),
]

GOLDEN_IDS = [f"{case[0]}-{i}" for i, case in enumerate(GOLDEN_LOSSES)]


@pytest.mark.parametrize("naive", [False, True], ids=["fused", "naive"])
@pytest.mark.parametrize("loss,act,p,y,expected", GOLDEN_LOSSES, ids=GOLDEN_IDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_output_loss_golden_values(dtype, loss, act, p, y, expected, naive):
    total, _ = kernels.output_loss(np.array(p, dtype), np.array(y, dtype), loss, act, naive)
    assert_close(np.asarray(total, dtype), np.asarray(sum(expected(dtype)), dtype), kind="forward")


def test_keras_bce_clip_golden_is_the_formula():
    # The helper above against plain numbers: -log(1e-7) = 16.118..., and in float32
    # 1 - 1e-7 rounds to 1 - 2**-23, so 1 - clip(1) = 2**-23.
    assert keras_bce([0.0], [1], np.float64) == pytest.approx(-np.log(1e-7), rel=1e-15)
    assert keras_bce([1.0], [0], np.float64) == pytest.approx(-np.log(1e-7), rel=1e-9)
    assert keras_bce([1.0], [0], np.float32) == pytest.approx(-np.log(2.0**-23), rel=1e-6)


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_output_loss_golden_gradients(dtype):
    def dz_of(p, y, loss, act, naive):
        return kernels.output_loss(np.array(p, dtype), np.array(y, dtype), loss, act, naive)[1]

    # Softmax + (sparse) categorical cross-entropy: (p - y) / B; sigmoid + BCE: (p - y) / C / B.
    p, y = [[0.7, 0.3], [0.2, 0.8]], [[1, 0], [0, 1]]
    want = (np.array(p) - np.array(y)) / 2
    for naive in (False, True):
        assert_close(dz_of(p, y, CCE, "softmax", naive), np.asarray(want, dtype), kind="grad")
        assert_close(dz_of(p, [[0], [1]], SCCE, "softmax", naive), np.asarray(want, dtype), kind="grad")
        assert_close(dz_of(p, y, BCE, "sigmoid", naive), np.asarray(want / 2, dtype), kind="grad")
    # MSE with a linear output: 2 (p - y) / C / B.
    assert_close(dz_of([[1.0, 2.0]], [[0, 0]], MSE, "linear", False), np.asarray([[1.0, 2.0]], dtype), kind="grad")
    # Inside the clip the gradient on probabilities is zero (Keras); the rest is unaffected:
    # BCE at p = (0, 0.5), y = (1, 0): (0, (1 / (1 - 0.5)) / C).
    assert_close(dz_of([[0.0, 0.5]], [[1, 0]], BCE, "linear", False), np.asarray([[0.0, 1.0]], dtype), kind="grad")
    # Saturated and wrong: the naive path's gradient vanishes with the clip, the fused path keeps
    # the analytic p - y (csrc/losses.hpp's documented convention).
    assert np.array_equal(dz_of([[0.0, 1.0]], [[1, 0]], CCE, "softmax", True), np.zeros((1, 2), dtype))
    assert np.array_equal(dz_of([[0.0, 1.0]], [[1, 0]], CCE, "softmax", False), np.array([[-1.0, 1.0]], dtype))


# ---------------------------------------------------------------------------------------------
# accuracy_sum
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("ties", [False, True], ids=["distinct", "ties"])
@pytest.mark.parametrize("metric", ["binary_accuracy", "categorical_accuracy", "sparse_categorical_accuracy"])
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_accuracy_sum_matches_reference(dtype, metric, ties):
    rng = rng_for(metric, ties, np.dtype(dtype).itemsize)
    for B, C in itertools.product((1, 2, 7, 33), (1, 2, 3, 10)):
        # Small integers make ties in argmax (and p == 0.5 exactly, for binary) common.
        p = (rng.integers(0, 3, (B, C)) / 4 if ties else rng.uniform(0, 1, (B, C))).astype(dtype)
        if metric == "sparse_categorical_accuracy":
            y = rng.integers(0, C, (B, 1)).astype(dtype)
        elif metric == "categorical_accuracy":
            y = (rng.integers(0, 2, (B, C)) if ties else np.eye(C)[rng.integers(0, C, B)]).astype(dtype)
        else:
            y = rng.integers(0, 2, (B, C)).astype(dtype)
        got = kernels.accuracy_sum(p, y, metric)
        assert isinstance(got, float)
        expected = ref.accuracy_per_sample(p, y, metric).astype(np.float64).sum()
        assert_close(got, expected, kind="forward", err_msg=f"B={B} C={C}")


ACCURACY_HAND = [
    ("binary_accuracy", [[0.5, 0.51, 0.2]], [[0, 1, 0]], 1.0),  # threshold is p > 0.5
    ("binary_accuracy", [[0.5], [0.9], [0.1]], [[1], [1], [1]], 1.0),
    ("binary_accuracy", [[0.6, 0.6, 0.6, 0.6]], [[1, 0, 0, 1]], 0.5),
    ("categorical_accuracy", [[0.4, 0.4, 0.2]], [[1, 0, 0]], 1.0),  # ties take the first index
    ("categorical_accuracy", [[0.4, 0.4, 0.2]], [[0, 1, 0]], 0.0),
    ("categorical_accuracy", [[0.1, 0.2, 0.7], [0.3, 0.3, 0.3]], [[0.5, 0.5, 0.9], [0.0, 0.5, 0.5]], 1.0),
    ("sparse_categorical_accuracy", [[0.3, 0.3, 0.4], [0.5, 0.5, 0.0]], [[2], [1]], 1.0),
    ("sparse_categorical_accuracy", [[0.5, 0.5, 0.0]], [[0]], 1.0),
]


@pytest.mark.parametrize("metric,p,y,expected", ACCURACY_HAND)
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_accuracy_sum_hand_cases(dtype, metric, p, y, expected):
    assert kernels.accuracy_sum(np.array(p, dtype), np.array(y, dtype), metric) == expected


# ---------------------------------------------------------------------------------------------
# sgd_update and decayed_lr
# ---------------------------------------------------------------------------------------------

SGD_MODES = [(0.0, False), (0.9, False), (0.9, True)]
SGD_IDS = ["plain", "momentum", "nesterov"]


@pytest.mark.parametrize("momentum,nesterov", SGD_MODES, ids=SGD_IDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_sgd_update_one_hand_step(dtype, momentum, nesterov):
    w = np.array([1.0, -2.0], dtype)
    g = np.array([0.5, 0.25], dtype)
    v = np.array([0.1, -0.2], dtype)
    kernels.sgd_update(w, g, v, 0.1, momentum, nesterov)
    if momentum == 0:
        # w -= lr g; v untouched.
        want_w, want_v = [0.95, -2.025], [0.1, -0.2]
    else:
        # v = 0.9 v - 0.1 g = (0.09 - 0.05, -0.18 - 0.025)
        want_v = [0.04, -0.205]
        # plain: w += v;  nesterov: w += 0.9 v - 0.1 g = (0.036 - 0.05, -0.1845 - 0.025)
        want_w = [0.986, -2.2095] if nesterov else [1.04, -2.205]
    assert_close(w, np.array(want_w, dtype), kind="forward")
    assert_close(v, np.array(want_v, dtype), kind="forward")


@pytest.mark.parametrize("decay", [0.0, 0.01])
@pytest.mark.parametrize("momentum,nesterov", SGD_MODES, ids=SGD_IDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_sgd_update_ten_step_trajectory_is_bitwise_the_reference(dtype, momentum, nesterov, decay):
    rng = rng_for(int(momentum * 10), nesterov, int(decay * 100), np.dtype(dtype).itemsize)
    n = 37
    w = rng.normal(size=n).astype(dtype)
    v = np.zeros(n, dtype)
    w_ref, v_ref = w.copy(), v.copy()
    for t in range(10):
        g = rng.normal(size=n).astype(dtype)
        lr = kernels.decayed_lr(0.05, decay, t)
        kernels.sgd_update(w, g, v, lr, momentum, nesterov)
        ref.sgd_update(w_ref, g, v_ref, lr, momentum, nesterov)
        # The same elementwise operations in the same order (the build has no FMA contraction):
        # bitwise equal, step after step.
        assert np.array_equal(w, w_ref), f"step {t}"
        assert np.array_equal(v, v_ref), f"step {t}"
    assert w.dtype == dtype and v.dtype == dtype


DECAY_CASES = [(0.01, 1e-6, 0), (0.01, 1e-6, 1), (0.1, 0.01, 12345), (0.5, 1e-3, 2**40), (1e-3, 0.0, 7), (0.3, 0.5, 3)]


@pytest.mark.parametrize("lr,decay,t", DECAY_CASES)
def test_decayed_lr_is_inverse_time_decay_in_float32(lr, decay, t):
    f32 = np.float32
    want = f32(lr) / (f32(1) + f32(decay) * f32(t))
    got = kernels.decayed_lr(lr, decay, t)
    assert got == float(want)
    assert got == float(ref.decayed_lr(lr, decay, t))


# ---------------------------------------------------------------------------------------------
# permutation
# ---------------------------------------------------------------------------------------------

SEEDS = [0, 1, 1234, 2**31 - 1, 2**62 + 12345, 2**63 - 1, 0x7EADBEEFCAFEBABE]


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("n", [0, 1, 2, 100, 10007])
def test_permutation_equals_reference(n, seed):
    for epoch in (0, 1, 7):
        got = kernels.permutation(n, seed, epoch)
        assert got.dtype == np.int64 and got.shape == (n,)
        assert np.array_equal(got, ref.permutation(n, seed, epoch)), f"epoch {epoch}"
        assert np.array_equal(np.sort(got), np.arange(n))
        assert np.array_equal(got, kernels.permutation(n, seed, epoch))  # a pure function


@pytest.mark.parametrize("seed", SEEDS)
def test_permutation_changes_with_epoch_and_seed(seed):
    orders = [kernels.permutation(100, seed, epoch) for epoch in range(4)]
    for a, b in itertools.combinations(orders, 2):
        assert not np.array_equal(a, b)
    assert not np.array_equal(kernels.permutation(100, seed, 0), kernels.permutation(100, seed + 1, 0))


# ---------------------------------------------------------------------------------------------
# Bad inputs: ValueError with a message, never a crash
# ---------------------------------------------------------------------------------------------


def bad_calls(dtype):
    x, w, b = np.ones((2, 3), dtype), np.ones((3, 4), dtype), np.ones(4, dtype)
    a = dy = np.ones((2, 4), dtype)
    a_wide, dy_tall, w_1d = np.ones((2, 5), dtype), np.ones((3, 4), dtype), np.ones(3, dtype)
    p, y = np.full((2, 3), 1 / 3, dtype), np.eye(3, dtype=dtype)[:2]
    return {
        "forward-act": (lambda: kernels.dense_forward(x, w, b, "relux"), "relux"),
        "forward-K": (lambda: kernels.dense_forward(x, np.ones((4, 4), dtype), b, "relu"), "columns"),
        "forward-b": (lambda: kernels.dense_forward(x, w, np.ones(5, dtype), "relu"), "b"),
        "forward-x-1d": (lambda: kernels.dense_forward(np.ones(3, dtype), w, b, "relu"), "2-D"),
        "forward-w-1d": (lambda: kernels.dense_forward(x, w_1d, b, "relu"), "w"),
        "backward-act": (lambda: kernels.dense_backward(x, w, a, dy, "relux", True, True, False), "relux"),
        "backward-a": (lambda: kernels.dense_backward(x, w, a_wide, dy, "relu", True, True, False), "a"),
        "backward-dy": (lambda: kernels.dense_backward(x, w, a, dy_tall, "relu", True, True, False), "dy"),
        "backward-w-1d": (lambda: kernels.dense_backward(x, w_1d, a, dy, "relu", True, True, False), "w"),
        "loss-name": (lambda: kernels.output_loss(p, y, "hinge", "softmax", False), "hinge"),
        "loss-act": (lambda: kernels.output_loss(p, y, CCE, "relux", False), "relux"),
        "loss-rows": (lambda: kernels.output_loss(p, y[:1], CCE, "softmax", False), "rows"),
        "loss-cols": (lambda: kernels.output_loss(p, np.ones((2, 4), dtype), CCE, "softmax", False), "columns"),
        "loss-sparse-cols": (lambda: kernels.output_loss(p, y, SCCE, "softmax", False), "columns"),
        # Labels outside [0, C) would index outside the row (csrc/losses.hpp assumes them checked).
        "loss-sparse-label-high": (
            lambda: kernels.output_loss(p, np.array([[3], [0]], dtype), SCCE, "softmax", False),
            "3",
        ),
        "loss-sparse-label-negative": (
            lambda: kernels.output_loss(p, np.array([[0], [-1]], dtype), SCCE, "softmax", True),
            "-1",
        ),
        "metric-name": (lambda: kernels.accuracy_sum(p, y, "auc"), "auc"),
        "metric-rows": (lambda: kernels.accuracy_sum(p, y[:1], "categorical_accuracy"), "rows"),
        "sgd-size": (
            lambda: kernels.sgd_update(np.ones(3, dtype), np.ones(4, dtype), np.ones(3, dtype), 0.1, 0.9, False),
            "size",
        ),
        "permutation-negative": (lambda: kernels.permutation(-1, 0, 0), None),
        "permutation-too-big": (lambda: kernels.permutation(2**32, 0, 0), "2\\*\\*32"),
    }


BAD_NAMES = list(bad_calls(np.float64))


@pytest.mark.parametrize("name", BAD_NAMES)
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_bad_inputs_raise_value_error(dtype, name):
    call, match = bad_calls(dtype)[name]
    with pytest.raises(ValueError, match=match):
        call()


@pytest.mark.parametrize("kernel", ["dense_forward", "dense_backward", "output_loss"])
def test_unknown_activation_message_lists_the_valid_ones(kernel):
    x, w, a = np.ones((2, 3)), np.ones((3, 4)), np.ones((2, 4))
    calls = {
        "dense_forward": lambda: kernels.dense_forward(x, w, None, "relux"),
        "dense_backward": lambda: kernels.dense_backward(x, w, a, a, "relux", True, True, False),
        "output_loss": lambda: kernels.output_loss(a / 4, a / 4, MSE, "relux", False),
    }
    with pytest.raises(ValueError) as info:
        calls[kernel]()
    message = str(info.value)
    assert "relux" in message
    for act in ACTS:
        assert act in message


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_sgd_update_refuses_buffers_it_cannot_update_in_place(dtype):
    g = np.ones(4, dtype)
    # A strided view or another dtype would be converted to a temporary copy, and the update lost.
    for w, v in [
        (np.ones(8, dtype)[::2], np.zeros(4, dtype)),
        (np.ones(4, dtype), np.zeros(8, dtype)[::2]),
        (np.ones(4, np.int64), np.zeros(4, dtype)),
        (np.ones(4, dtype), np.zeros(4, np.int32)),
    ]:
        w0, v0 = w.copy(), v.copy()
        with pytest.raises((TypeError, ValueError)):
            kernels.sgd_update(w, g, v, 0.1, 0.9, False)
        assert np.array_equal(w, w0) and np.array_equal(v, v0)
