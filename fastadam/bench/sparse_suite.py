"""The row-sparse suite: the sparse step on an embedding table against torch's
SparseAdam, the NumPy formulas and the memory-only pass over the rows touched."""

from __future__ import annotations

import statistics
from functools import partial

import numpy as np

from ..sparse import SparseAdam
from .harness import Contender, Row, all_threads, measure
from .roofline import touch_rows

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
        import torch  # optional
    except ImportError:
        torch = None
    if torch is not None:
        from .. import torch as fastadam_torch  # imports torch: optional

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
    from numba import cuda  # optional, as is the GPU roofline that imports it at its top

    from .roofline_cuda import touch_rows_cuda  # numba.cuda, at its top

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
