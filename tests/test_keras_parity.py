"""Parity with real Keras: 5-epoch trajectories recorded by Keras 3.15.1 (torch backend).

The goldens come from tests/fixtures/make_keras_goldens.py (its docstring lists the cases and
keys). Each case is rebuilt here with fastmlp, given Keras's initial weights, trained with
shuffle=False, and its per-epoch losses, accuracy and final weights are compared with Keras's.
Every case is tested: SGD (momentum, Nesterov, decay), Adam and RMSprop.
"""

import os

import numpy as np
import pytest
import conftest

from fastmlp.layers import Dense, Input
from fastmlp.models import Sequential
from fastmlp.optimizers import SGD, Adam, RMSprop

GOLDENS = os.path.join(os.path.dirname(__file__), "fixtures", "keras_goldens.npz")

# The acceptance tolerance: 2e-5 relative to the scale (max |value|) of each compared array,
# not elementwise, because a few biases end near zero where an elementwise rtol means nothing.
REL_TO_SCALE = 2e-5

# name -> (input_dim, [(units, activation)], optimizer factory, loss, has accuracy)
CASES = {
    # Keras 2's SGD(decay=...) is what Keras 3's InverseTimeDecay(0.01, decay_steps=1, decay_rate=0.001)
    # reproduces; fastmlp spells it the seed's way.
    "seed": (
        2,
        [(4, "relu"), (4, "relu"), (2, "softmax")],
        lambda: SGD(learning_rate=0.01, decay=0.001, momentum=0.99),
        "binary_crossentropy",
        True,
    ),
    "seed_nodecay": (
        2,
        [(4, "relu"), (4, "relu"), (2, "softmax")],
        lambda: SGD(learning_rate=0.01, momentum=0.9),
        "categorical_crossentropy",
        True,
    ),
    "nesterov_mse": (
        3,
        [(8, "tanh"), (1, None)],
        lambda: SGD(learning_rate=0.01, momentum=0.9, nesterov=True),
        "mse",
        False,
    ),
    "sigmoid_bce": (
        4,
        [(6, "relu"), (1, "sigmoid")],
        lambda: SGD(learning_rate=0.05, momentum=0.5),
        "binary_crossentropy",
        True,
    ),
    "adam_cce": (
        5,
        [(16, "tanh"), (8, "sigmoid"), (3, "softmax")],
        lambda: Adam(learning_rate=0.01),
        "categorical_crossentropy",
        True,
    ),
    "rmsprop_sparse": (
        4,
        [(12, "relu"), (3, "softmax")],
        lambda: RMSprop(learning_rate=0.005),
        "sparse_categorical_crossentropy",
        True,
    ),
}


@pytest.fixture(scope="module")
def goldens():
    with np.load(GOLDENS) as data:
        return {k: data[k] for k in data.files}


def assert_scaled_close(actual, expected, err_msg=""):
    conftest.assert_scaled_close(actual, expected, REL_TO_SCALE, err_msg)


def n_weights(goldens, case):
    return sum(1 for k in goldens if k.startswith(f"{case}/w"))


def train_case(goldens, case, backend):
    input_dim, layers, make_optimizer, loss, has_metric = CASES[case]
    model = Sequential([Input(shape=(input_dim,))] + [Dense(units, activation=act) for units, act in layers])
    model.set_weights([goldens[f"{case}/w{i}"] for i in range(n_weights(goldens, case))])
    model.compile(
        optimizer=make_optimizer(), loss=loss, metrics=["accuracy"] if has_metric else None, backend=backend
    )
    history = model.fit(
        goldens[f"{case}/x"],
        goldens[f"{case}/y"],
        epochs=5,
        batch_size=int(goldens[f"{case}/batch_size"]),
        shuffle=False,
        verbose=0,
    )
    return model, history


def test_goldens_come_from_keras_3(goldens):
    assert str(goldens["keras_version"]).startswith("3.")
    assert str(goldens["backend"]) == "torch"


@pytest.mark.parametrize("backend", ["cpu", "numpy"])
@pytest.mark.parametrize("case", list(CASES))
def test_trajectory_matches_keras(goldens, case, backend):
    model, history = train_case(goldens, case, backend)
    has_metric = CASES[case][4]

    assert history.epoch == [0, 1, 2, 3, 4]
    assert_scaled_close(history.history["loss"], goldens[f"{case}/losses"], err_msg=f"{case} losses")
    if has_metric:
        assert_scaled_close(history.history["accuracy"], goldens[f"{case}/metric"], err_msg=f"{case} accuracy")
    else:
        assert set(history.history) == {"loss"}
    final = model.get_weights()
    assert len(final) == n_weights(goldens, case)
    for i, w in enumerate(final):
        assert w.dtype == np.float32
        assert_scaled_close(w, goldens[f"{case}/final_w{i}"], err_msg=f"{case} final_w{i}")


@pytest.mark.parametrize("backend", ["cpu", "numpy"])
def test_seed_predictions_match_keras(goldens, backend):
    model, _ = train_case(goldens, "seed", backend)
    pred = model.predict(goldens["seed/x"][:100])
    assert pred.dtype == np.float32
    assert_scaled_close(pred, goldens["seed/pred"], err_msg="seed predictions after training")
