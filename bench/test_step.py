"""Library-level comparison: naive NumPy, fused cpu on 1 and all threads, the memory limit.

    pytest bench/ --benchmark-only

One group per size; ``extra_info`` holds GB/s of the traffic a step needs
(read param, grad, m, v; write param, m, v: 28 bytes per float32 element).
"""

import numpy as np
import pytest
from conftest import SIZES

import fastadam
from fastadam.bench.harness import all_threads

BYTES_PER_ELEMENT = 28  # float32: read param, grad, m, v; write param, m, v

THREADS = sorted({1, all_threads()})


def rounds_for(n: int, backend: str) -> int:
    # The naive baseline takes seconds at 64M: fewer rounds there.
    work = n * (20 if backend == "numpy" else 1)
    return max(3, min(200, (1 << 28) // work))


def record(benchmark, n, fn, backend):
    benchmark.group = f"n={n:>10,}"
    benchmark.pedantic(fn, rounds=rounds_for(n, backend), warmup_rounds=1)
    median = benchmark.stats.stats.median
    benchmark.extra_info["gb_per_s"] = round(BYTES_PER_ELEMENT * n / median / 1e9, 2)


@pytest.mark.parametrize("n", SIZES)
def test_numpy(benchmark, buffers, n):
    b = buffers(n)
    opt = fastadam.Adam(b["param"], backend="numpy")
    record(benchmark, n, lambda: opt.step(b["grad"]), "numpy")


@pytest.mark.parametrize("threads", THREADS)
@pytest.mark.parametrize("n", SIZES)
def test_cpu(benchmark, buffers, n, threads):
    b = buffers(n)
    opt = fastadam.Adam(b["param"], backend="cpu", num_threads=threads)
    record(benchmark, n, lambda: opt.step(b["grad"]), "cpu")


@pytest.mark.parametrize("threads", THREADS)
@pytest.mark.parametrize("n", SIZES)
def test_memory_limit(benchmark, buffers, n, threads):
    """The roofline: same traffic, no Adam arithmetic."""
    from fastadam._backends.cpu.runtime import with_threads
    from fastadam.bench.roofline import memory_only_kernel

    b = buffers(n)
    kernel = memory_only_kernel(1, 3)
    record(benchmark, n, lambda: with_threads(threads, kernel, b["grad"], *b["scratch"]), "cpu")


@pytest.mark.parametrize("impl", ["fused", "foreach"])
@pytest.mark.parametrize("n", SIZES)
def test_torch(benchmark, buffers, n, impl):
    torch = pytest.importorskip("torch")
    torch.set_num_threads(all_threads())
    b = buffers(n)
    p = torch.from_numpy(b["param"])
    p.grad = torch.from_numpy(b["grad"])
    opt = torch.optim.Adam([p], **{impl: True})
    record(benchmark, n, opt.step, "cpu")


def test_sanity(buffers):
    """The suite's arrays are real data: a step moves every element."""
    b = buffers(SIZES[0])
    before = b["param"].copy()
    fastadam.Adam(b["param"]).step(b["grad"])
    assert np.all(before != b["param"])
