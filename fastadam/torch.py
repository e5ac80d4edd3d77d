"""``torch.optim.Adam`` / ``AdamW`` replacements that step with fastadam's fused kernels.

    import fastadam.torch
    opt = fastadam.torch.AdamW(model.parameters(), lr=1e-3)

They are ``torch.optim.Optimizer`` subclasses with torch's signatures: param
groups, ``zero_grad``, LR schedulers and closures work as with torch. The state
is torch's (``step``, ``exp_avg``, ``exp_avg_sq``, ``max_exp_avg_sq`` tensors),
so ``state_dict()`` loads into ``torch.optim.Adam``/``AdamW`` and back. Tensors
are handed to the kernels without copies: CPU tensors as NumPy views (bfloat16
through ml_dtypes), CUDA tensors through ``__cuda_array_interface__``.
CPU tensors of one float dtype (float16/32/64) step as a list, in one parallel
region per batch; others step tensor by tensor. torch is an optional
dependency: only this module imports it.
"""

from __future__ import annotations

import operator
from itertools import chain
from operator import itemgetter

import numpy as np
import torch

from . import _validate as check
from ._dispatch import apply, resolve, step_flags
from .functional import hyper
from .optimizer import Adam as _ArrayAdam

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
        live = [[p for p in group["params"] if p.grad is not None] for group in self.param_groups]
        plan = getattr(self, "_plan", None)
        if plan is None or not plan.matches(self, live):
            plan = self._plan = _ListPlan.build(self, live)
        if plan is not None and plan.step(self):
            return loss
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


