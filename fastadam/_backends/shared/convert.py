"""float16 / bfloat16 <-> float32, bit-exact, written once for every target.

Numba has no bfloat16 and, on the CPU, no float16, so 16-bit arrays reach the
kernels as uint16 views and these functions convert one element. Encoding
rounds to nearest even, as NumPy and ml_dtypes do. ``make`` compiles them for
a target from two bit casts (float32 <-> uint32) that the target provides.
"""

from __future__ import annotations

import numpy as np

TWO_POW_MINUS_14 = np.float32(2.0**-14)  # the smallest normal float16
HALF = np.float32(0.5)


def make(jit, f32_from_bits, bits_from_f32, compute):
    """``{kind: (load, store)}``: load a stored element as ``compute``, store one back.

    ``jit`` compiles a device/CPU function; ``compute`` is np.float32 or np.float64.
    Float kinds load and store as they are (the array store casts).
    """

    @jit
    def same(x):
        return compute(x)

    @jit
    def keep(x):
        return x

    # Numba widens uint32 arithmetic to 64 bits; the np.uint32(...) around each
    # result tells LLVM that 32 bits suffice, which keeps 8 lanes per vector.

    @jit
    def load_bf16(h):
        return compute(f32_from_bits(np.uint32(np.uint32(h) << np.uint32(16))))

    @jit
    def store_bf16(x):
        x = np.float32(x)
        f = bits_from_f32(x)
        high = np.uint32(f >> np.uint32(16))
        o = np.uint32(f + np.uint32(0x7FFF) + np.uint32(high & np.uint32(1)))
        o = np.uint32(o >> np.uint32(16))
        if x != x:  # NaN stays a quiet NaN (the rounding add could carry it into inf)
            o = np.uint32(high | np.uint32(0x40))
        return np.uint16(o)

    @jit
    def load_f16(h):
        h = np.uint32(h)
        body = np.uint32(np.uint32(h & np.uint32(0x7FFF)) << np.uint32(13))
        exponent = np.uint32(body & np.uint32(0x0F800000))
        body = np.uint32(body + np.uint32(0x38000000))  # rebias: 15 -> 127
        x = f32_from_bits(body)
        if exponent == np.uint32(0x0F800000):  # inf, NaN: all-ones exponent, payload kept
            x = f32_from_bits(np.uint32(body + np.uint32(0x38000000)))
        elif exponent == np.uint32(0):  # zero, subnormal: renormalize without denormals
            x = f32_from_bits(np.uint32(body + np.uint32(0x00800000))) - TWO_POW_MINUS_14
        sign = np.uint32(np.uint32(h & np.uint32(0x8000)) << np.uint32(16))
        return compute(f32_from_bits(np.uint32(bits_from_f32(x) | sign)))

    @jit
    def store_f16(x):
        f = bits_from_f32(np.float32(x))
        sign = np.uint32(f & np.uint32(0x80000000))
        f = np.uint32(f ^ sign)
        if f >= np.uint32(0x47800000):  # too large for float16, inf or NaN
            o = np.uint32(0x7E00) if f > np.uint32(0x7F800000) else np.uint32(0x7C00)
        elif f < np.uint32(0x38800000):  # float16 subnormal or zero: let an add round
            o = np.uint32(bits_from_f32(f32_from_bits(f) + HALF) - np.uint32(0x3F000000))
        else:  # normal: round the mantissa to nearest even, then rebias
            odd = np.uint32(np.uint32(f >> np.uint32(13)) & np.uint32(1))
            o = np.uint32(np.uint32(f - np.uint32(0x37FFF001) + odd) >> np.uint32(13))
        return np.uint16(np.uint32(o | np.uint32(sign >> np.uint32(16))))

    return {
        "float16": (load_f16, store_f16),
        "bfloat16": (load_bf16, store_bf16),
        "float32": (same, keep),
        "float64": (same, keep),
    }
