"""``fastadam.torch.Adam4bit`` / ``AdamW4bit``: torchao's 4-bit Adam, fused, on CPU and
CUDA tensors.

torchao's ``AdamW4bit`` keeps each moment as an ``OptimState4bit`` tensor (codes two to a
byte, a float32 scale per block of 128, a map of 16 values), or as a float32 tensor for
params under 4,096 elements or not divisible by 128. Here every param's moments are 4
bits, as plain tensors: ``exp_avg_codes``/``exp_avg_scale`` and ``exp_avg_sq_codes``/
``exp_avg_sq_scale`` (``max_exp_avg_sq_*`` with amsgrad). ``load_state_dict`` takes
torchao's state_dicts (its 4-bit tensors, and its float32 ones, quantized) as well as
this class's; ``torchao_state_dict`` gives one torchao's optimizers load (torchao
installed). The moments move as torchao's do, so from one state the codes are the same.
State lives on its param's device; CUDA tensors step on torch's current stream. A list
steps as one (``_list_plan``): on the CPU its gradients checked at once, on a GPU one
launch per batch of alike tensors.
"""

from __future__ import annotations

import copy
from itertools import chain

import numpy as np
import torch

from .._backends.dispatch import apply_8bit, flags_8bit, resolve, rounding_key
from .._core import array_checks, checks, quant4
from .._core.hyper import hyper
from ._common import KeepsSettings, clip_scale, closure_loss, matched_params, with_gradients
from ._list_plan import Layout, step_list
from ._tensors import as_array, current_stream

__all__ = ["Adam4bit", "AdamW4bit", "torchao_state_dict"]

_MOMENTS = (("exp_avg", True), ("exp_avg_sq", False), ("max_exp_avg_sq", False))
_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


class _Adam4bit(KeepsSettings, torch.optim.Optimizer):
    _decoupled = False

    def __init__(self, params, lr, betas, eps, weight_decay, amsgrad, block_size,
                 bf16_stochastic_round, max_grad_norm, seed) -> None:
        hyper(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,  # torch-style early errors
              decoupled_weight_decay=self._decoupled, amsgrad=amsgrad)
        if block_size != quant4.BLOCK:
            raise ValueError(f"block_size must be {quant4.BLOCK} (torchao's 4-bit format)")
        self._max_grad_norm = checks.max_grad_norm(max_grad_norm)
        self.grad_norm = None  # with max_grad_norm: the last step's total norm, unclipped
        super().__init__(params, dict(
            lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad,
            bf16_stochastic_round=checks.flag("bf16_stochastic_round", bf16_stochastic_round),
            seed=checks.seed(seed)))

    @staticmethod
    def _fresh(p: torch.Tensor, amsgrad: bool) -> dict:
        n = p.numel()
        state = {"step": 0}
        for name, _ in _MOMENTS[:3 if amsgrad else 2]:
            state[f"{name}_codes"] = torch.zeros(quant4.code_bytes(n), dtype=torch.uint8,
                                                 device=p.device)
            state[f"{name}_scale"] = torch.zeros(quant4.blocks(n), dtype=torch.float32,
                                                 device=p.device)
        return state

    @torch.no_grad()
    def step(self, closure=None):
        """One update of every parameter with a gradient; returns the closure's loss.
        Everything is checked before anything is written: a refused step changes nothing."""
        loss = closure_loss(closure)
        live = [[p for p in group["params"] if p.grad is not None] for group in self.param_groups]
        if not step_list(self, _LAYOUTS[self._decoupled], live):
            self._step_each()
        return loss

    def _step_each(self) -> None:
        """Tensor by tensor (what the list plan does not take)."""
        planned = []
        hyper_of = _LAYOUTS[self._decoupled].hyper
        for group, h, index, p in with_gradients(self.param_groups, hyper_of):
            if p.dtype not in _DTYPES:
                raise TypeError(f"fastadam's 4-bit Adam steps float tensors; got {p.dtype}")
            state = self.state.get(p) or self._fresh(p, h.amsgrad)
            names = [name for name, _ in _MOMENTS[:3 if h.amsgrad else 2]]
            absent = (None,) * (3 - len(names))
            param = as_array(p.detach())
            backend = resolve("auto", param)
            arrays = array_checks.step_arrays_8bit(
                backend, param, as_array(p.grad.detach().contiguous()),
                tuple(as_array(state[f"{n}_codes"]) for n in names) + absent,
                tuple(as_array(state[f"{n}_scale"]) for n in names) + absent,
                None, None, h.amsgrad, "4bit")
            rounded = group["bf16_stochastic_round"] and p.dtype == torch.bfloat16
            planned.append((p, state, h, arrays, rounded, rounding_key(group["seed"], index),
                            backend))
        scale = self._clip_scale(planned)
        for p, state, h, arrays, rounded, key, backend in planned:  # all checked
            *views, codes, scales = arrays
            flags = flags_8bit(h, views[0], views[1], False, False, rounded, "4bit")
            step = int(state["step"]) + 1
            apply_8bit(backend, tuple(views), codes, scales, h, flags, step, grad_scale=scale,
                       key=key, fmt="4bit", stream=current_stream(p) if p.is_cuda else None)
            state["step"] = step
            self.state[p] = state

    def _clip_scale(self, planned: list):
        if self._max_grad_norm is None:
            return None
        self.grad_norm, scale = clip_scale([(entry[6], entry[3][1]) for entry in planned],
                                           self._max_grad_norm)
        return scale

    def load_state_dict(self, state_dict: dict) -> None:
        """Load a state_dict of this class or of torchao's ``Adam4bit``/``AdamW4bit``:
        every entry is checked and converted before anything changes."""
        params = matched_params(state_dict, self.param_groups)
        saved_groups = state_dict["param_groups"]
        amsgrad = {id(p): g["amsgrad"] for g in self.param_groups for p in g["params"]}
        state = {}
        for key, entry in state_dict["state"].items():
            p = params[key]
            state[p] = _checked_entry(key, dict(entry), p, amsgrad[id(p)])
        groups = [{**current, **{k: copy.deepcopy(v) for k, v in saved.items()
                                 if k not in ("params", "block_size")}, "params": current["params"]}
                  for saved, current in zip(saved_groups, self.param_groups)]
        self.state.clear()
        self.state.update(state)
        self.param_groups[:] = groups


