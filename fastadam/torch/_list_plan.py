"""The drop-ins' fast path: a list of tensors stepped as one, through a NumPy-API optimizer
whose params and state are views of the tensors (NumPy arrays on the CPU, the tensors
themselves on a GPU), so that a list steps in one parallel region (CPU) or one launch
(GPU) per batch of one dtype. What differs between the drop-ins, the layout of their
state, is a ``Layout``."""

from __future__ import annotations

import operator
from itertools import chain
from operator import itemgetter

import numpy as np
import torch

from .._backends.dispatch import rounding_key
from .._backends.owned import Owned
from .._core import checks
from .._core.gpu import to_stream
from .._state import groups as _groups
from ..optimizer import Adam as _ArrayAdam
from ._tensors import KINDS, as_array, real_view


class Layout:
    """What a drop-in's state looks like to the plan (one subclass per drop-in)."""

    dtypes: tuple = ()  # the param dtypes the plan steps
    state_dtype: object = None  # the inner optimizer's
    tensor_steps = False  # ``step`` a float32 0-d tensor (torch's Adam), else an int

    def hyper(self, group: dict):
        """The group's validated hyperparameters (a ``Hyper``)."""
        raise NotImplementedError

    def options(self, param_groups: list) -> list:
        """What a plan compiles in, per group: a change makes a new plan."""
        raise NotImplementedError

    def fresh(self, opt, p: torch.Tensor, group: dict) -> dict:
        """Zeroed state for ``p`` (entered into ``opt.state`` by the first step)."""
        raise NotImplementedError

    def state_of(self, p: torch.Tensor, group: dict, entry: dict) -> tuple | None:
        """(the entry's keys the plan holds, the moments ``(m, v, v_max)`` as arrays,
        their scales or None), or None where the plan cannot take the entry."""
        raise NotImplementedError

    def rounding(self, opt, group: dict, p: torch.Tensor, index: int) -> tuple[bool, int]:
        """(whether ``p``, the ``index``-th param of ``opt``, rounds stochastically, its
        key): here the first group's setting and seed, for 16-bit params."""
        on, seed = rounding(opt)
        return on and p.dtype in (torch.float16, torch.bfloat16), rounding_key(seed, index)


