// The CUDA engine: a Sequential stack of Dense layers trained with everything on the device.
//
// One training step (the multi-kernel path) on the engine's stream:
//   GatherBatch       xb, yb := the step's rows of the resident data (order uploaded per epoch)
//   per layer         cuBLASLt product with the bias/ReLU epilogue, or plain + BiasAct
//   OutputRows        output activation, loss, dZ, metrics per row; RowChunkSums; AccountBatch
//   per layer         dW product, dX product, ActBackwardColsum + ColsumFinal (act' and db)
//   OptimizerUpdate   the fused update over the arena;  FinishStep
// It is captured once per batch shape as a CUDA Graph and replayed: a step reads which batch it
// is from the device state (StepState), so replays need nothing from the host. Networks whose
// layers all fit kTinyWidth train instead on the fused one-block kernel of tiny.cuh, which runs
// up to an epoch of steps per launch.
//
// A non-finite loss or weight is found on the device: the step's bookkeeping sets StepState.stop,
// and every later step of the epoch leaves the weights and sums alone (GatherBatch, AccountBatch,
// OptimizerUpdate and FinishStep check it; the products recompute the same gradient). The host
// looks at the state every kWindow steps, so at most that many steps run to no effect.
//
// Engine<T, Dev> is compiled for two executors: GpuDev (the GPU) and HostDev (the host, the same
// kernel bodies as loops: `_cuda.HostEngine32`, what the tests check on machines without a GPU).
#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <map>
#include <new>
#include <string>
#include <utility>
#include <vector>

#include "../shuffle.hpp"
#include "dense.cuh"
#include "engine.hpp"
#include "shuffle.cuh"
#include "tiny.cuh"

namespace fastmlp {
namespace gpu {

void throw_cuda(cudaError_t err, const char* call, const char* file, int line) {
    cudaGetLastError();  // clear a non-sticky error so that the engine stays usable
    throw std::runtime_error(std::string("CUDA error: ") + cudaGetErrorString(err) + " (" + cudaGetErrorName(err) +
                             ") in " + call + " at " + file + ":" + std::to_string(line) + ".");
}

namespace {

// Steps between two looks at the device state (stop flag, Ctrl-C) on the multi-kernel path.
constexpr index_t kWindow = 16;
// Steps per launch of the fused tiny kernel (about 10 ms): Ctrl-C is polled between launches.
constexpr index_t kTinyChunk = 2048;

// ---- executors ----

struct HostDev {
    static constexpr bool kGpu = false;
    bool epilogues = true;
    bool planning = false;  // unused on the host: nothing is captured

    void* alloc(std::size_t bytes) {
        if (bytes == 0) return nullptr;
        void* p = std::aligned_alloc(256, (bytes + 255) / 256 * 256);
        if (!p) throw std::bad_alloc();
        return p;
    }
    void free(void* p) { std::free(p); }
    void* host_alloc(std::size_t bytes) { return alloc(bytes); }
    void host_free(void* p) { free(p); }
    void h2d(void* dst, const void* src, std::size_t bytes) {
        if (bytes) std::memcpy(dst, src, bytes);
    }
    void d2h(void* dst, const void* src, std::size_t bytes) {
        if (bytes) std::memcpy(dst, src, bytes);
    }
    void d2h_async(void* dst, const void* src, std::size_t bytes) { d2h(dst, src, bytes); }
    void zero(void* p, std::size_t bytes) {
        if (bytes) std::memset(p, 0, bytes);
    }
    void sync() {}
    void record() {}
    void wait_recorded() {}

    template <class F>
    void for_each(index_t n, const F& f) {
        HostExec{}.for_each(n, f);
    }
    template <typename T>
    bool gemm(const GemmArgs<T>& g, Epilogue e, bool /*naive*/) {
        if (e != Epilogue::None && !epilogues) return false;
        for_each(g.m * g.n, NaiveGemm<T>{g, e});
        return true;
    }
    template <typename T>
    void tiny(const TinyArgs<T>& a, const TinyLayout& lay) {
        std::vector<double> smem(lay.bytes / sizeof(double) + 2);  // 8-byte aligned, as the GPU's
        tiny_train(a, lay, reinterpret_cast<unsigned char*>(smem.data()), SerialExec{});
    }
    // The emulation takes the fused path where an H100/H200 (227 KiB per block) would.
    std::size_t tiny_smem_limit() const { return 227 * 1024; }
    std::string report() const {
        return epilogues ? "host emulation (naive products, epilogues on)" : "host emulation (naive products, "
                                                                             "epilogues off)";
    }
};

struct GpuDev {
    static constexpr bool kGpu = true;
    bool planning = false;  // for_each and gemm only load kernels and find algorithms (before a capture)
    cudaStream_t stream = nullptr;
    cudaEvent_t event = nullptr;
    int sms = 1;
    std::size_t smem_optin = 48 * 1024;
    std::unique_ptr<LtGemm> lt;

    GpuDev() {
        FASTMLP_CUDA_CHECK(cudaSetDevice(0));
        FASTMLP_CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
        FASTMLP_CUDA_CHECK(cudaEventCreateWithFlags(&event, cudaEventDisableTiming));
        FASTMLP_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0));
        int optin = 0;
        FASTMLP_CUDA_CHECK(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, 0));
        smem_optin = static_cast<std::size_t>(optin);
        lt.reset(new LtGemm);
        lt->set_stream(stream);
    }
    ~GpuDev() {
        lt.reset();
        if (event) cudaEventDestroy(event);
        if (stream) cudaStreamDestroy(stream);
    }
    GpuDev(const GpuDev&) = delete;
    GpuDev& operator=(const GpuDev&) = delete;

