"""The one place that picks a backend and runs it.

Arrays arrive validated and flattened to 1-D; nothing after this point checks,
except the row-sparse GPU step, whose index range check is its first launch.
Backends load on first use: ``import fastadam`` loads neither numba (its import
costs a third of a second) nor numba.cuda (an optional dependency).
"""

from __future__ import annotations

import math
from functools import partial
from types import SimpleNamespace
from typing import TYPE_CHECKING

import numpy as np

from .._core.dtypes import compute_dtype, kind
from .._core.gpu import is_device
from .._core.hyper import Flags, Hyper, coefficients, flags
from .reference import (
    adam_step_8bit_numpy,
    adam_step_numpy,
    sparse_adam_step_numpy,
    swap_numpy,
)
from .shared.convert import noise_of, rounding_key  # noqa: F401  (rounding_key: the door)
from .views import as_kernel_array, data_address, kernel_views

if TYPE_CHECKING:  # numba.cuda: for annotations above the door
    from .cuda.norm import DeviceNorm  # noqa: F401

_loaded: dict = {}


def cpu() -> SimpleNamespace:
    """The CPU backend's entry points (numba loads here, on the first CPU step)."""
    found = _loaded.get("cpu")
    if found is None:
        from .cpu import (  # numba: first use
            batches,
            dense,
            eight_bit,
            norm,
            runtime,
            sparse,
            threads,
        )

        found = _loaded["cpu"] = SimpleNamespace(batches=batches, dense=dense,
                                                 eight_bit=eight_bit, norm=norm,
                                                 runtime=runtime, sparse=sparse,
                                                 threads=threads)
    return found


def cuda() -> SimpleNamespace:
    """The CUDA backend's entry points, or a clear error saying what is missing."""
    found = _loaded.get("cuda")
    if found is None:
        try:  # numba-cuda is optional
            from .cuda import batches, dense, eight_bit, memory, norm, runtime, sparse  # cuda
        except ImportError as e:
            raise ImportError(
                "backend='cuda' needs numba-cuda: pip install 'fastadam[cuda]'"
            ) from e
        if not runtime.SIMULATOR and not runtime.cuda.is_available():
            raise RuntimeError("backend='cuda' needs an NVIDIA GPU and driver; none was found")
        found = _loaded["cuda"] = SimpleNamespace(batches=batches, dense=dense,
                                                  eight_bit=eight_bit, memory=memory,
                                                  norm=norm, runtime=runtime, sparse=sparse)
    return found


def resolve(backend: str, param) -> str:
    """The concrete backend ("numpy", "cpu" or "cuda") for ``backend`` and this param."""
    device = is_device(param)
    if backend == "auto":
        backend = "cuda" if device else "cpu"
    if backend == "cuda":
        cuda()
        if not device:
            raise TypeError("backend='cuda' works on GPU arrays, but param is "
                            f"{type(param).__name__}; move it with numba.cuda.to_device")
    elif device:
        raise TypeError(f"backend={backend!r} works on NumPy arrays, but param is a GPU array; "
                        "use backend='cuda' or 'auto'")
    return backend


def step_flags(h: Hyper, arrays: tuple, stochastic: bool = False) -> Flags:
    """The kernel flags for validated ``(param, grad, m, v, v_max, comp, master)``."""
    param, grad, m = arrays[:3]
    return flags(h, kind(param.dtype), kind(grad.dtype), kind(m.dtype),
                 kahan=arrays[5] is not None, master=arrays[6] is not None,
                 stochastic=stochastic)


def apply(backend: str, arrays: tuple, h: Hyper, flags: Flags, step: int, *,
          grad_scale: float | None = None, num_threads: int | None = None, stream=None,
          key: int = 0) -> None:
    """One update in place with a concrete backend.

    ``arrays`` is ``(param, grad, m, v, v_max, comp, master)``, validated and 1-D;
    ``flags`` is ``step_flags(h, arrays)``; ``key``, with ``flags.stochastic``, the
    params' rounding key (``convert.rounding_key``): with the step, their random bits.
    """
    if arrays[0].size == 0:
        return
    if backend == "numpy":
        adam_step_numpy(*arrays, h, step, grad_scale, noise=_noise(flags, key, step))
        return
    coef = coefficients(h, step, grad_scale)
    if backend == "cpu":
        coef = np.array(coef, dtype=compute_dtype(flags.param))
        cpu().dense.adam_step_cpu(kernel_views(arrays), flags, coef, num_threads,
                                  _noise(flags, key, step) or 0)
    else:
        cuda().dense.adam_step_cuda(kernel_views(arrays), flags, coef, stream, key, step)


