"""Tensors as the kernels take them, without copies: CPU tensors as NumPy views
(bfloat16 as its bits, ``BFLOAT16_BITS``, complex ones as pairs of reals, as torch steps them),
CUDA tensors through ``__cuda_array_interface__`` (bfloat16 ones through their int16
view); and torch's current CUDA stream as numba's."""

from __future__ import annotations

import torch

from .._core.dtypes import BFLOAT16_BITS
from .._core.gpu import to_stream

DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64,
           torch.complex64, torch.complex128)


# The float kind a tensor steps as (complex ones as pairs of their real dtype).
KINDS = dict(zip(DTYPES, ("float16", "bfloat16", "float32", "float64", "float32", "float64")))


def real_view(t: torch.Tensor) -> torch.Tensor:
    """Complex tensors as their (..., 2) real view: torch's Adam steps them as pairs."""
    return torch.view_as_real(t) if t.is_complex() else t


def as_array(t: torch.Tensor):
    """A zero-copy array view of a (real) tensor for fastadam's kernels."""
    t = t.detach()
    if t.is_cuda:
        return t  # __cuda_array_interface__ (bfloat16: its int16 view, in _core.gpu)
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().view(BFLOAT16_BITS)
    return t.numpy()


def current_stream(t: torch.Tensor):
    """torch's current stream on ``t``'s GPU, as a numba stream."""
    return to_stream(torch.cuda.current_stream(t.device).cuda_stream)


def flat_memory(t: torch.Tensor) -> torch.Tensor | None:
    """A 1-D view of a dense tensor's memory in memory order, whatever its stride order
    (channels_last, transposed), or None where the tensor has gaps (a slice)."""
    expected = 1
    for d in sorted(range(t.dim()), key=t.stride):
        if t.size(d) != 1 and t.stride(d) != expected:
            return None
        expected *= t.size(d)
    return t.as_strided((t.numel(),), (1,))


def memory_views(p: torch.Tensor, grad: torch.Tensor, moments: list) -> tuple[list, list]:
    """([param, grad, *moments] as tensors the kernels take, [(original, copy), ...] to
    copy back after the step). A param stepped in place in its own layout where it and its
    moments share one dense layout (the gradient copied into it if it has another);
    otherwise contiguous copies, stepped, then copied back."""
    if p.is_contiguous() and all(m.is_contiguous() for m in moments):
        return [p, grad.contiguous(), *moments], []
    flat = flat_memory(p)
    if flat is not None and all(m.stride() == p.stride() for m in moments):
        if grad.stride() != p.stride():
            grad = torch.empty_like(p).copy_(grad)  # p's layout (empty_like preserves it)
        return [flat, flat_memory(grad), *(flat_memory(m) for m in moments)], []
    tensors = [p, *moments]
    copies = [t if t.is_contiguous() else t.contiguous() for t in tensors]
    write_back = [(t, c) for t, c in zip(tensors, copies) if c is not t]
    return [copies[0], grad.contiguous(), *copies[1:]], write_back