    void* alloc(std::size_t bytes) {
        if (bytes == 0) return nullptr;
        void* p = nullptr;
        FASTMLP_CUDA_CHECK(cudaMalloc(&p, bytes));
        return p;
    }
    void free(void* p) {
        if (p) cudaFree(p);
    }
    void* host_alloc(std::size_t bytes) {
        if (bytes == 0) return nullptr;
        void* p = nullptr;
        FASTMLP_CUDA_CHECK(cudaMallocHost(&p, bytes));
        return p;
    }
    void host_free(void* p) {
        if (p) cudaFreeHost(p);
    }
    void h2d(void* dst, const void* src, std::size_t bytes) {
        if (bytes) FASTMLP_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, stream));
    }
    void d2h(void* dst, const void* src, std::size_t bytes) {
        d2h_async(dst, src, bytes);
        sync();
    }
    void d2h_async(void* dst, const void* src, std::size_t bytes) {
        if (bytes) FASTMLP_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, stream));
    }
    void zero(void* p, std::size_t bytes) {
        if (bytes) FASTMLP_CUDA_CHECK(cudaMemsetAsync(p, 0, bytes, stream));
    }
    void sync() { FASTMLP_CUDA_CHECK(cudaStreamSynchronize(stream)); }
    void record() { FASTMLP_CUDA_CHECK(cudaEventRecord(event, stream)); }
    void wait_recorded() { FASTMLP_CUDA_CHECK(cudaEventSynchronize(event)); }

    template <class F>
    void for_each(index_t n, const F& f) {
        if (n <= 0) return;
        if (planning) {  // load the kernel now: no module loading inside a capture
            cudaFuncAttributes attr;
            FASTMLP_CUDA_CHECK(cudaFuncGetAttributes(&attr, for_each_kernel<F>));
            return;
        }
        const index_t blocks = std::min<index_t>((n + 255) / 256, static_cast<index_t>(sms) * 16);
        for_each_kernel<F><<<static_cast<unsigned>(blocks), 256, 0, stream>>>(n, f);
        FASTMLP_CUDA_CHECK(cudaGetLastError());
    }
    template <typename T>
    bool gemm(const GemmArgs<T>& g, Epilogue e, bool naive) {
        if (naive) {
            for_each(g.m * g.n, NaiveGemm<T>{g, e});
            return true;
        }
        return lt->run(g, e, planning);
    }
    template <typename T>
    void tiny(const TinyArgs<T>& a, const TinyLayout& lay) {
        if (lay.bytes > 48 * 1024)
            FASTMLP_CUDA_CHECK(cudaFuncSetAttribute(tiny_train_kernel<T>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                                    static_cast<int>(lay.bytes)));
        tiny_train_kernel<T><<<1, kTinyThreads, lay.bytes, stream>>>(a, lay);
        FASTMLP_CUDA_CHECK(cudaGetLastError());
    }
    std::size_t tiny_smem_limit() const { return smem_optin; }
    std::string report() const { return "cuBLASLt epilogues taken, of the products that asked: " + lt->report(); }

    // CUDA Graphs of a step: capture what `enqueue` issues on the stream.
    template <class F>
    cudaGraphExec_t capture(const F& enqueue) {
        cudaGraph_t graph = nullptr;
        FASTMLP_CUDA_CHECK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
        try {
            enqueue();
        } catch (...) {
            cudaStreamEndCapture(stream, &graph);  // ends the (invalidated) capture
            if (graph) cudaGraphDestroy(graph);
            cudaGetLastError();
            throw;
        }
        FASTMLP_CUDA_CHECK(cudaStreamEndCapture(stream, &graph));
        cudaGraphExec_t exec = nullptr;
        const cudaError_t err = cudaGraphInstantiate(&exec, graph, 0);
        cudaGraphDestroy(graph);
        FASTMLP_CUDA_CHECK(err);
        return exec;
    }
    void launch(cudaGraphExec_t exec) { FASTMLP_CUDA_CHECK(cudaGraphLaunch(exec, stream)); }
};

// A buffer of the executor's memory (device, or host for the emulation), grown on demand; its
// contents are not kept when it grows.
template <class Dev>
class Buffer {
public:
    explicit Buffer(Dev* dev, bool host = false) : dev_(dev), host_(host) {}
    ~Buffer() { release(); }
    Buffer(const Buffer&) = delete;
    Buffer& operator=(const Buffer&) = delete;
    Buffer(Buffer&& o) noexcept : dev_(o.dev_), host_(o.host_), p_(o.p_), bytes_(o.bytes_) { o.p_ = nullptr; }

    // True when the storage moved (pointers captured in graphs are then stale).
    bool reserve(std::size_t bytes) {
        if (bytes <= bytes_) return false;
        release();
        p_ = host_ ? dev_->host_alloc(bytes) : dev_->alloc(bytes);
        bytes_ = bytes;
        return true;
    }
    template <typename U>
    U* as() const {
        return static_cast<U*>(p_);
    }

private:
    void release() {
        if (p_) host_ ? dev_->host_free(p_) : dev_->free(p_);
        p_ = nullptr;
        bytes_ = 0;
    }
    Dev* dev_;
    bool host_;
    void* p_ = nullptr;
    std::size_t bytes_ = 0;
};

