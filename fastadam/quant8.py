"""The 8-bit state format: bitsandbytes' blockwise dynamic quantization.

A moment of n elements is n uint8 codes and one float32 absmax per block of
256 elements; an element's value is ``map[code] * absmax``. The maps are
bitsandbytes' ``create_dynamic_map`` (signed for m, unsigned for v), built here
bit for bit, so checkpoints move between the two libraries. Encoding picks the
code bitsandbytes' CUDA kernel picks: its binary search over the map, whose
ties (a value exactly on a float32 midpoint) go to the last code it probed,
and for m, a code of the value's sign (a tiny negative m never becomes +0).

The search is ``encode_reference``; the kernels use an ``Encoder`` table that
gives the same code in a few integer operations and one table read, without a
data-dependent loop, so the encoding vectorizes.
"""

from ._core.quant8 import (
    BLOCK,
    MIN_8BIT_SIZE,
    Encoder,
    blocks,
    dequantize,
    dynamic_map,
    encode,
    encode_reference,
    encoder,
    quantize,
)

__all__ = ["BLOCK", "MIN_8BIT_SIZE", "Encoder", "blocks", "dequantize", "dynamic_map", "encode",
           "encode_reference", "encoder", "quantize"]
