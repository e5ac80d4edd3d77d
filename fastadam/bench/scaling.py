"""The CPU kernel's thread scaling: 64M float32 at 1 to 16 threads against torch's fused
CPU Adam and the memory-only pass (for machines with more cores than this project's)."""

from __future__ import annotations

import statistics
import time

import numpy as np

from .._backends.cpu.runtime import with_threads
from ..optimizer import Adam
from .harness import all_threads
from .roofline import memory_only_kernel


def cpu_scaling(check) -> dict:
    """The CPU kernel at 1..N threads against torch's fused CPU Adam and the memory-only
    pass (the scaling a 2-core machine cannot show)."""
    n = (1 << 14) if check.tiny else (1 << 26)
    rng = np.random.default_rng(4)
    p, g = (rng.standard_normal(n).astype(np.float32) for _ in range(2))
    opt = Adam(p)
    scratch = [np.zeros(n, np.uint32) for _ in range(3)]
    limit = memory_only_kernel(1, 3)
    try:
        import torch  # optional: the peer
    except ImportError:
        torch = None
    out = {}
    counts = [t for t in (1, 2, 4, 8, 16) if t <= all_threads()]
    for t in counts:
        contenders = {"fastadam": lambda t=t: with_threads(t, opt.step, g),
                      "memory-only": lambda t=t: with_threads(t, limit, g.view(np.uint32),
                                                              *scratch)}
        if torch is not None:
            torch.set_num_threads(t)
            tp = torch.nn.Parameter(torch.from_numpy(p.copy()))
            tp.grad = torch.from_numpy(g)
            contenders["torch-fused-cpu"] = torch.optim.Adam([tp], fused=True).step
        samples = {k: [] for k in contenders}
        for _ in range(3 if check.tiny else 9):
            for k, fn in contenders.items():
                t0 = time.perf_counter()
                fn()
                samples[k].append(time.perf_counter() - t0)
        ms = {k: statistics.median(v) * 1e3 for k, v in samples.items()}
        out[f"{t} threads"] = {k: {"ms": round(v, 3), "GB/s": round(28 * n / v / 1e6, 1),
                                   "% memory-only": round(100 * ms["memory-only"] / v)}
                               for k, v in ms.items()}
    return out
