"""One rank of the distributed tests (tests/test_distributed.py): run as
``mpiexec -n N python tests/mpi_worker.py '<json settings>'``; each rank writes its final weights
and History to ``<out>/rank<r>.npz``. The test process imports ``build`` and ``data`` to train the
same model on one process without MPI.

Settings: out (folder), backend ('cpu' or 'numpy'), optimizer ('sgd' or 'adam'), reduction,
transport (None, 'allgather' or 'chunked'), fit (extra fit arguments), stop_on_rank0 (a callback on
rank 0 only stops training after the first epoch), fail (None, 'shape', 'model', 'step', 'callback').
"""

import json
import os
import sys

import numpy as np

from fastmlp import optimizers, regularizers, utils
from fastmlp.callbacks import Callback
from fastmlp.layers import Dense
from fastmlp.models import Sequential


def build(settings, seed=7, hidden=24):
    """A fixed-seed 6-24-12-3 classifier (regularized, clipped) compiled as `settings` say."""
    utils.set_random_seed(seed)
    model = Sequential([
        Dense(hidden, activation="relu", input_dim=6, kernel_regularizer=regularizers.L2(1e-3)),
        Dense(12, activation="tanh"),
        Dense(3, activation="softmax"),
    ])
    if settings.get("optimizer", "sgd") == "adam":
        opt = optimizers.Adam(learning_rate=5e-3, clipnorm=1.0)
    else:
        opt = optimizers.SGD(learning_rate=settings.get("learning_rate", 0.05), momentum=0.9)
    model.compile(loss="categorical_crossentropy", optimizer=opt, metrics=["accuracy"],
                  backend=settings.get("backend", "cpu"))
    return model


def data(n=301):
    """n samples of 6 features and one-hot labels of 3 classes (the last batch of 50 is partial)."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, 6)).astype(np.float32)
    labels = (x[:, 0] + 0.5 * x[:, 1] > 0).astype(int) + (x[:, 2] > 0.8)
    return x, np.eye(3, dtype=np.float32)[labels]


FIT = {"batch_size": 50, "epochs": 3, "verbose": 0, "validation_split": 0.2}


def main():
    from fastmlp.distributed import DataParallel

    settings = json.loads(sys.argv[1])
    strategy = DataParallel(reduction=settings.get("reduction", "ordered"))
    strategy._transport = settings.get("transport")
    fail = settings.get("fail")
    rank = strategy.rank
    # A different seed per rank: the broadcast of rank 0's weights must make them equal.
    model = build(settings, seed=7 + rank, hidden=25 if fail == "model" and rank == 1 else 24)
    x, y = data()
    if fail == "shape" and rank == 1:
        x = x[:, :5]
    callbacks = []
    if fail == "callback":
        class FailOnRank1(Callback):
            def on_epoch_end(self, epoch, logs=None):
                if rank == 1:
                    raise RuntimeError("callback failed on rank 1")
        callbacks.append(FailOnRank1())
    if settings.get("stop_on_rank0") and rank == 0:  # a callback only rank 0 has
        class Stop(Callback):
            def on_epoch_end(self, epoch, logs=None):
                self.model.stop_training = True
        callbacks.append(Stop())
    if fail == "step" and rank == 1:
        engine = model._ready_engine(x)
        original = engine.shard_gradients

        class Failing:  # the native engine's methods are read-only: wrap the engine instead
            def __getattr__(self, name):
                return getattr(engine, name)

            def shard_gradients(self, *args):
                if args[2] == 2:
                    raise ValueError("shard_gradients failed on rank 1 at step 3")
                return original(*args)

        model._engine = Failing()
    if settings.get("prefit"):  # a plain epoch first: the distributed fit continues the model's shuffling stream
        model.fit(x, y, epochs=1, batch_size=50, verbose=0)
    history = model.fit(x, y, distributed=strategy, callbacks=callbacks, **{**FIT, **settings.get("fit", {})})
    weights = np.concatenate([w.ravel() for w in model.get_weights()])
    np.savez(os.path.join(settings["out"], f"rank{rank}.npz"), weights=weights,
             history=json.dumps(history.history), size=strategy.size, iterations=model.optimizer.iterations,
             timings=json.dumps(strategy.timings))


if __name__ == "__main__":
    main()
