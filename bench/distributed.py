"""The sharded step on 1 to 4 ranks: step time and its parts, bytes moved, state per rank.

    python bench/distributed.py                    # launches mpiexec -n 1..4 itself
    python bench/distributed.py --ranks 2,4 --elements 4e6 --dtype bfloat16
    mpiexec -n 4 python -m mpi4py bench/distributed.py --worker   # one size, by hand

Each row is the median over repeats of one rank's step (the slowest rank's median),
split into the reduce-scatter of the gradients, the fused step on the shard and the
all-gather of the params. Bytes sent (and as many received) per rank are what ring
collectives move: (N - 1) / N of the gradient buffer, then of the params. The local
step's GB/s counts its own traffic (params, a float32 gradient shard, moments and any
master weights, read and written once).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import numpy as np


def worker(elements: int, dtype_name: str, repeats: int) -> None:
    from mpi4py import MPI

    import fastadam
    from fastadam.distributed import ShardedAdamW

    comm = MPI.COMM_WORLD
    if dtype_name == "bfloat16":
        import ml_dtypes

        dtype = np.dtype(ml_dtypes.bfloat16)
        options = {"master_weights": True}
    else:
        dtype, options = np.dtype(dtype_name), {}
    rng = np.random.default_rng(comm.rank)
    params = np.random.default_rng(0).standard_normal(elements, dtype=np.float32).astype(dtype)
    grad = rng.standard_normal(elements, dtype=np.float32).astype(dtype)
    opt = ShardedAdamW(params, lr=1e-4, **options)
    inner, transport = opt._inner, opt._comm
    shard = [opt._grad_shard]
    parts = {"step": [], "reduce_scatter": [], "local_step": [], "all_gather": []}
    for r in range(repeats + 2):  # two warm-ups: compilation, first touches
        comm.Barrier()
        t0 = time.perf_counter()
        opt.step(grad)
        t1 = time.perf_counter()
        comm.Barrier()
        t2 = time.perf_counter()
        transport.reduce_scatter_sum(opt._grad_flat, opt._grad_shard, opt._counts)
        t3 = time.perf_counter()
        inner.step(shard, grad_scale=float(comm.size))
        t4 = time.perf_counter()
        transport.allgather(opt._flat, opt._counts)
        t5 = time.perf_counter()
        if r >= 2:
            for key, seconds in zip(parts, (t1 - t0, t3 - t2, t4 - t3, t5 - t4)):
                parts[key].append(seconds)
    medians = {k: statistics.median(v) for k, v in parts.items()}
    slowest = {k: max(comm.allgather(v)) for k, v in medians.items()}
    count = opt.shard[1] - opt.shard[0]
    master = 4 if options else 0
    local_bytes = count * (2 * dtype.itemsize + 4 + 2 * 8 + 2 * master)
    sent = (comm.size - 1) / comm.size * elements * (4 + dtype.itemsize)
    state = max(comm.allgather(opt.state_bytes))
    if comm.rank == 0:
        print(json.dumps({
            "ranks": comm.size, "elements": elements, "dtype": dtype_name,
            "fastadam": fastadam.__version__, **{f"{k}_ms": v * 1e3 for k, v in slowest.items()},
            "local_step_gb_per_s": local_bytes / slowest["local_step"] / 1e9,
            "sent_mb_per_rank": sent / 1e6, "received_mb_per_rank": sent / 1e6,
            "state_mb_per_rank": state / 1e6}), flush=True)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ranks", default="1,2,3,4", help="comma-separated rank counts")
    p.add_argument("--elements", type=float, default=16e6, help="params (default 16M)")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--worker", action="store_true", help="run as one rank (under mpiexec)")
    args = p.parse_args()
    elements = int(args.elements)
    if args.worker:
        worker(elements, args.dtype, args.repeats)
        return 0
    mpiexec = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    if not os.path.exists(mpiexec):
        mpiexec = "mpiexec"
    rows = []
    for ranks in (int(r) for r in args.ranks.split(",")):
        out = subprocess.run(
            [mpiexec, "-n", str(ranks), sys.executable, "-m", "mpi4py", __file__, "--worker",
             "--elements", str(elements), "--dtype", args.dtype, "--repeats", str(args.repeats)],
            capture_output=True, text=True, check=True, timeout=900,
            env={**os.environ, "NUMBA_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // ranks))})
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    head = ("ranks", "step ms", "reduce-scatter ms", "local step ms", "all-gather ms",
            "local GB/s", "sent MB/rank", "state MB/rank")
    print(f"{elements:,} {args.dtype} params, AdamW, median of {args.repeats} steps "
          f"(the slowest rank), {os.cpu_count()} cores shared by all ranks")
    print(" | ".join(head))
    for r in rows:
        print(" | ".join([str(r["ranks"]), f"{r['step_ms']:.1f}", f"{r['reduce_scatter_ms']:.1f}",
                          f"{r['local_step_ms']:.1f}", f"{r['all_gather_ms']:.1f}",
                          f"{r['local_step_gb_per_s']:.1f}", f"{r['sent_mb_per_rank']:.0f}",
                          f"{r['state_mb_per_rank']:.0f}"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
