"""Benchmark of the fused step against the naive NumPy Adam and the memory limit.

``python -m fastadam bench --help`` for the command line. Every contender is
timed through the public API, interleaved with the others in each repeat, with
warm-ups outside the timing; rows report medians, and ratios as medians of the
ratios within one repeat (robust to load bursts on a shared machine). Bandwidth
is the traffic the configuration needs (each array read once, each state written
once) over the time, so rows are comparable and the memory-only kernel moving
exactly that traffic is the physical limit ("roofline").
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import partial

import numpy as np

from . import __version__

# Adam keyword arguments of each configuration, on top of the defaults a user gets:
# on 16-bit params those include Kahan summation, so "adam" is what ``Adam(params)`` does
# and "no_kahan" rounds to nearest.
CONFIGS = {
    "adam": {},
    "adamw": {"weight_decay": 1e-2, "decoupled_weight_decay": True},
    "amsgrad": {"amsgrad": True},
    "nesterov": {"nesterov": True},
    "skip_nonfinite": {"skip_nonfinite": True},
    "kahan": {"kahan_summation": True},
    "no_kahan": {"kahan_summation": False},
    "master": {"master_weights": True},
    "bf16_state": {"state_dtype": "bfloat16"},
    "8bit": {"state_dtype": "8bit"},
}
SIXTEEN_BIT_ONLY = ("kahan", "no_kahan", "master")
DTYPES = ("float32", "float64", "bfloat16", "float16")
DEFAULT_DTYPES = ("float32", "bfloat16", "float16")
# Every option on every param dtype, each with the user's defaults, so no cliff can hide.
_SIXTEEN_BIT_CONFIGS = ("adam", "no_kahan", "master", "amsgrad", "skip_nonfinite", "bf16_state",
                        "8bit")
DEFAULT_CONFIGS = {"float32": ("adam", "adamw", "amsgrad", "skip_nonfinite", "bf16_state",
                               "8bit"),
                   "float64": ("adam",),
                   "bfloat16": _SIXTEEN_BIT_CONFIGS,
                   "float16": _SIXTEEN_BIT_CONFIGS}
QUICK_SIZES = (1 << 20, 1 << 24)


def applies(dtype: str, config: str) -> bool:
    """Whether ``config`` exists for params of ``dtype``."""
    return config not in SIXTEEN_BIT_ONLY or dtype in ("bfloat16", "float16")


def numpy_dtype(name: str) -> np.dtype:
    """The NumPy dtype of a name in ``DTYPES`` (bfloat16 from ml_dtypes)."""
    if name == "bfloat16":
        import ml_dtypes

        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(name)


def adam_options(dtype: str, config: str) -> dict:
    """Adam keyword arguments for one configuration."""
    kw = dict(CONFIGS[config])
    if kw.get("master_weights"):
        kw["kahan_summation"] = False  # master weights replace Kahan summation
    if kw.get("state_dtype") == "bfloat16":
        kw["state_dtype"] = numpy_dtype("bfloat16")
    return kw


def step_arrays(opt) -> list:
    """The arrays of the params' size one step of ``opt`` (on one params array) reads and
    writes, grad excluded (8-bit states: the codes)."""
    slot = opt._slots[0]
    return [slot.flat] + [a for a in slot.state if a is not None]


def traffic_bytes(opt, grad) -> int:
    """Bytes one step must move at the least: each array read once, each state written
    once (the params and every state array, 8-bit ones' absmax too), plus a second read
    of the gradient when ``skip_nonfinite`` checks it first."""
    grad_reads = 2 if opt.options["skip_nonfinite"] else 1
    absmax = sum(a.nbytes for a in opt._slots[0].absmax or () if a is not None)
    return 2 * (sum(a.nbytes for a in step_arrays(opt)) + absmax) + grad_reads * grad.nbytes


@dataclass
class Contender:
    """One timed thing: ``run()`` performs one step."""

    backend: str
    threads: int
    run: Callable[[], object]


@dataclass
class Row:
    """One line of the report (and one JSON record)."""

    backend: str
    threads: int
    n: int
    dtype: str
    config: str
    median_s: float
    gb_per_s: float
    speedup_vs_numpy: float | None
    roofline_fraction: float | None
    compile_s: float | None
    repeats: int
    bytes_per_element: float
    speedup_vs_torch: float | None = None  # the row-sparse table: vs torch's SparseAdam


def all_threads() -> int:
    """Numba's thread count: what backend='cpu' uses by default."""
    import numba

    return numba.config.NUMBA_NUM_THREADS


def _with_threads(threads: int, fn: Callable[[], object]) -> Callable[[], object]:
    from ._cpu import with_threads

    return lambda: with_threads(threads, fn)


def unsigned(a):
    """An unsigned-integer view of an array: the same bytes, integer adds only."""
    return a.view(f"u{a.dtype.itemsize}")


def unsigned_copy(a):
    """A copy of an array's bits as unsigned integers, where it lives: integer adds only,
    and numba-cuda's device arrays have no ``copy`` (the simulator's do, from NumPy)."""
    bits = unsigned(a)
    if isinstance(bits, np.ndarray):
        return bits.copy()
    from numba import cuda

    out = cuda.device_array(bits.shape, bits.dtype)
    out.copy_to_device(bits)
    return out


def roofline_contenders(opt, grad, threads_list, memory_only_kernel, backend="roofline"):
    """The memory-only kernel with the step's traffic, on scratch arrays of the step's dtypes."""
    arrays = step_arrays(opt)
    reads = [unsigned_copy(grad) for _ in range(2 if opt.options["skip_nonfinite"] else 1)]
    writes = [unsigned_copy(a) for a in arrays]
    kernel = memory_only_kernel(len(reads), len(writes))
    if backend != "roofline":  # the GPU: one launch, no threads
        return [Contender(backend, 1, lambda: kernel(*reads, *writes))]
    return [Contender(backend, t, _with_threads(t, lambda: kernel(*reads, *writes)))
            for t in threads_list]


def _share_state(source, targets) -> None:
    # The contenders step the same arrays: one set of state in memory, not one per contender.
    for opt in targets:
        opt._slots[0].state = source._slots[0].state
        opt._slots[0].absmax = source._slots[0].absmax


def fastadam_contenders(n, dtype, config, rng, threads_list):
    """numpy, and the fused cpu kernel on every thread count, through ``Adam.step``.

    Returns the contenders, the cpu optimizer (whose arrays all share) and the grad.
    """
    from .optimizer import Adam

    kw = adam_options(dtype, config)
    np_dtype = numpy_dtype(dtype)
    param = rng.standard_normal(n).astype(np_dtype)
    grad = rng.standard_normal(n).astype(np_dtype)
    main = Adam(param, backend="cpu", **kw)
    others = []
    for backend, threads in [("numpy", None)] + [("cpu", t) for t in threads_list]:
        others.append(Adam(param, backend=backend, num_threads=threads, **kw))
        _share_state(main, others[-1:])
    out = [Contender("numpy", 1, partial(others[0].step, grad))]
    out += [Contender("cpu", t, partial(o.step, grad)) for t, o in zip(threads_list, others[1:])]
    return out, main, grad


def torch_optimizer(config: str):
    """torch's class and keyword arguments for ``config`` (None: torch has no such option)."""
    import torch

    kw = dict(CONFIGS[config])
    if set(kw) - {"weight_decay", "decoupled_weight_decay", "amsgrad"}:
        return None, None
    cls = torch.optim.AdamW if kw.pop("decoupled_weight_decay", False) else torch.optim.Adam
    return cls, kw


def torch_contenders(param, grad, config, threads) -> list[Contender]:
    """torch.optim.Adam/AdamW fused and foreach on the same param and grad memory; for
    8-bit states, torch's fp32-state Adam and, where installed, bitsandbytes' and
    torchao's 8-bit AdamW."""
    import torch

    eight = config == "8bit"
    cls, kw = torch_optimizer("adam" if eight else config)
    if cls is None or param.dtype not in (np.float32, np.float64):
        return []
    torch.set_num_threads(threads)
    out = []
    for impl in ("fused", "foreach"):
        p = torch.from_numpy(param)
        p.grad = torch.from_numpy(grad)
        opt = cls([p], **kw, **{impl: True})
        out.append(Contender(f"torch-{impl}" + ("-fp32" if eight else ""), threads, opt.step))
    if eight and param.dtype == np.float32:
        out += _eight_bit_peers(param, grad, threads)
    return out


def _eight_bit_makers() -> list[tuple[str, type]]:
    """(name, class) of the 8-bit AdamW peers installed: bitsandbytes', torchao's."""
    makers = []
    try:
        import bitsandbytes

        makers.append(("bitsandbytes", bitsandbytes.optim.AdamW8bit))
    except ImportError:
        pass
    try:
        from torchao.optim import AdamW8bit

        makers.append(("torchao", AdamW8bit))
    except ImportError:
        pass
    return makers


def _eight_bit_peers(param, grad, threads) -> list[Contender]:
    """bitsandbytes' and torchao's 8-bit AdamW on copies of param (where installed)."""
    import torch

    out = []
    for name, cls in _eight_bit_makers():
        p = torch.nn.Parameter(torch.from_numpy(param.copy()))
        p.grad = torch.from_numpy(grad)
        opt = cls([p], weight_decay=0.0)
        out.append(Contender(f"{name}-8bit", threads, opt.step))
    return out


def gpu_available() -> bool:
    """A real CUDA GPU with numba-cuda (the simulator is far too slow to time)."""
    try:
        from . import _cuda
    except ImportError:
        return False
    return not _cuda.SIMULATOR and _cuda.cuda.is_available()


def cuda_contenders(n, dtype, config, rng, peers):
    """The fused step on the GPU, its memory-only kernel, a device copy of the same bytes,
    and with ``peers`` torch's fused CUDA Adam; each call waits for the GPU to finish.

    Returns (contenders, bytes a step moves), or None where the GPU has no such case.
    """
    from numba import cuda

    from ._bfloat16 import as_bfloat16
    from ._cuda import memory_only_kernel
    from .optimizer import Adam

    kw = adam_options(dtype, config)
    np_dtype = numpy_dtype(dtype)

    def on_device(host):  # bfloat16 as its 16-bit storage, declared
        if dtype != "bfloat16":
            return cuda.to_device(host)
        return as_bfloat16(cuda.to_device(host.view(np.uint16)))

    opt = Adam(on_device(rng.standard_normal(n).astype(np_dtype)), **kw)
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
        out += _cuda_peers(n, dtype, config)
    return out, nbytes


def _cuda_peers(n: int, dtype: str, config: str) -> list[Contender]:
    """torch's fused CUDA Adam (for 8-bit states: its fp32-state step) and, for 8-bit
    states, bitsandbytes' and torchao's 8-bit AdamW on the GPU; each call synced."""
    import torch

    if not torch.cuda.is_available():
        return []
    eight = config == "8bit"
    cls, kw = torch_optimizer("adam" if eight else config)

    def tensor():
        p = torch.nn.Parameter(torch.randn(n, dtype=getattr(torch, dtype), device="cuda"))
        p.grad = torch.randn_like(p)
        return p

    def synced(step):
        return lambda: (step(), torch.cuda.synchronize())

    out = []
    if cls is not None:
        out.append(Contender("torch-cuda-fused" + ("-fp32" if eight and dtype == "float32"
                                                   else ""), 1,
                             synced(cls([tensor()], fused=True, **kw).step)))
    if eight:
        out += [Contender(f"{name}-cuda-8bit", 1, synced(maker([tensor()], weight_decay=0.0).step))
                for name, maker in _eight_bit_makers()]
    return out


@dataclass
class Timings:
    """Seconds of each contender's repeats (interleaved) and of its first call."""

    samples: dict
    first: dict

    def median(self, c: Contender) -> float:
        """``c``'s median seconds per run."""
        return statistics.median(self.samples[id(c)])

    def speedup(self, baseline: Contender, c: Contender) -> float:
        """How many times faster ``c`` runs than ``baseline``: the median of the ratios
        of their runs in the same repeat (a burst of load on a shared machine slows both,
        and leaves the ratio)."""
        return statistics.median(b / s for b, s in zip(self.samples[id(baseline)],
                                                        self.samples[id(c)]))


def measure(contenders: list[Contender], repeats: int) -> Timings:
    """Every contender's run, timed ``repeats`` times, interleaved, after two warm runs."""
    first = {}
    for c in contenders:
        t0 = time.perf_counter()
        c.run()
        first[id(c)] = time.perf_counter() - t0
        c.run()  # warm: caches, page faults, lazy state
    times = {id(c): [] for c in contenders}
    for r in range(repeats):
        # Rotate the order, so that no contender always follows the same one.
        k = r % len(contenders)
        for c in contenders[k:] + contenders[:k]:
            t0 = time.perf_counter()
            c.run()
            times[id(c)].append(time.perf_counter() - t0)
    return Timings(times, first)


def run_case(n, dtype, config, *, repeats, threads_list, peers, rng, gpu=False) -> list[Row]:
    """Time every contender on one (size, dtype, config) and make the report rows."""
    from ._cpu import memory_only_kernel

    contenders, opt, grad = fastadam_contenders(n, dtype, config, rng, threads_list)
    nbytes = {"cpu": traffic_bytes(opt, grad)}
    contenders += roofline_contenders(opt, grad, threads_list, memory_only_kernel)
    if peers:
        contenders += torch_contenders(opt.params, grad, config, max(threads_list))
    if gpu:
        on_gpu, nbytes["gpu"] = cuda_contenders(n, dtype, config, rng, peers) or ([], 0)
        contenders += on_gpu
    t = measure(contenders, repeats)
    by_key = {(c.backend, c.threads): c for c in contenders}
    numpy = by_key[("numpy", 1)]
    rows = []
    for c in contenders:
        s = t.median(c)
        on_gpu = "cuda" in c.backend.split("-")
        limit = by_key.get(("cuda-roofline", 1) if on_gpu else ("roofline", c.threads))
        compiled = c.backend in ("cpu", "roofline", "cuda", "cuda-roofline") and (
            on_gpu or c.threads == threads_list[0])
        moved = nbytes["gpu" if on_gpu else "cpu"]
        rows.append(Row(
            backend=c.backend, threads=c.threads, n=n, dtype=dtype, config=config,
            median_s=s, gb_per_s=moved / s / 1e9, speedup_vs_numpy=t.speedup(numpy, c),
            roofline_fraction=None if c.backend.endswith("roofline") else t.speedup(limit, c),
            compile_s=max(t.first[id(c)] - s, 0.0) if compiled else None,
            repeats=repeats, bytes_per_element=moved / n,
        ))
    return rows


def many_tensor_rows(count: int, size: int, *, repeats: int, peers: bool, rng) -> list[Row]:
    """``count`` float32 arrays of ``size`` elements stepped as a list (one parallel region
    per batch) against one flat buffer of the same total, and with ``peers`` torch's fused
    Adam and ``fastadam.torch.Adam`` on ``count`` tensors."""
    from .optimizer import Adam

    n = count * size
    params = [rng.standard_normal(size).astype(np.float32) for _ in range(count)]
    grads = [rng.standard_normal(size).astype(np.float32) for _ in range(count)]
    flat = rng.standard_normal(n).astype(np.float32)
    flat_grad = rng.standard_normal(n).astype(np.float32)
    as_list, as_flat = Adam(params), Adam(flat)
    contenders = [Contender("cpu-list", all_threads(), partial(as_list.step, grads)),
                  Contender("cpu-flat", all_threads(), partial(as_flat.step, flat_grad))]
    if peers:
        import torch

        from . import torch as fastadam_torch

        torch.set_num_threads(all_threads())
        for name, cls, kw in (("torch-fused-list", torch.optim.Adam, {"fused": True}),
                              ("fastadam.torch-list", fastadam_torch.Adam, {})):
            tensors = [torch.from_numpy(p.copy()) for p in params]
            for t, g in zip(tensors, grads):
                t.grad = torch.from_numpy(g)
            contenders.append(Contender(name, all_threads(), cls(tensors, **kw).step))
    t = measure(contenders, repeats)
    return [Row(backend=c.backend, threads=c.threads, n=n, dtype="float32",
                config=f"{count}x{size}", median_s=t.median(c),
                gb_per_s=28 * n / t.median(c) / 1e9, speedup_vs_numpy=None,
                roofline_fraction=t.speedup(contenders[1], c), compile_s=None, repeats=repeats,
                bytes_per_element=28.0)
            for c in contenders]


def call_rows(*, repeats: int, peers: bool, n: int = 1024, calls: int = 2000) -> list[Row]:
    """The cost of one call on a small buffer: ``Adam.step`` on ``n`` float32 elements back
    to back (``calls`` per sample, samples interleaved), against the bare kernel call and,
    with ``peers``, torch's fused step. Rows hold seconds per call; '% roofline' is % of
    the bare kernel's speed."""
    from . import _cpu
    from ._dispatch import kernel_views
    from ._scalars import coefficients
    from .optimizer import Adam

    rng = np.random.default_rng(0)
    param, grad = (rng.standard_normal(n).astype(np.float32) for _ in range(2))
    opt = Adam(param.copy())
    slot = opt._slots[0]
    kernel = _cpu.fused_kernel(slot.flags._replace(grad="float32"))
    views = list(kernel_views((slot.flat, grad, *slot.state)))
    coef = np.array(coefficients(opt._groups[0][0], 1), np.float32)
    steps = [("cpu-kernel", lambda: kernel(*views, coef)), ("Adam.step", partial(opt.step, grad))]
    if peers:
        import torch

        torch.set_num_threads(all_threads())
        p = torch.from_numpy(param.copy())
        p.grad = torch.from_numpy(grad)
        steps.append(("torch-fused", torch.optim.Adam([p], fused=True).step))

    def batch(fn):
        def run():
            for _ in range(calls):
                fn()
        return run

    contenders = [Contender(name, all_threads(), batch(fn)) for name, fn in steps]
    t = measure(contenders, repeats)
    return [Row(backend=c.backend, threads=c.threads, n=n, dtype="float32", config="call",
                median_s=t.median(c) / calls, gb_per_s=28 * n * calls / t.median(c) / 1e9,
                speedup_vs_numpy=None, roofline_fraction=t.speedup(contenders[0], c),
                compile_s=None, repeats=repeats, bytes_per_element=28.0)
            for c in contenders]


def transformer_rows(dtypes: list[str], *, repeats: int) -> list[Row]:
    """A 6-layer ``torch.nn.TransformerEncoder`` (d_model 256, 72 tensors): the optimizer
    step of ``fastadam.torch.AdamW`` against ``torch.optim.AdamW(fused=True)`` on the same
    model's parameters and gradients, per param dtype. '% roofline' is % of torch fused."""
    import torch

    from . import torch as fastadam_torch

    torch.set_num_threads(all_threads())
    rows = []
    for dtype in dtypes:
        contenders = []
        for name, cls, kw in (("torch-fused", torch.optim.AdamW, {"fused": True}),
                              ("fastadam.torch", fastadam_torch.AdamW, {})):
            torch.manual_seed(0)
            layer = torch.nn.TransformerEncoderLayer(256, 8, 1024, batch_first=True)
            model = torch.nn.TransformerEncoder(layer, 6, enable_nested_tensor=False)
            params = list(model.to(getattr(torch, dtype)).parameters())
            for p in params:
                p.grad = torch.randn_like(p)
            contenders.append(Contender(name, all_threads(), cls(params, **kw).step))
        n = sum(p.numel() for p in params)
        t = measure(contenders, repeats)
        per_element = 14 if dtype == "float32" else 7  # param, grad, m, v: read; p, m, v: write
        rows += [Row(backend=c.backend, threads=c.threads, n=n, dtype=dtype,
                     config=f"transformer-{len(params)}", median_s=t.median(c),
                     gb_per_s=2 * per_element * n / t.median(c) / 1e9,
                     speedup_vs_numpy=None, roofline_fraction=t.speedup(contenders[0], c),
                     compile_s=None, repeats=repeats, bytes_per_element=2.0 * per_element)
                 for c in contenders]
    return rows


SPARSE_CASES = ((1_000_000, 64, 1024), (1_000_000, 64, 16_384), (1_000_000, 64, 262_144),
                (10_000_000, 64, 16_384))  # (rows, dim, lookups per step)


def sparse_lookups(rng, rows: int, nnz: int) -> np.ndarray:
    """Row indices as an embedding sees them: a quarter from 256 hot rows, the rest uniform."""
    indices = rng.integers(0, rows, nnz)
    hot = rng.integers(0, rows, 256)
    indices[: nnz // 4] = hot[rng.integers(0, 256, nnz // 4)]
    return rng.permutation(indices)


ROTATION = 8  # lookup sets each contender cycles through: its rows are not cache-warm


class _Cycle:
    """Calls ``fn(*items[i])`` for i = 0, 1, ... round robin: each step new rows."""

    def __init__(self, fn, items: list) -> None:
        self.fn, self.items, self.i = fn, items, 0

    def __call__(self):
        self.i = (self.i + 1) % len(self.items)
        return self.fn(*self.items[self.i])


def sparse_rows(rows: int, dim: int, nnz: int, *, repeats: int, rng, gpu: bool = False
                ) -> list[Row]:
    """The row-sparse step on a (rows, dim) float32 table with ``nnz`` lookups per step:
    fastadam against torch's formulas in NumPy, ``torch.optim.SparseAdam`` and the drop-in
    ``fastadam.torch.SparseAdam`` (where torch is installed), and the memory-only pass
    over the rows touched. Each contender cycles through ``ROTATION`` lookup sets, so the
    rows a step touches are rarely in cache.
    Traffic: the values once, each distinct row of param, m and v read and written once."""
    from ._cpusparse import touch_rows
    from .sparse import SparseAdam

    def table():
        return rng.standard_normal((rows, dim), dtype=np.float32)

    lookups = [(sparse_lookups(rng, rows, nnz), rng.standard_normal((nnz, dim),
                                                                    dtype=np.float32))
               for _ in range(ROTATION)]
    distinct = [rng.permutation(np.unique(indices)) for indices, _ in lookups]
    opt = SparseAdam(table())
    m, v = opt._tables()[:2]
    m[...], v[...] = 0.0, 0.0  # touched now: no page faults while timing
    zeros = np.zeros((nnz, dim), np.float32)  # the memory-only pass adds zeros
    threads = all_threads()
    contenders = [Contender("cpu", threads, _Cycle(opt.step, lookups)),
                  Contender("roofline", threads, _Cycle(
                      partial(touch_rows, opt.table, m, v, zeros), [(d,) for d in distinct]))]
    if rows * dim <= 1 << 26:  # the NumPy formulas' temporaries stay small
        naive = SparseAdam(opt.table.copy(), backend="numpy")
        contenders.append(Contender("numpy", 1, _Cycle(naive.step, lookups)))
    try:
        import torch
    except ImportError:
        torch = None
    if torch is not None:
        from . import torch as fastadam_torch

        torch.set_num_threads(threads)
        grads = [(torch.sparse_coo_tensor(torch.from_numpy(i)[None], torch.from_numpy(g),
                                          (rows, dim), check_invariants=False),)
                 for i, g in lookups]
        for name, cls in (("torch-sparse-adam", torch.optim.SparseAdam),
                          ("fastadam.torch-sparse-adam", fastadam_torch.SparseAdam)):
            weight = torch.nn.Parameter(torch.from_numpy(table()))
            contenders.append(Contender(name, threads, _Cycle(
                partial(_torch_sparse_step, weight, cls([weight])), grads)))
    if gpu:
        contenders += _sparse_gpu_contenders(rows, dim, lookups, distinct, torch)
    t = measure(contenders, repeats)
    by_name = {c.backend: c for c in contenders}
    touched = statistics.mean(d.size for d in distinct)
    moved = (touched * 6 + nnz) * dim * 4 + nnz * 8
    out = []
    for c in contenders:
        s = t.median(c)
        on_gpu = "cuda" in c.backend.split("-")
        limit = by_name.get("cuda-roofline" if on_gpu else "roofline")
        torch_step = by_name.get("torch-cuda-sparse-adam" if on_gpu else "torch-sparse-adam")
        out.append(Row(
            backend=c.backend, threads=c.threads, n=nnz, dtype="float32",
            config=f"sparse {rows:,}x{dim}", median_s=s, gb_per_s=moved / s / 1e9,
            speedup_vs_numpy=t.speedup(by_name["numpy"], c) if "numpy" in by_name else None,
            roofline_fraction=None if c.backend.endswith("roofline") or limit is None
            else t.speedup(limit, c),
            speedup_vs_torch=None if torch_step is None or c is torch_step
            else t.speedup(torch_step, c),
            compile_s=None, repeats=repeats, bytes_per_element=moved / max(nnz, 1)))
    return out


def _torch_sparse_step(weight, optimizer, grad) -> None:
    weight.grad = grad
    optimizer.step()


def _sparse_gpu_contenders(rows, dim, lookups, distinct, torch) -> list[Contender]:
    """The sparse step on the GPU (fastadam; torch's SparseAdam on CUDA where it is there),
    each run ending in a synchronize."""
    from numba import cuda

    from ._cudasparse import touch_rows_cuda
    from .sparse import SparseAdam

    table = np.random.default_rng(1).standard_normal((rows, dim), dtype=np.float32)
    opt = SparseAdam(cuda.to_device(table))
    m, v = opt._tables()[:2]
    on_device = [(cuda.to_device(i), cuda.to_device(g)) for i, g in lookups]
    zeros = cuda.to_device(np.zeros(lookups[0][1].shape, np.float32))

    def synced(fn):
        return lambda *args: (fn(*args), cuda.synchronize())

    out = [Contender("cuda", 1, _Cycle(synced(opt.step), on_device)),
           Contender("cuda-roofline", 1, _Cycle(
               synced(partial(touch_rows_cuda, opt.table, m, v, zeros)),
               [(cuda.to_device(d),) for d in distinct]))]
    if torch is not None and torch.cuda.is_available():
        weight = torch.nn.Parameter(torch.from_numpy(table).cuda())
        theirs = torch.optim.SparseAdam([weight])
        grads = [(torch.sparse_coo_tensor(torch.from_numpy(i)[None].cuda(),
                                          torch.from_numpy(g).cuda(), (rows, dim),
                                          check_invariants=False),)
                 for i, g in lookups]

        def torch_step(grad):
            weight.grad = grad
            theirs.step()
            torch.cuda.synchronize()

        out.append(Contender("torch-cuda-sparse-adam", 1, _Cycle(torch_step, grads)))
    return out


def available_memory() -> int:
    """Bytes of memory available to this process (MemAvailable), or physical memory."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def largest_size(dtype: str, peers: bool, memory: int) -> int:
    """The largest power-of-two size whose arrays, baseline temporaries included, fit."""
    item = max(numpy_dtype(dtype).itemsize, 4)  # 16-bit params keep float32 moments
    # param, grad, m, v, v_max; as many roofline buffers; ~4 NumPy temporaries; torch's moments.
    arrays = 5 + 5 + 4 + (2 if peers else 0)
    n = int(0.8 * memory) // (arrays * item)
    return 1 << (n.bit_length() - 1)


def default_sizes(dtype: str, peers: bool) -> list[int]:
    """1K elements, then every 4x, up to what memory allows (256M float32 in 24 GiB)."""
    top = largest_size(dtype, peers, available_memory())
    return [1 << k for k in range(10, 29, 2) if 1 << k <= top]


def machine() -> dict:
    """What the numbers were measured on."""
    import numba

    info = {
        "cpu": _cpu_name(),
        "cores": os.cpu_count(),
        "numba_threads": numba.config.NUMBA_NUM_THREADS,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "numba": numba.__version__,
        "fastadam": __version__,
    }
    if "torch" in sys.modules:
        info["torch"] = sys.modules["torch"].__version__
    if gpu_available():
        from numba import cuda

        info["gpu"] = cuda.get_current_device().name
        info["gpu"] = info["gpu"].decode() if isinstance(info["gpu"], bytes) else info["gpu"]
    return info


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def format_table(rows: list[Row]) -> str:
    """The report as an aligned text table."""
    head = (
        "backend",
        "threads",
        "n",
        "dtype",
        "config",
        "median ms",
        "GB/s",
        "x numpy",
        "% roofline",
        "compile s",
    )
    vs_torch = any(r.speedup_vs_torch is not None for r in rows)
    if vs_torch:
        head = (*head[:8], "x torch", *head[8:])
    lines = [head]
    for r in rows:
        lines.append(
            (
                r.backend,
                str(r.threads),
                f"{r.n:,}",
                r.dtype,
                r.config,
                f"{r.median_s * 1e3:.{3 if r.median_s >= 1e-4 else 5}f}",
                f"{r.gb_per_s:.2f}",
                "" if r.speedup_vs_numpy is None else f"{r.speedup_vs_numpy:.1f}",
                *(("" if r.speedup_vs_torch is None else f"{r.speedup_vs_torch:.1f}",)
                  if vs_torch else ()),
                "" if r.roofline_fraction is None else f"{100 * r.roofline_fraction:.0f}",
                "" if r.compile_s is None else f"{r.compile_s:.2f}",
            )
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    text = ["  ".join(c.rjust(w) for c, w in zip(line, widths)) for line in lines]
    text.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(text)


def plot(rows: list[Row], path: str) -> None:
    """GB/s against size, one line per backend, the roofline dashed; one panel per dtype/config."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise SystemExit("--plot needs matplotlib: pip install 'fastadam[plot]'") from e
    panels = sorted({(r.dtype, r.config) for r in rows})
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4.5), squeeze=False)
    for ax, (dtype, config) in zip(axes[0], panels):
        mine = [r for r in rows if (r.dtype, r.config) == (dtype, config)]
        for backend, threads in sorted({(r.backend, r.threads) for r in mine}):
            line = sorted(
                (r.n, r.gb_per_s) for r in mine if (r.backend, r.threads) == (backend, threads)
            )
            style = "--" if backend.endswith("roofline") else "-o"
            ax.plot(*zip(*line), style, label=f"{backend} ({threads} thr)", markersize=4)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("elements")
        ax.set_ylabel("GB/s (traffic the step needs / time)")
        ax.set_title(f"{config}, {dtype}")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m fastadam bench",
        description="Time the fused Adam step against naive NumPy and the memory-only limit.",
    )
    p.add_argument(
        "--sizes", help="comma-separated element counts (default: 1K up to what memory allows)"
    )
    p.add_argument("--dtypes", default=None,
                   help=f"comma-separated param dtypes, from {DTYPES} (default: float32,bfloat16)")
    p.add_argument(
        "--configs", default=None,
        help=f"comma-separated, from {tuple(CONFIGS)} (default: several per dtype)",
    )
    p.add_argument(
        "--repeats", type=int, default=None, help="timed repeats per contender (default 7, quick 5)"
    )
    p.add_argument(
        "--threads", type=int, default=None, help="the multi-threaded count (default: all)"
    )
    p.add_argument("--peers", action="store_true",
                   help="add torch.optim.Adam fused and foreach (with --configs 8bit: "
                        "torch's fp32 step, and bitsandbytes' and torchao's 8-bit AdamW "
                        "where installed)")
    p.add_argument(
        "--quick", action="store_true", help="1M and 16M float32 Adam only: under a minute"
    )
    p.add_argument("--json", metavar="PATH", help="write one record per row, with the machine")
    p.add_argument(
        "--plot", metavar="PATH", help="write a PNG of GB/s against size (needs matplotlib)"
    )
    p.add_argument("--many", metavar="COUNTxSIZE", nargs="?", const="1000x4096",
                   help="also step COUNT arrays of SIZE float32 elements as one list against "
                        "one flat buffer (default 1000x4096); '%% roofline' is then %% of flat")
    p.add_argument("--calls", action="store_true",
                   help="also time Adam.step on 1K float32 elements back to back (the cost "
                        "of a call), against the bare kernel and, with --peers, torch fused")
    p.add_argument("--transformer", action="store_true",
                   help="also time fastadam.torch.AdamW against torch's fused AdamW on a "
                        "6-layer TransformerEncoder (float32 and bfloat16; needs torch)")
    p.add_argument("--sparse", action="store_true",
                   help="the row-sparse step instead of the dense sweep: float32 tables of "
                        "1M x 64 (1K, 16K, 256K lookups per step) and 10M x 64 (16K), against "
                        "torch.optim.SparseAdam where torch is installed")
    p.add_argument("--no-cuda", action="store_true", help="leave the GPU out even if one is there")
    p.add_argument("--no-progress", action="store_true", help="no progress display on stderr")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    def listed(value, allowed, name):
        items = [s.strip() for s in value.split(",") if s.strip()]
        bad = [s for s in items if s not in allowed]
        if bad or not items:
            p.error(f"--{name}: unknown {bad or value!r}; choose from {', '.join(allowed)}")
        return items

    args.dtypes = (
        listed(args.dtypes, DTYPES, "dtypes")
        if args.dtypes
        else (["float32"] if args.quick else list(DEFAULT_DTYPES))
    )
    args.configs = listed(args.configs, CONFIGS, "configs") if args.configs else None
    if args.quick and args.configs is None:
        args.configs = ["adam"]
    if "bfloat16" in args.dtypes or (args.configs and "bf16_state" in args.configs):
        try:
            import ml_dtypes  # noqa: F401
        except ImportError:
            p.error("bfloat16 needs ml_dtypes: pip install ml_dtypes")
    if args.sizes:
        try:
            args.sizes = [int(float(s)) for s in args.sizes.split(",") if s.strip()]
        except ValueError:
            p.error(f"--sizes: expected comma-separated integers, got {args.sizes!r}")
        if not args.sizes or min(args.sizes) < 1:
            p.error("--sizes: every size must be >= 1")
    elif args.quick:
        args.sizes = list(QUICK_SIZES)
    if args.repeats is None:
        args.repeats = 5 if args.quick else 7
    if args.repeats < 1:
        p.error("--repeats must be >= 1")
    if args.threads is not None and not 1 <= args.threads <= all_threads():
        p.error(f"--threads must be in [1, {all_threads()}]")
    for wanted, flag in ((args.peers, "--peers"), (args.transformer, "--transformer")):
        try:
            if wanted:
                import torch  # noqa: F401
        except ImportError:
            p.error(f"{flag} needs torch: pip install torch")
    if args.many is not None:
        try:
            count, size = (int(x) for x in args.many.lower().split("x"))
            assert count >= 1 and size >= 1
        except (ValueError, AssertionError):
            p.error(f"--many: expected COUNTxSIZE, like 1000x4096, got {args.many!r}")
        args.many = (count, size)
    return args


