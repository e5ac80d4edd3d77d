"""``fastadam.numba.cuda.update``: the element update as a device function for the
user's own ``@cuda.jit`` kernels. On the simulator, kernels run as Python: the update
is then a Python function that picks its variant from the arguments it gets."""

from __future__ import annotations

from functools import cache

import numba
import numpy as np

from ..._core import element
from ..._core.dtypes import compute_dtype
from ..._core.hyper import Flags
from ..shared.signatures import COMPUTE, element_update, record_kind, step_flags
from .runtime import converters, device_function, multiply, rounding

WHERE = "fastadam.numba.cuda.update"


@cache
def _update(flags: Flags):
    compute = compute_dtype(flags.param)
    update = element.make_value(device_function, flags, converters(compute), rounding()[0],
                                multiply(compute))
    return element_update(update, COMPUTE[compute])


def update_typer(i, g, param, m, v, c, v_max=None, kahan_comp=None, master_params=None):
    """The overload generator of ``update`` for the CUDA target."""
    kind = record_kind(c, "Coefficients", "c", WHERE)
    return _update(step_flags(kind, WHERE, param, None, m, v, v_max, kahan_comp,
                              master_params, one_dim=True))


def simulated_update(i, g, param, m, v, c, v_max=None, kahan_comp=None, master_params=None):
    """``update`` on the simulator: typed from the values, then run as Python."""
    def typed(a):  # a host array's Numba type stands for a simulated one's
        return None if a is None else numba.typeof(np.empty((0,) * a.ndim, a.dtype))

    update = update_typer(i, g, typed(param), typed(m), typed(v), numba.typeof(c),
                          typed(v_max), typed(kahan_comp), typed(master_params))
    update(i, g, param, m, v, c, v_max, kahan_comp, master_params)
