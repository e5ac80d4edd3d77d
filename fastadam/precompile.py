"""``python -m fastadam precompile``: fill the kernel cache ahead of time.

For clusters and container images: each variant (param dtype x options x one array or
a list) takes one tiny step, which compiles its kernels into the cache, or finds them
there, so that training processes load instead of compiling. ``python -m fastadam
cache`` says where the cache is and what it holds; ``--clear`` empties it.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time

import numpy as np

from ._backends import cache
from ._core.bfloat16 import as_bfloat16
from ._core.dtypes import numpy_dtype
from ._core.options import KERNEL_FLAGS
from .optimizer import Adam

OPTIONS = {
    "adam": {},
    "adamw": {"weight_decay": 1e-2, "decoupled_weight_decay": True},
    **{name: {name: True} for name in KERNEL_FLAGS if name != "maximize"},  # same cost
    "skip_nonfinite": {"skip_nonfinite": True},
    "master": {"master_weights": True},
    "8bit": {"state_dtype": "8bit"},
}
SIXTEEN_BIT_ONLY = ("master",)
DEFAULT_DTYPES = ("float32", "bfloat16", "float16")
DEFAULT_OPTIONS = ("adam", "adamw")
LAYOUTS = ("array", "list")


def variants(dtypes, options) -> list[tuple[str, str, str]]:
    """(dtype, option, layout) of every variant to compile."""
    return [(d, o, layout) for d in dtypes for o in options for layout in LAYOUTS
            if o not in SIXTEEN_BIT_ONLY or d in ("float16", "bfloat16")]


def step_once(dtype: str, option: str, layout: str, device: bool = False) -> None:
    """One tiny step of that variant (on the GPU when ``device``): its kernels compile
    or load."""
    rng = np.random.default_rng(0)
    n = 5000 if option == "8bit" else 64  # 8-bit state needs 4096 elements or more
    arrays = [rng.standard_normal(n).astype(numpy_dtype(dtype)) for _ in range(2)]
    grads = [rng.standard_normal(n).astype(a.dtype) for a in arrays]
    if device:
        from numba import cuda  # optional: only with --cuda

        def on_device(a):
            if dtype != "bfloat16":
                return cuda.to_device(a)
            return as_bfloat16(cuda.to_device(a.view(np.uint16)))

        arrays, grads = [on_device(a) for a in arrays], [on_device(g) for g in grads]
    if layout == "array":
        Adam(arrays[0], **OPTIONS[option]).step(grads[0])
    else:
        Adam(arrays, **OPTIONS[option]).step(grads)


def _listed(value: str, allowed, name: str, parser) -> list[str]:
    items = [s.strip() for s in value.split(",") if s.strip()]
    bad = [s for s in items if s not in allowed]
    if bad or not items:
        parser.error(f"--{name}: unknown {bad or value!r}; choose from {', '.join(allowed)}")
    return items


def main(argv: list[str] | None = None) -> int:
    """The ``python -m fastadam precompile`` command."""
    p = argparse.ArgumentParser(
        prog="python -m fastadam precompile",
        description="Compile fastadam's kernels into the on-disk cache ahead of time.")
    p.add_argument("--dtypes", default=None,
                   help=f"param dtypes, from {', '.join(DEFAULT_DTYPES + ('float64',))} "
                        "(default: float32, and bfloat16 and float16 where ml_dtypes is "
                        "installed)")
    p.add_argument("--options", default=",".join(DEFAULT_OPTIONS),
                   help=f"from {', '.join(OPTIONS)} (default: adam,adamw)")
    p.add_argument("--cuda", action="store_true", help="the GPU kernels too (needs a GPU)")
    args = p.parse_args(argv)
    dtypes = (_listed(args.dtypes, DEFAULT_DTYPES + ("float64",), "dtypes", p) if args.dtypes
              else [d for d in DEFAULT_DTYPES if d == "float32" or _has_ml_dtypes()])
    if "bfloat16" in dtypes and not _has_ml_dtypes():
        p.error("bfloat16 needs ml_dtypes: pip install ml_dtypes")
    options = _listed(args.options, OPTIONS, "options", p)
    where = cache.directory()
    if not cache.enabled() or where is None:
        print("fastadam's kernel cache is off (FASTADAM_CACHE=0, or no writable directory): "
              "nothing to fill", file=sys.stderr)
        return 1
    todo = [(v, False) for v in variants(dtypes, options)]
    if args.cuda:
        todo += [(v, True) for v in variants(dtypes, options)]
    print(f"fastadam kernel cache: {where}")
    started = time.perf_counter()
    for i, ((dtype, option, layout), device) in enumerate(todo, 1):
        t0 = time.perf_counter()
        step_once(dtype, option, layout, device)
        print(f"[{i}/{len(todo)}] {'cuda' if device else 'cpu'} {dtype} {option}, one "
              f"{layout}: {time.perf_counter() - t0:.2f} s", flush=True)
    print(f"done in {time.perf_counter() - started:.1f} s; {_summary(where)}")
    return 0


def cache_main(argv: list[str] | None = None) -> int:
    """The ``python -m fastadam cache`` command: where the cache is, its size; --clear."""
    p = argparse.ArgumentParser(prog="python -m fastadam cache",
                                description="Show (or clear) fastadam's kernel cache.")
    p.add_argument("--clear", action="store_true", help="delete every cached kernel")
    args = p.parse_args(argv)
    where = cache.directory()
    if where is None:
        print("fastadam's kernel cache is off (FASTADAM_CACHE=0, or no writable directory)")
        return 0
    if args.clear:
        shutil.rmtree(where, ignore_errors=True)
        print(f"cleared {where}")
        return 0
    print(f"{where}: {_summary(where)}")
    return 0


def _summary(where) -> str:
    entries = list(where.glob("*.nbi"))
    size = sum(f.stat().st_size for f in where.iterdir() if f.is_file())
    return f"{len(entries)} kernels, {size / 1e6:.1f} MB"


def _has_ml_dtypes() -> bool:
    try:
        import ml_dtypes  # noqa: F401  (optional: bfloat16)
    except ImportError:
        return False
    return True
