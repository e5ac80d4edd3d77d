"""Benchmark of the fused step against the naive NumPy Adam and the memory limit.

``python -m fastadam bench --help`` for the command line. Every contender is
timed through the public API, interleaved with the others in each repeat, with
warm-ups outside the timing; rows report medians. Bandwidth is the traffic the
configuration needs (each array read once, each state written once) over the
time, so rows are comparable and the memory-only kernel moving exactly that
traffic is the physical limit ("roofline").
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

import numpy as np

from . import __version__
from .functional import adam_step

CONFIGS = {
    "adam": {},
    "adamw": {"weight_decay": 1e-2, "decoupled_weight_decay": True},
    "amsgrad": {"amsgrad": True},
}
DTYPES = ("float32", "float64")
QUICK_SIZES = (1 << 20, 1 << 24)


def arrays_touched(config: str) -> tuple[int, int]:
    """(arrays read, arrays written) by one fused step of ``config``."""
    return (5, 4) if CONFIGS[config].get("amsgrad") else (4, 3)


def traffic_bytes(n: int, dtype: str, config: str) -> int:
    """Bytes one step must move at the least: every array read once, every state written once."""
    reads, writes = arrays_touched(config)
    return n * np.dtype(dtype).itemsize * (reads + writes)


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


def all_threads() -> int:
    """Numba's thread count: what backend='cpu' uses by default."""
    import numba

    return numba.config.NUMBA_NUM_THREADS


def roofline_contender(
    n: int, dtype: str, config: str, grad: np.ndarray, threads: int
) -> Contender:
    """The memory-only kernel with the step's traffic, on its own arrays."""
    from ._cpu import memory_only_kernel

    reads, _ = arrays_touched(config)
    buffers = [np.ones(n, dtype) for _ in range(reads - 1)]
    kernel = memory_only_kernel(reads - 1)
    return Contender("roofline", threads, _with_threads(threads, lambda: kernel(grad, *buffers)))


def _with_threads(threads: int, fn: Callable[[], object]) -> Callable[[], object]:
    import numba

    def run():
        previous = numba.get_num_threads()
        numba.set_num_threads(threads)
        try:
            fn()
        finally:
            numba.set_num_threads(previous)

    return run


def fastadam_contenders(n, dtype, config, rng, threads_list):
    """numpy and the fused cpu kernel on every thread count, sharing one set of arrays.

    Returns the contenders, the param and the grad.
    """
    kw = CONFIGS[config]
    param = rng.standard_normal(n).astype(dtype)
    grad = rng.standard_normal(n).astype(dtype)
    m = np.zeros(n, dtype)
    v = np.zeros(n, dtype)
    v_max = np.zeros(n, dtype) if kw.get("amsgrad") else None
    steps = iter(range(1, 1 << 62))

    def step(backend, threads=None):
        return lambda: adam_step(
            param,
            grad,
            m,
            v,
            v_max=v_max,
            step=next(steps),
            backend=backend,
            num_threads=threads,
            **kw,
        )

    out = [Contender("numpy", 1, step("numpy"))]
    out += [Contender("cpu", t, step("cpu", t)) for t in threads_list]
    return out, param, grad


def torch_optimizer(config: str):
    """torch's class and keyword arguments for ``config``."""
    import torch

    kw = dict(CONFIGS[config])
    cls = torch.optim.AdamW if kw.pop("decoupled_weight_decay", False) else torch.optim.Adam
    return cls, kw


def torch_contenders(param, grad, config, threads) -> list[Contender]:
    """torch.optim.Adam/AdamW fused and foreach on the same param and grad memory."""
    import torch

    torch.set_num_threads(threads)
    cls, kw = torch_optimizer(config)
    out = []
    for impl in ("fused", "foreach"):
        p = torch.from_numpy(param)
        p.grad = torch.from_numpy(grad)
        opt = cls([p], **kw, **{impl: True})
        out.append(Contender(f"torch-{impl}", threads, opt.step))
    return out


def gpu_available() -> bool:
    """A real CUDA GPU with numba-cuda (the simulator is far too slow to time)."""
    try:
        from . import _cuda
    except ImportError:
        return False
    return not _cuda.SIMULATOR and _cuda.cuda.is_available()


def cuda_contenders(n, dtype, config, rng, peers) -> list[Contender]:
    """The fused step on the GPU, its memory-only kernel, a device copy of the same bytes,
    and with ``peers`` torch's fused CUDA Adam; each call waits for the GPU to finish."""
    from numba import cuda

    from ._cuda import memory_only_kernel

    kw = CONFIGS[config]
    reads, writes = arrays_touched(config)
    param = cuda.to_device(rng.standard_normal(n).astype(dtype))
    grad = cuda.to_device(rng.standard_normal(n).astype(dtype))
    state = [cuda.to_device(np.zeros(n, dtype)) for _ in range(reads - 2)]
    v_max = state[2] if kw.get("amsgrad") else None
    steps = iter(range(1, 1 << 62))

    def synced(fn):
        def run():
            fn()
            cuda.synchronize()

        return run

    fused = synced(lambda: adam_step(param, grad, state[0], state[1], v_max=v_max,
                                     step=next(steps), backend="cuda", **kw))
    scratch = [cuda.to_device(np.ones(n, dtype)) for _ in range(reads - 1)]
    kernel = memory_only_kernel(reads - 1)
    # A copy reads and writes each byte once: half the step's traffic each way.
    copy_n = n * (reads + writes) // 2
    src = cuda.to_device(np.ones(copy_n, dtype))
    dst = cuda.device_array(copy_n, dtype)
    out = [
        Contender("cuda", 1, fused),
        Contender("cuda-roofline", 1, synced(lambda: kernel(grad, *scratch))),
        Contender("cuda-copy", 1, synced(lambda: dst.copy_to_device(src))),
    ]
    if peers:
        import torch

        if torch.cuda.is_available():
            cls, t_kw = torch_optimizer(config)
            p = torch.randn(n, dtype=getattr(torch, dtype), device="cuda")
            p.grad = torch.randn_like(p)
            opt = cls([p], fused=True, **t_kw)
            out.append(Contender("torch-cuda-fused", 1,
                                 lambda: (opt.step(), torch.cuda.synchronize())))
    return out


