"""The NumPy reference of every native kernel: the same maths, plainly vectorized.

This is the test oracle for ``csrc/`` and the benchmark baseline. Conventions are the native
kernels' (see ``csrc/losses.hpp``): Keras's clipping of probabilities at 1e-7 in the loss values,
zero gradient where that clip is active, and the analytic logit gradient for softmax with
(sparse) categorical cross-entropy and sigmoid with binary cross-entropy. Arrays keep the dtype
they are given (float32 for training, float64 for gradient checks).
"""

import math

import numpy as np

EPSILON = 1e-7
SELU_SCALE = 1.0507009873554804934193349852946
SELU_ALPHA = 1.6732632423543772848170429916717
SQRT_HALF = 0.70710678118654752440084436210485  # 1 / sqrt(2)
INV_SQRT_2PI = 0.39894228040143267793994605993438  # 1 / sqrt(2 pi)
# Activations whose derivative needs the pre-activation z (csrc/common.hpp needs_preactivation).
NEEDS_PREACTIVATION = ("gelu", "silu")

_erf_object = np.frompyfunc(math.erf, 1, 1)  # NumPy has no erf: the C library's, element by element


def _erf(x):
    return _erf_object(x).astype(x.dtype)


def as_float(x):
    x = np.asarray(x)
    return x if x.dtype in (np.float32, np.float64) else x.astype(np.float32)


# ---- activations: forward and backward (backward from the output a = act(z), or from z for gelu
# and silu) ----


def act_forward(z, act):
    if act == "linear":
        return z
    if act == "relu":
        return np.maximum(z, 0)
    if act == "sigmoid":
        return 1 / (1 + np.exp(-z))
    if act == "tanh":
        return np.tanh(z)
    if act == "softmax":
        e = np.exp(z - z.max(axis=-1, keepdims=True))
        return e / e.sum(axis=-1, keepdims=True)
    one = z.dtype.type(1)
    if act == "leaky_relu":
        return np.where(z > 0, z, z.dtype.type(0.2) * z)
    if act == "elu":
        return np.where(z > 0, z, np.expm1(np.minimum(z, 0)))
    if act == "selu":
        scale, alpha = z.dtype.type(SELU_SCALE), z.dtype.type(SELU_ALPHA)
        return np.where(z > 0, scale * z, scale * alpha * np.expm1(np.minimum(z, 0)))
    if act == "hard_sigmoid":
        return np.clip(z + 3, 0, 6) / z.dtype.type(6)
    if act == "softplus":
        return np.log1p(np.exp(-np.abs(z))) + np.maximum(z, 0)
    if act == "softsign":
        return z / (one + np.abs(z))
    if act == "exponential":
        return np.exp(z)
    half = z.dtype.type(0.5)
    if act == "gelu":  # Keras 3's exact gelu (approximate=False)
        return z * half * (one + _erf(z * z.dtype.type(SQRT_HALF)))
    if act == "silu":
        return z * (one / (one + np.exp(-z)))
    raise ValueError(f"Unknown activation {act!r}")


def act_backward_z(z, da, act):
    """dL/dz from dL/da and the pre-activation z (any elementwise activation; gelu and silu need it)."""
    one, half = z.dtype.type(1), z.dtype.type(0.5)
    if act == "gelu":
        cdf = half * (one + _erf(z * z.dtype.type(SQRT_HALF)))
        return da * (cdf + z * (z.dtype.type(INV_SQRT_2PI) * np.exp(-half * (z * z))))
    if act == "silu":
        s = one / (one + np.exp(-z))
        return da * (s * (one + z * (one - s)))
    return act_backward(act_forward(z, act), da, act)


def act_backward(a, da, act):
    """dL/dz from dL/da, where a = act(z) (not for gelu and silu: act_backward_z)."""
    if act in NEEDS_PREACTIVATION:
        raise ValueError(f"The {act} derivative needs the pre-activation: use act_backward_z.")
    if act == "linear":
        return da
    if act == "relu":
        return np.where(a > 0, da, 0).astype(a.dtype)
    if act == "sigmoid":
        return da * (a * (1 - a))
    if act == "tanh":
        return da * (1 - a * a)
    if act == "softmax":
        return a * (da - (da * a).sum(axis=-1, keepdims=True))
    one = a.dtype.type(1)
    if act == "leaky_relu":
        return np.where(a > 0, da, a.dtype.type(0.2) * da)
    if act == "elu":
        return np.where(a > 0, da, da * (a + one))
    if act == "selu":
        return np.where(a > 0, a.dtype.type(SELU_SCALE) * da, da * (a + a.dtype.type(SELU_SCALE * SELU_ALPHA)))
    if act == "hard_sigmoid":
        return np.where((a > 0) & (a < 1), da / a.dtype.type(6), 0).astype(a.dtype)
    if act == "softplus":
        return da * -np.expm1(-a)
    if act == "softsign":
        return da * (one - np.abs(a)) ** 2
    if act == "exponential":
        return da * a
    raise ValueError(f"Unknown activation {act!r}")


