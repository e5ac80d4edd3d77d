"""Adam compiled into the user's own Numba code: the typing and implementations behind
``fastadam.numba`` (Numba ``overload`` generators: given argument types, an
implementation, or a ``TypeError`` that says what is wrong).

The element update is ``_core.element``'s, specialized on the record's class (its
options) and the arrays' dtypes, as the kernels are: a caller's loop has no branch on
an option, and gives the bits the fused kernel gives.
"""

from __future__ import annotations

import math
from functools import cache

import numba
import numpy as np
from numba import types
from numba.extending import overload

from ..._core import element
from ..._core import hyper as hyperparameters
from ..._core.dtypes import compute_dtype
from ..._core.options import KERNEL_FLAGS, keyword_function
from ..shared import records
from ..shared.signatures import (
    COMPUTE,
    absent,
    constant,
    default_of,
    element_update,
    given_or,
    given_or_typer,
    record_kind,
    step_flags,
)
from .record_types import constructor
from .runtime import (
    coefficient_tuple,
    converters,
    divide,
    njit_noalias,
    prefetch_row,
    rounding,
    shares_memory,
)
from .sparse import AHEAD

# Not inlined by Numba: inlined, an argument it returns was written as a copy (numba 0.68).
overload(given_or)(given_or_typer)


# The options read as constants when a call compiles: those compiled into the element
# update, and the two that choose how weight decay is compiled in.
_CONSTANT = (*KERNEL_FLAGS, "decoupled_weight_decay", "decouple_lr")


def _hyper_implementation_source(constants: dict) -> str:
    """The body of ``hyper``'s compiled implementation: each value checked as
    ``options.checked`` checks it (``betas`` in [0, 1), ``max_lr`` NaN (None) or positive,
    every other number finite and >= 0), then the record, field by field, the
    ``constants`` (``_CONSTANT``) as the literals they were."""
    where = "fastadam.numba.hyper"
    lines = ["beta1, beta2 = betas",
             "decay = float(given_or(weight_decay, 0.0))",
             "peak = float(given_or(max_lr, math.nan))",
             "if not (0.0 <= beta1 < 1.0) or not (0.0 <= beta2 < 1.0):",
             f"    raise ValueError('{where}: betas must each be in [0, 1)')",
             "if peak == peak and not (0.0 < peak < math.inf):",
             f"    raise ValueError('{where}: max_lr must be finite and > 0')"]
    named = {"beta1": "beta1", "beta2": "beta2", "weight_decay": "decay", "max_lr": "peak"}
    values = []
    for name in records.FIELDS["Hyper"]:
        if name in _CONSTANT:
            values.append(repr(constants[name]))
        elif name in records.FLAGS:
            values.append(f"bool({name})")
        else:
            value = named.get(name, f"float({name})")
            values.append(value)
            if name not in ("beta1", "beta2", "max_lr"):
                lines += [f"if not (0.0 <= {value} < math.inf):",
                          f"    raise ValueError('{where}: {name} must be finite and >= 0')"]
    return "\n    ".join([*lines, f"return make(({', '.join(values)},))"])


def hyper_typing(uint16_as=None, **arguments):
    """``fastadam.numba.hyper`` in compiled code, given its arguments' types: the options
    that choose the update must be constants; weight decay is compiled in wherever
    ``weight_decay`` is given."""
    constants = {name: bool(constant(arguments[name], name, False)) for name in _CONSTANT}
    kind16 = constant(uint16_as, "uint16_as", None)
    try:
        records.uint16_kinds(kind16)
    except ValueError as e:
        raise TypeError(f"fastadam.numba.hyper: {e}") from None
    decoupled = constants["decoupled_weight_decay"] or constants["decouple_lr"]
    if constants["decouple_lr"] and absent(default_of(arguments["max_lr"])):
        raise TypeError("fastadam.numba.hyper: decouple_lr=True needs max_lr")
    decay = default_of(arguments["weight_decay"])
    if isinstance(decay, types.Literal):
        decay = decay.literal_value
    decay = decay != 0 if not isinstance(decay, types.Type) else True
    kind = records.Kind(**{name: constants[name] for name in KERNEL_FLAGS},
                        l2_decay=decay and not decoupled, decoupled_decay=decay and decoupled,
                        uint16_as=kind16)
    make = constructor(records.record_class("Hyper", kind))
    return keyword_function("impl", _hyper_implementation_source(constants),
                            {"make": make, "given_or": given_or, "math": math},
                            more="uint16_as=None")


# Numba checks that an overload's typer and implementation take the same parameters.
hyper_typer = keyword_function("hyper_typer", "return hyper_typing(**locals())",
                               {"hyper_typing": hyper_typing}, more="uint16_as=None")

_decay_factor = numba.njit(hyperparameters.decay_factor_of)
step_term_values = numba.njit(inline="always")(element.step_term_values)


