"""The functional core: one Adam/AdamW update on caller-owned arrays, and the global
gradient norm that clipping needs."""

from __future__ import annotations

import math

import numpy as np

from ._backends.dispatch import (
    apply,
    apply_8bit,
    apply_sparse,
    flags_8bit,
    prepare_sparse,
    resolve,
    step_flags,
    sum_of_squares,
    wait_for_inputs,
)
from ._core import array_checks, checks
from ._core.hyper import hyper
from ._core.options import KEYS


def _call(step, grad_scale, num_threads, backend, stream, param) -> tuple:
    """The checked per-call arguments of a step: (step, grad_scale, num_threads,
    the concrete backend, the CUDA stream)."""
    kind = resolve(checks.backend(backend), param)
    return (checks.step(step), checks.grad_scale(grad_scale), checks.num_threads(num_threads),
            kind, checks.stream(stream, kind))


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
    bias_correction: bool = True,
    eps_root: float = 0.0,
    nesterov: bool = False,
    decouple_lr: bool = False,
    max_lr: float | None = None,
    grad_scale: float | None = None,
    kahan_comp: np.ndarray | None = None,
    master_params: np.ndarray | None = None,
    backend: str = "auto",
    num_threads: int | None = None,
    stream: object = None,
) -> None:
    """Apply one Adam (or AdamW) update to ``param``, ``m``, ``v`` in place.

    Semantics are those of ``torch.optim.Adam`` (``decoupled_weight_decay=True``
    gives ``torch.optim.AdamW``), with ``bc = 1 - beta**step``::

        g = (-grad if maximize else grad) / grad_scale
        g += weight_decay * param            # Adam: L2 penalty in the gradient
        param *= 1 - lr * weight_decay       # AdamW: decoupled decay, instead
        m = beta1 * m + (1 - beta1) * g
        v = beta2 * v + (1 - beta2) * g * g
        v_max = max(v_max, v)                # amsgrad: the denominator uses v_max
        param -= lr * (m / bc1) / (sqrt(v / bc2 + eps_root) + eps)

    Args:
        param: a C-contiguous array, float16, bfloat16 (ml_dtypes), float32 or
            float64. Arithmetic is float32 (float64 for float64 params). A NumPy
            array, or a GPU array (numba, CuPy, PyTorch CUDA tensors: anything with
            ``__cuda_array_interface__``) for the cuda backend.
        grad: param's shape, any of those float dtypes; overlaps nothing.
        m: the first moment, param's shape; overlaps nothing.
        v: the second moment, m's shape and dtype; overlaps nothing.
        step: the 1-based count of this update (1 on the first call).
        v_max: the AMSGrad state, needed when ``amsgrad=True``, else unused.
        bias_correction: False drops the ``bc`` factors.
        eps_root: added to ``v / bc2`` inside the square root, as
            ``optax.adam(eps_root=...)``.
        nesterov: Nesterov momentum exactly as ``optax.adam(nesterov=True)``:
            ``m / bc1`` becomes ``beta1 * m / (1 - beta1**(step+1)) + (1 - beta1) * g / bc1``.
        decouple_lr: fully decoupled weight decay (as optimi):
            ``param *= 1 - weight_decay * lr / max_lr``.
        max_lr: with ``decouple_lr``, the schedule's largest lr (default: lr).
        grad_scale: the loss scale; gradients are divided by it in the kernel.
        kahan_comp: for 16-bit params, a compensation array of the param dtype
            (start at zeros): updates far below the 16-bit spacing still
            accumulate (Kahan summation), so the params follow the fp32
            trajectory. Without it, params are rounded to nearest.
        master_params: for 16-bit params, float32 master params (start as a
            copy of param): the step updates them and stores them rounded in param.
        backend: "auto" (cuda for GPU arrays, else cpu), "cpu" (the fused Numba
            kernel), "cuda" (the fused numba.cuda kernel) or "numpy" (the naive
            multi-pass NumPy baseline).
        num_threads: CPU threads for this call only (default: all of Numba's).
        stream: cuda only: a numba, PyTorch or CuPy stream, or a raw handle;
            the default stream when None. The launch is asynchronous on it.

    Raises:
        TypeError, ValueError: on bad input, naming the argument; nothing is modified.
    """
    h = hyper(**{k: v for k, v in locals().items() if k in KEYS})  # the arguments, by name
    step, scale, threads, kind, cuda_stream = _call(step, grad_scale, num_threads, backend,
                                                    stream, param)
    arrays = array_checks.step_arrays(kind, param, grad, m, v, v_max, kahan_comp, master_params,
                               h.amsgrad)
    wait_for_inputs(kind, arrays, cuda_stream)
    apply(kind, arrays, h, step_flags(h, arrays), step, grad_scale=scale,
          num_threads=threads, stream=cuda_stream)


