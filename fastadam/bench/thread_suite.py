"""``python -m fastadam bench --threads``: what the default thread count costs or gains.

Two optimizers step the same sizes, interleaved: the defaults (``num_threads=None``,
fastadam's measured choice) and one thread; alone, the defaults also against all of
Numba's threads, in a run of their own (a forced threaded step left in the
interleaving would leave its pool spinning into the next contender's step). Under four
conditions a training loop meets: alone; right after a NumPy matmul (512 x 512
float32, BLAS threads still spinning); right after a torch matmul (its OpenMP pool,
where torch is installed); and while a second process keeps one core busy. Sizes are
single float32 arrays from 1K to 64M elements and a 64-64-10 MLP's four arrays in
two groups (4,810 params). Times are medians; "mean x" also counts the rare steps
on which the defaults re-try the slower count.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time
from contextlib import contextmanager
from functools import partial

import numpy as np

from .. import AdamW
from .harness import all_threads

SIZES = [1 << 10, 1 << 14, 1 << 18, 1 << 20, 1 << 22, 1 << 24, 1 << 26]
MLP = [(64, 64), (64,), (64, 10), (10,)]  # sklearn's digits: 64 inputs, 10 classes
BUDGET_S = 0.6  # timed seconds per contender and row, at most


@contextmanager
def _nothing():
    yield


@contextmanager
def _busy_core():
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.2)  # let it take its core
        yield
    finally:
        spinner.kill()
        spinner.wait()


def _conditions(torch) -> dict:
    """Name -> (what runs before each step, or None; a context to run the row in)."""
    rng = np.random.default_rng(1)
    a = rng.standard_normal((512, 512)).astype(np.float32)
    found = {"alone": (None, None), "after a NumPy matmul": (lambda: a @ a, None)}
    if torch is not None:
        t = torch.from_numpy(a)
        found["after a torch matmul"] = (lambda: torch.mm(t, t), None)
    found["a core busy"] = (None, _busy_core)
    return found


def _optimizers(shapes: list, names: list, rng) -> dict:
    """Name -> a step function. Every contender steps one optimizer, the same arrays,
    each through its own stepping plan for its thread count: on this VM two sets of
    arrays alike in all but their place in memory step 0.8-1.3x apart."""
    params = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    if len(params) == 1:
        opt = AdamW(params[0], lr=1e-4)
    else:  # weights and biases in two groups, as a training script has them
        opt = AdamW([{"params": params[0::2], "weight_decay": 0.01},
                     {"params": params[1::2], "weight_decay": 0.0}], lr=1e-4)
    made = {}
    for name in names:
        opt._num_threads = {"defaults": None, "1 thread": 1}.get(name, all_threads())
        opt._replan()
        made[name] = partial(_step_with, opt, opt._plans)
    return made


def _step_with(opt, plan, grads) -> None:
    opt._plans = plan
    opt.step(grads)


def _row(shapes: list, before, rng, names: list) -> dict:
    """Median and mean seconds per step of each named optimizer, interleaved."""
    grads = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    given = grads[0] if len(grads) == 1 else grads[0::2] + grads[1::2]  # the groups' order
    optimizers = _optimizers(shapes, names, rng)
    for step in optimizers.values():  # compile, and let the defaults measure both counts
        for _ in range(4):
            if before is not None:
                before()
            step(given)
    start = time.perf_counter()
    optimizers[names[-1]](given)
    once = time.perf_counter() - start
    repeats = int(min(max(BUDGET_S / max(once, 1e-6), 15), 400))
    samples = {k: [] for k in names}
    for r in range(repeats):
        for k in names[r % 2:] + names[:r % 2]:
            if before is not None:
                before()
            start = time.perf_counter()
            optimizers[k](given)
            samples[k].append(time.perf_counter() - start)
    return {k: (statistics.median(v), statistics.fmean(v)) for k, v in samples.items()}


def thread_rows(sizes: list[int] | None = None, torch_peer: bool = True) -> list[dict]:
    """One record per condition and size: each contender's median and mean step time."""
    torch = None
    if torch_peer:
        try:
            import torch  # optional: the torch matmul condition
        except ImportError:
            torch = None
    rng = np.random.default_rng(0)
    cases = [("MLP (4,810)", MLP)] + [(f"{n:,}", [(n,)]) for n in (sizes or SIZES)]
    records = []
    for condition, (before, context) in _conditions(torch).items():
        for label, shapes in cases:
            with context() if context is not None else _nothing():
                times = _row(shapes, before, rng, ["defaults", "1 thread"])
                if condition == "alone":
                    against_all = _row(shapes, before, rng, ["defaults", "all threads"])
                    times["all threads"] = against_all["all threads"]
                    times["defaults, against all"] = against_all["defaults"]
            records.append({"condition": condition, "elements": label, **{
                k: {"median_ms": m * 1e3, "mean_ms": a * 1e3} for k, (m, a) in times.items()}})
    return records


def format_thread_rows(records: list[dict]) -> str:
    """The table, and a one-line conclusion against the target (<= 1.10x one thread)."""
    head = (f"{'condition':<22} {'elements':>12} {'defaults ms':>12} {'1 thread ms':>12} "
            f"{'all ms':>9} {'x 1 thread':>10} {'mean x':>7} {'x all':>6}")
    lines = [head, "-" * len(head)]
    worst = (0.0, "")
    for r in records:
        d, one = r["defaults"], r["1 thread"]
        vs_one = d["median_ms"] / one["median_ms"]
        mean_vs_one = d["mean_ms"] / one["mean_ms"]
        every = r.get("all threads")
        vs_all = (r["defaults, against all"]["median_ms"] / every["median_ms"]) if every else None
        worst = max(worst, (vs_one, f"{r['condition']}, {r['elements']}"))
        flag = "  <- slower than one thread" if vs_one > 1.10 else ""
        all_ms = f"{every['median_ms']:>9.4f}" if every else f"{'-':>9}"
        x_all = f"{vs_all:>6.2f}" if every else f"{'-':>6}"
        lines.append(f"{r['condition']:<22} {r['elements']:>12} {d['median_ms']:>12.4f} "
                     f"{one['median_ms']:>12.4f} {all_ms} {vs_one:>10.2f} "
                     f"{mean_vs_one:>7.2f} {x_all}{flag}")
    lines.append(f"The defaults took at most {worst[0]:.2f}x one thread's median step "
                 f"({worst[1]}); the target is 1.10x.")
    return "\n".join(lines)
