"""The memory an optimizer writes, as sorted address ranges, and the one compiled check a
list of gradients needs against it (host or device addresses alike)."""

from __future__ import annotations

import numba
import numpy as np

from .cache import disk_cached


class Owned:
    """The memory an optimizer writes (params and state: disjoint), as sorted address
    ranges, and the one check a gradient list needs against it."""

    def __init__(self, starts, nbytes) -> None:
        starts = np.array(starts, dtype=np.int64)
        ends = starts + np.array(nbytes, dtype=np.int64)
        order = np.argsort(starts)
        self.starts, self.ends = starts[order], ends[order]

    def overlaps(self, starts: np.ndarray, ends: np.ndarray) -> bool:
        """Whether any [start, end) range (int64 addresses) shares memory with the owned."""
        return _overlap(starts, ends, self.starts, self.ends)


@disk_cached("owned.overlap")
@numba.njit(nogil=True)
def _overlap(starts, ends, owned_starts, owned_ends) -> bool:
    """Whether any [start, end) range shares memory with an owned one. Those are disjoint
    and sorted, so the one that starts last before a range ends is the only candidate."""
    for a in range(starts.size):
        if ends[a] <= starts[a]:
            continue
        k = np.searchsorted(owned_starts, ends[a]) - 1
        if k >= 0 and owned_ends[k] > starts[a]:
            return True
    return False
