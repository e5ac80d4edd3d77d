"""The fused row-sparse Adam step on the CPU (``torch.optim.SparseAdam``'s update).

``group_rows`` sorts the nnz lookups by row (a radix sort of the indices, never
a pass over the table): each distinct row once, in ascending order (neighbouring
rows share pages), its lookups in their order. One parallel loop over the
distinct rows then sums each row's gradient values in that order and updates
the row's m, v and params in one pass. Each row is one task's alone, so the result does
not depend on the thread count.
"""

from __future__ import annotations

import threading
from functools import cache

import numba
import numpy as np
from numba import prange

from ..._core import element
from ..._core.dtypes import compute_dtype
from ..._core.hyper import Flags
from ..cache import cached, disk_cached
from .runtime import converters, prefetch_row, rounding

ROWS_PER_TASK = 64  # distinct rows per parallel task: its scratch row is allocated once
AHEAD = 8  # rows prefetched ahead: rows are scattered, so each one is a cache (and TLB) miss
RADIX_BITS = 11  # a 2048-entry histogram: in L1
RADIX = 1 << RADIX_BITS


@disk_cached("cpu.sparse.group_rows")
@numba.njit(nogil=True)
def group_rows(indices, rows, scratch):
    """(order, starts): ``indices[order]`` ascending, a row's lookups in their order (a
    stable LSD radix sort of the nnz indices, 11 bits a pass: two passes below 4M rows);
    ``starts[u]`` is where the u-th distinct row's run begins, ``starts[-1]`` the end.
    ``scratch``: (5, > nnz) int64, reused across calls (fresh pages would fault: at 256K
    lookups that took the sort from 1.9 to 7.8 ms); ``order`` and ``starts`` view it."""
    n = indices.size
    order, keys = scratch[0, :n], scratch[1, :n]
    spare_order, spare_keys = scratch[2, :n], scratch[3, :n]
    for k in range(n):
        order[k], keys[k] = k, indices[k]
    counts = np.empty(RADIX + 1, np.int64)
    shift = 0
    while (np.int64(1) << shift) < rows:
        counts[:] = 0
        for k in range(n):
            counts[((keys[k] >> shift) & (RADIX - 1)) + 1] += 1
        for d in range(RADIX):
            counts[d + 1] += counts[d]
        for k in range(n):
            d = (keys[k] >> shift) & (RADIX - 1)
            at = counts[d]
            spare_keys[at], spare_order[at] = keys[k], order[k]
            counts[d] = at + 1
        keys, spare_keys = spare_keys, keys
        order, spare_order = spare_order, order
        shift += RADIX_BITS
    distinct = min(n, 1)
    for k in range(1, n):
        distinct += keys[k] != keys[k - 1]
    starts = scratch[4, : distinct + 1]
    u = 0
    for k in range(n):
        if k == 0 or keys[k] != keys[k - 1]:
            starts[u] = k
            u += 1
    starts[distinct] = n
    return order, starts


_local = threading.local()


def scratch(n: int) -> np.ndarray:
    """This thread's sort scratch for ``n`` lookups, grown as needed and kept."""
    held = getattr(_local, "scratch", None)
    if held is None or held.shape[1] <= n:
        held = _local.scratch = np.empty((5, max(n + 1, 1024)), np.int64)
    return held


@cache
def sparse_kernel(flags: Flags):
    """``kernel(param, m, v, comp, master, indices, order, starts, values, coef)``: tables
    (rows, dim), 16-bit ones as uint16 views (``comp``, ``master``: any placeholder with
    their option off); ``order``/``starts`` from ``group_rows``; ``coef``:
    (1 - beta1, 1 - beta2, eps, -step_size) in the compute dtype."""
    convert = converters(compute_dtype(flags.param))
    update = element.make_sparse(numba.njit(inline="always"), flags, convert, rounding())
    load_g = convert[flags.grad][0]
    compute = np.dtype(compute_dtype(flags.param))

    @numba.njit(parallel=True, nogil=True)
    def kernel(param, m, v, comp, master, indices, order, starts, values, coef, noise):
        one_minus_beta1, one_minus_beta2, eps, neg_step = coef[0], coef[1], coef[2], coef[3]
        dim = param.shape[1]
        distinct = starts.size - 1
        for task in prange((distinct + ROWS_PER_TASK - 1) // ROWS_PER_TASK):
            total = np.empty(dim, compute)
            end = min((task + 1) * ROWS_PER_TASK, distinct)
            for u in range(task * ROWS_PER_TASK, end):
                if u + AHEAD < end:
                    ahead = order[starts[u + AHEAD]]
                    prefetch_row(values, ahead)
                    prefetch_row(param, indices[ahead])
                    prefetch_row(m, indices[ahead])
                    prefetch_row(v, indices[ahead])
                first, last = starts[u], starts[u + 1]
                g = values[order[first]]
                for j in range(dim):
                    total[j] = load_g(g[j])
                for k in range(first + 1, last):  # duplicates, summed in their order
                    g = values[order[k]]
                    for j in range(dim):
                        total[j] += load_g(g[j])
                row = indices[order[first]]
                p, m_row, v_row, c_row, w_row = param[row], m[row], v[row], comp[row], master[row]
                for j in range(dim):
                    update(j, total[j], p, m_row, v_row, c_row, w_row, one_minus_beta1,
                           one_minus_beta2, eps, neg_step, noise, row * dim)
        return 0

    return cached(kernel, "cpu.sparse.sparse_kernel", flags)
