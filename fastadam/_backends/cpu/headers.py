"""The headers of many NumPy arrays, read in one compiled loop.

Checking a list of 1000 gradients attribute by attribute (type, shape, dtype,
flags, data address) costs about 1 us per array in Python, a third of a
1000 x 4096 step. ``check_arrays`` reads the same fields straight from NumPy's
``PyArrayObject`` struct (``numpy/ndarraytypes.h``, unchanged since NumPy 1.7),
given the arrays' object addresses (``id``), in a few nanoseconds each.

The field offsets follow from ``sizeof(PyObject)``; ``layout_ok()`` confirms
them on probe arrays (CPython, 64-bit) before anything relies on them, and
where it cannot, ``Table.read`` makes the same checks through Python
attributes. Whatever does not read back exactly as expected (a subclass, an
unusual dtype, a strided array) fails the fast check, and callers fall back to
checking arrays one by one, which names what is wrong.
"""

from __future__ import annotations

import ctypes
import sys
from functools import cache

import numba
import numpy as np

from ..._core.dtypes import kind
from ..cache import disk_cached
from .runtime import at

_HEAD = object.__basicsize__  # sizeof(PyObject): ob_type is its last field
_TYPE = _HEAD - ctypes.sizeof(ctypes.c_void_p)
_DATA, _ND, _DIMS = _HEAD, _HEAD + 8, _HEAD + 16
_DESCR, _FLAGS = _HEAD + 40, _HEAD + 48  # after strides and base
_C_CONTIGUOUS, _ALIGNED = 0x1, 0x100  # NPY_ARRAY_* flags


@numba.njit(inline="always")
def _read(address, value_class):
    """The ``value_class`` (e.g. ``np.int64``) stored at an integer address."""
    return at(address, value_class)[0]


@disk_cached("cpu.headers.check_arrays")
@numba.njit(nogil=True)
def check_arrays(ids, ndarray_type, descrs, shapes, shape_starts, addresses, codes):
    """Check arrays given by object address against expected shapes and dtypes.

    ``shapes[shape_starts[a]:shape_starts[a + 1]]`` is array ``a``'s expected
    shape; ``descrs`` are the addresses of the accepted dtype objects. Fills
    ``addresses`` (data) and ``codes`` (index into ``descrs``) and returns -1, or
    the index of the first array that is not an aligned C-contiguous ndarray of
    the expected shape and an accepted dtype.
    """
    for a in range(ids.size):
        obj = ids[a]
        if _read(obj + _TYPE, np.int64) != ndarray_type:
            return a
        if _read(obj + _FLAGS, np.int32) & (_C_CONTIGUOUS | _ALIGNED) != (
                _C_CONTIGUOUS | _ALIGNED):
            return a
        start, stop = shape_starts[a], shape_starts[a + 1]
        if _read(obj + _ND, np.int32) != stop - start:
            return a
        dims = _read(obj + _DIMS, np.int64)
        for d in range(stop - start):
            if _read(dims + 8 * d, np.int64) != shapes[start + d]:
                return a
        descr = _read(obj + _DESCR, np.int64)
        code = -1
        for k in range(descrs.size):
            if descrs[k] == descr:
                code = k
        if code < 0:
            return a
        codes[a] = code
        addresses[a] = _read(obj + _DATA, np.int64)
    return -1


