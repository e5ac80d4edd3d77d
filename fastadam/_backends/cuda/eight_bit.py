"""The fused 8-bit Adam step on NVIDIA GPUs: one thread block per quantization block.

A block of 256 elements is one CUDA thread block. Its threads decode their
elements' m and v (and v_max) into shared memory, run the element update of
``_element.py``, find each moment's new absmax with a shared-memory atomic max
on the magnitude bits, and encode against it through the same ``quant8.Encoder``
table as the CPU kernel, so both give the same codes. One launch per array, or
per batch of arrays (``multi_kernel``: a thread block per quantization block of
any of them, the arrays found through a table of addresses).
"""

from __future__ import annotations

from functools import cache

import numpy as np
from numba import cuda

from ..._core import quant8
from ..._core.dtypes import compute_dtype
from ..._core.hyper import Flags
from ..shared import element, pointers
from ..shared.codes import element_functions
from .dense import _counted_coefficients, counted_scalars
from .runtime import (
    MAX_BLOCKS,
    SIMULATOR,
    _at,
    _at_from,
    _bits_from_f32,
    _device,
    _f32_from_bits,
    cached,
    converters,
    forget,
    multiply,
    rounding,
)

BLOCK = quant8.BLOCK
# Each thread takes BLOCK // THREADS elements of its block (the simulator runs a Python
# thread per CUDA thread: few of them).
THREADS = 32 if SIMULATOR else BLOCK
_magnitude_bits, _code = element_functions(_device, _bits_from_f32)


def _block_step(flags: Flags):
    """``step(b, size, p, g, k, w, m_codes, v_codes, v_max_codes, m_absmax, v_absmax,
    v_max_absmax, m_map, v_map, m_entries, v_entries, m, v, v_max, tops, *coefficients)``:
    quantization block ``b`` of one array, by the thread block. ``p, g, k, w`` and the
    codes start at the block's first element (``size`` of them); the absmax arrays are
    the array's; ``m, v, v_max, tops`` the thread block's shared scratch."""
    update = element.make(_device, flags, converters(compute_dtype(flags.param)),
                          rounding()[0], multiply(compute_dtype(flags.param)))
    compute = np.dtype(compute_dtype(flags.param)).type
    amsgrad = flags.amsgrad
    m_zero = np.int32(quant8.encoder(True).zero)
    v_zero = np.int32(quant8.encoder(False).zero)

    @_device
    def step(b, size, p, g, k, w, m_codes, v_codes, v_max_codes, m_absmax, v_absmax,
             v_max_absmax, m_map, v_map, m_entries, v_entries, m, v, v_max, tops, c0, c1, c2,
             c3, c4, c5, c6, c7, c8, c9, c10, noise):
        t = cuda.threadIdx.x
        if t < 3:
            tops[t] = 0
        top_m, top_v, top_v_max = np.uint32(0), np.uint32(0), np.uint32(0)
        j = t
        while j < size:
            m[j] = compute(m_map[m_codes[j]] * m_absmax[b])
            v[j] = compute(v_map[v_codes[j]] * v_absmax[b])
            if amsgrad:
                v_max[j] = compute(v_map[v_max_codes[j]] * v_max_absmax[b])
            update(j, p, g, m, v, v_max, k, w, c0, c1, c2, c3, c4, c5, c6, c7, c8, c9, c10,
                   noise, b * BLOCK)
            top_m = max(top_m, _magnitude_bits(m[j]))
            top_v = max(top_v, _magnitude_bits(v[j]))
            if amsgrad:
                top_v_max = max(top_v_max, _magnitude_bits(v_max[j]))
            j += THREADS
        cuda.syncthreads()  # tops are zeroed, every old absmax is read
        cuda.atomic.max(tops, 0, top_m)
        cuda.atomic.max(tops, 1, top_v)
        if amsgrad:
            cuda.atomic.max(tops, 2, top_v_max)
        cuda.syncthreads()
        new_m, new_v = _f32_from_bits(tops[0]), _f32_from_bits(tops[1])
        new_v_max = _f32_from_bits(tops[2])
        if t == 0:
            m_absmax[b] = new_m
            v_absmax[b] = new_v
            if amsgrad:
                v_max_absmax[b] = new_v_max
        inv_m = np.float32(1.0) / new_m if new_m > 0 else np.float32(0.0)
        inv_v = np.float32(1.0) / new_v if new_v > 0 else np.float32(0.0)
        inv_v_max = np.float32(1.0) / new_v_max if new_v_max > 0 else np.float32(0.0)
        j = t
        while j < size:
            m_codes[j] = _code(m[j], inv_m, m_entries, m_zero, True)
            v_codes[j] = _code(v[j], inv_v, v_entries, v_zero, False)
            if amsgrad:
                v_max_codes[j] = _code(v_max[j], inv_v_max, v_entries, v_zero, False)
            j += THREADS
        cuda.syncthreads()  # the shared arrays are free for the next block

    return step