def _checked_entry(key, entry: dict, p: torch.Tensor, amsgrad: bool) -> dict:
    """One param's saved state as this class keeps it: its own entries checked, torchao's
    4-bit tensors taken apart, its float32 tensors quantized."""
    label = f"state_dict['state'][{key!r}]"
    step = entry.get("step")
    step = step.item() if isinstance(step, torch.Tensor) else step
    if isinstance(step, bool) or not isinstance(step, (int, float, np.integer)) or step < 0 \
            or step != int(step):
        raise ValueError(f"{label}['step'] must be a whole number >= 0, got {step!r}")
    out, n = {"step": int(step)}, p.numel()
    for name, signed in _MOMENTS[:3 if amsgrad else 2]:
        value = entry.get(name)
        if value is None:
            codes, scale = entry.get(f"{name}_codes"), entry.get(f"{name}_scale")
        elif hasattr(value, "codes") and hasattr(value, "scale"):  # torchao's OptimState4bit
            if getattr(value, "block_size", quant4.BLOCK) != quant4.BLOCK or not np.array_equal(
                    value.qmap.detach().cpu().numpy().view(np.uint32),
                    quant4.qmap(signed).view(np.uint32)):
                raise ValueError(f"{label}[{name!r}] is not torchao's 4-bit format of "
                                 f"blocks of {quant4.BLOCK} and its standard map")
            codes, scale = value.codes, value.scale
        elif isinstance(value, torch.Tensor) and value.is_floating_point() and value.numel() == n:
            codes, scale = (torch.from_numpy(a) for a in quant4.quantize(
                value.detach().cpu().float().numpy().reshape(-1), signed))
        else:
            raise ValueError(f"{label}[{name!r}] must be torchao's 4-bit state or a float "
                             f"tensor of the param's {n} elements")
        parts = ((f"{name}_codes", codes, torch.uint8, quant4.code_bytes(n)),
                 (f"{name}_scale", scale, torch.float32, quant4.blocks(n)))
        for part, value, dtype, size in parts:
            if not (isinstance(value, torch.Tensor) and value.dtype == dtype
                    and value.numel() == size):
                raise ValueError(f"{label}[{part!r}] must be {size} elements of {dtype}")
            out[part] = value.detach().to(p.device, copy=True).contiguous().reshape(-1)
    return out


