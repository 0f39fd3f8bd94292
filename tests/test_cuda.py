"""The optional CUDA backend (fastmlp._cuda, backend='cuda') against the CPU engine.

Two targets run the same comparisons: 'gpu', the engine on the GPU (skipped without one), and
'emulated', the same engine with its kernels and steps run as host loops (`emulate=True`: every
kernel body, the column-major product arguments, the fused tiny-network kernel's phases and the
step sequence, without CUDA Graphs or cuBLASLt), which needs only a build with
-DFASTMLP_CUDA=ON. Compared: forward, gradients, optimizer trajectories on both training paths,
evaluate's sums, a non-finite stop, the Keras 3 golden trajectories, the seed fit through the
model API. Without any CUDA build: the default build has no CUDA dependency, cuda_available() says
why not, and compile(backend='cuda') raises a clear error.
"""

import functools
import shutil
import subprocess
import sys

import numpy as np
import pytest
from conftest import assert_close, make_problem

import fastmlp
from fastmlp import _core
from fastmlp import cuda as cuda_backend
from fastmlp.layers import Dense
from fastmlp.models import Sequential
from fastmlp.optimizers import SGD, Adam
from fastmlp.regularizers import L2

BUILT = cuda_backend.cuda_info()["built"]
GPU = cuda_backend.cuda_available()
REASON = cuda_backend.cuda_unavailable_reason()

TARGETS = [
    pytest.param(True, id="emulated", marks=pytest.mark.skipif(not BUILT, reason="fastmlp was built without CUDA")),
    pytest.param(False, id="gpu", marks=pytest.mark.skipif(not GPU, reason=f"no usable GPU: {REASON}")),
]

# (target, training path): the fused one-block kernel, and the multi-kernel step, captured as a
# CUDA Graph ('graphs') or launched kernel by kernel ('kernels', GPU only: the emulation runs
# 'graphs' that way).
PATHS = [pytest.param(t.values[0], path, id=f"{t.id}-{path}", marks=t.marks)
         for t in TARGETS for path in ("fused", "graphs", "kernels") if not (t.values[0] and path == "kernels")]

# Tolerances, float64: the emulation sums in the CPU engine's order (1e-12 covers the rest);
# cuBLAS orders its sums differently (blocking, split-k): loosened to 1e-9 there.
F64 = {True: {"forward": 1e-12, "grad": 1e-10}, False: {"forward": 1e-9, "grad": 1e-9}}


def _engine(emulate, specs, loss, metrics=(), opt=None, dtype=np.float64, **kwargs):
    return cuda_backend.CudaEngine(specs, loss, list(metrics), opt or {"learning_rate": 0.1},
                                   dtype=np.dtype(dtype).name, emulate=emulate, **kwargs)


def _cpu(specs, loss, metrics=(), opt=None, dtype=np.float64):
    cls = _core.Engine64 if dtype == np.float64 else _core.Engine32
    return cls(specs, loss, list(metrics), opt or {"learning_rate": 0.1})


def _flat(views):
    return np.concatenate([v.ravel() for v in views])


# (output activation, loss) pairs covering every output path (fused and not).
OUTPUTS = [
    ("softmax", "binary_crossentropy"),
    ("softmax", "categorical_crossentropy"),
    ("softmax", "sparse_categorical_crossentropy"),
    ("sigmoid", "binary_crossentropy"),
    ("linear", "mean_squared_error"),
    ("softmax", "mean_squared_error"),
    ("linear", "binary_crossentropy_from_logits"),
    ("linear", "categorical_crossentropy_from_logits"),
    ("linear", "sparse_categorical_crossentropy_from_logits"),
    ("tanh", "categorical_crossentropy_from_logits"),
    ("linear", "mean_absolute_error"),
    ("tanh", "huber"),
]
# (2, 4, 4) fits the fused kernel; (20, 40, 17) does not (wider than 32).
SHAPES = {"tiny": (2, 4, 4), "wide": (20, 40, 17)}
HIDDEN_ACTS = ["relu", "sigmoid", "tanh", "softmax", "leaky_relu", "elu", "selu", "hard_sigmoid", "softplus",
               "softsign", "exponential", "linear"]


