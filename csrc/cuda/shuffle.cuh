// The epoch's batches on the GPU. The sample order is csrc/shuffle.hpp's seeded Fisher-Yates,
// computed on the host (the same permutation as the CPU engine, bit for bit) and uploaded once per
// epoch; each step then gathers its rows from the training data resident on the device.
#pragma once

#include "common.cuh"

namespace fastmlp {
namespace gpu {

// xb (B, K) := the rows X[order[base + r]], yb (B, yc) := the rows Y[order[base + r]], r < B, with
// base = st->step * batch_size read on the device (the step a captured graph runs is not fixed
// when it is captured). X (n, K), Y (n, yc) row-major; order (n,). Nothing once the epoch stopped,
// so that the stopped step's batch stays in xb. Iteration space: B * (K + yc).
template <typename T>
struct GatherBatch {
    T* xb;
    T* yb;
    const T* X;
    const T* Y;
    const std::uint32_t* order;
    const StepState* st;
    index_t batch_size, B, K, yc;
    FASTMLP_HD void operator()(index_t i) const {
        if (st->stop) return;
        const index_t base = st->step * batch_size;
        if (i < B * K) {
            const index_t r = i / K, k = i - r * K;
            xb[i] = X[static_cast<index_t>(order[base + r]) * K + k];
        } else {
            const index_t e = i - B * K, r = e / yc, j = e - r * yc;
            yb[e] = Y[static_cast<index_t>(order[base + r]) * yc + j];
        }
    }
};

}  // namespace gpu
}  // namespace fastmlp
