"""The timing harness: contenders, report rows, interleaved repeats, and what a step moves.

Every contender is timed through the public API, interleaved with the others in
each repeat, with warm-ups outside the timing; rows report medians, and ratios as
medians of the ratios within one repeat (robust to load bursts on a shared
machine). Each timed call follows untimed calls of the same contender for a few
milliseconds, as a step follows the same step in a training loop: a thread pool that
another contender left spinning (Numba's, torch's or a BLAS's OpenMP workers) has gone
idle by then, and the contender's own pool is awake, as it would be for its user.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import numba
import numpy as np

from .._backends.cpu.runtime import with_threads


@dataclass
class Contender:
    """One timed thing: ``run()`` performs one step. ``variant``: one of several ways to
    the same row (the memory-only kernels), the row being the best of them."""

    backend: str
    threads: int
    run: Callable[[], object]
    variant: str = ""


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
    # More threads than one: whether they lost to one thread (by over 5%) in at least
    # three repeats of four, so that a warning about them is not noise.
    threads_lose: bool | None = None


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

    def loses(self, baseline: Contender, c: Contender, by: float = 1.05) -> bool:
        """Whether ``c`` ran over ``by`` times ``baseline``'s time in at least three
        repeats of four."""
        pairs = list(zip(self.samples[id(baseline)], self.samples[id(c)]))
        return sum(s > by * b for b, s in pairs) >= 0.75 * len(pairs)

    def best_of(self, variants: list[Contender]) -> Contender:
        """One contender standing for ``variants`` (ways to the same row): in each repeat,
        the fastest of them."""
        best = Contender(variants[0].backend, max(v.threads for v in variants), variants[0].run)
        self.samples[id(best)] = [min(times) for times in
                                  zip(*(self.samples[id(v)] for v in variants))]
        self.first[id(best)] = min(self.first[id(v)] for v in variants)
        return best


LEAD_IN_S = 0.010  # untimed calls before each timed one, at least one


def measure(contenders: list[Contender], repeats: int) -> Timings:
    """Every contender's run, timed ``repeats`` times, interleaved, after two warm runs;
    each timed run after ``LEAD_IN_S`` seconds of untimed runs of the same contender."""
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
            lead_in_ends = time.perf_counter() + LEAD_IN_S
            c.run()
            while time.perf_counter() < lead_in_ends:
                c.run()
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


def _in_units(arrays: list) -> list:
    """``arrays`` as unsigned views of one element count, the smallest array's: 4-bit codes
    hold two elements per byte, so beside them a float32 array is read 8 bytes at a time.
    Where a count does not divide (an odd count of elements beside 4-bit codes), the
    memory-only loop stops at the smallest array's end (``roofline.memory_only_source``)."""
    units = min(a.size for a in arrays)
    out = []
    for a in arrays:
        width = a.nbytes // units if units else a.dtype.itemsize
        out.append(a if width == a.dtype.itemsize or width not in (1, 2, 4, 8)
                   or a.nbytes % units else a.view(f"u{width}"))
    return out


def roofline_contenders(opt, grad, threads_list, memory_only_kernel, backend="roofline"):
    """The memory-only kernel with the step's traffic, on scratch arrays of the step's
    dtypes. On the CPU, each loop variant: the flat loop on every thread count, the serial
    one once (``variant`` set; ``limits`` makes the rows of them)."""
    reads, writes = roofline_arrays(opt, grad)
    if backend != "roofline":  # the GPU: one launch, no threads
        kernel = memory_only_kernel(len(reads), len(writes))
        return [Contender(backend, 1, lambda: kernel(*reads, *writes))]
    out = []
    for variant, counts in (("flat", threads_list), ("serial", [1])):
        kernel = partial(memory_only_kernel(len(reads), len(writes), variant), *reads, *writes)
        out += [Contender(backend, t, _with_threads(t, kernel), variant) for t in counts]
    return out


def roofline_arrays(opt, grad) -> tuple[list, list]:
    """(reads, writes): scratch copies of what a step of ``opt`` reads (the gradient, twice
    with ``skip_nonfinite``) and writes, as unsigned views of one element count."""
    reads = [unsigned_copy(grad) for _ in range(2 if opt.options["skip_nonfinite"] else 1)]
    writes = [unsigned_copy(a) for a in step_arrays(opt)]
    units = _in_units(reads + writes)
    return units[:len(reads)], units[len(reads):]


def limits(timings: Timings, contenders: list[Contender], threads_list) -> list[Contender]:
    """The roofline row of each thread count: in each repeat the fastest memory-only
    variant on that many threads or fewer (what fewer threads do, more could)."""
    variants = [c for c in contenders if c.variant]
    return [timings.best_of([v for v in variants if v.threads <= t])
            for t in threads_list] if variants else []
