"""The fused row-sparse Adam step on the CPU (``torch.optim.SparseAdam``'s update).

``group_rows`` groups the lookups by row with a hash table over the nnz indices
(never a pass over the table): each distinct row once, in order of first
appearance, its lookups in their order. One parallel loop over the distinct
rows then sums each row's gradient values in that order and updates the row's
m, v and params in one pass. Each row is one task's alone, so the result does
not depend on the thread count.
"""

from __future__ import annotations

from functools import cache

import numba
import numpy as np
from numba import prange

from . import _element
from ._cpu import converters, prefetch_row
from ._scalars import Flags, compute_dtype

ROWS_PER_TASK = 64  # distinct rows per parallel task: its scratch row is allocated once
AHEAD = 8  # rows prefetched ahead: rows are scattered, so each one is a cache (and TLB) miss
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)  # Fibonacci hashing: 2^64 / golden ratio


@numba.njit(nogil=True)
def group_rows(indices):
    """(order, starts): ``indices[order]`` runs through each distinct row in order of first
    appearance, a row's lookups in their order; ``starts[u]`` is where the u-th distinct
    row's run begins, ``starts[-1]`` the end. O(nnz): open addressing, linear probing."""
    n = indices.size
    bits = 4
    while (1 << bits) < 2 * n:
        bits += 1
    mask = (1 << bits) - 1
    shift = np.uint64(64 - bits)
    keys = np.full(1 << bits, -1, np.int64)
    ids = np.empty(1 << bits, np.int64)
    unique_of = np.empty(n, np.int64)
    counts = np.zeros(n + 1, np.int64)
    distinct = 0
    for k in range(n):
        row = indices[k]
        h = np.int64((np.uint64(row) * _GOLDEN) >> shift)
        while keys[h] != -1 and keys[h] != row:
            h = (h + 1) & mask
        if keys[h] == -1:
            keys[h] = row
            ids[h] = distinct
            distinct += 1
        u = ids[h]
        unique_of[k] = u
        counts[u + 1] += 1
    starts = np.cumsum(counts[: distinct + 1])
    filled = starts[:distinct].copy()
    order = np.empty(n, np.int64)
    for k in range(n):
        u = unique_of[k]
        order[filled[u]] = k
        filled[u] += 1
    return order, starts


@cache
def sparse_kernel(flags: Flags):
    """``kernel(param, m, v, comp, master, indices, order, starts, values, coef)``: tables
    (rows, dim), 16-bit ones as uint16 views (``comp``, ``master``: any placeholder with
    their option off); ``order``/``starts`` from ``group_rows``; ``coef``:
    (1 - beta1, 1 - beta2, eps, -step_size) in the compute dtype."""
    convert = converters(compute_dtype(flags.param))
    update = _element.make_sparse(numba.njit(inline="always"), flags, convert)
    load_g = convert[flags.grad][0]
    compute = np.dtype(compute_dtype(flags.param))

    @numba.njit(parallel=True, nogil=True)
    def kernel(param, m, v, comp, master, indices, order, starts, values, coef):
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
                           one_minus_beta2, eps, neg_step)
        return 0

    return kernel


@numba.njit(parallel=True, nogil=True)
def touch_rows(param, m, v, values, rows):
    """A memory-only pass with the sparse step's traffic, for benchmarks: for each of the
    distinct ``rows``, reads a row of ``values`` and reads and writes the row of
    ``param``, ``m`` and ``v`` (values' other rows are duplicates: a few percent)."""
    dim = param.shape[1]
    for u in prange(rows.size):
        if u + AHEAD < rows.size:  # as the step does
            prefetch_row(param, rows[u + AHEAD])
            prefetch_row(m, rows[u + AHEAD])
            prefetch_row(v, rows[u + AHEAD])
        row, g = rows[u], values[u]
        p, m_row, v_row = param[row], m[row], v[row]
        for j in range(dim):
            p[j] += g[j]
            m_row[j] += g[j]
            v_row[j] += g[j]
    return 0
