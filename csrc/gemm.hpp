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
#include <cmath>
#include <cstring>
#include <utility>
#include <vector>
#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

#include "activations.hpp"
#include "common.hpp"
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
#if FASTMLP_VEC_BYTES == 64
    return (Simd<float>::vec)_mm512_fmadd_ps((__m512)a, (__m512)b, (__m512)c);
#elif FASTMLP_VEC_BYTES == 32
    return (Simd<float>::vec)_mm256_fmadd_ps((__m256)a, (__m256)b, (__m256)c);
#else
    return a * b + c;
#endif
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

// Register tile: kMR rows by kNV vectors (6 x 16 floats on AVX2: 12 accumulators, as BLIS's
// haswell kernel). Block sizes, measured on Zen 4 (1 MB L2) with 2 threads: K in equal blocks of at
// most 512, 96-row blocks of A (one in L2 while B's micro-panels stream past it), and up to 3072
// columns of B per packed block. FASTMLP_GEMM_KC/MC/NC override them for such experiments; the
// results do not depend on them.
constexpr int kMR = 6;
constexpr int kNV = 2;
template <typename T>
constexpr index_t gemm_nr() {
    return kNV * Simd<T>::width;
}
#ifndef FASTMLP_GEMM_KC
#define FASTMLP_GEMM_KC 512
#define FASTMLP_GEMM_MC 96
#define FASTMLP_GEMM_NC 3072
#endif
constexpr index_t kKC = FASTMLP_GEMM_KC;
constexpr index_t kMC = FASTMLP_GEMM_MC;
constexpr index_t kNC = FASTMLP_GEMM_NC;
// Below this many multiply-adds a product runs in the calling thread (a pool wake-up costs more).
constexpr index_t kParallelMacs = index_t(1) << 18;
// The largest A (M * K elements, 4 MB of float) packed once and shared by the threads.
constexpr index_t kSharedPackA = index_t(1) << 20;

// Pack A(m0 + i, p0 + p) for i < mc, p < kc into micro-panels of kMR rows: panel r holds
// (kc, kMR) p-major; rows past mc are zero. Dst (round_up(mc, kMR) * kc) is overwritten.
template <typename T>
inline void pack_a(T* dst, const T* A, index_t ars, index_t acs, index_t mc, index_t kc) {
    for (index_t i0 = 0; i0 < mc; i0 += kMR) {
        const index_t rows = std::min<index_t>(kMR, mc - i0);
        T* d = dst + i0 * kc;
        const T* a = A + i0 * ars;
        if (rows == kMR && acs == 1) {
            for (index_t p = 0; p < kc; ++p)
                for (int r = 0; r < kMR; ++r) d[p * kMR + r] = a[r * ars + p];
        } else {
            for (index_t p = 0; p < kc; ++p) {
                for (index_t r = 0; r < rows; ++r) d[p * kMR + r] = a[r * ars + p * acs];
                for (index_t r = rows; r < kMR; ++r) d[p * kMR + r] = T(0);
            }
        }
    }
}

