"""Checks of the sharded optimizer, run on every rank of one launch (not collected by pytest;
``tests/test_distributed.py`` launches them and times them out):

    mpiexec -n 3 python -m mpi4py tests/distributed/checks.py mpi
    python tests/distributed/checks.py torch 3        # torch.multiprocessing, gloo, file://

Each rank makes every rank's gradients from seeds, so the single-process reference
(``fastadam.AdamW`` on the mean gradient) needs no communication. An exception on any
rank fails the launch: ``python -m mpi4py`` aborts the others; torch's spawn raises.
"""

import os
import sys
import tempfile

import numpy as np

import fastadam
from fastadam.distributed import ShardedAdam, ShardedAdamW, shard_counts

F32 = np.float32


def grads_of(rank, step, shapes, dtype=F32):
    rng = np.random.default_rng(1000 * step + rank)
    return [rng.standard_normal(s).astype(dtype) for s in shapes]


def mean_grads(size, step, shapes):
    per_rank = [grads_of(r, step, shapes) for r in range(size)]
    return [np.sum([g[i] for g in per_rank], axis=0, dtype=F32) / F32(size)
            for i in range(len(shapes))]


def close(got, want, what, rtol=1e-5, atol=1e-6):
    np.testing.assert_allclose(np.asarray(got, np.float64), np.asarray(want, np.float64),
                               rtol=rtol, atol=atol, err_msg=what)


def expect_error(fn, kinds=(ValueError, TypeError), match=None):
    try:
        fn()
    except kinds as e:
        assert match is None or match in str(e), f"{match!r} not in {e}"
        return e
    raise AssertionError(f"{fn} raised nothing")


def check_matches_single_process(comm, rank, size):
    """Lists in two groups, odd sizes, a schedule: params equal AdamW on the mean gradient
    on every rank, the consolidated state equals its state_dict, 1/N of the state here."""
    shapes = [(1001,), (7,), (13, 5)]
    rng = np.random.default_rng(7)
    start = [rng.standard_normal(s).astype(F32) for s in shapes]
    groups = lambda arrays: [{"params": arrays[:2]},  # noqa: E731
                             {"params": arrays[2:], "lr": 3e-2, "weight_decay": 0.1}]
    ours_params = [a.copy() for a in start]
    ours = ShardedAdamW(groups(ours_params), comm, lr=1e-2, amsgrad=True)
    ref = fastadam.AdamW(groups([a.copy() for a in start]), lr=1e-2, amsgrad=True)
    for step in range(12):
        if step == 6:
            ours.set_lr(5e-3, group=0)
            ref.set_lr(5e-3, group=0)
        scale = 256.0 if step in (3, 4) else None  # loss-scaled gradients
        local = [g * F32(scale or 1) for g in grads_of(rank, step, shapes)]
        assert ours.step(local, grad_scale=scale) is True
        ref.step(mean_grads(size, step, shapes))
    for mine, theirs in zip(ours_params, ref.params):
        close(mine, theirs, "params")
    n = sum(int(np.prod(s)) for s in shapes)
    assert ours.state_bytes == 3 * 4 * shard_counts(n, size)[rank]  # m, v, v_max float32
    whole = ours.consolidated_state_dict(root=size - 1)
    if rank != size - 1:
        assert whole is None
        return
    theirs = ref.state_dict()
    for i, entry in theirs["state"].items():
        assert whole["state"][i]["step"] == entry["step"] == 12
        assert set(whole["state"][i]) == set(entry)
        for key in ("exp_avg", "exp_avg_sq", "max_exp_avg_sq"):
            close(whole["state"][i][key], entry[key], key, atol=1e-7)
    loaded = fastadam.AdamW(groups([a.copy() for a in ours_params]), amsgrad=True)
    loaded.load_state_dict(whole)  # fastadam.AdamW takes it
    assert loaded.param_groups[1]["lr"] == 3e-2


def check_clipping_by_the_global_norm(comm, rank, size):
    """max_grad_norm: the norm across every rank's shard (one scalar from each), equal to
    one process clipping the mean gradient; a NaN anywhere skips on every rank."""
    shapes = [(1001,), (7,), (13, 5)]
    start = [np.random.default_rng(9).standard_normal(s).astype(F32) for s in shapes]
    ours_params = [a.copy() for a in start]
    ours = ShardedAdamW(ours_params, comm, lr=1e-2, max_grad_norm=0.5, skip_nonfinite=True)
    ref = fastadam.AdamW([a.copy() for a in start], lr=1e-2, max_grad_norm=0.5)
    for step in range(4):
        scale = 8.0 if step == 2 else None
        ours.step([g * F32(scale or 1) for g in grads_of(rank, step, shapes)], grad_scale=scale)
        ref.step(mean_grads(size, step, shapes))
        close(ours.grad_norm, ref.grad_norm, "grad_norm", rtol=1e-6)
    for mine, theirs in zip(ours_params, ref.params):
        close(mine, theirs, "clipped params")
    bad = grads_of(rank, 9, shapes)
    if rank == size - 1:
        bad[0][3] = np.nan
    before = [a.copy() for a in ours_params]
    assert ours.step(bad) is False and np.isnan(ours.grad_norm)
    for a, b in zip(ours_params, before):
        np.testing.assert_array_equal(a, b)


