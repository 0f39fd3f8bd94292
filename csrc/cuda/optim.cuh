// Optimizer updates on the GPU: one fused pass over the flat parameter arena, and the per-step
// bookkeeping that a captured step runs on the device (the batch's sums, the learning rate of the
// update, the update count). Keras 3's rules, Keras 2's `decay`, exactly as csrc/optim.hpp: see
// there for each formula's source. The settings live in device memory (OptParams), so that a
// change between epochs (a schedule, a callback) reaches a captured step without capturing again.
#pragma once

#include <string>

#include "losses.cuh"

namespace fastmlp {
namespace gpu {

enum class Schedule : int { None, Exponential, InverseTime, Piecewise, Cosine };

// OptimizerConfig (common.hpp) in T, as the CPU engine converts each field where it uses it.
template <typename T>
struct OptParams {
    OptKind kind;
    T learning_rate, decay, momentum, beta_1, beta_2, epsilon, rho, weight_decay, clipvalue;
    int nesterov;
    Schedule schedule;
    T initial, decay_steps, decay_rate, alpha;
    int staircase;
    int pieces;  // boundaries; values has pieces + 1 entries
    T boundaries[kMaxPieces];
    T values[kMaxPieces + 1];
};

// The GPU's OptParams for a configuration (the engine refuses clipnorm, global_clipnorm and
// schedules of more than kMaxPieces pieces before it gets here).
template <typename T>
OptParams<T> make_opt_params(const OptimizerConfig& c) {
    OptParams<T> p{};
    p.kind = c.kind;
    p.learning_rate = T(c.learning_rate);
    p.decay = T(c.decay);
    p.momentum = T(c.momentum);
    p.beta_1 = T(c.beta_1);
    p.beta_2 = T(c.beta_2);
    p.epsilon = T(c.epsilon);
    p.rho = T(c.rho);
    p.weight_decay = T(c.weight_decay);
    p.clipvalue = T(c.clipvalue);
    p.nesterov = c.nesterov ? 1 : 0;
    p.schedule = c.schedule.empty()             ? Schedule::None
                 : c.schedule == "exponential"  ? Schedule::Exponential
                 : c.schedule == "inverse_time" ? Schedule::InverseTime
                 : c.schedule == "piecewise"    ? Schedule::Piecewise
                                                : Schedule::Cosine;
    p.initial = T(c.initial);
    p.decay_steps = T(c.decay_steps);
    p.decay_rate = T(c.decay_rate);
    p.alpha = T(c.alpha);
    p.staircase = c.staircase ? 1 : 0;
    p.pieces = static_cast<int>(c.boundaries.size());
    for (int i = 0; i < p.pieces && i < kMaxPieces; ++i) p.boundaries[i] = T(c.boundaries[i]);
    for (int i = 0; i < static_cast<int>(c.values.size()) && i <= kMaxPieces; ++i) p.values[i] = T(c.values[i]);
    return p;
}

// The learning rate of update number t + 1 (t updates applied): the schedule's value at step t, else
// Keras 2's decay lr / (1 + decay * t). In T, as Keras computes schedules in float32.
template <typename T>
FASTMLP_HD inline T scheduled_lr(const OptParams<T>& c, std::int64_t t) {
    const T step = T(t);
    switch (c.schedule) {
        case Schedule::None: return c.learning_rate / (T(1) + c.decay * step);
        case Schedule::Piecewise: {
            int i = 0;
            while (i < c.pieces && step > c.boundaries[i]) ++i;
            return c.values[i];
        }
        case Schedule::Cosine: {
            const T progress = m_min(step, c.decay_steps) / c.decay_steps;
            const T cosine = T(0.5) * (T(1) + m_cos(T(3.14159265358979323846) * progress));
            return c.initial * ((T(1) - c.alpha) * cosine + c.alpha);
        }
        default: {
            T p = step / c.decay_steps;
            if (c.staircase) p = m_floor(p);
            if (c.schedule == Schedule::Exponential) return c.initial * m_pow(c.decay_rate, p);
            return c.initial / (T(1) + c.decay_rate * p);  // InverseTime
        }
    }
}

// Adam's step size for update number t: lr * sqrt(1 - b2^t) / (1 - b1^t).
template <typename T>
FASTMLP_HD inline T adam_alpha(const OptParams<T>& c, T lr, std::int64_t t) {
    const T tt = T(t);
    return lr * m_sqrt(T(1) - m_pow(c.beta_2, tt)) / (T(1) - m_pow(c.beta_1, tt));
}

// One parameter's update (Keras's order: clipvalue, the decoupled weight decay
// w -= w * weight_decay * lr, then the kind's rule; s1, s2 the optimizer's state, csrc/optim.hpp):
//   SGD      v := mu v - lr g; w += v   (nesterov: w += mu v - lr g; mu == 0: w -= g lr)
//   Adam     m += (g - m)(1 - b1); v += (g^2 - v)(1 - b2); w -= (m alpha) / (sqrt(v) + eps)
//   RMSprop  a := rho a + (1 - rho) g^2; inc = lr g / sqrt(a + eps); w -= inc (or s := mom s + inc; w -= s)
//   Adagrad  a += g^2; w -= lr g / sqrt(a + eps)
// g is written back clipped. Returns whether the new w is finite.
template <typename T>
FASTMLP_HD inline bool update_param(const OptParams<T>& c, T lr, T alpha, T& w, T& g, T* s1, T* s2) {
    T gi = g;
    if (c.clipvalue > T(0)) {
        gi = m_min(m_max(gi, -c.clipvalue), c.clipvalue);
        g = gi;
    }
    if (c.weight_decay > T(0)) w -= w * c.weight_decay * lr;
    switch (c.kind) {
        case OptKind::SGD:
            if (c.momentum == T(0)) {
                w -= gi * lr;
            } else if (c.nesterov) {
                *s1 = *s1 * c.momentum - gi * lr;
                w += *s1 * c.momentum - gi * lr;
            } else {
                *s1 = *s1 * c.momentum - gi * lr;
                w += *s1;
            }
            break;
        case OptKind::Adam:
            *s1 += (gi - *s1) * (T(1) - c.beta_1);
            *s2 += (gi * gi - *s2) * (T(1) - c.beta_2);
            w -= (*s1 * alpha) / (m_sqrt(*s2) + c.epsilon);
            break;
        case OptKind::RMSprop: {
            *s1 = c.rho * *s1 + (T(1) - c.rho) * (gi * gi);
            const T inc = (lr * gi) / m_sqrt(*s1 + c.epsilon);
            if (c.momentum > T(0)) {
                *s2 = c.momentum * *s2 + inc;
                w -= *s2;
            } else {
                w -= inc;
            }
            break;
        }
        case OptKind::Adagrad:
            *s1 += gi * gi;
            w -= (lr * gi) / m_sqrt(*s1 + c.epsilon);
            break;
    }
    return m_finite(w);
}

// ---- kernels ----

// The optimizer over the whole arena: w, g, s1 (n,); s2 (n,) or null. Skipped once the epoch
// stopped (a non-finite loss: that batch's update is not applied). Iteration space: n.
template <typename T>
struct OptimizerUpdate {
    const OptParams<T>* cfg;
    StepState* st;
    T* w;
    T* g;
    T* s1;
    T* s2;
    FASTMLP_HD void operator()(index_t i) const {
        if (st->stop) return;
        T unused = 0;
        if (!update_param(*cfg, T(st->lr), T(st->alpha), w[i], g[i], s1 ? s1 + i : &unused, s2 ? s2 + i : &unused))
            st->weights_bad = 1;  // every writer stores the same value
    }
};

// Sum the batch's chunk sums (RowChunkSums) in chunk order and account for the batch in st.
// Training: a non-finite loss stops the epoch (TerminateOnNaN; the update is then skipped), else
// the sums grow by the batch's and the learning rate (and Adam's step size) of this step's update
// is set from st->iterations. Evaluation: the sums grow. Iteration space: 1.
template <typename T>
struct AccountBatch {
    const double* chunks;
    index_t nchunks, B;
    int nmetrics;
    StepState* st;
    const OptParams<T>* cfg;  // null when evaluating
    FASTMLP_HD void operator()(index_t) const {
        if (cfg && st->stop) return;
        double loss = 0;
        double metrics[kMaxMetrics] = {};
        for (index_t c = 0; c < nchunks; ++c) {
            const double* o = chunks + c * (1 + nmetrics);
            loss += o[0];
            for (int m = 0; m < nmetrics; ++m) metrics[m] += o[1 + m];
        }
        if (cfg && !m_finite_d(loss)) {
            st->stop = static_cast<int>(StopReason::NonFiniteLoss);
            return;
        }
        st->loss += loss;
        for (int m = 0; m < nmetrics; ++m) st->metrics[m] += metrics[m];
        st->samples += B;
        if (cfg) {
            const T lr = scheduled_lr(*cfg, st->iterations);
            st->lr = static_cast<double>(lr);
            st->alpha = cfg->kind == OptKind::Adam ? static_cast<double>(adam_alpha(*cfg, lr, st->iterations + 1)) : 0.0;
        }
    }
};

// The end of a step: one more update applied and step done; an update that made a weight
// non-finite stops the epoch after it (its sums count, as on the CPU). Iteration space: 1.
struct FinishStep {
    StepState* st;
    FASTMLP_HD void operator()(index_t) const {
        if (st->stop) return;
        st->iterations += 1;
        st->step += 1;
        if (st->weights_bad) st->stop = static_cast<int>(StopReason::NonFiniteWeights);
    }
};

// The start of an epoch (or of an evaluation): sums and stop cleared; the update count kept, or
// set when iterations >= 0. Iteration space: 1.
struct ResetState {
    StepState* st;
    std::int64_t iterations;
    FASTMLP_HD void operator()(index_t) const {
        st->step = 0;
        st->samples = 0;
        st->stop = 0;
        st->weights_bad = 0;
        st->loss = 0;
        for (int m = 0; m < kMaxMetrics; ++m) st->metrics[m] = 0;
        if (iterations >= 0) st->iterations = iterations;
    }
};

// iterations := t (the Python optimizer's `iterations`, set between epochs). Iteration space: 1.
struct SetIterations {
    StepState* st;
    std::int64_t iterations;
    FASTMLP_HD void operator()(index_t) const { st->iterations = iterations; }
};

}  // namespace gpu
}  // namespace fastmlp