@cache
def fused_kernel(flags: Flags, counted: bool = False):
    """The kernel ``(param, grad, m_codes, v_codes, v_max_codes, m_absmax, v_absmax,
    v_max_absmax, comp, master, m_map, v_map, m_entries, v_entries, *coefficients)``,
    launched with ``THREADS`` threads per block (see ``_cpu8bit.fused_kernel``).

    ``counted``: as ``_cuda.fused_kernel(flags, True)``, the step count lives on the
    device: ``(..., v_entries, count, found, inv_scale, c0, c1, c2, c3, c8, c9, lr,
    beta1, beta2, eps, eps_root, bias_correction)``, and nothing changes when
    ``found[0]`` is set.
    """
    block_step = _block_step(flags)
    compute = np.dtype(compute_dtype(flags.param)).type
    noise_of = rounding()[1]

    @cuda.jit(device=True, inline="always")
    def run(param, grad, m_codes, v_codes, v_max_codes, m_absmax, v_absmax, v_max_absmax,
            comp, master, m_map, v_map, m_entries, v_entries, c0, c1, c2, c3, c4, c5, c6, c7,
            c8, c9, c10, key, step):
        noise = noise_of(key, step)
        m = cuda.shared.array(BLOCK, compute)
        v = cuda.shared.array(BLOCK, compute)
        v_max = cuda.shared.array(BLOCK, compute)
        tops = cuda.shared.array(3, np.uint32)
        n = param.size
        b = cuda.blockIdx.x
        while b < (n + BLOCK - 1) // BLOCK:
            s = b * BLOCK
            e = min(s + BLOCK, n)
            block_step(b, e - s, param[s:e], grad[s:e], comp[s:e], master[s:e], m_codes[s:e],
                 v_codes[s:e], v_max_codes[s:e], m_absmax, v_absmax, v_max_absmax, m_map,
                 v_map, m_entries, v_entries, m, v, v_max, tops, c0, c1, c2, c3, c4, c5, c6,
                 c7, c8, c9, c10, noise)
            b += cuda.gridDim.x

    if not counted:
        @cuda.jit
        def kernel(param, grad, m_codes, v_codes, v_max_codes, m_absmax, v_absmax,
                   v_max_absmax, comp, master, m_map, v_map, m_entries, v_entries, c0, c1, c2,
                   c3, c4, c5, c6, c7, c8, c9, c10, key, step):
            run(param, grad, m_codes, v_codes, v_max_codes, m_absmax, v_absmax, v_max_absmax,
                comp, master, m_map, v_map, m_entries, v_entries, c0, c1, c2, c3, c4, c5, c6,
                c7, c8, c9, c10, key, step)

        return cached(kernel, "cuda.eight_bit.fused_kernel", flags, counted)

    coefficients = _counted_coefficients(flags)

    @cuda.jit
    def counted_kernel(param, grad, m_codes, v_codes, v_max_codes, m_absmax, v_absmax,
                       v_max_absmax, comp, master, m_map, v_map, m_entries, v_entries, count,
                       found, inv_scale, c0, c1, c2, c3, c8, c9, lr, beta1, beta2, eps,
                       eps_root, bias_correction, key):
        if found[0] != 0:
            return
        c4, c5, c6, c7, c10 = coefficients(count, inv_scale, lr, beta1, beta2, eps, eps_root,
                                           bias_correction)
        run(param, grad, m_codes, v_codes, v_max_codes, m_absmax, v_absmax, v_max_absmax, comp,
            master, m_map, v_map, m_entries, v_entries, c0, c1, c2, c3, c4, c5, c6, c7, c8, c9,
            c10, key, count[0] + 1)

    return cached(counted_kernel, "cuda.eight_bit.fused_kernel", flags, counted)


