"""The fused low-bit Adam step on the CPU (8-bit and 4-bit states): one pass over
memory, block by block.

Per block (256 elements in 8 bits, 128 in 4), while it is in cache: decode m and v
(and v_max) into float scratch, run the element update of ``_core/element.py`` on
them (every option of the 32-bit step), find each moment's new scale, and encode it
against that. Every loop is a plain loop over one block, so each one vectorizes; the
8-bit encoding reads a ``quant8.Encoder`` table (one gather) instead of searching, the
4-bit one counts ``quant4.thresholds`` (compares only).
"""

from __future__ import annotations

from functools import cache

import numba
import numpy as np
from numba import prange

from ..._core import element, quant4, quant8
from ..._core.dtypes import compute_dtype
from ..._core.hyper import Flags
from ..cache import cached
from ..shared.codes import element_functions, four_bit_counters
from .runtime import (
    bits_from_f32,
    coefficient_tuple,
    converters,
    f32_from_bits,
    rounding,
    shares_memory,
)
from .threads import run_parallel

OVERLAP = 1
ELEMENTS_PER_TASK = 1 << 14  # per parallel task: its scratch is allocated once
BLOCK = quant8.BLOCK
FORMATS = ("8bit", "4bit")


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


@numba.njit(inline="always")
def _decode4(codes, table, scale, out, n):
    for k in range(n // 2):
        byte = codes[k]
        out[2 * k] = table[byte >> 4] * scale
        out[2 * k + 1] = table[byte & 15] * scale
    if n & 1:
        out[n - 1] = table[codes[n // 2] >> 4] * scale


@numba.njit(inline="always")
def _decode4_linear(codes, table, scale, out, n):
    # ``_decode4`` for the unsigned linear map, whose values are (code + 1) / 16: the same
    # products (scale / 16 is exact), with no table read.
    unit = scale * np.float32(0.0625)
    for k in range(n // 2):
        byte = codes[k]
        out[2 * k] = np.float32((byte >> 4) + 1) * unit
        out[2 * k + 1] = np.float32((byte & 15) + 1) * unit
    if n & 1:
        out[n - 1] = np.float32((codes[n // 2] >> 4) + 1) * unit


@numba.njit(inline="always")
def _scale4(x, n):
    # torchao's: the largest magnitude (inf, NaN included), at least 1e-12.
    top = np.uint32(0)
    for j in range(n):
        top = max(top, np.uint32(bits_from_f32(np.float32(x[j])) & np.uint32(0x7FFFFFFF)))
    value = f32_from_bits(top)
    return value if value >= quant4.MIN_SCALE or value != value else quant4.MIN_SCALE


def _encoder4(code):
    """``encode(x, n, scale, codes, scratch)`` for one block: each value divided by the
    scale (as torchao divides: a reciprocal would round apart) and counted against the
    thresholds into ``scratch``, then packed two to a byte (the even one high)."""
    @numba.njit(inline="always")
    def encode(x, n, scale, codes, scratch):
        for j in range(n):
            scratch[j] = code(np.float32(x[j]) / scale)
        for k in range(n // 2):
            codes[k] = np.uint8((scratch[2 * k] << np.uint8(4)) | scratch[2 * k + 1])
        if n & 1:
            codes[n // 2] = np.uint8(scratch[n - 1] << np.uint8(4))

    return encode


def _codec(fmt: str) -> tuple:
    """``(block, per_byte, decode_m, decode_v, scale, encode_m, encode_v)`` of a state
    format, the encoders' tables or thresholds compiled in."""
    if fmt == "4bit":
        code_m, code_v = four_bit_counters(numba.njit(inline="always"))
        linear = np.array_equal(quant4.qmap(False), np.arange(1, 17, dtype=np.float32) / 16)
        return (quant4.BLOCK, 2, _decode4, _decode4_linear if linear else _decode4, _scale4,
                _encoder4(code_m), _encoder4(code_v))
    signed, unsigned = quant8.encoder(True), quant8.encoder(False)
    m_entries, m_zero = signed.entries, np.int32(signed.zero)
    v_entries, v_zero = unsigned.entries, np.int32(unsigned.zero)

    @numba.njit(inline="always")
    def encode_m8(x, n, scale, codes, scratch):
        _encode(x, n, scale, codes, m_entries, m_zero, True)

    @numba.njit(inline="always")
    def encode_v8(x, n, scale, codes, scratch):
        _encode(x, n, scale, codes, v_entries, v_zero, False)

    return quant8.BLOCK, 1, _decode, _decode, _absmax, encode_m8, encode_v8


@cache
def fused_kernel(flags: Flags, fmt: str = "8bit"):
    """The compiled kernel ``(param, grad, m_codes, v_codes, v_max_codes, m_absmax,
    v_absmax, v_max_absmax, comp, master, coef, m_map, v_map) -> 0`` for the state format
    ``fmt`` ("8bit": one code per byte, absmax per 256; "4bit": two per byte, scale per
    128).

    Arrays are 1-D kernel views (16-bit ones as uint16); unused ones (v_max, comp,
    master) may be placeholders. ``flags.state`` is the compute kind the moments are
    decoded to. ``m_map``, ``v_map``: the format's maps (``dynamic_map`` or ``qmap``),
    arguments so that decoding reads them one value at a time (faster on Zen 4 than a
    gather); the encoder tables are compiled in. Returns ``OVERLAP``, changing nothing,
    if grad shares memory with an array the step writes.
    """
    update = element.make(numba.njit(inline="always"), flags,
                           converters(compute_dtype(flags.param)), rounding())
    compute = np.dtype(compute_dtype(flags.param)).type
    amsgrad = flags.amsgrad
    block, per_byte, decode_m, decode_v, scale_of, encode_m, encode_v = _codec(fmt)
    blocks_per_task = ELEMENTS_PER_TASK // block

    @numba.njit(parallel=True, nogil=True)
    def kernel(param, grad, m_codes, v_codes, v_max_codes, m_absmax, v_absmax, v_max_absmax,
               comp, master, coef, m_map, v_map, noise):
        if (shares_memory(grad, param) or shares_memory(grad, m_codes)
                or shares_memory(grad, v_codes)
                or shares_memory(grad, v_max_codes) or shares_memory(grad, m_absmax)
                or shares_memory(grad, v_absmax) or shares_memory(grad, v_max_absmax)
                or shares_memory(grad, comp) or shares_memory(grad, master)):
            return OVERLAP
        c = coefficient_tuple(coef)
        n = param.size
        n_blocks = (n + block - 1) // block
        tasks = (n_blocks + blocks_per_task - 1) // blocks_per_task
        for task in prange(tasks):
            m = np.empty(block, compute)
            v = np.empty(block, compute)
            v_max = np.empty(block if amsgrad else 1, compute)
            scratch = np.empty(block, np.uint8)  # a block's codes, before packing
            for b in range(task * blocks_per_task, min((task + 1) * blocks_per_task, n_blocks)):
                s = b * block
                e = min(s + block, n)
                size = e - s
                cs, ce = s // per_byte, (e + per_byte - 1) // per_byte  # the block's bytes
                decode_m(m_codes[cs:ce], m_map, m_absmax[b], m, size)
                decode_v(v_codes[cs:ce], v_map, v_absmax[b], v, size)
                if amsgrad:
                    decode_v(v_max_codes[cs:ce], v_map, v_max_absmax[b], v_max, size)
                p, g = param[s:e], grad[s:e]
                k, w = comp[s:e], master[s:e]
                for j in range(size):
                    update(j, p, g, m, v, v_max, k, w, c, noise, s)
                top = scale_of(m, size)
                m_absmax[b] = top
                encode_m(m, size, top, m_codes[cs:ce], scratch)
                top = scale_of(v, size)
                v_absmax[b] = top
                encode_v(v, size, top, v_codes[cs:ce], scratch)
                if amsgrad:
                    top = scale_of(v_max, size)
                    v_max_absmax[b] = top
                    encode_v(v_max, size, top, v_max_codes[cs:ce], scratch)
        return 0

    return cached(kernel, "cpu.eight_bit.fused_kernel", flags, fmt)


def adam_step_8bit_cpu(arrays: tuple, flags: Flags, coef: np.ndarray,
                       num_threads: int | None, noise: int = 0, fmt: str = "8bit") -> None:
    """Run the kernel on checked kernel views ``(param, grad, m_codes, v_codes,
    v_max_codes, m_absmax, v_absmax, v_max_absmax, comp, master)``; ``noise``: the
    params' random noise at this step, for stochastic rounding; ``fmt``: the format."""
    maps = ((quant4.qmap(True), quant4.qmap(False)) if fmt == "4bit"
            else (quant8.dynamic_map(True), quant8.dynamic_map(False)))
    if run_parallel(num_threads, arrays[0].size, fused_kernel(flags, fmt), *arrays, coef,
                    *maps, np.uint32(noise)) == OVERLAP:
        raise ValueError("grad overlaps an array the step writes")  # checked before: a bug
