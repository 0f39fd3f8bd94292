// Shared vocabulary of the fastmlp kernels: enums for activations, losses and metrics, and the
// argument checks that turn a bad call into a C++ exception (never an abort).
#pragma once

#include <cstdint>
#if defined(__SSE__)
#include <xmmintrin.h>
#endif
#include <stdexcept>
#include <string>

namespace fastmlp {

using index_t = std::int64_t;

enum class Act { Linear, Relu, Sigmoid, Tanh, Softmax };
enum class LossKind { BinaryCrossentropy, CategoricalCrossentropy, SparseCategoricalCrossentropy, MeanSquaredError };
enum class MetricKind { BinaryAccuracy, CategoricalAccuracy, SparseCategoricalAccuracy };

// Keras's epsilon for clipping probabilities inside the cross-entropies.
constexpr double kEpsilon = 1e-7;

Act parse_act(const std::string& name);
LossKind parse_loss(const std::string& name);
MetricKind parse_metric(const std::string& name);

// While alive, float operations on this thread flush subnormal results and inputs to zero (the
// x86 MXCSR FTZ and DAZ bits; a no-op elsewhere), restoring the caller's mode on exit. Subnormal
// arithmetic is up to a hundred times slower, and momentum drives the state of dead units through
// that range; TensorFlow trains in this mode too. It is deterministic: the same bits every run.
class FlushDenormals {
public:
#if defined(__SSE__)
    FlushDenormals() : saved_(_mm_getcsr()) { _mm_setcsr(saved_ | 0x8040u); }
    ~FlushDenormals() { _mm_setcsr(saved_); }

private:
    unsigned saved_;
#endif
};

inline void require(bool ok, const std::string& what) {
    if (!ok) throw std::invalid_argument(what);
}

}  // namespace fastmlp