def _header(info: dict, repeats: int) -> str:
    return (f"fastadam {info['fastadam']}, numba {info['numba']}, numpy {info['numpy']}"
            + (f", torch {info['torch']}" if "torch" in info else "")
            + f"; {info['cpu']}, {info['cores']} cores; median of {repeats} interleaved repeats")


def sparse_main(args) -> int:
    """``bench --sparse``: the row-sparse table, printed and written as the dense one."""
    rng = np.random.default_rng(args.seed)
    gpu = not args.no_cuda and gpu_available()
    cases = SPARSE_CASES
    if args.sizes:  # lookups per step, on the 1M x 64 table
        cases = tuple((1_000_000, 64, n) for n in args.sizes)
    rows: list[Row] = []
    for i, (table_rows, dim, nnz) in enumerate(cases, 1):
        if not args.no_progress:
            print(f"[{i}/{len(cases)}] {table_rows:,} x {dim}, {nnz:,} lookups", file=sys.stderr,
                  flush=True)
        rows += sparse_rows(table_rows, dim, nnz, repeats=args.repeats, rng=rng, gpu=gpu)
    info = machine()
    print(_header(info, args.repeats))
    print("Row-sparse Adam (n: lookups per step, a quarter on 256 hot rows; GB/s: the values "
          "and the distinct rows of param, m, v read and written once)")
    print(format_table(rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": info, "rows": [asdict(r) for r in rows]}, f, indent=1)
    return 0


def main(argv: list[str] | None = None) -> int:
    """The ``python -m fastadam bench`` command."""
    args = parse_args(argv)
    threads = args.threads or all_threads()
    threads_list = sorted({1, threads})
    if args.sparse:
        return sparse_main(args)
    cases = [
        (n, dtype, config)
        for dtype in args.dtypes
        for config in (args.configs or DEFAULT_CONFIGS[dtype])
        if applies(dtype, config)
        for n in (args.sizes or default_sizes(dtype, args.peers))
    ]
    rng = np.random.default_rng(args.seed)
    gpu = not args.no_cuda and gpu_available()
    progress = not args.no_progress
    tty = sys.stderr.isatty()
    rows: list[Row] = []
    started = time.perf_counter()
    for i, (n, dtype, config) in enumerate(cases, 1):
        if progress:
            elapsed = time.perf_counter() - started
            msg = f"[{i}/{len(cases)}] n={n:,} {dtype} {config}  ({elapsed:.0f} s)"
            print(
                ("\r" + msg.ljust(70)) if tty else msg,
                end="" if tty else "\n",
                file=sys.stderr,
                flush=True,
            )
        rows += run_case(
            n,
            dtype,
            config,
            repeats=args.repeats,
            threads_list=threads_list,
            peers=args.peers,
            rng=rng,
            gpu=gpu,
        )
    if progress and tty:
        print(file=sys.stderr)
    info = machine()
    print(_header(info, args.repeats))
    print(format_table(rows))
    many = []
    if args.many is not None:
        many = many_tensor_rows(*args.many, repeats=args.repeats, peers=args.peers, rng=rng)
        print(f"\n{args.many[0]} arrays of {args.many[1]:,} float32 elements as one list, "
              "against one flat buffer ('% roofline': % of the flat buffer's speed)")
        print(format_table(many))
    calls = []
    if args.calls:
        calls = call_rows(repeats=args.repeats, peers=args.peers)
        print("\nOne call on 1,024 float32 elements, back to back (median ms is per call; "
              "'% roofline': % of the bare kernel call's speed)")
        print(format_table(calls))
    transformer = []
    if args.transformer:
        transformer = transformer_rows(["float32", "bfloat16"], repeats=args.repeats)
        print("\nA 6-layer TransformerEncoder's optimizer step, against torch's fused AdamW "
              "('% roofline': % of torch fused's speed)")
        print(format_table(transformer))
    if args.json:
        with open(args.json, "w") as f:
            records = [asdict(r) for r in rows + many + calls + transformer]
            json.dump({"machine": info, "rows": records}, f, indent=1)
    if args.plot:
        plot(rows, args.plot)
    return 0
