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
#include <limits>
#include <string>
#include <vector>

#include "activations.hpp"
#include "common.hpp"
#include "mathfun.hpp"

FASTMLP_ISA_BEGIN

// clip_prob, clip_active, bce_term_binary and bce_grad_binary take a scalar or a whole GCC vector
// (the narrow kernels' lanes), lane by lane the same operations: std::min/std::max written out.
// Always inlined: a call in a loop over lane vectors spills every live vector register (all of
// them are caller-saved).
template <typename V>
__attribute__((always_inline)) inline V clip_prob(V p) {
    using T = lane_t<V>;
    const T lo = T(kEpsilon), hi = T(1) - T(kEpsilon);
    const V a = max_sel(as_lanes<V>(lo), p);  // std::max(p, lo): p < lo ? lo : p
    return min_sel(as_lanes<V>(hi), a);       // std::min(a, hi): hi < a ? hi : a
}

template <typename V>
__attribute__((always_inline)) inline auto clip_active(V p) {  // bool, or a lane mask
    using T = lane_t<V>;
    return (p < T(kEpsilon)) | (p > T(1) - T(kEpsilon));
}

// Sparse labels (column 0 of each of the n rows of Y, row stride ycols) must be integers in [0, C):
// checked once before any kernel indexes with them.
template <typename T>
void check_sparse_labels(const T* Y, index_t n, index_t ycols, index_t C) {
    for (index_t i = 0; i < n; ++i) {
        const T y = Y[i * ycols];
        if (!(y >= T(0) && y < T(C) && y == std::floor(y)))
            throw std::invalid_argument("Sparse labels must be integers in [0, " + std::to_string(C) + "); received " +
                                        std::to_string(y) + " at row " + std::to_string(i) + ".");
    }
}

// Elementwise pieces shared by the row-major and the feature-major (narrow.hpp) paths, so that
// both compute every element with the same operations.
template <typename V>
__attribute__((always_inline)) inline V bce_term(V p, V y) {  // y log(clip p) + (1 - y) log(1 - clip p)
    using T = lane_t<V>;
    const V q = clip_prob(p);
    return y * vlog(q) + (T(1) - y) * vlog(T(1) - q);
}

template <typename V>
__attribute__((always_inline)) inline V bce_grad(V p, V y, lane_t<V> s) {  // s * d/dp[-(y log p + (1 - y) log(1 - p))], 0 where clipped
    using T = lane_t<V>;
    const V g = s * (-(y / p) + (T(1) - y) / (T(1) - p));
    return clip_active(p) ? T(0) : g;
}

// The same two functions for a target that is exactly 0 or 1, with one log and one division
// instead of two: for such y they return the same bits as bce_term and bce_grad (the dropped
// term is an exact zero).
template <typename V>
__attribute__((always_inline)) inline V bce_term_binary(V p, V y) {
    using T = lane_t<V>;
    const V q = clip_prob(p);
    return vlog(y == T(1) ? q : T(1) - q);
}

template <typename V>
__attribute__((always_inline)) inline V bce_grad_binary(V p, V y, lane_t<V> s) {
    using T = lane_t<V>;
    V den = y == T(1) ? p : T(1) - p;
    // One division of the selected denominator: without the barrier GCC divides both candidates
    // and selects the quotient (the same bits, twice the divisions).
    if constexpr (!std::is_same_v<V, T>) asm("" : "+x"(den));
    const V r = T(1) / den;
    const V g = s * (y == T(1) ? -r : r);
    return clip_active(p) ? T(0) : g;
}

template <typename T>
inline bool all_binary(const T* Y, index_t n) {
    // Integer accumulation rather than a bool with early exit, so that the loop vectorizes.
    int bad = 0;
    for (index_t k = 0; k < n; ++k) bad |= static_cast<int>(Y[k] != T(0)) & static_cast<int>(Y[k] != T(1));
    return bad == 0;
}

template <typename T>
inline index_t argmax_row(const T* a, index_t n) {
    index_t best = 0;
    for (index_t j = 1; j < n; ++j)
        if (a[j] > a[best]) best = j;
    return best;
}

// Per-sample loss of one row of the categorical losses: p (C,), y (C,) or (1,) for the sparse loss.
template <typename T>
inline T categorical_loss_row(LossKind kind, const T* p, const T* y, index_t C) {
    T tot = 0;
    for (index_t j = 0; j < C; ++j) tot += p[j];
    if (kind == LossKind::SparseCategoricalCrossentropy)
        return -vlog(clip_prob(p[static_cast<index_t>(y[0])] / tot));
    T s = 0;
    for (index_t j = 0; j < C; ++j) s += y[j] * vlog(clip_prob(p[j] / tot));
    return -s;
}

