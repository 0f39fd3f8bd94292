// Fused optimizer updates over the flat parameter arena.
#pragma once

#include <cmath>

#include "common.hpp"

FASTMLP_ISA_BEGIN

// Keras 2 `decay` (tf-keras legacy optimizers, Keras 3 InverseTimeDecay(lr, 1, decay)):
//   lr_t = lr / (1 + decay * t), t = number of updates already applied. Computed in T as Keras does.
template <typename T>
inline T decayed_lr(double lr, double decay, std::int64_t t) {
    return T(lr) / (T(1) + T(decay) * T(t));
}

// Momentum SGD, Keras form (not PyTorch's), over n parameters:
//   v := mu*v - lr*g;  w += v                    (nesterov: w += mu*v - lr*g, with the new v)
//   mu == 0:  w -= lr*g, v is neither read nor written (it may be null).
// w (n,) and v (n,) updated in place; g (n,) read only. Returns whether every new w is finite,
// checked in the same pass. The loop is its own reference: one elementwise expression per
// parameter, identical in every build.
template <typename T>
bool sgd_update(T* w, const T* g, T* v, index_t n, T lr, T mu, bool nesterov) {
    // w - w is 0 for a finite w and NaN for NaN or infinity; an integer OR keeps the loop vectorizable.
    int bad = 0;
    if (mu == T(0)) {
        for (index_t i = 0; i < n; ++i) {
            w[i] -= g[i] * lr;
            bad |= static_cast<int>(w[i] - w[i] != T(0));
        }
    } else if (nesterov) {
        for (index_t i = 0; i < n; ++i) {
            v[i] = v[i] * mu - g[i] * lr;
            w[i] += v[i] * mu - g[i] * lr;
            bad |= static_cast<int>(w[i] - w[i] != T(0));
        }
    } else {
        for (index_t i = 0; i < n; ++i) {
            v[i] = v[i] * mu - g[i] * lr;
            w[i] += v[i];
            bad |= static_cast<int>(w[i] - w[i] != T(0));
        }
    }
    return bad == 0;
}

// Adam (Keras 3, optimizers/adam.py), update number t = iterations + 1:
//   alpha = lr * sqrt(1 - b2^t) / (1 - b1^t);  m += (g - m)(1 - b1);  v += (g^2 - v)(1 - b2);
//   w -= (m * alpha) / (sqrt(v) + eps)          (epsilon on sqrt(v), not PyTorch's placement)
// w, m, v (n,) updated in place. Returns whether every new w is finite.
template <typename T>
bool adam_update(T* w, const T* g, T* m, T* v, index_t n, T lr, T b1, T b2, T eps, std::int64_t t) {
    const T tt = T(t);
    const T alpha = lr * std::sqrt(T(1) - std::pow(b2, tt)) / (T(1) - std::pow(b1, tt));
    int bad = 0;
    for (index_t i = 0; i < n; ++i) {
        m[i] += (g[i] - m[i]) * (T(1) - b1);
        v[i] += (g[i] * g[i] - v[i]) * (T(1) - b2);
        w[i] -= (m[i] * alpha) / (std::sqrt(v[i]) + eps);
        bad |= static_cast<int>(w[i] - w[i] != T(0));
    }
    return bad == 0;
}

// RMSprop (Keras 3, optimizers/rmsprop.py, centered=False):
//   a := rho*a + (1 - rho) g^2;  inc = lr*g / sqrt(a + eps);
//   momentum == 0: w -= inc;  else: s := momentum*s + inc; w -= s.
template <typename T>
bool rmsprop_update(T* w, const T* g, T* a, T* s, index_t n, T lr, T rho, T eps, T momentum) {
    int bad = 0;
    for (index_t i = 0; i < n; ++i) {
        a[i] = rho * a[i] + (T(1) - rho) * (g[i] * g[i]);
        const T inc = (lr * g[i]) / std::sqrt(a[i] + eps);
        if (momentum > T(0)) {
            s[i] = momentum * s[i] + inc;
            w[i] -= s[i];
        } else {
            w[i] -= inc;
        }
        bad |= static_cast<int>(w[i] - w[i] != T(0));
    }
    return bad == 0;
}

// Adagrad (Keras 3, optimizers/adagrad.py; a starts at initial_accumulator_value):
//   a += g^2;  w -= lr*g / sqrt(a + eps)
template <typename T>
bool adagrad_update(T* w, const T* g, T* a, index_t n, T lr, T eps) {
    int bad = 0;
    for (index_t i = 0; i < n; ++i) {
        a[i] += g[i] * g[i];
        w[i] -= (lr * g[i]) / std::sqrt(a[i] + eps);
        bad |= static_cast<int>(w[i] - w[i] != T(0));
    }
    return bad == 0;
}

// One optimizer step over the arena, update number iterations + 1 (Keras's order: the decoupled
// weight decay w -= w * weight_decay * lr first, then the kind's rule). s1 and s2 are the
// optimizer's state arenas (SGD: s1 = velocity; Adam: m, v; RMSprop: accumulator, momentum;
// Adagrad: accumulator). Returns whether every new weight is finite.
template <typename T>
bool optimizer_step(const OptimizerConfig& c, T* w, const T* g, T* s1, T* s2, index_t n, std::int64_t iterations) {
    const T lr = decayed_lr<T>(c.learning_rate, c.decay, iterations);
    if (c.weight_decay > 0) {
        const T wd = T(c.weight_decay);
        for (index_t i = 0; i < n; ++i) w[i] -= w[i] * wd * lr;
    }
    switch (c.kind) {
        case OptKind::SGD: return sgd_update(w, g, s1, n, lr, T(c.momentum), c.nesterov);
        case OptKind::Adam:
            return adam_update(w, g, s1, s2, n, lr, T(c.beta_1), T(c.beta_2), T(c.epsilon), iterations + 1);
        case OptKind::RMSprop: return rmsprop_update(w, g, s1, s2, n, lr, T(c.rho), T(c.epsilon), T(c.momentum));
        case OptKind::Adagrad: return adagrad_update(w, g, s1, n, lr, T(c.epsilon));
    }
    return true;
}

FASTMLP_ISA_END
