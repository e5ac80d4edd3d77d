"""Flat buffers: many arrays living in one contiguous array, so one step updates them all."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ._core.dtypes import kind


class FlatBuffer:
    """One 1-D array (``data``) and views of it shaped like the arrays it was made from.

    ``views[i]`` has the shape of the i-th input and is backed by ``data``:
    writing either one changes both. Give ``data`` to the optimizer, and the
    views to the model.
    """

    def __init__(self, data: np.ndarray, shapes: Sequence[tuple[int, ...]]) -> None:
        self.data = data
        self.shapes = [tuple(s) for s in shapes]
        self.offsets = np.cumsum([0] + [int(np.prod(s)) for s in self.shapes]).tolist()
        self.views = [data[a:b].reshape(s)
                      for a, b, s in zip(self.offsets, self.offsets[1:], self.shapes)]

    def like(self, dtype=None) -> FlatBuffer:
        """A zeroed buffer with the same layout (``dtype`` defaults to this one's): for
        gradients, written through its views and handed to ``step`` as ``.data``."""
        data = np.zeros(self.data.size, self.data.dtype if dtype is None else dtype)
        return FlatBuffer(data, self.shapes)

    def gather(self, arrays: Sequence[np.ndarray], out: np.ndarray | None = None) -> np.ndarray:
        """Copy ``arrays`` (shaped like the views) into one flat array laid out as ``data``."""
        arrays = _arrays("arrays", arrays)
        if [a.shape for a in arrays] != self.shapes:
            raise ValueError(f"arrays have shapes {[a.shape for a in arrays]}, but this buffer "
                             f"holds {self.shapes}")
        if out is None:
            out = np.empty(self.data.size, arrays[0].dtype if arrays else self.data.dtype)
        elif not isinstance(out, np.ndarray) or out.shape != (self.data.size,):
            raise ValueError(f"out must be a 1-D NumPy array of {self.data.size} elements")
        for a, b, array in zip(self.offsets, self.offsets[1:], arrays):
            out[a:b] = array.reshape(-1)
        return out

    def __len__(self) -> int:
        return len(self.views)

    def __repr__(self) -> str:
        return f"FlatBuffer({len(self)} arrays, {self.data.size:,} x {self.data.dtype})"


def _arrays(name: str, arrays) -> list[np.ndarray]:
    if isinstance(arrays, np.ndarray) or not isinstance(arrays, Sequence):
        raise TypeError(f"{name} must be a list or tuple of NumPy arrays")
    for i, a in enumerate(arrays):
        if not isinstance(a, np.ndarray):
            raise TypeError(f"{name}[{i}] must be a NumPy array, got {type(a).__name__}")
        if kind(a.dtype) is None:
            raise TypeError(f"{name}[{i}] must have a float dtype, got {a.dtype}")
    return list(arrays)


def flatten(arrays: Sequence[np.ndarray]) -> FlatBuffer:
    """Copy ``arrays`` (one float dtype, any shapes) into one contiguous buffer.

    Returns a :class:`FlatBuffer`: ``.data`` is the 1-D buffer, ``.views`` are
    arrays shaped like the inputs, holding their values, backed by ``.data``.
    ``.like()`` makes a gradient buffer with the same layout, and
    ``.gather(grads)`` lays separate gradient arrays out the same way.
    """
    arrays = _arrays("arrays", arrays)
    dtypes = {a.dtype for a in arrays}
    if len(dtypes) > 1:
        names = sorted(map(str, dtypes))
        raise TypeError(f"arrays must share one dtype to share a buffer, got {names}")
    dtype = dtypes.pop() if dtypes else np.dtype(np.float32)
    buffer = FlatBuffer(np.empty(sum(a.size for a in arrays), dtype), [a.shape for a in arrays])
    for view, a in zip(buffer.views, arrays):
        view[...] = a
    return buffer