def coefficients_typer(step, h, grad_scale=None):
    """``fastadam.numba.coefficients`` in compiled code: ``hyper.coefficients``' numbers."""
    where = "fastadam.numba.coefficients"
    kind = record_kind(h, "Hyper", "h", where)
    if not isinstance(step, types.Integer):
        raise TypeError(f"{where}: step must be an integer, got {step}")
    if not absent(grad_scale) and not isinstance(grad_scale, (types.Float, types.Integer)):
        raise TypeError(f"{where}: grad_scale must be a number, got {grad_scale}")
    make = constructor(records.record_class("Coefficients", kind))
    terms = element.step_terms_for(numba.njit, kind)

    def impl(step, h, grad_scale=None):
        if step < 1:
            raise ValueError("fastadam.numba: step must be >= 1 (the first update is step 1)")
        scale = float(given_or(grad_scale, 1.0))
        if not (0.0 < scale < math.inf):
            raise ValueError("fastadam.numba.coefficients: grad_scale must be finite and > 0")
        m_coef, g_coef, scaled_eps_root, scaled_eps = terms(float(step),
                                                            step_term_values(h))
        return make((h.beta1, 1.0 - h.beta1, h.beta2, 1.0 - h.beta2, m_coef, g_coef,
                     scaled_eps_root, scaled_eps, h.weight_decay,
                     _decay_factor(h.lr, h.weight_decay, h.decouple_lr, h.max_lr), 1.0 / scale))

    return impl


def coefficients_of(step, h, grad_scale=None):
    """The compiled ``coefficients``, for the implementations below."""
    raise NotImplementedError("compiled code only")


overload(coefficients_of)(coefficients_typer)


@cache
def value_update(flags: hyperparameters.Flags):
    """``element.make_value`` for the CPU, inlined into the caller."""
    return element.make_value(numba.njit(inline="always"), flags,
                              converters(compute_dtype(flags.param)), rounding(), div=divide)


def update_typer(i, g, param, m, v, c, v_max=None, kahan_comp=None, master_params=None):
    """``fastadam.numba.update`` in compiled code: element ``i`` of one step."""
    kind = record_kind(c, "Coefficients", "c", "fastadam.numba.update")
    flags = step_flags(kind, "fastadam.numba.update", param, None, m, v, v_max, kahan_comp,
                       master_params, one_dim=True)
    return element_update(value_update(flags), COMPUTE[compute_dtype(flags.param)])


@numba.njit
def fill_coefficients(c, coef):
    """The kernels' coefficient vector from a Coefficients record (``hyper.COEFFICIENTS``'
    order), rounded to ``coef``'s dtype."""
    coef[0], coef[1], coef[2], coef[3] = c.beta1, c.one_minus_beta1, c.beta2, c.one_minus_beta2
    coef[4], coef[5], coef[6], coef[7] = c.m_coef, c.g_coef, c.scaled_eps_root, c.scaled_eps
    coef[8], coef[9], coef[10] = c.weight_decay, c.decay_factor, c.inv_grad_scale


@cache
def serial_kernel(flags: hyperparameters.Flags):
    """``fused_kernel``'s loop on the calling thread: ``adam_step``'s in compiled code."""
    update = element.make(numba.njit(inline="always"), flags,
                          converters(compute_dtype(flags.param)), rounding())

    @njit_noalias  # checked apart before: the loop vectorizes as prange's does
    def kernel(param, grad, m, v, v_max, comp, master, coef):
        c = coefficient_tuple(coef)
        for i in range(param.size):
            update(i, param, grad, m, v, v_max, comp, master, c, np.uint32(0), 0)

    return kernel


@numba.njit(inline="always")
def _overlap(a, b, c=None, d=None):
    """Whether ``a`` shares memory with ``b``, ``c`` or ``d`` (those given)."""
    return (shares_memory(a, b) or (c is not None and shares_memory(a, c))
            or (d is not None and shares_memory(a, d)))


def adam_step_typer(param, grad, m, v, step, h, v_max=None, kahan_comp=None,
                    master_params=None):
    """``fastadam.numba.adam_step`` in compiled code: checks, then the fused pass on the
    calling thread. Not on Numba's threads: started from compiled code, with no measured
    choice, they wait for cores that a BLAS call left spinning (3.7 ms against 0.09 after
    a 256 x 256 matmul, at 70K elements), and under the workqueue layer cannot start
    inside a caller's prange; a caller parallel over its own chunks uses every core."""
    where = "fastadam.numba.adam_step"
    kind = record_kind(h, "Hyper", "h", where)
    flags = step_flags(kind, where, param, grad, m, v, v_max, kahan_comp, master_params,
                       one_dim=False)
    compute = COMPUTE[compute_dtype(flags.param)]
    serial = serial_kernel(flags)
    amsgrad, kahan, master = flags.amsgrad, flags.kahan, flags.master

    shape_error = f"{where}: grad, m, v (and v_max, kahan_comp, master_params) must " \
                  "have param's shape"
    overlap_error = f"{where}: param, grad, m, v, v_max, kahan_comp, master_params overlap"

    def impl(param, grad, m, v, step, h, v_max=None, kahan_comp=None, master_params=None):
        shape = param.shape
        if grad.shape != shape or m.shape != shape or v.shape != shape:
            raise ValueError(shape_error)
        p, g, m1, v1 = param.reshape(-1), grad.reshape(-1), m.reshape(-1), v.reshape(-1)
        vm = given_or(v_max, v).reshape(-1)
        kc = given_or(kahan_comp, param).reshape(-1)
        ms = given_or(master_params, param).reshape(-1)
        if vm.size != p.size or kc.size != p.size or ms.size != p.size:
            raise ValueError(shape_error)
        if (_overlap(g, p, m1, v1) or _overlap(p, m1, v1) or _overlap(m1, v1)
                or (amsgrad and _overlap(vm, p, g, m1) or amsgrad and _overlap(vm, v1))
                or (kahan and (_overlap(kc, p, g, m1) or _overlap(kc, v1)))
                or (master and (_overlap(ms, p, g, m1) or _overlap(ms, v1)))
                or (kahan and master and _overlap(kc, ms))):
            raise ValueError(overlap_error)
        c = coefficients_of(step, h)
        coef = np.empty(11, compute)
        fill_coefficients(c, coef)
        serial(p, g, m1, v1, vm, kc, ms, coef)

    return impl


