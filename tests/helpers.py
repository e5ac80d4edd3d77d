"""Shared test data: option table, sizes, random state, optional references."""

import importlib
import os

import numpy as np
import pytest

# Odd sizes: ragged tails for every vector width and thread split, and a 2-D shape.
SIZES = [1, 7, 33, 1000, 4099]
DTYPES = [np.float32, np.float64]
OPTIONS = {
    "plain": {},
    "l2": {"weight_decay": 0.05},
    "decoupled": {"weight_decay": 0.05, "decoupled_weight_decay": True},
    "amsgrad": {"amsgrad": True},
    "maximize": {"maximize": True},
    "all": {
        "weight_decay": 0.05,
        "amsgrad": True,
        "maximize": True,
        "betas": (0.8, 0.99),
        "eps": 1e-6,
        "lr": 3e-2,
    },
    "variants": {"eps_root": 1e-6, "nesterov": True, "bias_correction": False, "lr": 1e-2},
    "nesterov_amsgrad": {"nesterov": True, "amsgrad": True, "eps_root": 1e-8, "lr": 1e-2},
    "decouple_lr": {"weight_decay": 0.1, "decouple_lr": True, "max_lr": 0.05, "lr": 0.02},
    "grad_scale": {"grad_scale": 1024.0, "weight_decay": 0.01},
    "all_decoupled": {
        "weight_decay": 0.05,
        "decoupled_weight_decay": True,
        "amsgrad": True,
        "maximize": True,
        "lr": 1e-2,
    },
}


# The low-bit steps' options (8 and 4 bits): every kernel option, once each.
LOW_BIT_OPTIONS = {
    "plain": {},
    "adamw": {"weight_decay": 0.1, "decoupled_weight_decay": True},
    "l2_maximize": {"weight_decay": 0.05, "maximize": True},
    "amsgrad": {"amsgrad": True},
    "nesterov_eps_root": {"nesterov": True, "eps_root": 1e-8},
    "grad_scale": {"grad_scale": 512.0},
}


def make_state(rng, shape, dtype, amsgrad=True):
    """Random param/grad and a non-trivial state, as after a few steps."""
    param = rng.standard_normal(shape).astype(dtype)
    grad = rng.standard_normal(shape).astype(dtype)
    m = (0.1 * rng.standard_normal(shape)).astype(dtype)
    v = (0.01 * rng.random(shape)).astype(dtype)
    v_max = (v + 0.01 * rng.random(shape)).astype(dtype) if amsgrad else None
    return param, grad, m, v, v_max


def optional(module: str):
    """Import an optional reference; in CI (CI=true) a missing one fails instead of skipping."""
    if os.environ.get("CI"):
        return importlib.import_module(module)
    return pytest.importorskip(module)


# The options torch.optim.Adam/AdamW have (the rest are optax's and optimi's).
TORCH_OPTIONS = {k: OPTIONS[k] for k in
                 ("plain", "l2", "decoupled", "amsgrad", "maximize", "all", "all_decoupled")}


def assert_same_floats(got, want, msg=""):
    """Bit-equal float32 arrays, except that any NaN matches any NaN."""
    nan = np.isnan(want)
    np.testing.assert_array_equal(np.isnan(got), nan, err_msg=msg)
    bits = got.view(np.uint32)[~nan], want.view(np.uint32)[~nan]
    np.testing.assert_array_equal(*bits, err_msg=msg)


# Relative tolerance of one step against the float64 formula: a few roundings.
RTOL = {np.float32: 4e-7, np.float64: 1e-15}


def assert_close(got, want, dtype):
    """``got`` is ``want`` to a few roundings of ``dtype``, relative to the largest value."""
    rtol = RTOL[dtype]
    np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol * np.abs(want).max())


def counting(monkeypatch, name, module="_backends.cuda.dense"):
    """Record the launch configurations of ``fastadam.<module>.<name>`` kernels."""
    import importlib

    kernels = importlib.import_module(f"fastadam.{module}")
    launches = []
    real = getattr(kernels, name)

    class Counting:
        def __init__(self, kernel):
            self.kernel = kernel

        def __getitem__(self, config):
            launches.append(config)
            return self.kernel[config]

    monkeypatch.setattr(kernels, name, lambda *args, **kwargs: Counting(real(*args, **kwargs)))
    return launches


def on_device(a):
    """A device copy of host array ``a`` (bfloat16 copied as its bits, then declared)."""
    from numba import cuda

    import fastadam

    if a.dtype.itemsize == 2 and a.dtype.kind == "V":  # ml_dtypes' bfloat16
        return fastadam.as_bfloat16(cuda.to_device(a.view(np.uint16)))
    return cuda.to_device(a)


def to_host(d, dtype):
    """A host copy of device array ``d``, as ``dtype``."""
    return d.copy_to_host().view(dtype)
