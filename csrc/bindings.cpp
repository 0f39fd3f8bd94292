// Python bindings of fastmlp._core: the Engine (float32 and float64) and the kernels, exposed so
// that the tests check each one against the NumPy reference.
//
// Copies are explicit: read-only inputs are taken as C-contiguous arrays of the engine's dtype
// (converted by pybind11 when they are not: `forcecast`); outputs are allocated here. The GIL is
// released only around code that touches no Python object.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <chrono>
#include <optional>
#include <string>
#include <tuple>

#include "batchnorm.hpp"
#include "bindings_common.hpp"
#include "dense.hpp"
#include "dropout.hpp"
#include "engine_api.hpp"
#include "losses.hpp"
#include "optim.hpp"
#include "parallel.hpp"
#include "shuffle.hpp"

namespace py = pybind11;
using namespace fastmlp;
using namespace fastmlp::bind;

namespace {

// A NumPy view of [offset, offset + shape) in an arena owned by `owner` (kept alive by the view).
template <typename T>
py::array arena_view(std::vector<T>& arena, index_t offset, std::vector<index_t> shape, py::handle owner) {
    std::vector<index_t> strides(shape.size(), sizeof(T));
    for (std::size_t i = shape.size(); i-- > 1;) strides[i - 1] = strides[i] * shape[i];
    return py::array_t<T>(shape, strides, arena.data() + offset, owner);
}

// Runs f under the engine's lock, with the GIL released while waiting for it: a thread that holds
// the lock (a fit) takes the GIL for a moment to poll for Ctrl-C, so waiting on the lock while
// holding the GIL would deadlock.
template <typename E, typename F>
auto locked(E& e, F&& f) {
    py::gil_scoped_release release;
    std::lock_guard<std::mutex> lock(e.mutex());
    return f();
}

// The sample weights of an engine call: null for None, else a (n,) array of the engine's dtype.
template <typename T>
std::optional<carray<T>> sample_weights(py::handle w, index_t n) {
    if (w.is_none()) return std::nullopt;
    auto a = carray<T>::ensure(w);
    if (!a || a.ndim() != 1 || a.shape(0) != n)
        throw std::invalid_argument("sample_weight must be a 1-D array with one weight per row (" + std::to_string(n) +
                                    ").");
    return a;
}

// A batch normalization's settings from a spec field: None (none) or a dict of momentum, epsilon,
// center, scale, gamma_l1, gamma_l2, beta_l1, beta_l2 (each optional) and, when `act` is given,
// activation (the one after it). Unknown keys are refused.
BatchNormSpec batchnorm_spec(py::handle h, Act* act) {
    BatchNormSpec bn;
    if (h.is_none()) return bn;
    if (!py::isinstance<py::dict>(h))
        throw std::invalid_argument("A layer spec's batch normalization field is None or a dict; received " +
                                    std::string(py::str(py::type::of(h).attr("__name__"))) + ".");
    bn.on = true;
    for (const auto& item : py::reinterpret_borrow<py::dict>(h)) {
        const std::string key = py::str(item.first);
        const py::handle v = item.second;
        if (key == "momentum") bn.momentum = v.cast<double>();
        else if (key == "epsilon") bn.epsilon = v.cast<double>();
        else if (key == "center") bn.center = v.cast<bool>();
        else if (key == "scale") bn.scale = v.cast<bool>();
        else if (key == "gamma_l1") bn.gamma_l1 = v.cast<double>();
        else if (key == "gamma_l2") bn.gamma_l2 = v.cast<double>();
        else if (key == "beta_l1") bn.beta_l1 = v.cast<double>();
        else if (key == "beta_l2") bn.beta_l2 = v.cast<double>();
        else if (key == "activation" && act) *act = parse_act(v.cast<std::string>());
        else
            throw std::invalid_argument("Unknown batch normalization setting '" + key +
                                        "'. Expected momentum, epsilon, center, scale, gamma_l1, gamma_l2, beta_l1, "
                                        "beta_l2" +
                                        (act ? std::string(" or activation.") : std::string(".")));
    }
    return bn;
}

// The rows of a batch (x, y) for engine e: x's and y's shapes checked against its input and
// target widths and against each other.
template <typename T, typename E>
index_t batch_rows(const E& e, const carray<T>& x, const carray<T>& y) {
    const index_t n = rows_of(x, "x", e.layers()[0].in);
    if (rows_of(y, "y", e.target_cols()) != n)
        throw std::invalid_argument("x and y must have the same number of rows; received " + std::to_string(n) +
                                    " and " + std::to_string(y.shape(0)) + ".");
    return n;
}

template <typename T>
void bind_engine(py::module_& m, const char* name) {
    using E = EngineBase<T>;
    py::class_<E>(m, name)
        .def(py::init([](const std::vector<py::tuple>& specs, const std::string& loss,
                         const std::vector<std::string>& metrics, const py::dict& optimizer, const std::string& isa) {
                 // Each layer: (in, out, activation, use_bias[, kernel_l1, kernel_l2, bias_l1, bias_l2
                 // [, dropout rate on its input, dropout seed[, input batch normalization, output batch
                 // normalization]]]), each batch normalization None or a dict (batchnorm_spec).
                 std::vector<LayerSpec> layers;
                 for (const py::tuple& t : specs) {
                     if (t.size() != 4 && t.size() != 8 && t.size() != 10 && t.size() != 12)
                         throw std::invalid_argument("A layer spec has 4, 8, 10 or 12 fields; received " +
                                                     std::to_string(t.size()) + ".");
                     LayerSpec spec{t[0].cast<index_t>(), t[1].cast<index_t>(), parse_act(t[2].cast<std::string>()),
                                    t[3].cast<bool>()};
                     if (t.size() >= 8) {
                         spec.kernel_l1 = t[4].cast<double>();
                         spec.kernel_l2 = t[5].cast<double>();
                         spec.bias_l1 = t[6].cast<double>();
                         spec.bias_l2 = t[7].cast<double>();
                     }
                     if (t.size() >= 10) {
                         spec.dropout = t[8].cast<double>();
                         spec.dropout_seed = t[9].cast<std::uint64_t>();
                     }
                     if (t.size() == 12) {
                         spec.bn_in = batchnorm_spec(t[10], nullptr);
                         spec.bn_out = batchnorm_spec(t[11], &spec.bn_act);
                     }
                     layers.push_back(spec);
                 }
                 std::vector<MetricKind> ms;
                 for (const auto& s : metrics) ms.push_back(parse_metric(s));
                 OptimizerConfig c;
                 for (const auto& item : optimizer) set_option(c, py::str(item.first), item.second);
                 return make_engine<T>(isa, std::move(layers), parse_loss(loss), std::move(ms), c);
             }),
             py::arg("layers"), py::arg("loss"), py::arg("metrics"), py::arg("optimizer"), py::arg("isa") = "",
             "optimizer: a dict of OptimizerConfig fields (csrc/common.hpp), 'kind' one of sgd, adam, rmsprop, "
             "adagrad.")
        .def_property_readonly("isa", &E::isa)
        .def("params_copy", [](E& e) {
            py::array_t<T> out(static_cast<index_t>(e.params().size()));
            T* o = out.mutable_data();
            locked(e, [&] { std::copy(e.params().begin(), e.params().end(), o); });
            return out;
        }, "A copy of the parameter arena, taken between training steps.")
        .def("set_params", [](E& e, const carray<T>& values) {
            if (values.size() != static_cast<index_t>(e.params().size()))
                throw std::invalid_argument("set_params needs " + std::to_string(e.params().size()) +
                                            " values; received " + std::to_string(values.size()) + ".");
            const T* v = values.data();
            locked(e, [&] { std::copy(v, v + e.params().size(), e.params().begin()); });
        }, "Overwrite the parameter arena, between training steps.")
        .def("moving_copy", [](E& e) {
            py::array_t<T> out(static_cast<index_t>(e.moving().size()));
            T* o = out.mutable_data();
            locked(e, [&] { std::copy(e.moving().begin(), e.moving().end(), o); });
            return out;
        }, "A copy of the batch normalizations' moving statistics, taken between training steps.")
        .def("set_moving", [](E& e, const carray<T>& values) {
            if (values.size() != static_cast<index_t>(e.moving().size()))
                throw std::invalid_argument("set_moving needs " + std::to_string(e.moving().size()) +
                                            " values; received " + std::to_string(values.size()) + ".");
            const T* v = values.data();
            locked(e, [&] { std::copy(v, v + e.moving().size(), e.moving().begin()); });
        }, "Overwrite the moving statistics, between training steps.")
        .def_property_readonly("params", [](py::object self) {
            E& e = self.cast<E&>();
            return arena_view(e.params(), 0, {static_cast<index_t>(e.params().size())}, self);
        })
        .def_property_readonly("grads", [](py::object self) {
            E& e = self.cast<E&>();
            return arena_view(e.grads(), 0, {static_cast<index_t>(e.grads().size())}, self);
        })
        .def_property_readonly("velocity", [](py::object self) {
            E& e = self.cast<E&>();
            return arena_view(e.velocity(), 0, {static_cast<index_t>(e.velocity().size())}, self);
        })
        .def_property_readonly("second", [](py::object self) {
            E& e = self.cast<E&>();
            return arena_view(e.second(), 0, {static_cast<index_t>(e.second().size())}, self);
        })
        .def("weight_views", [](py::object self, const std::string& arena) {
            // Views of the trainable weights in Keras's order, into params, grads, velocity or second:
            // per layer its input batch normalization's [gamma, beta], [kernel, bias], its output
            // batch normalization's [gamma, beta] (those it has). "moving": the batch normalizations'
            // [moving_mean, moving_variance], in the same order.
            E& e = self.cast<E&>();
            if (arena != "params" && arena != "grads" && arena != "velocity" && arena != "second" && arena != "moving")
                throw std::invalid_argument("Unknown arena '" + arena +
                                            "'. Expected params, grads, velocity, second or moving.");
            std::vector<T>& a = arena == "params" ? e.params() : arena == "grads" ? e.grads()
                                : arena == "velocity"                           ? e.velocity()
                                : arena == "second"                             ? e.second()
                                                                                : e.moving();
            if (a.empty()) return py::list();  // this optimizer keeps no such state, or no batch normalization
            py::list out;
            const bool moving = arena == "moving";
            auto batchnorm = [&](std::size_t l, bool input, index_t n) {
                const auto& off = e.bn_offsets(l, input);
                if (moving && off.moving >= 0) {
                    out.append(arena_view(a, off.moving, {n}, self));
                    out.append(arena_view(a, off.moving + n, {n}, self));
                }
                if (!moving && off.gamma >= 0) out.append(arena_view(a, off.gamma, {n}, self));
                if (!moving && off.beta >= 0) out.append(arena_view(a, off.beta, {n}, self));
            };
            for (std::size_t l = 0; l < e.layers().size(); ++l) {
                const LayerSpec& s = e.layers()[l];
                batchnorm(l, true, s.in);
                if (!moving) {
                    out.append(arena_view(a, e.kernel_offset(l), {s.in, s.out}, self));
                    if (s.use_bias) out.append(arena_view(a, e.bias_offset(l), {s.out}, self));
                }
                batchnorm(l, false, s.out);
            }
            return out;
        })
        .def_property("iterations", &E::iterations,
                      [](E& e, std::int64_t t) { locked(e, [&] { e.set_iterations(t); }); })
        .def("set_loss_options", [](E& e, double delta, double smoothing) {
            locked(e, [&] { e.set_loss_options(delta, smoothing); });
        }, py::arg("huber_delta") = 1.0, py::arg("label_smoothing") = 0.0)
        .def("set_option", [](E& e, const std::string& name, py::handle value) {
            // Parsed into a copy with the GIL held, swapped in under the engine's lock.
            OptimizerConfig c = locked(e, [&] { return e.opt(); });
            set_option(c, name, value);
            locked(e, [&] { e.opt() = c; });
        },
             "Change one optimizer setting; it applies from the next update.")
        .def("set_weighted_metrics", [](E& e, std::vector<bool> flags) {
            locked(e, [&] { e.set_weighted_metrics(std::move(flags)); });
        }, py::arg("flags"), "Which metrics the sample weights weight (Keras's weighted_metrics), one flag each.")
        .def_property_readonly("target_cols", &E::target_cols)
        .def("_set_fused_kernels", [](E& e, bool on) { locked(e, [&] { e.set_fused_kernels(on); }); }, py::arg("on"),
             "For the tests: whether training may take the fused kernels rather than their layer-by-layer twins "
             "(the same bits).")
        .def("begin_epoch", [](E& e, index_t n, index_t batch_size, bool shuffle, std::uint64_t seed,
                               std::uint64_t epoch) {
            locked(e, [&] { e.begin_epoch(n, batch_size, shuffle, seed, epoch); });
        })
        .def("train_steps", [](E& e, const carray<T>& x, const carray<T>& y, index_t max_steps, py::handle sw) {
            const index_t n = batch_rows(e, x, y);
            const auto w = sample_weights<T>(sw, n);
            const T* wp = w ? w->data() : nullptr;
            return train_interruptibly(e, [&] { return e.train_steps(x.data(), y.data(), n, max_steps, wp); });
        }, py::arg("x"), py::arg("y"), py::arg("max_steps"), py::arg("sample_weight") = py::none())
        .def("train_epochs", [](E& e, const carray<T>& x, const carray<T>& y, index_t epochs, index_t batch_size,
                                bool shuffle, std::uint64_t seed, std::uint64_t first_epoch, py::handle sw) {
            // Whole epochs in one call: begin_epoch(first_epoch + i) and train_steps for each, until
            // one stops or Ctrl-C (polled between epochs too, every few milliseconds). Returns
            // (columns, last, interrupt): the epochs' sums as arrays ("loss", "samples",
            // "weight_sum" (E,), "metrics" (E, M)), the last epoch's sums as train_steps returns
            // them (None when no epoch ran), and the KeyboardInterrupt that stopped the call or
            // None: the caller reports the finished epochs, then raises it.
            const index_t n = batch_rows(e, x, y);
            if (epochs < 0) throw std::invalid_argument("epochs must be >= 0; received " + std::to_string(epochs) + ".");
            const auto w = sample_weights<T>(sw, n);
            const T* wp = w ? w->data() : nullptr;
            // Each epoch's sums as columns (History's size, not EpochSums'), and the last one whole.
            const std::size_t M = e.metrics().size();
            std::vector<double> loss, samples, weight_sum, metrics;
            EpochSums last;
            bool any = false, interrupted = false;
            run_interruptibly(e, [&] {
                using clock = std::chrono::steady_clock;
                auto last_poll = clock::now();
                struct EndPrefetch {  // on every way out: the copy reads x and y
                    E& e;
                    ~EndPrefetch() { e.end_prefetch(); }
                } end_prefetch{e};
                for (index_t i = 0; i < epochs; ++i) {
                    const std::uint64_t epoch = first_epoch + static_cast<std::uint64_t>(i);
                    e.begin_epoch(n, batch_size, shuffle, seed, epoch);
                    // The next epoch's rows are copied on the other core while this one trains.
                    if (i + 1 < epochs) e.prefetch_epoch(x.data(), y.data(), wp, n, batch_size, shuffle, seed, epoch + 1);
                    last = e.train_steps(x.data(), y.data(), n, 0, wp);
                    any = true;
                    loss.push_back(last.loss);
                    samples.push_back(static_cast<double>(last.samples));
                    weight_sum.push_back(last.weight_sum);
                    metrics.insert(metrics.end(), last.metrics.begin(), last.metrics.end());
                    if (last.stop != StopReason::None) break;
                    if (i + 1 < epochs && clock::now() - last_poll >= std::chrono::milliseconds(2)) {
                        last_poll = clock::now();
                        if (python_interrupted()) {
                            interrupted = true;
                            break;
                        }
                    }
                }
                return 0;
            });
            interrupted = interrupted || (any && last.stop == StopReason::Interrupted);
            py::object interrupt = py::none();
            if (interrupted && PyErr_Occurred()) {
                py::error_already_set err;  // fetched and cleared: handed back
                interrupt = err.value();
            }
            const index_t E = static_cast<index_t>(loss.size());
            auto column = [](const std::vector<double>& v, std::vector<py::ssize_t> shape) {
                py::array_t<double> a(shape);
                std::copy(v.begin(), v.end(), a.mutable_data());
                return a;
            };
            py::dict columns;
            columns["loss"] = column(loss, {E});
            columns["samples"] = column(samples, {E});
            columns["weight_sum"] = column(weight_sum, {E});
            columns["metrics"] = column(metrics, {E, static_cast<py::ssize_t>(M)});
            py::object last_dict = any ? py::object(sums_to_dict(last)) : py::object(py::none());
            return py::make_tuple(columns, last_dict, interrupt);
        }, py::arg("x"), py::arg("y"), py::arg("epochs"), py::arg("batch_size"), py::arg("shuffle"),
           py::arg("seed"), py::arg("first_epoch"), py::arg("sample_weight") = py::none())
        .def("predict", [](E& e, const carray<T>& x, index_t batch_size) {
            const index_t n = rows_of(x, "x", e.layers()[0].in);
            py::array_t<T> out({n, e.layers().back().out});
            T* o = out.mutable_data();
            {
                py::gil_scoped_release release;
                std::lock_guard<std::mutex> lock(e.mutex());
                e.predict(x.data(), n, o, batch_size);
            }
            return out;
        })
        .def("evaluate", [](E& e, const carray<T>& x, const carray<T>& y, index_t batch_size, py::handle sw) {
            const index_t n = batch_rows(e, x, y);
            const auto w = sample_weights<T>(sw, n);
            const T* wp = w ? w->data() : nullptr;
            EpochSums s;
            {
                py::gil_scoped_release release;
                std::lock_guard<std::mutex> lock(e.mutex());
                s = e.evaluate(x.data(), y.data(), n, batch_size, wp);
            }
            return sums_to_dict(s);
        }, py::arg("x"), py::arg("y"), py::arg("batch_size"), py::arg("sample_weight") = py::none())
        .def("compute_gradients", [](E& e, const carray<T>& x, const carray<T>& y, py::handle sw) {
            const index_t n = batch_rows(e, x, y);
            const auto w = sample_weights<T>(sw, n);
            const T* wp = w ? w->data() : nullptr;
            py::gil_scoped_release release;
            std::lock_guard<std::mutex> lock(e.mutex());
            return e.compute_gradients(x.data(), y.data(), n, wp);
        }, py::arg("x"), py::arg("y"), py::arg("sample_weight") = py::none())
        .def("shard_gradients", [](E& e, const carray<T>& x, const carray<T>& y, index_t step, index_t lo, index_t hi,
                                   bool with_penalties) {
            const index_t n = batch_rows(e, x, y);
            return sums_to_dict(locked(e, [&] {
                return e.shard_gradients(x.data(), y.data(), n, step, lo, hi, with_penalties);
            }));
        }, py::arg("x"), py::arg("y"), py::arg("step"), py::arg("lo"), py::arg("hi"), py::arg("with_penalties"),
           "This rank's part of a training step (rows [lo, hi) of the step's batch): grads := its share of the "
           "batch's mean gradient; returns its loss and metric sums. See csrc/engine_api.hpp.")
        .def("apply_gradients", [](E& e) { return sums_to_dict(locked(e, [&] { return e.apply_gradients(); })); },
             "Clip grads, apply the optimizer update and count the iteration; stop='nonfinite_weights' when a "
             "new weight is not finite.");
}

// ---- kernels, for the tests ----
// Each kernel takes float32 or float64 arrays; the dtype of the first array picks the
// instantiation, and the others are converted to it (a copy only when they differ or are not
// C-contiguous).

bool is_f64(const py::handle& h) {
    return py::isinstance<py::array>(h) && py::reinterpret_borrow<py::array>(h).dtype().is(py::dtype::of<double>());
}

template <typename T>
carray<T> as_array(const py::handle& h, const char* name, int ndim) {
    auto a = carray<T>::ensure(h);
    if (!a) throw std::invalid_argument(std::string(name) + " must be a numeric array.");
    if (ndim >= 0 && a.ndim() != ndim)
        throw std::invalid_argument(std::string(name) + " must be " + std::to_string(ndim) + "-D; received " +
                                    std::to_string(a.ndim()) + " dimensions.");
    return a;
}

template <typename T>
py::object dense_forward_impl(py::handle xh, py::handle wh, py::handle bh, const std::string& act_name, bool naive) {
    const Act act = parse_act(act_name);
    auto w = as_array<T>(wh, "w", 2);
    const index_t K = w.shape(0), N = w.shape(1);
    auto x = as_array<T>(xh, "x", 2);
    const index_t B = rows_of(x, "x", K);
    std::optional<carray<T>> b;
    if (!bh.is_none()) {
        b = as_array<T>(bh, "b", 1);
        if (b->size() != N) throw std::invalid_argument("b must have N = " + std::to_string(N) + " elements.");
    }
    carray<T> y({B, N});
    const T* bp = b ? b->data() : nullptr;
    if (naive) {
        dense_forward_naive(y.mutable_data(), x.data(), w.data(), bp, B, K, N, act);
    } else {
        DenseScratch<T> s;
        dense_forward(y.mutable_data(), x.data(), w.data(), bp, B, K, N, act, s);
    }
    return std::move(y);
}

template <typename T>
py::object dense_backward_impl(py::handle xh, py::handle wh, py::handle ah, py::handle dyh, const std::string& act_name,
                               bool use_bias, bool need_dx, bool naive) {
    const Act act = parse_act(act_name);
    auto w = as_array<T>(wh, "w", 2);
    const index_t K = w.shape(0), N = w.shape(1);
    auto x = as_array<T>(xh, "x", 2);
    const index_t B = rows_of(x, "x", K);
    auto a = as_array<T>(ah, "a", 2);
    auto dy = as_array<T>(dyh, "dy", 2);
    if (rows_of(a, "a", N) != B || rows_of(dy, "dy", N) != B) throw std::invalid_argument("a and dy must be (B, N).");
    carray<T> dz({B, N});
    std::copy(dy.data(), dy.data() + B * N, dz.mutable_data());
    carray<T> dw({K, N});
    carray<T> db(std::vector<index_t>{N});
    carray<T> dx({B, K});
    T* dbp = use_bias ? db.mutable_data() : nullptr;
    T* dxp = need_dx ? dx.mutable_data() : nullptr;
    if (naive) {
        dense_backward_naive(dxp, dw.mutable_data(), dbp, dz.mutable_data(), x.data(), w.data(), a.data(), B, K, N, act);
    } else {
        DenseScratch<T> s;
        dense_backward(dxp, dw.mutable_data(), dbp, dz.mutable_data(), x.data(), w.data(), a.data(), B, K, N, act, s);
    }
    return py::make_tuple(need_dx ? py::object(dx) : py::none(), dw, use_bias ? py::object(db) : py::none(), dz);
}

template <typename T>
py::object output_loss_impl(py::handle ph, py::handle yh, const std::string& loss, const std::string& act_name,
                            bool naive, py::handle wh) {
    const LossKind kind = parse_loss(loss);
    const Act act = parse_act(act_name);
    auto p = as_array<T>(ph, "p", 2);
    const index_t B = p.shape(0), C = p.shape(1);
    const index_t yc = is_sparse(kind) ? 1 : C;
    auto y = as_array<T>(yh, "y", 2);
    if (rows_of(y, "y", yc) != B) throw std::invalid_argument("y must have as many rows as p.");
    if (is_sparse(kind)) check_sparse_labels(y.data(), B, 1, C);
    const auto w = sample_weights<T>(wh, B);
    const T* wp = w ? w->data() : nullptr;
    carray<T> dz({B, C});
    const T scale = B > 0 ? T(1) / T(B) : T(0);
    std::vector<T> work;
    const double total =
        naive ? output_loss_naive(kind, act, p.data(), y.data(), yc, B, C, scale, dz.mutable_data(), work, T(1), wp)
              : output_loss(kind, act, p.data(), y.data(), yc, B, C, scale, dz.mutable_data(), work, T(1), wp);
    return py::make_tuple(total, dz);
}

// (act(z), d * act'(z)) for an elementwise activation, the derivative from the pre-activation z.
template <typename T>
py::tuple act_z_impl(py::handle zh, py::handle dh, const std::string& act_name) {
    const Act act = parse_act(act_name);
    if (act == Act::Softmax) throw std::invalid_argument("activation_z takes elementwise activations; received 'softmax'.");
    auto z = as_array<T>(zh, "z", -1);
    auto d = as_array<T>(dh, "d", -1);
    if (d.size() != z.size()) throw std::invalid_argument("z and d must have the same size.");
    std::vector<index_t> shape(z.shape(), z.shape() + z.ndim());
    carray<T> a(shape), dz(shape);
    std::copy(d.data(), d.data() + d.size(), dz.mutable_data());
    act_forward_copy(act, z.data(), a.mutable_data(), z.size());
    act_backward_row_z(act, z.data(), dz.mutable_data(), z.size());
    return py::make_tuple(a, dz);
}

// A per-feature (N,) array, or None for an absent gamma or beta.
template <typename T>
std::optional<carray<T>> feature_array(py::handle h, const char* name, index_t N, bool optional) {
    if (optional && h.is_none()) return std::nullopt;
    auto a = as_array<T>(h, name, 1);
    if (a.size() != N)
        throw std::invalid_argument(std::string(name) + " must have one value per feature (" + std::to_string(N) +
                                    "); received " + std::to_string(a.size()) + ".");
    return a;
}

template <typename T>
const T* data_or_null(const std::optional<carray<T>>& a) {
    return a ? a->data() : nullptr;
}

template <typename T>
py::tuple batchnorm_train_impl(py::handle xh, py::handle gh, py::handle bh, double eps, bool naive) {
    auto x = as_array<T>(xh, "x", 2);
    const index_t B = x.shape(0), N = x.shape(1);
    require(B > 0 && eps > 0, "batchnorm_forward_train needs at least one row and epsilon > 0.");
    const auto gamma = feature_array<T>(gh, "gamma", N, true);
    const auto beta = feature_array<T>(bh, "beta", N, true);
    carray<T> y({B, N}), xhat({B, N});
    carray<T> mean(std::vector<index_t>{N}), var(std::vector<index_t>{N}), inv(std::vector<index_t>{N});
    if (naive) {
        batchnorm_forward_train_naive(y.mutable_data(), xhat.mutable_data(), mean.mutable_data(), var.mutable_data(),
                                      inv.mutable_data(), x.data(), data_or_null(gamma), data_or_null(beta), B, N, eps);
    } else {
        std::vector<double> work;
        batchnorm_forward_train(y.mutable_data(), xhat.mutable_data(), mean.mutable_data(), var.mutable_data(),
                                inv.mutable_data(), x.data(), data_or_null(gamma), data_or_null(beta), B, N, eps, work);
    }
    return py::make_tuple(y, xhat, mean, var, inv);
}

template <typename T>
py::object batchnorm_infer_impl(py::handle xh, py::handle mh, py::handle vh, py::handle gh, py::handle bh, double eps) {
    auto x = as_array<T>(xh, "x", 2);
    const index_t B = x.shape(0), N = x.shape(1);
    require(eps > 0, "batchnorm_forward_infer needs epsilon > 0.");
    const auto mean = feature_array<T>(mh, "moving_mean", N, false);
    const auto var = feature_array<T>(vh, "moving_variance", N, false);
    const auto gamma = feature_array<T>(gh, "gamma", N, true);
    const auto beta = feature_array<T>(bh, "beta", N, true);
    carray<T> y({B, N});
    std::vector<T> inv;
    batchnorm_forward_infer(y.mutable_data(), x.data(), mean->data(), var->data(), data_or_null(gamma),
                            data_or_null(beta), B, N, eps, inv);
    return std::move(y);
}

template <typename T>
py::tuple batchnorm_backward_impl(py::handle dyh, py::handle xhath, py::handle gh, py::handle invh, bool naive) {
    auto dy = as_array<T>(dyh, "dy", 2);
    const index_t B = dy.shape(0), N = dy.shape(1);
    auto xhat = as_array<T>(xhath, "xhat", 2);
    if (rows_of(xhat, "xhat", N) != B) throw std::invalid_argument("xhat must have dy's shape.");
    const auto gamma = feature_array<T>(gh, "gamma", N, true);
    const auto inv = feature_array<T>(invh, "inv", N, false);
    carray<T> dx({B, N}), dgamma(std::vector<index_t>{N}), dbeta(std::vector<index_t>{N});
    if (naive) {
        batchnorm_backward_naive(dx.mutable_data(), dgamma.mutable_data(), dbeta.mutable_data(), dy.data(), xhat.data(),
                                 data_or_null(gamma), inv->data(), B, N);
    } else {
        std::vector<double> work;
        batchnorm_backward(dx.mutable_data(), dgamma.mutable_data(), dbeta.mutable_data(), dy.data(), xhat.data(),
                           data_or_null(gamma), inv->data(), B, N, work);
    }
    return py::make_tuple(dx, dgamma, dbeta);
}

template <typename T>
py::tuple batchnorm_moving_impl(py::handle mh, py::handle vh, py::handle bmh, py::handle bvh, double momentum) {
    auto mean = as_array<T>(mh, "moving_mean", 1);
    const index_t N = mean.size();
    const auto var = feature_array<T>(vh, "moving_variance", N, false);
    const auto batch_mean = feature_array<T>(bmh, "mean", N, false);
    const auto batch_var = feature_array<T>(bvh, "var", N, false);
    carray<T> m(std::vector<index_t>{N}), v(std::vector<index_t>{N});
    std::copy(mean.data(), mean.data() + N, m.mutable_data());
    std::copy(var->data(), var->data() + N, v.mutable_data());
    batchnorm_update_moving(m.mutable_data(), v.mutable_data(), batch_mean->data(), batch_var->data(), N, momentum);
    return py::make_tuple(m, v);
}

template <typename T>
double accuracy_sum_impl(py::handle ph, py::handle yh, const std::string& metric) {
    const MetricKind kind = parse_metric(metric);
    auto p = as_array<T>(ph, "p", 2);
    const index_t B = p.shape(0), C = p.shape(1);
    const index_t yc = kind == MetricKind::SparseCategoricalAccuracy ? 1 : C;
    auto y = as_array<T>(yh, "y", 2);
    if (rows_of(y, "y", yc) != B) throw std::invalid_argument("y must have as many rows as p.");
    if (kind == MetricKind::SparseCategoricalAccuracy) check_sparse_labels(y.data(), B, 1, C);
    return accuracy_sum(kind, p.data(), y.data(), yc, B, C);
}

template <typename T>
void sgd_update_impl(py::handle wh, py::handle gh, py::handle vh, double lr, double momentum, bool nesterov) {
    using inplace = py::array_t<T, py::array::c_style>;
    if (!inplace::check_(wh) || !inplace::check_(vh))
        throw std::invalid_argument("w and v are updated in place: they must be C-contiguous arrays of the same dtype.");
    auto w = py::reinterpret_borrow<inplace>(wh);
    auto v = py::reinterpret_borrow<inplace>(vh);
    auto g = as_array<T>(gh, "g", -1);
    const index_t n = w.size();
    if (g.size() != n || v.size() != n) throw std::invalid_argument("w, g and v must have the same size.");
    sgd_update(w.mutable_data(), g.data(), v.mutable_data(), n, T(lr), T(momentum), nesterov);
}

// C := act(op(a) @ op(b) + bias) on instruction set `isa`, where op transposes when asked: the
// kernels' GEMM (gemm.hpp), for the tests and benches. Returns (C, mean seconds per product over
// `repeats` runs, timed in C++ with the GIL released).
template <typename T>
py::tuple gemm_impl(py::handle ah, py::handle bh, py::handle biash, const std::string& act_name, bool trans_a,
                    bool trans_b, const std::string& isa, bool naive, index_t repeats) {
    const Act act = parse_act(act_name);
    if (act == Act::Softmax) throw std::invalid_argument("gemm's act must be elementwise; received 'softmax'.");
    auto a = as_array<T>(ah, "a", 2);
    auto b = as_array<T>(bh, "b", 2);
    const index_t M = trans_a ? a.shape(1) : a.shape(0), K = trans_a ? a.shape(0) : a.shape(1);
    const index_t Kb = trans_b ? b.shape(1) : b.shape(0), N = trans_b ? b.shape(0) : b.shape(1);
    if (K != Kb)
        throw std::invalid_argument("gemm: op(a) is " + std::to_string(M) + " x " + std::to_string(K) + " but op(b) is " +
                                    std::to_string(Kb) + " x " + std::to_string(N) + "; the inner sizes must match.");
    if (M == 0 || N == 0) throw std::invalid_argument("gemm: the product must have at least one row and column.");
    std::optional<carray<T>> bias;
    if (!biash.is_none()) {
        bias = as_array<T>(biash, "bias", 1);
        if (bias->size() != N) throw std::invalid_argument("bias must have N = " + std::to_string(N) + " elements.");
    }
    carray<T> c({M, N});
    const GemmArgs<T> call{c.mutable_data(), N, a.data(), trans_a ? 1 : K, trans_a ? M : 1, b.data(), trans_b ? 1 : N,
                           trans_b ? K : 1, M, N, K, bias ? bias->data() : nullptr, act};
    double seconds;
    {
        py::gil_scoped_release unlocked;
        seconds = run_gemm<T>(isa, call, naive, repeats);
    }
    return py::make_tuple(std::move(c), seconds);
}

void bind_kernels(py::module_& k) {
    k.def("gemm", [](py::handle a, py::handle b, py::handle bias, const std::string& act, bool transpose_a,
                     bool transpose_b, const std::string& isa, bool naive, index_t repeats) {
        return is_f64(a) ? gemm_impl<double>(a, b, bias, act, transpose_a, transpose_b, isa, naive, repeats)
                         : gemm_impl<float>(a, b, bias, act, transpose_a, transpose_b, isa, naive, repeats);
    }, py::arg("a"), py::arg("b"), py::arg("bias") = py::none(), py::arg("act") = "linear",
       py::arg("transpose_a") = false, py::arg("transpose_b") = false, py::arg("isa") = "", py::arg("naive") = false,
       py::arg("repeats") = 1,
       "(act(op(a) @ op(b) + bias), seconds per product): the GEMM kernel on instruction set `isa`.");
    k.def("fma_peak", [](const std::string& isa, index_t iterations) {
        py::gil_scoped_release unlocked;
        return fma_peak(isa, iterations);
    }, py::arg("isa") = "", py::arg("iterations") = 20000000,
       "Measured float32 multiply-add peak in GFLOP/s on the kernels' threads (register-only chains).");
    k.def("dense_forward", [](py::handle x, py::handle w, py::handle b, const std::string& act, bool naive) {
        return is_f64(x) ? dense_forward_impl<double>(x, w, b, act, naive) : dense_forward_impl<float>(x, w, b, act, naive);
    }, py::arg("x"), py::arg("w"), py::arg("b"), py::arg("act"), py::arg("naive") = false,
       "act(x @ w + b) for x (B, K), w (K, N), b (N,) or None.");
    k.def("dense_backward", [](py::handle x, py::handle w, py::handle a, py::handle dy, const std::string& act,
                               bool use_bias, bool need_dx, bool naive) {
        return is_f64(x) ? dense_backward_impl<double>(x, w, a, dy, act, use_bias, need_dx, naive)
                         : dense_backward_impl<float>(x, w, a, dy, act, use_bias, need_dx, naive);
    }, py::arg("x"), py::arg("w"), py::arg("a"), py::arg("dy"), py::arg("act"), py::arg("use_bias") = true,
       py::arg("need_dx") = true, py::arg("naive") = false, "(dx, dw, db, dz) from dy = dL/da for a = act(x @ w + b).");
    k.def("output_loss", [](py::handle p, py::handle y, const std::string& loss, const std::string& act, bool naive,
                            py::handle w) {
        return is_f64(p) ? output_loss_impl<double>(p, y, loss, act, naive, w)
                         : output_loss_impl<float>(p, y, loss, act, naive, w);
    }, py::arg("p"), py::arg("y"), py::arg("loss"), py::arg("act"), py::arg("naive") = false,
       py::arg("sample_weight") = py::none(),
       "(sum of the per-sample losses times their weights, dL/dz of the output layer) for the batch loss "
       "sum_i w_i loss_i / B.");
    k.def("activation_z", [](py::handle z, py::handle d, const std::string& act) {
        return is_f64(z) ? act_z_impl<double>(z, d, act) : act_z_impl<float>(z, d, act);
    }, py::arg("z"), py::arg("d"), py::arg("act"),
       "(act(z), d * act'(z)), the derivative computed from the pre-activation z.");
    k.def("dropout_mask", [](index_t rows, index_t cols, double rate, std::uint64_t seed, std::int64_t iteration,
                             index_t lanes) {
        // The engine's mask for a (rows, cols) input, row-major; lanes > 0: drawn in the feature-major
        // layout with that many lanes (rows real), returned transposed to (rows, cols).
        require(rows >= 0 && cols >= 0 && rate >= 0 && rate < 1 && (lanes == 0 || lanes >= rows),
                "dropout_mask: needs rows, cols >= 0, 0 <= rate < 1 and lanes 0 or >= rows.");
        const std::uint64_t stream = dropout_stream(seed, iteration);
        py::array_t<std::uint8_t> out({rows, cols});
        std::uint8_t* o = out.mutable_data();
        std::vector<float> x(std::max<index_t>(rows, lanes) * cols, 1.0f), dropped(x.size());
        std::vector<std::uint8_t> mask(x.size());
        if (lanes == 0) {
            dropout_forward(dropped.data(), o, x.data(), rows, cols, rate, stream);
        } else {
            dropout_forward_lanes(dropped.data(), mask.data(), x.data(), rows, lanes, cols, rate, stream);
            for (index_t r = 0; r < rows; ++r)
                for (index_t j = 0; j < cols; ++j) o[r * cols + j] = mask[j * lanes + r];
        }
        return out;
    }, py::arg("rows"), py::arg("cols"), py::arg("rate"), py::arg("seed"), py::arg("iteration"), py::arg("lanes") = 0,
       "The dropout mask (1: kept) of a (rows, cols) input at update `iteration` (csrc/dropout.hpp).");
    k.def("batchnorm_forward_train", [](py::handle x, py::handle gamma, py::handle beta, double epsilon, bool naive) {
        return is_f64(x) ? batchnorm_train_impl<double>(x, gamma, beta, epsilon, naive)
                         : batchnorm_train_impl<float>(x, gamma, beta, epsilon, naive);
    }, py::arg("x"), py::arg("gamma"), py::arg("beta"), py::arg("epsilon"), py::arg("naive") = false,
       "(y, xhat, mean, var, inv): batch normalization of x (B, N) with the batch's statistics "
       "(csrc/batchnorm.hpp); gamma, beta (N,) or None.");
    k.def("batchnorm_forward_infer", [](py::handle x, py::handle moving_mean, py::handle moving_variance,
                                        py::handle gamma, py::handle beta, double epsilon) {
        return is_f64(x) ? batchnorm_infer_impl<double>(x, moving_mean, moving_variance, gamma, beta, epsilon)
                         : batchnorm_infer_impl<float>(x, moving_mean, moving_variance, gamma, beta, epsilon);
    }, py::arg("x"), py::arg("moving_mean"), py::arg("moving_variance"), py::arg("gamma"), py::arg("beta"),
       py::arg("epsilon"), "Batch normalization of x (B, N) with the moving statistics.");
    k.def("batchnorm_backward", [](py::handle dy, py::handle xhat, py::handle gamma, py::handle inv, bool naive) {
        return is_f64(dy) ? batchnorm_backward_impl<double>(dy, xhat, gamma, inv, naive)
                          : batchnorm_backward_impl<float>(dy, xhat, gamma, inv, naive);
    }, py::arg("dy"), py::arg("xhat"), py::arg("gamma"), py::arg("inv"), py::arg("naive") = false,
       "(dx, dgamma, dbeta) from dy = dL/dy of batchnorm_forward_train, given its xhat and inv.");
    k.def("batchnorm_update_moving", [](py::handle moving_mean, py::handle moving_variance, py::handle mean,
                                        py::handle var, double momentum) {
        return is_f64(moving_mean) ? batchnorm_moving_impl<double>(moving_mean, moving_variance, mean, var, momentum)
                                   : batchnorm_moving_impl<float>(moving_mean, moving_variance, mean, var, momentum);
    }, py::arg("moving_mean"), py::arg("moving_variance"), py::arg("mean"), py::arg("var"), py::arg("momentum"),
       "The moving statistics after a training step: (moving * momentum + batch * (1 - momentum)) each.");
    k.def("accuracy_sum", [](py::handle p, py::handle y, const std::string& metric) {
        return is_f64(p) ? accuracy_sum_impl<double>(p, y, metric) : accuracy_sum_impl<float>(p, y, metric);
    }, py::arg("p"), py::arg("y"), py::arg("metric"));
    k.def("sgd_update", [](py::handle w, py::handle g, py::handle v, double lr, double momentum, bool nesterov) {
        is_f64(w) ? sgd_update_impl<double>(w, g, v, lr, momentum, nesterov)
                  : sgd_update_impl<float>(w, g, v, lr, momentum, nesterov);
    }, py::arg("w"), py::arg("g"), py::arg("v"), py::arg("lr"), py::arg("momentum"), py::arg("nesterov"));
}

}  // namespace

