"""``fastadam.torch.AdamWScheduleFree`` and ``AdEMAMix``: the references' optimizers
(``schedulefree.AdamWScheduleFree``, bitsandbytes' 32-bit ``AdEMAMix``), fused.

Their arguments, param groups and state are the references' own, key for key, so
state_dicts move both ways: schedule-free keeps ``z`` and ``exp_avg_sq`` in the
param's dtype, AdEMAMix ``state1`` (the fast and slow moments stacked, float32) and
``state2``. One fused pass per tensor and step (on CPU tensors in parallel, on CUDA
tensors one launch on torch's current stream); ``max_grad_norm`` clips by the global
norm inside the step, and ``stochastic_rounding`` rounds 16-bit params stochastically.
"""

from __future__ import annotations

import torch

from .._backends.dispatch import (
    apply,
    resolve,
    rounding_key,
    step_flags,
    swap,
)
from .._core import array_checks, checks
from .._core.hyper import hyper
from .._core.hyper import schedule_free_weights as weights_of
from .._core.options import ADEMAMIX, SCHEDULE_FREE
from ._common import (
    WRAPPED,
    KeepsSettings,
    clip_scale,
    closure_loss,
    matched_params,
    nested,
    with_gradients,
)
from ._tensors import as_array, current_stream

__all__ = ["AdEMAMix", "AdamWScheduleFree"]

_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


class _Fused(KeepsSettings, torch.optim.Optimizer):
    """The step both share: check every param's arrays, then one kernel call each."""

    _SETTINGS = ("_max_grad_norm", "_stochastic", "_seed")

    def _extras(self, max_grad_norm, stochastic_rounding, seed) -> None:
        self._max_grad_norm = checks.max_grad_norm(max_grad_norm)
        self._stochastic = checks.flag("stochastic_rounding", stochastic_rounding)
        self._seed = checks.seed(seed)
        self.grad_norm = None  # with max_grad_norm: the last step's total norm, unclipped

    def _arrays(self, p: torch.Tensor, state: dict) -> tuple:
        """(backend, checked (param, grad, m, v, v_max, comp, master)) of one param."""
        if p.dtype not in _DTYPES:
            raise TypeError(f"{type(self).__name__} steps float tensors; got {p.dtype}")
        param = as_array(p.detach())
        backend = resolve("auto", param)
        m, v, third = self._moments(state)
        return backend, array_checks.step_arrays(
            backend, param, as_array(p.grad.detach().contiguous()), as_array(m), as_array(v),
            None if third is None else as_array(third), None, None, third is not None)

    def _run(self, planned: list) -> None:
        """Clip (with ``max_grad_norm``), then step each checked ``(p, state, h, backend,
        arrays, step, key)``."""
        scale = None
        if self._max_grad_norm is not None:
            self.grad_norm, scale = clip_scale([(entry[3], entry[4][1]) for entry in planned],
                                               self._max_grad_norm)
        for p, state, h, backend, arrays, step, key in planned:
            rounded = self._stochastic and p.dtype in (torch.float16, torch.bfloat16)
            apply(backend, arrays, h, step_flags(h, arrays, rounded), step, grad_scale=scale,
                  key=key, stream=current_stream(p) if p.is_cuda else None)
            self.state[p] = state

    def _key(self, index: int) -> int:
        return rounding_key(self._seed, index)


