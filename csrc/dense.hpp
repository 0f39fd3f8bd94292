// Dense layer kernels: forward and backward side by side, each with its naive reference.
//
// Layout (Keras's): X is (B, K) row-major, W is (K, N) row-major (the Keras kernel), b is (N,),
// Y = A is (B, N). All pointers are dense, row-major, non-overlapping unless said otherwise.
//
// Summation order is part of the contract (it is what makes results bitwise reproducible): every
// output element is `acc = 0; for p ascending: acc += a_p * b_p;` followed by `+ bias`. The
// register-blocked paths below keep exactly that order, so they equal the naive references bit for
// bit (the build uses -ffp-contract=off so that no FMA changes the rounding behind our back).
#pragma once

#include <algorithm>
#include <cstring>
#include <vector>

#include "activations.hpp"
#include "common.hpp"

FASTMLP_ISA_BEGIN

// ---------------------------------------------------------------------------------------------
// Register-blocked product (the optimized path)
// ---------------------------------------------------------------------------------------------

// One SIMD vector of T, FASTMLP_VEC_BYTES wide: GCC vector extensions compile to SSE2, AVX2 or
// AVX-512 instructions by the variant being built.
template <typename T>
struct Simd {
    typedef T vec __attribute__((vector_size(FASTMLP_VEC_BYTES)));
    static constexpr index_t width = FASTMLP_VEC_BYTES / sizeof(T);
};

inline index_t round_up(index_t n, index_t m) { return (n + m - 1) / m * m; }

// Pack the (P, N) matrix S (element (p, n) at S[p*rs + n*cs]) into Dst, (P, Np) row-major with
// Np = round_up(N, width) and the padding columns zeroed. Dst is overwritten.
template <typename T>
inline void pack_panel(T* dst, const T* src, index_t P, index_t N, index_t rs, index_t cs) {
    const index_t Np = round_up(N, Simd<T>::width);
    for (index_t p = 0; p < P; ++p) {
        T* d = dst + p * Np;
        const T* s = src + p * rs;
        // Plain loops, not memcpy: rows are often a handful of elements, where a library call costs more
        // than the copy.
        if (cs == 1) {
            for (index_t n = 0; n < N; ++n) d[n] = s[n];
        } else {
            for (index_t n = 0; n < N; ++n) d[n] = s[n * cs];
        }
        for (index_t n = N; n < Np; ++n) d[n] = T(0);
    }
}

// Microkernel: the MR x (NV*width) tile C[r, j] := sum_p A[r*rs + p*cs] * Bp[p*ldb + j] (+ bias[j]),
// accumulated in registers over p = 0..P-1 in ascending order, then stored to the first `ncols`
// columns of C (row stride ldc). C is overwritten. bias may be null.
template <typename T, int MR, int NV>
inline void micro_tile(T* C, index_t ldc, index_t ncols, const T* A, index_t rs, index_t cs,
                       const T* Bp, index_t ldb, index_t P, const T* bias) {
    using vec = typename Simd<T>::vec;
    constexpr index_t W = Simd<T>::width;
    vec acc[MR][NV];
    for (int r = 0; r < MR; ++r)
        for (int v = 0; v < NV; ++v) acc[r][v] = vec{} ;
    for (index_t p = 0; p < P; ++p) {
        vec b[NV];
        for (int v = 0; v < NV; ++v) std::memcpy(&b[v], Bp + p * ldb + v * W, sizeof(vec));
        for (int r = 0; r < MR; ++r) {
            const T a = A[r * rs + p * cs];
            for (int v = 0; v < NV; ++v) acc[r][v] += a * b[v];
        }
    }
    if (bias) {
        for (int v = 0; v < NV; ++v) {
            vec bv;
            std::memcpy(&bv, bias + v * W, sizeof(bv));
            for (int r = 0; r < MR; ++r) acc[r][v] += bv;
        }
    }
    // Stores go through copies: taking the accumulators' own address would keep them in memory
    // (spilled) through the whole p loop.
    if (ncols >= NV * W) {
        for (int r = 0; r < MR; ++r)
            for (int v = 0; v < NV; ++v) {
                const vec out = acc[r][v];
                std::memcpy(C + r * ldc + v * W, &out, sizeof(out));
            }
    } else {
        for (int r = 0; r < MR; ++r) {
            T tile[NV * W];
            for (int v = 0; v < NV; ++v) {
                const vec out = acc[r][v];
                std::memcpy(tile + v * W, &out, sizeof(out));
            }
            for (index_t j = 0; j < ncols; ++j) C[r * ldc + j] = tile[j];
        }
    }
}

// Product with a packed right operand.
//   C (M, N), row stride ldc, overwritten:  C[m, n] := sum_{p<P} A[m*rs + p*cs] * Bp[p, n]  (+ bias[n])
//   A: (M, P) addressed through strides (rs, cs), so A may be a transposed view.
//   Bp: (P, Np) packed by pack_panel (Np = round_up(N, width), zero padding). bias: (Np,) padded, or null.
// Loop order: each panel of 2 vectors' width (P rows of one cache line each) stays in cache while
// every row block of A sweeps it.
template <typename T, int NV>
inline void gemm_panel(T* C, index_t ldc, index_t ncols, const T* A, index_t rs, index_t cs, const T* Bp, index_t ldb,
                       index_t M, index_t P, const T* bias) {
    index_t m = 0;
    for (; m + 4 <= M; m += 4) micro_tile<T, 4, NV>(C + m * ldc, ldc, ncols, A + m * rs, rs, cs, Bp, ldb, P, bias);
    T* c = C + m * ldc;
    const T* a = A + m * rs;
    switch (M - m) {
        case 3: micro_tile<T, 3, NV>(c, ldc, ncols, a, rs, cs, Bp, ldb, P, bias); break;
        case 2: micro_tile<T, 2, NV>(c, ldc, ncols, a, rs, cs, Bp, ldb, P, bias); break;
        case 1: micro_tile<T, 1, NV>(c, ldc, ncols, a, rs, cs, Bp, ldb, P, bias); break;
        default: break;
    }
}

