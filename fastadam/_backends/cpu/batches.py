"""The CPU batch plan: many arrays in one parallel region.

Params and state are fixed, so their table of data addresses is built once; the
gradients change every step and reach the kernel as addresses too, which costs far
less per array than any numba container, checked in one compiled read of their
headers (``headers.py``).
"""

from __future__ import annotations

import numpy as np

from ..._core.dtypes import KINDS, compute_dtype, kind
from ..._core.hyper import coefficients
from ..grouping import advance, batched, chunk_elements, chunk_table, ready_to_batch
from ..owned import Owned
from ..shared.convert import noises_of
from ..views import data_address, kernel_views
from . import dense, norm
from .headers import Table
from .threads import run_parallel


class HostBatch:
    """Arrays (by index) of one group that one kernel call steps together."""

    def __init__(self, indices: list[int], slots: list) -> None:
        self.indices = np.array(indices, dtype=np.int64)
        self.slots = slots
        views = [kernel_views((s.flat, s.flat, *s.state)) for s in slots]
        self.tables = np.array([[data_address(v[k]) for v in views] for k in (0, 2, 3, 4, 5, 6)],
                               dtype=np.int64)
        self.sizes = np.array([s.flat.size for s in slots], dtype=np.int64)
        self.work = int(self.sizes.sum())  # elements: what decides the thread count
        self.chunks = chunk_table(self.sizes)
        self.keys = np.array([s.key for s in slots], dtype=np.uint32)
        self.stochastic = slots[0].flags.stochastic  # (one option set per batch)

    def noises(self, step: int) -> np.ndarray:
        """Each array's random bits at update ``step`` (zeros without stochastic rounding)."""
        return noises_of(self.keys, step) if self.stochastic else np.zeros_like(self.keys)


class HostBatches:
    """The batches of an optimizer's groups, and the fast checks of a list of gradients."""

    def __init__(self, groups: list) -> None:
        self.batches = batched(groups, HostBatch)  # per group: list of HostBatch
        slots_all = [slot for _, slots in groups for slot in slots]
        self.count = len(slots_all)
        self.table = Table([s.array.shape for s in slots_all], _grad_dtypes(), KINDS)
        self.sizes = np.array([s.flat.size for s in slots_all], dtype=np.int64)
        self.chunks = chunk_table(self.sizes)
        # The optimizer's memory (params and state, disjoint), sorted: no gradient may touch it.
        arrays = [a for s in slots_all for a in (s.flat, *s.state, *(s.absmax or ()))
                  if a is not None and a.size]
        self.owned = Owned([data_address(a) for a in arrays],
                           [a.nbytes for a in arrays])

    def check(self, grads) -> tuple | None:
        """(dtype codes, data addresses) when ``grads`` pass the fast checks, else None:
        the caller then checks them one by one, which names what is wrong."""
        if type(grads) not in (list, tuple) or len(grads) != self.count:
            return None
        found = self.table.read(grads)
        if found is None:
            return None
        addresses, codes = found
        ends = addresses + self.sizes * self.table.itemsizes[codes]
        if self.owned.overlaps(addresses, ends):
            return None
        return codes, addresses

    def kind(self, codes: np.ndarray) -> str | None:
        """The one float kind of gradients with dtype ``codes``, or None if they mix kinds."""
        first, last = codes.min(), codes.max()
        if first == last:
            return kind(self.table.dtypes[first])
        kinds = {kind(self.table.dtypes[c]) for c in np.unique(codes)}
        return kinds.pop() if len(kinds) == 1 else None

    def all_finite(self, codes: np.ndarray, addresses: np.ndarray, num_threads) -> bool:
        """Whether every gradient is free of NaN and inf: one parallel read per dtype."""
        for code in np.unique(codes):
            rows = self.chunks[codes[self.chunks[:, 0]] == code]
            grad_kind = kind(self.table.dtypes[code])
            count = dense.multi_nonfinite_kernel(grad_kind)
            if run_parallel(num_threads, chunk_elements(rows), count, addresses, self.sizes,
                            rows):
                return False
        return True

    def sum_of_squares(self, codes: np.ndarray, addresses: np.ndarray, num_threads) -> float:
        """The float64 sum of the squares of every checked gradient: one parallel read per
        dtype (the clip's norm, NaN or inf where an element is)."""
        kinds = [kind(self.table.dtypes[c]) for c in codes]
        return norm.sum_of_squares(addresses, self.sizes, kinds, num_threads, self.chunks)

    def step(self, group: int, h, codes, addresses, grad_scale, num_threads) -> set:
        """Step the batches of ``group``; returns the indices of the arrays it stepped."""
        done = set()
        for batch in self.batches[group]:
            ready = ready_to_batch(batch, self.kind(codes[batch.indices]))
            if ready is None:
                continue  # stepped one by one
            flags, step = ready
            coef = np.array(coefficients(h, step, grad_scale), dtype=compute_dtype(flags.param))
            run_parallel(num_threads, batch.work, dense.multi_kernel(flags), batch.tables,
                         addresses[batch.indices], batch.sizes, batch.chunks, coef,
                         batch.noises(step))
            advance(batch, done)
        return done


def _grad_dtypes() -> list[np.dtype]:
    """The gradient dtypes the fast checks start with; bfloat16's (ml_dtypes' or its
    bits) are learned on first sight, so that building a plan imports nothing."""
    return [np.dtype(k) for k in KINDS if k != "bfloat16"]
