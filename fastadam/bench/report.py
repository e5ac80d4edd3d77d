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


def _header(info: dict, repeats: int, threads: int | None = None) -> str:
    return (f"fastadam {info['fastadam']}, numba {info['numba']}, numpy {info['numpy']}"
            + (f", torch {info['torch']}" if "torch" in info else "")
            + f", Python {info['python']}; {info['cpu']}, {info['cores']} cores"
            + (f", {threads} Numba threads" if threads else "")
            + (f", GPU {info['gpu']}" if "gpu" in info else "")
            + f"; median of {repeats} interleaved repeats")
