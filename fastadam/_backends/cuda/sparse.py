"""The fused row-sparse Adam step on NVIDIA GPUs (``torch.optim.SparseAdam``'s update).

Duplicates are grouped on the device by sorting the nnz keys ``row << 32 | k``
(k: the lookup's position), unique by construction, with a bottom-up merge sort:
one launch per doubling of the run width, each thread placing one key by a
binary search in the partner run. Sorted, each row's lookups are adjacent and
in their order, so the update kernel sums them in the same order as the CPU
kernel: the result does not depend on the launch shape. The update kernel takes
one sorted position per thread row; the position that starts a row's run sums
that run and updates the row, its threads across the row's elements.
"""

from __future__ import annotations

from functools import cache

import numpy as np
from numba import cuda

from ..._core import element
from ..._core.dtypes import compute_dtype
from ..._core.hyper import Flags
from .memory import fill_zero
from .runtime import (
    MAX_BLOCKS,
    SIMULATOR,
    cached,
    converters,
    device_function,
    disk_cached,
    launch_shape,
    multiply,
    rounding,
    stream_handle,
)

# Threads per block: across a row's elements (x) and over sorted positions (y).
ROW_THREADS, POSITIONS = (8, 2) if SIMULATOR else (32, 8)
_LOW = np.uint64(0xFFFFFFFF)
_SHIFT = np.uint64(32)


@disk_cached("cuda.sparse.bad_indices")
@cuda.jit
def _bad_indices(indices, rows, found):
    """found[0]: how many indices are outside [0, rows); found[1]: one of them."""
    i = cuda.grid(1)
    while i < indices.size:
        r = indices[i]
        if r < 0 or r >= rows:
            cuda.atomic.add(found, 0, 1)
            found[1] = r
        i += cuda.gridsize(1)


_scratch: dict = {}  # (device, stream handle) -> {name: device array}


def scratch(name: str, n: int, dtype, stream):
    """``n`` elements of a device array kept for ``stream``, grown as needed: no
    allocation per step (one can make the device wait). Launches on one stream run in
    order, so the steps on it can share it."""
    held = _scratch.setdefault((getattr(cuda.get_current_device(), "id", 0),
                                stream_handle(stream)), {})
    a = held.get(name)
    if a is None or a.size < n:
        a = held[name] = cuda.device_array(max(n, 2 * (0 if a is None else a.size)), dtype)
    return a[:n]


def check_indices(indices, rows: int, stream) -> None:
    """Refuse indices outside [0, rows), before anything is written: one launch and one
    wait for its answer."""
    if indices.size == 0:
        return
    found = scratch("found", 2, np.int64, stream)
    fill_zero[1, 1, stream](found)
    _bad_indices[launch_shape(indices.size) + (stream,)](indices, rows, found)
    count, bad = found.copy_to_host(stream=stream)
    if count:
        raise ValueError(f"indices must be in [0, {rows}) (param's rows); found {bad}")


@disk_cached("cuda.sparse.keys")
@cuda.jit
def _keys(indices, keys):
    k = cuda.grid(1)
    while k < indices.size:
        keys[k] = (np.uint64(indices[k]) << _SHIFT) | np.uint64(k)
        k += cuda.gridsize(1)


@device_function
def _lower_bound(keys, lo, hi, key):
    """The first position in sorted ``keys[lo:hi]`` whose key is not below ``key``."""
    while lo < hi:
        mid = (lo + hi) // 2
        if keys[mid] < key:
            lo = mid + 1
        else:
            hi = mid
    return lo


@disk_cached("cuda.sparse.merge")
@cuda.jit
def _merge(source, out, width):
    """Merge each pair of sorted runs of ``width`` keys of ``source`` into ``out``."""
    n = source.size
    i = cuda.grid(1)
    while i < n:
        lo = (i // (2 * width)) * (2 * width)
        mid = min(lo + width, n)
        hi = min(lo + 2 * width, n)
        key = source[i]
        if i < mid:  # keys are unique: a key's place is its rank in both runs
            place = i + _lower_bound(source, mid, hi, key) - mid
        else:
            place = i - mid + _lower_bound(source, lo, mid, key)
        out[place] = key
        i += cuda.gridsize(1)


def sorted_keys(indices, stream):
    """The keys ``row << 32 | k`` of ``indices`` (a device array), sorted, on the device."""
    n = indices.size
    keys, spare = scratch("keys", n, np.uint64, stream), scratch("spare", n, np.uint64, stream)
    shape = launch_shape(n) + (stream,)
    _keys[shape](indices, keys)
    width = 1
    while width < n:
        _merge[shape](keys, spare, width)
        keys, spare = spare, keys
        width *= 2
    return keys


@cache
def sparse_kernel(flags: Flags):
    """``kernel(param, m, v, comp, master, keys, values, one_minus_beta1, one_minus_beta2,
    eps, neg_step_size, key, step)``: tables (rows, dim), 16-bit ones as uint16 views;
    ``keys`` from ``sorted_keys``; ``key`` and ``step`` the table's random bits (stochastic
    rounding); launched with (ROW_THREADS, POSITIONS) threads per block."""
    convert = converters(compute_dtype(flags.param))
    element_rounding, noise_of = rounding()
    update = element.make_sparse(device_function, flags, convert, element_rounding,
                                 multiply(compute_dtype(flags.param)))
    load_g = convert[flags.grad][0]

    @cuda.jit
    def kernel(param, m, v, comp, master, keys, values, one_minus_beta1, one_minus_beta2,
               eps, neg_step_size, key, step):
        noise = noise_of(key, step)
        dim = param.shape[1]
        i = cuda.blockIdx.x * cuda.blockDim.y + cuda.threadIdx.y
        while i < keys.size:
            row = keys[i] >> _SHIFT
            if i == 0 or (keys[i - 1] >> _SHIFT) != row:  # this row's run starts here
                r = np.int64(row)
                p, m_row, v_row, c_row, w_row = param[r], m[r], v[r], comp[r], master[r]
                j = cuda.threadIdx.x
                while j < dim:
                    g = load_g(values[np.int64(keys[i] & _LOW), j])
                    k = i + 1
                    while k < keys.size and (keys[k] >> _SHIFT) == row:  # in their order
                        g += load_g(values[np.int64(keys[k] & _LOW), j])
                        k += 1
                    update(j, g, p, m_row, v_row, c_row, w_row, one_minus_beta1,
                           one_minus_beta2, eps, neg_step_size, noise, r * dim)
                    j += cuda.blockDim.x
            i += cuda.gridDim.x * cuda.blockDim.y

    return cached(kernel, "cuda.sparse.sparse_kernel", flags)


def sparse_step(tables: tuple, indices, values, flags: Flags, coef: tuple, stream,
                key: int = 0, step: int = 0) -> None:
    """The row-sparse step on checked device arrays: ``tables`` (param, m, v, comp,
    master) as kernel views, ``coef`` (1 - beta1, 1 - beta2, eps, -step_size) rounded
    to the compute dtype, ``indices`` checked by ``check_indices``. Asynchronous on
    ``stream``."""
    keys = sorted_keys(indices, stream)
    blocks = min(MAX_BLOCKS, (keys.size + POSITIONS - 1) // POSITIONS)
    sparse_kernel(flags)[blocks, (ROW_THREADS, POSITIONS), stream](
        *tables, keys, values, *coef, np.uint32(key), np.int64(step))
