"""An independent float64 Adam/AdamW, written from torch.optim.Adam's documented algorithm."""

import numpy as np


def adam_f64(
    param,
    grad,
    m,
    v,
    v_max,
    *,
    step,
    lr=1e-3,
    betas=(0.9, 0.999),
    eps=1e-8,
    weight_decay=0.0,
    decoupled_weight_decay=False,
    amsgrad=False,
    maximize=False,
):
    """One step in float64; returns new (param, m, v, v_max) and leaves the inputs alone."""
    p, g, m, v = (np.asarray(a, dtype=np.float64).copy() for a in (param, grad, m, v))
    beta1, beta2 = betas
    if maximize:
        g = -g
    if decoupled_weight_decay:
        p = p * (1 - lr * weight_decay)
    else:
        g = g + weight_decay * p
    m = beta1 * m + (1 - beta1) * g
    v = beta2 * v + (1 - beta2) * g**2
    if amsgrad:
        v_max = np.maximum(np.asarray(v_max, dtype=np.float64), v)
        v_used = v_max
    else:
        v_max, v_used = None, v
    m_hat = m / (1 - beta1**step)
    v_hat = v_used / (1 - beta2**step)
    update = lr * m_hat / (np.sqrt(v_hat) + eps)
    return p - update, m, v, v_max, update
