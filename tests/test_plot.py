"""fastmlp.plot: figures made and saved headless, the inputs each function accepts, the clear error
without matplotlib; and examples/xor.py end to end (it trains the seed model and writes its PNGs)."""

import os
import re
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("matplotlib")

from matplotlib.figure import Figure  # noqa: E402

import fastmlp  # noqa: E402
from fastmlp import plot  # noqa: E402
from fastmlp.callbacks import History  # noqa: E402
from fastmlp.layers import Dense  # noqa: E402
from fastmlp.models import Sequential  # noqa: E402
from fastmlp.optimizers import SGD  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def assert_png(path):
    assert os.path.getsize(path) > 1000, f"{path} is too small to hold a plot"
    with open(path, "rb") as f:
        assert f.read(8) == PNG_MAGIC


def quadrant_data(n, seed=0):
    """XOR of the signs, as in the seed: one-hot [1, 0] where x0*x1 > 0."""
    x = np.random.default_rng(seed).standard_normal((n, 2)).astype(np.float32)
    cls = (x[:, 0] * x[:, 1] <= 0).astype(np.int64)
    return x, np.eye(2, dtype=np.float32)[cls]


@pytest.fixture(scope="module")
def trained():
    """A small model trained for a few epochs on XOR (any model will do for plotting)."""
    fastmlp.utils.set_random_seed(7)
    x, y = quadrant_data(400)
    model = Sequential([Dense(8, activation="relu", input_dim=2), Dense(2, activation="softmax")])
    model.compile(loss="categorical_crossentropy", optimizer=SGD(learning_rate=0.1, momentum=0.9), metrics=["accuracy"])
    history = model.fit(x, y, epochs=5, batch_size=50, validation_split=0.25, verbose=0)
    return model, history, x, y


# ---- plot_history ----


def test_plot_history_from_history_saves_png(trained, tmp_path):
    _, history, _, _ = trained
    path = tmp_path / "history.png"
    fig = plot.plot_history(history, path=str(path))
    assert isinstance(fig, Figure)
    assert_png(path)
    # loss and accuracy, each with its validation curve, epochs counted from 1.
    axes = fig.get_axes()
    assert [ax.get_ylabel() for ax in axes] == ["loss", "accuracy"]
    lines = {line.get_label(): line for ax in axes for line in ax.get_lines()}
    assert set(lines) == {"loss", "val_loss", "accuracy", "val_accuracy"}
    np.testing.assert_array_equal(lines["loss"].get_xdata(), [1, 2, 3, 4, 5])
    np.testing.assert_allclose(lines["loss"].get_ydata(), history.history["loss"])


def test_plot_history_accepts_the_dict(trained):
    _, history, _, _ = trained
    fig = plot.plot_history(history.history)
    assert [ax.get_ylabel() for ax in fig.get_axes()] == ["loss", "accuracy"]


def test_plot_history_metrics_selects_panels(trained):
    _, history, _, _ = trained
    fig = plot.plot_history(history, metrics=[])
    assert [ax.get_ylabel() for ax in fig.get_axes()] == ["loss"]


def test_plot_history_without_path_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    fig = plot.plot_history({"loss": [0.7, 0.5, 0.4]})
    assert isinstance(fig, Figure)
    assert os.listdir(tmp_path) == []


def test_plot_history_from_a_fresh_history_callback():
    history = History()
    history.on_train_begin()
    for epoch, loss in enumerate([0.9, 0.3]):
        history.on_epoch_end(epoch, {"loss": loss})
    fig = plot.plot_history(history)
    assert list(fig.get_axes()[0].get_lines()[0].get_ydata()) == [0.9, 0.3]


def test_plot_history_errors_name_what_was_received():
    with pytest.raises(ValueError, match="no 'loss'"):
        plot.plot_history({"accuracy": [0.5]})
    with pytest.raises(ValueError, match="precision"):
        plot.plot_history({"loss": [0.5], "accuracy": [0.5]}, metrics=["precision"])
    with pytest.raises(TypeError, match="History"):
        plot.plot_history([0.5, 0.4])


