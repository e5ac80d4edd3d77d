"""``torch.optim.Adam`` / ``AdamW`` replacements that step with fastadam's fused kernels.

They subclass ``torch.optim.Adam`` and ``torch.optim.AdamW`` and replace only
``step``: construction, its errors, param groups (named ones too),
``add_param_group``, hooks, ``zero_grad``, schedulers and ``state_dict`` are
torch's own. The state is torch's (``step``, ``exp_avg``, ``exp_avg_sq``,
``max_exp_avg_sq`` tensors), so ``state_dict()`` loads into torch's optimizers
and back. Tensors reach the kernels without copies: CPU tensors as NumPy views
(bfloat16 as its bits, without ml_dtypes, complex ones as pairs of reals, as torch
steps them), CUDA tensors through ``__cuda_array_interface__`` (bfloat16 ones through their
int16 view). A list steps as one: CPU tensors in
one parallel region per batch of one dtype, CUDA tensors in one launch per
batch on torch's current stream.
"""

from __future__ import annotations

import math

import torch

from .._backends.dispatch import apply, resolve, rounding_key, step_flags, sum_of_squares
from .._core import array_checks, checks
from .._core.hyper import clip_factor, clipped_scale, hyper
from .._state.slots import PARAM_DTYPE
from ._common import KeepsSettings, refuse_low_bit
from ._errors import in_torch_words
from ._list_plan import Layout, rounding, step_list
from ._tensors import DTYPES, as_array, current_stream, memory_views, real_view

__all__ = ["Adam", "AdamW"]







def _hyper(group: dict):
    """A group's validated hyperparameters (tensor lr and betas read as numbers)."""
    return hyper(lr=float(group["lr"]), betas=tuple(float(b) for b in group["betas"]),
                 eps=group["eps"], weight_decay=group["weight_decay"],
                 decoupled_weight_decay=group["decoupled_weight_decay"],
                 amsgrad=group["amsgrad"], maximize=group["maximize"])


class _FusedStep(KeepsSettings):
    """The step shared by :class:`Adam` and :class:`AdamW`."""

    _SETTINGS = ("_max_grad_norm", "_step_supports_amp_scaling")

    def load_state_dict(self, state_dict: dict) -> None:
        """torch's, after refusing low-bit states (``refuse_low_bit``): nothing changes."""
        refuse_low_bit(state_dict)
        super().load_state_dict(state_dict)

    def _fastadam_init(self, stochastic_rounding, seed, max_grad_norm) -> None:
        # torch's fused Adam lets GradScaler hand it the unscaling; this step does not,
        # so the scaler unscales and skips non-finite steps itself, as for foreach.
        self._step_supports_amp_scaling = False
        self._plan = None
        self._max_grad_norm = checks.max_grad_norm(max_grad_norm)
        # With max_grad_norm: the last step's total norm, unclipped (a float; on a GPU,
        # where the params step as one list, a 0-d float64 tensor there: no wait).
        self.grad_norm = None
        # In every group, so that they travel in state_dicts (the first group's rules).
        options = {"stochastic_rounding": checks.flag("stochastic_rounding", stochastic_rounding),
                   "seed": checks.seed(seed)}
        self.defaults.update(options)
        for group in self.param_groups:
            group.update(options)

    def add_param_group(self, param_group: dict) -> None:
        """torch's ``add_param_group``, refusing options fastadam cannot honour."""
        for option in ("capturable", "differentiable"):
            if param_group.get(option, self.defaults.get(option)):
                raise ValueError(f"{option}=True is not supported by fastadam's fused step; "
                                 "use torch.optim for it")
        super().add_param_group(param_group)

    @torch.no_grad()
    def step(self, closure=None):
        """One update of every parameter that has a gradient; returns the closure's loss.

        Every parameter and gradient is checked before any is written: a refused
        step (TypeError/ValueError) changes no parameter and no state.
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        live = [[p for p in group["params"] if p.grad is not None] for group in self.param_groups]
        if any(p.is_meta for ps in live for p in ps):  # shapes only: torch's own step
            super().step()
            return loss
        if not step_list(self, _LAYOUT, live):
            self._step_each()
        return loss

    def _step_each(self) -> None:
        """Tensor by tensor (CUDA tensors, and what the list plan does not take)."""
        planned, index = [], -1
        stochastic, seed = rounding(self)
        for g, group in enumerate(self.param_groups):
            h = _hyper(group)
            for j, p in enumerate(group["params"]):
                index += 1
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("fastadam does not support sparse gradients")
                state = self.state.get(p, {})  # a refused step must not create entries
                moments = [state.get(k) for k in ("exp_avg", "exp_avg_sq", "max_exp_avg_sq")]
                new = [torch.zeros_like(p, memory_format=torch.preserve_format)
                       if m is None else m for m in moments]
                stepped, write_back = memory_views(p, p.grad, new[:3 if h.amsgrad else 2])
                try:
                    param = as_array(real_view(stepped[0]))
                    backend = resolve("auto", param)
                    arrays = array_checks.step_arrays(
                        backend, param, as_array(real_view(stepped[1])),
                        *(as_array(real_view(m)) for m in stepped[2:]),
                        *([None] if not h.amsgrad else []), None, None, h.amsgrad)
                except (TypeError, ValueError) as e:
                    raise type(e)(in_torch_words(e, group, g, j)) from e
                step = int(state["step"].item()) + 1 if "step" in state else 1
                sixteen = p.dtype in (torch.float16, torch.bfloat16)
                flags = step_flags(h, arrays, stochastic and sixteen)
                planned.append((p, new, backend, arrays, h, step, flags, index, write_back))
        scale = self._clip_scale(planned)
        if scale is False:
            return
        for p, new, backend, arrays, h, step, flags, index, write_back in planned:  # all checked
            stream = current_stream(p) if backend == "cuda" else None
            apply(backend, arrays, h, flags, step, stream=stream, key=rounding_key(seed, index),
                  grad_scale=scale)
            for original, copy in write_back:  # layouts no flat view covers: copied back
                original.copy_(copy)
            state = self.state[p]
            state["exp_avg"], state["exp_avg_sq"] = new[0], new[1]
            if h.amsgrad:
                state["max_exp_avg_sq"] = new[2]
            state["step"] = torch.tensor(float(step), dtype=torch.float32)


    def _clip_scale(self, planned: list):
        """With ``max_grad_norm``: the loss scale that applies the clip coefficient of the
        checked gradients' total norm (one read of each, per device); None without."""
        if getattr(self, "_max_grad_norm", None) is None:
            return None
        squares = 0.0
        for backend in dict.fromkeys(backend for _, _, backend, *_ in planned):
            grads = [arrays[1] for _, _, b, arrays, *_ in planned if b == backend]
            squares += sum_of_squares(backend, grads)
        self.grad_norm = math.sqrt(squares)
        return clipped_scale(None, clip_factor(self.grad_norm, self._max_grad_norm))


