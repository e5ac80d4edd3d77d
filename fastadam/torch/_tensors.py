"""Tensors as the kernels take them, without copies: CPU tensors as NumPy views
(bfloat16 through ml_dtypes, complex ones as pairs of reals, as torch steps them),
CUDA tensors through ``__cuda_array_interface__`` (bfloat16 ones through their int16
view); and torch's current CUDA stream as numba's."""

from __future__ import annotations

import torch

from .._core.dtypes import bfloat16_dtype
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
        return t.view(torch.int16).numpy().view(bfloat16_dtype())
    return t.numpy()


def current_stream(t: torch.Tensor):
    """torch's current stream on ``t``'s GPU, as a numba stream."""
    return to_stream(torch.cuda.current_stream(t.device).cuda_stream)