def _problem(shape, out_act, loss, n, dtype, hidden=("tanh", "relu"), seed=0, classes=3):
    return make_problem(shape, out_act, loss, n, dtype, hidden, seed=seed, classes=classes)


# ---- the default build and the errors without CUDA ----

def test_core_extension_has_no_cuda_dependency():
    readelf = shutil.which("readelf")
    if readelf is None or not sys.platform.startswith("linux"):
        pytest.skip("needs readelf on Linux")
    dynamic = subprocess.run([readelf, "-d", _core.__file__], capture_output=True, text=True, check=True).stdout
    needed = [line for line in dynamic.splitlines() if "(NEEDED)" in line]
    assert needed, dynamic
    assert not [line for line in needed if any(lib in line for lib in ("libcuda", "libcudart", "libcublas", "libnv"))]


@pytest.mark.skipif(GPU, reason="a GPU is available here")
def test_cuda_unavailable_says_why():
    assert fastmlp.cuda_available() is False
    reason = fastmlp.cuda_unavailable_reason()
    assert isinstance(reason, str) and reason
    info = fastmlp.cuda_info()
    assert info["available"] is False and info["reason"] == reason and info["built"] == BUILT


@pytest.mark.skipif(GPU, reason="a GPU is available here")
def test_compile_on_cuda_without_one_raises_a_clear_error():
    model = Sequential([Dense(2, activation="softmax", input_dim=2)])
    with pytest.raises(RuntimeError, match="backend='cuda' is not available") as info:
        model.compile(loss="categorical_crossentropy", optimizer="sgd", backend="cuda")
    assert REASON in str(info.value)
    assert ("FASTMLP_CUDA=ON" in str(info.value)) == (not BUILT)
    model.compile(loss="categorical_crossentropy", optimizer="sgd")  # the model stays usable
    assert model.predict(np.zeros((1, 2))).shape == (1, 2)


def test_a_build_without_cuda_is_reported_with_the_build_command(monkeypatch):
    monkeypatch.setattr(cuda_backend, "_state", {})
    monkeypatch.delattr(fastmlp, "_cuda", raising=False)
    monkeypatch.setitem(sys.modules, "fastmlp._cuda", None)  # import fails as without the extension
    assert cuda_backend.cuda_available() is False
    assert cuda_backend.cuda_unavailable_reason() == "fastmlp was built without the CUDA backend"
    assert cuda_backend.cuda_info() == {"available": False, "reason": "fastmlp was built without the CUDA backend",
                                        "built": False}
    with pytest.raises(RuntimeError, match=r"pip install \. -Ccmake\.define\.FASTMLP_CUDA=ON"):
        cuda_backend.require()


def test_a_missing_cublaslt_is_reported_with_the_wheel_to_install(monkeypatch):
    class MissingLibrary:  # what the dynamic loader says when libcublasLt cannot be found
        def find_spec(self, name, path=None, target=None):
            if name == "fastmlp._cuda":
                raise ImportError("libcublasLt.so.13: cannot open shared object file: No such file or directory")
            return None

    monkeypatch.setattr(cuda_backend, "_state", {})
    monkeypatch.setattr(cuda_backend, "_preload", lambda soname: False)
    monkeypatch.delattr(fastmlp, "_cuda", raising=False)
    monkeypatch.delitem(sys.modules, "fastmlp._cuda", raising=False)
    monkeypatch.setattr(sys, "meta_path", [MissingLibrary()] + sys.meta_path)
    assert "libcublasLt.so.13" in cuda_backend.cuda_unavailable_reason()
    with pytest.raises(RuntimeError, match=r"pip install nvidia-cublas"):
        cuda_backend.require()


# ---- CUDA against the CPU engine ----

@pytest.mark.parametrize("emulate", TARGETS)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("out_act, loss", OUTPUTS)
def test_forward_and_gradients_match_the_cpu_engine(emulate, shape, out_act, loss):
    specs, x, y, params = _problem(SHAPES[shape], out_act, loss, 37, np.float64)
    cpu, dev = _cpu(specs, loss), _engine(emulate, specs, loss)
    cpu.set_params(params)
    dev.set_params(params)
    tol = F64[emulate]
    assert_close(dev.compute_gradients(x, y), cpu.compute_gradients(x, y), rtol=tol["forward"], atol=0)
    assert_close(_flat(dev.weight_views("grads")), _flat(cpu.weight_views("grads")), rtol=tol["grad"], atol=1e-14)
    assert_close(dev.predict(x, 8), cpu.predict(x, 8), rtol=tol["forward"], atol=1e-14)


