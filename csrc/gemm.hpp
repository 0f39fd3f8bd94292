// Matrix product on the Goto/BLIS structure: packed operands, cache blocking, a register-blocked
// microkernel with explicit fused multiply-adds, and output tiles split over the thread pool.
//
// Contract (every entry point here):
//   C (M, N), row stride ldc, OVERWRITTEN:  C[m, n] := act( sum_{p<K} A(m, p) * B(p, n)  (+ bias[n]) )
//   A(m, p) = A[m*ars + p*acs] and B(p, n) = B[p*brs + n*bcs]: either operand may be a transposed view.
//   bias: null, or padded to round_up(N, gemm_nr<T>()) entries. act: elementwise (not softmax).
//   M, N >= 1; K == 0 gives C := act(bias or 0).
//
// Summation order is part of the contract: every output element is one chain
//   acc = 0; for p = 0..K-1 ascending: acc = mul_add(A(m, p), B(p, n), acc);  then acc + bias[n]
// where mul_add is a fused multiply-add (one rounding) in the avx2 and avx512 variants and a multiply
// then an add in the baseline variant (which has no FMA). Cache blocking over K stores the chain's
// running value in C and reloads it, which changes no bit; threads own disjoint output tiles. So
// the result does not depend on the block sizes, the thread count or the vector width: avx2 and
// avx512 give the same bits, and gemm_naive below gives them too.
#pragma once

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <new>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>
#if defined(__linux__)
#include <sys/mman.h>
#endif
#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

#include "activations.hpp"
#include "common.hpp"
#include "optim.hpp"
#include "parallel.hpp"

FASTMLP_ISA_BEGIN

// One SIMD vector of T, FASTMLP_VEC_BYTES wide: GCC vector extensions compile to SSE2, AVX2 or
// AVX-512 instructions by the variant being built.
template <typename T>
struct Simd {
    typedef T vec __attribute__((vector_size(FASTMLP_VEC_BYTES)));
    static constexpr index_t width = FASTMLP_VEC_BYTES / sizeof(T);
};

inline index_t round_up(index_t n, index_t m) { return (n + m - 1) / m * m; }

#if FASTMLP_VEC_BYTES >= 32
#define FASTMLP_HAVE_FMA 1
#endif

// a*b + c lane by lane: fused (one rounding) where the variant has FMA.
inline Simd<float>::vec mul_add(Simd<float>::vec a, Simd<float>::vec b, Simd<float>::vec c) {
    return madd(a, b, c);  // mathfun.hpp: the same fused multiply-add (or multiply then add)
}
inline Simd<double>::vec mul_add(Simd<double>::vec a, Simd<double>::vec b, Simd<double>::vec c) {
#if FASTMLP_VEC_BYTES == 64
    return (Simd<double>::vec)_mm512_fmadd_pd((__m512d)a, (__m512d)b, (__m512d)c);
#elif FASTMLP_VEC_BYTES == 32
    return (Simd<double>::vec)_mm256_fmadd_pd((__m256d)a, (__m256d)b, (__m256d)c);
#else
    return a * b + c;
#endif
}
// The scalar step of the same chain, for the naive references and scalar tails.
template <typename T>
inline T mul_add(T a, T b, T c) {
#ifdef FASTMLP_HAVE_FMA
    return std::fma(a, b, c);
#else
    return a * b + c;
#endif
}

// Every lane := x (one broadcast instruction; a lane-by-lane initializer compiles to inserts).
inline Simd<float>::vec splat(float x) {
#if FASTMLP_VEC_BYTES == 64
    return (Simd<float>::vec)_mm512_set1_ps(x);
#elif FASTMLP_VEC_BYTES == 32
    return (Simd<float>::vec)_mm256_set1_ps(x);
#elif defined(__SSE__)
    return (Simd<float>::vec)_mm_set1_ps(x);
#else
    return Simd<float>::vec{} + x;
#endif
}
inline Simd<double>::vec splat(double x) {
#if FASTMLP_VEC_BYTES == 64
    return (Simd<double>::vec)_mm512_set1_pd(x);
#elif FASTMLP_VEC_BYTES == 32
    return (Simd<double>::vec)_mm256_set1_pd(x);
#elif defined(__SSE2__)
    return (Simd<double>::vec)_mm_set1_pd(x);
#else
    return Simd<double>::vec{} + x;
#endif
}

