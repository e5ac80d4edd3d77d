"""The reads of a list of gradients before a GPU step, over a table of their addresses.

The sum of squares: one launch per gradient dtype (each thread block sums whole chunks,
in float64, by a fixed tree), then one block adds the chunks' sums in a fixed order; the
launch shape is fixed, so the result is the same bits at every call. With clipping, one
more thread turns the sum into the norm and the clip coefficient, on the device, for the
counted kernels. The non-finite check: one launch per gradient dtype into one flag.
"""

from __future__ import annotations

import math
from functools import cache

import numpy as np
from numba import cuda

from ..._core import hyper
from ..._core.dtypes import compute_dtype
from ..grouping import chunk_table
from ..shared import pointers
from .memory import to_device
from .runtime import (
    CHUNK,
    MAX_BLOCKS,
    THREADS_PER_BLOCK,
    Addresses,
    address,
    cached,
    converters,
    device_function,
    disk_cached,
    forget,
    inlined_function,
    pointer_at,
    stream_handle,
)

THREADS = THREADS_PER_BLOCK


@inlined_function
def _block_sum(shared, t, value):
    """The block's values summed into ``shared[0]`` by a fixed tree (every thread calls)."""
    shared[t] = value
    cuda.syncthreads()
    width = THREADS // 2
    while width > 0:
        if t < width:
            shared[t] += shared[t + width]
        cuda.syncthreads()
        width //= 2


@cache
def squares_kernel(grad_kind: str):
    """``kernel(grads, sizes, chunks, partial)``: ``partial[c]`` = the float64 sum of the
    squares of chunk ``c`` (rows (array index, start, stop)) of the gradients at device
    addresses ``grads``."""
    load = converters(compute_dtype(grad_kind))[grad_kind][0]
    grad_t = pointers.pointee(grad_kind)

    @cuda.jit
    def kernel(grads, sizes, chunks, partial):
        shared = cuda.shared.array(THREADS, np.float64)
        t = cuda.threadIdx.x
        row = cuda.blockIdx.x
        while row < chunks.shape[0]:
            g = pointer_at(grads[chunks[row, 0]], grad_t)
            acc = np.float64(0.0)
            i = chunks[row, 1] + t
            while i < chunks[row, 2]:
                x = np.float64(load(g[i]))
                acc += x * x
                i += THREADS
            _block_sum(shared, t, acc)
            if t == 0 and chunks[row, 2] > chunks[row, 1]:  # (another kind's rows: empty)
                partial[row] = shared[0]
            cuda.syncthreads()
            row += cuda.gridDim.x

    return cached(kernel, "cuda.norm.squares_kernel", grad_kind)


@cache
def nonfinite_rows_kernel(grad_kind: str):
    """``kernel(grads, chunks, flag)``: ``flag[0] = 1`` if an element of the chunks (rows
    as in ``squares_kernel``) of the gradients at device addresses ``grads`` is NaN or
    inf: the non-finite check of a whole list in one launch."""
    load = converters(compute_dtype(grad_kind))[grad_kind][0]
    grad_t = pointers.pointee(grad_kind)

    @cuda.jit
    def kernel(grads, chunks, flag):
        row = cuda.blockIdx.x
        while row < chunks.shape[0]:
            g = pointer_at(grads[chunks[row, 0]], grad_t)
            i = chunks[row, 1] + cuda.threadIdx.x
            while i < chunks[row, 2]:
                x = load(g[i])
                if x - x != 0:  # NaN for NaN and for +-inf
                    flag[0] = 1
                i += cuda.blockDim.x
            row += cuda.gridDim.x

    return cached(kernel, "cuda.norm.nonfinite_rows_kernel", grad_kind)


@disk_cached("cuda.norm.total")
@cuda.jit
def _total(partial, out):
    """One block: ``out[0]`` = the sum of ``partial``, thread-strided then by a tree."""
    shared = cuda.shared.array(THREADS, np.float64)
    t = cuda.threadIdx.x
    acc = np.float64(0.0)
    i = t
    while i < partial.size:
        acc += partial[i]
        i += THREADS
    _block_sum(shared, t, acc)
    if t == 0:
        out[0] = shared[0]


