"""Flatten and Activation layers around Dense."""

import numpy as np
import pytest

import fastmlp
from fastmlp.layers import Activation, Dense, Flatten, Input
from fastmlp.models import Sequential


def _images(n=120, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 4, 3)).astype(np.float32)
    y = (x[:, 0, 0] + x[:, 3, 2] > 0).astype(int)
    return x, y


@pytest.mark.parametrize("front", ["input", "flatten_shape"])
def test_flatten_feeds_images_to_dense(front):
    x, y = _images()
    layers = [Input(shape=(4, 3)), Flatten()] if front == "input" else [Flatten(input_shape=(4, 3))]
    fastmlp.utils.set_random_seed(0)
    model = Sequential(layers + [Dense(8, activation="relu"), Dense(2, activation="softmax")])
    assert [type(layer).__name__ for layer in model.layers] == ["Flatten", "Dense", "Dense"]
    model.compile(loss="sparse_categorical_crossentropy", optimizer="adam", metrics=["accuracy"])
    model.fit(x, y, epochs=2, verbose=0)
    flat = Sequential([Dense(8, activation="relu", input_dim=12), Dense(2, activation="softmax")])
    flat.set_weights(model.get_weights())
    assert np.array_equal(model.predict(x), flat.predict(x.reshape(len(x), 12)))
    with pytest.raises(ValueError, match=r"shape \(samples, 4, 3\)"):
        model.predict(x.reshape(len(x), 12))


def test_activation_is_fused_into_the_linear_dense_before_it():
    x, y = _images()
    x = x.reshape(len(x), 12)
    fastmlp.utils.set_random_seed(1)
    separate = Sequential([Dense(8, input_dim=12), Activation("tanh"), Dense(2), Activation("softmax")])
    fastmlp.utils.set_random_seed(1)
    fused = Sequential([Dense(8, activation="tanh", input_dim=12), Dense(2, activation="softmax")])
    for model in (separate, fused):
        model.compile(loss="sparse_categorical_crossentropy", optimizer="sgd")
        model.fit(x, y, epochs=2, batch_size=16, shuffle=False, verbose=0)
    for a, b in zip(separate.get_weights(), fused.get_weights()):
        assert np.array_equal(a, b)
    assert [type(layer).__name__ for layer in separate.layers] == ["Dense", "Activation", "Dense", "Activation"]
    lines = []
    separate.summary(print_fn=lines.append)
    assert any("(Activation)" in line and "(None, 8)" in line for line in lines)


@pytest.mark.parametrize(
    "build, match",
    [
        (lambda: Sequential([Input(shape=(4, 3)), Dense(2)]), "add Flatten"),
        (lambda: Sequential([Dense(2, input_dim=3), Flatten()]), "Flatten must come first"),
        (lambda: Sequential([Dense(2, activation="relu", input_dim=3), Activation("tanh")]), "without an activation"),
        (lambda: Sequential([Activation("relu")]), "must follow a Dense"),
        (lambda: Activation("swirl"), "Unknown activation"),
        (lambda: Flatten(data_format="channels_first"), "channels_last"),
    ],
    ids=["input_needs_flatten", "flatten_late", "activation_after_nonlinear", "activation_first", "unknown",
         "channels_first"],
)
def test_layer_misuse_is_explained(build, match):
    with pytest.raises(ValueError, match=match):
        build()
