// Feature-major ("narrow") kernels for tiny networks, such as the seed's 2-4-4-2.
//
// When every layer is a handful of units wide, row-major (B, N) blocks make every loop a few
// elements long and the time goes to loop overhead. Here the batch is the vector dimension:
// a block is (F, L), feature-major, one row per feature, L = the batch rounded up to the vector
// width (narrow_lanes). Every loop then runs over L lanes and vectorizes whatever the layer widths.
//
// Padding lanes (>= the batch size B) hold zero inputs and zero gradients, so they add nothing to
// any sum. Every forward value, loss term, metric and input gradient is computed with exactly the
// operations of the row-major kernels (dense.hpp, losses.hpp), so they are the same bits. The
// batch reductions are the exception: dW and db sum lanes in kLaneBlock-wide partial sums
// combined in a fixed order (lane_dots), and the batch's loss sums its lanes in eight interleaved
// partial sums (lanes_total); both are deterministic and the same for every vector width and
// thread count, but not the row-major kernels' order.
//
// Training takes four shortcuts, each with a twin that gives the same bits (Engine's
// set_fused_kernels switches to the twins; tests/test_engine.py checks them against each other):
// the output stage runs in one pass (narrow_output_fused), batches are gathered from the epoch's
// rows packed as records and put in the epoch's order (pack_records, swap_records, gather_lanes),
// on AVX2 the lane sums' trees are reduced four outputs at a time (lane_tree4), and networks of
// the seed's shape run their whole step in one kernel with every width fixed at compile time
// (narrow_net3_fused).
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>
#include <utility>
#include <vector>

#include "activations.hpp"
#include "common.hpp"
#include "dense.hpp"
#include "losses.hpp"
#include "shuffle.hpp"

FASTMLP_ISA_BEGIN

// The lane sums' block: 16 partial sums (lane_dots), 16 floats being 4 SSE, 2 AVX2 or 1 AVX-512
// vector.
constexpr index_t kLaneBlock = 16;

// The lanes of a batch of B: B rounded up to the vector width (no more padding lanes than one
// vector's, which every per-lane loop would compute for nothing).
template <typename T>
inline index_t narrow_lanes(index_t B) {
    return round_up(B, Simd<T>::width);
}

template <typename T>
using LaneVec = typename Simd<T>::vec;

template <typename T>
inline LaneVec<T> load_lanes(const T* p) {
    LaneVec<T> v;
    std::memcpy(&v, p, sizeof(v));
    return v;
}

template <typename T>
inline void store_lanes(T* p, LaneVec<T> v) {
    std::memcpy(p, &v, sizeof(v));
}

// Calls f(std::integral_constant<int, G>{}) with 1 <= g <= kMaxGroup fixed at compile time: the
// register-blocked kernels below keep G rows' accumulators in registers.
constexpr index_t kMaxGroup = 8;
template <typename F>
inline void with_group(index_t g, F&& f) {
    switch (g) {
        case 1: f(std::integral_constant<int, 1>{}); break;
        case 2: f(std::integral_constant<int, 2>{}); break;
        case 3: f(std::integral_constant<int, 3>{}); break;
        case 4: f(std::integral_constant<int, 4>{}); break;
        case 5: f(std::integral_constant<int, 5>{}); break;
        case 6: f(std::integral_constant<int, 6>{}); break;
        case 7: f(std::integral_constant<int, 7>{}); break;
        default: f(std::integral_constant<int, 8>{}); break;
    }
}

// f(std::integral_constant<int, i>{}) for i = 0 .. N-1 in order.
template <typename F, int... I>
inline void static_for_impl(F& f, std::integer_sequence<int, I...>) {
    (f(std::integral_constant<int, I>{}), ...);
}
template <int N, typename F>
inline void static_for(F&& f) {
    static_for_impl(f, std::make_integer_sequence<int, N>{});
}

// The register-blocked feature-major product, G output rows at a time:
//   O[r] (L,) := fin_r( chain over p < P of mul_add(In[p] (L,), C[p][r], .) from 0 ),  r < G,
// with In (P, L) row-major, C[p][r] = coef[p * cs + r * rs] broadcast once, and fin_r the
// epilogue: + bias[r] (bias not null), then relu's max(., 0) when relu is set; or, when mask is
// not null (then without bias and relu), relu's derivative through mask (the previous layer's
// output: O := mask > 0 ? O : 0).
// Every element is the chain of dense_forward_naive and the GEMM (mul_add from 0 over p ascending,
// then + bias, then the activation), so the same bits.
// The epilogue's three choices are template parameters (kBias, kRelu, kMask), so that the lane
// loop tests none of them; lanes_product picks the instance.
template <int G, bool kBias, bool kRelu, bool kMask, typename T>
inline void lanes_product_fixed(T* O, index_t ors, const T* In, const T* coef, index_t cs, index_t rs, index_t P,
                                index_t L, const T* bias, const T* mask) {
    using vec = LaneVec<T>;
    constexpr index_t W = Simd<T>::width;
    constexpr index_t kMaxP = 16;  // the narrow path's widest layer (Engine::kNarrowWidth)
    require(P <= kMaxP, "lanes_product: at most 16 input rows (the narrow path's widest layer).");
    vec cv[kMaxP * G];
    for (index_t p = 0; p < P; ++p)
        for (int r = 0; r < G; ++r) cv[p * G + r] = splat(coef[p * cs + r * rs]);
    vec bv[G];
    for (int r = 0; r < G; ++r) bv[r] = kBias ? splat(bias[r]) : vec{};
    // The broadcast coefficients are read from memory by the multiply-adds (one instruction each):
    // hiding the array behind an opaque pointer stops GCC from unrolling P and copying it to registers.
    const vec* c = cv;
    asm("" : "+r"(c));
    const vec zero{};
    for (index_t l = 0; l < L; l += W) {
        vec acc[G];
        const vec x0 = load_lanes(In + l);
        for (int r = 0; r < G; ++r) acc[r] = mul_add(x0, c[r], zero);
        for (index_t p = 1; p < P; ++p) {
            const vec x = load_lanes(In + p * L + l);
            for (int r = 0; r < G; ++r) acc[r] = mul_add(x, c[p * G + r], acc[r]);
        }
        for (int r = 0; r < G; ++r) {
            vec o = acc[r];
            if constexpr (kBias) o = o + bv[r];
            if constexpr (kRelu) o = max_sel(o, zero);  // o > 0 ? o : 0
            if constexpr (kMask) o = load_lanes(mask + r * L + l) > T(0) ? o : T(0);
            store_lanes(O + r * ors + l, o);
        }
    }
}

