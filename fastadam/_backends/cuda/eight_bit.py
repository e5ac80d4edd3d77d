"""The fused low-bit Adam step on NVIDIA GPUs: one warp per quantization block (8-bit
here, 4-bit in ``four_bit.py``, both launched by the kernels here).

A block of 256 elements is one warp's: each lane holds 8 of its elements (``lane``,
``lane + 32``, ...) in registers. A lane first issues every load of its elements
(params, gradients, codes), so a warp keeps 8 of each in flight; then it decodes m
and v (and v_max), runs the element update of ``_core/element.py``, finds each
moment's new absmax by a warp shuffle on the magnitude bits (no shared memory, no
barrier), and encodes against it through the same ``quant8.Encoder`` table as the
CPU kernel, so both give the same codes. A thread block is ``WARPS`` warps (blocks).
One launch per array, or per batch of arrays (``multi_kernel``: a warp per
quantization block of any of them, the arrays found through a table of addresses).
"""

from __future__ import annotations

from functools import cache

import numpy as np
from numba import cuda

from ..._core import element, quant4, quant8
from ..._core.dtypes import compute_dtype
from ..._core.hyper import Flags
from ..shared import pointers
from ..shared.codes import element_functions
from . import four_bit
from .dense import counted_coefficients, counted_scalars
from .runtime import (
    MAX_BLOCKS,
    bits_from_f32,
    cached,
    converters,
    device_function,
    f32_from_bits,
    forget,
    multiply,
    pointer_at,
    pointer_from,
    rounding,
)
from .warps import THREADS, WARP, WARPS, warp_max_of

BLOCK = quant8.BLOCK
PER_LANE = BLOCK // WARP
_magnitude_bits, _code = element_functions(device_function, bits_from_f32)


def _inverse(absmax):
    return np.float32(1.0) / absmax if absmax > 0 else np.float32(0.0)


_inverse = device_function(_inverse)