# ---- dense layer ----


def dense_forward(x, w, b, act):
    """act(x @ w + b); x (B, K), w (K, N), b (N,) or None."""
    z = x @ w
    if b is not None:
        z = z + b
    return act_forward(z, act)


def dense_backward(x, w, a, dy, act, use_bias=True, need_dx=True):
    """(dx, dw, db, dz) from dy = dL/da for a = act(x @ w + b)."""
    dz = act_backward(a, dy, act)
    dw = x.T @ dz
    db = dz.sum(axis=0) if use_bias else None
    dx = dz @ w.T if need_dx else None
    return dx, dw, db, dz


# ---- losses (per sample) and their gradients ----


def _sparse_onehot(y, c, dtype):
    labels = y.reshape(-1).astype(np.int64)
    return np.eye(c, dtype=dtype)[labels]


def _log_softmax(z):
    m = z.max(axis=-1, keepdims=True)
    return z - (m + np.log(np.exp(z - m).sum(axis=-1, keepdims=True)))


def loss_per_sample(p, y, loss, delta=1.0):
    """Per-sample loss values (B,), Keras 3 definitions with clipping (none on logits)."""
    one, eps = p.dtype.type(1), p.dtype.type(EPSILON)
    if loss == "binary_crossentropy_from_logits":
        return (np.maximum(p, 0) - p * y + np.log(one + np.exp(-np.abs(p)))).mean(axis=-1)
    if loss in ("categorical_crossentropy_from_logits", "sparse_categorical_crossentropy_from_logits"):
        if loss.startswith("sparse"):
            y = _sparse_onehot(y, p.shape[-1], p.dtype)
        return -(y * _log_softmax(p)).sum(axis=-1)
    if loss == "mean_absolute_error":
        return np.abs(p - y).mean(axis=-1)
    if loss == "huber":
        e = p - y
        d = p.dtype.type(delta)
        return np.where(np.abs(e) <= d, p.dtype.type(0.5) * e * e, d * np.abs(e) - p.dtype.type(0.5) * d * d).mean(-1)
    if loss == "binary_crossentropy":
        q = np.clip(p, eps, one - eps)
        return -(y * np.log(q) + (one - y) * np.log(one - q)).mean(axis=-1)
    if loss in ("categorical_crossentropy", "sparse_categorical_crossentropy"):
        if loss == "sparse_categorical_crossentropy":
            y = _sparse_onehot(y, p.shape[-1], p.dtype)
        q = np.clip(p / p.sum(axis=-1, keepdims=True), eps, one - eps)
        return -(y * np.log(q)).sum(axis=-1)
    if loss == "mean_squared_error":
        return ((p - y) ** 2).mean(axis=-1)
    raise ValueError(f"Unknown loss {loss!r}")


def loss_grad(p, y, loss, delta=1.0):
    """dL/dp for L = mean over the batch of the per-sample losses (zero where the clip is active)."""
    bsz, c = p.shape
    one, eps = p.dtype.type(1), p.dtype.type(EPSILON)
    if loss == "binary_crossentropy_from_logits":
        return (one / (one + np.exp(-p)) - y) / c / bsz
    if loss in ("categorical_crossentropy_from_logits", "sparse_categorical_crossentropy_from_logits"):
        if loss.startswith("sparse"):
            y = _sparse_onehot(y, c, p.dtype)
        return (act_forward(p, "softmax") * y.sum(axis=-1, keepdims=True) - y) / bsz
    if loss == "mean_absolute_error":
        return np.sign(p - y) / c / bsz
    if loss == "huber":
        e = p - y
        d = p.dtype.type(delta)
        return np.where(np.abs(e) <= d, e, d * np.sign(e)) / c / bsz
    if loss == "binary_crossentropy":
        clipped = (p < eps) | (p > one - eps)
        with np.errstate(divide="ignore", invalid="ignore"):
            g = (-(y / p) + (one - y) / (one - p)) / c
        return np.where(clipped, 0, g).astype(p.dtype) / bsz
    if loss in ("categorical_crossentropy", "sparse_categorical_crossentropy"):
        if loss == "sparse_categorical_crossentropy":
            y = _sparse_onehot(y, c, p.dtype)
        tot = p.sum(axis=-1, keepdims=True)
        q = p / tot
        clipped = (q < eps) | (q > one - eps)
        with np.errstate(divide="ignore", invalid="ignore"):
            gq = np.where(clipped, 0, -y / q).astype(p.dtype)
        return (gq - (gq * q).sum(axis=-1, keepdims=True)) / tot / bsz
    if loss == "mean_squared_error":
        return 2 * (p - y) / c / bsz
    raise ValueError(f"Unknown loss {loss!r}")


