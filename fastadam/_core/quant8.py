"""The 8-bit state format's implementation (maps, encoder tables, quantize and dequantize):
documented, and exported, as ``fastadam.quant8``."""

from __future__ import annotations

from functools import cache

import numpy as np

BLOCK = 256
MIN_8BIT_SIZE = 4096  # smaller arrays keep 32-bit state, as bitsandbytes' min_8bit_size

_F32 = np.float32


def blocks(n: int) -> int:
    """The number of absmax entries (blocks) for ``n`` elements."""
    return -(-n // BLOCK)


def _linspace(n: int) -> np.ndarray:
    # torch.linspace(0.1, 1, n, dtype=float32) as torch computes it: a float32 step,
    # then start + step * i (end - step * (n - 1 - i) past halfway) rounded once (an FMA).
    start, end = _F32(0.1), _F32(1.0)
    step = np.float64((end - start) / _F32(n - 1))
    i = np.arange(n)
    exact = np.where(i < n // 2, np.float64(start) + step * i,
                     np.float64(end) - step * (n - 1 - i))
    return exact.astype(_F32)


def create_dynamic_map(signed: bool, exponent_bits: int, total_bits: int) -> np.ndarray:
    """bitsandbytes' ``create_dynamic_map(signed, exponent_bits, total_bits)`` without its
    zero padding (torchao's copy), in float32 as torch computes it: ``2**total_bits``
    ascending values in [-1, 1] (signed) or [0, 1], 0 and 1 among them."""
    data = []
    for i in range(exponent_bits):
        bounds = _linspace(2 ** (i + total_bits - 1 - exponent_bits) * (1 if signed else 2) + 1)
        means = (bounds[:-1] + bounds[1:]) / _F32(2)
        scale = _F32(10.0 ** (i - exponent_bits + 1))
        data += (scale * means).tolist()
        if signed:
            data += ((-scale) * means).tolist()
    data += [0.0, 1.0]
    data.sort()
    out = np.array(data, dtype=_F32)
    if out.size != 2**total_bits:
        raise AssertionError("the map's size")
    out.flags.writeable = False
    return out


@cache
def dynamic_map(signed: bool) -> np.ndarray:
    """bitsandbytes' ``create_dynamic_map(signed)`` (7 exponent bits, 8 bits in all):
    256 ascending float32 values in [-1, 1] (signed) or [0, 1], 0 and 1 among them."""
    return create_dynamic_map(signed, 7, 8)


def encode_reference(x, signed: bool) -> np.ndarray:
    """Codes for normalized float32 values ``x`` (in [-1, 1]), element by element: the
    binary search of bitsandbytes' CUDA optimizer kernel (``quantize_2D``), then, for
    the signed map, its fix that keeps a code's sign that of the value."""
    q = dynamic_map(signed)
    x = np.asarray(x, dtype=_F32).reshape(-1)
    out = np.empty(x.size, dtype=np.uint8)
    for k, value in enumerate(x):
        code = _search(q, value, signed)
        if signed and np.signbit(q[code]) != np.signbit(value):
            code = code + 1 if value > 0 else code - 1
        out[k] = code
    return out


def _search(q: np.ndarray, x, signed: bool) -> int:
    pivot, upper_pivot, lower_pivot = 127, 255, 0
    lower, upper = _F32(-1.0 if signed else 0.0), _F32(1.0)
    val = q[pivot]
    i = 64
    while i > 0:
        if x > val:
            lower_pivot, lower = pivot, val
            pivot += i
        else:
            upper_pivot, upper = pivot, val
            pivot -= i
        val = q[pivot]
        i >>= 1
    if x > val:
        return upper_pivot if x > (upper + val) * _F32(0.5) else pivot
    return lower_pivot if x < (lower + val) * _F32(0.5) else pivot


# The encoder reads a value's float32 bits: sign, then magnitude. Magnitudes below
# 2**-32 all take the code nearest 0; from there up to 1.0 the exponent and the top 8
# mantissa bits pick a bucket, and one table entry per bucket says how many codes out
# from 0 its start lies (its position) and where in it, if anywhere, the next
# threshold lies: no bucket holds two (checked when the table is built). The code is
# then arithmetic, so an encoding is one table read, which vectorizes as a gather.
KEY_SHIFT = 15
KEY_LOW = int(np.array(2.0**-32, dtype=_F32).view(np.uint32))
KEY_HIGH = int(np.array(1.0, dtype=_F32).view(np.uint32))
KEYS = ((KEY_HIGH - KEY_LOW) >> KEY_SHIFT) + 1
NO_THRESHOLD = 0xFFFF  # above any offset in a bucket (offsets are < 2**KEY_SHIFT)


class Encoder:
    """The table of one map: ``entries``, 2 * KEYS uint32, per sign and bucket: bits 0-7
    the bucket start's position (codes out from 0), bits 8-23 the offset in the bucket
    above which the position is one more (``NO_THRESHOLD``: none). ``zero``: the code of
    0. A value's code is the zero's plus its position, or for a negative one the zero's
    minus at least 1 (bitsandbytes' sign fix; the unsigned map puts -0.0 at 0)."""

    def __init__(self, signed: bool) -> None:
        q = dynamic_map(signed)
        self.signed = signed
        self.zero = int(np.flatnonzero(q == 0)[0])
        self.entries = np.zeros(2 * KEYS, dtype=np.uint32)
        starts = (np.arange(KEYS, dtype=np.int64) << KEY_SHIFT) + KEY_LOW
        starts[0] = 0  # the first bucket also holds every magnitude below KEY_LOW
        ends = np.append(starts[1:] - 1, KEY_HIGH)
        outward = [range(self.zero, BLOCK)]  # codes in order of magnitude, per sign
        if signed:
            outward.append(range(self.zero, -1, -1))
        for sign, side in enumerate(outward):
            limits = np.array([self._threshold(q, a, b, signed) for a, b in zip(side, side[1:])],
                              dtype=np.int64)
            at_start = np.searchsorted(limits, starts, side="left")  # thresholds below a start
            at_end = np.searchsorted(limits, ends, side="left")
            if np.any(at_end - at_start > 1):
                raise AssertionError("a bucket holds two thresholds: widen the key")
            inside = at_end > at_start
            limit = limits[np.minimum(at_start, len(limits) - 1)]
            offsets = np.where(inside, limit - np.maximum(starts, KEY_LOW), NO_THRESHOLD)
            self.entries[sign * KEYS:(sign + 1) * KEYS] = at_start | (offsets << 8)
        self.entries.flags.writeable = False

    @staticmethod
    def _threshold(q, a: int, b: int, signed: bool) -> int:
        # The magnitude bits above which code b (farther from 0) beats code a: their
        # float32 midpoint, or one below it where the search sends the midpoint to b.
        mid = (q[a] + q[b]) * _F32(0.5)
        bits = int(np.array(abs(mid), dtype=_F32).view(np.uint32))
        return bits - 1 if _search(q, mid, signed) == b else bits


@cache
def encoder(signed: bool) -> Encoder:
    """The encoder table of the signed (m) or unsigned (v) map."""
    return Encoder(signed)


def encode(x, signed: bool) -> np.ndarray:
    """Codes for normalized values ``x`` through the table (NumPy, vectorized): what the
    kernels compute, equal to ``encode_reference``."""
    e = encoder(signed)
    bits = np.asarray(x, dtype=_F32).reshape(-1).view(np.uint32)
    sign = (bits >> 31).astype(np.int64)
    clamped = np.clip(bits & np.uint32(0x7FFFFFFF), KEY_LOW, KEY_HIGH) - np.uint32(KEY_LOW)
    entry = e.entries[sign * KEYS + (clamped >> KEY_SHIFT)]
    offset = clamped & np.uint32((1 << KEY_SHIFT) - 1)
    position = (entry & np.uint32(0xFF)).astype(np.int64) + (offset > (entry >> 8))
    if not signed:
        return np.where(sign == 1, e.zero, e.zero + position).astype(np.uint8)
    return np.where(sign == 1, e.zero - np.maximum(position, 1), e.zero + position).astype(
        np.uint8)


def quantize(x: np.ndarray, signed: bool) -> tuple[np.ndarray, np.ndarray]:
    """(codes, absmax) of float values ``x`` (1-D), blockwise, as the kernels store them:
    a block is normalized by its absmax's float32 reciprocal (bitsandbytes' CUDA kernel
    divides with ``__fdividef``, also a reciprocal); non-finite values are left out of
    absmax and stored as the code of 0."""
    x = np.asarray(x, dtype=_F32).reshape(-1)
    n = x.size
    padded = np.zeros(blocks(n) * BLOCK, dtype=_F32)
    finite = np.isfinite(x)
    padded[:n] = np.where(finite, x, 0)
    absmax = np.abs(padded.reshape(-1, BLOCK)).max(axis=1) if n else np.zeros(0, _F32)
    with np.errstate(divide="ignore"):
        inverse = np.where(absmax > 0, _F32(1) / absmax, 0).astype(_F32)
    normalized = (padded.reshape(-1, BLOCK) * inverse[:, None]).reshape(-1)[:n]
    return encode(normalized, signed), absmax.astype(_F32)


def dequantize(codes: np.ndarray, absmax: np.ndarray, signed: bool) -> np.ndarray:
    """Float32 values of ``codes`` (1-D) under the blocks' ``absmax``."""
    q = dynamic_map(signed)
    scale = np.repeat(np.asarray(absmax, dtype=_F32), BLOCK)[:codes.size]
    return q[codes.reshape(-1)] * scale
