"""Shared test policy.

One tolerance rule everywhere: |actual - expected| <= atol + rtol * |expected|, elementwise, with
forward values and gradients checked separately. The defaults below are per dtype; a test that
loosens them says why next to the call.
"""

import numpy as np
import pytest

TOL = {
    # float32: a handful of ulps of accumulated rounding on O(1) values, across differently
    # ordered sums (BLAS vs our kernels).
    np.dtype(np.float32): {"forward": (1e-5, 1e-6), "grad": (1e-4, 1e-6)},
    # float64: the same paths agree to near machine precision.
    np.dtype(np.float64): {"forward": (1e-12, 1e-13), "grad": (1e-10, 1e-12)},
}


def assert_close(actual, expected, kind="forward", rtol=None, atol=None, err_msg=""):
    """Assert the project's tolerance policy; `kind` is 'forward' or 'grad'."""
    expected = np.asarray(expected)
    actual = np.asarray(actual)
    dtype = np.dtype(expected.dtype if expected.dtype in TOL else np.float32)
    d_rtol, d_atol = TOL[dtype][kind]
    np.testing.assert_allclose(
        actual, expected, rtol=d_rtol if rtol is None else rtol, atol=d_atol if atol is None else atol, err_msg=err_msg
    )


def assert_scaled_close(actual, expected, rel=2e-5, err_msg="", floor=0.0):
    """|a - e| <= rel * max(max|e|, floor) elementwise: relative to each array's scale, the rule of
    the trajectory-parity tests against Keras."""
    expected = np.asarray(expected)
    assert np.shape(actual) == expected.shape, err_msg
    scale = max(float(np.max(np.abs(expected))), floor)
    assert_close(actual, expected, rtol=0, atol=rel * scale, err_msg=err_msg)


@pytest.fixture(autouse=True)
def _fresh_seed():
    """Every test starts from the same fastmlp seed, so failures reproduce."""
    import fastmlp

    fastmlp.utils.set_random_seed(1234)
    yield


def make_problem(shape, out_act, loss, n, dtype, hidden, seed=0, classes=3):
    """A 3-layer engine problem: layer specs (in, out, activation, use_bias) for the widths
    shape = (inputs, hidden 1, hidden 2) and `classes` outputs, inputs x, targets y suited to
    `loss` (class ids, one-hot, 0/1 or real values) and a flat parameter vector."""
    rng = np.random.default_rng(seed)
    specs = [(shape[0], shape[1], hidden[0], True), (shape[1], shape[2], hidden[1], False),
             (shape[2], classes, out_act, True)]
    x = rng.standard_normal((n, shape[0])).astype(dtype)
    labels = rng.integers(0, classes, n)
    if loss.startswith("sparse"):
        y = labels.reshape(n, 1).astype(dtype)
    elif loss in ("mean_squared_error", "mean_absolute_error", "huber"):
        y = rng.standard_normal((n, classes)).astype(dtype)
    elif loss.startswith("binary") and out_act != "softmax":
        y = (rng.random((n, classes)) < 0.5).astype(dtype)
    else:
        y = np.eye(classes, dtype=dtype)[labels]
    size = sum(i * o + (o if b else 0) for i, o, _a, b in specs)
    params = (rng.standard_normal(size) * 0.5).astype(dtype)
    return specs, x, y, params
