// Batch normalization kernels (Keras 3's BatchNormalization with axis=-1 on flat inputs): the
// training forward, the inference forward, the moving statistics' update and the backward, side by
// side, each with its naive reference.
//
// Layout: X, Y, Xhat, dY and dX are (B, N) row-major; gamma, beta and every statistic are (N,).
// Per feature j (a column), over the batch rows i:
//   mean_j = sum_i x_ij / B          var_j = sum_i (x_ij - mean_j)^2 / B   (biased; two passes)
//   inv_j  = 1 / sqrt(var_j + eps)   xhat_ij = (x_ij - mean_j) * inv_j
//   y_ij   = (x_ij - mean_j) * (inv_j * gamma_j) + beta_j                  (Keras's operation order)
// A null gamma is 1 (scale=False), a null beta 0 (center=False).
//
// Summation order is part of the contract: a column's sums run over the rows in ascending order, in
// double, inside one thread (threads take whole column strips), so the bits do not depend on the
// thread count and the optimized kernels equal their naive references. Keras's torch backend
// computes var as mean(x^2) - mean^2 in float32; the two-pass form here is the same quantity without
// that cancellation (they agree to float32 rounding unless |mean| is many standard deviations).
// Everything after the sums is computed in T, as Keras computes it in the layer's dtype.
#pragma once

#include <algorithm>
#include <cmath>
#include <vector>

#include "common.hpp"
#include "parallel.hpp"

FASTMLP_ISA_BEGIN

// f(lo, hi) over column strips [lo, hi) of a (B, N) block: one strip, or one per thread when the
// block is large enough to pay for it. Strips start on multiples of 16 columns (no shared cache line).
template <typename F>
void for_column_strips(index_t B, index_t N, F&& f) {
    const int tasks = static_cast<int>(std::min<index_t>(num_threads(), std::min(B * N / 65536, N / 64)));
    if (tasks <= 1) {
        f(index_t(0), N);
        return;
    }
    const auto edge = [&](int t) { return t == tasks ? N : N * t / tasks / 16 * 16; };
    parallel_for(tasks, [&](int t) { f(edge(t), edge(t + 1)); });
}

// ---------------------------------------------------------------------------------------------
// Training forward: the batch's statistics, then Y := (X - mean) * (inv * gamma) + beta.
//   X (B, N) read; Y (B, N) overwritten (may be X itself); Xhat (B, N) := (X - mean) * inv, for the
//   backward (must not alias X or Y); mean, var, inv (N,) overwritten. work: 3 N doubles (resized).
//   Edge cases: B == 1 gives var 0 (Y = beta); eps > 0 keeps inv finite.
// ---------------------------------------------------------------------------------------------
template <typename T>
inline void batchnorm_finish_stats(T* mean, T* var, T* inv, const double* sum, const double* sq, index_t B,
                                   index_t lo, index_t hi, double eps) {
    for (index_t j = lo; j < hi; ++j) {
        mean[j] = T(sum[j] / double(B));
        var[j] = T(sq[j] / double(B));
        inv[j] = T(1) / std::sqrt(var[j] + T(eps));
    }
}

template <typename T>
inline void batchnorm_normalize(T* Y, T* Xhat, const T* X, const T* mean, const T* inv, const T* gamma,
                                const T* beta, index_t i, index_t N, index_t lo, index_t hi) {
    for (index_t j = lo; j < hi; ++j) {
        const T centered = X[i * N + j] - mean[j];
        const T s = gamma ? inv[j] * gamma[j] : inv[j];
        if (Xhat) Xhat[i * N + j] = centered * inv[j];
        Y[i * N + j] = beta ? centered * s + beta[j] : centered * s;
    }
}

template <typename T>
void batchnorm_forward_train_naive(T* Y, T* Xhat, T* mean, T* var, T* inv, const T* X, const T* gamma,
                                   const T* beta, index_t B, index_t N, double eps) {
    std::vector<double> sum(N), sq(N);
    for (index_t j = 0; j < N; ++j) {
        double s = 0;
        for (index_t i = 0; i < B; ++i) s += double(X[i * N + j]);
        sum[j] = s;
        const double m = s / double(B);
        double q = 0;
        for (index_t i = 0; i < B; ++i) q += (double(X[i * N + j]) - m) * (double(X[i * N + j]) - m);
        sq[j] = q;
    }
    batchnorm_finish_stats(mean, var, inv, sum.data(), sq.data(), B, 0, N, eps);
    for (index_t i = 0; i < B; ++i) batchnorm_normalize(Y, Xhat, X, mean, inv, gamma, beta, i, N, 0, N);
}

template <typename T>
void batchnorm_forward_train(T* Y, T* Xhat, T* mean, T* var, T* inv, const T* X, const T* gamma, const T* beta,
                             index_t B, index_t N, double eps, std::vector<double>& work) {
    work.resize(3 * N);
    double* sum = work.data();
    double* sq = work.data() + N;
    double* m = work.data() + 2 * N;  // the mean in double, as the naive kernel's second pass uses it
    for_column_strips(B, N, [&](index_t lo, index_t hi) {
        std::fill(sum + lo, sum + hi, 0.0);
        std::fill(sq + lo, sq + hi, 0.0);
        for (index_t i = 0; i < B; ++i)
            for (index_t j = lo; j < hi; ++j) sum[j] += double(X[i * N + j]);
        for (index_t j = lo; j < hi; ++j) m[j] = sum[j] / double(B);
        for (index_t i = 0; i < B; ++i)
            for (index_t j = lo; j < hi; ++j) sq[j] += (double(X[i * N + j]) - m[j]) * (double(X[i * N + j]) - m[j]);
        batchnorm_finish_stats(mean, var, inv, sum, sq, B, lo, hi, eps);
        for (index_t i = 0; i < B; ++i) batchnorm_normalize(Y, Xhat, X, mean, inv, gamma, beta, i, N, lo, hi);
    });
}