template <typename T, class Dev>
class Engine final : public EngineApi<T> {
public:
    Engine(std::vector<LayerSpec> layers, LossKind loss, std::vector<MetricKind> metrics, OptimizerConfig opt)
        : layers_(std::move(layers)),
          loss_(loss),
          metrics_(std::move(metrics)),
          opt_(std::move(opt)),
          params_(&dev_), grads_(&dev_), s1_(&dev_), s2_(&dev_), cfg_(&dev_), state_(&dev_), eval_state_(&dev_),
          X_(&dev_), Y_(&dev_), order_(&dev_), xb_(&dev_), yb_(&dev_), da_(&dev_), db_(&dev_), partial_(&dev_),
          row_loss_(&dev_), row_metrics_(&dev_), chunks_(&dev_), snapshot_(&dev_, true) {
        check_model();
        for (int a = 0; a < 4; ++a) mirrors_.emplace_back(&dev_, true);
        index_t size = 0;
        for (const LayerSpec& s : layers_) {
            w_off_.push_back(size);
            size += s.in * s.out;
            b_off_.push_back(s.use_bias ? size : -1);
            if (s.use_bias) size += s.out;
        }
        P_ = size;
        sizes_[0] = sizes_[1] = sizes_[2] = P_;
        sizes_[3] = opt_.kind == OptKind::Adam || opt_.kind == OptKind::RMSprop ? P_ : 0;
        Buffer<Dev>* arenas[4] = {&params_, &grads_, &s1_, &s2_};
        for (int a = 0; a < 4; ++a) {
            arenas[a]->reserve(sizeof(T) * sizes_[a]);
            mirrors_[a].reserve(sizeof(T) * sizes_[a]);
            T* m = mirrors_[a].template as<T>();
            const T init = a == 2 && opt_.kind == OptKind::Adagrad ? T(opt_.initial_accumulator) : T(0);
            for (index_t i = 0; i < sizes_[a]; ++i) m[i] = init;
            dev_.h2d(arenas[a]->template as<T>(), m, sizeof(T) * sizes_[a]);
        }
        cfg_.reserve(sizeof(OptParams<T>));
        state_.reserve(sizeof(StepState));
        eval_state_.reserve(sizeof(StepState));
        snapshot_.reserve(sizeof(StepState));
        dev_.zero(state_.template as<StepState>(), sizeof(StepState));
        dev_.zero(eval_state_.template as<StepState>(), sizeof(StepState));
        acts_.reserve(layers_.size());
        for (std::size_t l = 0; l < layers_.size(); ++l) acts_.emplace_back(&dev_);
        apply_opt();
        dev_.sync();
    }

    ~Engine() override {
        try {
            dev_.sync();
        } catch (...) {  // a failed device is reported by the call that failed, not here
        }
        drop_graphs();
    }

    Dev& dev() { return dev_; }

    const std::vector<LayerSpec>& layers() const override { return layers_; }
    index_t kernel_offset(std::size_t l) const override { return w_off_.at(l); }
    index_t bias_offset(std::size_t l) const override { return b_off_.at(l); }
    index_t arena_size(Arena a) const override { return sizes_[static_cast<int>(a)]; }
    index_t target_cols() const override { return is_sparse(loss_) ? 1 : layers_.back().out; }

    T* host_arena(Arena a) override {
        const int i = static_cast<int>(a);
        flush();
        dev_.d2h(mirrors_[i].template as<T>(), arena(i), sizeof(T) * sizes_[i]);
        dirty_[i] = sizes_[i] > 0;
        return mirrors_[i].template as<T>();
    }

    void params_copy(T* out) override {
        flush();
        dev_.d2h(out, params_.template as<T>(), sizeof(T) * P_);
    }

    void set_params(const T* values) override {
        flush();
        std::memcpy(mirrors_[0].template as<T>(), values, sizeof(T) * P_);
        dev_.h2d(params_.template as<T>(), mirrors_[0].template as<T>(), sizeof(T) * P_);
        dev_.sync();
    }

    std::int64_t iterations() override { return iterations_; }
    void set_iterations(std::int64_t t) override {
        require(t >= 0, "iterations must be non-negative; received " + std::to_string(t) + ".");
        dev_.for_each(1, SetIterations{state_.template as<StepState>(), t});
        dev_.sync();
        iterations_ = t;
    }

    void set_loss_options(double huber_delta, double label_smoothing) override {
        check_loss_options(huber_delta, label_smoothing, is_sparse(loss_));
        huber_delta_ = huber_delta;
        label_smoothing_ = label_smoothing;
        drop_graphs();  // the loss parameters are part of a captured step
    }

    OptimizerConfig& opt() override { return opt_; }

    void apply_opt() override {
        if (opt_.clipnorm > 0 || opt_.global_clipnorm > 0)
            throw unsupported("clipnorm and global_clipnorm are not supported on backend='cuda' yet (clipvalue is); "
                              "use backend='cpu' for them.");
        require(opt_.schedule != "piecewise" ||
                    (!opt_.values.empty() && opt_.values.size() == opt_.boundaries.size() + 1),
                "A piecewise-constant schedule needs one more value than boundaries; received " +
                    std::to_string(opt_.values.size()) + " values and " + std::to_string(opt_.boundaries.size()) +
                    " boundaries.");
        if (opt_.schedule == "piecewise" && opt_.boundaries.size() > static_cast<std::size_t>(kMaxPieces))
            throw unsupported("backend='cuda' takes piecewise-constant schedules of at most " +
                              std::to_string(kMaxPieces) + " boundaries; received " +
                              std::to_string(opt_.boundaries.size()) + ".");
        require(opt_.decay_steps > 0, "A schedule's decay_steps must be positive.");
        host_cfg_ = make_opt_params<T>(opt_);
        dev_.h2d(cfg_.template as<OptParams<T>>(), &host_cfg_, sizeof(host_cfg_));
    }

    void set_train_data(const T* X, const T* Y, index_t n) override {
        require(n > 0 && n < (index_t(1) << 32),
                "Training needs between 1 and 2**32 - 1 samples; received " + std::to_string(n) + ".");
        check_labels(Y, n);
        const index_t K = layers_[0].in, yc = target_cols();
        if (X_.reserve(sizeof(T) * n * K) | Y_.reserve(sizeof(T) * n * yc)) drop_graphs();
        dev_.h2d(X_.template as<T>(), X, sizeof(T) * n * K);
        dev_.h2d(Y_.template as<T>(), Y, sizeof(T) * n * yc);
        dev_.sync();
        train_n_ = n;
        epoch_ready_ = false;
    }

