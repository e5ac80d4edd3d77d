"""The fused Adam kernel for the CPU: one parallel pass, Numba ``prange``.

Reads param, grad, m, v (and v_max, the Kahan compensation, the master params
when those are on) once and writes each state once. Options and dtypes are
closure constants, so each combination compiles to a loop without branches on
them; combinations compile lazily, on first use.
"""

from __future__ import annotations

from functools import cache

import numba
import numpy as np
from llvmlite import ir
from numba import prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from . import _convert, _element, _pointers
from ._scalars import Flags, compute_dtype


@numba.njit
def _f32_from_bits(u):
    return np.uint32(u).view(np.float32)


@numba.njit
def _bits_from_f32(x):
    return np.float32(x).view(np.uint32)


@intrinsic
def _f32_from_half_bits(typingctx, bits):
    """float16 bits -> float32 through LLVM's ``half``: one ``vcvtph2ps`` with F16C."""
    if bits != types.uint16:
        return None

    def codegen(context, builder, signature, args):
        return builder.fpext(builder.bitcast(args[0], ir.HalfType()), ir.FloatType())

    return types.float32(types.uint16), codegen


@intrinsic
def _half_bits_from_f32(typingctx, x):
    """float32 -> float16 bits, rounded to nearest even: one ``vcvtps2ph`` with F16C."""
    if x != types.float32:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(builder.fptrunc(args[0], ir.HalfType()), ir.IntType(16))

    return types.uint16(types.float32), codegen


@intrinsic
def _prefetch(typingctx, address):
    """Hint the cache line at ``address`` into cache for writing: ``llvm.prefetch``."""
    if not isinstance(address, types.Integer):
        return None

    def codegen(context, builder, signature, args):
        pointer = builder.inttoptr(args[0], ir.IntType(8).as_pointer())
        i32 = ir.IntType(32)
        fnty = ir.FunctionType(ir.VoidType(), [pointer.type, i32, i32, i32])
        fn = cgutils.get_or_insert_function(builder.module, fnty, "llvm.prefetch.p0")
        # write, high locality, data cache
        builder.call(fn, [pointer, ir.Constant(i32, 1), ir.Constant(i32, 3), ir.Constant(i32, 1)])
        return context.get_dummy_value()

    return types.void(address), codegen


@numba.njit(inline="always")
def prefetch_row(table, row):
    """Prefetch each cache line of ``table[row]`` (a C-contiguous 2-D array)."""
    start = table.ctypes.data + row * table.strides[0]
    for offset in range(0, table.shape[1] * table.itemsize, 64):
        _prefetch(start + offset)


def hardware_float16() -> bool:
    """Whether the CPU Numba compiles for converts float16 in hardware (x86 F16C).

    Without it LLVM would call a runtime helper that Numba's JIT cannot link.
    """
    from llvmlite import binding

    if numba.config.CPU_NAME is not None:  # a portable target: only what it declares
        return "+f16c" in (numba.config.CPU_FEATURES or "")
    return bool(binding.get_host_cpu_features().get("f16c", False))


@cache
def converters(compute: str, f16c: bool | None = None) -> dict:
    """``{dtype name: (load, store)}`` computing in ``compute`` ("float32"/"float64");
    float16 in hardware when ``f16c`` (None: where the CPU has it)."""
    found = _convert.make(numba.njit, _f32_from_bits, _bits_from_f32, np.dtype(compute).type)
    if hardware_float16() if f16c is None else f16c:
        found["float16"] = _float16_in_hardware(np.dtype(compute).type)
    return found


def _float16_in_hardware(compute) -> tuple:
    # The same bits as the portable conversions (round to nearest even, subnormals kept),
    # in one instruction for 8 or 16 lanes instead of a dozen integer operations each.
    @numba.njit(inline="always")
    def load(h):
        return compute(_f32_from_half_bits(np.uint16(h)))

    @numba.njit(inline="always")
    def store(x):
        return _half_bits_from_f32(np.float32(x))

    return load, store


