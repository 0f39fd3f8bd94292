#include "engine.hpp"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <string>

#include "batchnorm.hpp"
#include "dropout.hpp"
#include "losses.hpp"
#include "narrow.hpp"
#include "optim.hpp"
#include "shuffle.hpp"

FASTMLP_ISA_BEGIN

// Elementwise work (each output from its own inputs only) of at least this many elements is split
// over the pool; a split cannot change a bit.
constexpr index_t kElementwiseChunk = index_t(1) << 16;

// f(lo, hi) over [0, n) in contiguous pieces, one per thread when n is large enough to pay for it.
template <typename F>
void for_chunks(index_t n, index_t min_chunk, F&& f) {
    const index_t tasks = std::min<index_t>(num_threads(), n / min_chunk);
    if (tasks <= 1) {
        f(index_t(0), n);
        return;
    }
    parallel_for(static_cast<int>(tasks), [&](int t) { f(n * t / tasks, n * (t + 1) / tasks); });
}

template <typename T>
Engine<T>::Engine(std::vector<LayerSpec> layers, LossKind loss, std::vector<MetricKind> metrics, OptimizerConfig opt)
    : EngineBase<T>(std::move(layers), loss, std::move(metrics), opt) {
    index_t widest = layers_[0].in;
    for (const LayerSpec& s : layers_) widest = std::max(widest, s.out);
    // Batch normalization runs on the row-major kernels only.
    narrow_ = widest <= kNarrowWidth && !this->has_batchnorm();
    fuse_output_ = narrow_ && narrow_output_fusable(loss, layers_.back().act);
    bool net3 = fuse_output_ && layers_.size() == 3 && loss == LossKind::BinaryCrossentropy;
    for (std::size_t l = 0; l < layers_.size() && net3; ++l)
        net3 = layers_[l].use_bias && layers_[l].dropout == 0 && (l == 2 || layers_[l].act == Act::Relu);
    if (net3)
        net3_ = narrow_net3_kernel<T>(layers_[0].in, layers_[0].out, layers_[1].out, layers_[2].out, layers_[2].act);
    for (const LayerSpec& s : layers_)
        for (const double c : {s.kernel_l1, s.kernel_l2, s.bias_l1, s.bias_l2, s.bn_in.gamma_l1, s.bn_in.gamma_l2,
                               s.bn_in.beta_l1, s.bn_in.beta_l2, s.bn_out.gamma_l1, s.bn_out.gamma_l2,
                               s.bn_out.beta_l1, s.bn_out.beta_l2})
            penalized_ = penalized_ || c != 0;
    sgd_fusable_ = !narrow_ && !this->has_batchnorm() && !penalized_ && opt.kind == OptKind::SGD &&
                   opt.weight_decay == 0 && opt.clipnorm == 0 && opt.global_clipnorm == 0 && opt.clipvalue == 0;
    acts_.resize(layers_.size());
    zs_.resize(layers_.size());
    dropped_.resize(layers_.size());
    masks_.resize(layers_.size());
    bn_in_.resize(layers_.size());
    bn_out_.resize(layers_.size());
    for (std::size_t l = 0; l < layers_.size(); ++l) {
        const LayerSpec& s = layers_[l];
        for (const index_t off : {bn_in_off_[l].gamma, bn_in_off_[l].beta})
            if (off >= 0) segments_.emplace_back(off, s.in);
        segments_.emplace_back(w_off_[l], s.in * s.out);
        for (const index_t off : {b_off_[l], bn_out_off_[l].gamma, bn_out_off_[l].beta})
            if (off >= 0) segments_.emplace_back(off, s.out);
    }
}

#define FASTMLP_STR2(x) #x
#define FASTMLP_STR(x) FASTMLP_STR2(x)

template <typename T>
const char* Engine<T>::isa() const {
    return FASTMLP_STR(FASTMLP_ISA);
}

template <typename T>
void Engine<T>::ensure_batch(index_t B) {
    if (narrow_) B = narrow_lanes<T>(B);
    if (B <= cap_) return;
    index_t widest = layers_[0].in;
    for (std::size_t l = 0; l < layers_.size(); ++l) {
        acts_[l].resize(B * layers_[l].out);
        if (needs_preactivation(layers_[l].act)) zs_[l].resize(B * layers_[l].out);
        if (layers_[l].dropout > 0) {
            dropped_[l].resize(B * layers_[l].in);
            masks_[l].resize(B * layers_[l].in);
        }
        for (const bool input : {true, false}) {
            const LayerSpec& s = layers_[l];
            if (!(input ? s.bn_in : s.bn_out).on) continue;
            const index_t N = input ? s.in : s.out;
            BatchNormState& st = (input ? bn_in_ : bn_out_)[l];
            if (input || needs_preactivation(s.bn_act)) st.y.resize(B * N);
            if (!input) st.x.resize(B * N);
            st.xhat.resize(B * N);
            st.mean.resize(N);
            st.var.resize(N);
            st.inv.resize(N);
        }
        widest = std::max(widest, layers_[l].out);
    }
    xb_.resize(B * layers_[0].in);
    yb_.resize(B * target_cols());
    wb_.resize(B);
    delta_a_.resize(B * widest);
    delta_b_.resize(B * widest);
    lane_tmp_.resize(2 * B);
    cap_ = B;
}

template <typename T>
void Engine<T>::check_labels(const T* Y, index_t n) const {
    if (is_sparse(loss_) ||
        std::find(metrics_.begin(), metrics_.end(), MetricKind::SparseCategoricalAccuracy) != metrics_.end())
        check_sparse_labels(Y, n, target_cols(), layers_.back().out);
}

