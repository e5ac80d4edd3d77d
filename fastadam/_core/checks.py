"""Checks on scalar arguments, run before any kernel writes.

Each function either returns a normalized value or raises a ``TypeError`` /
``ValueError`` that names the offending argument.
"""

from __future__ import annotations

import math
import numbers

import numpy as np

from .gpu import to_stream

BACKENDS = ("auto", "numpy", "cpu", "cuda")


def positive(name: str, value) -> float:
    """A finite real > 0."""
    value = real(name, value)
    if value == 0.0:
        raise ValueError(f"{name} must be > 0, got {value}")
    return value


def real(name: str, value, *, below_one: bool = False, negative: bool = False) -> float:
    """A finite real >= 0 (any sign with ``negative``; < 1 when ``below_one``), as a Python
    float."""
    if type(value) is not float:  # the common case skips the slow ABC check
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
        value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    if value < 0.0 and not negative:
        raise ValueError(f"{name} must be >= 0, got {value}")
    if below_one and value >= 1.0:
        raise ValueError(f"{name} must be in [0, 1), got {value}")
    return value


def max_grad_norm(value) -> float | None:
    """None (no clipping), or the largest total gradient norm: a finite real >= 0."""
    return None if value is None else real("max_grad_norm", value)


def seed(value) -> int:
    """A stochastic-rounding seed: an int (Python's or NumPy's, not a bool), any size."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"seed must be an int, got {type(value).__name__}")
    return int(value) % (1 << 64)


def grad_scale(value) -> float | None:
    """None, or a finite loss scale > 0 that the gradients are divided by."""
    return None if value is None else positive("grad_scale", value)


def betas(value) -> tuple[float, float]:
    """A pair (beta1, beta2), each in [0, 1)."""
    if isinstance(value, (str, bytes)) or not hasattr(value, "__len__") or len(value) != 2:
        raise TypeError(f"betas must be a pair (beta1, beta2), got {value!r}")
    return real("betas[0]", value[0], below_one=True), real("betas[1]", value[1], below_one=True)


def flag(name: str, value) -> bool:
    """A bool (Python or NumPy)."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__}")
    return bool(value)


def step(value) -> int:
    """The 1-based count of the update about to be applied."""
    if type(value) is int and value >= 1:
        return value
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"step must be an int >= 1, got {type(value).__name__}")
    value = int(value)
    if value < 1:
        raise ValueError(f"step must be an int >= 1, got {value}")
    return value


def count(name: str, value, least: int = 0) -> int:
    """An int (not a bool) >= ``least``."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < least:
        raise ValueError(f"{name} must be an int >= {least}, got {value}")
    return int(value)


def backend(name) -> str:
    """One of ``BACKENDS``."""
    if name not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {name!r}")
    return name


def num_threads(value) -> int | None:
    """None (all of Numba's threads) or an int in [1, NUMBA_NUM_THREADS]."""
    if value is None:
        return None
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"num_threads must be None or an int, got {type(value).__name__}")
    from numba import config  # numba loads on the first compiled step, not at import

    if not 1 <= value <= config.NUMBA_NUM_THREADS:
        raise ValueError(f"num_threads must be in [1, {config.NUMBA_NUM_THREADS}], got {value}")
    return int(value)


def stream(value, kind: str):
    """A CUDA stream for the cuda backend (None: the default stream); None elsewhere."""
    if kind != "cuda":
        if value is not None:
            raise ValueError(f"stream is for backend='cuda' only; this step runs on {kind!r}")
        return None
    return to_stream(value)
