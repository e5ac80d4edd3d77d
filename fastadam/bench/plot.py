"""The figures: GB/s against size, per dtype and configuration (needs matplotlib)."""

from __future__ import annotations

from .harness import Row


def plot(rows: list[Row], path: str) -> None:
    """GB/s against size, one line per backend, the roofline dashed; one panel per dtype/config."""
    try:
        import matplotlib  # optional

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # optional
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
