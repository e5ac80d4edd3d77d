"""The device check's section on the counted step's coefficients: computed on the GPU in
float64 from the step count kept there (``cuda/dense.counted_coefficients``), against
the host's ``hyper.coefficients``, each rounded to float32, in ulps.

Imports ``numba.cuda`` at its top (the simulator needs its kernels in such a module)."""

from __future__ import annotations

import numpy as np
from numba import cuda

from .._backends.cuda.dense import counted_coefficients, counted_scalars
from .._core.hyper import STEP_DEPENDENT, coefficients, flags, hyper

NAMES = ("m_coef", "g_coef", "scaled_eps_root", "scaled_eps")


def _kernel(device_coefficients):
    """``kernel(counts, inv_scale, host, terms, out)``: ``out[i]`` the step-dependent
    coefficients the counted kernels compute from ``counts[i]``."""
    first = STEP_DEPENDENT.start

    @cuda.jit
    def kernel(counts, inv_scale, host, terms, out):
        i = cuda.grid(1)
        if i < counts.size:
            coef = device_coefficients(counts[i:i + 1], inv_scale, host, terms)
            out[i, 0], out[i, 1] = coef[first], coef[first + 1]
            out[i, 2], out[i, 3] = coef[first + 2], coef[first + 3]

    return kernel


def coefficient_ulps(check) -> dict:
    """Per option set (Adam; Nesterov with eps_root; no bias correction): the largest
    float32-ulp distance between the device's step-dependent coefficients and the
    host's, over updates 1 to 10^7 (log-spaced), and the update where it occurs."""
    counts = np.unique(np.concatenate([[0], np.geomspace(
        1, 10 if check.tiny else 10**7, 8 if check.tiny else 400)]).astype(np.int64))
    cases = {"adam": {"lr": 1e-3},
             "nesterov, eps_root": {"lr": 3e-4, "betas": (0.95, 0.98), "nesterov": True,
                                    "eps_root": 1e-12},
             "no bias correction": {"lr": 1e-2, "bias_correction": False}}
    out = {}
    for name, settings in cases.items():
        h = hyper(**settings)
        f = flags(h, "float32", "float32", "float32", False, False)
        kernel = _kernel(counted_coefficients(f))
        got = np.zeros((counts.size, 4), np.float32)
        on_device = cuda.to_device(got)
        kernel[(counts.size + 127) // 128, 128](
            cuda.to_device(counts), cuda.to_device(np.ones(1, np.float32)),
            *counted_scalars(f, h), on_device)
        got = on_device.copy_to_host()
        # The device's count is the number of updates before this one: update count + 1.
        want = np.array([coefficients(h, int(c) + 1)[STEP_DEPENDENT] for c in counts],
                        np.float32)
        ulps = np.abs(got.view(np.int32).astype(np.int64) - want.view(np.int32))
        worst = np.unravel_index(int(ulps.argmax()), ulps.shape)
        out[name] = {"max ulps": int(ulps.max()), "at update": int(counts[worst[0]]) + 1,
                     "coefficient": NAMES[worst[1]],
                     "rows differing": int((ulps.max(axis=1) > 0).sum()),
                     "updates checked": int(counts.size)}
    return out
