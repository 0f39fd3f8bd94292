// Feature-major ("narrow") kernels for tiny networks, such as the seed's 2-4-4-2.
//
// When every layer is a handful of units wide, row-major (B, N) blocks make every loop a few
// elements long and the time goes to loop overhead. Here the batch is the vector dimension:
// a block is (F, L), feature-major, one row per feature, L = the batch rounded up to kLaneBlock
// lanes. Every loop then runs over L lanes and vectorizes whatever the layer widths.
//
// Padding lanes (>= the batch size B) hold zero inputs and zero gradients, so they add nothing to
// any sum. Every forward value, loss term, metric and input gradient is computed with exactly the
// operations of the row-major kernels (dense.hpp, losses.hpp), so they are the same bits. The
// batch reductions (dW, db) are the exception: they sum lanes in kLaneBlock-wide partial sums
// combined in a fixed order (lane_dot), which is deterministic and the same for every vector
// width, but not the row-major kernels' order.
#pragma once

#include <algorithm>
#include <cstring>
#include <limits>
#include <vector>

#include "activations.hpp"
#include "common.hpp"
#include "dense.hpp"
#include "losses.hpp"

FASTMLP_ISA_BEGIN

// Lanes are padded to a multiple of this: 16 floats are 4 SSE, 2 AVX2 or 1 AVX-512 vector.
constexpr index_t kLaneBlock = 16;

// sum over lanes l < L of x[l] * y[l] (y null: of x[l]), L a multiple of kLaneBlock (16).
// Order, the same for every vector width: 16 partial sums p[i] over lanes l = i (mod 16) in
// ascending blocks, then the fixed tree p[j] += p[j+8]; p[j] += p[j+4]; p[j] += p[j+2]; p[0] + p[1].
template <typename T>
inline T lane_dot(const T* x, const T* y, index_t L) {
    using vec = typename Simd<T>::vec;
    constexpr index_t W = Simd<T>::width;
    constexpr index_t NA = kLaneBlock / W;
    vec acc[NA] = {};
    for (index_t b = 0; b < L; b += kLaneBlock)
        for (index_t v = 0; v < NA; ++v) {
            vec xv;
            std::memcpy(&xv, x + b + v * W, sizeof(vec));
            if (y) {
                vec yv;
                std::memcpy(&yv, y + b + v * W, sizeof(vec));
                acc[v] += xv * yv;
            } else {
                acc[v] += xv;
            }
        }
    T p[kLaneBlock];
    std::memcpy(p, acc, sizeof(p));
    for (int j = 0; j < 8; ++j) p[j] += p[j + 8];
    for (int j = 0; j < 4; ++j) p[j] += p[j + 4];
    for (int j = 0; j < 2; ++j) p[j] += p[j + 2];
    return p[0] + p[1];
}

// out[l] := sum over the F rows of A[f][l] (times B[f][l] when B is not null), accumulated from 0
// in ascending row order, as the row-major kernels' scalar accumulators are.
template <typename T>
inline void rows_sum(T* out, const T* A, const T* B, index_t F, index_t L) {
    if (B) {
        for (index_t l = 0; l < L; ++l) out[l] = T(0) + A[l] * B[l];
        for (index_t f = 1; f < F; ++f)
            for (index_t l = 0; l < L; ++l) out[l] += A[f * L + l] * B[f * L + l];
    } else {
        for (index_t l = 0; l < L; ++l) out[l] = T(0) + A[l];
        for (index_t f = 1; f < F; ++f)
            for (index_t l = 0; l < L; ++l) out[l] += A[f * L + l];
    }
}

// Softmax over the F rows of each lane of A (F, L), in place; tmp holds 2L values.
template <typename T>
void narrow_softmax(T* A, index_t F, index_t L, T* tmp) {
    T* m = tmp;
    T* s = tmp + L;
    const T neg_inf = -std::numeric_limits<T>::infinity();
    for (index_t l = 0; l < L; ++l) m[l] = std::max(neg_inf, A[l]);
    for (index_t f = 1; f < F; ++f)
        for (index_t l = 0; l < L; ++l) m[l] = std::max(m[l], A[f * L + l]);
    for (index_t f = 0; f < F; ++f)
        for (index_t l = 0; l < L; ++l) A[f * L + l] = vexp(A[f * L + l] - m[l]);
    rows_sum(s, A, static_cast<const T*>(nullptr), F, L);
    for (index_t l = 0; l < L; ++l) s[l] = T(1) / s[l];
    for (index_t f = 0; f < F; ++f)
        for (index_t l = 0; l < L; ++l) A[f * L + l] *= s[l];
}

