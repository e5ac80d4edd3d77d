import os

import numpy as np
import pytest

# 1K to 64M elements; FASTADAM_BENCH_MAX caps the largest (e.g. 1e6 for a quick look).
ALL_SIZES = [1 << 10, 1 << 14, 1 << 18, 1 << 22, 1 << 24, 1 << 26]
SIZES = [n for n in ALL_SIZES if n <= float(os.environ.get("FASTADAM_BENCH_MAX", 1 << 26))]


@pytest.fixture(scope="module")
def buffers():
    """One set of float32 arrays per size, shared by every contender of that size."""
    cache = {}

    def get(n):
        if n not in cache:
            cache.clear()  # keep one size in memory at a time
            rng = np.random.default_rng(n)
            cache[n] = {
                "param": rng.standard_normal(n).astype(np.float32),
                "grad": rng.standard_normal(n).astype(np.float32),
                "m": np.zeros(n, np.float32),
                "v": np.zeros(n, np.float32),
                "scratch": [np.ones(n, np.float32) for _ in range(3)],
            }
        return cache[n]

    return get
