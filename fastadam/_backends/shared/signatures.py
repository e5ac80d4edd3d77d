"""Typing the calls of ``fastadam.numba`` for any Numba target: from the arguments'
types (Numba's, or numba-cuda's), the record's kind and the kernel flags, or a
``TypeError`` that names the argument (Numba reports it where the caller compiles).
Duck-typed, so that one definition serves both targets' type systems."""

from __future__ import annotations

import numpy as np

from ..._core.dtypes import compute_dtype
from ..._core.hyper import Flags
from . import records

COMPUTE = {"float32": np.float32, "float64": np.float64}


def given_or(x, fallback):
    """``x``, or ``fallback`` where ``x`` is None or omitted: chosen when compiled (each
    target registers ``given_or_typer`` as its overload)."""
    return fallback if x is None else x


def given_or_typer(x, fallback):
    if absent(x):
        return lambda x, fallback: fallback
    return lambda x, fallback: x


def element_update(fn, compute):
    """``update``'s implementation around ``fn``, a target's ``element.make_value`` update:
    the record's scalars rounded to ``compute`` (as the kernels get them), placeholders
    for the arrays an option leaves unused, no stochastic rounding."""
    def impl(i, g, param, m, v, c, v_max=None, kahan_comp=None, master_params=None):
        coef = (compute(c.beta1), compute(c.one_minus_beta1), compute(c.beta2),
                compute(c.one_minus_beta2), compute(c.m_coef), compute(c.g_coef),
                compute(c.scaled_eps_root), compute(c.scaled_eps), compute(c.weight_decay),
                compute(c.decay_factor), compute(c.inv_grad_scale))  # hyper.COEFFICIENTS
        fn(i, compute(g), param, m, v, given_or(v_max, v), given_or(kahan_comp, param),
           given_or(master_params, param), coef, np.uint32(0), 0)

    return impl


def _is_array(t) -> bool:
    return all(hasattr(t, name) for name in ("ndim", "dtype", "layout", "mutable"))


def absent(t) -> bool:
    """Whether an optional argument's type says it was not given, or given as None."""
    return t is None or type(t).__name__ in ("NoneType", "Omitted")


def default_of(t):
    """An omitted argument's default value (overload typing passes the value itself, or
    an ``Omitted`` type), else ``t``."""
    return t.value if type(t).__name__ == "Omitted" else t



def record_kind(t, family: str, argument: str, where: str) -> records.Kind:
    """The kind of a record type, or a TypeError naming ``argument``."""
    cls = getattr(t, "instance_class", None)
    if getattr(cls, "family", None) != family:
        made = "hyper" if family == "Hyper" else "coefficients"
        raise TypeError(f"{where}: {argument} must be a record from "
                          f"fastadam.numba.{made}(...), got {t}")
    return cls.kind


def array_kind(t, argument: str, kind: records.Kind, where: str, *, written: bool,
               one_dim: bool = False) -> str:
    """The float kind of an array argument's type, or a TypeError naming it."""
    if not _is_array(t):
        raise TypeError(f"{where}: {argument} must be an array, got {t}")
    if one_dim and t.ndim != 1:
        raise TypeError(f"{where}: {argument} must be 1-D (index a table's element "
                          f"row * columns + column of table.reshape(-1)), got {t.ndim}-D")
    if not one_dim and t.layout != "C":
        raise TypeError(f"{where}: {argument} must be C-contiguous, got layout {t.layout}")
    if written and not t.mutable:
        raise TypeError(f"{where}: {argument} is read-only; it is updated in place")
    if str(t.dtype) in ("float32", "float64"):
        return str(t.dtype)
    if str(t.dtype) == "uint16":
        held = (records.uint16_kinds(kind.uint16_as) or {}).get(records.ROLES[argument])
        if held is None:
            raise TypeError(f"{where}: {argument} is uint16; say which 16-bit float it "
                            "holds: fastadam.numba.hyper(..., uint16_as='bfloat16' or "
                            "'float16', or per role 'param=float16;grad=bfloat16;state=...')")
        return held
    raise TypeError(f"{where}: {argument} must hold float32, float64 or 16-bit floats "
                      f"as uint16, got {t.dtype}")


def step_flags(kind: records.Kind, where: str, param, grad, m, v, v_max, kahan_comp,
               master_params, *, one_dim: bool) -> Flags:
    """The kernel flags for these argument types, checked as ``adam_step`` checks them."""
    def of(t, name, written=True):
        return array_kind(t, name, kind, where, written=written, one_dim=one_dim)

    arrays = [t for t in (param, m, v) + ((grad,) if grad is not None else ())]
    if len({t.ndim for t in arrays if _is_array(t)}) > 1:
        raise TypeError(f"{where}: param, grad, m and v must have the same shape")
    param_kind, state = of(param, "param"), of(m, "m")
    grad_kind = compute_dtype(param_kind) if grad is None else of(grad, "grad", False)
    if of(v, "v") != state:
        raise TypeError(f"{where}: v must have m's dtype")
    if kind.amsgrad and absent(v_max):
        raise TypeError(f"{where}: amsgrad=True needs v_max, the running maximum of v")
    if kind.amsgrad and of(v_max, "v_max") != state:
        raise TypeError(f"{where}: v_max must have m's dtype")
    sixteen = param_kind in ("float16", "bfloat16")
    kahan, master = not absent(kahan_comp), not absent(master_params)
    if (kahan or master) and not sixteen:
        raise TypeError(f"{where}: kahan_comp and master_params are for 16-bit params")
    if kahan and (kahan_comp.dtype != param.dtype or of(kahan_comp, "kahan_comp") != param_kind):
        raise TypeError(f"{where}: kahan_comp must have param's dtype")
    if master and (of(master_params, "master_params") != "float32"):
        raise TypeError(f"{where}: master_params must be float32")
    return Flags(**{name: getattr(kind, name) for name in records.COMPILED_IN}, kahan=kahan,
                 master=master, param=param_kind, grad=grad_kind, state=state)


def constant(t, name: str, default):
    """A compile-time argument's value: its literal, or ``default`` where omitted."""
    t = default_of(t)
    if t is None or type(t).__name__ == "NoneType":
        return default
    if hasattr(t, "literal_value"):
        return t.literal_value
    if isinstance(t, (bool, int, float, str)):  # a default, as its value
        return t
    raise TypeError(f"fastadam.numba.hyper: {name} must be a constant in compiled code "
                    f"(it chooses the compiled update), got {t}")


