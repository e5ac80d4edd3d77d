"""The naive multi-pass NumPy Adam: the baseline the fused kernels are measured against.

Written as the textbook formulas read, one array expression per line: each line
is a pass over memory and most allocate a temporary. That is the point.
Arithmetic is float32 (float64 for float64 params); 16-bit arrays are converted
on the way in and rounded to nearest even on the way out, or stochastically by the
same counter-based bits as the kernels (``stochastic_round``).
"""

from __future__ import annotations

import numpy as np

from .._core.dtypes import numpy_dtype
from .._core.hyper import Hyper, ademamix_schedule
from .._core.lowbit import FORMATS
from .._core.options import ADAM, ADEMAMIX, SCHEDULE_FREE
from .shared.convert import mix32_array


def random_bits(noise: int, index: np.ndarray) -> np.ndarray:
    """The kernels' ``random(noise, index)`` for an array of element indices."""
    index = np.asarray(index, dtype=np.uint64)
    low = (index & np.uint64(0xFFFFFFFF)).astype(np.uint32)
    high = (index >> np.uint64(32)).astype(np.uint32)
    rotated = (high << np.uint32(16)) | (high >> np.uint32(16))
    return mix32_array(low ^ np.uint32(noise) ^ rotated)


def stochastic_round(x: np.ndarray, kind: str, r: np.ndarray) -> np.ndarray:
    """float32 ``x`` rounded to ``kind`` (float16 or bfloat16) by uniform uint32 ``r``, as the
    kernels round: up with probability proportional to the distance from below."""
    x = np.asarray(x, dtype=np.float32)
    nearest = x.astype(numpy_dtype(kind))
    bits = x.view(np.uint32)
    if kind == "bfloat16":
        out = ((bits + (r & np.uint32(0xFFFF))) >> np.uint32(16)).astype(np.uint16)
        special = (bits & np.uint32(0x7F800000)) == np.uint32(0x7F800000)
    else:
        sign = bits & np.uint32(0x80000000)
        f = bits ^ sign
        normal = ((f - np.uint32(0x38000000) + (r & np.uint32(0x1FFF))) >> np.uint32(13))
        with np.errstate(over="ignore", invalid="ignore"):  # the subnormal branch, computed
            units = f.view(np.float32) * np.float32(2.0**24)  # everywhere, then selected
            low = np.floor(units)
            up = (r >> np.uint32(8)).astype(np.float32) * np.float32(2.0**-24) < units - low
            subnormal = low.astype(np.uint32) + up.astype(np.uint32)
        out = (np.where(f < np.uint32(0x38800000), subnormal, normal)
               | (sign >> np.uint32(16))).astype(np.uint16)
        special = f >= np.uint32(0x47800000)
    return np.where(special, nearest.view(np.uint16), out).view(nearest.dtype)


def adam_step_numpy(param, grad, m, v, v_max, comp, master, h: Hyper, step: int,
                    grad_scale: float | None = None, noise: int | None = None,
                    lerp: bool = False) -> None:
    """One Adam/AdamW update in place, with NumPy array expressions; with ``noise`` (the
    params' random bits at this step), 16-bit params rounded stochastically; with
    ``lerp``, the moments move as ``m + (1 - beta1) * (g - m)``."""
    if h.rule != ADAM:
        _VARIANTS[h.rule](param, grad, m, v, v_max, comp, master, h, step, grad_scale, noise)
        return
    compute, g, p = _inputs(param, grad, comp, master, grad_scale)
    if h.maximize:
        g = -g
    if h.weight_decay != 0.0:
        if h.decouple_lr:
            p *= 1.0 - h.weight_decay * h.lr / h.max_lr
        elif h.decoupled_weight_decay:
            p *= 1.0 - h.lr * h.weight_decay
        else:
            g = g + h.weight_decay * p
    m_old, v_old = m.astype(compute, copy=False), v.astype(compute, copy=False)
    if lerp:
        m_new = m_old + compute(1.0 - h.beta1) * (g - m_old)
        v_new = v_old + compute(1.0 - h.beta2) * (g * g - v_old)
    else:
        m_new = h.beta1 * m_old + (1.0 - h.beta1) * g
        v_new = h.beta2 * v_old + (1.0 - h.beta2) * g * g
    m[...] = m_new
    v[...] = v_new
    if h.amsgrad:
        v_new = np.maximum(v_max.astype(compute, copy=False), v_new)
        v_max[...] = v_new
    bias_correction1 = 1.0 - h.beta1**step if h.bias_correction else 1.0
    bias_correction2 = 1.0 - h.beta2**step if h.bias_correction else 1.0
    if h.nesterov:  # as optax: the next step's momentum, from this gradient
        next_bias_correction1 = 1.0 - h.beta1 ** (step + 1) if h.bias_correction else 1.0
        m_hat = h.beta1 * m_new / next_bias_correction1 + (1.0 - h.beta1) * g / bias_correction1
    else:
        m_hat = m_new / bias_correction1
    v_hat = v_new / bias_correction2
    if h.eps_root != 0.0:
        v_hat = v_hat + h.eps_root
    p -= h.lr * m_hat / (np.sqrt(v_hat) + h.eps)
    _store(param, p, comp, noise, compute)


