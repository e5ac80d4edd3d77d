"""The update rules, each written once for every target: the coefficients that change
with the step, and the update of one element.

``step_terms`` runs on the host (``hyper.coefficients``) and is compiled where the step
count lives on the device; ``make`` compiles the element update for a target, whose
kernels call it for each index (the CPU's in a ``prange`` or range loop, the GPU's in a
grid-stride loop). Options and dtypes are closure constants (``hyper.Flags``), so each
combination compiles without branches on them. An option that changes the update is
read here by name (``flags.<name>``, ``h.<name>``) and nowhere else in the kernels.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from .dtypes import compute_dtype
from .options import ADAM, ADEMAMIX, SCHEDULE_FREE

if TYPE_CHECKING:
    from .hyper import Flags

# The hyperparameters the step-dependent coefficients come from (``step_terms``' own,
# after the step): what a step that counts on the device is sent, as float64.
STEP_TERMS = ("lr", "beta1", "beta2", "eps", "eps_root", "bias_correction")


def step_terms(step, values, nesterov):
    """``(m_coef, g_coef, scaled_eps_root, scaled_eps)`` of update number ``step`` (a
    float) from the ``STEP_TERMS`` ``values``: the one definition, run on the host and
    compiled for code that counts its steps itself.

    With ``bc = 1 - beta**step`` (or 1 without bias correction), the update
    ``lr / bc1 * m / (sqrt(v / bc2 + eps_root) + eps)`` is computed as
    ``m_coef * m / (sqrt(v + eps_root * bc2) + eps * sqrt(bc2))``: the same value with
    one division per element. Nesterov (as optax) uses
    ``beta1 * m / bc1(step + 1) + (1 - beta1) * g / bc1(step)`` for ``m / bc1``.
    """
    lr, beta1, beta2, eps, eps_root, bias_correction = values
    if bias_correction:
        bias_correction1 = 1.0 - beta1**step
        bias_correction2 = 1.0 - beta2**step
        next_bias_correction1 = 1.0 - beta1 ** (step + 1.0)
    else:
        bias_correction1 = bias_correction2 = next_bias_correction1 = 1.0
    sqrt_bc2 = math.sqrt(bias_correction2)
    if nesterov:
        m_coef = lr * sqrt_bc2 * beta1 / next_bias_correction1
        g_coef = lr * sqrt_bc2 * (1.0 - beta1) / bias_correction1
    else:
        m_coef = lr * sqrt_bc2 / bias_correction1
        g_coef = 0.0
    return m_coef, g_coef, eps_root * bias_correction2, eps * sqrt_bc2


def step_term_values(h):
    """``h``'s ``STEP_TERMS`` (``h``: a ``hyper.Hyper`` or a compiled record of its fields;
    a plain function, compiled where it is called from compiled code)."""
    return h.lr, h.beta1, h.beta2, h.eps, h.eps_root, h.bias_correction


def step_coefficients(h, step: int) -> tuple[float, float, float, float]:
    """``step_terms`` of validated hyperparameters ``h`` for update ``step`` (1-based)."""
    values = h.lr, h.beta1, h.beta2, h.eps, h.eps_root, h.bias_correction  # every step: inline
    return step_terms(float(step), values, h.nesterov)


def step_terms_for(jit, options):
    """``terms(step, values)``: ``step_terms`` compiled with ``jit``, the kernel options of
    ``options`` (a ``hyper.Flags``, or anything with their names) as constants."""
    nesterov = options.nesterov
    compiled = jit(step_terms)

    @jit
    def terms(step, values):
        return compiled(step, values, nesterov)

    return terms


def _param_access(jit, flags: Flags, converters: dict, rounding: tuple):
    """``(load(i, param, comp, master), store(i, p, param, comp, master, noise, index))``:
    the params in the compute dtype, from the master params, params plus Kahan
    compensation, or params; and back (the master params exact, the params rounded to
    nearest or stochastically by element ``index``'s bits of ``noise``, the compensation
    what rounding lost). ``rounding`` is the target's ``(stochastic stores, random)``."""
    kahan, master, stochastic = flags.kahan, flags.master, flags.stochastic
    load_p, store_p = converters[flags.param]
    stores, random = rounding
    store_sr = stores.get(flags.param, store_p)  # stochastic: 16-bit params only
    compute = np.dtype(compute_dtype(flags.param)).type

    @jit
    def load(i, param, comp, master_param):
        if master:
            return compute(master_param[i])
        if kahan:
            return load_p(param[i]) + load_p(comp[i])
        return load_p(param[i])

    @jit
    def store(i, p, param, comp, master_param, noise, index):
        if stochastic:
            param[i] = store_sr(p, random(noise, index))
        elif master:
            master_param[i] = p
            param[i] = store_p(p)
        elif kahan:
            rounded = store_p(p)
            param[i] = rounded
            comp[i] = store_p(p - load_p(rounded))  # what rounding lost
        else:
            param[i] = store_p(p)

    return load, store


def _plain_multiply(jit):
    @jit
    def mul(a, b):
        return a * b

    return mul


def _plain_divide(jit):
    @jit
    def div(a, b):
        return a / b

    return div


