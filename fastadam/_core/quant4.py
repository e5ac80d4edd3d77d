"""The 4-bit state format's implementation (maps, thresholds, quantize and dequantize):
documented, and exported, as ``fastadam.quant4``."""

from __future__ import annotations

from functools import cache

import numpy as np

from .quant8 import create_dynamic_map

BLOCK = 128
MIN_SCALE = np.float32(1e-12)  # a block's scale is its absmax, at least this (torchao's clip)
_F32 = np.float32


def blocks(n: int) -> int:
    """The number of scales (blocks of ``BLOCK``) for ``n`` elements; a tail is a block."""
    return -(-n // BLOCK)


def code_bytes(n: int) -> int:
    """The bytes of ``n`` packed 4-bit codes (two per byte)."""
    return (n + 1) // 2


@cache
def qmap(signed: bool) -> np.ndarray:
    """torchao's 16 float32 values: for m (signed) ``create_dynamic_map(True, 3, 4)``; for
    v (unsigned) ``linspace(0, 1, 17)[1:]``, the linear map without zero."""
    if signed:
        return create_dynamic_map(True, 3, 4)
    out = (np.arange(1, 17, dtype=_F32) / _F32(16))
    out.flags.writeable = False
    return out


def encode_reference(x, signed: bool) -> np.ndarray:
    """torchao's codes for normalized float32 values ``x``: its binary search (the largest
    code whose value is at most x, 0 below them all), then one up where the residual
    ``x - value`` is at least half the gap to the next (ties go up)."""
    q = qmap(signed)
    x = np.asarray(x, dtype=_F32).reshape(-1)
    codes = np.where(x >= q[8], 8, 0)
    for step in (4, 2, 1):
        codes = codes + np.where(x >= q[codes + step], step, 0)
    up = np.minimum(codes + 1, 15)
    down_value, up_value = q[codes], q[up]
    with np.errstate(invalid="ignore"):
        codes = np.where(x - down_value >= (up_value - down_value) * _F32(0.5), up, codes)
    return codes.astype(np.uint8)


def _ordered(x) -> int:
    u = int(np.array(x, dtype=_F32).view(np.uint32))
    return u ^ 0x80000000 if u < 0x80000000 else ~u & 0xFFFFFFFF


def _from_ordered(key: int) -> np.float32:
    u = key ^ 0x80000000 if key >= 0x80000000 else ~key & 0xFFFFFFFF
    return np.array(u, dtype=np.uint32).view(_F32)[()]


@cache
def thresholds(signed: bool) -> np.ndarray:
    """The 15 float32 values from which ``encode_reference`` gives a code one higher: a
    code is the number of them at or below the value (NaN: 0), so encoding is compares,
    with no search and no table read."""
    q = qmap(signed)
    out = []
    for c in range(15):  # the least x whose code is c + 1, between q[c] and q[c + 1]
        low, high = _ordered(q[c]), _ordered(q[c + 1])
        while high - low > 1:
            middle = (low + high) // 2
            if encode_reference(_from_ordered(middle), signed)[0] > c:
                high = middle
            else:
                low = middle
        out.append(_from_ordered(high))
    table = np.array(out, dtype=_F32)
    table.flags.writeable = False
    return table


def encode(x, signed: bool) -> np.ndarray:
    """Codes for normalized values ``x`` by counting thresholds (NumPy): what the kernels
    compute, equal to ``encode_reference``."""
    x = np.asarray(x, dtype=_F32).reshape(-1, 1)
    return (x >= thresholds(signed)[None, :]).sum(axis=1).astype(np.uint8)


def pack(codes: np.ndarray) -> np.ndarray:
    """Two codes per byte, the even element's in the high nibble (torchao's order); an odd
    count's last byte has 0 in its low nibble."""
    codes = np.asarray(codes, dtype=np.uint8).reshape(-1)
    padded = np.zeros(2 * code_bytes(codes.size), dtype=np.uint8)
    padded[:codes.size] = codes
    return ((padded[0::2] << 4) | padded[1::2]).astype(np.uint8)


def unpack(packed: np.ndarray, n: int) -> np.ndarray:
    """The ``n`` codes of packed bytes."""
    packed = np.asarray(packed, dtype=np.uint8).reshape(-1)
    return np.stack([packed >> 4, packed & 15], axis=1).reshape(-1)[:n]


def quantize(x: np.ndarray, signed: bool) -> tuple[np.ndarray, np.ndarray]:
    """(packed codes, scales) of float values ``x`` (1-D), as torchao stores them: per
    block, the scale is the absmax (at least 1e-12; NaN if the block holds one), values
    are divided by it and encoded; a partial last block is scaled by its own absmax."""
    x = np.asarray(x, dtype=_F32).reshape(-1)
    n = x.size
    padded = np.zeros(blocks(n) * BLOCK, dtype=_F32)
    padded[:n] = x
    rows = padded.reshape(-1, BLOCK)
    scale = np.maximum(np.abs(rows).max(axis=1), MIN_SCALE) if n else np.zeros(0, _F32)
    scale = scale.astype(_F32)
    with np.errstate(invalid="ignore"):
        normalized = (rows / scale[:, None]).reshape(-1)[:n]
    return pack(encode(normalized, signed)), scale


def dequantize(packed: np.ndarray, scale: np.ndarray, signed: bool, n: int) -> np.ndarray:
    """Float32 values of ``n`` packed codes under the blocks' ``scale``."""
    values = qmap(signed)[unpack(packed, n)]
    return values * np.repeat(np.asarray(scale, dtype=_F32), BLOCK)[:n]