// Sum over the B rows of the per-sample losses. The elementwise losses (binary cross-entropy,
// squared error) compute their terms in one flat pass into `work` (B*C) so that it vectorizes
// however few columns there are; each row's terms are then summed in column order.
// log(sum_j exp(z_j)) of one row, stably: m + log(sum exp(z - m)).
template <typename T>
inline T log_sum_exp(const T* z, index_t C) {
    T m = -std::numeric_limits<T>::infinity();
    for (index_t j = 0; j < C; ++j) m = std::max(m, z[j]);
    T s = 0;
    for (index_t j = 0; j < C; ++j) s += vexp(z[j] - m);
    return m + vlog(s);
}

// Per-sample categorical cross-entropy on logits (log-softmax, no clipping), as Keras's
// from_logits=True: sum_j y_j (lse - z_j), or lse - z_label for the sparse loss.
template <typename T>
inline T categorical_logits_row(LossKind kind, const T* z, const T* y, index_t C) {
    const T lse = log_sum_exp(z, C);
    if (kind == LossKind::SparseCategoricalCrossentropyLogits) return lse - z[static_cast<index_t>(y[0])];
    T s = 0;
    for (index_t j = 0; j < C; ++j) s += y[j] * (z[j] - lse);
    return -s;
}

// Elementwise terms of the losses averaged over columns (Keras 3 definitions):
//   BCE on logits: max(z, 0) - z y + log(1 + exp(-|z|));  MAE: |p - y|;
//   Huber: 0.5 e^2 where |e| <= delta, else delta |e| - 0.5 delta^2, e = p - y.
template <typename T>
inline T elementwise_term(LossKind kind, T p, T y, T delta) {
    const T e = p - y;
    switch (kind) {
        case LossKind::BinaryCrossentropyLogits:
            return (std::max(p, T(0)) - p * y) + vlog(T(1) + vexp(-std::abs(p)));
        case LossKind::MeanAbsoluteError: return std::abs(e);
        case LossKind::Huber:
            return std::abs(e) <= delta ? T(0.5) * (e * e) : delta * std::abs(e) - T(0.5) * (delta * delta);
        default: return e * e;  // MeanSquaredError
    }
}

// Sum over the B rows of the per-sample losses, each times its sample weight w[i] (Keras's
// sample_weight; w null: all 1), in double. The elementwise losses (binary cross-entropy, squared
// error, ...) compute their terms in one flat pass into `work` (B*C) so that it vectorizes however
// few columns there are; each row's terms are then summed in column order.
template <typename T>
inline double weighted(double v, const T* w, index_t i) {
    return w ? double(w[i]) * v : v;
}

template <typename T>
double loss_sum(LossKind kind, const T* P, const T* Y, index_t ycols, index_t B, index_t C, std::vector<T>& work,
                T delta = T(1), const T* w = nullptr) {
    double total = 0;
    if (kind == LossKind::CategoricalCrossentropy || kind == LossKind::SparseCategoricalCrossentropy) {
        for (index_t i = 0; i < B; ++i) total += weighted(categorical_loss_row(kind, P + i * C, Y + i * ycols, C), w, i);
        return total;
    }
    if (kind == LossKind::CategoricalCrossentropyLogits || kind == LossKind::SparseCategoricalCrossentropyLogits) {
        for (index_t i = 0; i < B; ++i)
            total += weighted(categorical_logits_row(kind, P + i * C, Y + i * ycols, C), w, i);
        return total;
    }
    const index_t n = B * C;
    if (static_cast<index_t>(work.size()) < n) work.resize(n);
    T* t = work.data();
    if (kind == LossKind::BinaryCrossentropy) {
        if (all_binary(Y, n)) {
            for (index_t k = 0; k < n; ++k) t[k] = bce_term_binary(P[k], Y[k]);
        } else {
            for (index_t k = 0; k < n; ++k) t[k] = bce_term(P[k], Y[k]);
        }
    } else if (kind == LossKind::MeanSquaredError) {
        for (index_t k = 0; k < n; ++k) t[k] = (P[k] - Y[k]) * (P[k] - Y[k]);
    } else {
        for (index_t k = 0; k < n; ++k) t[k] = elementwise_term(kind, P[k], Y[k], delta);
    }
    const T sign = kind == LossKind::BinaryCrossentropy ? T(-1) : T(1);
    for (index_t i = 0; i < B; ++i) {
        T s = 0;
        for (index_t j = 0; j < C; ++j) s += t[i * C + j];
        total += weighted(sign * s / T(C), w, i);
    }
    return total;
}

