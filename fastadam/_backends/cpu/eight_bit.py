"""The fused 8-bit Adam step on the CPU: one pass over memory, block by block.

Per block of 256 elements, while it is in cache: decode m and v (and v_max) into
float scratch, run the element update of ``shared/element.py`` on them (every option
of the 32-bit step), find each moment's new absmax, and encode it against that.
Every loop is a plain loop over one block, so each one vectorizes; the encoding
reads a ``quant8.Encoder`` table (one gather) instead of searching.
"""

from __future__ import annotations

from functools import cache

import numba
import numpy as np
from numba import prange

from ..._core import quant8
from ..._core.dtypes import compute_dtype
from ..._core.hyper import Flags
from ..cache import cached
from ..shared import element
from ..shared.codes import element_functions
from .runtime import (
    bits_from_f32,
    converters,
    f32_from_bits,
    rounding,
    shares_memory,
)
from .threads import run_parallel

OVERLAP = 1
BLOCKS_PER_TASK = 64  # 16K elements per parallel task: its scratch is allocated once
BLOCK = quant8.BLOCK


@numba.njit(inline="always")
def _decode(codes, table, absmax, out, n):
    for j in range(n):
        out[j] = table[codes[j]] * absmax


_magnitude_bits, _code = element_functions(numba.njit(inline="always"), bits_from_f32)


@numba.njit(inline="always")
def _absmax(x, n):
    # The largest finite magnitude, on the bits: an integer max vectorizes.
    top = np.uint32(0)
    for j in range(n):
        top = max(top, _magnitude_bits(x[j]))
    return f32_from_bits(top)


@numba.njit(inline="always")
def _encode(x, n, absmax, codes, entries, zero, signed):
    # ``entries`` is a compile-time constant: LLVM then reads it with a gather.
    inverse = np.float32(1.0) / absmax if absmax > 0 else np.float32(0.0)
    for j in range(n):
        codes[j] = _code(x[j], inverse, entries, zero, signed)


@cache
def fused_kernel(flags: Flags):
    """The compiled kernel ``(param, grad, m_codes, v_codes, v_max_codes, m_absmax,
    v_absmax, v_max_absmax, comp, master, coef, m_map, v_map) -> 0``.

    Arrays are 1-D kernel views (16-bit ones as uint16); unused ones (v_max, comp,
    master) may be placeholders. ``flags.state`` is the compute kind the moments are
    decoded to. ``m_map``, ``v_map``: ``quant8.dynamic_map(True/False)``, arguments
    so that decoding reads them one value at a time (faster on Zen 4 than a gather);
    the encoder tables are compiled in, so that encoding reads them with a gather.
    Returns ``OVERLAP``, changing nothing, if grad shares memory with an array the
    step writes.
    """
    update = element.make(numba.njit(inline="always"), flags,
                           converters(compute_dtype(flags.param)), rounding())
    compute = np.dtype(compute_dtype(flags.param)).type
    amsgrad = flags.amsgrad
    signed, unsigned = quant8.encoder(True), quant8.encoder(False)
    m_entries, m_zero = signed.entries, np.int32(signed.zero)
    v_entries, v_zero = unsigned.entries, np.int32(unsigned.zero)

    @numba.njit(parallel=True, nogil=True)
    def kernel(param, grad, m_codes, v_codes, v_max_codes, m_absmax, v_absmax, v_max_absmax,
               comp, master, coef, m_map, v_map, noise):
        if (shares_memory(grad, param) or shares_memory(grad, m_codes)
                or shares_memory(grad, v_codes)
                or shares_memory(grad, v_max_codes) or shares_memory(grad, m_absmax)
                or shares_memory(grad, v_absmax) or shares_memory(grad, v_max_absmax)
                or shares_memory(grad, comp) or shares_memory(grad, master)):
            return OVERLAP
        c0, c1, c2, c3, c4, c5 = coef[0], coef[1], coef[2], coef[3], coef[4], coef[5]
        c6, c7, c8, c9, c10 = coef[6], coef[7], coef[8], coef[9], coef[10]
        n = param.size
        n_blocks = (n + BLOCK - 1) // BLOCK
        tasks = (n_blocks + BLOCKS_PER_TASK - 1) // BLOCKS_PER_TASK
        for task in prange(tasks):
            m = np.empty(BLOCK, compute)
            v = np.empty(BLOCK, compute)
            v_max = np.empty(BLOCK if amsgrad else 1, compute)
            for b in range(task * BLOCKS_PER_TASK, min((task + 1) * BLOCKS_PER_TASK, n_blocks)):
                s = b * BLOCK
                e = min(s + BLOCK, n)
                size = e - s
                _decode(m_codes[s:e], m_map, m_absmax[b], m, size)
                _decode(v_codes[s:e], v_map, v_absmax[b], v, size)
                if amsgrad:
                    _decode(v_max_codes[s:e], v_map, v_max_absmax[b], v_max, size)
                p, g = param[s:e], grad[s:e]
                k, w = comp[s:e], master[s:e]
                for j in range(size):
                    update(j, p, g, m, v, v_max, k, w, c0, c1, c2, c3, c4, c5, c6, c7, c8, c9,
                           c10, noise, s)
                top = _absmax(m, size)
                m_absmax[b] = top
                _encode(m, size, top, m_codes[s:e], m_entries, m_zero, True)
                top = _absmax(v, size)
                v_absmax[b] = top
                _encode(v, size, top, v_codes[s:e], v_entries, v_zero, False)
                if amsgrad:
                    top = _absmax(v_max, size)
                    v_max_absmax[b] = top
                    _encode(v_max, size, top, v_max_codes[s:e], v_entries, v_zero,
                            False)
        return 0

    return cached(kernel, "cpu.eight_bit.fused_kernel", flags)


def adam_step_8bit_cpu(arrays: tuple, flags: Flags, coef: np.ndarray,
                       num_threads: int | None, noise: int = 0) -> None:
    """Run the kernel on checked kernel views ``(param, grad, m_codes, v_codes,
    v_max_codes, m_absmax, v_absmax, v_max_absmax, comp, master)``; ``noise``: the
    params' random noise at this step, for stochastic rounding."""
    if run_parallel(num_threads, arrays[0].size, fused_kernel(flags), *arrays, coef,
                    quant8.dynamic_map(True), quant8.dynamic_map(False),
                    np.uint32(noise)) == OVERLAP:
        raise ValueError("grad overlaps an array the step writes")  # checked before: a bug
