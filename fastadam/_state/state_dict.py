"""state_dicts: an optimizer's state as torch lays it out, and its checked restore.

``{"state": {i: {"step", "exp_avg", ...}}, "param_groups": [{..., "params": [i, ...]}]}``
with NumPy arrays and Python numbers. ``checked`` reads everything into new
objects first, so that a refused state_dict changes nothing.
"""

from __future__ import annotations

from .._core import checks
from .._core.hyper import hyper
from .._core.options import ADAM, keys

_REQUIRED = {"lr", "betas", "eps", "weight_decay"}  # and Adam's: amsgrad, maximize
_ADAM_REQUIRED = {"amsgrad", "maximize"}
_OPTIONS = ("kahan_summation", "master_weights", "stochastic_rounding")


def build(slots: list, param_groups: list, options: dict, backend: str) -> dict:
    """The state_dict of ``slots`` (in order) under ``param_groups`` and ``options``."""
    state = {i: slot.entry(backend) for i, slot in enumerate(slots)}
    return {"state": state, "param_groups": [{**g, **options} for g in param_groups]}


def checked(state_dict, groups: list, slots: list, param_groups: list, options: dict,
            backend: str) -> tuple[list, list]:
    """(each group's hyperparameters, each slot's (step, state arrays, absmax)) from
    ``state_dict``, every part checked; raises naming the entry."""
    if not isinstance(state_dict, dict) or set(state_dict) != {"state", "param_groups"}:
        raise ValueError("state_dict must be a dict with keys 'state' and 'param_groups'")
    given = state_dict["param_groups"]
    if not isinstance(given, (list, tuple)) or len(given) != len(param_groups) or not all(
            isinstance(g, dict) for g in given):
        raise ValueError(f"state_dict['param_groups'] must hold {len(param_groups)} group(s) "
                         "(dicts)")
    rule = groups[0][0].rule
    hypers = [_group(i, group, current, options, rule)
              for i, (group, current) in enumerate(zip(given, param_groups))]
    state = state_dict["state"]
    if not isinstance(state, dict) or sorted(state) != list(range(len(slots))) or not all(
            isinstance(e, dict) for e in state.values()):
        raise ValueError(f"state_dict['state'] must be {{0: {{...}}, ...}} with one entry per "
                         f"params array ({len(slots)})")
    slot_hypers = [h for h, (_, members) in zip(hypers, groups) for _ in members]
    loaded = [slot.loaded(i, state[i], h, backend)
              for i, (slot, h) in enumerate(zip(slots, slot_hypers))]
    return hypers, loaded


def seed_of(state_dict: dict, current: int) -> int:
    """The stochastic-rounding seed ``state_dict`` carries (its first group's), checked;
    ``current`` where it carries none."""
    value = state_dict["param_groups"][0].get("seed", current) if state_dict[
        "param_groups"] else current
    try:
        return checks.seed(value)
    except TypeError as e:
        raise TypeError(f"state_dict['param_groups'][0]: {e}") from e


def _group(i: int, group: dict, current: dict, options: dict, rule: str):
    label = f"state_dict['param_groups'][{i}]"
    missing = (_REQUIRED | (_ADAM_REQUIRED if rule == ADAM else set())) - set(group)
    if missing:
        raise ValueError(f"{label} lacks {sorted(missing)}")
    if list(group.get("params", current["params"])) != current["params"]:
        raise ValueError(f"{label}['params'] is {group.get('params')}, but this "
                         f"optimizer's group holds {current['params']}")
    try:
        h = hyper(rule, **{k: group.get(k, current[k]) for k in keys(rule)})
    except (TypeError, ValueError) as e:
        raise type(e)(f"{label}: {e}") from e
    for option in _OPTIONS:
        if option in group and bool(group[option]) != options[option]:
            raise ValueError(f"{label}[{option!r}] is {group[option]}, but this "
                             f"optimizer has {options[option]}")
    return h
