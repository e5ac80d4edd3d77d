"""The fused Adam kernel for NVIDIA GPUs: one launch per step, ``numba.cuda``.

The same element update as the CPU kernel, over a grid-stride loop. Options are
closure constants, compiled lazily per option set and dtype. Scalars arrive already
rounded to the param dtype, so the kernel never computes in a wider type.
``multi_kernel`` steps many arrays in one launch through tables of addresses;
the counted variants keep the step count and the skip flag on the device.
"""

from __future__ import annotations

from functools import cache

import numpy as np
from numba import cuda

from ..._core import element, hyper
from ..._core.dtypes import compute_dtype
from ..._core.hyper import Flags
from ..shared import pointers
from .memory import fill_zero
from .norm import clip_kernel
from .runtime import (
    MAX_BLOCKS,
    THREADS_PER_BLOCK,
    Addresses,
    cached,
    converters,
    device_function,
    disk_cached,
    forget,
    inlined_function,
    launch_shape,
    multiply,
    pointer_at,
    rounding,
)


def counted_coefficients(flags: Flags):
    """``coefficients(count, inv_scale, host, terms)``: the step's coefficient tuple
    (``hyper.COEFFICIENTS``), from ``host``, those the host sends (``hyper.HOST_COUNTED``,
    in the compute dtype), the step-dependent ones computed for update ``count[0] + 1``
    from ``terms`` (the float64 ``element.STEP_TERMS``) as on the host, and
    the gradients' multiplier ``inv_scale[0]``."""
    compute = np.dtype(compute_dtype(flags.param)).type
    step_terms = element.step_terms_for(device_function, flags)  # the host's, on the GPU

    @device_function
    def coefficients(count, inv_scale, host, terms):
        beta1, one_minus_beta1, beta2, one_minus_beta2, weight_decay, decay_factor = host
        m_coef, g_coef, scaled_eps_root, scaled_eps = step_terms(np.float64(count[0] + 1),
                                                                 terms)
        return (beta1, one_minus_beta1, beta2, one_minus_beta2, compute(m_coef),
                compute(g_coef), compute(scaled_eps_root), compute(scaled_eps), weight_decay,
                decay_factor, compute(inv_scale[0]))

    return coefficients


@cache
def fused_kernel(flags: Flags, counted: bool = False):
    """The kernel ``(param, grad, m, v, v_max, comp, master, coef, key, step)``: the element
    update of ``_core/element.py`` over a grid-stride loop (see the CPU's ``fused_kernel``).

    The last arguments are the params' rounding ``key`` and the ``step``: their random
    bits there, for stochastic rounding. ``counted``: the step count lives on the device
    instead, and the kernel is ``(param, ..., master, count, found, inv_scale, host, terms,
    key)`` (``counted_scalars``): it does nothing when ``found[0]`` is set (a gradient held
    NaN or inf, or the clipped norm is not finite), and completes the coefficients from
    ``count[0]`` and ``inv_scale[0]`` itself (``counted_coefficients``).
    """
    element_rounding, noise_of = rounding()
    update = element.make(device_function, flags, converters(compute_dtype(flags.param)),
                          element_rounding, multiply(compute_dtype(flags.param)))

    @inlined_function
    def run(param, grad, m, v, v_max, comp, master, coef, key, step):
        noise = noise_of(key, step)
        i = cuda.grid(1)
        stride = cuda.gridsize(1)
        while i < param.size:
            update(i, param, grad, m, v, v_max, comp, master, coef, noise, 0)
            i += stride

    if not counted:
        @cuda.jit
        def kernel(param, grad, m, v, v_max, comp, master, coef, key, step):
            run(param, grad, m, v, v_max, comp, master, coef, key, step)

        return cached(kernel, "cuda.fused_kernel", flags, counted)

    coefficients = counted_coefficients(flags)

    @cuda.jit
    def counted_kernel(param, grad, m, v, v_max, comp, master, count, found, inv_scale, host,
                       terms, key):
        if found[0] != 0:
            return
        coef = coefficients(count, inv_scale, host, terms)
        run(param, grad, m, v, v_max, comp, master, coef, key, count[0] + 1)

    return cached(counted_kernel, "cuda.fused_kernel", flags, counted)


