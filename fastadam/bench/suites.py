"""The dense suites: one (size, dtype, config) case against NumPy, the memory limit and
the peers; many arrays as one list; the cost of one call; a transformer's step."""

from __future__ import annotations

from functools import partial

import numpy as np

from .._backends.cpu import dense
from .._backends.views import kernel_views
from .._core.hyper import coefficients
from ..optimizer import Adam
from .contenders import cuda_contenders, fastadam_contenders
from .harness import (
    Contender,
    Row,
    all_threads,
    limits,
    measure,
    roofline_contenders,
    traffic_bytes,
)
from .peers import torch_contenders
from .roofline import memory_only_kernel


def run_case(n, dtype, config, *, repeats, threads_list, peers, rng, gpu=False) -> list[Row]:
    """Time every contender on one (size, dtype, config) and make the report rows."""
    contenders, opt, grad = fastadam_contenders(n, dtype, config, rng, threads_list)
    nbytes = {"cpu": traffic_bytes(opt, grad)}
    contenders += roofline_contenders(opt, grad, threads_list, memory_only_kernel)
    if peers:
        contenders += torch_contenders(opt.params, grad, config, max(threads_list))
    if gpu:
        on_gpu, nbytes["gpu"] = cuda_contenders(n, dtype, config, rng, peers) or ([], 0)
        contenders += on_gpu
    t = measure(contenders, repeats)
    contenders = [c for c in contenders if not c.variant] + limits(t, contenders, threads_list)
    by_key = {(c.backend, c.threads): c for c in contenders}
    numpy, one = by_key[("numpy", 1)], by_key[("cpu", threads_list[0])]
    rows = []
    for c in contenders:
        s = t.median(c)
        on_gpu = "cuda" in c.backend.split("-")
        limit = by_key.get(("cuda-roofline", 1) if on_gpu else ("roofline", c.threads))
        compiled = c.backend in ("cpu", "roofline", "cuda", "cuda-roofline") and (
            on_gpu or c.threads == threads_list[0])
        moved = nbytes["gpu" if on_gpu else "cpu"]
        rows.append(Row(
            backend=c.backend, threads=c.threads, n=n, dtype=dtype, config=config,
            median_s=s, gb_per_s=moved / s / 1e9, speedup_vs_numpy=t.speedup(numpy, c),
            roofline_fraction=None if c.backend.endswith("roofline") else t.speedup(limit, c),
            compile_s=max(t.first[id(c)] - s, 0.0) if compiled else None,
            repeats=repeats, bytes_per_element=moved / n,
            threads_lose=t.loses(one, c) if c.backend == "cpu" and c.threads > 1 else None,
        ))
    return rows


def many_tensor_rows(count: int, size: int, *, repeats: int, peers: bool, rng) -> list[Row]:
    """``count`` float32 arrays of ``size`` elements stepped as a list (one parallel region
    per batch) against one flat buffer of the same total, and with ``peers`` torch's fused
    Adam and ``fastadam.torch.Adam`` on ``count`` tensors."""
    n = count * size
    params = [rng.standard_normal(size).astype(np.float32) for _ in range(count)]
    grads = [rng.standard_normal(size).astype(np.float32) for _ in range(count)]
    flat = rng.standard_normal(n).astype(np.float32)
    flat_grad = rng.standard_normal(n).astype(np.float32)
    as_list, as_flat = Adam(params), Adam(flat)
    contenders = [Contender("cpu-list", all_threads(), partial(as_list.step, grads)),
                  Contender("cpu-flat", all_threads(), partial(as_flat.step, flat_grad))]
    if peers:
        import torch  # optional

        from .. import torch as fastadam_torch  # imports torch: optional

        torch.set_num_threads(all_threads())
        for name, cls, kw in (("torch-fused-list", torch.optim.Adam, {"fused": True}),
                              ("fastadam.torch-list", fastadam_torch.Adam, {})):
            tensors = [torch.from_numpy(p.copy()) for p in params]
            for t, g in zip(tensors, grads):
                t.grad = torch.from_numpy(g)
            contenders.append(Contender(name, all_threads(), cls(tensors, **kw).step))
    t = measure(contenders, repeats)
    return [Row(backend=c.backend, threads=c.threads, n=n, dtype="float32",
                config=f"{count}x{size}", median_s=t.median(c),
                gb_per_s=28 * n / t.median(c) / 1e9, speedup_vs_numpy=None,
                roofline_fraction=t.speedup(contenders[1], c), compile_s=None, repeats=repeats,
                bytes_per_element=28.0)
            for c in contenders]