// Dense forward, feature-major:  Z (N, L) := act(W^T X + b)  for X (K, L), W (K, N), b (N,) or null.
template <typename T>
void narrow_dense_forward(T* Z, const T* X, const T* W, const T* b, index_t L, index_t K, index_t N, Act act,
                          T* tmp) {
    for (index_t n = 0; n < N; ++n) {
        T* z = Z + n * L;
        // The first term is added to an explicit 0 (as the naive kernel's accumulator starts at 0),
        // which keeps the sign of zero identical and saves a separate zeroing pass.
        const T w0 = W[n];
        for (index_t l = 0; l < L; ++l) z[l] = T(0) + X[l] * w0;
        for (index_t k = 1; k < K; ++k) {
            const T w = W[k * N + n];
            const T* x = X + k * L;
            for (index_t l = 0; l < L; ++l) z[l] += x[l] * w;
        }
        if (b)
            for (index_t l = 0; l < L; ++l) z[l] += b[n];
    }
    if (act == Act::Softmax) {
        narrow_softmax(Z, N, L, tmp);
    } else {
        act_forward_row(act, Z, N * L);
    }
}

// Dense backward, feature-major. dY (N, L): dL/dA in, dZ out. dW (K, N) and db (N,) overwritten
// with the lane reductions; dX (K, L) := W dZ, or skipped when null. tmp holds L values.
template <typename T>
void narrow_dense_backward(T* dX, T* dW, T* db, T* dY, const T* X, const T* W, const T* A, index_t L, index_t K,
                           index_t N, Act act, T* tmp) {
    if (act == Act::Softmax) {
        T* dot = tmp;
        rows_sum(dot, dY, A, N, L);
        for (index_t n = 0; n < N; ++n)
            for (index_t l = 0; l < L; ++l) dY[n * L + l] = A[n * L + l] * (dY[n * L + l] - dot[l]);
    } else {
        act_backward_row(act, A, dY, N * L);
    }
    for (index_t k = 0; k < K; ++k)
        for (index_t n = 0; n < N; ++n) dW[k * N + n] = lane_dot(X + k * L, dY + n * L, L);
    if (db)
        for (index_t n = 0; n < N; ++n) db[n] = lane_dot(dY + n * L, static_cast<const T*>(nullptr), L);
    if (dX)
        for (index_t k = 0; k < K; ++k) {
            T* dx = dX + k * L;
            const T w0 = W[k * N];
            for (index_t l = 0; l < L; ++l) dx[l] = T(0) + dY[l] * w0;
            for (index_t n = 1; n < N; ++n) {
                const T w = W[k * N + n];
                const T* d = dY + n * L;
                for (index_t l = 0; l < L; ++l) dx[l] += d[l] * w;
            }
        }
}

