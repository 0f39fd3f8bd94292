"""fastmlp's GEMM (csrc/gemm.hpp) against numpy.matmul, side by side in one process.

Shapes: the seed's products (batch 100: 100x2 @ 2x4, 100x4 @ 4x4, 100x4 @ 4x2), the 784-1024-1024-10
MLP's at batch 256 (forward, dW = X^T dZ and dX = dZ W^T), and squares from 64 to 2048.

fastmlp is timed in C++ (``fastmlp._core.kernels.gemm(..., repeats=n)`` runs the product n times
between two clock reads, without the Python call); numpy.matmul is timed from Python, as it is
called. Each result is first checked against float64 NumPy. Then --repeats rounds, each timing
every shape on fastmlp and then every shape on numpy (call by call, OpenBLAS's spinning threads took
the second core from fastmlp's worker and halved some of its figures; in one block per side, a
change in the machine's speed between the blocks decided the ratios). Both use the same number of
threads (--threads; default: fastmlp's default, the CPUs available). Reported: GFLOP/s
(2*M*N*K / time, best of the rounds) and the ratio fastmlp / numpy.

--independent adds, for the MLP's shapes and the squares from 256, what the cores reach when each
computes its share of the product on its own, all at once: the product cut into as many parts as
threads (its columns when it has fewer than 256 rows a thread, its rows otherwise, as the AVX-512
variant splits them), each part an independent one-thread product on its own thread, started
together and timed in C++ by that thread, their GFLOP/s added up. That is a split with no
coordination and each core's pace its own: what fastmlp's split of the product could reach on this
machine at that moment. "fastmlp/indep." is fastmlp's multi-thread product against it.

Run:
    python benches/bench_gemm.py [--threads 2] [--repeats 5] [--isa avx2] [--independent]
"""

import argparse
import os
import platform
import sys
import threading
import time

import numpy as np
from _harness import cpu_name

import fastmlp
from fastmlp._core import kernels

SEED = [("seed layer 1", 100, 4, 2, False, False), ("seed layer 2", 100, 4, 4, False, False),
        ("seed layer 3", 100, 2, 4, False, False)]
MLP = [("mlp fwd 1", 256, 1024, 784, False, False), ("mlp fwd 2", 256, 1024, 1024, False, False),
       ("mlp fwd 3", 256, 10, 1024, False, False), ("mlp dW 1 (X^T dZ)", 784, 1024, 256, True, False),
       ("mlp dX 2 (dZ W^T)", 256, 1024, 1024, False, True)]
SQUARES = [(f"square {n}", n, n, n, False, False) for n in (64, 128, 256, 512, 1024, 2048)]


def operands(rng, M, N, K, ta, tb):
    a = rng.uniform(-1, 1, (K, M) if ta else (M, K)).astype(np.float32)
    b = rng.uniform(-1, 1, (N, K) if tb else (K, N)).astype(np.float32)
    return a, b


def repeats_for(M, N, K):
    """Products a timing: 1 GFLOP at least (a 2-thread product's start a small part of it), 0.2 for tiny ones."""
    flops = 2.0 * M * N * K
    return max(1, int((1e9 if flops >= 2e6 else 2e8) / flops))


def time_numpy(a, b, ta, tb, reps):
    x, y = (a.T if ta else a), (b.T if tb else b)
    start = time.perf_counter()
    for _ in range(reps):
        np.matmul(x, y)
    return (time.perf_counter() - start) / reps