// The layers' weight penalties (Keras's regularization losses), with their gradients added to
// grads_ when asked.
template <typename T>
double Engine<T>::penalties(bool add_gradients) {
    double total = 0;
    if (!penalized_) return total;  // no regularizer anywhere (decided once, in the constructor)
    for (std::size_t l = 0; l < layers_.size(); ++l) {
        const LayerSpec& s = layers_[l];
        total += weight_penalty(params_.data() + w_off_[l], add_gradients ? grads_.data() + w_off_[l] : nullptr,
                                s.in * s.out, s.kernel_l1, s.kernel_l2);
        if (s.use_bias)
            total += weight_penalty(params_.data() + b_off_[l], add_gradients ? grads_.data() + b_off_[l] : nullptr,
                                    s.out, s.bias_l1, s.bias_l2);
        for (const bool input : {true, false}) {
            const BatchNormSpec& bn = input ? s.bn_in : s.bn_out;
            const auto& off = (input ? bn_in_off_ : bn_out_off_)[l];
            const index_t N = input ? s.in : s.out;
            const auto penalty = [&](index_t offset, double l1, double l2) {
                if (offset >= 0)
                    total += weight_penalty(params_.data() + offset, add_gradients ? grads_.data() + offset : nullptr,
                                            N, l1, l2);
            };
            penalty(off.gamma, bn.gamma_l1, bn.gamma_l2);
            penalty(off.beta, bn.beta_l1, bn.beta_l2);
        }
    }
    return total;
}

// A batch normalization of N features (the spec and offsets of layer l's input or output one) on
// a (B, N) block, with the kernels of batchnorm.hpp: inference (moving statistics), training (the
// batch's, kept in st for the backward) and backward (gamma's and beta's gradients into grads_).
template <typename T>
void Engine<T>::infer_batchnorm(const BatchNormSpec& bn, const BatchNormOffsets& off, T* Y, const T* X, index_t B,
                                index_t N) {
    const T* mean = moving_.data() + off.moving;
    batchnorm_forward_infer(Y, X, mean, mean + N, param_or_null(off.gamma), param_or_null(off.beta), B, N, bn.epsilon,
                            bn_inv_);
}

template <typename T>
void Engine<T>::train_batchnorm(const BatchNormSpec& bn, const BatchNormOffsets& off, BatchNormState& st, T* Y,
                                const T* X, index_t B, index_t N) {
    batchnorm_forward_train(Y, st.xhat.data(), st.mean.data(), st.var.data(), st.inv.data(), X,
                            param_or_null(off.gamma), param_or_null(off.beta), B, N, bn.epsilon, bn_work_);
}

template <typename T>
void Engine<T>::backprop_batchnorm(const BatchNormOffsets& off, const BatchNormState& st, T* dX, const T* dY,
                                   index_t B, index_t N) {
    batchnorm_backward(dX, grad_or_null(off.gamma), grad_or_null(off.beta), dY, st.xhat.data(),
                       param_or_null(off.gamma), st.inv.data(), B, N, bn_work_);
}

// After an applied training step: each batch normalization's moving statistics take the batch's.
template <typename T>
void Engine<T>::update_moving_stats() {
    if (!this->has_batchnorm()) return;
    for (std::size_t l = 0; l < layers_.size(); ++l)
        for (const bool input : {true, false}) {
            const BatchNormSpec& bn = input ? layers_[l].bn_in : layers_[l].bn_out;
            if (!bn.on) continue;
            const index_t N = input ? layers_[l].in : layers_[l].out;
            const BatchNormState& st = (input ? bn_in_ : bn_out_)[l];
            T* mean = moving_.data() + (input ? bn_in_off_ : bn_out_off_)[l].moving;
            batchnorm_update_moving(mean, mean + N, st.mean.data(), st.var.data(), N, bn.momentum);
        }
}

// The targets the loss sees: Y itself, or a label-smoothed copy of its n values.
template <typename T>
const T* Engine<T>::loss_targets(const T* Y, index_t n) {
    if (label_smoothing_ == 0) return Y;
    const bool binary = loss_ == LossKind::BinaryCrossentropy || loss_ == LossKind::BinaryCrossentropyLogits;
    const T s = T(label_smoothing_);
    const T k = binary ? T(0.5) : T(1) / T(layers_.back().out);
    if (static_cast<index_t>(smooth_.size()) < n) smooth_.resize(n);
    for (index_t i = 0; i < n; ++i) smooth_[i] = Y[i] * (T(1) - s) + s * k;
    return smooth_.data();
}

// The inference forward; bn_in_out holds the output of the input's batch normalization.
template <typename T>
const T* Engine<T>::forward(const T* X, index_t B, std::vector<std::vector<T>>& acts, std::vector<T>& bn_in_out) {
    const T* in = X;
    for (std::size_t l = 0; l < layers_.size(); ++l) {
        const LayerSpec& s = layers_[l];
        if (s.bn_in.on) {
            bn_in_out.resize(B * s.in);
            infer_batchnorm(s.bn_in, bn_in_off_[l], bn_in_out.data(), in, B, s.in);
            in = bn_in_out.data();
        }
        const T* b = s.use_bias ? params_.data() + b_off_[l] : nullptr;
        dense_forward(acts[l].data(), in, params_.data() + w_off_[l], b, B, s.in, s.out, s.act, scratch_);
        if (s.bn_out.on) {
            infer_batchnorm(s.bn_out, bn_out_off_[l], acts[l].data(), acts[l].data(), B, s.out);
            if (s.bn_act != Act::Linear) act_forward_rows(s.bn_act, acts[l].data(), B, s.out);
        }
        in = acts[l].data();
    }
    return in;
}

