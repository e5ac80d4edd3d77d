"""The low-bit state formats by name, behind one interface: "8bit" (bitsandbytes',
``quant8``) and "4bit" (torchao's, ``quant4``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

from . import quant4, quant8


class Format(NamedTuple):
    """A blockwise state format: per block of ``block`` elements one float32 scale per
    moment, per element a code (``code_bytes(n)`` bytes for n of them) into ``qmap``."""

    name: str
    block: int
    code_bytes: Callable[[int], int]
    blocks: Callable[[int], int]
    quantize: Callable  # (x, signed) -> (codes, scales)
    dequantize: Callable  # (codes, scales, signed, n) -> float32 values
    qmap: Callable[[bool], object]
    min_size: int  # smaller arrays keep 32-bit moments
    scale_name: str  # what the per-block float is called


FORMATS = {
    "8bit": Format("8bit", quant8.BLOCK, lambda n: n, quant8.blocks, quant8.quantize,
                   lambda codes, scales, signed, n: quant8.dequantize(codes, scales, signed),
                   quant8.dynamic_map, quant8.MIN_8BIT_SIZE, "absmax"),
    "4bit": Format("4bit", quant4.BLOCK, quant4.code_bytes, quant4.blocks, quant4.quantize,
                   quant4.dequantize, quant4.qmap, 0, "scale"),
}


def of_map_size(size: int) -> Format | None:
    """The format whose maps have ``size`` entries (a state_dict's qmap says its format)."""
    return next((f for f in FORMATS.values() if f.qmap(True).size == size), None)
