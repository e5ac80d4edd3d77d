"""The one place that picks a backend and runs it.

Arrays arrive validated and flattened to 1-D; nothing after this point checks.
Backend modules load on first use: ``import fastadam`` loads neither numba nor
numba.cuda.
"""

from __future__ import annotations

import math

import numpy as np

from ._reference import adam_step_numpy
from ._scalars import Flags, Hyper, coefficients, compute_dtype, flags
from ._validate import is_device, kind

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


def step_flags(h: Hyper, arrays: tuple) -> Flags:
    """The kernel flags for validated ``(param, grad, m, v, v_max, comp, master)``."""
    param, grad, m = arrays[:3]
    return flags(h, kind(param.dtype), kind(grad.dtype), kind(m.dtype),
                 kahan=arrays[5] is not None, master=arrays[6] is not None)


def as_kernel_array(a):
    """The array as kernels take it: 16-bit ones as uint16 views (numba has no bfloat16)."""
    return a.view(np.uint16) if a.dtype.itemsize == 2 else a


def kernel_views(arrays: tuple) -> tuple:
    """The arrays as kernels take them: 16-bit ones as uint16, placeholders for unused ones."""
    param, grad, m, v, v_max, comp, master = [
        # dtype.itemsize: numba's device arrays have no ``itemsize`` (the simulator's do)
        a if a is None or a.dtype.itemsize != 2 else a.view(np.uint16) for a in arrays
    ]
    return (param, grad, m, v, v if v_max is None else v_max,
            param if comp is None else comp, param if master is None else master)


def apply(backend: str, arrays: tuple, h: Hyper, flags: Flags, step: int, *,
          grad_scale: float | None = None, num_threads: int | None = None, stream=None) -> None:
    """One update in place with a concrete backend.

    ``arrays`` is ``(param, grad, m, v, v_max, comp, master)``, validated and 1-D;
    ``flags`` is ``step_flags(h, arrays)``.
    """
    global _cpu
    if arrays[0].size == 0:
        return
    if backend == "numpy":
        adam_step_numpy(*arrays, h, step, grad_scale)
        return
    coef = coefficients(h, step, grad_scale)
    if backend == "cpu":
        if _cpu is None:
            from . import _cpu
        coef = np.array(coef, dtype=compute_dtype(flags.param))
        _cpu.adam_step_cpu(kernel_views(arrays), flags, coef, num_threads)
    else:
        _cuda.adam_step_cuda(kernel_views(arrays), flags, coef, stream)


def apply_8bit(backend: str, arrays: tuple, codes: tuple, absmax: tuple, h: Hyper,
               flags: Flags, step: int, *, grad_scale: float | None = None,
               num_threads: int | None = None, stream=None, steps=None) -> None:
    """One update with 8-bit moments: ``arrays`` is ``(param, grad, comp, master)`` and
    ``codes``/``absmax`` are (m, v, v_max), all validated and 1-D; ``flags`` is
    ``step_flags`` with the moments' compute kind as the state kind. ``steps``: on the
    GPU, the step count and skip flag on the device (``_cuda.StepCount``)."""
    if arrays[0].size == 0:
        return
    param, grad, comp, master = arrays
    if backend == "numpy":
        from ._reference import adam_step_8bit_numpy

        adam_step_8bit_numpy(param, grad, list(codes), list(absmax), comp, master, h, step,
                             grad_scale)
        return
    views = kernel_views((param, grad, param, param, None, comp, master))
    m, v = codes[0], codes[1]
    v_max = v if codes[2] is None else codes[2]
    v_max_absmax = absmax[1] if absmax[2] is None else absmax[2]
    arrays = (views[0], views[1], m, v, v_max, absmax[0], absmax[1], v_max_absmax, views[5],
              views[6])
    if backend == "cuda":
        from . import _cuda8bit

        if steps is not None:
            _cuda8bit.adam_step_8bit_cuda_counted(arrays, flags, h, grad_scale, steps, stream)
        else:
            _cuda8bit.adam_step_8bit_cuda(arrays, flags, coefficients(h, step, grad_scale),
                                          stream)
        return
    from ._cpu8bit import adam_step_8bit_cpu

    coef = np.array(coefficients(h, step, grad_scale), dtype=compute_dtype(flags.param))
    adam_step_8bit_cpu(arrays, flags, coef, num_threads)