// The training forward, row-major: forward's values (batch normalizations with the batch's
// statistics), keeping besides acts_ what the backward needs: the pre-activation of gelu and swish
// layers (zs_), the dropped input of dropout layers and the batch normalizations' state. A layer:
// input -> dropout -> input batch normalization -> act(X W + b) -> output batch normalization -> bn_act.
template <typename T>
const T* Engine<T>::forward_train(const T* X, index_t B) {
    const T* in = X;
    for (std::size_t l = 0; l < layers_.size(); ++l) {
        const LayerSpec& s = layers_[l];
        if (s.dropout > 0) {
            dropout_forward(dropped_[l].data(), masks_[l].data(), in, B, s.in, s.dropout,
                            dropout_stream(s.dropout_seed, iterations_));
            in = dropped_[l].data();
        }
        if (s.bn_in.on) {
            train_batchnorm(s.bn_in, bn_in_off_[l], bn_in_[l], bn_in_[l].y.data(), in, B, s.in);
            in = bn_in_[l].y.data();
        }
        T* a = s.bn_out.on ? bn_out_[l].x.data() : acts_[l].data();
        const T* b = s.use_bias ? params_.data() + b_off_[l] : nullptr;
        if (needs_preactivation(s.act)) {
            dense_forward(zs_[l].data(), in, params_.data() + w_off_[l], b, B, s.in, s.out, Act::Linear, scratch_);
            act_forward_copy(s.act, zs_[l].data(), a, B * s.out);
        } else {
            dense_forward(a, in, params_.data() + w_off_[l], b, B, s.in, s.out, s.act, scratch_);
        }
        if (s.bn_out.on) {
            const bool keep_z = needs_preactivation(s.bn_act);
            T* y = keep_z ? bn_out_[l].y.data() : acts_[l].data();
            train_batchnorm(s.bn_out, bn_out_off_[l], bn_out_[l], y, a, B, s.out);
            if (keep_z)
                act_forward_copy(s.bn_act, y, acts_[l].data(), B * s.out);
            else if (s.bn_act != Act::Linear)
                act_forward_rows(s.bn_act, acts_[l].data(), B, s.out);
        }
        in = acts_[l].data();
    }
    return in;
}

// Metric sums of a batch: P and Y row-major (L == 0) or feature-major with L lanes; the weighted
// metrics take the sample weights W (or none).
template <typename T>
void Engine<T>::add_metrics(std::vector<double>& sums, const T* P, const T* Y, const T* W, index_t B, index_t L) {
    const index_t C = layers_.back().out;
    for (std::size_t m = 0; m < metrics_.size(); ++m) {
        const T* w = weighted_metrics_[m] ? W : nullptr;
        sums[m] += L ? narrow_accuracy_sum(metrics_[m], P, Y, B, L, C, w)
                     : accuracy_sum(metrics_[m], P, Y, target_cols(), B, C, w);
    }
}

// The sum of the batch's sample weights (B without them).
template <typename T>
double Engine<T>::weight_total(const T* W, index_t B) const {
    if (!W) return double(B);
    double total = 0;
    for (index_t i = 0; i < B; ++i) total += W[i];
    return total;
}

// One batch (already gathered into X, Y and the sample weights W or null): forward, loss, metrics,
// backward into grads_.
template <typename T>
double Engine<T>::forward_backward(const T* X, const T* Y, const T* W, index_t B, std::vector<double>* metric_sums) {
    const T* P = forward_train(X, B);
    const LayerSpec& last = layers_.back();
    const index_t yc = target_cols();
    T* dZ = delta_a_.data();
    // The model's last activation: its output batch normalization's when it has one. Gelu and swish
    // outputs: the loss gives dL/dP, and their derivative comes from Z after it.
    const Act out_act = last.bn_out.on ? last.bn_act : last.act;
    const bool last_z = needs_preactivation(out_act);
    const double loss = output_loss(loss_, last_z ? Act::Linear : out_act, P, loss_targets(Y, B * yc), yc, B,
                                    last.out, T(1) / T(B), dZ, loss_work_, T(huber_delta_), W);
    if (last_z)
        act_backward_row_z(out_act, last.bn_out.on ? bn_out_.back().y.data() : zs_.back().data(), dZ, B * last.out);
    if (metric_sums) add_metrics(*metric_sums, P, Y, W, B, 0);
    // The optimizer step fused into the backward (a batch with a non-finite loss is not applied).
    sgd_applied_ = fuse_sgd_ && std::isfinite(loss);
    DenseSgd<T> sgd{};
    if (sgd_applied_) {
        sgd_bad_.store(0, std::memory_order_relaxed);
        sgd.step = SgdStep<T>{scheduled_lr<T>(opt_, iterations_), T(opt_.momentum), opt_.nesterov, &sgd_bad_};
    }
    // d holds dL/d(the layer's output); on the last layer the loss has folded its last activation in.
    T* d = delta_a_.data();
    T* d_prev = delta_b_.data();
    for (std::size_t l = layers_.size(); l-- > 0;) {
        const LayerSpec& s = layers_[l];
        const bool last_layer = l + 1 == layers_.size();
        Act act = last_layer ? Act::Linear : s.act;
        const T* a = acts_[l].data();  // act(X W + b), for its derivative
        if (s.bn_out.on) {
            const BatchNormState& st = bn_out_[l];
            if (!last_layer && needs_preactivation(s.bn_act))
                act_backward_row_z(s.bn_act, st.y.data(), d, B * s.out);
            else if (!last_layer && s.bn_act != Act::Linear)
                act_backward_rows(s.bn_act, acts_[l].data(), d, B, s.out);
            backprop_batchnorm(bn_out_off_[l], st, d, d, B, s.out);
            act = s.act;
            a = st.x.data();
        }
        if (needs_preactivation(act)) {
            act_backward_row_z(act, zs_[l].data(), d, B * s.out);
            act = Act::Linear;
        }
        const T* in = s.bn_in.on      ? bn_in_[l].y.data()
                      : s.dropout > 0 ? dropped_[l].data()
                      : l == 0        ? X
                                      : acts_[l - 1].data();
        T* db = s.use_bias ? grads_.data() + b_off_[l] : nullptr;
        // The first layer's input gradient is needed only for its input batch normalization's gamma and beta.
        const bool need_dx = l > 0 || (s.bn_in.on && (s.bn_in.center || s.bn_in.scale));
        if (sgd_applied_) {
            const bool mom = sgd.step.mu != T(0);
            sgd.w = params_.data() + w_off_[l];
            sgd.vw = mom ? velocity_.data() + w_off_[l] : nullptr;
            sgd.b = s.use_bias ? params_.data() + b_off_[l] : nullptr;
            sgd.vb = s.use_bias && mom ? velocity_.data() + b_off_[l] : nullptr;
        }
        dense_backward(need_dx ? d_prev : nullptr, grads_.data() + w_off_[l], db, d, in, params_.data() + w_off_[l],
                       a, B, s.in, s.out, act, scratch_, sgd_applied_ ? &sgd : nullptr);
        if (need_dx && s.bn_in.on)
            backprop_batchnorm(bn_in_off_[l], bn_in_[l], l > 0 ? d_prev : nullptr, d_prev, B, s.in);
        if (l > 0 && s.dropout > 0) dropout_backward(d_prev, masks_[l].data(), B * s.in, s.dropout);
        std::swap(d, d_prev);
    }
    return loss;
}

