"""The thread count of CPU kernel calls left to fastadam, counted (not timed): one thread
for small work on every path, and for larger work whichever count a clock says is
faster, as when a BLAS pool keeps the cores busy after a matmul."""

import numba
import numpy as np
import pytest

import fastadam
from fastadam._backends.cpu import threads

MANY = numba.config.NUMBA_NUM_THREADS
needs_threads = pytest.mark.skipif(MANY < 2, reason="one Numba thread: nothing to choose")


@pytest.fixture(autouse=True)
def fresh_choices():
    threads.forget()
    yield
    threads.forget()


class FakeWork:
    """A kernel whose time depends on the thread count it runs on, on a fake clock."""

    def __init__(self, monkeypatch, seconds: dict):
        self.now, self.seconds, self.counts = 0.0, seconds, []
        monkeypatch.setattr(threads, "_clock", lambda: self.now)

    def __call__(self):
        count = numba.get_num_threads()
        self.counts.append(count)
        self.now += self.seconds[1 if count == 1 else "many"]


def calls(work: FakeWork, n: int, size: int = 1 << 20) -> None:
    for _ in range(n):
        threads.run_parallel(None, size, work)


@needs_threads
def test_threads_that_lose_run_at_most_once_in_a_thousand_calls(monkeypatch):
    # After a NumPy matmul: 2.5 ms waiting for a spinning BLAS core, 60 us alone.
    work = FakeWork(monkeypatch, {1: 60e-6, "many": 2.5e-3})
    calls(work, 3000)
    threaded = sum(c > 1 for c in work.counts)
    assert threaded <= 2
    assert work.now <= 1.10 * 3000 * 60e-6  # the target: never 10% slower than one thread


@needs_threads
def test_threads_that_win_keep_winning(monkeypatch):
    work = FakeWork(monkeypatch, {1: 2e-3, "many": 1e-3})
    calls(work, 3000)
    assert sum(c == 1 for c in work.counts) <= 3000 * 0.02
    assert work.now <= 1.02 * 3000 * 1e-3 + 4e-3


@needs_threads
def test_the_choice_follows_the_machine(monkeypatch):
    work = FakeWork(monkeypatch, {1: 2e-3, "many": 1e-3})
    calls(work, 500)
    assert work.counts[-1] > 1
    work.seconds = {1: 2e-3, "many": 8e-3}  # a BLAS pool starts spinning between steps
    calls(work, 10)  # noticed at once (threads are timed on every call), confirmed soon
    assert work.counts[-9:-1] == [1] * 8 and sum(c > 1 for c in work.counts[-10:]) <= 3
    calls(work, 200)  # then tried rarely: each try costs four one-thread steps
    assert sum(c > 1 for c in work.counts[-200:]) <= 2
    work.seconds = {1: 2e-3, "many": 1e-3}  # and stops: threads come back on a try
    calls(work, 2000)
    assert work.counts[-1] > 1


@needs_threads
def test_a_misleading_first_time_is_tried_again_soon(monkeypatch):
    # The first threaded call pays for something once (starting the pool, first touch).
    work = FakeWork(monkeypatch, {1: 2e-3, "many": 50e-3})
    calls(work, 3)
    work.seconds = {1: 2e-3, "many": 1e-3}
    calls(work, 40)
    assert sum(c > 1 for c in work.counts[-20:]) >= 18


@needs_threads
def test_one_thread_once_chosen_is_not_timed_between_tries(monkeypatch):
    work = FakeWork(monkeypatch, {1: 60e-6, "many": 2.5e-3})
    reads = []
    monkeypatch.setattr(threads, "_clock", lambda: reads.append(1) or work.now)
    calls(work, 100)
    before = len(reads)
    calls(work, 3000)
    assert sum(c > 1 for c in work.counts[-3000:]) <= 1
    assert len(reads) - before <= 2 * (threads.RECENT + 1)  # the calls before a try, and it


def test_a_set_thread_count_is_kept(monkeypatch):
    work = FakeWork(monkeypatch, {1: 1e-3, "many": 1e-3})
    for _ in range(5):
        threads.run_parallel(1, 1 << 24, work)
    assert work.counts == [1] * 5


def test_small_work_runs_on_one_thread(monkeypatch):
    work = FakeWork(monkeypatch, {1: 1e-3, "many": 1e-6})
    calls(work, 50, size=threads.SERIAL_BELOW - 1)
    assert work.counts == [1] * 50


def _steps(seen, monkeypatch, rng):
    """Every CPU path of the optimizers on small work, recording thread counts."""
    counts = []
    with_threads = threads.with_threads

    def counting(n, fn, *args):
        counts.append(n)
        return with_threads(n, fn, *args)

    monkeypatch.setattr(threads, "with_threads", counting)
    shapes = [(64, 64), (10,), (4096,)]  # as a small MLP's: under SERIAL_BELOW in all
    params = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    grads = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    fastadam.Adam(params[0]).step(grads[0])
    fastadam.AdamW([{"params": params[:2]}, {"params": params[2:], "lr": 1e-4}]).step(grads)
    fastadam.AdamW(params, max_grad_norm=1.0).step(grads)
    fastadam.AdamW(params, skip_nonfinite=True).step(grads)
    fastadam.AdamW(params[2], state_dtype="8bit").step(grads[2])  # 4096: 8-bit moments
    table = rng.standard_normal((50, 8)).astype(np.float32)
    fastadam.SparseAdam(table).step(np.array([3, 7, 3]), rng.standard_normal((3, 8)).astype(
        np.float32))
    seen.extend(counts)


def test_every_path_runs_small_work_on_one_thread(monkeypatch, rng):
    seen = []
    _steps(seen, monkeypatch, rng)
    assert len(seen) >= 7 and set(seen) == {1}
