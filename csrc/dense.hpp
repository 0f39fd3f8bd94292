// Dense layer kernels: forward and backward side by side, each with its naive reference.
//
// Layout (Keras's): X is (B, K) row-major, W is (K, N) row-major (the Keras kernel), b is (N,),
// Y = A is (B, N). All pointers are dense, row-major, non-overlapping unless said otherwise.
//
// Summation order is part of the contract (it is what makes results bitwise reproducible): every
// output element is the chain `acc = 0; for p ascending: acc = mul_add(a_p, b_p, acc);` followed by
// `+ bias` (gemm.hpp: a fused multiply-add where the variant has one). The optimized paths keep
// exactly that order, so they equal the naive references bit for bit whatever the thread count.
#pragma once

#include <algorithm>
#include <cstring>
#include <vector>

#include "activations.hpp"
#include "common.hpp"
#include "gemm.hpp"

FASTMLP_ISA_BEGIN

// Scratch space the optimized kernels pack into; owned by the caller so that the training loop
// allocates nothing per step.
template <typename T>
struct DenseScratch {
    std::vector<T> bias;  // the bias, padded to whole register tiles
};

// ---------------------------------------------------------------------------------------------
// Dense forward:  Y := act(X W + b)
//   X (B, K), W (K, N), b (N,) or null (use_bias=False), Y (B, N) overwritten.
//   Edge cases: B == 0 writes nothing; softmax normalizes each row of Y.
// ---------------------------------------------------------------------------------------------
template <typename T>
void dense_forward_naive(T* Y, const T* X, const T* W, const T* b, index_t B, index_t K, index_t N, Act act) {
    for (index_t i = 0; i < B; ++i) {
        for (index_t n = 0; n < N; ++n) {
            T acc = 0;
            for (index_t k = 0; k < K; ++k) acc = mul_add(X[i * K + k], W[k * N + n], acc);
            Y[i * N + n] = b ? acc + b[n] : acc;
        }
        act_forward_row(act, Y + i * N, N);
    }
}

template <typename T>
void dense_forward(T* Y, const T* X, const T* W, const T* b, index_t B, index_t K, index_t N, Act act,
                   DenseScratch<T>& s) {
    const T* bias = nullptr;
    if (b) {
        s.bias.assign(round_up(N, gemm_nr<T>()), T(0));
        std::copy(b, b + N, s.bias.begin());
        bias = s.bias.data();
    }
    // Elementwise activations run on each register tile as it is stored; softmax needs whole rows.
    gemm(Y, N, X, K, 1, W, N, 1, B, N, K, bias, act == Act::Softmax ? Act::Linear : act);
    if (act == Act::Softmax) act_forward_rows(act, Y, B, N);
}

// ---------------------------------------------------------------------------------------------
// Dense backward, given dY = dL/dA for A = act(X W + b):
//   dY (B, N): on entry dL/dA, OVERWRITTEN with dZ = dL/dZ = dY * act'(Z) (computed from A).
//   A (B, N): this layer's forward output.
//   dW (K, N) := X^T dZ      (overwritten; each element sums over the batch rows in ascending order)
//   db (N,)   := colsum(dZ)  (overwritten; null when the layer has no bias)
//   dX (B, K) := dZ W^T      (overwritten; null when the input gradient is not needed)
// dense_backward's optional `sgd` (DenseSgd) then updates W and b by momentum SGD with dW and db,
// dX computed from W before the step; dW is then scratch, undefined on return. The naive twin of
// that is this backward followed by sgd_update on W and on b.
// ---------------------------------------------------------------------------------------------
template <typename T>
void dense_backward_naive(T* dX, T* dW, T* db, T* dY, const T* X, const T* W, const T* A, index_t B,
                          index_t K, index_t N, Act act) {
    for (index_t i = 0; i < B; ++i) act_backward_row(act, A + i * N, dY + i * N, N);
    for (index_t k = 0; k < K; ++k)
        for (index_t n = 0; n < N; ++n) {
            T acc = 0;
            for (index_t i = 0; i < B; ++i) acc = mul_add(X[i * K + k], dY[i * N + n], acc);
            dW[k * N + n] = acc;
        }
    if (db)
        for (index_t n = 0; n < N; ++n) {
            T acc = 0;
            for (index_t i = 0; i < B; ++i) acc += dY[i * N + n];
            db[n] = acc;
        }
    if (dX)
        for (index_t i = 0; i < B; ++i)
            for (index_t k = 0; k < K; ++k) {
                T acc = 0;
                for (index_t n = 0; n < N; ++n) acc = mul_add(dY[i * N + n], W[k * N + n], acc);
                dX[i * K + k] = acc;
            }
}

// db[lo, hi) := column sums of the (B, N) matrix dZ over those columns, rows added in ascending order.
template <typename T>
inline void column_sums(T* db, const T* dZ, index_t B, index_t N, index_t lo, index_t hi) {
    std::fill(db + lo, db + hi, T(0));
    for (index_t i = 0; i < B; ++i) {
        const T* row = dZ + i * N;
        for (index_t n = lo; n < hi; ++n) db[n] += row[n];
    }
}

// The layer's momentum-SGD step fused into its backward (dense_backward's `sgd`): W and b (and
// their velocities vw and vb, null when mu == 0) are updated with the gradients just made.
template <typename T>
struct DenseSgd {
    T *w, *vw, *b, *vb;
    SgdStep<T> step;
};

template <typename T>
void dense_backward(T* dX, T* dW, T* db, T* dY, const T* X, const T* W, const T* A, index_t B, index_t K,
                    index_t N, Act act, DenseScratch<T>&, const DenseSgd<T>* sgd = nullptr) {
    if (act == Act::Softmax) {
        act_backward_rows(act, A, dY, B, N);
        if (db) column_sums(db, dY, B, N, 0, N);
    } else {
        // One pass over dY: dZ = dY * act'(Z) in place and db = colsum(dZ), in column strips that
        // the threads share out (each column's sum stays in one thread, in row order).
        const int tasks = static_cast<int>(std::min<index_t>(num_threads(), std::min(B * N / 65536, N / 64)));
        const auto strip = [&](int t) {
            const index_t lo = tasks > 1 ? round_up(N * t / tasks, 16) : 0;
            const index_t hi = tasks > 1 ? std::min(N, round_up(N * (t + 1) / tasks, 16)) : N;
            for (index_t i = 0; i < B; ++i) act_backward_row(act, A + i * N + lo, dY + i * N + lo, hi - lo);
            if (db) column_sums(db, dY, B, N, lo, hi);
        };
        if (tasks > 1)
            parallel_for(tasks, strip);
        else
            strip(0);
    }
    if (!sgd) {
        gemm(dW, N, X, 1, K, dY, N, 1, K, N, B, static_cast<const T*>(nullptr), Act::Linear);  // X^T dZ
        if (dX) gemm(dX, K, dY, N, 1, W, 1, N, B, K, N, static_cast<const T*>(nullptr), Act::Linear);  // dZ W^T
        return;
    }
    // With the step fused: dX first, from the weights before the step; then dW, consumed by the
    // step as it is made (dW is only scratch), and the bias from db.
    if (dX) gemm(dX, K, dY, N, 1, W, 1, N, B, K, N, static_cast<const T*>(nullptr), Act::Linear);
    gemm_sgd(dW, N, X, 1, K, dY, N, 1, K, N, B, SgdStore<T>{sgd->w, sgd->vw, N, sgd->step});
    if (db) sgd_row(SgdStore<T>{sgd->b, sgd->vb, N, sgd->step}, 0, db, N);
}

FASTMLP_ISA_END
