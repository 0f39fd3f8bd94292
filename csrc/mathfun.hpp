// exp, log and tanh that the compiler can vectorize (branch-free, inline, no errno), for float.
//
// The C library's expf/logf are calls the compiler cannot vectorize under our flags (no
// -ffast-math), and on tiny networks the loss and softmax transcendentals cost more than all the
// matrix products. These are the Cephes polynomials (as in sse_mathfun): within 2 ulp of the
// correctly rounded result on their domain (measured: within 1 ulp of float64 exp on [-87, 88] and
// log on [1e-7, 1]), and deterministic: plain IEEE operations, the polynomials' steps a * x + c
// fused (madd) in the variants with FMA, rounded twice in the baseline; a scalar and a lane of a
// vector take the same operations in every variant.
// double keeps the C library's exp/log/tanh: it is the precision path (gradient checks), not the fast one.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <utility>

#include "common.hpp"
#if defined(__SSE2__)
#include <immintrin.h>
#endif

FASTMLP_ISA_BEGIN

// Always inlined: called out of line, a vector exp costs a call and its chains stop overlapping
// the caller's work.
// Lane traits: exp_fast and log_fast are written once for a float or a GCC vector of floats (the
// narrow kernels call them on whole vectors). The operations are the same per lane, so a lane of
// the vector form gives exactly the scalar form's bits.
template <typename V>
struct FloatLanes {  // V: a GCC vector of float
    typedef std::int32_t I __attribute__((vector_size(sizeof(V))));
    static I trunc(V x) { return __builtin_convertvector(x, I); }
    static V to_float(I n) { return __builtin_convertvector(n, V); }
    static V from_bits(I i) { return reinterpret_cast<V>(i); }
    static I to_bits(V f) { return reinterpret_cast<I>(f); }
};
template <>
struct FloatLanes<float> {
    using I = std::int32_t;
    static I trunc(float x) { return static_cast<I>(x); }
    static float to_float(I n) { return static_cast<float>(n); }
    static float from_bits(I i) {
        float f;
        std::memcpy(&f, &i, sizeof(f));
        return f;
    }
    static I to_bits(float f) {
        I i;
        std::memcpy(&i, &f, sizeof(i));
        return i;
    }
};

// x as V: itself, or a float broadcast to every lane of the vector V.
template <typename V, typename X>
__attribute__((always_inline)) inline V as_lanes(X x) {
    if constexpr (std::is_same_v<V, X> || std::is_same_v<V, float>) {
        return x;
    } else {
        return V{} + x;  // 0 + x: x itself for the nonzero constants passed here
    }
}

// a * b + c for a float or a GCC vector of floats (b and c: the same, or floats broadcast): one
// fused multiply-add, one rounding, where the variant has FMA (avx2, avx512); a multiply and an
// add in the baseline.
template <typename V, typename B, typename C>
__attribute__((always_inline)) inline V madd(V a, B b_, C c_) {
    const V b = as_lanes<V>(b_), c = as_lanes<V>(c_);
#if FASTMLP_VEC_BYTES >= 32
    if constexpr (std::is_same_v<V, float>) {
        return __builtin_fmaf(a, b, c);
    } else if constexpr (sizeof(V) == 16) {
        return (V)_mm_fmadd_ps((__m128)a, (__m128)b, (__m128)c);
    } else if constexpr (sizeof(V) == 32) {
        return (V)_mm256_fmadd_ps((__m256)a, (__m256)b, (__m256)c);
    } else {
        static_assert(sizeof(V) == 64, "madd: a float or a vector of 4, 8 or 16 floats");
        return (V)_mm512_fmadd_ps((__m512)a, (__m512)b, (__m512)c);
    }
#else
    return a * b + c;
#endif
}

