// The engine's shared state (EngineBase), names, and the choice of the engine's instruction-set
// variant at run time. Compiled once, with the baseline flags.
#include <cmath>
#include <cstdlib>
#include <memory>
#include <string>
#include <tuple>
#include <vector>

#include "engine_api.hpp"

namespace fastmlp {

// Each variant's factory, defined in its own compilation of engine.cpp.
#define FASTMLP_DECLARE_VARIANT(NS)                                                                          \
    namespace NS {                                                                                           \
    template <typename T>                                                                                    \
    std::unique_ptr<EngineBase<T>> create_engine(std::vector<LayerSpec>, LossKind, std::vector<MetricKind>, \
                                                 OptimizerConfig);                                                 \
    template <typename T>                                                                                    \
    double run_gemm(const GemmArgs<T>&, bool, index_t);                                                      \
    double fma_peak(index_t);                                                                                \
    }
FASTMLP_DECLARE_VARIANT(base)
#ifdef FASTMLP_HAVE_AVX2
FASTMLP_DECLARE_VARIANT(avx2)
#endif
#ifdef FASTMLP_HAVE_AVX512
FASTMLP_DECLARE_VARIANT(avx512)
#endif

// Checks a batch normalization of `width` features and places it: its gamma and beta at the end of
// the parameter arena (advancing `size`), its moving mean and variance at the end of moving_.
template <typename T>
typename EngineBase<T>::BatchNormOffsets EngineBase<T>::place_batchnorm(const BatchNormSpec& bn, index_t width,
                                                                        const std::string& where, index_t& size) {
    BatchNormOffsets off;
    if (!bn.on) return off;
    require(bn.epsilon > 0 && std::isfinite(bn.epsilon),
            where + "'s batch normalization: epsilon must be positive; received " + std::to_string(bn.epsilon) + ".");
    require(bn.momentum >= 0 && bn.momentum <= 1, where + "'s batch normalization: momentum must be in [0, 1]; "
                                                          "received " + std::to_string(bn.momentum) + ".");
    if (bn.scale) {
        off.gamma = size;
        size += width;
    }
    if (bn.center) {
        off.beta = size;
        size += width;
    }
    off.moving = static_cast<index_t>(moving_.size());
    moving_.resize(moving_.size() + width, T(0));
    moving_.resize(moving_.size() + width, T(1));
    return off;
}

template <typename T>
EngineBase<T>::EngineBase(std::vector<LayerSpec> layers, LossKind loss, std::vector<MetricKind> metrics,
                          OptimizerConfig opt)
    : layers_(std::move(layers)), loss_(loss), metrics_(std::move(metrics)), opt_(opt) {
    require(!layers_.empty(), "A model needs at least one layer.");
    index_t size = 0;
    for (std::size_t l = 0; l < layers_.size(); ++l) {
        const LayerSpec& s = layers_[l];
        require(s.in > 0 && s.out > 0, "Layer " + std::to_string(l) + " has a non-positive size: " +
                                           std::to_string(s.in) + " x " + std::to_string(s.out) + ".");
        require(s.in <= (index_t(1) << 40) / s.out, "Layer " + std::to_string(l) + " is too large: " +
                                                      std::to_string(s.in) + " x " + std::to_string(s.out) + " weights.");
        if (l > 0)  // (the message reads layers_[l - 1]: it must not be built for l == 0)
            require(s.in == layers_[l - 1].out,
                    "Layer " + std::to_string(l) + " expects " + std::to_string(s.in) +
                        " inputs but the previous layer has " + std::to_string(layers_[l - 1].out) + " units.");
        require(s.dropout >= 0 && s.dropout < 1, "Layer " + std::to_string(l) + ": the dropout rate must be in "
                                                 "[0, 1); received " + std::to_string(s.dropout) + ".");
        require(s.bn_out.on || s.bn_act == Act::Linear,
                "Layer " + std::to_string(l) + ": an activation after the batch normalization needs one.");
        bn_in_off_.push_back(place_batchnorm(s.bn_in, s.in, "Layer " + std::to_string(l) + "'s input", size));
        w_off_.push_back(size);
        size += s.in * s.out;
        b_off_.push_back(s.use_bias ? size : -1);
        if (s.use_bias) size += s.out;
        bn_out_off_.push_back(place_batchnorm(s.bn_out, s.out, "Layer " + std::to_string(l) + "'s output", size));
    }
    require(opt_.schedule != "piecewise" || (!opt_.values.empty() && opt_.values.size() == opt_.boundaries.size() + 1),
            "A piecewise-constant schedule needs one more value than boundaries; received " +
                std::to_string(opt_.values.size()) + " values and " + std::to_string(opt_.boundaries.size()) +
                " boundaries.");
    require(opt_.decay_steps > 0, "A schedule's decay_steps must be positive.");
    for (MetricKind m : metrics_) {
        require(m != MetricKind::SparseCategoricalAccuracy || is_sparse(loss_),
                "sparse_categorical_accuracy needs the sparse_categorical_crossentropy loss (integer labels).");
        require(!is_sparse(loss_) || m == MetricKind::SparseCategoricalAccuracy,
                "With integer labels (a sparse loss) the only metric is sparse_categorical_accuracy.");
    }
    params_.assign(size, T(0));
    grads_.assign(size, T(0));
    velocity_.assign(size, T(opt_.kind == OptKind::Adagrad ? opt_.initial_accumulator : 0.0));
    second_.assign(opt_.kind == OptKind::Adam || opt_.kind == OptKind::RMSprop ? size : 0, T(0));
}

template <typename T>
void EngineBase<T>::locate_nonfinite(const std::vector<T>& arena, EpochSums& sums) const {
    for (std::size_t l = 0; l < layers_.size(); ++l) {
        const LayerSpec& s = layers_[l];
        // Each part in arena order: (offset or -1, size, name).
        const std::tuple<index_t, index_t, const char*> parts[] = {
            {bn_in_off_[l].gamma, s.in, "input_gamma"}, {bn_in_off_[l].beta, s.in, "input_beta"},
            {w_off_[l], s.in * s.out, "kernel"},       {b_off_[l], s.out, "bias"},
            {bn_out_off_[l].gamma, s.out, "gamma"},    {bn_out_off_[l].beta, s.out, "beta"}};
        for (const auto& [offset, n, name] : parts) {
            if (offset < 0) continue;
            for (index_t i = 0; i < n; ++i)
                if (!std::isfinite(arena[offset + i])) {
                    sums.bad_layer = static_cast<index_t>(l);
                    sums.bad_part = name;
                    return;
                }
        }
    }
}

template class EngineBase<float>;
template class EngineBase<double>;

Act parse_act(const std::string& name) {
    if (name == "linear") return Act::Linear;
    if (name == "relu") return Act::Relu;
    if (name == "sigmoid") return Act::Sigmoid;
    if (name == "tanh") return Act::Tanh;
    if (name == "softmax") return Act::Softmax;
    if (name == "leaky_relu") return Act::LeakyRelu;
    if (name == "elu") return Act::Elu;
    if (name == "selu") return Act::Selu;
    if (name == "hard_sigmoid") return Act::HardSigmoid;
    if (name == "softplus") return Act::Softplus;
    if (name == "softsign") return Act::Softsign;
    if (name == "exponential") return Act::Exponential;
    if (name == "gelu") return Act::Gelu;
    if (name == "silu" || name == "swish") return Act::Swish;
    throw std::invalid_argument("Unknown activation '" + name +
                                "'. Expected one of: linear, relu, sigmoid, tanh, softmax, leaky_relu, elu, selu, "
                                "hard_sigmoid, softplus, softsign, exponential, gelu, silu (swish).");
}

LossKind parse_loss(const std::string& name) {
    if (name == "binary_crossentropy") return LossKind::BinaryCrossentropy;
    if (name == "categorical_crossentropy") return LossKind::CategoricalCrossentropy;
    if (name == "sparse_categorical_crossentropy") return LossKind::SparseCategoricalCrossentropy;
    if (name == "mean_squared_error") return LossKind::MeanSquaredError;
    if (name == "binary_crossentropy_from_logits") return LossKind::BinaryCrossentropyLogits;
    if (name == "categorical_crossentropy_from_logits") return LossKind::CategoricalCrossentropyLogits;
    if (name == "sparse_categorical_crossentropy_from_logits") return LossKind::SparseCategoricalCrossentropyLogits;
    if (name == "mean_absolute_error") return LossKind::MeanAbsoluteError;
    if (name == "huber") return LossKind::Huber;
    throw std::invalid_argument("Unknown loss '" + name +
                                "'. Expected one of: binary_crossentropy, categorical_crossentropy, "
                                "sparse_categorical_crossentropy, mean_squared_error, mean_absolute_error, huber, "
                                "and the three cross-entropies with the suffix _from_logits.");
}

MetricKind parse_metric(const std::string& name) {
    if (name == "binary_accuracy") return MetricKind::BinaryAccuracy;
    if (name == "categorical_accuracy") return MetricKind::CategoricalAccuracy;
    if (name == "sparse_categorical_accuracy") return MetricKind::SparseCategoricalAccuracy;
    if (name == "mean_absolute_error") return MetricKind::MeanAbsoluteError;
    if (name == "mean_squared_error") return MetricKind::MeanSquaredError;
    throw std::invalid_argument("Unknown metric '" + name +
                                "'. Expected one of: binary_accuracy, categorical_accuracy, "
                                "sparse_categorical_accuracy, mean_absolute_error, mean_squared_error.");
}

std::vector<std::string> built_isas() {
    std::vector<std::string> out;
#ifdef FASTMLP_HAVE_AVX512
    out.push_back("avx512");
#endif
#ifdef FASTMLP_HAVE_AVX2
    out.push_back("avx2");
#endif
    out.push_back("base");
    return out;
}

static bool cpu_runs(const std::string& isa) {
#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
    __builtin_cpu_init();
    if (isa == "avx512")
        return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
               __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
               __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    if (isa == "avx2") return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#endif
    return isa == "base";
}

std::vector<std::string> supported_isas() {
    std::vector<std::string> out;
    for (const std::string& isa : built_isas())
        if (cpu_runs(isa)) out.push_back(isa);
    return out;
}

// The variant to run: `isa`, or the best supported one when it is empty.
static std::string pick_isa(const std::string& isa) {
    const std::vector<std::string> ok = supported_isas();
    const std::string pick = isa.empty() ? ok.front() : isa;
    for (const std::string& s : ok)
        if (s == pick) return pick;
    std::string list;
    for (const std::string& s : ok) list += (list.empty() ? "" : ", ") + s;
    throw std::invalid_argument("Instruction set '" + pick + "' is not available on this machine and build. "
                                "Expected one of: " + list + ".");
}

template <typename T>
std::unique_ptr<EngineBase<T>> make_engine(const std::string& isa, std::vector<LayerSpec> layers, LossKind loss,
                                           std::vector<MetricKind> metrics, OptimizerConfig opt) {
    const std::string pick = pick_isa(isa);
#ifdef FASTMLP_HAVE_AVX512
    if (pick == "avx512") return avx512::create_engine<T>(std::move(layers), loss, std::move(metrics), opt);
#endif
#ifdef FASTMLP_HAVE_AVX2
    if (pick == "avx2") return avx2::create_engine<T>(std::move(layers), loss, std::move(metrics), opt);
#endif
    return base::create_engine<T>(std::move(layers), loss, std::move(metrics), opt);
}

template <typename T>
double run_gemm(const std::string& isa, const GemmArgs<T>& call, bool naive, index_t repeats) {
    require(repeats >= 1, "repeats must be at least 1; received " + std::to_string(repeats) + ".");
    const std::string pick = pick_isa(isa);
#ifdef FASTMLP_HAVE_AVX512
    if (pick == "avx512") return avx512::run_gemm<T>(call, naive, repeats);
#endif
#ifdef FASTMLP_HAVE_AVX2
    if (pick == "avx2") return avx2::run_gemm<T>(call, naive, repeats);
#endif
    return base::run_gemm<T>(call, naive, repeats);
}

double fma_peak(const std::string& isa, index_t iterations) {
    require(iterations >= 1, "iterations must be at least 1; received " + std::to_string(iterations) + ".");
    const std::string pick = pick_isa(isa);
#ifdef FASTMLP_HAVE_AVX512
    if (pick == "avx512") return avx512::fma_peak(iterations);
#endif
#ifdef FASTMLP_HAVE_AVX2
    if (pick == "avx2") return avx2::fma_peak(iterations);
#endif
    return base::fma_peak(iterations);
}

template double run_gemm<float>(const std::string&, const GemmArgs<float>&, bool, index_t);
template double run_gemm<double>(const std::string&, const GemmArgs<double>&, bool, index_t);

template std::unique_ptr<EngineBase<float>> make_engine<float>(const std::string&, std::vector<LayerSpec>, LossKind,
                                                               std::vector<MetricKind>, OptimizerConfig);
template std::unique_ptr<EngineBase<double>> make_engine<double>(const std::string&, std::vector<LayerSpec>,
                                                                 LossKind, std::vector<MetricKind>, OptimizerConfig);

}  // namespace fastmlp
