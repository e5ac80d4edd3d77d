"""What every CPU kernel is built from: bit casts, float16 in hardware, prefetches,
typed pointers, the element conversions for the CPU, and running on a chosen
number of Numba threads."""

from __future__ import annotations

from functools import cache

import numba
import numpy as np
from llvmlite import binding, ir
from numba import types
from numba.core import cgutils, cpu, registry
from numba.extending import intrinsic
from numba.np.ufunc import parallel
from numba.np.unsafe.ndarray import to_fixed_tuple

from ..._core.hyper import COEFFICIENTS
from ..shared import convert, pointers


@numba.njit(inline="always")  # inlined by Numba: see ``converters``
def f32_from_bits(u):
    return np.uint32(u).view(np.float32)


@numba.njit(inline="always")
def bits_from_f32(x):
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


@intrinsic
def divide(typingctx, a, b):
    """``a / b`` as one IEEE division whatever the caller's error model (Python's checks
    ``b == 0`` first and raises, which also keeps a loop from vectorizing)."""
    if not isinstance(a, types.Float) or a != b:
        return None

    def codegen(context, builder, signature, args):
        return builder.fdiv(*args)

    return a(a, b), codegen


class _NoAliasOptions(cpu.CPUTargetOptions):
    def finalize(self, flags, options):
        super().finalize(flags, options)
        flags.noalias = True
        # No reference counting: the arrays are the caller's, and nothing is allocated.
        # With it, array references made in a branchy loop body (amsgrad's max, a NaN
        # test) keep atomic increfs per element, the loop scalar and 5-40x slower.
        flags.nrt = False


class _NoAliasTarget(registry.CPUTarget):
    options = _NoAliasOptions

    @property
    def target_context(self):  # the CPU target's own: calls link as between njit functions
        return registry.cpu_target.target_context

    @property
    def typing_context(self):
        return registry.cpu_target.typing_context


class _NoAliasDispatcher(registry.CPUDispatcher):
    targetdescr = _NoAliasTarget("cpu")


def njit_noalias(fn):
    """``fn`` compiled as ``numba.njit(nogil=True, error_model="numpy")`` whose array
    arguments LLVM may take as not overlapping (what prange's loop bodies get), without
    reference counting: its loops vectorize. The caller checks that written arrays
    overlap nothing they use; ``fn`` allocates nothing and returns no array."""
    return _NoAliasDispatcher(fn, targetoptions={"nopython": True, "nogil": True,
                                                 "error_model": "numpy"})


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
    if numba.config.CPU_NAME is not None:  # a portable target: only what it declares
        return "+f16c" in (numba.config.CPU_FEATURES or "")
    return bool(binding.get_host_cpu_features().get("f16c", False))


@cache
def converters(compute: str, f16c: bool | None = None) -> dict:
    """``{dtype name: (load, store)}`` computing in ``compute`` ("float32"/"float64");
    float16 in hardware when ``f16c`` (None: where the CPU has it)."""
    # Inlined by Numba itself: a plain range loop calling them stays scalar (LLVM inlines
    # them only after its loop vectorizer ran), 7x slower than with them inlined.
    found = convert.make(numba.njit(inline="always"), f32_from_bits, bits_from_f32,
                         np.dtype(compute).type)
    if hardware_float16() if f16c is None else f16c:
        found["float16"] = _float16_in_hardware(np.dtype(compute).type)
    return found


@cache
def rounding(f16c: bool | None = None) -> tuple:
    """``(stochastic stores, random)`` for the element update on the CPU (see
    ``shared.convert``), the round-to-nearest stores those fall back on as
    ``converters``'."""
    jit = numba.njit(inline="always")
    nearest = {k: store for k, (_, store) in converters("float32", f16c).items()}
    _, random = convert.make_random(jit)
    return convert.make_stochastic(jit, f32_from_bits, bits_from_f32, nearest), random


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


_COEFFICIENT_COUNT = len(COEFFICIENTS)


@numba.njit(inline="always")
def coefficient_tuple(coef):
    """A kernel's coefficient array (``hyper.COEFFICIENTS``' order) as the tuple the element
    update unpacks, read once before the loop: values, not loads the loop must repeat
    because the arrays it writes might alias them."""
    return to_fixed_tuple(coef, _COEFFICIENT_COUNT)


@numba.njit(inline="always")
def shares_memory(a, b) -> bool:
    start, other = a.ctypes.data, b.ctypes.data
    return a.size > 0 and b.size > 0 and start < other + b.nbytes and other < start + a.nbytes


def with_threads(num_threads: int | None, fn, *args):
    """``fn(*args)`` on ``num_threads`` Numba threads, restored afterwards even on error."""
    if num_threads is None:
        return fn(*args)
    get, put = thread_count_calls()
    previous = get()
    put(num_threads)
    try:
        return fn(*args)
    finally:
        put(previous)


def thread_count() -> int:
    """This thread's Numba thread count now (``numba.set_num_threads`` sets it)."""
    return thread_count_calls()[0]()


@cache
def thread_count_calls() -> tuple:
    """(get, set) of this thread's Numba thread count: the threading layer's own calls
    (0.1-0.25 us, checked by ``checks.num_threads`` before), else numba's public ones."""
    try:
        parallel._launch_threads()
        return parallel._get_num_threads, parallel._set_num_threads
    except AttributeError:  # another numba: the public calls (about 1 us each)
        return numba.get_num_threads, numba.set_num_threads


at = pointers.make(intrinsic, types)  # at(address, np.float32)[i]
