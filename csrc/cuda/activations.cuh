// Activations on the GPU, forward and backward side by side, and the kernels that apply them where
// the GEMM epilogue does not. Keras 3's definitions, as csrc/activations.hpp: backward is written
// from the activation's OUTPUT a (every derivative here is a function of it), so only
// post-activation buffers are kept.
#pragma once

#include "common.cuh"

namespace fastmlp {
namespace gpu {

constexpr double kSeluScaleD = 1.0507009873554804934193349852946;
constexpr double kSeluAlphaD = 1.6732632423543772848170429916717;
constexpr double kLeakySlopeD = 0.2;

// act(z) for an elementwise activation (softmax is a row operation: softmax_row).
template <typename T>
FASTMLP_HD inline T act_value(Act act, T z) {
    switch (act) {
        case Act::Relu: return z > T(0) ? z : T(0);
        case Act::Sigmoid: return T(1) / (T(1) + m_exp(-z));
        case Act::Tanh: return m_tanh(z);
        case Act::LeakyRelu: return z > T(0) ? z : T(kLeakySlopeD) * z;
        case Act::Elu: return z > T(0) ? z : m_exp(z) - T(1);
        case Act::Selu: return z > T(0) ? T(kSeluScaleD) * z : T(kSeluScaleD * kSeluAlphaD) * (m_exp(z) - T(1));
        case Act::HardSigmoid: return m_min(m_max(z + T(3), T(0)), T(6)) / T(6);
        case Act::Softplus: return m_log1p(m_exp(-m_abs(z))) + m_max(z, T(0));
        case Act::Softsign: return z / (T(1) + m_abs(z));
        case Act::Exponential: return m_exp(z);
        default: return z;  // Linear (Softmax never reaches here)
    }
}

// d * act'(z), from the output a = act(z) and the incoming gradient d = dL/da.
template <typename T>
FASTMLP_HD inline T act_grad(Act act, T a, T d) {
    switch (act) {
        case Act::Relu: return a > T(0) ? d : T(0);
        case Act::Sigmoid: return d * (a * (T(1) - a));
        case Act::Tanh: return d * (T(1) - a * a);
        case Act::LeakyRelu: return a > T(0) ? d : T(kLeakySlopeD) * d;
        case Act::Elu: return a > T(0) ? d : d * (a + T(1));
        case Act::Selu: return a > T(0) ? T(kSeluScaleD) * d : d * (a + T(kSeluScaleD * kSeluAlphaD));
        case Act::HardSigmoid: return a > T(0) && a < T(1) ? d / T(6) : T(0);
        case Act::Softplus: return d * -m_expm1(-a);  // sigmoid(z) = 1 - e^-a
        case Act::Softsign: return d * ((T(1) - m_abs(a)) * (T(1) - m_abs(a)));
        case Act::Exponential: return d * a;
        default: return d;  // Linear
    }
}

// One row of n values in place: a := exp(a - max a) / sum exp(a - max a); the max starts at -inf.
template <typename T>
FASTMLP_HD inline void softmax_row(T* a, index_t n) {
    T m = -INFINITY;
    for (index_t j = 0; j < n; ++j) m = m_max(m, a[j]);
    T s = 0;
    for (index_t j = 0; j < n; ++j) {
        a[j] = m_exp(a[j] - m);
        s += a[j];
    }
    const T inv = T(1) / s;
    for (index_t j = 0; j < n; ++j) a[j] *= inv;
}

// One row: d := a * (d - sum(d * a)) (softmax's Jacobian-vector product), d in place.
template <typename T>
FASTMLP_HD inline void softmax_backward_row(const T* a, T* d, index_t n) {
    T dot = 0;
    for (index_t j = 0; j < n; ++j) dot += d[j] * a[j];
    for (index_t j = 0; j < n; ++j) d[j] = a[j] * (d[j] - dot);
}

// ---- kernels (functors run by an executor) ----

// a (B, N) := act(a + b) elementwise; b (N,) or null. Iteration space: B*N elements.
// The GEMM's fallback epilogue, and the activation after a bias-only epilogue (b null then).
template <typename T>
struct BiasAct {
    T* a;
    const T* b;
    index_t N;
    Act act;
    FASTMLP_HD void operator()(index_t i) const {
        T v = a[i];
        if (b) v += b[i % N];
        a[i] = act_value(act, v);
    }
};

// a (B, N) := softmax of each row, in place. Iteration space: B rows.
template <typename T>
struct SoftmaxRows {
    T* a;
    index_t N;
    FASTMLP_HD void operator()(index_t r) const { softmax_row(a + r * N, N); }
};

// d (B, N) := softmax backward of each row from a (B, N), in place. Iteration space: B rows.
template <typename T>
struct SoftmaxBackwardRows {
    const T* a;
    T* d;
    index_t N;
    FASTMLP_HD void operator()(index_t r) const { softmax_backward_row(a + r * N, d + r * N, N); }
};

// The backward pass's elementwise step and the first half of the bias gradient, in one read of d:
//   d[r, j] := act_grad(act, a[r, j], d[r, j])           (skipped for Linear; a may then be null)
//   partial[c, j] := sum of d[r, j] over the rows r of chunk c  (when partial is not null)
// d, a (B, N) row-major; partial (ceil(B / kRowChunk), N). Iteration space: chunks * N, so
// consecutive threads read consecutive columns. ColsumFinal adds the partials.
template <typename T>
struct ActBackwardColsum {
    T* d;
    const T* a;
    Act act;
    index_t B, N;
    T* partial;
    FASTMLP_HD void operator()(index_t i) const {
        const index_t c = i / N, j = i - c * N;
        const index_t r1 = m_min(B, (c + 1) * kRowChunk);
        T s = 0;
        for (index_t r = c * kRowChunk; r < r1; ++r) {
            T v = d[r * N + j];
            if (act != Act::Linear) {
                v = act_grad(act, a[r * N + j], v);
                d[r * N + j] = v;
            }
            s += v;
        }
        if (partial) partial[c * N + j] = s;
    }
};

// db (N,) := sum over chunks c, in order, of partial[c, j]. Iteration space: N columns.
template <typename T>
struct ColsumFinal {
    const T* partial;
    index_t chunks, N;
    T* db;
    FASTMLP_HD void operator()(index_t j) const {
        T s = 0;
        for (index_t c = 0; c < chunks; ++c) s += partial[c * N + j];
        db[j] = s;
    }
};

}  // namespace gpu
}  // namespace fastmlp