@cache
def multi_kernel(flags: Flags, counted: bool = False):
    """One launch over many arrays of one option set and dtypes.

    ``kernel(tables, grads, chunks, coef, keys, step)``: ``tables`` rows hold the
    device addresses of (param, m, v, v_max, comp, master) per array (unused ones
    any valid address), ``grads`` the gradients' addresses, ``chunks`` rows
    (array index, start, stop), ``keys`` the arrays' rounding keys; each block steps
    whole chunks. ``counted``: as in ``fused_kernel``, ``(tables, grads, chunks, count,
    found, inv_scale, host, terms, keys)``.
    """
    element_rounding, noise_of = rounding()
    update = element.make(device_function, flags, converters(compute_dtype(flags.param)),
                          element_rounding, multiply(compute_dtype(flags.param)))
    param_t, grad_t, state_t = map(pointers.pointee, (flags.param, flags.grad, flags.state))
    master_t = np.float32

    @inlined_function
    def run(tables, grads, chunks, coef, keys, step):
        row = cuda.blockIdx.x
        while row < chunks.shape[0]:
            t = chunks[row, 0]
            noise = noise_of(keys[t], step)
            param, grad = pointer_at(tables[0, t], param_t), pointer_at(grads[t], grad_t)
            m, v = pointer_at(tables[1, t], state_t), pointer_at(tables[2, t], state_t)
            v_max = pointer_at(tables[3, t], state_t)
            comp, master = pointer_at(tables[4, t], param_t), pointer_at(tables[5, t], master_t)
            i = chunks[row, 1] + cuda.threadIdx.x
            while i < chunks[row, 2]:
                update(i, param, grad, m, v, v_max, comp, master, coef, noise, 0)
                i += cuda.blockDim.x
            row += cuda.gridDim.x

    if not counted:
        @cuda.jit
        def kernel(tables, grads, chunks, coef, keys, step):
            run(tables, grads, chunks, coef, keys, step)

        return cached(kernel, "cuda.multi_kernel", flags, counted)

    coefficients = counted_coefficients(flags)

    @cuda.jit
    def counted_kernel(tables, grads, chunks, count, found, inv_scale, host, terms, keys):
        if found[0] != 0:
            return
        coef = coefficients(count, inv_scale, host, terms)
        run(tables, grads, chunks, coef, keys, count[0] + 1)

    return cached(counted_kernel, "cuda.multi_kernel", flags, counted)


def adam_step_cuda(arrays: tuple, flags: Flags, coefficients: tuple[float, ...], stream,
                   key: int = 0, step: int = 0) -> None:
    """Launch the fused kernel once over ``(param, grad, m, v, v_max, comp, master)`` views
    (``key`` and ``step``: the params' random bits, for stochastic rounding)."""
    scalar = np.dtype(compute_dtype(flags.param)).type  # round the float64 scalars once
    blocks, threads = launch_shape(arrays[0].size)
    coef = tuple(scalar(c) for c in coefficients)
    fused_kernel(flags)[blocks, threads, stream](*arrays, coef, np.uint32(key), np.int64(step))


@cache
def swap_kernel(flags: Flags):
    """``swap(param, z, comp, master, weight)``: the CPU's ``swap_kernel`` over a
    grid-stride loop."""
    swap = element.make_swap(device_function, flags, converters(compute_dtype(flags.param)),
                             multiply(compute_dtype(flags.param)))

    @cuda.jit
    def kernel(param, z, comp, master, weight):
        i = cuda.grid(1)
        while i < param.size:
            swap(i, param, z, comp, master, weight)
            i += cuda.gridsize(1)

    return cached(kernel, "cuda.swap_kernel", flags)


def swap_cuda(arrays: tuple, flags: Flags, weight: float, stream) -> None:
    """Launch ``swap_kernel`` once over ``(param, z, comp, master)`` kernel views."""
    blocks, threads = launch_shape(arrays[0].size)
    swap_kernel(flags)[blocks, threads, stream](
        *arrays, np.dtype(compute_dtype(flags.param)).type(weight))


@disk_cached("cuda.advance")
@cuda.jit
def _advance(count, found):
    if cuda.grid(1) == 0 and found[0] == 0:
        count[0] += 1


@disk_cached("cuda.put")
@cuda.jit
def _put(a, value):
    if cuda.grid(1) == 0:
        a[0] = value