def smooth_labels(y, loss, label_smoothing, classes):
    """Keras's label smoothing of the targets the loss sees: y (1 - s) + s k, k = 1/2 (binary) or 1/classes."""
    if not label_smoothing:
        return y
    k = 0.5 if loss.startswith("binary") else 1.0 / classes
    s = y.dtype.type(label_smoothing)
    return y * (y.dtype.type(1) - s) + s * y.dtype.type(k)


def weighted_sum(values, w):
    """sum_i w_i values_i in float64 (w None: the plain sum)."""
    values = np.asarray(values).astype(np.float64)
    return float(values.sum() if w is None else (values * np.asarray(w).astype(np.float64)).sum())


def output_loss(p, y, loss, act, delta=1.0, w=None):
    """(sum of per-sample losses times their sample weights w (None: 1), dL/dz of the output layer for
    the batch loss sum_i w_i loss_i / B): the fused paths' analytic gradients where they apply, else
    dL/dp through the activation's backward; row i of dL/dz times w_i last."""
    bsz, c = p.shape
    total = weighted_sum(loss_per_sample(p, y, loss, delta), w)
    if act == "softmax" and loss == "sparse_categorical_crossentropy":
        dz = (p - _sparse_onehot(y, c, p.dtype)) / bsz
    elif act == "softmax" and loss == "categorical_crossentropy":
        dz = (p * y.sum(axis=-1, keepdims=True) - y) / bsz
    elif act == "sigmoid" and loss == "binary_crossentropy":
        dz = (p - y) / c / bsz
    else:
        dz = act_backward(p, loss_grad(p, y, loss, delta), act)
    if w is not None:
        dz = dz * w.astype(p.dtype).reshape(-1, 1)
    return total, dz.astype(p.dtype)


# ---- metrics ----


def accuracy_per_sample(p, y, metric):
    if metric == "binary_accuracy":
        return ((p > 0.5).astype(p.dtype) == y).mean(axis=-1)
    if metric == "categorical_accuracy":
        return (p.argmax(axis=-1) == y.argmax(axis=-1)).astype(np.float64)
    if metric == "sparse_categorical_accuracy":
        return (p.argmax(axis=-1) == y.reshape(-1).astype(np.int64)).astype(np.float64)
    if metric == "mean_absolute_error":
        return np.abs(p - y).mean(axis=-1)
    if metric == "mean_squared_error":
        return ((p - y) ** 2).mean(axis=-1)
    raise ValueError(f"Unknown metric {metric!r}")


# ---- optimizer ----


def decayed_lr(lr, decay, t, dtype=np.float32):
    """Keras 2 decay, lr / (1 + decay * t), computed in `dtype` as Keras does."""
    one = dtype(1)
    return dtype(dtype(lr) / (one + dtype(decay) * dtype(t)))


def sgd_update(w, g, v, lr, momentum, nesterov):
    """Keras momentum SGD, in place: v = mu*v - lr*g; w += v (nesterov: w += mu*v - lr*g)."""
    lr = w.dtype.type(lr)
    mu = w.dtype.type(momentum)
    if mu == 0:
        w -= g * lr
        return
    v *= mu
    v -= g * lr
    if nesterov:
        w += v * mu - g * lr
    else:
        w += v


def adam_update(w, g, m, v, lr, beta_1, beta_2, epsilon, t):
    """Keras 3 Adam, in place, update number t (>= 1)."""
    one = w.dtype.type(1)
    b1, b2, eps, tt = (w.dtype.type(x) for x in (beta_1, beta_2, epsilon, t))
    alpha = w.dtype.type(lr) * np.sqrt(one - b2**tt) / (one - b1**tt)
    m += (g - m) * (one - b1)
    v += (g * g - v) * (one - b2)
    w -= (m * alpha) / (np.sqrt(v) + eps)