// dZ (B, C): row i times w[i], the sample weights' share of the gradient (w null: unchanged).
template <typename T>
inline void scale_rows(T* dZ, const T* w, index_t B, index_t C) {
    if (!w) return;
    for (index_t i = 0; i < B; ++i)
        for (index_t j = 0; j < C; ++j) dZ[i * C + j] *= w[i];
}

// G (B, C) := dL/dP times scale, for the batch loss (zero where the clip is active).
template <typename T>
void loss_grad(LossKind kind, const T* P, const T* Y, index_t ycols, index_t B, index_t C, T scale, T* G,
               T delta = T(1)) {
    const index_t n = B * C;
    switch (kind) {
        case LossKind::BinaryCrossentropyLogits: {  // d/dz = sigmoid(z) - y
            const T s = scale / T(C);
            for (index_t k = 0; k < n; ++k) G[k] = s * (T(1) / (T(1) + vexp(-P[k])) - Y[k]);
            break;
        }
        case LossKind::CategoricalCrossentropyLogits:
        case LossKind::SparseCategoricalCrossentropyLogits: {  // d/dz = softmax(z) sum(y) - y
            const bool sparse = kind == LossKind::SparseCategoricalCrossentropyLogits;
            for (index_t i = 0; i < B; ++i) {
                const T* y = Y + i * ycols;
                T* g = G + i * C;
                for (index_t j = 0; j < C; ++j) g[j] = P[i * C + j];
                softmax_row(g, C);
                T ysum = 0;
                if (!sparse)
                    for (index_t j = 0; j < C; ++j) ysum += y[j];
                const index_t label = sparse ? static_cast<index_t>(y[0]) : -1;
                for (index_t j = 0; j < C; ++j)
                    g[j] = sparse ? scale * (g[j] - T(j == label)) : scale * (g[j] * ysum - y[j]);
            }
            break;
        }
        case LossKind::MeanAbsoluteError: {  // sign(p - y), 0 at 0
            const T s = scale / T(C);
            for (index_t k = 0; k < n; ++k) {
                const T e = P[k] - Y[k];
                G[k] = s * (e > T(0) ? T(1) : (e < T(0) ? T(-1) : T(0)));
            }
            break;
        }
        case LossKind::Huber: {  // e where |e| <= delta, else delta sign(e)
            const T s = scale / T(C);
            for (index_t k = 0; k < n; ++k) {
                const T e = P[k] - Y[k];
                G[k] = s * (std::abs(e) <= delta ? e : (e > T(0) ? delta : -delta));
            }
            break;
        }
        case LossKind::BinaryCrossentropy: {
            const T s = scale / T(C);
            if (all_binary(Y, n)) {
                for (index_t k = 0; k < n; ++k) G[k] = bce_grad_binary(P[k], Y[k], s);
            } else {
                for (index_t k = 0; k < n; ++k) G[k] = bce_grad(P[k], Y[k], s);
            }
            break;
        }
        case LossKind::CategoricalCrossentropy:
        case LossKind::SparseCategoricalCrossentropy: {
            // L = -sum_j y_j log clip(q_j), q = p / sum(p):
            // dL/dp_i = (gq_i - sum_j gq_j q_j) / sum(p), gq_j = -y_j / q_j (0 where clipped).
            const bool sparse = kind == LossKind::SparseCategoricalCrossentropy;
            for (index_t i = 0; i < B; ++i) {
                const T* p = P + i * C;
                const T* y = Y + i * ycols;
                T* g = G + i * C;
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
            }
            break;
        }
        case LossKind::MeanSquaredError: {
            const T s = scale * T(2) / T(C);
            for (index_t k = 0; k < n; ++k) G[k] = s * (P[k] - Y[k]);
            break;
        }
    }
}

