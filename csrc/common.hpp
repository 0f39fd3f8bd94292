// Shared vocabulary of the fastmlp kernels: enums for activations, losses and metrics, the
// engine's configuration structs, and the argument checks that turn a bad call into a C++
// exception (never an abort).
//
// ISA variants: the kernels and the engine are compiled once per instruction set (CMakeLists.txt),
// each time with FASTMLP_ISA naming the namespace their code lives in (fastmlp::base,
// fastmlp::avx2, fastmlp::avx512) and FASTMLP_VEC_BYTES the vector width. Everything declared here
// is outside those namespaces: it is the vocabulary the variants share.
#pragma once

#include <atomic>
#include <cstdint>
#if defined(__SSE__)
#include <xmmintrin.h>
#endif
#include <stdexcept>
#include <string>
#include <vector>

#ifndef FASTMLP_ISA
#define FASTMLP_ISA base
#define FASTMLP_VEC_BYTES 16
#endif
// A variant's instruction set is enabled by a target pragma around its own namespace only (not by
// command-line flags), so that the library templates it instantiates (std::vector, std::string,
// ...) are compiled for the baseline: the linker keeps one copy of those, and whichever copy it
// keeps runs on every CPU.
#define FASTMLP_PRAGMA_(x) _Pragma(#x)
#define FASTMLP_PRAGMA(x) FASTMLP_PRAGMA_(x)
#ifdef FASTMLP_ISA_TARGET
#define FASTMLP_ISA_BEGIN                                  \
    FASTMLP_PRAGMA(GCC push_options)                       \
    FASTMLP_PRAGMA(GCC target(FASTMLP_ISA_TARGET))         \
    namespace fastmlp {                                    \
    inline namespace FASTMLP_ISA {
#define FASTMLP_ISA_END \
    }                   \
    }                   \
    FASTMLP_PRAGMA(GCC pop_options)
#else
#define FASTMLP_ISA_BEGIN namespace fastmlp { inline namespace FASTMLP_ISA {
#define FASTMLP_ISA_END } }
#endif