@pytest.mark.parametrize("emulate", TARGETS)
@pytest.mark.parametrize("act", HIDDEN_ACTS)
@pytest.mark.parametrize("shape", SHAPES)
def test_every_hidden_activation_matches_the_cpu_engine(emulate, act, shape):
    specs, x, y, params = _problem(SHAPES[shape], "softmax", "categorical_crossentropy", 29, np.float64,
                                   hidden=(act, act))
    params *= 0.5  # keeps exponential's outputs moderate
    cpu, dev = _cpu(specs, "categorical_crossentropy"), _engine(emulate, specs, "categorical_crossentropy")
    cpu.set_params(params)
    dev.set_params(params)
    tol = F64[emulate]
    assert_close(dev.compute_gradients(x, y), cpu.compute_gradients(x, y), rtol=tol["forward"], atol=0)
    assert_close(_flat(dev.weight_views("grads")), _flat(cpu.weight_views("grads")), rtol=tol["grad"], atol=1e-14)


@pytest.mark.parametrize("emulate", TARGETS)
def test_products_with_and_without_epilogues_agree(emulate):
    """Both forward paths: the bias/ReLU epilogue in the product, and the plain product followed by
    BiasAct (the fallback where cuBLASLt has no epilogue). The emulation switches its epilogues off;
    the GPU compares cuBLASLt with the naive reference kernel."""
    specs, x, y, params = _problem((30, 48, 40), "softmax", "categorical_crossentropy", 70, np.float64,
                                   hidden=("relu", "relu"))
    first = _engine(emulate, specs, "categorical_crossentropy")
    second = _engine(emulate, specs, "categorical_crossentropy", epilogues=False) if emulate else \
        _engine(emulate, specs, "categorical_crossentropy")
    if not emulate:
        second.set_gemm("naive")
    losses = []
    for engine in (first, second):
        engine.set_params(params)
        losses.append(engine.compute_gradients(x, y))
    assert_close(losses[0], losses[1], rtol=F64[emulate]["forward"], atol=0)
    assert_close(_flat(first.weight_views("grads")), _flat(second.weight_views("grads")), rtol=F64[emulate]["grad"],
                 atol=1e-14)
    assert_close(first.predict(x, 32), second.predict(x, 32), rtol=F64[emulate]["forward"], atol=1e-14)



def _epilogues_taken(report):
    """{'relu_bias': (taken, asked), ...} from gemm_report's 'cuBLASLt ...: relu_bias 2 of 2, bias 0 of 1'."""
    counts = {}
    for item in report.split(": ", 1)[1].split(", "):
        name, taken, _of, asked = item.split()
        counts[name] = (int(taken), int(asked))
    return counts


@pytest.mark.skipif(not GPU, reason=f"no usable GPU: {REASON}")
def test_a_bias_under_16_byte_alignment_takes_the_plain_product():
    """cuBLASLt's alignment preferences cover A, B, C and D but not the bias, which its epilogue
    kernels may read as 16-byte vectors: a float32 bias 4 bytes past a multiple of 16 in the arena
    (every bias here: offsets 15, 55 and 83) runs as a plain product and fastmlp's bias/activation
    kernel, with the reference products' results."""
    specs = [(3, 5, "relu", True), (5, 7, "relu", True), (7, 3, "softmax", True)]
    rng = np.random.default_rng(4)
    x = rng.standard_normal((40, 3)).astype(np.float32)
    y = np.eye(3, dtype=np.float32)[rng.integers(0, 3, 40)]
    params = (rng.standard_normal(3 * 5 + 5 + 5 * 7 + 7 + 7 * 3 + 3) * 0.5).astype(np.float32)
    lt = _engine(False, specs, "categorical_crossentropy", dtype=np.float32)
    naive = _engine(False, specs, "categorical_crossentropy", dtype=np.float32)
    naive.set_gemm("naive")
    losses = []
    for engine in (lt, naive):
        engine.set_params(params)
        losses.append(engine.compute_gradients(x, y))
    taken = _epilogues_taken(lt.gemm_report)
    assert taken["relu_bias"] == (0, 2) and taken["bias"] == (0, 1), lt.gemm_report
    assert taken["none"][0] == taken["none"][1] >= 3, lt.gemm_report
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)  # float32 row losses, summed in float64
    assert_close(_flat(lt.weight_views("grads")), _flat(naive.weight_views("grads")), kind="grad")
    assert_close(lt.predict(x, 16), naive.predict(x, 16))

