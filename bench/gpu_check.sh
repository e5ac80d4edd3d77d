#!/usr/bin/env bash
# The whole device check in one command, for a machine with an NVIDIA GPU as it is (its own
# python3 with numba-cuda, torch, CuPy, ml_dtypes; no installs): the CUDA tests against
# the device and the PTX checks, then the GPU figures (python -m fastadam.bench.gpucheck).
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
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>/dev/null
    timeout 300 "$PY" -m pytest tests/cuda tests/backends/test_cuda_codegen.py -q -x \
      -p no:cacheprovider --durations=10 --junitxml "$OUT/cuda-tests.xml" || status=1
  fi
  timeout 300 "$PY" -m fastadam.bench.gpucheck "$@" --out "$OUT" || status=1
  return $status
}
run "$@" 2>&1 | tee "$OUT/gpucheck.log"
exit "${PIPESTATUS[0]}"