namespace fastmlp {

using index_t = std::int64_t;

enum class Act {
    Linear, Relu, Sigmoid, Tanh, Softmax,
    LeakyRelu, Elu, Selu, HardSigmoid, Softplus, Softsign, Exponential,
    Gelu, Swish,
};

// Gelu and swish have no derivative written in their output alone: training keeps their
// pre-activation Z (activations.hpp act_backward_row_z).
constexpr bool needs_preactivation(Act a) { return a == Act::Gelu || a == Act::Swish; }
enum class LossKind {
    BinaryCrossentropy,
    CategoricalCrossentropy,
    SparseCategoricalCrossentropy,
    MeanSquaredError,
    // The cross-entropies on logits (Keras's from_logits=True), and the regression losses below,
    // run on the row-major kernels only (the narrow path transposes its output block for them).
    BinaryCrossentropyLogits,
    CategoricalCrossentropyLogits,
    SparseCategoricalCrossentropyLogits,
    MeanAbsoluteError,
    Huber,
};

inline bool is_sparse(LossKind k) {
    return k == LossKind::SparseCategoricalCrossentropy || k == LossKind::SparseCategoricalCrossentropyLogits;
}
enum class MetricKind { BinaryAccuracy, CategoricalAccuracy, SparseCategoricalAccuracy, MeanAbsoluteError, MeanSquaredError };

// Keras's epsilon for clipping probabilities inside the cross-entropies.
constexpr double kEpsilon = 1e-7;

// A matrix product C (M, N), row stride ldc := act(op(A) op(B) + bias): A(m, p) = A[m*ars + p*acs],
// B(p, n) = B[p*brs + n*bcs] (gemm.hpp has the contract).
template <typename T>
struct SgdStore;
template <typename T>
struct GemmArgs {
    T* C;
    index_t ldc;
    const T* A;
    index_t ars, acs;
    const T* B;
    index_t brs, bcs;
    index_t M, N, K;
    const T* bias;
    Act act;
    const SgdStore<T>* sgd = nullptr;  // gemm_sgd: the momentum-SGD step applied with C's final values
};

// One momentum-SGD step's settings (optim.hpp sgd_update's rule): *bad is set nonzero when a
// new weight is NaN or infinite.
template <typename T>
struct SgdStep {
    T lr, mu;
    bool nesterov;
    std::atomic<int>* bad;
};

// The step that a weight-gradient product applies with each element g = C[m, n] once it is final
// (gemm.hpp gemm_sgd): W[m, n] and V[m, n] (row stride ld; V null when mu == 0) are updated in
// place. C is scratch (written when the product's K is blocked, undefined after).
template <typename T>
struct SgdStore {
    T* w;
    T* v;
    index_t ld;
    SgdStep<T> step;
};

// Keras's BatchNormalization (csrc/batchnorm.hpp has the maths): its settings and the L1/L2
// penalties of its gamma and beta. center=False: no beta; scale=False: no gamma.
struct BatchNormSpec {
    bool on = false;
    double momentum = 0.99, epsilon = 1e-3;
    bool center = true, scale = true;
    double gamma_l1 = 0, gamma_l2 = 0, beta_l1 = 0, beta_l2 = 0;
};

struct LayerSpec {
    index_t in = 0;
    index_t out = 0;
    Act act = Act::Linear;
    bool use_bias = true;
    // Keras's L1/L2 weight penalties: l1 * sum|w| + l2 * sum w^2, added to the loss (no 1/2).
    double kernel_l1 = 0, kernel_l2 = 0, bias_l1 = 0, bias_l2 = 0;
    // Keras's Dropout(rate, seed) on this layer's INPUT, in training only (csrc/dropout.hpp); 0: none.
    double dropout = 0;
    std::uint64_t dropout_seed = 0;
    // Batch normalizations: bn_in of this layer's input (after its dropout), bn_out of its output
    // act(X W + b), followed by the activation bn_act (Keras's Activation layer after the
    // BatchNormalization; Linear without bn_out).
    BatchNormSpec bn_in{}, bn_out{};
    Act bn_act = Act::Linear;
};

enum class OptKind { SGD, Adam, RMSprop, Adagrad };

// The optimizer and its Keras 3 hyperparameters (each kind reads its own; optim.hpp has the rules).
// decay is Keras 2's inverse time decay of the learning rate, per update, for every kind.
struct OptimizerConfig {
    OptKind kind = OptKind::SGD;
    double learning_rate = 0.01;
    double decay = 0.0;
    double momentum = 0.0;      // SGD, RMSprop
    bool nesterov = false;      // SGD
    double beta_1 = 0.9;        // Adam
    double beta_2 = 0.999;      // Adam
    double epsilon = 1e-7;      // Adam, RMSprop, Adagrad
    double rho = 0.9;           // RMSprop
    double weight_decay = 0.0;  // decoupled (AdamW and any kind): w -= w * weight_decay * lr_t first
    double initial_accumulator = 0.1;  // Adagrad
    // Gradient clipping, Keras 3's (at most one is set; 0 = off): clipnorm per weight array,
    // global_clipnorm over all of them, clipvalue elementwise.
    double clipnorm = 0.0;
    double global_clipnorm = 0.0;
    double clipvalue = 0.0;
    // Learning-rate schedule of the update count t (Keras 3 optimizers/schedules), replacing
    // learning_rate when set: "exponential", "inverse_time" (initial, decay_steps, decay_rate,
    // staircase), "piecewise" (boundaries, values), "cosine" (initial, decay_steps, alpha).
    std::string schedule;
    double initial = 0.0, decay_steps = 1.0, decay_rate = 0.0, alpha = 0.0;
    bool staircase = false;
    std::vector<double> boundaries, values;
};

// Why a run of training steps ended before the steps asked for.
enum class StopReason {
    None,
    Interrupted,        // the interrupt check said stop (Ctrl-C): the last step finished first
    NonFiniteLoss,      // a batch's loss was NaN or infinite: its update was NOT applied
    NonFiniteWeights,   // an update made a weight NaN or infinite (the loss was finite)
};

// Running sums of one epoch: the loss and metric values summed over samples, and how it stopped.
struct EpochSums {
    double loss = 0;
    std::vector<double> metrics;
    index_t samples = 0;
    double weight_sum = 0;  // the samples' weights summed (= samples without sample weights)
    index_t steps_done = 0;
    index_t steps_total = 0;
    StopReason stop = StopReason::None;
    index_t bad_layer = -1;  // NonFinite*: the first layer whose gradient (or weights) is not finite
    std::string bad_part;    // "kernel" or "bias" of that layer; empty if only the loss was
};

Act parse_act(const std::string& name);
LossKind parse_loss(const std::string& name);
MetricKind parse_metric(const std::string& name);

// While alive, float operations on this thread flush subnormal results and inputs to zero (the
// x86 MXCSR FTZ and DAZ bits; a no-op elsewhere), restoring the caller's mode on exit. Subnormal
// arithmetic is up to a hundred times slower, and momentum drives the state of dead units through
// that range; TensorFlow trains in this mode too. It is deterministic: the same bits every run.
class FlushDenormals {
public:
#if defined(__SSE__)
    FlushDenormals() : saved_(_mm_getcsr()) { _mm_setcsr(saved_ | 0x8040u); }
    ~FlushDenormals() { _mm_setcsr(saved_); }

private:
    unsigned saved_;
#endif
};

inline void require(bool ok, const std::string& what) {
    if (!ok) throw std::invalid_argument(what);
}
// The same for a literal message, without building a std::string (a heap allocation) on every call:
// hot paths check their contracts with this one.
inline void require(bool ok, const char* what) {
    if (!ok) throw std::invalid_argument(what);
}

// The loss options every engine takes: Huber's delta (> 0) and Keras's label_smoothing (in [0, 1],
// not with sparse labels).
inline void check_loss_options(double huber_delta, double label_smoothing, bool sparse) {
    require(huber_delta > 0, "Huber's delta must be positive; received " + std::to_string(huber_delta) + ".");
    require(label_smoothing >= 0 && label_smoothing <= 1,
            "label_smoothing must be in [0, 1]; received " + std::to_string(label_smoothing) + ".");
    require(label_smoothing == 0 || !sparse, "label_smoothing does not apply to sparse labels.");
}

}  // namespace fastmlp
