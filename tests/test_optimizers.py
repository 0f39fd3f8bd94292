"""Optimizers: one hand-computed step of each Keras 3 rule, 10-step trajectories of the native
engine against the NumPy reference, names, settings and errors."""

import numpy as np
import pytest

from conftest import assert_close
from fastmlp import _core, optimizers
from fastmlp.optimizers import schedules
from fastmlp.reference import ReferenceEngine

SPECS = [(5, 7, "tanh", True), (7, 3, "softmax", True)]
SIZE = 5 * 7 + 7 + 7 * 3 + 3

CONFIGS = {
    "sgd": {"kind": "sgd", "learning_rate": 0.05, "momentum": 0.9, "decay": 0.01},
    "nesterov": {"kind": "sgd", "learning_rate": 0.05, "momentum": 0.9, "nesterov": True},
    "adam": {"kind": "adam", "learning_rate": 0.01, "beta_1": 0.8, "beta_2": 0.99, "epsilon": 1e-7},
    "adamw": {"kind": "adam", "learning_rate": 0.01, "weight_decay": 0.004},
    "rmsprop": {"kind": "rmsprop", "learning_rate": 0.005, "rho": 0.9, "epsilon": 1e-7},
    "rmsprop_momentum": {"kind": "rmsprop", "learning_rate": 0.005, "rho": 0.8, "momentum": 0.5},
    "adagrad": {"kind": "adagrad", "learning_rate": 0.05, "initial_accumulator": 0.1, "epsilon": 1e-7},
}


def _problem(seed=0, n=24):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 5))
    y = np.eye(3)[rng.integers(0, 3, n)]
    return x, y, rng.standard_normal(SIZE) * 0.5


def _expected_step(config, w, g, s1, s2, t):
    """The Keras 3 formulas, written out in float64 (t = updates already applied)."""
    c = {"momentum": 0.0, "nesterov": False, "decay": 0.0, "beta_1": 0.9, "beta_2": 0.999, "epsilon": 1e-7,
         "rho": 0.9, "weight_decay": 0.0, **config}
    lr = c["learning_rate"] / (1 + c["decay"] * t)
    w = w - w * c["weight_decay"] * lr
    if c["kind"] == "sgd":
        v = c["momentum"] * s1 - lr * g
        return w + (c["momentum"] * v - lr * g if c["nesterov"] else v)
    if c["kind"] == "adam":
        b1, b2 = c["beta_1"], c["beta_2"]
        m = s1 + (g - s1) * (1 - b1)
        v = s2 + (g * g - s2) * (1 - b2)
        alpha = lr * np.sqrt(1 - b2 ** (t + 1)) / (1 - b1 ** (t + 1))
        return w - alpha * m / (np.sqrt(v) + c["epsilon"])
    if c["kind"] == "rmsprop":
        a = c["rho"] * s1 + (1 - c["rho"]) * g * g
        inc = lr * g / np.sqrt(a + c["epsilon"])
        return w - (c["momentum"] * s2 + inc if c["momentum"] > 0 else inc)
    a = s1 + g * g
    return w - lr * g / np.sqrt(a + c["epsilon"])


@pytest.mark.parametrize("name", CONFIGS)
def test_one_step_is_the_keras_formula(name):
    config = CONFIGS[name]
    x, y, w0 = _problem()
    engine = _core.Engine64(SPECS, "categorical_crossentropy", [], config)
    engine.params[:] = w0
    engine.compute_gradients(x, y)
    g = engine.grads.copy()
    # Start from non-trivial optimizer state, 3 updates in.
    s1 = np.abs(np.random.default_rng(1).standard_normal(SIZE)) * 0.01
    s2 = np.abs(np.random.default_rng(2).standard_normal(SIZE)) * 0.01
    engine.params[:] = w0
    engine.velocity[:] = s1
    if len(engine.second):
        engine.second[:] = s2
    engine.iterations = 3
    engine.begin_epoch(len(x), len(x), False, 0, 0)
    engine.train_steps(x, y, 0)
    assert_close(engine.params, _expected_step(config, w0, g, s1, s2, 3), kind="grad")


