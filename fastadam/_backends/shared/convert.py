"""float16 / bfloat16 <-> float32, bit-exact, written once for every target.

Numba has no bfloat16 and, on the CPU, no float16, so 16-bit arrays reach the
kernels as uint16 views and these functions convert one element. Encoding
rounds to nearest even, as NumPy and ml_dtypes do. ``make`` compiles them for
a target from two bit casts (float32 <-> uint32) that the target provides.
"""

from __future__ import annotations

import math

import numpy as np

TWO_POW_MINUS_14 = np.float32(2.0**-14)  # the smallest normal float16
TWO_POW_24 = np.float32(2.0**24)
TWO_POW_MINUS_24 = np.float32(2.0**-24)
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


def make_stochastic(jit, f32_from_bits, bits_from_f32, store_rne):
    """``{kind: store(x, r)}`` for the 16-bit kinds: ``x`` rounded to one of its two
    neighbours with probability proportional to its distance from the other, ``r`` a
    uniform uint32. bfloat16: the 16 low bits of a float32 plus ``r``'s 16 low bits,
    truncated. float16: its 13 dropped bits likewise where float16 is normal; in the
    subnormal range, ``x`` in units of 2**-24 rounded down or up by ``r``'s 24 high bits.
    NaN and inf (and float16's overflow) round to nearest: ``store_rne[kind]``."""
    rne_bf16, rne_f16 = store_rne["bfloat16"], store_rne["float16"]

    @jit
    def store_bf16(x, r):
        f = bits_from_f32(np.float32(x))
        if np.uint32(f & np.uint32(0x7F800000)) == np.uint32(0x7F800000):
            return rne_bf16(x)
        return np.uint16(np.uint32(np.uint32(f + np.uint32(r & np.uint32(0xFFFF)))
                                   >> np.uint32(16)))

    @jit
    def store_f16(x, r):
        f = bits_from_f32(np.float32(x))
        sign = np.uint32(f & np.uint32(0x80000000))
        f = np.uint32(f ^ sign)
        if f >= np.uint32(0x47800000):  # too large for float16, inf or NaN
            return rne_f16(x)
        if f < np.uint32(0x38800000):  # subnormal: whole units of 2**-24 (exact products)
            units = f32_from_bits(f) * TWO_POW_24
            low = np.float32(math.floor(units))
            up = np.float32(np.uint32(r >> np.uint32(8))) * TWO_POW_MINUS_24 < units - low
            o = np.uint32(np.uint32(low) + np.uint32(up))
        else:
            o = np.uint32(np.uint32(f - np.uint32(0x38000000) + np.uint32(r & np.uint32(0x1FFF)))
                          >> np.uint32(13))
        return np.uint16(np.uint32(o | np.uint32(sign >> np.uint32(16))))

    return {"bfloat16": store_bf16, "float16": store_f16}


GOLDEN = 0x9E3779B1


def mix32(x: int) -> int:
    """murmur3's 32-bit finalizer, on the host (``make_random``'s ``mix`` on the targets)."""
    x ^= x >> 16
    x = (x * 0x85EBCA6B) & 0xFFFFFFFF
    x ^= x >> 13
    x = (x * 0xC2B2AE35) & 0xFFFFFFFF
    return x ^ (x >> 16)


def rounding_key(seed: int, index: int) -> int:
    """The rounding key of params array ``index`` under ``seed``: distinct arrays draw
    unrelated bits at the same step and element."""
    return mix32((mix32(seed & 0xFFFFFFFF) ^ mix32((seed >> 32) & 0xFFFFFFFF)
                  ^ (index * 0x85EBCA77)) & 0xFFFFFFFF)


def noise_of(key: int, step: int) -> int:
    """The noise of one array at one step (host side): ``make_random``'s ``noise``."""
    return mix32((key ^ (step * GOLDEN)) & 0xFFFFFFFF)


def mix32_array(x: np.ndarray) -> np.ndarray:
    """``mix32`` on a uint32 array."""
    x = x ^ (x >> np.uint32(16))
    x = x * np.uint32(0x85EBCA6B)
    x = x ^ (x >> np.uint32(13))
    x = x * np.uint32(0xC2B2AE35)
    return x ^ (x >> np.uint32(16))


def noises_of(keys: np.ndarray, step: int) -> np.ndarray:
    """``noise_of`` for a uint32 array of keys at one step."""
    return mix32_array(keys ^ np.uint32((step * GOLDEN) & 0xFFFFFFFF))


def make_random(jit):
    """``(noise(key, step), random(noise, i))``: a uint32 from a counter-based hash
    (murmur3's finalizer) of an array's key, the step and an element's index: the same
    bits on every target and for any thread count, with no state to carry."""

    @jit
    def mix(x):
        x = np.uint32(x ^ np.uint32(x >> np.uint32(16)))
        x = np.uint32(x * np.uint32(0x85EBCA6B))
        x = np.uint32(x ^ np.uint32(x >> np.uint32(13)))
        x = np.uint32(x * np.uint32(0xC2B2AE35))
        return np.uint32(x ^ np.uint32(x >> np.uint32(16)))

    @jit
    def noise(key, step):
        return mix(np.uint32(np.uint32(key) ^ np.uint32(np.uint32(step) * np.uint32(GOLDEN))))

    # One finalizer per element (two 32-bit multiplies): the index is already distinct, and
    # its high half (arrays of 2**32 elements and more) enters rotated, without a multiply.
    @jit
    def random(noise, i):
        low = np.uint32(np.uint64(i) & np.uint64(0xFFFFFFFF))
        high = np.uint32(np.uint64(i) >> np.uint64(32))
        rotated = np.uint32(np.uint32(high << np.uint32(16)) | np.uint32(high >> np.uint32(16)))
        return mix(np.uint32(np.uint32(low ^ np.uint32(noise)) ^ rotated))

    return noise, random
