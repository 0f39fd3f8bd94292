// Activations, forward and backward side by side. Backward is written in terms of the activation's
// OUTPUT A (not its input Z): every activation here has a derivative expressible from A, so the
// engine keeps only post-activation buffers.
#pragma once

#include <algorithm>
#include <cmath>
#include <limits>

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
// from the output a = act(z).
template <Act A, typename T>
inline T act_value(T z) {
    static_assert(A != Act::Softmax, "softmax is not elementwise");
    if constexpr (A == Act::Relu) return z > T(0) ? z : T(0);
    if constexpr (A == Act::Sigmoid) return T(1) / (T(1) + vexp(-z));
    if constexpr (A == Act::Tanh) return std::tanh(z);
    return z;
}

template <Act A, typename T>
inline T act_grad(T a, T d) {
    static_assert(A != Act::Softmax, "softmax is not elementwise");
    if constexpr (A == Act::Relu) return a > T(0) ? d : T(0);
    if constexpr (A == Act::Sigmoid) return d * (a * (T(1) - a));
    if constexpr (A == Act::Tanh) return d * (T(1) - a * a);
    return d;
}

// Forward: A := act(A) in place on one row of n pre-activations (Z in, A out).
template <typename T>
inline void act_forward_row(Act act, T* a, index_t n) {
    switch (act) {
        case Act::Linear: break;
        case Act::Relu:
            for (index_t j = 0; j < n; ++j) a[j] = act_value<Act::Relu>(a[j]);
            break;
        case Act::Sigmoid:
            for (index_t j = 0; j < n; ++j) a[j] = act_value<Act::Sigmoid>(a[j]);
            break;
        case Act::Tanh:
            for (index_t j = 0; j < n; ++j) a[j] = act_value<Act::Tanh>(a[j]);
            break;
        case Act::Softmax: softmax_row(a, n); break;
    }
}

// Backward: d := d * act'(Z), on one row, with act' written from the output a = act(Z).
//   relu: a > 0;  sigmoid: a(1-a);  tanh: 1-a^2;  softmax (Jacobian-vector product): a*(d - sum(d*a)).
// d holds dL/dA on entry and dL/dZ on exit.
template <typename T>
inline void act_backward_row(Act act, const T* a, T* d, index_t n) {
    switch (act) {
        case Act::Linear: break;
        case Act::Relu:
            for (index_t j = 0; j < n; ++j) d[j] = act_grad<Act::Relu>(a[j], d[j]);
            break;
        case Act::Sigmoid:
            for (index_t j = 0; j < n; ++j) d[j] = act_grad<Act::Sigmoid>(a[j], d[j]);
            break;
        case Act::Tanh:
            for (index_t j = 0; j < n; ++j) d[j] = act_grad<Act::Tanh>(a[j], d[j]);
            break;
        case Act::Softmax: {
            T dot = 0;
            for (index_t j = 0; j < n; ++j) dot += d[j] * a[j];
            for (index_t j = 0; j < n; ++j) d[j] = a[j] * (d[j] - dot);
            break;
        }
    }
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