class ListPlan:
    """The params that have gradients, stepped through an inner :class:`fastadam.Adam`
    that adopted their state. On a GPU the gradients reach the kernels as a table of
    addresses, checked with a few tensor attributes each: no array objects are made per
    step.

    Built once per layout (which params have gradients, each group's compiled-in
    options, the state tensors) and reused while ``matches`` finds it unchanged;
    lr, betas, eps and weight_decay are read at every step, so schedulers cost
    nothing. ``step`` tensors become 0-d views of one buffer, so that counting a step
    is one add, not one per tensor.
    """

    def __init__(self, opt, layout: Layout, live, params, inner, tensors, entries,
                 keys, steps) -> None:
        self.layout, self.state = layout, opt.state  # held: a replaced state ends the plan
        self.sizes = tuple(map(len, live))
        self.groups = [i for i, ps in enumerate(live) if ps]
        self.params, self.inner = params, inner
        self.options = layout.options(opt.param_groups)
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
        self.getters = [itemgetter(*k) for k in keys]
        self.expected = steps
        if layout.tensor_steps:
            self.step_buffer = torch.tensor(steps, dtype=torch.float32)
            self.step_views = list(self.step_buffer.unbind())
            self.expected = self.step_buffer.clone()
        self.committed = False
        # What opt.state holds now, in the order ``_held`` lists it.
        self.held = self._held(entry for _, entry, _ in entries)

    @classmethod
    def build(cls, opt, layout: Layout, live) -> ListPlan | None:
        """The plan for ``live`` (per group, the params with gradients), or None where the
        per-tensor path must run (mixed devices, unusual state), which also says what is
        wrong if anything is."""
        params = [p for ps in live for p in ps]
        if not params or any(p.device != params[0].device or p.is_sparse
                             or p.dtype not in layout.dtypes or not p.is_contiguous()
                             for p in params):
            return None
        backend = "cuda" if params[0].is_cuda else "cpu"
        specs, tensors, entries, keys, steps, moments, scales = [], [], [], [], [], [], []
        index = {id(p): i for i, p in enumerate(chain.from_iterable(
            g["params"] for g in opt.param_groups))}
        rounded = []  # (stochastic?, key) per param
        for i, ps in enumerate(live):
            if not ps:
                continue
            group = opt.param_groups[i]
            try:
                h = layout.hyper(group)
                arrays = [as_array(real_view(p)) for p in ps]
            except (TypeError, ValueError, ImportError):
                return None
            specs.append({"params": arrays, **_groups.as_dict(h)})
            for p in ps:
                entry, new = opt.state.get(p), False
                if not entry:
                    entry, new = layout.fresh(opt, p, group), True
                state = layout.state_of(p, group, entry)
                if state is None:
                    return None
                held, moment, scale = state
                tensors += [p, *(entry[k] for k in held)]
                entries.append((p, entry, new))
                keys.append(("step", *held) if layout.tensor_steps else held)
                steps.append(float(entry["step"]) if layout.tensor_steps else entry["step"])
                moments.append(moment)
                scales.append(scale)
                rounded.append(layout.rounding(opt, group, p, index[id(p)]))
        try:
            inner = _ArrayAdam(specs, backend=backend, state_dtype=layout.state_dtype,
                               kahan_summation=False,
                               max_grad_norm=getattr(opt, "_max_grad_norm", None))
            inner._adopt_state([int(s) for s in steps], moments,
                               None if all(s is None for s in scales) else scales)
        except (TypeError, ValueError, ImportError, RuntimeError):  # no numba-cuda, no GPU
            return None
        if any(on for on, _ in rounded):  # each with the key of its place in the groups
            for slot, (on, key) in zip(inner._slots, rounded):
                slot.flags = slot.flags._replace(stochastic=on)
                slot.key = key
            inner._replan()
        return cls(opt, layout, live, params, inner, tensors, entries, keys, steps)

    def _grad_norm(self):
        """The inner optimizer's norm; on a GPU a 0-d float64 tensor there, copied on the
        step's stream from the optimizer's buffer (no wait), as ``clip_grad_norm_``
        returns a tensor."""
        norm = self.inner.grad_norm
        if norm is None or isinstance(norm, float):
            return norm
        return torch.as_tensor(norm, device=self.device).clone()

    def _held(self, entries) -> list:
        # The state tensors of each entry (torch's step tensors too), flat.
        return list(chain.from_iterable(get(entry) for get, entry in zip(self.getters, entries)))

    def matches(self, opt, live) -> bool:
        """Whether the plan still describes ``opt``: the same params with gradients at the
        same addresses, the same options, the same state tensors, steps as it left them."""
        if opt.state is not self.state or tuple(map(len, live)) != self.sizes:
            return False
        params = [p for ps in live for p in ps]
        if not all(map(operator.is_, params, self.params)):
            return False
        if self.layout.options(opt.param_groups) != self.options:
            return False
        if not np.array_equal(_addresses(params), self.param_addresses):  # p.data = ...
            return False
        # Until the first step commits them, new entries are the plan's own.
        current = [entry if new and not self.committed else opt.state.get(p)
                   for p, entry, new in self.entries]
        try:
            held = self._held(current)
            steps = [entry["step"] for entry in current]
        except (KeyError, TypeError):
            return False
        if len(held) != len(self.held) or not all(map(operator.is_, held, self.held)):
            return False
        if not self.layout.tensor_steps:
            return steps == self.expected
        if self.committed:
            return torch.equal(self.step_buffer, self.expected)
        return torch.equal(torch.stack(steps), self.expected)

    def step(self, opt) -> bool:
        """Step through the inner optimizer; False (nothing done) if the gradients need
        the per-tensor path. Bad gradients or hyperparameters raise and change nothing."""
        hypers = [self.layout.hyper(opt.param_groups[i]) for i in self.groups]
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
            for i, (p, entry, new) in enumerate(self.entries):
                if self.layout.tensor_steps:
                    entry["step"] = self.step_views[i]
                if new:
                    opt.state[p] = entry
            self.held = self._held(entry for _, entry, _ in self.entries)
            self.committed = True
        if self.layout.tensor_steps:
            self.step_buffer += 1
            self.expected += 1
        else:
            for _, entry, _ in self.entries:
                entry["step"] += 1
            self.expected = [s + 1 for s in self.expected]
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


def step_list(opt, layout: Layout, live: list) -> bool:
    """Step ``live`` (per group, the params with gradients) through ``opt``'s plan, built
    anew where it no longer matches; False, nothing done, where the drop-in must step
    tensor by tensor."""
    plan = getattr(opt, "_plan", None)  # unpickled optimizers have none yet
    if plan is None or not plan.matches(opt, live):
        plan = opt._plan = ListPlan.build(opt, layout, live)
    return plan is not None and plan.step(opt)


def rounding(opt) -> tuple[bool, int]:
    """(stochastic rounding on?, its seed): the first group's (a loaded state_dict's too)."""
    group = opt.param_groups[0] if opt.param_groups else {}
    return bool(group.get("stochastic_rounding", False)), checks.seed(group.get("seed", 0))


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def _grad_reader(p: torch.Tensor):
    """How a gradient of ``p`` becomes an array, chosen once per plan (it runs per step)."""
    if p.is_cuda:
        return lambda g: real_view(g)  # checked by the inner optimizer, named there
    if p.is_complex() or p.dtype == torch.bfloat16:
        return lambda g: as_array(real_view(g.contiguous()))
    return lambda g: g.contiguous().numpy()


def _addresses(tensors) -> np.ndarray:
    return np.fromiter((t.data_ptr() for t in tensors), np.int64, len(tensors))
