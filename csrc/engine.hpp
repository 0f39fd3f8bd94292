// The native training engine: a Sequential stack of Dense layers that owns its parameters,
// gradients and optimizer state in flat arenas and runs whole epochs without returning to Python.
//
// Arena layout: for each layer l in order, its kernel W_l (in_l, out_l) row-major, then its bias
// b_l (out_l,) when it has one. params, grads and velocity share that layout, so the optimizer is
// one streaming loop over the arena and a layer's weights are views at fixed offsets.
#pragma once

#include <cstdint>
#include <mutex>
#include <vector>

#include "common.hpp"
#include "dense.hpp"

namespace fastmlp {

struct LayerSpec {
    index_t in = 0;
    index_t out = 0;
    Act act = Act::Linear;
    bool use_bias = true;
};

struct SGDConfig {
    double learning_rate = 0.01;
    double momentum = 0.0;
    double decay = 0.0;
    bool nesterov = false;
};

// Running sums of one epoch: the loss and metric values summed over samples.
struct EpochSums {
    double loss = 0;
    std::vector<double> metrics;
    index_t samples = 0;
    index_t steps_done = 0;
    index_t steps_total = 0;
};

template <typename T>
class Engine {
public:
    Engine(std::vector<LayerSpec> layers, LossKind loss, std::vector<MetricKind> metrics, SGDConfig sgd);

    // Arenas and the per-layer offsets of kernel and bias (bias offset -1 when use_bias=False).
    std::vector<T>& params() { return params_; }
    std::vector<T>& grads() { return grads_; }
    std::vector<T>& velocity() { return velocity_; }
    const std::vector<LayerSpec>& layers() const { return layers_; }
    index_t kernel_offset(std::size_t l) const { return w_off_.at(l); }
    index_t bias_offset(std::size_t l) const { return b_off_.at(l); }

    std::int64_t iterations() const { return iterations_; }
    void set_iterations(std::int64_t t);
    SGDConfig& sgd() { return sgd_; }
    std::size_t num_metrics() const { return metrics_.size(); }
    index_t target_cols() const;

    // Training. begin_epoch fixes the epoch's sample order (a seeded shuffle, or 0..n-1) and
    // clears the running sums; train_steps runs up to max_steps batches of it (all that remain
    // when max_steps <= 0) and returns the sums so far. X (n, in_0), Y (n, target_cols()).
    void begin_epoch(index_t n, index_t batch_size, bool shuffle, std::uint64_t seed, std::uint64_t epoch);
    EpochSums train_steps(const T* X, const T* Y, index_t n, index_t max_steps);

    // Inference: out (n, out_last) overwritten. evaluate returns loss and metric sums over n.
    void predict(const T* X, index_t n, T* out, index_t batch_size);
    EpochSums evaluate(const T* X, const T* Y, index_t n, index_t batch_size);

    // One forward + backward on a given batch without updating: fills grads(), returns the loss
    // sum. Used by gradient checks.
    double compute_gradients(const T* X, const T* Y, index_t n);

    // Held by every public operation: a model is used by one thread at a time.
    std::mutex& mutex() { return mutex_; }

private:
    void ensure_batch(index_t B);
    const T* forward(const T* X, index_t B, std::vector<std::vector<T>>& acts);
    double forward_backward(const T* X, const T* Y, index_t B, std::vector<double>* metric_sums);
    void check_labels(const T* Y, index_t n) const;
    double forward_backward_narrow(index_t B, index_t L, std::vector<double>* metric_sums);

    std::vector<LayerSpec> layers_;
    LossKind loss_;
    std::vector<MetricKind> metrics_;
    SGDConfig sgd_;
    std::int64_t iterations_ = 0;

    std::vector<T> params_, grads_, velocity_;
    std::vector<index_t> w_off_, b_off_;

    // Tiny networks train on the feature-major kernels of narrow.hpp (decided by the widths alone,
    // so a given model always takes the same path and gives the same bits).
    bool narrow_ = false;
    static constexpr index_t kNarrowWidth = 16;  // the widest layer (or input) the narrow path takes

    // Batch buffers, sized for the largest batch seen (in lanes on the narrow path).
    index_t cap_ = 0;
    std::vector<std::vector<T>> acts_;  // per layer (B, out_l)
    std::vector<T> xb_, yb_, delta_a_, delta_b_, loss_work_, lane_tmp_;
    DenseScratch<T> scratch_;

    // Epoch state.
    std::vector<std::uint32_t> order_;
    index_t epoch_n_ = 0, batch_size_ = 0;
    EpochSums sums_;

    std::mutex mutex_;
};

}  // namespace fastmlp
