// The native training engine's interface, shared by its ISA variants.
//
// An engine is a Sequential stack of Dense layers that owns its parameters, gradients and
// optimizer state in flat arenas and runs whole epochs without returning to Python.
// Arena layout: for each layer l in order, the gamma and beta of its input's batch normalization
// (in_l,) each when it has one, its kernel W_l (in_l, out_l) row-major, its bias b_l (out_l,) when it
// has one, then the gamma and beta of its output's batch normalization (out_l,): Keras's order of
// the trainable weights. params, grads and velocity share that layout, so the optimizer is one
// streaming loop over the arena and a layer's weights are views at fixed offsets. The batch
// normalizations' moving means and variances are not trained: they live in moving(), per layer the
// input's (mean, variance), then the output's.
//
// EngineBase holds that state; the compute (engine.hpp) is compiled once per instruction set and
// chosen at run time (make_engine): every variant computes the same bits. EngineBase's own code is
// defined out of line, in the baseline compilation only (dispatch.cpp).
#pragma once

#include <cmath>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "common.hpp"

namespace fastmlp {

template <typename T>
class EngineBase {
public:
    EngineBase(std::vector<LayerSpec> layers, LossKind loss, std::vector<MetricKind> metrics, OptimizerConfig opt);
    virtual ~EngineBase() = default;

    std::vector<T>& params() { return params_; }
    // The gradients of compute_gradients and shard_gradients. After train_steps they are
    // scratch: with the SGD step fused into the backward (Engine::sgd_fusable_), the kernels'
    // gradients are consumed as they are made and never stored whole.
    std::vector<T>& grads() { return grads_; }
    std::vector<T>& velocity() { return velocity_; }  // the optimizer's first state arena
    std::vector<T>& second() { return second_; }      // its second (Adam's v, RMSprop's momentum)
    const std::vector<LayerSpec>& layers() const { return layers_; }
    const std::vector<MetricKind>& metrics() const { return metrics_; }
    index_t kernel_offset(std::size_t l) const { return w_off_.at(l); }
    index_t bias_offset(std::size_t l) const { return b_off_.at(l); }  // -1 without bias
    // Where layer l's input (input = true) or output batch normalization keeps its gamma and beta in
    // the parameter arenas, and its moving mean in moving() (the variance follows it); -1: absent.
    struct BatchNormOffsets {
        index_t gamma = -1, beta = -1, moving = -1;
    };
    const BatchNormOffsets& bn_offsets(std::size_t l, bool input) const {
        return (input ? bn_in_off_ : bn_out_off_).at(l);
    }
    std::vector<T>& moving() { return moving_; }
    bool has_batchnorm() const { return !moving_.empty(); }
    std::int64_t iterations() const { return iterations_; }
    void set_iterations(std::int64_t t) {
        require(t >= 0, "iterations must be non-negative; received " + std::to_string(t) + ".");
        iterations_ = t;
    }
    OptimizerConfig& opt() { return opt_; }
    index_t target_cols() const { return is_sparse(loss_) ? 1 : layers_.back().out; }
    // Huber's delta and Keras's label_smoothing (cross-entropies: y (1 - s) + s k, k = 1/2 for the
    // binary one, 1/classes for the categorical one), applied to the loss only, not the metrics.
    void set_loss_options(double huber_delta, double label_smoothing) {
        check_loss_options(huber_delta, label_smoothing, is_sparse(loss_));
        huber_delta_ = huber_delta;
        label_smoothing_ = label_smoothing;
    }
    // Held by every public operation of the bindings: a model is used by one thread at a time.
    std::mutex& mutex() { return mutex_; }

    // Polled between training steps, at most every few milliseconds: when it returns true the run
    // of steps ends after the current one (how Ctrl-C reaches a native fit). Empty: never polled.
    void set_interrupt_check(std::function<bool()> check) { interrupted_ = std::move(check); }

    virtual const char* isa() const = 0;

    // Whether training may take the fused kernels (narrow.hpp narrow_output_fused, lane_tree4) and
    // the record gathers (pack_records, swap_records, gather_lanes) rather than their layer-by-layer, one-by-one
    // and direct twins. Both give the same bits; off only for the tests that check that.
    void set_fused_kernels(bool on) { fused_kernels_ = on; }

    // Keras's weighted_metrics: flags[m] says whether metric m is weighted by the sample weights
    // (its sum then holds sum w_i m_i, to be divided by EpochSums::weight_sum). All false at first.
    void set_weighted_metrics(std::vector<bool> flags) {
        require(flags.size() == metrics_.size(), "set_weighted_metrics needs one flag per metric (" +
                                                     std::to_string(metrics_.size()) + "); received " +
                                                     std::to_string(flags.size()) + ".");
        weighted_metrics_ = std::move(flags);
    }

