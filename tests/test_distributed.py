"""Data-parallel training over MPI (fastmlp.distributed).

The multi-rank tests launch ``mpiexec -n N python tests/mpi_worker.py`` (mpi4py and the MPICH
wheel come with the test extras) and compare each rank's weights and History with a one-process
fit of the same model in this process, which never initializes MPI itself.
"""

import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import sysconfig

import numpy as np
import pytest

import mpi_worker
from conftest import assert_close
from fastmlp import _core, distributed
from fastmlp.reference import ReferenceEngine

WORKER = os.path.join(os.path.dirname(__file__), "mpi_worker.py")
TIMEOUT = 120


def _mpiexec():
    """The mpiexec next to this Python (the mpich wheel installs it there), else the one on PATH."""
    for folder in (os.path.dirname(sys.executable), sysconfig.get_path("scripts")):
        path = os.path.join(folder, "mpiexec")
        if os.access(path, os.X_OK):
            return path
    return shutil.which("mpiexec")


MPIEXEC = _mpiexec()
needs_mpi = pytest.mark.skipif(
    importlib.util.find_spec("mpi4py") is None or MPIEXEC is None,
    reason="mpi4py or mpiexec is not installed (pip install '.[test]' installs mpi4py and MPICH)",
)


def launch(n, tmp_path, **settings):
    """Run the worker on n ranks; returns (exit code, output, {rank: results})."""
    out = tmp_path / f"out{len(list(tmp_path.iterdir()))}"
    out.mkdir()
    settings["out"] = str(out)
    # Open MPI's mpiexec refuses root and more ranks than cores unless told; MPICH ignores these.
    env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
               OMPI_MCA_rmaps_base_oversubscribe="1")
    proc = subprocess.Popen([MPIEXEC, "-n", str(n), sys.executable, WORKER, json.dumps(settings)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        output, _ = proc.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        output, _ = proc.communicate()
        pytest.fail(f"mpiexec -n {n} did not finish within {TIMEOUT} s (a rank hangs). Output:\n{output}")
    results = {}
    for r in range(n):
        path = out / f"rank{r}.npz"
        if path.exists():
            with np.load(path) as f:
                results[r] = {"weights": f["weights"], "history": json.loads(str(f["history"])),
                              "size": int(f["size"]), "iterations": int(f["iterations"])}
    return proc.returncode, output, results


def one_process(**settings):
    """The same fit on one process, without MPI: (weights, history, iterations)."""
    model = mpi_worker.build(settings)
    x, y = mpi_worker.data()
    if settings.get("prefit"):
        model.fit(x, y, epochs=1, batch_size=50, verbose=0)
    history = model.fit(x, y, **{**mpi_worker.FIT, **settings.get("fit", {})})
    return np.concatenate([w.ravel() for w in model.get_weights()]), history.history, model.optimizer.iterations


def trained(n, tmp_path, **settings):
    code, output, results = launch(n, tmp_path, **settings)
    assert code == 0, output
    assert sorted(results) == list(range(n)) and all(r["size"] == n for r in results.values()), output
    return results


def assert_same_on_every_rank(results):
    for r, res in results.items():
        np.testing.assert_array_equal(res["weights"], results[0]["weights"], err_msg=f"rank {r}'s weights")
        assert res["history"] == results[0]["history"], f"rank {r}'s History"
        assert res["iterations"] == results[0]["iterations"]


def assert_history_close(history, expected, rtol):
    assert history.keys() == expected.keys()
    for key in expected:
        np.testing.assert_allclose(history[key], expected[key], rtol=rtol, err_msg=key)


# ---- two ranks against one process ----


@needs_mpi
@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_two_ranks_match_one_process(tmp_path, optimizer):
    results = trained(2, tmp_path, optimizer=optimizer)
    assert_same_on_every_rank(results)
    weights, history, iterations = one_process(optimizer=optimizer)
    # 15 steps whose batch gradients differ only by the order of the sums (each rank's rows, then
    # the ranks): float32 rounding, within the forward tolerance. The History's sums are float64
    # over float32 per-sample losses, computed from weights that differ by that rounding.
    assert_close(results[0]["weights"], weights)
    assert_history_close(results[0]["history"], history, rtol=1e-6)
    assert results[0]["iterations"] == iterations == 15


@needs_mpi
@pytest.mark.parametrize("prefit", [False, True], ids=["first-fit", "after-a-plain-fit"])
def test_one_rank_gives_the_bits_of_a_plain_fit(tmp_path, prefit):
    # after a plain fit, the distributed one continues the model's shuffling stream as a plain one does
    results = trained(1, tmp_path, prefit=prefit)
    weights, history, _ = one_process(prefit=prefit)
    np.testing.assert_array_equal(results[0]["weights"], weights)
    assert results[0]["history"] == history


@needs_mpi
def test_fixed_rank_count_is_bitwise_reproducible(tmp_path):
    first = trained(2, tmp_path, optimizer="adam")
    again = trained(2, tmp_path, optimizer="adam")
    # 2 ranks take MPI_Allreduce, whose g0 + g1 == g1 + g0 are the bits of the rank-order sum
    # that 3 ranks or more gather.
    gathered = trained(2, tmp_path, optimizer="adam", transport="allgather")
    for other in (again, gathered):
        np.testing.assert_array_equal(other[0]["weights"], first[0]["weights"])
        assert other[0]["history"] == first[0]["history"]


@needs_mpi
def test_three_ranks_both_transports_sum_in_rank_order(tmp_path):
    # 301 samples in batches of 50 (240 after the validation split: the last batch holds 40 rows, split 14/13/13).
    gathered = trained(3, tmp_path, optimizer="adam", transport="allgather")
    chunked = trained(3, tmp_path, optimizer="adam", transport="chunked")
    assert_same_on_every_rank(gathered)
    assert_same_on_every_rank(chunked)
    np.testing.assert_array_equal(chunked[0]["weights"], gathered[0]["weights"])
    assert chunked[0]["history"] == gathered[0]["history"]
    weights, history, _ = one_process(optimizer="adam")
    assert_close(gathered[0]["weights"], weights)
    assert_history_close(gathered[0]["history"], history, rtol=1e-6)


@needs_mpi
def test_batches_smaller_than_the_rank_count(tmp_path):
    # Batches of 2 rows on 3 ranks: one rank has no rows in any step and contributes zeros. (The
    # first 30 samples only: over hundreds of momentum steps the rounding differences grow.)
    fit = {"batch_size": 2, "epochs": 1, "validation_split": 0.9}
    results = trained(3, tmp_path, fit=fit)
    assert_same_on_every_rank(results)
    weights, history, _ = one_process(fit=fit)
    assert_close(results[0]["weights"], weights)
    assert_history_close(results[0]["history"], history, rtol=1e-6)


@needs_mpi
def test_numpy_reference_backend(tmp_path):
    results = trained(2, tmp_path, backend="numpy")
    assert_same_on_every_rank(results)
    weights, history, _ = one_process(backend="numpy")
    assert_close(results[0]["weights"], weights)
    assert_history_close(results[0]["history"], history, rtol=1e-6)


@needs_mpi
def test_nonfinite_loss_stops_every_rank_at_the_same_step(tmp_path):
    settings = {"learning_rate": 1e30, "fit": {"epochs": 3}}
    results = trained(2, tmp_path, **settings)
    assert_same_on_every_rank(results)
    weights, history, iterations = one_process(**settings)
    assert len(results[0]["history"]["loss"]) == len(history["loss"]) < 3
    assert results[0]["iterations"] == iterations
    code, output, results = launch(2, tmp_path, fit={"epochs": 3, "on_nonfinite": "raise"}, learning_rate=1e30)
    assert code != 0 and not results
    for r in range(2):
        assert f"fastmlp: rank {r} of 2: FloatingPointError: Epoch 1, batch 2: the loss" in output, output
    assert "MPI_Abort" not in output


@needs_mpi
def test_a_stop_on_one_rank_stops_every_rank(tmp_path):
    results = trained(2, tmp_path, stop_on_rank0=True)
    assert_same_on_every_rank(results)
    assert len(results[1]["history"]["loss"]) == 1 and results[1]["iterations"] == 5


# ---- failures: every rank exits, with a clear error, none hangs ----
# Each rank writes its error on one line before any exits (the launcher may kill the others as soon
# as one exits); the tracebacks that follow are not all guaranteed to make it.


@needs_mpi
def test_bad_data_on_one_rank_fails_every_rank(tmp_path):
    code, output, results = launch(2, tmp_path, fail="shape")
    assert code != 0 and not results
    assert "fastmlp: rank 1 of 2: ValueError: `x` has 5 features per sample but the model expects 6" in output
    assert ("fastmlp: rank 0 of 2: RuntimeError: Distributed fit: rank 1 of 2 failed before training started, so no "
            "rank trains (failed ranks: 1). Rank 1's error: ValueError: `x` has 5 features") in output


@needs_mpi
def test_ranks_that_disagree_on_the_model_fail_every_rank(tmp_path):
    code, output, results = launch(2, tmp_path, fail="model")
    assert code != 0 and not results
    for r in range(2):
        assert (f"fastmlp: rank {r} of 2: ValueError: Distributed fit: the ranks disagree on the model's layers "
                "(in, out, activation, use_bias, regularizers): rank 1 has [(6, 25, 'relu'") in output, output


@needs_mpi
def test_a_step_that_fails_on_one_rank_stops_every_rank(tmp_path):
    code, output, results = launch(2, tmp_path, fail="step")
    assert code != 0 and not results
    assert "fastmlp: rank 1 of 2: ValueError: shard_gradients failed on rank 1 at step 3" in output
    assert ("fastmlp: rank 0 of 2: RuntimeError: Distributed fit: rank 1 of 2 failed in epoch 1, step 3, so every rank "
            "stops. Rank 1's error: ValueError: shard_gradients failed on rank 1 at step 3") in output
    assert "MPI_Abort" not in output


@needs_mpi
def test_an_error_outside_the_steps_aborts_every_rank(tmp_path):
    code, output, results = launch(2, tmp_path, fail="callback")
    assert code != 0 and not results
    assert "fastmlp: rank 1 of 2 failed during distributed training and aborts every rank (MPI_Abort)" in output
    assert "RuntimeError: callback failed on rank 1" in output


# ---- without MPI ----


def test_missing_mpi4py_is_a_clear_import_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "mpi4py", None)
    model = mpi_worker.build({})
    x, y = mpi_worker.data()
    with pytest.raises(ImportError, match=r"needs mpi4py and an MPI library: pip install 'fastmlp\[mpi\]'"):
        model.fit(x, y, distributed=True, verbose=0)


@needs_mpi
def test_missing_mpi_library_is_a_clear_error(tmp_path):
    script = ("from fastmlp.distributed import DataParallel\n"
              "try:\n    DataParallel()\nexcept RuntimeError as e:\n    print(e)\n")
    env = dict(os.environ, MPI4PY_LIBMPI=str(tmp_path / "no-libmpi.so"))
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=TIMEOUT)
    assert "mpi4py is installed but could not load an MPI library" in out.stdout, out.stdout + out.stderr