// One batch already gathered feature-major into bx_ (K0, L), by_ (yc, L) and W (L) or null, padding
// lanes zero.
template <typename T>
double Engine<T>::forward_backward_narrow(index_t B, index_t L, const T* W, std::vector<double>* metric_sums,
                                          int binary) {
    const bool fuse_output = fuse_output_ && this->fused_kernels_;
    if (net3_ && fuse_output && !W) {
        // binary (0 or 1, or -1: not known) says whether by_'s targets are all 0 or 1; smoothed
        // targets are checked here.
        const T* targets = loss_targets(by_, target_cols() * L);
        const bool known = binary >= 0 && targets == by_ && target_cols() == layers_.back().out;
        if (known ? binary == 1 : all_binary(targets, layers_.back().out * L)) {
            const T* Wt[3];
            const T* bt[3];
            T* dWt[3];
            T* dbt[3];
            for (int l = 0; l < 3; ++l) {
                Wt[l] = params_.data() + w_off_[l];
                bt[l] = params_.data() + b_off_[l];
                dWt[l] = grads_.data() + w_off_[l];
                dbt[l] = grads_.data() + b_off_[l];
            }
            T* P = acts_.back().data();
            const double loss = net3_(bx_, targets, B, L, T(1) / T(B), Wt, bt, dWt, dbt, acts_[0].data(), acts_[1].data(), P,
                                     delta_a_.data(), lane_tmp_.data());
            if (metric_sums) add_metrics(*metric_sums, P, by_, W, B, L);
            return loss;
        }
    }
    const T* in = bx_;
    for (std::size_t l = 0; l < layers_.size(); ++l) {
        const LayerSpec& s = layers_[l];
        if (s.dropout > 0) {
            dropout_forward_lanes(dropped_[l].data(), masks_[l].data(), in, B, L, s.in, s.dropout,
                                  dropout_stream(s.dropout_seed, iterations_));
            in = dropped_[l].data();
        }
        const T* b = s.use_bias ? params_.data() + b_off_[l] : nullptr;
        if (needs_preactivation(s.act)) {
            narrow_dense_forward(zs_[l].data(), in, params_.data() + w_off_[l], b, L, s.in, s.out, Act::Linear);
            act_forward_copy(s.act, zs_[l].data(), acts_[l].data(), s.out * L);
        } else {
            // A fused output stage applies the last layer's softmax itself.
            const bool last_softmax = fuse_output && l + 1 == layers_.size() && s.act == Act::Softmax;
            narrow_dense_forward(acts_[l].data(), in, params_.data() + w_off_[l], b, L, s.in, s.out,
                                 last_softmax ? Act::Linear : s.act);
        }
        in = acts_[l].data();
    }
    const LayerSpec& last = layers_.back();
    const bool last_z = needs_preactivation(last.act);
    const T* targets = loss_targets(by_, target_cols() * L);
    const double loss =
        fuse_output ? narrow_output_fused(loss_, last.act, acts_.back().data(), targets, B, L, last.out, T(1) / T(B),
                                           delta_a_.data(), lane_tmp_.data(), W)
                     : narrow_output_loss(loss_, last_z ? Act::Linear : last.act, in, targets, B, L, last.out,
                                          T(1) / T(B), delta_a_.data(), loss_work_, row_work_, T(huber_delta_), W);
    if (last_z) act_backward_row_z(last.act, zs_.back().data(), delta_a_.data(), last.out * L);
    if (metric_sums) add_metrics(*metric_sums, in, by_, W, B, L);
    // delta_a_ holds the last layer's dZ; each backward writes the previous layer's dZ (its
    // activation derivative fused in) into the other buffer. A dropout mask on this layer's input,
    // or a previous activation that needs its Z, comes between: the derivative is then applied apart.
    T* d = delta_a_.data();
    T* d_prev = delta_b_.data();
    for (std::size_t l = layers_.size(); l-- > 0;) {
        const LayerSpec& s = layers_[l];
        const T* x = s.dropout > 0 ? dropped_[l].data() : l == 0 ? bx_ : acts_[l - 1].data();
        T* db = s.use_bias ? grads_.data() + b_off_[l] : nullptr;
        const Act act_prev = l == 0 ? Act::Linear : layers_[l - 1].act;
        const bool apart = l > 0 && (s.dropout > 0 || needs_preactivation(act_prev));
        const T* a_prev = l == 0 ? x : acts_[l - 1].data();
        narrow_dense_backward(l == 0 ? static_cast<T*>(nullptr) : d_prev, grads_.data() + w_off_[l], db, d, x,
                              params_.data() + w_off_[l], L, s.in, s.out, apart ? Act::Linear : act_prev, a_prev,
                              lane_tmp_.data(), this->fused_kernels_);
        if (apart) {
            if (s.dropout > 0) dropout_backward(d_prev, masks_[l].data(), s.in * L, s.dropout);
            if (needs_preactivation(act_prev))
                act_backward_row_z(act_prev, zs_[l - 1].data(), d_prev, s.in * L);
            else if (act_prev == Act::Softmax)
                narrow_softmax_backward(a_prev, d_prev, s.in, L, lane_tmp_.data());
            else
                act_backward_row(act_prev, a_prev, d_prev, s.in * L);
        }
        std::swap(d, d_prev);
    }
    return loss;
}

