"""One quantization block of the fused 4-bit Adam step on NVIDIA GPUs, by one warp.

A block of 128 elements is one warp's: each lane holds 4 neighbouring elements
(``4 * lane`` on), whose codes are its own 2 bytes, so that no lane shares a byte. It
loads them all first, decodes m and v (and v_max) through the 16-value maps, runs the
element update of ``_core/element.py`` (torchao's moment formula, ``flags.lerp``),
finds each moment's new scale by a warp shuffle (torchao's: the largest magnitude,
NaN and inf included, at least ``quant4.MIN_SCALE``), and encodes by dividing by the
scale and counting thresholds, as the CPU kernel does, so both give the same codes.
The kernels around it are ``eight_bit.py``'s, which take the format.
"""

from __future__ import annotations

import numpy as np
from numba import cuda

from ..._core import element, quant4
from ..._core.dtypes import compute_dtype
from ..._core.hyper import Flags
from ..shared import pointers
from ..shared.codes import four_bit_counters
from .runtime import (
    bits_from_f32,
    converters,
    device_function,
    f32_from_bits,
    multiply,
    rounding,
)
from .warps import WARP, warp_max_of

BLOCK = quant4.BLOCK
PER_LANE = BLOCK // WARP  # neighbours: two bytes of codes
BYTES = PER_LANE // 2
_MAGNITUDE = np.uint32(0x7FFFFFFF)
_code_m, _code_v = four_bit_counters(device_function)


@device_function
def _magnitude(x):
    return np.int32(bits_from_f32(np.float32(x)) & _MAGNITUDE)


@device_function
def _scale(top):
    value = f32_from_bits(top)
    return value if value >= quant4.MIN_SCALE or value != value else quant4.MIN_SCALE


@device_function
def _nibble(byte, r):
    return byte >> np.uint8(4) if r % 2 == 0 else byte & np.uint8(15)


def warp_step(flags: Flags):
    """``step(b, size, p, g, k, w, m_codes, v_codes, v_max_codes, m_scale, v_scale,
    v_max_scale, m_map, v_map, m_entries, v_entries, tops, *coefficients, noise)`` of
    ``eight_bit._warp_step`` for the 4-bit format: ``p, g, k, w`` start at the block's
    first element, the codes at its first byte; the entries are unused."""
    compute = np.dtype(compute_dtype(flags.param)).type
    update = element.make(device_function, flags, converters(compute_dtype(flags.param)),
                          rounding()[0], multiply(compute_dtype(flags.param)))
    param_t, grad_t = pointers.pointee(flags.param), pointers.pointee(flags.grad)
    amsgrad, kahan, master = flags.amsgrad, flags.kahan, flags.master
    warp_max = warp_max_of(amsgrad)

    @device_function
    def step(b, size, p, g, k, w, m_codes, v_codes, v_max_codes, m_scale, v_scale,
             v_max_scale, m_map, v_map, m_entries, v_entries, tops, coef, noise):
        # Unsigned indices: no negative-index wrap around each access.
        first = np.uint64(cuda.threadIdx.x % WARP) * np.uint64(PER_LANE)
        elements, first_byte = np.uint64(size), first // np.uint64(2)
        p_own = cuda.local.array(PER_LANE, param_t)
        g_own = cuda.local.array(PER_LANE, grad_t)
        k_own = cuda.local.array(PER_LANE, param_t)
        w_own = cuda.local.array(PER_LANE, np.float32)
        m = cuda.local.array(PER_LANE, compute)
        v = cuda.local.array(PER_LANE, compute)
        v_max = cuda.local.array(PER_LANE, compute)
        m_bytes = cuda.local.array(BYTES, np.uint8)
        v_bytes = cuda.local.array(BYTES, np.uint8)
        v_max_bytes = cuda.local.array(BYTES, np.uint8)
        for r in range(PER_LANE):  # every load first
            j = first + np.uint64(r)
            if j < elements:
                g_own[r] = g[j]
                if master:
                    w_own[r] = w[j]
                else:
                    p_own[r] = p[j]
                if kahan:
                    k_own[r] = k[j]
        for q in range(BYTES):
            if first + np.uint64(2 * q) < elements:
                m_bytes[q] = m_codes[first_byte + np.uint64(q)]
                v_bytes[q] = v_codes[first_byte + np.uint64(q)]
                if amsgrad:
                    v_max_bytes[q] = v_max_codes[first_byte + np.uint64(q)]
        old_m, old_v = m_scale[b], v_scale[b]
        old_v_max = v_max_scale[b] if amsgrad else np.float32(0.0)
        top_m, top_v, top_v_max = np.int32(0), np.int32(0), np.int32(0)
        for r in range(PER_LANE):
            if first + np.uint64(r) < elements:
                m[r] = compute(m_map[_nibble(m_bytes[r // 2], r)] * old_m)
                v[r] = compute(v_map[_nibble(v_bytes[r // 2], r)] * old_v)
                if amsgrad:
                    v_max[r] = compute(v_map[_nibble(v_max_bytes[r // 2], r)] * old_v_max)
                update(r, p_own, g_own, m, v, v_max, k_own, w_own, coef, noise,
                       b * BLOCK + np.int64(first))
                top_m = max(top_m, _magnitude(m[r]))
                top_v = max(top_v, _magnitude(v[r]))
                if amsgrad:
                    top_v_max = max(top_v_max, _magnitude(v_max[r]))
        top_m, top_v, top_v_max = warp_max(top_m, top_v, top_v_max, tops)
        new_m, new_v, new_v_max = _scale(top_m), _scale(top_v), _scale(top_v_max)
        if cuda.threadIdx.x % WARP == 0:  # every lane read the old scales before the shuffles
            m_scale[b] = new_m
            v_scale[b] = new_v
            if amsgrad:
                v_max_scale[b] = new_v_max
        for r in range(PER_LANE):
            j = first + np.uint64(r)
            if j < elements:
                p[j] = p_own[r]
                if kahan:
                    k[j] = k_own[r]
                if master:
                    w[j] = w_own[r]
        for q in range(BYTES):
            j = first + np.uint64(2 * q)
            if j < elements:
                byte = first_byte + np.uint64(q)
                high_m = _code_m(np.float32(m[2 * q]) / new_m) << np.uint8(4)
                high_v = _code_v(np.float32(v[2 * q]) / new_v) << np.uint8(4)
                high_v_max = (_code_v(np.float32(v_max[2 * q]) / new_v_max) << np.uint8(4)
                              if amsgrad else np.uint8(0))
                if j + np.uint64(1) < elements:  # else the low nibble stays 0, as on the CPU
                    high_m |= _code_m(np.float32(m[2 * q + 1]) / new_m)
                    high_v |= _code_v(np.float32(v[2 * q + 1]) / new_v)
                    if amsgrad:
                        high_v_max |= _code_v(np.float32(v_max[2 * q + 1]) / new_v_max)
                m_codes[byte] = np.uint8(high_m)
                v_codes[byte] = np.uint8(high_v)
                if amsgrad:
                    v_max_codes[byte] = np.uint8(high_v_max)

    return step

