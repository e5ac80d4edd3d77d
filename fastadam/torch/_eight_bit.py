"""``fastadam.torch.Adam8bit`` / ``AdamW8bit``: bitsandbytes' 8-bit Adam, fused, on CPU and
CUDA tensors.

The state is bitsandbytes' own, key for key: ``step``, ``state1``/``state2``
(uint8 codes, or float32 moments for params under ``min_8bit_size`` elements),
``absmax1``/``absmax2``, ``qmap1``/``qmap2``; ``state_dict()`` nests the
quantization entries as bitsandbytes 0.50 does, so checkpoints load into
``bitsandbytes.optim.Adam8bit``/``AdamW8bit`` and back. Weight decay is
decoupled in both classes, as in bitsandbytes' 8-bit kernels. State lives on its
param's device. A list steps as one where it can (``_list_plan``): CPU tensors through
one checked pass, CUDA tensors in one launch per batch of alike tensors on torch's
current stream (bitsandbytes launches once per tensor).
"""

from __future__ import annotations

import copy

import numpy as np
import torch

from .._backends.dispatch import (
    apply,
    apply_8bit,
    flags_8bit,
    resolve,
    rounding_key,
    step_flags,
)
from .._core import array_checks, checks, quant8
from .._core.hyper import hyper
from .._state.slots import EIGHT_BIT
from ._common import (
    WRAPPED,
    KeepsSettings,
    clip_scale,
    closure_loss,
    matched_params,
    nested,
    with_gradients,
)
from ._list_plan import Layout, rounding, step_list
from ._tensors import as_array, current_stream

__all__ = ["Adam8bit", "AdamW8bit"]

_QUANT_KEYS = ("state1", "state2", "absmax1", "absmax2", "qmap1", "qmap2")
_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)




def _stream(p: torch.Tensor):
    """torch's current stream on ``p``'s GPU, for numba; None for CPU tensors."""
    return current_stream(p) if p.is_cuda else None