// Loss of a batch and, when dZ is not null, the gradient with respect to the output layer's
// PRE-activation Z (dZ (B, C) overwritten). Reference path: dL/dP, then the activation's backward.
// Sample weights w (B,) or null: the loss sums w[i] * loss_i, and row i of dZ is multiplied by w[i]
// last (Keras 3's sum_over_batch_size: the weighted sum divided by the batch size, scale = 1/B).
template <typename T>
double output_loss_naive(LossKind kind, Act act, const T* P, const T* Y, index_t ycols, index_t B, index_t C,
                         T scale, T* dZ, std::vector<T>& work, T delta = T(1), const T* w = nullptr) {
    const double total = loss_sum(kind, P, Y, ycols, B, C, work, delta, w);
    if (dZ) {
        loss_grad(kind, P, Y, ycols, B, C, scale, dZ, delta);
        act_backward_rows(act, P, dZ, B, C);
        scale_rows(dZ, w, B, C);
    }
    return total;
}

// Fused path (same contract as output_loss_naive), with the analytic logit gradient for softmax +
// (sparse) categorical cross-entropy and sigmoid + binary cross-entropy.
template <typename T>
double output_loss(LossKind kind, Act act, const T* P, const T* Y, index_t ycols, index_t B, index_t C, T scale,
                   T* dZ, std::vector<T>& work, T delta = T(1), const T* w = nullptr) {
    const bool softmax_ce = act == Act::Softmax && (kind == LossKind::CategoricalCrossentropy ||
                                                    kind == LossKind::SparseCategoricalCrossentropy);
    const bool sigmoid_bce = act == Act::Sigmoid && kind == LossKind::BinaryCrossentropy;
    if (!dZ || !(softmax_ce || sigmoid_bce))
        return output_loss_naive(kind, act, P, Y, ycols, B, C, scale, dZ, work, delta, w);
    const double total = loss_sum(kind, P, Y, ycols, B, C, work, T(1), w);
    if (sigmoid_bce) {
        const T s = scale / T(C);
        for (index_t k = 0; k < B * C; ++k) dZ[k] = s * (P[k] - Y[k]);
        scale_rows(dZ, w, B, C);
        return total;
    }
    for (index_t i = 0; i < B; ++i) {
        const T* p = P + i * C;
        const T* y = Y + i * ycols;
        T* d = dZ + i * C;
        if (kind == LossKind::SparseCategoricalCrossentropy) {
            const index_t label = static_cast<index_t>(y[0]);
            for (index_t j = 0; j < C; ++j) d[j] = scale * (p[j] - T(j == label));
        } else {
            T ysum = 0;
            for (index_t j = 0; j < C; ++j) ysum += y[j];
            for (index_t j = 0; j < C; ++j) d[j] = scale * (p[j] * ysum - y[j]);
        }
    }
    scale_rows(dZ, w, B, C);
    return total;
}

// Sum over the B rows of the per-sample metric (Keras 3 definitions), each times its sample weight
// w[i] (Keras's weighted_metrics; w null: all 1):
//   binary: mean over columns of [(p > 0.5) == y];  categorical: argmax p == argmax y;
//   sparse categorical: argmax p == y[0];  mean absolute / squared error: mean over columns.
template <typename T>
double accuracy_sum(MetricKind kind, const T* P, const T* Y, index_t ycols, index_t B, index_t C,
                    const T* w = nullptr) {
    double total = 0;
    for (index_t i = 0; i < B; ++i) {
        const T* p = P + i * C;
        const T* y = Y + i * ycols;
        switch (kind) {
            case MetricKind::BinaryAccuracy: {
                index_t hits = 0;
                for (index_t j = 0; j < C; ++j) hits += T(p[j] > T(0.5)) == y[j];
                total += weighted(static_cast<double>(hits) / static_cast<double>(C), w, i);
                break;
            }
            case MetricKind::CategoricalAccuracy:
                total += weighted(double(argmax_row(p, C) == argmax_row(y, C)), w, i);
                break;
            case MetricKind::SparseCategoricalAccuracy:
                total += weighted(double(argmax_row(p, C) == static_cast<index_t>(y[0])), w, i);
                break;
            case MetricKind::MeanAbsoluteError:
            case MetricKind::MeanSquaredError: {  // mean over columns, in T, as the losses
                T s = 0;
                for (index_t j = 0; j < C; ++j) {
                    const T e = p[j] - y[j];
                    s += kind == MetricKind::MeanAbsoluteError ? std::abs(e) : e * e;
                }
                total += weighted(s / T(C), w, i);
                break;
            }
        }
    }
    return total;
}

FASTMLP_ISA_END
