"""``python -m fastadam bench``: the command line of the benchmark."""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from dataclasses import asdict

import numpy as np

from .agreement import agreement_rows, format_agreement
from .configs import (
    CONFIGS,
    DEFAULT_CONFIGS,
    DEFAULT_DTYPES,
    DTYPES,
    QUICK_SIZES,
    applies,
    default_sizes,
)
from .contenders import gpu_available
from .harness import Row, all_threads
from .inline_suite import inline_rows
from .plot import plot
from .progress import Progress, parse_size
from .report import conclusion, format_table, header, machine
from .sparse_suite import SPARSE_CASES, sparse_rows
from .startup import format_startup, startup_seconds
from .suites import call_rows, clip_rows, many_tensor_rows, run_case, transformer_rows
from .thread_suite import format_thread_rows, thread_rows


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m fastadam bench",
        description="Time the fused Adam step against naive NumPy and the memory-only limit.",
    )
    p.add_argument(
        "--sizes", help="comma-separated element counts: 4096, 1e6, 2**26, 16M, 1G (K, M, G "
                        "are 2**10, 2**20, 2**30; default: 1K up to what memory allows)"
    )
    p.add_argument("--dtypes", default=None,
                   help=f"comma-separated param dtypes, from {DTYPES} (default: float32,bfloat16)")
    p.add_argument(
        "--configs", default=None,
        help=f"comma-separated, from {tuple(CONFIGS)} (default: several per dtype)",
    )
    p.add_argument(
        "--repeats", type=int, default=None, help="timed repeats per contender (default 7, quick 5)"
    )
    p.add_argument(
        "--threads", type=int, nargs="?", const=0, default=None, metavar="N",
        help="the multi-threaded count (default: all); alone, without N: the defaults' "
             "thread choice against one thread and all, alone, after a NumPy or torch "
             "matmul and beside a busy core"
    )
    p.add_argument("--peers", action="store_true",
                   help="add torch.optim.Adam fused and foreach (with --configs 8bit: "
                        "torch's fp32 step, and bitsandbytes' and torchao's 8-bit AdamW "
                        "where installed; 4bit: torchao's 4-bit AdamW; schedulefree, "
                        "ademamix: the schedulefree package's and bitsandbytes' optimizers)")
    p.add_argument(
        "--quick", action="store_true", help="1M and 16M float32 Adam only: under a minute"
    )
    p.add_argument("--json", metavar="PATH", help="write one record per row, with the machine")
    p.add_argument(
        "--plot", metavar="PATH", help="write a PNG of GB/s against size (needs matplotlib)"
    )
    p.add_argument("--many", metavar="COUNTxSIZE", nargs="?", const="1000x4096",
                   help="also step COUNT arrays of SIZE float32 elements as one list against "
                        "one flat buffer (default 1000x4096); '%% roofline' is then %% of flat")
    p.add_argument("--calls", action="store_true",
                   help="also time Adam.step on 1K float32 elements back to back (the cost "
                        "of a call), against the bare kernel and, with --peers, torch fused")
    p.add_argument("--clip", action="store_true",
                   help="also time the step clipped by the global gradient norm against "
                        "the unclipped one and, with --peers, torch's clip_grad_norm_ + "
                        "fused AdamW (float32, at each --sizes, default 64M)")
    p.add_argument("--transformer", action="store_true",
                   help="also time fastadam.torch.AdamW against torch's fused AdamW on a "
                        "6-layer TransformerEncoder (float32 and bfloat16; needs torch)")
    p.add_argument("--sparse", action="store_true",
                   help="the row-sparse step instead of the dense sweep: float32 tables of "
                        "1M x 64 (1K, 16K, 256K lookups per step) and 10M x 64 (16K), against "
                        "torch.optim.SparseAdam where torch is installed")
    p.add_argument("--inline", action="store_true",
                   help="Adam inside compiled code (fastadam.numba) against the same work "
                        "from Python: a small step, a gradient fused into the update, and a "
                        "matrix factorization trained all in Numba (--sizes: the fused "
                        "step's; default 16M)")
    p.add_argument("--check-harness", action="store_true",
                   help="time the fused step's rows against the same step alone in a fresh "
                        "process (default sizes 4M and 16M)")
    p.add_argument("--no-cuda", action="store_true", help="leave the GPU out even if one is there")
    p.add_argument("--no-progress", action="store_true", help="no progress display on stderr")
    p.add_argument("--no-startup", action="store_true",
                   help="leave out the first step in a new process (cold and warm cache)")
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
        else (["float32"] if args.quick else list(DEFAULT_DTYPES))
    )
    args.configs = listed(args.configs, CONFIGS, "configs") if args.configs else None
    if args.quick and args.configs is None:
        args.configs = ["adam"]
    if args.sizes:
        try:
            args.sizes = [parse_size(s) for s in args.sizes.split(",") if s.strip()]
        except ValueError as e:
            p.error(f"--sizes: {e}")
        if not args.sizes:
            p.error("--sizes: give at least one size")
    elif args.quick:
        args.sizes = list(QUICK_SIZES)
    if args.repeats is None:
        args.repeats = 5 if args.quick else 7
    if args.repeats < 1:
        p.error("--repeats must be >= 1")
    if args.threads not in (None, 0) and not 1 <= args.threads <= all_threads():
        p.error(f"--threads must be in [1, {all_threads()}]")
    if args.many is not None:
        try:
            count, size = (int(x) for x in args.many.lower().split("x"))
            assert count >= 1 and size >= 1
        except (ValueError, AssertionError):
            p.error(f"--many: expected COUNTxSIZE, like 1000x4096, got {args.many!r}")
        args.many = (count, size)
    return args


