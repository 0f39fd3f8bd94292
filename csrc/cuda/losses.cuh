// The output layer on the GPU: its activation, the loss, the loss's gradient with respect to the
// pre-activation Z, and the metrics, one row per thread; then the batch sums in fixed-order chunks.
// Keras 3's definitions and fastmlp's clipping convention, exactly as csrc/losses.hpp:
//   probabilities are clipped to [1e-7, 1 - 1e-7] for the loss values; the gradients of losses on
//   probabilities are zero where that clip is active; softmax with (sparse) categorical
//   cross-entropy and sigmoid with binary cross-entropy use the analytic logit gradient
//   (p - y) * scale everywhere.
// Targets: Y (B, C), or (B, 1) integer class ids stored as T for the sparse loss and metric
// (checked on the host to lie in [0, C)). label_smoothing applies to the loss, not to the metrics.
#pragma once

#include "activations.cuh"

namespace fastmlp {
namespace gpu {

template <typename T>
struct LossParams {
    LossKind kind;
    Act act;           // the output layer's activation, applied here (the GEMM leaves Z)
    index_t C;         // output units
    index_t yc;        // target columns: C, or 1 for sparse labels
    T scale;           // 1 / batch size: Keras's sum_over_batch_size
    T huber_delta;
    T smoothing;       // label_smoothing s: targets y (1 - s) + s k
    T smooth_k;        // k: 1/2 for the binary cross-entropies, 1/C for the categorical ones
    int nmetrics;
    MetricKind metrics[kMaxMetrics];
};

template <typename T>
FASTMLP_HD inline T clip_prob(T p) {
    return m_min(m_max(p, T(kEpsilon)), T(1) - T(kEpsilon));
}

template <typename T>
FASTMLP_HD inline bool clip_active(T p) {
    return p < T(kEpsilon) || p > T(1) - T(kEpsilon);
}

// The loss's view of target j of a row: label-smoothed when asked.
template <typename T>
FASTMLP_HD inline T loss_target(const LossParams<T>& lp, const T* y, index_t j) {
    return lp.smoothing != T(0) ? y[j] * (T(1) - lp.smoothing) + lp.smoothing * lp.smooth_k : y[j];
}

template <typename T>
FASTMLP_HD inline index_t argmax_row(const T* a, index_t n) {
    index_t best = 0;
    for (index_t j = 1; j < n; ++j)
        if (a[j] > a[best]) best = j;
    return best;
}

template <typename T>
FASTMLP_HD inline T log_sum_exp(const T* z, index_t C) {
    T m = -INFINITY;
    for (index_t j = 0; j < C; ++j) m = m_max(m, z[j]);
    T s = 0;
    for (index_t j = 0; j < C; ++j) s += m_exp(z[j] - m);
    return m + m_log(s);
}

// Elementwise terms of the losses averaged over columns (Keras 3):
//   BCE on logits: max(z, 0) - z y + log(1 + exp(-|z|));  MAE: |p - y|;
//   Huber: 0.5 e^2 where |e| <= delta, else delta |e| - 0.5 delta^2;  MSE: e^2 (e = p - y).
template <typename T>
FASTMLP_HD inline T elementwise_term(LossKind kind, T p, T y, T delta) {
    const T e = p - y;
    switch (kind) {
        case LossKind::BinaryCrossentropyLogits:
            return (m_max(p, T(0)) - p * y) + m_log(T(1) + m_exp(-m_abs(p)));
        case LossKind::MeanAbsoluteError: return m_abs(e);
        case LossKind::Huber:
            return m_abs(e) <= delta ? T(0.5) * (e * e) : delta * m_abs(e) - T(0.5) * (delta * delta);
        case LossKind::BinaryCrossentropy: {  // y log(clip p) + (1 - y) log(1 - clip p), negated by the caller
            const T q = clip_prob(p);
            return y * m_log(q) + (T(1) - y) * m_log(T(1) - q);
        }
        default: return e * e;  // MeanSquaredError
    }
}

// The per-sample loss of one row: p (C,) the output after its activation, y its raw targets.
template <typename T>
FASTMLP_HD inline T loss_row(const LossParams<T>& lp, const T* p, const T* y) {
    const index_t C = lp.C;
    switch (lp.kind) {
        case LossKind::CategoricalCrossentropy:
        case LossKind::SparseCategoricalCrossentropy: {
            T tot = 0;
            for (index_t j = 0; j < C; ++j) tot += p[j];
            if (lp.kind == LossKind::SparseCategoricalCrossentropy)
                return -m_log(clip_prob(p[static_cast<index_t>(y[0])] / tot));
            T s = 0;
            for (index_t j = 0; j < C; ++j) s += loss_target(lp, y, j) * m_log(clip_prob(p[j] / tot));
            return -s;
        }
        case LossKind::CategoricalCrossentropyLogits:
        case LossKind::SparseCategoricalCrossentropyLogits: {
            const T lse = log_sum_exp(p, C);
            if (lp.kind == LossKind::SparseCategoricalCrossentropyLogits) return lse - p[static_cast<index_t>(y[0])];
            T s = 0;
            for (index_t j = 0; j < C; ++j) s += loss_target(lp, y, j) * (p[j] - lse);
            return -s;
        }
        default: {
            T s = 0;
            for (index_t j = 0; j < C; ++j) s += elementwise_term(lp.kind, p[j], loss_target(lp, y, j), lp.huber_delta);
            return (lp.kind == LossKind::BinaryCrossentropy ? -s : s) / T(C);
        }
    }
}

// d (C,) := dL/dz of one row times scale, z the output layer's pre-activation, p = act(z).
template <typename T>
FASTMLP_HD inline void loss_grad_row(const LossParams<T>& lp, const T* p, const T* y, T* d) {
    const index_t C = lp.C;
    const T scale = lp.scale;
    const bool sparse = lp.kind == LossKind::SparseCategoricalCrossentropy ||
                        lp.kind == LossKind::SparseCategoricalCrossentropyLogits;
    const index_t label = sparse ? static_cast<index_t>(y[0]) : -1;
    // Fused output paths: the analytic logit gradient.
    if (lp.act == Act::Sigmoid && lp.kind == LossKind::BinaryCrossentropy) {
        const T s = scale / T(C);
        for (index_t j = 0; j < C; ++j) d[j] = s * (p[j] - loss_target(lp, y, j));
        return;
    }
    if (lp.act == Act::Softmax &&
        (lp.kind == LossKind::CategoricalCrossentropy || lp.kind == LossKind::SparseCategoricalCrossentropy)) {
        if (sparse) {
            for (index_t j = 0; j < C; ++j) d[j] = scale * (p[j] - T(j == label));
        } else {
            T ysum = 0;
            for (index_t j = 0; j < C; ++j) ysum += loss_target(lp, y, j);
            for (index_t j = 0; j < C; ++j) d[j] = scale * (p[j] * ysum - loss_target(lp, y, j));
        }
        return;
    }
    // Otherwise dL/dp, then the activation's backward.
    switch (lp.kind) {
        case LossKind::BinaryCrossentropyLogits: {  // d/dz = sigmoid(z) - y
            const T s = scale / T(C);
            for (index_t j = 0; j < C; ++j) d[j] = s * (T(1) / (T(1) + m_exp(-p[j])) - loss_target(lp, y, j));
            break;
        }
        case LossKind::CategoricalCrossentropyLogits:
        case LossKind::SparseCategoricalCrossentropyLogits: {  // d/dz = softmax(z) sum(y) - y
            for (index_t j = 0; j < C; ++j) d[j] = p[j];
            softmax_row(d, C);
            T ysum = 0;
            if (!sparse)
                for (index_t j = 0; j < C; ++j) ysum += loss_target(lp, y, j);
            for (index_t j = 0; j < C; ++j)
                d[j] = sparse ? scale * (d[j] - T(j == label)) : scale * (d[j] * ysum - loss_target(lp, y, j));
            break;
        }
        case LossKind::MeanAbsoluteError: {
            const T s = scale / T(C);
            for (index_t j = 0; j < C; ++j) {
                const T e = p[j] - loss_target(lp, y, j);
                d[j] = s * (e > T(0) ? T(1) : (e < T(0) ? T(-1) : T(0)));
            }
            break;
        }
        case LossKind::Huber: {
            const T s = scale / T(C), delta = lp.huber_delta;
            for (index_t j = 0; j < C; ++j) {
                const T e = p[j] - loss_target(lp, y, j);
                d[j] = s * (m_abs(e) <= delta ? e : (e > T(0) ? delta : -delta));
            }
            break;
        }
        case LossKind::BinaryCrossentropy: {
            const T s = scale / T(C);
            for (index_t j = 0; j < C; ++j) {
                const T t = loss_target(lp, y, j);
                const T g = s * (-(t / p[j]) + (T(1) - t) / (T(1) - p[j]));
                d[j] = clip_active(p[j]) ? T(0) : g;
            }
            break;
        }
        case LossKind::CategoricalCrossentropy:
        case LossKind::SparseCategoricalCrossentropy: {
            // L = -sum_j y_j log clip(q_j), q = p / sum(p): dL/dp_i = (gq_i - sum_j gq_j q_j) / sum(p).
            T tot = 0;
            for (index_t j = 0; j < C; ++j) tot += p[j];
            T dot = 0;
            for (index_t j = 0; j < C; ++j) {
                const T q = p[j] / tot;
                const T yj = sparse ? T(j == label) : loss_target(lp, y, j);
                d[j] = clip_active(q) ? T(0) : -yj / q;
                dot += d[j] * q;
            }
            for (index_t j = 0; j < C; ++j) d[j] = scale * (d[j] - dot) / tot;
            break;
        }
        default: {  // MeanSquaredError
            const T s = scale * T(2) / T(C);
            for (index_t j = 0; j < C; ++j) d[j] = s * (p[j] - loss_target(lp, y, j));
            break;
        }
    }
    if (lp.act == Act::Softmax) {
        softmax_backward_row(p, d, C);
    } else {
        for (index_t j = 0; j < C; ++j) d[j] = act_grad(lp.act, p[j], d[j]);
    }
}

// Metric `kind` of one row (Keras 3): binary accuracy (mean over columns of [(p > 0.5) == y]),
// categorical (argmax p == argmax y), sparse categorical (argmax p == y[0]), mean absolute and
// squared error (mean over columns, in T).
template <typename T>
FASTMLP_HD inline double metric_row(MetricKind kind, const T* p, const T* y, index_t C) {
    switch (kind) {
        case MetricKind::BinaryAccuracy: {
            index_t hits = 0;
            for (index_t j = 0; j < C; ++j) hits += T(p[j] > T(0.5)) == y[j];
            return static_cast<double>(hits) / static_cast<double>(C);
        }
        case MetricKind::CategoricalAccuracy: return argmax_row(p, C) == argmax_row(y, C) ? 1.0 : 0.0;
        case MetricKind::SparseCategoricalAccuracy:
            return argmax_row(p, C) == static_cast<index_t>(y[0]) ? 1.0 : 0.0;
        default: {
            T s = 0;
            for (index_t j = 0; j < C; ++j) {
                const T e = p[j] - y[j];
                s += kind == MetricKind::MeanAbsoluteError ? m_abs(e) : e * e;
            }
            return static_cast<double>(s / T(C));
        }
    }
}

// One row of the output layer: p (C,) holds Z on entry and act(Z) on exit; when d is not null it
// receives dL/dZ times scale; returns the row's loss (0 when y is null: predict). metrics[m]
// receives metric m of the row when metrics is not null (stride ld between metrics).
template <typename T>
FASTMLP_HD inline double output_row(const LossParams<T>& lp, T* p, const T* y, T* d, double* metrics, index_t ld) {
    if (lp.act == Act::Softmax) {
        softmax_row(p, lp.C);
    } else if (lp.act != Act::Linear) {
        for (index_t j = 0; j < lp.C; ++j) p[j] = act_value(lp.act, p[j]);
    }
    if (!y) return 0.0;
    const double loss = static_cast<double>(loss_row(lp, p, y));
    if (d) loss_grad_row(lp, p, y, d);
    if (metrics)
        for (int m = 0; m < lp.nmetrics; ++m) metrics[m * ld] = metric_row(lp.metrics[m], p, y, lp.C);
    return loss;
}

// The output layer over B rows: P (B, C) Z in, act(Z) out; Y (B, yc) or null; D (B, C) or null;
// row_loss (B,) and row_metrics (nmetrics, ld) written when Y is given. Iteration space: B rows.
template <typename T>
struct OutputRows {
    LossParams<T> lp;
    T* P;
    const T* Y;
    T* D;
    double* row_loss;
    double* row_metrics;
    index_t ld;
    FASTMLP_HD void operator()(index_t r) const {
        const double loss = output_row(lp, P + r * lp.C, Y ? Y + r * lp.yc : nullptr, D ? D + r * lp.C : nullptr,
                                       Y && row_metrics ? row_metrics + r : nullptr, ld);
        if (Y) row_loss[r] = loss;
    }
};

// Chunk c of the batch sums: out[c, 0] := sum of row_loss over the chunk's rows, out[c, 1 + m] :=
// the same for metric m (out is (chunks, 1 + nmetrics)). Iteration space: ceil(B / kRowChunk).
struct RowChunkSums {
    const double* row_loss;
    const double* row_metrics;
    index_t ld, B;
    int nmetrics;
    double* out;
    FASTMLP_HD void operator()(index_t c) const {
        const index_t r0 = c * kRowChunk, r1 = m_min(B, r0 + kRowChunk);
        double* o = out + c * (1 + nmetrics);
        double s = 0;
        for (index_t r = r0; r < r1; ++r) s += row_loss[r];
        o[0] = s;
        for (int m = 0; m < nmetrics; ++m) {
            double t = 0;
            for (index_t r = r0; r < r1; ++r) t += row_metrics[m * ld + r];
            o[1 + m] = t;
        }
    }
};

}  // namespace gpu
}  // namespace fastmlp
