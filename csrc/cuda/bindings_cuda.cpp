// Python bindings of fastmlp._cuda: the CUDA engine (float32 and float64), on the GPU or emulated
// on the host, and the device's status. Built only with -DFASTMLP_CUDA=ON; fastmlp._core never
// links CUDA.
//
// The engine has the CPU engine's interface (csrc/bindings.cpp) except that training data is
// handed over once (set_train_data) and stays on the device: train_steps takes only max_steps.
// Copies are explicit: inputs are taken as C-contiguous arrays of the engine's dtype (`forcecast`),
// outputs are allocated here; the GIL is released around device work.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <string>
#include <vector>

#include "../bindings_common.hpp"
#include "engine.hpp"

namespace py = pybind11;
using namespace fastmlp;
using namespace fastmlp::bind;
using fastmlp::gpu::Arena;
using fastmlp::gpu::EngineApi;

namespace {

[[noreturn]] void unsupported_name(const std::string& what, const std::string& name, const char* valid) {
    throw gpu::unsupported(what + " '" + name + "' is not supported on backend='cuda'. Supported there: " + valid +
                           ". Use backend='cpu' for it.");
}

// The names the CUDA engine runs (a subset of the CPU engine's may come later: each unknown name
// is refused with the list).
Act act_of(const std::string& n) {
    static const char* valid = "linear, relu, sigmoid, tanh, softmax, leaky_relu, elu, selu, hard_sigmoid, "
                               "softplus, softsign, exponential";
    const std::pair<const char*, Act> table[] = {
        {"linear", Act::Linear},       {"relu", Act::Relu},         {"sigmoid", Act::Sigmoid},
        {"tanh", Act::Tanh},           {"softmax", Act::Softmax},   {"leaky_relu", Act::LeakyRelu},
        {"elu", Act::Elu},             {"selu", Act::Selu},         {"hard_sigmoid", Act::HardSigmoid},
        {"softplus", Act::Softplus},   {"softsign", Act::Softsign}, {"exponential", Act::Exponential}};
    for (const auto& [name, act] : table)
        if (n == name) return act;
    unsupported_name("Activation", n, valid);
}

LossKind loss_of(const std::string& n) {
    static const char* valid = "binary_crossentropy, categorical_crossentropy, sparse_categorical_crossentropy (and "
                               "the three with from_logits), mean_squared_error, mean_absolute_error, huber";
    const std::pair<const char*, LossKind> table[] = {
        {"binary_crossentropy", LossKind::BinaryCrossentropy},
        {"categorical_crossentropy", LossKind::CategoricalCrossentropy},
        {"sparse_categorical_crossentropy", LossKind::SparseCategoricalCrossentropy},
        {"mean_squared_error", LossKind::MeanSquaredError},
        {"binary_crossentropy_from_logits", LossKind::BinaryCrossentropyLogits},
        {"categorical_crossentropy_from_logits", LossKind::CategoricalCrossentropyLogits},
        {"sparse_categorical_crossentropy_from_logits", LossKind::SparseCategoricalCrossentropyLogits},
        {"mean_absolute_error", LossKind::MeanAbsoluteError},
        {"huber", LossKind::Huber}};
    for (const auto& [name, kind] : table)
        if (n == name) return kind;
    unsupported_name("Loss", n, valid);
}

MetricKind metric_of(const std::string& n) {
    static const char* valid = "binary_accuracy, categorical_accuracy, sparse_categorical_accuracy, "
                               "mean_absolute_error, mean_squared_error";
    const std::pair<const char*, MetricKind> table[] = {
        {"binary_accuracy", MetricKind::BinaryAccuracy},
        {"categorical_accuracy", MetricKind::CategoricalAccuracy},
        {"sparse_categorical_accuracy", MetricKind::SparseCategoricalAccuracy},
        {"mean_absolute_error", MetricKind::MeanAbsoluteError},
        {"mean_squared_error", MetricKind::MeanSquaredError}};
    for (const auto& [name, kind] : table)
        if (n == name) return kind;
    unsupported_name("Metric", n, valid);
}

template <typename E, typename T>
index_t xy_rows(E& e, const carray<T>& x, const carray<T>& y) {
    const index_t n = rows_of(x, "x", e.layers()[0].in);
    if (rows_of(y, "y", e.target_cols()) != n)
        throw std::invalid_argument("x and y must have the same number of rows; received " + std::to_string(n) +
                                    " and " + std::to_string(y.shape(0)) + ".");
    return n;
}

// f under the engine's lock, with the GIL released while waiting for it and while f runs (a fit
// holding the lock takes the GIL for a moment to poll for Ctrl-C).
template <typename E, typename F>
auto locked(E& e, F&& f) {
    py::gil_scoped_release release;
    std::lock_guard<std::mutex> lock(e.mutex());
    return f();
}

Arena arena_of(const std::string& name) {
    if (name == "params") return Arena::Params;
    if (name == "grads") return Arena::Grads;
    if (name == "velocity") return Arena::Velocity;
    if (name == "second") return Arena::Second;
    throw std::invalid_argument("Unknown arena '" + name + "'. Expected params, grads, velocity or second.");
}

template <typename T>
py::array view(T* base, index_t offset, std::vector<index_t> shape, py::handle owner) {
    std::vector<index_t> strides(shape.size(), sizeof(T));
    for (std::size_t i = shape.size(); i-- > 1;) strides[i - 1] = strides[i] * shape[i];
    return py::array_t<T>(shape, strides, base + offset, owner);
}

template <typename T>
void bind_engine(py::module_& m, const char* name) {
    using E = EngineApi<T>;
    py::class_<E>(m, name)
        .def(py::init([](const std::vector<py::tuple>& specs, const std::string& loss,
                         const std::vector<std::string>& metrics, const py::dict& optimizer, bool emulate,
                         bool epilogues) {
                 std::vector<LayerSpec> layers;
                 for (const py::tuple& t : specs) {
                     if (t.size() != 4 && t.size() != 8)
                         throw std::invalid_argument("A layer spec has 4 or 8 fields; received " +
                                                     std::to_string(t.size()) + ".");
                     LayerSpec spec{t[0].cast<index_t>(), t[1].cast<index_t>(), act_of(t[2].cast<std::string>()),
                                    t[3].cast<bool>()};
                     if (t.size() == 8) {
                         spec.kernel_l1 = t[4].cast<double>();
                         spec.kernel_l2 = t[5].cast<double>();
                         spec.bias_l1 = t[6].cast<double>();
                         spec.bias_l2 = t[7].cast<double>();
                     }
                     layers.push_back(spec);
                 }
                 std::vector<MetricKind> ms;
                 for (const auto& s : metrics) ms.push_back(metric_of(s));
                 OptimizerConfig c;
                 for (const auto& item : optimizer) set_option(c, py::str(item.first), item.second);
                 const LossKind kind = loss_of(loss);
                 py::gil_scoped_release release;
                 return emulate ? gpu::make_host_engine<T>(std::move(layers), kind, std::move(ms), c, epilogues)
                                : gpu::make_gpu_engine<T>(std::move(layers), kind, std::move(ms), c);
             }),
             py::arg("layers"), py::arg("loss"), py::arg("metrics"), py::arg("optimizer"), py::arg("emulate") = false,
             py::arg("epilogues") = true,
             "emulate=True runs the engine's kernels and steps as host loops (no GPU needed); epilogues (emulation "
             "only) whether its products take the bias/ReLU epilogues.")
        .def("params_copy", [](E& e) {
            py::array_t<T> out(e.arena_size(Arena::Params));
            T* o = out.mutable_data();
            locked(e, [&] { e.params_copy(o); });
            return out;
        }, "A copy of the parameter arena, from the device.")
        .def("set_params", [](E& e, const carray<T>& values) {
            if (values.size() != e.arena_size(Arena::Params))
                throw std::invalid_argument("set_params needs " + std::to_string(e.arena_size(Arena::Params)) +
                                            " values; received " + std::to_string(values.size()) + ".");
            const T* v = values.data();
            locked(e, [&] { e.set_params(v); });
        }, "Overwrite the parameter arena on the device (and its host copy).")
        .def("weight_views", [](py::object self, const std::string& arena) {
            // [kernel, bias] per layer: views of the arena's host copy, refreshed from the device now
            // (params: also after every epoch). Writes reach the device at the next call.
            E& e = self.cast<E&>();
            const Arena a = arena_of(arena);
            py::list out;
            if (e.arena_size(a) == 0) return out;  // this optimizer keeps no such state
            T* base = locked(e, [&] { return e.host_arena(a); });
            for (std::size_t l = 0; l < e.layers().size(); ++l) {
                const LayerSpec& s = e.layers()[l];
                out.append(view(base, e.kernel_offset(l), {s.in, s.out}, self));
                if (s.use_bias) out.append(view(base, e.bias_offset(l), {s.out}, self));
            }
            return out;
        })
        .def_property("iterations", [](E& e) { return locked(e, [&] { return e.iterations(); }); },
                      [](E& e, std::int64_t t) { locked(e, [&] { e.set_iterations(t); }); })
        .def("set_loss_options", [](E& e, double delta, double smoothing) {
            locked(e, [&] { e.set_loss_options(delta, smoothing); });
        }, py::arg("huber_delta") = 1.0, py::arg("label_smoothing") = 0.0)
        .def("set_option", [](E& e, const std::string& name, py::handle value) {
            // Parsed into a copy with the GIL held, checked and uploaded under the engine's lock.
            OptimizerConfig c = locked(e, [&] { return e.opt(); });
            set_option(c, name, value);
            locked(e, [&] {
                OptimizerConfig old = e.opt();
                e.opt() = c;
                try {
                    e.apply_opt();
                } catch (...) {
                    e.opt() = old;
                    throw;
                }
            });
        }, "Change one optimizer setting; it applies from the next update.")
        .def_property_readonly("target_cols", &E::target_cols)
        .def("set_train_data", [](E& e, const carray<T>& x, const carray<T>& y) {
            const index_t n = xy_rows(e, x, y);
            const T* xp = x.data();
            const T* yp = y.data();
            locked(e, [&] { e.set_train_data(xp, yp, n); });
        }, "Upload the training data to the device, where it stays until the next set_train_data.")
        .def("begin_epoch", [](E& e, index_t n, index_t batch_size, bool shuffle, std::uint64_t seed,
                               std::uint64_t epoch) {
            locked(e, [&] { e.begin_epoch(n, batch_size, shuffle, seed, epoch); });
        })
        .def("train_steps", [](E& e, index_t max_steps) {
            return train_interruptibly(e, [&] { return e.train_steps(max_steps); });
        }, py::arg("max_steps") = 0)
        .def("predict", [](E& e, const carray<T>& x, index_t batch_size) {
            const index_t n = rows_of(x, "x", e.layers()[0].in);
            py::array_t<T> out({n, e.layers().back().out});
            T* o = out.mutable_data();
            const T* xp = x.data();
            locked(e, [&] { e.predict(xp, n, o, batch_size); });
            return out;
        })
        .def("evaluate", [](E& e, const carray<T>& x, const carray<T>& y, index_t batch_size) {
            const index_t n = xy_rows(e, x, y);
            const T* xp = x.data();
            const T* yp = y.data();
            return sums_to_dict(locked(e, [&] { return e.evaluate(xp, yp, n, batch_size); }));
        })
        .def("compute_gradients", [](E& e, const carray<T>& x, const carray<T>& y) {
            const index_t n = xy_rows(e, x, y);
            const T* xp = x.data();
            const T* yp = y.data();
            return locked(e, [&] { return e.compute_gradients(xp, yp, n); });
        }, "One forward and backward pass over all rows: fills the grads arena, returns the loss sum.")
        .def_property_readonly("path", [](E& e) { return locked(e, [&] { return e.path(); }); },
                               "The training path of the current epoch: fused, graphs or kernels.")
        .def("set_path", [](E& e, const std::string& p) { locked(e, [&] { e.set_path(p); }); },
             "auto, fused (tiny networks), graphs (CUDA Graphs of the multi-kernel step) or kernels (no capture).")
        .def("set_gemm", [](E& e, const std::string& g) { locked(e, [&] { e.set_gemm(g); }); },
             "cublaslt (the default) or naive (the reference kernel).")
        .def_property_readonly("gemm_report", [](E& e) { return locked(e, [&] { return e.gemm_report(); }); });
}

}  // namespace

PYBIND11_MODULE(_cuda, m) {
    m.doc() = "fastmlp's optional CUDA backend: the training engine on the GPU, and its host emulation";
    py::register_exception_translator([](std::exception_ptr p) {
        try {
            if (p) std::rethrow_exception(p);
        } catch (const gpu::unsupported& e) {
            PyErr_SetString(PyExc_NotImplementedError, e.what());
        } catch (const std::invalid_argument& e) {
            PyErr_SetString(PyExc_ValueError, e.what());
        }
    });
    m.def("device_status", [] {
        const gpu::DeviceStatus s = gpu::device_status();
        py::dict d;
        d["available"] = s.ok;
        d["reason"] = s.reason;
        d["device_count"] = s.count;
        d["name"] = s.name;
        d["compute_capability"] = py::make_tuple(s.major, s.minor);
        d["runtime_version"] = s.runtime_version;
        d["driver_version"] = s.driver_version;
        d["cublaslt_version"] = s.cublaslt_version;
        return d;
    }, "Whether a usable GPU is there (and why not), with the versions of the runtime, driver and cuBLASLt.");
    bind_engine<float>(m, "Engine32");
    bind_engine<double>(m, "Engine64");
}