class AdamWScheduleFree(_Fused):
    """Schedule-free AdamW (``schedulefree.AdamWScheduleFree``: its arguments, its
    ``train()`` / ``eval()``, its param groups and state), fused in one pass per tensor.

    As in the reference, the optimizer starts in eval mode: call ``train()`` before
    stepping and ``eval()`` before evaluating or saving; a step in eval mode raises.
    ``foreach`` is accepted and ignored. Beyond the reference: ``max_grad_norm``,
    ``stochastic_rounding`` (16-bit params) with ``seed``."""

    def __init__(self, params, lr: float = 0.0025, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0, warmup_steps: int = 0,
                 r: float = 0.0, weight_lr_power: float = 2.0, foreach: bool | None = None, *,
                 max_grad_norm: float | None = None, stochastic_rounding: bool = False,
                 seed: int = 0) -> None:
        hyper(SCHEDULE_FREE, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
              warmup_steps=warmup_steps, r=r, weight_lr_power=weight_lr_power)
        self._extras(max_grad_norm, stochastic_rounding, seed)
        super().__init__(params, dict(
            lr=lr, betas=betas, eps=eps, r=r, k=0, warmup_steps=warmup_steps, train_mode=False,
            weight_sum=0.0, lr_max=-1.0, scheduled_lr=0.0, weight_lr_power=weight_lr_power,
            weight_decay=weight_decay, foreach=foreach))

    @staticmethod
    def _moments(state: dict) -> tuple:
        return state["z"], state["exp_avg_sq"], None

    @torch.no_grad()
    def step(self, closure=None):
        """One update of every parameter with a gradient; returns the closure's loss.
        Everything is checked before anything is written: a refused step changes nothing."""
        if not self.param_groups[0]["train_mode"]:
            raise RuntimeError("Optimizer was not in train mode when step is called: call "
                               "optimizer.train() before training and optimizer.eval() "
                               "before evaluating or saving")
        loss = closure_loss(closure)
        planned, sums = [], {}

        def hyper_of(group):
            h = hyper(SCHEDULE_FREE, lr=float(group["lr"]), betas=tuple(group["betas"]),
                      eps=group["eps"], weight_decay=group["weight_decay"],
                      warmup_steps=group["warmup_steps"], r=group["r"],
                      weight_lr_power=group["weight_lr_power"])
            lr, ckp1, weight_sum, lr_max = weights_of(h, group["k"] + 1, group["weight_sum"],
                                                      group["lr_max"])
            sums[id(group)] = (group, lr, weight_sum, lr_max)
            return h._replace(scheduled_lr=lr, ckp1=ckp1)

        for group, h, index, p in with_gradients(self.param_groups, hyper_of):
            state = self.state.get(p) or {"z": p.detach().clone(),
                                          "exp_avg_sq": torch.zeros_like(p)}
            backend, arrays = self._arrays(p, state)
            planned.append((p, state, h, backend, arrays, group["k"] + 1, self._key(index)))
        self._run(planned)
        for group, lr, weight_sum, lr_max in sums.values():
            group.update(k=group["k"] + 1, scheduled_lr=lr, weight_sum=weight_sum,
                         lr_max=lr_max)
        return loss

    @torch.no_grad()
    def eval(self) -> None:
        """Move the params to the average x (``lerp(y, z, 1 - 1/beta1)``), one pass each."""
        self._move(False)

    @torch.no_grad()
    def train(self) -> None:
        """Move the params back to y (``lerp(x, z, 1 - beta1)``), one pass each."""
        self._move(True)

    def _move(self, to_train: bool) -> None:
        for group in self.param_groups:
            if group["train_mode"] == to_train:
                continue
            beta1 = group["betas"][0]
            weight = 1.0 - beta1 if to_train else 1.0 - 1.0 / beta1
            for p in group["params"]:
                z = self.state.get(p, {}).get("z")
                if z is None:
                    continue
                if not (p.is_contiguous() and z.is_contiguous() and p.dtype in _DTYPES):
                    p.lerp_(z.to(p.device), weight)  # torch's own, in any layout
                    continue
                param = as_array(p.detach())
                backend = resolve("auto", param)
                param, z = array_checks.swap_arrays(backend, param, as_array(z))
                swap(backend, (param, z, None, None),
                     step_flags(hyper(SCHEDULE_FREE), (param, param, z, z, None, None, None)),
                     weight, stream=current_stream(p) if p.is_cuda else None)
            group["train_mode"] = to_train