class _Adam8bit(KeepsSettings, torch.optim.Optimizer):
    _SETTINGS = ("_max_grad_norm", "min_8bit_size")

    def __init__(self, params, lr: float, betas: tuple[float, float], eps: float,
                 weight_decay: float, maximize: bool, min_8bit_size: int,
                 max_grad_norm: float | None = None, stochastic_rounding: bool = False,
                 seed: int = 0) -> None:
        hyper(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,  # torch-style early errors
              decoupled_weight_decay=True, maximize=maximize)
        self._max_grad_norm = checks.max_grad_norm(max_grad_norm)
        self.grad_norm = None  # with max_grad_norm: the last step's total norm, unclipped
        options = {"stochastic_rounding": checks.flag("stochastic_rounding",
                                                      stochastic_rounding),
                   "seed": checks.seed(seed)}
        if isinstance(min_8bit_size, bool) or not isinstance(min_8bit_size, int) or \
                min_8bit_size < 0:
            raise ValueError(f"min_8bit_size must be an int >= 0, got {min_8bit_size!r}")
        self.min_8bit_size = min_8bit_size
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                                      maximize=maximize, **options))

    def _fresh(self, p: torch.Tensor) -> dict:
        """Zeroed state for ``p``, on its device (contiguous, whatever ``p``'s layout)."""
        zeros = dict(dtype=torch.float32, device=p.device)
        if p.numel() < self.min_8bit_size:
            return {"step": 0, "state1": torch.zeros(p.shape, **zeros),
                    "state2": torch.zeros(p.shape, **zeros)}
        blocks = quant8.blocks(p.numel())
        return {"step": 0,
                "state1": torch.zeros(p.shape, dtype=torch.uint8, device=p.device),
                "state2": torch.zeros(p.shape, dtype=torch.uint8, device=p.device),
                "qmap1": torch.from_numpy(quant8.dynamic_map(True).copy()).to(p.device),
                "qmap2": torch.from_numpy(quant8.dynamic_map(False).copy()).to(p.device),
                "absmax1": torch.zeros(blocks, **zeros),
                "absmax2": torch.zeros(blocks, **zeros)}

    @torch.no_grad()
    def step(self, closure=None):
        """One update of every parameter with a gradient; returns the closure's loss.
        Everything is checked before anything is written: a refused step changes nothing."""
        loss = closure_loss(closure)
        live = [[p for p in group["params"] if p.grad is not None] for group in self.param_groups]
        if not step_list(self, _LAYOUT, live):
            self._step_each()
        return loss

    def _step_each(self) -> None:
        """Tensor by tensor (what the list plan does not take)."""
        planned = []
        stochastic, seed = rounding(self)
        for _, h, index, p in with_gradients(self.param_groups, _hyper):
            if p.dtype not in _DTYPES:
                raise TypeError(f"fastadam's 8-bit Adam steps float tensors; got {p.dtype}")
            state = self.state.get(p) or self._fresh(p)
            param = as_array(p.detach())
            backend = resolve("auto", param)
            grad = as_array(p.grad.detach().contiguous())
            eight = state["state1"].dtype == torch.uint8
            if eight:
                arrays = array_checks.step_arrays_8bit(
                    backend, param, grad,
                    (as_array(state["state1"]), as_array(state["state2"]), None),
                    (as_array(state["absmax1"]), as_array(state["absmax2"]), None),
                    None, None, False)
            else:
                arrays = array_checks.step_arrays(
                    backend, param, grad, as_array(state["state1"]),
                    as_array(state["state2"]), None, None, None, False)
            rounded = bool(stochastic) and p.dtype in (torch.float16, torch.bfloat16)
            planned.append((p, state, h, eight, backend, arrays, rounded,
                            rounding_key(seed, index)))
        scale = self._clip_scale(planned)
        for p, state, h, eight, backend, arrays, rounded, key in planned:  # all checked
            step = int(state["step"]) + 1
            stream = _stream(p)
            if eight:
                *views, codes, absmax = arrays
                flags = flags_8bit(h, views[0], views[1], False, False, rounded)
                apply_8bit(backend, tuple(views), codes, absmax, h, flags, step, stream=stream,
                           grad_scale=scale, key=key)
            else:
                apply(backend, arrays, h, step_flags(h, arrays, rounded), step, stream=stream,
                      grad_scale=scale, key=key)
            state["step"] = step
            self.state[p] = state

    def _clip_scale(self, planned: list):
        """With ``max_grad_norm``: the loss scale that applies torch's clip coefficient of
        the checked gradients' total norm (one read of each); None without."""
        if getattr(self, "_max_grad_norm", None) is None:
            return None
        self.grad_norm, scale = clip_scale([(entry[4], entry[5][1]) for entry in planned],
                                           self._max_grad_norm)
        return scale

    def state_dict(self) -> dict:
        """torch's state_dict, with the 8-bit entries nested as bitsandbytes nests them."""
        return nested(super().state_dict(), _QUANT_KEYS)

    def load_state_dict(self, state_dict: dict) -> None:
        """Load a state_dict of this class or of bitsandbytes' Adam8bit/AdamW8bit: every
        entry is checked (codes, absmax, maps) before anything changes."""
        params = matched_params(state_dict, self.param_groups)
        saved_groups = state_dict["param_groups"]
        state = {}
        for key, entry in state_dict["state"].items():
            state[params[key]] = _checked_entry(key, dict(entry), params[key])
        groups = []
        for saved, current in zip(saved_groups, self.param_groups):
            group = {k: copy.deepcopy(v) for k, v in saved.items() if k != "params"}
            hyper(lr=float(group.get("lr", current["lr"])),
                  betas=tuple(group.get("betas", current["betas"])),
                  eps=group.get("eps", current["eps"]),
                  weight_decay=group.get("weight_decay", current["weight_decay"]),
                  decoupled_weight_decay=True, maximize=group.get("maximize", current["maximize"]))
            groups.append({**current, **group, "params": current["params"]})
        self.state.clear()
        self.state.update(state)
        self.param_groups[:] = groups


