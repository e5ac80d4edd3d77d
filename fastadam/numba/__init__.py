"""Adam inside your own Numba code: the fused step, and the element update, callable
from ``@njit`` functions (and from Python).

Three levels, each giving exactly the bits of ``fastadam.adam_step``:

- ``adam_step(param, grad, m, v, step, h)``: the whole-array fused step;
- ``coefficients(step, h)`` and ``update(i, g, param, m, v, c)``: the per-step scalars
  and the update of element ``i`` given its gradient ``g``, for your own loop, so that
  the gradient never makes a round trip through memory;
- ``fastadam.numba.cuda.update``: the same update as a CUDA device function.

``h = hyper(...)`` holds the hyperparameters (``fastadam.adam_step``'s names and
defaults). Its class fixes the options that change the element update (those compiled
into the kernels, weight decay and its kind, what uint16 arrays hold), so compiled code
has no branch on them; in compiled code those must be constants.
"""

from __future__ import annotations

import sys
import types

import numpy as np
from numba.extending import overload

from .._backends import compiled
from .._backends.views import as_kernel_array
from .._core import array_checks, checks
from .._core.dtypes import SIXTEEN_BIT, kind
from .._core.hyper import coefficients as host_coefficients
from .._core.hyper import hyper as checked_hyper
from .._core.options import KERNEL_FLAGS, keyword_function

__all__ = ["adam_step", "coefficients", "cuda", "hyper", "sum_rows", "update", "update_rows"]

sum_rows = compiled.sum_rows  # a compiled function: callable from Python and compiled code


def _hyper(uint16_as: str | None = None, **settings):
    """The hyperparameters of ``fastadam.adam_step`` as an immutable record (a named tuple)
    to pass into compiled functions, or to make inside them. Its keywords are
    ``fastadam.adam_step``'s, with their defaults.

    ``uint16_as`` ("bfloat16" or "float16"): what uint16 arrays hold, in compiled code
    (Numba has no 16-bit float arrays; pass ``a.view(np.uint16)``); one kind per role
    where they differ: ``"param=float16;grad=bfloat16;state=float16"`` (the state: m, v,
    v_max; the Kahan compensation is the param's). ``max_lr`` None is kept as NaN.

    In compiled code, ``uint16_as`` and the options that choose the compiled update
    must be constants: {constants}. Weight decay is compiled in wherever
    ``weight_decay`` is passed (in Python, where it is not 0).

    Raises:
        TypeError, ValueError: as ``fastadam.adam_step`` does, naming the argument.
    """
    h = checked_hyper(**settings)
    compiled.uint16_kinds(uint16_as)  # ValueError on a bad spec
    record = compiled.record_class("Hyper", compiled.kind_of(h, uint16_as))
    values = {name: getattr(h, name) for name in record._fields}
    return record(**{**values, "max_lr": float("nan") if h.max_lr is None else h.max_lr})


# Its signature spelled out from the declared options (Numba types a call by it).
hyper = keyword_function("hyper", "return _hyper(**locals())", {"_hyper": _hyper},
                         more="uint16_as: str | None = None")
hyper.__doc__ = _hyper.__doc__.format(constants=", ".join(
    f"``{name}``" for name in (*KERNEL_FLAGS, "decoupled_weight_decay", "decouple_lr")))
hyper.__module__ = __name__


def _record(name: str, value, family: str):
    if compiled.family_of(value) != family:
        made = "hyper" if family == "Hyper" else "coefficients"
        raise TypeError(f"{name} must be a record from fastadam.numba.{made}(...), "
                        f"got {type(value).__name__}")
    return value


def coefficients(step: int, h, grad_scale: float | None = None):
    """The per-step scalars of update number ``step`` (1-based) for ``update``: a record of
    float64 numbers (``fastadam``'s ``COEFFICIENTS``), computed as ``adam_step`` does.
    ``grad_scale`` divides the gradients (a loss scale, or a clipping factor's inverse).
    Make it once per step, outside the element loop."""
    h = _record("h", h, "Hyper")
    values = host_coefficients(compiled.as_hyper(h), checks.step(step),
                               checks.grad_scale(grad_scale))
    return compiled.record_class("Coefficients", type(h).kind)(*values)


def update(i: int, g: float, param: np.ndarray, m: np.ndarray, v: np.ndarray, c,
           v_max: np.ndarray | None = None, kahan_comp: np.ndarray | None = None,
           master_params: np.ndarray | None = None) -> None:
    """Update element ``i`` of ``param``, ``m``, ``v`` (1-D arrays) in place, given its
    gradient ``g`` and this step's ``c = coefficients(step, h)``: exactly what
    ``adam_step`` does to element ``i`` with ``grad[i] == g`` (``g`` rounded to the
    compute dtype, float32, float64 for float64 params).

    For the inner loop of compiled code, it checks nothing per call: not ``i``'s range,
    not the shapes, not overlap (the types are checked when compiled). From Python
    (slow: for trying it out) everything is checked.
    """
    c = _record("c", c, "Coefficients")
    arrays, sixteen = _step_arrays(param, np.zeros_like(param), m, v, v_max, kahan_comp,
                                   master_params, c)
    if isinstance(i, (bool, np.bool_)) or not isinstance(i, (int, np.integer)):
        raise TypeError(f"i must be an int, got {type(i).__name__}")
    if not 0 <= i < arrays[0].size or np.ndim(param) != 1:
        raise ValueError(f"i must index a 1-D param: 0 <= i < {arrays[0].size}, got {i}")
    if not isinstance(g, (int, float, np.floating, np.integer)) or isinstance(g, bool):
        raise TypeError(f"g must be a real number, got {type(g).__name__}")
    param, _, m, v, v_max, kahan_comp, master_params = arrays
    update_entry = _entries()[1]
    update_entry(i, g, param, m, v, _holding(c, sixteen), v_max, kahan_comp, master_params)


