"""Warps as the low-bit GPU kernels use them: one warp per quantization block, its
lanes' maxima found by shuffles (on the simulator, which has no shuffles, through
shared memory, with a thread block of one warp)."""

from __future__ import annotations

from numba import cuda

from .runtime import SIMULATOR, device_function

WARP = 32
# The simulator runs a Python thread per CUDA thread, and has no warp shuffles: there a
# thread block is one warp, and the absmax goes through shared memory.
WARPS = 1 if SIMULATOR else 8
THREADS = WARP * WARPS
_ALL_LANES = 0xFFFFFFFF


def warp_max_of(amsgrad: bool):
    """``warp_max(m, v, v_max, tops)``: the three int32 values' maxima over the warp, on
    every lane (``v_max`` only with ``amsgrad``). ``tops``: 3 shared int32 (simulator)."""
    if SIMULATOR:
        @device_function
        def warp_max(m, v, v_max, tops):  # the thread block is this one warp
            cuda.syncthreads()  # every lane has read the last block's tops
            if cuda.threadIdx.x == 0:
                tops[0], tops[1], tops[2] = 0, 0, 0
            cuda.syncthreads()
            cuda.atomic.max(tops, 0, m)
            cuda.atomic.max(tops, 1, v)
            cuda.atomic.max(tops, 2, v_max)
            cuda.syncthreads()
            return tops[0], tops[1], tops[2]

        return warp_max

    @device_function
    def warp_max(m, v, v_max, tops):
        shift = 16
        while shift > 0:
            m = max(m, cuda.shfl_xor_sync(_ALL_LANES, m, shift))
            v = max(v, cuda.shfl_xor_sync(_ALL_LANES, v, shift))
            if amsgrad:
                v_max = max(v_max, cuda.shfl_xor_sync(_ALL_LANES, v_max, shift))
            shift //= 2
        return m, v, v_max

    return warp_max