class StepCount:
    """An optimizer's step count kept on the device, with the flag that skips a step and
    the gradients' multiplier (1 / the loss scale, with the clip coefficient).

    Per step, on one stream: ``begin`` (or ``begin_clipped``) clears the flag and sets
    it if a gradient holds NaN or inf; the counted kernels do nothing when it is set;
    ``end`` counts the step unless it is. The host never waits: ``read`` does, when asked.
    """

    def __init__(self, step: int) -> None:
        self.count = cuda.device_array(1, np.int64)
        self.found = cuda.device_array(1, np.int32)
        self.inv_scale = cuda.device_array(1, np.float64)
        self.norm = cuda.device_array(1, np.float64)
        self.sent = None  # the multiplier last put in inv_scale from the host
        self.write(step)

    def begin(self, passes, kinds: tuple, addresses: np.ndarray, grad_scale: float | None,
              stream) -> None:
        """Clear the flag, then set it if a gradient (at ``addresses``, of float ``kinds``:
        ``passes`` is their ``norm.GradPasses``) is not finite; the multiplier becomes
        ``1 / grad_scale``."""
        fill_zero[1, 1, stream](self.found)
        inv = 1.0 if grad_scale is None else 1.0 / grad_scale
        if inv != self.sent:  # a launch only when the loss scale changes
            _put[1, 1, stream](self.inv_scale, np.float64(inv))
            self.sent = inv
        passes.flag_nonfinite(kinds, addresses, self.found, stream)

    def begin_clipped(self, squares, grad_scale: float | None, max_norm: float, skip: bool,
                      stream) -> None:
        """Clear the flag; from the device's sum of ``squares`` of the gradients, the
        norm, the multiplier that clips and (``skip``) the flag when the norm is not
        finite: ``norm.clip_kernel``."""
        fill_zero[1, 1, stream](self.found)
        clip_kernel[1, 1, stream](squares, np.float64(1.0 if grad_scale is None else grad_scale),
                                  np.float64(max_norm), skip, self.norm, self.inv_scale,
                                  self.found)
        self.sent = None

    def end(self, stream) -> None:
        _advance[1, 1, stream](self.count, self.found)

    def read(self) -> int:
        """The count (waits for every step launched, on any stream)."""
        cuda.synchronize()
        return int(self.count.copy_to_host()[0])

    def write(self, step: int) -> None:
        """Set the count (between steps: waits until it is there)."""
        cuda.synchronize()
        self.count.copy_to_device(np.array([step], np.int64))
        cuda.default_stream().synchronize()


def counted_scalars(flags: Flags, h) -> tuple[tuple, tuple]:
    """The counted kernels' ``host, terms`` (``counted_coefficients``): the
    step-independent coefficients (``hyper.HOST_COUNTED``) in the compute dtype, and the
    float64 hyperparameters of the rest (``element.STEP_TERMS``)."""
    scalar = np.dtype(compute_dtype(flags.param)).type
    c = hyper.coefficients(h, 1)
    return (tuple(scalar(getattr(c, name)) for name in hyper.HOST_COUNTED),
            tuple(map(float, element.step_term_values(h))))


def adam_step_cuda_counted(arrays: tuple, flags: Flags, h, steps: StepCount,
                           stream, key: int = 0) -> None:
    """``adam_step_cuda`` with the step count, the skip flag and the gradients'
    multiplier on the device."""
    blocks, threads = launch_shape(arrays[0].size)
    fused_kernel(flags, True)[blocks, threads, stream](
        *arrays, steps.count, steps.found, steps.inv_scale, *counted_scalars(flags, h),
        np.uint32(key))


def adam_step_cuda_many(tables, chunks, grads: Addresses, grad_addresses: np.ndarray,
                        flags: Flags, coefficients: tuple[float, ...], stream,
                        steps: StepCount | None = None, h=None, keys=None,
                        step: int = 0) -> None:
    """Launch ``multi_kernel`` once: ``tables``, ``chunks`` and ``keys`` (the arrays'
    rounding keys) are on the device, the gradients' addresses go there through
    ``grads``. With ``steps``, the counted kernel (``coefficients`` unused: they come
    from ``h`` and the device's count and multiplier)."""
    blocks = max(1, min(MAX_BLOCKS, chunks.shape[0]))
    launch = (blocks, THREADS_PER_BLOCK, stream)
    table = grads.send(grad_addresses, stream)
    if steps is None:
        scalar = np.dtype(compute_dtype(flags.param)).type
        coef = tuple(scalar(c) for c in coefficients)
        multi_kernel(flags)[launch](tables, table, chunks, coef, keys, np.int64(step))
    else:
        multi_kernel(flags, True)[launch](tables, table, chunks, steps.count, steps.found,
                                          steps.inv_scale, *counted_scalars(flags, h), keys)
    forget(grad_addresses)
