"""The fused Adam kernel for the CPU: one parallel pass, Numba ``prange``.

Reads param, grad, m, v (and v_max, the Kahan compensation, the master params
when those are on) once and writes each state once. Options and dtypes are
closure constants, so each combination compiles to a loop without branches on
them; combinations compile lazily, on first use. ``multi_kernel`` steps many
arrays of one option set in one parallel region.
"""

from __future__ import annotations

from functools import cache

import numba
import numpy as np
from numba import prange

from ..._core import element
from ..._core.dtypes import compute_dtype
from ..._core.hyper import Flags
from ..cache import cached
from ..shared import pointers
from .runtime import (
    at,
    coefficient_tuple,
    converters,
    njit_noalias,
    rounding,
    shares_memory,
)
from .threads import run_parallel

OVERLAP = 1  # the kernel's refusal: the gradient shares memory with an array it writes


@numba.njit(inline="always")
def grad_overlaps(grad, param, m, v, v_max, comp, master) -> bool:
    """Whether ``grad`` shares memory with an array the step writes."""
    return (shares_memory(grad, param) or shares_memory(grad, m) or shares_memory(grad, v)
            or shares_memory(grad, v_max) or shares_memory(grad, comp)
            or shares_memory(grad, master))


def _step_loop(compile_loop, update):
    """The step kernel: the refusal, then ``update`` on every element, compiled by
    ``compile_loop``; its ``prange`` is a plain range loop where not compiled parallel."""

    @compile_loop
    def kernel(param, grad, m, v, v_max, comp, master, coef, noise):
        if grad_overlaps(grad, param, m, v, v_max, comp, master):
            return OVERLAP
        c = coefficient_tuple(coef)
        for i in prange(param.size):
            update(i, param, grad, m, v, v_max, comp, master, c, noise, 0)
        return 0

    return kernel


@cache
def fused_kernel(flags: Flags, f16c: bool | None = None):
    """The compiled kernel ``(param, grad, m, v, v_max, comp, master, coef, noise) -> 0``.

    Arrays are 1-D; 16-bit ones are uint16 views. Unused arrays (v_max, comp,
    master when their option is off) may be any placeholder. ``coef`` holds
    ``hyper.COEFFICIENTS`` rounded once to the compute dtype (in that order). ``f16c``: as in
    ``converters``. Before anything is written it returns ``OVERLAP``, changing
    nothing, if grad shares memory with an array the step writes.
    """
    # Inlined by Numba itself: left to LLVM, the float16 Kahan body (three 16-bit loads,
    # two stores) stayed a call per element, unvectorized, at 3% of the memory limit.
    update = element.make(numba.njit(inline="always"), flags,
                           converters(compute_dtype(flags.param), f16c), rounding(f16c))

    # prange also lets LLVM vectorize: a plain range loop over several arrays
    # stays scalar, because the arrays might alias.
    kernel = _step_loop(numba.njit(parallel=True, nogil=True), update)
    return cached(kernel, "cpu.fused_kernel", flags, f16c)


@cache
def serial_kernel(flags: Flags):
    """``fused_kernel(flags)``'s call and refusal, its loop on the calling thread: the thin
    call's kernel for small arrays. No parallel region to enter (a microsecond and a
    half of a 1K step); the arrays marked as not overlapping (checked: the gradient
    here, the optimizer's own arrays by construction), so that the loop vectorizes as
    prange's does."""
    update = element.make(numba.njit(inline="always"), flags,
                           converters(compute_dtype(flags.param)), rounding())

    return cached(_step_loop(njit_noalias, update), "cpu.serial_kernel", flags)


@cache
def swap_kernel(flags: Flags):
    """``swap(param, z, comp, master, weight) -> 0``: schedule-free AdamW's move of the
    params between y and x (``element.make_swap``), one parallel pass."""
    swap = element.make_swap(numba.njit(inline="always"), flags,
                             converters(compute_dtype(flags.param)))

    @numba.njit(parallel=True, nogil=True)
    def kernel(param, z, comp, master, weight):
        for i in prange(param.size):
            swap(i, param, z, comp, master, weight)
        return 0

    return cached(kernel, "cpu.swap_kernel", flags)


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

    return cached(count, "cpu.nonfinite_kernel", grad_kind)


