"""How the flat buffer is cut across ranks, and state entries cut to a rank's pieces
(8-bit moments decoded to floats, so any layout re-shards)."""

from __future__ import annotations

import numpy as np

from .._core import quant8
from .._state.slots import ABSMAX_KEYS, CODE_KEYS, STATE_KEYS


def shard_counts(n: int, ranks: int) -> list[int]:
    """Elements per rank of an ``n``-element buffer: even to within one, the first
    ``n % ranks`` ranks one more."""
    return [n // ranks + (r < n % ranks) for r in range(ranks)]


def float_moments(entry: dict) -> dict:
    """A state entry's moments as 1-D float arrays, 8-bit codes decoded."""
    floats = {k: np.asarray(entry[k]).reshape(-1) for k in STATE_KEYS if k in entry}
    for k, codes, top, signed in zip(STATE_KEYS, CODE_KEYS, ABSMAX_KEYS, (True, False, False)):
        if codes in entry:
            floats[k] = quant8.dequantize(np.asarray(entry[codes]).reshape(-1),
                                          np.asarray(entry[top]), signed)
    return floats


def cut_entry(entry, i: int, size: int, first: int, stop: int) -> dict:
    """Array ``i``'s (``size`` elements) consolidated state entry, cut to [first, stop)."""
    if not isinstance(entry, dict):
        raise ValueError(f"state_dict['state'][{i}] must be a dict")
    for k, codes in zip(STATE_KEYS, (*CODE_KEYS, None, None)):
        value = entry.get(k)
        if value is not None and codes not in entry and not (
                isinstance(value, np.ndarray) and value.size == size):
            raise ValueError(f"state_dict['state'][{i}][{k!r}] must be an array of "
                             f"params[{i}]'s {size} elements")
    moments = float_moments(entry)
    return {"step": entry.get("step"), **{k: a[first:stop] for k, a in moments.items()}}
