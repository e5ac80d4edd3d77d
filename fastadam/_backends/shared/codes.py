"""The per-element pieces of the low-bit kernels (8-bit: absmax bits, encoding through
an ``Encoder`` table; 4-bit: encoding by compares), written once and compiled for the
CPU and the GPU."""

from __future__ import annotations

import numpy as np

from ..._core import quant4
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


def _counter(jit, thresholds: np.ndarray):
    """``code(value)``: how many of ``thresholds`` are at or below ``value``, as one
    expression of compiled-in constants (a loop over an array of them stays a loop)."""
    terms = " + ".join(f"np.uint8(value >= np.float32({float(t)!r}))" for t in thresholds)
    scope = {"np": np}
    exec(f"def code(value):\n    return np.uint8({terms})\n", scope)
    return jit(scope["code"])


def _linear_counter(jit, thresholds: np.ndarray):
    """``_counter`` for thresholds at (c + 1.5) / 16 (the unsigned linear map's): the count
    is floor(16 * value - 0.5), clamped to [0, 15], NaN 0; exact, since 16 * value and the
    subtraction round nothing for values up to 1 (and the clamp covers the rest)."""
    if not np.array_equal(thresholds, (np.arange(15, dtype=np.float32) + np.float32(1.5))
                          / np.float32(16)):
        return _counter(jit, thresholds)

    @jit
    def code(value):
        if not value >= np.float32(0.09375):  # below the first threshold, or NaN
            return np.uint8(0)
        if value >= np.float32(1.0):
            return np.uint8(15)
        return np.uint8(np.int32(value * np.float32(16.0) - np.float32(0.5)))

    return code


def four_bit_counters(jit) -> tuple:
    """``(code_m, code_v)``: the 4-bit codes of a normalized moment value (m signed, v
    unsigned; ``quant4.thresholds``), by compares only, compiled with ``jit``."""
    return (_counter(jit, quant4.thresholds(True)),
            _linear_counter(jit, quant4.thresholds(False)))
