// Fused optimizer updates over the flat parameter arena.
#pragma once

#include <algorithm>
#include <cmath>
#include <limits>
#include <utility>
#include <vector>

#include "common.hpp"

FASTMLP_ISA_BEGIN

// Keras 2 `decay` (tf-keras legacy optimizers, Keras 3 InverseTimeDecay(lr, 1, decay)):
//   lr_t = lr / (1 + decay * t), t = number of updates already applied. Computed in T as Keras does.
template <typename T>
inline T decayed_lr(double lr, double decay, std::int64_t t) {
    return T(lr) / (T(1) + T(decay) * T(t));
}

// Momentum SGD, Keras form (not PyTorch's), one parameter or one vector of them (V is T or a GCC
// vector of T), mu != 0:
//   v := mu*v - lr*g;  w += v                    (nesterov: w += mu*v - lr*g, with the new v)
// sgd_update below and the update fused into the weight-gradient product's store (gemm.hpp
// sgd_tile) both call it, so the two give the same bits.
template <typename V, typename T>
__attribute__((always_inline)) inline void sgd_momentum_step(V& w, V& v, V g, T lr, T mu, bool nesterov) {
    v = v * mu - g * lr;
    w += nesterov ? V(v * mu - g * lr) : v;
}

// Momentum SGD over n parameters:
//   sgd_momentum_step on each; mu == 0:  w -= lr*g, v is neither read nor written (it may be null).
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
            sgd_momentum_step(w[i], v[i], g[i], lr, mu, true);
            bad |= static_cast<int>(w[i] - w[i] != T(0));
        }
    } else {
        for (index_t i = 0; i < n; ++i) {
            sgd_momentum_step(w[i], v[i], g[i], lr, mu, false);
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

// The learning rate for update number t + 1 (t updates applied): the schedule's value at step t,
// else Keras 2's decay of learning_rate. Computed in T, as Keras computes schedules in float32.
template <typename T>
T scheduled_lr(const OptimizerConfig& c, std::int64_t t) {
    if (c.schedule.empty()) return decayed_lr<T>(c.learning_rate, c.decay, t);
    const T step = T(t);
    if (c.schedule == "piecewise") {  // values has one more entry than boundaries (checked when built)
        std::size_t i = 0;
        while (i < c.boundaries.size() && step > T(c.boundaries[i])) ++i;
        return T(c.values[std::min(i, c.values.size() - 1)]);
    }
    if (c.schedule == "cosine") {
        const T progress = std::min(step, T(c.decay_steps)) / T(c.decay_steps);
        const T cosine = T(0.5) * (T(1) + std::cos(T(3.14159265358979323846) * progress));
        return T(c.initial) * ((T(1) - T(c.alpha)) * cosine + T(c.alpha));
    }
    T p = step / T(c.decay_steps);
    if (c.staircase) p = std::floor(p);
    if (c.schedule == "exponential") return T(c.initial) * std::pow(T(c.decay_rate), p);
    return T(c.initial) / (T(1) + T(c.decay_rate) * p);  // inverse_time
}

// Sum of x[i]^2 over n values in a fixed order for every vector width: 16 partial sums over
// i = j (mod 16), then p[j] += p[j+8], p[j] += p[j+4], p[j] += p[j+2], p[0] + p[1].
template <typename T>
T sum_squares(const T* x, index_t n) {
    T p[16] = {};
    const index_t full = n / 16 * 16;
    for (index_t i = 0; i < full; i += 16)
        for (int j = 0; j < 16; ++j) p[j] += x[i + j] * x[i + j];
    for (index_t i = full; i < n; ++i) p[i - full] += x[i] * x[i];
    for (int j = 0; j < 8; ++j) p[j] += p[j + 8];
    for (int j = 0; j < 4; ++j) p[j] += p[j + 4];
    for (int j = 0; j < 2; ++j) p[j] += p[j + 2];
    return p[0] + p[1];
}

// Sum of |x[i]| over n values, in sum_squares's fixed order.
template <typename T>
T sum_abs(const T* x, index_t n) {
    T p[16] = {};
    const index_t full = n / 16 * 16;
    for (index_t i = 0; i < full; i += 16)
        for (int j = 0; j < 16; ++j) p[j] += std::abs(x[i + j]);
    for (index_t i = full; i < n; ++i) p[i - full] += std::abs(x[i]);
    for (int j = 0; j < 8; ++j) p[j] += p[j + 8];
    for (int j = 0; j < 4; ++j) p[j] += p[j + 4];
    for (int j = 0; j < 2; ++j) p[j] += p[j + 2];
    return p[0] + p[1];
}

// A weight array's L1/L2 penalty, l1 sum|w| + l2 sum w^2 (returned), and its gradient
// l1 sign(w) + 2 l2 w added to g when g is not null.
template <typename T>
double weight_penalty(const T* w, T* g, index_t n, double l1, double l2) {
    if (l1 == 0 && l2 == 0) return 0;
    const double penalty = l1 * double(sum_abs(w, n)) + l2 * double(sum_squares(w, n));
    if (g) {
        const T a = T(l1), b = T(2 * l2);
        for (index_t i = 0; i < n; ++i) {
            const T sign = w[i] > T(0) ? T(1) : (w[i] < T(0) ? T(-1) : T(0));
            g[i] += a * sign + b * w[i];
        }
    }
    return penalty;
}

// Keras 3's gradient clipping, in place on the gradient arena g; `segments` lists each weight
// array as (offset, size):
//   clipnorm c (per array):  g *= c / max(||g||, c)
//   global_clipnorm c:       g *= c * min(1 / ||all g||, 1 / c)   (NaN when the norm is not finite)
//   clipvalue c:             g = clip(g, -c, c)
template <typename T>
void clip_gradients(const OptimizerConfig& c, T* g, const std::vector<std::pair<index_t, index_t>>& segments) {
    if (c.clipnorm > 0) {
        const T cn = T(c.clipnorm);
        for (const auto& [off, size] : segments) {
            const T l2 = sum_squares(g + off, size);
            const T norm = l2 > T(0) ? std::sqrt(l2) : l2;
            const T denom = std::max(norm, cn);
            for (index_t i = 0; i < size; ++i) g[off + i] = (g[off + i] * cn) / denom;
        }
    } else if (c.global_clipnorm > 0) {
        const T cn = T(c.global_clipnorm);
        T total = 0;
        for (const auto& [off, size] : segments) total += sum_squares(g + off, size);
        const T norm = std::sqrt(total);
        const T scale = std::isfinite(norm) ? cn * std::min(T(1) / norm, T(1) / cn) : std::numeric_limits<T>::quiet_NaN();
        for (const auto& [off, size] : segments)
            for (index_t i = 0; i < size; ++i) g[off + i] = g[off + i] * scale;
    } else if (c.clipvalue > 0) {
        const T cv = T(c.clipvalue);
        for (const auto& [off, size] : segments)
            for (index_t i = 0; i < size; ++i) g[off + i] = std::min(std::max(g[off + i], -cv), cv);
    }
}

// One optimizer step over the arena, update number iterations + 1 (Keras's order: the decoupled
// weight decay w -= w * weight_decay * lr first, then the kind's rule; gradients already clipped). s1 and s2 are the
// optimizer's state arenas (SGD: s1 = velocity; Adam: m, v; RMSprop: accumulator, momentum;
// Adagrad: accumulator). Returns whether every new weight is finite.
template <typename T>
bool optimizer_step(const OptimizerConfig& c, T* w, const T* g, T* s1, T* s2, index_t n, std::int64_t iterations) {
    const T lr = scheduled_lr<T>(c, iterations);
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