def _warp_step(flags: Flags):
    """``step(b, size, p, g, k, w, m_codes, v_codes, v_max_codes, m_absmax, v_absmax,
    v_max_absmax, m_map, v_map, m_entries, v_entries, tops, *coefficients, noise)``:
    quantization block ``b`` of one array, by one warp. ``p, g, k, w`` and the codes
    start at the block's first element (``size`` of them); the absmax arrays are the
    array's; ``tops`` the thread block's shared scratch (simulator only)."""
    compute = np.dtype(compute_dtype(flags.param)).type
    update = element.make(device_function, flags, converters(compute_dtype(flags.param)),
                          rounding()[0], multiply(compute_dtype(flags.param)), stride=WARP)
    param_t, grad_t = pointers.pointee(flags.param), pointers.pointee(flags.grad)
    amsgrad, kahan, master = flags.amsgrad, flags.kahan, flags.master
    warp_max = warp_max_of(amsgrad)
    m_zero = np.int32(quant8.encoder(True).zero)
    v_zero = np.int32(quant8.encoder(False).zero)

    @device_function
    def step(b, size, p, g, k, w, m_codes, v_codes, v_max_codes, m_absmax, v_absmax,
             v_max_absmax, m_map, v_map, m_entries, v_entries, tops, coef, noise):
        # Unsigned indices: no negative-index wrap around each access.
        lane, elements = np.uint64(cuda.threadIdx.x % WARP), np.uint64(size)
        p_own = cuda.local.array(PER_LANE, param_t)
        g_own = cuda.local.array(PER_LANE, grad_t)
        k_own = cuda.local.array(PER_LANE, param_t)
        w_own = cuda.local.array(PER_LANE, np.float32)
        m = cuda.local.array(PER_LANE, compute)
        v = cuda.local.array(PER_LANE, compute)
        v_max = cuda.local.array(PER_LANE, compute)
        m_codes_own = cuda.local.array(PER_LANE, np.uint8)
        v_codes_own = cuda.local.array(PER_LANE, np.uint8)
        v_max_codes_own = cuda.local.array(PER_LANE, np.uint8)
        for r in range(PER_LANE):  # every load first: 8 of each in flight per lane
            j = lane + np.uint64(r * WARP)
            if j < elements:
                g_own[r] = g[j]
                if master:
                    w_own[r] = w[j]
                else:
                    p_own[r] = p[j]
                if kahan:
                    k_own[r] = k[j]
                m_codes_own[r] = m_codes[j]
                v_codes_own[r] = v_codes[j]
                if amsgrad:
                    v_max_codes_own[r] = v_max_codes[j]
        m_scale, v_scale = m_absmax[b], v_absmax[b]
        v_max_scale = v_max_absmax[b] if amsgrad else np.float32(0.0)
        top_m, top_v, top_v_max = np.int32(0), np.int32(0), np.int32(0)
        for r in range(PER_LANE):
            if lane + np.uint64(r * WARP) < elements:
                m[r] = compute(m_map[m_codes_own[r]] * m_scale)
                v[r] = compute(v_map[v_codes_own[r]] * v_scale)
                if amsgrad:
                    v_max[r] = compute(v_map[v_max_codes_own[r]] * v_max_scale)
                update(r, p_own, g_own, m, v, v_max, k_own, w_own, coef, noise,
                       b * BLOCK + np.int64(lane))
                top_m = max(top_m, np.int32(_magnitude_bits(m[r])))
                top_v = max(top_v, np.int32(_magnitude_bits(v[r])))
                if amsgrad:
                    top_v_max = max(top_v_max, np.int32(_magnitude_bits(v_max[r])))
        top_m, top_v, top_v_max = warp_max(top_m, top_v, top_v_max, tops)
        new_m, new_v = f32_from_bits(top_m), f32_from_bits(top_v)
        new_v_max = f32_from_bits(top_v_max)
        if lane == 0:  # every lane read the old absmax before the shuffles
            m_absmax[b] = new_m
            v_absmax[b] = new_v
            if amsgrad:
                v_max_absmax[b] = new_v_max
        inv_m, inv_v, inv_v_max = _inverse(new_m), _inverse(new_v), _inverse(new_v_max)
        for r in range(PER_LANE):
            j = lane + np.uint64(r * WARP)
            if j < elements:
                p[j] = p_own[r]
                if kahan:
                    k[j] = k_own[r]
                if master:
                    w[j] = w_own[r]
                m_codes[j] = _code(m[r], inv_m, m_entries, m_zero, True)
                v_codes[j] = _code(v[r], inv_v, v_entries, v_zero, False)
                if amsgrad:
                    v_max_codes[j] = _code(v_max[r], inv_v_max, v_entries, v_zero, False)

    return step


def _format(flags: Flags, fmt: str) -> tuple:
    """``(warp_step, block, per_byte)`` of the state format ``fmt``."""
    if fmt == "4bit":
        return four_bit.warp_step(flags), quant4.BLOCK, 2
    return _warp_step(flags), BLOCK, 1


@cache
def fused_kernel(flags: Flags, counted: bool = False, fmt: str = "8bit"):
    """The kernel ``(param, grad, m_codes, v_codes, v_max_codes, m_absmax, v_absmax,
    v_max_absmax, comp, master, m_map, v_map, m_entries, v_entries, coef, key, step)`` for
    the state format ``fmt`` (a warp per quantization block: ``_warp_step``, or
    ``four_bit.warp_step``), launched with ``THREADS`` threads per block (see
    ``cpu/eight_bit.fused_kernel``).

    ``counted``: as ``dense.fused_kernel(flags, True)``, the step count lives on the
    device: ``(..., v_entries, count, found, inv_scale, host, terms, key)``, and nothing
    changes when ``found[0]`` is set.
    """
    warp_step, block, per_byte = _format(flags, fmt)
    noise_of = rounding()[1]

    @cuda.jit(device=True, inline="always")
    def run(param, grad, m_codes, v_codes, v_max_codes, m_absmax, v_absmax, v_max_absmax,
            comp, master, m_map, v_map, m_entries, v_entries, coef, key, step):
        noise = noise_of(key, step)
        tops = cuda.shared.array(3, np.int32)
        n = param.size
        b = cuda.blockIdx.x * WARPS + cuda.threadIdx.x // WARP
        while b < (n + block - 1) // block:
            s = b * block
            e = min(s + block, n)
            cs, ce = s // per_byte, (e + per_byte - 1) // per_byte  # the block's bytes
            warp_step(b, e - s, param[s:e], grad[s:e], comp[s:e], master[s:e], m_codes[cs:ce],
                      v_codes[cs:ce], v_max_codes[cs:ce], m_absmax, v_absmax, v_max_absmax, m_map,
                      v_map, m_entries, v_entries, tops, coef, noise)
            b += cuda.gridDim.x * WARPS

    if not counted:
        @cuda.jit
        def kernel(param, grad, m_codes, v_codes, v_max_codes, m_absmax, v_absmax,
                   v_max_absmax, comp, master, m_map, v_map, m_entries, v_entries, coef, key,
                   step):
            run(param, grad, m_codes, v_codes, v_max_codes, m_absmax, v_absmax, v_max_absmax,
                comp, master, m_map, v_map, m_entries, v_entries, coef, key, step)

        return cached(kernel, "cuda.eight_bit.fused_kernel", flags, counted, fmt)

    coefficients = counted_coefficients(flags)

    @cuda.jit
    def counted_kernel(param, grad, m_codes, v_codes, v_max_codes, m_absmax, v_absmax,
                       v_max_absmax, comp, master, m_map, v_map, m_entries, v_entries, count,
                       found, inv_scale, host, terms, key):
        if found[0] != 0:
            return
        coef = coefficients(count, inv_scale, host, terms)
        run(param, grad, m_codes, v_codes, v_max_codes, m_absmax, v_absmax, v_max_absmax, comp,
            master, m_map, v_map, m_entries, v_entries, coef, key, count[0] + 1)

    return cached(counted_kernel, "cuda.eight_bit.fused_kernel", flags, counted, fmt)