def swap(backend: str, arrays: tuple, flags: Flags, weight: float, *,
         num_threads: int | None = None, stream=None) -> None:
    """Schedule-free AdamW's move of the params between y and x: ``param = lerp(param, z,
    weight)`` over validated 1-D ``(param, z, comp, master)`` (comp, master None where
    off), rounded to nearest."""
    param, z, comp, master = arrays
    if param.size == 0:
        return
    if backend == "numpy":
        swap_numpy(param, z, comp, master, weight)
        return
    views = kernel_views((param, param, z, z, None, comp, master))
    views = (views[0], views[2], views[5], views[6])
    if backend == "cuda":
        cuda().dense.swap_cuda(views, flags, weight, stream)
        return
    cpu().threads.run_parallel(num_threads, param.size, cpu().dense.swap_kernel(flags),
                               *views, np.dtype(compute_dtype(flags.param)).type(weight))


def _noise(flags: Flags, key: int, step: int) -> int | None:
    """The params' random bits at ``step`` with stochastic rounding, else None."""
    return noise_of(key, step) if flags.stochastic else None


def apply_8bit(backend: str, arrays: tuple, codes: tuple, absmax: tuple, h: Hyper,
               flags: Flags, step: int, *, grad_scale: float | None = None,
               num_threads: int | None = None, stream=None, steps=None, key: int = 0,
               fmt: str = "8bit") -> None:
    """One update with low-bit moments in format ``fmt`` ("8bit", "4bit"): ``arrays`` is
    ``(param, grad, comp, master)`` and ``codes``/``absmax`` are (m, v, v_max), all
    validated and 1-D; ``flags`` is ``step_flags`` with the moments' compute kind as the
    state kind. ``steps``: on the GPU, the step count, skip flag and gradients'
    multiplier on the device (the CUDA backend's ``StepCount``; ``grad_scale`` is then
    in it)."""
    if arrays[0].size == 0:
        return
    param, grad, comp, master = arrays
    if backend == "numpy":
        adam_step_8bit_numpy(param, grad, list(codes), list(absmax), comp, master, h, step,
                             grad_scale, noise=_noise(flags, key, step), fmt=fmt,
                             lerp=flags.lerp)
        return
    views = kernel_views((param, grad, param, param, None, comp, master))
    m, v = codes[0], codes[1]
    v_max = v if codes[2] is None else codes[2]
    v_max_absmax = absmax[1] if absmax[2] is None else absmax[2]
    arrays = (views[0], views[1], m, v, v_max, absmax[0], absmax[1], v_max_absmax, views[5],
              views[6])
    if backend == "cuda":
        eight_bit = cuda().eight_bit
        if steps is not None:
            eight_bit.adam_step_8bit_cuda_counted(arrays, flags, h, steps, stream, key, fmt)
        else:
            eight_bit.adam_step_8bit_cuda(arrays, flags, coefficients(h, step, grad_scale),
                                          stream, key, step, fmt)
        return
    coef = np.array(coefficients(h, step, grad_scale), dtype=compute_dtype(flags.param))
    cpu().eight_bit.adam_step_8bit_cpu(arrays, flags, coef, num_threads,
                                       _noise(flags, key, step) or 0, fmt)


def wait_for_inputs(backend: str, arrays, stream) -> None:
    """On the GPU, before a step's first launch: order ``stream`` after the streams that
    produced the step's inputs (those imported without a host wait), on the device."""
    if backend == "cuda":
        cuda().runtime.wait_for_producers([a for a in arrays if a is not None], stream)


