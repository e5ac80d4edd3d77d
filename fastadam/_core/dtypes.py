"""Float kinds: which dtypes fastadam steps, how they compute, and bfloat16's dtype.

bfloat16 is ml_dtypes' (what JAX uses); it is recognized by name, so fastadam
needs ml_dtypes only where such arrays exist. Arrays over torch's bfloat16 tensors
are uint16 declared bfloat16 (``BFLOAT16_BITS``): importing ml_dtypes costs more
than half a second, and a torch user's first step need not pay it.
"""

from __future__ import annotations

import numpy as np

KINDS = ("float16", "bfloat16", "float32", "float64")

SIXTEEN_BIT = ("float16", "bfloat16")

_DECLARED = "fastadam.kind"  # the metadata key of storage declared a float kind
BFLOAT16_BITS = np.dtype(np.uint16, metadata={_DECLARED: "bfloat16"})
"""uint16 storage that steps as bfloat16 (its bits), without ml_dtypes."""
_STORAGE = np.dtype(np.uint16)


def kind(dtype) -> str | None:
    """The float kind of a dtype ("float16", "bfloat16", "float32", "float64"), else None.

    bfloat16 is ml_dtypes' (what JAX uses); it is recognized by name, so fastadam
    needs ml_dtypes only where such arrays exist.
    """
    try:
        return _KIND_OF[dtype]
    except KeyError:
        if dtype == _STORAGE:  # never kept: BFLOAT16_BITS equals (and hashes as) uint16
            return (dtype.metadata or {}).get(_DECLARED)
        name = dtype.name
        found = name if name in KINDS and dtype.isnative else None
        _KIND_OF[dtype] = found
        return found

_KIND_OF: dict = {}  # dtype -> kind: a dict look-up is far cheaper than dtype.name


def dtype_kind(name: str, value) -> str:
    """A dtype argument (np.float32, "bfloat16", ml_dtypes.bfloat16, ...) as its kind."""
    try:
        k = kind(np.dtype(value))
    except TypeError:
        k = value if value in KINDS else None
    if k is None:
        raise TypeError(f"{name} must be one of {KINDS}, got {value!r}")
    return k


def compute_dtype(param_kind: str) -> str:
    """Arithmetic is float32, float64 for float64 params."""
    return "float64" if param_kind == "float64" else "float32"


def bfloat16_dtype() -> np.dtype:
    """ml_dtypes' bfloat16, or a clear error where ml_dtypes is missing."""
    try:
        import ml_dtypes  # optional: only bfloat16 arrays need it
    except ImportError as e:
        raise ImportError("bfloat16 needs ml_dtypes: pip install ml_dtypes") from e
    return np.dtype(ml_dtypes.bfloat16)


def numpy_dtype(kind: str) -> np.dtype:
    """The NumPy dtype of a float kind (bfloat16 from ml_dtypes)."""
    return bfloat16_dtype() if kind == "bfloat16" else np.dtype(kind)
