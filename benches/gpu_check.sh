#!/usr/bin/env bash
# One run on a machine with an NVIDIA GPU verifies the whole CUDA backend: builds fastmlp with it,
# runs tests/test_cuda.py (the GPU against the CPU engine), then benches/bench_cuda.py (the seed,
# 784-1024-1024-10 at batch 256 and 4096-4096-4096-10 at batch 1024 against PyTorch on the same GPU).
# 2.3 minutes on an H200 machine (build 65 s on 16 cores, tests 4 s, benchmark 65 s, most of it torch's
# eager seed fit); each stage has a time limit, 7.7 minutes in all.
#
# Needs: nvcc and an NVIDIA driver; python3 with numpy, pytest, hypothesis, scikit-build-core,
# pybind11, cmake, ninja and the nvidia-cublas wheel (CUDA 13: nvidia-cublas; 12: -cu12). It
# fetches nothing (the build runs without pip's build isolation). torch with CUDA is optional: without
# it the benchmark prints fastmlp's numbers alone.
#
#   bash benches/gpu_check.sh [log folder]      (default: $OUT, else a new temporary folder)
#
# FASTMLP_PREBUILT=<folder>: a fastmlp built with CUDA for this machine's Python, installed into that
# folder (pip install --target), is used instead of building here when it imports; else it builds.
# Exit status 0 when the build, every test, every benchmark check and both targets passed.
set -uo pipefail
cd "$(dirname "$0")/.."
logs=${1:-${OUT:-$(mktemp -d)}}
mkdir -p "$logs"
py=${PYTHON:-python3}
# Where images keep the toolkit without putting it on PATH.
[ -d /usr/local/cuda/bin ] && export PATH="$PATH:/usr/local/cuda/bin"
status=0
stage() { printf '\n=== %s\n' "$*"; }

stage "machine"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || echo "nvidia-smi failed"
nvcc --version | tail -n 2
"$py" -c "import sys, numpy; print('python', sys.version.split()[0], 'numpy', numpy.__version__)"

prebuilt_ok() {
    [ -n "${FASTMLP_PREBUILT:-}" ] || return 1
    PYTHONPATH="$FASTMLP_PREBUILT" "$py" -c "import fastmlp, fastmlp._core; assert fastmlp.cuda_info()['built'], fastmlp.cuda_info()" \
        >"$logs/prebuilt.log" 2>&1
}
if prebuilt_ok; then
    stage "build: none, the prebuilt fastmlp in $FASTMLP_PREBUILT imports"
    export PYTHONPATH="$FASTMLP_PREBUILT"
else
    [ -n "${FASTMLP_PREBUILT:-}" ] && { echo "the prebuilt fastmlp in $FASTMLP_PREBUILT does not import:"; tail -n 5 "$logs/prebuilt.log"; }
    stage "build: pip install . -Ccmake.define.FASTMLP_CUDA=ON (no build isolation, into a scratch folder)"
    target=$(mktemp -d)
    trap 'rm -rf "$target"' EXIT
    export CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}
    # Only the GPU of this machine: the build's default adds PTX for others, which this run does not need.
    arch=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -n 1 | tr -d '.[:space:]')
    start=$SECONDS
    if ! timeout 200 "$py" -m pip install --no-build-isolation --no-deps --target "$target" \
            -Cbuild-dir="$target/build" -Ccmake.define.FASTMLP_CUDA=ON \
            ${arch:+-Ccmake.define.CMAKE_CUDA_ARCHITECTURES=${arch}-real} . >"$logs/build.log" 2>&1; then
        tail -n 60 "$logs/build.log"
        echo "BUILD FAILED (log: $logs/build.log)"
        exit 1
    fi
    echo "built in $((SECONDS - start)) s"
    export PYTHONPATH="$target"
fi
"$py" -c "import fastmlp; print(fastmlp.__file__); print(fastmlp.cuda_info())"

stage "tests/test_cuda.py"
timeout 110 "$py" -m pytest -q -p no:cacheprovider -rfE --durations=8 tests/test_cuda.py 2>&1 | tee "$logs/test_cuda.log"
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1

stage "benches/bench_cuda.py"
PYTHONUNBUFFERED=1 timeout 150 "$py" benches/bench_cuda.py 2>&1 | tee "$logs/bench_cuda.log"
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1

stage "result"
if [ "$status" -eq 0 ]; then echo "GPU CHECK PASSED"; else echo "GPU CHECK FAILED (logs: $logs)"; fi
exit "$status"
