"""Backend choice: auto, explicit, and clear errors when CUDA is missing."""

import os
import subprocess
import sys

import numpy as np
import pytest

import fastadam
from fastadam._backends.views import as_kernel_array, kernel_views


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


def test_kernel_views_of_real_device_arrays():
    """numba-cuda's own device arrays (not the simulator's, which forward every attribute
    to a NumPy array): 16-bit ones become uint16 views, the others pass as they are."""
    devicearray = pytest.importorskip("numba.cuda.cudadrv.devicearray")
    if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1":
        pytest.skip("the simulator replaces numba-cuda's device arrays")

    class Memory:  # stands in for device memory: a view of it is itself; nothing allocates
        def view(self, start, stop=None):
            return self

    def device(dtype):
        dtype = np.dtype(dtype)
        return devicearray.DeviceNDArray((10,), (dtype.itemsize,), dtype, gpu_data=Memory())

    f16, f32 = device(np.float16), device(np.float32)
    assert not hasattr(f32, "itemsize")
    views = kernel_views((f16, f32, f32, f32, None, f16, None))
    assert [v.dtype for v in views] == [np.uint16, np.float32, np.float32, np.float32,
                                        np.float32, np.uint16, np.uint16]
    assert as_kernel_array(f16).dtype == np.uint16 and as_kernel_array(f32) is f32
