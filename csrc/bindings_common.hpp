// What both Python extensions (fastmlp._core, csrc/bindings.cpp, and fastmlp._cuda,
// csrc/cuda/bindings_cuda.cpp) take from Python and give back the same way: the input array type,
// the row check, an optimizer setting, an epoch's sums as a dict, and an interruptible training call.
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <mutex>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "common.hpp"

namespace fastmlp {
namespace bind {

namespace py = pybind11;

template <typename T>
using carray = py::array_t<T, py::array::c_style | py::array::forcecast>;

template <typename T>
index_t rows_of(const carray<T>& a, const char* name, index_t cols) {
    if (a.ndim() != 2)
        throw std::invalid_argument(std::string(name) + " must be 2-D; received " + std::to_string(a.ndim()) + " dimensions.");
    if (a.shape(1) != cols)
        throw std::invalid_argument(std::string(name) + " must have " + std::to_string(cols) + " columns; received " +
                                    std::to_string(a.shape(1)) + ".");
    return a.shape(0);
}

inline void set_option(OptimizerConfig& c, const std::string& name, py::handle value) {
    if (name == "kind") {
        const auto kind = value.cast<std::string>();
        if (kind == "sgd") c.kind = OptKind::SGD;
        else if (kind == "adam") c.kind = OptKind::Adam;
        else if (kind == "rmsprop") c.kind = OptKind::RMSprop;
        else if (kind == "adagrad") c.kind = OptKind::Adagrad;
        else throw std::invalid_argument("Unknown optimizer kind '" + kind + "'. Expected sgd, adam, rmsprop or adagrad.");
        return;
    }
    if (name == "nesterov" || name == "staircase") {
        (name == "nesterov" ? c.nesterov : c.staircase) = value.cast<bool>();
        return;
    }
    if (name == "schedule") {
        const auto kind = value.cast<std::string>();
        if (!kind.empty() && kind != "exponential" && kind != "inverse_time" && kind != "piecewise" && kind != "cosine")
            throw std::invalid_argument("Unknown schedule '" + kind + "'.");
        c.schedule = kind;
        return;
    }
    if (name == "boundaries" || name == "values") {
        (name == "boundaries" ? c.boundaries : c.values) = value.cast<std::vector<double>>();
        return;
    }
    double* field = name == "learning_rate"         ? &c.learning_rate
                    : name == "decay"               ? &c.decay
                    : name == "momentum"            ? &c.momentum
                    : name == "beta_1"              ? &c.beta_1
                    : name == "beta_2"              ? &c.beta_2
                    : name == "epsilon"             ? &c.epsilon
                    : name == "rho"                 ? &c.rho
                    : name == "weight_decay"        ? &c.weight_decay
                    : name == "initial_accumulator" ? &c.initial_accumulator
                    : name == "clipnorm"            ? &c.clipnorm
                    : name == "global_clipnorm"     ? &c.global_clipnorm
                    : name == "clipvalue"           ? &c.clipvalue
                    : name == "initial"             ? &c.initial
                    : name == "decay_steps"         ? &c.decay_steps
                    : name == "decay_rate"          ? &c.decay_rate
                    : name == "alpha"               ? &c.alpha
                                                    : nullptr;
    if (!field) throw std::invalid_argument("Unknown optimizer setting '" + name + "'.");
    *field = value.cast<double>();
}

inline py::dict sums_to_dict(const EpochSums& s) {
    static const char* reasons[] = {"", "interrupted", "nonfinite_loss", "nonfinite_weights"};
    py::dict d;
    d["loss"] = s.loss;
    d["metrics"] = s.metrics;
    d["samples"] = s.samples;
    d["weight_sum"] = s.weight_sum;
    d["steps_done"] = s.steps_done;
    d["steps_total"] = s.steps_total;
    d["stop"] = reasons[static_cast<int>(s.stop)];
    d["bad_layer"] = s.bad_layer;
    d["bad_part"] = s.bad_part;
    return d;
}

// Whether Ctrl-C was pressed: Python's signal handlers run (the GIL taken for a moment); a
// KeyboardInterrupt they raise is left set.
inline bool python_interrupted() {
    py::gil_scoped_acquire acquire;
    return PyErr_CheckSignals() != 0;
}

// Runs train() with the GIL released and the engine's mutex held, and returns what it returns.
// Ctrl-C: Python's handler only sets a flag; polling it needs the GIL, taken for a moment every few
// milliseconds through the engine's interrupt check. On a signal, train_steps stops with
// StopReason::Interrupted and the KeyboardInterrupt raised by the check is left set, for the
// caller to re-raise (train_interruptibly) or hand back (train_epochs).
template <typename E, typename F>
auto run_interruptibly(E& e, F&& train) {
    py::gil_scoped_release release;
    std::lock_guard<std::mutex> lock(e.mutex());
    struct Reset {  // the check must not outlive this call, even when train throws
        E& e;
        ~Reset() { e.set_interrupt_check(nullptr); }
    } reset{e};
    e.set_interrupt_check(python_interrupted);
    return train();
}

// Runs train() (one engine's train_steps, returning its EpochSums) as run_interruptibly, and
// returns the sums as a dict; a KeyboardInterrupt is re-raised here, once the step in progress has
// finished.
template <typename E, typename F>
py::dict train_interruptibly(E& e, F&& train) {
    const EpochSums s = run_interruptibly(e, std::forward<F>(train));
    if (s.stop == StopReason::Interrupted && PyErr_Occurred()) throw py::error_already_set();
    return sums_to_dict(s);
}

}  // namespace bind
}  // namespace fastmlp
