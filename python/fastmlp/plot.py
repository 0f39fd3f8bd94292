"""Plots of training and of what a model learned: ``plot_history`` and ``plot_decision_boundary``.

matplotlib is optional (``pip install 'fastmlp[plot]'``) and imported only when a plot is made.
Figures are built with matplotlib's object API on the non-interactive Agg canvas, so they render
and save the same way headless, in a script or in CI, and never touch pyplot's global figure list
(no figures pile up across calls). A notebook displays the returned ``Figure`` as a cell result.
"""

import numpy as np

_MISSING = "fastmlp.plot needs matplotlib: pip install 'fastmlp[plot]'"

# Class colours: matplotlib's default cycle ("tab10"), class i in colour i.
_CLASS_COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
                 "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf")


def _new_figure(figsize):
    """A Figure on an Agg canvas, or the ImportError that says how to get matplotlib."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise ImportError(_MISSING) from None
    fig = Figure(figsize=figsize)
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path):
    if path is not None:
        fig.savefig(path, dpi=100)


def plot_history(history, path=None, metrics=None):
    """Plot the loss and metrics of each epoch of training.

    One panel per quantity: the loss first, then each metric; a ``val_`` counterpart recorded by
    ``fit(validation_data=...)`` or ``fit(validation_split=...)`` is drawn in the same panel.

    Example:

    >>> history = model.fit(x, y, epochs=200, batch_size=100)
    >>> fastmlp.plot.plot_history(history, path="loss.png")

    Args:
        history: the ``History`` returned by ``fit`` (or ``model.history``), or its ``history``
            dict mapping a name such as ``'loss'`` to a list with one value per epoch.
        path: optional file path (``.png``, ``.pdf``, ``.svg``, ...); the figure is saved there.
        metrics: optional list of the metric names to plot besides the loss, e.g.
            ``['accuracy']``. Defaults to every metric recorded.

    Returns:
        The ``matplotlib.figure.Figure``.

    Raises:
        ImportError: if matplotlib is not installed.
        ValueError: if the history holds no loss, or a requested metric was not recorded.
    """
    if isinstance(history, dict):
        logs, epochs = history, None
    elif isinstance(getattr(history, "history", None), dict):
        logs, epochs = history.history, list(getattr(history, "epoch", []) or [])
    else:
        raise TypeError(
            "Expected `history` to be the History returned by fit() or its `history` dict. "
            f"Received: history={history!r}"
        )
    if "loss" not in logs:
        raise ValueError(
            f"The history has no 'loss' to plot; it records: {sorted(logs) or 'nothing'}. Pass the History "
            "returned by model.fit() after at least one epoch, or its `history` dict."
        )
    recorded = [k for k in logs if not k.startswith("val_") and k != "loss"]
    if metrics is None:
        metrics = recorded
    else:
        if isinstance(metrics, str) or not isinstance(metrics, (list, tuple)):
            raise TypeError(f"Expected `metrics` to be a list of names such as ['accuracy']. Received: {metrics!r}")
        unknown = [m for m in metrics if m not in logs]
        if unknown:
            raise ValueError(
                f"Metric(s) {unknown} not in the history, which records: {sorted(logs)}. Received: metrics={metrics!r}"
            )
        metrics = [m for m in metrics if m != "loss"]

    names = ["loss"] + list(metrics)
    fig = _new_figure((6.4, 3.2 * len(names)))
    axes = fig.subplots(len(names), 1, squeeze=False)[:, 0]
    for ax, name in zip(axes, names):
        for key, style in ((name, "-"), ("val_" + name, "--")):
            if key not in logs:
                continue
            values = np.asarray(logs[key], dtype=np.float64)
            # History.epoch counts from 0; the plot counts epochs from 1, as fit's progress lines do.
            x = np.asarray(epochs) + 1 if epochs and len(epochs) == len(values) else np.arange(1, len(values) + 1)
            ax.plot(x, values, style, label=key)
        ax.set_ylabel(name)
        ax.grid(True, alpha=0.3)
        if "val_" + name in logs:
            ax.legend()
    axes[0].set_title("Training history")
    axes[-1].set_xlabel("epoch")
    fig.tight_layout()
    _save(fig, path)
    return fig


def _class_labels(y, n):
    """Class indices (n,) from one-hot rows (n, k>1) or integer labels (n,) / (n, 1)."""
    y = np.asarray(y)
    if y.shape[:1] != (n,) or y.ndim > 2:
        raise ValueError(f"`y` must have one row per sample of `x` ({n}); received shape {y.shape}.")
    if y.ndim == 2 and y.shape[1] > 1:
        return y.argmax(axis=1)
    labels = y.reshape(n)
    if labels.dtype.kind not in "biuf" or not np.all((labels >= 0) & (labels == np.floor(labels))):
        raise ValueError(
            "`y` must be one-hot rows of shape (samples, classes) or non-negative integer class labels; "
            f"received values such as {labels[:3]!r}."
        )
    return labels.astype(np.int64)


def plot_decision_boundary(model, x, y=None, path=None, resolution=200):
    """Plot the class a model predicts over the plane of 2-D inputs.

    The model's prediction is evaluated on a ``resolution`` x ``resolution`` grid covering ``x``
    (plus a 5% margin); each grid cell is coloured by its predicted class (the argmax of the
    output, or ``output > 0.5`` for a single output unit) and the class borders are drawn as
    lines. The samples ``x`` are scattered on top, coloured by their class in ``y`` when given.

    Example:

    >>> fastmlp.plot.plot_decision_boundary(model, x_test, y_test, path="boundary.png")

    Args:
        model: a trained model with ``predict`` taking inputs of shape ``(samples, 2)``.
        x: array of shape ``(samples, 2)``: the points to show; the grid spans them.
        y: optional classes of ``x``: one-hot rows ``(samples, classes)`` or integer labels
            ``(samples,)``.
        path: optional file path; the figure is saved there.
        resolution: positive integer, grid points per axis.

    Returns:
        The ``matplotlib.figure.Figure``.

    Raises:
        ImportError: if matplotlib is not installed.
        ValueError: if ``x`` is not of shape ``(samples, 2)`` or ``y`` does not match it.
    """
    x = np.asarray(x)
    if x.ndim != 2 or x.shape[1] != 2 or x.shape[0] == 0:
        raise ValueError(
            f"plot_decision_boundary needs 2-D inputs: `x` of shape (samples, 2); received shape {x.shape}."
        )
    if isinstance(resolution, bool) or not isinstance(resolution, (int, np.integer)) or resolution < 2:
        raise ValueError(f"Expected `resolution` to be an integer >= 2. Received: resolution={resolution!r}")
    labels = None if y is None else _class_labels(y, len(x))
    fig = _new_figure((6.4, 6.0))

    lo, hi = x.min(axis=0).astype(np.float64), x.max(axis=0).astype(np.float64)
    pad = np.where(hi > lo, 0.05 * (hi - lo), 1.0)
    gx = np.linspace(lo[0] - pad[0], hi[0] + pad[0], resolution)
    gy = np.linspace(lo[1] - pad[1], hi[1] + pad[1], resolution)
    xx, yy = np.meshgrid(gx, gy)
    grid = np.column_stack([xx.ravel(), yy.ravel()])
    out = np.asarray(model.predict(grid, batch_size=min(len(grid), 8192)))
    out = out.reshape(len(grid), -1)
    classes = (out[:, 0] > 0.5).astype(np.int64) if out.shape[1] == 1 else out.argmax(axis=1)
    classes = classes.reshape(xx.shape)
    n_classes = max(out.shape[1], 2, 0 if labels is None else int(labels.max()) + 1)

    from matplotlib.colors import ListedColormap

    colors = [_CLASS_COLORS[i % len(_CLASS_COLORS)] for i in range(n_classes)]
    cmap = ListedColormap(colors)
    ax = fig.add_subplot()
    ax.pcolormesh(xx, yy, classes, cmap=cmap, vmin=-0.5, vmax=n_classes - 0.5, alpha=0.25, shading="nearest")
    if classes.min() != classes.max():
        # A contour of a constant field has no level to draw (and matplotlib warns), so borders
        # are drawn only when the prediction changes somewhere on the grid.
        ax.contour(xx, yy, classes, levels=np.arange(n_classes - 1) + 0.5, colors="k", linewidths=1.0)
    marker = 12 if len(x) > 1000 else 24
    if labels is None:
        ax.scatter(x[:, 0], x[:, 1], s=marker, c="k", alpha=0.4, linewidths=0)
    else:
        for k in np.unique(labels):
            sel = labels == k
            ax.scatter(x[sel, 0], x[sel, 1], s=marker, color=colors[k], label=f"class {k}",
                       edgecolors="k", linewidths=0.2)
        ax.legend(loc="upper right", framealpha=0.9)
    ax.set_xlim(gx[0], gx[-1])
    ax.set_ylim(gy[0], gy[-1])
    ax.set_xlabel("x[0]")
    ax.set_ylabel("x[1]")
    ax.set_title("Predicted class and decision boundary")
    fig.tight_layout()
    _save(fig, path)
    return fig