def measure(contenders: list[Contender], repeats: int) -> tuple[dict, dict]:
    """Median seconds per contender over interleaved repeats, and first-call seconds."""
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
    medians = {k: statistics.median(v) for k, v in times.items()}
    return medians, first


def run_case(n, dtype, config, *, repeats, threads_list, peers, rng, gpu=False) -> list[Row]:
    """Time every contender on one (size, dtype, config) and make the report rows."""
    contenders, param, grad = fastadam_contenders(n, dtype, config, rng, threads_list)
    contenders += [roofline_contender(n, dtype, config, grad, t) for t in threads_list]
    if peers:
        contenders += torch_contenders(param, grad, config, max(threads_list))
    if gpu:
        contenders += cuda_contenders(n, dtype, config, rng, peers)
    medians, first = measure(contenders, repeats)
    by_key = {(c.backend, c.threads): medians[id(c)] for c in contenders}
    numpy_s = by_key[("numpy", 1)]
    nbytes = traffic_bytes(n, dtype, config)
    rows = []
    for c in contenders:
        s = medians[id(c)]
        on_gpu = c.backend.startswith(("cuda", "torch-cuda"))
        limit = by_key.get(("cuda-roofline", 1) if on_gpu else ("roofline", c.threads))
        compiled = c.backend in ("cpu", "roofline", "cuda", "cuda-roofline") and (
            on_gpu or c.threads == threads_list[0])
        rows.append(
            Row(
                backend=c.backend,
                threads=c.threads,
                n=n,
                dtype=dtype,
                config=config,
                median_s=s,
                gb_per_s=nbytes / s / 1e9,
                speedup_vs_numpy=numpy_s / s,
                roofline_fraction=None if c.backend.endswith("roofline") else limit / s,
                compile_s=max(first[id(c)] - s, 0.0) if compiled else None,
                repeats=repeats,
            )
        )
    return rows


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
    # param, grad, m, v, v_max; 3 roofline buffers; ~4 NumPy temporaries; torch's moments.
    arrays = 5 + 3 + 4 + (4 if peers else 0)
    n = int(0.8 * memory) // (arrays * np.dtype(dtype).itemsize)
    return 1 << (n.bit_length() - 1)


def default_sizes(dtype: str, peers: bool) -> list[int]:
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
    lines = [head]
    for r in rows:
        lines.append(
            (
                r.backend,
                str(r.threads),
                f"{r.n:,}",
                r.dtype,
                r.config,
                f"{r.median_s * 1e3:.3f}",
                f"{r.gb_per_s:.2f}",
                f"{r.speedup_vs_numpy:.1f}",
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
    p.add_argument("--dtypes", default=None, help=f"comma-separated, from {DTYPES} (default: all)")
    p.add_argument(
        "--configs", default=None, help=f"comma-separated, from {tuple(CONFIGS)} (default: all)"
    )
    p.add_argument(
        "--repeats", type=int, default=None, help="timed repeats per contender (default 7, quick 5)"
    )
    p.add_argument(
        "--threads", type=int, default=None, help="the multi-threaded count (default: all)"
    )
    p.add_argument("--peers", action="store_true", help="add torch.optim.Adam fused and foreach")
    p.add_argument(
        "--quick", action="store_true", help="1M and 16M float32 Adam only: under a minute"
    )
    p.add_argument("--json", metavar="PATH", help="write one record per row, with the machine")
    p.add_argument(
        "--plot", metavar="PATH", help="write a PNG of GB/s against size (needs matplotlib)"
    )
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
        else (["float32"] if args.quick else list(DTYPES))
    )
    args.configs = (
        listed(args.configs, CONFIGS, "configs")
        if args.configs
        else (["adam"] if args.quick else list(CONFIGS))
    )
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
    if args.peers:
        try:
            import torch  # noqa: F401
        except ImportError:
            p.error("--peers needs torch: pip install torch")
    return args


def main(argv: list[str] | None = None) -> int:
    """The ``python -m fastadam bench`` command."""
    args = parse_args(argv)
    threads = args.threads or all_threads()
    threads_list = sorted({1, threads})
    cases = [
        (n, dtype, config)
        for dtype in args.dtypes
        for config in args.configs
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
    print(
        f"fastadam {info['fastadam']}, numba {info['numba']}, numpy {info['numpy']}"
        + (f", torch {info['torch']}" if "torch" in info else "")
        + f"; {info['cpu']}, {info['cores']} cores; median of {args.repeats} interleaved repeats"
    )
    print(format_table(rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": info, "rows": [asdict(r) for r in rows]}, f, indent=1)
    if args.plot:
        plot(rows, args.plot)
    return 0