def adam_step_8bit(
    param: np.ndarray,
    grad: np.ndarray,
    m_codes: np.ndarray,
    v_codes: np.ndarray,
    m_absmax: np.ndarray,
    v_absmax: np.ndarray,
    *,
    step: int,
    lr: float = 1e-3,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    decoupled_weight_decay: bool = False,
    amsgrad: bool = False,
    v_max_codes: np.ndarray | None = None,
    v_max_absmax: np.ndarray | None = None,
    maximize: bool = False,
    bias_correction: bool = True,
    eps_root: float = 0.0,
    nesterov: bool = False,
    decouple_lr: bool = False,
    max_lr: float | None = None,
    grad_scale: float | None = None,
    kahan_comp: np.ndarray | None = None,
    master_params: np.ndarray | None = None,
    backend: str = "auto",
    num_threads: int | None = None,
    stream: object = None,
) -> None:
    """``adam_step`` with m and v (and v_max) held in 8 bits, in place, in one pass.

    The format is bitsandbytes' blockwise 8-bit state: per block of 256 elements
    one float32 absmax per moment, and per element a uint8 code into the dynamic
    map (signed for m, unsigned for v and v_max; ``fastadam.quant8.dynamic_map``).
    Each block's moments are decoded, updated exactly as ``adam_step`` does (every
    option), and encoded again against their new absmax (the nearest code, as
    bitsandbytes' CUDA kernel picks it). A NaN or inf gradient element makes its
    param element NaN or inf, as in the 32-bit step; its moments, which 8 bits
    cannot hold, are stored as 0, and the block's other elements are unaffected.

    Args:
        m_codes: uint8 array of param's size (any shape, C-contiguous); zeros with
            zero absmax to start.
        v_codes: as m_codes.
        v_max_codes: as m_codes, for amsgrad.
        m_absmax: float32 array of ``ceil(param.size / 256)``.
        v_absmax: as m_absmax.
        v_max_absmax: as m_absmax, for amsgrad.
        backend: "auto", "cpu" (the fused kernel), "cuda" (GPU arrays throughout: one
            thread block per block of 256, one launch) or "numpy" (decode, the
            multi-pass NumPy step, encode).

    Every other argument is as in :func:`adam_step`.

    Raises:
        TypeError, ValueError: on bad input, naming the argument; nothing is modified.
    """
    options = {k: v for k, v in locals().items() if k in KEYS}  # the arguments, by name
    _low_bit_step("8bit", param, grad, (m_codes, v_codes, v_max_codes),
                  (m_absmax, v_absmax, v_max_absmax), step, dict(
                      options, grad_scale=grad_scale, kahan_comp=kahan_comp,
                      master_params=master_params, backend=backend, num_threads=num_threads,
                      stream=stream))


def adam_step_4bit(
    param: np.ndarray,
    grad: np.ndarray,
    m_codes: np.ndarray,
    v_codes: np.ndarray,
    m_scale: np.ndarray,
    v_scale: np.ndarray,
    *,
    step: int,
    v_max_codes: np.ndarray | None = None,
    v_max_scale: np.ndarray | None = None,
    **options: object,
) -> None:
    """``adam_step`` with m and v (and v_max) held in 4 bits, in place, in one pass.

    The format is torchao's (``AdamW4bit``; ``fastadam.quant4``): per block of 128
    elements one float32 scale per moment (the block's absmax, at least 1e-12), per
    element a 4-bit code, two to a byte (the even element in the high nibble), into a
    map of 16 values: for m the signed dynamic map, for v and v_max the linear map
    without zero ((code + 1) / 16). Each block is decoded, updated exactly as
    ``adam_step`` does (every option), and encoded against its new scale as torchao
    encodes. Unlike torchao, which keeps arrays under 4,096 elements or not divisible
    by 128 in float32, every size is quantized: a last, partial block has a scale of
    its own.

    Args:
        m_codes: uint8 array of ``(param.size + 1) // 2`` bytes; zeros with zero scales
            to start.
        v_codes: as m_codes.
        m_scale: float32 array of ``ceil(param.size / 128)``.
        v_scale: as m_scale.
        v_max_codes: as m_codes, for amsgrad.
        v_max_scale: as m_scale, for amsgrad.
        **options: every keyword of :func:`adam_step`.

    Raises:
        TypeError, ValueError: on bad input, naming the argument; nothing is modified.
    """
    _low_bit_step("4bit", param, grad, (m_codes, v_codes, v_max_codes),
                  (m_scale, v_scale, v_max_scale), step, options)


