"""An independent float64 Adam/AdamW, written from torch.optim.Adam's documented algorithm,
with optax's eps_root and nesterov and optimi's fully decoupled weight decay."""

import numpy as np


def adam_f64(param, grad, m, v, v_max, *, step, lr=1e-3, betas=(0.9, 0.999), eps=1e-8,
             weight_decay=0.0, decoupled_weight_decay=False, amsgrad=False, maximize=False,
             bias_correction=True, eps_root=0.0, nesterov=False, decouple_lr=False, max_lr=None,
             grad_scale=None):
    """One step in float64; returns (param, m, v, v_max, update) and leaves the inputs alone."""
    p, g, m, v = (np.asarray(a).astype(np.float64) for a in (param, grad, m, v))
    beta1, beta2 = betas
    if grad_scale is not None:
        g = g / grad_scale
    if maximize:
        g = -g
    if decouple_lr:
        p = p * (1 - weight_decay * lr / max_lr)
    elif decoupled_weight_decay:
        p = p * (1 - lr * weight_decay)
    else:
        g = g + weight_decay * p
    m = beta1 * m + (1 - beta1) * g
    v = beta2 * v + (1 - beta2) * g**2
    if amsgrad:
        v_max = np.maximum(np.asarray(v_max).astype(np.float64), v)
        v_used = v_max
    else:
        v_max, v_used = None, v
    bc1 = 1 - beta1**step if bias_correction else 1.0
    bc2 = 1 - beta2**step if bias_correction else 1.0
    if nesterov:
        bc1_next = 1 - beta1 ** (step + 1) if bias_correction else 1.0
        m_hat = beta1 * m / bc1_next + (1 - beta1) * g / bc1
    else:
        m_hat = m / bc1
    v_hat = v_used / bc2
    update = lr * m_hat / (np.sqrt(v_hat + eps_root) + eps)
    return p - update, m, v, v_max, update