def apply_sparse(backend: str, arrays: tuple, h: Hyper, step: int, *,
                 num_threads: int | None = None, stream=None) -> None:
    """One row-sparse update (``torch.optim.SparseAdam``'s) on validated
    ``(param, indices, values, m, v, comp, master)``."""
    param, indices, values, m, v, comp, master = arrays
    if indices.size == 0:
        return
    step_size = h.lr * math.sqrt(1 - h.beta2**step) / (1 - h.beta1**step)
    if backend == "numpy":
        from ._reference import sparse_adam_step_numpy

        sparse_adam_step_numpy(param, indices, values, m, v, comp, master, h, step_size)
        return
    compute = compute_dtype(kind(param.dtype))
    coef = (1 - h.beta1, 1 - h.beta2, h.eps, -step_size)
    dense_layout = (param, values, m, v, None, comp, master)  # values in grad's place
    f = step_flags(h, dense_layout)
    p, g, m, v, _, comp, master = kernel_views(dense_layout)
    tables = (p, m, v, comp, master)
    if backend == "cuda":
        from . import _cudasparse

        _cudasparse.sparse_step(tables, indices, g, f,
                                tuple(np.dtype(compute).type(c) for c in coef), stream)
        return
    from ._cpu import with_threads
    from ._cpusparse import group_rows, scratch, sparse_kernel

    order, starts = group_rows(indices, param.shape[0], scratch(indices.size))
    with_threads(num_threads, sparse_kernel(f), *tables, indices, order, starts, g,
                 np.array(coef, dtype=compute))


def flags_8bit(h: Hyper, param, grad, kahan: bool, master: bool) -> Flags:
    """The kernel flags of an 8-bit step: the moments decode to the compute kind."""
    param_kind = kind(param.dtype)
    return flags(h, param_kind, kind(grad.dtype), compute_dtype(param_kind), kahan=kahan,
                 master=master)


def all_finite(backend: str, grads: list, *, num_threads=None, stream=None) -> bool:
    """Whether the gradients (validated, 1-D) hold no NaN or inf: one extra read of each;
    on the GPU one wait for the answer, whatever their number."""
    global _cpu
    grads = [g for g in grads if g.size]
    if backend == "numpy":
        return all(bool(np.isfinite(g).all()) for g in grads)
    views = [(as_kernel_array(g), kind(g.dtype)) for g in grads]
    if backend == "cpu":
        if _cpu is None:
            from . import _cpu
        return all(_cpu.count_nonfinite(v, k, num_threads) == 0 for v, k in views)
    return _cuda.count_nonfinite(views, stream) == 0


def zeros(backend: str, n: int, dtype):
    """Zeroed 1-D state of ``n`` elements of ``dtype``, where that backend keeps it."""
    if backend == "cuda":
        return _cuda.zeros(n, np.dtype(dtype))
    return np.zeros(n, dtype)


def as_float32(backend: str, a) -> object:
    """A float32 copy of params ``a`` (1-D), where that backend keeps state."""
    if backend == "cuda":
        return _cuda.as_float32(a, kind(a.dtype))
    return a.astype(np.float32)


def to_host(backend: str, a, dtype) -> np.ndarray:
    """A host NumPy copy of backend state, as ``dtype``."""
    if backend == "cuda":
        return _cuda.to_host(a).view(dtype)
    return a.copy()


def from_host(backend: str, a: np.ndarray):
    """Backend state from a host array (already a fresh, C-contiguous copy)."""
    return _cuda.to_device(a) if backend == "cuda" else a
