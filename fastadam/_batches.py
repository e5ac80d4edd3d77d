"""The batch plans: many arrays in one parallel region on the CPU, in one launch on the GPU.

The arrays of a param group that share dtypes and options form a batch; one
kernel call steps a whole batch, its work split into even chunks. On the CPU,
params and state are fixed, so their typed lists are built once; the gradients
change every step and reach the kernel as a table of data addresses, which
costs far less per array than any numba container. On the GPU every array
reaches the kernel as an address in a table.
"""

from __future__ import annotations

import numba
import numpy as np
from numba.typed import List

from . import _cpu, quant8
from ._dispatch import as_kernel_array, kernel_views
from ._headers import Table
from ._scalars import coefficients, compute_dtype
from ._validate import KINDS, kind


class HostBatch:
    """Arrays (by index) of one group that one kernel call steps together."""

    def __init__(self, indices: list[int], slots: list) -> None:
        self.indices = np.array(indices, dtype=np.int64)
        self.slots = slots
        views = [kernel_views((s.flat, s.flat, *s.state)) for s in slots]
        self.lists = [List(v[k] for v in views) for k in (0, 2, 3, 4, 5, 6)]
        self.chunks = _cpu.chunk_table([s.flat.size for s in slots])


def batched(groups: list, make, smallest: int = 2, make_8bit=None) -> list:
    """Per group, ``make(indices, slots)`` for each set of ``smallest`` or more arrays whose
    options and dtypes match (indices count over all groups); 8-bit ones by ``make_8bit``,
    or, without it, none (they step one by one)."""
    out, index = [], 0
    for _, slots in groups:
        by_key: dict = {}
        for slot in slots:
            eight = slot.absmax is not None
            if not eight or make_8bit is not None:
                by_key.setdefault((eight, slot.flags._replace(grad="")), []).append(
                    (index, slot))
            index += 1
        out.append([(make_8bit if eight else make)([i for i, _ in members],
                                                   [s for _, s in members])
                    for (eight, _), members in by_key.items() if len(members) >= smallest])
    return out