@needs_mpi
def test_processes_that_do_not_share_the_launchers_mpi_are_refused():
    # What a rank sees when an Open MPI mpiexec starts it but mpi4py loads MPICH: a world of one.
    script = ("from fastmlp.distributed import DataParallel\n"
              "try:\n    DataParallel()\nexcept RuntimeError as e:\n    print(e)\n")
    env = dict(os.environ, OMPI_COMM_WORLD_SIZE="2")
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=TIMEOUT)
    assert "The launcher started 2 processes but MPI.COMM_WORLD has 1" in out.stdout, out.stdout + out.stderr


def test_bad_arguments():
    model = mpi_worker.build({})
    x, y = mpi_worker.data()
    with pytest.raises(TypeError, match="Expected `distributed` to be True, False, None or a fastmlp.distributed"):
        model.fit(x, y, distributed="mpi", verbose=0)
    with pytest.raises(ValueError, match="Expected `reduction` to be one of"):
        distributed.DataParallel(reduction="sum")
    history = model.fit(x, y, distributed=False, verbose=0)  # False: a plain fit
    assert len(history.history["loss"]) == 1 and model.distribute_strategy is None


@pytest.mark.parametrize("n", [0, 1, 2, 7, 50, 51])
@pytest.mark.parametrize("size", [1, 2, 3, 8])
def test_shards_are_contiguous_near_equal_and_cover_the_batch(n, size):
    parts = [distributed.shard(n, rank, size) for rank in range(size)]
    assert parts[0][0] == 0 and parts[-1][1] == n
    assert all(a[1] == b[0] for a, b in zip(parts, parts[1:]))
    counts = [hi - lo for lo, hi in parts]
    assert max(counts) - min(counts) <= 1 and counts == sorted(counts, reverse=True)