class AdEMAMix(_Fused):
    """AdEMAMix as bitsandbytes' 32-bit ``AdEMAMix`` (its arguments, groups and state:
    ``state1`` the fast and slow moments stacked, ``state2`` v, float32), fused in one
    pass per tensor. ``optim_bits=8`` and ``is_paged`` are refused (8-bit AdEMAMix
    states are not kept here). Beyond bitsandbytes: ``max_grad_norm``,
    ``stochastic_rounding`` (16-bit params) with ``seed``."""

    def __init__(self, params, lr: float = 1e-3,
                 betas: tuple[float, float, float] = (0.9, 0.999, 0.9999), alpha: float = 5.0,
                 t_alpha: int | None = None, t_beta3: int | None = None, eps: float = 1e-8,
                 weight_decay: float = 1e-2, optim_bits: int = 32, min_8bit_size: int = 4096,
                 is_paged: bool = False, *, max_grad_norm: float | None = None,
                 stochastic_rounding: bool = False, seed: int = 0) -> None:
        if optim_bits != 32 or is_paged:
            raise ValueError("fastadam.torch.AdEMAMix keeps 32-bit, unpaged state: "
                             "optim_bits must be 32 and is_paged False")
        self._hyper(dict(lr=lr, betas=betas, alpha=alpha, t_alpha=t_alpha, t_beta3=t_beta3,
                         eps=eps, weight_decay=weight_decay))
        self._extras(max_grad_norm, stochastic_rounding, seed)
        super().__init__(params, dict(lr=lr, betas=betas, alpha=alpha, t_alpha=t_alpha,
                                      t_beta3=t_beta3, eps=eps, weight_decay=weight_decay))

    @staticmethod
    def _hyper(group: dict):
        betas = group["betas"]
        if isinstance(betas, (str, bytes)) or not hasattr(betas, "__len__") or len(betas) != 3:
            raise TypeError(f"betas must be (beta1, beta2, beta3), got {betas!r}")
        return hyper(ADEMAMIX, lr=float(group["lr"]), betas=(betas[0], betas[1]),
                     beta3=betas[2], alpha=group["alpha"], t_alpha=group["t_alpha"],
                     t_beta3=group["t_beta3"], eps=group["eps"],
                     weight_decay=group["weight_decay"])

    @staticmethod
    def _moments(state: dict) -> tuple:
        return state["state1"][0], state["state2"], state["state1"][1]

    @torch.no_grad()
    def step(self, closure=None):
        """One update of every parameter with a gradient; returns the closure's loss.
        Everything is checked before anything is written: a refused step changes nothing."""
        loss = closure_loss(closure)
        planned = []
        for _, h, index, p in with_gradients(self.param_groups, self._hyper):
            state = self.state.get(p) or {
                "step": 0, "state1": torch.zeros((2, *p.shape), dtype=torch.float32,
                                                 device=p.device),
                "state2": torch.zeros(p.shape, dtype=torch.float32, device=p.device)}
            backend, arrays = self._arrays(p, state)
            step = int(state["step"]) + 1
            planned.append((p, state, h, backend, arrays, step, self._key(index)))
        self._run(planned)
        for _, state, *_ in planned:
            state["step"] += 1
        return loss

    def state_dict(self) -> dict:
        """torch's state_dict, the moments nested as bitsandbytes nests them."""
        return nested(super().state_dict(), _MOMENTS)

    def load_state_dict(self, state_dict: dict) -> None:
        """Load a state_dict of this class or of bitsandbytes' 32-bit ``AdEMAMix``: every
        entry is checked first; the moments stay float32 (torch would cast them to a
        16-bit param's dtype)."""
        params = matched_params(state_dict, self.param_groups)
        entries = {k: _checked_entry(k, entry, params[k])
                   for k, entry in state_dict["state"].items()}
        super().load_state_dict({**state_dict, "state": entries})
        for k, entry in entries.items():
            p = params[k]
            for name in _MOMENTS:
                self.state[p][name] = entry[name].detach().to(p.device, torch.float32,
                                                              copy=True)


_MOMENTS = ("state1", "state2")  # bitsandbytes' names: (m1, m2) stacked, and v


def _checked_entry(key, entry, p: torch.Tensor) -> dict:
    """One param's saved AdEMAMix state, unnested and checked against ``p``."""
    label = f"state_dict['state'][{key!r}]"
    if not isinstance(entry, dict):
        raise ValueError(f"{label} must be a dict")
    entry = {**entry, **entry.get(WRAPPED, {})}
    entry.pop(WRAPPED, None)
    step = entry.get("step")
    step = step.item() if isinstance(step, torch.Tensor) else step
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise ValueError(f"{label}['step'] must be an int >= 0, got {step!r}")
    for name, shape in zip(_MOMENTS, ((2, *p.shape), tuple(p.shape))):
        value = entry.get(name)
        if not (isinstance(value, torch.Tensor) and value.is_floating_point()
                and tuple(value.shape) == shape):
            raise ValueError(f"{label}[{name!r}] must be a float tensor of shape {shape}")
    return entry
