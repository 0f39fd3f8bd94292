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
// ascending blocks (mul_add chains when y is given), then the fixed tree p[j] += p[j+8]; p[j] += p[j+4]; p[j] += p[j+2]; p[0] + p[1].
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
                acc[v] = mul_add(xv, yv, acc[v]);
            } else {
                acc[v] += xv;
            }
        }
    // The tree on vectors of halves: the upper half of the partial sums added to the lower half.
    typedef T v8 __attribute__((vector_size(8 * sizeof(T))));
    typedef T v4 __attribute__((vector_size(4 * sizeof(T))));
    typedef T v2 __attribute__((vector_size(2 * sizeof(T))));
    v8 h8[2];
    std::memcpy(h8, acc, sizeof(h8));
    const v8 s8 = h8[0] + h8[1];
    v4 h4[2];
    std::memcpy(h4, &s8, sizeof(h4));
    const v4 s4 = h4[0] + h4[1];
    v2 h2[2];
    std::memcpy(h2, &s4, sizeof(h2));
    const v2 s2 = h2[0] + h2[1];
    return s2[0] + s2[1];
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

// z[l] := mul_add(x[l], w, c[l]) for l < L (c null: from 0), L a multiple of kLaneBlock; z may be c.
// Written with explicit vectors: GCC does not vectorize a loop of scalar fused multiply-adds.
template <typename T>
inline void lanes_mul_add(T* z, const T* x, T w, const T* c, index_t L) {
    using vec = typename Simd<T>::vec;
    constexpr index_t W = Simd<T>::width;
    const vec wv = splat(w);
    for (index_t l = 0; l < L; l += W) {
        vec xv, cv{};
        std::memcpy(&xv, x + l, sizeof(vec));
        if (c) std::memcpy(&cv, c + l, sizeof(vec));
        const vec out = mul_add(xv, wv, cv);
        std::memcpy(z + l, &out, sizeof(vec));
    }
}

// The epilogue of a feature-major product: z[l] := act(z[l] + b) (Bias false: act(z[l])).
template <Act A, bool Bias, typename T>
inline void epilogue_pass(T* z, T b, index_t L) {
    for (index_t l = 0; l < L; ++l) {
        T v = z[l];
        if constexpr (Bias) v = v + b;
        z[l] = act_value<A>(v);
    }
}

// Dense forward, feature-major:  Z (N, L) := act(W^T X + b)  for X (K, L), W (K, N), b (N,) or null.
// Per element: the chain acc = mul_add(x_k, w_k, acc) from 0 over k ascending, then + b, then act,
// as dense_forward_naive and the GEMM.
// The bias and an elementwise activation are applied in one pass after the products.
template <typename T>
void narrow_dense_forward(T* Z, const T* X, const T* W, const T* b, index_t L, index_t K, index_t N, Act act,
                          T* tmp) {
    const Act fused = act == Act::Softmax ? Act::Linear : act;
    for (index_t n = 0; n < N; ++n) {
        T* z = Z + n * L;
        for (index_t k = 0; k < K; ++k) lanes_mul_add(z, X + k * L, W[k * N + n], k == 0 ? nullptr : z, L);
        if (b) {
            with_act(fused, [&](auto A) { epilogue_pass<decltype(A)::value, true>(z, b[n], L); });
        } else if (fused != Act::Linear) {
            with_act(fused, [&](auto A) { epilogue_pass<decltype(A)::value, false>(z, T(0), L); });
        }
    }
    if (act == Act::Softmax) narrow_softmax(Z, N, L, tmp);
}

// Softmax's backward over the F rows of each lane, in place: d := a * (d - sum_f d a). tmp: L values.
template <typename T>
void narrow_softmax_backward(const T* A, T* D, index_t F, index_t L, T* tmp) {
    rows_sum(tmp, D, A, F, L);
    for (index_t f = 0; f < F; ++f)
        for (index_t l = 0; l < L; ++l) D[f * L + l] = A[f * L + l] * (D[f * L + l] - tmp[l]);
}

// Dense backward, feature-major, given dZ (N, L) = dL/dZ of this layer (padding lanes zero):
//   dW (K, N) := lane sums of X dZ^T and db (N,) := lane sums of dZ, overwritten (db null: skipped);
//   dX (K, L) := act_prev'(W dZ), the gradient with respect to the PREVIOUS layer's pre-activation,
//   with that layer's activation derivative (from its output A_prev (K, L)) applied after the
//   products; skipped when dX is null. tmp holds L values.
template <typename T>
void narrow_dense_backward(T* dX, T* dW, T* db, const T* dZ, const T* X, const T* W, index_t L, index_t K, index_t N,
                           Act act_prev, const T* A_prev, T* tmp) {
    require(!needs_preactivation(act_prev), "narrow_dense_backward: gelu and swish need the pre-activation; pass "
                                            "Linear and apply act_backward_row_z.");
    for (index_t k = 0; k < K; ++k)
        for (index_t n = 0; n < N; ++n) dW[k * N + n] = lane_dot(X + k * L, dZ + n * L, L);
    if (db)
        for (index_t n = 0; n < N; ++n) db[n] = lane_dot(dZ + n * L, static_cast<const T*>(nullptr), L);
    if (!dX) return;
    const Act fused = act_prev == Act::Softmax ? Act::Linear : act_prev;
    for (index_t k = 0; k < K; ++k) {
        T* dx = dX + k * L;
        for (index_t n = 0; n < N; ++n) lanes_mul_add(dx, dZ + n * L, W[k * N + n], n == 0 ? nullptr : dx, L);
        if (fused != Act::Linear) {
            const T* a = A_prev + k * L;
            with_act(fused, [&](auto A) {
                for (index_t l = 0; l < L; ++l) dx[l] = act_grad<decltype(A)::value>(a[l], dx[l]);
            });
        }
    }
    if (act_prev == Act::Softmax) narrow_softmax_backward(A_prev, dX, K, L, tmp);
}