class Table:
    """Expected shapes of a list of arrays and the dtypes accepted, in ``check_arrays``'s form."""

    def __init__(self, shapes: list[tuple], dtypes: list[np.dtype],
                 kinds: tuple[str, ...] | None = None) -> None:
        """``kinds``: the float kinds accepted (default: ``dtypes``'); a dtype of one of them
        under an object not in ``dtypes`` (an equal one, bfloat16's) is learned on sight."""
        self.shape_starts = np.cumsum([0] + [len(s) for s in shapes], dtype=np.int64)
        self.shapes = np.array([d for s in shapes for d in s], dtype=np.int64)
        self.expected = [tuple(s) for s in shapes]
        self.dtypes = list(dtypes)  # referenced, so that their addresses stay theirs
        self.kinds = frozenset(kinds if kinds is not None else map(kind, dtypes))
        self.descrs = np.array([id(d) for d in dtypes], dtype=np.int64)
        self.itemsizes = np.array([d.itemsize for d in dtypes], dtype=np.int64)  # per code
        self.ndarray_type = id(np.ndarray)

    def read(self, arrays) -> tuple | None:
        """(data addresses, dtype codes) of ``arrays``, or None if any fails the checks."""
        if not layout_ok():
            return self._read_attributes(arrays)
        return self.read_headers(arrays)

    def read_headers(self, arrays) -> tuple | None:
        """``read`` through ``check_arrays``: only where ``layout_ok()``."""
        n = len(arrays)
        ids = np.fromiter(map(id, arrays), np.int64, n)
        addresses, codes = np.empty(n, dtype=np.int64), np.empty(n, dtype=np.int64)
        for _ in range(4):  # an equal dtype under another object is learned, then retried
            failed = check_arrays(ids, self.ndarray_type, self.descrs, self.shapes,
                                  self.shape_starts, addresses, codes)
            if failed < 0:
                return addresses, codes
            if not self._learn(arrays[failed]):
                return None
        return None

    def _learn(self, array) -> bool:
        dtype = getattr(array, "dtype", None)
        if (type(array) is not np.ndarray or not isinstance(dtype, np.dtype)
                or kind(dtype) not in self.kinds or any(dtype is d for d in self.dtypes)
                or len(self.dtypes) >= 32):
            return False
        self.dtypes.append(dtype)
        self.descrs = np.append(self.descrs, id(dtype))
        self.itemsizes = np.append(self.itemsizes, dtype.itemsize)
        return True

    def _read_attributes(self, arrays) -> tuple | None:
        # The same checks through Python attributes, where the layout is not NumPy's usual.
        if not all(type(a) is np.ndarray and a.flags.c_contiguous and a.flags.aligned
                   and kind(a.dtype) in self.kinds for a in arrays):
            return None
        if [a.shape for a in arrays] != self.expected:
            return None
        for a in arrays:
            if not any(a.dtype is d for d in self.dtypes):
                self._learn(a)
        codes = [next((c for c, d in enumerate(self.dtypes) if a.dtype is d), -1) for a in arrays]
        if -1 in codes:
            return None
        addresses = np.array([a.ctypes.data for a in arrays], dtype=np.int64)
        return addresses, np.array(codes, dtype=np.int64)


@cache
def layout_ok() -> bool:
    """Whether this interpreter and NumPy lay arrays out as ``check_arrays`` reads them."""
    if sys.implementation.name != "cpython":  # id() is an address only in CPython
        return False
    if np.ndarray.__basicsize__ < _FLAGS + 4 or ctypes.sizeof(ctypes.c_void_p) != 8:
        return False
    base = np.arange(24, dtype=np.float32)
    probes = [base.reshape(2, 3, 4), base[::2], base[:0], np.ones(5, dtype=np.float64)[1:]]
    dtypes = [np.dtype(np.float32), np.dtype(np.float64)]
    for probe in probes:
        table = Table([probe.shape], dtypes)
        expected_ok = probe.flags.c_contiguous and probe.flags.aligned
        found = table.read_headers([probe])
        if found is None:
            if expected_ok:
                return False
            continue
        address, code = found[0][0], found[1][0]
        if not expected_ok or address != probe.ctypes.data or dtypes[code] != probe.dtype:
            return False
    # The wrong shape and the wrong dtype must be refused.
    return Table([(2, 3, 5)], dtypes).read_headers([probes[0]]) is None and Table(
        [(2, 3, 4)], dtypes[1:]).read_headers([probes[0]]) is None
