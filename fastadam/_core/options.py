"""Every hyperparameter, declared once: its keyword, default, check, and where it acts.

``HYPERPARAMETERS`` is the one list. What lists options derives from it: the keys of a
param group and of a state_dict's groups (``KEYS``), the defaults (``DEFAULTS``), the
validation (``hyper.hyper``), the kernels' flags (``KERNEL_FLAGS``: the options compiled
into the element update), the sharded optimizer's keywords and the benchmark's sweeps.

Adding an option that changes the element update (as ``nesterov`` did) means: one
``Option`` here, its use in ``_core/element.py`` (read as ``flags.<name>``)
and in the NumPy reference (``h.<name>``), and the keyword in the public signatures.

Each option names the update rules it belongs to (``RULES``): Adam's, schedule-free
AdamW's, AdEMAMix's. A rule's optimizers take, keep and save exactly its options.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

from . import checks

ADAM, SCHEDULE_FREE, ADEMAMIX = "adam", "schedulefree", "ademamix"
RULES = (ADAM, SCHEDULE_FREE, ADEMAMIX)  # the element updates: Adam's and two variants
_ALL = RULES


class Option(NamedTuple):
    """One hyperparameter: ``check(name, value)`` returns the validated value.

    ``acts``: "kernel", compiled into the element update (a ``Flags`` field of the same
    name: each value compiles its own kernel, with no branch per element); "scalar", a
    number the per-step coefficients are computed from; "rule", a choice that shapes
    those numbers or flags without being one itself. ``rules``: the update rules that
    take it (``RULES``).
    """

    name: str
    default: object
    check: Callable[[str, object], object]
    acts: str
    doc: str
    rules: tuple = (ADAM,)


def _betas(name: str, value) -> tuple[float, float]:
    return checks.betas(value)


def _optional_positive(name: str, value) -> float | None:
    return None if value is None else checks.positive(name, value)


def _below_one(name: str, value) -> float:
    return checks.real(name, value, below_one=True)


def _count(name: str, value) -> int:
    return checks.count(name, value)


def _optional_steps(name: str, value) -> int | None:
    return None if value is None else checks.count(name, value, least=1)


def _any_real(name: str, value) -> float:
    return checks.real(name, value, negative=True)


HYPERPARAMETERS = (
    Option("lr", 1e-3, checks.real, "scalar", "the learning rate", _ALL),
    Option("betas", (0.9, 0.999), _betas, "scalar", "the moments' decay rates", _ALL),
    Option("eps", 1e-8, checks.real, "scalar", "added to the denominator", _ALL),
    Option("weight_decay", 0.0, checks.real, "scalar", "L2 penalty, or decoupled decay",
           _ALL),
    Option("decoupled_weight_decay", False, checks.flag, "rule",
           "decay the params directly (AdamW) instead of adding to the gradient"),
    Option("amsgrad", False, checks.flag, "kernel", "keep the maximum of v (AMSGrad)"),
    Option("maximize", False, checks.flag, "kernel", "ascend instead of descend"),
    Option("bias_correction", True, checks.flag, "rule", "divide by 1 - beta**step"),
    Option("eps_root", 0.0, checks.real, "scalar", "added to v under the square root"),
    Option("nesterov", False, checks.flag, "kernel", "Nesterov momentum (NAdam, as optax)"),
    Option("decouple_lr", False, checks.flag, "rule",
           "weight decay independent of the lr (optimi): 1 - weight_decay * lr / max_lr"),
    Option("max_lr", None, _optional_positive, "scalar", "the peak lr for decouple_lr"),
    Option("warmup_steps", 0, _count, "scalar", "steps of linear lr warmup", (SCHEDULE_FREE,)),
    Option("r", 0.0, _any_real, "scalar", "the average's polynomial weighting power",
           (SCHEDULE_FREE,)),
    Option("weight_lr_power", 2.0, checks.real, "scalar",
           "the average's weights are the peak lr to this power", (SCHEDULE_FREE,)),
    Option("beta3", 0.9999, _below_one, "scalar", "the slow moment's decay rate",
           (ADEMAMIX,)),
    Option("alpha", 5.0, checks.real, "scalar", "the slow moment's weight", (ADEMAMIX,)),
    Option("t_alpha", None, _optional_steps, "scalar", "steps of alpha's linear warmup",
           (ADEMAMIX,)),
    Option("t_beta3", None, _optional_steps, "scalar", "steps of beta3's warmup",
           (ADEMAMIX,)),
)


_KEYS_OF = {rule: tuple(o.name for o in HYPERPARAMETERS if rule in o.rules) for rule in RULES}


def keys(rule: str = ADAM) -> tuple[str, ...]:
    """The keywords of the options ``rule`` takes, in declaration order."""
    return _KEYS_OF[rule]


KEYS = keys(ADAM)
DEFAULTS = {o.name: o.default for o in HYPERPARAMETERS if ADAM in o.rules}  # Adam's
KERNEL_FLAGS = tuple(o.name for o in HYPERPARAMETERS if o.acts == "kernel")


_HINTS = {checks.flag: "bool", checks.real: "float", _betas: "tuple[float, float]",
          _optional_positive: "float | None", _below_one: "float", _count: "int",
          _optional_steps: "int | None", _any_real: "float"}


def keyword_function(name: str, body: str, namespace: dict, *, more: str = "",
                     rule: str = ADAM) -> Callable:
    """A function ``name(<rule's options, with defaults and type hints>, <more>)`` whose
    body is the source ``body``, run in ``namespace``: generated from the declaration,
    as dataclasses generate ``__init__``, for what must spell every keyword (Numba types
    a call by its parameters, and takes no ``**kwargs``)."""
    parameters = [f"{o.name}: {_HINTS[o.check]} = {o.default!r}"
                  for o in HYPERPARAMETERS if rule in o.rules]
    source = f"def {name}({', '.join([*parameters, *filter(None, [more])])}):\n    {body}\n"
    scope = dict(namespace)
    exec(compile(source, f"<fastadam: {name}({rule} options)>", "exec"), scope)
    return scope[name]


def checked(settings: dict, rule: str = ADAM) -> dict:
    """``settings`` (a subset of ``keys(rule)``) over the defaults, each value checked,
    with the checks that involve two options; every other option at its default.
    Unknown keys raise TypeError."""
    known = keys(rule)
    unknown = set(settings) - set(known)
    if unknown:
        raise TypeError(f"unknown hyperparameters {sorted(unknown)}; known: {', '.join(known)}")
    values = {o.name: o.check(o.name, settings.get(o.name, o.default)) if o.name in known
              else o.default for o in HYPERPARAMETERS}
    if values["decouple_lr"] and values["max_lr"] is None:
        raise ValueError("decouple_lr=True needs max_lr, the peak learning rate")
    return values


# How an optimizer keeps its state and takes its gradients: its keywords beyond the
# hyperparameters (checked where the state is made, ``_state/slots.Options``, and by the
# optimizer), with their defaults.
SETTINGS = {
    "state_dtype": None,
    "kahan_summation": None,
    "master_weights": False,
    "skip_nonfinite": False,
    "stochastic_rounding": False,
    "seed": 0,
    "max_grad_norm": None,
}
