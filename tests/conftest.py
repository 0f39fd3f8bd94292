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


@pytest.fixture(autouse=True)
def _fresh_seed():
    """Every test starts from the same fastmlp seed, so failures reproduce."""
    import fastmlp

    fastmlp.utils.set_random_seed(1234)
    yield
