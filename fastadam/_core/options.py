"""Every hyperparameter, declared once: its keyword, default, check, and where it acts.

``HYPERPARAMETERS`` is the one list. What lists options derives from it: the keys of a
param group and of a state_dict's groups (``KEYS``), the defaults (``DEFAULTS``), the
validation (``hyper.hyper``), the kernels' flags (``KERNEL_FLAGS``: the options compiled
into the element update), the sharded optimizer's keywords and the benchmark's sweeps.

Adding an option that changes the element update (as ``nesterov`` did) means: one
``Option`` here, its use in ``_backends/shared/element.py`` (read as ``flags.<name>``)
and in the NumPy reference (``h.<name>``), and the keyword in the public signatures.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

from . import checks


class Option(NamedTuple):
    """One hyperparameter: ``check(name, value)`` returns the validated value.

    ``acts``: "kernel", compiled into the element update (a ``Flags`` field of the same
    name: each value compiles its own kernel, with no branch per element); "scalar", a
    number the per-step coefficients are computed from; "rule", a choice that shapes
    those numbers or flags without being one itself.
    """

    name: str
    default: object
    check: Callable[[str, object], object]
    acts: str
    doc: str


def _betas(name: str, value) -> tuple[float, float]:
    return checks.betas(value)


def _optional_positive(name: str, value) -> float | None:
    return None if value is None else checks.positive(name, value)


HYPERPARAMETERS = (
    Option("lr", 1e-3, checks.real, "scalar", "the learning rate"),
    Option("betas", (0.9, 0.999), _betas, "scalar", "the moments' decay rates"),
    Option("eps", 1e-8, checks.real, "scalar", "added to the denominator"),
    Option("weight_decay", 0.0, checks.real, "scalar", "L2 penalty, or decoupled decay"),
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
)

KEYS = tuple(o.name for o in HYPERPARAMETERS)
DEFAULTS = {o.name: o.default for o in HYPERPARAMETERS}
KERNEL_FLAGS = tuple(o.name for o in HYPERPARAMETERS if o.acts == "kernel")


def checked(settings: dict) -> dict:
    """``settings`` (a subset of ``KEYS``) over the defaults, each value checked, with
    the checks that involve two options. Unknown keys raise TypeError."""
    unknown = set(settings) - set(KEYS)
    if unknown:
        raise TypeError(f"unknown hyperparameters {sorted(unknown)}; known: {', '.join(KEYS)}")
    values = {o.name: o.check(o.name, settings.get(o.name, o.default))
              for o in HYPERPARAMETERS}
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
