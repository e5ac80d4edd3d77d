"""What every CUDA kernel is built from: bit casts, typed pointers into global memory (a
registry of arrays on the simulator), the element conversions for the GPU, launch
shapes and tables of device addresses.

This module imports ``numba.cuda`` at its top (the simulator needs kernels defined
in such a module) and is itself imported only when a CUDA step is asked for.
"""

from __future__ import annotations

import ctypes
import sys
from functools import cache

import numpy as np
from numba import config, cuda

from .. import cache as _cache
from ..shared import convert, pointers

SIMULATOR = bool(config.ENABLE_CUDASIM)

try:  # what numba-cuda launches kernels through (0.2x and later)
    from cuda.core import LaunchConfig as _LaunchConfig
    from cuda.core import launch as _launch_on
    from numba.cuda import types as nbtypes

    _core_launch = (_LaunchConfig, _launch_on)
except ImportError:
    _core_launch = None


def _load_typing_without_row_stack() -> None:
    """numba-cuda (0.30 at least) overloads ``np.row_stack`` while loading its typing
    registries at the first compile, and NumPy 2.5 removed that name: every kernel then
    fails to compile. Load that module once with the name lent, then take it back."""
    if SIMULATOR or hasattr(np, "row_stack"):
        return
    np.row_stack = np.vstack
    try:
        import numba.cuda.np.arrayobj  # noqa: F401  (registers its overloads once)
    finally:
        del np.row_stack


_load_typing_without_row_stack()


# The simulator runs one Python thread per CUDA thread: keep its launches small.
THREADS_PER_BLOCK = 32 if SIMULATOR else 256


MAX_BLOCKS = 4 if SIMULATOR else 65_535


if SIMULATOR:  # plain Python on NumPy scalars

    def f32_from_bits(u):
        return np.uint32(u).view(np.float32)

    def bits_from_f32(x):
        return np.float32(x).view(np.uint32)

    device_function = cuda.jit(device=True)
else:
    from numba.cuda import libdevice

    device_function = cuda.jit(device=True)

    @device_function
    def f32_from_bits(u):
        return libdevice.int_as_float(np.int32(u))

    @device_function
    def bits_from_f32(x):
        return np.uint32(libdevice.float_as_int(x))


# The grid loop a kernel's variants share, inlined into each by Numba as if written there.
inlined_function = cuda.jit(device=True, inline="always")


if SIMULATOR:
    # Simulated device memory has no addresses a kernel could follow: a table of
    # pointers holds keys into this registry, filled just before each launch.
    # ``pointer_from(address, start, itemsize, pointee)``: the array at ``address`` from
    # its element ``start`` on (``itemsize`` bytes each), on either target.
    _SIMULATED: dict = {}

    @device_function
    def pointer_at(address, pointee):
        return _SIMULATED[int(address)]

    @device_function
    def pointer_from(address, start, itemsize, pointee):
        return _SIMULATED[int(address)][start:]
else:
    from numba.cuda import types as _types
    from numba.cuda.extending import intrinsic

    pointer_at = pointers.make(intrinsic, _types, address_space=1)  # global memory

    @device_function
    def pointer_from(address, start, itemsize, pointee):
        return pointer_at(address + np.uint64(start) * np.uint64(itemsize), pointee)


@cache
def converters(compute: str) -> dict:
    """``{dtype name: (load, store)}`` device functions computing in ``compute``."""
    return convert.make(device_function, f32_from_bits, bits_from_f32, np.dtype(compute).type)


if SIMULATOR:  # NumPy scalars: each product rounds on its own
    @device_function
    def _mul32(a, b):
        return a * b

    _mul64 = _mul32
else:  # NVVM would contract a * b + c into an FMA, which rounds once: the CPU rounds twice
    @device_function
    def _mul32(a, b):
        return libdevice.fmul_rn(a, b)

    @device_function
    def _mul64(a, b):
        return libdevice.dmul_rn(a, b)


def multiply(compute: str):
    """The element update's product for ``compute``: rounded on its own, never fused."""
    return _mul64 if compute == "float64" else _mul32


@cache
def rounding() -> tuple:
    """``((stochastic stores, random), noise)``: the element update's rounding pieces on the
    GPU, and ``noise(key, step)``, an array's random bits at a step (as on the CPU)."""
    nearest = {k: store for k, (_, store) in converters("float32").items()}
    noise, random = convert.make_random(device_function)
    stores = convert.make_stochastic(device_function, f32_from_bits, bits_from_f32, nearest)
    return (stores, random), noise


def cached(kernel, name: str, *parts):
    """A kernel of this backend: disk-cached (``cache.cached``), and launched without
    numba-cuda's low-occupancy warning, as its small grids are meant (one thread
    writes a scalar, one block sums a tree, a small array needs few blocks)."""
    kernel = _cache.cached(kernel, name, *parts)
    if SIMULATOR:
        return kernel
    configure = type(kernel).configure
    # The settings the dispatcher's module reads (numba-cuda's own where it has one).
    settings = getattr(sys.modules[type(kernel).__module__], "config", config)

    def configure_quietly(griddim, blockdim, stream=0, sharedmem=0):
        warn = settings.CUDA_LOW_OCCUPANCY_WARNINGS
        settings.CUDA_LOW_OCCUPANCY_WARNINGS = 0  # read only while the launch is configured
        try:
            return configure(kernel, griddim, blockdim, stream, sharedmem)
        finally:
            settings.CUDA_LOW_OCCUPANCY_WARNINGS = warn

    kernel.configure = configure_quietly  # what ``kernel[grid, block, stream]`` calls
    compile_kernel = kernel.compile

    def compile_packing_quickly(sig):
        compiled = compile_kernel(sig)
        _pack_arguments_quickly(compiled)
        return compiled

    kernel.compile = compile_packing_quickly
    return kernel