# Below this many elements one thread beats waking the pool: a parallel region costs
# ~2 us on one thread and 2.3-5 us on two, about what 16K float32 elements take.
SERIAL_BELOW = 1 << 14
OVERLAP = 1  # the kernel's refusal: the gradient shares memory with an array it writes


@numba.njit(inline="always")
def _shares(a, b) -> bool:
    start, other = a.ctypes.data, b.ctypes.data
    return a.size > 0 and b.size > 0 and start < other + b.nbytes and other < start + a.nbytes


@cache
def fused_kernel(flags: Flags, f16c: bool | None = None):
    """The compiled kernel ``(param, grad, m, v, v_max, comp, master, coef) -> 0``.

    Arrays are 1-D; 16-bit ones are uint16 views. Unused arrays (v_max, comp,
    master when their option is off) may be any placeholder. ``coef`` holds
    ``_scalars.COEFFICIENTS`` rounded once to the compute dtype. ``f16c``: as in
    ``converters``. Before anything is written it returns ``OVERLAP``, changing
    nothing, if grad shares memory with an array the step writes.
    """
    # Inlined by Numba itself: left to LLVM, the float16 Kahan body (three 16-bit loads,
    # two stores) stayed a call per element, unvectorized, at 3% of the memory limit.
    update = _element.make(numba.njit(inline="always"), flags,
                           converters(compute_dtype(flags.param), f16c))

    # prange also lets LLVM vectorize: a plain range loop over several arrays
    # stays scalar, because the arrays might alias.
    @numba.njit(parallel=True, nogil=True)
    def kernel(param, grad, m, v, v_max, comp, master, coef):
        if (_shares(grad, param) or _shares(grad, m) or _shares(grad, v)
                or _shares(grad, v_max) or _shares(grad, comp) or _shares(grad, master)):
            return OVERLAP
        threads = numba.get_num_threads()
        if param.size < SERIAL_BELOW:
            numba.set_num_threads(1)
        c0, c1, c2, c3, c4, c5 = coef[0], coef[1], coef[2], coef[3], coef[4], coef[5]
        c6, c7, c8, c9, c10 = coef[6], coef[7], coef[8], coef[9], coef[10]
        for i in prange(param.size):
            update(i, param, grad, m, v, v_max, comp, master, c0, c1, c2, c3, c4, c5, c6, c7,
                   c8, c9, c10)
        numba.set_num_threads(threads)
        return 0

    return kernel


@cache
def nonfinite_kernel(grad_kind: str):
    """``count(grad)``: how many elements are NaN or infinite (one parallel read)."""
    load = converters(compute_dtype(grad_kind))[grad_kind][0]

    @numba.njit(parallel=True, nogil=True)
    def count(grad):
        bad = 0
        for i in prange(grad.size):
            x = load(grad[i])
            if x - x != 0:  # NaN for NaN and for +-inf, 0 otherwise
                bad += 1
        return bad

    return count


def with_threads(num_threads: int | None, fn, *args):
    """``fn(*args)`` on ``num_threads`` Numba threads, restored afterwards even on error."""
    if num_threads is None:
        return fn(*args)
    previous = numba.get_num_threads()
    numba.set_num_threads(num_threads)
    try:
        return fn(*args)
    finally:
        numba.set_num_threads(previous)


def adam_step_cpu(arrays: tuple, flags: Flags, coef: np.ndarray, num_threads: int | None) -> None:
    """Run the fused kernel on ``(param, grad, m, v, v_max, comp, master)`` kernel views
    (checked: none overlaps another)."""
    if with_threads(num_threads, fused_kernel(flags), *arrays, coef) == OVERLAP:
        raise ValueError("grad overlaps an array the step writes")  # checked before: a bug


def count_nonfinite(grad, grad_kind: str, num_threads: int | None) -> int:
    """NaN and inf elements in ``grad`` (a kernel view)."""
    return with_threads(num_threads, nonfinite_kernel(grad_kind), grad)