def prepare_sparse(backend: str, arrays: tuple, stream=None) -> None:
    """The row-sparse step's preparation, before anything is written: on the GPU, where
    validation cannot read the indices, their range check (a launch and a wait for its
    answer). ``arrays`` as for ``apply_sparse``."""
    if backend == "cuda":
        wait_for_inputs(backend, arrays, stream)
        param, indices = arrays[:2]
        cuda().sparse.check_indices(indices, param.shape[0], stream)


def apply_sparse(backend: str, arrays: tuple, h: Hyper, step: int, *,
                 num_threads: int | None = None, stream=None, stochastic: bool = False,
                 key: int = 0) -> None:
    """One row-sparse update (``torch.optim.SparseAdam``'s) on validated
    ``(param, indices, values, m, v, comp, master)``; with ``stochastic``, the params
    rounded stochastically by the bits of rounding ``key`` at this step."""
    param, indices, values, m, v, comp, master = arrays
    if indices.size == 0:
        return
    step_size = h.lr * math.sqrt(1 - h.beta2**step) / (1 - h.beta1**step)
    if backend == "numpy":
        sparse_adam_step_numpy(param, indices, values, m, v, comp, master, h, step_size,
                               noise=noise_of(key, step) if stochastic else None)
        return
    compute = compute_dtype(kind(param.dtype))
    coef = (1 - h.beta1, 1 - h.beta2, h.eps, -step_size)
    dense_layout = (param, values, m, v, None, comp, master)  # values in grad's place
    f = step_flags(h, dense_layout, stochastic)
    p, g, m, v, _, comp, master = kernel_views(dense_layout)
    tables = (p, m, v, comp, master)
    if backend == "cuda":
        cuda().sparse.sparse_step(tables, indices, g, f,
                                tuple(np.dtype(compute).type(c) for c in coef), stream, key,
                                step)
        return
    sparse = cpu().sparse
    order, starts = sparse.group_rows(indices, param.shape[0], sparse.scratch(indices.size))
    cpu().threads.run_parallel(num_threads, g.size, sparse.sparse_kernel(f), *tables, indices,
                               order, starts, g, np.array(coef, dtype=compute),
                               np.uint32(noise_of(key, step) if stochastic else 0))


def flags_8bit(h: Hyper, param, grad, kahan: bool, master: bool,
               stochastic: bool = False, fmt: str = "8bit") -> Flags:
    """The kernel flags of a low-bit step: the moments decode to the compute kind; in the
    4-bit format they move as torchao moves them (``lerp``)."""
    param_kind = kind(param.dtype)
    return flags(h, param_kind, kind(grad.dtype), compute_dtype(param_kind), kahan=kahan,
                 master=master, stochastic=stochastic, lerp=fmt == "4bit")


def all_finite(backend: str, grads: list, *, num_threads=None) -> bool:
    """Whether host gradients (validated, 1-D) hold no NaN or inf: one extra read of
    each. (The GPU decides that on the device: ``StepCount.begin``.)"""
    if backend == "cuda":
        raise ValueError("all_finite reads host arrays; the GPU checks on the device")
    grads = [g for g in grads if g.size]
    if backend == "numpy":
        return all(bool(np.isfinite(g).all()) for g in grads)
    dense = cpu().dense
    return all(dense.count_nonfinite(as_kernel_array(g), kind(g.dtype), num_threads) == 0
               for g in grads)


def sum_of_squares(backend: str, grads: list, *, num_threads=None, stream=None):
    """The float64 sum of the squares of every element of the gradients (validated, 1-D),
    in one read of each: NaN or inf where an element is. A float on the host (on the GPU
    read back: a wait)."""
    grads = [g for g in grads if g.size]
    if not grads:
        return 0.0
    wait_for_inputs(backend, grads, stream)
    if backend == "numpy":
        return float(sum(np.sum(np.square(g.astype(np.float64))) for g in grads))
    if backend == "cpu":
        addresses = np.array([data_address(g) for g in grads], dtype=np.int64)
        sizes = np.array([g.size for g in grads], dtype=np.int64)
        return cpu().norm.sum_of_squares(addresses, sizes, [kind(g.dtype) for g in grads],
                                         num_threads)
    total = cuda().norm.sum_of_squares([(as_kernel_array(g), kind(g.dtype)) for g in grads],
                                       stream)
    return float(total.copy_to_host(stream=stream)[0])  # a wait: the clip needs it here


