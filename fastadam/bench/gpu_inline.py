"""The device check's section on Adam inside a user's own kernel: a quadratic loss whose
gradient a ``@cuda.jit`` kernel computes and applies with ``fastadam.numba.cuda.update``
(28 bytes per float32 element), against the gradient written to an array and then
``fastadam.adam_step`` on the GPU (40), and a device copy of 28 bytes per element; the
two give the same bits.

Imports ``numba.cuda`` at its top (the simulator needs its kernels in such a module)."""

from __future__ import annotations

import numpy as np
from numba import cuda

from .. import adam_step
from .. import numba as adam
from ..numba import device
from .gpu_harness import Check, device_array, timed

THREADS = 256


@cuda.jit
def _fused(param, target, m, v, c):
    i = cuda.grid(1)
    if i < param.size:
        device.update(i, np.float32(2.0) * (param[i] - target[i]), param, m, v, c)


@cuda.jit
def _gradient(param, target, grad):
    i = cuda.grid(1)
    if i < param.size:
        grad[i] = np.float32(2.0) * (param[i] - target[i])


def inline_rows(check: Check) -> dict:
    """The fused and the unfused step's milliseconds and GB/s, and whether their params
    agree bit for bit after three steps."""
    n = 1 << 10 if check.tiny else 1 << 26
    blocks = (n + THREADS - 1) // THREADS
    rng = np.random.default_rng(6)
    start, goal = (rng.standard_normal(n).astype(np.float32) for _ in range(2))
    h = adam.hyper(lr=1e-3)
    fused = [device_array(a) for a in (start, goal, np.zeros(n, np.float32),
                                       np.zeros(n, np.float32))]
    apart = [device_array(a) for a in (start, goal, np.zeros(n, np.float32),
                                       np.zeros(n, np.float32), np.zeros(n, np.float32))]
    steps = {"fused": 0, "unfused": 0}

    def fused_step():
        steps["fused"] += 1
        _fused[blocks, THREADS](*fused, adam.coefficients(steps["fused"], h))

    def unfused_step():
        steps["unfused"] += 1
        p, target, m, v, grad = apart
        _gradient[blocks, THREADS](p, target, grad)
        adam_step(p, grad, m, v, step=steps["unfused"], lr=1e-3)

    for _ in range(3):
        fused_step()
        unfused_step()
    same = bool(np.array_equal(fused[0].copy_to_host(), apart[0].copy_to_host()))
    src, dst = cuda.device_array(28 * n // 4, np.float32), cuda.device_array(28 * n // 4,
                                                                           np.float32)
    times = timed({"fused update in a user kernel": fused_step,
                   "gradient array, then adam_step": unfused_step,
                   "device-copy": lambda: dst.copy_to_device(src)}, 2 if check.tiny else 20)
    moved = {"fused update in a user kernel": 28 * n, "gradient array, then adam_step": 40 * n,
             "device-copy": 28 * n}
    return {"n": n, "same bits after 3 steps": same,
            **{k: {"ms": t, "GB/s": round(moved[k] / t / 1e6, 1)} for k, t in times.items()}}
