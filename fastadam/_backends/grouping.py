"""Batches: the arrays of a param group that share dtypes and options, which one kernel
call steps together, their work split into even chunks. The backends' batch plans
(``cpu/batches.py``, ``cuda/batches.py``) build on these."""

from __future__ import annotations

import numpy as np


def batched(groups: list, make, smallest: int = 2, make_8bit=None) -> list:
    """Per group, ``make(indices, slots)`` for each set of ``smallest`` or more arrays whose
    options and dtypes match (indices count over all groups); 8-bit ones by ``make_8bit``,
    or, without it, none (they step one by one)."""
    out, index = [], 0
    for _, slots in groups:
        by_key: dict = {}
        for slot in slots:
            eight = slot.absmax is not None
            if not eight or make_8bit is not None:
                by_key.setdefault((eight, slot.flags._replace(grad="")), []).append(
                    (index, slot))
            index += 1
        out.append([(make_8bit if eight else make)([i for i, _ in members],
                                                   [s for _, s in members])
                    for (eight, _), members in by_key.items() if len(members) >= smallest])
    return out


def chunk_table(sizes, chunk: int = 1 << 16) -> np.ndarray:
    """Rows (array index, start, stop) covering every array in pieces of at most ``chunk``."""
    rows = [(t, start, min(start + chunk, n)) for t, n in enumerate(sizes)
            for start in range(0, n, chunk)]
    return np.array(rows, dtype=np.int64).reshape(-1, 3)


def chunk_elements(rows: np.ndarray) -> int:
    """How many elements the ``chunk_table`` rows ``rows`` cover."""
    return int(rows[:, 2].sum() - rows[:, 1].sum())


def one_kind(kinds: set) -> str | None:
    return kinds.pop() if len(kinds) == 1 else None


def ready_to_batch(batch, grad_kind: str | None) -> tuple | None:
    """(flags, 1-based step) when a batch can step as one: one gradient kind, one step
    count; else None."""
    steps = {s.step for s in batch.slots}
    if grad_kind is None or len(steps) != 1:
        return None
    return batch.slots[0].flags._replace(grad=grad_kind), steps.pop() + 1


def advance(batch, done: set, counted: bool = True) -> None:
    """Mark a batch stepped, and count its step on the host (unless the device counts)."""
    if counted:
        for s in batch.slots:
            s.step += 1
    done.update(batch.indices.tolist())
