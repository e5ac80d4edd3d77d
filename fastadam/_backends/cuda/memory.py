"""Device memory the optimizer owns: zeroed state, float32 master copies, and copies to
and from the host (16-bit ones as their bits: numba has no bfloat16).

These run on the legacy default stream, outside any step, and each waits until it is
done: a step launched on a user's non-blocking stream (torch's side streams) would
not wait for them, and a host read must see every step launched before it."""

from __future__ import annotations

from functools import cache

import numpy as np
from numba import cuda

from .runtime import cached, converters, disk_cached, launch_shape


@disk_cached("cuda.fill_zero")
@cuda.jit
def fill_zero(a):
    i = cuda.grid(1)
    stride = cuda.gridsize(1)
    while i < a.size:
        a[i] = 0
        i += stride


@cache
def widen_kernel(kind: str):
    """``kernel(source, out)``: ``out[i] = float32(source[i])`` for a float kind (16-bit
    sources as uint16 views): master weights made from the params on the device."""
    load = converters("float32")[kind][0]

    @cuda.jit
    def kernel(source, out):
        i = cuda.grid(1)
        stride = cuda.gridsize(1)
        while i < source.size:
            out[i] = load(source[i])
            i += stride

    return cached(kernel, "cuda.widen_kernel", kind)


def _unsigned(dtype) -> np.dtype:
    return np.dtype(f"u{np.dtype(dtype).itemsize}")


def zeros(n: int, dtype) -> object:
    """A zeroed 1-D device array of a float dtype (bfloat16 too), made on the device: no
    host buffer is allocated or copied."""
    out = cuda.device_array(n, _unsigned(dtype))  # numba allocates integers of any width
    if n:  # integer zeros of the same width are float zeros
        fill_zero[launch_shape(n)](out)
        cuda.default_stream().synchronize()
    return out.view(np.dtype(dtype))


def as_float32(a, kind: str) -> object:
    """A new float32 device array holding the float values of device array ``a``."""
    out = cuda.device_array(a.size, np.float32)
    if a.size:
        source = a.view(np.uint16) if a.dtype.itemsize == 2 else a
        widen_kernel(kind)[launch_shape(a.size)](source, out)
        cuda.default_stream().synchronize()
    return out


def to_host(a) -> np.ndarray:
    """A host copy of a device array (bits as unsigned integers: callers view them), after
    every launch on any stream has finished."""
    cuda.synchronize()
    return a.view(_unsigned(a.dtype)).copy_to_host()


def to_device(a: np.ndarray):
    """A device copy of a host array (bfloat16 too: copied as its bits)."""
    a = np.ascontiguousarray(a)
    out = cuda.to_device(a.view(_unsigned(a.dtype)))
    cuda.default_stream().synchronize()  # a pageable copy may still be on its way
    return out.view(a.dtype)