@cache
def memory_only_kernel(reads: int, writes: int):
    """The bandwidth limit: ``kernel(*read_only, *read_write)`` reads every array once
    and writes the ``writes`` last ones once, with integer adds and no other arithmetic.

    Pass unsigned-integer views of arrays like the step's, so the bytes are the step's.
    """
    source = memory_only_source(reads, writes)
    scope = {"prange": prange}
    exec(source.replace("LOOP", "for i in prange(r0.size):"), scope)
    return numba.njit(parallel=True, nogil=True)(scope["kernel"])


def memory_only_source(reads: int, writes: int) -> str:
    """Python source of the memory-only loop (``LOOP`` marks the loop header)."""
    r = [f"r{k}" for k in range(reads)]
    w = [f"w{k}" for k in range(writes)]
    body = "".join(f"        {a}[i] += x\n" for a in w)
    return (f"def kernel({', '.join(r + w)}):\n    LOOP\n"
            f"        x = {' + '.join(a + '[i]' for a in r)}\n{body}")


at = _pointers.make(intrinsic, types)  # at(address, np.float32)[i]


@numba.njit
def address(a) -> int:
    """The data address of an array: far cheaper per call than ``__array_interface__``."""
    return a.ctypes.data


@cache
def multi_kernel(flags: Flags):
    """One parallel region over many arrays of one option set and dtypes.

    ``kernel(params, grad_addresses, m, v, v_max, comp, master, chunks, coef)``:
    typed lists of 1-D kernel views (placeholder lists where an option is off),
    the gradients' data addresses (laid out like ``params``), and ``chunks``, rows
    of (array index, start, stop) that split the work evenly across threads.
    """
    # Inlined by Numba itself: an inner range loop around a call stays scalar.
    update = _element.make(numba.njit(inline="always"), flags,
                           converters(compute_dtype(flags.param)))

    grad_t = _pointers.pointee(flags.grad)

    @numba.njit(parallel=True, nogil=True)
    def kernel(params, grad_addresses, ms, vs, v_maxs, comps, masters, chunks, coef):
        c0, c1, c2, c3, c4, c5 = coef[0], coef[1], coef[2], coef[3], coef[4], coef[5]
        c6, c7, c8, c9, c10 = coef[6], coef[7], coef[8], coef[9], coef[10]
        for c in prange(chunks.shape[0]):
            t, start, stop = chunks[c, 0], chunks[c, 1], chunks[c, 2]
            size = params[t].size
            grad = numba.carray(at(grad_addresses[t], grad_t), size)[start:stop]
            # Slices, so that the loop index starts at 0: LLVM then vectorizes it.
            param, m, v = params[t][start:stop], ms[t][start:stop], vs[t][start:stop]
            v_max, comp = v_maxs[t][start:stop], comps[t][start:stop]
            master = masters[t][start:stop]
            for i in range(stop - start):
                update(i, param, grad, m, v, v_max, comp, master, c0, c1, c2, c3, c4, c5, c6,
                       c7, c8, c9, c10)

    return kernel


@cache
def multi_nonfinite_kernel(grad_kind: str):
    """``count(grad_addresses, sizes, chunks)``: NaN and inf elements in the
    chunks' gradients (laid out as in ``multi_kernel``), in one parallel read."""
    load = converters(compute_dtype(grad_kind))[grad_kind][0]
    grad_t = _pointers.pointee(grad_kind)

    @numba.njit(parallel=True, nogil=True)
    def count(grad_addresses, sizes, chunks):
        bad = 0
        for c in prange(chunks.shape[0]):
            t, start, stop = chunks[c, 0], chunks[c, 1], chunks[c, 2]
            grad = numba.carray(at(grad_addresses[t], grad_t), sizes[t])
            for i in range(start, stop):
                x = load(grad[i])
                if x - x != 0:
                    bad += 1
        return bad

    return count


def chunk_table(sizes, chunk: int = 1 << 16) -> np.ndarray:
    """Rows (array index, start, stop) covering every array in pieces of at most ``chunk``."""
    rows = [(t, start, min(start + chunk, n)) for t, n in enumerate(sizes)
            for start in range(0, n, chunk)]
    return np.array(rows, dtype=np.int64).reshape(-1, 3)
