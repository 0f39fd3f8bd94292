"""Initializers: Keras 3's distributions (checked by their statistics on large draws), names and seeds."""

import numpy as np
import pytest

import fastmlp
from fastmlp import initializers
from fastmlp.layers import Dense

FAN_IN, FAN_OUT = 500, 300
CASES = {
    # name: (expected std, bound on |w| or None, truncated normal?)
    "glorot_uniform": (np.sqrt(2 / (FAN_IN + FAN_OUT)), np.sqrt(6 / (FAN_IN + FAN_OUT)), False),
    "glorot_normal": (np.sqrt(2 / (FAN_IN + FAN_OUT)), 2 * np.sqrt(2 / (FAN_IN + FAN_OUT)) / 0.8796256610, True),
    "he_uniform": (np.sqrt(2 / FAN_IN), np.sqrt(6 / FAN_IN), False),
    "he_normal": (np.sqrt(2 / FAN_IN), 2 * np.sqrt(2 / FAN_IN) / 0.8796256610, True),
    "lecun_uniform": (np.sqrt(1 / FAN_IN), np.sqrt(3 / FAN_IN), False),
    "lecun_normal": (np.sqrt(1 / FAN_IN), 2 * np.sqrt(1 / FAN_IN) / 0.8796256610, True),
    "random_uniform": (0.1 / np.sqrt(12), 0.05, False),
    "random_normal": (0.05, None, False),
    "truncated_normal": (0.05 * 0.8796256610, 0.1, True),
}


@pytest.mark.parametrize("name", CASES)
def test_distribution_statistics(name):
    std, bound, _ = CASES[name]
    w = initializers.get(name)((FAN_IN, FAN_OUT))
    assert w.shape == (FAN_IN, FAN_OUT) and w.dtype == np.float32
    assert abs(w.mean()) < 0.01 * std * 10
    assert w.std() == pytest.approx(std, rel=0.02)
    if bound is not None:
        assert np.abs(w).max() <= bound * (1 + 1e-6)


def test_constant_zeros_ones_and_seeds():
    assert np.all(initializers.Constant(2.5)((3, 2)) == 2.5)
    assert np.all(initializers.get("zeros")((4,)) == 0) and np.all(initializers.get("ones")((4,)) == 1)
    a = initializers.HeNormal(seed=7)((5, 5))
    assert np.array_equal(a, initializers.HeNormal(seed=7)((5, 5)))
    fastmlp.utils.set_random_seed(3)
    b = initializers.get("lecun_uniform")((5, 5))
    fastmlp.utils.set_random_seed(3)
    assert np.array_equal(b, initializers.get("lecun_uniform")((5, 5)))


def test_dense_takes_initializers_by_name_class_and_instance():
    for init in ("he_uniform", initializers.HeUniform, initializers.HeUniform(seed=1),
                 initializers.RandomNormal(stddev=0.1)):
        layer = Dense(4, kernel_initializer=init, bias_initializer=initializers.Constant(0.5), input_dim=3)
        from fastmlp.models import Sequential

        model = Sequential([layer])
        kernel, bias = model.get_weights()
        assert kernel.shape == (3, 4) and np.all(bias == 0.5)


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: initializers.get("orthogonal_ish"), "Unknown initializer"),
        (lambda: initializers.VarianceScaling(mode="fan_sideways"), "mode"),
        (lambda: initializers.VarianceScaling(distribution="cauchy"), "distribution"),
        (lambda: initializers.HeNormal(seed=-1), "seed"),
    ],
)
def test_bad_initializer_arguments(make, match):
    with pytest.raises(ValueError, match=match):
        make()