// a > b ? a : b and a < b ? a : b lane by lane (NaN in either operand: b), as x86's max and min
// instructions define them: one instruction where GCC emits a compare and a blend for the
// conditional (it also turns the intrinsics back into the conditional in larger functions, hence
// the asm on AVX). A scalar keeps the conditional (GCC emits maxss/minss for it).
#define FASTMLP_MINMAX(NAME, INSN, SSE_PS, SSE_PD, OP)                                                     \
    template <typename V>                                                                                 \
    __attribute__((always_inline)) inline V NAME(V a, V b) {                                              \
        if constexpr (!std::is_arithmetic_v<V>) {                                                         \
            constexpr bool f = std::is_same_v<std::remove_cv_t<std::remove_reference_t<decltype(a[0])>>, float>; \
            if constexpr (sizeof(V) == 32 || sizeof(V) == 64) {                                           \
                V r;                                                                                      \
                if constexpr (f) {                                                                        \
                    asm("v" INSN "ps %2, %1, %0" : "=v"(r) : "v"(a), "vm"(b));                            \
                } else {                                                                                  \
                    asm("v" INSN "pd %2, %1, %0" : "=v"(r) : "v"(a), "vm"(b));                            \
                }                                                                                         \
                return r;                                                                                 \
            }                                                                                             \
            if constexpr (sizeof(V) == 16) return f ? (V)SSE_PS((__m128)a, (__m128)b) : (V)SSE_PD((__m128d)a, (__m128d)b); \
        }                                                                                                 \
        return a OP b ? a : b;                                                                            \
    }
#if defined(__SSE2__) && defined(__GNUC__)
FASTMLP_MINMAX(max_sel, "max", _mm_max_ps, _mm_max_pd, >)
FASTMLP_MINMAX(min_sel, "min", _mm_min_ps, _mm_min_pd, <)
#else
template <typename V>
inline V max_sel(V a, V b) {
    return a > b ? a : b;
}
template <typename V>
inline V min_sel(V a, V b) {
    return a < b ? a : b;
}
#endif
#undef FASTMLP_MINMAX

// exp(x): exact 0 below -87.33 (results under FLT_MIN flush to zero), +inf above 88.72, NaN kept.
template <typename V>
__attribute__((always_inline)) inline V exp_fast(V x) {
    using F = FloatLanes<V>;
    const float lo = -87.3365447505531f, hi = 88.7228391116729f;
    // x > lo ? min(x, hi) : lo, written so that NaN selects lo (no NaN reaches the int
    // conversion); it is put back at the end.
    const V xc = min_sel(max_sel(x, as_lanes<V>(lo)), as_lanes<V>(hi));
    // n = round(x / ln 2), capped at 127 so that 2^n is a normal float.
    const V t = xc * 1.44269504088896341f;
    typename F::I n = F::trunc(t + (t >= 0.0f ? 0.5f : -0.5f));
    n = n > 127 ? 127 : n;
    const V fn = F::to_float(n);
    // r = x - n ln 2 (Cody-Waite: n * 0.693359375 is exact), then minus n * (ln 2 - 0.693359375).
    const V r = madd(fn, 2.12194440e-4f, xc - fn * 0.693359375f);
    // The degree-5 polynomial by Estrin's scheme (pairs, then powers of r^2): half the dependent
    // chain of Horner's, which bounded the throughput of whole vectors of exps.
    const V r2 = r * r, r4 = r2 * r2;
    const V p01 = madd(r, 1.6666665459e-1f, 5.0000001201e-1f);
    const V p23 = madd(r, 8.3334519073e-3f, 4.1665795894e-2f);
    const V p45 = madd(r, 1.9875691500e-4f, 1.3981999507e-3f);
    const V p = madd(r4, p45, madd(r2, p23, p01));
    const V y = madd(p, r2, r) + 1.0f;
    V out = y * F::from_bits((n + 127) << 23);
    out = x < lo ? 0.0f : out;
    out = x > hi ? HUGE_VALF : out;
    return x != x ? x : out;
}

