"""The digits MLP trained data-parallel over MPI: every process computes the gradient of its part of each batch.

The workload of examples/digits.py (scikit-learn's 8x8 handwritten digits, a 64-256-128-10
network, Adam, 60 epochs of batch 128) run with ``fit(..., distributed=True)``. Every process
runs this whole script: it loads the same data, makes the same split and builds the same model;
fit then broadcasts rank 0's initial weights, splits each batch of 128 into one contiguous part
per process, sums the parts' gradients (in rank order, so a given number of processes gives the
same bits on every run) and applies the same Adam update everywhere. Only rank 0 prints, and only
rank 0 writes the weights it saves (``--save``).

On one machine (2 processes):

    pip install ".[mpi,examples]"
    mpiexec -n 2 python examples/distributed_mlp.py

On a cluster, with the cluster's MPI (mpi4py built or installed against it), one process per
machine or per group of cores, e.g. MPICH's Hydra on two machines:

    mpiexec -n 8 -ppn 4 -hosts node1,node2 python examples/distributed_mlp.py

or under Slurm: ``srun -N 2 --ntasks-per-node 4 python examples/distributed_mlp.py``. The script
and the data must be at the same path on every machine.

Run alone (``python examples/distributed_mlp.py``) it trains on one process, still through the
distributed code path, and gives the bits of a plain fit. It prints the fit time, how that time
splits into gradient computation, reduction across processes and the update, and the test
accuracy; it exits with status 1 if the accuracy is below 0.97, or 2 if scikit-learn or mpi4py is
missing.
"""

import argparse
import sys
import time

import numpy as np

import fastmlp.optimizers
import fastmlp.utils
from fastmlp.layers import Dense, Input
from fastmlp.models import Sequential

MIN_ACCURACY = 0.97
EPOCHS, BATCH = 60, 128


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the split, the weights and the shuffling (default: %(default)s)")
    parser.add_argument("--epochs", type=int, default=EPOCHS, help="(default: %(default)s)")
    parser.add_argument("--save", metavar="FILE.npz", help="rank 0 saves the trained weights there")
    args = parser.parse_args(argv)
    try:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split

        from fastmlp.distributed import DataParallel

        strategy = DataParallel()
    except ImportError as e:
        print(f"error: {e}\n(this example needs: pip install '.[mpi,examples]')", file=sys.stderr)
        return 2
    say = print if strategy.is_root else (lambda *a, **k: None)

    fastmlp.utils.set_random_seed(args.seed)  # the same seed everywhere: the same split on every rank
    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    X_train, X_test, y_train, y_test = train_test_split(
        x, digits.target, test_size=0.25, stratify=digits.target, random_state=args.seed)

    model = Sequential([Input(shape=(64,)), Dense(256, activation="relu"), Dense(128, activation="relu"),
                        Dense(10, activation="softmax")])
    model.compile(loss="sparse_categorical_crossentropy", optimizer=fastmlp.optimizers.Adam(learning_rate=0.003),
                  metrics=["accuracy"])

    say(f"{strategy.size} process(es), each computing about {BATCH // strategy.size} of the {BATCH} images of "
        "every batch")
    start = time.perf_counter()
    model.fit(X_train, y_train, epochs=args.epochs, batch_size=BATCH, verbose=2 if args.epochs <= 10 else 0,
              distributed=strategy)
    fit_seconds = time.perf_counter() - start

    t = strategy.timings
    accuracy = float((model.predict(X_test).argmax(axis=1) == y_test).mean())
    say(f"fit time: {fit_seconds:.3f} s for {t['steps']} steps; per step on rank 0: "
        f"gradient {1e3 * t['compute_s'] / t['steps']:.3f} ms, reduction {1e3 * t['reduce_s'] / t['steps']:.3f} ms, "
        f"update {1e3 * t['update_s'] / t['steps']:.3f} ms")
    say(f"test accuracy: {accuracy:.4f} ({len(X_test)} held-out images)")
    if args.save and strategy.is_root:
        np.savez(args.save, *model.get_weights())
        say(f"weights saved to {args.save}")
    if accuracy < MIN_ACCURACY:
        if strategy.is_root:
            print(f"error: test accuracy {accuracy:.4f} is below {MIN_ACCURACY}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