OPTIMIZERS = {
    "sgd_decay": {"kind": "sgd", "learning_rate": 0.1, "momentum": 0.9, "decay": 0.01},
    "sgd_nesterov": {"kind": "sgd", "learning_rate": 0.1, "momentum": 0.9, "nesterov": True},
    "sgd_plain": {"kind": "sgd", "learning_rate": 0.1},
    "adam": {"kind": "adam", "learning_rate": 0.01},
    "adamw_cosine_clipvalue": {"kind": "adam", "learning_rate": 0.0, "schedule": "cosine", "initial": 0.01,
                               "decay_steps": 20.0, "alpha": 0.1, "weight_decay": 0.01, "clipvalue": 0.05},
    "rmsprop_momentum": {"kind": "rmsprop", "learning_rate": 0.01, "momentum": 0.5},
    "rmsprop_inverse_time": {"kind": "rmsprop", "learning_rate": 0.0, "schedule": "inverse_time", "initial": 0.01,
                             "decay_steps": 3.0, "decay_rate": 0.5},
    "adagrad_exponential": {"kind": "adagrad", "learning_rate": 0.0, "schedule": "exponential", "initial": 0.1,
                            "decay_steps": 5.0, "decay_rate": 0.5, "staircase": True, "initial_accumulator": 0.1},
    "sgd_piecewise": {"kind": "sgd", "learning_rate": 0.0, "schedule": "piecewise", "boundaries": [5.0, 10.0],
                      "values": [0.1, 0.05, 0.01]},
}


def _train_both(emulate, specs, loss, metrics, opt, x, y, params, path, epochs=3, batch_size=10, dtype=np.float64):
    cpu, dev = _cpu(specs, loss, metrics, opt, dtype), _engine(emulate, specs, loss, metrics, opt, dtype)
    dev.set_path(path)
    cpu.set_params(params)
    dev.set_params(params)
    sums = []
    for epoch in range(epochs):
        for engine in (cpu, dev):
            engine.begin_epoch(len(x), batch_size, True, 1234, epoch)
        sums.append((cpu.train_steps(x, y, 0), dev.train_steps(x, y, 0)))
    return cpu, dev, sums


@pytest.mark.parametrize("emulate, path", PATHS)
@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_training_trajectories_match_the_cpu_engine(emulate, path, optimizer):
    """Three shuffled epochs of 10 batches (the last one partial), on the fused one-block kernel and
    on the multi-kernel step: every epoch's loss and metrics, the update count, the final weights
    and optimizer state."""
    specs, x, y, params = _problem((3, 8, 6), "softmax", "categorical_crossentropy", 95, np.float64)
    cpu, dev, sums = _train_both(emulate, specs, "categorical_crossentropy", ["categorical_accuracy"],
                                 OPTIMIZERS[optimizer], x, y, params, path)
    # The host emulation runs the multi-kernel step without capturing it.
    assert dev.path == ("kernels" if emulate and path == "graphs" else path)
    tol = F64[emulate]
    for c, d in sums:
        assert (d["steps_done"], d["steps_total"], d["samples"], d["stop"]) == (10, 10, 95, "")
        assert_close(d["loss"], c["loss"], rtol=tol["forward"], atol=0)
        assert d["metrics"] == pytest.approx(c["metrics"], abs=1e-9)
    assert dev.iterations == cpu.iterations == 30
    assert_close(dev.params_copy(), cpu.params_copy(), rtol=1e-8 if not emulate else 1e-10, atol=1e-12)
    for arena in ("velocity", "second"):
        assert_close(_flat(dev.weight_views(arena)) if dev.weight_views(arena) else np.zeros(0),
                     _flat(cpu.weight_views(arena)) if cpu.weight_views(arena) else np.zeros(0),
                     rtol=1e-8 if not emulate else 1e-10, atol=1e-12)


