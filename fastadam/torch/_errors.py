"""Errors as torch users read them: state by torch's names, the param by group and index."""

from __future__ import annotations

import re

_STATE_NAMES = {"m": "exp_avg", "v": "exp_avg_sq", "v_max": "max_exp_avg_sq"}


def in_torch_words(error: Exception, group: dict, g: int, j: int) -> str:
    """A check's message as a torch user reads it: the state by torch's names, the param
    by group and index (and name, for named params), and what to check."""
    message = str(error)
    for ours, theirs in _STATE_NAMES.items():
        message = re.sub(rf"\b{ours}\b", theirs, message)
    names = group.get("param_names")
    name = f" ({names[j]!r})" if names and j < len(names) else ""
    where = f"param_groups[{g}]['params'][{j}]{name}"
    hint = ""
    if "shape" in message and any(k in message for k in _STATE_NAMES.values()):
        hint = ("; its state does not fit it: was this state_dict saved from another model, "
                "or the params given in another order?")
    return f"{where}: {message}{hint}"
