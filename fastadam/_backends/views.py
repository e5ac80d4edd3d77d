"""Arrays as the kernels take them: 16-bit ones as uint16 (numba has no bfloat16),
placeholders where an option leaves an array unused."""

from __future__ import annotations

import numpy as np


def as_kernel_array(a):
    """The array as kernels take it: 16-bit ones as uint16 views (numba has no bfloat16)."""
    return a.view(np.uint16) if a.dtype.itemsize == 2 else a


def data_address(a: np.ndarray) -> int:
    """The data address of a host array (kept alive by its owner while it is used)."""
    return a.__array_interface__["data"][0]


def kernel_views(arrays: tuple) -> tuple:
    """The arrays as kernels take them: 16-bit ones as uint16, placeholders for unused ones."""
    param, grad, m, v, v_max, comp, master = [
        # dtype.itemsize: numba's device arrays have no ``itemsize`` (the simulator's do)
        a if a is None or a.dtype.itemsize != 2 else a.view(np.uint16) for a in arrays
    ]
    return (param, grad, m, v, v if v_max is None else v_max,
            param if comp is None else comp, param if master is None else master)
