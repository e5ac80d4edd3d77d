"""Whether the harness measures what a user gets: each fused-step row of the main table
against the same step timed alone in a fresh process (``bench --check-harness``)."""

from __future__ import annotations

import statistics
import subprocess
import sys

import numpy as np

from .suites import run_case

_FRESH = """
import statistics, sys, time
import numpy as np
import fastadam
n, threads, repeats = (int(x) for x in sys.argv[1:])
rng = np.random.default_rng(0)
p, g = (rng.standard_normal(n).astype(np.float32) for _ in range(2))
opt = fastadam.Adam(p, num_threads=threads)
opt.step(g)
opt.step(g)
times = []
for _ in range(repeats):
    t0 = time.perf_counter()
    opt.step(g)
    times.append(time.perf_counter() - t0)
print(statistics.median(times))
"""


def fresh_process_s(n: int, threads: int, repeats: int = 21) -> float:
    """Median seconds of a float32 step on ``threads`` threads, alone in a new process."""
    out = subprocess.run([sys.executable, "-c", _FRESH, str(n), str(threads), str(repeats)],
                         capture_output=True, text=True, check=True)
    return float(out.stdout.split()[-1])


def agreement_rows(sizes: list[int], threads_list: list[int], rounds: int = 3,
                   repeats: int = 7) -> list[dict]:
    """Per size and thread count: the harness's median and the fresh process's, each the
    median of ``rounds`` runs taken in turn (so that a slow spell of a shared machine
    falls on both), and their ratio."""
    rng = np.random.default_rng(0)
    out = []
    for n in sizes:
        harness: dict = {t: [] for t in threads_list}
        fresh: dict = {t: [] for t in threads_list}
        for _ in range(rounds):
            for t in threads_list:
                fresh[t].append(fresh_process_s(n, t))
            for row in run_case(n, "float32", "adam", repeats=repeats,
                                threads_list=threads_list, peers=False, rng=rng):
                if row.backend == "cpu":
                    harness[row.threads].append(row.median_s)
        for t in threads_list:
            h, f = statistics.median(harness[t]), statistics.median(fresh[t])
            out.append({"n": n, "threads": t, "harness_ms": h * 1e3, "fresh_ms": f * 1e3,
                        "ratio": h / f, "agrees": abs(h / f - 1) <= 0.15})
    return out


def format_agreement(rows: list[dict]) -> str:
    """The rows as a table, and a line saying whether every one agrees within 15%."""
    lines = [f"{'elements':>12} {'threads':>7} {'harness ms':>11} {'fresh ms':>9} "
             f"{'ratio':>6}  within 15%"]
    lines += [f"{r['n']:>12,} {r['threads']:>7} {r['harness_ms']:>11.3f} {r['fresh_ms']:>9.3f}"
              f" {r['ratio']:>6.2f}  {'yes' if r['agrees'] else 'NO'}" for r in rows]
    bad = sum(not r["agrees"] for r in rows)
    lines.append("The harness agrees with fresh processes within 15% in every row." if not bad
                 else f"{bad} row(s) differ by more than 15% from a fresh process.")
    return "\n".join(lines)