class _NotOnDevice(Exception):
    """An array argument numba would copy to the device first: its own launch does that."""


def _array_arguments(a, out: list) -> None:
    # What numba-cuda's ``_prepare_args`` passes for an array already on the device.
    if getattr(a, "__cuda_memory__", False) is not True:
        raise _NotOnDevice
    out += (0, 0, a.size, a.dtype.itemsize, a.device_ctypes_pointer.value, *a.shape,
            *a.strides)


def _scalar_packer(ty):
    """``pack(value, out)`` for a scalar or a tuple of them (the coefficients), as numba
    flattens it (a tuple: its items in order); None for any other type."""
    if isinstance(ty, nbtypes.BaseTuple):
        parts = [_scalar_packer(t) for t in ty]
        if None in parts:
            return None

        def pack_items(v, out, parts=parts):
            for pack, item in zip(parts, v):
                pack(item, out)
        return pack_items
    if isinstance(ty, nbtypes.Integer):
        convert = getattr(ctypes, f"c_{ty}")
    elif ty == nbtypes.float64:
        convert = ctypes.c_double
    elif ty == nbtypes.float32:
        convert = ctypes.c_float
    elif ty == nbtypes.boolean:
        return lambda v, out: out.append(v)  # as numba passes it
    else:
        return None
    return lambda v, out: out.append(convert(v))


def _pack_arguments_quickly(compiled) -> None:
    """Give a compiled kernel a launch that packs its arguments from its known types.

    numba-cuda's own launch re-derives each argument's conversion from its type on every
    call (a chain of type tests and comparisons per argument): about 10 us per argument,
    200-300 us for a step kernel's twenty, which a 1K-element step and every small
    array pay. This one decides the conversions once, per compiled signature, and
    produces the same argument list; anything it does not know (host arrays that numba
    would copy over, records, debug or cooperative kernels) keeps numba's launch."""
    if getattr(compiled, "_fastadam_packed", False):
        return
    compiled._fastadam_packed = True
    if _core_launch is None:  # another numba-cuda: its own launch
        return
    LaunchConfig, launch_on = _core_launch
    if compiled.debug or compiled.extensions or getattr(compiled, "cooperative", False):
        return
    packers = []
    for ty in compiled.argument_types:
        if isinstance(ty, nbtypes.Array):
            packers.append(_array_arguments)
            continue
        pack = _scalar_packer(ty)
        if pack is None:
            return
        packers.append(pack)
    own_launch = compiled.launch

    def launch(args, griddim, blockdim, stream=0, sharedmem=0):
        packed: list = []
        try:
            for pack, value in zip(packers, args):
                pack(value, packed)
        except _NotOnDevice:
            return own_launch(args, griddim, blockdim, stream, sharedmem)
        config = LaunchConfig(grid=griddim, block=blockdim, shmem_size=sharedmem)
        launch_on(stream, config, compiled._codelibrary.get_cufunc().kernel, *packed)

    compiled.launch = launch


def disk_cached(name: str, *parts):
    """``cached`` as a decorator, for kernels defined at module level."""
    return lambda kernel: cached(kernel, name, *parts)


def stream_handle(stream) -> int:
    """A numba stream's CUDA handle as an int: 0 for the legacy default stream and on the
    simulator (read from the handle: ``int(stream)`` is deprecated for the default one)."""
    handle = getattr(stream, "handle", None)
    if handle is None:
        return 0
    return int(getattr(handle, "value", handle) or 0)  # ctypes or cuda-bindings handles


_orderings: dict = {}  # a producer stream's handle -> the event that orders after it


def wait_for_producers(arrays, stream) -> None:
    """Make ``stream`` wait, on the device, for the streams that ``arrays`` imported
    through ``__cuda_array_interface__`` name as their producers: the interface's rule,
    kept without a host wait (see ``gpu.as_device_array``)."""
    if SIMULATOR:
        return
    mine, done = _legacy_as_zero(stream_handle(stream)), set()
    for a in arrays:
        producer = getattr(a, "stream", 0)
        if not producer:
            continue
        handle = _legacy_as_zero(stream_handle(producer))
        if handle == mine or handle in done:
            continue
        done.add(handle)
        event = _orderings.get(handle)
        if event is None:
            event = _orderings[handle] = cuda.event(timing=False)
        event.record(producer)
        event.wait(stream)


def _legacy_as_zero(handle: int) -> int:
    return 0 if handle == 1 else handle  # the interface's 1 is numba's 0: the legacy stream


def launch_shape(n: int) -> tuple[int, int]:
    """(blocks, threads per block) for ``n`` elements; the loop strides over the rest."""
    blocks = min(MAX_BLOCKS, (n + THREADS_PER_BLOCK - 1) // THREADS_PER_BLOCK)
    return max(blocks, 1), THREADS_PER_BLOCK


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
        if self.stream is not None and stream_handle(self.stream) != stream_handle(stream):
            self.stream.synchronize()
        self.device.copy_to_device(host, stream=stream)
        self.stream = stream
        return self.device


def forget(addresses: np.ndarray) -> None:
    """After a launch: simulated, drop the registry's hold on arrays that are the caller's
    (the gradients); on a GPU nothing to do."""
    if SIMULATOR:
        for key in addresses.tolist():
            _SIMULATED.pop(key, None)