    void begin_epoch(index_t n, index_t batch_size, bool shuffle, std::uint64_t seed, std::uint64_t epoch) override {
        require(n > 0, "Cannot train on an empty dataset (0 samples).");
        require(batch_size > 0, "batch_size must be a positive integer; received " + std::to_string(batch_size) + ".");
        require(n == train_n_, "begin_epoch(n=" + std::to_string(n) + ") does not match the " +
                                   std::to_string(train_n_) + " samples given to set_train_data.");
        flush();
        if (shuffle) {
            shuffle_permutation(order_host_, n, seed, epoch);
        } else {
            order_host_.resize(n);
            for (index_t i = 0; i < n; ++i) order_host_[i] = static_cast<std::uint32_t>(i);
        }
        if (order_.reserve(sizeof(std::uint32_t) * n)) drop_graphs();
        dev_.h2d(order_.template as<std::uint32_t>(), order_host_.data(), sizeof(std::uint32_t) * n);
        batch_size_ = batch_size;
        steps_total_ = (n - 1) / batch_size + 1;
        steps_done_ = 0;
        tiny_epoch_ = use_tiny(batch_size);
        if (!tiny_epoch_) ensure_batch(std::min(batch_size, n));
        dev_.for_each(1, ResetState{state_.template as<StepState>(), -1});
        epoch_ready_ = true;
    }

    EpochSums train_steps(index_t max_steps) override {
        require(epoch_ready_, "train_steps needs set_train_data and begin_epoch first.");
        flush();
        const index_t first = steps_done_;
        const index_t end = max_steps <= 0 ? steps_total_ : std::min(steps_total_, first + max_steps);
        bool interrupted = false;
        if (tiny_epoch_) {
            interrupted = run_tiny(first, end);
        } else {
            interrupted = run_multi(first, end);
        }
        dev_.d2h(&host_state_, state_.template as<StepState>(), sizeof(StepState));
        steps_done_ = host_state_.step;
        iterations_ = host_state_.iterations;
        EpochSums sums;
        sums.loss = host_state_.loss;
        sums.metrics.assign(host_state_.metrics, host_state_.metrics + metrics_.size());
        sums.samples = host_state_.samples;
        sums.steps_done = steps_done_;
        sums.steps_total = steps_total_;
        sums.stop = static_cast<StopReason>(host_state_.stop);
        if (sums.stop == StopReason::NonFiniteLoss) {
            // Steps launched after the stop replayed the products, for the next batch's size on
            // the last step: recompute the stopped step's gradient (its rows are still in xb_).
            if (!tiny_epoch_) recompute_stopped_gradient();
            locate_nonfinite(1, sums);
        }
        if (sums.stop == StopReason::NonFiniteWeights) locate_nonfinite(0, sums);
        if (sums.stop == StopReason::None && interrupted && steps_done_ < steps_total_)
            sums.stop = StopReason::Interrupted;
        if (sums.stop != StopReason::None || steps_done_ >= steps_total_)  // the layers' views see the epoch's weights
            dev_.d2h(mirrors_[0].template as<T>(), params_.template as<T>(), sizeof(T) * P_);
        return sums;
    }

    void predict(const T* X, index_t n, T* out, index_t batch_size) override {
        require(batch_size > 0, "batch_size must be a positive integer; received " + std::to_string(batch_size) + ".");
        flush();
        const index_t chunk = eval_chunk(batch_size, n), K = layers_[0].in, C = layers_.back().out;
        ensure_batch(chunk);
        for (index_t start = 0; start < n; start += chunk) {
            const index_t B = std::min(chunk, n - start);
            dev_.h2d(xb_.template as<T>(), X + start * K, sizeof(T) * B * K);
            forward(B, xb_.template as<T>());
            dev_.for_each(B, OutputRows<T>{loss_params(B), act_out(), nullptr, nullptr, nullptr, nullptr, cap_});
            dev_.d2h(out + start * C, act_out(), sizeof(T) * B * C);
        }
    }

    EpochSums evaluate(const T* X, const T* Y, index_t n, index_t batch_size) override {
        require(batch_size > 0, "batch_size must be a positive integer; received " + std::to_string(batch_size) + ".");
        flush();
        check_labels(Y, n);
        const index_t chunk = eval_chunk(batch_size, n), K = layers_[0].in, yc = target_cols();
        ensure_batch(chunk);
        StepState* st = eval_state_.template as<StepState>();
        dev_.for_each(1, ResetState{st, -1});
        for (index_t start = 0; start < n; start += chunk) {
            const index_t B = std::min(chunk, n - start);
            dev_.h2d(xb_.template as<T>(), X + start * K, sizeof(T) * B * K);
            dev_.h2d(yb_.template as<T>(), Y + start * yc, sizeof(T) * B * yc);
            forward(B, xb_.template as<T>());
            output(B, nullptr, st, false);
        }
        StepState h;
        dev_.d2h(&h, st, sizeof(h));
        EpochSums sums;
        sums.loss = h.loss;
        sums.metrics.assign(h.metrics, h.metrics + metrics_.size());
        sums.samples = h.samples;
        sums.steps_done = sums.steps_total = (n - 1) / batch_size + 1;
        return sums;
    }

    double compute_gradients(const T* X, const T* Y, index_t n) override {
        require(n > 0 && n < (index_t(1) << 32), "compute_gradients needs between 1 and 2**32 - 1 samples.");
        flush();
        check_labels(Y, n);
        ensure_batch(n);
        const index_t K = layers_[0].in, yc = target_cols();
        dev_.h2d(xb_.template as<T>(), X, sizeof(T) * n * K);
        dev_.h2d(yb_.template as<T>(), Y, sizeof(T) * n * yc);
        StepState* st = eval_state_.template as<StepState>();
        dev_.for_each(1, ResetState{st, -1});
        forward(n, xb_.template as<T>());
        output(n, da_.template as<T>(), st, false);
        backward(n, xb_.template as<T>());
        StepState h;
        dev_.d2h(&h, st, sizeof(h));
        return h.loss;
    }

