"""The digits example's training, timed on fastmlp's native engine and on its peers, side by side in one process.

Workload (examples/digits.py): scikit-learn's 8x8 handwritten digits, pixels scaled to [0, 1],
split stratified into 1,347 training and 450 test images; a 64-256-128-10 MLP (relu, relu,
softmax), sparse categorical cross-entropy, Adam(learning_rate=0.003) in Keras's form
(``alpha = lr * sqrt(1 - beta_2^t) / (1 - beta_1^t); w -= alpha * m / (sqrt(v) + epsilon)``),
60 epochs of batch 128 (11 batches an epoch, the last of 67 images, 660 steps). The example holds
back 10 % of its training images for validation curves; here all 1,347 train, and no validation
pass runs, so that only training is timed.

Contenders, all on the same data from the same initial weights:
    fastmlp cpu     the native C++ engine (``compile(backend='cpu')``)
    fastmlp numpy   fastmlp's pure-NumPy reference (``compile(backend='numpy')``)
    torch eager     PyTorch autograd with Keras's Adam written by hand, if torch imports

Only ``fit`` is timed, best of ``--repeats`` for the native engine after one untimed warm-up run,
best of ``--peer-repeats`` for the others. Every contender runs on ``--threads`` threads (default
1: the native engine's kernels, NumPy's BLAS and torch's intra-op pool alike). Before its time
counts, each contender's trained model must classify the 450 test images with accuracy >= 0.97;
one that does not is shown as FAILED, and the run exits with status 1 if the native engine is one
of them.

Needs scikit-learn (the data, and threadpoolctl, which it installs). Run:
    python benches/bench_digits.py [--repeats 3] [--peer-repeats 1] [--seed 0] [--threads 1]
"""

import argparse
import os
import platform
import sys
import time

import numpy as np
from _harness import add_repeat_arguments, compare, cpu_name, import_torch, timed_fastmlp_fit

import fastmlp
from fastmlp.layers import Dense, Input
from fastmlp.models import Sequential
from fastmlp.optimizers import Adam

EPOCHS, BATCH = 60, 128
LR, BETA_1, BETA_2, EPSILON = 0.003, 0.9, 0.999, 1e-7
MIN_ACCURACY = 0.97
N_FEATURES = 64
ARCH = [(256, "relu"), (128, "relu"), (10, "softmax")]


