"""The sum of squares of many gradients, in one parallel read: what clipping by the global
norm needs, and, being NaN or inf exactly when an element is, the non-finite check too.

Each chunk of (array, start, stop) sums in float64, into its own slot; the host adds
the slots in one fixed order. The chunks do not depend on the thread count, so neither
does the result, bit for bit.
"""

from __future__ import annotations

from functools import cache

import numba
import numpy as np
from numba import prange

from ..._core.dtypes import compute_dtype
from ..cache import cached
from ..grouping import chunk_elements, chunk_table
from ..shared import pointers
from .runtime import at, converters
from .threads import run_parallel


@cache
def squares_kernel(grad_kind: str):
    """``kernel(grad_addresses, sizes, chunks, out)``: ``out[c]`` = the float64 sum of the
    squares of chunk ``c``'s elements (the gradients laid out as in ``dense.multi_kernel``)."""
    load = converters(compute_dtype(grad_kind))[grad_kind][0]
    grad_t = pointers.pointee(grad_kind)

    # reassoc lets LLVM keep several vector accumulators (one would wait on every add):
    # the order within a chunk is then the compiled loop's, the same at every call and
    # for any thread count.
    @numba.njit(parallel=True, nogil=True, fastmath={"reassoc"})
    def kernel(grad_addresses, sizes, chunks, out):
        for c in prange(chunks.shape[0]):
            t, start, stop = chunks[c, 0], chunks[c, 1], chunks[c, 2]
            x = numba.carray(at(grad_addresses[t], grad_t), sizes[t])[start:stop]
            total = 0.0
            for i in range(stop - start):
                y = np.float64(load(x[i]))
                total += y * y
            out[c] = total

    return cached(kernel, "cpu.norm.squares_kernel", grad_kind)


def sum_of_squares(addresses: np.ndarray, sizes: np.ndarray, kinds: list,
                   num_threads: int | None, chunks: np.ndarray | None = None) -> float:
    """The float64 sum of the squares of every element of the gradients at ``addresses``
    (``sizes`` elements of float kind ``kinds[i]`` each): one parallel read per kind,
    the same bits for any thread count. ``chunks``: ``chunk_table(sizes)``, if at hand."""
    chunks = chunk_table(sizes) if chunks is None else chunks
    partial = np.zeros(chunks.shape[0], np.float64)
    by_kind = np.array([kinds[t] for t in chunks[:, 0]]) if len(set(kinds)) > 1 else None
    for grad_kind in dict.fromkeys(kinds):
        rows = chunks if by_kind is None else chunks[by_kind == grad_kind]
        out = partial if by_kind is None else np.zeros(rows.shape[0], np.float64)
        run_parallel(num_threads, chunk_elements(rows), squares_kernel(grad_kind), addresses,
                     sizes, rows, out)
        if by_kind is not None:
            partial[by_kind == grad_kind] = out
    return float(partial.sum())  # pairwise, in chunk order: fixed for any thread count
