"""The fused Adam kernel for NVIDIA GPUs: one launch per step, ``numba.cuda``.

The same loop body as ``_cpu.py``, over a grid-stride loop. Options are closure
constants, compiled lazily per option set and dtype. Scalars arrive already
rounded to the param dtype, so the kernel never computes in a wider type.
This module imports ``numba.cuda`` at its top (the simulator needs that) and is
itself imported only when a CUDA step is asked for.
"""

from __future__ import annotations

import sys
from functools import cache

import numpy as np
from numba import config, cuda

from . import _convert, _element, _pointers, _scalars
from ._scalars import Flags, compute_dtype

SIMULATOR = bool(config.ENABLE_CUDASIM)
# The simulator runs one Python thread per CUDA thread: keep its launches small.
THREADS_PER_BLOCK = 32 if SIMULATOR else 256
MAX_BLOCKS = 4 if SIMULATOR else 65_535


if SIMULATOR:  # plain Python on NumPy scalars

    def _f32_from_bits(u):
        return np.uint32(u).view(np.float32)

    def _bits_from_f32(x):
        return np.float32(x).view(np.uint32)

    _device = cuda.jit(device=True)
else:
    from numba.cuda import libdevice

    _device = cuda.jit(device=True)

    @_device
    def _f32_from_bits(u):
        return libdevice.int_as_float(np.int32(u))

    @_device
    def _bits_from_f32(x):
        return np.uint32(libdevice.float_as_int(x))


# The grid loop a kernel's variants share, inlined into each by Numba as if written there.
_inlined = cuda.jit(device=True, inline="always")


if SIMULATOR:
    # Simulated device memory has no addresses a kernel could follow: a table of
    # pointers holds keys into this registry, filled just before each launch.
    # ``_at_from(address, start, itemsize, pointee)``: the array at ``address`` from
    # its element ``start`` on (``itemsize`` bytes each), on either target.
    _SIMULATED: dict = {}

    @_device
    def _at(address, pointee):
        return _SIMULATED[int(address)]

    @_device
    def _at_from(address, start, itemsize, pointee):
        return _SIMULATED[int(address)][start:]
else:
    from numba.cuda import types as _types
    from numba.cuda.extending import intrinsic

    _at = _pointers.make(intrinsic, _types, address_space=1)  # global memory

    @_device
    def _at_from(address, start, itemsize, pointee):
        return _at(address + np.uint64(start) * np.uint64(itemsize), pointee)


@cache
def converters(compute: str) -> dict:
    """``{dtype name: (load, store)}`` device functions computing in ``compute``."""
    return _convert.make(_device, _f32_from_bits, _bits_from_f32, np.dtype(compute).type)


_step_terms = _device(_scalars.step_terms)  # the host's definition, compiled for the GPU


def _counted_coefficients(flags: Flags):
    """``coefficients(count, found, lr, beta1, beta2, eps, eps_root, bias_correction)``: the
    step-dependent coefficients for update ``count[0] + 1``, rounded to the compute dtype
    (float64 hyperparameters, as on the host)."""
    compute = np.dtype(compute_dtype(flags.param)).type
    nesterov = flags.nesterov

    @_device
    def coefficients(count, lr, beta1, beta2, eps, eps_root, bias_correction):
        m_coef, g_coef, scaled_eps_root, scaled_eps = _step_terms(
            np.float64(count[0] + 1), lr, beta1, beta2, eps, eps_root, bias_correction, nesterov)
        return compute(m_coef), compute(g_coef), compute(scaled_eps_root), compute(scaled_eps)

    return coefficients


@cache
def fused_kernel(flags: Flags, counted: bool = False):
    """The kernel ``(param, grad, m, v, v_max, comp, master, *coefficients)``: the element
    update of ``_element.py`` over a grid-stride loop (see ``_cpu.fused_kernel``).

    ``counted``: the step count lives on the device instead, and the kernel is
    ``(param, ..., master, count, found, c0, c1, c2, c3, c8, c9, c10, lr, beta1, beta2,
    eps, eps_root, bias_correction)``: it does nothing when ``found[0]`` is set (a
    gradient held NaN or inf), and computes coefficients 4-7 from ``count[0]`` itself.
    """
    update = _element.make(_device, flags, converters(compute_dtype(flags.param)))

    @_inlined
    def run(param, grad, m, v, v_max, comp, master, c0, c1, c2, c3, c4, c5, c6, c7, c8, c9,
            c10):
        i = cuda.grid(1)
        stride = cuda.gridsize(1)
        while i < param.size:
            update(i, param, grad, m, v, v_max, comp, master, c0, c1, c2, c3, c4, c5, c6, c7,
                   c8, c9, c10)
            i += stride

    if not counted:
        @cuda.jit
        def kernel(param, grad, m, v, v_max, comp, master, c0, c1, c2, c3, c4, c5, c6, c7,
                   c8, c9, c10):
            run(param, grad, m, v, v_max, comp, master, c0, c1, c2, c3, c4, c5, c6, c7, c8,
                c9, c10)

        return kernel

    coefficients = _counted_coefficients(flags)

    @cuda.jit
    def counted_kernel(param, grad, m, v, v_max, comp, master, count, found, c0, c1, c2, c3,
                       c8, c9, c10, lr, beta1, beta2, eps, eps_root, bias_correction):
        if found[0] != 0:
            return
        c4, c5, c6, c7 = coefficients(count, lr, beta1, beta2, eps, eps_root, bias_correction)
        run(param, grad, m, v, v_max, comp, master, c0, c1, c2, c3, c4, c5, c6, c7, c8, c9,
            c10)

    return counted_kernel


