// Shared pieces of the CUDA backend (fastmlp._cuda): error checks, the device-side state of a
// training run, math usable in both compilation passes, and the two executors every kernel body
// runs on.
//
// Every kernel here is written once, as a functor with `__host__ __device__ operator()(i)` for one
// index of its iteration space (an element, a row, a column chunk), and run by an executor:
//   GpuExec (engine.cu)   a grid-stride kernel on the engine's stream (for_each_kernel below);
//   HostExec              a plain loop on the host.
// The engine is a template over the executor, so `_cuda.HostEngine32` runs the very same kernel
// bodies, argument layouts (the column-major GEMM calls included) and step sequence on the CPU:
// the tests check it against the CPU engine on machines without a GPU. Reductions are written as
// fixed-size chunks summed in a fixed order, never with atomics: results do not depend on the
// launch configuration, and the emulation computes the same sums in the same order.
#pragma once

#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>
#include <stdexcept>
#include <string>

#include "../common.hpp"

#define FASTMLP_HD __host__ __device__

namespace fastmlp {
namespace gpu {

[[noreturn]] void throw_cuda(cudaError_t err, const char* call, const char* file, int line);

#define FASTMLP_CUDA_CHECK(call)                                                         \
    do {                                                                                 \
        const cudaError_t fastmlp_err_ = (call);                                         \
        if (fastmlp_err_ != cudaSuccess) ::fastmlp::gpu::throw_cuda(fastmlp_err_, #call, __FILE__, __LINE__); \
    } while (0)

// At most this many metrics per model (Keras's five kinds, with room for repeats).
constexpr int kMaxMetrics = 8;
// Rows per chunk of the batch reductions (column sums, loss sums): partial sums over consecutive
// rows, then the partials in chunk order.
constexpr index_t kRowChunk = 32;
// Piecewise-constant schedules: at most this many boundaries on the GPU.
constexpr int kMaxPieces = 32;

// The state of a training run that lives on the device, so that a captured step reads and
// advances it without the host: which batch comes next, how many updates were applied, why the
// epoch stopped, and the epoch's running sums. evaluate and compute_gradients use a second one
// for their sums only.
struct StepState {
    std::int64_t step;        // steps completed this epoch; the next batch starts at row step * batch_size
    std::int64_t iterations;  // optimizer updates applied (Keras's optimizer.iterations)
    std::int64_t samples;     // samples of the completed steps
    int stop;                 // a StopReason (common.hpp) once the epoch stopped; 0 while it runs
    int weights_bad;          // set by the optimizer when an updated weight is not finite
    double loss;              // sum over the completed steps of each batch's loss sum
    double metrics[kMaxMetrics];
    double lr;                // the learning rate of the update in progress (in T's precision)
    double alpha;             // Adam's bias-corrected step size of that update
};

// ---- math in both passes ----

FASTMLP_HD inline float m_exp(float x) { return expf(x); }
FASTMLP_HD inline double m_exp(double x) { return exp(x); }
FASTMLP_HD inline float m_log(float x) { return logf(x); }
FASTMLP_HD inline double m_log(double x) { return log(x); }
FASTMLP_HD inline float m_tanh(float x) { return tanhf(x); }
FASTMLP_HD inline double m_tanh(double x) { return tanh(x); }
FASTMLP_HD inline float m_log1p(float x) { return log1pf(x); }
FASTMLP_HD inline double m_log1p(double x) { return log1p(x); }
FASTMLP_HD inline float m_expm1(float x) { return expm1f(x); }
FASTMLP_HD inline double m_expm1(double x) { return expm1(x); }
FASTMLP_HD inline float m_sqrt(float x) { return sqrtf(x); }
FASTMLP_HD inline double m_sqrt(double x) { return sqrt(x); }
FASTMLP_HD inline float m_pow(float x, float y) { return powf(x, y); }
FASTMLP_HD inline double m_pow(double x, double y) { return pow(x, y); }
FASTMLP_HD inline float m_cos(float x) { return cosf(x); }
FASTMLP_HD inline double m_cos(double x) { return cos(x); }
FASTMLP_HD inline float m_floor(float x) { return floorf(x); }
FASTMLP_HD inline double m_floor(double x) { return floor(x); }
template <typename T>
FASTMLP_HD inline T m_abs(T x) { return x < T(0) ? -x : x; }
template <typename T>
FASTMLP_HD inline T m_min(T a, T b) { return b < a ? b : a; }
template <typename T>
FASTMLP_HD inline T m_max(T a, T b) { return a < b ? b : a; }
// Finite test that survives any compiler flag: x - x is 0 for finite x, NaN otherwise.
template <typename T>
FASTMLP_HD inline bool m_finite(T x) { return x - x == T(0); }
FASTMLP_HD inline bool m_finite_d(double x) { return x - x == 0.0; }

// ---- executors ----

// Runs a functor over [0, n) on the host, in index order.
struct HostExec {
    template <class F>
    void for_each(index_t n, const F& f) const {
        for (index_t i = 0; i < n; ++i) f(i);
    }
};

#ifdef __CUDACC__
// f(i) for every i in [0, n), grid-stride; launched by GpuExec (engine.cu).
template <class F>
__global__ void __launch_bounds__(256) for_each_kernel(index_t n, F f) {
    const index_t stride = static_cast<index_t>(gridDim.x) * blockDim.x;
    for (index_t i = static_cast<index_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) f(i);
}
#endif

}  // namespace gpu
}  // namespace fastmlp