def adam_step(param: np.ndarray, grad: np.ndarray, m: np.ndarray, v: np.ndarray, step: int, h,
              v_max: np.ndarray | None = None, kahan_comp: np.ndarray | None = None,
              master_params: np.ndarray | None = None) -> None:
    """One fused Adam step on ``param``, ``m``, ``v`` in place: ``fastadam.adam_step`` with
    the hyperparameters of ``h = hyper(...)``, from compiled code or from Python.

    Arrays as ``fastadam.adam_step`` takes them (any shape, C-contiguous); in compiled
    code 16-bit ones as uint16 views, with ``hyper(uint16_as=...)``. It runs on the
    calling thread, vectorized (threads started from compiled code would wait
    milliseconds for cores a BLAS call left spinning); for threads, step slices in your
    own ``prange``, or from Python call ``fastadam.adam_step``, which measures its choice.

    Raises:
        TypeError, ValueError: on bad input, naming the argument, before anything is
            written (in compiled code: wrong types when the caller compiles, wrong
            shapes, overlap or step < 1 as ValueError when it runs).
    """
    h = _record("h", h, "Hyper")
    step = checks.step(step)
    arrays, sixteen = _step_arrays(param, grad, m, v, v_max, kahan_comp, master_params, h)
    step_entry = _entries()[0]
    step_entry(*arrays[:4], step, _holding(h, sixteen), *arrays[4:])


def update_rows(table: np.ndarray, m: np.ndarray, v: np.ndarray, rows: np.ndarray,
                grads: np.ndarray, c) -> None:
    """Lazy Adam on the rows of a (rows, dim) table that a step touched: ``update`` on each
    element of ``table[rows[k]]`` with gradient ``grads[k]``, on one thread, vectorized
    along the row. With ``rows, grads = sum_rows(lookups, grads)`` first, it is exact for
    rows looked up more than once: their gradients summed, each row updated once, as
    ``torch.optim.SparseAdam`` does (rows not touched keep their moments; amsgrad does
    not apply). The element formula is ``adam_step``'s, so the bits can differ from
    SparseAdam's (which computes ``m + (g - m) * (1 - beta1)``) by rounding.

    Raises:
        TypeError, ValueError: on wrong types (when compiled), shapes, a row out of
            range or overlapping arrays, before anything is written.
    """
    c = _record("c", c, "Coefficients")
    for name, a in (("table", table), ("m", m), ("v", v), ("grads", grads)):
        if not isinstance(a, np.ndarray) or a.ndim != 2 or kind(a.dtype) not in (
                "float32", "float64"):
            raise TypeError(f"{name} must be a 2-D float32 or float64 NumPy array")
    if not isinstance(rows, np.ndarray) or rows.ndim != 1 or rows.dtype.kind not in "iu":
        raise TypeError("rows must be a 1-D NumPy array of integers")
    _entries()[2](table, m, v, rows, grads, c)


def _step_arrays(param, grad, m, v, v_max, kahan_comp, master_params, record) -> tuple:
    """The checked arrays as compiled code takes them (1-D, 16-bit ones as uint16), and
    the ``uint16_as`` that says what they hold (None: no 16-bit array)."""
    arrays = array_checks.step_arrays("cpu", param, grad, m, v, v_max, kahan_comp,
                                      master_params, type(record).kind.amsgrad)
    roles = dict(zip(("param", "grad", "state"), (kind(a.dtype) for a in arrays[:3])))
    sixteen = {role: k for role, k in roles.items() if k in SIXTEEN_BIT}
    views = tuple(None if a is None else as_kernel_array(a) for a in arrays)
    return views, compiled.uint16_spec(sixteen)


def _holding(record, sixteen: str | None):
    """``record`` as the class whose uint16 arrays hold ``sixteen`` (a ``uint16_as``):
    from Python the arrays' dtypes say what they hold, not the record."""
    kind16 = type(record).kind
    if sixteen is None or kind16.uint16_as == sixteen:
        return record
    return compiled.record_class(record.family, kind16._replace(uint16_as=sixteen))(*record)


_compiled: list = []


def _entries():
    if not _compiled:
        _compiled.extend(compiled.entries(adam_step, update, update_rows))
    return _compiled


overload(hyper, prefer_literal=True)(compiled.hyper_typer)
overload(coefficients)(compiled.coefficients_typer)
overload(update)(compiled.update_typer)
overload(adam_step)(compiled.adam_step_typer)
overload(update_rows)(compiled.update_rows_typer)


class _DeviceModule(types.ModuleType):
    """``fastadam.numba.cuda``, loaded (with numba.cuda) on first use. It is this stand-in
    rather than a file of that name because numba-cuda's import hook claims every module
    whose name contains "numba.cuda", and recurses on one that is not its own."""

    def __getattr__(self, name: str):
        from . import device  # numba.cuda, on first use

        return getattr(device, name)

    def __dir__(self):
        return ["update"]


cuda = sys.modules.setdefault(f"{__name__}.cuda", _DeviceModule(f"{__name__}.cuda", __doc__))
