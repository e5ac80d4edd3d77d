"""The row-sparse step on the GPU: the same tables and moments as the CPU kernel, bit for bit
(duplicates sorted on the device and summed in their order, as the CPU sums them)."""

import numpy as np
import pytest
from helpers import on_device, to_host

import fastadam

cuda = pytest.importorskip("numba.cuda")
pytest.importorskip("fastadam._backends.cuda.runtime")
ml_dtypes = pytest.importorskip("ml_dtypes")

BF16 = np.dtype(ml_dtypes.bfloat16)
F32 = np.float32
ROWS, DIM = 53, 11  # odd: ragged against every launch shape


def _lookups(rng, nnz, dtype):
    indices = rng.integers(0, ROWS - 5, nnz)  # the last 5 rows are never looked up
    indices[: nnz // 3] = rng.choice([0, 9], nnz // 3)  # hot rows: many duplicates
    return indices, rng.standard_normal((nnz, DIM)).astype(dtype)


@pytest.mark.parametrize("dtype,options", [
    (F32, {}), (F32, {"maximize": True}), (np.float64, {}),
    (BF16, {}), (BF16, {"master_weights": True}), (np.float16, {"state_dtype": BF16})])
def test_sparse_adam_on_the_gpu_equals_the_cpu_bit_for_bit(rng, dtype, options):
    dtype = np.dtype(dtype)
    start = rng.standard_normal((ROWS, DIM)).astype(dtype)
    on_cpu = fastadam.SparseAdam(start.copy(), lr=1e-2, **options)
    on_gpu = fastadam.SparseAdam(on_device(start), lr=1e-2, **options)
    for step in range(4):
        indices, values = _lookups(rng, (40, 70, 0, 25)[step], dtype)  # scratch grows
        on_cpu.step(indices, values)
        index_dtype = np.int32 if step == 3 else np.int64
        on_gpu.step(cuda.to_device(indices.astype(index_dtype)), on_device(values))
    assert on_gpu.step_count == 4
    table = to_host(on_gpu.table, dtype)
    np.testing.assert_array_equal(table.view(np.uint8), on_cpu.table.view(np.uint8))
    np.testing.assert_array_equal(table[-5:], start[-5:])
    ours, theirs = on_gpu.state_dict()["state"][0], on_cpu.state_dict()["state"][0]
    assert set(ours) == set(theirs)
    for key in ours:
        if key != "step":
            np.testing.assert_array_equal(ours[key].view(np.uint8), theirs[key].view(np.uint8))


def test_functional_sparse_step_on_device_with_a_stream(rng):
    param = rng.standard_normal((ROWS, DIM)).astype(F32)
    m, v = np.zeros_like(param), np.zeros_like(param)
    arrays = [cuda.to_device(a) for a in (param, m, v)]
    stream = cuda.stream()
    for step in (1, 2):
        indices, values = _lookups(rng, 30, F32)
        fastadam.sparse_adam_step(param, indices, values, m, v, step=step)
        fastadam.sparse_adam_step(arrays[0], cuda.to_device(indices), cuda.to_device(values),
                                  arrays[1], arrays[2], step=step, stream=stream)
    stream.synchronize()
    for host, device in zip((param, m, v), arrays):
        np.testing.assert_array_equal(device.copy_to_host(), host)


@pytest.mark.parametrize("case", ["too_big", "negative", "host_indices", "values_shape"])
def test_bad_lookups_on_the_gpu_change_nothing(rng, case):
    start = rng.standard_normal((ROWS, DIM)).astype(F32)
    opt = fastadam.SparseAdam(cuda.to_device(start))
    indices, values = _lookups(rng, 20, F32)
    if case == "too_big":
        indices[11] = ROWS
    elif case == "negative":
        indices[0] = -2
    elif case == "values_shape":
        values = np.ascontiguousarray(values[:, 1:])
    device_indices = indices if case == "host_indices" else cuda.to_device(indices)
    with pytest.raises((ValueError, TypeError), match="indices|values"):
        opt.step(device_indices, cuda.to_device(values))
    assert opt.step_count == 0
    np.testing.assert_array_equal(opt.table.copy_to_host(), start)
    state = opt.state_dict()["state"][0]
    assert not state["exp_avg"].any() and not state["exp_avg_sq"].any()


def test_device_sort_groups_rows_in_lookup_order(rng):
    """The merge sort on the device: keys row << 32 | k in order, for sizes that are not
    powers of two."""
    from fastadam._backends.cuda import sparse

    for n in (1, 2, 37, 100):
        indices = rng.integers(0, 7, n)
        keys = sparse.sorted_keys(cuda.to_device(indices), 0).copy_to_host()
        expected = np.sort((indices.astype(np.uint64) << np.uint64(32)) | np.arange(
            n, dtype=np.uint64))
        np.testing.assert_array_equal(keys, expected)


def test_device_memory_only_pass_matches_the_cpu_one(rng):
    """The benchmark's limit on the device: every values row read, each distinct row of
    param, m, v written once, as the CPU pass."""
    from fastadam.bench import roofline, roofline_cuda

    host = [rng.standard_normal((97, 10)).astype(np.float32) for _ in range(3)]
    values = rng.standard_normal((53, 10)).astype(np.float32)
    rows = rng.permutation(97)[:17]
    device = [cuda.to_device(a) for a in host]
    roofline_cuda.touch_rows_cuda(*device, cuda.to_device(values), cuda.to_device(rows))
    roofline.touch_rows(*host, values, rows)
    for d, h in zip(device, host):
        np.testing.assert_allclose(d.copy_to_host(), h, rtol=1e-5, atol=1e-5)
