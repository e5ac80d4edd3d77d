"""The thinnest call: one host params array stepped with the fewest checks that still
refuse everything a full check would (``plans.ThinHost``'s path)."""

from __future__ import annotations

import numpy as np

from .._backends.dispatch import thin_call
from .._backends.views import kernel_views
from .._core.dtypes import compute_dtype, kind
from .._core.element import step_coefficients
from .._core.hyper import STEP_DEPENDENT, coefficients
from .._core.options import ADAM

_NO_NOISE = np.uint32(0)  # the noise argument where rounding is to nearest


class OneHostArray:
    """The thinnest call: one host params array, gradients of a dtype seen before.

    Checks a gradient by attributes compared with what construction cached; the
    kernel itself refuses, before writing, a gradient that shares memory with the
    params or state. Anything unusual is left to the general path, which names it.
    """

    def __init__(self, slot, num_threads: int | None) -> None:
        self.slot = slot
        self.num_threads, self.size = num_threads, slot.flat.size
        self.shape, self.one_d = slot.array.shape, slot.array.ndim == 1
        self.views = kernel_views((slot.flat, slot.flat, *slot.state))
        self.coef = np.empty(11, compute_dtype(slot.flags.param))
        self.hyper = None  # the hyperparameters ``coef`` holds, but for the step's own
        self.adam = slot.flags.rule == ADAM  # (a variant's every coefficient may change)
        self.kernels: dict = {}  # gradient dtype -> (call, 16-bit?): see dispatch.thin_call

    def step(self, grads, h) -> bool:
        """One update if ``grads`` takes this path (True), else False, nothing done."""
        if type(grads) is not np.ndarray or grads.shape != self.shape:
            return False
        found = self.kernels.get(grads.dtype)
        if found is None:
            found = self._kernel(grads.dtype)
            if found is None:
                return False
        flags = grads.flags
        if not (flags.c_contiguous and flags.aligned):
            return False
        kernel, sixteen = found
        flat = grads if self.one_d else grads.reshape(-1)
        if sixteen:
            flat = flat.view(np.uint16)
        slot = self.slot
        if h is self.hyper and self.adam:  # only the step's coefficients change
            self.coef[STEP_DEPENDENT] = step_coefficients(h, slot.step + 1)
        else:
            self.coef[:] = coefficients(h, slot.step + 1)
            self.hyper = h
        param, _, m, v, v_max, comp, master = self.views
        noise = np.uint32(slot.noise(slot.step + 1)) if slot.flags.stochastic else _NO_NOISE
        refused = kernel(param, flat, m, v, v_max, comp, master, self.coef, noise)
        if refused:
            raise ValueError("grads and params (or their state) overlap in memory; "
                             "pass separate arrays")
        slot.step += 1
        return True

    def _kernel(self, dtype) -> tuple | None:
        grad_kind = kind(dtype)
        if grad_kind is None:
            return None
        kernel = thin_call(self.slot.flags._replace(grad=grad_kind), self.size,
                           self.num_threads)
        found = (kernel, dtype.itemsize == 2)
        self.kernels[dtype] = found
        return found