def check_mixed_precision_and_8bit(comm, rank, size):
    """bfloat16 params with fp32 master weights in the shard; 8-bit moments (the shard's
    pieces quantized blockwise, as an unsharded Adam over the same pieces)."""
    import ml_dtypes

    bf16 = ml_dtypes.bfloat16
    n = 3001
    start = np.random.default_rng(3).standard_normal(n).astype(bf16)
    ours = ShardedAdamW(start.copy(), comm, lr=1e-2, master_weights=True)
    ref = fastadam.AdamW(start.copy(), lr=1e-2, master_weights=True)
    for step in range(10):
        ours.step(grads_of(rank, step, [(n,)])[0].astype(bf16))
        per_rank = [grads_of(r, step, [(n,)])[0].astype(bf16).astype(F32) for r in range(size)]
        ref.step(np.sum(per_rank, axis=0, dtype=F32) / F32(size))
    assert ours.state_bytes == 3 * 4 * shard_counts(n, size)[rank]  # m, v, master
    close(ours.params.astype(F32), ref.params.astype(F32), "bf16 params", rtol=0, atol=2e-2)
    whole = ours.consolidated_state_dict()
    if rank == 0:
        close(whole["state"][0]["master_params"], ref.state_dict()["state"][0]["master_params"],
              "master params", atol=1e-5)

    n = 5000 * size + 3
    start = np.random.default_rng(4).standard_normal(n).astype(F32)
    for fmt, per_element in (("8bit", 2.1), ("4bit", 1.1)):
        ours = ShardedAdamW(start.copy(), comm, lr=1e-2, state_dtype=fmt)
        bounds = np.cumsum([0] + shard_counts(n, size))
        pieces = [start[a:b].copy() for a, b in zip(bounds[:-1], bounds[1:])]
        ref = fastadam.AdamW(pieces, lr=1e-2, state_dtype=fmt)
        for step in range(10):
            ours.step(grads_of(rank, step, [(n,)])[0])
            mean = mean_grads(size, step, [(n,)])[0]
            ref.step([mean[a:b] for a, b in zip(bounds[:-1], bounds[1:])])
        close(ours.params, np.concatenate(ref.params), f"{fmt} params", atol=1e-5)
        assert ours.state_bytes < per_element * shard_counts(n, size)[rank]
        whole = ours.consolidated_state_dict()
        if rank == 0:
            again = fastadam.AdamW(ours.params.copy(), state_dtype=fmt)
            again.load_state_dict(whole)  # float moments load quantized


