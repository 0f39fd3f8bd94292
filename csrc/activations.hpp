// Activations, forward and backward side by side. Backward is written in terms of the activation's
// OUTPUT A (not its input Z) wherever the derivative is expressible from A, so that the engine keeps
// only post-activation buffers. Gelu and swish are not (needs_preactivation): their backward takes
// the pre-activation Z (act_grad_z, act_backward_row_z), which the engine keeps for those layers.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <type_traits>

#include "common.hpp"
#include "mathfun.hpp"

FASTMLP_ISA_BEGIN

// Row-wise softmax in place: a[j] := exp(a[j] - max a) / sum exp(a - max a), one row of n values.
// The running max starts at -inf so that a row of -inf or huge negatives is handled.
template <typename T>
inline void softmax_row(T* a, index_t n) {
    T m = -std::numeric_limits<T>::infinity();
    for (index_t j = 0; j < n; ++j) m = std::max(m, a[j]);
    T s = 0;
    for (index_t j = 0; j < n; ++j) {
        a[j] = vexp(a[j] - m);
        s += a[j];
    }
    const T inv = T(1) / s;
    for (index_t j = 0; j < n; ++j) a[j] *= inv;
}

// One element of an elementwise activation (not softmax), the activation fixed at compile time so
// that loops over elements vectorize: act_value(z) = act(z); act_grad(a, d) = d * act'(z) written
// from the output a = act(z). Keras 3's definitions and defaults: leaky_relu slope 0.2, elu alpha
// 1, selu's constants, hard_sigmoid = relu6(z + 3) / 6, softplus = log(1 + e^z), gelu exact
// (approximate=False) z/2 (1 + erf(z / sqrt 2)), swish (silu) z sigmoid(z).
constexpr double kSeluScale = 1.0507009873554804934193349852946;
constexpr double kSeluAlpha = 1.6732632423543772848170429916717;
constexpr double kLeakySlope = 0.2;
constexpr double kSqrtHalf = 0.70710678118654752440084436210485;     // 1 / sqrt(2)
constexpr double kInvSqrt2Pi = 0.39894228040143267793994605993438;   // 1 / sqrt(2 pi)

template <Act A, typename T>
inline T act_value(T z) {
    static_assert(A != Act::Softmax, "softmax is not elementwise");
    using S = lane_t<T>;  // T itself, or the lane type when act_values passes a GCC vector
    if constexpr (A == Act::Relu) return z > S(0) ? z : S(0);
    if constexpr (A == Act::Sigmoid) return S(1) / (S(1) + vexp(-z));
    if constexpr (A == Act::Tanh) return vtanh(z);
    if constexpr (A == Act::LeakyRelu) return z > S(0) ? z : S(kLeakySlope) * z;
    if constexpr (A == Act::Elu) return z > S(0) ? z : vexp(z) - S(1);
    if constexpr (A == Act::Selu) return z > S(0) ? S(kSeluScale) * z : S(kSeluScale * kSeluAlpha) * (vexp(z) - S(1));
    if constexpr (A == Act::HardSigmoid) return std::min(std::max(z + T(3), T(0)), T(6)) / T(6);
    if constexpr (A == Act::Softplus) return std::log1p(vexp(-std::abs(z))) + std::max(z, T(0));
    if constexpr (A == Act::Softsign) return z / (T(1) + std::abs(z));
    if constexpr (A == Act::Exponential) return vexp(z);
    if constexpr (A == Act::Gelu) return z * T(0.5) * (T(1) + std::erf(z * T(kSqrtHalf)));
    if constexpr (A == Act::Swish) return z * (S(1) / (S(1) + vexp(-z)));
    return z;
}

// The activations whose act_value also takes a whole GCC vector (lane by lane the scalar bits).
template <Act A>
constexpr bool kLanewiseAct = A == Act::Linear || A == Act::Relu || A == Act::Sigmoid || A == Act::Tanh ||
                              A == Act::LeakyRelu || A == Act::Elu || A == Act::Selu || A == Act::Exponential ||
                              A == Act::Swish;

