"""``fastadam.numba.cuda``: the element update of ``fastadam.numba`` as a CUDA device
function, for your own ``@cuda.jit`` kernels (imports numba.cuda).

Make the per-step scalars on the host, ``c = fastadam.numba.coefficients(step, h)``,
pass ``c`` to the kernel, and call ``update(i, g, param, m, v, c)`` for each element
``i`` whose gradient ``g`` the kernel computed: exactly the bits of
``fastadam.adam_step(..., backend="cuda")`` with ``grad[i] == g``.
"""

from __future__ import annotations

from numba import config

from .._backends import compiled

__all__ = ["update"]

_typer, _simulated = compiled.cuda_update()


def update(i, g, param, m, v, c, v_max=None, kahan_comp=None, master_params=None) -> None:
    """Update element ``i`` of ``param``, ``m``, ``v`` (1-D device arrays; 16-bit ones as
    uint16 with ``hyper(uint16_as=...)``) in place, given its gradient ``g`` and
    ``c = fastadam.numba.coefficients(step, h)``: ``fastadam.numba.update``'s contract,
    in device code. It checks nothing per call (not ``i``'s range, not overlap); the
    types are checked when the kernel compiles. Callable only inside kernels (on the
    simulator, also as Python)."""
    if config.ENABLE_CUDASIM:
        return _simulated(i, g, param, m, v, c, v_max, kahan_comp, master_params)
    raise TypeError("fastadam.numba.cuda.update is a device function: call it inside a "
                    "@cuda.jit kernel (fastadam.numba.update runs on the host)")


if not config.ENABLE_CUDASIM:
    from numba.cuda.extending import overload  # noqa: E402

    overload(update, target="cuda")(_typer)
