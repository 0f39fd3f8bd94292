"""The seed workload, timed on fastmlp's native engine and on its peers, side by side in one process.

Workload (shared/seed/neural_networks.md): a 2-4-4-2 MLP (relu, relu, softmax), binary
cross-entropy, SGD(momentum=0.99, decay=0.001) in Keras's form (``v = mu*v - lr_t*g; w += v``,
``lr_t = 0.01 / (1 + 0.001 * t)``), 10,000 XOR samples, 200 epochs of batch 100 (20,000 steps).

Contenders, all on the same data from the same initial weights:
    fastmlp cpu     the native C++ engine (``compile(backend='cpu')``)
    fastmlp numpy   fastmlp's pure-NumPy reference (``compile(backend='numpy')``)
    torch eager     PyTorch autograd with the Keras-form update written by hand, if torch imports
    keras 3         Keras 3 (``KERAS_BACKEND``, default torch), if keras imports

Only ``fit`` is timed (data creation, model construction and evaluation are not), best of
``--repeats`` for the native engine after one untimed warm-up run, best of ``--peer-repeats`` for the
others. Before its time counts, each contender's trained model must classify 5,000 fresh samples
with accuracy >= 0.95; one that does not is shown as FAILED, and the run exits with status 1 if the
native engine is one of them.

Run:  python benches/bench_seed.py [--repeats 3] [--peer-repeats 1] [--seed 0] [--torch-threads 1]
"""

import argparse
import os
import platform
import sys
import time

import numpy as np
from _harness import add_repeat_arguments, compare, cpu_name, import_torch, timed_fastmlp_fit

import fastmlp
from fastmlp.layers import Dense
from fastmlp.models import Sequential
from fastmlp.optimizers import SGD

