"""``fastadam.torch.Adam8bit`` / ``AdamW8bit``: bitsandbytes' 8-bit Adam, fused, on the CPU.

The state is bitsandbytes' own, key for key: ``step``, ``state1``/``state2``
(uint8 codes, or float32 moments for params under ``min_8bit_size`` elements),
``absmax1``/``absmax2``, ``qmap1``/``qmap2``; ``state_dict()`` nests the
quantization entries as bitsandbytes 0.50 does, so checkpoints load into
``bitsandbytes.optim.Adam8bit``/``AdamW8bit`` and back. Weight decay is
decoupled in both classes, as in bitsandbytes' 8-bit kernels.
"""

from __future__ import annotations

import copy
from itertools import chain

import numpy as np
import torch

from . import _validate as check
from . import quant8
from ._dispatch import apply, apply_8bit, flags_8bit, step_flags
from .functional import hyper

__all__ = ["Adam8bit", "AdamW8bit"]

WRAPPED = "__bnb_optimizer_quant_state__"  # bitsandbytes' nesting of the 8-bit entries
_QUANT_KEYS = ("state1", "state2", "absmax1", "absmax2", "qmap1", "qmap2")
_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _numpy(t: torch.Tensor) -> np.ndarray:
    """A zero-copy NumPy view of a CPU tensor (bfloat16 through ml_dtypes)."""
    from .torch import _array

    return _array(t)


class _Adam8bit(torch.optim.Optimizer):
    def __init__(self, params, lr: float, betas: tuple[float, float], eps: float,
                 weight_decay: float, maximize: bool, min_8bit_size: int) -> None:
        hyper(lr, betas, eps, weight_decay, True, False, maximize)  # torch-style early errors
        if isinstance(min_8bit_size, bool) or not isinstance(min_8bit_size, int) or \
                min_8bit_size < 0:
            raise ValueError(f"min_8bit_size must be an int >= 0, got {min_8bit_size!r}")
        self.min_8bit_size = min_8bit_size
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                                      maximize=maximize))

    def _fresh(self, p: torch.Tensor) -> dict:
        if p.numel() < self.min_8bit_size:
            return {"step": 0, "state1": torch.zeros_like(p, dtype=torch.float32),
                    "state2": torch.zeros_like(p, dtype=torch.float32)}
        blocks = quant8.blocks(p.numel())
        return {"step": 0,
                "state1": torch.zeros_like(p, dtype=torch.uint8),
                "state2": torch.zeros_like(p, dtype=torch.uint8),
                "qmap1": torch.from_numpy(quant8.dynamic_map(True).copy()),
                "qmap2": torch.from_numpy(quant8.dynamic_map(False).copy()),
                "absmax1": torch.zeros(blocks, dtype=torch.float32),
                "absmax2": torch.zeros(blocks, dtype=torch.float32)}

    @torch.no_grad()
    def step(self, closure=None):
        """One update of every parameter with a gradient; returns the closure's loss.
        Everything is checked before anything is written: a refused step changes nothing."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        planned = []
        for group in self.param_groups:
            h = hyper(float(group["lr"]), tuple(float(b) for b in group["betas"]),
                      group["eps"], group["weight_decay"], True, False, group["maximize"])
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("fastadam does not support sparse gradients")
                if p.is_cuda or p.dtype not in _DTYPES:
                    raise TypeError("fastadam's 8-bit Adam steps float CPU tensors; got a "
                                    f"{p.dtype} tensor on {p.device}")
                state = self.state.get(p) or self._fresh(p)
                param, grad = _numpy(p.detach()), _numpy(p.grad.detach().contiguous())
                eight = state["state1"].dtype == torch.uint8
                if eight:
                    arrays = check.step_arrays_8bit(
                        "cpu", param, grad,
                        (state["state1"].numpy(), state["state2"].numpy(), None),
                        (state["absmax1"].numpy(), state["absmax2"].numpy(), None),
                        None, None, False)
                else:
                    arrays = check.step_arrays("cpu", param, grad, state["state1"].numpy(),
                                               state["state2"].numpy(), None, None, None,
                                               False)
                planned.append((p, state, h, eight, arrays))
        for p, state, h, eight, arrays in planned:  # all checked: write
            step = int(state["step"]) + 1
            if eight:
                *views, codes, absmax = arrays
                flags = flags_8bit(h, views[0], views[1], False, False)
                apply_8bit("cpu", tuple(views), codes, absmax, h, flags, step)
            else:
                apply("cpu", arrays, h, step_flags(h, arrays), step)
            state["step"] = step
            self.state[p] = state
        return loss

    def state_dict(self) -> dict:
        """torch's state_dict, with the 8-bit entries nested as bitsandbytes nests them."""
        out = super().state_dict()
        out["state"] = {k: dict(v) for k, v in out["state"].items()}
        for entry in out["state"].values():
            quant = {k: entry.pop(k) for k in _QUANT_KEYS if k in entry}
            if quant:
                entry[WRAPPED] = quant
        return out

    def load_state_dict(self, state_dict: dict) -> None:
        """Load a state_dict of this class or of bitsandbytes' Adam8bit/AdamW8bit: every
        entry is checked (codes, absmax, maps) before anything changes."""
        if not isinstance(state_dict, dict) or not {"state", "param_groups"} <= set(state_dict):
            raise ValueError("state_dict must be a dict with 'state' and 'param_groups'")
        saved_groups = state_dict["param_groups"]
        if len(saved_groups) != len(self.param_groups) or any(
                len(a["params"]) != len(b["params"])
                for a, b in zip(saved_groups, self.param_groups)):
            raise ValueError("state_dict['param_groups'] does not match this optimizer's groups")
        params = dict(zip(chain.from_iterable(g["params"] for g in saved_groups),
                          chain.from_iterable(g["params"] for g in self.param_groups)))
        state = {}
        for key, entry in state_dict["state"].items():
            if key not in params:
                raise ValueError(f"state_dict['state'][{key!r}] names no parameter")
            state[params[key]] = _checked_entry(key, dict(entry), params[key])
        groups = []
        for saved, current in zip(saved_groups, self.param_groups):
            group = {k: copy.deepcopy(v) for k, v in saved.items() if k != "params"}
            hyper(float(group.get("lr", current["lr"])), tuple(group.get("betas",
                  current["betas"])), group.get("eps", current["eps"]),
                  group.get("weight_decay", current["weight_decay"]), True, False,
                  group.get("maximize", current["maximize"]))
            groups.append({**current, **group, "params": current["params"]})
        self.state.clear()
        self.state.update(state)
        self.param_groups[:] = groups


