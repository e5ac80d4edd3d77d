"""The fused row-sparse Adam step on the CPU (``torch.optim.SparseAdam``'s update).

The lookups' row indices are sorted (stably, so duplicates keep their order),
then one parallel loop over the distinct rows sums each row's gradient values
in that order and updates the row's m, v and params in one pass. Each row is
one task's alone, so the result does not depend on the thread count.
"""

from __future__ import annotations

import math
from functools import cache

import numba
import numpy as np
from numba import prange

ROWS_PER_TASK = 64  # distinct rows per parallel task: its scratch row is allocated once


@cache
def sparse_kernel(maximize: bool):
    """``kernel(param, m, v, indices, order, starts, values, coef)``: ``order`` sorts
    ``indices`` stably, ``starts`` holds where each distinct row's run begins in it (and
    the end); ``coef``: (1 - beta1, 1 - beta2, eps, -step_size) in the param dtype."""

    @numba.njit(parallel=True, nogil=True)
    def kernel(param, m, v, indices, order, starts, values, coef):
        one_minus_beta1, one_minus_beta2, eps, neg_step = coef[0], coef[1], coef[2], coef[3]
        dim = param.shape[1]
        distinct = starts.size - 1
        for task in prange((distinct + ROWS_PER_TASK - 1) // ROWS_PER_TASK):
            total = np.empty(dim, values.dtype)
            for u in range(task * ROWS_PER_TASK, min((task + 1) * ROWS_PER_TASK, distinct)):
                first, last = starts[u], starts[u + 1]
                row = indices[order[first]]
                g = values[order[first]]
                if last - first > 1:  # duplicates, summed in their order
                    total[:] = g
                    for k in range(first + 1, last):
                        more = values[order[k]]
                        for j in range(dim):
                            total[j] += more[j]
                    g = total
                p, m_row, v_row = param[row], m[row], v[row]
                for j in range(dim):
                    g_j = -g[j] if maximize else g[j]
                    # torch's order of operations: old + (new - old) * (1 - beta)
                    old_m, old_v = m_row[j], v_row[j]
                    m_new = old_m + (g_j - old_m) * one_minus_beta1
                    v_new = old_v + (g_j * g_j - old_v) * one_minus_beta2
                    m_row[j] = m_new
                    v_row[j] = v_new
                    p[j] += neg_step * (m_new / (math.sqrt(v_new) + eps))
        return 0

    return kernel


def runs(indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(order, starts): a stable sort of ``indices`` and where each distinct value's run
    begins in it, plus the end."""
    order = np.argsort(indices, kind="stable")
    ordered = indices[order]
    change = np.flatnonzero(ordered[1:] != ordered[:-1]) + 1
    starts = np.concatenate(([0], change, [ordered.size])).astype(np.int64)
    return order.astype(np.int64), starts
