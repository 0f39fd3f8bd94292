"""fastmlp's CUDA backend against PyTorch on the same GPU, side by side in one process.

Workloads (float32, no TF32 anywhere: torch.set_float32_matmul_precision('highest')):
    seed    2-4-4-2 relu/relu/softmax, binary cross-entropy, SGD(momentum=0.99, decay=0.001), 10,000
            XOR samples, 200 epochs of batch 100 (20,000 steps). Target: the fit in at most 0.5 s.
    mnist   784-1024-1024-10 relu/relu/softmax, categorical cross-entropy, SGD(0.01, momentum=0.9),
            batch 256, 60,000 random samples of 784 features, 3 epochs.
    large   4096-4096-4096-10, the same loss and optimizer, batch 1024, 32,768 random samples, 3 epochs.
            Target: training throughput at least PyTorch's.

Each contender starts from the same weights and from NumPy arrays on the host (its copy to the GPU
is part of its time), shuffles every epoch, and reports its epoch losses as Keras does. torch runs
the usual eager loop: data on the GPU, randperm per epoch, nn.Linear/ReLU, CrossEntropyLoss on the
logits (softmax + cross-entropy, what fastmlp fuses), torch.optim.SGD (whose momentum equals Keras's
at a constant learning rate). Before any time is shown, each large workload is trained for 5
unshuffled batches on both from the same weights and their losses and weights must agree; the seed
fit must reach 95 % test accuracy. Times are the best of --repeats fits after one untimed warm-up.

torch is optional (the comparison columns are left out without it, e.g. on a machine where a CUDA
build of torch cannot be installed). Exit status: 0 when every check and target passed.

Run:  python benches/bench_cuda.py [--repeats 3] [--skip-torch-seed]
"""

import argparse
import platform
import sys
import time

import numpy as np
from _harness import import_torch, timed_fastmlp_fit

import fastmlp
from fastmlp.layers import Dense
from fastmlp.models import Sequential
from fastmlp.optimizers import SGD

SEED_TARGET_S = 0.5
DEVICE = "cuda"  # where torch runs


def xor_data(rng, n):
    x = rng.standard_normal((n, 2)).astype(np.float32)
    cls = (x[:, 0] * x[:, 1] <= 0).astype(np.int64)
    return x, np.eye(2, dtype=np.float32)[cls]


def random_data(rng, n, features, classes):
    x = rng.standard_normal((n, features)).astype(np.float32)
    return x, np.eye(classes, dtype=np.float32)[rng.integers(0, classes, n)]


def fastmlp_model(arch, input_dim, lr, momentum, decay=0.0, backend="cuda"):
    model = Sequential([Dense(arch[0][0], activation=arch[0][1], input_dim=input_dim)]
                       + [Dense(units, activation=act) for units, act in arch[1:]])
    loss = "binary_crossentropy" if arch[-1][0] == 2 else "categorical_crossentropy"
    model.compile(loss=loss, optimizer=SGD(learning_rate=lr, momentum=momentum, decay=decay), backend=backend)
    return model


class TorchMLP:
    """The same MLP in PyTorch (hidden relu, logits out), trained the usual eager way."""

    def __init__(self, torch, weights, lr, momentum):
        self.torch = torch
        layers = []
        for i in range(0, len(weights), 2):
            linear = torch.nn.Linear(*weights[i].shape, device=DEVICE)
            with torch.no_grad():
                linear.weight.copy_(torch.from_numpy(weights[i].T.copy()))
                linear.bias.copy_(torch.from_numpy(weights[i + 1]))
            layers += [linear, torch.nn.ReLU()]
        self.model = torch.nn.Sequential(*layers[:-1])
        self.opt = torch.optim.SGD(self.model.parameters(), lr=lr, momentum=momentum)
        self.loss = torch.nn.CrossEntropyLoss()

    def fit(self, x, y, epochs, batch, shuffle=True):
        torch = self.torch
        X = torch.from_numpy(x).to(DEVICE)
        labels = torch.from_numpy(y.argmax(1)).to(DEVICE)
        n, losses = len(x), []
        for _ in range(epochs):
            order = torch.randperm(n, device=DEVICE) if shuffle else torch.arange(n, device=DEVICE)
            total = torch.zeros((), device=DEVICE)
            for i in range(0, n, batch):
                idx = order[i : i + batch]
                loss = self.loss(self.model(X[idx]), labels[idx])
                self.opt.zero_grad(set_to_none=True)
                loss.backward()
                self.opt.step()
                total += loss.detach() * len(idx)
            losses.append(float(total) / n)  # one synchronization per epoch, as Keras's logs
        if X.is_cuda:
            torch.cuda.synchronize()
        return losses

    def weights(self):
        out = []
        for layer in self.model:
            if hasattr(layer, "weight"):
                out += [layer.weight.detach().cpu().numpy().T, layer.bias.detach().cpu().numpy()]
        return out