def _hyper(group: dict):
    """A group's validated hyperparameters (weight decay decoupled, as bitsandbytes')."""
    return hyper(lr=float(group["lr"]), betas=tuple(float(b) for b in group["betas"]),
                 eps=group["eps"], weight_decay=group["weight_decay"],
                 decoupled_weight_decay=True, maximize=group["maximize"])


class _Layout(Layout):
    """bitsandbytes' state: ``step`` an int, uint8 codes with float32 absmax from
    ``min_8bit_size`` elements (``quant8.MIN_8BIT_SIZE`` here: the inner optimizer's
    threshold), float32 moments below."""

    dtypes, state_dtype = _DTYPES, EIGHT_BIT

    def hyper(self, group: dict):
        return _hyper(group)

    def options(self, param_groups: list) -> list:
        # lr, betas, eps and the size of weight_decay are read at every step.
        return [(g["maximize"], g["weight_decay"] == 0, g.get("stochastic_rounding", False),
                 g.get("seed", 0)) for g in param_groups]

    def fresh(self, opt, p: torch.Tensor, group: dict) -> dict:
        return opt._fresh(p)

    def state_of(self, p: torch.Tensor, group: dict, entry: dict) -> tuple | None:
        low = p.numel() >= quant8.MIN_8BIT_SIZE
        keys = ("state1", "state2", "absmax1", "absmax2")[:4 if low else 2]
        tensors = [entry.get(k) for k in keys]
        if not (all(isinstance(t, torch.Tensor) and t.device == p.device and t.is_contiguous()
                    for t in tensors) and (tensors[0].dtype == torch.uint8) == low
                and isinstance(entry.get("step"), int)):
            return None  # another min_8bit_size, or state this plan does not hold
        arrays = [as_array(t) for t in tensors]
        return keys, (*arrays[:2], None), (*arrays[2:], None) if low else None


_LAYOUT = _Layout()


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
    # Checked on the host; kept where the param is.
    return {k: v.to(p.device) if isinstance(v, torch.Tensor) else v for k, v in out.items()}


class Adam8bit(_Adam8bit):
    """Adam with 8-bit blockwise states, bitsandbytes' format (``bitsandbytes.optim.Adam8bit``).

    Params under ``min_8bit_size`` elements keep float32 states. ``weight_decay``
    is decoupled, as in bitsandbytes. One fused pass per tensor, and a list steps as one
    where it can: on the CPU its gradients checked at once (the float32-state tensors in
    one parallel region), on a GPU one launch per batch of alike tensors, on torch's
    current stream (bitsandbytes launches per tensor). ``max_grad_norm`` clips the
    gradients by their global norm inside the step, as ``torch.nn.utils.clip_grad_norm_``
    before it would (``grad_norm`` holds the norm), without writing them;
    ``stochastic_rounding`` (with ``seed``, both in the param groups) rounds float16 and
    bfloat16 params stochastically.
    """

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0, *, maximize: bool = False,
                 min_8bit_size: int = quant8.MIN_8BIT_SIZE,
                 max_grad_norm: float | None = None, stochastic_rounding: bool = False,
                 seed: int = 0) -> None:
        super().__init__(params, lr, betas, eps, weight_decay, maximize, min_8bit_size,
                         max_grad_norm, stochastic_rounding, seed)


class AdamW8bit(_Adam8bit):
    """AdamW with 8-bit blockwise states (``bitsandbytes.optim.AdamW8bit``; weight_decay 1e-2)."""

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 1e-2, *, maximize: bool = False,
                 min_8bit_size: int = quant8.MIN_8BIT_SIZE,
                 max_grad_norm: float | None = None, stochastic_rounding: bool = False,
                 seed: int = 0) -> None:
        super().__init__(params, lr, betas, eps, weight_decay, maximize, min_8bit_size,
                         max_grad_norm, stochastic_rounding, seed)