// Loss of the B real lanes of P (C, L) against Y (yc, L) (yc = 1: class ids), summed over lanes in
// ascending order; with dZ (C, L) not null, also the output layer's logit gradient, zero on the
// padding lanes. work holds (C + 2) * L values. Same per-lane operations as output_loss.
template <typename T>
double narrow_output_loss(LossKind kind, Act act, const T* P, const T* Y, index_t B, index_t L, index_t C, T scale,
                          T* dZ, std::vector<T>& work) {
    if (static_cast<index_t>(work.size()) < (C + 2) * L) work.resize((C + 2) * L);
    T* t = work.data();
    T* s = t + C * L;
    T* u = s + L;
    const bool sparse = kind == LossKind::SparseCategoricalCrossentropy;
    // Per-lane loss into s.
    if (kind == LossKind::BinaryCrossentropy || kind == LossKind::MeanSquaredError) {
        const index_t n = C * L;
        if (kind == LossKind::BinaryCrossentropy) {
            for (index_t k = 0; k < n; ++k) t[k] = bce_term(P[k], Y[k]);
        } else {
            for (index_t k = 0; k < n; ++k) t[k] = (P[k] - Y[k]) * (P[k] - Y[k]);
        }
        rows_sum(s, t, static_cast<const T*>(nullptr), C, L);
        const T sign = kind == LossKind::BinaryCrossentropy ? T(-1) : T(1);
        for (index_t l = 0; l < L; ++l) s[l] = sign * s[l] / T(C);
    } else {
        rows_sum(u, P, static_cast<const T*>(nullptr), C, L);  // u = sum over classes of p
        if (sparse) {
            for (index_t l = 0; l < L; ++l) {
                const index_t label = static_cast<index_t>(Y[l]);
                s[l] = -vlog(clip_prob(P[label * L + l] / u[l]));
            }
        } else {
            for (index_t c = 0; c < C; ++c)
                for (index_t l = 0; l < L; ++l) t[c * L + l] = vlog(clip_prob(P[c * L + l] / u[l]));
            rows_sum(s, Y, t, C, L);
            for (index_t l = 0; l < L; ++l) s[l] = -s[l];
        }
    }
    double total = 0;
    for (index_t l = 0; l < B; ++l) total += s[l];
    if (!dZ) return total;

    const index_t n = C * L;
    if (act == Act::Sigmoid && kind == LossKind::BinaryCrossentropy) {
        const T sc = scale / T(C);
        for (index_t k = 0; k < n; ++k) dZ[k] = sc * (P[k] - Y[k]);
    } else if (act == Act::Softmax && sparse) {
        for (index_t c = 0; c < C; ++c)
            for (index_t l = 0; l < L; ++l)
                dZ[c * L + l] = scale * (P[c * L + l] - T(static_cast<index_t>(Y[l]) == c));
    } else if (act == Act::Softmax && kind == LossKind::CategoricalCrossentropy) {
        rows_sum(u, Y, static_cast<const T*>(nullptr), C, L);  // u = sum over classes of y
        for (index_t c = 0; c < C; ++c)
            for (index_t l = 0; l < L; ++l) dZ[c * L + l] = scale * (P[c * L + l] * u[l] - Y[c * L + l]);
    } else {
        // Unfused: dL/dP, then the activation's backward.
        if (kind == LossKind::BinaryCrossentropy) {
            const T sc = scale / T(C);
            for (index_t k = 0; k < n; ++k) dZ[k] = bce_grad(P[k], Y[k], sc);
        } else if (kind == LossKind::MeanSquaredError) {
            const T sc = scale * T(2) / T(C);
            for (index_t k = 0; k < n; ++k) dZ[k] = sc * (P[k] - Y[k]);
        } else {
            // Categorical on probabilities: u = sum p (still in u from above), then as loss_grad.
            T* dot = s;
            std::fill(dot, dot + L, T(0));
            for (index_t c = 0; c < C; ++c)
                for (index_t l = 0; l < L; ++l) {
                    const T q = P[c * L + l] / u[l];
                    const T yv = sparse ? T(static_cast<index_t>(Y[l]) == c) : Y[c * L + l];
                    const T g = clip_active(q) ? T(0) : -yv / q;
                    dZ[c * L + l] = g;
                    dot[l] += g * q;
                }
            for (index_t c = 0; c < C; ++c)
                for (index_t l = 0; l < L; ++l) dZ[c * L + l] = scale * (dZ[c * L + l] - dot[l]) / u[l];
        }
        if (act == Act::Softmax) {
            T* dot = s;
            rows_sum(dot, dZ, P, C, L);
            for (index_t c = 0; c < C; ++c)
                for (index_t l = 0; l < L; ++l) dZ[c * L + l] = P[c * L + l] * (dZ[c * L + l] - dot[l]);
        } else {
            act_backward_row(act, P, dZ, n);
        }
    }
    for (index_t c = 0; c < C; ++c) std::fill(dZ + c * L + B, dZ + (c + 1) * L, T(0));
    return total;
}

// Sum over the B real lanes of the per-sample accuracy (as accuracy_sum).
template <typename T>
double narrow_accuracy_sum(MetricKind kind, const T* P, const T* Y, index_t B, index_t L, index_t C) {
    double total = 0;
    for (index_t l = 0; l < B; ++l) {
        if (kind == MetricKind::BinaryAccuracy) {
            index_t hits = 0;
            for (index_t c = 0; c < C; ++c) hits += T(P[c * L + l] > T(0.5)) == Y[c * L + l];
            total += static_cast<double>(hits) / static_cast<double>(C);
            continue;
        }
        index_t best = 0;
        for (index_t c = 1; c < C; ++c)
            if (P[c * L + l] > P[best * L + l]) best = c;
        index_t truth = 0;
        if (kind == MetricKind::SparseCategoricalAccuracy) {
            truth = static_cast<index_t>(Y[l]);
        } else {
            for (index_t c = 1; c < C; ++c)
                if (Y[c * L + l] > Y[truth * L + l]) truth = c;
        }
        total += best == truth;
    }
    return total;
}

FASTMLP_ISA_END