# ---- plot_decision_boundary ----


def test_decision_boundary_saves_png_and_colours_the_prediction(trained, tmp_path):
    model, _, x, y = trained
    path = tmp_path / "boundary.png"
    fig = plot.plot_decision_boundary(model, x, y, path=str(path), resolution=50)
    assert isinstance(fig, Figure)
    assert_png(path)
    ax = fig.get_axes()[0]
    mesh = ax.collections[0]
    # The mesh holds the argmax of the model's prediction over a 50 x 50 grid that covers x.
    classes = np.asarray(mesh.get_array()).reshape(50, 50)
    xlim, ylim = ax.get_xlim(), ax.get_ylim()
    assert xlim[0] < x[:, 0].min() and xlim[1] > x[:, 0].max()
    assert ylim[0] < x[:, 1].min() and ylim[1] > x[:, 1].max()
    gx, gy = np.meshgrid(np.linspace(*xlim, 50), np.linspace(*ylim, 50))
    expected = model.predict(np.column_stack([gx.ravel(), gy.ravel()])).argmax(axis=1).reshape(50, 50)
    np.testing.assert_array_equal(classes, expected)
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend == ["class 0", "class 1"]


def test_decision_boundary_accepts_integer_labels_and_no_labels(trained):
    model, _, x, y = trained
    fig = plot.plot_decision_boundary(model, x, y.argmax(axis=1), resolution=20)
    assert fig.get_axes()[0].get_legend() is not None
    fig = plot.plot_decision_boundary(model, x, resolution=20)
    assert fig.get_axes()[0].get_legend() is None


def test_decision_boundary_single_output_unit_and_constant_prediction(tmp_path):
    # A sigmoid output is thresholded at 0.5; a model that predicts one class everywhere has no
    # border to draw, which must not warn (warnings are errors here).
    model = Sequential([Dense(1, activation="sigmoid", input_dim=2)])
    model.set_weights([np.zeros((2, 1)), np.array([3.0])])
    x = np.array([[0.0, 0.0], [1.0, 2.0], [-1.0, 0.5]])
    fig = plot.plot_decision_boundary(model, x, np.array([1, 1, 0]), path=str(tmp_path / "b.png"), resolution=10)
    assert np.all(np.asarray(fig.get_axes()[0].collections[0].get_array()) == 1)
    assert_png(tmp_path / "b.png")


def test_decision_boundary_rejects_bad_shapes(trained):
    model, _, x, y = trained
    with pytest.raises(ValueError, match=r"\(samples, 2\); received shape \(400, 3\)"):
        plot.plot_decision_boundary(model, np.zeros((400, 3)))
    with pytest.raises(ValueError, match="one row per sample"):
        plot.plot_decision_boundary(model, x, y[:10])
    with pytest.raises(ValueError, match="resolution"):
        plot.plot_decision_boundary(model, x, resolution=1)


# ---- without matplotlib ----


@pytest.mark.parametrize("call", [
    lambda: plot.plot_history({"loss": [1.0]}),
    lambda: plot.plot_decision_boundary(None, np.zeros((3, 2))),
])
def test_missing_matplotlib_says_how_to_install(monkeypatch, call):
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(ImportError, match=re.escape("fastmlp.plot needs matplotlib: pip install 'fastmlp[plot]'")):
        call()


def test_importing_fastmlp_plot_does_not_import_matplotlib():
    code = "import sys, fastmlp.plot; sys.exit('matplotlib' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], timeout=60).returncode == 0


# ---- examples/xor.py ----


def test_xor_example_trains_and_writes_its_plots(tmp_path):
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, "examples", "xor.py"), "--out", str(out), "--seed", "1", "--verbose", "0"],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for name in ("xor_training_data.png", "xor_loss.png", "xor_predictions.png"):
        assert_png(out / name)
    match = re.search(r"test accuracy: ([0-9.]+)", proc.stdout)
    assert match, proc.stdout
    assert float(match.group(1)) >= 0.97
    assert re.search(r"fit time: [0-9.]+ s", proc.stdout)
    assert "Epoch" not in proc.stdout  # --verbose 0
