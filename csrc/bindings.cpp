// Python bindings of fastmlp._core: the Engine (float32 and float64) and the kernels, exposed so
// that the tests check each one against the NumPy reference.
//
// Copies are explicit: read-only inputs are taken as C-contiguous arrays of the engine's dtype
// (converted by pybind11 when they are not: `forcecast`); outputs are allocated here. The GIL is
// released only around code that touches no Python object.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <optional>
#include <string>
#include <tuple>

#include "dense.hpp"
#include "engine.hpp"
#include "losses.hpp"
#include "optim.hpp"
#include "shuffle.hpp"

namespace py = pybind11;
using namespace fastmlp;

namespace {

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

py::dict sums_to_dict(const EpochSums& s) {
    py::dict d;
    d["loss"] = s.loss;
    d["metrics"] = s.metrics;
    d["samples"] = s.samples;
    d["steps_done"] = s.steps_done;
    d["steps_total"] = s.steps_total;
    return d;
}

// A NumPy view of [offset, offset + shape) in an arena owned by `owner` (kept alive by the view).
template <typename T>
py::array arena_view(std::vector<T>& arena, index_t offset, std::vector<index_t> shape, py::handle owner) {
    std::vector<index_t> strides(shape.size(), sizeof(T));
    for (std::size_t i = shape.size(); i-- > 1;) strides[i - 1] = strides[i] * shape[i];
    return py::array_t<T>(shape, strides, arena.data() + offset, owner);
}

template <typename T>
void bind_engine(py::module_& m, const char* name) {
    using E = Engine<T>;
    py::class_<E>(m, name)
        .def(py::init([](const std::vector<std::tuple<index_t, index_t, std::string, bool>>& specs,
                         const std::string& loss, const std::vector<std::string>& metrics, double lr,
                         double momentum, double decay, bool nesterov) {
                 std::vector<LayerSpec> layers;
                 for (const auto& [in, out, act, bias] : specs) layers.push_back({in, out, parse_act(act), bias});
                 std::vector<MetricKind> ms;
                 for (const auto& s : metrics) ms.push_back(parse_metric(s));
                 return new E(std::move(layers), parse_loss(loss), std::move(ms),
                              SGDConfig{lr, momentum, decay, nesterov});
             }),
             py::arg("layers"), py::arg("loss"), py::arg("metrics"), py::arg("learning_rate"), py::arg("momentum"),
             py::arg("decay"), py::arg("nesterov"))
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
        .def("weight_views", [](py::object self, const std::string& arena) {
            // [kernel, bias] views per layer, into params, grads or velocity.
            E& e = self.cast<E&>();
            std::vector<T>& a = arena == "params" ? e.params() : arena == "grads" ? e.grads() : e.velocity();
            py::list out;
            for (std::size_t l = 0; l < e.layers().size(); ++l) {
                const LayerSpec& s = e.layers()[l];
                out.append(arena_view(a, e.kernel_offset(l), {s.in, s.out}, self));
                if (s.use_bias) out.append(arena_view(a, e.bias_offset(l), {s.out}, self));
            }
            return out;
        })
        .def_property("iterations", &E::iterations, &E::set_iterations)
        .def_property(
            "learning_rate", [](E& e) { return e.sgd().learning_rate; },
            [](E& e, double v) { e.sgd().learning_rate = v; })
        .def_property_readonly("target_cols", &E::target_cols)
        .def("begin_epoch", [](E& e, index_t n, index_t batch_size, bool shuffle, std::uint64_t seed,
                               std::uint64_t epoch) {
            std::lock_guard<std::mutex> lock(e.mutex());
            e.begin_epoch(n, batch_size, shuffle, seed, epoch);
        })
        .def("train_steps", [](E& e, const carray<T>& x, const carray<T>& y, index_t max_steps) {
            const index_t n = rows_of(x, "x", e.layers()[0].in);
            if (rows_of(y, "y", e.target_cols()) != n)
                throw std::invalid_argument("x and y must have the same number of rows.");
            EpochSums s;
            {
                py::gil_scoped_release release;
                std::lock_guard<std::mutex> lock(e.mutex());
                s = e.train_steps(x.data(), y.data(), n, max_steps);
            }
            return sums_to_dict(s);
        })
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
        .def("evaluate", [](E& e, const carray<T>& x, const carray<T>& y, index_t batch_size) {
            const index_t n = rows_of(x, "x", e.layers()[0].in);
            if (rows_of(y, "y", e.target_cols()) != n)
                throw std::invalid_argument("x and y must have the same number of rows.");
            EpochSums s;
            {
                py::gil_scoped_release release;
                std::lock_guard<std::mutex> lock(e.mutex());
                s = e.evaluate(x.data(), y.data(), n, batch_size);
            }
            return sums_to_dict(s);
        })
        .def("compute_gradients", [](E& e, const carray<T>& x, const carray<T>& y) {
            const index_t n = rows_of(x, "x", e.layers()[0].in);
            if (rows_of(y, "y", e.target_cols()) != n)
                throw std::invalid_argument("x and y must have the same number of rows.");
            py::gil_scoped_release release;
            std::lock_guard<std::mutex> lock(e.mutex());
            return e.compute_gradients(x.data(), y.data(), n);
        });
}

// ---- kernels, for the tests ----

template <typename T>
carray<T> new_like_rows(index_t rows, index_t cols) {
    return carray<T>({rows, cols});
}

template <typename T>
void bind_kernels(py::module_& k) {
    k.def("dense_forward", [](const carray<T>& x, const carray<T>& w, std::optional<carray<T>> b,
                              const std::string& act, bool naive) {
        const index_t K = w.shape(0), N = w.shape(1), B = rows_of(x, "x", K);
        if (b && b->size() != N) throw std::invalid_argument("b must have N elements.");
        auto y = new_like_rows<T>(B, N);
        const T* bp = b ? b->data() : nullptr;
        if (naive) {
            dense_forward_naive(y.mutable_data(), x.data(), w.data(), bp, B, K, N, parse_act(act));
        } else {
            DenseScratch<T> s;
            dense_forward(y.mutable_data(), x.data(), w.data(), bp, B, K, N, parse_act(act), s);
        }
        return y;
    }, py::arg("x"), py::arg("w"), py::arg("b"), py::arg("act"), py::arg("naive") = false);

    k.def("dense_backward", [](const carray<T>& x, const carray<T>& w, const carray<T>& a, const carray<T>& dy,
                               const std::string& act, bool use_bias, bool need_dx, bool naive) {
        const index_t K = w.shape(0), N = w.shape(1), B = rows_of(x, "x", K);
        if (rows_of(a, "a", N) != B || rows_of(dy, "dy", N) != B)
            throw std::invalid_argument("a and dy must be (B, N).");
        carray<T> dz({B, N});
        std::copy(dy.data(), dy.data() + B * N, dz.mutable_data());
        auto dw = new_like_rows<T>(K, N);
        carray<T> db(std::vector<index_t>{N});
        auto dx = new_like_rows<T>(B, K);
        T* dbp = use_bias ? db.mutable_data() : nullptr;
        T* dxp = need_dx ? dx.mutable_data() : nullptr;
        if (naive) {
            dense_backward_naive(dxp, dw.mutable_data(), dbp, dz.mutable_data(), x.data(), w.data(), a.data(), B, K, N,
                                 parse_act(act));
        } else {
            DenseScratch<T> s;
            dense_backward(dxp, dw.mutable_data(), dbp, dz.mutable_data(), x.data(), w.data(), a.data(), B, K, N,
                           parse_act(act), s);
        }
        return py::make_tuple(need_dx ? py::object(dx) : py::none(), dw, use_bias ? py::object(db) : py::none(), dz);
    }, py::arg("x"), py::arg("w"), py::arg("a"), py::arg("dy"), py::arg("act"), py::arg("use_bias") = true,
       py::arg("need_dx") = true, py::arg("naive") = false);

    k.def("output_loss", [](const carray<T>& p, const carray<T>& y, const std::string& loss, const std::string& act,
                            bool naive) {
        const index_t C = p.ndim() == 2 ? p.shape(1) : 0, B = rows_of(p, "p", C);
        const LossKind kind = parse_loss(loss);
        const index_t yc = kind == LossKind::SparseCategoricalCrossentropy ? 1 : C;
        if (rows_of(y, "y", yc) != B) throw std::invalid_argument("y must have as many rows as p.");
        auto dz = new_like_rows<T>(B, C);
        const T scale = B > 0 ? T(1) / T(B) : T(0);
        const double total = naive ? output_loss_naive(kind, parse_act(act), p.data(), y.data(), yc, B, C, scale, dz.mutable_data())
                                   : output_loss(kind, parse_act(act), p.data(), y.data(), yc, B, C, scale, dz.mutable_data());
        return py::make_tuple(total, dz);
    }, py::arg("p"), py::arg("y"), py::arg("loss"), py::arg("act"), py::arg("naive") = false);

    k.def("accuracy_sum", [](const carray<T>& p, const carray<T>& y, const std::string& metric) {
        const index_t C = p.ndim() == 2 ? p.shape(1) : 0, B = rows_of(p, "p", C);
        const MetricKind kind = parse_metric(metric);
        const index_t yc = kind == MetricKind::SparseCategoricalAccuracy ? 1 : C;
        if (rows_of(y, "y", yc) != B) throw std::invalid_argument("y must have as many rows as p.");
        return accuracy_sum(kind, p.data(), y.data(), yc, B, C);
    });

    k.def("sgd_update", [](py::array_t<T, py::array::c_style> w, const carray<T>& g, py::array_t<T, py::array::c_style> v,
                           double lr, double momentum, bool nesterov) {
        const index_t n = w.size();
        if (g.size() != n || v.size() != n) throw std::invalid_argument("w, g and v must have the same size.");
        sgd_update(w.mutable_data(), g.data(), v.mutable_data(), n, T(lr), T(momentum), nesterov);
    }, py::arg("w").noconvert(), py::arg("g"), py::arg("v").noconvert(), py::arg("lr"), py::arg("momentum"),
       py::arg("nesterov"));
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
    bind_engine<float>(m, "Engine32");
    bind_engine<double>(m, "Engine64");
    py::module_ k = m.def_submodule("kernels", "Individual kernels (float64 overloads first, then float32).");
    bind_kernels<double>(k);
    bind_kernels<float>(k);
    k.def("permutation", [](index_t n, std::uint64_t seed, std::uint64_t epoch) {
        std::vector<std::uint64_t> packed, tmp;
        shuffle_permutation(packed, tmp, n, seed, epoch);
        py::array_t<std::int64_t> out(n);
        auto* o = out.mutable_data();
        for (index_t i = 0; i < n; ++i) o[i] = static_cast<std::int64_t>(packed[i] & 0xFFFFFFFFULL);
        return out;
    });
    k.def("decayed_lr", [](double lr, double decay, std::int64_t t) { return decayed_lr<float>(lr, decay, t); });
}
