#!/usr/bin/env bash
# The whole device check in one command, for a machine with an NVIDIA GPU as it is (its own
# python3 with numba-cuda, torch, CuPy, ml_dtypes; no installs): the GPU figures
# (python -m fastadam.bench.gpucheck), then the CUDA tests against the device.
# Prints as it goes; writes gpucheck.log, gpucheck.json and cuda-tests.xml under $OUT.
#
#   PYTHONPATH=. bash bench/gpu_check.sh                          # on the GPU
#   NUMBA_ENABLE_CUDASIM=1 PYTHONPATH=. bash bench/gpu_check.sh --tiny   # anywhere
set -u
OUT=${OUT:-gpucheck-out}
mkdir -p "$OUT"
export PYTHONPATH=${PYTHONPATH:-.} PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
run() {
  "$PY" -c "import numba, numpy, sys; print('python', sys.version.split()[0], 'numpy',
numpy.__version__, 'numba', numba.__version__)" || return 1
  "$PY" -c "import importlib.metadata as m; [print(p, m.version(p)) for p in
('numba-cuda', 'torch', 'cupy-cuda12x', 'cupy-cuda13x', 'ml_dtypes') if __import__('importlib')
.util.find_spec(p.split('-')[0].replace('numba', 'numba_cuda') if p == 'numba-cuda' else
p.split('-')[0])]" 2>/dev/null
  status=0
  if [ "${1:-}" != "--tiny" ]; then
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem \
      --format=csv 2>/dev/null
    nvidia-smi 2>/dev/null | grep -o 'CUDA Version: [0-9.]*'
  fi
  # The figures first: a test run cut short by its timeout must not take them too.
  timeout "${CHECK_TIMEOUT:-270}" "$PY" -m fastadam.bench.gpucheck "$@" --out "$OUT" || status=1
  if [ "${1:-}" != "--tiny" ]; then
    # Every failure, not the first: a device run is too dear to stop at one. (The PTX
    # checks, tests/backends/test_cuda_codegen.py, need no GPU: CI runs them.)
    # TESTS: the test paths, in the order to run them (what changed first, say).
    # shellcheck disable=SC2086
    timeout "${TESTS_TIMEOUT:-300}" "$PY" -m pytest ${TESTS:-tests/cuda \
      tests/backends/test_cuda_streams.py tests/backends/test_cuda_launch.py} \
      -v --tb=short --maxfail=40 -p no:cacheprovider --durations=15 \
      -o faulthandler_timeout=60 --junitxml "$OUT/cuda-tests.xml" || status=1
  fi
  return $status
}
run "$@" 2>&1 | tee "$OUT/gpucheck.log"
exit "${PIPESTATUS[0]}"