def _inputs(param, grad, comp, master, grad_scale) -> tuple:
    """(compute dtype, the gradient unscaled, the params in it: the master params, params
    plus compensation, or the params themselves where already in compute precision)."""
    compute = np.float64 if param.dtype == np.float64 else np.float32
    g = grad.astype(compute, copy=False)
    if grad_scale is not None:
        g = g / grad_scale
    if master is not None:
        p = master
    elif comp is not None:
        p = param.astype(compute) + comp.astype(compute)
    else:
        p = param.astype(compute, copy=False)
    return compute, g, p


def _store(param, p, comp, noise, compute) -> None:
    """The params from their new value ``p``: rounded stochastically, with the Kahan
    compensation, or as they are."""
    if noise is not None:
        param[...] = stochastic_round(p, param.dtype.name,
                                      random_bits(noise, np.arange(param.size)))
    elif comp is not None:
        param[...] = p
        comp[...] = p - param.astype(compute)
    elif p is not param:
        param[...] = p


def _lerp(start, end, weight):
    """torch's lerp (exact at weight 1)."""
    if abs(weight) < 0.5:
        return start + weight * (end - start)
    return end - (end - start) * (1.0 - weight)


def schedule_free_numpy(param, grad, z, v, unused, comp, master, h: Hyper, step: int,
                        grad_scale=None, noise=None) -> None:
    """One schedule-free AdamW update (``schedulefree.AdamWScheduleFree``'s formulas) in
    place: the params hold y, ``z`` the base sequence; ``h.scheduled_lr`` and ``h.ckp1``
    are the step's (``hyper.schedule_free_weights``)."""
    compute, g, y = _inputs(param, grad, comp, master, grad_scale)
    v_new = h.beta2 * v.astype(compute, copy=False) + (1.0 - h.beta2) * g * g
    v[...] = v_new
    normalized = g / (np.sqrt(v_new / (1.0 - h.beta2**step)) + h.eps)
    if h.weight_decay != 0.0:
        normalized = normalized + h.weight_decay * y
    z_old = z.astype(compute, copy=False)
    lr = h.scheduled_lr
    y_new = _lerp(y, z_old, compute(h.ckp1)) + lr * (h.beta1 * (1.0 - h.ckp1) - 1.0) * normalized
    z[...] = z_old - lr * normalized
    _store(param, y_new.astype(compute, copy=False), comp, noise, compute)
    if master is not None:
        master[...] = y_new


def swap_numpy(param, z, comp, master, weight: float) -> None:
    """Schedule-free AdamW's move of the params between y and x: ``lerp(param, z, weight)``
    (the NumPy counterpart of the kernels' swap), rounded to nearest."""
    compute, _, p = _inputs(param, param, comp, master, None)
    new = _lerp(p.astype(compute), z.astype(compute), compute(weight))
    if master is not None:
        master[...] = new
    _store(param, new, comp, None, compute)


