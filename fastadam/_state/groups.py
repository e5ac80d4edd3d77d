"""Param groups: torch-style group specs, and each group's validated hyperparameters."""

from __future__ import annotations

import numbers

import numpy as np

from .._core import array_checks
from .._core.gpu import is_device
from .._core.hyper import Hyper, hyper
from .._core.options import ADAM, keys


def specs(params, rule: str = ADAM) -> list[dict]:
    """A list of arrays, or of torch-style group dicts (with the options of update
    ``rule``), as a list of {"params": [...], ...}."""
    if isinstance(params, (str, bytes, dict)) or not isinstance(params, (list, tuple)):
        array_checks.refuse_torch_tensor("params", params)
        raise TypeError("params must be an array, a list of arrays, or a list of param "
                        f"groups (dicts), got {type(params).__name__}")
    if not params:
        raise ValueError("params is empty")
    if not any(isinstance(p, dict) for p in params):
        return [{"params": list(params)}]
    if not all(isinstance(p, dict) for p in params):
        raise TypeError("params mixes arrays and param groups (dicts)")
    out = []
    for i, group in enumerate(params):
        unknown = set(group) - {"params", *keys(rule)}
        if unknown:
            raise ValueError(f"params[{i}] has unknown keys {sorted(unknown)}")
        if "params" not in group:
            raise ValueError(f"params[{i}] lacks 'params'")
        arrays = group["params"]
        arrays = [arrays] if isinstance(arrays, np.ndarray) or is_device(arrays) else arrays
        if not isinstance(arrays, (list, tuple)) or not arrays:
            raise TypeError(f"params[{i}]['params'] must be an array or a non-empty list of arrays")
        out.append({**group, "params": list(arrays)})
    return out


def group_hyper(defaults: dict, spec: dict, rule: str = ADAM) -> Hyper:
    """The validated hyperparameters of one group: its own settings over ``defaults``."""
    settings = {**defaults, **{k: v for k, v in spec.items() if k != "params"}}
    if settings.get("decouple_lr") is True and settings["max_lr"] is None:
        settings["max_lr"] = settings["lr"]  # optimi: the initial lr is the peak
    return hyper(rule, **settings)


def as_dict(h: Hyper) -> dict:
    """The hyperparameters (of ``h``'s update rule) as the keyword arguments that set them."""
    return {k: (h.beta1, h.beta2) if k == "betas" else getattr(h, k) for k in keys(h.rule)}


def index(group, count: int) -> int:
    """A group index below ``count``."""
    if isinstance(group, bool) or not isinstance(group, numbers.Integral) or not (
            0 <= group < count):
        raise ValueError(f"group must be an index below {count}, got {group!r}")
    return int(group)
