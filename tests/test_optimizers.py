"""Optimizers: one hand-computed step of each Keras 3 rule, 10-step trajectories of the native
engine against the NumPy reference, names, settings and errors."""

import numpy as np
import pytest

from conftest import assert_close
from fastmlp import _core, optimizers
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


@pytest.mark.parametrize("name", CONFIGS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_ten_steps_match_the_reference(name, dtype):
    x, y, w0 = _problem(seed=3, n=40)
    native = (_core.Engine64 if dtype == np.float64 else _core.Engine32)(SPECS, "categorical_crossentropy", [],
                                                                        CONFIGS[name])
    ref = ReferenceEngine(SPECS, "categorical_crossentropy", [], CONFIGS[name], dtype=dtype)
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