// Pack B(p, n0 + j) for p < kc, j < nc into micro-panels of NR columns: panel j holds (kc, NR)
// p-major; columns past nc are zero. Dst (kc * round_up(nc, NR)) is overwritten. A transposed B
// (bcs != 1) is read along its contiguous p.
template <typename T>
inline void pack_b(T* dst, const T* B, index_t brs, index_t bcs, index_t kc, index_t nc) {
    constexpr index_t NR = gemm_nr<T>();
    for (index_t j0 = 0; j0 < nc; j0 += NR) {
        const index_t cols = std::min<index_t>(NR, nc - j0);
        T* d = dst + j0 * kc;
        const T* b = B + j0 * bcs;
        if (bcs == 1 && cols == NR) {  // whole panels: NR contiguous values per row, in whole vectors
            using vec = typename Simd<T>::vec;
            constexpr index_t W = Simd<T>::width;
            for (index_t p = 0; p < kc; ++p)
                for (index_t v = 0; v < NR; v += W) {
                    vec x;
                    std::memcpy(&x, b + p * brs + v, sizeof(vec));
                    std::memcpy(d + p * NR + v, &x, sizeof(vec));
                }
        } else if (bcs == 1) {
            for (index_t p = 0; p < kc; ++p) {
                const T* row = b + p * brs;
                for (index_t j = 0; j < cols; ++j) d[p * NR + j] = row[j];
                for (index_t j = cols; j < NR; ++j) d[p * NR + j] = T(0);
            }
        } else {
            // Column-major B (a transposed operand): read along each column's contiguous p, in
            // blocks of 16 rows of the panel so that the stores stay within a few cache lines.
            for (index_t p0 = 0; p0 < kc; p0 += 16) {
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

// Microkernel: the (kMR, NR) tile C := (accumulate ? C : 0) + Ap Bp, one mul_add chain per element
// over p ascending, then + bias (NR entries) when bias is not null. Ap: (kc, kMR) and Bp: (kc, NR)
// packed micro-panels. C has row stride ldc and all kMR x NR entries are read/written.
// Unpacked A (gemm_skinny): row r, column p of the tile's A at Ap[r * ars + p], ars given.
template <typename T, bool kPackedA = true>
inline void micro_kernel(index_t kc, const T* __restrict Ap, const T* __restrict Bp, T* C, index_t ldc,
                         bool accumulate, const T* bias, index_t ars = 0) {
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
    // Stores go through copies: taking the accumulators' own address would keep them in memory
    // (spilled) through the whole p loop.
    for (int r = 0; r < kMR; ++r)
        for (int v = 0; v < kNV; ++v) {
            const vec out = acc[r][v];
            std::memcpy(C + r * ldc + v * W, &out, sizeof(out));
        }
}

// The packing buffers of the calling thread, grown as needed and kept for the next product.
template <typename T>
inline T* gemm_buffer(int which, index_t n) {
    thread_local std::vector<T> buffers[4];  // packed A, packed B, a transposed product, shared packed A
    std::vector<T>& b = buffers[which];
    if (static_cast<index_t>(b.size()) < n) b.resize(n);
    return b.data();
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

// The rows [m0, m1) and columns [n0, n1) of the product, in the calling thread; A from `shared`
// when given (then m0 = 0), packed here otherwise.
template <typename T>
void gemm_block(const GemmArgs<T>& g, index_t m0, index_t m1, index_t n0, index_t n1,
                const PackedA<T>* shared = nullptr) {
    constexpr index_t NR = gemm_nr<T>();
    const auto [kblocks, kstep] = k_blocking(g.K);
    for (index_t jc = n0; jc < n1; jc += kNC) {
        const index_t nc = std::min(kNC, n1 - jc);
        for (index_t pb = 0; pb < kblocks; ++pb) {
            const index_t pc = pb * kstep;
            const index_t kc = std::min(kstep, g.K - pc);
            const bool first = pb == 0, last = pb + 1 == kblocks;
            T* Bp = gemm_buffer<T>(1, kstep * round_up(nc, NR));
            pack_b(Bp, g.B + pc * g.brs + jc * g.bcs, g.brs, g.bcs, kc, nc);
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
                for (index_t jr = 0; jr < nc; jr += NR) {
                    const index_t cols = std::min(NR, nc - jr);
                    const T* bias = last && g.bias ? g.bias + jc + jr : nullptr;
                    for (index_t ir = 0; ir < mc; ir += kMR) {
                        const index_t rows = std::min<index_t>(kMR, mc - ir);
                        T* c = g.C + (ic + ir) * g.ldc + jc + jr;
                        if (ir + kMR < mc)  // the next tile's rows of C, while this one computes
                            for (int r = 0; r < kMR; ++r) __builtin_prefetch(c + (kMR + r) * g.ldc, 1);
                        if (rows == kMR && cols == NR) {
                            micro_kernel(kc, Ap + ir * kc, Bp + jr * kc, c, g.ldc, !first, bias);
                        } else {  // an edge tile goes through a full-size tile on the stack
                            T tile[kMR * NR] = {};
                            if (!first)
                                for (index_t r = 0; r < rows; ++r) std::copy(c + r * g.ldc, c + r * g.ldc + cols, tile + r * NR);
                            micro_kernel(kc, Ap + ir * kc, Bp + jr * kc, tile, NR, !first, bias);
                            for (index_t r = 0; r < rows; ++r) std::copy(tile + r * NR, tile + r * NR + cols, c + r * g.ldc);
                        }
                        if (last && g.act != Act::Linear)
                            for (index_t r = 0; r < rows; ++r) act_forward_row(g.act, c + r * g.ldc, cols);
                    }
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
            const vec out = acc[r];
            if (cols == W) {
                std::memcpy(c, &out, sizeof(vec));
            } else {
                T lanes[W];
                std::memcpy(lanes, &out, sizeof(vec));
                copy_head<T, W>(c, lanes, cols);
            }
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

// Few columns (N < NR: an output layer of 10 classes), many rows, A row-major: B packed into one
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
    const int tasks = static_cast<int>(std::min<index_t>(num_threads(), tiles));
    if (tasks <= 1 || g.M * g.N * g.K < kParallelMacs) {
        rows(0, tiles);
        return;
    }
    parallel_for(tasks, [&](int t) { rows(tiles * t / tasks, tiles * (t + 1) / tasks); });
}

template <typename T>
void gemm(T* C, index_t ldc, const T* A, index_t ars, index_t acs, const T* B, index_t brs, index_t bcs,
          index_t M, index_t N, index_t K, const T* bias, Act act) {
    const GemmArgs<T> g{C, ldc, A, ars, acs, B, brs, bcs, M, N, K, bias, act};
    constexpr index_t NR = gemm_nr<T>();
    if (K <= 16 && N <= NR) {
        gemm_direct(g);
        return;
    }
    if (N < NR && M >= 4 * NR && acs == 1 && K >= 1) {
        gemm_skinny(g);
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
        return;
    }
    const int threads = num_threads();
    if (threads == 1 || M * N * std::max<index_t>(K, 1) < kParallelMacs) {
        gemm_block(g, 0, M, 0, N);
        return;
    }
    // Split the output into one strip per thread: columns (in whole NR panels) when there are
    // enough of them, rows (in whole kMR panels) otherwise.
    const index_t col_panels = (N + NR - 1) / NR, row_panels = (M + kMR - 1) / kMR;
    const bool by_cols = col_panels >= 4 * threads || col_panels >= row_panels;
    const index_t panels = by_cols ? col_panels : row_panels;
    const int tasks = static_cast<int>(std::min<index_t>(threads, panels));
    // Column strips all read the whole of A: unless it is large, pack it once, the blocks split
    // over the threads, instead of once per thread (at 512^3 that packing is 5 % of the product).
    PackedA<T> shared;
    if (by_cols && tasks > 1 && M * K <= kSharedPackA) {
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
    parallel_for(tasks, [&](int t) {
        const index_t lo = panels * t / tasks, hi = panels * (t + 1) / tasks;
        if (by_cols)
            gemm_block(g, 0, M, lo * NR, std::min(N, hi * NR), shared.data ? &shared : nullptr);
        else
            gemm_block(g, lo * kMR, std::min(M, hi * kMR), 0, N);
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
