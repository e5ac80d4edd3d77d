"""How many Numba threads a CPU kernel call runs on when the caller did not say.

Threads pay only for large work on free cores. Below ``SERIAL_BELOW`` elements one
thread runs: a parallel region costs a few microseconds, threads save little. Above it, which wins
depends on the machine at that moment. Right after a NumPy (OpenBLAS) or torch
matmul, their threads keep spinning for milliseconds, and a Numba thread that needs
one of those cores waits for it: measured here, 4-5 ms for a step that one thread
does in 0.1 ms. A core taken by another process does the same.

So the choice is measured, per kernel and size (to a power of two). All threads run
where the mean of their last four times is under 95% of one thread's, else one thread.
The other count is tried again now and then: soon after a choice is first made or
changes (one time of each can mislead: a first parallel region, a burst of other
work), then, while tries confirm it, less often the more trying costs (at most about
1% of the time on the loser). Threads, once chosen, are timed on every call: a pool
that starts spinning makes them slower at once, and is noticed at once. One thread,
once chosen, is timed only on the four calls before a try, and the try: timing and
choosing cost about 1 us a call, and ten times that right after a matmul, when the
interpreter's caches are cold (measured here: 14 us more per step at 64K elements
after a 512 x 512 matmul, a 40% slower step), which is when one thread is chosen.
The first call of a kernel (its compile, maybe) runs on one thread and is not timed.
"""

from __future__ import annotations

import time

from .runtime import thread_count, with_threads

# Below this many elements one thread is never much slower than several (a parallel
# region costs 2-5 us: 16K float32 elements took 11.6 us on one thread, 9.9 on two),
# and right after a matmul threads cost milliseconds: not worth measuring.
SERIAL_BELOW = 1 << 16

RECENT = 4  # times kept per choice: their mean stands for it (a busy pool is bimodal)
# Threads run where faster by 5%: memory-bound steps of 64M elements gain only 5-15%
# from a second thread here, and (at 85%) lost it. Flips near the threshold cost
# little (the two counts are close), and threads, timed on every call, are left at
# once when a busy pool makes them slow.
THREADS_WIN_BELOW = 0.95
TRY_BUDGET = 0.01  # the share of time that re-trying the losing choice may cost
TRY_AT_LEAST, TRY_AT_MOST = 8, 4096  # calls between two tries of the losing choice

_clock = time.perf_counter


class Choice:
    """The measured thread count for one kernel at one size."""

    __slots__ = ("times", "use", "countdown")

    def __init__(self) -> None:
        self.times: dict[int, list[float]] = {}  # thread count -> its last few times
        self.use = 1
        self.countdown = 0  # calls until the other count is tried again

    def pick(self, many: int) -> int:
        """The thread count for the next call."""
        if many not in self.times:  # measured once each, one thread first
            return 1 if 1 not in self.times else many
        if self.countdown <= 0:
            return many if self.use == 1 else 1
        return self.use

    def record(self, threads: int, seconds: float, many: int) -> None:
        """Keep a call's time; choose again."""
        trial = threads != self.use and many in self.times and 1 in self.times
        times = self.times.setdefault(threads, [])
        if trial:
            times.clear()  # a try stands alone: the times before it are stale
        times.append(seconds)
        del times[:-RECENT]
        if len(self.times) < 2:
            return
        before = self.use
        best = {t: sum(v) / len(v) for t, v in self.times.items()}
        self.use = many if best[many] < THREADS_WIN_BELOW * best[1] else 1
        if trial or self.countdown <= 0 or self.use != before:
            if trial and self.use == before:  # the try confirmed the choice
                other = many if self.use == 1 else 1
                loss = max(best[other] - best[self.use], 0.0)
                calls = (loss / (TRY_BUDGET * best[self.use]) if best[self.use] > 0
                         else TRY_AT_MOST)
            else:  # a first choice, or a changed one: confirmed soon
                calls = TRY_AT_LEAST
            self.countdown = int(min(max(calls, TRY_AT_LEAST), TRY_AT_MOST))
        else:
            self.countdown -= 1


_choices: dict = {}


def run_parallel(num_threads: int | None, work: int, fn, *args, serial=None):
    """``fn(*args)``, a parallel kernel over ``work`` elements, on ``num_threads`` Numba
    threads; None: one below ``SERIAL_BELOW`` elements, else the measured choice.
    ``serial``: the same kernel's loop on the calling thread, which then runs wherever one
    thread does (no parallel region to enter)."""
    if num_threads is not None:
        if num_threads == 1 and serial is not None:
            return serial(*args)
        return with_threads(num_threads, fn, *args)
    if work < SERIAL_BELOW:
        return with_threads(1, fn, *args) if serial is None else serial(*args)
    key = (fn, work.bit_length())
    choice = _choices.get(key)
    if choice is not None and choice.use == 1 and choice.countdown > RECENT:  # untimed
        choice.countdown -= 1
        return with_threads(1, fn, *args) if serial is None else serial(*args)
    many = thread_count()
    if many <= 1:
        return fn(*args) if serial is None else serial(*args)
    if choice is None:
        _choices[key] = Choice()
        return with_threads(1, fn, *args)  # compiles, perhaps: not timed
    threads = choice.pick(many)
    start = _clock()
    if threads == 1 and serial is not None:
        out = serial(*args)
    else:
        out = with_threads(threads, fn, *args)
    choice.record(threads, _clock() - start, many)
    return out


def measured(fn, work: int, serial):
    """``call(*args)``: ``run_parallel(None, work, fn, *args, serial=serial)`` for a caller
    that runs one kernel at one size again and again (the thin call), with the untimed
    one-thread path first: each Python operation before the kernel costs up to ten
    times more right after a matmul."""
    key = (fn, work.bit_length())

    def call(*args):
        choice = _choices.get(key)
        if choice is not None and choice.use == 1 and choice.countdown > RECENT:
            choice.countdown -= 1
            return serial(*args)
        return run_parallel(None, work, fn, *args, serial=serial)

    return call


def forget() -> None:
    """Drop every measured choice (a test's, or after the machine changed)."""
    _choices.clear()
