// Seeded, counter-based shuffling of sample indices.
//
// Fisher-Yates (Durstenfeld) with counter-based randomness: for i = n-1 down to 1, swap positions
// i and j = floor(u_i * (i + 1) / 2^32), where u_i = splitmix64_i(stream(seed, epoch)) >> 32 is the
// i-th output of a SplitMix64 sequence, a pure function of (seed, epoch, i). The same seed gives
// the same order on every machine and thread count. j uses Lemire's multiply-shift without
// rejection: its bias is below (i + 1) / 2^32, far below anything training can notice. The NumPy
// reference (fastmlp.reference.kernels.permutation) computes the same permutation.
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

#include "common.hpp"

FASTMLP_ISA_BEGIN

constexpr std::uint64_t kGolden = 0x9E3779B97F4A7C15ULL;

inline std::uint64_t mix64(std::uint64_t z) {
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

inline std::uint64_t shuffle_stream(std::uint64_t seed, std::uint64_t epoch) {
    return mix64(seed + kGolden * (epoch + 1));
}

// perm (n,) overwritten with the epoch's order of 0..n-1.
inline void shuffle_permutation(std::vector<std::uint32_t>& perm, index_t n, std::uint64_t seed,
                                std::uint64_t epoch) {
    require(n >= 0 && n < (index_t(1) << 32),
            "Cannot shuffle " + std::to_string(n) + " samples: expected between 0 and 2**32 - 1.");
    perm.resize(n);
    for (index_t i = 0; i < n; ++i) perm[i] = static_cast<std::uint32_t>(i);
    const std::uint64_t stream = shuffle_stream(seed, epoch);
    // The j's of a block of i's first, in a loop of independent iterations that the compiler
    // vectorizes; then the block's swaps, which depend on each other, in order.
    constexpr index_t kBlock = 1024;
    std::uint32_t js[kBlock];
    for (index_t hi = n - 1; hi > 0; hi -= kBlock) {
        const index_t lo = std::max<index_t>(1, hi - kBlock + 1);
        std::uint64_t z = stream + kGolden * std::uint64_t(lo + 1);  // stream + kGolden (i + 1), by additions
        for (index_t i = lo; i <= hi; ++i, z += kGolden) {
            const std::uint64_t u = mix64(z) >> 32;
            js[i - lo] = static_cast<std::uint32_t>((u * std::uint64_t(i + 1)) >> 32);
        }
        for (index_t i = hi; i >= lo; --i) {
            const index_t j = js[i - lo];
            const std::uint32_t t = perm[i];
            perm[i] = perm[j];
            perm[j] = t;
        }
    }
}

FASTMLP_ISA_END