def rmsprop_update(w, g, a, s, lr, rho, epsilon, momentum):
    """Keras 3 RMSprop (centered=False), in place."""
    one = w.dtype.type(1)
    rho, eps, mu, lr = (w.dtype.type(x) for x in (rho, epsilon, momentum, lr))
    a[...] = rho * a + (one - rho) * (g * g)
    inc = (lr * g) / np.sqrt(a + eps)
    if mu > 0:
        s[...] = mu * s + inc
        w -= s
    else:
        w -= inc


def adagrad_update(w, g, a, lr, epsilon):
    """Keras 3 Adagrad, in place."""
    a += g * g
    w -= (w.dtype.type(lr) * g) / np.sqrt(a + w.dtype.type(epsilon))


def scheduled_lr(config, t, dtype=np.float32):
    """The learning rate of update t + 1: the schedule's (csrc/optim.hpp scheduled_lr), else decay's."""
    kind = config.get("schedule", "")
    if not kind:
        return decayed_lr(config["learning_rate"], config.get("decay", 0.0), t, dtype)
    step = dtype(t)
    if kind == "piecewise":
        i = 0
        while i < len(config["boundaries"]) and step > dtype(config["boundaries"][i]):
            i += 1
        return dtype(config["values"][i])
    if kind == "cosine":
        progress = min(step, dtype(config["decay_steps"])) / dtype(config["decay_steps"])
        cosine = dtype(0.5) * (dtype(1) + np.cos(dtype(np.pi) * progress))
        return dtype(config["initial"]) * ((dtype(1) - dtype(config["alpha"])) * cosine + dtype(config["alpha"]))
    p = step / dtype(config["decay_steps"])
    if config.get("staircase"):
        p = np.floor(p)
    if kind == "exponential":
        return dtype(dtype(config["initial"]) * np.power(dtype(config["decay_rate"]), p))
    return dtype(dtype(config["initial"]) / (dtype(1) + dtype(config["decay_rate"]) * p))


def clip_gradients(config, grads):
    """Keras 3's clipnorm (per array), global_clipnorm or clipvalue, in place on the list `grads`."""
    if config.get("clipnorm"):
        c = grads[0].dtype.type(config["clipnorm"])
        for g in grads:
            norm = np.sqrt(np.sum(g * g))
            g[...] = (g * c) / max(norm, c)
    elif config.get("global_clipnorm"):
        c = grads[0].dtype.type(config["global_clipnorm"])
        norm = np.sqrt(sum(np.sum(g * g) for g in grads))
        scale = c * min(1 / norm, 1 / c) if np.isfinite(norm) else np.nan
        for g in grads:
            g *= scale
    elif config.get("clipvalue"):
        c = config["clipvalue"]
        for g in grads:
            np.clip(g, -c, c, out=g)


def optimizer_step(config, w, g, s1, s2, iterations):
    """One update (number iterations + 1) of the optimizer `config` (csrc/common.hpp OptimizerConfig)."""
    c = {"momentum": 0.0, "nesterov": False, "decay": 0.0, "beta_1": 0.9, "beta_2": 0.999, "epsilon": 1e-7,
         "rho": 0.9, "weight_decay": 0.0, **config}
    lr = scheduled_lr(c, iterations, w.dtype.type)
    if c["weight_decay"] > 0:
        w -= w * w.dtype.type(c["weight_decay"]) * lr
    kind = c["kind"]
    if kind == "sgd":
        sgd_update(w, g, s1, lr, c["momentum"], c["nesterov"])
    elif kind == "adam":
        adam_update(w, g, s1, s2, lr, c["beta_1"], c["beta_2"], c["epsilon"], iterations + 1)
    elif kind == "rmsprop":
        rmsprop_update(w, g, s1, s2, lr, c["rho"], c["epsilon"], c["momentum"])
    elif kind == "adagrad":
        adagrad_update(w, g, s1, lr, c["epsilon"])
    else:
        raise ValueError(f"Unknown optimizer kind {kind!r}")


