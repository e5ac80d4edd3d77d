"""The one place that picks a backend and runs it.

Arrays arrive validated and flattened to 1-D; nothing after this point checks.
Backend modules load on first use: ``import fastadam`` loads neither numba nor
numba.cuda.
"""

from __future__ import annotations

import numpy as np

from ._reference import adam_step_numpy
from ._scalars import Flags, Hyper, coefficients
from ._validate import is_device

_cpu = None
_cuda = None


def cuda_module():
    """``fastadam._cuda``, or a clear error saying what is missing."""
    global _cuda
    if _cuda is None:
        try:
            from . import _cuda as module
        except ImportError as e:
            raise ImportError(
                "backend='cuda' needs numba-cuda: pip install 'fastadam[cuda]'"
            ) from e
        if not module.SIMULATOR and not module.cuda.is_available():
            raise RuntimeError("backend='cuda' needs an NVIDIA GPU and driver; none was found")
        _cuda = module
    return _cuda


def resolve(backend: str, param) -> str:
    """The concrete backend ("numpy", "cpu" or "cuda") for ``backend`` and this param."""
    device = is_device(param)
    if backend == "auto":
        backend = "cuda" if device else "cpu"
    if backend == "cuda":
        cuda_module()
        if not device:
            raise TypeError("backend='cuda' works on GPU arrays, but param is "
                            f"{type(param).__name__}; move it with numba.cuda.to_device")
    elif device:
        raise TypeError(f"backend={backend!r} works on NumPy arrays, but param is a GPU array; "
                        "use backend='cuda' or 'auto'")
    return backend


def apply(backend: str, param, grad, m, v, v_max, h: Hyper, flags: Flags, step: int,
          num_threads: int | None = None, stream=None) -> None:
    """One update with a concrete backend, in place; ``flags`` is ``_scalars.flags(h)``."""
    global _cpu
    if param.size == 0:
        return
    if backend == "cpu":
        if _cpu is None:
            from . import _cpu
        coef = np.array(coefficients(h, step), dtype=param.dtype)
        _cpu.adam_step_cpu(param, grad, m, v, v_max, flags, coef, num_threads)
    elif backend == "cuda":
        _cuda.adam_step_cuda(param, grad, m, v, v_max, flags, coefficients(h, step), stream)
    else:
        adam_step_numpy(param, grad, m, v, v_max, h, step)


def zeros_like(backend: str, flat):
    """Zeroed state for a flat param, where that backend keeps it."""
    if backend == "cuda":
        return _cuda.zeros(flat.size, flat.dtype)
    return np.zeros_like(flat)


def to_host(backend: str, a) -> np.ndarray:
    """A host NumPy copy of backend state."""
    return _cuda.to_host(a) if backend == "cuda" else a.copy()


def from_host(backend: str, a: np.ndarray):
    """Backend state from a host array (already a fresh, C-contiguous copy)."""
    return _cuda.to_device(a) if backend == "cuda" else a