// Register tile: kMR rows by kNV vectors. AVX2 (16 vector registers): 6 x 16 floats, 12
// accumulators, as BLIS's haswell kernel. AVX-512: 8 x 32 floats, 16 accumulators (on a Sapphire
// Rapids VM, in interleaved runs, the median product was 5-40 % faster than with 12 x 32 and 24
// accumulators: batch sizes and layer widths are multiples of 8, so no edge tile computes rows
// that are thrown away, and a tile's rows of C, often 4 KB apart, take 8 ways of a 12-way L1 set
// instead of all 12; 6 rows measured no better than 8 or 12).
//
// Block sizes and the order of the tiles. AVX2, measured on Zen 4 (1 MB L2) with 2 threads: K in
// equal blocks of at most 512, 96-row blocks of A (one in L2 while B's micro-panels stream past
// it), up to 3072 columns of B per packed block, the tiles of a block taken down each column of
// tiles (BLIS's order: a B micro-panel stays in L1 while A's stream past it). AVX-512, measured
// on a Sapphire Rapids VM (48 KB L1, 2 MB L2): K in blocks of at most 256 and B in blocks of up to
// 1024 columns (1 MB, held in L2), the tiles taken along each row of tiles: A's micro-panel
// (8 KB) stays in L1 while B's stream from L2, and C's rows are read and written as 8 sequential
// streams, which the hardware prefetches. One thread, interleaved with the old blocking (KC 512,
// NC 3072, column order): every shape of the MLP 2-19 % faster (median of 20 pair ratios), MKL's
// sgemm then 1-13 % ahead instead of 8-29 %; a training step 1.10x (median of 15 process pairs).
// With 2 threads and M >= 256 a thread (kRowSplit), the rows are split instead of the columns:
// each thread packs its own B (K N elements, against 256 N K multiply-adds or more) and keeps
// it in its own L2, where column strips all read one shared packed A, half of it from the other
// core's cache (predict at batch 1024: 1.08x, median of 15 process pairs).
// FASTMLP_GEMM_MR/KC/MC/NC/ROW_ORDER/ROWSPLIT override them for such experiments; the results do
// not depend on them.
#ifndef FASTMLP_GEMM_MR
#if FASTMLP_VEC_BYTES == 64
#define FASTMLP_GEMM_MR 8
#else
#define FASTMLP_GEMM_MR 6
#endif
#endif
constexpr int kMR = FASTMLP_GEMM_MR;
constexpr int kNV = 2;
template <typename T>
constexpr index_t gemm_nr() {
    return kNV * Simd<T>::width;
}
#ifndef FASTMLP_GEMM_KC
#if FASTMLP_VEC_BYTES == 64
#define FASTMLP_GEMM_KC 256
#define FASTMLP_GEMM_MC 96
#define FASTMLP_GEMM_NC 1024
#else
#define FASTMLP_GEMM_KC 512
#define FASTMLP_GEMM_MC 96
#define FASTMLP_GEMM_NC 3072
#endif
#endif
#ifndef FASTMLP_GEMM_ROW_ORDER
#define FASTMLP_GEMM_ROW_ORDER (FASTMLP_VEC_BYTES == 64)
#endif
constexpr index_t kKC = FASTMLP_GEMM_KC;
constexpr index_t kMC = FASTMLP_GEMM_MC;
constexpr index_t kNC = FASTMLP_GEMM_NC;
constexpr bool kRowOrder = FASTMLP_GEMM_ROW_ORDER;
#ifndef FASTMLP_GEMM_ROWSPLIT
#define FASTMLP_GEMM_ROWSPLIT (FASTMLP_VEC_BYTES == 64 ? 256 : 0)
#endif
// Split the rows over the threads, not the columns, from this many rows a thread (0: never).
constexpr index_t kRowSplit = FASTMLP_GEMM_ROWSPLIT;
// Below this many multiply-adds a product runs in the calling thread (a pool wake-up costs more).
constexpr index_t kParallelMacs = index_t(1) << 18;
// The largest A (M * K elements, 4 MB of float) packed once and shared by the threads when they
// split the columns (0: each thread packs all of A itself). AVX-512, on a Sapphire Rapids VM with
// 2 threads, interleaved in the C++ harness (medians of 21 rounds): packing A in each thread was
// 1-4 % faster on the MLP's forward and dX products and 1-14 % on squares of 128-512 (the shared
// packing is one more parallel region, and its wait, and half of A comes from the other core's
// cache); the training step 1.003x and 1.022x (two runs of 16 process pairs). AVX2 keeps the
// shared A of its column order (not timed here: this machine would say nothing about Zen).
#ifndef FASTMLP_GEMM_SHARED_A
#define FASTMLP_GEMM_SHARED_A (FASTMLP_VEC_BYTES == 64 ? 0 : 1 << 20)
#endif
constexpr index_t kSharedPackA = FASTMLP_GEMM_SHARED_A;
// The split of a product's rows over the threads (gemm_run): kFixedShare % of the row panels in
// equal strips, one a thread, the rest claimed in chunks of at least kMinClaim panels (100: equal
// strips only). kBalanceColumns: two column strips sized by the two tasks' recent speeds.
#ifndef FASTMLP_GEMM_FIXED_SHARE
#define FASTMLP_GEMM_FIXED_SHARE 50
#endif
#ifndef FASTMLP_GEMM_MIN_CLAIM
#define FASTMLP_GEMM_MIN_CLAIM 2
#endif
constexpr index_t kFixedShare = FASTMLP_GEMM_FIXED_SHARE;
constexpr index_t kMinClaim = FASTMLP_GEMM_MIN_CLAIM;
#ifndef FASTMLP_GEMM_BALANCE_COLUMNS
#define FASTMLP_GEMM_BALANCE_COLUMNS 1
#endif
constexpr bool kBalanceColumns = FASTMLP_GEMM_BALANCE_COLUMNS;
constexpr double kRatioKeep = 0.7;  // the weight of the running average against a new product's ratio
// The speed ratio of the two column strips' tasks (task 1's / task 0's) over the recent products.
inline std::atomic<double>& column_speed_ratio() {
    static std::atomic<double> ratio{1.0};
    return ratio;
}
// gemm_skinny's and gemm_narrow's tasks a thread (a task packs nothing beyond its own tiles' rows).
#ifndef FASTMLP_GEMM_TASKS
#define FASTMLP_GEMM_TASKS 8
#endif
constexpr index_t kTasksPerThread = FASTMLP_GEMM_TASKS;