// a[j] := act_value<A>(z[j]) for j < n (a == z allowed), whole vectors at a time where act_value
// takes them: the same bits, and exp and tanh vectorized (a scalar loop over them does not).
template <Act A, typename T>
inline void act_values(const T* z, T* a, index_t n) {
    index_t j = 0;
    if constexpr (kLanewiseAct<A>) {
        typedef T vec __attribute__((vector_size(FASTMLP_VEC_BYTES)));
        constexpr index_t W = FASTMLP_VEC_BYTES / sizeof(T);
        for (; j + W <= n; j += W) {
            vec v;
            std::memcpy(&v, z + j, sizeof(v));
            v = act_value<A>(v);
            std::memcpy(a + j, &v, sizeof(v));
        }
    }
    for (; j < n; ++j) a[j] = act_value<A>(z[j]);
}

template <Act A, typename T>
inline T act_grad(T a, T d) {
    static_assert(A != Act::Softmax, "softmax is not elementwise");
    if constexpr (A == Act::Relu) return a > T(0) ? d : T(0);
    if constexpr (A == Act::Sigmoid) return d * (a * (T(1) - a));
    if constexpr (A == Act::Tanh) return d * (T(1) - a * a);
    if constexpr (A == Act::LeakyRelu) return a > T(0) ? d : T(kLeakySlope) * d;
    if constexpr (A == Act::Elu) return a > T(0) ? d : d * (a + T(1));
    if constexpr (A == Act::Selu) return a > T(0) ? T(kSeluScale) * d : d * (a + T(kSeluScale * kSeluAlpha));
    if constexpr (A == Act::HardSigmoid) return a > T(0) && a < T(1) ? d / T(6) : T(0);
    if constexpr (A == Act::Softplus) return d * -std::expm1(-a);  // sigmoid(z) = 1 - e^-a, exactly
    if constexpr (A == Act::Softsign) return d * ((T(1) - std::abs(a)) * (T(1) - std::abs(a)));
    if constexpr (A == Act::Exponential) return d * a;
    // Not a function of a: every entry point that could reach these (act_backward_row,
    // narrow_dense_backward) rejects them first, and the engine takes act_grad_z instead.
    if constexpr (needs_preactivation(A)) return std::numeric_limits<T>::quiet_NaN();
    return d;
}

// d * act'(z) from the PRE-activation z: gelu' = Phi(z) + z phi(z) (the normal CDF and density),
// swish' = s (1 + z (1 - s)) with s = sigmoid(z); any other elementwise activation through its
// output, act_grad(act_value(z), d).
template <Act A, typename T>
inline T act_grad_z(T z, T d) {
    if constexpr (A == Act::Gelu) {
        const T cdf = T(0.5) * (T(1) + std::erf(z * T(kSqrtHalf)));
        return d * (cdf + z * (T(kInvSqrt2Pi) * vexp(T(-0.5) * (z * z))));
    } else if constexpr (A == Act::Swish) {
        const T s = T(1) / (T(1) + vexp(-z));
        return d * (s * (T(1) + z * (T(1) - s)));
    } else {
        return act_grad<A>(act_value<A>(z), d);
    }
}

// Calls f(std::integral_constant<Act, A>{}) with the elementwise activation `act` fixed at compile
// time (softmax maps to Linear: callers handle it themselves).
template <typename F>
inline void with_act(Act act, F&& f) {
    switch (act) {
        case Act::Relu: f(std::integral_constant<Act, Act::Relu>{}); break;
        case Act::Sigmoid: f(std::integral_constant<Act, Act::Sigmoid>{}); break;
        case Act::Tanh: f(std::integral_constant<Act, Act::Tanh>{}); break;
        case Act::LeakyRelu: f(std::integral_constant<Act, Act::LeakyRelu>{}); break;
        case Act::Elu: f(std::integral_constant<Act, Act::Elu>{}); break;
        case Act::Selu: f(std::integral_constant<Act, Act::Selu>{}); break;
        case Act::HardSigmoid: f(std::integral_constant<Act, Act::HardSigmoid>{}); break;
        case Act::Softplus: f(std::integral_constant<Act, Act::Softplus>{}); break;
        case Act::Softsign: f(std::integral_constant<Act, Act::Softsign>{}); break;
        case Act::Exponential: f(std::integral_constant<Act, Act::Exponential>{}); break;
        case Act::Gelu: f(std::integral_constant<Act, Act::Gelu>{}); break;
        case Act::Swish: f(std::integral_constant<Act, Act::Swish>{}); break;
        case Act::Linear:
        case Act::Softmax: f(std::integral_constant<Act, Act::Linear>{}); break;
    }
}