def digits_data(seed):
    """(x_train, y_train, x_test, y_test): float32 pixels in [0, 1] and int64 labels, split as the example."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    x_train, x_test, y_train, y_test = train_test_split(
        x, digits.target, test_size=0.25, stratify=digits.target, random_state=seed)
    return x_train, y_train.astype(np.int64), x_test, y_test.astype(np.int64)


def accuracy(probs, y):
    return float((np.asarray(probs).argmax(axis=1) == y).mean())


def fastmlp_model(weights=None):
    model = Sequential([Input(shape=(N_FEATURES,))] + [Dense(units, activation=act) for units, act in ARCH])
    if weights is not None:
        model.set_weights(weights)
    return model


def run_fastmlp(backend, data, weights, seed):
    """One fit on `backend`: (fit seconds, test accuracy)."""
    y_test = data[3]
    model = fastmlp_model(weights)
    model.compile(loss="sparse_categorical_crossentropy",
                  optimizer=Adam(learning_rate=LR, beta_1=BETA_1, beta_2=BETA_2, epsilon=EPSILON), backend=backend)
    seconds, predictions = timed_fastmlp_fit(model, data, seed, EPOCHS, BATCH)
    return seconds, accuracy(predictions, y_test)


def run_torch(data, weights, seed):
    """PyTorch eager: autograd for the gradients, Keras's Adam applied by hand. torch.optim.Adam
    adds epsilon to sqrt(v / (1 - beta_2^t)), Keras to sqrt(v): the same step as Keras's with
    epsilon * sqrt(1 - beta_2^t), so it is not used."""
    import torch

    x, y, x_test, y_test = (torch.from_numpy(a) for a in data)
    torch.manual_seed(seed)
    params = [torch.tensor(w, dtype=torch.float32, requires_grad=True) for w in weights]
    m = [torch.zeros_like(p) for p in params]
    v = [torch.zeros_like(p) for p in params]

    def logits(inp):
        h = torch.relu(inp @ params[0] + params[1])
        h = torch.relu(h @ params[2] + params[3])
        return h @ params[4] + params[5]

    start = time.perf_counter()
    t = 0
    for _ in range(EPOCHS):
        order = torch.randperm(len(x))
        for i in range(0, len(x), BATCH):
            idx = order[i : i + BATCH]
            # Cross-entropy of the softmax from the logits: fastmlp's fused softmax cross-entropy
            # has the same gradient, (p - y) / batch (Keras's wherever its 1e-7 clip is inactive).
            loss = torch.nn.functional.cross_entropy(logits(x[idx]), y[idx])
            loss.backward()
            t += 1
            alpha = LR * (1 - BETA_2**t) ** 0.5 / (1 - BETA_1**t)
            with torch.no_grad():
                for w, mw, vw in zip(params, m, v):
                    g = w.grad
                    mw.add_(g - mw, alpha=1 - BETA_1)
                    vw.add_(g * g - vw, alpha=1 - BETA_2)
                    w.sub_(alpha * mw / (vw.sqrt() + EPSILON))
                    w.grad = None
    seconds = time.perf_counter() - start
    with torch.no_grad():
        return seconds, accuracy(torch.softmax(logits(x_test), dim=-1).numpy(), y_test.numpy())


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_repeat_arguments(parser)
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the split, weights and shuffling (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=1,
                        help="threads of every contender: fastmlp's kernels, NumPy's BLAS, torch (default: %(default)s)")
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.peer_repeats < 1:
        parser.error("--repeats and --peer-repeats must be at least 1")
    if args.threads < 1:
        parser.error("--threads must be at least 1")
    fastmlp.set_num_threads(args.threads)
    try:
        import sklearn
        from threadpoolctl import threadpool_limits
    except ImportError:
        print("error: this benchmark takes its data from scikit-learn: pip install scikit-learn", file=sys.stderr)
        return 2

    torch = import_torch()
    if torch is not None:
        torch.set_num_threads(args.threads)
    print(f"machine: {platform.machine()} {cpu_name()}, os.cpu_count()={os.cpu_count()}, {platform.platform()}")
    versions = [f"python {platform.python_version()}", f"numpy {np.__version__} ({args.threads} BLAS threads)",
                f"scikit-learn {sklearn.__version__}", f"fastmlp {fastmlp.__version__} ({fastmlp.cpu_info()['isa']}, {fastmlp.get_num_threads()} threads)"]
    if torch is not None:
        versions.append(f"torch {torch.__version__} ({torch.get_num_threads()} threads)")
    print("versions: " + ", ".join(versions))

    data = digits_data(args.seed)
    steps = EPOCHS * -(-len(data[0]) // BATCH)
    print(f"workload: digits 64-256-128-10 relu/relu/softmax, sparse_categorical_crossentropy, "
          f"Adam(learning_rate={LR}), {len(data[0])} images, {EPOCHS} epochs x batch {BATCH} = {steps} steps; "
          f"test on {len(data[2])} held-out images")
    fastmlp.utils.set_random_seed(args.seed)
    weights = fastmlp_model().get_weights()
    shuffle_seed = args.seed + 1

    def run_reference():
        with threadpool_limits(limits=args.threads, user_api="blas"):
            return run_fastmlp("numpy", data, weights, shuffle_seed)

    contenders = [("fastmlp cpu (native)", args.repeats, lambda: run_fastmlp("cpu", data, weights, shuffle_seed)),
                  ("fastmlp numpy (reference)", args.peer_repeats, run_reference)]
    if torch is not None:
        contenders.append(("torch eager", args.peer_repeats, lambda: run_torch(data, weights, shuffle_seed)))

    run_fastmlp("cpu", data, weights, shuffle_seed)  # warm-up: first-touch of code and memory, untimed
    return compare(contenders, EPOCHS, steps, MIN_ACCURACY)


if __name__ == "__main__":
    sys.exit(main())