def adam_step_cpu(arrays: tuple, flags: Flags, coef: np.ndarray, num_threads: int | None,
                  noise: int = 0) -> None:
    """Run the fused kernel on ``(param, grad, m, v, v_max, comp, master)`` kernel views
    (checked: none overlaps another); ``noise``: the params' random bits at this step,
    for stochastic rounding."""
    if run_parallel(num_threads, arrays[0].size, fused_kernel(flags), *arrays, coef,
                    np.uint32(noise), serial=serial_kernel(flags)) == OVERLAP:
        raise ValueError("grad overlaps an array the step writes")  # checked before: a bug


def count_nonfinite(grad, grad_kind: str, num_threads: int | None) -> int:
    """NaN and inf elements in ``grad`` (a kernel view)."""
    return run_parallel(num_threads, grad.size, nonfinite_kernel(grad_kind), grad)


@cache
def multi_kernel(flags: Flags):
    """One parallel region over many arrays of one option set and dtypes.

    ``kernel(tables, grad_addresses, sizes, chunks, coef, noises)``: ``tables`` rows hold the
    data addresses of (param, m, v, v_max, comp, master) per array (a placeholder's
    where an option is off), ``grad_addresses`` the gradients', ``sizes`` the arrays'
    elements, and ``chunks`` rows of (array index, start, stop) that split the work
    evenly across threads, ``noises`` each array's random bits at this step (stochastic
    rounding). Addresses, not numba containers: nothing to build per process.
    """
    # Inlined by Numba itself: an inner range loop around a call stays scalar.
    update = element.make(numba.njit(inline="always"), flags,
                           converters(compute_dtype(flags.param)), rounding())

    param_t, grad_t, state_t = map(pointers.pointee, (flags.param, flags.grad, flags.state))
    master_t = np.float32

    @numba.njit(parallel=True, nogil=True)
    def kernel(tables, grad_addresses, sizes, chunks, coef, noises):
        c = coefficient_tuple(coef)
        for row in prange(chunks.shape[0]):
            t, start, stop = chunks[row, 0], chunks[row, 1], chunks[row, 2]
            size = sizes[t]
            # Slices, so that the loop index starts at 0: LLVM then vectorizes it.
            grad = numba.carray(at(grad_addresses[t], grad_t), size)[start:stop]
            param = numba.carray(at(tables[0, t], param_t), size)[start:stop]
            m = numba.carray(at(tables[1, t], state_t), size)[start:stop]
            v = numba.carray(at(tables[2, t], state_t), size)[start:stop]
            v_max = numba.carray(at(tables[3, t], state_t), size)[start:stop]
            comp = numba.carray(at(tables[4, t], param_t), size)[start:stop]
            master = numba.carray(at(tables[5, t], master_t), size)[start:stop]
            for i in range(stop - start):
                update(i, param, grad, m, v, v_max, comp, master, c, noises[t], start)

    return cached(kernel, "cpu.multi_kernel", flags)


@cache
def multi_nonfinite_kernel(grad_kind: str):
    """``count(grad_addresses, sizes, chunks)``: NaN and inf elements in the
    chunks' gradients (laid out as in ``multi_kernel``), in one parallel read."""
    load = converters(compute_dtype(grad_kind))[grad_kind][0]
    grad_t = pointers.pointee(grad_kind)

    @numba.njit(parallel=True, nogil=True)
    def count(grad_addresses, sizes, chunks):
        bad = 0
        for c in prange(chunks.shape[0]):
            t, start, stop = chunks[c, 0], chunks[c, 1], chunks[c, 2]
            grad = numba.carray(at(grad_addresses[t], grad_t), sizes[t])
            for i in range(start, stop):
                x = load(grad[i])
                if x - x != 0:
                    bad += 1
        return bad

    return cached(count, "cpu.multi_nonfinite_kernel", grad_kind)