def zeros(backend: str, n: int, dtype):
    """Zeroed 1-D state of ``n`` elements of ``dtype``, where that backend keeps it."""
    if backend == "cuda":
        return cuda().memory.zeros(n, np.dtype(dtype))
    return np.zeros(n, dtype)


def as_float32(backend: str, a) -> object:
    """A float32 copy of params ``a`` (1-D), where that backend keeps state."""
    if backend == "cuda":
        return cuda().memory.as_float32(a, kind(a.dtype))
    return a.astype(np.float32)


def state_copy(backend: str, a, dtype) -> object:
    """A copy of params ``a`` (1-D) as state of ``dtype``, where that backend keeps state
    (schedule-free AdamW's z starts at the params)."""
    if backend == "cuda":
        return from_host(backend, np.ascontiguousarray(to_host(backend, a, a.dtype).astype(dtype)))
    return a.astype(dtype)


def to_host(backend: str, a, dtype) -> np.ndarray:
    """A host NumPy copy of backend state, as ``dtype``."""
    if backend == "cuda":
        return cuda().memory.to_host(a).view(dtype)
    return a.copy()


def from_host(backend: str, a: np.ndarray):
    """Backend state from a host array (already a fresh, C-contiguous copy)."""
    return cuda().memory.to_device(a) if backend == "cuda" else a


# The plans' ways into a backend: ``_state`` reaches ``cpu/`` and ``cuda/`` only through
# these (an import contract forbids it the backend modules themselves).


def host_batches(groups: list):
    """The CPU plan that steps a list's alike arrays in one parallel region per batch."""
    return cpu().batches.HostBatches(groups)


def device_batches(groups: list):
    """The GPU plan that steps a list's alike arrays in one launch per batch."""
    return cuda().batches.DeviceBatches(groups)


def device_step_count(step: int):
    """The step count, skip flag and gradients' multiplier kept on the GPU."""
    return cuda().dense.StepCount(step)


def device_grad_passes(sizes: list):
    """The one-launch reads of a list's gradients on the GPU (norm, non-finite check)."""
    return cuda().norm.GradPasses(sizes)


def device_norm(norm, owner, serial: int, stream):
    """The clipped step's gradient norm, on the GPU until read."""
    return cuda().norm.DeviceNorm(norm, owner, serial, stream)


def forget_addresses(addresses) -> None:
    """Done with the device addresses of one launch (simulated ones are registered)."""
    cuda().runtime.forget(addresses)


def device_address(a) -> int:
    """A GPU array's device address."""
    return cuda().runtime.address(a)


def addresses_last() -> bool:
    """Whether a GPU array's address stays valid after its launch (not on numba's
    simulator, which registers simulated addresses per launch)."""
    return not cuda().runtime.SIMULATOR


def adam_step_cuda_counted(arrays: tuple, flags: Flags, h: Hyper, steps, stream,
                           key: int = 0) -> None:
    """The GPU step of one array with its step count on the device (``steps``)."""
    cuda().dense.adam_step_cuda_counted(kernel_views(arrays), flags, h, steps, stream, key)


def thin_call(flags: Flags, size: int, num_threads: int | None):
    """``call(param, grad, m, v, v_max, comp, master, coef, noise)``: the fused CPU step
    of ``size`` elements as the thinnest path makes it, looked up once per gradient dtype:
    its serial loop where one thread runs anyway (small arrays, or ``num_threads=1``),
    else through the thread choice of ``cpu/threads.run_parallel``."""
    dense = cpu().dense
    serial = dense.serial_kernel(flags)
    threads = cpu().threads
    if num_threads == 1 or (num_threads is None and size < threads.SERIAL_BELOW):
        return serial
    if num_threads is None:
        return threads.measured(dense.fused_kernel(flags), size, serial)
    return partial(threads.run_parallel, num_threads, size, dense.fused_kernel(flags),
                   serial=serial)
