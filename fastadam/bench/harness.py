"""The timing harness: contenders, report rows, interleaved repeats, and what a step moves.

Every contender is timed through the public API, interleaved with the others in
each repeat, with warm-ups outside the timing; rows report medians, and ratios as
medians of the ratios within one repeat (robust to load bursts on a shared
machine).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import numba
import numpy as np

from .._backends.cpu.runtime import with_threads


@dataclass
class Contender:
    """One timed thing: ``run()`` performs one step."""

    backend: str
    threads: int
    run: Callable[[], object]


@dataclass
class Row:
    """One line of the report (and one JSON record)."""

    backend: str
    threads: int
    n: int
    dtype: str
    config: str
    median_s: float
    gb_per_s: float
    speedup_vs_numpy: float | None
    roofline_fraction: float | None
    compile_s: float | None
    repeats: int
    bytes_per_element: float
    speedup_vs_torch: float | None = None  # the row-sparse table: vs torch's SparseAdam


@dataclass
class Timings:
    """Seconds of each contender's repeats (interleaved) and of its first call."""

    samples: dict
    first: dict

    def median(self, c: Contender) -> float:
        """``c``'s median seconds per run."""
        return statistics.median(self.samples[id(c)])

    def speedup(self, baseline: Contender, c: Contender) -> float:
        """How many times faster ``c`` runs than ``baseline``: the median of the ratios
        of their runs in the same repeat (a burst of load on a shared machine slows both,
        and leaves the ratio)."""
        return statistics.median(b / s for b, s in zip(self.samples[id(baseline)],
                                                        self.samples[id(c)]))


def measure(contenders: list[Contender], repeats: int) -> Timings:
    """Every contender's run, timed ``repeats`` times, interleaved, after two warm runs."""
    first = {}
    for c in contenders:
        t0 = time.perf_counter()
        c.run()
        first[id(c)] = time.perf_counter() - t0
        c.run()  # warm: caches, page faults, lazy state
    times = {id(c): [] for c in contenders}
    for r in range(repeats):
        # Rotate the order, so that no contender always follows the same one.
        k = r % len(contenders)
        for c in contenders[k:] + contenders[:k]:
            t0 = time.perf_counter()
            c.run()
            times[id(c)].append(time.perf_counter() - t0)
    return Timings(times, first)


def all_threads() -> int:
    """Numba's thread count: what backend='cpu' uses by default."""
    return numba.config.NUMBA_NUM_THREADS


def _with_threads(threads: int, fn: Callable[[], object]) -> Callable[[], object]:
    return lambda: with_threads(threads, fn)


def step_arrays(opt) -> list:
    """The arrays of the params' size one step of ``opt`` (on one params array) reads and
    writes, grad excluded (8-bit states: the codes)."""
    slot = opt._slots[0]
    return [slot.flat] + [a for a in slot.state if a is not None]


def traffic_bytes(opt, grad) -> int:
    """Bytes one step must move at the least: each array read once, each state written
    once (the params and every state array, 8-bit ones' absmax too), plus a second read
    of the gradient when ``skip_nonfinite`` checks it first."""
    grad_reads = 2 if opt.options["skip_nonfinite"] else 1
    absmax = sum(a.nbytes for a in opt._slots[0].absmax or () if a is not None)
    return 2 * (sum(a.nbytes for a in step_arrays(opt)) + absmax) + grad_reads * grad.nbytes


def unsigned(a):
    """An unsigned-integer view of an array: the same bytes, integer adds only."""
    return a.view(f"u{a.dtype.itemsize}")


def unsigned_copy(a):
    """A copy of an array's bits as unsigned integers, where it lives: integer adds only,
    and numba-cuda's device arrays have no ``copy`` (the simulator's do, from NumPy)."""
    bits = unsigned(a)
    if isinstance(bits, np.ndarray):
        return bits.copy()
    from numba import cuda  # optional: only device arrays get here

    out = cuda.device_array(bits.shape, bits.dtype)
    out.copy_to_device(bits)
    return out


def roofline_contenders(opt, grad, threads_list, memory_only_kernel, backend="roofline"):
    """The memory-only kernel with the step's traffic, on scratch arrays of the step's dtypes."""
    arrays = step_arrays(opt)
    reads = [unsigned_copy(grad) for _ in range(2 if opt.options["skip_nonfinite"] else 1)]
    writes = [unsigned_copy(a) for a in arrays]
    kernel = memory_only_kernel(len(reads), len(writes))
    if backend != "roofline":  # the GPU: one launch, no threads
        return [Contender(backend, 1, lambda: kernel(*reads, *writes))]
    return [Contender(backend, t, _with_threads(t, lambda: kernel(*reads, *writes)))
            for t in threads_list]