def ademamix_numpy(param, grad, m, v, slow, comp, master, h: Hyper, step: int,
                   grad_scale=None, noise=None) -> None:
    """One AdEMAMix update (bitsandbytes' formulas) in place: ``m`` the fast moment,
    ``slow`` the slow one, weight decay decoupled; alpha and beta3 as scheduled
    (``hyper.ademamix_schedule``)."""
    compute, g, p = _inputs(param, grad, comp, master, grad_scale)
    alpha, beta3 = ademamix_schedule(h, step)
    m_new = h.beta1 * m.astype(compute, copy=False) + (1.0 - h.beta1) * g
    slow_new = beta3 * slow.astype(compute, copy=False) + (1.0 - beta3) * g
    v_new = h.beta2 * v.astype(compute, copy=False) + (1.0 - h.beta2) * g * g
    m[...], slow[...], v[...] = m_new, slow_new, v_new
    if h.weight_decay != 0.0:
        p *= 1.0 - h.lr * h.weight_decay
    bias_correction1, bias_correction2 = 1.0 - h.beta1**step, 1.0 - h.beta2**step
    p -= h.lr * ((m_new / bias_correction1 + alpha * slow_new)
                 / (np.sqrt(v_new) / np.sqrt(bias_correction2) + h.eps))
    _store(param, p, comp, noise, compute)


_VARIANTS = {SCHEDULE_FREE: schedule_free_numpy, ADEMAMIX: ademamix_numpy}


def adam_step_8bit_numpy(param, grad, codes: list, absmax: list, comp, master, h: Hyper,
                         step: int, grad_scale: float | None = None,
                         noise: int | None = None, fmt: str = "8bit",
                         lerp: bool = False) -> None:
    """The low-bit step as three passes: decode the moments, the NumPy step above on
    them, encode them against their new scales (``lowbit.FORMATS[fmt]``)."""
    form, signed = FORMATS[fmt], (True, False, False)
    moments = [None if c is None else form.dequantize(c, a, s, param.size)
               for c, a, s in zip(codes, absmax, signed)]
    adam_step_numpy(param, grad, *moments, comp, master, h, step, grad_scale, noise, lerp)
    for c, a, s, x in zip(codes, absmax, signed, moments):
        if c is not None:
            c[...], a[...] = form.quantize(x, s)


def sparse_adam_step_numpy(param, indices, values, m, v, comp, master, h: Hyper,
                           step_size: float, noise: int | None = None) -> None:
    """``torch.optim.SparseAdam``'s update, as torch writes it: coalesce (sum duplicate
    rows, in their order), then the rows present move, with eps on the uncorrected
    sqrt(v). Arithmetic in the compute dtype, as ``adam_step_numpy``."""
    compute = np.float64 if param.dtype == np.float64 else np.float32
    rows, inverse = np.unique(indices, return_inverse=True)
    g = np.zeros((rows.size, param.shape[1]), compute)
    np.add.at(g, inverse, values.astype(compute))
    if h.maximize:
        g = -g
    old_m, old_v = m[rows].astype(compute), v[rows].astype(compute)
    m_update = (g - old_m) * compute(1 - h.beta1)
    v_update = (g * g - old_v) * compute(1 - h.beta2)
    m[rows] = old_m + m_update
    v[rows] = old_v + v_update
    numer = m_update + old_m
    denom = np.sqrt(v_update + old_v) + compute(h.eps)
    if master is not None:
        p = master[rows]
    elif comp is not None:
        p = param[rows].astype(compute) + comp[rows].astype(compute)
    else:
        p = param[rows].astype(compute)
    p = p + compute(-step_size) * (numer / denom)
    if master is not None:
        master[rows] = p
    if noise is not None:
        index = rows[:, None] * param.shape[1] + np.arange(param.shape[1])
        param[rows] = stochastic_round(p, param.dtype.name, random_bits(noise, index))
        return
    param[rows] = p
    if comp is not None:
        comp[rows] = p - param[rows].astype(compute)
