// One ISA variant of the engine's compute (see engine_api.hpp for the interface and the arena).
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <utility>
#include <vector>

#include "common.hpp"
#include "dense.hpp"
#include "engine_api.hpp"
#include "narrow.hpp"
#include "parallel.hpp"

FASTMLP_ISA_BEGIN

template <typename T>
class Engine final : public EngineBase<T> {
public:
    Engine(std::vector<LayerSpec> layers, LossKind loss, std::vector<MetricKind> metrics, OptimizerConfig opt);

    const char* isa() const override;
    void begin_epoch(index_t n, index_t batch_size, bool shuffle, std::uint64_t seed, std::uint64_t epoch) override;
    EpochSums train_steps(const T* X, const T* Y, index_t n, index_t max_steps, const T* W = nullptr) override;
    void prefetch_epoch(const T* X, const T* Y, const T* W, index_t n, index_t batch_size, bool shuffle,
                        std::uint64_t seed, std::uint64_t epoch) override;
    void end_prefetch() noexcept override;
    ~Engine() override { end_prefetch(); }
    void predict(const T* X, index_t n, T* out, index_t batch_size) override;
    EpochSums evaluate(const T* X, const T* Y, index_t n, index_t batch_size, const T* W = nullptr) override;
    double compute_gradients(const T* X, const T* Y, index_t n, const T* W = nullptr) override;
    EpochSums shard_gradients(const T* X, const T* Y, index_t n, index_t step, index_t lo, index_t hi,
                              bool with_penalties) override;
    EpochSums apply_gradients() override;

private:
    using EngineBase<T>::layers_;
    using EngineBase<T>::loss_;
    using EngineBase<T>::metrics_;
    using EngineBase<T>::opt_;
    using EngineBase<T>::iterations_;
    using EngineBase<T>::params_;
    using EngineBase<T>::grads_;
    using EngineBase<T>::velocity_;
    using EngineBase<T>::second_;
    using EngineBase<T>::w_off_;
    using EngineBase<T>::b_off_;
    using EngineBase<T>::target_cols;
    using EngineBase<T>::huber_delta_;
    using EngineBase<T>::label_smoothing_;
    using EngineBase<T>::weighted_metrics_;
    using EngineBase<T>::bn_in_off_;
    using EngineBase<T>::bn_out_off_;
    using EngineBase<T>::moving_;

    void ensure_batch(index_t B);
    const T* forward(const T* X, index_t B, std::vector<std::vector<T>>& acts, std::vector<T>& bn_in_out);
    const T* forward_train(const T* X, index_t B);
    double forward_backward(const T* X, const T* Y, const T* W, index_t B, std::vector<double>* metric_sums);
    double forward_backward_narrow(index_t B, index_t L, const T* W, std::vector<double>* metric_sums,
                                   int binary = -1);
    double batch_gradients(const T* X, const T* Y, const T* W, const std::uint32_t* idx, index_t B,
                           std::vector<double>* metric_sums, const T* records = nullptr, const T* lanes = nullptr,
                           int binary = -1);
    const T* epoch_records(const T* X, const T* Y, const T* W, index_t n);
    index_t records_width(const T* W, index_t n) const;
    void make_records(std::vector<T>& R, index_t width, const T* X, const T* Y, const T* W, index_t n,
                      const std::vector<std::uint32_t>* swaps) const;
    const std::uint32_t* epoch_order();
    void add_metrics(std::vector<double>& sums, const T* P, const T* Y, const T* W, index_t B, index_t L);
    double weight_total(const T* W, index_t B) const;
    void check_labels(const T* Y, index_t n) const;
    const T* loss_targets(const T* Y, index_t n);
    double penalties(bool add_gradients);
    bool update_weights();
    void update_moving_stats();
    using BatchNormOffsets = typename EngineBase<T>::BatchNormOffsets;
    struct BatchNormState;
    void infer_batchnorm(const BatchNormSpec& bn, const BatchNormOffsets& off, T* Y, const T* X, index_t B, index_t N);
    void train_batchnorm(const BatchNormSpec& bn, const BatchNormOffsets& off, BatchNormState& st, T* Y, const T* X,
                         index_t B, index_t N);
    void backprop_batchnorm(const BatchNormOffsets& off, const BatchNormState& st, T* dX, const T* dY, index_t B,
                            index_t N);
    const T* param_or_null(index_t offset) const { return offset >= 0 ? params_.data() + offset : nullptr; }
    T* grad_or_null(index_t offset) { return offset >= 0 ? grads_.data() + offset : nullptr; }

