"""What the benchmark runs: the Adam configurations, dtypes and sizes, and the defaults
that fit this machine's memory."""

from __future__ import annotations

import os

from .._core.dtypes import numpy_dtype
from .._core.options import KERNEL_FLAGS

# Adam keyword arguments of each configuration, on top of the defaults a user gets:
# on 16-bit params those include Kahan summation, so "adam" is what ``Adam(params)`` does
# and "no_kahan" rounds to nearest.
CONFIGS = {
    "adam": {},
    "adamw": {"weight_decay": 1e-2, "decoupled_weight_decay": True},
    **{name: {name: True} for name in KERNEL_FLAGS},  # each option compiled into the kernel
    "skip_nonfinite": {"skip_nonfinite": True},
    "kahan": {"kahan_summation": True},
    "no_kahan": {"kahan_summation": False},
    "master": {"master_weights": True},
    "bf16_state": {"state_dtype": "bfloat16"},
    "8bit": {"state_dtype": "8bit"},
    "4bit": {"state_dtype": "4bit"},
    "stochastic": {"stochastic_rounding": True},
    "schedulefree": {},  # the other update rules, with their defaults (``VARIANTS``)
    "ademamix": {},
}

# Configurations that step another optimizer than Adam: schedule-free AdamW, AdEMAMix.
VARIANTS = ("schedulefree", "ademamix")


SIXTEEN_BIT_ONLY = ("kahan", "no_kahan", "master", "stochastic")


DTYPES = ("float32", "float64", "bfloat16", "float16")


DEFAULT_DTYPES = ("float32", "bfloat16", "float16")


# Every option on every param dtype, each with the user's defaults, so no cliff can hide.
_SIXTEEN_BIT_CONFIGS = ("adam", "no_kahan", "stochastic", "master", "amsgrad", "skip_nonfinite",
                        "bf16_state", "8bit", "4bit")


DEFAULT_CONFIGS = {"float32": ("adam", "adamw", "amsgrad", "skip_nonfinite", "bf16_state",
                               "8bit", "4bit"),
                   "float64": ("adam",),
                   "bfloat16": _SIXTEEN_BIT_CONFIGS,
                   "float16": _SIXTEEN_BIT_CONFIGS}


QUICK_SIZES = (1 << 20, 1 << 24)


def applies(dtype: str, config: str) -> bool:
    """Whether ``config`` exists for params of ``dtype``."""
    return config not in SIXTEEN_BIT_ONLY or dtype in ("bfloat16", "float16")


def adam_options(dtype: str, config: str) -> dict:
    """Adam keyword arguments for one configuration."""
    kw = dict(CONFIGS[config])
    if kw.get("master_weights"):
        kw["kahan_summation"] = False  # master weights replace Kahan summation
    if kw.get("state_dtype") == "bfloat16":
        kw["state_dtype"] = numpy_dtype("bfloat16")
    return kw


def available_memory() -> int:
    """Bytes of memory available to this process (MemAvailable), or physical memory."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def largest_size(dtype: str, peers: bool, memory: int) -> int:
    """The largest power-of-two size whose arrays, baseline temporaries included, fit."""
    item = max(numpy_dtype(dtype).itemsize, 4)  # 16-bit params keep float32 moments
    # param, grad, m, v, v_max; as many roofline buffers; ~4 NumPy temporaries; torch's moments.
    arrays = 5 + 5 + 4 + (2 if peers else 0)
    n = int(0.8 * memory) // (arrays * item)
    return 1 << (n.bit_length() - 1)


def default_sizes(dtype: str, peers: bool) -> list[int]:
    """1K elements, then every 4x, up to what memory allows (256M float32 in 24 GiB)."""
    top = largest_size(dtype, peers, available_memory())
    return [1 << k for k in range(10, 29, 2) if 1 << k <= top]
