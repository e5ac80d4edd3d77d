"""``bench --inline``: Adam inside compiled code (``fastadam.numba``) against the same work
from Python, interleaved: the cost of a small step, the gradient fused into the update,
and a model trained all in Numba."""

from __future__ import annotations

import numba
import numpy as np
from numba import prange

from .. import numba as adam
from ..functional import adam_step
from ..optimizer import Adam
from . import factorization
from .harness import Contender, all_threads, measure, unsigned_copy
from .roofline import memory_only_kernel

SMALL, SMALL_STEPS, PYTHON_STEPS = 1024, 10_000, 1_000


@numba.njit
def _compiled_steps(param, grad, m, v, h, first, steps):
    for t in range(first, first + steps):
        adam.adam_step(param, grad, m, v, t, h)


@numba.njit(parallel=True)
def _fused_quadratic(param, target, m, v, h, step):
    """One step on the loss sum((param - target)**2), its gradient never stored."""
    c = adam.coefficients(step, h)
    for i in prange(param.size):
        adam.update(i, np.float32(2.0) * (param[i] - target[i]), param, m, v, c)


@numba.njit(parallel=True)
def _quadratic_gradient(param, target, grad):
    for i in prange(param.size):
        grad[i] = np.float32(2.0) * (param[i] - target[i])


class _Counted:
    """``fn(step)`` with the step counting up, one per call (``per_call`` at a time)."""

    def __init__(self, fn, per_call: int = 1) -> None:
        self.fn, self.per_call, self.step = fn, per_call, 1

    def __call__(self):
        self.fn(self.step)
        self.step += self.per_call


def small_step_contenders(rng) -> list[Contender]:
    """10,000 steps in one compiled loop, and 1,000 ``Adam.step`` calls from Python."""
    def arrays():
        return [rng.standard_normal(SMALL).astype(np.float32) for _ in range(2)] + \
            [np.zeros(SMALL, np.float32), np.zeros(SMALL, np.float32)]

    p, g, m, v = arrays()
    h = adam.hyper(lr=1e-3)
    compiled = _Counted(lambda t: _compiled_steps(p, g, m, v, h, t, SMALL_STEPS), SMALL_STEPS)
    p2, g2 = arrays()[:2]
    opt = Adam(p2, lr=1e-3)

    def python():
        for _ in range(PYTHON_STEPS):
            opt.step(g2)

    return [Contender("fastadam.numba.adam_step in a @njit loop", SMALL_STEPS, compiled),
            Contender("fastadam.Adam.step from Python", PYTHON_STEPS, python)]


def fused_contenders(rng, n: int) -> list[Contender]:
    """The quadratic loss's step: fused (28 bytes per element), the gradient stored then
    ``fastadam.adam_step`` (40), and the memory-only pass with the fused traffic."""
    def arrays():
        return (rng.standard_normal(n).astype(np.float32), rng.standard_normal(n).astype(
            np.float32), np.zeros(n, np.float32), np.zeros(n, np.float32))

    h = adam.hyper(lr=1e-3)
    p, target, m, v = arrays()
    p2, target2, m2, v2 = arrays()
    grad = np.empty(n, np.float32)

    def unfused(step):
        _quadratic_gradient(p2, target2, grad)
        adam_step(p2, grad, m2, v2, step=step, lr=1e-3)

    kernel = memory_only_kernel(1, 3)
    reads, writes = unsigned_copy(target), [unsigned_copy(a) for a in (p, m, v)]
    return [Contender("update fused in a prange loop", 28,
                      _Counted(lambda t: _fused_quadratic(p, target, m, v, h, t))),
            Contender("gradient array, then fastadam.adam_step", 40, _Counted(unfused)),
            Contender("memory-only pass, the fused loop's bytes", 28,
                      lambda: kernel(reads, *writes))]


def inline_rows(*, n: int, repeats: int, rng, torch: bool, data_size=None) -> list[str]:
    """The ``--inline`` report's lines."""
    lines = [f"Adam inside compiled code ({all_threads()} threads; interleaved, medians "
             f"of {repeats} repeats)", ""]
    small = small_step_contenders(rng)
    t = measure(small, repeats)
    per = [t.median(c) / c.threads for c in small]
    lines += [f"One step on {SMALL:,} float32 elements:"]
    lines += [f"  {c.backend:48s} {s * 1e6:7.2f} us per step" for c, s in zip(small, per)]
    lines += [f"  compiled: {per[1] / per[0]:.1f}x less per step", ""]
    fused = fused_contenders(rng, n)
    t = measure(fused, repeats)
    lines += [f"The quadratic loss's step on {n:,} float32 elements:"]
    for c in fused:
        seconds = t.median(c)
        gb_per_s = c.threads * n / seconds / 1e9  # (threads holds the bytes per element)
        lines.append(f"  {c.backend:48s} {seconds * 1e3:7.2f} ms {gb_per_s:6.1f} GB/s "
                     f"({c.threads} B/element)")
    lines += [f"  fused: {t.speedup(fused[1], fused[0]):.2f}x the unfused step, "
              f"{100 * t.speedup(fused[2], fused[0]):.0f}% of its memory limit", ""]
    users, items, rank, count = data_size or (100_000, 50_000, 32, 1_000_000)
    data = factorization.synthetic(rng, users, items, rank, count)
    trainers = factorization.trainers(data, lr=1e-2, batch=1024, torch=torch)
    epochs = [Contender(name, 1, run) for name, (run, _) in trainers.items()]
    t = measure(epochs, max(3, repeats // 3))
    lines += [f"A matrix factorization ({users:,} x {items:,}, rank {rank}, {count:,} ratings, "
              "batches of 1,024), one epoch:"]
    for c, (_, factors) in zip(epochs, trainers.values()):
        error = factorization.rmse(*factors(), data)
        lines.append(f"  {c.backend:48s} {t.median(c) * 1e3:7.1f} ms  "
                     f"{t.speedup(c, epochs[0]):5.2f}x the time in Numba  RMSE {error:.4f}")
    return lines