def _low_bit_step(fmt: str, param, grad, codes: tuple, scales: tuple, step, options: dict):
    known = set(KEYS) | {"grad_scale", "kahan_comp", "master_params", "backend",
                         "num_threads", "stream"}
    unknown = set(options) - known
    if unknown:
        raise TypeError(f"unexpected keyword arguments {sorted(unknown)}")
    h = hyper(**{k: v for k, v in options.items() if k in KEYS})
    step, scale, threads, kind, cuda_stream = _call(
        step, options.get("grad_scale"), options.get("num_threads"),
        options.get("backend", "auto"), options.get("stream"), param)
    *arrays, codes, scales = array_checks.step_arrays_8bit(
        kind, param, grad, codes, scales, options.get("kahan_comp"),
        options.get("master_params"), h.amsgrad, fmt)
    flags = flags_8bit(h, arrays[0], arrays[1], arrays[2] is not None, arrays[3] is not None,
                       fmt=fmt)
    wait_for_inputs(kind, [*arrays, *codes, *scales], cuda_stream)
    apply_8bit(kind, tuple(arrays), codes, scales, h, flags, step, grad_scale=scale,
               num_threads=threads, stream=cuda_stream, fmt=fmt)


def sparse_adam_step(
    param: np.ndarray,
    indices: np.ndarray,
    values: np.ndarray,
    m: np.ndarray,
    v: np.ndarray,
    *,
    step: int,
    lr: float = 1e-3,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    maximize: bool = False,
    kahan_comp: np.ndarray | None = None,
    master_params: np.ndarray | None = None,
    backend: str = "auto",
    num_threads: int | None = None,
    stream: object = None,
) -> None:
    """One row-sparse Adam update in place: ``torch.optim.SparseAdam``'s, fused.

    The gradient is ``values[k]`` for row ``indices[k]``; duplicate indices are
    summed first (in their order, so the result is deterministic for any thread
    count), and only the rows present change: their m, v and params, with
    ``lr * sqrt(1 - beta2**step) / (1 - beta1**step) * m / (sqrt(v) + eps)``, eps on
    the uncorrected sqrt(v) as torch has it. Absent rows do not decay. ``step``
    counts every step of the table, empty ones included.

    Args:
        param: a (rows, dim) C-contiguous array, float16, bfloat16 (ml_dtypes),
            float32 or float64. Arithmetic is float32 (float64 for float64 params),
            duplicates summed in it.
        m: param's shape, one float dtype with v (for 16-bit params float32, or
            bfloat16 to halve them).
        v: m's shape and dtype.
        indices: (nnz,) integers in [0, rows).
        values: (nnz, dim), any float dtype.
        kahan_comp: for 16-bit params, as in :func:`adam_step` (param's shape;
            only the rows present change).
        master_params: likewise.
        backend: "auto" (cuda for GPU arrays, else cpu), "cpu", "cuda" (every
            array, indices too, on the GPU), or "numpy" (torch's formulas as
            NumPy array expressions).
        stream: cuda only, as in :func:`adam_step`. On the GPU the indices are
            range-checked on the device and the answer read back: one wait.

    Raises:
        TypeError, ValueError: on bad input, naming the argument; nothing is modified.
    """
    h = hyper(lr=lr, betas=betas, eps=eps, maximize=maximize)
    step, _, threads, kind, cuda_stream = _call(step, None, num_threads, backend, stream, param)
    arrays = array_checks.sparse_arrays(kind, param, indices, values, m, v, kahan_comp,
                                        master_params)
    prepare_sparse(kind, arrays, cuda_stream)
    apply_sparse(kind, arrays, h, step, num_threads=threads, stream=cuda_stream)


def grad_norm(grads, *, num_threads: int | None = None, stream=None) -> float:
    """The global L2 norm of ``grads`` (an array, or a list of arrays of any float dtypes
    and shapes; host NumPy arrays or GPU arrays, all in one place), as
    ``torch.nn.utils.clip_grad_norm_`` computes it, in one fused read (float64 sums, in
    an order fixed whatever the thread count: the same bits every time). NaN or inf when
    an element is. On the GPU ``stream`` is the CUDA stream to read on, and the result is
    read back (a wait).

    To clip in the functional API, fold the coefficient into the step's loss scale::

        norm = fastadam.grad_norm(grads)
        coef = min(1.0, max_norm / (norm + 1e-6))
        fastadam.adam_step(param, grad, m, v, step=t, grad_scale=1.0 / coef)  # coef > 0
    """
    arrays = [grads] if not isinstance(grads, (list, tuple)) else list(grads)
    if not arrays:
        return 0.0
    kind = resolve("auto", arrays[0])
    device = kind == "cuda"
    checked = [(array_checks.device_array if device else array_checks.host_array)(
        "grads" if len(arrays) == 1 and not isinstance(grads, (list, tuple)) else f"grads[{i}]",
        a, writable=False) for i, a in enumerate(arrays)]
    threads = checks.num_threads(num_threads)
    cuda_stream = checks.stream(stream, kind)
    return math.sqrt(sum_of_squares(kind, [array_checks.flat(a) for a in checked],
                                    num_threads=threads, stream=cuda_stream))