def time_independent(a, b, ta, tb, isa, threads, reps):
    """GFLOP/s of the product's `threads` shares (columns or rows), each an independent product on
    its own thread with fastmlp on one thread, started together: the sum of each share's own rate."""
    M, K = (a.shape[1], a.shape[0]) if ta else a.shape
    N = b.shape[0] if tb else b.shape[1]
    by_cols = M < 256 * threads
    copies = []
    for t in range(threads):
        if by_cols:
            lo, hi = N * t // threads, N * (t + 1) // threads
            copies.append((a, np.ascontiguousarray(b[lo:hi] if tb else b[:, lo:hi])))
        else:
            lo, hi = M * t // threads, M * (t + 1) // threads
            copies.append((np.ascontiguousarray(a[:, lo:hi] if ta else a[lo:hi]), b))
    seconds = [0.0] * threads
    start = threading.Barrier(threads)

    def run(i):
        start.wait()
        seconds[i] = kernels.gemm(*copies[i], transpose_a=ta, transpose_b=tb, isa=isa, repeats=reps)[1]

    workers = [threading.Thread(target=run, args=(i,)) for i in range(threads)]
    fastmlp.set_num_threads(1)
    try:
        for w in workers:
            w.start()
        for w in workers:
            w.join()
    finally:
        fastmlp.set_num_threads(threads)
    def flops(x, y):
        return 2.0 * x.size * (y.shape[0] if tb else y.shape[1])

    return sum(flops(x, y) / t / 1e9 for (x, y), t in zip(copies, seconds))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=0, help="threads for both (default: fastmlp's default)")
    parser.add_argument("--repeats", type=int, default=5, help="rounds, each timing every shape on both sides; the best kept (default: %(default)s)")
    parser.add_argument("--isa", default="", help="fastmlp variant (default: the best this CPU runs)")
    parser.add_argument("--independent", action="store_true",
                        help="also time one copy of the product a thread, all at once (see above)")
    args = parser.parse_args(argv)
    if args.threads:
        fastmlp.set_num_threads(args.threads)
    threads = fastmlp.get_num_threads()
    from threadpoolctl import threadpool_limits

    isa = args.isa or fastmlp.cpu_info()["isa"]
    print(f"machine: {platform.machine()} {cpu_name()}, os.cpu_count()={os.cpu_count()}, {platform.platform()}")
    print(f"versions: numpy {np.__version__}, fastmlp {fastmlp.__version__} ({isa}); {threads} threads for both")
    peak = max(kernels.fma_peak(isa, 20_000_000) for _ in range(3))  # measured again in every round
    rng = np.random.default_rng(0)
    failed = False
    with threadpool_limits(limits=threads, user_api="blas"):
        # Checks first, then the timings.
        cases = []
        for name, M, N, K, ta, tb in SEED + MLP + SQUARES:
            a, b = operands(rng, M, N, K, ta, tb)
            c, _ = kernels.gemm(a, b, transpose_a=ta, transpose_b=tb, isa=isa)
            ref = (a.T if ta else a).astype(np.float64) @ (b.T if tb else b).astype(np.float64)
            if not np.allclose(c, ref, rtol=1e-4, atol=1e-4 * np.sqrt(K)):
                print(f"error: {name}: fastmlp's product differs from float64 NumPy", file=sys.stderr)
                failed = True
                continue
            cases.append((name, M, N, K, ta, tb, a, b))
        # Rounds: all of fastmlp's timings, then all of numpy's, --repeats times, the best of
        # each kept. This machine's speed changes by up to 2x from one second to the next (another
        # tenant on the host's cores), so one side's timings all together and then the other's
        # would compare different machines. Within a round, the sides are apart: OpenBLAS's
        # threads keep spinning for a while after each call, and would take the cores from
        # fastmlp's threads if the two were interleaved (fastmlp's workers sleep 50 us after a
        # product).
        ours, theirs, indep = {}, {}, {}
        independent = {name for name, M, N, *_ in MLP + SQUARES if M >= 256 and N >= 256} if args.independent and threads > 1 else set()
        for _ in range(args.repeats):
            time.sleep(0.3)  # OpenBLAS's threads go back to sleep
            peak = max(peak, kernels.fma_peak(isa, 20_000_000))
            for name, M, N, K, ta, tb, a, b in cases:
                reps = repeats_for(M, N, K)
                t = kernels.gemm(a, b, transpose_a=ta, transpose_b=tb, isa=isa, repeats=reps)[1]
                ours[name] = min(ours.get(name, t), t)
            for name, M, N, K, ta, tb, a, b in cases:
                if name in independent:  # 1 GFLOP a share at least: the threads' start a small part of it
                    rate = time_independent(a, b, ta, tb, isa, threads, max(1, int(1e9 * threads / (2.0 * M * N * K))))
                    indep[name] = max(indep.get(name, rate), rate)
            for name, M, N, K, ta, tb, a, b in cases:
                reps = repeats_for(M, N, K)
                t = time_numpy(a, b, ta, tb, reps)
                theirs[name] = min(theirs.get(name, t), t)
        print(f"fp32 FMA peak measured on {threads} threads: {peak:.0f} GFLOP/s (the best of every round's)")
        header = f"{'shape':<20} {'M x N x K':>18} {'fastmlp GF/s':>13} {'numpy GF/s':>11} {'fastmlp/numpy':>14} {'% peak':>7}"
        if independent:
            header += f" {'indep. GF/s':>12} {'% peak':>7} {'fastmlp/indep.':>15}"
        print(header)
        print("-" * len(header))
        for name, M, N, K, ta, tb, a, b in cases:
            flops = 2.0 * M * N * K
            rate = flops / ours[name] / 1e9
            line = (f"{name:<20} {f'{M} x {N} x {K}':>18} {rate:>13.2f} {flops / theirs[name] / 1e9:>11.2f} "
                    f"{theirs[name] / ours[name]:>13.2f}x {100 * rate / peak:>6.1f}%")
            if name in indep:
                line += f" {indep[name]:>12.2f} {100 * indep[name] / peak:>6.1f}% {rate / indep[name]:>14.2f}x"
            print(line, flush=True)
    print("(fastmlp/numpy = numpy's time / fastmlp's; fastmlp timed in C++, numpy from Python)")
    if independent:
            print(f"(indep. = the product's {threads} shares at once, each an independent one-thread product, their "
              f"rates added; fastmlp/indep. = fastmlp's {threads}-thread rate / that)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