# ---- the engine's two halves of a step ----


def _engines():
    x, y = mpi_worker.data(120)
    model = mpi_worker.build({"optimizer": "adam"})
    specs, loss, cfg = model._specs(), model._loss._engine_name(), model.optimizer._engine_config()
    init = np.concatenate([w.ravel() for w in model.get_weights()])
    engines = [_core.Engine32(specs, loss, ["categorical_accuracy"], cfg),
               _core.Engine32(specs, loss, ["categorical_accuracy"], cfg),
               ReferenceEngine(specs, loss, ["categorical_accuracy"], cfg)]
    for e in engines:
        e.set_params(init)
        e.begin_epoch(len(x), 32, True, 5, 0)
    return engines, x, y


def test_whole_batch_shard_and_apply_equal_a_training_step():
    (native, other, _), x, y = _engines()
    loss = correct = 0.0
    for step in range(4):
        expected = native.train_steps(x, y, 1)  # the epoch's running sums
        B = min(32, len(x) - 32 * step)
        part = other.shard_gradients(x, y, step, 0, B, True)
        assert other.apply_gradients()["stop"] == ""
        np.testing.assert_array_equal(other.params_copy(), native.params_copy())
        loss, correct = loss + part["loss"], correct + part["metrics"][0]
        assert (part["samples"], loss, correct) == (B, expected["loss"], expected["metrics"][0])
    assert other.iterations == native.iterations == 4


