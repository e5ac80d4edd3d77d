"""Per-step scalars, computed once on the host in float64.

The kernels get these rounded once to the param dtype. Computing ``1 - beta2``
in float32 instead gives 0.00099998713 rather than 0.0010000000475 (torch's
value), an error of 1.3e-5 relative that shows in ``v`` after one step.
"""

from __future__ import annotations

import math
from typing import NamedTuple


class Hyper(NamedTuple):
    """Validated hyperparameters of Adam/AdamW."""

    lr: float
    beta1: float
    beta2: float
    eps: float
    weight_decay: float
    decoupled_weight_decay: bool
    amsgrad: bool
    maximize: bool


class Flags(NamedTuple):
    """What the kernel specializes on: each combination compiles once, lazily."""

    maximize: bool
    amsgrad: bool
    l2_decay: bool  # Adam: grad += weight_decay * param
    decoupled_decay: bool  # AdamW: param *= 1 - lr * weight_decay


# Order of the coefficient vector handed to the kernels.
COEFFICIENTS = (
    "beta1",
    "one_minus_beta1",
    "beta2",
    "one_minus_beta2",
    "step_size",  # lr / bc1 * sqrt(bc2), with bc = 1 - beta**step
    "scaled_eps",  # eps * sqrt(bc2)
    "weight_decay",
    "decay_factor",
)


def flags(h: Hyper) -> Flags:
    """The kernel specialization for these hyperparameters."""
    decay = h.weight_decay != 0.0
    return Flags(
        h.maximize,
        h.amsgrad,
        decay and not h.decoupled_weight_decay,
        decay and h.decoupled_weight_decay,
    )


def coefficients(h: Hyper, step: int) -> tuple[float, ...]:
    """The float64 coefficients for update number ``step`` (1-based).

    torch's ``lr / bc1 * m / (sqrt(v) / sqrt(bc2) + eps)`` is rewritten as
    ``step_size * m / (sqrt(v) + scaled_eps)``: the same value with one division
    per element instead of two, which a single core notices.
    """
    bias_correction1 = 1.0 - h.beta1**step
    sqrt_bias_correction2 = math.sqrt(1.0 - h.beta2**step)
    return (
        h.beta1,
        1.0 - h.beta1,
        h.beta2,
        1.0 - h.beta2,
        h.lr / bias_correction1 * sqrt_bias_correction2,
        h.eps * sqrt_bias_correction2,
        h.weight_decay,
        1.0 - h.lr * h.weight_decay,
    )