@cache
def multi_kernel(flags: Flags, counted: bool = False):
    """One launch over a batch of arrays of one option set and dtypes: a thread block
    per quantization block of any of them.

    ``kernel(tables, grads, firsts, sizes, m_map, v_map, m_entries, v_entries,
    *coefficients)``: ``tables`` rows hold the device addresses of (param, m_codes,
    v_codes, v_max_codes, m_absmax, v_absmax, v_max_absmax, comp, master) per array
    (unused ones any valid address), ``grads`` the gradients' addresses, ``firsts`` the
    first quantization block of each array in the batch's numbering, then their total,
    ``sizes`` the arrays' element counts. ``counted``: as ``fused_kernel``'s.
    """
    block_step = _block_step(flags)
    compute = np.dtype(compute_dtype(flags.param)).type
    noise_of = rounding()[1]
    param_t, grad_t = pointers.pointee(flags.param), pointers.pointee(flags.grad)
    param_size, grad_size = np.dtype(param_t).itemsize, np.dtype(grad_t).itemsize

    @cuda.jit(device=True, inline="always")
    def run(tables, grads, firsts, sizes, m_map, v_map, m_entries, v_entries, c0, c1, c2, c3,
            c4, c5, c6, c7, c8, c9, c10, keys, step):
        m = cuda.shared.array(BLOCK, compute)
        v = cuda.shared.array(BLOCK, compute)
        v_max = cuda.shared.array(BLOCK, compute)
        tops = cuda.shared.array(3, np.uint32)
        last = firsts.size - 1
        block = cuda.blockIdx.x
        while block < firsts[last]:
            low, high = 0, last  # the array: firsts[low] <= block < firsts[low + 1]
            while high - low > 1:
                middle = (low + high) // 2
                if firsts[middle] <= block:
                    low = middle
                else:
                    high = middle
            a = low
            noise = noise_of(keys[a], step)
            b = block - firsts[a]
            s = b * BLOCK
            block_step(b, min(BLOCK, sizes[a] - s), _at_from(tables[0, a], s, param_size, param_t),
                 _at_from(grads[a], s, grad_size, grad_t),
                 _at_from(tables[7, a], s, param_size, param_t),
                 _at_from(tables[8, a], s, 4, np.float32),
                 _at_from(tables[1, a], s, 1, np.uint8), _at_from(tables[2, a], s, 1, np.uint8),
                 _at_from(tables[3, a], s, 1, np.uint8), _at(tables[4, a], np.float32),
                 _at(tables[5, a], np.float32), _at(tables[6, a], np.float32), m_map, v_map,
                 m_entries, v_entries, m, v, v_max, tops, c0, c1, c2, c3, c4, c5, c6, c7, c8,
                 c9, c10, noise)
            block += cuda.gridDim.x

    if not counted:
        @cuda.jit
        def kernel(tables, grads, firsts, sizes, m_map, v_map, m_entries, v_entries, c0, c1,
                   c2, c3, c4, c5, c6, c7, c8, c9, c10, keys, step):
            run(tables, grads, firsts, sizes, m_map, v_map, m_entries, v_entries, c0, c1, c2,
                c3, c4, c5, c6, c7, c8, c9, c10, keys, step)

        return cached(kernel, "cuda.eight_bit.multi_kernel", flags, counted)

    coefficients = _counted_coefficients(flags)

    @cuda.jit
    def counted_kernel(tables, grads, firsts, sizes, m_map, v_map, m_entries, v_entries,
                       count, found, inv_scale, c0, c1, c2, c3, c8, c9, lr, beta1, beta2,
                       eps, eps_root, bias_correction, keys):
        if found[0] != 0:
            return
        c4, c5, c6, c7, c10 = coefficients(count, inv_scale, lr, beta1, beta2, eps, eps_root,
                                           bias_correction)
        run(tables, grads, firsts, sizes, m_map, v_map, m_entries, v_entries, c0, c1, c2, c3,
            c4, c5, c6, c7, c8, c9, c10, keys, count[0] + 1)

    return cached(counted_kernel, "cuda.eight_bit.multi_kernel", flags, counted)


@cache
def tables() -> tuple:
    """The maps and encoder tables on the device, in the kernel's argument order."""
    return tuple(cuda.to_device(np.array(a)) for a in (
        quant8.dynamic_map(True), quant8.dynamic_map(False), quant8.encoder(True).entries,
        quant8.encoder(False).entries))


def _grid(n: int) -> int:
    return max(1, min(quant8.blocks(n), MAX_BLOCKS))


def adam_step_8bit_cuda(arrays: tuple, flags: Flags, coefficients: tuple, stream,
                        key: int = 0, step: int = 0) -> None:
    """Launch the kernel once on checked kernel views ``(param, grad, m_codes, v_codes,
    v_max_codes, m_absmax, v_absmax, v_max_absmax, comp, master)``."""
    scalar = np.dtype(compute_dtype(flags.param)).type
    fused_kernel(flags)[_grid(arrays[0].size), THREADS, stream](
        *arrays, *tables(), *(scalar(c) for c in coefficients), np.uint32(key), np.int64(step))


def adam_step_8bit_cuda_counted(arrays: tuple, flags: Flags, h, steps, stream,
                                key: int = 0) -> None:
    """``adam_step_8bit_cuda`` with the step count, skip flag and gradients' multiplier of
    ``steps`` on the device."""
    fused_kernel(flags, True)[_grid(arrays[0].size), THREADS, stream](
        *arrays, *tables(), steps.count, steps.found, steps.inv_scale,
        *counted_scalars(flags, h), np.uint32(key))


def adam_step_8bit_cuda_many(batch, grad_addresses: np.ndarray, flags: Flags,
                             coefficients: tuple, stream, steps=None, h=None,
                             step: int = 0) -> None:
    """Launch ``multi_kernel`` once over a batch (``_batches.DeviceBatch8bit``: its tables
    on the device); the gradients' addresses go there through ``batch.grads``. With
    ``steps``, the counted kernel (``coefficients`` unused, as in ``_cuda``)."""
    launch = (max(1, min(batch.blocks, MAX_BLOCKS)), THREADS, stream)
    arrays = (batch.tables, batch.grads.send(grad_addresses, stream), batch.firsts,
              batch.sizes, *tables())
    if steps is None:
        scalar = np.dtype(compute_dtype(flags.param)).type
        multi_kernel(flags)[launch](*arrays, *(scalar(c) for c in coefficients), batch.keys,
                                    np.int64(step))
    else:
        multi_kernel(flags, True)[launch](*arrays, steps.count, steps.found, steps.inv_scale,
                                          *counted_scalars(flags, h), batch.keys)
    forget(grad_addresses)
