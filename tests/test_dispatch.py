"""Backend choice: auto, explicit, and clear errors when CUDA is missing."""

import subprocess
import sys

import numpy as np
import pytest

import fastadam


def test_auto_is_cpu_for_numpy_arrays():
    assert fastadam.Adam(np.zeros(3))._backend == "cpu"
    assert fastadam.Adam(np.zeros(3), backend="numpy")._backend == "numpy"


def test_import_and_cuda_request_without_numba_cuda():
    code = (
        "import sys\n"
        "sys.modules['numba.cuda'] = None  # as if numba-cuda were not installed\n"
        "import numpy as np, fastadam\n"
        "a = [np.ones(4, np.float32) for _ in range(4)]\n"
        "fastadam.adam_step(*a, step=1)\n"
        "try:\n"
        "    fastadam.adam_step(*a, step=1, backend='cuda')\n"
        "except ImportError as e:\n"
        "    assert 'numba-cuda' in str(e), e\n"
        "else:\n"
        "    raise SystemExit('no error')\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_cuda_request_without_gpu():
    cuda = pytest.importorskip("numba.cuda")
    if cuda.is_available():
        pytest.skip("a GPU is present")
    a = [np.ones(4, np.float32) for _ in range(4)]
    before = a[0].copy()
    with pytest.raises(RuntimeError, match="GPU"):
        fastadam.adam_step(*a, step=1, backend="cuda")
    np.testing.assert_array_equal(a[0], before)