# Clipping and schedules, checked as trajectories against the reference.
TRAJECTORY_CONFIGS = {
    **CONFIGS,
    "sgd_clipnorm": {"kind": "sgd", "learning_rate": 0.5, "momentum": 0.5, "clipnorm": 0.05},
    "adam_global_clipnorm": {"kind": "adam", "learning_rate": 0.01, "global_clipnorm": 0.05},
    "rmsprop_clipvalue": {"kind": "rmsprop", "learning_rate": 0.01, "clipvalue": 0.002},
    "sgd_exponential": {"kind": "sgd", "learning_rate": 0.0, "schedule": "exponential", "initial": 0.2,
                        "decay_steps": 3, "decay_rate": 0.5, "staircase": True},
    "sgd_inverse_time": {"kind": "sgd", "learning_rate": 0.0, "schedule": "inverse_time", "initial": 0.2,
                         "decay_steps": 2, "decay_rate": 0.3},
    "adam_piecewise": {"kind": "adam", "learning_rate": 0.0, "schedule": "piecewise", "boundaries": [2, 5],
                       "values": [0.02, 0.01, 0.001]},
    "sgd_cosine": {"kind": "sgd", "learning_rate": 0.0, "schedule": "cosine", "initial": 0.2, "decay_steps": 7,
                   "alpha": 0.1},
}