    void set_path(const std::string& path) override {
        require(path == "auto" || path == "fused" || path == "graphs" || path == "kernels",
                "Unknown path '" + path + "'. Expected auto, fused, graphs or kernels.");
        path_mode_ = path;
        drop_graphs();
    }
    std::string path() const override {
        if (!epoch_ready_) return "none";
        return tiny_epoch_ ? "fused" : (Dev::kGpu && path_mode_ != "kernels" ? "graphs" : "kernels");
    }
    void set_gemm(const std::string& gemm) override {
        require(gemm == "cublaslt" || gemm == "naive", "Unknown gemm '" + gemm + "'. Expected cublaslt or naive.");
        naive_ = gemm == "naive";
        drop_graphs();
    }
    std::string gemm_report() const override { return naive_ ? "naive reference products" : dev_.report(); }

private:
    // ---- checks ----

    void check_model() {
        require(!layers_.empty(), "A model needs at least one layer.");
        for (std::size_t l = 0; l < layers_.size(); ++l) {
            const LayerSpec& s = layers_[l];
            require(s.in > 0 && s.out > 0, "Layer " + std::to_string(l) + " has a non-positive size: " +
                                               std::to_string(s.in) + " x " + std::to_string(s.out) + ".");
            require(s.in <= (index_t(1) << 40) / s.out, "Layer " + std::to_string(l) + " is too large: " +
                                                          std::to_string(s.in) + " x " + std::to_string(s.out) +
                                                          " weights.");
            if (l > 0)
                require(s.in == layers_[l - 1].out,
                        "Layer " + std::to_string(l) + " expects " + std::to_string(s.in) +
                            " inputs but the previous layer has " + std::to_string(layers_[l - 1].out) + " units.");
            if (s.kernel_l1 != 0 || s.kernel_l2 != 0 || s.bias_l1 != 0 || s.bias_l2 != 0)
                throw unsupported("Layer " + std::to_string(l) + " has a kernel or bias regularizer: regularizers are "
                                  "not supported on backend='cuda' yet; use backend='cpu' for them.");
        }
        require(metrics_.size() <= static_cast<std::size_t>(kMaxMetrics),
                "At most " + std::to_string(kMaxMetrics) + " metrics on backend='cuda'; received " +
                    std::to_string(metrics_.size()) + ".");
        for (MetricKind m : metrics_) {
            require(m != MetricKind::SparseCategoricalAccuracy || is_sparse(loss_),
                    "sparse_categorical_accuracy needs the sparse_categorical_crossentropy loss (integer labels).");
            require(!is_sparse(loss_) || m == MetricKind::SparseCategoricalAccuracy,
                    "With integer labels (a sparse loss) the only metric is sparse_categorical_accuracy.");
        }
    }

    void check_labels(const T* Y, index_t n) const {
        const bool sparse_metric =
            std::find(metrics_.begin(), metrics_.end(), MetricKind::SparseCategoricalAccuracy) != metrics_.end();
        if (!is_sparse(loss_) && !sparse_metric) return;
        const index_t C = layers_.back().out, yc = target_cols();
        for (index_t i = 0; i < n; ++i) {
            const T y = Y[i * yc];
            if (!(y >= T(0) && y < T(C) && y == std::floor(y)))
                throw std::invalid_argument("Sparse labels must be integers in [0, " + std::to_string(C) +
                                            "); received " + std::to_string(y) + " at row " + std::to_string(i) + ".");
        }
    }

    // ---- buffers ----

    T* arena(int i) {
        Buffer<Dev>* arenas[4] = {&params_, &grads_, &s1_, &s2_};
        return arenas[i]->template as<T>();
    }

    // Upload the mirrors a caller may have written into (host_arena). Waits for the copies: the
    // mirrors are pinned, so an unfinished copy would read what Python writes next.
    void flush() {
        bool copied = false;
        for (int i = 0; i < 4; ++i)
            if (dirty_[i]) {
                dev_.h2d(arena(i), mirrors_[i].template as<T>(), sizeof(T) * sizes_[i]);
                dirty_[i] = false;
                copied = true;
            }
        if (copied) dev_.sync();
    }

    void ensure_batch(index_t B) {
        if (B <= cap_) return;
        index_t widest = layers_[0].in;
        for (const LayerSpec& s : layers_) widest = std::max(widest, s.out);
        const index_t chunks = (B + kRowChunk - 1) / kRowChunk, nm = static_cast<index_t>(metrics_.size());
        auto grow = [&](Buffer<Dev>& b, std::size_t bytes) {
            b.reserve(bytes);
            dev_.zero(b.template as<void>(), bytes);  // finite values for the products a capture warms up
        };
        grow(xb_, sizeof(T) * B * layers_[0].in);
        grow(yb_, sizeof(T) * B * target_cols());
        grow(da_, sizeof(T) * B * widest);
        grow(db_, sizeof(T) * B * widest);
        grow(partial_, sizeof(T) * chunks * widest);
        grow(row_loss_, sizeof(double) * B);
        grow(row_metrics_, sizeof(double) * B * std::max<index_t>(nm, 1));
        grow(chunks_, sizeof(double) * chunks * (1 + nm));
        for (std::size_t l = 0; l < layers_.size(); ++l) grow(acts_[l], sizeof(T) * B * layers_[l].out);
        cap_ = B;
        drop_graphs();
    }

    index_t eval_chunk(index_t batch_size, index_t n) const {
        return std::max<index_t>(1, std::min(n, std::max<index_t>(batch_size, 1024)));
    }

    T* act_out() { return acts_.back().template as<T>(); }

    LossParams<T> loss_params(index_t B) const {
        LossParams<T> lp{};
        lp.kind = loss_;
        lp.act = layers_.back().act;
        lp.C = layers_.back().out;
        lp.yc = target_cols();
        lp.scale = T(1) / T(B);
        lp.huber_delta = T(huber_delta_);
        lp.smoothing = T(label_smoothing_);
        const bool binary = loss_ == LossKind::BinaryCrossentropy || loss_ == LossKind::BinaryCrossentropyLogits;
        lp.smooth_k = binary ? T(0.5) : T(1) / T(lp.C);
        lp.nmetrics = static_cast<int>(metrics_.size());
        for (std::size_t m = 0; m < metrics_.size(); ++m) lp.metrics[m] = metrics_[m];
        return lp;
    }

