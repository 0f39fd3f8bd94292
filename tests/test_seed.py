"""The seed tutorial (shared/seed/neural_networks.md) runs unchanged on fastmlp, reproducibly.

(a) the tutorial's code, with only `keras` replaced by `fastmlp` in its three import lines, learns
XOR; (b) a seed fixes everything: weights, shuffling, history; (c) the native engine and the NumPy
reference follow the same shuffled trajectory from the same seed.
"""

import numpy
import numpy as np
import pytest
from conftest import assert_close

import fastmlp
from fastmlp.layers import Dense
from fastmlp.models import Sequential
from fastmlp.optimizers import SGD

# The tutorial's code cells (In [3] to In [16]) as written, keras -> fastmlp in the imports only.
# Its notebook imported numpy and matplotlib.pyplot as plt in cells it does not show; the test
# provides both names (plt as a recorder: matplotlib is not a dependency).
SEED_TUTORIAL = """
from fastmlp.models import Sequential
from fastmlp.layers.core import Dense
import fastmlp.optimizers

model = Sequential()
model.add(Dense(4, activation='relu', input_dim=2))
model.add(Dense(4, activation='relu'))
model.add(Dense(2, activation='softmax'))

optimizer = fastmlp.optimizers.SGD(decay=0.001, momentum=0.99)

model.compile(loss='binary_crossentropy', optimizer=optimizer)

X_train = numpy.random.randn(10000, 2)
print(X_train.shape)

print(X_train[:5])

y_train = numpy.array([
    [float(x[0]*x[1] > 0), float(x[0]*x[1] <= 0)]
    for x in X_train
])
print(y_train.shape)

y_train[:5]

results = model.fit(X_train, y_train, epochs=200, batch_size=100)

plt.plot(results.history['loss'])

X_test = numpy.random.randn(5000, 2)

y_test = model.predict(X_test)

y_test.shape
"""


class _PlotRecorder:
    """Stands in for matplotlib.pyplot: records what the tutorial plots."""

    def __init__(self):
        self.plotted = []

    def plot(self, *args, **kwargs):
        self.plotted.append(args)


def run_tutorial(seed):
    # set_random_seed seeds numpy.random (the tutorial's data) and fastmlp's generator (weights, shuffling).
    fastmlp.utils.set_random_seed(seed)
    namespace = {"numpy": numpy, "plt": _PlotRecorder()}
    exec(compile(SEED_TUTORIAL, "<seed tutorial>", "exec"), namespace)
    return namespace


def xor_class(x):
    """The tutorial's labels as class indices: column 0 when x0*x1 > 0, else column 1."""
    return (x[:, 0] * x[:, 1] <= 0).astype(np.int64)


def test_seed_tutorial_learns_xor(capsys):
    accuracies = []
    for seed in range(5):
        ns = run_tutorial(seed)
        out = capsys.readouterr().out

        assert out.startswith("(10000, 2)\n")
        # fit's default verbose into a captured (non-terminal) stream: one plain line per epoch.
        assert not any(c in out for c in "\r\b\x1b")
        assert sum(line.startswith("Epoch ") for line in out.splitlines()) == 200
        assert "Epoch 200/200" in out

        losses = ns["results"].history["loss"]
        assert len(losses) == 200 and all(type(v) is float for v in losses)
        assert ns["plt"].plotted == [(losses,)]
        assert ns["y_test"].shape == (5000, 2)
        assert ns["y_test"].dtype == np.float32
        assert np.isfinite(ns["y_test"]).all()
        accuracies.append(float(np.mean(ns["y_test"].argmax(axis=1) == xor_class(ns["X_test"]))))
    # A 4-4-2 ReLU net occasionally lands in a poor minimum from its initialization; Keras does too.
    assert sum(a >= 0.97 for a in accuracies) >= 4, accuracies


def build_seed_model(backend="cpu"):
    model = Sequential()
    model.add(Dense(4, activation="relu", input_dim=2))
    model.add(Dense(4, activation="relu"))
    model.add(Dense(2, activation="softmax"))
    model.compile(
        loss="binary_crossentropy",
        optimizer=SGD(decay=0.001, momentum=0.99),
        metrics=["accuracy"],
        backend=backend,
    )
    return model


def xor_data(n, seed=0):
    x = np.random.RandomState(seed).randn(n, 2).astype(np.float32)
    y = np.eye(2, dtype=np.float32)[xor_class(x)]
    return x, y


def seeded_run(seed, x, y, backend="cpu", epochs=3, shuffle=True):
    fastmlp.utils.set_random_seed(seed)
    model = build_seed_model(backend)
    model.initial_weights = model.get_weights()
    history = model.fit(x, y, epochs=epochs, batch_size=100, shuffle=shuffle, verbose=0)
    return model, history


def test_same_seed_is_bitwise_reproducible():
    x, y = xor_data(2000)
    model_a, hist_a = seeded_run(42, x, y)
    model_b, hist_b = seeded_run(42, x, y)
    for a, b in zip(model_a.get_weights(), model_b.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert hist_a.history == hist_b.history
    np.testing.assert_array_equal(model_a.predict(x), model_b.predict(x))


def test_different_seed_gives_different_weights():
    x, y = xor_data(2000)
    model_a, _ = seeded_run(42, x, y)
    model_b, _ = seeded_run(43, x, y)
    assert any(not np.array_equal(a, b) for a, b in zip(model_a.get_weights(), model_b.get_weights()))


def test_native_and_reference_shuffle_alike():
    x, y = xor_data(2000)
    native, native_hist = seeded_run(7, x, y, backend="cpu", epochs=5)
    reference, reference_hist = seeded_run(7, x, y, backend="numpy", epochs=5)

    for a, b in zip(native.initial_weights, reference.initial_weights):
        np.testing.assert_array_equal(a, b)
    # Same seed -> same initial weights and the same per-epoch permutations, so the two engines
    # differ only by float32 rounding (different summation orders), which momentum 0.99 carries
    # along for 250 steps: measured ~1e-6 relative on the weights, well inside the forward tolerance.
    # History holds Python floats; the losses are float32 computations, so the float32 policy applies.
    assert_close(
        np.float32(native_hist.history["loss"]), np.float32(reference_hist.history["loss"]), kind="forward"
    )
    assert native_hist.history["accuracy"] == pytest.approx(reference_hist.history["accuracy"], abs=1e-3)
    for a, b in zip(native.get_weights(), reference.get_weights()):
        assert_close(a, b, kind="forward")

    # The check can see the order: the same start without shuffling lands elsewhere.
    unshuffled, unshuffled_hist = seeded_run(7, x, y, backend="cpu", epochs=5, shuffle=False)
    assert not np.allclose(unshuffled_hist.history["loss"], native_hist.history["loss"], rtol=1e-3)
