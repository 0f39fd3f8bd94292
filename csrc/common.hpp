// Shared vocabulary of the fastmlp kernels: enums for activations, losses and metrics, and the
// argument checks that turn a bad call into a C++ exception (never an abort).
#pragma once

#include <cstdint>
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

inline void require(bool ok, const std::string& what) {
    if (!ok) throw std::invalid_argument(what);
}

}  // namespace fastmlp
