"""A large MLP (784-1024-1024-10) trained and run on fastmlp's native engine and its peers, side by side in one process.

Workload: 10,240 synthetic MNIST-shaped samples (784 features in [0, 1], 10 classes given by a
random linear teacher), relu/relu/softmax, categorical cross-entropy, SGD(learning_rate=0.01,
momentum=0.9), batch 256 (40 steps an epoch). Then predict on 8,192 samples at batch 1024.

Contenders, from the same initial weights:
    fastmlp cpu     the native engine on its default threads (FASTMLP_NUM_THREADS or the CPUs)
    fastmlp numpy   fastmlp's NumPy reference, BLAS on --threads threads
    torch eager     PyTorch autograd + torch.optim.SGD(momentum=0.9), --threads threads, if torch imports

Quality gate, before anything is timed: 3 steps on fastmlp cpu and on the NumPy reference (no
shuffling) must give the same weights to 1e-4, and every contender's loss must fall.

Throughput is in model GFLOP/s: 2 FLOPs per multiply-add, 3 products per layer (forward, dW, dX;
the first layer has no dX, which every contender skips), so 2 * B * (3 * sum(in*out) - 784*1024)
per step. The fp32 peak is measured here by fastmlp.kernels.fma_peak (register-only FMA chains on
the same threads), so "% of peak" compares with what this machine delivers right now.

Run:
    python benches/bench_mlp.py [--epochs 3] [--repeats 3] [--threads 2]
"""

import argparse
import os
import platform
import sys
import time

import numpy as np
from _harness import cpu_name, import_torch

import fastmlp
from fastmlp import _core
from fastmlp.layers import Dense, Input
from fastmlp.models import Sequential
from fastmlp.optimizers import SGD

WIDTHS = [784, 1024, 1024, 10]
ACTS = ["relu", "relu", "softmax"]
BATCH, N_TRAIN, N_PREDICT, PREDICT_BATCH = 256, 10240, 8192, 1024
LR, MOMENTUM = 0.01, 0.9


def data(seed):
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 1, (N_TRAIN, WIDTHS[0])).astype(np.float32)
    teacher = rng.standard_normal((WIDTHS[0], WIDTHS[-1])).astype(np.float32)
    labels = (x - 0.5) @ teacher
    y = np.eye(WIDTHS[-1], dtype=np.float32)[labels.argmax(axis=1)]
    return x, y, rng.uniform(0, 1, (N_PREDICT, WIDTHS[0])).astype(np.float32)


def flops_per_step(batch):
    macs = sum(a * b for a, b in zip(WIDTHS, WIDTHS[1:]))
    return 2 * batch * (3 * macs - WIDTHS[0] * WIDTHS[1])


def fastmlp_model(weights, backend):
    model = Sequential([Input(shape=(WIDTHS[0],))] + [Dense(u, activation=a) for u, a in zip(WIDTHS[1:], ACTS)])
    model.set_weights(weights)
    model.compile(loss="categorical_crossentropy", optimizer=SGD(learning_rate=LR, momentum=MOMENTUM), backend=backend)
    return model


def run_fastmlp(backend, weights, x, y, xp, epochs):
    model = fastmlp_model(weights, backend)
    fastmlp.utils.set_random_seed(1)
    model.fit(x[: 2 * BATCH], y[: 2 * BATCH], epochs=1, batch_size=BATCH, verbose=0)  # warm-up
    start = time.perf_counter()
    history = model.fit(x, y, epochs=epochs, batch_size=BATCH, verbose=0)
    fit_seconds = time.perf_counter() - start
    model.predict(xp[:PREDICT_BATCH], batch_size=PREDICT_BATCH)
    start = time.perf_counter()
    model.predict(xp, batch_size=PREDICT_BATCH)
    predict_seconds = time.perf_counter() - start
    losses = history.history["loss"]
    return fit_seconds, predict_seconds, losses[0], losses[-1]