def call_rows(*, repeats: int, peers: bool, n: int = 1024, calls: int = 2000) -> list[Row]:
    """The cost of one call on a small buffer: ``Adam.step`` on ``n`` float32 elements back
    to back (``calls`` per sample, samples interleaved), against the bare kernel call and,
    with ``peers``, torch's fused step. Rows hold seconds per call; '% roofline' is % of
    the bare kernel's speed."""
    rng = np.random.default_rng(0)
    param, grad = (rng.standard_normal(n).astype(np.float32) for _ in range(2))
    opt = Adam(param.copy())
    slot = opt._slots[0]
    kernel = dense.fused_kernel(slot.flags._replace(grad="float32"))
    views = list(kernel_views((slot.flat, grad, *slot.state)))
    coef = np.array(coefficients(opt._groups[0][0], 1), np.float32)
    quiet = np.uint32(0)  # no stochastic rounding
    steps = [("cpu-kernel", lambda: kernel(*views, coef, quiet)),
             ("Adam.step", partial(opt.step, grad))]
    if peers:
        import torch  # optional

        torch.set_num_threads(all_threads())
        p = torch.from_numpy(param.copy())
        p.grad = torch.from_numpy(grad)
        steps.append(("torch-fused", torch.optim.Adam([p], fused=True).step))

    def batch(fn):
        def run():
            for _ in range(calls):
                fn()
        return run

    contenders = [Contender(name, all_threads(), batch(fn)) for name, fn in steps]
    t = measure(contenders, repeats)
    return [Row(backend=c.backend, threads=c.threads, n=n, dtype="float32", config="call",
                median_s=t.median(c) / calls, gb_per_s=28 * n * calls / t.median(c) / 1e9,
                speedup_vs_numpy=None, roofline_fraction=t.speedup(contenders[0], c),
                compile_s=None, repeats=repeats, bytes_per_element=28.0)
            for c in contenders]


def clip_rows(n: int, *, repeats: int, peers: bool, rng) -> list[Row]:
    """Clipping by the global norm at ``n`` float32 elements: ``Adam(max_grad_norm)`` (one
    extra read of the gradient: 32 bytes per element) against the unclipped step, a
    memory-only pass of the clipped step's traffic and, with ``peers``, torch's
    ``clip_grad_norm_`` then ``AdamW(fused=True)`` on the same memory. '% roofline': %
    of the memory-only pass's speed; 'x clipped' (the table's ratio column) is x the clipped
    step's time."""
    param = rng.standard_normal(n).astype(np.float32)
    grad = (3 * rng.standard_normal(n)).astype(np.float32)
    threads = all_threads()
    clipped, plain = Adam(param, max_grad_norm=1.0), Adam(param.copy())
    scratch = [np.zeros(n, np.uint32) for _ in range(3)]
    limit = memory_only_kernel(2, 3)
    bits = grad.view(np.uint32)
    contenders = [Contender("cpu-clipped", threads, partial(clipped.step, grad)),
                  Contender("cpu-unclipped", threads, partial(plain.step, grad)),
                  Contender("roofline", threads, lambda: limit(bits, bits, *scratch))]
    if peers:
        import torch  # optional

        torch.set_num_threads(threads)
        p = torch.nn.Parameter(torch.from_numpy(param.copy()))
        g = torch.from_numpy(grad.copy())
        opt = torch.optim.AdamW([p], fused=True)

        def torch_step():
            p.grad = g  # clip_grad_norm_ scales in place: the same memory each time
            torch.nn.utils.clip_grad_norm_([p], 1.0)
            opt.step()

        contenders.append(Contender("torch-clip+fused", threads, torch_step))
    t = measure(contenders, repeats)
    mine = contenders[0]
    return [Row(backend=c.backend, threads=c.threads, n=n, dtype="float32", config="clip",
                median_s=t.median(c), gb_per_s=32 * n / t.median(c) / 1e9,
                speedup_vs_numpy=t.speedup(mine, c) if c is not mine else None,
                roofline_fraction=None if c.backend == "roofline"
                else t.speedup(contenders[2], c), compile_s=None, repeats=repeats,
                bytes_per_element=32.0) for c in contenders]


def transformer_rows(dtypes: list[str], *, repeats: int) -> list[Row]:
    """A 6-layer ``torch.nn.TransformerEncoder`` (d_model 256, 72 tensors): the optimizer
    step of ``fastadam.torch.AdamW`` against ``torch.optim.AdamW(fused=True)`` on the same
    model's parameters and gradients, per param dtype. '% roofline' is % of torch fused."""
    import torch  # optional

    from .. import torch as fastadam_torch  # imports torch: optional

    torch.set_num_threads(all_threads())
    rows = []
    for dtype in dtypes:
        contenders = []
        for name, cls, kw in (("torch-fused", torch.optim.AdamW, {"fused": True}),
                              ("fastadam.torch", fastadam_torch.AdamW, {})):
            torch.manual_seed(0)
            layer = torch.nn.TransformerEncoderLayer(256, 8, 1024, batch_first=True)
            model = torch.nn.TransformerEncoder(layer, 6, enable_nested_tensor=False)
            params = list(model.to(getattr(torch, dtype)).parameters())
            for p in params:
                p.grad = torch.randn_like(p)
            contenders.append(Contender(name, all_threads(), cls(params, **kw).step))
        n = sum(p.numel() for p in params)
        t = measure(contenders, repeats)
        per_element = 14 if dtype == "float32" else 7  # param, grad, m, v: read; p, m, v: write
        rows += [Row(backend=c.backend, threads=c.threads, n=n, dtype=dtype,
                     config=f"transformer-{len(params)}", median_s=t.median(c),
                     gb_per_s=2 * per_element * n / t.median(c) / 1e9,
                     speedup_vs_numpy=None, roofline_fraction=t.speedup(contenders[0], c),
                     compile_s=None, repeats=repeats, bytes_per_element=2.0 * per_element)
                 for c in contenders]
    return rows