@cache
def multi_kernel(flags: Flags, counted: bool = False):
    """One launch over many arrays of one option set and dtypes.

    ``kernel(tables, grads, chunks, *coefficients)``: ``tables`` rows hold the
    device addresses of (param, m, v, v_max, comp, master) per array (unused ones
    any valid address), ``grads`` the gradients' addresses, and ``chunks`` rows
    (array index, start, stop); each block steps whole chunks. ``counted``: as in
    ``fused_kernel``, ``(tables, grads, chunks, count, found, c0, ..., bias_correction)``.
    """
    update = _element.make(_device, flags, converters(compute_dtype(flags.param)))
    param_t, grad_t, state_t = map(_pointers.pointee, (flags.param, flags.grad, flags.state))
    master_t = np.float32

    @_inlined
    def run(tables, grads, chunks, c0, c1, c2, c3, c4, c5, c6, c7, c8, c9, c10):
        row = cuda.blockIdx.x
        while row < chunks.shape[0]:
            t = chunks[row, 0]
            param, grad = _at(tables[0, t], param_t), _at(grads[t], grad_t)
            m, v, v_max = _at(tables[1, t], state_t), _at(tables[2, t], state_t), _at(
                tables[3, t], state_t)
            comp, master = _at(tables[4, t], param_t), _at(tables[5, t], master_t)
            i = chunks[row, 1] + cuda.threadIdx.x
            while i < chunks[row, 2]:
                update(i, param, grad, m, v, v_max, comp, master, c0, c1, c2, c3, c4, c5, c6,
                       c7, c8, c9, c10)
                i += cuda.blockDim.x
            row += cuda.gridDim.x

    if not counted:
        @cuda.jit
        def kernel(tables, grads, chunks, c0, c1, c2, c3, c4, c5, c6, c7, c8, c9, c10):
            run(tables, grads, chunks, c0, c1, c2, c3, c4, c5, c6, c7, c8, c9, c10)

        return kernel

    coefficients = _counted_coefficients(flags)

    @cuda.jit
    def counted_kernel(tables, grads, chunks, count, found, c0, c1, c2, c3, c8, c9, c10, lr,
                       beta1, beta2, eps, eps_root, bias_correction):
        if found[0] != 0:
            return
        c4, c5, c6, c7 = coefficients(count, lr, beta1, beta2, eps, eps_root, bias_correction)
        run(tables, grads, chunks, c0, c1, c2, c3, c4, c5, c6, c7, c8, c9, c10)

    return counted_kernel


@cache
def nonfinite_kernel(grad_kind: str):
    """``kernel(grad, flag)``: sets ``flag[0] = 1`` if any element is NaN or inf."""
    load = converters(compute_dtype(grad_kind))[grad_kind][0]

    @cuda.jit
    def kernel(grad, flag):
        i = cuda.grid(1)
        stride = cuda.gridsize(1)
        while i < grad.size:
            x = load(grad[i])
            if x - x != 0:  # NaN for NaN and for +-inf
                flag[0] = 1
            i += stride

    return kernel