// Gather rows idx[0..B) of X and Y into the batch buffers (feature-major on the narrow path, with
// zero padding lanes; from `records`, the batch's B consecutive records of epoch_records, when not
// null) and run
// forward and backward: grads_ := the batch's gradient. Returns the batch's loss sum and adds its
// metric sums.
template <typename T>
double Engine<T>::batch_gradients(const T* X, const T* Y, const T* W, const std::uint32_t* idx, index_t B,
                                  std::vector<double>* metric_sums, const T* records, const T* lanes, int binary) {
    const index_t K = layers_[0].in, yc = target_cols();
    if (records) {  // only the narrow path has them: the batch's B records, in order
        const index_t L = narrow_lanes<T>(B);
        if (!lanes) {  // else gathered ahead (prefetch_epoch), with `binary` known
            gather_lanes(lanes_.data(), records, record_width_, B, L);
            lanes = lanes_.data();
            binary = -1;
        }
        bx_ = lanes;
        by_ = bx_ + K * L;
        bw_ = W ? by_ + yc * L : nullptr;
        return forward_backward_narrow(B, L, bw_, metric_sums, binary);
    }
    if (narrow_) {
        const index_t L = narrow_lanes<T>(B);
        for (index_t k = 0; k < K; ++k) {
            T* xr = xb_.data() + k * L;
            for (index_t r = 0; r < B; ++r) xr[r] = X[static_cast<index_t>(idx[r]) * K + k];
            std::fill(xr + B, xr + L, T(0));
        }
        for (index_t j = 0; j < yc; ++j) {
            T* yr = yb_.data() + j * L;
            for (index_t r = 0; r < B; ++r) yr[r] = Y[static_cast<index_t>(idx[r]) * yc + j];
            std::fill(yr + B, yr + L, T(0));
        }
        if (W) {
            for (index_t r = 0; r < B; ++r) wb_[r] = W[idx[r]];
            std::fill(wb_.data() + B, wb_.data() + L, T(0));
        }
        bx_ = xb_.data();
        by_ = yb_.data();
        bw_ = W ? wb_.data() : nullptr;
        return forward_backward_narrow(B, L, bw_, metric_sums);
    }
    for_chunks(B, std::max<index_t>(1, kElementwiseChunk / (K + yc)), [&](index_t lo, index_t hi) {
        for (index_t r = lo; r < hi; ++r) {
            const index_t src = static_cast<index_t>(idx[r]);
            std::copy(X + src * K, X + src * K + K, xb_.data() + r * K);
            std::copy(Y + src * yc, Y + src * yc + yc, yb_.data() + r * yc);
            if (W) wb_[r] = W[src];
        }
    });
    bw_ = W ? wb_.data() : nullptr;
    return forward_backward(xb_.data(), yb_.data(), bw_, B, metric_sums);
}

// The narrow path's records of the epoch's training rows in the epoch's order (pack_records, then
// the epoch's swaps applied to the records themselves: a batch is then consecutive records), made
// at its first train_steps and kept while the same arrays come back; null when too large to copy
// (the batches are then gathered from X and Y directly).
template <typename T>
const T* Engine<T>::epoch_records(const T* X, const T* Y, const T* W, index_t n) {
    const index_t width = records_width(W, n);
    if (width == 0) return nullptr;
    if (!records_fresh_ || records_of_[0] != X || records_of_[1] != Y || records_of_[2] != W ||
        static_cast<index_t>(records_.size()) != n * width) {
        lanes_ready_ = false;  // prefetched batches of other arrays
        record_width_ = width;
        make_records(records_, width, X, Y, W, n, shuffled_ ? &swaps_ : nullptr);
        records_of_[0] = X;
        records_of_[1] = Y;
        records_of_[2] = W;
        records_fresh_ = true;
    }
    const index_t L = narrow_lanes<T>(std::min(batch_size_, n));
    if (static_cast<index_t>(lanes_.size()) < width * L) lanes_.resize(width * L);
    return records_.data();
}

// R := the n rows as records of `width` (pack_records), in the epoch's order when swaps is not null.
template <typename T>
void Engine<T>::make_records(std::vector<T>& R, index_t width, const T* X, const T* Y, const T* W, index_t n,
                             const std::vector<std::uint32_t>* swaps) const {
    R.resize(n * width);
    pack_records(R.data(), width, X, layers_[0].in, Y, target_cols(), W, n);
    if (swaps) swap_records(R.data(), width, *swaps);
}

// A record's width (inputs, targets, then the sample weight when W, padded to 4), or 0 where the
// epoch's rows are not copied into records (not the narrow path, or over 64 MB).
template <typename T>
index_t Engine<T>::records_width(const T* W, index_t n) const {
    constexpr index_t kMaxRecordBytes = index_t(64) << 20;
    const index_t width = round_up(layers_[0].in + target_cols() + (W ? 1 : 0), 4);
    if (!narrow_ || !this->fused_kernels_ || n * width * index_t(sizeof(T)) > kMaxRecordBytes) return 0;
    return width;
}

