"""``python -m fastadam bench``: the command line of the benchmark."""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict

import numpy as np

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
from .plot import plot
from .report import _header, format_table, machine
from .sparse_suite import SPARSE_CASES, sparse_rows
from .startup import format_startup, startup_seconds
from .suites import call_rows, clip_rows, many_tensor_rows, run_case, transformer_rows


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m fastadam bench",
        description="Time the fused Adam step against naive NumPy and the memory-only limit.",
    )
    p.add_argument(
        "--sizes", help="comma-separated element counts (default: 1K up to what memory allows)"
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
        "--threads", type=int, default=None, help="the multi-threaded count (default: all)"
    )
    p.add_argument("--peers", action="store_true",
                   help="add torch.optim.Adam fused and foreach (with --configs 8bit: "
                        "torch's fp32 step, and bitsandbytes' and torchao's 8-bit AdamW "
                        "where installed)")
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
    if "bfloat16" in args.dtypes or (args.configs and "bf16_state" in args.configs):
        try:
            import ml_dtypes  # noqa: F401
        except ImportError:
            p.error("bfloat16 needs ml_dtypes: pip install ml_dtypes")
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
    for wanted, flag in ((args.peers, "--peers"), (args.transformer, "--transformer")):
        try:
            if wanted:
                import torch  # noqa: F401
        except ImportError:
            p.error(f"{flag} needs torch: pip install torch")
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
    print(_header(info, args.repeats))
    print("Row-sparse Adam (n: lookups per step, a quarter on 256 hot rows; GB/s: the values "
          "and the distinct rows of param, m, v read and written once)")
    print(format_table(rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": info, "rows": [asdict(r) for r in rows]}, f, indent=1)
    return 0


def main(argv: list[str] | None = None) -> int:
    """The ``python -m fastadam bench`` command."""
    args = parse_args(argv)
    threads = args.threads or all_threads()
    threads_list = sorted({1, threads})
    if args.sparse:
        return sparse_main(args)
    cases = [
        (n, dtype, config)
        for dtype in args.dtypes
        for config in (args.configs or DEFAULT_CONFIGS[dtype])
        if applies(dtype, config)
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
    print(_header(info, args.repeats))
    print(format_table(rows))
    many = []
    if args.many is not None:
        many = many_tensor_rows(*args.many, repeats=args.repeats, peers=args.peers, rng=rng)
        print(f"\n{args.many[0]} arrays of {args.many[1]:,} float32 elements as one list, "
              "against one flat buffer ('% roofline': % of the flat buffer's speed)")
        print(format_table(many))
    calls = []
    if args.calls:
        calls = call_rows(repeats=args.repeats, peers=args.peers)
        print("\nOne call on 1,024 float32 elements, back to back (median ms is per call; "
              "'% roofline': % of the bare kernel call's speed)")
        print(format_table(calls))
    clip = []
    if args.clip:
        for n in args.sizes or [1 << 26]:
            clip += clip_rows(n, repeats=args.repeats, peers=args.peers, rng=rng)
        print("\nClipping by the global norm in the step (GB/s counts 32 bytes per element; "
              "'x numpy': how many times faster than the clipped step, i.e. its time / "
              "theirs; '% roofline': % of the memory-only pass)")
        print(format_table(clip))
    transformer = []
    if args.transformer:
        transformer = transformer_rows(["float32", "bfloat16"], repeats=args.repeats)
        print("\nA 6-layer TransformerEncoder's optimizer step, against torch's fused AdamW "
              "('% roofline': % of torch fused's speed)")
        print(format_table(transformer))
    startup = None
    if not args.no_startup:
        startup = startup_seconds(torch=args.peers)
        print("\n" + format_startup(startup))
    if args.json:
        with open(args.json, "w") as f:
            records = [asdict(r) for r in rows + many + calls + clip + transformer]
            json.dump({"machine": info, "rows": records, "startup_s": startup}, f, indent=1)
    if args.plot:
        plot(rows, args.plot)
    return 0
