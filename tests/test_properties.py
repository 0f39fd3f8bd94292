"""Property-based tests (hypothesis): random shapes, dtypes, memory orders and strides, for the
kernels against the NumPy reference and for the public API against the reference backend."""

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fastmlp
from conftest import assert_close
from fastmlp import _core
from fastmlp.layers import Dense
from fastmlp.models import Sequential
from fastmlp.optimizers import SGD
from fastmlp.reference import kernels as ref

ACTS = ["linear", "relu", "sigmoid", "tanh", "softmax"]
SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _layout(a, order, strided):
    """`a` (2-D) as a C- or Fortran-ordered array, or a strided view (every other row and column)."""
    if strided:
        big = np.zeros((2 * a.shape[0], 2 * a.shape[1]), a.dtype, order=order)
        big[::2, ::2] = a
        return big[::2, ::2]
    return np.asarray(a, order=order)


@st.composite
def dense_case(draw):
    b, k, n = (draw(st.integers(1, 40)) for _ in range(3))
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((b, k)).astype(dtype)
    w = (rng.standard_normal((k, n)) / np.sqrt(k)).astype(dtype)
    bias = rng.standard_normal(n).astype(dtype) if draw(st.booleans()) else None
    act = draw(st.sampled_from(ACTS))
    order = draw(st.sampled_from("CF"))
    strided = draw(st.booleans())
    return x, w, bias, act, order, strided


@SETTINGS
@given(dense_case())
def test_dense_kernels_match_the_reference_for_any_layout(case):
    x, w, bias, act, order, strided = case
    xs, ws = _layout(x, order, strided), _layout(w, order, strided)
    y = _core.kernels.dense_forward(xs, ws, bias, act)
    assert y.dtype == x.dtype and y.shape == (x.shape[0], w.shape[1])
    assert np.array_equal(y, _core.kernels.dense_forward(x, w, bias, act, naive=True))
    assert_close(y, ref.dense_forward(x, w, bias, act), kind="forward")
    dy = np.ones_like(y) / y.size
    dx, dw, db, _dz = _core.kernels.dense_backward(xs, ws, _layout(y, order, strided), dy, act, bias is not None)
    rdx, rdw, rdb, _ = ref.dense_backward(x, w, y, dy, act, bias is not None)
    assert_close(dx, rdx, kind="grad")
    assert_close(dw, rdw, kind="grad")
    if bias is not None:
        assert_close(db, rdb, kind="grad")


@st.composite
def training_case(draw):
    features = draw(st.integers(1, 24))
    hidden = draw(st.lists(st.integers(1, 24), min_size=0, max_size=2))
    classes = draw(st.integers(2, 5))
    n = draw(st.integers(1, 120))
    batch_size = draw(st.integers(1, 64))
    x_dtype = draw(st.sampled_from(["float32", "float64", "int64", "bool"]))
    order = draw(st.sampled_from("CF"))
    strided = draw(st.booleans())
    loss = draw(st.sampled_from(["categorical_crossentropy", "sparse_categorical_crossentropy",
                                 "binary_crossentropy", "mse"]))
    seed = draw(st.integers(0, 2**31 - 1))
    return features, hidden, classes, n, batch_size, x_dtype, order, strided, loss, seed


def _fit(case, backend):
    features, hidden, classes, n, batch_size, x_dtype, order, strided, loss, seed = case
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, features))
    x = (x > 0) if x_dtype == "bool" else (np.round(x * 3) if x_dtype == "int64" else x).astype(x_dtype)
    labels = rng.integers(0, classes, n)
    y = labels if loss == "sparse_categorical_crossentropy" else np.eye(classes)[labels]
    fastmlp.utils.set_random_seed(seed)
    model = Sequential()
    for i, units in enumerate(hidden):
        model.add(Dense(units, activation="tanh", **({"input_dim": features} if i == 0 else {})))
    model.add(Dense(classes, activation="softmax", **({} if hidden else {"input_dim": features})))
    model.compile(loss=loss, optimizer=SGD(learning_rate=0.05, momentum=0.5), metrics=["accuracy"], backend=backend)
    history = model.fit(_layout(x, order, strided), y, epochs=2, batch_size=batch_size, verbose=0)
    return model, history, x


@SETTINGS
@given(training_case())
def test_native_training_matches_the_reference_for_any_input(case):
    # In float64 the native engine and the reference do the same maths to rounding: any difference
    # in shuffling, batching, padding or gradients would show far above this bound.
    fastmlp.backend.set_floatx("float64")
    try:
        native, h_native, x = _fit(case, "cpu")
        reference, h_ref, _ = _fit(case, "numpy")
    finally:
        fastmlp.backend.set_floatx("float32")
    steps = 2 * -(-case[3] // case[4])
    assert native.optimizer.iterations == reference.optimizer.iterations == steps
    for a, b in zip(native.get_weights(), reference.get_weights()):
        assert_close(a, b, rtol=1e-9, atol=1e-10)
    assert_close(h_native.history["loss"], h_ref.history["loss"], rtol=1e-9, atol=1e-12)
    assert_close(h_native.history["accuracy"], h_ref.history["accuracy"], rtol=0, atol=1e-12)
    # float32: the same model trains, and predict does not depend on the input's layout.
    native32, h32, _ = _fit(case, "cpu")
    assert all(np.isfinite(v) for v in h32.history["loss"])
    p = native32.predict(x)
    assert p.shape == (case[3], case[2]) and p.dtype == np.float32
    assert np.array_equal(p, native32.predict(np.asfortranarray(x)))
    assert np.array_equal(p, native32.predict(x.astype(np.float64)))
