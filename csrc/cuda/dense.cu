// cuBLASLt products for the dense layers (see dense.cuh for the layout and the contract).
#include <cublasLt.h>

#include <cstdint>
#include <map>
#include <string>
#include <tuple>
#include <utility>

#include "dense.cuh"

namespace fastmlp {
namespace gpu {

namespace {

void check_lt(cublasStatus_t status, const char* call) {
    if (status != CUBLAS_STATUS_SUCCESS)
        throw std::runtime_error(std::string("cuBLASLt call ") + call + " failed: " + cublasLtGetStatusString(status) +
                                 ".");
}

#define FASTMLP_LT_CHECK(call) check_lt((call), #call)

// The largest power of two (at most 256) dividing the address: what the heuristic may assume.
std::uint32_t alignment_of(const void* p) {
    const auto a = reinterpret_cast<std::uintptr_t>(p);
    std::uint32_t align = 256;
    while (align > 1 && a % align != 0) align /= 2;
    return align;
}

cublasLtEpilogue_t lt_epilogue(Epilogue e) {
    switch (e) {
        case Epilogue::Bias: return CUBLASLT_EPILOGUE_BIAS;
        case Epilogue::Relu: return CUBLASLT_EPILOGUE_RELU;
        case Epilogue::ReluBias: return CUBLASLT_EPILOGUE_RELU_BIAS;
        default: return CUBLASLT_EPILOGUE_DEFAULT;
    }
}

const char* epilogue_name(Epilogue e) {
    switch (e) {
        case Epilogue::Bias: return "bias";
        case Epilogue::Relu: return "relu";
        case Epilogue::ReluBias: return "relu_bias";
        default: return "none";
    }
}

template <typename T>
struct LtTypes;
template <>
struct LtTypes<float> {
    static constexpr cudaDataType_t data = CUDA_R_32F;
    // Plain fp32 (no TF32): the numbers of the CPU engine and of PyTorch's default.
    static constexpr cublasComputeType_t compute = CUBLAS_COMPUTE_32F;
};
template <>
struct LtTypes<double> {
    static constexpr cudaDataType_t data = CUDA_R_64F;
    static constexpr cublasComputeType_t compute = CUBLAS_COMPUTE_64F;
};

// 32 MiB: NVIDIA's recommended cuBLASLt workspace on Hopper.
constexpr std::size_t kWorkspaceBytes = std::size_t(32) << 20;

}  // namespace

struct LtGemm::Impl {
    using Key = std::tuple<int, bool, bool, index_t, index_t, index_t, index_t, index_t, index_t, int, std::uint32_t,
                           std::uint32_t, std::uint32_t, std::uint32_t>;
    struct Plan {
        cublasLtMatmulDesc_t desc = nullptr;
        cublasLtMatrixLayout_t a = nullptr, b = nullptr, c = nullptr;
        cublasLtMatmulAlgo_t algo{};
        bool ok = false;
    };

    cublasLtHandle_t handle = nullptr;
    void* workspace = nullptr;
    cudaStream_t stream = nullptr;
    std::map<Key, Plan> plans;
    std::map<Epilogue, std::pair<int, int>> supported;  // per epilogue: products that took it, products asked

    ~Impl() {
        int device = 0;
        if (cudaGetDevice(&device) == cudaErrorCudartUnloading) return;  // process exit: the driver frees it all
        for (auto& kv : plans) {
            Plan& p = kv.second;
            if (p.a) cublasLtMatrixLayoutDestroy(p.a);
            if (p.b) cublasLtMatrixLayoutDestroy(p.b);
            if (p.c) cublasLtMatrixLayoutDestroy(p.c);
            if (p.desc) cublasLtMatmulDescDestroy(p.desc);
        }
        if (workspace) cudaFree(workspace);
        if (handle) cublasLtDestroy(handle);
    }

