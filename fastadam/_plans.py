"""How an optimizer's arrays step: every check on the gradients, then the kernels.

Three paths, chosen per step: one kernel call per array (a single array, or what
no batch covers), a batch of host arrays in one parallel region, a batch of GPU
arrays in one launch (``_batches``). Every gradient is checked before any kernel
writes, so a refused step changes nothing. A new kind of step (row-sparse, 8-bit
moments) is a new plan over the same slots.
"""

from __future__ import annotations

import numpy as np

from . import _validate as check
from ._dispatch import all_finite, apply
from ._slots import STATE_KEYS


class Plans:
    """The stepping plans of one optimizer's groups (``[(hyper, [Slot, ...]), ...]``)."""

    def __init__(self, groups: list, slots: list, *, single: bool, backend: str,
                 num_threads: int | None, skip_nonfinite: bool, adopted: bool) -> None:
        self.groups, self.slots, self.single = groups, slots, single
        self.backend, self.device = backend, backend == "cuda"
        self.num_threads, self.skip_nonfinite = num_threads, skip_nonfinite
        self.guarded = _guarded(slots, single, adopted)
        self.host = self.gpu = None
        # Lists step in one parallel region (CPU) or one launch (GPU) per batch of alike arrays.
        if not single and backend == "cpu":
            from ._batches import HostBatches  # loads numba: not at import time

            self.host = HostBatches(groups)
        if not single and backend == "cuda":
            from ._batches import DeviceBatches

            self.gpu = DeviceBatches(groups)

    def step(self, grads, grad_scale, stream) -> bool:
        """Check ``grads`` and everything else, then step; False when ``skip_nonfinite``
        found NaN or inf (nothing changed)."""
        fast = None if self.host is None else self.host.check(grads)
        if fast is not None:
            return self._step_host_batches(grads, *fast, grad_scale, stream)
        flats = self._checked_grads(grads)
        scale = check.grad_scale(grad_scale)
        cuda_stream = check.stream(stream, self.backend)
        if self.skip_nonfinite and not all_finite(self.backend, flats,
                                                  num_threads=self.num_threads,
                                                  stream=cuda_stream):
            return False
        first = 0
        for g, (h, slots) in enumerate(self.groups):
            done = set() if self.gpu is None else self.gpu.step(g, h, flats, scale, cuda_stream)
            self._step_rest(first, slots, done, flats, h, scale, cuda_stream)
            first += len(slots)
        return True

    def _checked_grads(self, grads) -> list:
        """The gradients as 1-D views, every one checked (shape, dtype, device, memory)."""
        if self.single:
            g = check.like("grads", grads, self.slots[0].array, writable=False,
                           device=self.device)
            check.apart("grads", g, self.guarded)
            return [g.reshape(-1)]
        if isinstance(grads, np.ndarray) or not isinstance(grads, (list, tuple)):
            raise TypeError("grads must be a list of arrays, one per params array")
        if len(grads) != len(self.slots):
            raise ValueError(f"grads has {len(grads)} arrays, but there are "
                             f"{len(self.slots)} params arrays")
        names = [f"grads[{i}]" for i in range(len(grads))]
        grads = [check.like(name, g, slot.array, writable=False, device=self.device)
                 for name, g, slot in zip(names, grads, self.slots)]
        check.apart_from_all(list(zip(names, grads)), list(self.guarded.items()))
        return [g.reshape(-1) for g in grads]

    def _step_host_batches(self, grads, codes, addresses, grad_scale, stream) -> bool:
        # Lists of host arrays that passed the fast checks: batches in one region each.
        scale = check.grad_scale(grad_scale)
        check.stream(stream, self.backend)
        if self.skip_nonfinite and not self.host.all_finite(codes, addresses, self.num_threads):
            return False
        first = 0
        for g, (h, slots) in enumerate(self.groups):
            done = self.host.step(g, h, codes, addresses, scale, self.num_threads)
            self._step_rest(first, slots, done, grads, h, scale, None)
            first += len(slots)
        return True

    def _step_rest(self, first: int, slots, done: set, grads, h, scale, stream) -> None:
        """Step the arrays of a group (numbered from ``first``) that no batch stepped:
        one kernel call each."""
        if len(done) == len(slots):
            return
        for i in range(first, first + len(slots)):
            if i in done:
                continue
            slot, flat = self.slots[i], grads[i].reshape(-1)
            grad_kind = check.kind(flat.dtype)
            if slot.flags.grad != grad_kind:
                slot.flags = slot.flags._replace(grad=grad_kind)
            apply(self.backend, (slot.flat, flat, *slot.state), h, slot.flags, slot.step + 1,
                  grad_scale=scale, num_threads=self.num_threads, stream=stream)
            slot.step += 1


def _guarded(slots: list, single: bool, adopted: bool) -> dict:
    """The memory no gradient may share, by name: the params, and adopted state arrays
    (an optimizer's own state is out of a caller's reach)."""
    guarded = {}
    for i, slot in enumerate(slots):
        arrays = (slot.flat, *slot.state[:3]) if adopted else (slot.flat,)
        for name, a in zip(("", *(f" {k}" for k in STATE_KEYS)), arrays):
            if a is not None:
                guarded[("params" if single else f"params[{i}]") + name] = a
    return guarded
