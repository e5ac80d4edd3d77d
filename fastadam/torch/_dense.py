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
import operator
from itertools import chain
from operator import itemgetter

import numpy as np
import torch

from .._backends.dispatch import apply, resolve, rounding_key, step_flags, sum_of_squares
from .._backends.owned import Owned
from .._core import array_checks, checks
from .._core.gpu import to_stream
from .._core.hyper import clip_factor, clipped_scale, hyper
from .._state import groups as _groups
from .._state.slots import PARAM_DTYPE
from ..optimizer import Adam as _ArrayAdam
from ._common import refuse_low_bit
from ._errors import in_torch_words
from ._tensors import DTYPES, KINDS, as_array, current_stream, memory_views, real_view

__all__ = ["Adam", "AdamW"]







def _hyper(group: dict):
    """A group's validated hyperparameters (tensor lr and betas read as numbers)."""
    return hyper(lr=float(group["lr"]), betas=tuple(float(b) for b in group["betas"]),
                 eps=group["eps"], weight_decay=group["weight_decay"],
                 decoupled_weight_decay=group["decoupled_weight_decay"],
                 amsgrad=group["amsgrad"], maximize=group["maximize"])


class _FusedStep:
    """The step shared by :class:`Adam` and :class:`AdamW`."""

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
        plan = getattr(self, "_plan", None)  # unpickled optimizers have none yet
        if plan is None or not plan.matches(self, live):
            plan = self._plan = _ListPlan.build(self, live)
        if plan is None or not plan.step(self):
            self._step_each()
        return loss

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)  # unpickled: the options fastadam adds, their defaults
        self.__dict__.setdefault("_max_grad_norm", None)
        self.__dict__.setdefault("grad_norm", None)

    def _step_each(self) -> None:
        """Tensor by tensor (CUDA tensors, and what the list plan does not take)."""
        planned, index = [], -1
        stochastic, seed = _rounding(self)
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