N_TRAIN, N_TEST = 10_000, 5_000
EPOCHS, BATCH = 200, 100
STEPS = EPOCHS * -(-N_TRAIN // BATCH)
LR, MOMENTUM, DECAY = 0.01, 0.99, 0.001
MIN_ACCURACY = 0.95
ARCH = [(4, "relu"), (4, "relu"), (2, "softmax")]


def xor_data(rng, n):
    """(x, one-hot y) as in the seed: class 0 where x0*x1 > 0, class 1 elsewhere."""
    x = rng.standard_normal((n, 2))
    cls = (x[:, 0] * x[:, 1] <= 0).astype(np.int64)
    return x.astype(np.float32), np.eye(2, dtype=np.float32)[cls]


def accuracy(probs, y):
    return float((np.asarray(probs).argmax(axis=1) == y.argmax(axis=1)).mean())


def fastmlp_model(weights=None):
    model = Sequential([Dense(ARCH[0][0], activation=ARCH[0][1], input_dim=2)]
                       + [Dense(units, activation=act) for units, act in ARCH[1:]])
    if weights is not None:
        model.set_weights(weights)
    return model


def run_fastmlp(backend, data, weights, seed):
    """One fit on `backend`: (fit seconds, test accuracy)."""
    y_test = data[3]
    model = fastmlp_model(weights)
    model.compile(loss="binary_crossentropy", optimizer=SGD(learning_rate=LR, momentum=MOMENTUM, decay=DECAY),
                  backend=backend)
    seconds, predictions = timed_fastmlp_fit(model, data, seed, EPOCHS, BATCH)
    return seconds, accuracy(predictions, y_test)


def run_torch(data, weights, seed):
    """PyTorch eager: autograd for the gradients, Keras's momentum and decay applied by hand
    (torch.optim.SGD's momentum, v = mu*v + g; w -= lr*v, differs from Keras's once lr decays)."""
    import torch

    x, y, x_test, y_test = (torch.from_numpy(a) for a in data)
    torch.manual_seed(seed)
    params = [torch.tensor(w, dtype=torch.float32, requires_grad=True) for w in weights]
    velocity = [torch.zeros_like(p) for p in params]
    eps = 1e-7

    def forward(inp):
        h = torch.relu(inp @ params[0] + params[1])
        h = torch.relu(h @ params[2] + params[3])
        return torch.softmax(h @ params[4] + params[5], dim=-1)

    start = time.perf_counter()
    t = 0
    for _ in range(EPOCHS):
        order = torch.randperm(len(x))
        for i in range(0, len(x), BATCH):
            idx = order[i : i + BATCH]
            yb = y[idx]
            # Keras's binary cross-entropy: probabilities clipped to [eps, 1 - eps], mean over classes and batch.
            p = forward(x[idx]).clamp(eps, 1 - eps)
            loss = -(yb * torch.log(p) + (1 - yb) * torch.log(1 - p)).mean()
            loss.backward()
            lr_t = LR / (1 + DECAY * t)
            with torch.no_grad():
                for w, v in zip(params, velocity):
                    v.mul_(MOMENTUM).add_(w.grad, alpha=-lr_t)
                    w.add_(v)
                    w.grad = None
            t += 1
    seconds = time.perf_counter() - start
    with torch.no_grad():
        return seconds, accuracy(forward(x_test).numpy(), y_test.numpy())


def run_keras(keras, data, weights, seed):
    """Keras 3: Keras 2's SGD(decay=...) is InverseTimeDecay(lr, decay_steps=1, decay_rate=decay)."""
    x, y, x_test, y_test = data
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([keras.Input(shape=(2,))] + [keras.layers.Dense(u, activation=a) for u, a in ARCH])
    model.set_weights(weights)
    schedule = keras.optimizers.schedules.InverseTimeDecay(LR, decay_steps=1, decay_rate=DECAY)
    model.compile(loss="binary_crossentropy", optimizer=keras.optimizers.SGD(learning_rate=schedule, momentum=MOMENTUM))
    start = time.perf_counter()
    model.fit(x, y, epochs=EPOCHS, batch_size=BATCH, verbose=0)
    seconds = time.perf_counter() - start
    return seconds, accuracy(model.predict(x_test, batch_size=N_TEST, verbose=0), y_test)


def import_keras(have_torch):
    if "keras" not in sys.modules and have_torch:
        os.environ.setdefault("KERAS_BACKEND", "torch")
    try:
        import keras
    except Exception:  # a missing package or a Keras without a usable backend: skip it
        return None
    if not keras.__version__.startswith("3."):
        return None
    return keras


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_repeat_arguments(parser)
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of data, weights and shuffling (default: %(default)s)")
    parser.add_argument("--torch-threads", type=int, default=1,
                        help="torch's intra-op threads, for torch and keras (default: %(default)s: at batch 100 x 4 "
                             "units more threads only add synchronization; the native engine steps on one core, "
                             "and with two threads copies the next epoch's rows on the other)")
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.peer_repeats < 1:
        parser.error("--repeats and --peer-repeats must be at least 1")

    torch = import_torch()
    if torch is not None:
        torch.set_num_threads(args.torch_threads)
    keras = import_keras(torch is not None)
    print(f"machine: {platform.machine()} {cpu_name()}, os.cpu_count()={os.cpu_count()}, {platform.platform()}")
    versions = [f"python {platform.python_version()}", f"numpy {np.__version__}", f"fastmlp {fastmlp.__version__}"]
    if torch is not None:
        versions.append(f"torch {torch.__version__} ({torch.get_num_threads()} threads)")
    if keras is not None:
        versions.append(f"keras {keras.__version__} (backend {keras.backend.backend()})")
    print("versions: " + ", ".join(versions))
    print(f"workload: 2-4-4-2 relu/relu/softmax, binary_crossentropy, SGD(momentum={MOMENTUM}, decay={DECAY}), "
          f"{N_TRAIN} samples, {EPOCHS} epochs x batch {BATCH} = {STEPS} steps; test on {N_TEST} fresh samples")

    rng = np.random.default_rng(args.seed)
    data = xor_data(rng, N_TRAIN) + xor_data(rng, N_TEST)
    fastmlp.utils.set_random_seed(args.seed)
    weights = fastmlp_model().get_weights()
    shuffle_seed = args.seed + 1

    contenders = [("fastmlp cpu (native)", args.repeats, lambda: run_fastmlp("cpu", data, weights, shuffle_seed)),
                  ("fastmlp numpy (reference)", args.peer_repeats,
                   lambda: run_fastmlp("numpy", data, weights, shuffle_seed))]
    if torch is not None:
        contenders.append(("torch eager", args.peer_repeats, lambda: run_torch(data, weights, shuffle_seed)))
    if keras is not None:
        contenders.append((f"keras {keras.__version__} ({keras.backend.backend()})", args.peer_repeats,
                           lambda: run_keras(keras, data, weights, shuffle_seed)))

    run_fastmlp("cpu", data, weights, shuffle_seed)  # warm-up: first-touch of code and memory, untimed
    return compare(contenders, EPOCHS, STEPS, MIN_ACCURACY)


if __name__ == "__main__":
    sys.exit(main())
