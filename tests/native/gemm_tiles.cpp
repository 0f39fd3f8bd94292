// The GEMM (csrc/gemm.hpp) built with register tiles of other heights than the shipped ones
// (FASTMLP_GEMM_MR), small cache blocks (FASTMLP_GEMM_KC/MC/NC) and the other tile order and thread
// split (FASTMLP_GEMM_ROW_ORDER/ROWSPLIT/FIXED_SHARE/MIN_CLAIM), against gemm_naive: the same bits
// whatever the tile, the blocks, the order and the thread that took which rows, as gemm.hpp's
// contract says. Built and run by .ci/sanitize under AddressSanitizer and UndefinedBehaviorSanitizer,
// once per tile height and instruction set, and once under ThreadSanitizer:
//   g++ -std=c++17 -O1 -fsanitize=address,undefined -Icsrc -DFASTMLP_GEMM_MR=10 \
//       -DFASTMLP_ISA=avx2 -DFASTMLP_VEC_BYTES=32 '-DFASTMLP_ISA_TARGET="avx2,fma"' \
//       tests/native/gemm_tiles.cpp csrc/parallel.cpp -pthread
// pack_a's transposes store whole vectors whose spare lanes the next store overwrites: a store past
// a packed panel is an ASan report. A variant the CPU cannot run exits 0 with a line saying so.
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <vector>

#include "gemm.hpp"

using namespace fastmlp;

namespace {

#define FASTMLP_STR_(x) #x
#define FASTMLP_STR(x) FASTMLP_STR_(x)

bool cpu_runs_variant() {
#if FASTMLP_VEC_BYTES == 64
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
#elif FASTMLP_VEC_BYTES == 32
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#else
    return true;
#endif
}

template <typename T>
int check(index_t M, index_t N, index_t K, bool ta, bool tb, bool bias, Act act, std::mt19937& rng) {
    std::uniform_real_distribution<double> u(-1, 1);
    std::vector<T> A(M * K), B(K * N), b(round_up(N, gemm_nr<T>()), T(0));
    for (auto& x : A) x = T(u(rng));
    for (auto& x : B) x = T(u(rng));
    for (index_t n = 0; n < N; ++n) b[n] = T(u(rng));
    const index_t ars = ta ? 1 : K, acs = ta ? M : 1, brs = tb ? 1 : N, bcs = tb ? K : 1;
    const index_t ldc = N + 3;  // C's rows apart from each other: a write past a row shows
    std::vector<T> C(M * ldc, T(7)), R(M * ldc, T(7));
    const T* pb = bias ? b.data() : nullptr;
    gemm<T>(C.data(), ldc, A.data(), ars, acs, B.data(), brs, bcs, M, N, K, pb, act);
    gemm_naive<T>(R.data(), ldc, A.data(), ars, acs, B.data(), brs, bcs, M, N, K, pb, act);
    if (std::memcmp(C.data(), R.data(), C.size() * sizeof(T)) != 0) {
        std::printf("FAILED: %s M=%ld N=%ld K=%ld ta=%d tb=%d bias=%d act=%d kMR=%d\n",
                    sizeof(T) == 4 ? "float" : "double", long(M), long(N), long(K), int(ta), int(tb), int(bias),
                    int(act), kMR);
        return 1;
    }
    return 0;
}

}  // namespace

int main() {
    if (!cpu_runs_variant()) {
        std::printf("gemm_tiles: %s, kMR %d: this CPU cannot run it, skipped\n", FASTMLP_STR(FASTMLP_ISA), kMR);
        return 0;
    }
    std::mt19937 rng(1);
    int failed = 0, cases = 0;
    const index_t dims[] = {1, 3, 7, 17, 33, kMR - 1, kMR + 1, 2 * kMR + 3, 70, 130};
    for (int threads : {1, 2}) {
        set_num_threads(threads);
        for (index_t M : dims)
            for (index_t N : dims)
                for (index_t K : {index_t(1), index_t(9), index_t(40), index_t(67)})
                    for (int t = 0; t < 4; ++t) {
                        const bool ta = t & 1, tb = t & 2;
                        const Act act = (M + N) % 2 ? Act::Relu : Act::Linear;
                        failed += check<float>(M, N, K, ta, tb, N % 3 == 0, act, rng);
                        failed += check<double>(M, N, K, ta, tb, N % 3 == 1, act, rng);
                        cases += 2;
                    }
        // Large enough for the threads and the shared packed A.
        failed += check<float>(300, 520, 70, false, false, true, Act::Relu, rng);
        failed += check<float>(260, 130, 90, true, false, false, Act::Linear, rng);
        failed += check<double>(150, 300, 70, false, true, true, Act::Linear, rng);
        cases += 3;
    }
    std::printf("gemm_tiles: %s, kMR %d, kKC %ld, kMC %ld, kNC %ld, %s order, row split from %ld: %d of %d products "
                "differ from gemm_naive\n",
                FASTMLP_STR(FASTMLP_ISA), kMR, long(kKC), long(kMC), long(kNC), kRowOrder ? "row" : "column",
                long(kRowSplit), failed, cases);
    return failed ? 1 : 0;
}