// ---------------------------------------------------------------------------------------------
// Inference forward, with the moving statistics:
//   Y := (X - moving_mean) * (1 / sqrt(moving_var + eps) * gamma) + beta.
//   X (B, N) read; Y (B, N) overwritten (may be X itself). Elementwise: no order to keep.
// ---------------------------------------------------------------------------------------------
template <typename T>
void batchnorm_forward_infer(T* Y, const T* X, const T* moving_mean, const T* moving_var, const T* gamma,
                             const T* beta, index_t B, index_t N, double eps, std::vector<T>& inv) {
    inv.resize(N);
    for (index_t j = 0; j < N; ++j) inv[j] = T(1) / std::sqrt(moving_var[j] + T(eps));
    for (index_t i = 0; i < B; ++i)
        batchnorm_normalize(Y, static_cast<T*>(nullptr), X, moving_mean, inv.data(), gamma, beta, i, N, 0, N);
}

// ---------------------------------------------------------------------------------------------
// Moving statistics, after a training step (Keras: moving * momentum + batch * (1 - momentum), both
// factors rounded to T as the backend rounds a Python float against a T tensor):
//   moving_mean (N,) := moving_mean * m + mean * (1 - m);  moving_var (N,) likewise with var.
// ---------------------------------------------------------------------------------------------
template <typename T>
void batchnorm_update_moving(T* moving_mean, T* moving_var, const T* mean, const T* var, index_t N, double momentum) {
    const T keep = T(momentum), take = T(1.0 - momentum);
    for (index_t j = 0; j < N; ++j) {
        moving_mean[j] = moving_mean[j] * keep + mean[j] * take;
        moving_var[j] = moving_var[j] * keep + var[j] * take;
    }
}

// ---------------------------------------------------------------------------------------------
// Backward through the training forward, given dY = dL/dY:
//   dbeta (N,)  := sum_i dY_ij                (overwritten; null: not stored, center=False)
//   dgamma (N,) := sum_i dY_ij * Xhat_ij      (overwritten; null: not stored, scale=False)
//   dX (B, N)   := gamma_j * inv_j * (dY_ij - dbeta_j / B - Xhat_ij * dgamma_j / B)
//                  (overwritten; may be dY itself; null: not computed, the input needs no gradient)
//   Xhat, inv: the training forward's; gamma null is 1. work: 2 N doubles (resized).
//   The batch statistics' own gradient is in dX's last two terms (mean and variance depend on X).
// ---------------------------------------------------------------------------------------------
template <typename T>
inline void batchnorm_backward_finish(T* dX, T* dgamma, T* dbeta, const T* dY, const T* Xhat, const T* gamma,
                                      const T* inv, const double* sdy, const double* sdyx, index_t B, index_t N,
                                      index_t lo, index_t hi) {
    for (index_t j = lo; j < hi; ++j) {
        if (dbeta) dbeta[j] = T(sdy[j]);
        if (dgamma) dgamma[j] = T(sdyx[j]);
    }
    if (!dX) return;
    for (index_t i = 0; i < B; ++i)
        for (index_t j = lo; j < hi; ++j) {
            const T s = gamma ? gamma[j] * inv[j] : inv[j];
            const T mean_dy = T(sdy[j] / double(B)), mean_dyx = T(sdyx[j] / double(B));
            dX[i * N + j] = s * (dY[i * N + j] - mean_dy - Xhat[i * N + j] * mean_dyx);
        }
}

template <typename T>
void batchnorm_backward_naive(T* dX, T* dgamma, T* dbeta, const T* dY, const T* Xhat, const T* gamma, const T* inv,
                              index_t B, index_t N) {
    std::vector<double> sdy(N), sdyx(N);
    for (index_t j = 0; j < N; ++j) {
        double a = 0, b = 0;
        for (index_t i = 0; i < B; ++i) {
            a += double(dY[i * N + j]);
            b += double(dY[i * N + j]) * double(Xhat[i * N + j]);
        }
        sdy[j] = a;
        sdyx[j] = b;
    }
    batchnorm_backward_finish(dX, dgamma, dbeta, dY, Xhat, gamma, inv, sdy.data(), sdyx.data(), B, N, 0, N);
}

template <typename T>
void batchnorm_backward(T* dX, T* dgamma, T* dbeta, const T* dY, const T* Xhat, const T* gamma, const T* inv,
                        index_t B, index_t N, std::vector<double>& work) {
    work.resize(2 * N);
    double* sdy = work.data();
    double* sdyx = work.data() + N;
    for_column_strips(B, N, [&](index_t lo, index_t hi) {
        std::fill(sdy + lo, sdy + hi, 0.0);
        std::fill(sdyx + lo, sdyx + hi, 0.0);
        for (index_t i = 0; i < B; ++i)
            for (index_t j = lo; j < hi; ++j) {
                sdy[j] += double(dY[i * N + j]);
                sdyx[j] += double(dY[i * N + j]) * double(Xhat[i * N + j]);
            }
        batchnorm_backward_finish(dX, dgamma, dbeta, dY, Xhat, gamma, inv, sdy, sdyx, B, N, lo, hi);
    });
}

FASTMLP_ISA_END
