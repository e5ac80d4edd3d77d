"""The functional core: one Adam/AdamW update on caller-owned arrays."""

from __future__ import annotations

import numpy as np

from . import _validate as check
from ._dispatch import apply, resolve
from ._scalars import Hyper, flags


def hyper(lr, betas, eps, weight_decay, decoupled_weight_decay, amsgrad, maximize) -> Hyper:
    """Validate hyperparameters against torch's ranges."""
    beta1, beta2 = check.betas(betas)
    return Hyper(
        check.real("lr", lr),
        beta1,
        beta2,
        check.real("eps", eps),
        check.real("weight_decay", weight_decay),
        check.flag("decoupled_weight_decay", decoupled_weight_decay),
        check.flag("amsgrad", amsgrad),
        check.flag("maximize", maximize),
    )


def adam_step(
    param: np.ndarray,
    grad: np.ndarray,
    m: np.ndarray,
    v: np.ndarray,
    *,
    step: int,
    lr: float = 1e-3,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    decoupled_weight_decay: bool = False,
    amsgrad: bool = False,
    v_max: np.ndarray | None = None,
    maximize: bool = False,
    backend: str = "auto",
    num_threads: int | None = None,
    stream=None,
) -> None:
    """Apply one Adam (or AdamW) update to ``param``, ``m``, ``v`` in place.

    Semantics are those of ``torch.optim.Adam`` (``decoupled_weight_decay=True``
    gives ``torch.optim.AdamW``)::

        g = -grad if maximize else grad
        g += weight_decay * param            # Adam: L2 penalty in the gradient
        param *= 1 - lr * weight_decay       # AdamW: decoupled decay, instead
        m = beta1 * m + (1 - beta1) * g
        v = beta2 * v + (1 - beta2) * g * g
        v_max = max(v_max, v)                # amsgrad: the denominator uses v_max
        param -= lr / (1 - beta1**step) * m / (sqrt(v) / sqrt(1 - beta2**step) + eps)

    Args:
        param, grad, m, v: C-contiguous arrays of one shape and one dtype
            (float32 or float64), not overlapping; ``grad`` is only read. NumPy
            arrays, or GPU arrays (numba, CuPy, PyTorch CUDA tensors: anything
            with ``__cuda_array_interface__``) for the cuda backend.
        step: the 1-based count of this update (1 on the first call).
        v_max: the AMSGrad state, needed when ``amsgrad=True``, else unused.
        backend: "auto" (cuda for GPU arrays, else cpu), "cpu" (the fused Numba
            kernel), "cuda" (the fused numba.cuda kernel) or "numpy" (the naive
            multi-pass NumPy baseline).
        num_threads: CPU threads for this call only (default: all of Numba's).
        stream: cuda only: a numba, PyTorch or CuPy stream, or a raw handle;
            the default stream when None. The launch is asynchronous on it.

    Raises:
        TypeError, ValueError: on bad input, naming the argument; nothing is modified.
    """
    h = hyper(lr, betas, eps, weight_decay, decoupled_weight_decay, amsgrad, maximize)
    step = check.step(step)
    threads = check.num_threads(num_threads)
    kind = resolve(check.backend(backend), param)
    cuda_stream = check.stream(stream, kind)
    arrays = check.step_arrays(kind, param, grad, m, v, v_max, h.amsgrad)
    apply(kind, *arrays, h, flags(h), step, threads, cuda_stream)