def make_value(jit, flags: Flags, converters: dict, rounding: tuple, mul=None,
               stride: int = 1, div=None):
    """``update(i, g, param, m, v, v_max, comp, master, coef, noise, offset)``:
    ``make``'s update with element ``i``'s gradient given as ``g``, a compute-dtype
    value (what loading ``grad[i]`` gives), for loops that compute the gradient
    themselves. ``div``: the target's quotient (one IEEE division, for code compiled
    with any error model); a plain one by default."""
    mul = _plain_multiply(jit) if mul is None else mul
    div = _plain_divide(jit) if div is None else div
    if flags.rule != ADAM:
        return _VARIANTS[flags.rule](jit, flags, converters, rounding, mul, stride, div)
    maximize, amsgrad, nesterov = flags.maximize, flags.amsgrad, flags.nesterov
    l2_decay, decoupled_decay, lerp = flags.l2_decay, flags.decoupled_decay, flags.lerp
    load_param, store_param = _param_access(jit, flags, converters, rounding)
    load_s, store_s = converters[flags.state]

    @jit
    def update(i, g, param, m, v, v_max, comp, master_param, coef, noise, offset):
        (beta1, one_minus_beta1, beta2, one_minus_beta2, m_coef, g_coef, scaled_eps_root,
         scaled_eps, weight_decay, decay_factor, inv_grad_scale) = coef
        g = mul(g, inv_grad_scale)
        if maximize:
            g = -g
        p = load_param(i, param, comp, master_param)
        if l2_decay:
            g = g + mul(weight_decay, p)
        if decoupled_decay:
            p = mul(p, decay_factor)
        if lerp:  # torchao's: start + weight * (end - start)
            m_i = load_s(m[i])
            m_i = m_i + mul(one_minus_beta1, g - m_i)
            v_i = load_s(v[i])
            v_i = v_i + mul(one_minus_beta2, mul(g, g) - v_i)
        else:
            m_i = mul(beta1, load_s(m[i])) + mul(one_minus_beta1, g)
            v_i = mul(beta2, load_s(v[i])) + mul(one_minus_beta2, mul(g, g))
        m[i] = store_s(m_i)
        v[i] = store_s(v_i)
        if amsgrad:
            v_i = max(load_s(v_max[i]), v_i)
            v_max[i] = store_s(v_i)
        denom = math.sqrt(v_i + scaled_eps_root) + scaled_eps
        if nesterov:
            p = p - div(mul(m_coef, m_i) + mul(g_coef, g), denom)
        else:
            p = p - mul(m_coef, div(m_i, denom))
        store_param(i, p, param, comp, master_param, noise, offset + i * stride)

    return update


def _lerp(jit, mul, flags: Flags):
    """torch's ``lerp``: ``start + weight * (end - start)`` for |weight| < 0.5, else
    ``end - (end - start) * (1 - weight)`` (so that a weight of 1 gives ``end`` exactly),
    in the compute dtype of ``flags``."""
    compute = np.dtype(compute_dtype(flags.param)).type
    one, half = compute(1.0), compute(0.5)

    @jit
    def lerp(start, end, weight):
        if abs(weight) < half:
            return start + mul(weight, end - start)
        return end - mul(end - start, one - weight)

    return lerp


def _schedule_free(jit, flags: Flags, converters: dict, rounding: tuple, mul, stride, div):
    """Schedule-free AdamW's update (``schedulefree.AdamWScheduleFree``): the params hold y,
    ``m`` holds z; weight decay is taken at y (``flags.l2_decay`` or ``decoupled_decay``
    say it is on). The coefficients are ``hyper.RULE_COEFFICIENTS["schedulefree"]``."""
    load_param, store_param = _param_access(jit, flags, converters, rounding)
    load_s, store_s = converters[flags.state]
    decay = flags.l2_decay or flags.decoupled_decay
    lerp = _lerp(jit, mul, flags)

    @jit
    def update(i, g, param, z, v, v_max, comp, master_param, coef, noise, offset):
        (beta1, one_minus_beta1, beta2, one_minus_beta2, lr, y_lr, bias_correction2, eps,
         weight_decay, ckp1, inv_grad_scale) = coef
        g = mul(g, inv_grad_scale)
        y = load_param(i, param, comp, master_param)
        v_i = mul(beta2, load_s(v[i])) + mul(one_minus_beta2, mul(g, g))
        v[i] = store_s(v_i)
        normalized = div(g, math.sqrt(div(v_i, bias_correction2)) + eps)
        if decay:
            normalized = normalized + mul(weight_decay, y)
        z_i = load_s(z[i])
        y = lerp(y, z_i, ckp1) + mul(y_lr, normalized)
        z[i] = store_s(z_i - mul(lr, normalized))
        store_param(i, y, param, comp, master_param, noise, offset + i * stride)

    return update