@pytest.mark.parametrize("emulate, path", PATHS)
def test_settings_changed_between_epochs_apply_as_on_the_cpu(emulate, path):
    """set_option and iterations between epochs reach the next update (a captured step reads them
    from the device)."""
    specs, x, y, params = _problem((3, 8, 6), "softmax", "categorical_crossentropy", 60, np.float64)
    opt = {"kind": "sgd", "learning_rate": 0.1, "momentum": 0.9, "decay": 0.01}
    cpu, dev = _cpu(specs, "categorical_crossentropy", [], opt), _engine(emulate, specs, "categorical_crossentropy",
                                                                         [], opt)
    dev.set_path(path)
    for engine in (cpu, dev):
        engine.set_params(params)
        engine.iterations = 100
    changes = [("learning_rate", 0.05), ("momentum", 0.5), ("nesterov", True)]
    for epoch, (name, value) in enumerate(changes):
        for engine in (cpu, dev):
            engine.begin_epoch(len(x), 16, True, 99, epoch)
        c, d = cpu.train_steps(x, y, 0), dev.train_steps(x, y, 0)
        assert_close(d["loss"], c["loss"], rtol=F64[emulate]["forward"], atol=0)
        for engine in (cpu, dev):
            engine.set_option(name, value)
    assert dev.iterations == cpu.iterations == 112
    assert_close(dev.params_copy(), cpu.params_copy(), rtol=1e-8 if not emulate else 1e-10, atol=1e-12)


@pytest.mark.parametrize("emulate, path", PATHS)
def test_float32_training_matches_the_cpu_engine(emulate, path):
    specs, x, y, params = _problem((2, 4, 4), "softmax", "binary_crossentropy", 200, np.float32,
                                   hidden=("relu", "relu"))
    opt = {"kind": "sgd", "learning_rate": 0.01, "momentum": 0.99, "decay": 0.001}
    cpu, dev, sums = _train_both(emulate, specs, "binary_crossentropy", ["categorical_accuracy"], opt, x, y, params,
                                 path, epochs=5, batch_size=32, dtype=np.float32)
    # float32 through differently rounded exp/log and sums: a few ulps per step.
    for c, d in sums:
        assert d["loss"] == pytest.approx(c["loss"], rel=1e-4)
    assert_close(dev.params_copy(), cpu.params_copy(), kind="grad", rtol=1e-3, atol=1e-5)


@pytest.mark.parametrize("emulate", TARGETS)
@pytest.mark.parametrize("loss, metrics, smoothing", [
    ("categorical_crossentropy", ["categorical_accuracy", "mean_absolute_error", "mean_squared_error"], 0.1),
    ("binary_crossentropy", ["binary_accuracy"], 0.2),
    ("sparse_categorical_crossentropy", ["sparse_categorical_accuracy"], 0.0),
])
def test_evaluate_and_label_smoothing_match_the_cpu_engine(emulate, loss, metrics, smoothing):
    out_act = "sigmoid" if loss == "binary_crossentropy" else "softmax"
    specs, x, y, params = _problem((6, 40, 12), out_act, loss, 1500, np.float64)
    cpu, dev = _cpu(specs, loss, metrics), _engine(emulate, specs, loss, metrics)
    for engine in (cpu, dev):
        engine.set_params(params)
        engine.set_loss_options(1.0, smoothing)
    c, d = cpu.evaluate(x, y, 100), dev.evaluate(x, y, 100)
    assert (d["samples"], d["steps_done"]) == (c["samples"], c["steps_done"]) == (1500, 15)
    assert_close(d["loss"], c["loss"], rtol=F64[emulate]["forward"], atol=0)
    assert d["metrics"] == pytest.approx(c["metrics"], rel=1e-9)


@pytest.mark.parametrize("emulate, path", PATHS)
def test_a_non_finite_loss_stops_where_the_cpu_engine_stops(emulate, path):
    specs, x, y, params = _problem((3, 8, 6), "linear", "mean_squared_error", 200, np.float64)
    opt = {"kind": "sgd", "learning_rate": 1e3}
    cpu, dev, sums = _train_both(emulate, specs, "mean_squared_error", [], opt, x, y, params, path, epochs=1,
                                 batch_size=5)
    c, d = sums[0]
    assert c["stop"] in ("nonfinite_loss", "nonfinite_weights")
    for key in ("stop", "steps_done", "bad_layer", "bad_part", "samples"):
        assert d[key] == c[key], key
    assert dev.iterations == cpu.iterations
    if c["stop"] == "nonfinite_loss":  # the weights stay those before the bad batch
        assert np.all(np.isfinite(dev.params_copy()))


