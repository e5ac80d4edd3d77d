"""Per-step scalars, computed once on the host in float64, and the kernels' flags.

The kernels get the scalars rounded once to the compute dtype. Computing
``1 - beta2`` in float32 instead gives 0.00099998713 rather than 0.0010000000475
(torch's value), an error of 1.3e-5 relative that shows in ``v`` after one step.
"""

from __future__ import annotations

import math
from typing import NamedTuple

from . import element, options


def _record(name: str, doc: str, fields: list, defaults: tuple = ()):
    record = NamedTuple(name, fields)
    record.__doc__ = doc
    record.__new__.__defaults__ = defaults or None
    return record


# Validated hyperparameters, one field per declared option (``betas`` as two), then the
# update rule (``options.RULES``) and, for schedule-free AdamW, the step's interpolation
# weight and scheduled lr (worked out by its optimizer from its running sums). The options
# of the variants, declared after Adam's, default to their declared defaults.
_VARIANT_OPTIONS = [o for o in options.HYPERPARAMETERS if options.ADAM not in o.rules]
Hyper = _record(
    "Hyper", "Validated hyperparameters of Adam/AdamW and their variants (``options``).",
    [*((f, object) for o in options.HYPERPARAMETERS
       for f in (("beta1", "beta2") if o.name == "betas" else (o.name,))),
     ("rule", str), ("ckp1", float), ("scheduled_lr", float)],
    (*(o.default for o in _VARIANT_OPTIONS), options.ADAM, 0.0, 0.0))
ADAM_FIELDS = Hyper._fields[:Hyper._fields.index(_VARIANT_OPTIONS[0].name)]  # Adam's own

# What a kernel specializes on: each combination compiles once, lazily. The declared
# kernel options by name; ``l2_decay`` (Adam: grad += weight_decay * param) and
# ``decoupled_decay`` (AdamW: param *= decay_factor); ``kahan`` (a 16-bit compensation
# buffer carries what rounding the params lost), ``master`` (float32 master params),
# ``stochastic`` (16-bit params rounded stochastically); and the dtypes by name
# ("float16", "bfloat16", "float32", "float64": 16-bit arrays reach the kernels as
# uint16 views, so their kind must be known at compile time); ``lerp``: the moments
# move as ``m + (1 - beta1) * (g - m)`` (torchao's 4-bit step) instead of
# ``beta1 * m + (1 - beta1) * g``; ``rule``: the element update (``options.RULES``).
Flags = _record(
    "Flags", "What a kernel specializes on (see the comment above its definition).",
    [*((name, bool) for name in options.KERNEL_FLAGS), ("l2_decay", bool),
     ("decoupled_decay", bool), ("kahan", bool), ("master", bool), ("param", str),
     ("grad", str), ("state", str), ("stochastic", bool), ("lerp", bool), ("rule", str)],
    (False, False, options.ADAM))


# Order of the coefficient vector handed to the kernels (Adam's; each variant's own
# names for the same eleven places are in ``RULE_COEFFICIENTS``).
COEFFICIENTS = (
    "beta1",
    "one_minus_beta1",
    "beta2",
    "one_minus_beta2",
    "m_coef",  # update = (m_coef * m [+ g_coef * g]) / (sqrt(v + scaled_eps_root) + scaled_eps)
    "g_coef",
    "scaled_eps_root",
    "scaled_eps",
    "weight_decay",
    "decay_factor",
    "inv_grad_scale",
)


def flags(h: Hyper, param: str, grad: str, state: str, kahan: bool, master: bool,
          stochastic: bool = False, lerp: bool = False) -> Flags:
    """The kernel specialization for these hyperparameters and dtypes."""
    decay = h.weight_decay != 0.0
    decoupled = (h.decoupled_weight_decay or h.decouple_lr or h.rule == options.ADEMAMIX)
    return Flags(**{name: getattr(h, name) for name in options.KERNEL_FLAGS},
                 l2_decay=decay and not decoupled, decoupled_decay=decay and decoupled,
                 kahan=kahan, master=master, param=param, grad=grad, state=state,
                 stochastic=stochastic, lerp=lerp, rule=h.rule)