// log(x) for positive, normal x (the losses only take logs of probabilities clipped to
// [1e-7, 1 - 1e-7]), and NaN for NaN, so that a diverged network's loss reads as NaN; other
// inputs are outside the contract.
template <typename V>
__attribute__((always_inline)) inline V log_fast(V x) {
    using F = FloatLanes<V>;
    const typename F::I bits = F::to_bits(x);
    V e = F::to_float(((bits >> 23) & 0xff) - 126);
    V m = F::from_bits((bits & 0x807fffff) | 0x3f000000);  // x = m * 2^e, m in [0.5, 1)
    const auto small = m < 0.707106781186547524f;
    e = small ? e - 1.0f : e;
    m = small ? (m + m) - 1.0f : m - 1.0f;
    const V z = m * m, z2 = z * z, z4 = z2 * z2;
    // The degree-8 polynomial by Estrin's scheme, as in exp_fast.
    const V q01 = madd(m, -2.4999993993e-1f, 3.3333331174e-1f);
    const V q23 = madd(m, -1.6668057665e-1f, 2.0000714765e-1f);
    const V q45 = madd(m, -1.2420140846e-1f, 1.4249322787e-1f);
    const V q67 = madd(m, -1.1514610310e-1f, 1.1676998740e-1f);
    const V p = madd(z4, 7.0376836292e-2f, madd(z2, madd(z, q67, q45), madd(z, q23, q01)));
    V y = (p * m) * z;
    y = madd(e, -2.12194440e-4f, y);
    y = madd(z, -0.5f, y);
    const V out = madd(e, 0.693359375f, m + y);
    return x != x ? x : out;
}

// tanh(x): Cephes's tanhf on |x| (|x| + |x| z P(z), z = x^2, below 0.625; 1 - 2 / (exp(2|x|) + 1)
// above, exactly 1 once exp overflows), then x's sign (so -0 stays -0; NaN stays NaN). Measured:
// within 1.4 ulp of float64 tanh on [-20, 20].
template <typename V>
__attribute__((always_inline)) inline V tanh_fast(V x) {
    using F = FloatLanes<V>;
    const typename F::I bits = F::to_bits(x);
    const V ax = F::from_bits(bits & 0x7fffffff);
    const V z = ax * ax;
    V p = madd(z, -5.70498872745e-3f, 2.06390887954e-2f);
    p = madd(p, z, -5.37397155531e-2f);
    p = madd(p, z, 1.33314422036e-1f);
    p = madd(p, z, -3.33332819422e-1f) * z;
    const V mag = ax < 0.625f ? madd(p, ax, ax) : 1.0f - 2.0f / (exp_fast(ax + ax) + 1.0f);
    return F::from_bits(F::to_bits(mag) | (bits & ~0x7fffffff));
}

inline float vexp(float x) { return exp_fast(x); }
inline float vtanh(float x) { return tanh_fast(x); }
inline double vtanh(double x) { return std::tanh(x); }
inline float vlog(float x) { return log_fast(x); }
inline double vexp(double x) { return std::exp(x); }
inline double vlog(double x) { return std::log(x); }

// The element type of a GCC vector (lane_t<V>), or the scalar itself: helpers written once for
// both (clip_prob, the binary cross-entropy terms) take their constants in it.
template <typename V, typename = void>
struct LaneOf {
    using type = V;
};
template <typename V>
struct LaneOf<V, std::void_t<decltype(std::declval<V>()[0])>> {
    using type = std::remove_cv_t<std::remove_reference_t<decltype(std::declval<V>()[0])>>;
};
template <typename V>
using lane_t = typename LaneOf<V>::type;

// vexp and vlog on a whole vector: lane by lane the scalar forms' bits (float: the polynomials
// above; double: the C library, one lane at a time).
template <typename V, typename = std::enable_if_t<!std::is_same_v<lane_t<V>, V>>>
__attribute__((always_inline)) inline V vexp(V x) {
    if constexpr (std::is_same_v<lane_t<V>, float>) {
        return exp_fast(x);
    } else {
        for (std::size_t i = 0; i < sizeof(V) / sizeof(x[0]); ++i) x[i] = std::exp(x[i]);
        return x;
    }
}
template <typename V, typename = std::enable_if_t<!std::is_same_v<lane_t<V>, V>>>
__attribute__((always_inline)) inline V vtanh(V x) {
    if constexpr (std::is_same_v<lane_t<V>, float>) {
        return tanh_fast(x);
    } else {
        for (std::size_t i = 0; i < sizeof(V) / sizeof(x[0]); ++i) x[i] = std::tanh(x[i]);
        return x;
    }
}
template <typename V, typename = std::enable_if_t<!std::is_same_v<lane_t<V>, V>>>
__attribute__((always_inline)) inline V vlog(V x) {
    if constexpr (std::is_same_v<lane_t<V>, float>) {
        return log_fast(x);
    } else {
        for (std::size_t i = 0; i < sizeof(V) / sizeof(x[0]); ++i) x[i] = std::log(x[i]);
        return x;
    }
}

FASTMLP_ISA_END
