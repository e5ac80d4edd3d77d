"""GPU arrays and streams as numba sees them: recognizing, adopting, locating.

numba.cuda is an optional dependency: it is imported inside the functions that
need it, so that host-only use never loads it. Nothing here launches a kernel.
"""

from __future__ import annotations

import sys

import numpy as np

from .dtypes import bfloat16_dtype


def is_device(x) -> bool:
    """True for GPU arrays: numba's (real or simulated) and any ``__cuda_array_interface__``."""
    if isinstance(x, np.ndarray) or x is None:
        return False
    if getattr(x, "__cuda_ndarray__", False):
        return True
    try:
        return hasattr(x, "__cuda_array_interface__")
    except (RuntimeError, TypeError):  # torch: a CUDA tensor that requires grad, or a
        return True  # bfloat16 one, refuses the interface


def as_device_array(x, sync: bool = True):
    """A numba device array viewing ``x`` (numba, CuPy, torch, ...), without a copy;
    torch's bfloat16 tensors through their int16 view, as ml_dtypes' bfloat16.

    ``sync``: wait on the host for the stream that ``x``'s interface names (CuPy's
    arrays name one). Without it, the array keeps that stream (``.stream``), and a
    step orders its own stream after it on the device instead."""
    if getattr(x, "__cuda_ndarray__", False):
        return x  # numba's own, real or simulated
    from numba import cuda  # optional dependency, loaded with the first GPU array

    torch = sys.modules.get("torch")
    if torch is not None and isinstance(x, torch.Tensor) and x.dtype == torch.bfloat16:
        view = x.detach().view(torch.int16)
        return cuda.as_cuda_array(view, sync=sync).view(bfloat16_dtype())
    return cuda.as_cuda_array(x, sync=sync)


def wait_for_producer(d) -> None:
    """Wait on the host for the stream that made device array ``d`` (the one its
    interface named, kept by ``as_device_array(..., sync=False)``): for arrays an
    optimizer takes in to keep, before its own fills and copies on other streams."""
    producer = getattr(d, "stream", 0)
    if producer:
        producer.synchronize()


def device_interval(d) -> tuple[int, int]:
    """The [start, end) byte addresses of a contiguous device array."""
    interface = getattr(d, "__cuda_array_interface__", None)
    if interface is None:  # the simulator's arrays wrap a host array
        start = d._ary.__array_interface__["data"][0]
    else:
        start = interface["data"][0]
    return start, start + d.size * d.dtype.itemsize


def to_stream(stream):
    """A numba stream for ``stream``: None (default), numba's, torch's, CuPy's, or a handle."""
    from numba import cuda  # optional dependency: only GPU steps take streams

    if stream is None:
        return cuda.default_stream()
    if hasattr(stream, "auto_synchronize"):  # numba's own, real or simulated
        return stream
    if isinstance(stream, int) and not isinstance(stream, bool):
        return cuda.external_stream(stream)
    for attr in ("cuda_stream", "ptr"):  # torch.cuda.Stream, cupy.cuda.Stream
        handle = getattr(stream, attr, None)
        if isinstance(handle, int):
            return cuda.external_stream(handle)
    raise TypeError("stream must be None, a numba, PyTorch or CuPy CUDA stream, or a stream "
                    f"handle (int); got {type(stream).__name__}")
