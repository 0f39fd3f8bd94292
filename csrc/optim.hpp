// Fused optimizer updates over the flat parameter arena.
#pragma once

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

FASTMLP_ISA_END
