"""The physical limit on the CPU: memory-only kernels that move exactly a step's bytes
(every array read once, every state written once) with integer adds and no other
arithmetic. A contender's time over theirs is its share of the memory limit."""

from __future__ import annotations

import inspect
from functools import cache

import numba
from numba import prange

from .._backends.cache import cached
from .._backends.cpu.runtime import prefetch_row
from .._backends.cpu.sparse import AHEAD

# The loop headers of the variants: the step's own flat prange loop, and one thread with
# no parallel region (small arrays, where the region's start costs more than the bytes).
# Tried and left out: prange over chunks of 16K with an inner loop (3.7x slower at 16M,
# 2 threads: the inner loop stays scalar), and streaming stores (every array a step
# writes it also reads, so its lines are in cache already).
_LOOPS = {
    "flat": "for i in prange(n):",
    "serial": "for i in range(n):",
}
VARIANTS = tuple(_LOOPS)


@cache
def memory_only_kernel(reads: int, writes: int, variant: str = "flat"):
    """The bandwidth limit: ``kernel(*read_only, *read_write)`` reads every array once
    and writes the ``writes`` last ones once, with integer adds and no other arithmetic,
    in one of ``VARIANTS`` of loop (the limit is the fastest of them).

    Pass unsigned-integer views of arrays like the step's, so the bytes are the step's.
    """
    source = memory_only_source(reads, writes).replace("LOOP", _LOOPS[variant])
    scope = {"prange": prange}
    exec(source, scope)
    jit = numba.njit(parallel=variant != "serial", nogil=True)
    return cached(jit(scope["kernel"]), "bench.memory_only", source, variant)


def memory_only_source(reads: int, writes: int) -> str:
    """Python source of the memory-only loop (``LOOP`` marks the loop header) over the
    elements all the arrays have: one with fewer (4-bit codes beside an odd count of
    elements) bounds the loop, so nothing is read or written past any array's end."""
    r = [f"r{k}" for k in range(reads)]
    w = [f"w{k}" for k in range(writes)]
    body = "".join(f"        {a}[i] += x\n" for a in w)
    sizes = [a + ".size" for a in r + w]
    n = sizes[0] if len(sizes) == 1 else f"min({', '.join(sizes)})"
    return (f"def kernel({', '.join(r + w)}):\n    n = {n}\n    LOOP\n"
            f"        x = {' + '.join(a + '[i]' for a in r)}\n{body}")


@numba.njit(parallel=True, nogil=True)
def touch_rows(param, m, v, values, rows):
    """A memory-only pass with the sparse step's traffic, for benchmarks: reads every
    row of ``values`` (nnz, dim) once, in order, and reads and writes the row of
    ``param``, ``m`` and ``v`` of each of the distinct ``rows`` once, adding to it the
    values rows that fall to it (nnz / rows.size each, duplicates' stand-ins)."""
    dim, nnz = param.shape[1], values.shape[0]
    for u in prange(rows.size):
        if u + AHEAD < rows.size:  # as the step does
            prefetch_row(param, rows[u + AHEAD])
            prefetch_row(m, rows[u + AHEAD])
            prefetch_row(v, rows[u + AHEAD])
        row = rows[u]
        p, m_row, v_row = param[row], m[row], v[row]
        for k in range(u * nnz // rows.size, (u + 1) * nnz // rows.size):
            g = values[k]
            for j in range(dim):
                p[j] += g[j]
                m_row[j] += g[j]
                v_row[j] += g[j]
    return 0


touch_rows = cached(touch_rows, "bench.touch_rows", inspect.getsource(touch_rows.py_func))