// Epoch `epoch`'s swaps and records (epoch_records' making of them, the same calls) on worker_,
// into next_, while the caller trains the current epoch. A second core does this work, so the
// caller's epochs are shorter by it; the bits are the same.
template <typename T>
void Engine<T>::prefetch_epoch(const T* X, const T* Y, const T* W, index_t n, index_t batch_size, bool shuffle,
                               std::uint64_t seed, std::uint64_t epoch) {
    const index_t width = n > 0 && n < (index_t(1) << 32) && batch_size > 0 ? records_width(W, n) : 0;
    if (width == 0 || num_threads() < 2) return;
    if (!worker_) worker_.reset(new BackgroundWorker);
    worker_->finish();  // a copy no begin_epoch took (not in train_epochs): its job reads next_
    next_.pending = true;
    next_.shuffle = shuffle;
    next_.seed = seed;
    next_.epoch = epoch;
    next_.n = n;
    next_.batch_size = batch_size;
    next_.width = width;
    next_.lanes = narrow_lanes<T>(std::min(batch_size, n));
    next_.of[0] = X;
    next_.of[1] = Y;
    next_.of[2] = W;
    const index_t K = layers_[0].in, yc = target_cols();
    worker_->start([this, X, Y, W, K, yc] {
        NextEpoch& e = next_;
        if (e.shuffle) shuffle_swaps(e.swaps, e.n, e.seed, e.epoch);
        make_records(e.records, e.width, X, Y, W, e.n, e.shuffle ? &e.swaps : nullptr);
        // batch_gradients' gather of each batch, and forward_backward_narrow's check of its targets.
        const index_t steps = (e.n - 1) / e.batch_size + 1;
        e.batches.resize(steps * e.width * e.lanes);
        e.binary.resize(steps);
        for (index_t s = 0; s < steps; ++s) {
            const index_t B = std::min(e.batch_size, e.n - s * e.batch_size), L = narrow_lanes<T>(B);
            T* out = e.batches.data() + s * e.width * e.lanes;
            gather_lanes(out, e.records.data() + s * e.batch_size * e.width, e.width, B, L);
            e.binary[s] = all_binary(out + K * L, yc * L) ? 1 : 0;
        }
    });
}

template <typename T>
void Engine<T>::end_prefetch() noexcept {
    if (!worker_) return;
    worker_.reset();  // finishes a copy in progress and joins the thread: none stays between calls
    next_.pending = false;
}

// The fused optimizer update over the whole arena, split over the pool; false if a weight became
// NaN or infinite.
template <typename T>
bool Engine<T>::update_weights() {
    T* s1 = velocity_.empty() ? nullptr : velocity_.data();
    T* s2 = second_.empty() ? nullptr : second_.data();
    std::atomic<bool> finite{true};
    for_chunks(static_cast<index_t>(params_.size()), kElementwiseChunk, [&](index_t lo, index_t hi) {
        if (!optimizer_step(opt_, params_.data() + lo, grads_.data() + lo, s1 ? s1 + lo : nullptr,
                            s2 ? s2 + lo : nullptr, hi - lo, iterations_))
            finite.store(false, std::memory_order_relaxed);
    });
    return finite.load();
}

template <typename T>
void Engine<T>::begin_epoch(index_t n, index_t batch_size, bool shuffle, std::uint64_t seed, std::uint64_t epoch) {
    require(n > 0, "Cannot train on an empty dataset (0 samples).");
    require(batch_size > 0, "batch_size must be a positive integer; received " + std::to_string(batch_size) + ".");
    require(n < (index_t(1) << 32), "At most 2**32 - 1 samples per fit; received " + std::to_string(n) + ".");
    // The swaps only: the order itself is made when a path asks for it (epoch_order); the narrow
    // path's records take the swaps directly (epoch_records). Or both from prefetch_epoch, when it
    // made this epoch: records_fresh_ then says they are ready for the arrays it read.
    bool prefetched = false;
    if (next_.pending) {
        next_.pending = false;
        worker_->finish();  // done by the other thread by now, or run here if it has not begun
        prefetched = next_.n == n && next_.shuffle == shuffle && next_.seed == seed && next_.epoch == epoch;
    }
    lanes_ready_ = false;
    if (prefetched) {
        swaps_.swap(next_.swaps);
        records_.swap(next_.records);
        record_width_ = next_.width;
        for (int i = 0; i < 3; ++i) records_of_[i] = next_.of[i];
        if (next_.batch_size == batch_size) {
            batch_lanes_.swap(next_.batches);
            batch_binary_.swap(next_.binary);
            batch_stride_ = next_.width * next_.lanes;
            lanes_ready_ = true;
        }
    } else if (shuffle) {
        shuffle_swaps(swaps_, n, seed, epoch);
    }
    shuffled_ = shuffle;
    order_ready_ = false;
    epoch_n_ = n;
    batch_size_ = batch_size;
    records_fresh_ = prefetched;  // else the data is read again at the epoch's first train_steps
    sums_ = EpochSums{};
    sums_.metrics.assign(metrics_.size(), 0.0);
    sums_.steps_total = (n - 1) / batch_size + 1;
}

// The epoch's order of the rows 0..n-1 (shuffle.hpp: the swaps applied to 0..n-1).
template <typename T>
const std::uint32_t* Engine<T>::epoch_order() {
    if (!order_ready_) {
        order_.resize(epoch_n_);
        for (index_t i = 0; i < epoch_n_; ++i) order_[i] = static_cast<std::uint32_t>(i);
        if (shuffled_) apply_swaps(swaps_, [&](index_t i, index_t j) { std::swap(order_[i], order_[j]); });
        order_ready_ = true;
    }
    return order_.data();
}

