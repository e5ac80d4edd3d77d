"""Typed pointers at integer addresses, for kernels that follow tables of addresses."""

from __future__ import annotations

import numpy as np


def pointee(kind: str):
    """The scalar class kernels use for a float kind: 16-bit ones travel as uint16."""
    return np.uint16 if kind in ("float16", "bfloat16") else np.dtype(kind).type


def make(intrinsic, types, address_space: int = 0):
    """``at(address, pointee)``: a pointer to ``pointee`` values (a NumPy scalar class,
    e.g. ``np.float32``) at an integer address, indexable like an array without bounds.

    ``intrinsic`` and ``types`` are the target's (``numba.extending``/``numba.types``
    for the CPU, ``numba.cuda.extending``/``numba.cuda.types`` for CUDA). A nonzero
    ``address_space`` says where the address points (1: CUDA global memory), so the
    compiler can use that space's loads and stores instead of generic ones.
    """

    @intrinsic
    def at(typingctx, address, pointee):
        sig = types.CPointer(pointee.instance_type)(address, pointee)

        def codegen(context, builder, signature, args):
            pointer = context.get_value_type(signature.return_type)
            if not address_space:
                return builder.inttoptr(args[0], pointer)
            placed = builder.inttoptr(args[0], pointer.pointee.as_pointer(address_space))
            return builder.addrspacecast(placed, pointer)

        return sig, codegen

    return at
