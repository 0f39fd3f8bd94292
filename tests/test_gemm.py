"""The packed GEMM (csrc/gemm.hpp) on every instruction-set variant this CPU runs: against float64
NumPy on shapes with 1, 7, 17, 33, 255 and 1000 in each dimension and every transpose, against its
naive twin bit for bit, and bit for bit across thread counts, also for whole training runs."""

import itertools
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import assert_close

import fastmlp
from fastmlp import _core
from fastmlp._core import kernels
from fastmlp.layers import Dense
from fastmlp.models import Sequential

ISAS = _core.supported_isas()
DIMS = [1, 7, 17, 33, 255, 1000]
TRANSPOSES = list(itertools.product([False, True], repeat=2))


@pytest.fixture(autouse=True)
def _restore_threads():
    saved = _core.get_num_threads()
    yield
    _core.set_num_threads(saved)


def operands(rng, M, N, K, ta, tb, dtype):
    a = rng.uniform(-1, 1, (K, M) if ta else (M, K)).astype(dtype)
    b = rng.uniform(-1, 1, (N, K) if tb else (K, N)).astype(dtype)
    return a, b


def expected(a, b, ta, tb, bias=None):
    out = (a.T if ta else a).astype(np.float64) @ (b.T if tb else b).astype(np.float64)
    return out if bias is None else out + bias


def tolerance(K, dtype):
    """A sum of K products of values in [-1, 1]: rounding grows like sqrt(K) ulps of the partial sums."""
    eps = np.finfo(dtype).eps
    return 8 * eps * np.sqrt(K) * np.sqrt(K / 3 + 1)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("M, N, K", list(itertools.product(DIMS, DIMS, DIMS)))
def test_gemm_matches_float64_numpy_every_shape_and_transpose(isa, M, N, K):
    rng = np.random.default_rng([M, N, K])
    for ta, tb in TRANSPOSES:
        if M * N * K > 3e7 and (ta, tb) != (False, False):
            continue  # the largest shapes: one layout is enough, the others are covered by smaller K
        a, b = operands(rng, M, N, K, ta, tb, np.float32)
        c, _ = kernels.gemm(a, b, transpose_a=ta, transpose_b=tb, isa=isa)
        assert c.shape == (M, N) and c.dtype == np.float32
        np.testing.assert_allclose(c, expected(a, b, ta, tb), rtol=0, atol=tolerance(K, np.float32),
                                   err_msg=f"{isa} {M}x{N}x{K} transpose_a={ta} transpose_b={tb}")


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("M, N, K", [(1, 1, 1), (7, 17, 33), (33, 255, 7), (255, 33, 17), (17, 1000, 33),
                                     (100, 4, 2), (6, 16, 256), (7, 17, 257), (145, 33, 513), (7, 3100, 9),
                                     (300, 10, 40), (5, 3, 3), (64, 15, 300)])
def test_gemm_is_bitwise_its_naive_twin(isa, dtype, M, N, K):
    rng = np.random.default_rng([M, N, K, 1])
    for ta, tb in TRANSPOSES:
        a, b = operands(rng, M, N, K, ta, tb, dtype)
        bias = rng.uniform(-1, 1, N).astype(dtype)
        for act in ["linear", "relu", "tanh"]:
            fast, _ = kernels.gemm(a, b, bias, act, ta, tb, isa=isa)
            slow, _ = kernels.gemm(a, b, bias, act, ta, tb, isa=isa, naive=True)
            assert np.array_equal(fast, slow), (isa, act, ta, tb)
        assert_close(kernels.gemm(a, b, bias, "linear", ta, tb, isa=isa)[0], expected(a, b, ta, tb, bias),
                     rtol=0, atol=tolerance(K, dtype))


