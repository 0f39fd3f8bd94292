// Dense layers' matrix products on the GPU: cuBLASLt with bias and ReLU epilogues, a plain product
// where an epilogue is not supported for the type or GPU (the engine then applies bias and
// activation with BiasAct), and a naive reference kernel beside them.
//
// Layout. fastmlp's arrays are row-major: X (B, K), W (K, N), Y (B, N). A row-major (r, c) array
// is the column-major (c, r) array with leading dimension c, so every product is written in
// column-major terms (cuBLAS's) on the same buffers, with no copies:
//   forward   Y = X W + b     col-major Y^T (N, B) = W^T (N, K) X^T (K, B):      gemm(N, N, m=N, n=B, k=K)
//   weights   dW = X^T dZ     col-major dW^T (N, K) = dZ^T (N, B) (X^T)^T (B, K): gemm(N, T, m=N, n=K, k=B)
//   inputs    dX = dZ W^T     col-major dX^T (K, B) = (W^T)^T (K, N) dZ^T (N, B): gemm(T, N, m=K, n=B, k=N)
// The bias (N,) is then a vector over the rows m of the column-major result, as cuBLASLt's
// bias epilogue takes it.
#pragma once

#include <cstddef>
#include <memory>

#include "common.cuh"

namespace fastmlp {
namespace gpu {

enum class Epilogue { None, Bias, Relu, ReluBias };

// One column-major product: C (m, n; ldc) := op(A) op(B) (+ bias[i] on row i) (then max(., 0)),
// op(A) (m, k) stored as A (m, k; lda) or, transposed, (k, m; lda); op(B) (k, n) likewise. C is
// overwritten (beta = 0: its old values are never read). bias (m,) or null.
template <typename T>
struct GemmArgs {
    bool ta, tb;
    index_t m, n, k;
    const T* A;
    index_t lda;
    const T* B;
    index_t ldb;
    T* C;
    index_t ldc;
    const T* bias;
};

// The naive reference: one thread per element of C, its k-loop in order. Runs the host emulation's
// products, and the GPU's when asked (set_gemm("naive")) to check cuBLASLt against it.
// Iteration space: m * n, element (i, j) at index i + j m.
template <typename T>
struct NaiveGemm {
    GemmArgs<T> g;
    Epilogue epilogue;
    FASTMLP_HD void operator()(index_t idx) const {
        const index_t j = idx / g.m, i = idx - j * g.m;
        T acc = 0;
        for (index_t p = 0; p < g.k; ++p) {
            const T a = g.ta ? g.A[p + i * g.lda] : g.A[i + p * g.lda];
            const T b = g.tb ? g.B[j + p * g.ldb] : g.B[p + j * g.ldb];
            acc += a * b;
        }
        if (epilogue == Epilogue::Bias || epilogue == Epilogue::ReluBias) acc += g.bias[i];
        if (epilogue == Epilogue::Relu || epilogue == Epilogue::ReluBias) acc = acc > T(0) ? acc : T(0);
        g.C[i + j * g.ldc] = acc;
    }
};

// cuBLASLt products on one stream, with a descriptor, layouts and heuristic's algorithm cached per
// shape, epilogue and pointer alignment, and one workspace. Not thread-safe (the engine's lock).
class LtGemm {
public:
    LtGemm();
    ~LtGemm();
    LtGemm(const LtGemm&) = delete;
    LtGemm& operator=(const LtGemm&) = delete;

    void set_stream(cudaStream_t stream);
    // Enqueue the product with `epilogue`; false (nothing enqueued) when cuBLASLt has no algorithm
    // for it here. With plan_only, only find and cache the algorithm (before a graph capture, so
    // that the capture makes no heuristic queries). Throws on a cuBLASLt error.
    template <typename T>
    bool run(const GemmArgs<T>& g, Epilogue epilogue, bool plan_only);
    // Which epilogues were tried and whether they were supported: "relu_bias: yes, bias: no, ...".
    std::string report() const;
    static int version();

private:
    struct Impl;
    std::unique_ptr<Impl> impl_;
};

}  // namespace gpu
}  // namespace fastmlp
