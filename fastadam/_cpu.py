"""The fused Adam kernel for the CPU: one parallel pass, Numba ``prange``.

Reads param, grad, m, v (and v_max, the Kahan compensation, the master params
when those are on) once and writes each state once. Options and dtypes are
closure constants, so each combination compiles to a loop without branches on
them; combinations compile lazily, on first use.
"""

from __future__ import annotations

from functools import cache

import numba
import numpy as np
from numba import prange

from . import _convert, _element
from ._scalars import Flags, compute_dtype


@numba.njit
def _f32_from_bits(u):
    return np.uint32(u).view(np.float32)


@numba.njit
def _bits_from_f32(x):
    return np.float32(x).view(np.uint32)


@cache
def converters(compute: str) -> dict:
    """``{dtype name: (load, store)}`` computing in ``compute`` ("float32"/"float64")."""
    return _convert.make(numba.njit, _f32_from_bits, _bits_from_f32, np.dtype(compute).type)


@cache
def fused_kernel(flags: Flags):
    """The compiled kernel ``(param, grad, m, v, v_max, comp, master, coef)``.

    Arrays are 1-D; 16-bit ones are uint16 views. Unused arrays (v_max, comp,
    master when their option is off) may be any placeholder. ``coef`` holds
    ``_scalars.COEFFICIENTS`` rounded once to the compute dtype.
    """
    update = _element.make(numba.njit, flags, converters(compute_dtype(flags.param)))

    # prange also lets LLVM vectorize: a plain range loop over several arrays
    # stays scalar, because the arrays might alias.
    @numba.njit(parallel=True, nogil=True)
    def kernel(param, grad, m, v, v_max, comp, master, coef):
        c0, c1, c2, c3, c4, c5 = coef[0], coef[1], coef[2], coef[3], coef[4], coef[5]
        c6, c7, c8, c9, c10 = coef[6], coef[7], coef[8], coef[9], coef[10]
        for i in prange(param.size):
            update(i, param, grad, m, v, v_max, comp, master, c0, c1, c2, c3, c4, c5, c6, c7,
                   c8, c9, c10)

    return kernel


@cache
def nonfinite_kernel(grad_kind: str):
    """``count(grad)``: how many elements are NaN or infinite (one parallel read)."""
    load = converters(compute_dtype(grad_kind))[grad_kind][0]

    @numba.njit(parallel=True, nogil=True)
    def count(grad):
        bad = 0
        for i in prange(grad.size):
            x = load(grad[i])
            if x - x != 0:  # NaN for NaN and for +-inf, 0 otherwise
                bad += 1
        return bad

    return count


def with_threads(num_threads: int | None, fn, *args):
    """``fn(*args)`` on ``num_threads`` Numba threads, restored afterwards even on error."""
    if num_threads is None:
        return fn(*args)
    previous = numba.get_num_threads()
    numba.set_num_threads(num_threads)
    try:
        return fn(*args)
    finally:
        numba.set_num_threads(previous)


def adam_step_cpu(arrays: tuple, flags: Flags, coef: np.ndarray, num_threads: int | None) -> None:
    """Run the fused kernel on ``(param, grad, m, v, v_max, comp, master)`` kernel views."""
    with_threads(num_threads, fused_kernel(flags), *arrays, coef)


def count_nonfinite(grad, grad_kind: str, num_threads: int | None) -> int:
    """NaN and inf elements in ``grad`` (a kernel view)."""
    return with_threads(num_threads, nonfinite_kernel(grad_kind), grad)


@cache
def memory_only_kernel(reads: int, writes: int):
    """The bandwidth limit: ``kernel(*read_only, *read_write)`` reads every array once
    and writes the ``writes`` last ones once, with integer adds and no other arithmetic.

    Pass unsigned-integer views of arrays like the step's, so the bytes are the step's.
    """
    source = memory_only_source(reads, writes)
    scope = {"prange": prange}
    exec(source.replace("LOOP", "for i in prange(r0.size):"), scope)
    return numba.njit(parallel=True, nogil=True)(scope["kernel"])


def memory_only_source(reads: int, writes: int) -> str:
    """Python source of the memory-only loop (``LOOP`` marks the loop header)."""
    r = [f"r{k}" for k in range(reads)]
    w = [f"w{k}" for k in range(writes)]
    body = "".join(f"        {a}[i] += x\n" for a in w)
    return (f"def kernel({', '.join(r + w)}):\n    LOOP\n"
            f"        x = {' + '.join(a + '[i]' for a in r)}\n{body}")