    // ---- the step's pieces ----

    // acts[l] := the layers' outputs for B rows of x (the last layer's pre-activation Z).
    void forward(index_t B, const T* x) {
        const std::size_t L = layers_.size();
        const T* in = x;
        for (std::size_t l = 0; l < L; ++l) {
            const LayerSpec& s = layers_[l];
            const bool last = l + 1 == L;
            T* out = acts_[l].template as<T>();
            const T* b = s.use_bias ? params_.template as<T>() + b_off_[l] : nullptr;
            const GemmArgs<T> g{false, false, s.out, B, s.in, params_.template as<T>() + w_off_[l], s.out, in, s.in,
                                out, s.out, b};
            const bool relu = !last && s.act == Act::Relu;
            const Epilogue want = relu ? (b ? Epilogue::ReluBias : Epilogue::Relu) : (b ? Epilogue::Bias : Epilogue::None);
            const T* pending_bias = nullptr;
            Act pending_act = last || s.act == Act::Softmax ? Act::Linear : s.act;
            if (dev_.gemm(g, want, naive_)) {
                if (relu) pending_act = Act::Linear;
            } else {
                if (!dev_.gemm(g, Epilogue::None, naive_))
                    throw std::runtime_error("cuBLASLt found no algorithm for a plain " + std::string(sizeof(T) == 4 ? "fp32" : "fp64") +
                                             " product of shape (" + std::to_string(s.out) + ", " + std::to_string(B) +
                                             ", " + std::to_string(s.in) + ") on this GPU.");
                pending_bias = b;
            }
            if (pending_bias || pending_act != Act::Linear)
                dev_.for_each(B * s.out, BiasAct<T>{out, pending_bias, s.out, pending_act});
            if (!last && s.act == Act::Softmax) dev_.for_each(B, SoftmaxRows<T>{out, s.out});
            in = out;
        }
    }

    // The output layer over the B rows of yb_: act(Z) in place, the loss rows, dZ into d (unless
    // null), and the batch's sums accounted in st (training when train: the stop rules apply).
    void output(index_t B, T* d, StepState* st, bool train) {
        const int nm = static_cast<int>(metrics_.size());
        const index_t chunks = (B + kRowChunk - 1) / kRowChunk;
        dev_.for_each(B, OutputRows<T>{loss_params(B), act_out(), yb_.template as<T>(), d, row_loss_.template as<double>(),
                                       row_metrics_.template as<double>(), cap_});
        dev_.for_each(chunks, RowChunkSums{row_loss_.template as<double>(), row_metrics_.template as<double>(), cap_, B,
                                           nm, chunks_.template as<double>()});
        dev_.for_each(1, AccountBatch<T>{chunks_.template as<double>(), chunks, B, nm, st,
                                         train ? cfg_.template as<OptParams<T>>() : nullptr});
    }

    // grads := the batch's gradient, from dZ of the last layer in da_ (B rows of x the input).
    void backward(index_t B, const T* x) {
        const std::size_t L = layers_.size();
        const index_t chunks = (B + kRowChunk - 1) / kRowChunk;
        T* d = da_.template as<T>();
        T* dn = db_.template as<T>();
        T* grads = grads_.template as<T>();
        T* partial = partial_.template as<T>();
        const T* W = params_.template as<T>();
        if (b_off_[L - 1] >= 0) {  // the last layer's db; the others' come with their act' pass below
            const index_t N = layers_[L - 1].out;
            dev_.for_each(chunks * N, ActBackwardColsum<T>{d, nullptr, Act::Linear, B, N, partial});
            dev_.for_each(N, ColsumFinal<T>{partial, chunks, N, grads + b_off_[L - 1]});
        }
        for (std::size_t l = L; l-- > 0;) {
            const LayerSpec& s = layers_[l];
            const T* in = l == 0 ? x : acts_[l - 1].template as<T>();
            gemm_plain(GemmArgs<T>{false, true, s.out, s.in, B, d, s.out, in, s.in, grads + w_off_[l], s.out, nullptr});
            if (l == 0) break;
            gemm_plain(GemmArgs<T>{true, false, s.in, B, s.out, W + w_off_[l], s.out, d, s.out, dn, s.in, nullptr});
            const LayerSpec& p = layers_[l - 1];
            const T* a = acts_[l - 1].template as<T>();
            Act act = p.act;
            if (act == Act::Softmax) {
                dev_.for_each(B, SoftmaxBackwardRows<T>{a, dn, p.out});
                act = Act::Linear;
            }
            const bool bias = b_off_[l - 1] >= 0;
            if (act != Act::Linear || bias)
                dev_.for_each(chunks * p.out, ActBackwardColsum<T>{dn, a, act, B, p.out, bias ? partial : nullptr});
            if (bias) dev_.for_each(p.out, ColsumFinal<T>{partial, chunks, p.out, grads + b_off_[l - 1]});
            std::swap(d, dn);
        }
    }

    void recompute_stopped_gradient() {
        const index_t B = std::min(batch_size_, train_n_ - host_state_.step * batch_size_);
        StepState* st = eval_state_.template as<StepState>();
        dev_.for_each(1, ResetState{st, -1});
        forward(B, xb_.template as<T>());
        output(B, da_.template as<T>(), st, false);
        backward(B, xb_.template as<T>());
        dev_.sync();
    }

    void gemm_plain(const GemmArgs<T>& g) {
        if (!dev_.gemm(g, Epilogue::None, naive_))
            throw std::runtime_error("cuBLASLt found no algorithm for a plain product of shape (" + std::to_string(g.m) +
                                     ", " + std::to_string(g.n) + ", " + std::to_string(g.k) + ") on this GPU.");
    }

