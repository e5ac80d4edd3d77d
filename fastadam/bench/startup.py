"""Time to the first step in a new process: cold (an empty kernel cache: every kernel
compiles) and warm (the cache filled by the cold run: every kernel loads), against the
floor of any Numba program (numpy and numba imported, one cached kernel called) and,
with torch, torch's fused AdamW's own first step."""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile

# Each prints the seconds from its start (after ``import torch`` for the torch ones) to
# the end of its first step.
FASTADAM = """
import time; t0 = time.perf_counter()
import numpy as np, fastadam
p = np.random.default_rng(0).standard_normal(1 << 20).astype(np.float32)
fastadam.AdamW(p).step(np.ones_like(p))
print(time.perf_counter() - t0)
"""
FLOOR = """
import time; t0 = time.perf_counter()
import numpy as np, numba
@numba.njit(cache=True)
def f(x):
    return x + 1
f(np.ones(3))
print(time.perf_counter() - t0)
"""
TORCH = """
import torch, time, sys; t0 = time.perf_counter()
torch.manual_seed(0)
layers = [torch.nn.Linear(256, 512), torch.nn.Linear(512, 256),
          torch.nn.Linear(256, 256).to(torch.bfloat16), torch.nn.Linear(256, 64).to(torch.bfloat16)]
params = [p for layer in layers for p in layer.parameters()]
for p in params:
    p.grad = torch.randn_like(p)
if sys.argv[1] == "torch":
    torch.optim.AdamW(params, fused=True).step()
else:
    import fastadam.torch
    fastadam.torch.AdamW(params).step()
print(time.perf_counter() - t0)
"""


def _seconds(code: str, env: dict, *args: str) -> float:
    # A file, not ``-c``: Numba caches only functions defined in files.
    path = os.path.join(env["FASTADAM_CACHE_DIR"] + "-scripts", f"{abs(hash(code))}.py")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(code)
    out = subprocess.run([sys.executable, path, *args], env=env, capture_output=True,
                         text=True, check=True, timeout=600)
    return float(out.stdout.split()[-1])


def startup_seconds(torch: bool, repeats: int = 3) -> dict:
    """Seconds to the first step: {"cold", "warm", "floor"}, and with ``torch``
    {"torch_cold", "torch_warm", "torch_fused"}; warm ones the median of ``repeats``."""
    with tempfile.TemporaryDirectory() as where:
        env = {**os.environ, "FASTADAM_CACHE_DIR": os.path.join(where, "fastadam"),
               "NUMBA_CACHE_DIR": os.path.join(where, "numba")}
        out = {"cold": _seconds(FASTADAM, env)}
        _seconds(FLOOR, env)  # fills numba's cache for the floor
        if torch:
            out["torch_cold"] = _seconds(TORCH, env, "fastadam")
        warm, floor, torch_warm, fused = [], [], [], []
        for _ in range(repeats):  # interleaved
            warm.append(_seconds(FASTADAM, env))
            floor.append(_seconds(FLOOR, env))
            if torch:
                torch_warm.append(_seconds(TORCH, env, "fastadam"))
                fused.append(_seconds(TORCH, env, "torch"))
        out["warm"], out["floor"] = statistics.median(warm), statistics.median(floor)
        if torch:
            out["torch_warm"], out["torch_fused"] = (statistics.median(torch_warm),
                                                     statistics.median(fused))
    return out


def format_startup(s: dict) -> str:
    """The report's lines."""
    lines = [f"First step in a new process (1M float32, fastadam.AdamW, from interpreter "
             f"start): cold {s['cold']:.2f} s (compiles), warm {s['warm']:.2f} s (cached); "
             f"floor {s['floor']:.2f} s (numpy + numba + one cached kernel)"]
    if "torch_warm" in s:
        lines.append(f"First step of fastadam.torch.AdamW (float32 + bfloat16 layers, after "
                     f"import torch): cold {s['torch_cold']:.2f} s, warm "
                     f"{s['torch_warm']:.2f} s; torch.optim.AdamW(fused=True) "
                     f"{s['torch_fused']:.2f} s")
    return "\n".join(lines)