def run_torch(torch, weights, x, y, xp, epochs):
    params = [torch.tensor(w, requires_grad=True) for w in weights]
    opt = torch.optim.SGD(params, lr=LR, momentum=MOMENTUM)
    xt, yt, xpt = torch.from_numpy(x), torch.from_numpy(y).argmax(dim=1), torch.from_numpy(xp)

    def logits(inp):
        h = inp
        for i in range(0, len(params) - 2, 2):
            h = torch.relu(h @ params[i] + params[i + 1])
        return h @ params[-2] + params[-1]

    def epoch():
        total = 0.0
        order = torch.randperm(len(xt))
        for i in range(0, len(xt), BATCH):
            idx = order[i : i + BATCH]
            loss = torch.nn.functional.cross_entropy(logits(xt[idx]), yt[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
        return total / len(xt)

    epoch()  # warm-up
    start = time.perf_counter()
    losses = [epoch() for _ in range(epochs)]
    fit_seconds = time.perf_counter() - start
    with torch.no_grad():
        for i in range(0, PREDICT_BATCH, PREDICT_BATCH):
            torch.softmax(logits(xpt[i : i + PREDICT_BATCH]), dim=-1)
        start = time.perf_counter()
        for i in range(0, len(xpt), PREDICT_BATCH):
            torch.softmax(logits(xpt[i : i + PREDICT_BATCH]), dim=-1)
        predict_seconds = time.perf_counter() - start
    return fit_seconds, predict_seconds, losses[0], losses[-1]


def check_against_reference(weights, x, y):
    """3 steps, no shuffling, on the native engine and on the NumPy reference: the same weights."""
    out = []
    for backend in ("cpu", "numpy"):
        model = fastmlp_model(weights, backend)
        model.fit(x[: 3 * BATCH], y[: 3 * BATCH], epochs=1, batch_size=BATCH, shuffle=False, verbose=0)
        out.append(model.get_weights())
    for a, b in zip(*out):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3, help="timed epochs of 40 steps (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=2, help="rounds; each contender runs once a round, its best kept (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=0,
                        help="threads for every contender (default: fastmlp's default, the CPUs available)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.threads:
        fastmlp.set_num_threads(args.threads)
    threads = fastmlp.get_num_threads()
    from threadpoolctl import threadpool_limits

    torch = import_torch()
    if torch is not None:
        torch.set_num_threads(threads)
    print(f"machine: {platform.machine()} {cpu_name()}, os.cpu_count()={os.cpu_count()}, {platform.platform()}")
    print(f"versions: python {platform.python_version()}, numpy {np.__version__}, fastmlp {fastmlp.__version__} "
          f"({fastmlp.cpu_info()['isa']}), torch {torch.__version__ if torch else 'not installed'}; {threads} threads")
    x, y, xp = data(args.seed)
    fastmlp.utils.set_random_seed(args.seed)
    weights = [w for w in fastmlp_model_weights()]
    with threadpool_limits(limits=threads, user_api="blas"):
        check_against_reference(weights, x, y)
    print("quality: 3 steps on fastmlp cpu equal the NumPy reference's to 1e-4")

    steps = args.epochs * N_TRAIN // BATCH
    contenders = [("fastmlp cpu (native)", lambda: run_fastmlp("cpu", weights, x, y, xp, args.epochs))]

    def reference():
        with threadpool_limits(limits=threads, user_api="blas"):
            return run_fastmlp("numpy", weights, x, y, xp, args.epochs)

    contenders.append(("fastmlp numpy (reference)", reference))
    if torch is not None:
        contenders.append((f"torch {torch.__version__} eager", lambda: run_torch(torch, weights, x, y, xp, args.epochs)))

    # Rounds: every contender once per round, in turn, the best of the rounds kept; the peak is
    # measured in every round too. This machine's speed changes by up to 2x from one second to
    # the next (another tenant on the host's cores), so timing one contender's runs all together
    # and then the next's would compare different machines.
    peak = 0.0
    runs = {name: [] for name, _ in contenders}
    for _ in range(args.repeats):
        peak = max([peak] + [_core.kernels.fma_peak(iterations=20_000_000) for _ in range(3)])
        for name, run in contenders:
            runs[name].append(run())
            time.sleep(0.3)  # the BLAS threads of the peers stop spinning
    peak = max([peak] + [_core.kernels.fma_peak(iterations=20_000_000) for _ in range(3)])
    results = []
    for name, _ in contenders:
        fit = min(r[0] for r in runs[name])
        pred = min(r[1] for r in runs[name])
        first, last = runs[name][0][2], runs[name][0][3]
        if not last < first:
            print(f"error: {name}'s loss did not fall ({first:.4f} -> {last:.4f})", file=sys.stderr)
            return 1
        results.append((name, fit, pred, first, last))
        print(f"{name}: loss {first:.4f} -> {last:.4f}", flush=True)

    gflop = flops_per_step(BATCH) / 1e9
    native_fit, native_pred = results[0][1], results[0][2]
    print()
    print(f"fp32 peak measured on {threads} threads: {peak:.0f} GFLOP/s; {gflop:.2f} GFLOP per training step")
    header = (f"{'backend':<26} {'ms/step':>8} {'GFLOP/s':>8} {'% peak':>7} {'native x':>9} "
              f"{'predict samples/s':>18} {'native x':>9}")
    print(header)
    print("-" * len(header))
    for name, fit, pred, _, _ in results:
        rate = gflop * steps / fit
        print(f"{name:<26} {1e3 * fit / steps:>8.2f} {rate:>8.1f} {100 * rate / peak:>6.1f}% {fit / native_fit:>8.2f}x "
              f"{N_PREDICT / pred:>18,.0f} {pred / native_pred:>8.2f}x")
    print(f"(native x = that backend's time / the native engine's; best of {args.repeats} interleaved rounds)")
    return 0


def fastmlp_model_weights():
    model = Sequential([Input(shape=(WIDTHS[0],))] + [Dense(u, activation=a) for u, a in zip(WIDTHS[1:], ACTS)])
    return model.get_weights()


if __name__ == "__main__":
    sys.exit(main())
