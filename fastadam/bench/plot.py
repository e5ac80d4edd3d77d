"""The figures: step time and GB/s against size, per dtype and configuration, each
contender a line and the memory-only limit dashed (needs matplotlib)."""

from __future__ import annotations

from .harness import Row


def plot(rows: list[Row], path: str) -> None:
    """Two panels per dtype/config: the median step time (log-log) and GB/s against the
    number of elements; one line per (backend, threads), the roofline dashed."""
    try:
        import matplotlib  # optional

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # optional
    except ImportError as e:
        raise SystemExit("--plot needs matplotlib: pip install 'fastadam[plot]'") from e
    panels = sorted({(r.dtype, r.config) for r in rows})
    fig, axes = plt.subplots(2, len(panels), figsize=(6.5 * len(panels), 8.5), squeeze=False)
    for column, (dtype, config) in enumerate(panels):
        mine = [r for r in rows if (r.dtype, r.config) == (dtype, config)]
        for backend, threads in sorted({(r.backend, r.threads) for r in mine}):
            line = sorted((r.n, r.median_s * 1e3, r.gb_per_s) for r in mine
                          if (r.backend, r.threads) == (backend, threads))
            n, ms, gbs = zip(*line)
            style = "--" if backend.endswith("roofline") else "-o"
            label = f"{backend} ({threads} thread{'s' if threads > 1 else ''})"
            axes[0][column].plot(n, ms, style, label=label, markersize=4)
            axes[1][column].plot(n, gbs, style, label=label, markersize=4)
        for row, ylabel in enumerate(("median ms per step", "GB/s (bytes the step needs / time)")):
            ax = axes[row][column]
            ax.set_xscale("log", base=2)
            if row == 0:
                ax.set_yscale("log")
            ax.set_xlabel("elements")
            ax.set_ylabel(ylabel)
            ax.set_title(f"{config}, {dtype}")
            ax.grid(True, alpha=0.3)
            ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