def sparse_main(args) -> int:
    """``bench --sparse``: the row-sparse table, printed and written as the dense one."""
    rng = np.random.default_rng(args.seed)
    gpu = not args.no_cuda and gpu_available()
    cases = SPARSE_CASES
    if args.sizes:  # lookups per step, on the 1M x 64 table
        cases = tuple((1_000_000, 64, n) for n in args.sizes)
    rows: list[Row] = []
    for i, (table_rows, dim, nnz) in enumerate(cases, 1):
        if not args.no_progress:
            print(f"[{i}/{len(cases)}] {table_rows:,} x {dim}, {nnz:,} lookups", file=sys.stderr,
                  flush=True)
        rows += sparse_rows(table_rows, dim, nnz, repeats=args.repeats, rng=rng, gpu=gpu)
    info = machine()
    print(header(info, args.repeats))
    print("Row-sparse Adam (n: lookups per step, a quarter on 256 hot rows; GB/s: the values "
          "and the distinct rows of param, m, v read and written once)")
    print(format_table(rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": info, "rows": [asdict(r) for r in rows]}, f, indent=1)
    return 0


def _missing(module: str) -> bool:
    return importlib.util.find_spec(module) is None


def plan(args) -> tuple[list, list[str]]:
    """(the dense cases to run, the reasons for what is skipped), decided before anything
    is measured: a row whose optional package is missing is skipped, never fatal."""
    skipped = []
    wanted = [(n, dtype, config)
              for dtype in args.dtypes
              for config in (args.configs or DEFAULT_CONFIGS[dtype])
              if applies(dtype, config)
              for n in (args.sizes or default_sizes(dtype, args.peers))]
    cases = []
    if _missing("ml_dtypes"):
        for n, dtype, config in wanted:
            if dtype == "bfloat16" or config == "bf16_state":
                what = f"{dtype} {config}"
                if not any(what in s for s in skipped):
                    skipped.append(f"{what}: needs ml_dtypes (pip install ml_dtypes)")
            else:
                cases.append((n, dtype, config))
    else:
        cases = wanted
    if (args.peers or args.transformer) and _missing("torch"):
        skipped.append("the torch peers and --transformer: torch is not installed "
                       "(pip install torch)")
        args.peers = args.transformer = False
    if args.plot and _missing("matplotlib"):
        skipped.append(f"--plot {args.plot}: needs matplotlib (pip install 'fastadam[plot]')")
        args.plot = None
    return cases, skipped


def threads_warning(rows: list[Row]) -> str | None:
    """A hint when more threads lost to one, clearly (in at least three repeats of four,
    by over 5%, see ``Row.threads_lose``): a shared or oversubscribed machine."""
    slower = [r for r in rows if r.threads_lose]
    if not slower:
        return None
    first = slower[0]
    return (f"warning: more threads ran slower than one in {len(slower)} case(s) (first: "
            f"n={first.n:,} {first.dtype} {first.config}). This machine looks shared or "
            "oversubscribed: leave num_threads unset (the defaults measure), set "
            "num_threads=1, or OMP_WAIT_POLICY=PASSIVE so that idle workers sleep.")


LEGEND = """\
  median ms   median time of one step, from interleaved repeats after two warm-up steps
  GB/s        bytes the step must move (each array read once, each state written once;
              28 per float32 element for Adam) over the time
  x numpy     how many times faster than the naive multi-pass NumPy Adam (median of the
              ratios within each repeat)
  roofline    a memory-only kernel moving exactly the step's bytes: the physical limit
              (in each repeat the fastest of its loops on the row's threads or fewer:
              the step's own loop, and a serial one)
  % roofline  the row's speed as % of the roofline at the same thread count; while the
              arrays fit in the last-level cache (here up to about 1M elements) it compares
              call costs, not bandwidth; over 100: the step ties with the limit, within
              the noise of the run (the same row moves 10-20% between runs on a shared
              machine)
  compile s   the first call's extra time (compiling, or loading from the kernel cache)"""


def threads_main(args: argparse.Namespace) -> int:
    """``--threads`` without a count: the thread-choice table."""
    records = thread_rows(args.sizes)
    print(header(machine(), "15 to 400", all_threads()))
    print(format_thread_rows(records))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": machine(), "threads": records}, f, indent=1)
    return 0


def main(argv: list[str] | None = None) -> int:
    """The ``python -m fastadam bench`` command."""
    args = parse_args(argv)
    threads = args.threads or all_threads()
    threads_list = sorted({1, threads})
    if args.sparse:
        return sparse_main(args)
    if args.inline:
        print(header(machine(), args.repeats, threads))
        for n in args.sizes or [1 << 24]:
            print("\n".join(inline_rows(n=n, repeats=args.repeats, rng=np.random.default_rng(
                args.seed), torch=args.peers or not _missing("torch"))))
        return 0
    if args.threads == 0:
        return threads_main(args)
    if args.check_harness:
        print(header(machine(), "3 x 7", threads))
        print(format_agreement(agreement_rows(args.sizes or [1 << 22, 1 << 24], threads_list,
                                              repeats=args.repeats or 7)))
        return 0
    cases, skipped = plan(args)
    for reason in skipped:
        print(f"skipped: {reason}")
    rng = np.random.default_rng(args.seed)
    gpu = not args.no_cuda and gpu_available()
    clip_sizes = (args.sizes or [1 << 26]) if args.clip else []
    phases = (len(cases) + (args.many is not None) + args.calls + len(clip_sizes)
              + args.transformer + (not args.no_startup))
    progress = Progress(phases, not args.no_progress)
    rows: list[Row] = []
    failed: list[str] = []
    for n, dtype, config in cases:
        progress.step(f"n={n:,} {dtype} {config}" + (" with peers" if args.peers else ""))
        try:
            rows += run_case(n, dtype, config, repeats=args.repeats, threads_list=threads_list,
                             peers=args.peers, rng=rng, gpu=gpu)
        except Exception as e:  # a contender that fails loses its row, not the run
            failed.append(f"n={n:,} {dtype} {config}: {type(e).__name__}: {e}")
    extra: dict[str, list[Row]] = {}
    if args.many is not None:
        progress.step(f"--many {args.many[0]}x{args.many[1]}")
        extra["many"] = many_tensor_rows(*args.many, repeats=args.repeats, peers=args.peers,
                                         rng=rng)
    if args.calls:
        progress.step("--calls: 1,024 elements, call after call")
        extra["calls"] = call_rows(repeats=args.repeats, peers=args.peers)
    for n in clip_sizes:
        progress.step(f"--clip n={n:,}")
        extra.setdefault("clip", []).extend(clip_rows(n, repeats=args.repeats, peers=args.peers,
                                                      rng=rng))
    if args.transformer:
        progress.step("--transformer: float32 and bfloat16")
        extra["transformer"] = transformer_rows(["float32", "bfloat16"], repeats=args.repeats)
    startup = None
    if not args.no_startup:
        progress.step("first step in a new process: cold, then warm")
        startup = startup_seconds(torch=args.peers)
    progress.done()
    info = machine()
    print(header(info, args.repeats, threads))
    print(format_table(rows))
    summary = conclusion(rows)
    if summary:
        print(summary)
    print(LEGEND)
    for line in failed:
        print(f"failed: {line}")
    warning = threads_warning(rows)
    if warning:
        print(warning)
    titles = {
        "many": f"{(args.many or (0, 0))[0]} arrays of {(args.many or (0, 0))[1]:,} float32 "
                "elements as one list, against one flat buffer ('% roofline': % of the flat "
                "buffer's speed)",
        "calls": "One call on 1,024 float32 elements, back to back (median ms is per call; "
                 "'% roofline': % of the bare kernel call's speed)",
        "clip": "Clipping by the global norm in the step (GB/s counts 32 bytes per element; "
                "'x clipped': the clipped step's time over the row's; '% roofline': % of "
                "the memory-only pass)",
        "transformer": "A 6-layer TransformerEncoder's optimizer step, against torch's fused "
                       "AdamW ('% roofline': % of torch fused's speed)",
    }
    for name, table in extra.items():
        print(f"\n{titles[name]}")
        print(format_table(table, "x clipped" if name == "clip" else "x numpy"))
    if startup is not None:
        print("\n" + format_startup(startup))
    if args.json:
        with open(args.json, "w") as f:
            records = [asdict(r) for r in rows + [r for t in extra.values() for r in t]]
            json.dump({"machine": info, "rows": records, "startup_s": startup,
                       "skipped": skipped, "failed": failed}, f, indent=1)
    if args.plot:
        plot(rows, args.plot)
    return 0