    // One training step of B rows, the epoch's next batch.
    void enqueue_step(index_t B) {
        StepState* st = state_.template as<StepState>();
        const index_t K = layers_[0].in, yc = target_cols();
        dev_.for_each(B * (K + yc), GatherBatch<T>{xb_.template as<T>(), yb_.template as<T>(), X_.template as<T>(),
                                                   Y_.template as<T>(), order_.template as<std::uint32_t>(), st,
                                                   batch_size_, B, K, yc});
        forward(B, xb_.template as<T>());
        output(B, da_.template as<T>(), st, true);
        backward(B, xb_.template as<T>());
        dev_.for_each(P_, OptimizerUpdate<T>{cfg_.template as<OptParams<T>>(), st, params_.template as<T>(),
                                             grads_.template as<T>(), s1_.template as<T>(),
                                             sizes_[3] ? s2_.template as<T>() : nullptr});
        dev_.for_each(1, FinishStep{st});
    }

    // ---- the two training paths ----

    bool use_tiny(index_t batch_size) {
        if (path_mode_ == "graphs" || path_mode_ == "kernels") return false;
        bool fits = layers_.size() <= static_cast<std::size_t>(kTinyMaxLayers) && layers_[0].in <= kTinyWidth;
        for (const LayerSpec& s : layers_) fits = fits && s.out <= kTinyWidth;
        if (fits) fits = tiny_layout(tiny_args(batch_size, 0)).bytes <= dev_.tiny_smem_limit();
        require(fits || path_mode_ != "fused",
                "The fused kernel takes networks of at most " + std::to_string(kTinyMaxLayers) + " layers of at most " +
                    std::to_string(kTinyWidth) + " units (and inputs) whose batch fits in shared memory; "
                    "use path 'auto' or 'graphs' for this one.");
        return fits;
    }

    TinyArgs<T> tiny_args(index_t batch_size, index_t steps) {
        TinyArgs<T> a{};
        a.L = static_cast<int>(layers_.size());
        for (int l = 0; l < a.L && l < kTinyMaxLayers; ++l) {
            a.in[l] = layers_[l].in;
            a.out[l] = layers_[l].out;
            a.w_off[l] = w_off_[l];
            a.b_off[l] = b_off_[l];
            a.act[l] = layers_[l].act;
        }
        a.P = P_;
        a.lp = loss_params(batch_size);
        a.X = X_.template as<T>();
        a.Y = Y_.template as<T>();
        a.order = order_.template as<std::uint32_t>();
        a.n = train_n_;
        a.batch_size = batch_size;
        a.w = params_.template as<T>();
        a.g = grads_.template as<T>();
        a.s1 = s1_.template as<T>();
        a.s2 = sizes_[3] ? s2_.template as<T>() : nullptr;
        a.st = state_.template as<StepState>();
        a.cfg = cfg_.template as<OptParams<T>>();
        a.steps = steps;
        return a;
    }

    // Steps [first, end) on the fused kernel; true when Ctrl-C stopped them early.
    bool run_tiny(index_t first, index_t end) {
        for (index_t s = first; s < end; s += kTinyChunk) {
            const TinyArgs<T> a = tiny_args(batch_size_, std::min(kTinyChunk, end - s));
            dev_.tiny(a, tiny_layout(a));
            if (s + kTinyChunk < end) {
                dev_.d2h(&host_state_, state_.template as<StepState>(), sizeof(StepState));
                if (host_state_.stop) return false;
                if (this->interrupted_ && this->interrupted_()) return true;
            }
        }
        return false;
    }

    // Steps [first, end) on the multi-kernel path (graphs on the GPU); true when Ctrl-C stopped them.
    bool run_multi(index_t first, index_t end) {
        bool pending = false;
        StepState* snap = snapshot_.template as<StepState>();
        for (index_t s = first; s < end; ++s) {
            const index_t B = std::min(batch_size_, train_n_ - s * batch_size_);
            run_step(B);
            if ((s + 1 - first) % kWindow == 0 && s + 1 < end) {
                // Look at the state copied kWindow steps ago (the GPU runs at most 2 windows ahead).
                if (pending) {
                    dev_.wait_recorded();
                    if (snap->stop) return false;
                    if (this->interrupted_ && this->interrupted_()) {
                        dev_.sync();
                        return true;
                    }
                }
                dev_.d2h_async(snap, state_.template as<StepState>(), sizeof(StepState));
                dev_.record();
                pending = true;
            }
        }
        return false;
    }

    void run_step(index_t B) {
        if constexpr (Dev::kGpu) {
            if (path_mode_ != "kernels") {
                auto it = graphs_.find({batch_size_, B});
                if (it == graphs_.end()) it = graphs_.emplace(std::make_pair(batch_size_, B), capture_step(B)).first;
                dev_.launch(it->second);
                return;
            }
        }
        enqueue_step(B);
    }

    // A graph of the step for B rows (GPU only: instantiated from run_step's GPU branch alone).
    cudaGraphExec_t capture_step(index_t B) {
        // Outside the capture: find every product's algorithm and load every kernel, then run the
        // forward and backward passes once (they only write activations and gradients, which the
        // step itself rewrites before reading them), so that the capture allocates and loads nothing.
        dev_.planning = true;
        try {
            enqueue_step(B);
        } catch (...) {
            dev_.planning = false;
            throw;
        }
        dev_.planning = false;
        forward(B, xb_.template as<T>());
        backward(B, xb_.template as<T>());
        dev_.sync();
        return dev_.capture([&] { enqueue_step(B); });
    }

    void drop_graphs() {
        if constexpr (Dev::kGpu) {
            for (auto& kv : graphs_) cudaGraphExecDestroy(kv.second);
        }
        graphs_.clear();
    }

