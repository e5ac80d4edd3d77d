"""The door for Adam compiled into the user's own Numba code (``fastadam.numba``): the
records, the overload generators, and the compiled entry that Python calls use."""

from __future__ import annotations

import numba

from .cache import cached
from .cpu.inline import (  # noqa: F401  (the door)
    adam_step_typer,
    coefficients_typer,
    hyper_typer,
    sum_rows,
    update_rows_typer,
    update_typer,
)
from .shared.records import (  # noqa: F401
    Kind,
    as_hyper,
    family_of,
    kind_of,
    record_class,
    uint16_kinds,
    uint16_spec,
)
from .shared.signatures import given_or, given_or_typer


def entries(adam_step, update, update_rows):
    """Compiled ``(adam_step, update, update_rows)`` for calls from Python, that call the
    public functions' compiled overloads; ``adam_step``'s cached on disk like the kernels."""
    @numba.njit(nogil=True)
    def step_entry(param, grad, m, v, step, h, v_max, kahan_comp, master_params):
        adam_step(param, grad, m, v, step, h, v_max, kahan_comp, master_params)

    @numba.njit
    def update_entry(i, g, param, m, v, c, v_max, kahan_comp, master_params):
        update(i, g, param, m, v, c, v_max, kahan_comp, master_params)

    @numba.njit
    def rows_entry(table, m, v, rows, grads, c):
        update_rows(table, m, v, rows, grads, c)

    return cached(step_entry, "numba.adam_step"), update_entry, rows_entry


def cuda_update() -> tuple:
    """``(typer, simulated)``: ``fastadam.numba.cuda.update``'s overload generator for the
    CUDA target and its Python form for the simulator, with ``given_or`` registered
    there."""
    from numba.cuda import config as cuda_config  # numba.cuda: only for fastadam.numba.cuda

    from .cuda import inline  # numba.cuda, as above

    if not cuda_config.ENABLE_CUDASIM:
        from numba.cuda.extending import overload as cuda_overload  # numba.cuda, as above

        cuda_overload(given_or, target="cuda")(given_or_typer)
    return inline.update_typer, inline.simulated_update
