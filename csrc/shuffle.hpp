// Seeded, counter-based shuffling of sample indices.
//
// Each index i of epoch e gets the 32-bit key  key(i) = splitmix64_i(stream(seed, e)) >> 32, the
// i-th output of a SplitMix64 sequence (a counter-based generator: a pure function of seed, epoch
// and i). The epoch's order is the indices sorted by (key, i): a stable sort, so ties keep index
// order. The NumPy reference (fastmlp.reference.shuffle) computes the same permutation.
#pragma once

#include <cstdint>
#include <vector>

#include "common.hpp"

namespace fastmlp {

constexpr std::uint64_t kGolden = 0x9E3779B97F4A7C15ULL;

inline std::uint64_t mix64(std::uint64_t z) {
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

inline std::uint64_t shuffle_stream(std::uint64_t seed, std::uint64_t epoch) {
    return mix64(seed + kGolden * (epoch + 1));
}

// perm (n,) overwritten with the epoch's order; tmp is scratch. LSD radix sort of the packed
// (key << 32 | i) values on the key, 11 + 11 + 10 bits.
inline void shuffle_permutation(std::vector<std::uint64_t>& packed, std::vector<std::uint64_t>& tmp,
                                index_t n, std::uint64_t seed, std::uint64_t epoch) {
    require(n >= 0 && n < (index_t(1) << 32), "shuffle: the number of samples must be below 2**32");
    packed.resize(n);
    tmp.resize(n);
    const std::uint64_t stream = shuffle_stream(seed, epoch);
    for (index_t i = 0; i < n; ++i) {
        const std::uint64_t key = mix64(stream + kGolden * std::uint64_t(i + 1)) >> 32;
        packed[i] = key << 32 | std::uint64_t(i);
    }
    const int shifts[3] = {32, 43, 54};
    const int bits[3] = {11, 11, 10};
    for (int pass = 0; pass < 3; ++pass) {
        const std::uint64_t mask = (std::uint64_t(1) << bits[pass]) - 1;
        std::vector<index_t> count(std::size_t(mask) + 2, 0);
        for (index_t i = 0; i < n; ++i) ++count[((packed[i] >> shifts[pass]) & mask) + 1];
        for (std::size_t d = 1; d < count.size(); ++d) count[d] += count[d - 1];
        for (index_t i = 0; i < n; ++i) tmp[count[(packed[i] >> shifts[pass]) & mask]++] = packed[i];
        packed.swap(tmp);
    }
}

}  // namespace fastmlp