class _ListPlan:
    """The fast path for CPU tensors of one float dtype: the params that have gradients,
    stepped through a :class:`fastadam.Adam` whose params and state are NumPy views of the
    tensors, so that a list steps in one parallel region per batch.

    Built once per layout (which params have gradients, each group's options, the
    state tensors) and reused while ``matches`` finds it unchanged; learning rates
    are read at every step. The ``step`` tensors become 0-d views of one buffer,
    so that counting a step is one add, not one per tensor.
    """

    def __init__(self, opt, live, params, groups, inner, tensors, entries, steps) -> None:
        self.state = opt.state  # held: replacing it (load_state_dict) ends the plan
        self.sizes = tuple(map(len, live))
        self.params, self.groups, self.inner = params, groups, inner
        self.options = _options(opt.param_groups)
        self.storages = [t.untyped_storage() for t in tensors]  # held: no reuse, no dangling
        self.param_addresses = _addresses(params)
        self.entries = entries  # (param, state entry, new?) in step order
        self.step_buffer = torch.tensor(steps, dtype=torch.float32)
        self.step_views = list(self.step_buffer.unbind())
        self.expected = self.step_buffer.clone()
        self.committed = False
        self.getters = [itemgetter(*_keys(opt.param_groups[i]["amsgrad"])) for i in groups]
        # What opt.state holds now, in the order ``_held`` lists it.
        self.held = self._held(self._by_group(entry for _, entry, _ in entries))

    def _by_group(self, items) -> list:
        it = iter(items)
        return [[next(it) for _ in range(n)] for n in self.sizes if n]

    @classmethod
    def build(cls, opt, live) -> _ListPlan | None:
        """The plan for ``live`` (per group, the params with gradients), or None where the
        per-tensor path must run (GPU, mixed dtypes, unusual state), which also says what
        is wrong if anything is."""
        params = [p for ps in live for p in ps]
        if len(params) < 2 or any(p.is_cuda or p.is_sparse or p.dtype != params[0].dtype
                                  or not p.is_contiguous() for p in params):
            return None
        if params[0].dtype not in (torch.float16, torch.float32, torch.float64):
            return None
        groups = [i for i, ps in enumerate(live) if ps]
        specs, tensors, entries, steps, moments = [], [], [], [], []
        for i in groups:
            group = opt.param_groups[i]
            keys = _keys(group["amsgrad"])
            specs.append({"params": [p.detach().numpy() for p in live[i]], "lr": float(group["lr"]),
                          **{k: group[k] for k in _OPTIONS}})
            for p in live[i]:
                entry, new = opt.state.get(p), False
                if not entry:
                    entry, new = _fresh_state(p, keys), True
                if not all(isinstance(entry.get(k), torch.Tensor) for k in keys):
                    return None
                moment = [entry[k] for k in keys[1:]]
                if any(m.is_cuda or m.dtype != p.dtype or not m.is_contiguous() for m in moment):
                    return None
                tensors += [p, *moment]
                entries.append((p, entry, new))
                steps.append(float(entry["step"]))
                moments.append([m.detach().numpy() for m in moment] + [None] * (4 - len(keys)))
        try:
            inner = _ArrayAdam(specs, backend="cpu", state_dtype=specs[0]["params"][0].dtype,
                               kahan_summation=False)
            inner._adopt_state([int(s) for s in steps], moments)
        except (TypeError, ValueError):
            return None
        return cls(opt, live, params, groups, inner, tensors, entries, steps)

    def _held(self, entries) -> list:
        # The step and moment tensors of each entry, flat.
        return list(chain.from_iterable(chain.from_iterable(map(getter, group))
                                        for getter, group in zip(self.getters, entries)))

    def matches(self, opt, live) -> bool:
        """Whether the plan still describes ``opt``: the same params with gradients at the
        same addresses, the same options, the same state tensors, steps as it left them."""
        if opt.state is not self.state or tuple(map(len, live)) != self.sizes:
            return False
        params = [p for ps in live for p in ps]
        if not all(map(operator.is_, params, self.params)):
            return False
        if _options(opt.param_groups) != self.options:
            return False
        if not np.array_equal(_addresses(params), self.param_addresses):  # p.data = ...
            return False
        # Until the first step commits them, new entries are the plan's own.
        current = [entry if new and not self.committed else opt.state.get(p)
                   for p, entry, new in self.entries]
        try:
            held = self._held(self._by_group(current))
        except (KeyError, TypeError):
            return False
        if len(held) != len(self.held) or not all(map(operator.is_, held, self.held)):
            return False
        if self.committed:
            return torch.equal(self.step_buffer, self.expected)
        return torch.equal(torch.stack([entry["step"] for entry in current]), self.expected)

    def step(self, opt) -> bool:
        """Step through the inner optimizer; False (nothing done) if the gradients need
        the per-tensor path. Bad gradients raise and change nothing."""
        try:
            grads = [p.grad.contiguous().numpy() for p in self.params]
        except (RuntimeError, TypeError):  # sparse, or a gradient that requires grad
            return False
        for inner_group, i in enumerate(self.groups):
            self.inner.set_lr(float(opt.param_groups[i]["lr"]), group=inner_group)
        self.inner.step(grads)
        if not self.committed:  # the first step: the plan's state tensors enter opt.state
            for (p, entry, new), view in zip(self.entries, self.step_views):
                entry["step"] = view
                if new:
                    opt.state[p] = entry
            self.held = self._held(self._by_group(entry for _, entry, _ in self.entries))
            self.committed = True
        self.step_buffer += 1
        self.expected += 1
        return True


_OPTIONS = ("betas", "eps", "weight_decay", "amsgrad", "maximize", "decoupled_weight_decay")


def _keys(amsgrad: bool) -> tuple:
    return ("step", "exp_avg", "exp_avg_sq", "max_exp_avg_sq")[:4 if amsgrad else 3]


def _fresh_state(p: torch.Tensor, keys: tuple) -> dict:
    state = {"step": torch.tensor(0.0, dtype=torch.float32)}
    for k in keys[1:]:
        state[k] = torch.zeros_like(p, memory_format=torch.preserve_format)
    return state


def _options(param_groups) -> list:
    """What a plan compiles in: every group setting but the learning rate."""
    return [tuple(tuple(g[k]) if k == "betas" else g[k] for k in _OPTIONS) for g in param_groups]


def _addresses(tensors) -> np.ndarray:
    return np.fromiter((t.data_ptr() for t in tensors), np.int64, len(tensors))


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