def test_shards_sum_to_the_batch_gradient():
    (native, _, reference), x, y = _engines()
    whole = native.shard_gradients(x, y, 1, 0, 32, True)
    full = native.grads.copy()
    for engine in (native, reference):
        total, loss, metric = np.zeros_like(full), 0.0, 0.0
        for lo, hi, first in ((0, 13, True), (13, 13, False), (13, 32, False)):
            part = engine.shard_gradients(x, y, 1, lo, hi, first)
            total += engine.grads
            loss += part["loss"]
            metric += part["metrics"][0]
            assert part["samples"] == hi - lo
        assert_close(total, full, kind="grad")
        assert loss == pytest.approx(whole["loss"], rel=1e-6)
        assert metric == whole["metrics"][0]


def test_shard_gradients_checks_its_arguments():
    (native, _, reference), x, y = _engines()
    for engine in (native, reference):
        with pytest.raises(ValueError, match="step 4 is outside the epoch's 4 steps"):
            engine.shard_gradients(x, y, 4, 0, 1, True)
        with pytest.raises(ValueError, match=r"rows \[0, 25\) are not inside the step's batch of 24"):
            engine.shard_gradients(x, y, 3, 0, 25, True)
        with pytest.raises(ValueError, match="the data has 60 rows but the epoch was begun with 120"):
            engine.shard_gradients(x[:60], y[:60], 0, 0, 1, True)