def _ademamix(jit, flags: Flags, converters: dict, rounding: tuple, mul, stride, div):
    """AdEMAMix's update (bitsandbytes'): ``m`` the fast moment, ``v_max`` the slow one;
    weight decay decoupled. The coefficients are ``hyper.RULE_COEFFICIENTS["ademamix"]``."""
    load_param, store_param = _param_access(jit, flags, converters, rounding)
    load_s, store_s = converters[flags.state]
    decoupled_decay = flags.decoupled_decay

    @jit
    def update(i, g, param, m, v, slow, comp, master_param, coef, noise, offset):
        (beta1, one_minus_beta1, beta2, one_minus_beta2, m_coef, slow_coef, beta3, scaled_eps,
         one_minus_beta3, decay_factor, inv_grad_scale) = coef
        g = mul(g, inv_grad_scale)
        p = load_param(i, param, comp, master_param)
        if decoupled_decay:
            p = mul(p, decay_factor)
        m_i = mul(beta1, load_s(m[i])) + mul(one_minus_beta1, g)
        slow_i = mul(beta3, load_s(slow[i])) + mul(one_minus_beta3, g)
        v_i = mul(beta2, load_s(v[i])) + mul(one_minus_beta2, mul(g, g))
        m[i] = store_s(m_i)
        slow[i] = store_s(slow_i)
        v[i] = store_s(v_i)
        p = p - div(mul(m_coef, m_i) + mul(slow_coef, slow_i), math.sqrt(v_i) + scaled_eps)
        store_param(i, p, param, comp, master_param, noise, offset + i * stride)

    return update


_VARIANTS = {SCHEDULE_FREE: _schedule_free, ADEMAMIX: _ademamix}


def make_swap(jit, flags: Flags, converters: dict, mul=None):
    """``swap(i, param, z, comp, master, weight)``: schedule-free AdamW's move of the params
    between y and x, ``param = lerp(param, z, weight)`` (torch's lerp), stored rounded to
    nearest (Kahan compensation and master params kept as a step keeps them)."""
    mul = _plain_multiply(jit) if mul is None else mul
    load_param, store_param = _param_access(jit, flags._replace(stochastic=False),
                                            converters, ({}, None))
    load_s = converters[flags.state][0]
    lerp = _lerp(jit, mul, flags)

    @jit
    def swap(i, param, z, comp, master_param, weight):
        p = load_param(i, param, comp, master_param)
        store_param(i, lerp(p, load_s(z[i]), weight), param, comp, master_param, 0, 0)

    return swap


def make(jit, flags: Flags, converters: dict, rounding: tuple, mul=None, stride: int = 1):
    """``update(i, param, grad, m, v, v_max, comp, master, coef, noise, offset)``, in place.

    Arrays are 1-D, 16-bit ones as uint16 views; unused ones (v_max, comp, master
    when their option is off) are never touched. ``coef`` is the step's coefficients,
    a tuple in ``hyper.COEFFICIENTS``' order (each rule unpacks it under its own names,
    ``hyper.RULE_COEFFICIENTS``), rounded once to the compute dtype. With stochastic
    rounding, element ``i`` draws the bits of index ``offset + i * stride`` in ``noise``
    (the array's random noise at this step), wherever the arrays were sliced or
    gathered. ``mul``: the
    target's product of two compute-dtype values rounded on its own (on the GPU one that
    never fuses with an add into an FMA, so that the GPU rounds as the CPU does); a
    plain product by default.
    """
    update_value = make_value(jit, flags, converters, rounding, mul, stride)
    load_g = converters[flags.grad][0]

    @jit
    def update(i, param, grad, m, v, v_max, comp, master_param, coef, noise, offset):
        update_value(i, load_g(grad[i]), param, m, v, v_max, comp, master_param, coef, noise,
                     offset)

    return update


def make_sparse(jit, flags: Flags, converters: dict, rounding: tuple, mul=None):
    """``update(j, g, param, m, v, comp, master, one_minus_beta1, one_minus_beta2, eps,
    neg_step_size, noise, offset)``: element ``j`` of one row of a row-sparse step, in
    place, with its summed gradient ``g`` (compute dtype); torch.optim.SparseAdam's
    order of operations.

    The arrays are one row each (1-D, 16-bit ones as uint16 views); ``comp`` and
    ``master`` are touched only with their option on; ``offset`` is the row's first
    element in the table (stochastic rounding draws by table position); ``mul`` as in
    ``make``.
    """
    mul = _plain_multiply(jit) if mul is None else mul
    maximize = flags.maximize
    load_param, store_param = _param_access(jit, flags, converters, rounding)
    load_s, store_s = converters[flags.state]

    @jit
    def update(j, g, param, m, v, comp, master_param, one_minus_beta1, one_minus_beta2, eps,
               neg_step_size, noise, offset):
        if maximize:
            g = -g
        old_m = load_s(m[j])
        old_v = load_s(v[j])
        m_j = old_m + mul(g - old_m, one_minus_beta1)  # old + (new - old) * (1 - beta)
        v_j = old_v + mul(mul(g, g) - old_v, one_minus_beta2)
        m[j] = store_s(m_j)
        v[j] = store_s(v_j)
        p = load_param(j, param, comp, master_param)
        store_param(j, p + mul(neg_step_size, m_j / (math.sqrt(v_j) + eps)), param, comp,
                    master_param, noise, offset + j)

    return update