@pytest.mark.parametrize("name", TRAJECTORY_CONFIGS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_ten_steps_match_the_reference(name, dtype):
    x, y, w0 = _problem(seed=3, n=40)
    config = TRAJECTORY_CONFIGS[name]
    native = (_core.Engine64 if dtype == np.float64 else _core.Engine32)(SPECS, "categorical_crossentropy", [],
                                                                        config)
    ref = ReferenceEngine(SPECS, "categorical_crossentropy", [], config, dtype=dtype)
    for engine in (native, ref):
        engine.params[:] = w0
        engine.begin_epoch(len(x), 4, True, 11, 0)
        engine.train_steps(x.astype(dtype), y.astype(dtype), 0)
        assert engine.iterations == 10
    # float32: ten steps of differently ordered sums (see conftest); float64: the same maths.
    assert_close(native.params, ref.params, kind="grad", rtol=1e-4 if dtype == np.float32 else None)


def test_adagrad_accumulator_starts_at_its_initial_value():
    engine = _core.Engine32(SPECS, "categorical_crossentropy", [], {"kind": "adagrad", "initial_accumulator": 0.25})
    assert np.all(engine.velocity == np.float32(0.25)) and len(engine.second) == 0


@pytest.mark.parametrize(
    "name, cls", [("sgd", optimizers.SGD), ("adam", optimizers.Adam), ("adamw", optimizers.AdamW),
                  ("rmsprop", optimizers.RMSprop), ("adagrad", optimizers.Adagrad), ("Adam", optimizers.Adam)])
def test_names_resolve_to_keras_defaults(name, cls):
    opt = optimizers.get(name)
    assert type(opt) is cls
    defaults = {"sgd": 0.01, "adam": 0.001, "adamw": 0.001, "rmsprop": 0.001, "adagrad": 0.001}
    assert opt.learning_rate == defaults[name.lower()]
    assert opt.get_config()["learning_rate"] == opt.learning_rate


@pytest.mark.parametrize(
    "make, error, match",
    [
        (lambda: optimizers.Adam(beta_1=1.0), ValueError, "beta_1"),
        (lambda: optimizers.Adam(epsilon=0), ValueError, "epsilon"),
        (lambda: optimizers.Adam(amsgrad=True), ValueError, "amsgrad"),
        (lambda: optimizers.RMSprop(rho=-0.1), ValueError, "rho"),
        (lambda: optimizers.RMSprop(centered=True), ValueError, "centered"),
        (lambda: optimizers.Adagrad(initial_accumulator_value=-1), ValueError, "initial_accumulator_value"),
        (lambda: optimizers.AdamW(weight_decay=-0.1), ValueError, "weight_decay"),
        (lambda: optimizers.Adam(foo=1), TypeError, "foo"),
        (lambda: optimizers.get("adamax"), ValueError, "adam, adamw, rmsprop, adagrad"),
    ],
    ids=["beta_1", "epsilon", "amsgrad", "rho", "centered", "accumulator", "weight_decay", "kwarg", "name"],
)
def test_bad_optimizer_arguments(make, error, match):
    with pytest.raises(error, match=match):
        make()


def test_clipnorm_step_is_the_keras_formula():
    x, y, w0 = _problem()
    config = {"kind": "sgd", "learning_rate": 0.5, "clipnorm": 0.01}
    engine = _core.Engine64(SPECS, "categorical_crossentropy", [], config)
    engine.params[:] = w0
    engine.compute_gradients(x, y)
    expected = w0.copy()
    g = engine.grads.copy()
    offsets = np.cumsum([0, 35, 7, 21, 3])
    for a, b in zip(offsets[:-1], offsets[1:]):
        norm = np.sqrt(np.sum(g[a:b] ** 2))
        expected[a:b] -= 0.5 * g[a:b] * 0.01 / max(norm, 0.01)
    engine.params[:] = w0
    engine.begin_epoch(len(x), len(x), False, 0, 0)
    engine.train_steps(x, y, 0)
    assert_close(engine.params, expected, kind="grad")


@pytest.mark.parametrize(
    "schedule, expected",
    [
        (schedules.ExponentialDecay(0.1, 10, 0.5), lambda t: 0.1 * 0.5 ** (t / 10)),
        (schedules.ExponentialDecay(0.1, 10, 0.5, staircase=True), lambda t: 0.1 * 0.5 ** (t // 10)),
        (schedules.InverseTimeDecay(0.1, 1, 0.001), lambda t: 0.1 / (1 + 0.001 * t)),
        (schedules.PiecewiseConstantDecay([10, 20], [1.0, 0.5, 0.1]),
         lambda t: 1.0 if t <= 10 else (0.5 if t <= 20 else 0.1)),
        (schedules.CosineDecay(0.1, 30, alpha=0.2),
         lambda t: 0.1 * (0.8 * 0.5 * (1 + np.cos(np.pi * min(t, 30) / 30)) + 0.2)),
    ],
    ids=["exponential", "staircase", "inverse_time", "piecewise", "cosine"],
)
def test_schedules_are_keras_formulas(schedule, expected):
    for t in (0, 1, 9, 10, 11, 20, 21, 29, 30, 45):
        assert schedule(t) == pytest.approx(expected(t), rel=1e-6)


def test_a_schedule_drives_native_training():
    x, y, w0 = _problem()
    from fastmlp.layers import Dense
    from fastmlp.models import Sequential

    model = Sequential([Dense(7, activation="tanh", input_dim=5), Dense(3, activation="softmax")])
    opt = optimizers.SGD(learning_rate=schedules.PiecewiseConstantDecay([2], [0.1, 0.0]))
    model.compile(loss="categorical_crossentropy", optimizer=opt)
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)  # 3 updates: steps 0, 1, 2 have rate 0.1
    after_three = model.get_weights()
    model.fit(x, y, batch_size=8, epochs=2, verbose=0)  # rate 0 from step 3 on
    for a, b in zip(model.get_weights(), after_three):
        assert np.array_equal(a, b)
    model.optimizer.learning_rate = 0.05  # a constant again, live
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    assert not np.array_equal(model.get_weights()[0], after_three[0])


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: optimizers.SGD(clipnorm=1.0, clipvalue=1.0), "Only one of"),
        (lambda: optimizers.Adam(clipnorm=0), "clipnorm"),
        (lambda: schedules.PiecewiseConstantDecay([1, 2], [0.1]), "1 less"),
        (lambda: schedules.ExponentialDecay(0.1, 0, 0.5), "decay_steps"),
        (lambda: schedules.CosineDecay(0.1, 10, warmup_steps=5), "warmup"),
    ],
    ids=["two_clips", "clipnorm_0", "piecewise_lengths", "decay_steps_0", "cosine_warmup"],
)
def test_bad_clipping_and_schedule_arguments(make, match):
    with pytest.raises(ValueError, match=match):
        make()