def best_time(repeats, run):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return min(times)


def bench_seed(args, torch, results):
    arch = [(4, "relu"), (4, "relu"), (2, "softmax")]
    rng = np.random.default_rng(0)
    x, y = xor_data(rng, 10_000)
    x_test, y_test = xor_data(rng, 5_000)
    fastmlp.utils.set_random_seed(0)
    weights = fastmlp_model(arch, 2, 0.01, 0.99, 0.001, backend="cpu").get_weights()

    def fit(backend):
        model = fastmlp_model(arch, 2, 0.01, 0.99, 0.001, backend=backend)
        model.set_weights(weights)
        seconds, pred = timed_fastmlp_fit(model, (x, y, x_test, y_test), 1, 200, 100)
        return seconds, float((pred.argmax(1) == y_test.argmax(1)).mean()), model

    fit("cuda")  # warm-up: context, kernels
    runs = [fit("cuda") for _ in range(args.repeats)]
    seconds, acc = min(r[0] for r in runs), min(r[1] for r in runs)
    path = runs[0][2]._engine.path
    cpu_seconds, cpu_acc, _ = fit("cpu")
    ok = acc >= 0.95
    results.append(("seed", "fastmlp cuda", seconds, 20_000 * 100 / seconds, f"acc {acc:.4f}, path {path}"))
    results.append(("seed", "fastmlp cpu", cpu_seconds, 20_000 * 100 / cpu_seconds, f"acc {cpu_acc:.4f}"))
    if torch is not None and not args.skip_torch_seed:
        def torch_fit():
            model = TorchMLP(torch, weights, 0.01, 0.99)  # torch's SGD: no Keras decay; close enough to time
            model.fit(x, y, 200, 100)
        torch_seconds = best_time(1, torch_fit)
        results.append(("seed", "torch eager", torch_seconds, 20_000 * 100 / torch_seconds, ""))
    target = seconds <= SEED_TARGET_S
    print(f"seed: fastmlp cuda test accuracy {acc:.4f} ({'ok' if ok else 'FAILED'}, need >= 0.95); "
          f"fit {seconds:.3f} s ({'PASS' if target else 'FAIL'}: target <= {SEED_TARGET_S} s)", flush=True)
    return ok and target