    // Training. begin_epoch fixes the epoch's sample order (a seeded shuffle, or 0..n-1) and
    // clears the running sums; train_steps runs up to max_steps batches of it (all that remain
    // when max_steps <= 0) and returns the sums so far. X (n, in_0), Y (n, target_cols()), W (n,)
    // Keras's sample weights or null (all 1): a batch's loss is sum_i w_i loss_i / B, and its
    // gradient scaled likewise. Layers with dropout drop their inputs here, and only here; batch
    // normalizations use the batch's statistics here and update their moving ones after each
    // applied step (predict, evaluate and compute_gradients leave them alone). The narrow path
    // copies the rows at the epoch's first train_steps (Engine::epoch_records): an epoch reads its
    // data as it was then, even when a per-batch callback changes the arrays in place.
    virtual void begin_epoch(index_t n, index_t batch_size, bool shuffle, std::uint64_t seed, std::uint64_t epoch) = 0;
    virtual EpochSums train_steps(const T* X, const T* Y, index_t n, index_t max_steps, const T* W = nullptr) = 0;
    // Overlap (train_epochs): start making epoch `epoch`'s copy of the rows, in batches as the
    // kernels read them, on a background thread while the current epoch trains; that epoch's
    // begin_epoch (with these n, batch_size, shuffle, seed and epoch) and train_steps (with these
    // arrays, unchanged until then) take it instead of making it. Changes no result; does nothing
    // where the engine copies no rows or has one thread. end_prefetch waits for a copy in progress
    // and drops it: call it before the arrays go away.
    virtual void prefetch_epoch(const T* /*X*/, const T* /*Y*/, const T* /*W*/, index_t /*n*/,
                                index_t /*batch_size*/, bool /*shuffle*/, std::uint64_t /*seed*/,
                                std::uint64_t /*epoch*/) {}
    virtual void end_prefetch() noexcept {}
    // Inference (batch normalizations use their moving statistics): out (n, out_last) overwritten.
    // evaluate returns loss and metric sums over n.
    virtual void predict(const T* X, index_t n, T* out, index_t batch_size) = 0;
    virtual EpochSums evaluate(const T* X, const T* Y, index_t n, index_t batch_size, const T* W = nullptr) = 0;
    // One training forward + backward on the given rows without updating: fills grads(), returns the
    // loss sum (weight penalties included, times n, as in training).
    virtual double compute_gradients(const T* X, const T* Y, index_t n, const T* W = nullptr) = 0;

    // Data parallelism (python/fastmlp/distributed.py; not with batch normalization, whose
    // statistics need the whole batch): each step of the epoch begun with
    // begin_epoch is split across ranks, and each rank runs the two halves of a training step with
    // the sum of the ranks' gradients in between. shard_gradients: forward and backward on positions
    // [lo, hi) of step `step`'s batch of B rows; grads() := (sum of those rows' gradients) / B, so
    // that the ranks' grads() sum to the batch's mean gradient, plus the penalties' gradient when
    // with_penalties (on one rank only); returns their loss sum (plus B times the penalties when
    // with_penalties) and metric sums, samples = hi - lo. lo == hi is allowed: grads() := 0.
    // With lo = 0, hi = B and penalties, grads() gets the same bits as in train_steps.
    virtual EpochSums shard_gradients(const T* X, const T* Y, index_t n, index_t step, index_t lo, index_t hi,
                                      bool with_penalties) = 0;
    // The update with grads() as they are (the summed gradient): clipping, the optimizer step,
    // ++iterations. stop = NonFiniteWeights (with the layer) when a new weight is not finite.
    virtual EpochSums apply_gradients() = 0;

protected:
    bool fused_kernels_ = true;
    std::vector<LayerSpec> layers_;
    LossKind loss_;
    std::vector<MetricKind> metrics_;
    OptimizerConfig opt_;
    std::int64_t iterations_ = 0;
    std::vector<T> params_, grads_, velocity_, second_;
    std::vector<index_t> w_off_, b_off_;
    std::vector<BatchNormOffsets> bn_in_off_, bn_out_off_;
    std::vector<T> moving_;
    std::mutex mutex_;
    std::function<bool()> interrupted_;
    double huber_delta_ = 1.0;
    double label_smoothing_ = 0.0;
    std::vector<bool> weighted_metrics_ = std::vector<bool>(metrics_.size(), false);

    // The first layer with a NaN or infinite value in `arena` (params_ or grads_): writes the
    // layer index and "kernel", "bias", "gamma", "beta" (its output's batch normalization) or
    // "input_gamma", "input_beta" into sums; leaves them unset when every value is finite.
    void locate_nonfinite(const std::vector<T>& arena, EpochSums& sums) const;

private:
    BatchNormOffsets place_batchnorm(const BatchNormSpec& bn, index_t width, const std::string& where, index_t& size);
};

// The instruction sets this build has variants for, best first, and the one the CPU can run.
std::vector<std::string> built_isas();
std::vector<std::string> supported_isas();  // built and runnable here, best first

// A new engine on instruction set `isa` ("" = the best supported one).
template <typename T>
std::unique_ptr<EngineBase<T>> make_engine(const std::string& isa, std::vector<LayerSpec> layers, LossKind loss,
                                           std::vector<MetricKind> metrics, OptimizerConfig opt);

// One matrix product for the kernel tests and benchmarks (gemm.hpp's contract, GemmArgs in
// common.hpp; bias unpadded, N entries, or null), run on instruction set `isa` ("" = the best
// supported one) `repeats` times. Returns the mean seconds per product, timed in C++.
template <typename T>
double run_gemm(const std::string& isa, const GemmArgs<T>& call, bool naive, index_t repeats);
// The float32 multiply-add peak of variant `isa` on the kernels' threads, in GFLOP/s (for benches).
double fma_peak(const std::string& isa, index_t iterations);

}  // namespace fastmlp
