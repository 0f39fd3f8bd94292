"""Data-parallel training over MPI: throughput on 1 and 2 ranks, and the reduction's cost per step against the compute.

Workloads (synthetic data: inputs N(0, 1), labels from a fixed random teacher network, so the
models learn), each trained with Adam(1e-3) and sparse categorical cross-entropy:
    digits-sized   64-256-128-10,  batch 128, 4,096 samples, 4 epochs  (128 steps;  50,890 parameters)
    mnist-sized    784-512-512-10, batch 256, 4,096 samples, 2 epochs  (32 steps;  669,706 parameters)

For each workload this process times a plain ``fit`` (no MPI), then launches
``mpiexec -n 1`` and ``mpiexec -n 2`` copies of this script (``--worker``), which time
``fit(..., distributed=DataParallel())``: each rank runs one untimed warm-up epoch, then the timed
fit. Rank 0 reports the fit time and its per-step split: gradient of its shard (compute), the
ordered reduction of the gradient arena inside the fit (which includes waiting for the slower
rank), and the update. After the fit each worker also times the reduction alone, 200 back-to-back
exchanges of the same arena with no compute between them, side by side: the ordered exchange
fastmlp uses (with 2 ranks an ``MPI_Allreduce``, whose single addition per element is already in
rank order), the ``Allgather`` and rank-order sum it uses from 3 ranks on, and a plain
``MPI_Allreduce``.

Before any time is printed, each distributed run is checked: every rank ends with the same
weights (bit for bit), and the final epoch's loss is within 1e-3 (relative) of the plain fit's.

Needs mpi4py and an MPI runtime (``pip install ".[mpi]"``). Run:
    python benches/bench_distributed.py [--ranks 2] [--repeats 3]
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import time

import numpy as np
from _harness import cpu_name

import fastmlp
from fastmlp.layers import Dense
from fastmlp.models import Sequential
from fastmlp.optimizers import Adam

WORKLOADS = {
    "digits-sized": {"arch": [64, 256, 128, 10], "batch": 128, "n": 4096, "epochs": 4},
    "mnist-sized": {"arch": [784, 512, 512, 10], "batch": 256, "n": 4096, "epochs": 2},
}
COLLECTIVE_REPEATS = 200


def make_data(arch, n):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, arch[0])).astype(np.float32)
    teacher = rng.normal(size=(arch[0], arch[-1])) / np.sqrt(arch[0])
    return x, (x @ teacher).argmax(axis=1).astype(np.float32)


def make_model(arch):
    fastmlp.utils.set_random_seed(0)
    layers = [Dense(arch[1], activation="relu", input_dim=arch[0])]
    layers += [Dense(units, activation="relu") for units in arch[2:-1]]
    layers.append(Dense(arch[-1], activation="softmax"))
    model = Sequential(layers)
    model.compile(loss="sparse_categorical_crossentropy", optimizer=Adam(1e-3), metrics=["accuracy"])
    return model


def plain_fit(spec, repeats):
    """Best fit seconds of a plain (no MPI) fit, and its final loss."""
    x, y = make_data(spec["arch"], spec["n"])
    best, loss = float("inf"), None
    for _ in range(repeats):
        model = make_model(spec["arch"])
        model.fit(x, y, batch_size=spec["batch"], epochs=1, verbose=0)  # warm-up, as the workers do
        fastmlp.utils.set_random_seed(1)
        start = time.perf_counter()
        history = model.fit(x, y, batch_size=spec["batch"], epochs=spec["epochs"], verbose=0)
        best = min(best, time.perf_counter() - start)
        loss = history.history["loss"][-1]
    return best, loss


def worker(name, repeats):
    """One rank: the timed distributed fits and the reduction alone; rank 0 prints a JSON line."""
    from mpi4py import MPI

    from fastmlp import distributed

    spec = WORKLOADS[name]
    x, y = make_data(spec["arch"], spec["n"])
    strategy = distributed.DataParallel()
    comm = strategy.comm
    best = None
    for _ in range(repeats):
        model = make_model(spec["arch"])
        model.fit(x, y, batch_size=spec["batch"], epochs=1, verbose=0, distributed=strategy)
        fastmlp.utils.set_random_seed(1)
        comm.Barrier()
        start = time.perf_counter()
        history = model.fit(x, y, batch_size=spec["batch"], epochs=spec["epochs"], verbose=0, distributed=strategy)
        seconds = time.perf_counter() - start
        if best is None or seconds < best["seconds"]:
            best = {"seconds": seconds, "timings": dict(strategy.timings), "loss": history.history["loss"][-1]}
    weights = np.concatenate([w.ravel() for w in model.get_weights()])
    same = all(np.array_equal(w, weights) for w in comm.allgather(weights))

    # The reduction alone: the same arena, no compute between the exchanges.
    grads = model._engine.grads
    alone = {}
    for label, reduction, transport in (("ordered", "ordered", None), ("allgather", "ordered", "allgather"),
                                        ("mpi_allreduce", "allreduce", None)):
        other = distributed.DataParallel(reduction=reduction)
        other._transport = transport
        reduce = distributed._Reducer(other, grads, 3)
        values = np.zeros(3)
        reduce(values)
        comm.Barrier()
        start = MPI.Wtime()
        for _ in range(COLLECTIVE_REPEATS):
            reduce(values)
        alone[label] = (MPI.Wtime() - start) / COLLECTIVE_REPEATS
    if strategy.is_root:
        print("RESULT " + json.dumps({**best, "same_weights": same, "alone": alone, "params": int(grads.size)}),
              flush=True)


def mpiexec():
    for folder in (os.path.dirname(sys.executable), sysconfig.get_path("scripts")):
        path = os.path.join(folder, "mpiexec")
        if os.access(path, os.X_OK):
            return path
    return shutil.which("mpiexec")


def launch(launcher, ranks, name, repeats):
    cmd = [launcher, "-n", str(ranks), sys.executable, os.path.abspath(__file__), "--worker", name,
           "--repeats", str(repeats)]
    env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
               OMPI_MCA_rmaps_base_oversubscribe="1")
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1800)
    lines = [line for line in out.stdout.splitlines() if line.startswith("RESULT ")]
    if out.returncode != 0 or not lines:
        raise RuntimeError(f"{' '.join(cmd)} failed ({out.returncode}):\n{out.stdout}\n{out.stderr}")
    return json.loads(lines[0][len("RESULT "):])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ranks", type=int, default=2, help="the largest rank count (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=3, help="timed fits per run, best kept (default: %(default)s)")
    parser.add_argument("--worker", choices=sorted(WORKLOADS), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args.worker, args.repeats)
        return 0
    launcher = mpiexec()
    if launcher is None:
        print("error: mpiexec not found: pip install '.[mpi]'", file=sys.stderr)
        return 2
    print(f"# {cpu_name()}, {os.cpu_count()} cores, engine variant {fastmlp.cpu_info()['isa']}; "
          f"best of {args.repeats} fits per row")
    rows, status = [], 0
    for name, spec in WORKLOADS.items():
        plain_s, plain_loss = plain_fit(spec, args.repeats)
        steps = spec["epochs"] * -(-spec["n"] // spec["batch"])
        rows.append((name, "plain fit", plain_s, steps, spec, None))
        for ranks in range(1, args.ranks + 1):
            res = launch(launcher, ranks, name, args.repeats)
            ok = res["same_weights"] and abs(res["loss"] - plain_loss) <= 1e-3 * abs(plain_loss)
            if not ok:
                print(f"error: {name} on {ranks} ranks: same weights on every rank: {res['same_weights']}, "
                      f"final loss {res['loss']:.6f} against the plain fit's {plain_loss:.6f}", file=sys.stderr)
                status = 1
            rows.append((name, f"{ranks} rank{'s' if ranks > 1 else ''}", res["seconds"], steps, spec,
                         res if ok else None))
    header = (f"{'workload':<13} {'run':<9} {'fit s':>7} {'samples/s':>10} {'vs plain':>8} | per step, rank 0 (ms): "
              f"{'gradient':>8} {'reduce':>7} {'update':>7} | reduce alone: {'ordered':>7} {'Allgather':>9} "
              f"{'MPI_Allreduce':>13}")
    print()
    print(header)
    print("-" * len(header))
    plain = {}
    for name, run, seconds, steps, spec, res in rows:
        samples = spec["n"] * spec["epochs"]
        plain.setdefault(name, seconds)
        line = f"{name:<13} {run:<9} {seconds:>7.3f} {samples / seconds:>10,.0f} {plain[name] / seconds:>7.2f}x |"
        if run != "plain fit" and res is None:
            line += " FAILED its check (see above)"
        elif res is not None:
            t = res["timings"]
            per = {k: 1e3 * t[k] / t["steps"] for k in ("compute_s", "reduce_s", "update_s")}
            line += (f" {'':>23}{per['compute_s']:>8.3f} {per['reduce_s']:>7.3f} {per['update_s']:>7.3f} |"
                     f" {'':>13} {1e3 * res['alone']['ordered']:>7.3f} {1e3 * res['alone']['allgather']:>9.3f}"
                     f" {1e3 * res['alone']['mpi_allreduce']:>13.3f}")
        print(line)
    print("(vs plain: the plain fit's time / this run's; reduce: inside the fit, waiting for the slower rank "
          f"included; reduce alone: mean of {COLLECTIVE_REPEATS} back-to-back exchanges of the gradient arena; "
          "'ordered' is what fit uses)")
    return status


if __name__ == "__main__":
    sys.exit(main())