def _checked_entry(key, entry: dict, p: torch.Tensor) -> dict:
    """A copy of one param's saved state, checked against bitsandbytes' format."""
    label = f"state_dict['state'][{key!r}]"
    entry.update(entry.pop(WRAPPED, {}))
    step = entry.get("step")
    step = int(step.item()) if isinstance(step, torch.Tensor) else step
    if isinstance(step, bool) or not isinstance(step, (int, np.integer)) or step < 0:
        raise ValueError(f"{label}['step'] must be an int >= 0, got {entry.get('step')!r}")
    out = {"step": int(step)}
    first = entry.get("state1")
    if not isinstance(first, torch.Tensor):
        raise ValueError(f"{label}['state1'] must be a tensor")
    eight = first.dtype == torch.uint8 or "absmax1" in entry
    n = p.numel()
    wanted = ({"state1": (torch.uint8, n), "state2": (torch.uint8, n),
               "absmax1": (torch.float32, quant8.blocks(n)),
               "absmax2": (torch.float32, quant8.blocks(n)),
               "qmap1": (torch.float32, 256), "qmap2": (torch.float32, 256)} if eight else
              {"state1": (torch.float32, n), "state2": (torch.float32, n)})
    for name, (dtype, size) in wanted.items():
        value = entry.get(name)
        if not isinstance(value, torch.Tensor):
            raise ValueError(f"{label}[{name!r}] is missing")
        if value.dtype != dtype or value.numel() != size:
            raise ValueError(f"{label}[{name!r}] must be {size} elements of {dtype}, got "
                             f"{value.numel()} of {value.dtype}")
        value = value.detach().to("cpu", copy=True).contiguous()
        out[name] = value.reshape(p.shape) if name.startswith("state") else value.reshape(-1)
    if eight:
        for name, signed in (("qmap1", True), ("qmap2", False)):
            if not np.array_equal(out[name].numpy().view(np.uint32),
                                  quant8.dynamic_map(signed).view(np.uint32)):
                raise ValueError(f"{label}[{name!r}] is not the standard "
                                 f"{'signed' if signed else 'unsigned'} dynamic map")
        for name in ("absmax1", "absmax2"):
            a = out[name].numpy()
            if not (np.isfinite(a).all() and (a >= 0).all()):
                raise ValueError(f"{label}[{name!r}] must be finite and >= 0")
    return out


class Adam8bit(_Adam8bit):
    """Adam with 8-bit blockwise states, bitsandbytes' format (``bitsandbytes.optim.Adam8bit``).

    Params under ``min_8bit_size`` elements keep float32 states. ``weight_decay``
    is decoupled, as in bitsandbytes. One fused pass per tensor on the CPU.
    """

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0, *, maximize: bool = False,
                 min_8bit_size: int = quant8.MIN_8BIT_SIZE) -> None:
        super().__init__(params, lr, betas, eps, weight_decay, maximize, min_8bit_size)


class AdamW8bit(_Adam8bit):
    """AdamW with 8-bit blockwise states (``bitsandbytes.optim.AdamW8bit``; weight_decay 1e-2)."""

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 1e-2, *, maximize: bool = False,
                 min_8bit_size: int = quant8.MIN_8BIT_SIZE) -> None:
        super().__init__(params, lr, betas, eps, weight_decay, maximize, min_8bit_size)
