"""fastadam's own contenders: the naive NumPy Adam and the fused step on every thread
count, on the CPU and (where there is one) the GPU, with their memory-only limits."""

from __future__ import annotations

from functools import partial

import numpy as np

from .._backends import dispatch
from .._core.bfloat16 import as_bfloat16
from .._core.dtypes import numpy_dtype
from ..optimizer import Adam
from ..variants import AdamWScheduleFree, AdEMAMix
from .configs import adam_options
from .harness import Contender, roofline_contenders, traffic_bytes
from .peers import cuda_peers


def _share_state(source, targets) -> None:
    # The contenders step the same arrays: one set of state in memory, not one per contender.
    for opt in targets:
        opt._slots[0].state = source._slots[0].state
        opt._slots[0].absmax = source._slots[0].absmax


# The optimizer each configuration steps (Adam's, but for the other update rules).
_OPTIMIZERS = {"schedulefree": AdamWScheduleFree, "ademamix": AdEMAMix}


def optimizer_of(config: str):
    """The fastadam optimizer class that ``config`` steps."""
    return _OPTIMIZERS.get(config, Adam)


def fastadam_contenders(n, dtype, config, rng, threads_list):
    """numpy, and the fused cpu kernel on every thread count, through ``Adam.step``.

    Returns the contenders, the cpu optimizer (whose arrays all share) and the grad.
    """
    kw = adam_options(dtype, config)
    np_dtype = numpy_dtype(dtype)
    param = rng.standard_normal(n).astype(np_dtype)
    grad = rng.standard_normal(n).astype(np_dtype)
    make = optimizer_of(config)
    main = make(param, backend="cpu", **kw)
    others = []
    for backend, threads in [("numpy", None)] + [("cpu", t) for t in threads_list]:
        others.append(make(param, backend=backend, num_threads=threads, **kw))
        _share_state(main, others[-1:])
    out = [Contender("numpy", 1, partial(others[0].step, grad))]
    out += [Contender("cpu", t, partial(o.step, grad)) for t, o in zip(threads_list, others[1:])]
    return out, main, grad


def gpu_available() -> bool:
    """A real CUDA GPU with numba-cuda (the simulator is far too slow to time)."""
    try:
        runtime = dispatch.cuda().runtime
    except (ImportError, RuntimeError):  # no numba-cuda, or no GPU
        return False
    return not runtime.SIMULATOR


def cuda_contenders(n, dtype, config, rng, peers):
    """The fused step on the GPU, its memory-only kernel, a device copy of the same bytes,
    and with ``peers`` torch's fused CUDA Adam; each call waits for the GPU to finish.

    Returns (contenders, bytes a step moves), or None where the GPU has no such case.
    """
    from numba import cuda  # optional, as is the GPU roofline that imports it at its top

    from .roofline_cuda import memory_only_kernel  # numba.cuda, at its top

    kw = adam_options(dtype, config)
    np_dtype = numpy_dtype(dtype)

    def on_device(host):  # bfloat16 as its 16-bit storage, declared
        if dtype != "bfloat16":
            return cuda.to_device(host)
        return as_bfloat16(cuda.to_device(host.view(np.uint16)))

    opt = optimizer_of(config)(on_device(rng.standard_normal(n).astype(np_dtype)), **kw)
    grad = on_device(rng.standard_normal(n).astype(np_dtype))

    def synced(fn):
        def run():
            fn()
            cuda.synchronize()

        return run

    nbytes = traffic_bytes(opt, grad)
    # A copy reads and writes each byte once: half the step's traffic each way.
    src = cuda.to_device(np.ones(nbytes // 2, np.uint8))
    dst = cuda.device_array(nbytes // 2, np.uint8)
    out = [Contender("cuda", 1, synced(lambda: opt.step(grad))),
           Contender("cuda-copy", 1, synced(lambda: dst.copy_to_device(src)))]
    roof = roofline_contenders(opt, grad, [1], memory_only_kernel, backend="cuda-roofline")[0]
    out.append(Contender(roof.backend, 1, synced(roof.run)))
    if peers:
        out += cuda_peers(n, dtype, config)
    return out, nbytes
