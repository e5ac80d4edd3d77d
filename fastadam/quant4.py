"""The 4-bit state format: torchao's (``torchao.optim.AdamW4bit``, after Li et al. 2023).

A moment of n elements is ``(n + 1) // 2`` bytes of codes, two per byte (the even
element's in the high nibble), and one float32 scale per block of 128 elements (the
block's absmax, at least 1e-12); an element's value is ``qmap[code] * scale``. m uses
the signed dynamic map of 16 values (``create_dynamic_map(True, 3, 4)``), v the
linear map without zero (``(code + 1) / 16``), built here bit for bit. Encoding picks
torchao's code: a binary search, then the upper code where the value is at least
halfway (``encode_reference``); the kernels count the 15 ``thresholds`` at which the
code goes up instead, the same codes with compares only.
"""

from ._core.quant4 import (
    BLOCK,
    MIN_SCALE,
    blocks,
    code_bytes,
    dequantize,
    encode,
    encode_reference,
    pack,
    qmap,
    quantize,
    thresholds,
    unpack,
)

__all__ = ["BLOCK", "MIN_SCALE", "blocks", "code_bytes", "dequantize", "encode",
           "encode_reference", "pack", "qmap", "quantize", "thresholds", "unpack"]