    // The first layer with a non-finite value in arena i (0 params, 1 grads), as the CPU engine reports it.
    void locate_nonfinite(int i, EpochSums& sums) {
        std::vector<T> host(P_);
        dev_.d2h(host.data(), arena(i), sizeof(T) * P_);
        for (std::size_t l = 0; l < layers_.size(); ++l) {
            const index_t n = layers_[l].in * layers_[l].out;
            for (index_t k = 0; k < n; ++k)
                if (!std::isfinite(host[w_off_[l] + k])) {
                    sums.bad_layer = static_cast<index_t>(l);
                    sums.bad_part = "kernel";
                    return;
                }
            if (b_off_[l] >= 0)
                for (index_t k = 0; k < layers_[l].out; ++k)
                    if (!std::isfinite(host[b_off_[l] + k])) {
                        sums.bad_layer = static_cast<index_t>(l);
                        sums.bad_part = "bias";
                        return;
                    }
        }
    }

    Dev dev_;
    std::vector<LayerSpec> layers_;
    LossKind loss_;
    std::vector<MetricKind> metrics_;
    OptimizerConfig opt_;
    OptParams<T> host_cfg_{};
    std::vector<index_t> w_off_, b_off_;
    index_t P_ = 0;
    index_t sizes_[4] = {};
    double huber_delta_ = 1.0, label_smoothing_ = 0.0;

    Buffer<Dev> params_, grads_, s1_, s2_, cfg_, state_, eval_state_;
    std::vector<Buffer<Dev>> mirrors_;  // pinned host copies of the four arenas
    bool dirty_[4] = {};

    Buffer<Dev> X_, Y_, order_;
    index_t train_n_ = 0;
    std::vector<std::uint32_t> order_host_;

    index_t cap_ = 0;  // rows the batch buffers hold
    Buffer<Dev> xb_, yb_, da_, db_, partial_, row_loss_, row_metrics_, chunks_;
    std::vector<Buffer<Dev>> acts_;
    Buffer<Dev> snapshot_;  // pinned: the state copied every kWindow steps
    StepState host_state_{};

    bool epoch_ready_ = false, tiny_epoch_ = false, naive_ = false;
    index_t batch_size_ = 0, steps_total_ = 0, steps_done_ = 0;
    std::int64_t iterations_ = 0;
    std::string path_mode_ = "auto";
    std::map<std::pair<index_t, index_t>, cudaGraphExec_t> graphs_;
};

}  // namespace

DeviceStatus device_status() {
    DeviceStatus s;
    cudaRuntimeGetVersion(&s.runtime_version);
    cudaDriverGetVersion(&s.driver_version);
    s.cublaslt_version = LtGemm::version();
    const cudaError_t err = cudaGetDeviceCount(&s.count);
    cudaGetLastError();
    auto version = [](int v) { return std::to_string(v / 1000) + "." + std::to_string(v % 1000 / 10); };
    if (err == cudaErrorInsufficientDriver && s.driver_version == 0) {
        s.reason = "no NVIDIA driver was found (libcuda.so.1 could not be loaded)";
    } else if (err == cudaErrorInsufficientDriver) {
        s.reason = "the NVIDIA driver supports CUDA " + version(s.driver_version) + ", older than the CUDA " +
                   version(s.runtime_version) + " fastmlp was built with: update the driver";
    } else if (err == cudaErrorNoDevice || (err == cudaSuccess && s.count == 0)) {
        s.reason = "no CUDA device was found";
        s.count = 0;
    } else if (err != cudaSuccess) {
        s.reason = std::string("the CUDA runtime could not list the devices: ") + cudaGetErrorString(err);
        s.count = 0;
    } else {
        cudaDeviceProp prop;
        const cudaError_t perr = cudaGetDeviceProperties(&prop, 0);
        if (perr != cudaSuccess) {
            cudaGetLastError();
            s.reason = std::string("device 0 could not be queried: ") + cudaGetErrorString(perr);
        } else {
            s.name = prop.name;
            s.major = prop.major;
            s.minor = prop.minor;
            if (prop.major * 10 + prop.minor < 75)
                s.reason = "device 0 (" + s.name + ") has compute capability " + std::to_string(prop.major) + "." +
                           std::to_string(prop.minor) + "; this build needs 7.5 or newer";
        }
    }
    s.ok = s.reason.empty();
    return s;
}

template <typename T>
std::unique_ptr<EngineApi<T>> make_gpu_engine(std::vector<LayerSpec> layers, LossKind loss,
                                              std::vector<MetricKind> metrics, OptimizerConfig opt) {
    const DeviceStatus s = device_status();
    if (!s.ok) throw std::runtime_error("CUDA is not available: " + s.reason + ".");
    return std::make_unique<Engine<T, GpuDev>>(std::move(layers), loss, std::move(metrics), std::move(opt));
}

template <typename T>
std::unique_ptr<EngineApi<T>> make_host_engine(std::vector<LayerSpec> layers, LossKind loss,
                                               std::vector<MetricKind> metrics, OptimizerConfig opt, bool epilogues) {
    auto e = std::make_unique<Engine<T, HostDev>>(std::move(layers), loss, std::move(metrics), std::move(opt));
    e->dev().epilogues = epilogues;
    return e;
}

template std::unique_ptr<EngineApi<float>> make_gpu_engine<float>(std::vector<LayerSpec>, LossKind,
                                                                  std::vector<MetricKind>, OptimizerConfig);
template std::unique_ptr<EngineApi<double>> make_gpu_engine<double>(std::vector<LayerSpec>, LossKind,
                                                                    std::vector<MetricKind>, OptimizerConfig);
template std::unique_ptr<EngineApi<float>> make_host_engine<float>(std::vector<LayerSpec>, LossKind,
                                                                   std::vector<MetricKind>, OptimizerConfig, bool);
template std::unique_ptr<EngineApi<double>> make_host_engine<double>(std::vector<LayerSpec>, LossKind,
                                                                     std::vector<MetricKind>, OptimizerConfig, bool);

}  // namespace gpu
}  // namespace fastmlp
