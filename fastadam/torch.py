"""``torch.optim.Adam`` / ``AdamW`` replacements that step with fastadam's fused kernels.

    import fastadam.torch
    opt = fastadam.torch.AdamW(model.parameters(), lr=1e-3)

They are ``torch.optim.Optimizer`` subclasses with torch's signatures: param
groups, ``zero_grad``, LR schedulers and closures work as with torch. The state
is torch's (``step``, ``exp_avg``, ``exp_avg_sq``, ``max_exp_avg_sq`` tensors),
so ``state_dict()`` loads into ``torch.optim.Adam``/``AdamW`` and back. Tensors
are handed to the kernels without copies: CPU tensors as NumPy views (bfloat16
through ml_dtypes), CUDA tensors through ``__cuda_array_interface__``.
torch is an optional dependency: only this module imports it.
"""

from __future__ import annotations

import torch

from . import _validate as check
from ._dispatch import apply, resolve, step_flags
from .functional import hyper

__all__ = ["Adam", "AdamW"]


def _array(t: torch.Tensor):
    """A zero-copy array view of a tensor for fastadam's kernels."""
    t = t.detach()
    if t.is_cuda:
        return t  # __cuda_array_interface__ (float16/32/64)
    if t.dtype == torch.bfloat16:
        import ml_dtypes

        return t.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    return t.numpy()


class Adam(torch.optim.Optimizer):
    """``torch.optim.Adam`` with fastadam's fused step (same arguments and defaults).

    ``foreach``, ``capturable``, ``differentiable`` and ``fused`` are accepted for
    compatibility and kept in the param groups; the step is always fastadam's
    fused kernel, and ``capturable``/``differentiable`` must stay False.
    """

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0, amsgrad: bool = False, *,
                 foreach: bool | None = None, maximize: bool = False, capturable: bool = False,
                 differentiable: bool = False, fused: bool | None = None,
                 decoupled_weight_decay: bool = False) -> None:
        if capturable or differentiable:
            raise ValueError("capturable and differentiable are not supported by fastadam")
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                        amsgrad=amsgrad, maximize=maximize, foreach=foreach,
                        capturable=capturable, differentiable=differentiable, fused=fused,
                        decoupled_weight_decay=decoupled_weight_decay)
        super().__init__(params, defaults)

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
        planned = []
        for group in self.param_groups:
            h = hyper(group["lr"], tuple(float(b) for b in group["betas"]), group["eps"],
                      group["weight_decay"], group["decoupled_weight_decay"], group["amsgrad"],
                      group["maximize"])
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("fastadam does not support sparse gradients")
                state = self.state.get(p, {})  # a refused step must not create entries
                moments = [state.get(k) for k in ("exp_avg", "exp_avg_sq", "max_exp_avg_sq")]
                new = [torch.zeros_like(p, memory_format=torch.preserve_format)
                       if m is None else m for m in moments]
                param = _array(p)
                backend = resolve("auto", param)
                arrays = check.step_arrays(backend, param, _array(p.grad.contiguous()),
                                           _array(new[0]), _array(new[1]), _array(new[2]),
                                           None, None, h.amsgrad)
                step = int(state["step"].item()) + 1 if "step" in state else 1
                planned.append((p, new, backend, arrays, h, step))
        for p, new, backend, arrays, h, step in planned:  # all checked: write
            apply(backend, arrays, h, step_flags(h, arrays), step)
            state = self.state[p]
            state["exp_avg"], state["exp_avg_sq"] = new[0], new[1]
            if h.amsgrad:
                state["max_exp_avg_sq"] = new[2]
            state["step"] = torch.tensor(float(step), dtype=torch.float32)
        return loss


class AdamW(Adam):
    """``torch.optim.AdamW`` with fastadam's fused step (weight_decay=1e-2, decoupled)."""

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 1e-2, amsgrad: bool = False, *,
                 maximize: bool = False, foreach: bool | None = None, capturable: bool = False,
                 differentiable: bool = False, fused: bool | None = None) -> None:
        super().__init__(params, lr, betas, eps, weight_decay, amsgrad, foreach=foreach,
                         maximize=maximize, capturable=capturable,
                         differentiable=differentiable, fused=fused,
                         decoupled_weight_decay=True)

