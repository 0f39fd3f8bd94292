"""The NumPy reference engine: the native Engine's interface and maths in plain NumPy.

Selected with ``model.compile(..., backend='numpy')``. Parameters, gradients and optimizer state
live in flat arenas with per-layer views, as in the native engine, so the two are interchangeable
behind ``fastmlp.models.Sequential``.
"""

import numpy as np

from . import kernels as K


_BATCHNORM_DEFAULTS = {"momentum": 0.99, "epsilon": 1e-3, "center": True, "scale": True, "gamma_l1": 0.0,
                       "gamma_l2": 0.0, "beta_l1": 0.0, "beta_l2": 0.0}


def _batchnorm(setting, with_activation):
    """A spec's batch normalization field (None or a dict, as the native engine reads it) as a full
    dict, or None."""
    if setting is None:
        return None
    allowed = set(_BATCHNORM_DEFAULTS) | ({"activation"} if with_activation else set())
    unknown = sorted(set(setting) - allowed)
    if unknown:
        raise ValueError(f"Unknown batch normalization setting {unknown[0]!r}. Expected {', '.join(sorted(allowed))}.")
    return {**_BATCHNORM_DEFAULTS, **({"activation": "linear"} if with_activation else {}), **setting}


class ReferenceEngine:
    def __init__(self, layers, loss, metrics, optimizer, dtype=np.float32):
        self.dtype = np.dtype(dtype)
        # (in, out, activation, use_bias), the L1/L2 coefficients (kernel l1, l2, bias l1, l2), the
        # dropout on the layer's input (rate, seed) and the batch normalizations of its input and
        # output (None or a dict), as the native engine's 4-, 8-, 10- or 12-field specs.
        self.layers = [tuple(s[:4]) for s in layers]
        self.penalty_coefficients = [tuple(s[4:8]) if len(s) >= 8 else (0.0, 0.0, 0.0, 0.0) for s in layers]
        self.dropout = [(float(s[8]), int(s[9])) if len(s) >= 10 else (0.0, 0) for s in layers]
        self.bn_in = [_batchnorm(s[10], False) if len(s) == 12 else None for s in layers]
        self.bn_out = [_batchnorm(s[11], True) if len(s) == 12 else None for s in layers]
        self.loss = loss
        self.metrics = list(metrics)
        self.weighted_metrics = [False] * len(self.metrics)
        self.optimizer = {"kind": "sgd", "learning_rate": 0.01, "initial_accumulator": 0.1, **optimizer}
        self.iterations = 0
        self.huber_delta, self.label_smoothing = 1.0, 0.0
        # Per layer, its trainable arrays in Keras's (and the arena's) order as (part, offset, shape):
        # the input batch normalization's input_gamma, input_beta, then kernel, bias, then the output
        # one's gamma, beta; and its moving statistics as (part, offset, n) in the moving arena.
        self._parts, self._moving_parts = [], []
        size = moving = 0
        for (n_in, n_out, _act, use_bias), bn_in, bn_out in zip(self.layers, self.bn_in, self.bn_out):
            parts, moving_parts = [], []
            for prefix, bn, n in (("input_", bn_in, n_in), (None, None, None), ("", bn_out, n_out)):
                if prefix is None:
                    parts.append(("kernel", size, (n_in, n_out)))
                    size += n_in * n_out
                    if use_bias:
                        parts.append(("bias", size, (n_out,)))
                        size += n_out
                    continue
                if bn is None:
                    continue
                for part, present in (("gamma", bn["scale"]), ("beta", bn["center"])):
                    if present:
                        parts.append((prefix + part, size, (n,)))
                        size += n
                moving_parts.append((prefix, moving, n))
                moving += 2 * n
            self._parts.append(parts)
            self._moving_parts.append(moving_parts)
        self.moving = np.zeros(moving, self.dtype)
        for moving_parts in self._moving_parts:
            for _prefix, offset, n in moving_parts:
                self.moving[offset + n : offset + 2 * n] = 1
        self._batch_stats = {}  # (layer, prefix) -> (mean, var) of the last training forward
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

    def moving_copy(self):
        return self.moving.copy()

    def set_moving(self, values):
        self.moving[...] = values

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
        """Views of the trainable arrays in Keras's order (per layer: input_gamma, input_beta, kernel,
        bias, gamma, beta, those it has); "moving": each batch normalization's moving mean and variance."""
        if arena == "moving":
            return [self.moving[offset + k * n : offset + (k + 1) * n] for moving_parts in self._moving_parts
                    for _prefix, offset, n in moving_parts for k in (0, 1)]
        buf = {"params": self.params, "grads": self.grads, "velocity": self.velocity, "second": self.second}[arena]
        if not len(buf):
            return []
        return [buf[offset : offset + int(np.prod(shape))].reshape(shape) for parts in self._parts
                for _part, offset, shape in parts]

    def _layer_views(self, arena):
        """Per layer, {part: view} of an arena (see weight_views)."""
        buf = {"params": self.params, "grads": self.grads}[arena]
        return [{part: buf[offset : offset + int(np.prod(shape))].reshape(shape) for part, offset, shape in parts}
                for parts in self._parts]

    def _moving_views(self, l, prefix):
        for p, offset, n in self._moving_parts[l]:
            if p == prefix:
                return self.moving[offset : offset + n], self.moving[offset + n : offset + 2 * n]
        raise KeyError((l, prefix))

    def _batchnorm_forward(self, x, l, prefix, views, training, state):
        """A batch normalization of layer l (prefix "input_" or ""); in training it uses the batch's
        statistics and keeps (xhat, inv) in state and (mean, var) for the moving update."""
        bn = self.bn_in[l] if prefix else self.bn_out[l]
        gamma, beta = views.get(prefix + "gamma"), views.get(prefix + "beta")
        if not training:
            moving_mean, moving_var = self._moving_views(l, prefix)
            return K.batchnorm_forward_infer(x, moving_mean, moving_var, gamma, beta, bn["epsilon"])
        y, xhat, mean, var, inv = K.batchnorm_forward_train(x, gamma, beta, bn["epsilon"])
        state[prefix + "bn"] = (xhat, inv)
        self._batch_stats[(l, prefix)] = (mean, var)
        return y

    def _forward(self, x, training=False):
        """Each layer's output; in training also what the backward needs, per layer: its input as the
        layer's kernel saw it (dropped and normalized when it has dropout and batch normalization),
        the dropout mask or None, its pre-activation z, its activation's output a (the output batch
        normalization's input), and the batch normalizations' state."""
        acts, inputs, masks, zs, pre_bn, states = [], [], [], [], [], []
        views = self._layer_views("params")
        for l, ((_n_in, _n_out, act, _use_bias), (rate, seed)) in enumerate(zip(self.layers, self.dropout)):
            v, state = views[l], {}
            mask = None
            if training and rate > 0:
                mask = K.dropout_mask(x.shape[0], x.shape[1], rate, seed, self.iterations)
                x = K.dropout_forward(x, mask, rate)
            if self.bn_in[l] is not None:
                x = self._batchnorm_forward(x, l, "input_", v, training, state)
            inputs.append(x)
            masks.append(mask)
            z = K.dense_forward(x, v["kernel"], v.get("bias"), "linear")
            zs.append(z)
            x = K.act_forward(z, act)
            pre_bn.append(x)
            if self.bn_out[l] is not None:
                state["bn_z"] = self._batchnorm_forward(x, l, "", v, training, state)
                x = K.act_forward(state["bn_z"], self.bn_out[l]["activation"])
            acts.append(x)
            states.append(state)
        return (acts, inputs, masks, zs, pre_bn, states) if training else acts

    def _forward_backward(self, x, y, w=None, metric_sums=None):
        acts, inputs, masks, zs, pre_bn, states = self._forward(x, training=True)
        p = acts[-1]
        last_bn = self.bn_out[-1]
        out_act = last_bn["activation"] if last_bn is not None else self.layers[-1][2]
        last_z = out_act in K.NEEDS_PREACTIVATION
        total, d = K.output_loss(p, self._loss_targets(y), self.loss, "linear" if last_z else out_act,
                                 self.huber_delta, w)
        if last_z:
            d = K.act_backward_z(states[-1]["bn_z"] if last_bn is not None else zs[-1], d, out_act)
        if metric_sums is not None:
            metric_sums[:] = [a + b for a, b in zip(metric_sums, self._metric_sums(p, y, w))]
        params, grads = self._layer_views("params"), self._layer_views("grads")
        for l in range(len(self.layers) - 1, -1, -1):
            _n_in, _n_out, act, use_bias = self.layers[l]
            last = l == len(self.layers) - 1
            act = "linear" if last else act
            bn_out, state = self.bn_out[l], states[l]
            if bn_out is not None:
                if not last:
                    d = K.act_backward_z(state["bn_z"], d, bn_out["activation"]) if bn_out["activation"] in \
                        K.NEEDS_PREACTIVATION else K.act_backward(acts[l], d, bn_out["activation"])
                d = self._batchnorm_backward(d, l, "", params, grads, state)
                act = self.layers[l][2]
            if act in K.NEEDS_PREACTIVATION:
                d, act = K.act_backward_z(zs[l], d, act), "linear"
            bn_in = self.bn_in[l]
            need_dx = l > 0 or (bn_in is not None and (bn_in["center"] or bn_in["scale"]))
            dx, dw, db, _dz = K.dense_backward(inputs[l], params[l]["kernel"], pre_bn[l], d, act, use_bias, need_dx)
            grads[l]["kernel"][...] = dw
            if use_bias:
                grads[l]["bias"][...] = db
            if dx is not None and bn_in is not None:
                dx = self._batchnorm_backward(dx, l, "input_", params, grads, state)
            if dx is not None and masks[l] is not None:
                dx = K.dropout_backward(dx, masks[l], self.dropout[l][0])
            d = dx
        return total

    def _batchnorm_backward(self, d, l, prefix, params, grads, state):
        xhat, inv = state[prefix + "bn"]
        dx, dgamma, dbeta = K.batchnorm_backward(d, xhat, params[l].get(prefix + "gamma"), inv)
        for part, value in ((prefix + "gamma", dgamma), (prefix + "beta", dbeta)):
            if part in grads[l]:
                grads[l][part][...] = value
        return dx

    def _update_moving(self):
        """After an applied training step: the moving statistics take the batch's."""
        for (l, prefix), (mean, var) in self._batch_stats.items():
            momentum = (self.bn_in[l] if prefix else self.bn_out[l])["momentum"]
            moving_mean, moving_var = self._moving_views(l, prefix)
            moving_mean[...] = K.batchnorm_update_moving(moving_mean, mean, momentum)
            moving_var[...] = K.batchnorm_update_moving(moving_var, var, momentum)

    def _penalties(self, add_gradients):
        """Keras's regularization losses, l1 sum|w| + l2 sum w^2, and their gradients into grads."""
        total = 0.0
        params, grads = self._layer_views("params"), self._layer_views("grads")
        for l, (kl1, kl2, bl1, bl2) in enumerate(self.penalty_coefficients):
            coefficients = {"kernel": (kl1, kl2), "bias": (bl1, bl2)}
            for prefix, bn in (("input_", self.bn_in[l]), ("", self.bn_out[l])):
                if bn is not None:
                    coefficients[prefix + "gamma"] = (bn["gamma_l1"], bn["gamma_l2"])
                    coefficients[prefix + "beta"] = (bn["beta_l1"], bn["beta_l2"])
            for part, w in params[l].items():
                l1, l2 = coefficients[part]
                if l1 or l2:
                    total += l1 * float(np.abs(w).astype(np.float64).sum()) + l2 * float(
                        (w * w).astype(np.float64).sum())
                    if add_gradients:
                        grads[l][part][...] += w.dtype.type(l1) * np.sign(w) + w.dtype.type(2 * l2) * w
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
                self._update_moving()
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
        for layer, parts in enumerate(self._parts):
            for part, _offset, _shape in parts:
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
        if any(self._moving_parts):
            raise ValueError("shard_gradients: batch normalization needs the statistics of the whole batch, not of a "
                             "shard; train models with BatchNormalization in one process.")
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
