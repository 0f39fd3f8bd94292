// Inverted dropout (Keras's Dropout(rate, seed)) with counter-based masks.
//
// In training, each element x of a layer's input is kept with probability 1 - rate and divided by
// keep = 1 - rate, or set to 0. Whether element (r, j) (batch row r, unit j of K) is kept at update
// number t (the optimizer's iterations before the step) is a pure function of (seed, t, r, j):
//   u = mix64(stream(seed, t) + kGolden * (r * K + j + 1)) >> 32,   kept iff u >= floor(rate * 2^32)
// with stream(seed, t) = mix64(mix64(seed) + kGolden * (t + 1)) (SplitMix64, as shuffle.hpp). So
// the mask does not depend on the thread count, the instruction set or the memory layout (the
// feature-major narrow path keys element (j, r) the same way), and the NumPy reference
// (fastmlp.reference.kernels.dropout_mask) draws the same bits. A model reloaded with its optimizer
// state (iterations) resumes with the masks of uninterrupted training.
#pragma once

#include <cstdint>

#include "common.hpp"
#include "shuffle.hpp"

FASTMLP_ISA_BEGIN

inline std::uint64_t dropout_stream(std::uint64_t seed, std::int64_t iteration) {
    return mix64(mix64(seed) + kGolden * (static_cast<std::uint64_t>(iteration) + 1));
}

// Elements whose draw u (32 bits) falls below this are dropped.
inline std::uint64_t dropout_threshold(double rate) {
    return static_cast<std::uint64_t>(rate * 4294967296.0);
}

inline bool dropout_kept(std::uint64_t stream, std::uint64_t threshold, index_t element) {
    return (mix64(stream + kGolden * static_cast<std::uint64_t>(element + 1)) >> 32) >= threshold;
}

// Row-major forward: X (B, K) -> out (B, K) := kept ? x / keep : 0, mask (B, K) := kept (1) or 0.
template <typename T>
void dropout_forward(T* out, std::uint8_t* mask, const T* X, index_t B, index_t K, double rate,
                     std::uint64_t stream) {
    const std::uint64_t threshold = dropout_threshold(rate);
    const T keep = T(1.0 - rate);
    for (index_t k = 0; k < B * K; ++k) {
        mask[k] = dropout_kept(stream, threshold, k);
        out[k] = mask[k] ? X[k] / keep : T(0);
    }
}

// Feature-major forward (narrow.hpp layout): X (K, L), lanes r < B real, the rest padding (dropped:
// zero). Element (j, r) is keyed as row-major (r, j).
template <typename T>
void dropout_forward_lanes(T* out, std::uint8_t* mask, const T* X, index_t B, index_t L, index_t K, double rate,
                           std::uint64_t stream) {
    const std::uint64_t threshold = dropout_threshold(rate);
    const T keep = T(1.0 - rate);
    for (index_t j = 0; j < K; ++j)
        for (index_t r = 0; r < L; ++r) {
            const index_t k = j * L + r;
            mask[k] = r < B && dropout_kept(stream, threshold, r * K + j);
            out[k] = mask[k] ? X[k] / keep : T(0);
        }
}

// Backward, either layout: d (n,) holds dL/d(out) on entry, dL/dX on exit: kept ? d / keep : 0.
template <typename T>
void dropout_backward(T* d, const std::uint8_t* mask, index_t n, double rate) {
    const T keep = T(1.0 - rate);
    for (index_t k = 0; k < n; ++k) d[k] = mask[k] ? d[k] / keep : T(0);
}

FASTMLP_ISA_END