#if FASTMLP_VEC_BYTES >= 32
// r[i] := (r0[i], r1[i], ..., r7[i]): the 8x8 transpose of eight float vectors of 8.
__attribute__((always_inline)) inline void transpose8x8(__m256 r[8]) {
    __m256 t[8], s[8];
    for (int i = 0; i < 4; ++i) {
        t[2 * i] = _mm256_unpacklo_ps(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm256_unpackhi_ps(r[2 * i], r[2 * i + 1]);
    }
    for (int h = 0; h < 2; ++h) {  // h = 0: rows 0-3, h = 1: rows 4-7
        s[4 * h + 0] = _mm256_shuffle_ps(t[4 * h], t[4 * h + 2], _MM_SHUFFLE(1, 0, 1, 0));
        s[4 * h + 1] = _mm256_shuffle_ps(t[4 * h], t[4 * h + 2], _MM_SHUFFLE(3, 2, 3, 2));
        s[4 * h + 2] = _mm256_shuffle_ps(t[4 * h + 1], t[4 * h + 3], _MM_SHUFFLE(1, 0, 1, 0));
        s[4 * h + 3] = _mm256_shuffle_ps(t[4 * h + 1], t[4 * h + 3], _MM_SHUFFLE(3, 2, 3, 2));
    }
    for (int i = 0; i < 4; ++i) {
        r[i] = _mm256_permute2f128_ps(s[i], s[4 + i], 0x20);
        r[4 + i] = _mm256_permute2f128_ps(s[i], s[4 + i], 0x31);
    }
}

// A Rows-row panel of a row-major A (acs == 1; pack_a's: Rows = kMR), eight p at a time: d[p Rows + r] := a[r ars + p]
// for p < kc rounded down to 8; returns that count. The rows go through 8x8 transposes, eight
// rows at a time; a last group of fewer rows is stored as a whole vector whose spare lanes the
// next columns' stores overwrite, where it ends within these eight columns (never past them: the
// next block of a shared packed A may be another thread's), and exactly otherwise.
template <int Rows = kMR>
inline index_t pack_a_rows8(float* d, const float* a, index_t ars, index_t kc) {
    static_assert(Rows % 2 == 0, "groups of rows stored in whole pairs");
    constexpr int kGroups = (Rows + 7) / 8, kLast = Rows - 8 * (kGroups - 1);
    const index_t whole = kc / 8 * 8;
    for (index_t p = 0; p < whole; p += 8) {
        __m256 r[kGroups][8];
        for (int g = 0; g < kGroups; ++g) {
            const int rows = g + 1 < kGroups ? 8 : kLast;
            for (int i = 0; i < 8; ++i)
                r[g][i] = i < rows ? _mm256_loadu_ps(a + (8 * g + i) * ars + p) : _mm256_setzero_ps();
            transpose8x8(r[g]);
        }
        for (int i = 0; i < 8; ++i)
            for (int g = 0; g < kGroups; ++g) {
                float* o = d + (p + i) * Rows + 8 * g;
                // A whole vector where it ends within the eight columns (a full group, or spare
                // lanes that later stores overwrite), the exact lanes otherwise.
                if (i * Rows + 8 * g + 8 <= 8 * Rows) {
                    _mm256_storeu_ps(o, r[g][i]);
                } else {
                    const __m128 lo = _mm256_castps256_ps128(r[g][i]), hi = _mm256_extractf128_ps(r[g][i], 1);
                    if constexpr (kLast >= 4) {
                        _mm_storeu_ps(o, lo);
                        if constexpr (kLast == 6) _mm_storel_pi(reinterpret_cast<__m64*>(o + 4), hi);
                    } else {
                        _mm_storel_pi(reinterpret_cast<__m64*>(o), lo);
                    }
                }
            }
    }
    return whole;
}

// pack_b's NR-column panel of a column-major B (brs == 1), eight p and eight columns at a time:
// d[p NR + j] := b[j bcs + p] for p < kc rounded down to 8; returns that count.
inline index_t pack_b_cols8(float* d, const float* b, index_t bcs, index_t kc) {
    constexpr index_t NR = gemm_nr<float>();
    const index_t whole = kc / 8 * 8;
    for (index_t j0 = 0; j0 < NR; j0 += 8)
        for (index_t p = 0; p < whole; p += 8) {
            __m256 r[8];
            for (int j = 0; j < 8; ++j) r[j] = _mm256_loadu_ps(b + (j0 + j) * bcs + p);
            transpose8x8(r);
            for (int i = 0; i < 8; ++i) _mm256_storeu_ps(d + (p + i) * NR + j0, r[i]);
        }
    return whole;
}
#endif

// One panel of Rows rows: d[p Rows + r] := A(r, p) for r < rows, p < kc; rows past `rows` zero.
template <typename T, int Rows>
inline void pack_panel(T* d, const T* a, index_t ars, index_t acs, index_t rows, index_t kc) {
    if (rows == Rows && acs == 1) {
        index_t p = 0;
#if FASTMLP_VEC_BYTES >= 32
        if constexpr (std::is_same_v<T, float>) p = pack_a_rows8<Rows>(d, a, ars, kc);
#endif
        for (; p < kc; ++p)
            for (int r = 0; r < Rows; ++r) d[p * Rows + r] = a[r * ars + p];
    } else if (rows == Rows && ars == 1) {
        // A transposed A: the panel's rows are contiguous at each p, one fixed-size copy (a 16-
        // and an 8-byte move for 6 floats).
        for (index_t p = 0; p < kc; ++p) std::memcpy(d + p * Rows, a + p * acs, Rows * sizeof(T));
    } else {
        for (index_t p = 0; p < kc; ++p) {
            for (index_t r = 0; r < rows; ++r) d[p * Rows + r] = a[r * ars + p * acs];
            for (index_t r = rows; r < Rows; ++r) d[p * Rows + r] = T(0);
        }
    }
}

// Pack A(m0 + i, p0 + p) for i < mc, p < kc into micro-panels of kMR rows: panel r holds
// (kc, kMR) p-major; rows past mc are zero. Dst (round_up(mc, kMR) * kc) is overwritten.
template <typename T>
inline void pack_a(T* dst, const T* A, index_t ars, index_t acs, index_t mc, index_t kc) {
    index_t i_start = 0;
    if (ars == 1 && acs != 1 && mc >= kMR) {
        // A transposed A (X^T in the weight gradients): its whole panels p by p, each p's mc
        // contiguous values copied a kMR-row piece at a time into every panel. A's row p is then
        // read once, sequentially; panel by panel, each p would be a row stride away (often a new
        // page) once for every panel.
        i_start = mc / kMR * kMR;
        for (index_t p = 0; p < kc; ++p) {
            const T* a = A + p * acs;
            for (index_t i0 = 0; i0 < i_start; i0 += kMR) std::memcpy(dst + i0 * kc + p * kMR, a + i0, kMR * sizeof(T));
        }
    }
    for (index_t i0 = i_start; i0 < mc; i0 += kMR)
        pack_panel<T, kMR>(dst + i0 * kc, A + i0 * ars, ars, acs, std::min<index_t>(kMR, mc - i0), kc);
}

// Pack B(p, n0 + j) for p < kc, j < nc into micro-panels of NR columns: panel j holds (kc, NR)
// p-major; columns past nc are zero. Dst (kc * round_up(nc, NR)) is overwritten. A transposed B
// (bcs != 1) is read along its contiguous p.
template <typename T>
inline void pack_b(T* dst, const T* B, index_t brs, index_t bcs, index_t kc, index_t nc) {
    constexpr index_t NR = gemm_nr<T>();
    index_t whole = 0;  // columns already packed
    if (bcs == 1) {
        // Row-major B, its whole panels: NR contiguous values per row, in whole vectors, 8 rows at
        // a time across all the panels. B is then read as 8 sequential streams, which the
        // hardware prefetches; down one panel each step would be a row stride away (often 4 KB:
        // a new page).
        using vec = typename Simd<T>::vec;
        constexpr index_t W = Simd<T>::width;
        whole = nc / NR * NR;
        for (index_t p0 = 0; p0 < kc; p0 += 8) {
            const index_t p1 = std::min<index_t>(kc, p0 + 8);
            for (index_t j0 = 0; j0 < whole; j0 += NR)
                for (index_t p = p0; p < p1; ++p)
                    for (index_t v = 0; v < NR; v += W) {
                        vec x;
                        std::memcpy(&x, B + p * brs + j0 + v, sizeof(vec));
                        std::memcpy(dst + j0 * kc + p * NR + v, &x, sizeof(vec));
                    }
        }
    }
    for (index_t j0 = whole; j0 < nc; j0 += NR) {
        const index_t cols = std::min<index_t>(NR, nc - j0);
        T* d = dst + j0 * kc;
        const T* b = B + j0 * bcs;
        if (bcs == 1) {
            for (index_t p = 0; p < kc; ++p) {
                const T* row = b + p * brs;
                for (index_t j = 0; j < cols; ++j) d[p * NR + j] = row[j];
                for (index_t j = cols; j < NR; ++j) d[p * NR + j] = T(0);
            }
        } else {
            // Column-major B (a transposed operand): read along each column's contiguous p, in
            // blocks of 16 rows of the panel so that the stores stay within a few cache lines.
            index_t p_done = 0;
#if FASTMLP_VEC_BYTES >= 32
            if constexpr (std::is_same_v<T, float>)
                if (brs == 1 && cols == NR) p_done = pack_b_cols8(d, b, bcs, kc);
#endif
            for (index_t p0 = p_done; p0 < kc; p0 += 16) {
                const index_t p1 = std::min<index_t>(kc, p0 + 16);
                for (index_t j = 0; j < cols; ++j) {
                    const T* col = b + j * bcs;
                    for (index_t p = p0; p < p1; ++p) d[p * NR + j] = col[p * brs];
                }
                for (index_t j = cols; j < NR; ++j)
                    for (index_t p = p0; p < p1; ++p) d[p * NR + j] = T(0);
            }
        }
    }
}

// SgdStore's step on n consecutive parameters from offset off, gradients g (n,).
template <typename T>
inline void sgd_row(const SgdStore<T>& s, index_t off, const T* g, index_t n) {
    const SgdStep<T>& st = s.step;
    if (!sgd_update(s.w + off, g, s.v ? s.v + off : nullptr, n, st.lr, st.mu, st.nesterov))
        st.bad->fetch_or(1, std::memory_order_relaxed);
}

// SgdStore's step on a whole (kMR, NR) register tile of gradients, its weights at offset off:
// sgd_update's expressions on whole vectors. Each row's weights and velocities are loaded before
// the row above is stored. Fully unrolled, so that the tile stays in registers (any loop left
// over it would put the microkernel's accumulators in memory).
template <typename T>
__attribute__((always_inline)) inline void sgd_tile(const typename Simd<T>::vec (&g)[kMR][kNV], const SgdStore<T>& s,
                                                    index_t off) {
    using vec = typename Simd<T>::vec;
    constexpr index_t W = Simd<T>::width;
    T* const w0 = s.w + off;
    T* const v0 = s.v ? s.v + off : nullptr;
    const index_t ld = s.ld;
    const T lr = s.step.lr, mu = s.step.mu;
    const bool nesterov = s.step.nesterov, momentum = mu != T(0);
    vec bad{};
    vec w[kMR][kNV]{}, vel[kMR][kNV]{};
#pragma GCC unroll 8
    for (int v = 0; v < kNV; ++v) {
        std::memcpy(&w[0][v], w0 + v * W, sizeof(vec));
        if (momentum) std::memcpy(&vel[0][v], v0 + v * W, sizeof(vec));
    }
#pragma GCC unroll 8
    for (int r = 0; r < kMR; ++r) {
        if (r + 1 < kMR) {
#pragma GCC unroll 8
            for (int v = 0; v < kNV; ++v) {
                std::memcpy(&w[r + 1][v], w0 + (r + 1) * ld + v * W, sizeof(vec));
                if (momentum) std::memcpy(&vel[r + 1][v], v0 + (r + 1) * ld + v * W, sizeof(vec));
            }
        }
#pragma GCC unroll 8
        for (int v = 0; v < kNV; ++v) {
            if (momentum)
                sgd_momentum_step(w[r][v], vel[r][v], g[r][v], lr, mu, nesterov);
            else
                w[r][v] -= g[r][v] * lr;
            bad += w[r][v] - w[r][v];  // 0 while every weight is finite, NaN after one that is not
            std::memcpy(w0 + r * ld + v * W, &w[r][v], sizeof(vec));
            if (momentum) std::memcpy(v0 + r * ld + v * W, &vel[r][v], sizeof(vec));
        }
    }
    T lanes[W];
    std::memcpy(lanes, &bad, sizeof(vec));
    T any = 0;
    for (index_t i = 0; i < W; ++i) any += lanes[i];
    if (any != T(0)) s.step.bad->fetch_or(1, std::memory_order_relaxed);
}

// SgdStore's step on rows [m0, m1) of a finished product C (M, N), the gemm paths that store C.
template <typename T>
inline void sgd_rows(const GemmArgs<T>& g, index_t m0, index_t m1) {
    for (index_t m = m0; m < m1; ++m) sgd_row(*g.sgd, m * g.sgd->ld, g.C + m * g.ldc, g.N);
}

// Microkernel: the (kMR, NR) tile C := (accumulate ? C : 0) + Ap Bp, one mul_add chain per element
// over p ascending, then + bias (NR entries) when bias is not null, then relu when set. Ap: (kc,
// kMR) and Bp: (kc, NR) packed micro-panels. C has row stride ldc and all kMR x NR entries are read/written.
// Unpacked A (gemm_skinny): row r, column p of the tile's A at Ap[r * ars + p], ars given.
template <typename T, bool kPackedA = true>
inline void micro_kernel(index_t kc, const T* __restrict Ap, const T* __restrict Bp, T* C, index_t ldc,
                         bool accumulate, const T* bias, index_t ars = 0, const SgdStore<T>* sgd = nullptr,
                         index_t sgd_off = 0, bool relu = false) {
    using vec = typename Simd<T>::vec;
    constexpr index_t W = Simd<T>::width;
    vec acc[kMR][kNV];
    if (accumulate) {
        for (int r = 0; r < kMR; ++r)
            for (int v = 0; v < kNV; ++v) std::memcpy(&acc[r][v], C + r * ldc + v * W, sizeof(vec));
    } else {
        for (int r = 0; r < kMR; ++r)
            for (int v = 0; v < kNV; ++v) acc[r][v] = vec{};
    }
#pragma GCC unroll 4
    for (index_t p = 0; p < kc; ++p) {
        vec b[kNV];
        for (int v = 0; v < kNV; ++v) std::memcpy(&b[v], Bp + p * kNV * W + v * W, sizeof(vec));
        for (int r = 0; r < kMR; ++r) {
            const vec a = splat(kPackedA ? Ap[p * kMR + r] : Ap[r * ars + p]);
            for (int v = 0; v < kNV; ++v) acc[r][v] = mul_add(a, b[v], acc[r][v]);
        }
    }
    if (bias) {
        for (int v = 0; v < kNV; ++v) {
            vec bv;
            std::memcpy(&bv, bias + v * W, sizeof(bv));
            for (int r = 0; r < kMR; ++r) acc[r][v] += bv;
        }
    }
    if (relu)  // relu's max(., 0) on the final values (act_value's a > 0 ? a : 0)
        for (int r = 0; r < kMR; ++r)
            for (int v = 0; v < kNV; ++v) acc[r][v] = max_sel(acc[r][v], vec{});
    if (sgd) {  // the tile's values are final: the weights' update instead of a store
        sgd_tile(acc, *sgd, sgd_off);
        return;
    }
    // Stores go through copies: taking the accumulators' own address would keep them in memory
    // (spilled) through the whole p loop.
    for (int r = 0; r < kMR; ++r)
        for (int v = 0; v < kNV; ++v) {
            const vec out = acc[r][v];
            std::memcpy(C + r * ldc + v * W, &out, sizeof(out));
        }
}

// The packing buffers of the calling thread, grown as needed and kept for the next product.
// Those of 1 MB and more are 2 MB-aligned and asked for as transparent huge pages (Linux's
// madvise; where they are not granted the buffer works the same): a packed block of B (1 MB) in
// 4 KB pages takes 256 TLB entries, and the kernel, streaming B's micro-panels, crosses a page
// every 32 of its steps. On a Sapphire Rapids VM, one thread: the MLP's products 0-9 % faster.
// Contents are not kept when a buffer grows; every caller writes what it reads.
struct PackBuffer {
    void* data = nullptr;
    size_t bytes = 0;
    PackBuffer() = default;
    PackBuffer(const PackBuffer&) = delete;
    PackBuffer& operator=(const PackBuffer&) = delete;
    ~PackBuffer() { std::free(data); }
    void* reserve(size_t need) {
        if (need <= bytes) return data;
        std::free(data);
        data = nullptr;
        bytes = 0;
        constexpr size_t kHuge = size_t(1) << 21;
        const size_t align = need >= kHuge / 2 ? kHuge : 64;
        const size_t size = (need + align - 1) / align * align;  // aligned_alloc wants a multiple
        data = std::aligned_alloc(align, size);
        if (!data) throw std::bad_alloc();
#ifdef MADV_HUGEPAGE
        if (align == kHuge) madvise(data, size, MADV_HUGEPAGE);
#endif
        bytes = size;
        return data;
    }
};

template <typename T>
inline T* gemm_buffer(int which, index_t n) {
    thread_local PackBuffer buffers[4];  // packed A, packed B, a transposed product, shared packed A
    return static_cast<T*>(buffers[which].reserve(size_t(n) * sizeof(T)));
}

// K in equal blocks of at most kKC (1100 = 367 + 367 + 366, not 512 + 512 + 76): (blocks, step).
inline std::pair<index_t, index_t> k_blocking(index_t K) {
    const index_t kblocks = std::max<index_t>(1, (K + kKC - 1) / kKC);
    return {kblocks, (K + kblocks - 1) / kblocks};
}

// All of A packed once, for threads that split the columns of one product: the block of K block pb
// and rows [ib kMC, (ib + 1) kMC) at data + (pb * iblocks + ib) * stride, as pack_a lays it out.
template <typename T>
struct PackedA {
    const T* data = nullptr;
    index_t iblocks = 0, stride = 0;
};

// K block pb of columns [jc, jc + nc) of B, packed into the calling thread's buffer.
template <typename T>
const T* pack_b_block(const GemmArgs<T>& g, index_t pb, index_t jc, index_t nc) {
    const auto [kblocks, kstep] = k_blocking(g.K);
    const index_t pc = pb * kstep;
    T* Bp = gemm_buffer<T>(1, std::max<index_t>(kstep, 1) * round_up(nc, gemm_nr<T>()));
    pack_b(Bp, g.B + pc * g.brs + jc * g.bcs, g.brs, g.bcs, std::min(kstep, g.K - pc), nc);
    return Bp;
}

// The rows [m0, m1) and columns [n0, n1) of the product, in the calling thread; A from `shared`
// when given (then m0 = 0), packed here otherwise. Only K block only_pb when it is >= 0 (that
// block's part of the sums; C holds the earlier blocks'). B from `packed_b` when given (the one
// block of K and the columns [n0, n1), at most kNC, as pack_b lays them out), packed here otherwise.
template <typename T>
void gemm_block(const GemmArgs<T>& g, index_t m0, index_t m1, index_t n0, index_t n1,
                const PackedA<T>* shared = nullptr, const T* packed_b = nullptr, index_t only_pb = -1) {
    constexpr index_t NR = gemm_nr<T>();
    const auto [kblocks, kstep] = k_blocking(g.K);
    for (index_t jc = n0; jc < n1; jc += kNC) {
        const index_t nc = std::min(kNC, n1 - jc);
        const index_t pb0 = only_pb < 0 ? 0 : only_pb, pb1 = only_pb < 0 ? kblocks : only_pb + 1;
        for (index_t pb = pb0; pb < pb1; ++pb) {
            const index_t pc = pb * kstep;
            const index_t kc = std::min(kstep, g.K - pc);
            const bool first = pb == 0, last = pb + 1 == kblocks;
            const T* Bp = packed_b ? packed_b : pack_b_block(g, pb, jc, nc);
            for (index_t ic = m0; ic < m1; ic += kMC) {
                const index_t mc = std::min(kMC, m1 - ic);
                const T* Ap;
                if (shared) {
                    Ap = shared->data + (pb * shared->iblocks + ic / kMC) * shared->stride;
                } else {
                    T* own = gemm_buffer<T>(0, round_up(kMC, kMR) * kstep);
                    pack_a(own, g.A + ic * g.ars + pc * g.acs, g.ars, g.acs, mc, kc);
                    Ap = own;
                }
                const SgdStore<T>* sgd = last ? g.sgd : nullptr;
                // One register tile: rows [ir, ir + kMR) and columns [jr, jr + NR) of the block.
                const auto tile = [&](index_t ir, index_t jr) {
                    const index_t cols = std::min(NR, nc - jr);
                    const index_t rows = std::min<index_t>(kMR, mc - ir);
                    const T* bias = last && g.bias ? g.bias + jc + jr : nullptr;
                    const bool relu = last && g.act == Act::Relu;  // in registers, before the store
                    T* c = g.C + (ic + ir) * g.ldc + jc + jr;
                    const index_t sgd_off = sgd ? (ic + ir) * sgd->ld + jc + jr : 0;
                    if (!kRowOrder && !sgd && ir + kMR < mc)  // the next tile's rows of C, while this one computes
                        for (int r = 0; r < kMR; ++r) __builtin_prefetch(c + (kMR + r) * g.ldc, 1);
                    if (rows == kMR && cols == NR) {
                        micro_kernel(kc, Ap + ir * kc, Bp + jr * kc, c, g.ldc, !first, bias, 0, sgd, sgd_off, relu);
                    } else {  // an edge tile goes through a full-size tile on the stack
                        T t[kMR * NR] = {};
                        if (!first)
                            for (index_t r = 0; r < rows; ++r) std::copy(c + r * g.ldc, c + r * g.ldc + cols, t + r * NR);
                        micro_kernel<T>(kc, Ap + ir * kc, Bp + jr * kc, t, NR, !first, bias, 0, nullptr, 0, relu);
                        if (sgd) {
                            for (index_t r = 0; r < rows; ++r) sgd_row(*sgd, sgd_off + r * sgd->ld, t + r * NR, cols);
                        } else {
                            for (index_t r = 0; r < rows; ++r) std::copy(t + r * NR, t + r * NR + cols, c + r * g.ldc);
                        }
                    }
                    if (last && g.act != Act::Linear && !relu)
                        for (index_t r = 0; r < rows; ++r) act_forward_row(g.act, c + r * g.ldc, cols);
                };
                if (!kRowOrder && !sgd) {  // BLIS's order: each B micro-panel stays in L1 while A's stream past it
                    for (index_t jr = 0; jr < nc; jr += NR)
                        for (index_t ir = 0; ir < mc; ir += kMR) tile(ir, jr);
                } else {
                    // Along the rows (kRowOrder), and always with the SGD step: the weights and
                    // velocities are then read and written as kMR sequential streams, which the
                    // hardware prefetches (down a column of tiles, each would be a miss a row's
                    // stride away).
                    for (index_t ir = 0; ir < mc; ir += kMR)
                        for (index_t jr = 0; jr < nc; jr += NR) tile(ir, jr);
                }
            }
        }
    }
}

// R rows of a tiny product from B copied into whole vectors (Bp, (K, Np)): one vector of columns
// at a time, R chains side by side.
// dst[0, n) := src[0, n) for n < N, as one fixed-size copy (a loop or a sized memcpy here compiles
// to a library call, which costs more than a tiny product's row).
template <typename T, index_t N>
inline void copy_head(T* dst, const T* src, index_t n) {
    if constexpr (N > 1) {
        if (n == N - 1) {
            std::memcpy(dst, src, (N - 1) * sizeof(T));
            return;
        }
        copy_head<T, N - 1>(dst, src, n);
    }
}

// c[0, cols) := the first cols lanes of v (cols <= the vector's width); c[cols, width) untouched.
template <typename T>
inline void store_head(T* c, typename Simd<T>::vec v, index_t cols) {
    using vec = typename Simd<T>::vec;
    constexpr index_t W = Simd<T>::width;
    if (cols == W) {
        std::memcpy(c, &v, sizeof(vec));
#if FASTMLP_VEC_BYTES == 64
    } else if constexpr (std::is_same_v<T, float>) {  // a masked store: the lanes past cols untouched
        _mm512_mask_storeu_ps(c, static_cast<__mmask16>((1u << cols) - 1), reinterpret_cast<const __m512&>(v));
    } else if constexpr (std::is_same_v<T, double>) {
        _mm512_mask_storeu_pd(c, static_cast<__mmask8>((1u << cols) - 1), reinterpret_cast<const __m512d&>(v));
#endif
    } else {
        T lanes[W];
        std::memcpy(lanes, &v, sizeof(vec));
        copy_head<T, W>(c, lanes, cols);
    }
}

template <typename T, int R>
inline void direct_rows(const GemmArgs<T>& g, const T* Bp, index_t Np, index_t m0) {
    using vec = typename Simd<T>::vec;
    constexpr index_t W = Simd<T>::width;
    for (index_t n0 = 0; n0 < Np; n0 += W) {
        vec acc[R];
        for (int r = 0; r < R; ++r) acc[r] = vec{};
        for (index_t p = 0; p < g.K; ++p) {
            vec b;
            std::memcpy(&b, Bp + p * Np + n0, sizeof(vec));
            for (int r = 0; r < R; ++r) acc[r] = mul_add(splat(g.A[(m0 + r) * g.ars + p * g.acs]), b, acc[r]);
        }
        const index_t cols = std::min(W, g.N - n0);
        for (int r = 0; r < R; ++r) {
            if (g.bias) {
                vec bv;
                std::memcpy(&bv, g.bias + n0, sizeof(bv));
                acc[r] += bv;
            }
            T* c = g.C + (m0 + r) * g.ldc + n0;
            store_head(c, acc[r], cols);
            if (g.act != Act::Linear) act_forward_row(g.act, c, cols);
        }
    }
}

// Tiny products (the seed's 100x2 @ 2x4): no packing of A and no cache blocking, B copied once into
// whole vectors; rows four at a time.
template <typename T>
void gemm_direct(const GemmArgs<T>& g) {
    constexpr index_t W = Simd<T>::width;
    const index_t Np = round_up(g.N, W);
    T* Bp = gemm_buffer<T>(1, std::max<index_t>(g.K, 1) * Np);
    for (index_t p = 0; p < g.K; ++p)
        for (index_t n = 0; n < Np; ++n) Bp[p * Np + n] = n < g.N ? g.B[p * g.brs + n * g.bcs] : T(0);
    index_t m = 0;
    for (; m + 4 <= g.M; m += 4) direct_rows<T, 4>(g, Bp, Np, m);
    switch (g.M - m) {
        case 3: direct_rows<T, 3>(g, Bp, Np, m); break;
        case 2: direct_rows<T, 2>(g, Bp, Np, m); break;
        case 1: direct_rows<T, 1>(g, Bp, Np, m); break;
        default: break;
    }
}

// Few columns (kNarrowCols < N < NR; fewer go to gemm_narrow), many rows, A row-major: B packed into one
// NR-wide panel and each kMR-row tile of C computed from A's rows as they are (no packing of A,
// no blocking of K: one chain per element in registers), row tiles split over the threads. The
// chains are the GEMM's, so the same bits.
template <typename T>
void gemm_skinny(const GemmArgs<T>& g) {
    constexpr index_t NR = gemm_nr<T>();
    T* Bp = gemm_buffer<T>(1, g.K * NR);
    pack_b(Bp, g.B, g.brs, g.bcs, g.K, g.N);
    const index_t tiles = (g.M + kMR - 1) / kMR;
    auto rows = [&](index_t t0, index_t t1) {
        for (index_t t = t0; t < t1; ++t) {
            const index_t m0 = t * kMR, mr = std::min<index_t>(kMR, g.M - m0);
            T tile[kMR * NR];
            if (mr == kMR) {
                micro_kernel<T, false>(g.K, g.A + m0 * g.ars, Bp, tile, NR, false, g.bias, g.ars);
            } else {  // the last rows: a full tile from a copy of them, zero-padded
                T* a = gemm_buffer<T>(2, kMR * g.K);
                std::fill(a, a + kMR * g.K, T(0));
                for (index_t r = 0; r < mr; ++r) std::copy(g.A + (m0 + r) * g.ars, g.A + (m0 + r) * g.ars + g.K, a + r * g.K);
                micro_kernel<T, false>(g.K, a, Bp, tile, NR, false, g.bias, g.K);
            }
            for (index_t r = 0; r < mr; ++r) {
                T* c = g.C + (m0 + r) * g.ldc;
                std::copy(tile + r * NR, tile + r * NR + g.N, c);
                if (g.act != Act::Linear) act_forward_row(g.act, c, g.N);
            }
        }
    };
    // No operand is packed per task: strips narrower than one per thread cost nothing, and a
    // thread slowed by another process takes fewer of them (gemm_run).
    const int tasks = static_cast<int>(std::min<index_t>(num_threads() * kTasksPerThread, tiles));
    if (num_threads() == 1 || tasks <= 1 || g.M * g.N * g.K < kParallelMacs) {
        rows(0, tiles);
        return;
    }
    parallel_for(tasks, [&](int t) { rows(tiles * t / tasks, tiles * (t + 1) / tasks); });
}

// Few columns (N <= kNarrowCols: an output layer of 10 classes, forward and its weight gradient),
// many rows: the vectors run down the rows. A tile is RV vectors of W rows by NC columns (4, or
// kNarrowCols; B copied once into rows of NC, zero-padded), each accumulator column n of RV W
// rows: per p, A's values for the tile's rows (packed p-major by pack_panel, one block of K at a
// time) times B(p, n) broadcast. Every lane does useful work, where the register-tiled path's
// NR = 32 columns would leave more than two thirds of each tile idle for 10 classes. Each element
// is the GEMM's chain (mul_add over p ascending from 0, then + bias), so the same bits.
constexpr int kNarrowCols = 12;
template <typename T, int RV, int NC>
void narrow_tiles(const GemmArgs<T>& g, const T* Bp, index_t t0, index_t t1) {
    using vec = typename Simd<T>::vec;
    constexpr index_t W = Simd<T>::width, R = RV * W;
    const auto [kblocks, kstep] = k_blocking(g.K);
    T* Ap = gemm_buffer<T>(0, R * kstep);
    for (index_t t = t0; t < t1; ++t) {
        const index_t m0 = t * R, mr = std::min<index_t>(R, g.M - m0);
        vec acc[RV][NC];
        for (int v = 0; v < RV; ++v)
            for (int n = 0; n < NC; ++n) acc[v][n] = vec{};
        for (index_t pb = 0; pb < kblocks; ++pb) {
            const index_t pc = pb * kstep, kc = std::min(kstep, g.K - pc);
            pack_panel<T, R>(Ap, g.A + m0 * g.ars + pc * g.acs, g.ars, g.acs, mr, kc);
            const T* b = Bp + pc * NC;
#pragma GCC unroll 2
            for (index_t p = 0; p < kc; ++p) {
                vec a[RV];
                for (int v = 0; v < RV; ++v) std::memcpy(&a[v], Ap + p * R + v * W, sizeof(vec));
                for (int n = 0; n < NC; ++n) {
                    const vec bn = splat(b[p * NC + n]);
                    for (int v = 0; v < RV; ++v) acc[v][n] = mul_add(a[v], bn, acc[v][n]);
                }
            }
        }
        T out[NC][R];  // column n of the tile's rows
        for (int n = 0; n < NC; ++n)
            for (int v = 0; v < RV; ++v) {
                const vec o = g.bias && n < g.N ? acc[v][n] + splat(g.bias[n]) : acc[v][n];
                std::memcpy(&out[n][v * W], &o, sizeof(vec));
            }
        for (index_t r = 0; r < mr; ++r) {
            T* c = g.C + (m0 + r) * g.ldc;
            for (index_t n = 0; n < g.N; ++n) c[n] = out[n][r];
            if (g.act != Act::Linear) act_forward_row(g.act, c, g.N);
        }
    }
}

template <typename T>
void gemm_narrow(const GemmArgs<T>& g) {
    const bool few = g.N <= 4;  // 4 columns, two vectors of rows: 8 chains in flight
    const index_t NC = few ? 4 : kNarrowCols, R = (few ? 2 : 1) * Simd<T>::width;
    T* Bp = gemm_buffer<T>(1, g.K * NC);
    std::fill(Bp, Bp + g.K * NC, T(0));
    for (index_t p = 0; p < g.K; ++p) {
        if (g.bcs == 1) {
            copy_head<T, kNarrowCols + 1>(Bp + p * NC, g.B + p * g.brs, g.N);
        } else {
            for (index_t n = 0; n < g.N; ++n) Bp[p * NC + n] = g.B[p * g.brs + n * g.bcs];
        }
    }
    const index_t tiles = (g.M + R - 1) / R;
    const auto rows = [&](index_t t0, index_t t1) {
        if (few)
            narrow_tiles<T, 2, 4>(g, Bp, t0, t1);
        else
            narrow_tiles<T, 1, kNarrowCols>(g, Bp, t0, t1);
    };
    const int tasks = static_cast<int>(std::min<index_t>(num_threads() * kTasksPerThread, tiles));
    if (num_threads() == 1 || tasks <= 1 || g.M * g.N * g.K < kParallelMacs) {
        rows(0, tiles);
        return;
    }
    parallel_for(tasks, [&](int t) { rows(tiles * t / tasks, tiles * (t + 1) / tasks); });
}

template <typename T>
void gemm_run(const GemmArgs<T>& g);

template <typename T>
void gemm(T* C, index_t ldc, const T* A, index_t ars, index_t acs, const T* B, index_t brs, index_t bcs,
          index_t M, index_t N, index_t K, const T* bias, Act act) {
    gemm_run(GemmArgs<T>{C, ldc, A, ars, acs, B, brs, bcs, M, N, K, bias, act});
}

// The product C = op(A) op(B) (no bias, no activation) with the momentum-SGD step `sgd` applied
// with each of C's final values (SgdStore): a weight gradient consumed as it is made, never
// stored whole. On the register-tiled path the step runs on the tile in registers; the other
// paths store C and then step over it. Either way the weights get sgd_update's bits.
template <typename T>
void gemm_sgd(T* C, index_t ldc, const T* A, index_t ars, index_t acs, const T* B, index_t brs, index_t bcs,
              index_t M, index_t N, index_t K, const SgdStore<T>& sgd) {
    GemmArgs<T> g{C, ldc, A, ars, acs, B, brs, bcs, M, N, K, nullptr, Act::Linear};
    g.sgd = &sgd;
    gemm_run(g);
}

template <typename T>
void gemm_run(const GemmArgs<T>& g) {
    auto [C, ldc, A, ars, acs, B, brs, bcs, M, N, K, bias, act, sgd] = g;
    constexpr index_t NR = gemm_nr<T>();
    // The paths that store C whole; with an SGD step, it follows over C.
    const auto stored = [&] {
        if (sgd) sgd_rows(g, 0, M);
    };
    if (K <= 16 && N <= NR) {
        gemm_direct(g);
        stored();
        return;
    }
#ifndef FASTMLP_GEMM_NO_NARROW
    if (N <= kNarrowCols && M >= 4 * NR && K >= 1) {
        gemm_narrow(g);
        stored();
        return;
    }
#endif
    if (N < NR && M >= 4 * NR && acs == 1 && K >= 1) {
        gemm_skinny(g);
        stored();
        return;
    }
    if (N < NR && M >= 4 * NR) {
        // Few columns, many rows (an output layer of 10 classes): C^T = B^T A^T fills whole register
        // tiles where C would waste most of each. The chains are the same (mul_add(a, b, c) ==
        // mul_add(b, a, c)); bias and activation are applied on the way back.
        T* Ct = gemm_buffer<T>(2, N * M);
        gemm(Ct, M, B, bcs, brs, A, acs, ars, N, M, K, static_cast<const T*>(nullptr), Act::Linear);
        for (index_t m = 0; m < M; ++m) {
            T* c = C + m * ldc;
            for (index_t n = 0; n < N; ++n) c[n] = bias ? Ct[n * M + m] + bias[n] : Ct[n * M + m];
            if (act != Act::Linear) act_forward_row(act, c, N);
        }
        stored();
        return;
    }
    const int threads = num_threads();
    if (threads == 1 || M * N * std::max<index_t>(K, 1) < kParallelMacs) {
        gemm_block(g, 0, M, 0, N);
        return;
    }
    // Split the output into one strip per thread: columns (in whole NR panels) when there are
    // enough of them and the rows are fewer than kRowSplit a thread, rows (in whole kMR panels)
    // otherwise.
    const index_t col_panels = (N + NR - 1) / NR, row_panels = (M + kMR - 1) / kMR;
    const bool many_rows = kRowSplit > 0 && M >= kRowSplit * threads;
    const bool by_cols = !many_rows && (col_panels >= 4 * threads || col_panels >= row_panels);
    const index_t panels = by_cols ? col_panels : row_panels;
    // Column strips all read the whole of A: up to kSharedPackA elements (AVX2 and the baseline),
    // it is packed once, the blocks split over the threads, instead of once per thread.
    const bool share_a = by_cols && M * K <= kSharedPackA;
    const int tasks = static_cast<int>(std::min<index_t>(threads, panels));
    PackedA<T> shared;
    if (share_a && tasks > 1) {
        const auto [kblocks, kstep] = k_blocking(K);
        shared.iblocks = (M + kMC - 1) / kMC;
        shared.stride = round_up(kMC, kMR) * kstep;
        T* buf = gemm_buffer<T>(3, kblocks * shared.iblocks * shared.stride);
        parallel_for(static_cast<int>(kblocks * shared.iblocks), [&](int block) {
            const index_t pb = block / shared.iblocks, ib = block % shared.iblocks;
            const index_t pc = pb * kstep, ic = ib * kMC;
            pack_a(buf + block * shared.stride, A + ic * ars + pc * acs, ars, acs, std::min(kMC, M - ic),
                   std::min(kstep, K - pc));
        });
        shared.data = buf;
    }
    // Columns, two threads: one strip a thread, their widths in the ratio of the two tasks' speeds
    // over the recent products (an exponential average of each product's measured ratio, kept
    // within 1:2 and 2:1), so that a core running slower for a while (another guest on its
    // physical core) gets the narrower strip while A is still streamed once by each. Which task
    // computes which columns does not change the bits, only the time. Training step 1.049x and
    // 1.051x against equal strips (medians of 14 pairs of whole processes). Not kept: narrower
    // strips claimed by whichever thread was free (on a Sapphire Rapids VM, with K blocks of 512
    // and the column order, the median product 15-20 % faster; with the AVX-512 blocking above,
    // the step 1.045x slower than one strip a thread, median of 30 pairs); claimed chunks after a
    // fixed share, as the rows below (5-8 % slower on the forward products, each chunk streaming
    // all of A again); the same with all of A's block of K packed once by each thread, the rest
    // claimed from one end or by each task from its own end (0.85-1.04x on the forward and dX
    // products and squares of 256: a column's C then moves between the cores' caches from one
    // block of K to the next); the last 15 % of the columns done as rows claimed (the step 0.992x).
    if (by_cols && tasks == 2 && kBalanceColumns) {
        std::atomic<double>& ratio = column_speed_ratio();
        const double r = ratio.load(std::memory_order_relaxed);  // task 1's speed / task 0's
        const index_t split = std::clamp<index_t>(static_cast<index_t>(std::lround(panels / (1 + r))), 1, panels - 1);
        double ends[2] = {0, 0};
        const auto start = std::chrono::steady_clock::now();
        parallel_for(2, [&](int t) {
            const index_t lo = t ? split : 0, hi = t ? panels : split;
            gemm_block(g, 0, M, lo * NR, std::min(N, hi * NR), shared.data ? &shared : nullptr);
            ends[t] = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
        });
        if (ends[0] > 0 && ends[1] > 0) {
            const double measured = (double(panels - split) / ends[1]) / (double(split) / ends[0]);
            ratio.store(kRatioKeep * r + (1 - kRatioKeep) * std::clamp(measured, 0.5, 2.0), std::memory_order_relaxed);
        }
        return;
    }
    if (by_cols || kFixedShare >= 100) {
        parallel_for(tasks, [&](int t) {
            const index_t lo = panels * t / tasks, hi = panels * (t + 1) / tasks;
            if (by_cols)
                gemm_block(g, 0, M, lo * NR, std::min(N, hi * NR), shared.data ? &shared : nullptr);
            else
                gemm_block(g, lo * kMR, std::min(M, hi * kMR), 0, N);
        });
        return;
    }
    // Rows: the blocks of B (kNC columns by one block of K) in turn. In each, a task takes its
    // equal strip's kFixedShare % of the row panels, then claims the rest in shrinking chunks (a
    // (2 tasks)-th of what is left, at least kMinClaim panels) while any are left: a core that
    // runs slower for a while (another guest on its physical core) then does fewer rows instead
    // of keeping the other waiting at the end. A thread packs a block of B when it first takes
    // rows in it, and waits until the rows it takes are done in the previous block of K (their
    // sums go on from there); a wait is only ever for rows that a running task has claimed, in an
    // earlier block, so a region whose tasks run one after another never waits.
    const auto [kblocks, kstep] = k_blocking(K);
    const index_t blocks = (N + kNC - 1) / kNC * kblocks;
    const index_t fixed = panels * kFixedShare / (100 * tasks);
    std::unique_ptr<std::atomic<index_t>[]> next(new std::atomic<index_t>[blocks]);
    std::unique_ptr<std::atomic<bool>[]> done(new std::atomic<bool>[blocks * panels]);
    for (index_t b = 0; b < blocks; ++b) next[b].store(fixed * tasks, std::memory_order_relaxed);
    for (index_t i = 0; i < blocks * panels; ++i) done[i].store(false, std::memory_order_relaxed);
    const auto claim = [&](index_t b, index_t& lo, index_t& hi) {
        lo = next[b].load(std::memory_order_relaxed);
        do {
            if (lo >= panels) return false;
            const index_t chunk = std::max<index_t>(kMinClaim, (panels - lo + 2 * tasks - 1) / (2 * tasks));
            hi = std::min(panels, lo + chunk);
        } while (!next[b].compare_exchange_weak(lo, hi, std::memory_order_relaxed));
        return true;
    };
    std::atomic<bool> failed{false};  // a task threw (out of memory): the others stop waiting
    parallel_for(tasks, [&](int t) {
        for (index_t b = 0; b < blocks && !failed.load(std::memory_order_relaxed); ++b) {
            const index_t jc = b / kblocks * kNC, nc = std::min(kNC, N - jc), pb = b % kblocks;
            const T* packed_b = nullptr;
            const auto rows = [&](index_t lo, index_t hi) {
                try {
                    if (!packed_b) packed_b = pack_b_block(g, pb, jc, nc);
                    if (pb > 0)
                        for (index_t i = lo; i < hi; ++i)
                            for (int spins = 0; !done[(b - 1) * panels + i].load(std::memory_order_acquire); ++spins) {
                                if (failed.load(std::memory_order_relaxed)) return;
                                if (spins >= 1024) std::this_thread::yield();
                            }
                    gemm_block(g, lo * kMR, std::min(M, hi * kMR), jc, jc + nc,
                               static_cast<const PackedA<T>*>(nullptr), packed_b, pb);
                } catch (...) {
                    failed.store(true);
                    throw;
                }
                for (index_t i = lo; i < hi; ++i) done[b * panels + i].store(true, std::memory_order_release);
            };
            if (fixed > 0) rows(fixed * t, fixed * (t + 1));
            for (index_t lo, hi; claim(b, lo, hi);) rows(lo, hi);
        }
    });
}

// The naive reference: the same chains, one element at a time.
template <typename T>
void gemm_naive(T* C, index_t ldc, const T* A, index_t ars, index_t acs, const T* B, index_t brs, index_t bcs,
                index_t M, index_t N, index_t K, const T* bias, Act act) {
    for (index_t m = 0; m < M; ++m) {
        for (index_t n = 0; n < N; ++n) {
            T acc = 0;
            for (index_t p = 0; p < K; ++p) acc = mul_add(A[m * ars + p * acs], B[p * brs + n * bcs], acc);
            C[m * ldc + n] = bias ? acc + bias[n] : acc;
        }
        act_forward_row(act, C + m * ldc, N);
    }
}

FASTMLP_ISA_END
