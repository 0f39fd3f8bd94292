// exp and log that the compiler can vectorize (branch-free, inline, no errno), for float.
//
// The C library's expf/logf are calls the compiler cannot vectorize under our flags (no
// -ffast-math), and on tiny networks the loss and softmax transcendentals cost more than all the
// matrix products. These are the Cephes polynomials (as in sse_mathfun): within 2 ulp of the
// correctly rounded result on their domain, and deterministic (plain IEEE operations, no FMA).
// double keeps the C library's exp/log: it is the precision path (gradient checks), not the fast one.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#include "common.hpp"

FASTMLP_ISA_BEGIN

inline float bits_to_float(std::int32_t i) {
    float f;
    std::memcpy(&f, &i, sizeof(f));
    return f;
}

inline std::int32_t float_to_bits(float f) {
    std::int32_t i;
    std::memcpy(&i, &f, sizeof(i));
    return i;
}

// exp(x): exact 0 below -87.33 (results under FLT_MIN flush to zero), +inf above 88.72, NaN kept.
inline float exp_fast(float x) {
    const float lo = -87.3365447505531f, hi = 88.7228391116729f;
    // Written so that NaN selects lo (no NaN reaches the int conversion); it is put back at the end.
    float xc = x > lo ? (x < hi ? x : hi) : lo;
    // n = round(x / ln 2), capped at 127 so that 2^n is a normal float.
    const float t = xc * 1.44269504088896341f;
    std::int32_t n = static_cast<std::int32_t>(t + (t >= 0.0f ? 0.5f : -0.5f));
    n = n > 127 ? 127 : n;
    const float fn = static_cast<float>(n);
    const float r = (xc - fn * 0.693359375f) - fn * -2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    const float y = (p * (r * r) + r) + 1.0f;
    float out = y * bits_to_float((n + 127) << 23);
    out = x < lo ? 0.0f : out;
    out = x > hi ? HUGE_VALF : out;
    return x != x ? x : out;
}

// log(x) for positive, normal x (the losses only take logs of probabilities clipped to
// [1e-7, 1 - 1e-7]), and NaN for NaN, so that a diverged network's loss reads as NaN; other
// inputs are outside the contract.
inline float log_fast(float x) {
    const std::int32_t bits = float_to_bits(x);
    float e = static_cast<float>(((bits >> 23) & 0xff) - 126);
    float m = bits_to_float((bits & 0x807fffff) | 0x3f000000);  // x = m * 2^e, m in [0.5, 1)
    const bool small = m < 0.707106781186547524f;
    e = small ? e - 1.0f : e;
    m = small ? (m + m) - 1.0f : m - 1.0f;
    const float z = m * m;
    float p = 7.0376836292e-2f;
    p = p * m - 1.1514610310e-1f;
    p = p * m + 1.1676998740e-1f;
    p = p * m - 1.2420140846e-1f;
    p = p * m + 1.4249322787e-1f;
    p = p * m - 1.6668057665e-1f;
    p = p * m + 2.0000714765e-1f;
    p = p * m - 2.4999993993e-1f;
    p = p * m + 3.3333331174e-1f;
    float y = (p * m) * z;
    y = y + e * -2.12194440e-4f;
    y = y - 0.5f * z;
    const float out = (m + y) + e * 0.693359375f;
    return x != x ? x : out;
}

inline float vexp(float x) { return exp_fast(x); }
inline float vlog(float x) { return log_fast(x); }
inline double vexp(double x) { return std::exp(x); }
inline double vlog(double x) { return std::log(x); }

FASTMLP_ISA_END
