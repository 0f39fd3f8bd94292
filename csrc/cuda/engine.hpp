// The CUDA engine's interface, free of CUDA types, for the bindings (bindings_cuda.cpp).
//
// Same model and arena layout as the CPU engine (csrc/engine_api.hpp): for each layer its kernel
// (in, out) row-major, then its bias. Parameters, gradients, optimizer state and the training data
// live on the device for the whole fit; the host keeps a mirror of each arena for the NumPy views
// (see host_arena).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <vector>

#include "../common.hpp"

namespace fastmlp {
namespace gpu {

// A setting the CUDA backend does not run (an activation, a loss, a regularizer, an optimizer
// option): Python sees NotImplementedError.
struct unsupported : std::logic_error {
    using std::logic_error::logic_error;
};

enum class Arena { Params, Grads, Velocity, Second };

template <typename T>
class EngineApi {
public:
    virtual ~EngineApi() = default;

    virtual const std::vector<LayerSpec>& layers() const = 0;
    virtual index_t kernel_offset(std::size_t l) const = 0;
    virtual index_t bias_offset(std::size_t l) const = 0;  // -1 without bias
    virtual index_t arena_size(Arena a) const = 0;         // 0 when the optimizer keeps no such state
    virtual index_t target_cols() const = 0;

    // The host mirror of an arena, refreshed from the device now. The caller may write into it
    // until the next operation, which uploads it first. The params mirror is also refreshed at
    // the end of every epoch.
    virtual T* host_arena(Arena a) = 0;
    virtual void params_copy(T* out) = 0;
    virtual void set_params(const T* values) = 0;
    virtual std::int64_t iterations() = 0;
    virtual void set_iterations(std::int64_t t) = 0;
    virtual void set_loss_options(double huber_delta, double label_smoothing) = 0;
    virtual OptimizerConfig& opt() = 0;
    virtual void apply_opt() = 0;  // after opt() changed: checks it and uploads it

    // Training on data resident on the device: set_train_data uploads X (n, in_0) and
    // Y (n, target_cols()); begin_epoch fixes the epoch's order (the CPU engine's permutation);
    // train_steps runs up to max_steps batches of it (all that remain when max_steps <= 0).
    virtual void set_train_data(const T* X, const T* Y, index_t n) = 0;
    virtual void begin_epoch(index_t n, index_t batch_size, bool shuffle, std::uint64_t seed, std::uint64_t epoch) = 0;
    virtual EpochSums train_steps(index_t max_steps) = 0;
    virtual void predict(const T* X, index_t n, T* out, index_t batch_size) = 0;
    virtual EpochSums evaluate(const T* X, const T* Y, index_t n, index_t batch_size) = 0;
    virtual double compute_gradients(const T* X, const T* Y, index_t n) = 0;

    // "auto" (the fused kernel for tiny networks, CUDA Graphs of the multi-kernel step otherwise),
    // "fused" or "graphs" (where the network allows it); "graphs" without capture on the host.
    virtual void set_path(const std::string& path) = 0;
    virtual std::string path() const = 0;  // the path of the current epoch
    // "cublaslt" (epilogues where supported, plain products otherwise) or "naive" (the reference).
    virtual void set_gemm(const std::string& gemm) = 0;
    virtual std::string gemm_report() const = 0;

    std::mutex& mutex() { return mutex_; }
    void set_interrupt_check(std::function<bool()> check) { interrupted_ = std::move(check); }

protected:
    std::mutex mutex_;
    std::function<bool()> interrupted_;
};

// Device status: whether a usable GPU is there, and why not.
struct DeviceStatus {
    bool ok = false;
    std::string reason;  // empty when ok
    int count = 0;
    std::string name;
    int major = 0, minor = 0;
    int runtime_version = 0, driver_version = 0, cublaslt_version = 0;
};
DeviceStatus device_status();

// A new engine on the GPU, or on the host (emulate: the same kernels and steps run as host loops).
// epilogues (emulation only): whether the emulated products take the bias/ReLU epilogues, so that
// both of the engine's forward paths can be checked.
template <typename T>
std::unique_ptr<EngineApi<T>> make_gpu_engine(std::vector<LayerSpec> layers, LossKind loss,
                                              std::vector<MetricKind> metrics, OptimizerConfig opt);
template <typename T>
std::unique_ptr<EngineApi<T>> make_host_engine(std::vector<LayerSpec> layers, LossKind loss,
                                               std::vector<MetricKind> metrics, OptimizerConfig opt, bool epilogues);

}  // namespace gpu
}  // namespace fastmlp