// Loss of the B real lanes of P (C, L) against Y (yc, L) (yc = 1: class ids), summed over lanes in
// ascending order; with dZ (C, L) not null, also the output layer's logit gradient, zero on the
// padding lanes. work and row_work are scratch. Same per-lane operations as output_loss, sample
// weights w (L,) or null included.
template <typename T>
double narrow_output_loss(LossKind kind, Act act, const T* P, const T* Y, index_t B, index_t L, index_t C, T scale,
                          T* dZ, std::vector<T>& work, std::vector<T>& row_work, T delta = T(1),
                          const T* w = nullptr) {
    if (kind != LossKind::BinaryCrossentropy && kind != LossKind::CategoricalCrossentropy &&
        kind != LossKind::SparseCategoricalCrossentropy && kind != LossKind::MeanSquaredError) {
        // The other losses exist row-major only: transpose the B real lanes in, and dZ back out.
        const index_t yc = is_sparse(kind) ? 1 : C;
        if (static_cast<index_t>(work.size()) < B * (2 * C + yc)) work.resize(B * (2 * C + yc));
        T* pr = work.data();
        T* yr = pr + B * C;
        T* dr = yr + B * yc;
        for (index_t c = 0; c < C; ++c)
            for (index_t l = 0; l < B; ++l) pr[l * C + c] = P[c * L + l];
        for (index_t c = 0; c < yc; ++c)
            for (index_t l = 0; l < B; ++l) yr[l * yc + c] = Y[c * L + l];
        const double total = output_loss(kind, act, pr, yr, yc, B, C, scale, dZ ? dr : nullptr, row_work, delta, w);
        if (dZ)
            for (index_t c = 0; c < C; ++c) {
                for (index_t l = 0; l < B; ++l) dZ[c * L + l] = dr[l * C + c];
                std::fill(dZ + c * L + B, dZ + (c + 1) * L, T(0));
            }
        return total;
    }
    if (static_cast<index_t>(work.size()) < (C + 2) * L) work.resize((C + 2) * L);
    T* t = work.data();
    T* s = t + C * L;
    T* u = s + L;
    const bool sparse = kind == LossKind::SparseCategoricalCrossentropy;
    const bool binary = kind == LossKind::BinaryCrossentropy && all_binary(Y, C * L);
    // Per-lane loss into s.
    if (kind == LossKind::BinaryCrossentropy || kind == LossKind::MeanSquaredError) {
        const index_t n = C * L;
        if (kind == LossKind::BinaryCrossentropy && binary) {
            for (index_t k = 0; k < n; ++k) t[k] = bce_term_binary(P[k], Y[k]);
        } else if (kind == LossKind::BinaryCrossentropy) {
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
    for (index_t l = 0; l < B; ++l) total += weighted(double(s[l]), w, l);
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
            if (binary) {
                for (index_t k = 0; k < n; ++k) dZ[k] = bce_grad_binary(P[k], Y[k], sc);
            } else {
                for (index_t k = 0; k < n; ++k) dZ[k] = bce_grad(P[k], Y[k], sc);
            }
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
            narrow_softmax_backward(P, dZ, C, L, s);
        } else {
            act_backward_row(act, P, dZ, n);
        }
    }
    if (w)
        for (index_t c = 0; c < C; ++c)
            for (index_t l = 0; l < L; ++l) dZ[c * L + l] *= w[l];
    for (index_t c = 0; c < C; ++c) std::fill(dZ + c * L + B, dZ + (c + 1) * L, T(0));
    return total;
}

// Sum over the B real lanes of the per-sample accuracy (as accuracy_sum, sample weights w included).
template <typename T>
double narrow_accuracy_sum(MetricKind kind, const T* P, const T* Y, index_t B, index_t L, index_t C,
                           const T* w = nullptr) {
    double total = 0;
    for (index_t l = 0; l < B; ++l) {
        if (kind == MetricKind::BinaryAccuracy) {
            index_t hits = 0;
            for (index_t c = 0; c < C; ++c) hits += T(P[c * L + l] > T(0.5)) == Y[c * L + l];
            total += weighted(static_cast<double>(hits) / static_cast<double>(C), w, l);
            continue;
        }
        if (kind == MetricKind::MeanAbsoluteError || kind == MetricKind::MeanSquaredError) {
            T s = 0;
            for (index_t c = 0; c < C; ++c) {
                const T e = P[c * L + l] - Y[c * L + l];
                s += kind == MetricKind::MeanAbsoluteError ? std::abs(e) : e * e;
            }
            total += weighted(double(s / T(C)), w, l);
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
        total += weighted(double(best == truth), w, l);
    }
    return total;
}

FASTMLP_ISA_END