def check_skip_nonfinite_and_refusal(comm, rank, size):
    """NaN on one rank: every rank skips. A bad gradient on one rank: every rank raises,
    nothing changes, and the next step works (no rank left in a collective)."""
    n = 257
    start = np.random.default_rng(5).standard_normal(n).astype(F32)
    ours = ShardedAdam(start.copy(), comm, skip_nonfinite=True)
    ours.step(grads_of(rank, 0, [(n,)])[0])
    before = ours.params.copy()
    grad = grads_of(rank, 1, [(n,)])[0]
    if rank == size - 1:
        grad[n // 2] = np.nan
    assert ours.step(grad) is False
    assert ours.step_count == 1 and np.array_equal(ours.params, before)
    bad = grads_of(rank, 2, [(n,)])[0]
    if rank == 1 % size:
        bad = bad[:-1]
    error = expect_error(lambda: ours.step(bad))
    assert ("another rank" in str(error)) == (rank != 1 % size)
    assert ours.step_count == 1 and np.array_equal(ours.params, before)
    assert ours.step(grads_of(rank, 3, [(n,)])[0]) is True
    assert ours.step_count == 2 and not np.array_equal(ours.params, before)


def check_disagreement_fails_on_every_rank(comm, rank, size):
    """Settings, sizes or dtypes that differ between ranks: ValueError on every rank."""
    params = np.ones(100, F32)
    odd = rank == size - 1
    for make in (lambda: ShardedAdam(params.copy(), comm, lr=2e-3 if odd else 1e-3),
                 lambda: ShardedAdam(np.ones(100 + odd, F32), comm),
                 lambda: ShardedAdam(params.astype(np.float64 if odd else F32), comm)):
        expect_error(make, ValueError, match="disagree" if size > 1 else None) if size > 1 \
            else make()
    error = expect_error(lambda: ShardedAdam(params.copy(), comm, lr=-1.0 if rank == 0 else 1e-3))
    assert ("refused" in str(error)) == (rank != 0)


def check_state_roundtrip_and_few_elements(comm, rank, size, folder):
    """save/load per rank; a consolidated state re-sharded; fewer elements than ranks."""
    n = 1003
    start = np.random.default_rng(6).standard_normal(n).astype(F32)
    a = ShardedAdamW(start.copy(), comm, lr=1e-2)
    for step in range(3):
        a.step(grads_of(rank, step, [(n,)])[0])
    path = os.path.join(folder, f"opt.{rank}.npz")
    a.save(path)
    whole = a.consolidated_state_dict()
    whole = comm_broadcast_object(comm, whole)
    b = ShardedAdamW(a.params.copy(), comm)
    b.load(path)
    c = ShardedAdamW(a.params.copy(), comm)
    c.load_state_dict(whole)  # consolidated, re-sharded
    assert b.step_count == c.step_count == 3 and c.lr == 1e-2
    for step in range(3, 6):
        for opt in (a, b, c):
            opt.step(grads_of(rank, step, [(n,)])[0])
    assert np.array_equal(a.params, b.params) and np.array_equal(a.params, c.params)
    other = dict(whole)
    other["state"] = {0: {**whole["state"][0], "exp_avg": whole["state"][0]["exp_avg"][:-1]}}
    expect_error(lambda: c.load_state_dict(other))
    assert c.step_count == 6

    tiny = np.array([1.5, -2.0], F32)
    few = ShardedAdam(tiny.copy(), comm, lr=0.1)
    assert few.shard[1] - few.shard[0] == shard_counts(2, size)[rank]
    for step in range(3):
        few.step(grads_of(rank, step, [(2,)])[0])
    ref = fastadam.Adam(tiny.copy(), lr=0.1)
    for step in range(3):
        ref.step(mean_grads(size, step, [(2,)])[0])
    close(few.params, ref.params, "2 elements")
    whole = few.consolidated_state_dict()
    if rank == 0:
        close(whole["state"][0]["exp_avg"], ref.state_dict()["state"][0]["exp_avg"], "m", 0, 1e-7)


def comm_broadcast_object(comm, obj):
    """Rank 0's object on every rank (for the test only)."""
    return comm_allgather(comm, obj)[0]


def comm_allgather(comm, obj):
    if comm is None:
        import torch.distributed as dist

        out = [None] * dist.get_world_size()
        dist.all_gather_object(out, obj)
        return out
    return comm.allgather(obj)


def run_all(comm, rank, size, folder, other_comm):
    """Every check; ``other_comm``: another way to name the ranks (comm=None, the default,
    under MPI; an explicit process group under torch)."""
    check_matches_single_process(comm, rank, size)
    check_clipping_by_the_global_norm(comm, rank, size)
    check_mixed_precision_and_8bit(comm, rank, size)
    check_skip_nonfinite_and_refusal(other_comm, rank, size)
    check_disagreement_fails_on_every_rank(comm, rank, size)
    check_state_roundtrip_and_few_elements(comm, rank, size, folder)
    print(f"rank {rank}/{size}: all checks passed", flush=True)


def torch_worker(rank, size, folder):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{folder}/init", rank=rank,
                            world_size=size)
    try:
        group = dist.new_group(list(range(size)))
        run_all(None, rank, size, folder, group)  # comm=None: torch's default group
        check_zero_redundancy_optimizer(rank, size)
    finally:
        dist.destroy_process_group()


def check_zero_redundancy_optimizer(rank, size):
    """torch's ZeroRedundancyOptimizer wrapping fastadam.torch.AdamW, with and without
    bucket views, follows it wrapping torch.optim.AdamW."""
    import torch
    import torch.distributed as dist
    from torch.distributed.optim import ZeroRedundancyOptimizer

    import fastadam.torch as fat

    for bucket in (False, True):
        results = []
        for cls in (torch.optim.AdamW, fat.AdamW):
            torch.manual_seed(0)
            model = torch.nn.Sequential(torch.nn.Linear(13, 7), torch.nn.Linear(7, 3))
            opt = ZeroRedundancyOptimizer(model.parameters(), optimizer_class=cls, lr=1e-2,
                                          parameters_as_bucket_view=bucket)
            for step in range(6):
                torch.manual_seed(100 + step * size + rank)
                opt.zero_grad()
                model(torch.randn(8, 13)).square().sum().backward()
                for p in model.parameters():
                    dist.all_reduce(p.grad)
                    p.grad /= size
                opt.step()
            results.append([p.detach().clone() for p in model.parameters()])
        for ours, theirs in zip(results[1], results[0]):
            torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)


def main():
    engine = sys.argv[1]
    if engine == "mpi":
        from mpi4py import MPI

        comm = MPI.COMM_WORLD
        folder = comm.bcast(tempfile.mkdtemp() if comm.rank == 0 else None)
        run_all(comm, comm.rank, comm.size, folder, None)  # None: MPI.COMM_WORLD
    else:
        import torch.multiprocessing as mp

        size = int(sys.argv[2])
        mp.spawn(torch_worker, args=(size, tempfile.mkdtemp()), nprocs=size)


if __name__ == "__main__":
    main()