class HostBatches:
    """The batches of an optimizer's groups, and the fast checks of a list of gradients."""

    def __init__(self, groups: list) -> None:
        self.batches = batched(groups, HostBatch)  # per group: list of HostBatch
        slots_all = [slot for _, slots in groups for slot in slots]
        self.count = len(slots_all)
        self.table = Table([s.array.shape for s in slots_all], _grad_dtypes())
        self.sizes = np.array([s.flat.size for s in slots_all], dtype=np.int64)
        self.chunks = _cpu.chunk_table(self.sizes)
        # The optimizer's memory (params and state, disjoint), sorted: no gradient may touch it.
        arrays = [a for s in slots_all for a in (s.flat, *s.state, *(s.absmax or ()))
                  if a is not None and a.size]
        self.owned = Owned([_cpu.address(as_kernel_array(a)) for a in arrays],
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
            count = _cpu.multi_nonfinite_kernel(grad_kind)
            if _cpu.with_threads(num_threads, count, addresses, self.sizes, rows):
                return False
        return True

    def step(self, group: int, h, codes, addresses, grad_scale, num_threads) -> set:
        """Step the batches of ``group``; returns the indices of the arrays it stepped."""
        done = set()
        for batch in self.batches[group]:
            ready = _ready(batch, self.kind(codes[batch.indices]))
            if ready is None:
                continue  # stepped one by one
            flags, step = ready
            coef = np.array(coefficients(h, step, grad_scale), dtype=compute_dtype(flags.param))
            params, ms, vs, v_maxs, comps, masters = batch.lists
            _cpu.with_threads(num_threads, _cpu.multi_kernel(flags), params,
                              addresses[batch.indices], ms, vs, v_maxs, comps, masters,
                              batch.chunks, coef)
            _advance(batch, done)
        return done


def _grad_dtypes() -> list[np.dtype]:
    """The gradient dtypes the fast checks accept (bfloat16 where ml_dtypes is installed)."""
    dtypes = [np.dtype(k) for k in KINDS if k != "bfloat16"]
    try:
        import ml_dtypes
    except ImportError:
        return dtypes
    return dtypes + [np.dtype(ml_dtypes.bfloat16)]


class Owned:
    """The memory an optimizer writes (params and state: disjoint), as sorted address
    ranges, and the one check a gradient list needs against it."""

    def __init__(self, starts, nbytes) -> None:
        starts = np.array(starts, dtype=np.int64)
        ends = starts + np.array(nbytes, dtype=np.int64)
        order = np.argsort(starts)
        self.starts, self.ends = starts[order], ends[order]

    def overlaps(self, starts: np.ndarray, ends: np.ndarray) -> bool:
        """Whether any [start, end) range (int64 addresses) shares memory with the owned."""
        return _overlap(starts, ends, self.starts, self.ends)


@numba.njit(nogil=True)
def _overlap(starts, ends, owned_starts, owned_ends) -> bool:
    """Whether any [start, end) range shares memory with an owned one. Those are disjoint
    and sorted, so the one that starts last before a range ends is the only candidate."""
    for a in range(starts.size):
        if ends[a] <= starts[a]:
            continue
        k = np.searchsorted(owned_starts, ends[a]) - 1
        if k >= 0 and owned_ends[k] > starts[a]:
            return True
    return False


class DeviceBatch:
    """Arrays (by index) of one group that one launch steps together; tables on the GPU."""

    def __init__(self, indices: list[int], slots: list) -> None:
        from . import _cuda

        self.indices = np.array(indices, dtype=np.int64)
        self.slots = slots
        rows = [[_cuda.address(a if a is not None else s.flat) for a in s.state]
                for s in slots]
        self.tables = _cuda.to_device(np.array(
            [[_cuda.address(s.flat) for s in slots], *zip(*rows)], dtype=np.uint64))
        self.chunks = _cuda.to_device(_cpu.chunk_table([s.flat.size for s in slots],
                                                       _cuda.CHUNK))
        self.grads = _cuda.Addresses(len(slots))

    def launch(self, flags, h, step: int, grad_addresses, grad_scale, stream, steps) -> None:
        from . import _cuda

        _cuda.adam_step_cuda_many(self.tables, self.chunks, self.grads, grad_addresses, flags,
                                  coefficients(h, step, grad_scale), stream, steps, h,
                                  grad_scale)


class DeviceBatch8bit:
    """8-bit arrays (by index) of one group that one launch steps together: a thread block
    per quantization block of any of them."""

    def __init__(self, indices: list[int], slots: list) -> None:
        from . import _cuda

        self.indices = np.array(indices, dtype=np.int64)
        self.slots = slots
        rows = []
        for s in slots:
            codes, extras = s.state[:3], s.state[3:]
            codes = [codes[0], codes[1], codes[2] if codes[2] is not None else codes[1]]
            absmax = [*s.absmax[:2], s.absmax[2] if s.absmax[2] is not None else s.absmax[1]]
            extras = [as_kernel_array(a if a is not None else s.flat) for a in extras]
            rows.append([_cuda.address(a) for a in
                         (as_kernel_array(s.flat), *codes, *absmax, *extras)])
        self.tables = _cuda.to_device(np.array(rows, dtype=np.uint64).T.copy())
        counts = [quant8.blocks(s.flat.size) for s in slots]
        self.blocks = sum(counts)
        self.firsts = _cuda.to_device(np.cumsum([0, *counts], dtype=np.int64))
        self.sizes = _cuda.to_device(np.array([s.flat.size for s in slots], dtype=np.int64))
        self.grads = _cuda.Addresses(len(slots))

    def launch(self, flags, h, step: int, grad_addresses, grad_scale, stream, steps) -> None:
        from ._cuda8bit import adam_step_8bit_cuda_many

        adam_step_8bit_cuda_many(self, grad_addresses, flags,
                                 coefficients(h, step, grad_scale), stream, steps, h,
                                 grad_scale)


class DeviceBatches:
    """The batches of an optimizer's groups on the GPU: one launch per batch and step. A
    lone array is a batch too, so that a list steps without a Python call per array."""

    def __init__(self, groups: list) -> None:
        self.batches = batched(groups, DeviceBatch, smallest=1, make_8bit=DeviceBatch8bit)

    def ready(self, kinds: list) -> bool:
        """Whether every batch can step as one with gradients of ``kinds`` (per array)."""
        return all(_ready(batch, _one({kinds[i] for i in batch.indices})) is not None
                   for group in self.batches for batch in group)

    def step(self, group: int, h, kinds: list, addresses: np.ndarray, grad_scale, stream,
             steps=None) -> set:
        """Step the batches of ``group``, given the float kind and the device address of
        every checked gradient of the optimizer; returns the indices of the arrays it
        stepped. ``steps``: the step count on the device (``_cuda.StepCount``), which
        then does the counting."""
        done = set()
        for batch in self.batches[group]:
            ready = _ready(batch, _one({kinds[i] for i in batch.indices}))
            if ready is None:
                continue  # stepped one by one
            flags, step = ready
            batch.launch(flags, h, step, addresses[batch.indices], grad_scale, stream, steps)
            _advance(batch, done, counted=steps is None)
        return done


def _one(kinds: set) -> str | None:
    return kinds.pop() if len(kinds) == 1 else None


def _ready(batch, grad_kind: str | None) -> tuple | None:
    """(flags, 1-based step) when a batch can step as one: one gradient kind, one step
    count; else None."""
    steps = {s.step for s in batch.slots}
    if grad_kind is None or len(steps) != 1:
        return None
    return batch.slots[0].flags._replace(grad=grad_kind), steps.pop() + 1


def _advance(batch, done: set, counted: bool = True) -> None:
    """Mark a batch stepped, and count its step on the host (unless the device counts)."""
    if counted:
        for s in batch.slots:
            s.step += 1
    done.update(batch.indices.tolist())
