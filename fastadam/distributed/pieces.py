"""How the flat buffer is cut across ranks, and state entries cut to a rank's pieces
(8-bit and 4-bit moments decoded to floats, so any layout re-shards)."""

from __future__ import annotations

import numpy as np

from .._core.lowbit import of_map_size
from .._state.slots import ABSMAX_KEYS, CODE_KEYS, MAP_KEYS, STATE_KEYS


def shard_counts(n: int, ranks: int) -> list[int]:
    """Elements per rank of an ``n``-element buffer: even to within one, the first
    ``n % ranks`` ranks one more."""
    return [n // ranks + (r < n % ranks) for r in range(ranks)]


def float_moments(entry: dict, n: int) -> dict:
    """A state entry's moments (of an ``n``-element array) as 1-D float arrays, low-bit
    codes decoded (their format by the entry's maps)."""
    floats = {k: np.asarray(entry[k]).reshape(-1) for k in STATE_KEYS if k in entry}
    if CODE_KEYS[0] not in entry:
        return floats
    form = of_map_size(np.asarray(entry[MAP_KEYS[0]]).size)
    if form is None:
        raise ValueError(f"{MAP_KEYS[0]} must be an 8-bit or 4-bit map")
    for k, codes, top, signed in zip(STATE_KEYS, CODE_KEYS, ABSMAX_KEYS, (True, False, False)):
        if codes in entry:
            floats[k] = form.dequantize(np.asarray(entry[codes]).reshape(-1),
                                        np.asarray(entry[top]), signed, n)
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
    moments = float_moments(entry, size)
    return {"step": entry.get("step"), **{k: a[first:stop] for k, a in moments.items()}}