@pytest.mark.parametrize("emulate", TARGETS)
def test_steps_run_in_slices_continue_the_epoch(emulate):
    specs, x, y, params = _problem((3, 40, 6), "softmax", "categorical_crossentropy", 95, np.float64)
    whole = _engine(emulate, specs, "categorical_crossentropy")
    sliced = _engine(emulate, specs, "categorical_crossentropy")
    for engine in (whole, sliced):
        engine.set_params(params)
        engine.begin_epoch(len(x), 10, True, 7, 0)
    a = whole.train_steps(x, y, 0)
    parts = [sliced.train_steps(x, y, 3)["steps_done"] for _ in range(4)]
    assert parts == [3, 6, 9, 10]
    b = sliced.train_steps(x, y, 3)
    assert b["steps_done"] == 10 and b["loss"] == pytest.approx(a["loss"], rel=1e-12)
    assert_close(sliced.params_copy(), whole.params_copy(), rtol=1e-12, atol=0)


# ---- through the model API ----

@pytest.fixture(params=TARGETS)
def cuda_models(request, monkeypatch):
    """compile(backend='cuda') builds the GPU engine, or its host emulation."""
    if request.param:
        monkeypatch.setattr(cuda_backend, "require", lambda: None)
        monkeypatch.setattr(cuda_backend, "CudaEngine", functools.partial(cuda_backend.CudaEngine, emulate=True))
    return request.param


def _seed_data(rng, n):
    x = rng.standard_normal((n, 2))
    return x, np.stack([(x[:, 0] * x[:, 1] > 0), (x[:, 0] * x[:, 1] <= 0)], axis=1).astype(float)


def _seed_model(backend):
    model = Sequential([Dense(4, activation="relu", input_dim=2), Dense(4, activation="relu"),
                        Dense(2, activation="softmax")])
    model.compile(loss="binary_crossentropy", optimizer=SGD(decay=0.001, momentum=0.99), metrics=["accuracy"],
                  backend=backend)
    return model


def test_the_seed_fit_learns_xor_as_on_the_cpu(cuda_models):
    rng = np.random.default_rng(3)
    x, y = _seed_data(rng, 10000)
    x_test, y_test = _seed_data(rng, 5000)
    histories, accuracies = {}, {}
    for backend in ("cpu", "cuda"):
        fastmlp.utils.set_random_seed(11)
        model = _seed_model(backend)
        histories[backend] = model.fit(x, y, epochs=200, batch_size=100, verbose=0).history
        pred = model.predict(x_test)
        assert pred.dtype == np.float32 and pred.shape == (5000, 2)
        accuracies[backend] = float((pred.argmax(1) == y_test.argmax(1)).mean())
    assert accuracies["cuda"] >= 0.95
    assert accuracies["cuda"] == pytest.approx(accuracies["cpu"], abs=0.02)
    # Same weights, same batches: the first epochs agree closely (float32 rounding then drifts).
    assert histories["cuda"]["loss"][:5] == pytest.approx(histories["cpu"]["loss"][:5], rel=1e-3)


def test_weights_and_optimizer_state_through_the_model(cuda_models):
    rng = np.random.default_rng(0)
    x, y = _seed_data(rng, 300)
    model = _seed_model("cuda")
    start = model.get_weights()
    kernel = model.layers[0].kernel
    model.fit(x, y, epochs=2, batch_size=50, verbose=0)
    trained = model.get_weights()
    assert not np.array_equal(trained[0], start[0])
    assert np.array_equal(kernel, trained[0])  # the layer's array is refreshed after every epoch
    assert model.optimizer.iterations == 12
    model.set_weights(start)
    assert all(np.array_equal(a, b) for a, b in zip(model.get_weights(), start))
    # Two models from the same weights and seed train to the same bits.
    results = []
    for _ in range(2):
        twin = _seed_model("cuda")
        twin.set_weights(start)
        fastmlp.utils.set_random_seed(5)
        twin.fit(x, y, epochs=2, batch_size=50, verbose=0)
        results.append(twin.get_weights())
    assert all(np.array_equal(a, b) for a, b in zip(*results))
    assert model.evaluate(x, y, verbose=0)[1] >= 0.0


