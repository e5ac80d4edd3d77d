"""The fused Adam kernel for NVIDIA GPUs: one launch per step, ``numba.cuda``.

The same loop body as ``_cpu.py``, over a grid-stride loop. Options are closure
constants, compiled lazily per option set and dtype. Scalars arrive already
rounded to the param dtype, so the kernel never computes in a wider type.
This module imports ``numba.cuda`` at its top (the simulator needs that) and is
itself imported only when a CUDA step is asked for.
"""

from __future__ import annotations

import math
from functools import cache

import numpy as np
from numba import config, cuda

from ._scalars import Flags

SIMULATOR = bool(config.ENABLE_CUDASIM)
# The simulator runs one Python thread per CUDA thread: keep its launches small.
THREADS_PER_BLOCK = 32 if SIMULATOR else 256
MAX_BLOCKS = 4 if SIMULATOR else 65_535


@cache
def fused_kernel(flags: Flags):
    """The kernel ``(param, grad, m, v, v_max, *coefficients)`` for one option set."""
    maximize, amsgrad, l2_decay, decoupled_decay = flags

    @cuda.jit
    def kernel(param, grad, m, v, v_max, beta1, one_minus_beta1, beta2, one_minus_beta2,
               step_size, scaled_eps, weight_decay, decay_factor):
        i = cuda.grid(1)
        stride = cuda.gridsize(1)
        while i < param.size:
            p = param[i]
            g = grad[i]
            if maximize:
                g = -g
            if l2_decay:
                g = g + weight_decay * p
            if decoupled_decay:
                p = p * decay_factor
            m_i = beta1 * m[i] + one_minus_beta1 * g
            v_i = beta2 * v[i] + one_minus_beta2 * (g * g)
            m[i] = m_i
            v[i] = v_i
            if amsgrad:
                v_i = max(v_max[i], v_i)
                v_max[i] = v_i
            param[i] = p - step_size * (m_i / (math.sqrt(v_i) + scaled_eps))
            i += stride

    return kernel


def launch_shape(n: int) -> tuple[int, int]:
    """(blocks, threads per block) for ``n`` elements; the loop strides over the rest."""
    blocks = min(MAX_BLOCKS, (n + THREADS_PER_BLOCK - 1) // THREADS_PER_BLOCK)
    return max(blocks, 1), THREADS_PER_BLOCK


def adam_step_cuda(param, grad, m, v, v_max, flags: Flags, coefficients: tuple[float, ...],
                   stream) -> None:
    """Launch the fused kernel once over 1-D numba device arrays, on ``stream``."""
    kernel = fused_kernel(flags)
    scalar = param.dtype.type  # round the float64 host scalars once to the param dtype
    blocks, threads = launch_shape(param.size)
    kernel[blocks, threads, stream](param, grad, m, v, v_max if v_max is not None else v,
                                    *(scalar(c) for c in coefficients))


def as_device_array(x):
    """A numba device array viewing ``x`` (numba, CuPy, torch, ...), without a copy."""
    if getattr(x, "__cuda_ndarray__", False):
        return x  # numba's own, real or simulated
    return cuda.as_cuda_array(x)


def to_stream(stream):
    """A numba stream for ``stream``: None (default), numba's, torch's, CuPy's, or a handle."""
    if stream is None:
        return cuda.default_stream()
    if hasattr(stream, "auto_synchronize"):  # numba's own, real or simulated
        return stream
    if isinstance(stream, int) and not isinstance(stream, bool):
        return cuda.external_stream(stream)
    for attr in ("cuda_stream", "ptr"):  # torch.cuda.Stream, cupy.cuda.Stream
        handle = getattr(stream, attr, None)
        if isinstance(handle, int):
            return cuda.external_stream(handle)
    raise TypeError("stream must be None, a numba, PyTorch or CuPy CUDA stream, or a stream "
                    f"handle (int); got {type(stream).__name__}")


def zeros(n: int, dtype) -> object:
    """A zeroed 1-D device array."""
    return cuda.to_device(np.zeros(n, dtype))


def to_host(a) -> np.ndarray:
    """A host copy of a device array."""
    return a.copy_to_host()


def to_device(a: np.ndarray):
    """A device copy of a host array."""
    return cuda.to_device(np.ascontiguousarray(a))


@cache
def memory_only_kernel(states: int):
    """The bandwidth limit on the GPU: Adam's traffic, one add per array, one launch.

    ``kernel(grad, *states)`` reads grad and each of ``states`` (3, or 4 with
    amsgrad) arrays once and writes each state once.
    """
    if states == 3:
        @cuda.jit
        def kernel(grad, a, b, c):
            i = cuda.grid(1)
            stride = cuda.gridsize(1)
            while i < grad.size:
                g = grad[i]
                a[i] += g
                b[i] += g
                c[i] += g
                i += stride
    elif states == 4:
        @cuda.jit
        def kernel(grad, a, b, c, d):
            i = cuda.grid(1)
            stride = cuda.gridsize(1)
            while i < grad.size:
                g = grad[i]
                a[i] += g
                b[i] += g
                c[i] += g
                d[i] += g
                i += stride
    else:
        raise ValueError(f"states must be 3 or 4, got {states}")
    blocks_threads = launch_shape

    def run(grad, *arrays):
        kernel[blocks_threads(grad.size)](grad, *arrays)

    return run
