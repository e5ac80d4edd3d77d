"""bfloat16 declared over 16-bit integer storage, for arrays that cannot say it themselves.

``__cuda_array_interface__`` has no bfloat16 type: CuPy has no bfloat16 dtype and
torch refuses the interface for bfloat16 tensors. Their bits can still be reached
as uint16/int16 storage; ``as_bfloat16`` declares that storage bfloat16, returning
an array of ml_dtypes' bfloat16 dtype over the same memory, which every fastadam
function then takes as bfloat16.
"""

from __future__ import annotations

import numpy as np

from .dtypes import bfloat16_dtype
from .gpu import as_device_array, is_device

_STORAGE = (np.dtype(np.uint16), np.dtype(np.int16))


def as_bfloat16(storage):
    """``storage`` (a NumPy or GPU array of uint16/int16 holding bfloat16 bits, or
    already bfloat16) as a bfloat16 array over the same memory, without a copy.

    GPU arrays may be numba's, CuPy's or torch's (``t.view(torch.int16)``; torch CUDA
    bfloat16 tensors are also taken directly everywhere). Raises TypeError naming
    ``storage`` for anything else, such as storage that is not 16 bits wide.
    """
    bf16 = bfloat16_dtype()
    if isinstance(storage, np.ndarray):
        array = storage
    elif is_device(storage):
        array = as_device_array(storage)
    else:
        raise TypeError(f"storage must be a NumPy or GPU array, got {type(storage).__name__}")
    if array.dtype == bf16:
        return array
    if array.dtype not in _STORAGE:
        raise TypeError(f"storage must hold 16-bit integers (uint16 or int16) to be declared "
                        f"bfloat16, got {array.dtype}")
    return array.view(bf16)