template <typename T>
void gemm_packed(T* C, index_t ldc, const T* A, index_t rs, index_t cs, const T* Bp, index_t M, index_t N, index_t P,
                 const T* bias) {
    constexpr index_t W = Simd<T>::width;
    const index_t ldb = round_up(N, W);
    index_t j = 0;
    for (; j + 2 * W <= ldb; j += 2 * W)
        gemm_panel<T, 2>(C + j, ldc, N - j, A, rs, cs, Bp + j, ldb, M, P, bias ? bias + j : nullptr);
    if (j < ldb) gemm_panel<T, 1>(C + j, ldc, N - j, A, rs, cs, Bp + j, ldb, M, P, bias ? bias + j : nullptr);
}

// db (N,) := sum over the P rows of the packed panel Bp (P, Np), rows added in ascending order.
template <typename T>
inline void column_sums(T* db, const T* Bp, index_t P, index_t N) {
    using vec = typename Simd<T>::vec;
    constexpr index_t W = Simd<T>::width;
    const index_t Np = round_up(N, W);
    for (index_t j = 0; j < Np; j += W) {
        vec acc{};
        for (index_t p = 0; p < P; ++p) {
            vec v;
            std::memcpy(&v, Bp + p * Np + j, sizeof(v));
            acc += v;
        }
        T lanes[W];
        std::memcpy(lanes, &acc, sizeof(acc));
        for (index_t l = 0; l < W && j + l < N; ++l) db[j + l] = lanes[l];
    }
}

// Scratch space the optimized kernels pack into; owned by the caller so that the training loop
// allocates nothing per step.
template <typename T>
struct DenseScratch {
    std::vector<T> packed;  // a packed right operand
    std::vector<T> bias;    // the padded bias
    T* reserve(index_t n) {
        if (static_cast<index_t>(packed.size()) < n) packed.resize(n);
        return packed.data();
    }
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
            for (index_t k = 0; k < K; ++k) acc += X[i * K + k] * W[k * N + n];
            Y[i * N + n] = b ? acc + b[n] : acc;
        }
        act_forward_row(act, Y + i * N, N);
    }
}

template <typename T>
void dense_forward(T* Y, const T* X, const T* W, const T* b, index_t B, index_t K, index_t N, Act act,
                   DenseScratch<T>& s) {
    const index_t Np = round_up(N, Simd<T>::width);
    T* Wp = s.reserve(K * Np);
    pack_panel(Wp, W, K, N, N, 1);
    const T* bias = nullptr;
    if (b) {
        s.bias.assign(Np, T(0));
        std::copy(b, b + N, s.bias.begin());
        bias = s.bias.data();
    }
    gemm_packed(Y, N, X, K, 1, Wp, B, N, K, bias);
    act_forward_rows(act, Y, B, N);
}

// ---------------------------------------------------------------------------------------------
// Dense backward, given dY = dL/dA for A = act(X W + b):
//   dY (B, N): on entry dL/dA, OVERWRITTEN with dZ = dL/dZ = dY * act'(Z) (computed from A).
//   A (B, N): this layer's forward output.
//   dW (K, N) := X^T dZ      (overwritten; each element sums over the batch rows in ascending order)
//   db (N,)   := colsum(dZ)  (overwritten; null when the layer has no bias)
//   dX (B, K) := dZ W^T      (overwritten; null when the input gradient is not needed)
// ---------------------------------------------------------------------------------------------
template <typename T>
void dense_backward_naive(T* dX, T* dW, T* db, T* dY, const T* X, const T* W, const T* A, index_t B,
                          index_t K, index_t N, Act act) {
    for (index_t i = 0; i < B; ++i) act_backward_row(act, A + i * N, dY + i * N, N);
    for (index_t k = 0; k < K; ++k)
        for (index_t n = 0; n < N; ++n) {
            T acc = 0;
            for (index_t i = 0; i < B; ++i) acc += X[i * K + k] * dY[i * N + n];
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
                for (index_t n = 0; n < N; ++n) acc += dY[i * N + n] * W[k * N + n];
                dX[i * K + k] = acc;
            }
}

template <typename T>
void dense_backward(T* dX, T* dW, T* db, T* dY, const T* X, const T* W, const T* A, index_t B, index_t K,
                    index_t N, Act act, DenseScratch<T>& s) {
    const index_t Np = round_up(N, Simd<T>::width);
    const index_t Kp = round_up(K, Simd<T>::width);
    T* buf = s.reserve(std::max(B * Np, N * Kp));
    act_backward_rows(act, A, dY, B, N);  // dY becomes dZ
    pack_panel(buf, dY, B, N, N, 1);
    if (db) column_sums(db, buf, B, N);
    gemm_packed(dW, N, X, 1, K, buf, K, N, B, static_cast<const T*>(nullptr));
    if (dX) {
        pack_panel(buf, W, N, K, 1, N);  // W^T, (N, Kp)
        gemm_packed(dX, K, dY, N, 1, buf, B, K, N, static_cast<const T*>(nullptr));
    }
}

FASTMLP_ISA_END
