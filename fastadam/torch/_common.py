"""What the drop-ins beyond torch's own share: the closure, clipping by the global norm,
matching a state_dict's params to the optimizer's, and bitsandbytes' nesting of its state
entries."""

from __future__ import annotations

import math
from itertools import chain

import torch

from .._backends.dispatch import sum_of_squares
from .._core.hyper import clip_factor, clipped_scale


class KeepsSettings:
    """Pickling (``copy.deepcopy``, multiprocessing) keeps the settings a drop-in adds to
    torch's optimizer (``_SETTINGS``: ``max_grad_norm`` and the like), which torch's
    ``__getstate__`` (defaults, state and param groups only) would drop: an unpickled
    drop-in steps as the original. The last step's norm starts again at None."""

    _SETTINGS: tuple = ("_max_grad_norm",)

    def __getstate__(self) -> dict:
        kept = {k: self.__dict__[k] for k in self._SETTINGS if k in self.__dict__}
        return {**super().__getstate__(), **kept}

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        self.__dict__.setdefault("_max_grad_norm", None)  # pickled before it was kept
        self.grad_norm = None


def closure_loss(closure):
    """The closure's loss, computed with gradients on (None without a closure)."""
    if closure is None:
        return None
    with torch.enable_grad():
        return closure()


def matched_params(state_dict, param_groups: list) -> dict:
    """``{saved param key: this optimizer's param}``, after checking that ``state_dict``
    is one and that its groups hold as many params as these."""
    if not isinstance(state_dict, dict) or not {"state", "param_groups"} <= set(state_dict):
        raise ValueError("state_dict must be a dict with 'state' and 'param_groups'")
    saved_groups = state_dict["param_groups"]
    if len(saved_groups) != len(param_groups) or any(
            len(a["params"]) != len(b["params"]) for a, b in zip(saved_groups, param_groups)):
        raise ValueError("state_dict['param_groups'] does not match this optimizer's groups")
    params = dict(zip(chain.from_iterable(g["params"] for g in saved_groups),
                      chain.from_iterable(g["params"] for g in param_groups)))
    unknown = [key for key in state_dict["state"] if key not in params]
    if unknown:
        raise ValueError(f"state_dict['state'][{unknown[0]!r}] names no parameter")
    return params


def with_gradients(param_groups: list, hyper_of):
    """``(group, hyperparameters, index, param)`` for each param with a gradient: its
    group, the group's ``hyper_of(group)``, its index among all params; sparse gradients
    refused."""
    index = -1
    for group in param_groups:
        h = hyper_of(group)
        for p in group["params"]:
            index += 1
            if p.grad is None:
                continue
            if p.grad.is_sparse:
                raise RuntimeError("fastadam does not support sparse gradients")
            yield group, h, index, p


def refuse_low_bit(state_dict) -> None:
    """Refuse a state_dict of low-bit moments (bitsandbytes' 8-bit, torchao's or fastadam's
    4-bit) for a 32-bit optimizer, whose moments would restart at zero from it."""
    entries = state_dict.get("state") if isinstance(state_dict, dict) else None
    for key, entry in (entries or {}).items():
        low = [k for k, v in (entry.items() if isinstance(entry, dict) else ())
               if k.endswith("_codes") or k in ("state1", "__bnb_optimizer_quant_state__")
               or hasattr(v, "codes")]
        if low:
            raise ValueError(f"state_dict['state'][{key!r}] holds low-bit moments "
                             f"({low[0]!r}): load it into fastadam.torch.AdamW8bit or "
                             "AdamW4bit (Adam8bit, Adam4bit), which keep that format")


WRAPPED = "__bnb_optimizer_quant_state__"  # bitsandbytes' nesting of its state entries


def nested(out: dict, names: tuple) -> dict:
    """A torch ``state_dict()`` with each entry's ``names`` nested under ``WRAPPED``, as
    bitsandbytes nests them (the entries copied, the tensors shared)."""
    out["state"] = {k: dict(v) for k, v in out["state"].items()}
    for entry in out["state"].values():
        moved = {k: entry.pop(k) for k in names if k in entry}
        if moved:
            entry[WRAPPED] = moved
    return out


def clip_scale(grads: list, max_grad_norm: float) -> tuple[float, float | None]:
    """(the total norm, the loss scale that applies torch's clip coefficient) of checked
    gradients given as ``(backend, 1-D array)``: one read of each, summed per backend."""
    squares = 0.0
    for backend in dict.fromkeys(b for b, _ in grads):
        squares += sum_of_squares(backend, [g for b, g in grads if b == backend])
    norm = math.sqrt(squares)
    return norm, clipped_scale(None, clip_factor(norm, max_grad_norm))
