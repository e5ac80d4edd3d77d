"""The benchmark's GPU contenders run (on the simulator: tiny, untimed)."""

import numpy as np
import pytest

bench = pytest.importorskip("fastadam.bench")
cuda = pytest.importorskip("numba.cuda")


@pytest.mark.parametrize("config", ["adam", "amsgrad"])
def test_cuda_contenders_run(config):
    rng = np.random.default_rng(0)
    contenders = bench.cuda_contenders(64, "float32", config, rng, peers=False)
    assert [c.backend for c in contenders] == ["cuda", "cuda-roofline", "cuda-copy"]
    medians, first = bench.measure(contenders, repeats=1)
    assert all(t > 0 for t in medians.values())
