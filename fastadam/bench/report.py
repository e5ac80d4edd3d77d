"""The report: the machine and versions, and the aligned table."""

from __future__ import annotations

import os
import platform
import sys

import numba
import numpy as np

from .. import __version__
from .contenders import gpu_available
from .harness import Row


def machine() -> dict:
    """What the numbers were measured on."""
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
        from numba import cuda  # optional: only where a GPU is

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


def format_table(rows: list[Row], ratio: str = "x numpy") -> str:
    """The report as an aligned text table; ``ratio`` names the column of
    ``speedup_vs_numpy``, which a side table may fill with another ratio."""
    head = (
        "backend",
        "threads",
        "n",
        "dtype",
        "config",
        "median ms",
        "GB/s",
        ratio,
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


def header(info: dict, repeats: int, threads: int | None = None) -> str:
    return (f"fastadam {info['fastadam']}, numba {info['numba']}, numpy {info['numpy']}"
            + (f", torch {info['torch']}" if "torch" in info else "")
            + f", Python {info['python']}; {info['cpu']}, {info['cores']} cores"
            + (f", {threads} Numba threads" if threads else "")
            + (f", GPU {info['gpu']}" if "gpu" in info else "")
            + f"; median of {repeats} interleaved repeats")


def conclusion(rows: list[Row], from_n: int = 1 << 22) -> str | None:
    """The main table in one line: for arrays of ``from_n`` elements and more (112 MB a
    float32 step; below, they may sit in a last-level cache, and the limit compares call
    costs), the fused CPU step on the most threads measured, as % of the memory-only
    limit and x NumPy (and x torch's fused step, where it ran)."""
    def most_threads(rs):
        return [r for r in rs if r.threads == max((x.threads for x in rs), default=0)]

    big = [r for r in rows if r.n >= from_n]
    mine = most_threads([r for r in big if r.backend == "cpu"])
    if not mine:
        return None
    torch = {(r.n, r.dtype, r.config): r.median_s for r in big if r.backend == "torch-fused"}
    limit = [100 * r.roofline_fraction for r in mine if r.roofline_fraction]
    numpy = [r.speedup_vs_numpy for r in mine if r.speedup_vs_numpy]
    vs_torch = [torch[(r.n, r.dtype, r.config)] / r.median_s for r in mine
                if (r.n, r.dtype, r.config) in torch]

    def span(values, fmt):
        low, high = (fmt.format(min(values)), fmt.format(max(values))) if values else ("-",) * 2
        return low if low == high else f"{low}-{high}"

    text = (f"Conclusion: from {from_n:,} elements, the fused step on {mine[0].threads} "
            f"thread(s) runs at {span(limit, '{:.0f}')}% of the memory-only limit and "
            f"{span(numpy, '{:.1f}')}x naive NumPy")
    if vs_torch:
        text += f", {span(vs_torch, '{:.2f}')}x torch's fused Adam"
    return text + f" ({len(mine)} case(s))."
