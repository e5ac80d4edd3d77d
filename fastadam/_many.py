"""Many arrays in one parallel region on the CPU.

The arrays of a param group that share dtypes and options form a batch; one
kernel call steps a whole batch, its work split into even chunks across the
threads. Params and state are fixed, so their typed lists are built once; the
gradients change every step and reach the kernel as a table of data addresses,
which costs far less per array than any numba container.
"""

from __future__ import annotations

from operator import attrgetter

import numpy as np
from numba.typed import List

from . import _cpu
from ._dispatch import as_kernel_array, kernel_views
from ._scalars import coefficients, compute_dtype
from ._validate import kind

_shape, _dtype, _itemsize = attrgetter("shape"), attrgetter("dtype"), attrgetter("itemsize")
_c_contiguous = attrgetter("flags.c_contiguous")


class Batch:
    """Arrays (by index) of one group that one kernel call steps together."""

    def __init__(self, indices: list[int], slots: list) -> None:
        self.indices = np.array(indices, dtype=np.int64)
        self.slots = slots
        views = [kernel_views((s.flat, s.flat, *s.state)) for s in slots]
        self.lists = [List(v[k] for v in views) for k in (0, 2, 3, 4, 5, 6)]
        self.chunks = _cpu.chunk_table([s.flat.size for s in slots])


class ManyArrays:
    """The batches of an optimizer's groups, and the fast checks of a list of gradients."""

    def __init__(self, groups: list) -> None:
        self.batches = []  # per group: list of Batch
        index = 0
        slots_all = []
        for _, slots in groups:
            by_key: dict = {}
            for slot in slots:
                key = slot.flags._replace(grad="")
                by_key.setdefault(key, []).append((index, slot))
                index += 1
            self.batches.append([Batch([i for i, _ in members], [s for _, s in members])
                                 for members in by_key.values() if len(members) > 1])
            slots_all += slots
        self.shapes = [s.array.shape for s in slots_all]
        self.sizes = np.array([s.flat.size for s in slots_all], dtype=np.int64)
        self.nbytes = np.array([s.flat.nbytes for s in slots_all], dtype=np.int64)
        starts = np.array([_cpu.address(as_kernel_array(s.flat)) for s in slots_all],
                          dtype=np.int64)
        keep = self.nbytes > 0
        order = np.argsort(starts[keep])
        self.param_starts = starts[keep][order]
        self.param_ends = (starts + self.nbytes)[keep][order]

    def check(self, grads) -> tuple | None:
        """(kinds, addresses) when ``grads`` pass the fast checks, else None: the caller
        then checks them one by one, which names what is wrong."""
        if not isinstance(grads, (list, tuple)) or len(grads) != len(self.shapes):
            return None
        if not all(type(g) is np.ndarray for g in grads):
            return None
        if list(map(_shape, grads)) != self.shapes:
            return None
        dtypes = list(map(_dtype, grads))
        distinct = set(dtypes)
        if len(distinct) == 1:  # the usual case: one look-up
            kinds = [kind(dtypes[0])] * len(dtypes)
        else:
            kinds = list(map(kind, dtypes))
        if None in kinds or not all(map(_c_contiguous, grads)):
            return None
        if "bfloat16" in kinds or "float16" in kinds:  # numba has no bfloat16
            grads = list(map(as_kernel_array, grads))
        addresses = np.fromiter(map(_cpu.address, grads), np.int64, len(grads))
        # No gradient may share memory with any param: params are disjoint and sorted, so
        # the one that starts last before a gradient ends is the only candidate.
        itemsizes = np.fromiter(map(_itemsize, dtypes), np.int64, len(dtypes))
        ends = addresses + self.sizes * itemsizes
        candidate = np.searchsorted(self.param_starts, ends, side="left") - 1
        hit = (candidate >= 0) & (ends > addresses)
        if np.any(self.param_ends[np.maximum(candidate, 0)][hit] > addresses[hit]):
            return None
        return kinds, addresses

    def step(self, group: int, h, grads, kinds, addresses, grad_scale, num_threads) -> set:
        """Step the batches of ``group``; returns the indices of the arrays it stepped."""
        done = set()
        for batch in self.batches[group]:
            grad_kinds = {kinds[i] for i in batch.indices}
            steps = {s.step for s in batch.slots}
            if len(grad_kinds) != 1 or len(steps) != 1:
                continue  # stepped one by one
            flags = batch.slots[0].flags._replace(grad=grad_kinds.pop())
            coef = np.array(coefficients(h, steps.pop() + 1, grad_scale),
                            dtype=compute_dtype(flags.param))
            like_grad = as_kernel_array(grads[batch.indices[0]].reshape(-1))  # types addresses
            params, ms, vs, v_maxs, comps, masters = batch.lists
            _cpu.with_threads(num_threads, _cpu.multi_kernel(flags), params,
                              addresses[batch.indices], ms, vs, v_maxs, comps, masters,
                              batch.chunks, like_grad, coef)
            for s in batch.slots:
                s.step += 1
            done.update(batch.indices.tolist())
        return done
