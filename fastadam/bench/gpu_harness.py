"""What the device check is built from: sections recorded in one JSON file, CUDA-event
timing of interleaved contenders, and host arrays put on the device."""

from __future__ import annotations

import json
import os
import statistics
import time
import traceback

import numpy as np

from .. import as_bfloat16


class Check:
    """Runs sections, prints them, and keeps every result (or error) in one JSON file."""

    def __init__(self, out: str, tiny: bool) -> None:
        self.path, self.tiny, self.record = os.path.join(out, "gpucheck.json"), tiny, {}
        os.makedirs(out, exist_ok=True)

    def section(self, name: str, fn) -> None:
        print(f"== {name}", flush=True)
        started = time.perf_counter()
        try:
            result = fn(self)
            self.record[name] = {"ok": True, "result": result}
            print(json.dumps(result, indent=1, default=str), flush=True)
        except Exception as e:  # one section's failure is its record, not the end
            self.record[name] = {"ok": False, "error": f"{type(e).__name__}: {e}",
                                 "traceback": traceback.format_exc()}
            print(f"FAILED: {type(e).__name__}: {e}", flush=True)
        self.record[name]["seconds"] = round(time.perf_counter() - started, 2)
        with open(self.path, "w") as f:
            json.dump(self.record, f, indent=1, default=str)


def torch_cuda():
    try:
        import torch  # optional: the peers
    except ImportError:
        return None
    return torch if torch.cuda.is_available() else None


def timed(contenders: dict, repeats: int, calls: int = 1) -> dict:
    """Median milliseconds per call of each contender (interleaved, after a warm-up):
    ``calls`` back-to-back calls timed together, so the device need not wait for the
    host between them."""
    from numba import cuda  # numba-cuda: the device

    torch = torch_cuda()
    for fn in contenders.values():
        fn()
    samples = {k: [] for k in contenders}
    names = list(contenders)
    for r in range(repeats):
        for k in names[r % len(names):] + names[:r % len(names)]:
            if torch is not None:
                start, end = (torch.cuda.Event(enable_timing=True) for _ in range(2))
                start.record()
                for _ in range(calls):
                    contenders[k]()
                end.record()
                end.synchronize()
                samples[k].append(start.elapsed_time(end) / calls)
            else:
                t0 = time.perf_counter()
                for _ in range(calls):
                    contenders[k]()
                cuda.synchronize()
                samples[k].append((time.perf_counter() - t0) * 1e3 / calls)
    return {k: round(statistics.median(v), 4) for k, v in samples.items()}


def device_array(host):
    from numba import cuda  # numba-cuda: the device

    if host.dtype.itemsize == 2 and host.dtype.kind == "V":  # bfloat16: its bits, declared
        return as_bfloat16(cuda.to_device(host.view(np.uint16)))
    return cuda.to_device(host)