# Each rule's names for the eleven places of the coefficient vector: what its element
# update unpacks them as (a test holds the two to one order) and ``coefficients`` puts there.
RULE_COEFFICIENTS = {
    options.ADAM: COEFFICIENTS,
    options.SCHEDULE_FREE: ("beta1", "one_minus_beta1", "beta2", "one_minus_beta2", "lr",
                            "y_lr", "bias_correction2", "eps", "weight_decay", "ckp1",
                            "inv_grad_scale"),
    options.ADEMAMIX: ("beta1", "one_minus_beta1", "beta2", "one_minus_beta2", "m_coef",
                       "slow_coef", "beta3", "scaled_eps", "one_minus_beta3", "decay_factor",
                       "inv_grad_scale"),
}


# The per-step scalars as one record, from the host to the kernels (which take them in
# this order, as an array on the CPU and as arguments on the GPU).
Coefficients = _record("Coefficients", "The per-step scalars, named (``COEFFICIENTS``).",
                       [(name, float) for name in COEFFICIENTS])

STEP_DEPENDENT = slice(4, 8)  # m_coef, g_coef, scaled_eps_root, scaled_eps
# What a step with its count on the device still takes from the host.
HOST_COUNTED = ("beta1", "one_minus_beta1", "beta2", "one_minus_beta2", "weight_decay",
                "decay_factor")


def clip_factor(norm: float, max_norm: float) -> float:
    """``torch.nn.utils.clip_grad_norm_``'s coefficient for a total gradient ``norm``:
    ``min(1, max_norm / (norm + 1e-6))``; 0 for an infinite norm, NaN for a NaN one
    (which then spreads to the step, as in torch)."""
    factor = max_norm / (norm + 1e-6)
    return factor if factor < 1.0 or factor != factor else 1.0


def clipped_scale(grad_scale: float | None, factor: float) -> float | None:
    """The loss scale that divides the gradients by ``grad_scale`` and multiplies them by
    the clip ``factor`` (infinite for a factor of 0: the kernels multiply by 1/scale)."""
    if factor == 1.0:
        return grad_scale
    return clip_into_scale(1.0 if grad_scale is None else grad_scale, factor)


def clip_into_scale(grad_scale: float, factor: float) -> float:
    """``clipped_scale`` for a number ``grad_scale``: the one definition, run on the host
    and compiled for the GPU, where the norm may stay on the device."""
    if factor == 1.0:
        return grad_scale
    return grad_scale / factor if factor != 0.0 else math.inf


def coefficients(h: Hyper, step: int, grad_scale: float | None = None) -> Coefficients:
    """The float64 coefficients for update number ``step`` (1-based): those that change
    with the step as ``element.step_terms`` computes them, the rest from ``h``."""
    if h.rule != options.ADAM:
        return _variant_coefficients(h, step, 1.0 if grad_scale is None else 1.0 / grad_scale)
    decay_factor = decay_factor_of(h.lr, h.weight_decay, h.decouple_lr, h.max_lr)
    m_coef, g_coef, scaled_eps_root, scaled_eps = element.step_coefficients(h, step)
    return Coefficients(
        beta1=h.beta1, one_minus_beta1=1.0 - h.beta1, beta2=h.beta2,
        one_minus_beta2=1.0 - h.beta2, m_coef=m_coef, g_coef=g_coef,
        scaled_eps_root=scaled_eps_root, scaled_eps=scaled_eps, weight_decay=h.weight_decay,
        decay_factor=decay_factor, inv_grad_scale=1.0 if grad_scale is None else 1.0 / grad_scale)


