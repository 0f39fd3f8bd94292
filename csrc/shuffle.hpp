// Seeded, counter-based shuffling of sample indices.
//
// Fisher-Yates (Durstenfeld) with counter-based randomness: for i = n-1 down to 1, swap positions
// i and j = floor(u_i * (i + 1) / 2^32), where u_i is a 32-bit half of w_k = splitmix64_k(stream(seed,
// epoch)), the k-th output of a SplitMix64 sequence, k = floor(i / 2): the low half for even i,
// the high half for odd i. Each draw is a pure function of (seed, epoch, i); the same seed gives
// the same order on every machine and thread count. j uses Lemire's multiply-shift without
// rejection: its bias is below (i + 1) / 2^32, far below anything training can notice. The NumPy
// reference (fastmlp.reference.kernels.permutation) computes the same permutation.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
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

// The epoch's swaps: js (n,) overwritten with js[i] = j_i for 1 <= i < n (js[0] unused). Two
// independent loops that vectorize: the 64-bit outputs w_k into js's storage (one for two i's),
// then each i's multiply-shift in place.
inline void shuffle_swaps(std::vector<std::uint32_t>& js, index_t n, std::uint64_t seed, std::uint64_t epoch) {
    require(n >= 0 && n < (index_t(1) << 32),
            "Cannot shuffle " + std::to_string(n) + " samples: expected between 0 and 2**32 - 1.");
    const index_t words = (n + 1) / 2;
    js.resize(2 * words);
    std::uint32_t* u = js.data();
    std::uint64_t z = shuffle_stream(seed, epoch) + kGolden;  // stream + kGolden (k + 1), by additions
    for (index_t k = 0; k < words; ++k, z += kGolden) {
        const std::uint64_t w = mix64(z);
        if constexpr (__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__) {
            std::memcpy(u + 2 * k, &w, sizeof(w));  // [low, high]: u_2k, u_2k+1
        } else {
            u[2 * k] = static_cast<std::uint32_t>(w);
            u[2 * k + 1] = static_cast<std::uint32_t>(w >> 32);
        }
    }
    // (i + 1 < 2^32 as a 32-bit count, so that the products are 32 x 32 bits)
    std::uint32_t count = 2;
    for (index_t i = 1; i < n; ++i, ++count)
        u[i] = static_cast<std::uint32_t>((std::uint64_t(u[i]) * std::uint64_t(count)) >> 32);
    js.resize(n);
}

// The swaps applied in order, i = n-1 down to 1, to any sequence: swap(i, j) exchanges its
// elements i and j. On 0..n-1 they give the permutation; on the rows themselves, the rows in the
// permutation's order.
template <typename Swap>
inline void apply_swaps(const std::vector<std::uint32_t>& js, Swap&& swap) {
    const std::uint32_t* j = js.data();  // (a swap through memcpy may alias the vector's members)
#pragma GCC unroll 4
    for (index_t i = static_cast<index_t>(js.size()) - 1; i > 0; --i) swap(i, static_cast<index_t>(j[i]));
}

// perm (n,) overwritten with the epoch's order of 0..n-1.
inline void shuffle_permutation(std::vector<std::uint32_t>& perm, index_t n, std::uint64_t seed,
                                std::uint64_t epoch) {
    std::vector<std::uint32_t> js;
    shuffle_swaps(js, n, seed, epoch);
    perm.resize(n);
    for (index_t i = 0; i < n; ++i) perm[i] = static_cast<std::uint32_t>(i);
    apply_swaps(js, [&](index_t i, index_t j) { std::swap(perm[i], perm[j]); });
}

FASTMLP_ISA_END