def launch_shape(n: int) -> tuple[int, int]:
    """(blocks, threads per block) for ``n`` elements; the loop strides over the rest."""
    blocks = min(MAX_BLOCKS, (n + THREADS_PER_BLOCK - 1) // THREADS_PER_BLOCK)
    return max(blocks, 1), THREADS_PER_BLOCK


def adam_step_cuda(arrays: tuple, flags: Flags, coefficients: tuple[float, ...], stream) -> None:
    """Launch the fused kernel once over ``(param, grad, m, v, v_max, comp, master)`` views."""
    scalar = np.dtype(compute_dtype(flags.param)).type  # round the float64 scalars once
    blocks, threads = launch_shape(arrays[0].size)
    fused_kernel(flags)[blocks, threads, stream](*arrays, *(scalar(c) for c in coefficients))


@cuda.jit
def _advance(count, found):
    if cuda.grid(1) == 0 and found[0] == 0:
        count[0] += 1


class StepCount:
    """An optimizer's step count kept on the device, with the flag that skips a step.

    Per step, on one stream: ``begin`` clears the flag and sets it if a gradient
    holds NaN or inf; the counted kernels do nothing when it is set; ``end``
    counts the step unless it is. The host never waits: ``read`` does, when asked.
    """

    def __init__(self, step: int) -> None:
        self.count = cuda.device_array(1, np.int64)
        self.found = cuda.device_array(1, np.int32)
        self.write(step)

    def begin(self, grads: list, stream) -> None:
        """Clear the flag, then set it if any of ``grads`` ((kernel view, kind)) is not finite."""
        _fill_zero[1, 1, stream](self.found)
        flag_nonfinite(grads, self.found, stream)

    def end(self, stream) -> None:
        _advance[1, 1, stream](self.count, self.found)

    def read(self) -> int:
        """The count (waits for the device)."""
        return int(self.count.copy_to_host()[0])

    def write(self, step: int) -> None:
        self.count.copy_to_device(np.array([step], np.int64))


def counted_scalars(flags: Flags, h, grad_scale: float | None) -> tuple:
    """The counted kernels' arguments after ``count, found``: the step-independent
    coefficients in the compute dtype, then the float64 hyperparameters of the rest."""
    scalar = np.dtype(compute_dtype(flags.param)).type
    c = _scalars.coefficients(h, 1, grad_scale)
    return (*(scalar(x) for x in c[:4]), *(scalar(x) for x in c[8:]), h.lr, h.beta1, h.beta2,
            h.eps, h.eps_root, 1.0 if h.bias_correction else 0.0)


def adam_step_cuda_counted(arrays: tuple, flags: Flags, h, grad_scale, steps: StepCount,
                           stream) -> None:
    """``adam_step_cuda`` with the step count and the skip flag on the device."""
    blocks, threads = launch_shape(arrays[0].size)
    fused_kernel(flags, True)[blocks, threads, stream](
        *arrays, steps.count, steps.found, *counted_scalars(flags, h, grad_scale))


# Elements per chunk of the one-launch kernel: 64 per thread of a block (simulated: 2).
CHUNK = 64 if SIMULATOR else 64 * THREADS_PER_BLOCK


def address(a) -> int:
    """The device address of a device array (simulated: a key into the registry, which
    holds 16-bit arrays as the uint16 bits kernels read)."""
    if SIMULATOR:
        ary = a._ary.view(np.uint16) if a._ary.dtype.itemsize == 2 else a._ary
        key = ary.__array_interface__["data"][0]
        _SIMULATED[key] = ary
        return key
    return a.__cuda_array_interface__["data"][0]


class Addresses:
    """A device table of addresses, refilled every step. On one stream, copies and launches
    keep their order; before it is refilled for another stream, the last one is waited for."""

    def __init__(self, n: int) -> None:
        self.device = cuda.device_array(n, np.uint64)
        self.stream = None

    def send(self, host: np.ndarray, stream):
        """The table on the device, holding ``host`` once ``stream`` gets to it."""
        if self.stream is not None and _stream_key(self.stream) != _stream_key(stream):
            self.stream.synchronize()
        self.device.copy_to_device(host, stream=stream)
        self.stream = stream
        return self.device


def _stream_key(stream):
    return int(stream) if hasattr(stream, "handle") else None  # simulated: all one


def adam_step_cuda_many(tables, chunks, grads: Addresses, grad_addresses: np.ndarray,
                        flags: Flags, coefficients: tuple[float, ...], stream,
                        steps: StepCount | None = None, h=None, grad_scale=None) -> None:
    """Launch ``multi_kernel`` once: ``tables`` and ``chunks`` are on the device, the
    gradients' addresses go there through ``grads``. With ``steps``, the counted kernel
    (``coefficients`` unused: they come from ``h``, ``grad_scale`` and the device count)."""
    blocks = max(1, min(MAX_BLOCKS, chunks.shape[0]))
    launch = (blocks, THREADS_PER_BLOCK, stream)
    table = grads.send(grad_addresses, stream)
    if steps is None:
        scalar = np.dtype(compute_dtype(flags.param)).type
        multi_kernel(flags)[launch](tables, table, chunks, *(scalar(c) for c in coefficients))
    else:
        multi_kernel(flags, True)[launch](tables, table, chunks, steps.count, steps.found,
                                          *counted_scalars(flags, h, grad_scale))
    forget(grad_addresses)


def forget(addresses: np.ndarray) -> None:
    """After a launch: simulated, drop the registry's hold on arrays that are the caller's
    (the gradients); on a GPU nothing to do."""
    if SIMULATOR:
        for key in addresses.tolist():
            _SIMULATED.pop(key, None)


def flag_nonfinite(grads: list, flag, stream) -> None:
    """Set ``flag[0]`` if any of ``grads`` ((kernel view, kind) pairs) holds NaN or inf:
    one launch each, no wait."""
    for grad, grad_kind in grads:
        if grad.size:
            nonfinite_kernel(grad_kind)[launch_shape(grad.size) + (stream,)](grad, flag)


def count_nonfinite(grads: list, stream) -> int:
    """1 if any of ``grads`` ((kernel view, kind) pairs) holds NaN or inf, else 0: one
    launch each into one flag, then one wait for the answer."""
    flag = cuda.to_device(np.zeros(1, np.int32), stream=stream)
    flag_nonfinite(grads, flag, stream)
    return int(flag.copy_to_host(stream=stream)[0])


def as_device_array(x):
    """A numba device array viewing ``x`` (numba, CuPy, torch, ...), without a copy;
    torch's bfloat16 tensors through their int16 view, as ml_dtypes' bfloat16."""
    if getattr(x, "__cuda_ndarray__", False):
        return x  # numba's own, real or simulated
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(x, torch.Tensor) and x.dtype == torch.bfloat16:
        from ._bfloat16 import bfloat16_dtype

        return cuda.as_cuda_array(x.detach().view(torch.int16)).view(bfloat16_dtype())
    return cuda.as_cuda_array(x)


def to_stream(stream):
    """A numba stream for ``stream``: None (default), numba's, torch's, CuPy's, or a handle."""
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


@cuda.jit
def _fill_zero(a):
    i = cuda.grid(1)
    stride = cuda.gridsize(1)
    while i < a.size:
        a[i] = 0
        i += stride


@cache
def widen_kernel(kind: str):
    """``kernel(source, out)``: ``out[i] = float32(source[i])`` for a float kind (16-bit
    sources as uint16 views): master weights made from the params on the device."""
    load = converters("float32")[kind][0]

    @cuda.jit
    def kernel(source, out):
        i = cuda.grid(1)
        stride = cuda.gridsize(1)
        while i < source.size:
            out[i] = load(source[i])
            i += stride

    return kernel


def _unsigned(dtype) -> np.dtype:
    return np.dtype(f"u{np.dtype(dtype).itemsize}")


def zeros(n: int, dtype) -> object:
    """A zeroed 1-D device array of a float dtype (bfloat16 too), made on the device: no
    host buffer is allocated or copied."""
    out = cuda.device_array(n, _unsigned(dtype))  # numba allocates integers of any width
    if n:  # integer zeros of the same width are float zeros
        _fill_zero[launch_shape(n)](out)
    return out.view(np.dtype(dtype))


def as_float32(a, kind: str) -> object:
    """A new float32 device array holding the float values of device array ``a``."""
    out = cuda.device_array(a.size, np.float32)
    if a.size:
        source = a.view(np.uint16) if a.dtype.itemsize == 2 else a
        widen_kernel(kind)[launch_shape(a.size)](source, out)
    return out


def to_host(a) -> np.ndarray:
    """A host copy of a device array (bits as unsigned integers: callers view them)."""
    return a.view(_unsigned(a.dtype)).copy_to_host()


def to_device(a: np.ndarray):
    """A device copy of a host array (bfloat16 too: copied as its bits)."""
    a = np.ascontiguousarray(a)
    return cuda.to_device(a.view(_unsigned(a.dtype))).view(a.dtype)


@cache
def memory_only_kernel(reads: int, writes: int):
    """The bandwidth limit on the GPU, in one launch: see ``_cpu.memory_only_kernel``."""
    from ._cpu import memory_only_source

    source = memory_only_source(reads, writes).replace(
        "    LOOP\n", "    i = cuda.grid(1)\n    while i < r0.size:\n")
    source += "        i += cuda.gridsize(1)\n"
    scope = {"cuda": cuda}
    exec(source, scope)
    kernel = cuda.jit(scope["kernel"])

    def run(*arrays):
        kernel[launch_shape(arrays[0].size)](*arrays)

    run.kernel = kernel
    return run
