"""The NumPy reference engine: the native Engine's interface and maths in plain NumPy.

Selected with ``model.compile(..., backend='numpy')``. Parameters, gradients and optimizer state
live in flat arenas with per-layer views, as in the native engine, so the two are interchangeable
behind ``fastmlp.models.Sequential``.
"""

import numpy as np

from . import kernels as K


class ReferenceEngine:
    def __init__(self, layers, loss, metrics, optimizer, dtype=np.float32):
        self.dtype = np.dtype(dtype)
        # (in, out, activation, use_bias), the L1/L2 coefficients (kernel l1, l2, bias l1, l2) and the
        # dropout on the layer's input (rate, seed), as the native engine's 4-, 8- or 10-field specs.
        self.layers = [tuple(s[:4]) for s in layers]
        self.penalty_coefficients = [tuple(s[4:8]) if len(s) >= 8 else (0.0, 0.0, 0.0, 0.0) for s in layers]
        self.dropout = [(float(s[8]), int(s[9])) if len(s) == 10 else (0.0, 0) for s in layers]
        self.loss = loss
        self.metrics = list(metrics)
        self.weighted_metrics = [False] * len(self.metrics)
        self.optimizer = {"kind": "sgd", "learning_rate": 0.01, "initial_accumulator": 0.1, **optimizer}
        self.iterations = 0
        self.huber_delta, self.label_smoothing = 1.0, 0.0
        self._offsets = []
        size = 0
        for n_in, n_out, _act, use_bias in self.layers:
            w_off = size
            size += n_in * n_out
            b_off = size if use_bias else -1
            size += n_out if use_bias else 0
            self._offsets.append((w_off, b_off))
        self.params = np.zeros(size, self.dtype)
        self.grads = np.zeros(size, self.dtype)
        kind = self.optimizer["kind"]
        self.velocity = np.full(size, self.optimizer["initial_accumulator"] if kind == "adagrad" else 0, self.dtype)
        self.second = np.zeros(size if kind in ("adam", "rmsprop") else 0, self.dtype)
        self._epoch = None

    @property
    def target_cols(self):
        return 1 if self.loss.startswith("sparse") else self.layers[-1][1]

    def params_copy(self):
        return self.params.copy()

    def set_params(self, values):
        self.params[...] = values

    def set_loss_options(self, huber_delta=1.0, label_smoothing=0.0):
        self.huber_delta = float(huber_delta)
        self.label_smoothing = float(label_smoothing)

    def _loss_targets(self, y):
        return K.smooth_labels(y, self.loss, self.label_smoothing, self.layers[-1][1])

    def set_option(self, name, value):
        self.optimizer[name] = value

    def set_weighted_metrics(self, flags):
        """Which metrics the sample weights weight (Keras's weighted_metrics), one flag each."""
        if len(flags) != len(self.metrics):
            raise ValueError(f"set_weighted_metrics needs one flag per metric ({len(self.metrics)}); "
                             f"received {len(flags)}.")
        self.weighted_metrics = [bool(f) for f in flags]

    def _metric_sums(self, p, y, w):
        """Each metric summed over the rows, the weighted ones times the sample weights w (or None)."""
        return [K.weighted_sum(K.accuracy_per_sample(p, y, name), w if weighted else None)
                for name, weighted in zip(self.metrics, self.weighted_metrics)]

    def weight_views(self, arena="params"):
        buf = {"params": self.params, "grads": self.grads, "velocity": self.velocity, "second": self.second}[arena]
        if not len(buf):
            return []
        views = []
        for (n_in, n_out, _act, use_bias), (w_off, b_off) in zip(self.layers, self._offsets):
            views.append(buf[w_off : w_off + n_in * n_out].reshape(n_in, n_out))
            if use_bias:
                views.append(buf[b_off : b_off + n_out])
        return views

    def _forward(self, x, training=False):
        """Each layer's output; in training also what the backward needs, per layer: its input as the
        layer saw it (dropped when it has dropout), the dropout mask or None, and its pre-activation."""
        acts, inputs, masks, zs = [], [], [], []
        views = self.weight_views("params")
        i = 0
        for (_n_in, _n_out, act, use_bias), (rate, seed) in zip(self.layers, self.dropout):
            w = views[i]
            b = views[i + 1] if use_bias else None
            i += 2 if use_bias else 1
            mask = None
            if training and rate > 0:
                mask = K.dropout_mask(x.shape[0], x.shape[1], rate, seed, self.iterations)
                x = K.dropout_forward(x, mask, rate)
            inputs.append(x)
            masks.append(mask)
            z = K.dense_forward(x, w, b, "linear")
            zs.append(z)
            x = K.act_forward(z, act)
            acts.append(x)
        return (acts, inputs, masks, zs) if training else acts

    def _forward_backward(self, x, y, w=None, metric_sums=None):
        acts, inputs, masks, zs = self._forward(x, training=True)
        p = acts[-1]
        out_act = self.layers[-1][2]
        last_z = out_act in K.NEEDS_PREACTIVATION
        total, d = K.output_loss(p, self._loss_targets(y), self.loss, "linear" if last_z else out_act,
                                 self.huber_delta, w)
        if last_z:
            d = K.act_backward_z(zs[-1], d, out_act)
        if metric_sums is not None:
            metric_sums[:] = [a + b for a, b in zip(metric_sums, self._metric_sums(p, y, w))]
        params = self.weight_views("params")
        grads = self.weight_views("grads")
        i = len(params)
        for l in range(len(self.layers) - 1, -1, -1):
            _n_in, _n_out, act, use_bias = self.layers[l]
            i -= 2 if use_bias else 1
            act = "linear" if l == len(self.layers) - 1 else act
            if act in K.NEEDS_PREACTIVATION:
                d, act = K.act_backward_z(zs[l], d, act), "linear"
            dx, dw, db, _dz = K.dense_backward(inputs[l], params[i], acts[l], d, act, use_bias, l > 0)
            grads[i][...] = dw
            if use_bias:
                grads[i + 1][...] = db
            if dx is not None and masks[l] is not None:
                dx = K.dropout_backward(dx, masks[l], self.dropout[l][0])
            d = dx
        return total

    def _penalties(self, add_gradients):
        """Keras's regularization losses, l1 sum|w| + l2 sum w^2, and their gradients into grads."""
        total = 0.0
        params, grads = self.weight_views("params"), self.weight_views("grads")
        i = 0
        for (_n_in, _n_out, _act, use_bias), (kl1, kl2, bl1, bl2) in zip(self.layers, self.penalty_coefficients):
            for l1, l2 in [(kl1, kl2)] + ([(bl1, bl2)] if use_bias else []):
                w = params[i]
                if l1 or l2:
                    total += l1 * float(np.abs(w).astype(np.float64).sum()) + l2 * float(
                        (w * w).astype(np.float64).sum())
                    if add_gradients:
                        grads[i] += w.dtype.type(l1) * np.sign(w) + w.dtype.type(2 * l2) * w
                i += 1
        return total

    def begin_epoch(self, n, batch_size, shuffle, seed, epoch):
        order = K.permutation(n, seed, epoch) if shuffle else np.arange(n)
        self._epoch = {
            "order": order,
            "n": n,
            "batch_size": batch_size,
            "sums": {
                "loss": 0.0,
                "metrics": [0.0] * len(self.metrics),
                "samples": 0,
                "weight_sum": 0.0,
                "steps_done": 0,
                "steps_total": -(-n // batch_size),
                "stop": "",
                "bad_layer": -1,
                "bad_part": "",
            },
        }

    def train_steps(self, x, y, max_steps=0, sample_weight=None):
        x = np.ascontiguousarray(x, self.dtype)
        y = np.ascontiguousarray(y, self.dtype)
        sw = None if sample_weight is None else np.ascontiguousarray(sample_weight, self.dtype)
        ep = self._epoch
        s = ep["sums"]
        bs = ep["batch_size"]
        end = s["steps_total"] if max_steps <= 0 else min(s["steps_total"], s["steps_done"] + max_steps)
        s["stop"] = ""
        for step in range(s["steps_done"], end):
            idx = ep["order"][step * bs : (step + 1) * bs]
            step_metrics = [0.0] * len(self.metrics)
            w = None if sw is None else sw[idx]
            with np.errstate(all="ignore"):
                loss = self._forward_backward(x[idx], y[idx], w, step_metrics) + len(idx) * self._penalties(True)
            if not np.isfinite(loss):
                s["stop"] = "nonfinite_loss"
                s["bad_layer"], s["bad_part"] = self._first_nonfinite(self.weight_views("grads"))
                break
            with np.errstate(all="ignore"):
                K.clip_gradients(self.optimizer, self.weight_views("grads"))
                K.optimizer_step(self.optimizer, self.params, self.grads, self.velocity, self.second, self.iterations)
            self.iterations += 1
            s["loss"] += loss
            s["metrics"] = [a + b for a, b in zip(s["metrics"], step_metrics)]
            s["samples"] += len(idx)
            s["weight_sum"] += len(idx) if w is None else float(w.astype(np.float64).sum())
            s["steps_done"] = step + 1
            if not np.all(np.isfinite(self.params)):
                s["stop"] = "nonfinite_weights"
                s["bad_layer"], s["bad_part"] = self._first_nonfinite(self.weight_views("params"))
                break
        return dict(s, metrics=list(s["metrics"]))

    def _first_nonfinite(self, views):
        i = 0
        for layer, (_n_in, _n_out, _act, use_bias) in enumerate(self.layers):
            parts = ["kernel"] + (["bias"] if use_bias else [])
            for part in parts:
                if not np.all(np.isfinite(views[i])):
                    return layer, part
                i += 1
        return -1, ""

    def predict(self, x, batch_size=32):
        x = np.ascontiguousarray(x, self.dtype)
        return np.concatenate(
            [self._forward(x[i : i + batch_size])[-1] for i in range(0, len(x), batch_size)]
        ) if len(x) else np.zeros((0, self.layers[-1][1]), self.dtype)

    def evaluate(self, x, y, batch_size=32, sample_weight=None):
        x = np.ascontiguousarray(x, self.dtype)
        y = np.ascontiguousarray(y, self.dtype)
        sw = None if sample_weight is None else np.ascontiguousarray(sample_weight, self.dtype)
        loss, metrics = 0.0, [0.0] * len(self.metrics)
        for i in range(0, len(x), batch_size):
            p = self._forward(x[i : i + batch_size])[-1]
            yb = y[i : i + batch_size]
            w = None if sw is None else sw[i : i + batch_size]
            loss += K.weighted_sum(K.loss_per_sample(p, self._loss_targets(yb), self.loss, self.huber_delta), w)
            metrics = [a + b for a, b in zip(metrics, self._metric_sums(p, yb, w))]
        loss += len(x) * self._penalties(False)
        steps = -(-len(x) // batch_size)
        weight_sum = float(len(x)) if sw is None else float(sw.astype(np.float64).sum())
        return {"loss": loss, "metrics": metrics, "samples": len(x), "weight_sum": weight_sum, "steps_done": steps,
                "steps_total": steps}

    def compute_gradients(self, x, y, sample_weight=None):
        w = None if sample_weight is None else np.asarray(sample_weight, self.dtype)
        return self._forward_backward(np.asarray(x, self.dtype), np.asarray(y, self.dtype), w) + len(x) * self._penalties(
            True)

    def shard_gradients(self, x, y, step, lo, hi, with_penalties):
        """This rank's part of a training step: rows [lo, hi) of step `step`'s batch of B rows;
        grads := (sum of their gradients) / B (plus the penalties' gradient when `with_penalties`).
        Returns their loss and metric sums (see csrc/engine_api.hpp)."""
        ep = self._epoch
        bs = ep["batch_size"]
        if len(x) != ep["n"]:
            raise ValueError(f"shard_gradients: the data has {len(x)} rows but the epoch was begun with {ep['n']}.")
        if not 0 <= step < ep["sums"]["steps_total"]:
            raise ValueError(f"shard_gradients: step {step} is outside the epoch's {ep['sums']['steps_total']} steps.")
        batch = ep["order"][step * bs : (step + 1) * bs]
        if not 0 <= lo <= hi <= len(batch):
            raise ValueError(f"shard_gradients: rows [{lo}, {hi}) are not inside the step's batch of {len(batch)}.")
        idx = batch[lo:hi]
        metric_sums = [0.0] * len(self.metrics)
        loss = 0.0
        if len(idx):
            xb = np.ascontiguousarray(np.asarray(x)[idx], self.dtype)
            yb = np.ascontiguousarray(np.asarray(y)[idx], self.dtype)
            with np.errstate(all="ignore"):
                loss = self._forward_backward(xb, yb, None, metric_sums)
                if len(idx) != len(batch):
                    self.grads[...] = (self.grads.astype(np.float64) * (len(idx) / len(batch))).astype(self.dtype)
        else:
            self.grads[...] = 0
        if with_penalties:
            with np.errstate(all="ignore"):
                loss += len(batch) * self._penalties(True)
        return {"loss": loss, "metrics": metric_sums, "samples": len(idx), "steps_done": step,
                "steps_total": ep["sums"]["steps_total"], "stop": "", "bad_layer": -1, "bad_part": ""}

    def apply_gradients(self):
        """Clip grads, apply the optimizer update and count the iteration."""
        with np.errstate(all="ignore"):
            K.clip_gradients(self.optimizer, self.weight_views("grads"))
            K.optimizer_step(self.optimizer, self.params, self.grads, self.velocity, self.second, self.iterations)
        self.iterations += 1
        out = {"loss": 0.0, "metrics": [], "samples": 0, "steps_done": 0, "steps_total": 0, "stop": "",
               "bad_layer": -1, "bad_part": ""}
        if not np.all(np.isfinite(self.params)):
            out["stop"] = "nonfinite_weights"
            out["bad_layer"], out["bad_part"] = self._first_nonfinite(self.weight_views("params"))
        return out
