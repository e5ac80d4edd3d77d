"""The fused Adam kernel for the CPU: one parallel pass, Numba ``prange``.

Reads param, grad, m, v (and v_max) once and writes param, m, v (and v_max)
once. Options are closure constants, so each combination compiles to a loop
without branches; combinations compile lazily, on first use.
"""

from __future__ import annotations

from functools import cache

import numba
import numpy as np
from numba import prange

from ._scalars import Flags


@cache
def fused_kernel(flags: Flags):
    """The compiled kernel ``(param, grad, m, v, v_max, coef)`` for one option set.

    All arrays are 1-D and of one dtype; ``coef`` holds ``_scalars.COEFFICIENTS``
    rounded once to that dtype, so the loop stays in the param's precision.
    """
    maximize, amsgrad, l2_decay, decoupled_decay = flags

    # prange also lets LLVM vectorize: a plain range loop over several arrays
    # stays scalar, because the arrays might alias.
    @numba.njit(parallel=True, nogil=True)
    def kernel(param, grad, m, v, v_max, coef):
        beta1, one_minus_beta1, beta2, one_minus_beta2 = coef[0], coef[1], coef[2], coef[3]
        step_size, scaled_eps, weight_decay, decay_factor = coef[4], coef[5], coef[6], coef[7]
        for i in prange(param.size):
            p = param[i]
            g = grad[i]
            if maximize:
                g = -g
            if l2_decay:
                g = g + weight_decay * p
            if decoupled_decay:
                p = p * decay_factor
            m_i = beta1 * m[i] + one_minus_beta1 * g
            v_i = beta2 * v[i] + one_minus_beta2 * (g * g)
            m[i] = m_i
            v[i] = v_i
            if amsgrad:
                v_i = max(v_max[i], v_i)
                v_max[i] = v_i
            param[i] = p - step_size * (m_i / (np.sqrt(v_i) + scaled_eps))

    return kernel


def adam_step_cpu(
    param, grad, m, v, v_max, flags: Flags, coef: np.ndarray, num_threads: int | None
) -> None:
    """Run the fused kernel on 1-D arrays, on ``num_threads`` threads for this call only."""
    kernel = fused_kernel(flags)
    if v_max is None:
        v_max = v  # never touched: the kernel reads v_max only when amsgrad is on
    if num_threads is None:
        kernel(param, grad, m, v, v_max, coef)
        return
    previous = numba.get_num_threads()
    numba.set_num_threads(num_threads)
    try:
        kernel(param, grad, m, v, v_max, coef)
    finally:
        numba.set_num_threads(previous)


@cache
def memory_only_kernel(states: int):
    """The bandwidth limit: Adam's traffic with one add per array and no other arithmetic.

    ``kernel(grad, *states)`` reads grad and each of the ``states`` (3, or 4 with
    amsgrad) arrays once and writes each state once, like the fused step.
    """
    if states == 3:

        @numba.njit(parallel=True, nogil=True)
        def kernel(grad, a, b, c):
            for i in prange(grad.size):
                g = grad[i]
                a[i] += g
                b[i] += g
                c[i] += g
    elif states == 4:

        @numba.njit(parallel=True, nogil=True)
        def kernel(grad, a, b, c, d):
            for i in prange(grad.size):
                g = grad[i]
                a[i] += g
                b[i] += g
                c[i] += g
                d[i] += g
    else:
        raise ValueError(f"states must be 3 or 4, got {states}")
    return kernel
