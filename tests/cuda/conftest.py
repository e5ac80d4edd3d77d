"""CUDA tests: on numba's simulator (NUMBA_ENABLE_CUDASIM=1, own process) or a real GPU."""

import os

import pytest

SIMULATOR = os.environ.get("NUMBA_ENABLE_CUDASIM") == "1"


def _gpu_ready() -> bool:
    try:
        from numba import cuda
    except ImportError:
        if SIMULATOR and os.environ.get("CI"):
            raise  # CI must run these: numba-cuda is part of the test install
        return False
    return SIMULATOR or cuda.is_available()


def pytest_configure(config):
    if SIMULATOR:  # NumPy scalars warn where GPU arithmetic wraps (uint adds) or makes NaN
        config.addinivalue_line("filterwarnings", "ignore::RuntimeWarning")


def pytest_collection_modifyitems(config, items):
    if _gpu_ready():
        return
    skip = pytest.mark.skip(reason="no GPU: run with NUMBA_ENABLE_CUDASIM=1 (nox -s tests does)")
    for item in items:
        if "tests/cuda" in str(item.fspath).replace(os.sep, "/"):
            item.add_marker(skip)
