"""``python -m fastadam.bench.gpucheck [--tiny] [--out DIR]``: the checks and figures that
need a GPU, in one command (``bench/gpu_check.sh`` adds the CUDA tests before it).

Sections, each timed, printed as it goes and recorded in ``DIR/gpucheck.json`` (its
error, if it fails, and the rest still runs): the GPU benchmark rows (flat buffers, 16-bit
params, 8-bit state, steps queued back to back, a GPT-2-small parameter list through the
torch drop-in, a list of 1000 arrays against one buffer, the cost of a call, the clipped
step), one step past
32-bit indexing, bad input on the device, the counted step's coefficients (device against
host, in ulps), and the CPU kernel's thread scaling. GPU times
are CUDA-event medians of interleaved repeats (wall clock with a synchronize where torch
is absent, as on numba's simulator, where ``--tiny`` shrinks everything to run the code
paths, not to time them).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

from .. import Adam, AdamW, AdamWScheduleFree, AdEMAMix, as_bfloat16
from .gpu_harness import Check, device_array, timed, torch_cuda
from .scaling import cpu_scaling

GPT2_SMALL = ([(50257, 768), (1024, 768)]
              + [s for _ in range(12) for s in [(768,), (768,), (768, 2304), (2304,), (768, 768),
                                               (768,), (768,), (768,), (768, 3072), (3072,),
                                               (3072, 768), (768,)]]
              + [(768,), (768,)])  # 148 tensors, 124M params


def flat_rows(check: Check) -> dict:
    """Flat float32 buffers and bfloat16 params (float32 state, and bfloat16 state as
    torch keeps it), against torch's fused Adam and a device copy of the same bytes."""
    torch, out = torch_cuda(), {}
    sizes = [1 << 10] if check.tiny else [1 << 20, 1 << 26, 1 << 28]
    rng = np.random.default_rng(0)
    import ml_dtypes  # optional: bfloat16

    for n in sizes:
        for dtype in ("float32", "bfloat16"):
            np_dtype = np.dtype(ml_dtypes.bfloat16) if dtype == "bfloat16" else np.float32
            p = device_array(rng.standard_normal(n).astype(np_dtype))
            g = device_array(rng.standard_normal(n).astype(np_dtype))
            moved = {"fastadam": 28 * n}
            if dtype == "bfloat16":  # no Kahan buffer: float32 moments, or 16-bit ones
                mine = Adam(p, kahan_summation=False)
                p16 = device_array(rng.standard_normal(n).astype(np_dtype))
                bf16_state = Adam(p16, kahan_summation=False, state_dtype=ml_dtypes.bfloat16)
                contenders = {"fastadam": lambda o=mine, g=g: o.step(g),
                              "fastadam bf16 state": lambda o=bf16_state, g=g: o.step(g)}
                moved = {"fastadam": 26 * n, "fastadam bf16 state": 14 * n}
            else:
                mine = Adam(p)
                contenders = {"fastadam": lambda o=mine, g=g: o.step(g)}
            if torch is not None:
                tp = torch.nn.Parameter(torch.randn(n, device="cuda", dtype=getattr(torch, dtype)))
                tp.grad = torch.randn_like(tp)
                contenders["torch-fused"] = torch.optim.Adam([tp], fused=True).step
                moved["torch-fused"] = tp.element_size() * 7 * n  # its moments in its dtype
                src = torch.empty(moved["fastadam"] // 2, dtype=torch.uint8, device="cuda")
                dst = torch.empty_like(src)
                contenders["device-copy"] = lambda d=dst, s=src: d.copy_(s)
                moved["device-copy"] = moved["fastadam"]
            times = timed(contenders, 2 if check.tiny else 20)
            out[f"{dtype} {n}"] = {k: {"ms": v, "GB/s": round(moved[k] / v / 1e6, 1)}
                                   for k, v in times.items()}
    return out


def back_to_back_rows(check: Check) -> dict:
    """Ten float32 steps queued back to back, per step: the device's time when the host
    runs ahead (one step timed alone also holds the host's launch path)."""
    torch, out = torch_cuda(), {}
    rng = np.random.default_rng(4)
    for n in [1 << 10] if check.tiny else [1 << 20, 1 << 26]:
        p, g = (device_array(rng.standard_normal(n).astype(np.float32)) for _ in range(2))
        mine = Adam(p)
        contenders = {"fastadam": lambda o=mine, g=g: o.step(g)}
        if torch is not None:
            tp = torch.nn.Parameter(torch.randn(n, device="cuda"))
            tp.grad = torch.randn_like(tp)
            contenders["torch-fused"] = torch.optim.Adam([tp], fused=True).step
        out[str(n)] = timed(contenders, 2 if check.tiny else 10, calls=10)
    return out


def eight_bit_rows(check: Check) -> dict:
    """8-bit and 4-bit states (16 and 14 bytes per float32 element moved) against torch's
    fused float32 Adam (28) and a device copy of the 8-bit step's 16 bytes per element."""
    torch, out = torch_cuda(), {}
    rng = np.random.default_rng(1)
    for n in [1 << 12] if check.tiny else [1 << 26, 1 << 28]:
        p, g = (device_array(rng.standard_normal(n).astype(np.float32)) for _ in range(2))
        n4 = 512 if check.tiny else n  # (the simulator: a few blocks)
        p4, g4 = (device_array(rng.standard_normal(n4).astype(np.float32)) for _ in range(2))
        eight, four = Adam(p, state_dtype="8bit"), Adam(p4, state_dtype="4bit")
        contenders = {"fastadam-8bit": lambda o=eight, g=g: o.step(g),
                      "fastadam-4bit": lambda o=four, g=g4: o.step(g)}
        moved = {"fastadam-8bit": 16 * n, "fastadam-4bit": 14 * n4}
        if torch is not None:
            tp = torch.nn.Parameter(torch.randn(n, device="cuda"))
            tp.grad = torch.randn_like(tp)
            contenders["torch-fused-fp32"] = torch.optim.Adam([tp], fused=True).step
            moved["torch-fused-fp32"] = 28 * n
            src = torch.empty(8 * n, dtype=torch.uint8, device="cuda")
            dst = torch.empty_like(src)
            contenders["device-copy"] = lambda d=dst, s=src: d.copy_(s)
            moved["device-copy"] = 16 * n
        times = timed(contenders, 2 if check.tiny else 20)
        out[str(n)] = {k: {"ms": v, "GB/s": round(moved[k] / v / 1e6, 1)}
                       for k, v in times.items()}
        del p, p4, g, g4, eight, four, contenders
    return out


def gpt2_rows(check: Check) -> dict:
    torch = torch_cuda()
    if torch is None:
        return {"skipped": "needs torch with CUDA"}
    from .. import torch as fastadam_torch  # imports torch: optional

    shapes = [tuple(max(1, d // 64) for d in s) for s in GPT2_SMALL] if check.tiny else GPT2_SMALL
    out = {}
    for dtype in (torch.float32, torch.bfloat16):
        contenders, clipped = {}, None
        for name, cls, kw in (("torch-fused", torch.optim.AdamW, {"fused": True}),
                              ("fastadam.torch", fastadam_torch.AdamW, {}),
                              ("torch clip+fused", torch.optim.AdamW, {"fused": True}),
                              ("fastadam.torch clipped", fastadam_torch.AdamW,
                               {"max_grad_norm": 1.0})):
            params = [torch.nn.Parameter(torch.randn(s, device="cuda", dtype=dtype))
                      for s in shapes]
            for q in params:
                q.grad = torch.randn_like(q)
            opt = cls(params, **kw)
            if name == "torch clip+fused":  # clip_grad_norm_ scales the same grads each time
                contenders[name] = lambda o=opt, ps=params: (
                    torch.nn.utils.clip_grad_norm_(ps, 1.0), o.step())
            else:
                contenders[name] = opt.step
            clipped = opt if "max_grad_norm" in kw else clipped
        row = timed(contenders, 2 if check.tiny else 20)
        norm = clipped.grad_norm  # a 0-d tensor on the GPU: the step did not wait for it
        row["clipped grad_norm"] = {"type": type(norm).__name__,
                                    "device": str(getattr(norm, "device", None)),
                                    "value": float(norm)}
        out[str(dtype)] = {"tensors": len(shapes),
                           "params": sum(int(np.prod(s)) for s in shapes), **row}
    return out


def list_and_call_rows(check: Check) -> dict:
    count, size = (8, 256) if check.tiny else (1000, 4096)
    rng = np.random.default_rng(2)
    arrays = [device_array(rng.standard_normal(size).astype(np.float32)) for _ in range(count)]
    grads = [device_array(rng.standard_normal(size).astype(np.float32)) for _ in range(count)]
    flat, flat_grad = (device_array(rng.standard_normal(count * size).astype(np.float32))
                       for _ in range(2))
    as_list, as_flat = Adam(arrays), Adam(flat)
    out = timed({"list": lambda: as_list.step(grads), "flat": lambda: as_flat.step(flat_grad)},
                2 if check.tiny else 20)
    from numba import cuda  # numba-cuda: the device

    # The host's time per list step, launches queued back to back: if it nears the
    # device's, step() waits somewhere (the address table's upload is the suspect).
    cuda.synchronize()
    t0, steps = time.perf_counter(), 2 if check.tiny else 200
    for _ in range(steps):
        as_list.step(grads)
    queued = time.perf_counter() - t0
    cuda.synchronize()
    out["list: host us per step, queued"] = round(queued / steps * 1e6, 1)
    out["list: us per step, done"] = round((time.perf_counter() - t0) / steps * 1e6, 1)
    small, small_grad = (device_array(rng.standard_normal(1024).astype(np.float32))
                         for _ in range(2))
    opt, calls = Adam(small), 3 if check.tiny else 2000
    opt.step(small_grad)
    cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(calls):
        opt.step(small_grad)
    cuda.synchronize()
    out["us per step at 1K"] = round((time.perf_counter() - t0) / calls * 1e6, 2)
    return out


def clip_rows(check: Check) -> dict:
    torch, n = torch_cuda(), (1 << 10) if check.tiny else (1 << 26)
    rng = np.random.default_rng(3)
    p, g = (device_array(rng.standard_normal(n).astype(np.float32)) for _ in range(2))
    clipped, plain = AdamW(p, max_grad_norm=1.0), AdamW(device_array(np.ones(n, np.float32)))
    contenders = {"clipped": lambda: clipped.step(g), "unclipped": lambda: plain.step(g)}
    if torch is not None:
        tp = torch.nn.Parameter(torch.randn(n, device="cuda"))
        tg = torch.randn_like(tp)
        opt = torch.optim.AdamW([tp], fused=True)

        def torch_step():
            tp.grad = tg
            torch.nn.utils.clip_grad_norm_([tp], 1.0)
            opt.step()

        contenders["torch clip+fused"] = torch_step
    return timed(contenders, 2 if check.tiny else 20)


def variant_rows(check: Check) -> dict:
    """Schedule-free AdamW (28 bytes per float32 element, and its eval/train pass: 12) and
    AdEMAMix (36) against the fp32 Adam step (28) and a device copy, in GB/s."""
    n = (1 << 8) if check.tiny else (1 << 26)
    rng = np.random.default_rng(4)
    made = {name: (make(device_array(rng.standard_normal(n).astype(np.float32))),
                   device_array(rng.standard_normal(n).astype(np.float32)))
            for name, make in (("adam", Adam), ("schedulefree", AdamWScheduleFree),
                               ("ademamix", AdEMAMix))}
    contenders = {name: lambda o=o, g=g: o.step(g) for name, (o, g) in made.items()}
    sf = made["schedulefree"][0]
    contenders["schedulefree eval+train"] = lambda: (sf.eval(), sf.train())
    src = device_array(np.ones(9 * n, np.float32))
    dst = device_array(np.ones(9 * n, np.float32))
    contenders["device-copy"] = lambda: dst.copy_to_device(src)
    moved = {"adam": 28 * n, "schedulefree": 28 * n, "ademamix": 36 * n,
             "schedulefree eval+train": 24 * n, "device-copy": 72 * n}
    times = timed(contenders, 2 if check.tiny else 20)
    return {k: {"ms": v, "GB/s": round(moved[k] / v / 1e6, 1)} for k, v in times.items()}


def past_32_bit_indexing(check: Check) -> dict:
    """One step on 2**31 + 3 elements (dense and 8-bit): the last ones against float64."""
    n = (1 << 12) + 3 if check.tiny else (1 << 31) + 3
    out = {}
    for state in (None, "8bit"):
        host = np.full(n, 0.25, np.float32)
        host[n - 3:] = (1.0, -2.0, 3.0)
        p, g = device_array(np.full(n, 0.5, np.float32)), device_array(host)
        del host
        opt = Adam(p, lr=1e-2, state_dtype=state)
        opt.step(g)
        last = p[n - 3:].copy_to_host().astype(np.float64)
        grad = np.array([1.0, -2.0, 3.0])
        m, v = 0.1 * grad, 0.001 * grad**2  # from zero moments
        want = 0.5 - 1e-2 * (m / 0.1) / (np.sqrt(v / 0.001) + 1e-8)
        error = float(np.abs(last - want).max())
        out[state or "dense"] = {"n": n, "last": last.tolist(), "max |error|": error,
                                 "ok": error < 1e-6 if state is None else error < 1e-3}
        del p, g, opt
    return out


def bad_input(check: Check) -> dict:
    """Refusals on the device: the named error, and nothing changed."""
    from numba import cuda  # numba-cuda: the device

    p = device_array(np.ones(64, np.float32))
    opt = Adam(p)
    out = {}
    cases = {"host gradient for device params": lambda: opt.step(np.ones(64, np.float32)),
             "bfloat16 over 32-bit storage": lambda: as_bfloat16(cuda.to_device(
                 np.ones(4, np.uint32))),
             "wrong shape": lambda: opt.step(device_array(np.ones(63, np.float32)))}
    torch = torch_cuda()
    if torch is not None:
        strided = torch.randn(64, 2, device="cuda")[:, 0]
        cases["non-contiguous CUDA tensor"] = lambda: Adam(strided)
    for name, fn in cases.items():
        try:
            fn()
            out[name] = "NOT REFUSED"
        except (TypeError, ValueError) as e:
            out[name] = f"{type(e).__name__}: {e}"
    unchanged = bool((p.copy_to_host() == 1).all()) and opt.step_count == 0
    return {"refusals": out, "params and step count unchanged": unchanged}


def coefficient_ulps(check: Check) -> dict:
    """The counted step's coefficients, device against host (``gpu_coefficients``)."""
    from .gpu_coefficients import coefficient_ulps as ulps  # numba.cuda at its top

    return ulps(check)


def inline_rows(check: Check) -> dict:
    """Adam inside a user's own kernel (``gpu_inline``)."""
    from .gpu_inline import inline_rows as rows  # numba.cuda at its top

    return rows(check)


SECTIONS = {"flat buffers and 16-bit params": flat_rows,
            "8-bit and 4-bit states": eight_bit_rows,
            "steps back to back": back_to_back_rows,
            "schedule-free AdamW and AdEMAMix": variant_rows,
            "GPT-2 small through fastadam.torch.AdamW": gpt2_rows,
            "a list of arrays, and one call": list_and_call_rows, "clipped step": clip_rows,
            "past 32-bit indexing": past_32_bit_indexing, "bad input on the device": bad_input,
            "the counted step's coefficients, device against host": coefficient_ulps,
            "Adam inside a user's kernel (fastadam.numba.cuda)": inline_rows,
            "the CPU kernel's thread scaling": cpu_scaling}


def main(argv: list[str] | None = None) -> int:
    """Run every section; exit 1 if any failed."""
    p = argparse.ArgumentParser(prog="python -m fastadam.bench.gpucheck")
    p.add_argument("--tiny", action="store_true", help="tiny sizes (numba's CUDA simulator)")
    p.add_argument("--out", default=os.environ.get("OUT", "gpucheck-out"))
    args = p.parse_args(argv)
    from numba import cuda  # numba-cuda: the device

    check = Check(args.out, args.tiny)
    # The same call on the simulator (its device has no name), so its test covers it.
    device = getattr(cuda.get_current_device(), "name", "numba's CUDA simulator")
    device = device.decode() if isinstance(device, bytes) else device
    check.record["device"] = {"gpu": str(device), "python": sys.version.split()[0]}
    for name, fn in SECTIONS.items():
        check.section(name, fn)
    failed = [k for k, v in check.record.items() if isinstance(v, dict) and v.get("ok") is False]
    print(f"done: {len(SECTIONS) - len(failed)}/{len(SECTIONS)} sections ok; {check.path}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