@pytest.mark.parametrize("isa", ISAS)
def test_gemm_epilogue_applies_bias_then_activation(isa):
    rng = np.random.default_rng(5)
    a, b = operands(rng, 37, 45, 19, False, False, np.float32)
    bias = rng.uniform(-1, 1, 45).astype(np.float32)
    z = expected(a, b, False, False, bias)
    assert_close(kernels.gemm(a, b, bias, "relu", isa=isa)[0], np.maximum(z, 0), rtol=1e-5, atol=1e-5)
    assert_close(kernels.gemm(a, b, bias, "sigmoid", isa=isa)[0], 1 / (1 + np.exp(-z)), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("M, N, K", [(256, 1024, 784), (784, 1024, 256), (256, 784, 1024), (1000, 10, 255),
                                     (33, 2000, 300)])
def test_gemm_bits_do_not_depend_on_the_thread_count(isa, M, N, K):
    rng = np.random.default_rng([M, N, K, 2])
    for ta, tb in [(False, False), (True, False), (False, True)]:
        a, b = operands(rng, M, N, K, ta, tb, np.float32)
        results = []
        for threads in (1, 2, 3):
            _core.set_num_threads(threads)
            results.append(kernels.gemm(a, b, transpose_a=ta, transpose_b=tb, isa=isa)[0])
        assert np.array_equal(results[0], results[1]) and np.array_equal(results[0], results[2]), (ta, tb)


@pytest.mark.skipif(not {"avx2", "avx512"} <= set(ISAS), reason="needs a CPU that runs both avx2 and avx512")
def test_fma_variants_agree_bit_for_bit():
    rng = np.random.default_rng(9)
    for M, N, K in [(255, 33, 1000), (7, 1000, 17), (256, 1024, 784)]:
        a, b = operands(rng, M, N, K, False, False, np.float32)
        assert np.array_equal(kernels.gemm(a, b, isa="avx2")[0], kernels.gemm(a, b, isa="avx512")[0])


def test_gemm_refuses_bad_calls():
    a = np.ones((3, 4), np.float32)
    with pytest.raises(ValueError, match="inner sizes must match"):
        kernels.gemm(a, np.ones((5, 2), np.float32))
    with pytest.raises(ValueError, match="elementwise"):
        kernels.gemm(a, np.ones((4, 2), np.float32), act="softmax")
    with pytest.raises(ValueError, match="not available"):
        kernels.gemm(a, np.ones((4, 2), np.float32), isa="sse9")
    with pytest.raises(ValueError, match="bias must have N = 2"):
        kernels.gemm(a, np.ones((4, 2), np.float32), np.ones(3, np.float32))
    with pytest.raises(ValueError, match="repeats"):
        kernels.gemm(a, np.ones((4, 2), np.float32), repeats=0)


def test_thread_count_api():
    fastmlp.set_num_threads(1)
    assert fastmlp.get_num_threads() == 1 and fastmlp.cpu_info()["threads"] == 1
    fastmlp.set_num_threads(3)
    assert fastmlp.get_num_threads() == 3
    for bad in (0, -1, 1025, 1.5, True, "2"):
        with pytest.raises(ValueError, match="positive integer"):
            fastmlp.set_num_threads(bad)


def test_environment_variable_sets_the_default_thread_count():
    import subprocess
    import sys

    code = "import fastmlp; print(fastmlp.get_num_threads())"
    out = subprocess.run([sys.executable, "-c", code], env={**__import__("os").environ, "FASTMLP_NUM_THREADS": "3"},
                         capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "3"


def _train_wide(threads, isa):
    _core.set_num_threads(threads)
    fastmlp.backend.set_isa(isa)
    try:
        fastmlp.utils.set_random_seed(11)
        rng = np.random.default_rng(0)
        x = rng.standard_normal((600, 300)).astype(np.float32)
        y = np.eye(10, dtype=np.float32)[rng.integers(0, 10, 600)]
        model = Sequential([Dense(384, activation="relu", input_dim=300), Dense(200, activation="tanh"),
                            Dense(10, activation="softmax")])
        model.compile(loss="categorical_crossentropy", optimizer=fastmlp.optimizers.SGD(0.01, momentum=0.9),
                      metrics=["accuracy"])
        history = model.fit(x, y, epochs=2, batch_size=128, verbose=0)
        return model.get_weights(), history.history, model.predict(x, batch_size=1024)
    finally:
        fastmlp.backend.set_isa(None)


@pytest.mark.parametrize("isa", ISAS)
def test_training_is_bitwise_equal_whatever_the_thread_count(isa):
    w1, h1, p1 = _train_wide(1, isa)
    for threads in (2, 3):
        w, h, p = _train_wide(threads, isa)
        assert h == h1, threads
        assert all(np.array_equal(a, b) for a, b in zip(w, w1)), threads
        assert np.array_equal(p, p1), threads


def _train_narrow(threads, verbose_steps):
    """The seed's shape on the narrow path, several shuffled epochs and a second fit that continues
    the shuffle stream; verbose_steps trains batch by batch."""
    _core.set_num_threads(threads)
    fastmlp.utils.set_random_seed(5)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((1000, 2)).astype(np.float32)
    y = np.eye(2, dtype=np.float32)[(x[:, 0] * x[:, 1] <= 0).astype(int)]
    model = Sequential([Dense(4, activation="relu", input_dim=2), Dense(4, activation="relu"),
                        Dense(2, activation="softmax")])
    model.compile(loss="binary_crossentropy", optimizer=fastmlp.optimizers.SGD(decay=0.001, momentum=0.99))
    callbacks = [fastmlp.callbacks.LambdaCallback(on_train_batch_end=lambda b, logs: None)] if verbose_steps else []
    history = model.fit(x, y, epochs=4, batch_size=100, verbose=0, callbacks=callbacks)
    history2 = model.fit(x, y, epochs=2, batch_size=100, verbose=0)
    return model.get_weights(), history.history, history2.history


def test_narrow_training_is_bitwise_equal_whatever_the_thread_count():
    w1, h1, g1 = _train_narrow(1, False)
    for threads, by_batch in ((2, False), (3, False), (2, True)):
        w, h, g = _train_narrow(threads, by_batch)
        assert h == h1 and g == g1, threads
        assert all(np.array_equal(a, b) for a, b in zip(w, w1)), threads


_FLUSH_SCRIPT = """
import numpy as np
import fastmlp
from fastmlp import _core
from fastmlp.layers import Dense
from fastmlp.models import Sequential
_core.kernels.fma_peak(iterations=1000)  # starts the pool's workers outside any flush-to-zero scope
model = Sequential([Dense(256, activation="linear", input_dim=256)])
model.compile(loss="mse", optimizer="sgd")
model.set_weights([np.full((256, 256), 1e-20, np.float32), np.zeros(256, np.float32)])
x = np.full((1024, 256), 1e-20, np.float32)  # every product 1e-40: subnormal, flushed to 0
out = []
for threads in (1, 2):
    fastmlp.set_num_threads(threads)
    out.append(model.predict(x, verbose=0))
print(np.count_nonzero(out[0]), np.count_nonzero(out[1]))
"""


def test_pool_threads_flush_subnormals_as_the_caller_does():
    # The engine computes with subnormals flushed to zero (common.hpp FlushDenormals); the pool's
    # workers must too, whatever the mode of the thread that started them, or a product's tiles
    # would differ with the thread that ran them. A fresh process, so that the workers start here.
    env = dict(os.environ, FASTMLP_NUM_THREADS="2")
    out = subprocess.run([sys.executable, "-c", _FLUSH_SCRIPT], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.split() == ["0", "0"], out.stdout
