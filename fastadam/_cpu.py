"""The fused Adam kernel for the CPU: one parallel pass, Numba ``prange``.

Reads param, grad, m, v (and v_max, the Kahan compensation, the master params
when those are on) once and writes each state once. Options and dtypes are
closure constants, so each combination compiles to a loop without branches on
them; combinations compile lazily, on first use.
"""

from __future__ import annotations

from functools import cache

import numba
import numpy as np
from numba import prange

from . import _convert
from ._scalars import Flags, compute_dtype


@numba.njit
def _f32_from_bits(u):
    return np.uint32(u).view(np.float32)


@numba.njit
def _bits_from_f32(x):
    return np.float32(x).view(np.uint32)


@cache
def converters(compute: str) -> dict:
    """``{dtype name: (load, store)}`` computing in ``compute`` ("float32"/"float64")."""
    return _convert.make(numba.njit, _f32_from_bits, _bits_from_f32, np.dtype(compute).type)


@cache
def fused_kernel(flags: Flags):
    """The compiled kernel ``(param, grad, m, v, v_max, comp, master, coef)``.

    Arrays are 1-D; 16-bit ones are uint16 views. Unused arrays (v_max, comp,
    master when their option is off) may be any placeholder. ``coef`` holds
    ``_scalars.COEFFICIENTS`` rounded once to the compute dtype.
    """
    maximize, amsgrad, l2_decay, decoupled_decay, nesterov, kahan, master = flags[:7]
    conv = converters(compute_dtype(flags.param))
    load_p, store_p = conv[flags.param]
    load_g = conv[flags.grad][0]
    load_s, store_s = conv[flags.state]
    compute = np.dtype(compute_dtype(flags.param)).type

    # prange also lets LLVM vectorize: a plain range loop over several arrays
    # stays scalar, because the arrays might alias.
    @numba.njit(parallel=True, nogil=True)
    def kernel(param, grad, m, v, v_max, comp, master_param, coef):
        beta1, one_minus_beta1, beta2, one_minus_beta2 = coef[0], coef[1], coef[2], coef[3]
        m_coef, g_coef, scaled_eps_root, scaled_eps = coef[4], coef[5], coef[6], coef[7]
        weight_decay, decay_factor, inv_grad_scale = coef[8], coef[9], coef[10]
        for i in prange(param.size):
            g = load_g(grad[i]) * inv_grad_scale
            if maximize:
                g = -g
            if master:
                p = compute(master_param[i])
            elif kahan:
                p = load_p(param[i]) + load_p(comp[i])
            else:
                p = load_p(param[i])
            if l2_decay:
                g = g + weight_decay * p
            if decoupled_decay:
                p = p * decay_factor
            m_i = beta1 * load_s(m[i]) + one_minus_beta1 * g
            v_i = beta2 * load_s(v[i]) + one_minus_beta2 * (g * g)
            m[i] = store_s(m_i)
            v[i] = store_s(v_i)
            if amsgrad:
                v_i = max(load_s(v_max[i]), v_i)
                v_max[i] = store_s(v_i)
            denom = np.sqrt(v_i + scaled_eps_root) + scaled_eps
            if nesterov:
                p = p - (m_coef * m_i + g_coef * g) / denom
            else:
                p = p - m_coef * (m_i / denom)
            if master:
                master_param[i] = p
                param[i] = store_p(p)
            elif kahan:
                rounded = store_p(p)
                param[i] = rounded
                comp[i] = store_p(p - load_p(rounded))  # what rounding lost
            else:
                param[i] = store_p(p)

    return kernel


@cache
def nonfinite_kernel(grad_kind: str):
    """``count(grad)``: how many elements are NaN or infinite (one parallel read)."""
    load = converters(compute_dtype(grad_kind))[grad_kind][0]

    @numba.njit(parallel=True, nogil=True)
    def count(grad):
        bad = 0
        for i in prange(grad.size):
            x = load(grad[i])
            if x - x != 0:  # NaN for NaN and for +-inf, 0 otherwise
                bad += 1
        return bad

    return count


def with_threads(num_threads: int | None, fn, *args):
    """``fn(*args)`` on ``num_threads`` Numba threads, restored afterwards even on error."""
    if num_threads is None:
        return fn(*args)
    previous = numba.get_num_threads()
    numba.set_num_threads(num_threads)
    try:
        return fn(*args)
    finally:
        numba.set_num_threads(previous)


def adam_step_cpu(arrays: tuple, flags: Flags, coef: np.ndarray, num_threads: int | None) -> None:
    """Run the fused kernel on ``(param, grad, m, v, v_max, comp, master)`` kernel views."""
    with_threads(num_threads, fused_kernel(flags), *arrays, coef)


def count_nonfinite(grad, grad_kind: str, num_threads: int | None) -> int:
    """NaN and inf elements in ``grad`` (a kernel view)."""
    return with_threads(num_threads, nonfinite_kernel(grad_kind), grad)


@cache
def memory_only_kernel(reads: int, writes: int):
    """The bandwidth limit: ``kernel(*read_only, *read_write)`` reads every array once
    and writes the ``writes`` last ones once, with integer adds and no other arithmetic.

    Pass unsigned-integer views of arrays like the step's, so the bytes are the step's.
    """
    source = memory_only_source(reads, writes)
    scope = {"prange": prange}
    exec(source.replace("LOOP", "for i in prange(r0.size):"), scope)
    return numba.njit(parallel=True, nogil=True)(scope["kernel"])


def memory_only_source(reads: int, writes: int) -> str:
    """Python source of the memory-only loop (``LOOP`` marks the loop header)."""
    r = [f"r{k}" for k in range(reads)]
    w = [f"w{k}" for k in range(writes)]
    body = "".join(f"        {a}[i] += x\n" for a in w)
    return (f"def kernel({', '.join(r + w)}):\n    LOOP\n"
            f"        x = {' + '.join(a + '[i]' for a in r)}\n{body}")
