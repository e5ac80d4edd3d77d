"""The sum of squares of many gradients on the GPU: one launch per gradient dtype over a
table of addresses (each thread block sums whole chunks, in float64, by a fixed tree),
then one block adds the chunks' sums in a fixed order. The launch shape is fixed, so
the result is the same bits at every call."""

from __future__ import annotations

from functools import cache

import numpy as np
from numba import cuda

from ..._core.dtypes import compute_dtype
from ..cache import cached, disk_cached
from ..grouping import chunk_table
from ..shared import pointers
from .memory import to_device
from .runtime import (
    CHUNK,
    MAX_BLOCKS,
    THREADS_PER_BLOCK,
    _at,
    _inlined,
    address,
    converters,
    forget,
)

THREADS = THREADS_PER_BLOCK


@_inlined
def _block_sum(shared, t, value):
    """The block's values summed into ``shared[0]`` by a fixed tree (every thread calls)."""
    shared[t] = value
    cuda.syncthreads()
    width = THREADS // 2
    while width > 0:
        if t < width:
            shared[t] += shared[t + width]
        cuda.syncthreads()
        width //= 2


@cache
def squares_kernel(grad_kind: str):
    """``kernel(grads, sizes, chunks, partial)``: ``partial[c]`` = the float64 sum of the
    squares of chunk ``c`` (rows (array index, start, stop)) of the gradients at device
    addresses ``grads``."""
    load = converters(compute_dtype(grad_kind))[grad_kind][0]
    grad_t = pointers.pointee(grad_kind)

    @cuda.jit
    def kernel(grads, sizes, chunks, partial):
        shared = cuda.shared.array(THREADS, np.float64)
        t = cuda.threadIdx.x
        row = cuda.blockIdx.x
        while row < chunks.shape[0]:
            g = _at(grads[chunks[row, 0]], grad_t)
            acc = np.float64(0.0)
            i = chunks[row, 1] + t
            while i < chunks[row, 2]:
                x = np.float64(load(g[i]))
                acc += x * x
                i += THREADS
            _block_sum(shared, t, acc)
            if t == 0 and chunks[row, 2] > chunks[row, 1]:  # (another kind's rows: empty)
                partial[row] = shared[0]
            cuda.syncthreads()
            row += cuda.gridDim.x

    return cached(kernel, "cuda.norm.squares_kernel", grad_kind)


@disk_cached("cuda.norm.total")
@cuda.jit
def _total(partial, out):
    """One block: ``out[0]`` = the sum of ``partial``, thread-strided then by a tree."""
    shared = cuda.shared.array(THREADS, np.float64)
    t = cuda.threadIdx.x
    acc = np.float64(0.0)
    i = t
    while i < partial.size:
        acc += partial[i]
        i += THREADS
    _block_sum(shared, t, acc)
    if t == 0:
        out[0] = shared[0]


def sum_of_squares(grads: list, stream):
    """The float64 sum of the squares of every element of ``grads`` ((kernel view, kind)
    pairs, none empty), as a one-element device array; nothing waits for it. Chunks of
    other kinds are empty rows to each kind's launch, so every slot is written once."""
    sizes = np.array([g.size for g, _ in grads], dtype=np.int64)
    kinds = [k for _, k in grads]
    chunks = chunk_table(sizes, CHUNK)
    addresses = np.array([address(g) for g, _ in grads], dtype=np.uint64)
    table, device_sizes = to_device(addresses), to_device(sizes)
    partial = cuda.device_array(chunks.shape[0], np.float64, stream=stream)
    for grad_kind in dict.fromkeys(kinds):
        if len(set(kinds)) > 1:  # the chunks of this kind write their own slots
            mine = np.array([kinds[t] == grad_kind for t in chunks[:, 0]])
            rows = np.where(mine[:, None], chunks, np.array([0, 0, 0]))
        else:
            rows = chunks
        launch = (max(1, min(MAX_BLOCKS, rows.shape[0])), THREADS, stream)
        squares_kernel(grad_kind)[launch](table, device_sizes, to_device(rows), partial)
    out = cuda.device_array(1, np.float64, stream=stream)
    _total[1, THREADS, stream](partial, out)
    forget(addresses)
    return out