def test_the_training_data_goes_to_the_device_once_per_fit(cuda_models):
    rng = np.random.default_rng(0)
    x, y = _seed_data(rng, 200)
    model = _seed_model("cuda")
    native = model._engine._native
    uploads = []

    class Counting:
        def __getattr__(self, name):
            return getattr(native, name)

        def set_train_data(self, *args):
            uploads.append(args[0].shape)
            native.set_train_data(*args)

    model._engine._native = Counting()
    model.fit(x, y, epochs=4, batch_size=50, verbose=0)
    assert len(uploads) == 1
    model.fit(x, y, epochs=2, batch_size=50, verbose=0)
    assert len(uploads) == 2  # a new fit uploads again: the arrays may have changed in between


def test_unsupported_settings_are_refused_clearly(cuda_models):
    model = Sequential([Dense(4, activation="relu", input_dim=2, kernel_regularizer=L2(0.01)),
                        Dense(2, activation="softmax")])
    with pytest.raises(NotImplementedError, match="regularizers are not supported on backend='cuda'"):
        model.compile(loss="categorical_crossentropy", optimizer="sgd", backend="cuda")
    model = Sequential([Dense(2, activation="softmax", input_dim=2)])
    with pytest.raises(NotImplementedError, match="clipnorm"):
        model.compile(loss="categorical_crossentropy", optimizer=Adam(clipnorm=1.0), backend="cuda")


def test_a_nan_loss_stops_training_as_on_the_cpu(cuda_models, capsys):
    from test_hardening import test_a_nan_loss_stops_training_names_the_layer_and_keeps_finite_weights as check

    check("cuda", capsys)


def test_on_nonfinite_raise(cuda_models):
    from test_hardening import test_on_nonfinite_raise as check

    check("cuda")


@pytest.fixture(scope="module")
def keras_goldens():
    from test_keras_parity import GOLDENS

    with np.load(GOLDENS) as data:
        return {k: data[k] for k in data.files}


def _keras_cases():
    from test_keras_parity import CASES

    return list(CASES)


@pytest.mark.parametrize("case", _keras_cases())
def test_keras_golden_trajectories(cuda_models, keras_goldens, case):
    from test_keras_parity import CASES, assert_scaled_close, n_weights, train_case

    model, history = train_case(keras_goldens, case, "cuda")
    assert_scaled_close(history.history["loss"], keras_goldens[f"{case}/losses"], err_msg=f"{case} losses")
    if CASES[case][4]:
        assert_scaled_close(history.history["accuracy"], keras_goldens[f"{case}/metric"], err_msg=f"{case} accuracy")
    for i, w in enumerate(model.get_weights()):
        assert i < n_weights(keras_goldens, case)
        assert_scaled_close(w, keras_goldens[f"{case}/final_w{i}"], err_msg=f"{case} final_w{i}")


@pytest.mark.parametrize("emulate", TARGETS)
def test_cpu_only_features_are_refused_clearly(emulate):
    base = (4, 3, "relu", True, 0.0, 0.0, 0.0, 0.0)
    with pytest.raises(NotImplementedError, match="Activation 'gelu'.*backend='cpu'"):
        _engine(emulate, [(4, 3, "gelu", True, 0.0, 0.0, 0.0, 0.0)], "mean_squared_error")
    with pytest.raises(NotImplementedError, match="Dropout"):
        _engine(emulate, [base + (0.5, 7)], "mean_squared_error")
    with pytest.raises(NotImplementedError, match="BatchNormalization"):
        _engine(emulate, [base + (0.0, 0, None, {"momentum": 0.9})], "mean_squared_error")
    engine = _engine(emulate, [base + (0.0, 0)], "mean_squared_error")
    x, y = np.ones((5, 4)), np.ones((5, 3))
    with pytest.raises(NotImplementedError, match="sample_weight"):
        engine.evaluate(x, y, 5, sample_weight=np.ones(5))
    with pytest.raises(NotImplementedError, match="weighted_metrics"):
        engine.set_weighted_metrics([True])