@numba.njit(nogil=True)
def sum_rows(rows, values):
    """``(distinct rows, their summed values)``: the lookups of one step with duplicates
    summed, sorted by row, as a row-sparse step sums them."""
    order = np.argsort(rows)
    dim = values.shape[1]
    distinct = np.empty(rows.size, np.int64)
    summed = np.empty((rows.size, dim), values.dtype)
    count = 0
    for k in range(rows.size):
        row, source = rows[order[k]], order[k]
        if count > 0 and distinct[count - 1] == row:
            for j in range(dim):  # loops: a row's array += or = costs more than its adds
                summed[count - 1, j] += values[source, j]
        else:
            distinct[count] = row
            for j in range(dim):
                summed[count, j] = values[source, j]
            count += 1
    return distinct[:count], summed[:count]


@cache
def rows_kernel(flags: hyperparameters.Flags):
    """``kernel(table, m, v, rows, grads, coef)``: the update on the elements of each of
    ``rows`` of (rows, dim) tables, their gradients ``grads`` (len(rows), dim); one thread,
    the row loop vectorized (the caller checked that no array overlaps another)."""
    compute = COMPUTE[compute_dtype(flags.param)]
    update = value_update(flags)

    @njit_noalias
    def kernel(table, m, v, rows, grads, coef):
        dim = grads.shape[1]
        flat, m_flat, v_flat = table.reshape(-1), m.reshape(-1), v.reshape(-1)
        c = coefficient_tuple(coef)
        for t in range(rows.size):
            if t + AHEAD < rows.size:  # random rows: their lines in flight, as the sparse step
                prefetch_row(table, rows[t + AHEAD])
                prefetch_row(m, rows[t + AHEAD])
                prefetch_row(v, rows[t + AHEAD])
            start = rows[t] * dim
            row, m_row, v_row = flat[start:start + dim], m_flat[start:start + dim], \
                v_flat[start:start + dim]
            for j in range(dim):
                update(j, compute(grads[t, j]), row, m_row, v_row, v_row, row, row, c,
                       np.uint32(0), 0)

    return kernel


def update_rows_typer(table, m, v, rows, grads, c):
    """``fastadam.numba.update_rows`` in compiled code."""
    where = "fastadam.numba.update_rows"
    kind = record_kind(c, "Coefficients", "c", where)
    if kind.amsgrad:
        raise TypeError(f"{where}: amsgrad does not apply to rows (nor in SparseAdam)")
    flags = step_flags(kind, where, table, None, m, v, None, None, None, one_dim=False)
    if table.ndim != 2 or m.ndim != 2 or v.ndim != 2 or getattr(grads, "ndim", 0) != 2:
        raise TypeError(f"{where}: table, m, v and grads must be 2-D")
    kernel, compute = rows_kernel(flags), COMPUTE[compute_dtype(flags.param)]
    shape_error = f"{where}: m and v must have table's shape, grads one row per row of rows"
    index_error = f"{where}: rows must lie in [0, table rows)"
    overlap_error = f"{where}: table, m, v and grads must not overlap"

    def impl(table, m, v, rows, grads, c):
        if (m.shape != table.shape or v.shape != table.shape or grads.shape[0] != rows.size
                or grads.shape[1] != table.shape[1]):
            raise ValueError(shape_error)
        for t in range(rows.size):
            if not 0 <= rows[t] < table.shape[0]:
                raise ValueError(index_error)
        if (shares_memory(table, m) or shares_memory(table, v) or shares_memory(m, v)
                or shares_memory(grads, table) or shares_memory(grads, m)
                or shares_memory(grads, v)):
            raise ValueError(overlap_error)
        coef = np.empty(11, compute)
        fill_coefficients(c, coef)
        kernel(table, m, v, rows, grads, coef)

    return impl