class _ListPlan:
    """The fast path: the params that have gradients, stepped through a
    :class:`fastadam.Adam` whose params and state are views of the tensors (NumPy
    arrays on the CPU, numba device arrays on a GPU), so that a list steps in one
    parallel region (CPU) or one launch (GPU) per batch of one dtype. On a GPU the
    gradients reach the kernels as a table of addresses, checked with a few tensor
    attributes each: no array objects are made per step.

    Built once per layout (which params have gradients, each group's compiled-in
    options, the state tensors) and reused while ``matches`` finds it unchanged;
    lr, betas, eps and weight_decay are read at every step, so schedulers cost
    nothing. The ``step`` tensors become 0-d views of one buffer, so that counting
    a step is one add, not one per tensor.
    """

    def __init__(self, opt, live, params, groups, inner, tensors, entries, steps) -> None:
        self.state = opt.state  # held: replacing it (load_state_dict) ends the plan
        self.sizes = tuple(map(len, live))
        self.params, self.groups, self.inner = params, groups, inner
        self.options = _options(opt.param_groups)
        self.storages = [t.untyped_storage() for t in tensors]  # held: no reuse, no dangling
        self.param_addresses = _addresses(params)
        self.grad_arrays = [_grad_reader(p) for p in params]
        self.device = params[0].device if params[0].is_cuda else None
        self.kinds = [KINDS[p.dtype] for p in params]
        if self.device is not None:
            self.owned = Owned([t.data_ptr() for t in tensors], list(map(_nbytes, tensors)))
            self.grad_nbytes = np.array(list(map(_nbytes, params)), dtype=np.int64)
        self.streams: dict = {}  # torch stream handle -> numba stream
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
        per-tensor path must run (GPU, unusual state), which also says what is wrong if
        anything is."""
        params = [p for ps in live for p in ps]
        if not params or any(p.device != params[0].device or p.is_sparse
                             or p.dtype not in DTYPES or not p.is_contiguous()
                             for p in params):
            return None  # mixed devices step tensor by tensor
        backend = "cuda" if params[0].is_cuda else "cpu"
        groups = [i for i, ps in enumerate(live) if ps]
        specs, tensors, entries, steps, moments = [], [], [], [], []
        for i in groups:
            group = opt.param_groups[i]
            keys = _keys(group["amsgrad"])
            try:
                h = _hyper(group)
                arrays = [as_array(real_view(p)) for p in live[i]]
            except (TypeError, ValueError, ImportError):
                return None
            specs.append({"params": arrays, **_groups.as_dict(h)})
            for p in live[i]:
                entry, new = opt.state.get(p), False
                if not entry:
                    entry, new = _fresh_state(p, keys), True
                if not all(isinstance(entry.get(k), torch.Tensor) for k in keys):
                    return None
                moment = [entry[k] for k in keys[1:]]
                if any(m.device != p.device or m.dtype != p.dtype or not m.is_contiguous()
                       for m in moment):
                    return None
                tensors += [p, *moment]
                entries.append((p, entry, new))
                steps.append(float(entry["step"]))
                moments.append([as_array(real_view(m)) for m in moment] + [None] * (4 - len(keys)))
        stochastic, seed = _rounding(opt)
        sixteen = [p.dtype in (torch.float16, torch.bfloat16) for p in params]
        try:
            inner = _ArrayAdam(specs, backend=backend, state_dtype=PARAM_DTYPE,
                               kahan_summation=False,
                               max_grad_norm=getattr(opt, "_max_grad_norm", None))
            inner._adopt_state([int(s) for s in steps], moments)
        except (TypeError, ValueError, ImportError, RuntimeError):  # no numba-cuda, no GPU
            return None
        if stochastic:  # the 16-bit params, each with the key of its place in the groups
            index = {id(p): i for i, p in enumerate(chain.from_iterable(
                g["params"] for g in opt.param_groups))}
            for slot, p, on in zip(inner._slots, params, sixteen):
                slot.flags = slot.flags._replace(stochastic=on)
                slot.key = rounding_key(seed, index[id(p)])
            inner._replan()
        return cls(opt, live, params, groups, inner, tensors, entries, steps)

    def _grad_norm(self):
        """The inner optimizer's norm; on a GPU a 0-d float64 tensor there, copied on the
        step's stream from the optimizer's buffer (no wait), as ``clip_grad_norm_``
        returns a tensor."""
        norm = self.inner.grad_norm
        if norm is None or isinstance(norm, float):
            return norm
        return torch.as_tensor(norm, device=self.device).clone()

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
        the per-tensor path. Bad gradients or hyperparameters raise and change nothing."""
        hypers = [_hyper(opt.param_groups[i]) for i in self.groups]
        stream = None if self.device is None else self._stream()
        addresses = None if self.device is None else self._grad_addresses()
        if addresses is not None:
            self.inner._set_hyper(hypers)
            stepped = self.inner._step_addresses(self.kinds, addresses, stream)
        else:
            stepped = False
        if not stepped:
            try:
                grads = [read(p.grad) for read, p in zip(self.grad_arrays, self.params)]
            except (RuntimeError, TypeError):  # sparse, or a gradient that requires grad
                return False
            self.inner._set_hyper(hypers)
            self.inner.step(grads, stream=stream)
        opt.grad_norm = self._grad_norm()
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


    def _grad_addresses(self) -> np.ndarray | None:
        """The CUDA gradients' addresses when a few attributes each show them fit for the
        kernels, else None (the checked path then names what is wrong). torch itself
        keeps a gradient's dtype, shape and device those of its param."""
        grads = [p.grad for p in self.params]
        if not all(g.layout is torch.strided and g.is_contiguous() and not g.requires_grad
                   for g in grads):
            return None
        addresses = np.fromiter((g.data_ptr() for g in grads), np.int64, len(grads))
        if self.owned.overlaps(addresses, addresses + self.grad_nbytes):
            return None
        return addresses.view(np.uint64)

    def _stream(self):
        handle = torch.cuda.current_stream(self.device).cuda_stream
        stream = self.streams.get(handle)
        if stream is None:
            stream = self.streams[handle] = to_stream(handle)
        return stream


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()




def _grad_reader(p: torch.Tensor):
    """How a gradient of ``p`` becomes an array, chosen once per plan (it runs per step)."""
    if p.is_cuda:
        return lambda g: real_view(g)  # checked by the inner optimizer, named there
    if p.is_complex() or p.dtype == torch.bfloat16:
        return lambda g: as_array(real_view(g.contiguous()))
    return lambda g: g.contiguous().numpy()


def _keys(amsgrad: bool) -> tuple:
    return ("step", "exp_avg", "exp_avg_sq", "max_exp_avg_sq")[:4 if amsgrad else 3]


def _fresh_state(p: torch.Tensor, keys: tuple) -> dict:
    state = {"step": torch.tensor(0.0, dtype=torch.float32)}
    for k in keys[1:]:
        state[k] = torch.zeros_like(p, memory_format=torch.preserve_format)
    return state


def _options(param_groups) -> list:
    """What a plan compiles in: the options that select a kernel. lr, betas, eps and the
    size of weight_decay are read at every step."""
    return [(g["amsgrad"], g["maximize"], g["decoupled_weight_decay"], g["weight_decay"] == 0,
             g.get("stochastic_rounding", False), g.get("seed", 0)) for g in param_groups]


def _rounding(opt) -> tuple[bool, int]:
    """(stochastic rounding on?, its seed): the first group's (a loaded state_dict's too)."""
    group = opt.param_groups[0] if opt.param_groups else {}
    return bool(group.get("stochastic_rounding", False)), checks.seed(group.get("seed", 0))


def _addresses(tensors) -> np.ndarray:
    return np.fromiter((t.data_ptr() for t in tensors), np.int64, len(tensors))


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


