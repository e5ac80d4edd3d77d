"""The benchmark's GPU contenders run (on the simulator: tiny, untimed)."""

import numpy as np
import pytest

cuda = pytest.importorskip("numba.cuda")

from fastadam.bench import harness, sparse_suite  # noqa: E402
from fastadam.bench.contenders import cuda_contenders  # noqa: E402


@pytest.mark.parametrize("dtype,config,per_element", [
    ("float32", "adam", 28), ("float32", "amsgrad", 36), ("float16", "kahan", 26),
])
def test_cuda_contenders_run(dtype, config, per_element):
    contenders, nbytes = cuda_contenders(64, dtype, config, np.random.default_rng(0),
                                               peers=False)
    assert [c.backend for c in contenders] == ["cuda", "cuda-copy", "cuda-roofline"]
    assert nbytes == 64 * per_element
    timings = harness.measure(contenders, repeats=1)
    assert all(timings.median(c) > 0 for c in contenders)


@pytest.mark.parametrize("config,per_element", [("adam", 26), ("bf16_state", 18)])
def test_bfloat16_on_the_gpu(config, per_element):
    pytest.importorskip("ml_dtypes")
    contenders, nbytes = cuda_contenders(64, "bfloat16", config,
                                               np.random.default_rng(0), peers=False)
    assert nbytes == 64 * per_element and contenders[0].backend == "cuda"
    harness.measure(contenders, repeats=1)


def test_unsigned_copies_stay_on_the_device():
    x = np.arange(10, dtype=np.float32)
    source = cuda.to_device(x)
    copy = harness.unsigned_copy(source)
    assert getattr(copy, "__cuda_ndarray__", False) and copy.dtype == np.uint32
    source.copy_to_device(np.zeros(10, np.float32))  # the copy is its own memory
    np.testing.assert_array_equal(copy.copy_to_host(), x.view(np.uint32))


def test_sparse_gpu_rows():
    """bench --sparse on the device: fastadam's step and the memory-only pass, each
    against the same lookups, with a fraction of the device limit."""
    rows = sparse_suite.sparse_rows(301, 8, 40, repeats=1, rng=np.random.default_rng(0), gpu=True)
    by_backend = {r.backend: r for r in rows}
    assert {"cuda", "cuda-roofline"} <= set(by_backend)
    assert by_backend["cuda"].roofline_fraction > 0
    assert by_backend["cuda-roofline"].roofline_fraction is None
