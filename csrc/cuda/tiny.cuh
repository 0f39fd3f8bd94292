// Whole training steps of a tiny network in one thread block: the seed's 2-4-4-2 MLP has 38
// parameters and a batch of 100, where a step of separate kernels would be a dozen launches of
// microseconds each doing nanoseconds of work. Here one launch runs many steps (up to the end of
// the epoch): the weights, gradients and optimizer state stay in shared memory across the steps,
// and each step is a sequence of phases separated by block barriers (gather, forward per layer,
// output rows, batch sums, backward per layer, optimizer, bookkeeping), with the same per-row and
// per-parameter functions as the multi-kernel path (losses.cuh, optim.cuh).
//
// The program is written against an executor E (tid(), nthreads(), sync()): BlockExec runs it
// as the block's 256 threads on the GPU, SerialExec as one thread on the host (the emulation used
// by the tests). Each phase's iterations are independent of each other, so the two compute the
// same values; reductions split their rows by kTinyThreads (a constant, not the thread count), so
// they also add in the same order.
#pragma once

#include "optim.cuh"

namespace fastmlp {
namespace gpu {

constexpr int kTinyThreads = 256;
constexpr index_t kTinyWidth = 32;  // the widest layer (or input) the fused kernel takes
constexpr int kTinyMaxLayers = 8;

template <typename T>
struct TinyArgs {
    int L;
    index_t in[kTinyMaxLayers], out[kTinyMaxLayers], w_off[kTinyMaxLayers], b_off[kTinyMaxLayers];
    Act act[kTinyMaxLayers];
    index_t P;                 // arena size
    LossParams<T> lp;          // its scale is set per batch
    const T* X;                // (n, in[0]) training data on the device
    const T* Y;                // (n, lp.yc)
    const std::uint32_t* order;  // (n,) the epoch's sample order
    index_t n, batch_size;
    T* w;                      // params, grads and optimizer state arenas (P,); s1, s2 may be null
    T* g;
    T* s1;
    T* s2;
    StepState* st;
    const OptParams<T>* cfg;
    index_t steps;             // run at most this many steps (fewer when the epoch ends or stops)
};

// Byte offsets of the kernel's shared memory for batches of up to batch_size rows.
struct TinyLayout {
    std::size_t st, cfg, row_loss, row_metrics, chunks, red, w, g, s1, s2, xb, yb, da, db, bytes;
    std::size_t acts[kTinyMaxLayers];
};

template <typename T>
TinyLayout tiny_layout(const TinyArgs<T>& a) {
    TinyLayout lay{};
    std::size_t at = 0;
    auto take = [&](std::size_t bytes) {
        const std::size_t off = at;
        at += (bytes + 15) / 16 * 16;
        return off;
    };
    const index_t bs = a.batch_size;
    const index_t nchunks = (bs + kRowChunk - 1) / kRowChunk;
    index_t widest = a.in[0], red = kTinyThreads;
    for (int l = 0; l < a.L; ++l) {
        widest = widest > a.out[l] ? widest : a.out[l];
        const index_t q = a.in[l] * a.out[l] + a.out[l];
        red = red > q ? red : q;
    }
    lay.st = take(sizeof(StepState));
    lay.cfg = take(sizeof(OptParams<T>));
    lay.row_loss = take(sizeof(double) * bs);
    lay.row_metrics = take(sizeof(double) * bs * a.lp.nmetrics);
    lay.chunks = take(sizeof(double) * nchunks * (1 + a.lp.nmetrics));
    lay.red = take(sizeof(T) * red);
    lay.w = take(sizeof(T) * a.P);
    lay.g = take(sizeof(T) * a.P);
    lay.s1 = a.s1 ? take(sizeof(T) * a.P) : 0;
    lay.s2 = a.s2 ? take(sizeof(T) * a.P) : 0;
    lay.xb = take(sizeof(T) * bs * a.in[0]);
    lay.yb = take(sizeof(T) * bs * a.lp.yc);
    for (int l = 0; l < a.L; ++l) lay.acts[l] = take(sizeof(T) * bs * a.out[l]);
    lay.da = take(sizeof(T) * bs * widest);
    lay.db = take(sizeof(T) * bs * widest);
    lay.bytes = at;
    return lay;
}

// The block's threads on the GPU. The methods are host-device so that the program's host
// instantiation compiles; it is never run on the host.
struct BlockExec {
    FASTMLP_HD index_t tid() const {
#ifdef __CUDA_ARCH__
        return threadIdx.x;
#else
        return 0;
#endif
    }
    FASTMLP_HD index_t nthreads() const {
#ifdef __CUDA_ARCH__
        return blockDim.x;
#else
        return 1;
#endif
    }
    FASTMLP_HD void sync() const {
#ifdef __CUDA_ARCH__
        __syncthreads();
#endif
    }
};

// One thread on the host.
struct SerialExec {
    FASTMLP_HD index_t tid() const { return 0; }
    FASTMLP_HD index_t nthreads() const { return 1; }
    FASTMLP_HD void sync() const {}
};

// f(i) for i in [0, n) spread over the executor's threads, then a barrier. Every thread of the
// block must call it (the phases are in uniform control flow).
template <class E, class F>
FASTMLP_HD inline void phase(const E& e, index_t n, const F& f) {
    for (index_t i = e.tid(); i < n; i += e.nthreads()) f(i);
    e.sync();
}

template <typename T, class E>
FASTMLP_HD void tiny_train(const TinyArgs<T>& a, const TinyLayout& lay, unsigned char* smem, const E& e) {
    StepState& st = *reinterpret_cast<StepState*>(smem + lay.st);
    OptParams<T>& cfg = *reinterpret_cast<OptParams<T>*>(smem + lay.cfg);
    double* row_loss = reinterpret_cast<double*>(smem + lay.row_loss);
    double* row_metrics = reinterpret_cast<double*>(smem + lay.row_metrics);
    double* chunks = reinterpret_cast<double*>(smem + lay.chunks);
    T* red = reinterpret_cast<T*>(smem + lay.red);
    T* w = reinterpret_cast<T*>(smem + lay.w);
    T* g = reinterpret_cast<T*>(smem + lay.g);
    T* s1 = a.s1 ? reinterpret_cast<T*>(smem + lay.s1) : nullptr;
    T* s2 = a.s2 ? reinterpret_cast<T*>(smem + lay.s2) : nullptr;
    T* xb = reinterpret_cast<T*>(smem + lay.xb);
    T* yb = reinterpret_cast<T*>(smem + lay.yb);
    T* acts[kTinyMaxLayers];
    for (int l = 0; l < a.L; ++l) acts[l] = reinterpret_cast<T*>(smem + lay.acts[l]);
    T* da = reinterpret_cast<T*>(smem + lay.da);
    T* db = reinterpret_cast<T*>(smem + lay.db);
    const index_t K0 = a.in[0], C = a.out[a.L - 1], yc = a.lp.yc, bs = a.batch_size;
    const int nm = a.lp.nmetrics;

    phase(e, a.P, [&](index_t i) {
        w[i] = a.w[i];
        g[i] = a.g[i];
        if (s1) s1[i] = a.s1[i];
        if (s2) s2[i] = a.s2[i];
        if (i == 0) {
            st = *a.st;
            cfg = *a.cfg;
        }
    });
    const index_t total_steps = (a.n + bs - 1) / bs;
    for (index_t s = 0; s < a.steps; ++s) {
        if (st.stop || st.step >= total_steps) break;  // read after a barrier: the same in every thread
        const index_t base = st.step * bs;
        const index_t B = bs < a.n - base ? bs : a.n - base;

        phase(e, B * (K0 + yc), [&](index_t i) {  // gather (GatherBatch's rule)
            if (i < B * K0) {
                const index_t r = i / K0, k = i - r * K0;
                xb[i] = a.X[static_cast<index_t>(a.order[base + r]) * K0 + k];
            } else {
                const index_t q = i - B * K0, r = q / yc, j = q - r * yc;
                yb[q] = a.Y[static_cast<index_t>(a.order[base + r]) * yc + j];
            }
        });

        for (int l = 0; l < a.L; ++l) {  // forward: z = in w + b, then the hidden activation
            const index_t K = a.in[l], N = a.out[l];
            const T* x = l == 0 ? xb : acts[l - 1];
            T* y = acts[l];
            const T* W = w + a.w_off[l];
            const T* b = a.b_off[l] >= 0 ? w + a.b_off[l] : nullptr;
            const bool hidden = l + 1 < a.L;
            const Act act = a.act[l];
            phase(e, B * N, [&](index_t i) {
                const index_t r = i / N, j = i - r * N;
                T z = 0;
                for (index_t k = 0; k < K; ++k) z += x[r * K + k] * W[k * N + j];
                if (b) z += b[j];
                y[i] = hidden && act != Act::Softmax ? act_value(act, z) : z;
            });
            if (hidden && act == Act::Softmax) phase(e, B, [&](index_t r) { softmax_row(y + r * N, N); });
        }

        LossParams<T> lp = a.lp;
        lp.scale = T(1) / T(B);
        T* P = acts[a.L - 1];
        phase(e, B, [&](index_t r) {  // output rows: activation, loss, dZ into da, metrics
            row_loss[r] = output_row(lp, P + r * C, yb + r * yc, da + r * C, row_metrics + r, bs);
        });
        const index_t nchunks = (B + kRowChunk - 1) / kRowChunk;
        const RowChunkSums sums{row_loss, row_metrics, bs, B, nm, chunks};
        phase(e, nchunks, [&](index_t c) { sums(c); });
        const AccountBatch<T> account{chunks, nchunks, B, nm, &st, &cfg};
        phase(e, 1, [&](index_t i) { account(i); });
        const bool stopped = st.stop != 0;

        T* d = da;   // dL/dZ of layer l
        T* dn = db;  // receives dL/dZ of layer l - 1
        for (int l = a.L - 1; l >= 0; --l) {
            const index_t K = a.in[l], N = a.out[l];
            const T* x = l == 0 ? xb : acts[l - 1];
            const bool bias = a.b_off[l] >= 0;
            // dW = x^T d and db = colsum(d): Q sums over the B rows, split into row chunks.
            const index_t Q = K * N + (bias ? N : 0);
            index_t parts = kTinyThreads / Q;
            parts = parts < 1 ? 1 : (parts > B ? B : parts);
            const index_t per = (B + parts - 1) / parts;
            phase(e, parts * Q, [&](index_t i) {
                const index_t c = i / Q, q = i - c * Q;
                const index_t r0 = c * per, r1 = r0 + per < B ? r0 + per : B;
                T s = 0;
                if (q < K * N) {
                    const index_t k = q / N, j = q - k * N;
                    for (index_t r = r0; r < r1; ++r) s += x[r * K + k] * d[r * N + j];
                } else {
                    const index_t j = q - K * N;
                    for (index_t r = r0; r < r1; ++r) s += d[r * N + j];
                }
                red[c * Q + q] = s;
            });
            phase(e, Q, [&](index_t q) {
                T s = 0;
                for (index_t c = 0; c < parts; ++c) s += red[c * Q + q];
                if (q < K * N) {
                    g[a.w_off[l] + q] = s;
                } else {
                    g[a.b_off[l] + (q - K * N)] = s;
                }
            });
            if (l == 0) break;
            // dn = (d W^T) * act'(a_{l-1}), from the previous layer's output.
            const T* W = w + a.w_off[l];
            const T* ap = acts[l - 1];
            const Act act = a.act[l - 1];
            phase(e, B * K, [&](index_t i) {
                const index_t r = i / K, k = i - r * K;
                T s = 0;
                for (index_t j = 0; j < N; ++j) s += d[r * N + j] * W[k * N + j];
                dn[i] = act == Act::Softmax ? s : act_grad(act, ap[i], s);
            });
            if (act == Act::Softmax) phase(e, B, [&](index_t r) { softmax_backward_row(ap + r * K, dn + r * K, K); });
            T* t = d;
            d = dn;
            dn = t;
        }

        if (!stopped) {
            const T lr = T(st.lr), alpha = T(st.alpha);
            phase(e, a.P, [&](index_t i) {
                T unused = 0;
                if (!update_param(cfg, lr, alpha, w[i], g[i], s1 ? s1 + i : &unused, s2 ? s2 + i : &unused))
                    st.weights_bad = 1;  // every writer stores the same value
            });
        }
        const FinishStep finish{&st};
        phase(e, 1, [&](index_t i) { finish(i); });
    }

    phase(e, a.P, [&](index_t i) {
        a.w[i] = w[i];
        a.g[i] = g[i];
        if (s1) a.s1[i] = s1[i];
        if (s2) a.s2[i] = s2[i];
        if (i == 0) *a.st = st;
    });
}

#ifdef __CUDACC__
template <typename T>
__global__ void __launch_bounds__(kTinyThreads) tiny_train_kernel(TinyArgs<T> a, TinyLayout lay) {
    extern __shared__ __align__(16) unsigned char smem[];
    tiny_train(a, lay, smem, BlockExec{});
}
#endif

}  // namespace gpu
}  // namespace fastmlp