def torchao_state_dict(optimizer: _Adam4bit) -> dict:
    """``optimizer``'s state_dict as torchao's ``Adam4bit``/``AdamW4bit`` keep theirs, to
    load there: ``OptimState4bit`` moments, or float32 ones for the params torchao keeps
    in float32 (under 4,096 elements or not a multiple of 128). Needs torchao."""
    from torchao.optim.subclass_4bit import OptimState4bit  # optional: this converter only

    out = optimizer.state_dict()
    params = list(chain.from_iterable(g["params"] for g in optimizer.param_groups))
    state = {}
    for key, entry in out["state"].items():
        p, converted = params[key], {"step": torch.tensor(float(entry["step"]))}
        n = p.numel()
        for name, signed in _MOMENTS:
            if f"{name}_codes" not in entry:
                continue
            codes, scale = entry[f"{name}_codes"], entry[f"{name}_scale"]
            if n >= 4096 and n % quant4.BLOCK == 0:
                converted[name] = OptimState4bit(
                    codes.clone(), scale.clone(),
                    torch.from_numpy(quant4.qmap(signed).copy()).to(codes.device), signed,
                    p.shape, dtype=p.dtype)
            else:
                converted[name] = torch.from_numpy(quant4.dequantize(
                    codes.cpu().numpy(), scale.cpu().numpy(), signed, n)).reshape(p.shape).to(
                        codes.device)
        state[key] = converted
    groups = [{**g, "block_size": quant4.BLOCK, "lr": torch.tensor(g["lr"])}
              for g in out["param_groups"]]
    return {"state": state, "param_groups": groups}


class _Layout(Layout):
    """This module's state: ``step`` an int, each moment's 4-bit codes and scales."""

    dtypes, state_dtype = _DTYPES, "4bit"

    def __init__(self, decoupled: bool) -> None:
        self.decoupled = decoupled

    def hyper(self, group: dict):
        return hyper(lr=float(group["lr"]), betas=tuple(float(b) for b in group["betas"]),
                     eps=group["eps"], weight_decay=group["weight_decay"],
                     decoupled_weight_decay=self.decoupled, amsgrad=group["amsgrad"])

    def options(self, param_groups: list) -> list:
        # lr, betas, eps and the size of weight_decay are read at every step.
        return [(g["amsgrad"], g["weight_decay"] == 0, g["bf16_stochastic_round"], g["seed"])
                for g in param_groups]

    def fresh(self, opt, p: torch.Tensor, group: dict) -> dict:
        return opt._fresh(p, group["amsgrad"])

    def state_of(self, p: torch.Tensor, group: dict, entry: dict) -> tuple | None:
        names = [name for name, _ in _MOMENTS[:3 if group["amsgrad"] else 2]]
        keys = (*(f"{n}_codes" for n in names), *(f"{n}_scale" for n in names))
        tensors = [entry.get(k) for k in keys]
        if not (all(isinstance(t, torch.Tensor) and t.device == p.device and t.is_contiguous()
                    for t in tensors) and isinstance(entry.get("step"), int)):
            return None
        arrays, absent = [as_array(t) for t in tensors], (None,) * (3 - len(names))
        return keys, (*arrays[:len(names)], *absent), (*arrays[len(names):], *absent)

    def rounding(self, opt, group: dict, p: torch.Tensor, index: int) -> tuple[bool, int]:
        # torchao's: bfloat16 params only, each group its own seed
        return (group["bf16_stochastic_round"] and p.dtype == torch.bfloat16,
                rounding_key(group["seed"], index))


_LAYOUTS = {decoupled: _Layout(decoupled) for decoupled in (False, True)}


class Adam4bit(_Adam4bit):
    """Adam with 4-bit states, torchao's format (``torchao.optim.Adam4bit``: L2 weight decay).

    CPU and CUDA tensors; every param's moments are 4 bits (torchao keeps small ones in
    float32).
    ``max_grad_norm`` clips by the global norm inside the step (``grad_norm`` holds it);
    ``bf16_stochastic_round`` rounds bfloat16 params stochastically (``seed``)."""

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0, amsgrad: bool = False, *,
                 block_size: int = 128, bf16_stochastic_round: bool = False,
                 max_grad_norm: float | None = None, seed: int = 0) -> None:
        super().__init__(params, lr, betas, eps, weight_decay, amsgrad, block_size,
                         bf16_stochastic_round, max_grad_norm, seed)


class AdamW4bit(_Adam4bit):
    """AdamW with 4-bit states (``torchao.optim.AdamW4bit``; weight_decay 1e-2, decoupled)."""

    _decoupled = True

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 1e-2, amsgrad: bool = False, *,
                 block_size: int = 128, bf16_stochastic_round: bool = False,
                 max_grad_norm: float | None = None, seed: int = 0) -> None:
        super().__init__(params, lr, betas, eps, weight_decay, amsgrad, block_size,
                         bf16_stochastic_round, max_grad_norm, seed)
