"""The one place that picks a backend and runs it.

Arrays arrive validated and flattened to 1-D; nothing after this point checks.
"""

from __future__ import annotations

import numpy as np

from ._reference import adam_step_numpy
from ._scalars import Flags, Hyper, coefficients

_cpu = None  # the Numba module, imported on first use so that import fastadam stays light


def resolve(backend: str, param) -> str:
    """The concrete backend for ``backend`` ("auto", "numpy", "cpu") and this param."""
    if backend == "auto":
        return "cpu"
    if backend == "cuda":
        raise ValueError("backend='cuda' is not available in this version of fastadam")
    return backend


def apply(
    backend: str,
    param,
    grad,
    m,
    v,
    v_max,
    h: Hyper,
    flags: Flags,
    step: int,
    num_threads: int | None,
) -> None:
    """One update with a concrete backend, in place; ``flags`` is ``_scalars.flags(h)``."""
    global _cpu
    if param.size == 0:
        return
    if backend == "cpu":
        if _cpu is None:
            from . import _cpu
        coef = np.array(coefficients(h, step), dtype=param.dtype)
        _cpu.adam_step_cpu(param, grad, m, v, v_max, flags, coef, num_threads)
    else:
        adam_step_numpy(param, grad, m, v, v_max, h, step)