# ---- shuffling: the same counter-based Fisher-Yates as csrc/shuffle.hpp ----

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _mix64(z):
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def permutation(n, seed, epoch):
    """The epoch's sample order: Fisher-Yates driven by SplitMix64 outputs of (seed, epoch): swap i
    takes the low (i even) or high (i odd) 32 bits of output k = i // 2.

    The random draws are vectorized; the swaps are inherently sequential and run as a Python loop
    (about 0.15 us per sample).
    """
    if n < 0:
        raise ValueError(f"Cannot shuffle {n} samples: expected a non-negative count.")
    with np.errstate(over="ignore"):
        stream = _mix64(np.array([seed], dtype=np.uint64) + _GOLDEN * np.uint64(epoch + 1))
        i = np.arange(n - 1, 0, -1, dtype=np.uint64)
        w = _mix64(stream + _GOLDEN * ((i >> np.uint64(1)) + np.uint64(1)))
        u = np.where(i & np.uint64(1), w >> np.uint64(32), w & np.uint64(0xFFFFFFFF))
        js = ((u * (i + np.uint64(1))) >> np.uint64(32)).tolist()
    perm = list(range(n))
    for i, j in zip(range(n - 1, 0, -1), js):
        perm[i], perm[j] = perm[j], perm[i]
    return np.array(perm, dtype=np.int64)


# ---- dropout: the same counter-based masks as csrc/dropout.hpp ----


def dropout_mask(rows, cols, rate, seed, iteration):
    """The (rows, cols) dropout mask (True: kept) of update number `iteration`: element (r, j) is kept
    iff mix64(stream + golden * (r * cols + j + 1)) >> 32 >= floor(rate * 2^32), with
    stream = mix64(mix64(seed) + golden * (iteration + 1))."""
    with np.errstate(over="ignore"):
        stream = _mix64(_mix64(np.array([seed], dtype=np.uint64)) + _GOLDEN * np.uint64(iteration + 1))
        keys = np.arange(1, rows * cols + 1, dtype=np.uint64)
        u = _mix64(stream + _GOLDEN * keys) >> np.uint64(32)
    return (u >= np.uint64(int(rate * 4294967296.0))).reshape(rows, cols)


def dropout_forward(x, mask, rate):
    """Inverted dropout: x / (1 - rate) where kept, else 0."""
    return np.where(mask, x / x.dtype.type(1.0 - rate), x.dtype.type(0))


def dropout_backward(d, mask, rate):
    return np.where(mask, d / d.dtype.type(1.0 - rate), d.dtype.type(0))


# ---- batch normalization (csrc/batchnorm.hpp): per feature over the batch rows ----


def batchnorm_forward_train(x, gamma, beta, epsilon):
    """(y, xhat, mean, var, inv) of the training forward on x (B, N): the batch's mean and biased
    variance (summed in float64, then rounded to x's dtype), inv = 1 / sqrt(var + eps),
    xhat = (x - mean) * inv, y = (x - mean) * (inv * gamma) + beta. gamma or beta None: 1 or 0."""
    t = x.dtype.type
    mean64 = x.astype(np.float64).mean(axis=0)
    mean = mean64.astype(x.dtype)
    var = ((x.astype(np.float64) - mean64) ** 2).mean(axis=0).astype(x.dtype)
    inv = t(1) / np.sqrt(var + t(epsilon))
    centered = x - mean
    scale = inv if gamma is None else inv * gamma
    y = centered * scale
    return (y if beta is None else y + beta), centered * inv, mean, var, inv


def batchnorm_forward_infer(x, moving_mean, moving_var, gamma, beta, epsilon):
    """The inference forward: (x - moving_mean) * (1 / sqrt(moving_var + eps) * gamma) + beta."""
    t = x.dtype.type
    scale = t(1) / np.sqrt(moving_var + t(epsilon))
    if gamma is not None:
        scale = scale * gamma
    y = (x - moving_mean) * scale
    return y if beta is None else y + beta


def batchnorm_update_moving(moving, batch, momentum):
    """Keras's moving statistic after a training step: moving * momentum + batch * (1 - momentum)."""
    t = moving.dtype.type
    return moving * t(momentum) + batch * t(1.0 - momentum)


def batchnorm_backward(dy, xhat, gamma, inv):
    """(dx, dgamma, dbeta) from dy = dL/dy of the training forward: dbeta = sum dy, dgamma =
    sum dy * xhat (over the batch, in float64), dx = gamma * inv * (dy - dbeta / B - xhat * dgamma / B)."""
    n = dy.shape[0]
    dbeta64 = dy.astype(np.float64).sum(axis=0)
    dgamma64 = (dy.astype(np.float64) * xhat.astype(np.float64)).sum(axis=0)
    scale = inv if gamma is None else gamma * inv
    dx = scale * (dy - (dbeta64 / n).astype(dy.dtype) - xhat * (dgamma64 / n).astype(dy.dtype))
    return dx, dgamma64.astype(dy.dtype), dbeta64.astype(dy.dtype)