def _variant_coefficients(h: Hyper, step: int, inv_grad_scale: float) -> Coefficients:
    """``coefficients`` of schedule-free AdamW and AdEMAMix, in ``RULE_COEFFICIENTS``'s
    order (the record's names are Adam's).

    Schedule-free (``schedulefree.AdamWScheduleFree``): the optimizer sets the step's
    ``scheduled_lr`` and ``ckp1``; y moves by ``lr * (beta1 * (1 - ckp1) - 1)`` times the
    normalized gradient. AdEMAMix (bitsandbytes'): ``lr * (m1 / bc1 + alpha * m2) /
    (sqrt(v) / sqrt(bc2) + eps)`` as ``(m_coef * m1 + slow_coef * m2) / (sqrt(v) + eps')``,
    alpha and beta3 warmed up over ``t_alpha`` and ``t_beta3`` steps."""
    bc1, bc2 = 1.0 - h.beta1**step, 1.0 - h.beta2**step
    if h.rule == options.SCHEDULE_FREE:
        lr = h.scheduled_lr
        values = (h.beta1, 1.0 - h.beta1, h.beta2, 1.0 - h.beta2, lr,
                  lr * (h.beta1 * (1.0 - h.ckp1) - 1.0), bc2, h.eps, h.weight_decay, h.ckp1,
                  inv_grad_scale)
    else:
        alpha, beta3 = ademamix_schedule(h, step)
        sqrt_bc2 = math.sqrt(bc2)
        values = (h.beta1, 1.0 - h.beta1, h.beta2, 1.0 - h.beta2, h.lr * sqrt_bc2 / bc1,
                  h.lr * alpha * sqrt_bc2, beta3, h.eps * sqrt_bc2, 1.0 - beta3,
                  1.0 - h.lr * h.weight_decay, inv_grad_scale)
    return Coefficients(*values)


def ademamix_schedule(h: Hyper, step: int) -> tuple[float, float]:
    """AdEMAMix's ``(alpha, beta3)`` at ``step``: alpha warmed up linearly over
    ``t_alpha`` steps, beta3 from beta1 over ``t_beta3`` (the paper's, bitsandbytes')."""
    alpha, beta3 = h.alpha, h.beta3
    if h.t_alpha:
        alpha = min(step * alpha / h.t_alpha, alpha)
    if h.t_beta3:
        ln_beta1, ln_beta3 = math.log(h.beta1), math.log(beta3)
        scale = step / h.t_beta3
        beta3 = min(math.exp((ln_beta1 * ln_beta3)
                             / ((1 - scale) * ln_beta3 + scale * ln_beta1)), beta3)
    return alpha, beta3


def schedule_free_weights(h: Hyper, step: int, weight_sum: float,
                          lr_max: float) -> tuple[float, float, float, float]:
    """Schedule-free AdamW's ``(scheduled_lr, ckp1, weight_sum, lr_max)`` for update
    ``step`` (1-based), from the running ``weight_sum`` and ``lr_max`` before it: the
    reference's warmup, weight and interpolation weight."""
    k = step - 1
    lr = h.lr * ((k + 1) / h.warmup_steps if k < h.warmup_steps else 1.0)
    lr_max = max(lr, lr_max)
    weight = (k + 1) ** h.r * lr_max**h.weight_lr_power
    weight_sum = weight_sum + weight
    ckp1 = weight / weight_sum if weight_sum != 0.0 else 0.0
    return lr, ckp1, weight_sum, lr_max


def decay_factor_of(lr, weight_decay, decouple_lr, max_lr):
    """AdamW's per-step factor on the params: ``1 - lr * weight_decay``, or with
    ``decouple_lr`` ``1 - weight_decay * lr / max_lr``; the one definition, run on the
    host and compiled into code that counts its steps itself."""
    if decouple_lr:
        return 1.0 - weight_decay * lr / max_lr
    return 1.0 - lr * weight_decay


def hyper(rule: str = options.ADAM, **settings) -> Hyper:
    """Validated hyperparameters of update ``rule`` from keyword ``settings``
    (``options.keys(rule)``; the rest take their declared defaults), against torch's (and
    optax's, optimi's, the variants' references') ranges."""
    values = options.checked(settings, rule)
    beta1, beta2 = values.pop("betas")
    return Hyper(beta1=beta1, beta2=beta2, rule=rule, **values)
