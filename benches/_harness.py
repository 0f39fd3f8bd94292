"""What the benchmarks share: timing, the quality gate, and the side-by-side table."""

import os
import platform
import sys
import time

import fastmlp


def import_torch():
    """torch when installed (an optional peer, never a dependency), else None."""
    try:
        import torch
    except ImportError:
        return None
    return torch


def add_repeat_arguments(parser):
    parser.add_argument("--repeats", type=int, default=3,
                        help="timed runs of the native engine (default: %(default)s)")
    parser.add_argument("--peer-repeats", type=int, default=1, help="timed runs of each peer (default: %(default)s)")


def timed_fastmlp_fit(model, data, seed, epochs, batch):
    """Fit a compiled fastmlp model on data = (x, y, x_test, y_test) with a fixed shuffling seed,
    so every run (and both fastmlp backends) follows the same trajectory: (fit seconds, test
    predictions)."""
    x, y, x_test, _y_test = data
    fastmlp.utils.set_random_seed(seed)
    start = time.perf_counter()
    model.fit(x, y, epochs=epochs, batch_size=batch, verbose=0)
    seconds = time.perf_counter() - start
    return seconds, model.predict(x_test, batch_size=len(x_test))


def best_of(repeats, run):
    """min fit seconds over `repeats` runs, and the worst accuracy among them."""
    times, accs = [], []
    for _ in range(repeats):
        seconds, acc = run()
        times.append(seconds)
        accs.append(acc)
    return min(times), min(accs)


def cpu_name():
    name = platform.processor()
    if not name and os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as f:
            name = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    return name or "unknown"



def compare(contenders, epochs, steps, min_accuracy):
    """Run each (name, repeats, run) contender, the native engine first; each must reach
    `min_accuracy` before its time is shown. Prints the table; returns the exit status (1 when the
    native engine fails its quality gate)."""
    results = []
    for i, (name, repeats, run) in enumerate(contenders):
        try:
            seconds, acc = best_of(repeats, run)
            error = None
        except Exception as exc:  # a peer's error is reported in the table; the native engine's is raised
            if i == 0:
                raise
            seconds, acc, error = float("nan"), float("nan"), f"{type(exc).__name__}: {exc}"
        ok = error is None and acc >= min_accuracy
        results.append((name, repeats, seconds, acc, ok, error))
        print(f"{name}: test accuracy {acc:.4f} ({'ok' if ok else 'FAILED'}, need >= {min_accuracy})"
              + (f" [{error}]" if error else ""), flush=True)

    native_seconds = results[0][2]
    print()
    header = (f"{'backend':<28} {'runs':>4} {'fit s':>9} {'ms/epoch':>9} {'steps/s':>11} {'accuracy':>8} "
              f"{'native speedup':>15}")
    print(header)
    print("-" * len(header))
    for name, repeats, seconds, acc, ok, _error in results:
        if ok:
            speedup = f"{seconds / native_seconds:.1f}x" if results[0][4] else "-"
            print(f"{name:<28} {repeats:>4} {seconds:>9.3f} {1e3 * seconds / epochs:>9.3f} {steps / seconds:>11,.0f} "
                  f"{acc:>8.4f} {speedup:>15}")
        else:
            print(f"{name:<28} {repeats:>4} {'FAILED':>9} {'-':>9} {'-':>11} {acc:>8.4f} {'-':>15}")
    print("(native speedup = that backend's fit time / the native fit time; best of 'runs' timed fits)")
    if not results[0][4]:
        print(f"error: the native engine's test accuracy {results[0][3]:.4f} is below {min_accuracy}",
              file=sys.stderr)
        return 1
    return 0