// Forward: A := act(A) in place on one row of n pre-activations (Z in, A out).
template <typename T>
inline void act_forward_row(Act act, T* a, index_t n) {
    if (act == Act::Softmax) {
        softmax_row(a, n);
        return;
    }
    with_act(act, [&](auto A) { act_values<decltype(A)::value>(a, a, n); });
}

// Backward: d := d * act'(Z), on one row, with act' written from the output a = act(Z)
// (softmax, a Jacobian-vector product: a * (d - sum(d * a))). d holds dL/dA on entry and dL/dZ on exit.
// Gelu and swish need Z: act_backward_row_z.
template <typename T>
inline void act_backward_row(Act act, const T* a, T* d, index_t n) {
    require(!needs_preactivation(act), "The gelu and swish derivatives need the pre-activation: "
                                       "act_backward_row_z, not act_backward_row.");
    if (act == Act::Softmax) {
        T dot = 0;
        for (index_t j = 0; j < n; ++j) dot += d[j] * a[j];
        for (index_t j = 0; j < n; ++j) d[j] = a[j] * (d[j] - dot);
        return;
    }
    with_act(act, [&](auto A) {
        for (index_t j = 0; j < n; ++j) d[j] = act_grad<decltype(A)::value>(a[j], d[j]);
    });
}

// Backward from the pre-activation: d := d * act'(z) over n values, for an elementwise activation
// (not softmax). d holds dL/dA on entry and dL/dZ on exit.
template <typename T>
inline void act_backward_row_z(Act act, const T* z, T* d, index_t n) {
    require(act != Act::Softmax, "act_backward_row_z takes elementwise activations; received softmax.");
    with_act(act, [&](auto A) {
        for (index_t j = 0; j < n; ++j) d[j] = act_grad_z<decltype(A)::value>(z[j], d[j]);
    });
}

// a := act(z) over n values, for an elementwise activation (training keeps z beside a).
template <typename T>
inline void act_forward_copy(Act act, const T* z, T* a, index_t n) {
    require(act != Act::Softmax, "act_forward_copy takes elementwise activations; received softmax.");
    with_act(act, [&](auto A) { act_values<decltype(A)::value>(z, a, n); });
}

// The same over a (rows, cols) row-major block. Elementwise activations run as one flat loop
// (vectorizable however narrow the rows are); softmax goes row by row.
// Softmax over rows is split into three passes so that the exponentials run as one flat,
// vectorized loop even when rows are two or three classes wide; every element sees exactly the
// operations of softmax_row, so the results are the same bits.
template <typename T>
inline void act_forward_rows(Act act, T* a, index_t rows, index_t cols) {
    if (act != Act::Softmax) {
        act_forward_row(act, a, rows * cols);
        return;
    }
    for (index_t i = 0; i < rows; ++i) {
        T* r = a + i * cols;
        T m = -std::numeric_limits<T>::infinity();
        for (index_t j = 0; j < cols; ++j) m = std::max(m, r[j]);
        for (index_t j = 0; j < cols; ++j) r[j] = r[j] - m;
    }
    const index_t n = rows * cols;
    for (index_t k = 0; k < n; ++k) a[k] = vexp(a[k]);
    for (index_t i = 0; i < rows; ++i) {
        T* r = a + i * cols;
        T s = 0;
        for (index_t j = 0; j < cols; ++j) s += r[j];
        const T inv = T(1) / s;
        for (index_t j = 0; j < cols; ++j) r[j] *= inv;
    }
}

template <typename T>
inline void act_backward_rows(Act act, const T* a, T* d, index_t rows, index_t cols) {
    if (act == Act::Softmax) {
        for (index_t i = 0; i < rows; ++i) act_backward_row(act, a + i * cols, d + i * cols, cols);
    } else {
        act_backward_row(act, a, d, rows * cols);
    }
}

FASTMLP_ISA_END