template <typename T>
EpochSums Engine<T>::train_steps(const T* X, const T* Y, index_t n, index_t max_steps, const T* W) {
    FlushDenormals ftz;
    require(n == epoch_n_, "train_steps: the data has " + std::to_string(n) + " rows but the epoch was begun with " +
                               std::to_string(epoch_n_) + ".");
    check_labels(Y, n);
    ensure_batch(std::min(batch_size_, n));
    index_t end = sums_.steps_total;
    if (max_steps > 0) end = std::min(end, sums_.steps_done + max_steps);
    sums_.stop = StopReason::None;
    std::vector<double> step_metrics(metrics_.size());
    const T* records = epoch_records(X, Y, W, n);
    const std::uint32_t* order = records ? nullptr : epoch_order();
    struct Unfuse {  // the other entry points' backward leaves the weights alone
        bool& flag;
        ~Unfuse() { flag = false; }
    } unfuse{fuse_sgd_};
    fuse_sgd_ = sgd_fusable_ && this->fused_kernels_;
    using clock = std::chrono::steady_clock;
    auto last_poll = clock::now();
    for (index_t step = sums_.steps_done; step < end; ++step) {
        const index_t start = step * batch_size_;
        const index_t B = std::min(batch_size_, n - start);
        const std::uint32_t* idx = order ? order + start : nullptr;
        std::fill(step_metrics.begin(), step_metrics.end(), 0.0);
        // The batch's loss, as Keras reports it: the mean over its samples plus the weight
        // penalties (computed with the weights before this update), times B for the epoch's sum.
        const double loss =
            batch_gradients(X, Y, W, idx, B, &step_metrics, records ? records + start * record_width_ : nullptr,
                            lanes_ready_ ? batch_lanes_.data() + step * batch_stride_ : nullptr,
                            lanes_ready_ ? batch_binary_[step] : -1) +
            double(B) * penalties(true);
        if (!std::isfinite(loss)) {
            // TerminateOnNaN, but the weights stay those before this batch.
            sums_.stop = StopReason::NonFiniteLoss;
            this->locate_nonfinite(grads_, sums_);
            break;
        }
        bool finite;
        if (sgd_applied_) {
            finite = sgd_bad_.load(std::memory_order_relaxed) == 0;
        } else {
            clip_gradients(opt_, grads_.data(), segments_);
            finite = update_weights();
        }
        update_moving_stats();
        ++iterations_;
        sums_.loss += loss;
        for (std::size_t m = 0; m < step_metrics.size(); ++m) sums_.metrics[m] += step_metrics[m];
        sums_.samples += B;
        sums_.weight_sum += weight_total(bw_, B);
        sums_.steps_done = step + 1;
        if (!finite) {
            sums_.stop = StopReason::NonFiniteWeights;
            this->locate_nonfinite(params_, sums_);
            break;
        }
        // The clock is read every 16 steps (a tiny network's step takes about a microsecond).
        if (this->interrupted_ && step + 1 < end && (step & 15) == 15 &&
            clock::now() - last_poll >= std::chrono::milliseconds(2)) {
            last_poll = clock::now();
            if (this->interrupted_()) {
                sums_.stop = StopReason::Interrupted;
                break;
            }
        }
    }
    return sums_;
}

template <typename T>
void Engine<T>::predict(const T* X, index_t n, T* out, index_t batch_size) {
    FlushDenormals ftz;
    require(batch_size > 0, "batch_size must be a positive integer; received " + std::to_string(batch_size) + ".");
    // Rows are independent and each output's summation order does not depend on the batch, so the
    // chunk size is free: a large one amortizes the packing.
    const index_t chunk = std::max<index_t>(batch_size, 256);
    std::vector<std::vector<T>> acts(layers_.size());
    std::vector<T> bn_in_out;
    const index_t B0 = std::min(chunk, n);
    for (std::size_t l = 0; l < layers_.size(); ++l) acts[l].resize(B0 * layers_[l].out);
    const index_t C = layers_.back().out;
    for (index_t start = 0; start < n; start += chunk) {
        const index_t B = std::min(chunk, n - start);
        const T* P = forward(X + start * layers_[0].in, B, acts, bn_in_out);
        std::copy(P, P + B * C, out + start * C);
    }
}

template <typename T>
EpochSums Engine<T>::evaluate(const T* X, const T* Y, index_t n, index_t batch_size, const T* W) {
    FlushDenormals ftz;
    require(batch_size > 0, "batch_size must be a positive integer; received " + std::to_string(batch_size) + ".");
    check_labels(Y, n);
    EpochSums sums;
    sums.metrics.assign(metrics_.size(), 0.0);
    const index_t chunk = std::max<index_t>(batch_size, 256);
    std::vector<std::vector<T>> acts(layers_.size());
    std::vector<T> bn_in_out;
    const index_t B0 = std::min(chunk, n);
    for (std::size_t l = 0; l < layers_.size(); ++l) acts[l].resize(B0 * layers_[l].out);
    const index_t K = layers_[0].in, yc = target_cols(), C = layers_.back().out;
    for (index_t start = 0; start < n; start += chunk) {
        const index_t B = std::min(chunk, n - start);
        const T* P = forward(X + start * K, B, acts, bn_in_out);
        const T* y = Y + start * yc;
        const T* w = W ? W + start : nullptr;
        sums.loss += loss_sum(loss_, P, loss_targets(y, B * yc), yc, B, C, loss_work_, T(huber_delta_), w) +
                     double(B) * penalties(false);
        add_metrics(sums.metrics, P, y, w, B, 0);
        sums.samples += B;
        sums.weight_sum += weight_total(w, B);
    }
    sums.steps_done = sums.steps_total = (n - 1) / batch_size + 1;
    return sums;
}

template <typename T>
double Engine<T>::compute_gradients(const T* X, const T* Y, index_t n, const T* W) {
    FlushDenormals ftz;
    require(n > 0 && n < (index_t(1) << 32), "compute_gradients needs between 1 and 2**32 - 1 samples.");
    check_labels(Y, n);
    ensure_batch(n);
    std::vector<std::uint32_t> all(n);
    for (index_t i = 0; i < n; ++i) all[i] = static_cast<std::uint32_t>(i);
    return batch_gradients(X, Y, W, all.data(), n, nullptr) + double(n) * penalties(true);
}

