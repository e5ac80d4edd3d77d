"""The quick argument packing of the backend's kernels, checked without a GPU: for every
argument type the kernels take, the same list numba-cuda's own launch would pass, the
same launch call; and numba's own launch where an argument is not on the device."""

import ctypes
import os

import numpy as np
import pytest

pytest.importorskip("numba.cuda")
if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1":
    pytest.skip("the simulator launches Python", allow_module_level=True)

import cuda.core as cuda_core  # noqa: E402  (numba-cuda launches through it)
from numba.cuda import types  # noqa: E402
from numba.cuda.cudadrv.devicearray import DeviceNDArray  # noqa: E402
from numba.cuda.dispatcher import _Kernel  # noqa: E402

from fastadam._backends.cuda import runtime  # noqa: E402


class Memory:  # device memory as a device array reads it: its address
    def __init__(self, address):
        self.device_ctypes_pointer = ctypes.c_void_p(address)


def device(shape, dtype, address):
    dtype = np.dtype(dtype)
    strides = tuple(int(s) for s in np.empty(shape, dtype).strides)
    return DeviceNDArray(shape, strides, dtype, gpu_data=Memory(address))


class Compiled:  # what the packing reads of a compiled numba-cuda kernel
    debug, extensions, cooperative = False, [], False

    def __init__(self, argument_types):
        self.argument_types = argument_types
        self.own = []
        function = type("Function", (), {"kernel": "the kernel"})()
        self._codelibrary = type("Library", (), {"get_cufunc": lambda self: function})()

    def launch(self, args, griddim, blockdim, stream=0, sharedmem=0):
        self.own.append(args)


def numba_arguments(argument_types, args):
    out = []
    for ty, value in zip(argument_types, args):
        kernel = type("K", (), {"extensions": [], "_prepare_args": _Kernel._prepare_args})()
        kernel._prepare_args(ty, value, 0, [], out)
    return out


def same(a, b):
    return type(a) is type(b) and getattr(a, "value", a) == getattr(b, "value", b)


def test_the_packing_is_numbas_and_launches_once(monkeypatch):
    launched = []
    monkeypatch.setattr(runtime, "_core_launch", (cuda_core.LaunchConfig, lambda stream,
                        config, kernel, *args: launched.append((stream, config, kernel, args))))
    argument_types = (types.float32[::1], types.uint16[::1], types.uint64[:, ::1],
                      types.int64[:, ::1], types.float64[::1], types.float32, types.float64,
                      types.uint32, types.int64, types.int32, types.boolean,
                      types.UniTuple(types.float32, 11), types.UniTuple(types.float64, 6),
                      types.Tuple((types.float32, types.Tuple((types.float64, types.int64)))))
    args = (device((1027,), np.float32, 0x7000_0000), device((5,), np.uint16, 0x7000_4000),
            device((6, 3), np.uint64, 0x7000_8000), device((4, 3), np.int64, 0x7001_0000),
            device((1,), np.float64, 0x7002_0000), np.float32(0.125), 1e-8, np.uint32(7),
            np.int64(12), np.int32(-3), True,
            tuple(np.float32(0.9 ** k) for k in range(11)), (1e-3, 0.9, 0.999, 1e-8, 0.0, 1.0),
            (np.float32(2.5), (0.25, np.int64(3))))
    compiled = Compiled(argument_types)
    runtime._pack_arguments_quickly(compiled)
    compiled.launch(args, (4, 1, 1), (256, 1, 1), "the stream", 0)
    assert not compiled.own and len(launched) == 1
    stream, config, kernel, packed = launched[0]
    assert stream == "the stream" and kernel == "the kernel"
    assert tuple(config.grid) == (4, 1, 1) and tuple(config.block) == (256, 1, 1)
    want = numba_arguments(argument_types, args)
    assert len(packed) == len(want) and all(map(same, packed, want)), (packed, want)


def test_a_host_array_keeps_numbas_own_launch(monkeypatch):
    monkeypatch.setattr(runtime, "_core_launch", (cuda_core.LaunchConfig,
                        lambda *a: pytest.fail("packed a host array")))
    compiled = Compiled((types.float32[::1], types.float32))
    runtime._pack_arguments_quickly(compiled)
    args = (np.ones(3, np.float32), np.float32(1))
    compiled.launch(args, (1, 1, 1), (32, 1, 1), 0, 0)
    assert compiled.own == [args]


def test_an_unknown_argument_type_keeps_numbas_own_launch():
    compiled = Compiled((types.float32[::1], types.complex64))
    own = compiled.launch
    runtime._pack_arguments_quickly(compiled)
    assert compiled.launch == own
