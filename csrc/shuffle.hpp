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

#if FASTMLP_VEC_BYTES >= 32
#include <immintrin.h>
#endif

FASTMLP_ISA_BEGIN

constexpr std::uint64_t kGolden = 0x9E3779B97F4A7C15ULL;

// SplitMix64's output function, on one 64-bit word or lane by lane on a GCC vector of them.
template <typename U>
inline U mix64(U z) {
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
    index_t k = 0;
#if FASTMLP_VEC_BYTES >= 32
    if constexpr (__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__) {
        // Four words at a time, written as a vector: GCC does not vectorize the scalar loop's
        // 64-bit multiplies by itself (AVX2 has none; it builds them from 32-bit ones here).
        typedef std::uint64_t w4 __attribute__((vector_size(32)));
        w4 zv = {z, z + kGolden, z + 2 * kGolden, z + 3 * kGolden};
        for (; k + 4 <= words; k += 4, zv += 4 * kGolden) {
            const w4 w = mix64(zv);
            std::memcpy(u + 2 * k, &w, sizeof(w));  // [low, high] of each word: u_2k, u_2k+1, ...
        }
        z += static_cast<std::uint64_t>(k) * kGolden;
    }
#endif
    for (; k < words; ++k, z += kGolden) {
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
    index_t i = 1;
#if FASTMLP_VEC_BYTES >= 32
    // Eight at a time: the even lanes' products, then the odd lanes' (shifted down), each 64 bits
    // wide, and the high halves of both blended back into place.
    __m256i c = _mm256_add_epi32(_mm256_set1_epi32(2), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
    const __m256i eight = _mm256_set1_epi32(8);
    for (; i + 8 <= n; i += 8, count += 8, c = _mm256_add_epi32(c, eight)) {
        const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(u + i));
        const __m256i even = _mm256_srli_epi64(_mm256_mul_epu32(v, c), 32);
        const __m256i odd = _mm256_mul_epu32(_mm256_srli_epi64(v, 32), _mm256_srli_epi64(c, 32));
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(u + i), _mm256_blend_epi32(even, odd, 0xAA));
    }
#endif
    for (; i < n; ++i, ++count)
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
