// Losses and accuracy metrics on the output layer, with their gradients.
//
// Shapes: P (B, C) is the output layer's activation; Y (B, C) holds the targets, except for the
// sparse categorical loss and metric, where Y is (B, 1) of integer class ids stored as T and
// already checked to lie in [0, C). `scale` is 1 / (the batch size) for Keras's
// sum_over_batch_size reduction. Every function returns the SUM of the per-sample losses (or
// accuracies) over the B rows, in double; the caller divides.
//
// Clipping convention (Keras, epsilon 1e-7): the loss VALUES clip probabilities to
// [eps, 1 - eps] exactly as Keras does. Gradients of losses on probabilities are zero where that
// clip is active, as in Keras. The fused output-layer paths (softmax with categorical or sparse
// categorical cross-entropy, sigmoid with binary cross-entropy) use the analytic logit gradient
// (p - y) * scale everywhere: equal to Keras's wherever the clip is inactive, and it keeps a
// saturated, wrong output learning where Keras's gradient vanishes.
#pragma once

#include <algorithm>
#include <cmath>

#include "activations.hpp"
#include "common.hpp"

namespace fastmlp {

template <typename T>
inline T clip_prob(T p) {
    const T lo = T(kEpsilon), hi = T(1) - T(kEpsilon);
    return std::min(std::max(p, lo), hi);
}

template <typename T>
inline bool clip_active(T p) {
    return p < T(kEpsilon) || p > T(1) - T(kEpsilon);
}

template <typename T>
inline index_t argmax_row(const T* a, index_t n) {
    index_t best = 0;
    for (index_t j = 1; j < n; ++j)
        if (a[j] > a[best]) best = j;
    return best;
}

// Per-sample loss of one row: p (C,), y (C,) or (1,) for the sparse loss.
template <typename T>
inline T loss_row(LossKind kind, const T* p, const T* y, index_t C) {
    switch (kind) {
        case LossKind::BinaryCrossentropy: {
            T s = 0;
            for (index_t j = 0; j < C; ++j) {
                const T q = clip_prob(p[j]);
                s += y[j] * std::log(q) + (T(1) - y[j]) * std::log(T(1) - q);
            }
            return -s / T(C);
        }
        case LossKind::CategoricalCrossentropy: {
            T tot = 0;
            for (index_t j = 0; j < C; ++j) tot += p[j];
            T s = 0;
            for (index_t j = 0; j < C; ++j) s += y[j] * std::log(clip_prob(p[j] / tot));
            return -s;
        }
        case LossKind::SparseCategoricalCrossentropy: {
            T tot = 0;
            for (index_t j = 0; j < C; ++j) tot += p[j];
            return -std::log(clip_prob(p[static_cast<index_t>(y[0])] / tot));
        }
        case LossKind::MeanSquaredError: {
            T s = 0;
            for (index_t j = 0; j < C; ++j) s += (p[j] - y[j]) * (p[j] - y[j]);
            return s / T(C);
        }
    }
    return T(0);
}

// Gradient of one row's loss with respect to the probabilities p, times scale: g (C,) overwritten.
template <typename T>
inline void loss_grad_row(LossKind kind, const T* p, const T* y, index_t C, T scale, T* g) {
    switch (kind) {
        case LossKind::BinaryCrossentropy:
            for (index_t j = 0; j < C; ++j) {
                const T q = p[j];
                g[j] = clip_active(q) ? T(0) : scale / T(C) * (-(y[j] / q) + (T(1) - y[j]) / (T(1) - q));
            }
            break;
        case LossKind::CategoricalCrossentropy:
        case LossKind::SparseCategoricalCrossentropy: {
            // L = -sum_j y_j log clip(q_j), q = p / sum(p):
            // dL/dp_i = (gq_i - sum_j gq_j q_j) / sum(p), gq_j = -y_j / q_j (0 where clipped).
            const bool sparse = kind == LossKind::SparseCategoricalCrossentropy;
            const index_t label = sparse ? static_cast<index_t>(y[0]) : -1;
            T tot = 0;
            for (index_t j = 0; j < C; ++j) tot += p[j];
            T dot = 0;
            for (index_t j = 0; j < C; ++j) {
                const T q = p[j] / tot;
                const T yj = sparse ? T(j == label) : y[j];
                g[j] = clip_active(q) ? T(0) : -yj / q;
                dot += g[j] * q;
            }
            for (index_t j = 0; j < C; ++j) g[j] = scale * (g[j] - dot) / tot;
            break;
        }
        case LossKind::MeanSquaredError:
            for (index_t j = 0; j < C; ++j) g[j] = scale * T(2) / T(C) * (p[j] - y[j]);
            break;
    }
}

// Loss of a batch and, when dZ is not null, the gradient with respect to the output layer's
// PRE-activation Z (dZ (B, C) overwritten). Reference path: dL/dP row by row, then the
// activation's backward.
template <typename T>
double output_loss_naive(LossKind kind, Act act, const T* P, const T* Y, index_t ycols, index_t B, index_t C,
                         T scale, T* dZ) {
    double total = 0;
    for (index_t i = 0; i < B; ++i) {
        const T* p = P + i * C;
        const T* y = Y + i * ycols;
        total += loss_row(kind, p, y, C);
        if (dZ) {
            loss_grad_row(kind, p, y, C, scale, dZ + i * C);
            act_backward_row(act, p, dZ + i * C, C);
        }
    }
    return total;
}

// Fused path (same contract as output_loss_naive): loss and logit gradient in one pass per row,
// with the analytic gradient for softmax + (sparse) categorical cross-entropy and sigmoid + binary
// cross-entropy.
template <typename T>
double output_loss(LossKind kind, Act act, const T* P, const T* Y, index_t ycols, index_t B, index_t C,
                   T scale, T* dZ) {
    const bool softmax_ce = act == Act::Softmax && (kind == LossKind::CategoricalCrossentropy ||
                                                    kind == LossKind::SparseCategoricalCrossentropy);
    const bool sigmoid_bce = act == Act::Sigmoid && kind == LossKind::BinaryCrossentropy;
    if (!dZ || !(softmax_ce || sigmoid_bce)) return output_loss_naive(kind, act, P, Y, ycols, B, C, scale, dZ);
    double total = 0;
    for (index_t i = 0; i < B; ++i) {
        const T* p = P + i * C;
        const T* y = Y + i * ycols;
        T* d = dZ + i * C;
        total += loss_row(kind, p, y, C);
        if (kind == LossKind::SparseCategoricalCrossentropy) {
            const index_t label = static_cast<index_t>(y[0]);
            for (index_t j = 0; j < C; ++j) d[j] = scale * (p[j] - T(j == label));
        } else if (kind == LossKind::CategoricalCrossentropy) {
            T ysum = 0;
            for (index_t j = 0; j < C; ++j) ysum += y[j];
            for (index_t j = 0; j < C; ++j) d[j] = scale * (p[j] * ysum - y[j]);
        } else {
            for (index_t j = 0; j < C; ++j) d[j] = scale / T(C) * (p[j] - y[j]);
        }
    }
    return total;
}

// Sum over the B rows of the per-sample accuracy (Keras 3 definitions):
//   binary: mean over columns of [(p > 0.5) == y];  categorical: argmax p == argmax y;
//   sparse categorical: argmax p == y[0].
template <typename T>
double accuracy_sum(MetricKind kind, const T* P, const T* Y, index_t ycols, index_t B, index_t C) {
    double total = 0;
    for (index_t i = 0; i < B; ++i) {
        const T* p = P + i * C;
        const T* y = Y + i * ycols;
        switch (kind) {
            case MetricKind::BinaryAccuracy: {
                index_t hits = 0;
                for (index_t j = 0; j < C; ++j) hits += T(p[j] > T(0.5)) == y[j];
                total += static_cast<double>(hits) / static_cast<double>(C);
                break;
            }
            case MetricKind::CategoricalAccuracy:
                total += argmax_row(p, C) == argmax_row(y, C);
                break;
            case MetricKind::SparseCategoricalAccuracy:
                total += argmax_row(p, C) == static_cast<index_t>(y[0]);
                break;
        }
    }
    return total;
}

}  // namespace fastmlp
