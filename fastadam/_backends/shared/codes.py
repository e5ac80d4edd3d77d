"""The per-element pieces of the 8-bit kernels (absmax bits, encoding through an
``Encoder`` table), written once and compiled for the CPU and the GPU."""

from __future__ import annotations

import numpy as np

from ..._core.quant8 import KEY_HIGH, KEY_LOW, KEY_SHIFT, KEYS


def element_functions(jit, bits_from_f32) -> tuple:
    """``(magnitude_bits, code)``, the per-element pieces of the 8-bit kernels, compiled
    with ``jit`` (CPU or CUDA) over that target's float32-to-bits cast.

    ``magnitude_bits(x)``: the float32 magnitude bits of a finite ``x``, else 0 (left
    out of absmax; an integer max of them vectorizes). ``code(x, inverse, entries,
    zero, signed)``: the code of ``x * inverse`` through an ``Encoder``'s ``entries``
    and ``zero``; NaN and inf take the code of 0. What ``encode`` computes.
    """
    magnitude, finite_below = np.uint32(0x7FFFFFFF), np.uint32(0x7F800000)
    key_low, key_high = np.uint32(KEY_LOW), np.uint32(KEY_HIGH)
    key_shift, keys = np.uint32(KEY_SHIFT), KEYS
    offset = np.uint32((1 << KEY_SHIFT) - 1)

    @jit
    def magnitude_bits(x):
        bits = np.uint32(bits_from_f32(np.float32(x)) & magnitude)
        return bits if bits < finite_below else np.uint32(0)

    @jit
    def code(x, inverse, entries, zero, signed):
        value = np.float32(x)
        if value - value != 0:
            value = np.float32(0.0)
        bits = np.uint32(bits_from_f32(value * inverse))
        sign = bits >> np.uint32(31)
        clamped = min(max(np.uint32(bits & magnitude), key_low), key_high) - key_low
        entry = entries[np.int64(sign) * keys + np.int64(clamped >> key_shift)]
        position = np.int32(entry & np.uint32(0xFF)) + np.int32(
            (clamped & offset) > (entry >> np.uint32(8)))
        if sign == 0:
            return np.uint8(zero + position)
        if signed:
            return np.uint8(zero - max(position, np.int32(1)))
        return np.uint8(zero)

    return magnitude_bits, code