def bench_mlp(name, args, torch, results, features, hidden, batch, n, epochs):
    arch = [(hidden, "relu"), (hidden, "relu"), (10, "softmax")]
    rng = np.random.default_rng(1)
    x, y = random_data(rng, n, features, 10)
    fastmlp.utils.set_random_seed(1)
    weights = fastmlp_model(arch, features, 0.01, 0.9, backend="cpu").get_weights()
    ok = True
    # Validation: 5 unshuffled batches from the same weights.
    few_x, few_y = x[: 5 * batch], y[: 5 * batch]
    check = fastmlp_model(arch, features, 0.01, 0.9)
    check.set_weights(weights)
    ours = check.fit(few_x, few_y, epochs=1, batch_size=batch, shuffle=False, verbose=0).history["loss"][0]
    if torch is not None:
        peer = TorchMLP(torch, weights, 0.01, 0.9)
        theirs = peer.fit(few_x, few_y, 1, batch, shuffle=False)[0]
        w_ours, w_theirs = check.get_weights()[0], peer.weights()[0]
        drift = float(np.max(np.abs(w_ours - w_theirs)) / np.max(np.abs(w_theirs)))
        ok = abs(ours - theirs) <= 1e-3 * abs(theirs) and drift <= 1e-3
        print(f"{name}: 5-batch check, loss fastmlp {ours:.6f} vs torch {theirs:.6f}, first kernel max rel diff "
              f"{drift:.2e} ({'ok' if ok else 'FAILED'})", flush=True)
    del check
    steps = epochs * -(-n // batch)
    model = fastmlp_model(arch, features, 0.01, 0.9)

    def ours_fit():  # the same model each time (its momentum carries over: the same work)
        model.set_weights(weights)
        model.fit(x, y, epochs=epochs, batch_size=batch, verbose=0)

    ours_fit()  # warm-up: graphs captured, algorithms chosen
    seconds = best_time(args.repeats, ours_fit)
    results.append((name, "fastmlp cuda", seconds, steps * batch / seconds,
                    f"path {model._engine.path}; {model._engine.gemm_report}"))
    if torch is None:
        return ok, None
    peer = TorchMLP(torch, weights, 0.01, 0.9)
    peer.fit(x[: 20 * batch], y[: 20 * batch], 1, batch)  # warm-up: cuBLAS handles, caching allocator
    torch_seconds = best_time(args.repeats, lambda: TorchMLP(torch, weights, 0.01, 0.9).fit(x, y, epochs, batch))
    results.append((name, "torch eager", torch_seconds, steps * batch / torch_seconds, ""))
    return ok, torch_seconds / seconds


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="timed fits per contender (default: %(default)s)")
    parser.add_argument("--skip-torch-seed", action="store_true", help="leave torch out of the seed workload "
                        "(its 20,000 eager steps take several seconds)")
    args = parser.parse_args(argv)
    info = fastmlp.cuda_info()
    if not info["available"]:
        print(f"backend='cuda' is not available: {info['reason']}", file=sys.stderr)
        return 1
    torch = import_torch()
    if torch is not None and not torch.cuda.is_available():
        print("torch is installed without a usable CUDA: the torch columns are left out")
        torch = None
    if torch is not None:  # plain fp32 products, as fastmlp's (torch's default; set in case a site changed it)
        torch.set_float32_matmul_precision("highest")
    print(f"device: {info['device']} (compute capability {info['compute_capability']}), driver "
          f"{info['driver_version']}, CUDA runtime {info['runtime_version']}, cuBLASLt {info['cublaslt_version']}")
    print(f"versions: python {platform.python_version()}, numpy {np.__version__}, fastmlp {fastmlp.__version__}"
          + (f", torch {torch.__version__}" if torch is not None else ", torch not available"), flush=True)

    results = []
    passed = bench_seed(args, torch, results)
    ok, _ = bench_mlp("mnist", args, torch, results, 784, 1024, 256, 60_000, 3)
    passed = passed and ok
    ok, ratio = bench_mlp("large", args, torch, results, 4096, 4096, 1024, 32_768, 3)
    passed = passed and ok
    if ratio is not None:
        print(f"large: fastmlp cuda / torch throughput {ratio:.2f}x ({'PASS' if ratio >= 1 else 'FAIL'}: target >= 1)")
        passed = passed and ratio >= 1

    print()
    header = f"{'workload':<8} {'contender':<14} {'fit s':>9} {'samples/s':>14} {'vs torch':>9}  notes"
    print(header)
    print("-" * len(header))
    torch_time = {w: s for w, c, s, _r, _n in results if c == "torch eager"}
    for workload, contender, seconds, rate, notes in results:
        versus = f"{torch_time[workload] / seconds:.2f}x" if workload in torch_time else "-"
        print(f"{workload:<8} {contender:<14} {seconds:>9.3f} {rate:>14,.0f} {versus:>9}  {notes}")
    print("(vs torch = torch's fit time / this contender's; best of --repeats fits after a warm-up)")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