    // Tiny networks train on the feature-major kernels of narrow.hpp (decided by the widths alone,
    // so a given model always takes the same path and gives the same bits).
    static constexpr index_t kNarrowWidth = 16;  // the widest layer (or input) the narrow path takes
    bool narrow_ = false;
    bool fuse_output_ = false;  // narrow_ and the output stage runs fused (narrow_output_fused)
    // A seed-shaped network's whole step in one kernel (narrow.hpp narrow_net3_fused), or null;
    // taken with the fused kernels, without sample weights, on 0/1 targets.
    Net3Kernel<T> net3_ = nullptr;
    bool penalized_ = false;  // some layer has a kernel, bias, gamma or beta regularizer
    // The optimizer step may run inside the backward, each layer's weights updated as their
    // gradient is made (dense_backward's DenseSgd): plain SGD (any momentum), no weight decay,
    // clipping or penalties, no batch normalization, the row-major path. train_steps asks for it
    // (fuse_sgd_) when the fused kernels are on; forward_backward does it when the batch's loss is
    // finite (sgd_applied_), and sgd_bad_ is then set if a new weight is not.
    bool sgd_fusable_ = false;
    bool fuse_sgd_ = false, sgd_applied_ = false;
    std::atomic<int> sgd_bad_{0};
    std::vector<std::pair<index_t, index_t>> segments_;  // each weight array's (offset, size), for clipnorm

    // Batch buffers, sized for the largest batch seen (in lanes on the narrow path).
    index_t cap_ = 0;
    std::vector<std::vector<T>> acts_;  // per layer (B, out_l), or (out_l, L) on the narrow path
    // Layers whose activation needs it (gelu, swish): the pre-activation Z, shaped as acts_.
    std::vector<std::vector<T>> zs_;
    // Layers with dropout: their dropped input (B, in_l) or (in_l, L), and its mask (1: kept).
    std::vector<std::vector<T>> dropped_;
    std::vector<std::vector<std::uint8_t>> masks_;
    // A batch normalization in training (batchnorm.hpp): its input when no other buffer keeps it
    // (the output one's: the layer's act(X W + b)), its output when that is not acts_ (the input
    // one's; the output one's when bn_act needs its pre-activation), Xhat, and the batch's statistics.
    struct BatchNormState {
        std::vector<T> x, y, xhat, mean, var, inv;
    };
    std::vector<BatchNormState> bn_in_, bn_out_;
    std::vector<double> bn_work_;
    std::vector<T> bn_inv_;  // the inference forward's 1 / sqrt(moving_var + eps)
    std::vector<T> wb_;  // the batch's sample weights (B), or (L) zero-padded on the narrow path
    // The batch as forward_backward_narrow reads it: inputs (K0, L), targets (yc, L), sample
    // weights (L) or null; views of xb_, yb_ and wb_, or of lanes_ when gathered from records_.
    const T *bx_ = nullptr, *by_ = nullptr, *bw_ = nullptr;
    // The narrow path's copy of the epoch's rows as records in the epoch's order (epoch_records,
    // narrow.hpp pack_records), the arrays it was made from, and a batch gathered from it.
    std::vector<T> records_, lanes_;
    index_t record_width_ = 0;
    const T* records_of_[3] = {};
    bool records_fresh_ = false;
    std::vector<T> xb_, yb_, delta_a_, delta_b_, loss_work_, row_work_, lane_tmp_, smooth_;
    DenseScratch<T> scratch_;

    // Epoch state.
    // The epoch's swaps (shuffle.hpp shuffle_swaps; used when shuffled_), and its order of the rows,
    // made from them on demand (epoch_order; valid when order_ready_).
    std::vector<std::uint32_t> swaps_, order_;
    bool shuffled_ = false, order_ready_ = false;
    index_t epoch_n_ = 0, batch_size_ = 0;
    EpochSums sums_;

    // The epoch prefetch_epoch is making on worker_: its arguments, then its swaps, records, and
    // its batches gathered as the narrow kernels read them (gather_lanes: batch s at s * width *
    // lanes) with whether each one's targets are all 0 or 1 (binary). begin_epoch swaps them in
    // (batch_lanes_, batch_binary_: valid while lanes_ready_). worker_ is declared last: destroyed
    // first, it finishes the job before the buffers it writes go away.
    struct NextEpoch {
        bool pending = false, shuffle = false;
        std::uint64_t seed = 0, epoch = 0;
        index_t n = 0, batch_size = 0, width = 0, lanes = 0;
        const T* of[3] = {};
        std::vector<std::uint32_t> swaps;
        std::vector<T> records, batches;
        std::vector<std::uint8_t> binary;
    } next_;
    std::vector<T> batch_lanes_;
    std::vector<std::uint8_t> batch_binary_;
    index_t batch_stride_ = 0;
    bool lanes_ready_ = false;
    std::unique_ptr<BackgroundWorker> worker_;
};

template <typename T>
std::unique_ptr<EngineBase<T>> create_engine(std::vector<LayerSpec> layers, LossKind loss,
                                             std::vector<MetricKind> metrics, OptimizerConfig opt);

FASTMLP_ISA_END