template <typename T>
EpochSums Engine<T>::shard_gradients(const T* X, const T* Y, index_t n, index_t step, index_t lo, index_t hi,
                                     bool with_penalties) {
    FlushDenormals ftz;
    if (this->has_batchnorm())
        throw std::invalid_argument("shard_gradients: batch normalization needs the statistics of the whole batch, "
                                    "not of a shard; train models with BatchNormalization in one process.");
    // Called once per step: the checks build their messages only when they fail.
    if (n <= 0 || n != epoch_n_)
        throw std::invalid_argument("shard_gradients: the data has " + std::to_string(n) +
                                    " rows but the epoch was begun with " + std::to_string(epoch_n_) + ".");
    if (step < 0 || step >= sums_.steps_total)
        throw std::invalid_argument("shard_gradients: step " + std::to_string(step) + " is outside the epoch's " +
                                    std::to_string(sums_.steps_total) + " steps.");
    const index_t start = step * batch_size_;
    const index_t B = std::min(batch_size_, n - start);
    if (lo < 0 || lo > hi || hi > B)
        throw std::invalid_argument("shard_gradients: rows [" + std::to_string(lo) + ", " + std::to_string(hi) +
                                    ") are not inside the step's batch of " + std::to_string(B) + ".");
    EpochSums s;
    s.metrics.assign(metrics_.size(), 0.0);
    s.samples = hi - lo;
    const std::uint32_t* idx = epoch_order() + start + lo;
    if (hi > lo) {
        if (is_sparse(loss_) ||
            std::find(metrics_.begin(), metrics_.end(), MetricKind::SparseCategoricalAccuracy) != metrics_.end())
            for (index_t r = 0; r < hi - lo; ++r) {  // the shard's rows only: a step must not read all of Y
                const index_t row = static_cast<index_t>(idx[r]);
                const T label = Y[row * target_cols()];
                const index_t C = layers_.back().out;
                if (!(label >= T(0) && label < T(C) && label == std::floor(label)))
                    throw std::invalid_argument("Sparse labels must be integers in [0, " + std::to_string(C) +
                                                "); received " + std::to_string(label) + " at row " +
                                                std::to_string(row) + ".");
            }
        ensure_batch(hi - lo);
        s.loss = batch_gradients(X, Y, nullptr, idx, hi - lo, &s.metrics);
        if (hi - lo != B) {  // the shard's mean gradient times B_shard / B: its share of the batch's mean
            const double share = double(hi - lo) / double(B);
            for (T& g : grads_) g = T(double(g) * share);
        }
    } else {
        std::fill(grads_.begin(), grads_.end(), T(0));
    }
    if (with_penalties) s.loss += double(B) * penalties(true);
    s.steps_done = step;
    s.steps_total = sums_.steps_total;
    return s;
}

template <typename T>
EpochSums Engine<T>::apply_gradients() {
    FlushDenormals ftz;
    EpochSums s;
    clip_gradients(opt_, grads_.data(), segments_);
    const bool finite = update_weights();
    ++iterations_;
    if (!finite) {
        s.stop = StopReason::NonFiniteWeights;
        this->locate_nonfinite(params_, s);
    }
    return s;
}

template <typename T>
std::unique_ptr<EngineBase<T>> create_engine(std::vector<LayerSpec> layers, LossKind loss,
                                             std::vector<MetricKind> metrics, OptimizerConfig opt) {
    return std::make_unique<Engine<T>>(std::move(layers), loss, std::move(metrics), opt);
}

template <typename T>
double run_gemm(const GemmArgs<T>& c, bool naive, index_t repeats) {
    FlushDenormals ftz;
    std::vector<T> bias;
    if (c.bias) {
        bias.assign(round_up(c.N, gemm_nr<T>()), T(0));
        std::copy(c.bias, c.bias + c.N, bias.begin());
    }
    const T* b = c.bias ? bias.data() : nullptr;
    const auto start = std::chrono::steady_clock::now();
    for (index_t r = 0; r < repeats; ++r) {
        if (naive)
            gemm_naive(c.C, c.ldc, c.A, c.ars, c.acs, c.B, c.brs, c.bcs, c.M, c.N, c.K, b, c.act);
        else
            gemm(c.C, c.ldc, c.A, c.ars, c.acs, c.B, c.brs, c.bcs, c.M, c.N, c.K, b, c.act);
    }
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count() / double(repeats);
}

// The float32 multiply-add peak this variant reaches: every thread runs kMR * kNV independent
// vector chains for `iterations` steps (no memory traffic). Returns GFLOP/s over all threads.
double fma_peak(index_t iterations) {
    using vec = Simd<float>::vec;
    constexpr int kChains = kMR * kNV;
    const int threads = num_threads();
    std::vector<float> sink(threads);
    auto run = [&](index_t steps) {
        parallel_for(threads, [&](int t) {
            vec acc[kChains];
            for (int c = 0; c < kChains; ++c) acc[c] = splat(float(c + t) * 1e-3f);
            const vec a = splat(0.999f), b = splat(1e-4f);
            for (index_t i = 0; i < steps; ++i)
                for (int c = 0; c < kChains; ++c) acc[c] = mul_add(acc[c], a, b);
            float total = 0;
            for (int c = 0; c < kChains; ++c)
                for (index_t l = 0; l < Simd<float>::width; ++l) total += acc[c][l];
            sink[t] = total;
        });
    };
    // Wake the pool first: a worker still asleep leaves its task to the caller, which would then
    // run every thread's chains in turn (the first call in a process measured half the peak).
    run(iterations / 16 + 1);
    const auto start = std::chrono::steady_clock::now();
    run(iterations);
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    volatile float keep = 0;
    for (float v : sink) keep = keep + v;
    return 2.0 * kChains * Simd<float>::width * double(iterations) * threads / seconds / 1e9;
}

template double run_gemm<float>(const GemmArgs<float>&, bool, index_t);
template double run_gemm<double>(const GemmArgs<double>&, bool, index_t);

template std::unique_ptr<EngineBase<float>> create_engine<float>(std::vector<LayerSpec>, LossKind,
                                                                 std::vector<MetricKind>, OptimizerConfig);
template std::unique_ptr<EngineBase<double>> create_engine<double>(std::vector<LayerSpec>, LossKind,
                                                                   std::vector<MetricKind>, OptimizerConfig);

FASTMLP_ISA_END