@cache
def multi_kernel(flags: Flags, counted: bool = False, fmt: str = "8bit"):
    """One launch over a batch of arrays of one option set, dtypes and state format: a
    warp per quantization block of any of them.

    ``kernel(tables, grads, firsts, sizes, m_map, v_map, m_entries, v_entries,
    coef, keys, step)``: ``tables`` rows hold the device addresses of (param, m_codes,
    v_codes, v_max_codes, m_absmax, v_absmax, v_max_absmax, comp, master) per array
    (unused ones any valid address), ``grads`` the gradients' addresses, ``firsts`` the
    first quantization block of each array in the batch's numbering, then their total,
    ``sizes`` the arrays' element counts. ``counted``: as ``fused_kernel``'s.
    """
    warp_step, quant_block, per_byte = _format(flags, fmt)
    noise_of = rounding()[1]
    param_t, grad_t = pointers.pointee(flags.param), pointers.pointee(flags.grad)
    param_size, grad_size = np.dtype(param_t).itemsize, np.dtype(grad_t).itemsize

    @cuda.jit(device=True, inline="always")
    def run(tables, grads, firsts, sizes, m_map, v_map, m_entries, v_entries, coef, keys,
            step):
        tops = cuda.shared.array(3, np.int32)
        last = firsts.size - 1
        block = cuda.blockIdx.x * WARPS + cuda.threadIdx.x // WARP
        while block < firsts[last]:
            low, high = 0, last  # the array: firsts[low] <= block < firsts[low + 1]
            while high - low > 1:
                middle = (low + high) // 2
                if firsts[middle] <= block:
                    low = middle
                else:
                    high = middle
            a = low
            noise = noise_of(keys[a], step)
            b = block - firsts[a]
            s = b * quant_block
            warp_step(b, min(quant_block, sizes[a] - s),
                      pointer_from(tables[0, a], s, param_size, param_t),
                      pointer_from(grads[a], s, grad_size, grad_t),
                      pointer_from(tables[7, a], s, param_size, param_t),
                      pointer_from(tables[8, a], s, 4, np.float32),
                      pointer_from(tables[1, a], s // per_byte, 1, np.uint8),
                      pointer_from(tables[2, a], s // per_byte, 1, np.uint8),
                      pointer_from(tables[3, a], s // per_byte, 1, np.uint8),
                      pointer_at(tables[4, a], np.float32), pointer_at(tables[5, a], np.float32),
                      pointer_at(tables[6, a], np.float32), m_map, v_map, m_entries, v_entries,
                      tops, coef, noise)
            block += cuda.gridDim.x * WARPS

    if not counted:
        @cuda.jit
        def kernel(tables, grads, firsts, sizes, m_map, v_map, m_entries, v_entries, coef, keys,
                   step):
            run(tables, grads, firsts, sizes, m_map, v_map, m_entries, v_entries, coef, keys,
                step)

        return cached(kernel, "cuda.eight_bit.multi_kernel", flags, counted, fmt)

    coefficients = counted_coefficients(flags)

    @cuda.jit
    def counted_kernel(tables, grads, firsts, sizes, m_map, v_map, m_entries, v_entries,
                       count, found, inv_scale, host, terms, keys):
        if found[0] != 0:
            return
        coef = coefficients(count, inv_scale, host, terms)
        run(tables, grads, firsts, sizes, m_map, v_map, m_entries, v_entries, coef, keys,
            count[0] + 1)

    return cached(counted_kernel, "cuda.eight_bit.multi_kernel", flags, counted, fmt)


@cache
def tables(fmt: str = "8bit") -> tuple:
    """The maps and encoder tables on the device, in the kernel's argument order (4-bit
    encodes by compares: its maps stand in for the tables)."""
    if fmt == "4bit":
        maps = (quant4.qmap(True), quant4.qmap(False))
        return tuple(cuda.to_device(np.array(a)) for a in (*maps, *maps))
    return tuple(cuda.to_device(np.array(a)) for a in (
        quant8.dynamic_map(True), quant8.dynamic_map(False), quant8.encoder(True).entries,
        quant8.encoder(False).entries))


def quantization_blocks(n: int, fmt: str) -> int:
    """The quantization blocks (a warp each) of ``n`` elements in format ``fmt``."""
    return quant4.blocks(n) if fmt == "4bit" else quant8.blocks(n)


def _grid(blocks: int) -> int:
    """Thread blocks for ``blocks`` quantization blocks (a warp each)."""
    return max(1, min(-(-blocks // WARPS), MAX_BLOCKS))


def adam_step_8bit_cuda(arrays: tuple, flags: Flags, coefficients: tuple, stream,
                        key: int = 0, step: int = 0, fmt: str = "8bit") -> None:
    """Launch the kernel once on checked kernel views ``(param, grad, m_codes, v_codes,
    v_max_codes, m_absmax, v_absmax, v_max_absmax, comp, master)`` in format ``fmt``."""
    scalar = np.dtype(compute_dtype(flags.param)).type
    grid = _grid(quantization_blocks(arrays[0].size, fmt))
    fused_kernel(flags, False, fmt)[grid, THREADS, stream](
        *arrays, *tables(fmt), tuple(scalar(c) for c in coefficients), np.uint32(key),
        np.int64(step))


def adam_step_8bit_cuda_counted(arrays: tuple, flags: Flags, h, steps, stream,
                                key: int = 0, fmt: str = "8bit") -> None:
    """``adam_step_8bit_cuda`` with the step count, skip flag and gradients' multiplier of
    ``steps`` on the device."""
    grid = _grid(quantization_blocks(arrays[0].size, fmt))
    fused_kernel(flags, True, fmt)[grid, THREADS, stream](
        *arrays, *tables(fmt), steps.count, steps.found, steps.inv_scale,
        *counted_scalars(flags, h), np.uint32(key))


def adam_step_8bit_cuda_many(batch, grad_addresses: np.ndarray, flags: Flags,
                             coefficients: tuple, stream, steps=None, h=None,
                             step: int = 0) -> None:
    """Launch ``multi_kernel`` once over a batch (``batches.DeviceBatch8bit``: its tables
    on the device); the gradients' addresses go there through ``batch.grads``. With
    ``steps``, the counted kernel (``coefficients`` unused, as in ``dense``)."""
    launch = (_grid(batch.blocks), THREADS, stream)
    arrays = (batch.tables, batch.grads.send(grad_addresses, stream), batch.firsts,
              batch.sizes, *tables(batch.fmt))
    if steps is None:
        scalar = np.dtype(compute_dtype(flags.param)).type
        multi_kernel(flags, False, batch.fmt)[launch](
            *arrays, tuple(scalar(c) for c in coefficients), batch.keys, np.int64(step))
    else:
        multi_kernel(flags, True, batch.fmt)[launch](
            *arrays, steps.count, steps.found, steps.inv_scale, *counted_scalars(flags, h),
            batch.keys)
    forget(grad_addresses)