PYBIND11_MODULE(_core, m) {
    m.doc() = "fastmlp native kernels and training engine";
    py::register_exception_translator([](std::exception_ptr p) {
        try {
            if (p) std::rethrow_exception(p);
        } catch (const std::invalid_argument& e) {
            PyErr_SetString(PyExc_ValueError, e.what());
        }
    });
    m.def("built_isas", &built_isas, "Instruction sets this build has engine variants for, best first.");
    m.def("supported_isas", &supported_isas, "Instruction sets built and runnable on this CPU, best first.");
    m.def("get_num_threads", &num_threads, "Threads the kernels use, the calling one included.");
    m.def("set_num_threads", [](int n) {
        if (n < 1 || n > 1024)
            throw std::invalid_argument("The thread count must be an integer from 1 to 1024; received " +
                                        std::to_string(n) + ".");
        set_num_threads(n);
    }, py::arg("n"), "Set the threads the kernels use (>= 1); results do not depend on it.");
    bind_engine<float>(m, "Engine32");
    bind_engine<double>(m, "Engine64");
    py::module_ k = m.def_submodule("kernels", "Individual kernels, float32 or float64 by the first array's dtype.");
    bind_kernels(k);
    k.def("permutation", [](index_t n, std::uint64_t seed, std::uint64_t epoch) {
        std::vector<std::uint32_t> perm;
        shuffle_permutation(perm, n, seed, epoch);
        py::array_t<std::int64_t> out(n);
        std::copy(perm.begin(), perm.end(), out.mutable_data());
        return out;
    }, py::arg("n"), py::arg("seed"), py::arg("epoch"), "The epoch's sample order (see csrc/shuffle.hpp).");
    k.def("decayed_lr", [](double lr, double decay, std::int64_t t) { return decayed_lr<float>(lr, decay, t); });
}
