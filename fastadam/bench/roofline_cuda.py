"""The physical limit on the GPU: the memory-only kernels of ``roofline.py`` in one
launch. Imports ``numba.cuda`` at its top (the simulator needs kernels defined in
such a module): load it only where a CUDA device or the simulator is wanted."""

from __future__ import annotations

import inspect
from functools import cache

from numba import cuda

from .._backends.cache import cached
from .._backends.cuda.runtime import MAX_BLOCKS, launch_shape
from .._backends.cuda.sparse import POSITIONS, ROW_THREADS
from .roofline import memory_only_source


@cache
def memory_only_kernel(reads: int, writes: int):
    """The bandwidth limit on the GPU, in one launch: see ``roofline.memory_only_kernel``."""
    source = memory_only_source(reads, writes).replace(
        "    LOOP\n", "    i = cuda.grid(1)\n    while i < n:\n")
    source += "        i += cuda.gridsize(1)\n"
    scope = {"cuda": cuda}
    exec(source, scope)
    kernel = cached(cuda.jit(scope["kernel"]), "bench.memory_only_cuda", source)

    def run(*arrays):
        kernel[launch_shape(arrays[0].size)](*arrays)

    run.kernel = kernel
    return run


@cuda.jit
def _touch_rows(param, m, v, values, rows):
    u = cuda.blockIdx.x * cuda.blockDim.y + cuda.threadIdx.y
    nnz = values.shape[0]
    while u < rows.size:
        r = rows[u]
        first, end = u * nnz // rows.size, (u + 1) * nnz // rows.size  # first < end
        j = cuda.threadIdx.x
        while j < param.shape[1]:
            g = values[first, j]
            for k in range(first + 1, end):
                g += values[k, j]
            param[r, j] += g
            m[r, j] += g
            v[r, j] += g
            j += cuda.blockDim.x
        u += cuda.gridDim.x * cuda.blockDim.y



_touch_rows = cached(_touch_rows, "bench.touch_rows_cuda", inspect.getsource(_touch_rows.py_func))

def touch_rows_cuda(param, m, v, values, rows) -> None:
    """The memory-only pass of ``roofline.touch_rows`` on the device, for benchmarks."""
    blocks = min(MAX_BLOCKS, (rows.size + POSITIONS - 1) // POSITIONS)
    _touch_rows[blocks, (ROW_THREADS, POSITIONS)](param, m, v, values, rows)