class _Layout(Layout):
    """torch's Adam state: ``step`` a float32 0-d tensor, the moments in the params'
    dtype and layout."""

    dtypes, state_dtype, tensor_steps = DTYPES, PARAM_DTYPE, True

    def hyper(self, group: dict):
        return _hyper(group)

    def options(self, param_groups: list) -> list:
        # lr, betas, eps and the size of weight_decay are read at every step.
        return [(g["amsgrad"], g["maximize"], g["decoupled_weight_decay"],
                 g["weight_decay"] == 0, g.get("stochastic_rounding", False), g.get("seed", 0))
                for g in param_groups]

    def fresh(self, opt, p: torch.Tensor, group: dict) -> dict:
        state = {"step": torch.tensor(0.0, dtype=torch.float32)}
        for k in _MOMENTS[:3 if group["amsgrad"] else 2]:
            state[k] = torch.zeros_like(p, memory_format=torch.preserve_format)
        return state

    def state_of(self, p: torch.Tensor, group: dict, entry: dict) -> tuple | None:
        keys = _MOMENTS[:3 if group["amsgrad"] else 2]
        moments = [entry.get(k) for k in ("step", *keys)]
        if not all(isinstance(m, torch.Tensor) for m in moments):
            return None
        if any(m.device != p.device or m.dtype != p.dtype or not m.is_contiguous()
               for m in moments[1:]):
            return None
        arrays = [as_array(real_view(m)) for m in moments[1:]]
        return keys, (*arrays, None)[:3], None


_MOMENTS = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq")
_LAYOUT = _Layout()


class Adam(_FusedStep, torch.optim.Adam):
    """``torch.optim.Adam`` with fastadam's fused step (same arguments, defaults, checks).

    ``foreach`` and ``fused`` are accepted and kept in the param groups; the step
    is always fastadam's fused kernel. ``capturable`` and ``differentiable`` are
    refused at construction. Beyond torch's: ``stochastic_rounding`` (with ``seed``)
    rounds float16 and bfloat16 params stochastically instead of to nearest (other
    params as torch does), as :class:`fastadam.Adam` does; both travel in the param
    groups, so in state_dicts. ``max_grad_norm`` clips the gradients by their global
    norm inside the step, exactly as ``torch.nn.utils.clip_grad_norm_(params,
    max_grad_norm)`` before it, without writing them; ``grad_norm`` holds the norm.
    """

    def __init__(self, params, lr: float | torch.Tensor = 1e-3,
                 betas: tuple[float | torch.Tensor, float | torch.Tensor] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0, amsgrad: bool = False, *,
                 foreach: bool | None = None, maximize: bool = False, capturable: bool = False,
                 differentiable: bool = False, fused: bool | None = None,
                 decoupled_weight_decay: bool = False, stochastic_rounding: bool = False,
                 seed: int = 0, max_grad_norm: float | None = None) -> None:
        torch.optim.Adam.__init__(self, params, lr, betas, eps, weight_decay, amsgrad,
                                  foreach=foreach, maximize=maximize, capturable=capturable,
                                  differentiable=differentiable, fused=fused,
                                  decoupled_weight_decay=decoupled_weight_decay)
        self._fastadam_init(stochastic_rounding, seed, max_grad_norm)


class AdamW(_FusedStep, torch.optim.AdamW):
    """``torch.optim.AdamW`` with fastadam's fused step (weight_decay=1e-2, decoupled)."""

    def __init__(self, params, lr: float | torch.Tensor = 1e-3,
                 betas: tuple[float | torch.Tensor, float | torch.Tensor] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 1e-2, amsgrad: bool = False, *,
                 maximize: bool = False, foreach: bool | None = None, capturable: bool = False,
                 differentiable: bool = False, fused: bool | None = None,
                 stochastic_rounding: bool = False, seed: int = 0,
                 max_grad_norm: float | None = None) -> None:
        torch.optim.AdamW.__init__(self, params, lr, betas, eps, weight_decay, amsgrad,
                                   maximize=maximize, foreach=foreach, capturable=capturable,
                                   differentiable=differentiable, fused=fused)
        self._fastadam_init(stochastic_rounding, seed, max_grad_norm)


