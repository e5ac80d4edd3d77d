"""float16 / bfloat16 <-> float32, bit-exact, written once for every target.

Numba has no bfloat16 and, on the CPU, no float16, so 16-bit arrays reach the
kernels as uint16 views and these functions convert one element. Encoding
rounds to nearest even, as NumPy and ml_dtypes do. ``make`` compiles them for
a target from two bit casts (float32 <-> uint32) that the target provides.
"""

from __future__ import annotations

import numpy as np

TWO_POW_112 = np.float32(2.0**112)  # float16 exponent bias 15 -> float32 bias 127
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

    @jit
    def load_bf16(h):
        return compute(f32_from_bits(np.uint32(h) << np.uint32(16)))

    @jit
    def store_bf16(x):
        f = bits_from_f32(np.float32(x))
        if (f & np.uint32(0x7FFFFFFF)) > np.uint32(0x7F800000):  # NaN stays a quiet NaN
            return np.uint16((f >> np.uint32(16)) | np.uint32(0x40))
        return np.uint16((f + np.uint32(0x7FFF) + ((f >> np.uint32(16)) & np.uint32(1)))
                         >> np.uint32(16))

    @jit
    def load_f16(h):
        h = np.uint32(h)
        body = (h & np.uint32(0x7FFF)) << np.uint32(13)
        # Rebias by a multiply: exact for normals and subnormals alike.
        x = f32_from_bits(body) * TWO_POW_112
        if body >= np.uint32(0x0F800000):  # inf, NaN: keep the payload
            x = f32_from_bits(body | np.uint32(0x7F800000))
        sign = (h & np.uint32(0x8000)) << np.uint32(16)
        return compute(f32_from_bits(bits_from_f32(x) | sign))

    @jit
    def store_f16(x):
        f = bits_from_f32(np.float32(x))
        sign = f & np.uint32(0x80000000)
        f = f ^ sign
        if f >= np.uint32(0x47800000):  # too large for float16, inf or NaN
            o = np.uint32(0x7E00) if f > np.uint32(0x7F800000) else np.uint32(0x7C00)
        elif f < np.uint32(0x38800000):  # float16 subnormal or zero: let an add round
            o = bits_from_f32(f32_from_bits(f) + HALF) - np.uint32(0x3F000000)
        else:  # normal: round the mantissa to nearest even, then rebias
            odd = (f >> np.uint32(13)) & np.uint32(1)
            o = (f - np.uint32(0x37FFF001) + odd) >> np.uint32(13)
        return np.uint16(o | (sign >> np.uint32(16)))

    return {
        "float16": (load_f16, store_f16),
        "bfloat16": (load_bf16, store_bf16),
        "float32": (same, keep),
        "float64": (same, keep),
    }
