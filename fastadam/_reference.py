"""The naive multi-pass NumPy Adam: the baseline the fused kernels are measured against.

Written as the textbook formulas read, one array expression per line: each line
is a pass over memory and most allocate a temporary. That is the point.
"""

from __future__ import annotations

import numpy as np

from ._scalars import Hyper


def adam_step_numpy(param, grad, m, v, v_max, h: Hyper, step: int) -> None:
    """One Adam/AdamW update in place, with NumPy array expressions."""
    g = -grad if h.maximize else grad
    if h.weight_decay != 0.0:
        if h.decoupled_weight_decay:
            param *= 1.0 - h.lr * h.weight_decay
        else:
            g = g + h.weight_decay * param
    m[...] = h.beta1 * m + (1.0 - h.beta1) * g
    v[...] = h.beta2 * v + (1.0 - h.beta2) * g * g
    if h.amsgrad:
        np.maximum(v_max, v, out=v_max)
        v = v_max
    bias_correction1 = 1.0 - h.beta1**step
    bias_correction2 = 1.0 - h.beta2**step
    m_hat = m / bias_correction1
    v_hat = v / bias_correction2
    param -= h.lr * m_hat / (np.sqrt(v_hat) + h.eps)
