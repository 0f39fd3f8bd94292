"""The native engine's whole-network gradients, on both of its paths (feature-major for tiny
networks, row-major with packed products otherwise): against the NumPy reference engine and
float64 central finite differences; and one SGD step against a hand-computed update."""

import numpy as np
import pytest

from conftest import assert_close, make_problem
from fastmlp import _core
from fastmlp.reference import ReferenceEngine

# (output activation, loss) pairs covering every fused and unfused output path.
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
# Hidden widths: (2, 4, 4) is the seed's narrow path; (20, 24, 17) exceeds the narrow limit of 16.
SHAPES = {"narrow": (2, 4, 4), "rowmajor": (20, 24, 17)}
HIDDEN = ("tanh", "sigmoid")  # smooth, so that finite differences apply everywhere


def _problem(shape, out_act, loss, n, dtype, seed=0):
    return make_problem(shape, out_act, loss, n, dtype, HIDDEN, seed=seed)


def _native(specs, loss, dtype):
    cls = _core.Engine64 if dtype == np.float64 else _core.Engine32
    return cls(specs, loss, [], {"learning_rate": 0.1})


@pytest.mark.parametrize("path", SHAPES)
@pytest.mark.parametrize("out_act, loss", OUTPUTS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_gradients_match_the_reference(path, out_act, loss, dtype):
    specs, x, y, params = _problem(SHAPES[path], out_act, loss, 37, dtype)
    native = _native(specs, loss, dtype)
    ref = ReferenceEngine(specs, loss, [], {"learning_rate": 0.1}, dtype=dtype)
    native.params[:] = params
    ref.params[:] = params
    loss_native = native.compute_gradients(x, y)
    loss_ref = ref.compute_gradients(x, y)
    # The loss sums are float64 accumulations of `dtype` values: compare at `dtype`'s tolerance.
    assert_close(np.asarray(loss_native, dtype), np.asarray(loss_ref, dtype), kind="forward")
    assert_close(native.grads, ref.grads, kind="grad")


@pytest.mark.parametrize("path", SHAPES)
@pytest.mark.parametrize("out_act, loss", OUTPUTS)
def test_gradients_match_float64_finite_differences(path, out_act, loss):
    specs, x, y, params = _problem(SHAPES[path], out_act, loss, 23, np.float64, seed=1)
    engine = _native(specs, loss, np.float64)
    engine.params[:] = params
    engine.compute_gradients(x, y)
    analytic = engine.grads.copy()
    n = len(x)
    h = 1e-6
    rng = np.random.default_rng(2)
    for i in rng.choice(len(params), size=min(40, len(params)), replace=False):
        p = params.copy()
        p[i] += h
        engine.params[:] = p
        up = engine.compute_gradients(x, y) / n
        p[i] -= 2 * h
        engine.params[:] = p
        down = engine.compute_gradients(x, y) / n
        # Central differences carry O(h^2) truncation and O(eps/h) rounding error: ~1e-9 here.
        assert abs((up - down) / (2 * h) - analytic[i]) <= 1e-7 + 1e-6 * abs(analytic[i]), i


@pytest.mark.parametrize("path", SHAPES)
@pytest.mark.parametrize("nesterov", [False, True])
def test_one_training_step_is_the_keras_update(path, nesterov):
    specs, x, y, params = _problem(SHAPES[path], "softmax", "categorical_crossentropy", 19, np.float64, seed=3)
    engine = _core.Engine64(specs, "categorical_crossentropy", [],
                            {"learning_rate": 0.05, "momentum": 0.9, "decay": 0.01, "nesterov": nesterov})
    engine.params[:] = params
    engine.compute_gradients(x, y)
    g = engine.grads.copy()
    engine.params[:] = params
    engine.iterations = 4
    engine.velocity[:] = 0.25
    engine.begin_epoch(len(x), len(x), False, 0, 0)
    engine.train_steps(x, y, 0)
    lr = 0.05 / (1 + 0.01 * 4)
    v = 0.9 * 0.25 - lr * g
    expected = params + (0.9 * v - lr * g if nesterov else v)
    assert_close(engine.velocity, v, kind="grad")
    assert_close(engine.params, expected, kind="grad")
    assert engine.iterations == 5



# Row-major layers for the SGD step fused into the backward: whole register tiles (64), edge tiles
# (37), a 3-class output whose weight gradient takes the transposed product, and K blocked when
# the batch (600) exceeds the products' K block.
SGD_SPECS = [(70, 64, "relu", True), (64, 37, "tanh", False), (37, 80, "relu", True), (80, 3, "softmax", True)]


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("batch", [100, 600])
@pytest.mark.parametrize("config", [{"momentum": 0.0}, {"momentum": 0.9},
                                    {"momentum": 0.9, "nesterov": True, "decay": 0.01}],
                         ids=["plain", "momentum", "nesterov"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_sgd_step_fused_into_the_backward_is_bitwise_the_separate_update(dtype, config, batch, threads):
    # train_steps applies plain/momentum SGD inside the backward, each weight as its gradient tile
    # is made (dense.hpp DenseSgd, gemm.hpp gemm_sgd); without the fused kernels it stores the
    # gradients and updates after: the same weights, velocities and losses, bit for bit.
    import fastmlp

    rng = np.random.default_rng(11)
    x = rng.standard_normal((1300, 70)).astype(dtype)
    y = np.eye(3, dtype=dtype)[rng.integers(0, 3, 1300)]
    cls = _core.Engine64 if dtype == np.float64 else _core.Engine32
    results = []
    before = fastmlp.get_num_threads()
    fastmlp.set_num_threads(threads)
    try:
        for fused in (True, False):
            engine = cls(SGD_SPECS, "categorical_crossentropy", [], {"learning_rate": 0.05, **config})
            engine._set_fused_kernels(fused)
            engine.params[:] = np.random.default_rng(12).standard_normal(len(engine.params)) * 0.2
            losses = []
            for epoch in range(2):
                engine.begin_epoch(len(x), batch, True, 3, epoch)
                losses.append(engine.train_steps(x, y, 0)["loss"])
            results.append((engine.params.copy(), engine.velocity.copy(), losses, engine.iterations))
    finally:
        fastmlp.set_num_threads(before)
    np.testing.assert_array_equal(results[0][0], results[1][0])
    np.testing.assert_array_equal(results[0][1], results[1][1])
    assert results[0][2:] == results[1][2:]


def test_sgd_step_fused_into_the_backward_stops_on_nonfinite_weights_as_the_separate_update():
    rng = np.random.default_rng(13)
    x = rng.standard_normal((200, 70)).astype(np.float32) * 1e3
    y = np.eye(3, dtype=np.float32)[rng.integers(0, 3, 200)]
    results = []
    for fused in (True, False):
        engine = _core.Engine32(SGD_SPECS, "categorical_crossentropy", [], {"learning_rate": 1e36, "momentum": 0.5})
        engine._set_fused_kernels(fused)
        engine.params[:] = np.random.default_rng(14).standard_normal(len(engine.params)) * 0.2
        engine.begin_epoch(len(x), 50, False, 0, 0)
        sums = engine.train_steps(x, y, 0)
        results.append((engine.params.copy(), sums["stop"], sums["steps_done"], sums["bad_layer"], engine.iterations))
    assert results[0][1] == "nonfinite_weights"
    np.testing.assert_array_equal(results[0][0], results[1][0])
    assert results[0][1:] == results[1][1:]

# Every output stage narrow_output_fused takes (narrow.hpp narrow_output_fusable).
FUSED_OUTPUTS = [
    ("softmax", "binary_crossentropy"),
    ("sigmoid", "binary_crossentropy"),
    ("linear", "binary_crossentropy"),
    ("softmax", "mean_squared_error"),
    ("sigmoid", "mean_squared_error"),
    ("linear", "mean_squared_error"),
    ("softmax", "categorical_crossentropy"),
    ("softmax", "sparse_categorical_crossentropy"),
]


@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
@pytest.mark.parametrize("targets", ["hard", "soft", "smoothed"])
@pytest.mark.parametrize("classes", [1, 2, 3])  # 2: the softmax's one-exp form; 1 and 2: compile-time cases
@pytest.mark.parametrize("out_act, loss", FUSED_OUTPUTS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_fused_output_stage_is_bitwise_its_layerwise_twin(dtype, out_act, loss, classes, targets, weighted):
    # Three epochs of shuffled batches (the last one partial, so padding lanes are exercised),
    # on the narrow path with the fused output stage, the record gathers and the side-by-side lane
    # trees (float32 on AVX2), and without them:
    # the same bits throughout.
    if loss.startswith("sparse") and targets != "hard":
        pytest.skip("class ids are hard targets, and Keras refuses label smoothing with them")
    if classes == 1 and out_act != "sigmoid":
        pytest.skip("one output: the sigmoid's case (narrow.hpp FixedOutputCase)")
    specs, x, y, params = make_problem(SHAPES["narrow"], out_act, loss, 45, dtype, HIDDEN, seed=4, classes=classes)
    specs = [(i, o, "relu" if a != out_act else a, b) for i, o, a, b in specs[:-1]] + [specs[-1]]
    rng = np.random.default_rng(5)
    if targets == "soft" and loss != "mean_squared_error":
        y = rng.dirichlet(np.ones(y.shape[1]), len(y)).astype(dtype) if out_act == "softmax" \
            else rng.random(y.shape).astype(dtype)
    if out_act == "linear" and loss == "binary_crossentropy":
        x = x * dtype(0.1)  # keeps the linear outputs inside (0, 1) often enough to leave the clip
    sw = rng.random(len(x)).astype(dtype) + dtype(0.5) if weighted else None
    results = []
    for fused in (True, False):
        engine = _native(specs, loss, dtype)
        engine._set_fused_kernels(fused)
        if targets == "smoothed" and loss != "mean_squared_error":
            engine.set_loss_options(1.0, 0.1)
        engine.params[:] = params
        sums = []
        for epoch in range(3):
            engine.begin_epoch(len(x), 16, True, 7, epoch)
            sums.append(engine.train_steps(x, y, 0, sample_weight=sw)["loss"])
        results.append((engine.params.copy(), sums))
    np.testing.assert_array_equal(results[0][0], results[1][0])
    assert results[0][1] == results[1][1]


# The shapes narrow_net3_fused is compiled for (narrow.hpp narrow_net3_kernel): 1 to 4 inputs,
# both hidden layers 4 or 8 wide; and one beside them that takes the layer by layer kernels.
NET3_SHAPES = [(2, 4, 4), (1, 4, 4), (3, 8, 8), (4, 8, 8), (2, 4, 8)]


@pytest.mark.parametrize("isa", _core.supported_isas())
@pytest.mark.parametrize("batch", [100, 16, 7])
@pytest.mark.parametrize("shape", NET3_SHAPES)
@pytest.mark.parametrize("out_act, classes", [("softmax", 2), ("sigmoid", 1)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_whole_network_kernel_is_bitwise_its_layerwise_twin(dtype, out_act, classes, shape, batch, isa):
    # The seed's network (relu, relu, softmax pair, biases everywhere, binary cross-entropy on 0/1
    # targets) and its kin run their whole step in narrow_net3_fused when the fused kernels are on:
    # against the layer by layer kernels, the same weights, losses and accuracy sums, bit for bit,
    # over three shuffled epochs with a partial last batch (padding lanes) and, at batch 7, a batch
    # smaller than one lane vector; on every instruction set this CPU runs (their lane widths and
    # partial-sum layouts differ).
    specs, x, y, params = make_problem(shape, out_act, "binary_crossentropy", 203, dtype, HIDDEN, seed=11,
                                       classes=classes)
    specs = [(i, o, "relu" if n < 2 else a, True) for n, (i, o, a, _b) in enumerate(specs)]
    size = sum(i * o + o for i, o, _a, _b in specs)
    params = (np.random.default_rng(12).standard_normal(size) * 0.5).astype(dtype)
    results = []
    for fused in (True, False):
        cls = _core.Engine64 if dtype == np.float64 else _core.Engine32
        engine = cls(specs, "binary_crossentropy", ["binary_accuracy"],
                     {"learning_rate": 0.05, "momentum": 0.9, "decay": 0.001}, isa=isa)
        assert engine.isa == isa
        engine._set_fused_kernels(fused)
        engine.params[:] = params
        sums = []
        for epoch in range(3):
            engine.begin_epoch(len(x), batch, True, 7, epoch)
            out = engine.train_steps(x, y, 0)
            sums.append((out["loss"], out["metrics"][0]))
        results.append((engine.params.copy(), sums))
    np.testing.assert_array_equal(results[0][0], results[1][0])
    assert results[0][1] == results[1][1]
    assert not np.array_equal(results[0][0], params)  # it learned


def test_narrow_epochs_read_the_data_as_it_is_when_they_begin():
    # The narrow path copies the rows at an epoch's first train_steps: an array changed in place
    # between epochs is seen by the next one, exactly as the direct gathers see it.
    specs, x, y, params = _problem(SHAPES["narrow"], "softmax", "binary_crossentropy", 40, np.float32, seed=6)
    results = []
    for fused in (True, False):
        engine = _native(specs, "binary_crossentropy", np.float32)
        engine._set_fused_kernels(fused)
        engine.params[:] = params
        xs, ys = x.copy(), y.copy()
        for epoch in range(3):
            engine.begin_epoch(len(xs), 8, True, 1, epoch)
            engine.train_steps(xs, ys, 0)
            xs *= np.float32(1.5)
            ys[:] = ys[::-1]
        results.append(engine.params.copy())
    np.testing.assert_array_equal(results[0], results[1])


@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
@pytest.mark.parametrize("metric, loss", [("categorical_accuracy", "categorical_crossentropy"),
                                          ("sparse_categorical_accuracy", "sparse_categorical_crossentropy"),
                                          ("binary_accuracy", "binary_crossentropy")])
def test_narrow_accuracy_sums_are_the_references_with_ties(metric, loss, weighted):
    # The narrow path's accuracies (a lane vector at a time for the categorical ones) against the
    # reference engine's, with tied outputs (classes 0 and 1 get the same column of weights, so the
    # same probability: the first must win) and tied soft targets; no learning (learning rate 0),
    # so every epoch sees the same outputs. 45 samples in batches of 16: a partial last batch.
    out_act = "sigmoid" if metric == "binary_accuracy" else "softmax"
    specs, x, y, params = make_problem(SHAPES["narrow"], out_act, loss, 45, np.float32, ("relu", "relu"), seed=8,
                                       classes=4)
    w_last = params[-(4 * 4 + 4):-4].reshape(4, 4)  # the last layer's (4, 4) kernel, then its bias
    w_last[:, 1] = w_last[:, 0]
    params[-3] = params[-4]
    rng = np.random.default_rng(9)
    if metric == "categorical_accuracy":
        y[::3] = np.array([0.5, 0.5, 0, 0], np.float32)  # tied targets: class 0 is the truth
    sw = (rng.random(len(x)) + 0.5).astype(np.float32) if weighted else None
    sums = []
    for engine in (_core.Engine32(specs, loss, [metric], {"learning_rate": 0.0}),
                   ReferenceEngine(specs, loss, [metric], {"learning_rate": 0.0}, dtype=np.float32)):
        engine.params[:] = params
        engine.begin_epoch(len(x), 16, True, 3, 0)
        sums.append(engine.train_steps(x, y, 0, sample_weight=sw)["metrics"][0])
    assert sums[0] == pytest.approx(sums[1], rel=1e-12, abs=0)
    assert 0 < sums[0] < (sw.sum() if weighted else len(x))
