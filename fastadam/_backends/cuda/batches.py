"""The GPU batch plan: many arrays in one launch, every array reached through a table of
device addresses. A lone array is a batch too, so that a list steps without a Python
call per array."""

from __future__ import annotations

import numpy as np

from ..._core.hyper import coefficients
from ..grouping import advance, batched, chunk_table, one_kind, ready_to_batch
from ..views import as_kernel_array
from .dense import adam_step_cuda_many
from .eight_bit import adam_step_8bit_cuda_many, quantization_blocks
from .memory import to_device
from .runtime import CHUNK, Addresses, address


class DeviceBatch:
    """Arrays (by index) of one group that one launch steps together; tables on the GPU."""

    def __init__(self, indices: list[int], slots: list) -> None:
        self.indices = np.array(indices, dtype=np.int64)
        self.slots = slots
        rows = [[address(a if a is not None else s.flat) for a in s.state]
                for s in slots]
        self.tables = to_device(np.array(
            [[address(s.flat) for s in slots], *zip(*rows)], dtype=np.uint64))
        self.chunks = to_device(chunk_table([s.flat.size for s in slots], CHUNK))
        self.keys = to_device(np.array([s.key for s in slots], dtype=np.uint32))
        self.grads = Addresses(len(slots))

    def launch(self, flags, h, step: int, grad_addresses, grad_scale, stream, steps) -> None:
        adam_step_cuda_many(self.tables, self.chunks, self.grads, grad_addresses, flags,
                            coefficients(h, step, grad_scale), stream, steps, h, self.keys,
                            step)


class DeviceBatch8bit:
    """Low-bit arrays (by index) of one group and state format that one launch steps
    together: a warp per quantization block of any of them."""

    def __init__(self, indices: list[int], slots: list) -> None:
        self.indices = np.array(indices, dtype=np.int64)
        self.slots, self.fmt = slots, slots[0].fmt
        rows = []
        for s in slots:
            codes, extras = s.state[:3], s.state[3:]
            codes = [codes[0], codes[1], codes[2] if codes[2] is not None else codes[1]]
            absmax = [*s.absmax[:2], s.absmax[2] if s.absmax[2] is not None else s.absmax[1]]
            extras = [as_kernel_array(a if a is not None else s.flat) for a in extras]
            rows.append([address(a) for a in
                         (as_kernel_array(s.flat), *codes, *absmax, *extras)])
        self.tables = to_device(np.array(rows, dtype=np.uint64).T.copy())
        counts = [quantization_blocks(s.flat.size, self.fmt) for s in slots]
        self.blocks = sum(counts)
        self.firsts = to_device(np.cumsum([0, *counts], dtype=np.int64))
        self.sizes = to_device(np.array([s.flat.size for s in slots], dtype=np.int64))
        self.keys = to_device(np.array([s.key for s in slots], dtype=np.uint32))
        self.grads = Addresses(len(slots))

    def launch(self, flags, h, step: int, grad_addresses, grad_scale, stream, steps) -> None:
        adam_step_8bit_cuda_many(self, grad_addresses, flags,
                                 coefficients(h, step, grad_scale), stream, steps, h, step)


class DeviceBatches:
    """The batches of an optimizer's groups on the GPU: one launch per batch and step. A
    lone array is a batch too, so that a list steps without a Python call per array."""

    def __init__(self, groups: list) -> None:
        self.batches = batched(groups, DeviceBatch, smallest=1, make_8bit=DeviceBatch8bit)

    def ready(self, kinds: list) -> bool:
        """Whether every batch can step as one with gradients of ``kinds`` (per array)."""
        return all(ready_to_batch(batch, one_kind({kinds[i] for i in batch.indices})) is not None
                   for group in self.batches for batch in group)

    def step(self, group: int, h, kinds: list, addresses: np.ndarray, grad_scale, stream,
             steps=None) -> set:
        """Step the batches of ``group``, given the float kind and the device address of
        every checked gradient of the optimizer; returns the indices of the arrays it
        stepped. ``steps``: the step count on the device (``dense.StepCount``), which
        then does the counting and holds the gradients' multiplier."""
        done = set()
        for batch in self.batches[group]:
            ready = ready_to_batch(batch, one_kind({kinds[i] for i in batch.indices}))
            if ready is None:
                continue  # stepped one by one
            flags, step = ready
            batch.launch(flags, h, step, addresses[batch.indices], grad_scale, stream, steps)
            advance(batch, done, counted=steps is None)
        return done