class GradPasses:
    """The reads of a list of gradients of fixed sizes before a step, set up once (the
    chunk rows of each mix of kinds stay on the device): their sum of squares (one launch
    per kind, one for the total) or their non-finite check (one launch per kind). The
    gradients' addresses go up per call; nothing waits. Chunks of other kinds are empty
    rows to each kind's launch, so every partial sum is written once."""

    def __init__(self, sizes) -> None:
        self.sizes = np.asarray(sizes, dtype=np.int64)
        self.chunks = chunk_table(self.sizes, CHUNK)
        self.device_sizes = to_device(self.sizes)
        self.partial = cuda.device_array(self.chunks.shape[0], np.float64)
        self.total = cuda.device_array(1, np.float64)
        self.table = Addresses(len(self.sizes))
        self.launches: dict = {}

    def squares(self, kinds: tuple, addresses: np.ndarray, stream):
        """``total``: the float64 sum of the squares of the gradients at device
        ``addresses``, of float ``kinds``, once ``stream`` gets there (the caller
        ``forget``s the addresses when done with them)."""
        table = self.table.send(addresses, stream)
        for grad_kind, rows, blocks in self._launches(kinds):
            squares_kernel(grad_kind)[blocks, THREADS, stream](table, self.device_sizes, rows,
                                                               self.partial)
        _total[1, THREADS, stream](self.partial, self.total)
        return self.total

    def flag_nonfinite(self, kinds: tuple, addresses: np.ndarray, flag, stream) -> None:
        """Set ``flag[0]`` if a gradient at ``addresses`` holds NaN or inf."""
        table = self.table.send(addresses, stream)
        for grad_kind, rows, blocks in self._launches(kinds):
            nonfinite_rows_kernel(grad_kind)[blocks, THREADS, stream](table, rows, flag)

    def _launches(self, kinds: tuple) -> list:
        """(kind, its chunk rows on the device, blocks) per kind of ``kinds``, made once."""
        if kinds in self.launches:
            return self.launches[kinds]
        out = self.launches[kinds] = []
        for grad_kind in dict.fromkeys(kinds):
            rows = self.chunks
            if len(set(kinds)) > 1:  # the chunks of this kind write their own slots
                mine = np.array([kinds[t] == grad_kind for t in rows[:, 0]], dtype=bool)
                rows = np.where(mine[:, None], rows, np.array([0, 0, 0]))
            if rows.shape[0]:
                out.append((grad_kind, to_device(rows), max(1, min(MAX_BLOCKS, rows.shape[0]))))
        return out


def sum_of_squares(grads: list, stream):
    """The float64 sum of the squares of every element of ``grads`` ((kernel view, kind)
    pairs), as a one-element device array; nothing waits for it."""
    addresses = np.array([address(g) for g, _ in grads], dtype=np.uint64)
    total = GradPasses([g.size for g, _ in grads]).squares(tuple(k for _, k in grads), addresses,
                                                        stream)
    forget(addresses)
    return total


_clip_factor = device_function(hyper.clip_factor)
_clip_into_scale = device_function(hyper.clip_into_scale)


@disk_cached("cuda.norm.clip")
@cuda.jit
def clip_kernel(squares, grad_scale, max_norm, skip, norm, inv_scale, found):
    """One thread, after the norm pass: ``norm[0]`` = the total norm of the unscaled
    gradients; ``found[0]`` set if it is not finite and ``skip``; ``inv_scale[0]`` = what
    the counted kernels multiply the gradients by (1 / the loss scale that also clips).
    The host's arithmetic (``plans.Plan._clipped``), in float64 with IEEE division and sqrt."""
    if cuda.grid(1) == 0:
        total = math.sqrt(squares[0]) / grad_scale
        norm[0] = total
        if skip and total - total != 0:
            found[0] = 1
        inv_scale[0] = 1.0 / _clip_into_scale(grad_scale, _clip_factor(total, max_norm))


class DeviceNorm:
    """A step's total gradient norm, on the GPU: nothing waits for it until it is read
    (``float(norm)``, ``norm.item()``, ``np.asarray(norm)``). ``__cuda_array_interface__``
    hands it to CuPy or torch as a 0-d float64 array without a wait. It lives in the
    optimizer's buffer: the next clipped step overwrites it, after which reading this
    one raises (copy it to keep it)."""

    def __init__(self, buffer, owner, serial: int, stream) -> None:
        self._buffer, self._owner, self._serial, self._on = buffer, owner, serial, stream
        self._stream = stream_handle(stream) or 1  # 1: the legacy default stream, so named

    def item(self) -> float:
        """The norm as a Python float (waits for the step that computes it)."""
        if self._owner.norm_serial != self._serial:
            raise RuntimeError("this grad_norm was overwritten by a later step: copy it "
                               "(float(), or a CuPy/torch copy) before stepping again")
        self._on.synchronize()  # the step's stream: it may be a non-blocking one
        return float(self._buffer.copy_to_host()[0])

    def __float__(self) -> float:
        return self.item()

    def __array__(self, dtype=None, copy=None):
        return np.asarray(self.item(), dtype=dtype)

    @property
    def __cuda_array_interface__(self) -> dict:
        interface = dict(self._buffer.__cuda_array_interface__)  # none on the simulator
        interface.update(shape=(), strides=None, stream=self._stream)
        return interface

    def __repr__(self) -> str:
        return f"DeviceNorm(step {self._serial}, on the GPU)"