template <int G, typename T>
inline void lanes_product(T* O, index_t ors, const T* In, const T* coef, index_t cs, index_t rs, index_t P,
                          index_t L, const T* bias, bool relu, const T* mask) {
    if (mask) {  // the backward's dX: a mask, no bias and no relu
        require(!bias && !relu, "lanes_product: a mask goes without bias and relu.");
        return lanes_product_fixed<G, false, false, true>(O, ors, In, coef, cs, rs, P, L, bias, mask);
    }
    if (bias && relu) return lanes_product_fixed<G, true, true, false>(O, ors, In, coef, cs, rs, P, L, bias, mask);
    if (bias) return lanes_product_fixed<G, true, false, false>(O, ors, In, coef, cs, rs, P, L, bias, mask);
    if (relu) return lanes_product_fixed<G, false, true, false>(O, ors, In, coef, cs, rs, P, L, bias, mask);
    lanes_product_fixed<G, false, false, false>(O, ors, In, coef, cs, rs, P, L, bias, mask);
}

// The fixed tree over kLaneBlock partial sums held in kLaneBlock / width vectors: on vectors of
// halves, p[j] += p[j+8]; p[j] += p[j+4]; p[j] += p[j+2]; p[0] + p[1].
template <typename T>
inline T lane_tree(const typename Simd<T>::vec* acc) {
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

#if FASTMLP_VEC_BYTES == 32
// lane_tree of four float outputs at once on AVX2, given s[g] = p[j] + p[j+8] (the first addition
// of each tree): the same additions of the same pairs, the outputs side by side in the lanes. The
// sums come by value: taking the accumulators' address would keep them in memory in the loop.
template <int G>
inline void lane_tree4(float* out, __m256 s0, __m256 s1, __m256 s2, __m256 s3) {
    // p[j] + p[j+4]: [a | b] and [c | d], four sums each.
    const __m256 ab = _mm256_add_ps(_mm256_permute2f128_ps(s0, s1, 0x20), _mm256_permute2f128_ps(s0, s1, 0x31));
    const __m256 cd = _mm256_add_ps(_mm256_permute2f128_ps(s2, s3, 0x20), _mm256_permute2f128_ps(s2, s3, 0x31));
    // p[j] + p[j+2]: [a0 a1 c0 c1 | b0 b1 d0 d1]; then p[0] + p[1]: [a c a c | b d b d].
    const __m256 t = _mm256_add_ps(_mm256_shuffle_ps(ab, cd, 0x44), _mm256_shuffle_ps(ab, cd, 0xEE));
    const __m256 u = _mm256_add_ps(_mm256_shuffle_ps(t, t, 0x88), _mm256_shuffle_ps(t, t, 0xDD));
    out[0] = u[0];
    if constexpr (G > 1) out[1] = u[4];
    if constexpr (G > 2) out[2] = u[1];
    if constexpr (G > 3) out[3] = u[5];
}
#endif

// out[g] := sum over lanes l < L of x[l] * Y[g][l] (x null: of Y[g][l]) for g < G, Y (G, L) with
// row stride L, L a multiple of the vector width. Order, the same for every vector width: 16
// partial sums p[i] over lanes l = i (mod 16) in ascending blocks of 16 (mul_add chains when x is
// given), then lane_tree. The last block may end at L, short of 16 lanes: the lanes it lacks are
// those a wider vector pads with zero gradients, whose terms (+-0) leave a partial sum as it is
// (a sum that starts at +0 is never -0), so every width gives the same bits. G rows at a time
// share the loads of x. side_by_side: on AVX2, the G trees reduced together (lane_tree4); false
// takes lane_tree, for the tests.
template <int G, typename T>
inline void lane_dots(T* out, const T* x, const T* Y, index_t L, bool side_by_side = true) {
    (void)side_by_side;  // only the AVX2 variant has lane_tree4
    using vec = typename Simd<T>::vec;
    constexpr index_t W = Simd<T>::width;
    constexpr index_t NA = kLaneBlock / W;
    vec acc[G][NA] = {};
    // The loop twice, with and without x, so that neither tests x.
    auto sums = [&](auto with_x) {
        auto add = [&](index_t b, index_t v) {
            vec xv{};
            if constexpr (decltype(with_x)::value) std::memcpy(&xv, x + b + v * W, sizeof(vec));
            for (int g = 0; g < G; ++g) {
                vec yv;
                std::memcpy(&yv, Y + g * L + b + v * W, sizeof(vec));
                acc[g][v] = decltype(with_x)::value ? mul_add(xv, yv, acc[g][v]) : acc[g][v] + yv;
            }
        };
        const index_t whole = L / kLaneBlock * kLaneBlock;
        for (index_t b = 0; b < whole; b += kLaneBlock)
            for (index_t v = 0; v < NA; ++v) add(b, v);
        for (index_t v = 0; v < NA; ++v)  // the short last block
            if (whole + v * W < L) add(whole, v);
    };
    if (x) {
        sums(std::true_type{});
    } else {
        sums(std::false_type{});
    }
#if FASTMLP_VEC_BYTES == 32
    if constexpr (std::is_same_v<T, float> && G <= 4) if (side_by_side) {
        __m256 h[4];
        for (int g = 0; g < 4; ++g) h[g] = g < G ? (__m256)(acc[g][0] + acc[g][1]) : _mm256_setzero_ps();
        lane_tree4<G>(out, h[0], h[1], h[2], h[3]);
        return;
    }
#endif
    for (int g = 0; g < G; ++g) out[g] = lane_tree<T>(acc[g]);
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

// Softmax over the F rows of each lane of A (F, L), in place, one lane vector at a time: per lane,
// m = max over rows (from -inf, std::max's order), e_f = exp(a_f - m), s = 0 + e_0 + e_1 + ...,
// a_f = e_f * (1 / s): the operations of softmax_row.
template <typename T>
void narrow_softmax(T* A, index_t F, index_t L) {
    using vec = LaneVec<T>;
    constexpr index_t W = Simd<T>::width;
    const T neg_inf = -std::numeric_limits<T>::infinity();
    for (index_t l = 0; l < L; l += W) {
        vec m = splat(neg_inf);
        for (index_t f = 0; f < F; ++f) {
            const vec a = load_lanes(A + f * L + l);
            m = max_sel(a, m);  // std::max(m, a): m < a ? a : m
        }
        vec s{};
        for (index_t f = 0; f < F; ++f) {
            const vec e = vexp(load_lanes(A + f * L + l) - m);
            store_lanes(A + f * L + l, e);
            s = s + e;
        }
        const vec inv = T(1) / s;
        for (index_t f = 0; f < F; ++f) store_lanes(A + f * L + l, load_lanes(A + f * L + l) * inv);
    }
}

// Dense forward, feature-major:  Z (N, L) := act(W^T X + b)  for X (K, L), W (K, N), b (N,) or null.
// Per element: the chain acc = mul_add(x_k, w_k, acc) from 0 over k ascending, then + b, then act,
// as dense_forward_naive and the GEMM. Rows go G <= kMaxGroup at a time through lanes_product,
// which applies the bias and relu in registers; another elementwise activation is one pass after.
template <typename T>
void narrow_dense_forward(T* Z, const T* X, const T* W, const T* b, index_t L, index_t K, index_t N, Act act) {
    const Act fused = act == Act::Softmax ? Act::Linear : act;
    const bool relu = fused == Act::Relu;
    for (index_t n0 = 0; n0 < N; n0 += kMaxGroup) {
        const index_t g = std::min(kMaxGroup, N - n0);
        with_group(g, [&](auto G) {
            lanes_product<decltype(G)::value>(Z + n0 * L, L, X, W + n0, N, 1, K, L, b ? b + n0 : nullptr, relu,
                                              static_cast<const T*>(nullptr));
        });
    }
    if (fused != Act::Linear && !relu)
        with_act(fused, [&](auto A) { act_values<decltype(A)::value>(Z, Z, N * L); });
    if (act == Act::Softmax) narrow_softmax(Z, N, L);
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
                           Act act_prev, const T* A_prev, T* tmp, bool side_by_side = true) {
    require(!needs_preactivation(act_prev), "narrow_dense_backward: gelu and swish need the pre-activation; pass "
                                            "Linear and apply act_backward_row_z.");
    // dW row k and db: lane sums, kLaneGroup columns at a time (lane_dots; y null for db).
    constexpr index_t kLaneGroup = 4;
    for (index_t k = 0; k <= K; ++k) {
        if (k == K && !db) break;
        const T* x = k < K ? X + k * L : nullptr;
        T* out = k < K ? dW + k * N : db;
        for (index_t n0 = 0; n0 < N; n0 += kLaneGroup)
            with_group(std::min(kLaneGroup, N - n0),
                       [&](auto G) { lane_dots<decltype(G)::value>(out + n0, x, dZ + n0 * L, L, side_by_side); });
    }
    if (!dX) return;
    // dX rows k0.. k0+G: the chains over n of dZ[n] W[k][n]; relu's derivative in registers.
    const Act fused = act_prev == Act::Softmax ? Act::Linear : act_prev;
    const bool relu = fused == Act::Relu;
    for (index_t k0 = 0; k0 < K; k0 += kMaxGroup) {
        const index_t g = std::min(kMaxGroup, K - k0);
        with_group(g, [&](auto G) {
            lanes_product<decltype(G)::value>(dX + k0 * L, L, dZ, W + k0 * N, 1, N, N, L, static_cast<const T*>(nullptr),
                                              false, relu ? A_prev + k0 * L : nullptr);
        });
    }
    if (fused != Act::Linear && !relu)
        with_act(fused, [&](auto A) {
            for (index_t i = 0; i < K * L; ++i) dX[i] = act_grad<decltype(A)::value>(A_prev[i], dX[i]);
        });
    if (act_prev == Act::Softmax) narrow_softmax_backward(A_prev, dX, K, L, tmp);
}

// sum over l < B of s[l] (times w[l] when w is not null), in double: eight interleaved partial
// sums (lanes l = j mod 8, ascending) combined by a fixed tree, so that the sum is not one serial
// chain of B dependent additions. The batch's loss; the row-major path sums its rows in order.
template <typename T>
inline double lanes_total(const T* s, const T* w, index_t B) {
    // The eight partial sums in two vectors of four doubles (the same additions, lane by lane).
    typedef double d4 __attribute__((vector_size(4 * sizeof(double))));
    typedef T t4 __attribute__((vector_size(4 * sizeof(T))));
    d4 lo{}, hi{};
    index_t l = 0;
    for (; l + 8 <= B; l += 8) {
        t4 s0, s1;
        std::memcpy(&s0, s + l, sizeof(t4));
        std::memcpy(&s1, s + l + 4, sizeof(t4));
        d4 v0 = __builtin_convertvector(s0, d4), v1 = __builtin_convertvector(s1, d4);
        if (w) {
            t4 w0, w1;
            std::memcpy(&w0, w + l, sizeof(t4));
            std::memcpy(&w1, w + l + 4, sizeof(t4));
            v0 = __builtin_convertvector(w0, d4) * v0;
            v1 = __builtin_convertvector(w1, d4) * v1;
        }
        lo += v0;
        hi += v1;
    }
    double acc[8];
    std::memcpy(acc, &lo, sizeof(lo));
    std::memcpy(acc + 4, &hi, sizeof(hi));
    for (int j = 0; l + j < B; ++j) acc[j] += weighted(double(s[l + j]), w, l + j);
    return ((acc[0] + acc[4]) + (acc[2] + acc[6])) + ((acc[1] + acc[5]) + (acc[3] + acc[7]));
}

// Loss of the B real lanes of P (C, L) against Y (yc, L) (yc = 1: class ids), summed over lanes by
// lanes_total; with dZ (C, L) not null, also the output layer's logit gradient, zero on the
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
    using vec = LaneVec<T>;
    constexpr index_t VW = Simd<T>::width;
    const bool sparse = kind == LossKind::SparseCategoricalCrossentropy;
    const bool binary = kind == LossKind::BinaryCrossentropy && all_binary(Y, C * L);
    // Per-lane loss into s, one lane vector at a time; the sums over classes in ascending order
    // from 0, as rows_sum and the row-major kernels.
    if (kind == LossKind::BinaryCrossentropy || kind == LossKind::MeanSquaredError) {
        const T sign = kind == LossKind::BinaryCrossentropy ? T(-1) : T(1);
        for (index_t l = 0; l < L; l += VW) {
            vec acc{};
            for (index_t c = 0; c < C; ++c) {
                const vec p = load_lanes(P + c * L + l), y = load_lanes(Y + c * L + l);
                vec term;
                if (kind == LossKind::MeanSquaredError) {
                    term = (p - y) * (p - y);
                } else {
                    term = binary ? bce_term_binary(p, y) : bce_term(p, y);
                }
                acc = acc + term;
            }
            store_lanes(s + l, sign * acc / T(C));
        }
    } else {
        rows_sum(u, P, static_cast<const T*>(nullptr), C, L);  // u = sum over classes of p
        if (sparse) {
            for (index_t l = 0; l < L; ++l) {
                const index_t label = static_cast<index_t>(Y[l]);
                s[l] = -vlog(clip_prob(P[label * L + l] / u[l]));
            }
        } else {
            for (index_t l = 0; l < L; l += VW) {
                const vec uv = load_lanes(u + l);
                vec acc{};
                for (index_t c = 0; c < C; ++c)
                    acc = acc + load_lanes(Y + c * L + l) * vlog(clip_prob(load_lanes(P + c * L + l) / uv));
                store_lanes(s + l, -acc);
            }
        }
    }
    const double total = lanes_total(s, w, B);
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
            for (index_t k = 0; k < n; k += VW) {
                const vec p = load_lanes(P + k), y = load_lanes(Y + k);
                store_lanes(dZ + k, binary ? bce_grad_binary(p, y, sc) : bce_grad(p, y, sc));
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

// The training rows as records, for gather_lanes: record i of R (n, RW) := [X row (K), Y row (yc),
// W value (when W is not null), zeros up to RW] of row i, RW a multiple of 4. One record per
// sample, so that a batch's gather reads each of its samples with RW / 4 vector loads; put in the
// epoch's order by swap_records, so that a batch is consecutive records.
// Records of 4 values with K and YC fixed (the seed's 2 + 2): each built in a vector, one store.
template <typename T, int K, int YC, bool HW>
void pack_records4(T* R, const T* X, const T* Y, const T* W, index_t n) {
    static_assert(K + YC + (HW ? 1 : 0) <= 4, "a record of 4 values");
    typedef T v4 __attribute__((vector_size(4 * sizeof(T))));
    index_t i = 0;
    if constexpr (std::is_same_v<T, float> && K == 2 && YC == 2 && !HW) {
        // Four rows at a time, each row's pair of floats moved as one 64-bit unit: [x | y] pairs
        // interleaved by two unpacks and two cross-half permutes.
        typedef double d4 __attribute__((vector_size(32)));
        typedef std::int64_t m4 __attribute__((vector_size(32)));
        for (; i + 4 <= n; i += 4) {
            d4 x, y;
            std::memcpy(&x, X + i * 2, sizeof(x));
            std::memcpy(&y, Y + i * 2, sizeof(y));
            const d4 lo = __builtin_shuffle(x, y, m4{0, 4, 1, 5}), hi = __builtin_shuffle(x, y, m4{2, 6, 3, 7});
            std::memcpy(R + 4 * i, &lo, sizeof(lo));
            std::memcpy(R + 4 * i + 8, &hi, sizeof(hi));
        }
    }
    for (; i < n; ++i) {
        v4 r{};
        for (int k = 0; k < K; ++k) r[k] = X[i * K + k];
        for (int k = 0; k < YC; ++k) r[K + k] = Y[i * YC + k];
        if constexpr (HW) r[K + YC] = W[i];
        std::memcpy(R + 4 * i, &r, sizeof(r));
    }
}

template <typename T>
void pack_records(T* R, index_t RW, const T* X, index_t K, const T* Y, index_t yc, const T* W, index_t n) {
    const index_t used = K + yc + (W ? 1 : 0);
    require(RW % 4 == 0 && RW >= used, "pack_records: the record width must be a multiple of 4 that holds a row.");
    if (RW == 4) {
#define FASTMLP_RECORDS4(k, y)                                                             \
    if (K == k && yc == y) {                                                               \
        if (W) {                                                                           \
            if constexpr (k + y < 4) return pack_records4<T, k, y, true>(R, X, Y, W, n);   \
        } else {                                                                           \
            return pack_records4<T, k, y, false>(R, X, Y, W, n);                           \
        }                                                                                  \
    }
        FASTMLP_RECORDS4(1, 1) FASTMLP_RECORDS4(1, 2) FASTMLP_RECORDS4(2, 1) FASTMLP_RECORDS4(2, 2)
        FASTMLP_RECORDS4(1, 3) FASTMLP_RECORDS4(3, 1)
#undef FASTMLP_RECORDS4
    }
    // Column by column, unrolled: a loop over a row's few values (or a memcpy) would cost more
    // than the values.
    auto column = [&](index_t k, const T* src, index_t stride) {
        T* out = R + k;
#pragma GCC unroll 8
        for (index_t i = 0; i < n; ++i) out[i * RW] = src[i * stride];
    };
    for (index_t k = 0; k < K; ++k) column(k, X + k, K);
    for (index_t k = 0; k < yc; ++k) column(K + k, Y + k, yc);
    if (W) column(K + yc, W, 1);
    const T zero = 0;
    for (index_t k = used; k < RW; ++k) column(k, &zero, 0);
}

// The epoch's swaps (shuffle.hpp apply_swaps) on the n records of R (n, RW): record k then holds
// the row that is k-th in the epoch's order.
template <typename T>
void swap_records(T* R, index_t RW, const std::vector<std::uint32_t>& js) {
    typedef T v4 __attribute__((vector_size(4 * sizeof(T))));
    if (RW == 4) {
        apply_swaps(js, [R](index_t i, index_t j) {
            v4 a, b;
            std::memcpy(&a, R + 4 * i, sizeof(a));
            std::memcpy(&b, R + 4 * j, sizeof(b));
            std::memcpy(R + 4 * i, &b, sizeof(b));
            std::memcpy(R + 4 * j, &a, sizeof(a));
        });
        return;
    }
    apply_swaps(js, [R, RW](index_t i, index_t j) { std::swap_ranges(R + i * RW, R + i * RW + RW, R + j * RW); });
}

// A batch's B consecutive records R (B, RW) into lanes: Out (RW, L), Out[k][r] := R[r][k], the
// padding lanes r >= B zero. Four records at a time: four vector loads per four columns, transposed
// in registers. Copies only, so the same bits as a gather from X and Y. RWc: RW when fixed at
// compile time (records of 4 values, the seed's), 0 when not.
template <int RWc, typename T>
void gather_records(T* Out, const T* R, index_t RW_, index_t B, index_t L) {
    const index_t RW = RWc ? RWc : RW_;
    auto record = [&](index_t r) { return R + r * RW; };
    typedef T v4 __attribute__((vector_size(4 * sizeof(T))));
    typedef std::conditional_t<sizeof(T) == 4, std::int32_t, std::int64_t> I;
    typedef I m4 __attribute__((vector_size(4 * sizeof(T))));
    index_t r = 0;
#if FASTMLP_VEC_BYTES == 32
    if constexpr (std::is_same_v<T, float> && RWc == 4) {
        // Eight records at a time on AVX2: records r and r + 4 in the two halves of one vector,
        // then the in-half 4 x 4 transpose gives each column's eight values in order.
        for (; r + 8 <= B; r += 8) {
            const float* p = R + r * 4;
            auto pair = [p](int i) { return _mm256_insertf128_ps(_mm256_castps128_ps256(_mm_loadu_ps(p + 4 * i)),
                                                                 _mm_loadu_ps(p + 4 * i + 16), 1); };
            const __m256 a = pair(0), b = pair(1), c = pair(2), d = pair(3);
            const __m256 t0 = _mm256_unpacklo_ps(a, b), t1 = _mm256_unpackhi_ps(a, b);
            const __m256 t2 = _mm256_unpacklo_ps(c, d), t3 = _mm256_unpackhi_ps(c, d);
            _mm256_storeu_ps(Out + r, _mm256_shuffle_ps(t0, t2, 0x44));
            _mm256_storeu_ps(Out + L + r, _mm256_shuffle_ps(t0, t2, 0xEE));
            _mm256_storeu_ps(Out + 2 * L + r, _mm256_shuffle_ps(t1, t3, 0x44));
            _mm256_storeu_ps(Out + 3 * L + r, _mm256_shuffle_ps(t1, t3, 0xEE));
        }
    }
#endif
    for (; r + 4 <= B; r += 4) {
        const T* a = record(r);
        const T* b = record(r + 1);
        const T* c = record(r + 2);
        const T* d = record(r + 3);
        for (index_t k = 0; k < RW; k += 4) {
            v4 va, vb, vc, vd;
            std::memcpy(&va, a + k, sizeof(v4));
            std::memcpy(&vb, b + k, sizeof(v4));
            std::memcpy(&vc, c + k, sizeof(v4));
            std::memcpy(&vd, d + k, sizeof(v4));
            const v4 t0 = __builtin_shuffle(va, vb, m4{0, 4, 1, 5}), t1 = __builtin_shuffle(va, vb, m4{2, 6, 3, 7});
            const v4 t2 = __builtin_shuffle(vc, vd, m4{0, 4, 1, 5}), t3 = __builtin_shuffle(vc, vd, m4{2, 6, 3, 7});
            const v4 col[4] = {__builtin_shuffle(t0, t2, m4{0, 1, 4, 5}), __builtin_shuffle(t0, t2, m4{2, 3, 6, 7}),
                               __builtin_shuffle(t1, t3, m4{0, 1, 4, 5}), __builtin_shuffle(t1, t3, m4{2, 3, 6, 7})};
            for (index_t j = 0; j < 4; ++j) std::memcpy(Out + (k + j) * L + r, &col[j], sizeof(v4));
        }
    }
    for (; r < B; ++r)
        for (index_t k = 0; k < RW; ++k) Out[k * L + r] = record(r)[k];
    for (index_t k = 0; k < RW; ++k) std::fill(Out + k * L + B, Out + k * L + L, T(0));
}

template <typename T>
void gather_lanes(T* Out, const T* R, index_t RW, index_t B, index_t L) {
    if (RW == 4) return gather_records<4>(Out, R, RW, B, L);
    gather_records<0>(Out, R, RW, B, L);
}

// Whether narrow_output_fused takes this loss and output activation.
inline bool narrow_output_fusable(LossKind kind, Act act) {
    if (kind == LossKind::BinaryCrossentropy || kind == LossKind::MeanSquaredError)
        return act == Act::Softmax || act == Act::Sigmoid || act == Act::Linear;
    return (kind == LossKind::CategoricalCrossentropy || kind == LossKind::SparseCategoricalCrossentropy) &&
           act == Act::Softmax;
}

// Whether each of the B real lanes of Y (C, L) is one-hot: every target 0 or 1, summing to 1.
template <typename T>
inline bool all_onehot_lanes(const T* Y, index_t C, index_t B, index_t L) {
    using vec = LaneVec<T>;
    using ivec = decltype(vec{} > vec{});
    constexpr index_t VW = Simd<T>::width;
    ivec bad{}, lane{};
    for (index_t i = 0; i < VW; ++i) lane[i] = static_cast<lane_t<ivec>>(i);
    for (index_t l = 0; l < B; l += VW) {
        vec sum{};
        for (index_t c = 0; c < C; ++c) {
            const vec y = load_lanes(Y + c * L + l);
            bad |= (y != T(0)) & (y != T(1));
            sum = sum + y;
        }
        bad |= (sum != T(1)) & (lane + static_cast<lane_t<ivec>>(l) < static_cast<lane_t<ivec>>(B));
    }
    for (index_t i = 0; i < VW; ++i)
        if (bad[i]) return false;
    return true;
}

// The output stage in one pass over the lanes, for the losses and activations of
// narrow_output_fusable: per lane vector, softmax (act Softmax: A (C, L) holds the logits and is
// overwritten by the probabilities; otherwise A is the output P), the loss term into s (L,), the
// logit gradient into dZ (C, L) (sample weights w (L,) or null applied, padding lanes >= B zero),
// each with exactly the operations of narrow_softmax and narrow_output_loss, so the same bits.
// Returns the batch's loss sum (lanes_total of s). narrow_output_loss is its layer-by-layer twin.
// C is a template parameter so that a lane vector's classes stay in registers; the case (loss,
// activation, targets) is Case's: read at run time (OutputCase), or fixed at compile time
// (FixedOutputCase) so that the loop holds only its own operations.
// The binary forms give bce_term's and bce_grad's bits when every target is 0 or 1 (binary); with
// one-hot targets (onehot), the categorical sum over classes is its one nonzero term (the others
// add -0), so one log per lane gives its bits.
struct OutputCase {
    LossKind kind;
    Act act;
    bool binary, onehot, weighted;
};
template <LossKind K, Act A, bool Binary>
struct FixedOutputCase {
    static constexpr LossKind kind = K;
    static constexpr Act act = A;
    static constexpr bool binary = Binary, onehot = false, weighted = false;
};

// One lane vector of the output stage: p (C) holds the outputs (the logits when act is Softmax)
// and becomes the probabilities, y (C) the targets; d (C) := the logit gradient (weighted by wv
// when w is not null), *s_l := the loss terms. The padding lanes are the caller's.
template <int C, typename Case, typename V, typename T = lane_t<V>>
__attribute__((always_inline)) inline void output_lane_vector(const Case& cs, V (&p)[C], const V (&y)[C], V (&d)[C],
                                                              T* s_l, T scale, const T* w_l) {
    const LossKind kind = cs.kind;
    const Act act = cs.act;
    const bool binary = cs.binary, onehot = cs.onehot;
    const bool bce = kind == LossKind::BinaryCrossentropy, cce = kind == LossKind::CategoricalCrossentropy;
    const bool sparse = kind == LossKind::SparseCategoricalCrossentropy;
    const T sign = bce ? T(-1) : T(1);
    const T sc = kind == LossKind::MeanSquaredError ? scale * T(2) / T(C) : scale / T(C);
    if (act == Act::Softmax) {
        V m = splat(-std::numeric_limits<T>::infinity());
        for (int c = 0; c < C; ++c) m = max_sel(p[c], m);  // std::max(m, a): m < a ? a : m
        if constexpr (C == 2) {
            // One of a - m is 0 in every lane, whose exp is exactly 1: one exp for the other
            // (NaN lanes stay NaN).
            const V x0 = p[0] - m, x1 = p[1] - m;
            const V e = vexp(x0 == T(0) ? x1 : x0);
            p[0] = x0 == T(0) ? T(1) : e;
            p[1] = x1 == T(0) ? T(1) : e;
        } else {
            for (int c = 0; c < C; ++c) p[c] = vexp(p[c] - m);
        }
        V sum{};
        for (int c = 0; c < C; ++c) sum = sum + p[c];
        const V inv = T(1) / sum;
        for (int c = 0; c < C; ++c) p[c] = p[c] * inv;
    }
    V acc{};
    if (sparse || onehot) {
        V u{}, q = p[0];
        for (int c = 0; c < C; ++c) u = u + p[c];
        for (int c = 1; c < C; ++c) q = y[c] == T(1) ? p[c] : q;
        store_lanes(s_l, -vlog(clip_prob(q / u)));
    } else if (cce) {
        V u{};
        for (int c = 0; c < C; ++c) u = u + p[c];
        for (int c = 0; c < C; ++c) acc = acc + y[c] * vlog(clip_prob(p[c] / u));
        store_lanes(s_l, -acc);
    } else if (binary) {
        for (int c = 0; c < C; ++c) acc = acc + bce_term_binary(p[c], y[c]);
        store_lanes(s_l, sign * acc / T(C));
    } else {
        for (int c = 0; c < C; ++c) acc = acc + (bce ? bce_term(p[c], y[c]) : (p[c] - y[c]) * (p[c] - y[c]));
        store_lanes(s_l, sign * acc / T(C));
    }
    if (sparse) {
        for (int c = 0; c < C; ++c) d[c] = scale * (p[c] - y[c]);
    } else if (act == Act::Softmax && cce) {
        V u{};
        for (int c = 0; c < C; ++c) u = u + y[c];
        for (int c = 0; c < C; ++c) d[c] = scale * (p[c] * u - y[c]);
    } else if (act == Act::Sigmoid && bce) {
        for (int c = 0; c < C; ++c) d[c] = sc * (p[c] - y[c]);
    } else {
        if (binary) {
            for (int c = 0; c < C; ++c) d[c] = bce_grad_binary(p[c], y[c], sc);
        } else {
            for (int c = 0; c < C; ++c) d[c] = bce ? bce_grad(p[c], y[c], sc) : sc * (p[c] - y[c]);
        }
        if (act == Act::Softmax) {
            V t{};
            for (int c = 0; c < C; ++c) t = t + d[c] * p[c];
            for (int c = 0; c < C; ++c) d[c] = p[c] * (d[c] - t);
        } else if (act == Act::Sigmoid) {
            for (int c = 0; c < C; ++c) d[c] = d[c] * (p[c] * (T(1) - p[c]));
        }
    }
    if (cs.weighted && w_l) {
        const V wv = load_lanes(w_l);
        for (int c = 0; c < C; ++c) d[c] = d[c] * wv;
    }
}

template <int C, typename Case, typename T>
void narrow_output_lanes(const Case& cs, T* A, const T* Y, index_t B, index_t L, T scale, T* dZ, T* s, const T* w) {
    using vec = LaneVec<T>;
    constexpr index_t VW = Simd<T>::width;
    if (!cs.weighted) w = nullptr;
    const bool sparse = cs.kind == LossKind::SparseCategoricalCrossentropy;  // Y (1, L): class ids
    for (index_t l = 0; l < L; l += VW) {
        vec p[C], y[C], d[C];
        for (int c = 0; c < C; ++c) p[c] = load_lanes(A + c * L + l);
        if (sparse) {
            const vec label = load_lanes(Y + l);
            for (int c = 0; c < C; ++c) y[c] = label == T(c) ? T(1) : T(0);
        } else {
            for (int c = 0; c < C; ++c) y[c] = load_lanes(Y + c * L + l);
        }
        output_lane_vector<C>(cs, p, y, d, s + l, scale, w ? w + l : nullptr);
        if (cs.act == Act::Softmax)
            for (int c = 0; c < C; ++c) store_lanes(A + c * L + l, p[c]);
        for (int c = 0; c < C; ++c) store_lanes(dZ + c * L + l, d[c]);
    }
    for (int c = 0; c < C; ++c) std::fill(dZ + c * L + B, dZ + (c + 1) * L, T(0));
}

template <typename T>
double narrow_output_fused(LossKind kind, Act act, T* A, const T* Y, index_t B, index_t L, index_t C, T scale,
                           T* dZ, T* s, const T* w) {
    require(narrow_output_fusable(kind, act), "narrow_output_fused: unsupported loss and output activation.");
    require(C >= 1 && C <= 16, "narrow_output_fused: 1 to 16 classes (the narrow path's widest layer).");
    const bool bce = kind == LossKind::BinaryCrossentropy;
    const OutputCase cs{kind, act, bce && all_binary(Y, C * L),
                        kind == LossKind::CategoricalCrossentropy && all_onehot_lanes(Y, C, B, L), w != nullptr};
    // The common cases of tiny networks fixed at compile time: a softmax pair (the seed's) or one
    // sigmoid, binary cross-entropy on 0/1 targets, no sample weights.
    if (cs.binary && !w && act == Act::Softmax && C == 2) {
        narrow_output_lanes<2>(FixedOutputCase<LossKind::BinaryCrossentropy, Act::Softmax, true>{}, A, Y, B, L, scale,
                               dZ, s, w);
        return lanes_total(s, w, B);
    }
    if (cs.binary && !w && act == Act::Sigmoid && C == 1) {
        narrow_output_lanes<1>(FixedOutputCase<LossKind::BinaryCrossentropy, Act::Sigmoid, true>{}, A, Y, B, L, scale,
                               dZ, s, w);
        return lanes_total(s, w, B);
    }
    auto run = [&](auto Cc) { narrow_output_lanes<decltype(Cc)::value>(cs, A, Y, B, L, scale, dZ, s, w); };
    if (C > kMaxGroup) {
        with_group(C - kMaxGroup, [&](auto G) { run(std::integral_constant<int, kMaxGroup + decltype(G)::value>{}); });
    } else {
        with_group(C, run);
    }
    return lanes_total(s, w, B);
}

// The lane sums of n outputs from their partial sums acc (n, NA), NA = kLaneBlock / width
// vectors per output: out[i] := lane_tree(acc + i NA), on AVX2 four outputs at a time
// (lane_tree4, the same bits).
template <typename T>
inline void lane_trees(T* out, const typename Simd<T>::vec* acc, index_t n) {
    constexpr index_t NA = kLaneBlock / Simd<T>::width;
    index_t i = 0;
#if FASTMLP_VEC_BYTES == 32
    if constexpr (std::is_same_v<T, float>) {
        auto pair = [acc](index_t o) { return acc[o * NA] + acc[o * NA + 1]; };
        for (; i + 4 <= n; i += 4) lane_tree4<4>(out + i, pair(i), pair(i + 1), pair(i + 2), pair(i + 3));
    }
#endif
    for (; i < n; ++i) out[i] = lane_tree<T>(acc + i * NA);
}

// A whole training step of a tiny three-layer network (the seed's 2-4-4-2) in one kernel, every
// width fixed at compile time: K0 inputs, dense N1 + relu, dense N2 + relu, dense C and the output
// stage Case (FixedOutputCase), every layer with its bias. Three passes over the lane vectors, each
// lane vector's values in registers within a pass:
//   forward   h1 := relu(W1^T x + b1), h2 := relu(W2^T h1 + b2), z := W3^T h2 + b3 (lanes_product's
//             chains: mul_add from 0 over the inputs ascending, + b, max_sel(., 0)), stored to H1,
//             H2 and P;
//   output    P := the probabilities, s := the loss terms, D := dz (output_lane_vector), 0 on the
//             padding lanes >= B;
//   backward  dh2 := (W3 dz) masked by h2 > 0, dh1 := (W2 dh2) masked by h1 > 0 (lanes_product's
//             masked chains), and every dW term x_k dz_n and db term dz_n added to its partial-sum
//             vector j mod NA for lane vector j (lane_dots' order: 16 partial sums over the lanes
//             l = i mod 16, ascending).
// Three passes rather than one: a lane vector's whole step is one long chain of dependent
// operations (the output stage's exp, logs and divisions in the middle), longer than the core can
// overlap with the next lane vector's; each pass's lane vectors are independent.
// The partial sums are then reduced by lane_tree and the loss terms by lanes_total. These are the
// operations, in the same order, of forward_backward_narrow's layer by layer kernels
// (narrow_dense_forward, narrow_output_fused, narrow_dense_backward), so the same bits
// (tests/test_engine.py checks them against each other).
// X (K0, L), Y (C, L): the batch, padding lanes zero; Wt[i] (in_i, out_i) row-major and bt[i]
// (out_i): the weights. Overwrites H1 (N1, L), H2 (N2, L), P (C, L) (the probabilities, for the
// metrics), D (C, L), s (L) and the gradients dWt[i], dbt[i]. Returns the batch's loss sum.
template <int K0, int N1, int N2, int C, typename Case, typename T>
double narrow_net3_fused(const Case& cs, const T* X, const T* Y, index_t B, index_t L, T scale, const T* const* Wt,
                         const T* const* bt, T* const* dWt, T* const* dbt, T* H1, T* H2, T* P, T* D, T* s) {
    using vec = LaneVec<T>;
    using ivec = decltype(vec{} > vec{});
    constexpr index_t VW = Simd<T>::width;
    constexpr index_t NA = kLaneBlock / VW;
    static_assert((NA & (NA - 1)) == 0, "a power of two of partial-sum vectors");
    // Broadcast coefficients, read from memory by the multiply-adds (as lanes_product's): W1, b1,
    // W2, b2, W3, b3 in that order.
    constexpr int kW1 = 0, kB1 = kW1 + K0 * N1, kW2 = kB1 + N1, kB2 = kW2 + N1 * N2, kW3 = kB2 + N2,
                  kB3 = kW3 + N2 * C, kCoefs = kB3 + C;
    constexpr int kOffsets[7] = {kW1, kB1, kW2, kB2, kW3, kB3, kCoefs};
    const T* srcs[6] = {Wt[0], bt[0], Wt[1], bt[1], Wt[2], bt[2]};
    vec cv[kCoefs];
    static_for<6>([&](auto a) {  // each array's count fixed at compile time: unrolled
        constexpr int o = kOffsets[decltype(a)::value], n = kOffsets[decltype(a)::value + 1] - o;
        for (int i = 0; i < n; ++i) cv[o + i] = splat(srcs[decltype(a)::value][i]);
    });
    const vec* c = cv;
    asm("" : "+r"(c));
    // The partial sums, NA vectors for each coefficient in the same order: dW1, db1, dW2, db2,
    // dW3, db3.
    vec acc[kCoefs * NA];
#pragma GCC unroll 128
    for (int i = 0; i < kCoefs * int(NA); ++i) acc[i] = vec{};
    const vec zero{};
    ivec lane{};
    for (index_t i = 0; i < VW; ++i) lane[i] = static_cast<lane_t<ivec>>(i);

    auto load_rows = [L](auto& r, const T* base, index_t l) {
        for (std::size_t i = 0; i < sizeof(r) / sizeof(r[0]); ++i) r[i] = load_lanes(base + i * L + l);
    };
    auto store_rows = [L](const auto& r, T* base, index_t l) {
        for (std::size_t i = 0; i < sizeof(r) / sizeof(r[0]); ++i) store_lanes(base + i * L + l, r[i]);
    };

    // One dense layer on a lane vector, In inputs and Out outputs, its weights at coefficient kW
    // and its bias at kB: out[n] := the chain over k of mul_add(in[k], W[k][n]) from 0, + b[n],
    // then max_sel(., 0) when Relu (lanes_product's).
    auto dense = [&](auto In, auto Out, auto Relu, int kW, int kB, const vec* in, vec* out) {
        constexpr int I = decltype(In)::value, O = decltype(Out)::value;
        for (int n = 0; n < O; ++n) {
            vec z = mul_add(in[0], c[kW + n], zero);
            for (int k = 1; k < I; ++k) z = mul_add(in[k], c[kW + k * O + n], z);
            z = z + c[kB + n];
            out[n] = decltype(Relu)::value ? max_sel(z, zero) : z;
        }
    };
    // Its backward into the partial-sum vectors a[i * NA] (a: acc's column v), given dz (Out) and
    // its input `in` (In): every in[k] dz[n] added to dW's partial sum (mul_add) and dz[n] to db's
    // (lane_dots'); then, when GradIn, the input's gradient g_in[k] := the chain over n of
    // mul_add(dz[n], W[k][n]) from 0, masked by in[k] > 0 (the previous layer's relu;
    // lanes_product's masked chain).
    auto dense_backward = [&](auto In, auto Out, auto GradIn, int kW, int kB, const vec* in, const vec* dz,
                              vec* g_in, vec* a) {
        constexpr int I = decltype(In)::value, O = decltype(Out)::value;
        for (int k = 0; k < I; ++k)
            for (int n = 0; n < O; ++n) {
                vec& p = a[(kW + k * O + n) * NA];
                p = mul_add(in[k], dz[n], p);
            }
        for (int n = 0; n < O; ++n) a[(kB + n) * NA] = a[(kB + n) * NA] + dz[n];
        if constexpr (decltype(GradIn)::value) {
            for (int k = 0; k < I; ++k) {
                vec t = mul_add(dz[0], c[kW + k * O], zero);
                for (int n = 1; n < O; ++n) t = mul_add(dz[n], c[kW + k * O + n], t);
                g_in[k] = in[k] > T(0) ? t : T(0);
            }
        }
    };
    using K0c = std::integral_constant<int, K0>;
    using N1c = std::integral_constant<int, N1>;
    using N2c = std::integral_constant<int, N2>;
    using Cc = std::integral_constant<int, C>;
    constexpr std::true_type yes{};
    constexpr std::false_type no{};

    // Forward.
    for (index_t l = 0; l < L; l += VW) {
        vec x[K0], h1[N1], h2[N2], p[C];
        load_rows(x, X, l);
        dense(K0c{}, N1c{}, yes, kW1, kB1, x, h1);
        dense(N1c{}, N2c{}, yes, kW2, kB2, h1, h2);
        dense(N2c{}, Cc{}, no, kW3, kB3, h2, p);
        if constexpr (Case::act == Act::Sigmoid)
            for (int n = 0; n < C; ++n) p[n] = act_value<Act::Sigmoid>(p[n]);  // act_values' bits
        store_rows(h1, H1, l);
        store_rows(h2, H2, l);
        store_rows(p, P, l);
    }
    // The output stage.
    for (index_t l = 0; l < L; l += VW) {
        vec p[C], y[C], d[C];
        load_rows(p, P, l);
        load_rows(y, Y, l);
        output_lane_vector<C>(cs, p, y, d, s + l, scale, static_cast<const T*>(nullptr));
        if (l + VW > B) {
            const ivec real = lane < static_cast<lane_t<ivec>>(B - l);
            for (int o = 0; o < C; ++o) d[o] = real ? d[o] : zero;
        }
        store_rows(p, P, l);
        store_rows(d, D, l);
    }
    // Backward, from the last layer down.
    for (index_t l = 0, j = 0; l < L; l += VW, ++j) {
        vec x[K0], h1[N1], h2[N2], d[C], g2[N2], g1[N1];
        load_rows(x, X, l);
        load_rows(h1, H1, l);
        load_rows(h2, H2, l);
        load_rows(d, D, l);
        vec* a = acc + (j & (NA - 1));
        dense_backward(N2c{}, Cc{}, yes, kW3, kB3, h2, d, g2, a);
        dense_backward(N1c{}, N2c{}, yes, kW2, kB2, h1, g2, g1, a);
        dense_backward(K0c{}, N1c{}, no, kW1, kB1, x, g1, static_cast<vec*>(nullptr), a);
    }
    T* outs[6] = {dWt[0], dbt[0], dWt[1], dbt[1], dWt[2], dbt[2]};
    for (int a = 0; a < 6; ++a) lane_trees<T>(outs[a], acc + kOffsets[a] * NA, kOffsets[a + 1] - kOffsets[a]);
    return lanes_total(s, static_cast<const T*>(nullptr), B);
}

// narrow_net3_fused's instances: the seed's shape (2 inputs, 4 and 4 hidden units) and its wider
// and narrower kin, with a softmax pair or one sigmoid under binary cross-entropy. Other networks
// take the layer by layer kernels.
template <typename T>
using Net3Kernel = double (*)(const T* X, const T* Y, index_t B, index_t L, T scale, const T* const* Wt,
                              const T* const* bt, T* const* dWt, T* const* dbt, T* H1, T* H2, T* P, T* D, T* s);

template <int K0, int N1, int N2, int C, typename T>
double narrow_net3_bce(const T* X, const T* Y, index_t B, index_t L, T scale, const T* const* Wt, const T* const* bt,
                       T* const* dWt, T* const* dbt, T* H1, T* H2, T* P, T* D, T* s) {
    using Case = FixedOutputCase<LossKind::BinaryCrossentropy, C == 1 ? Act::Sigmoid : Act::Softmax, true>;
    return narrow_net3_fused<K0, N1, N2, C>(Case{}, X, Y, B, L, scale, Wt, bt, dWt, dbt, H1, H2, P, D, s);
}

// The instance for K0 inputs, hidden widths N1 and N2 and C outputs (act: the output's), or null.
template <typename T>
Net3Kernel<T> narrow_net3_kernel(index_t K0, index_t N1, index_t N2, index_t C, Act act) {
    if (!((C == 2 && act == Act::Softmax) || (C == 1 && act == Act::Sigmoid))) return nullptr;
    if (K0 < 1 || K0 > 4 || N1 != N2 || (N1 != 4 && N1 != 8)) return nullptr;
    Net3Kernel<T> f = nullptr;
    static_for<4>([&](auto i) {
        constexpr int k0 = decltype(i)::value + 1;
        if (K0 != k0) return;
        if (N1 == 4) {
            f = C == 1 ? narrow_net3_bce<k0, 4, 4, 1, T> : narrow_net3_bce<k0, 4, 4, 2, T>;
        } else {
            f = C == 1 ? narrow_net3_bce<k0, 8, 8, 1, T> : narrow_net3_bce<k0, 8, 8, 2, T>;
        }
    });
    return f;
}

// Sum over the B real lanes of the per-sample accuracy (as accuracy_sum, sample weights w included).
template <typename T>
double narrow_accuracy_sum(MetricKind kind, const T* P, const T* Y, index_t B, index_t L, index_t C,
                           const T* w = nullptr) {
    double total = 0;
    if (kind == MetricKind::CategoricalAccuracy || kind == MetricKind::SparseCategoricalAccuracy) {
        // A lane vector at a time: the first largest class of P (a strictly greater value moves it,
        // as below) against the label or Y's first largest class; the hits are then added lane by
        // lane in order, so the same sum as the loop below.
        using vec = LaneVec<T>;
        using ivec = decltype(vec{} > vec{});
        constexpr index_t VW = Simd<T>::width;
        auto first_max = [&](const T* A, index_t l) {
            vec best = load_lanes(A + l);
            ivec at{};
            for (index_t c = 1; c < C; ++c) {
                const vec a = load_lanes(A + c * L + l);
                const ivec more = a > best;
                best = more ? a : best;
                at = more ? ivec{} + static_cast<lane_t<ivec>>(c) : at;
            }
            return at;
        };
        for (index_t l = 0; l < B; l += VW) {
            const ivec truth = kind == MetricKind::SparseCategoricalAccuracy
                                   ? __builtin_convertvector(load_lanes(Y + l), ivec)
                                   : first_max(Y, l);
            const ivec hit = first_max(P, l) == truth;
            for (index_t i = 0; i < VW && l + i < B; ++i) total += weighted(double(hit[i] != 0), w, l + i);
        }
        return total;
    }
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