    template <typename T>
    Plan& plan(const GemmArgs<T>& g, Epilogue e) {
        const bool has_bias = e == Epilogue::Bias || e == Epilogue::ReluBias;
        const Key key{sizeof(T) == 8 ? 64 : 32, g.ta, g.tb, g.m, g.n, g.k, g.lda, g.ldb, g.ldc, static_cast<int>(e),
                      alignment_of(g.A), alignment_of(g.B), alignment_of(g.C), has_bias ? alignment_of(g.bias) : 0};
        auto it = plans.find(key);
        if (it != plans.end()) return it->second;
        Plan& p = plans[key];
        // cuBLASLt's alignment preferences cover A, B, C and D, not the bias, which its epilogue
        // kernels may read as 16-byte vectors (PyTorch falls back likewise): a bias at a less
        // aligned offset of the arena takes the plain product and BiasAct.
        if (has_bias && alignment_of(g.bias) < 16) {
            ++supported[e].second;
            return p;
        }
        const cudaDataType_t dt = LtTypes<T>::data;
        FASTMLP_LT_CHECK(cublasLtMatmulDescCreate(&p.desc, LtTypes<T>::compute, dt));
        const cublasOperation_t opa = g.ta ? CUBLAS_OP_T : CUBLAS_OP_N, opb = g.tb ? CUBLAS_OP_T : CUBLAS_OP_N;
        FASTMLP_LT_CHECK(cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_TRANSA, &opa, sizeof(opa)));
        FASTMLP_LT_CHECK(cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_TRANSB, &opb, sizeof(opb)));
        const cublasLtEpilogue_t epi = lt_epilogue(e);
        FASTMLP_LT_CHECK(cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_EPILOGUE, &epi, sizeof(epi)));
        if (has_bias)  // the heuristic reads the pointer's alignment
            FASTMLP_LT_CHECK(
                cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &g.bias, sizeof(g.bias)));
        // Stored shapes: op(A) (m, k) is A (m, k), or (k, m) transposed; op(B) (k, n) likewise.
        FASTMLP_LT_CHECK(cublasLtMatrixLayoutCreate(&p.a, dt, g.ta ? g.k : g.m, g.ta ? g.m : g.k, g.lda));
        FASTMLP_LT_CHECK(cublasLtMatrixLayoutCreate(&p.b, dt, g.tb ? g.n : g.k, g.tb ? g.k : g.n, g.ldb));
        FASTMLP_LT_CHECK(cublasLtMatrixLayoutCreate(&p.c, dt, g.m, g.n, g.ldc));
        cublasLtMatmulPreference_t pref = nullptr;
        FASTMLP_LT_CHECK(cublasLtMatmulPreferenceCreate(&pref));
        const std::uint64_t ws = kWorkspaceBytes;
        const std::uint32_t aa = alignment_of(g.A), ab = alignment_of(g.B), ac = alignment_of(g.C);
        cublasStatus_t st = cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws,
                                                                 sizeof(ws));
        if (st == CUBLAS_STATUS_SUCCESS)
            st = cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &aa, sizeof(aa));
        if (st == CUBLAS_STATUS_SUCCESS)
            st = cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &ab, sizeof(ab));
        if (st == CUBLAS_STATUS_SUCCESS)
            st = cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &ac, sizeof(ac));
        if (st == CUBLAS_STATUS_SUCCESS)
            st = cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &ac, sizeof(ac));
        cublasLtMatmulHeuristicResult_t result{};
        int found = 0;
        if (st == CUBLAS_STATUS_SUCCESS)
            st = cublasLtMatmulAlgoGetHeuristic(handle, p.desc, p.a, p.b, p.c, p.c, pref, 1, &result, &found);
        cublasLtMatmulPreferenceDestroy(pref);
        // NOT_SUPPORTED, or no algorithm: this epilogue (or type) is not available here.
        p.ok = st == CUBLAS_STATUS_SUCCESS && found > 0 && result.state == CUBLAS_STATUS_SUCCESS &&
               result.workspaceSize <= kWorkspaceBytes;
        // An epilogue refused any other way (INVALID_VALUE for a type or layout it lacks, say) also
        // falls back; only the plain product has nothing to fall back to.
        if (st != CUBLAS_STATUS_SUCCESS && st != CUBLAS_STATUS_NOT_SUPPORTED && e == Epilogue::None)
            check_lt(st, "cublasLtMatmulAlgoGetHeuristic");
        if (p.ok) p.algo = result.algo;
        supported[e].first += p.ok ? 1 : 0;
        ++supported[e].second;
        return p;
    }
};

LtGemm::LtGemm() : impl_(new Impl) {
    FASTMLP_LT_CHECK(cublasLtCreate(&impl_->handle));
    FASTMLP_CUDA_CHECK(cudaMalloc(&impl_->workspace, kWorkspaceBytes));
}

LtGemm::~LtGemm() = default;

void LtGemm::set_stream(cudaStream_t stream) { impl_->stream = stream; }

template <typename T>
bool LtGemm::run(const GemmArgs<T>& g, Epilogue epilogue, bool plan_only) {
    Impl::Plan& p = impl_->plan(g, epilogue);
    if (!p.ok) return false;
    if (plan_only) return true;
    if (epilogue == Epilogue::Bias || epilogue == Epilogue::ReluBias)
        FASTMLP_LT_CHECK(cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &g.bias, sizeof(g.bias)));
    const T alpha = 1, beta = 0;
    FASTMLP_LT_CHECK(cublasLtMatmul(impl_->handle, p.desc, &alpha, g.A, p.a, g.B, p.b, &beta, g.C, p.c, g.C, p.c,
                                    &p.algo, impl_->workspace, kWorkspaceBytes, impl_->stream));
    return true;
}

template bool LtGemm::run<float>(const GemmArgs<float>&, Epilogue, bool);
template bool LtGemm::run<double>(const GemmArgs<double>&, Epilogue, bool);

std::string LtGemm::report() const {
    std::string out;
    for (const auto& kv : impl_->supported)
        out += std::string(out.empty() ? "" : ", ") + epilogue_name(kv.first) + " " + std::to_string(kv.second.first) +
               " of " + std::to_string(kv.second.second);
    return out;
}

int LtGemm::version() { return static_cast<int>(cublasLtGetVersion()); }

}  // namespace gpu
}  // namespace fastmlp
