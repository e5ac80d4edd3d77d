"""Adam and AdamW: a thin stateful shell around the functional core."""

from __future__ import annotations

import numbers

import numpy as np

from . import _checkpoint
from . import _validate as check
from ._dispatch import all_finite, apply, from_host, resolve, step_flags, to_host, zeros
from .functional import hyper

# State arrays, in the order the kernels take them after (param, grad).
_STATE = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq", "kahan_comp", "master_params")
_HYPER_KEYS = ("lr", "betas", "eps", "weight_decay", "amsgrad", "maximize",
               "decoupled_weight_decay", "bias_correction", "eps_root", "nesterov",
               "decouple_lr", "max_lr")


def _numpy_dtype(kind: str) -> np.dtype:
    if kind == "bfloat16":
        try:
            import ml_dtypes
        except ImportError as e:
            raise ImportError("bfloat16 state needs ml_dtypes: pip install ml_dtypes") from e
        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(kind)


class _Slot:
    """One params array and its state: (m, v, v_max, Kahan compensation, master params)."""

    __slots__ = ("array", "flat", "state", "flags", "step", "state_dtype")


class Adam:
    """Adam on contiguous float arrays, updated in place (``torch.optim.Adam`` semantics).

    Example::

        params = np.random.randn(1_000_000).astype(np.float32)
        opt = fastadam.Adam(params, lr=1e-3)
        for grads in gradient_stream():
            opt.step(grads)          # params, and the moments, change in place

    ``params`` is one array, a list of arrays, or torch-style param groups: a
    list of dicts, each with ``"params"`` (an array or a list of arrays) and
    any of the hyperparameters below for that group. ``step`` then takes the
    gradients as a list, in the order the params were given.

    Beyond torch's options: ``bias_correction``, ``eps_root`` and ``nesterov``
    (as optax), ``decouple_lr`` with ``max_lr`` (optimi's fully decoupled
    weight decay; ``max_lr`` defaults to the initial lr), and for 16-bit params
    (float16, ml_dtypes.bfloat16):

    - ``state_dtype``: dtype of m and v; None is float32 for 16-bit params and
      the param dtype otherwise; ``ml_dtypes.bfloat16`` halves their memory.
    - ``kahan_summation``: None is on for 16-bit params without master weights.
      A 16-bit compensation buffer keeps what rounding to 16 bits lost, so tiny
      updates still accumulate and the params follow the fp32 trajectory.
    - ``master_weights``: a float32 copy of the params lives in the state; the
      16-bit params get it rounded after every step.
    - ``skip_nonfinite``: a step whose gradient holds NaN or inf changes nothing
      and ``step`` returns False. It costs one extra read of the gradient (on
      the GPU also a wait for the result).

    ``lr`` may be set between steps (schedules). ``state_dict()`` and
    ``load_state_dict()`` use plain NumPy arrays and numbers, laid out as torch's.
    """

    def __init__(
        self,
        params,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        amsgrad: bool = False,
        maximize: bool = False,
        decoupled_weight_decay: bool = False,
        backend: str = "auto",
        num_threads: int | None = None,
        *,
        bias_correction: bool = True,
        eps_root: float = 0.0,
        nesterov: bool = False,
        decouple_lr: bool = False,
        max_lr: float | None = None,
        state_dtype=None,
        kahan_summation: bool | None = None,
        master_weights: bool = False,
        skip_nonfinite: bool = False,
    ) -> None:
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                        decoupled_weight_decay=decoupled_weight_decay, amsgrad=amsgrad,
                        maximize=maximize, bias_correction=bias_correction, eps_root=eps_root,
                        nesterov=nesterov, decouple_lr=decouple_lr, max_lr=max_lr)
        self._single = isinstance(params, np.ndarray) or check.is_device(params)
        specs = [{"params": [params]}] if self._single else _group_specs(params)
        hypers = [_group_hyper(defaults, spec) for spec in specs]
        first = specs[0]["params"][0]
        self._backend = resolve(check.backend(backend), first)
        self._device = self._backend == "cuda"
        self._num_threads = check.num_threads(num_threads)
        self._skip_nonfinite = check.flag("skip_nonfinite", skip_nonfinite)
        self._master = check.flag("master_weights", master_weights)
        self._kahan = None if kahan_summation is None else check.flag(
            "kahan_summation", kahan_summation)
        self._state_kind = None if state_dtype is None else check.dtype_kind(
            "state_dtype", state_dtype)
        names = ["params"] if self._single else [
            f"params[{i}]" for i in range(sum(len(spec["params"]) for spec in specs))]
        arrays = [a for spec in specs for a in spec["params"]]
        views = [self._checked(name, a) for name, a in zip(names, arrays)]
        check.disjoint(dict(zip(names, views)))
        self._groups, it = [], iter(views)
        for h, spec in zip(hypers, specs):
            self._groups.append((h, [self._new_slot(next(it), h) for _ in spec["params"]]))
        self._slots = [slot for _, group in self._groups for slot in group]
        self.params = params if self._single else arrays
        self._many, self._on_device, self._adopted = None, None, False
        self._prepare_stepping()

    def _prepare_stepping(self) -> None:
        self._guard()
        # Lists step in one parallel region (CPU) or one launch (GPU) per batch of alike arrays.
        if not self._single and self._backend == "cpu":
            from ._many import ManyArrays  # loads numba: not at import time

            self._many = ManyArrays(self._groups)
        if not self._single and self._backend == "cuda":
            from ._many import DeviceArrays

            self._on_device = DeviceArrays(self._groups)

    # --- construction -------------------------------------------------------

    def _checked(self, name: str, array):
        check_params = check.device_array if self._device else check.host_array
        if not self._device and check.is_device(array):
            raise TypeError(f"{name} is a GPU array, but the other params are host arrays")
        return check_params(name, array, writable=True)

    def _new_slot(self, view, h) -> _Slot:
        slot = _Slot()
        slot.array, slot.flat, slot.step = view, view.reshape(-1), 0
        kind = check.kind(view.dtype)
        sixteen = kind in check.SIXTEEN_BIT
        kahan = (sixteen and not self._master) if self._kahan is None else self._kahan
        if (kahan or self._master) and not sixteen:
            raise ValueError("kahan_summation and master_weights are for 16-bit params; "
                             f"params are {view.dtype}")
        if kahan and self._master:
            raise ValueError("kahan_summation and master_weights exclude each other")
        state_kind = self._state_kind or ("float32" if sixteen else kind)
        if self._device and state_kind == "bfloat16":
            raise ValueError("state_dtype=bfloat16 is for host arrays: GPU arrays cannot "
                             "carry bfloat16 through __cuda_array_interface__")
        slot.state_dtype = _numpy_dtype(state_kind)
        n, b = slot.flat.size, self._backend
        slot.state = [
            zeros(b, n, slot.state_dtype),
            zeros(b, n, slot.state_dtype),
            zeros(b, n, slot.state_dtype) if h.amsgrad else None,
            zeros(b, n, view.dtype) if kahan else None,
            from_host(b, to_host(b, slot.flat, view.dtype).astype(np.float32))
            if self._master else None,
        ]
        slot.flags = step_flags(h, (slot.flat, slot.flat, *slot.state))
        return slot

    # --- hyperparameters ----------------------------------------------------

    @property
    def lr(self) -> float:
        """The learning rate of the next step (of the first group); setting it sets every
        group's. ``set_lr`` sets one group's."""
        return self._groups[0][0].lr

    @lr.setter
    def lr(self, value: float) -> None:
        self.set_lr(value)

    def set_lr(self, value: float, group: int | None = None) -> None:
        """Set the learning rate of ``group`` (an index), or of every group."""
        value = check.real("lr", value)
        indices = range(len(self._groups)) if group is None else [self._group_index(group)]
        for i in indices:
            h, slots = self._groups[i]
            self._groups[i] = (h._replace(lr=value), slots)

    def _group_index(self, group) -> int:
        if isinstance(group, bool) or not isinstance(group, numbers.Integral) or not (
                0 <= group < len(self._groups)):
            raise ValueError(f"group must be an index below {len(self._groups)}, got {group!r}")
        return int(group)

    @property
    def step_count(self) -> int:
        """How many updates have been applied."""
        return self._slots[0].step

    @property
    def hyperparameters(self) -> dict:
        """The current hyperparameters (of the first group), as a dict."""
        return _hyper_dict(self._groups[0][0])

    @property
    def param_groups(self) -> list[dict]:
        """Each group's hyperparameters and its params' indices (a copy)."""
        out, start = [], 0
        for h, slots in self._groups:
            out.append({**_hyper_dict(h), "params": list(range(start, start + len(slots)))})
            start += len(slots)
        return out

    @property
    def options(self) -> dict:
        """What the state holds: fixed at construction."""
        flags = self._slots[0].flags
        return {
            "state_dtype": self._slots[0].state_dtype.name,
            "kahan_summation": flags.kahan,
            "master_weights": flags.master,
            "skip_nonfinite": self._skip_nonfinite,
        }

    # --- stepping -----------------------------------------------------------

    def step(self, grads, grad_scale: float | None = None, stream=None) -> bool:
        """Apply one update with ``grads``: an array for one params array, else a list in
        the order the params were given (params' shapes and device, any float dtype).

        ``grad_scale``: the loss scale, divided out of the gradients in the
        kernel. ``stream``: for params on the GPU, the CUDA stream to launch on.
        Returns False (and changes nothing) when ``skip_nonfinite`` is on and a
        gradient holds NaN or inf; True when the update was applied. A refused
        step (bad arguments) raises and changes nothing.
        """
        fast = None if self._many is None else self._many.check(grads)
        if fast is not None:
            return self._step_many(grads, *fast, grad_scale, stream)
        if self._single:
            flats = (self._checked_grad("grads", grads, self._slots[0]),)
        else:
            if isinstance(grads, np.ndarray) or not isinstance(grads, (list, tuple)):
                raise TypeError("grads must be a list of arrays, one per params array")
            if len(grads) != len(self._slots):
                raise ValueError(f"grads has {len(grads)} arrays, but there are "
                                 f"{len(self._slots)} params arrays")
            names = [f"grads[{i}]" for i in range(len(grads))]
            grads = [check.like(name, g, slot.array, writable=False, device=self._device)
                     for name, g, slot in zip(names, grads, self._slots)]
            check.apart_from_all(list(zip(names, grads)), list(self._guarded.items()))
            flats = [g.reshape(-1) for g in grads]
        scale = check.grad_scale(grad_scale)
        cuda_stream = check.stream(stream, self._backend)
        if self._skip_nonfinite and not self._all_finite(flats, cuda_stream):
            return False
        first = 0
        for g, (h, slots) in enumerate(self._groups):
            done = set() if self._on_device is None else self._on_device.step(
                g, h, flats, scale, cuda_stream)
            self._step_rest(first, slots, done, flats, h, scale, cuda_stream)
            first += len(slots)
        return True

    def _step_many(self, grads, codes, addresses, grad_scale, stream) -> bool:
        # Lists of host arrays that passed the fast checks: batches in one region each.
        scale = check.grad_scale(grad_scale)
        check.stream(stream, self._backend)
        if self._skip_nonfinite and not self._many.all_finite(codes, addresses,
                                                              self._num_threads):
            return False
        first = 0
        for g, (h, slots) in enumerate(self._groups):
            done = self._many.step(g, h, codes, addresses, scale, self._num_threads)
            self._step_rest(first, slots, done, grads, h, scale, None)
            first += len(slots)
        return True

    def _step_rest(self, first: int, slots, done: set, grads, h, scale, stream) -> None:
        """Step the arrays of a group (numbered from ``first``) that no batch stepped."""
        if len(done) == len(slots):
            return
        rest = [i for i in range(first, first + len(slots)) if i not in done]
        self._step_each([self._slots[i] for i in rest], [grads[i].reshape(-1) for i in rest],
                        h, scale, stream)

    def _all_finite(self, flats, stream) -> bool:
        """Whether every gradient is free of NaN and inf (one extra read of each)."""
        return all_finite(self._backend, flats, num_threads=self._num_threads, stream=stream)

    def _step_each(self, slots, flats, h, scale, stream) -> None:
        """One kernel call per array."""
        for slot, flat in zip(slots, flats):
            grad_kind = check.kind(flat.dtype)
            if slot.flags.grad != grad_kind:
                slot.flags = slot.flags._replace(grad=grad_kind)
            apply(self._backend, (slot.flat, flat, *slot.state), h, slot.flags, slot.step + 1,
                  grad_scale=scale, num_threads=self._num_threads, stream=stream)
            slot.step += 1

    def _checked_grad(self, name: str, grads, slot: _Slot):
        grads = check.like(name, grads, slot.array, writable=False, device=self._device)
        check.apart(name, grads, self._guarded)
        return grads.reshape(-1)

    def _guard(self) -> None:
        """Name the memory no gradient may share: the params, and adopted state arrays
        (this optimizer's own state is out of a caller's reach)."""
        self._guarded = {}
        for i, slot in enumerate(self._slots):
            arrays = (slot.flat, *slot.state[:3]) if self._adopted else (slot.flat,)
            for name, a in zip(("", *(f" {k}" for k in _STATE)), arrays):
                if a is not None:
                    self._guarded[("params" if self._single else f"params[{i}]") + name] = a

    # --- state --------------------------------------------------------------

    def state_dict(self) -> dict:
        """A copy of the state: ``{"state": {i: {...}}, "param_groups": [{...}]}`` as torch
        lays it out, with NumPy arrays and Python numbers."""
        state = {}
        for i, slot in enumerate(self._slots):
            entry = {"step": slot.step}
            for name, a, dtype in zip(_STATE, slot.state, _state_dtypes(slot)):
                if a is not None:
                    entry[name] = to_host(self._backend, a, dtype).reshape(slot.array.shape)
            state[i] = entry
        groups = [{**group, **self.options} for group in self.param_groups]
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict: dict) -> None:
        """Restore state and hyperparameters from ``state_dict()``; refuses a mismatch unchanged.

        Moments are copied and cast to this optimizer's state dtypes. The layout
        (groups, params, shapes) and the options (``kahan_summation``,
        ``master_weights``) must match this optimizer's.
        """
        if not isinstance(state_dict, dict) or set(state_dict) != {"state", "param_groups"}:
            raise ValueError("state_dict must be a dict with keys 'state' and 'param_groups'")
        groups = state_dict["param_groups"]
        mine = self.param_groups
        if not isinstance(groups, (list, tuple)) or len(groups) != len(mine) or not all(
                isinstance(g, dict) for g in groups):
            raise ValueError(f"state_dict['param_groups'] must hold {len(mine)} group(s) (dicts)")
        hypers = []
        for i, (group, current) in enumerate(zip(groups, mine)):
            label = f"state_dict['param_groups'][{i}]"
            missing = {"lr", "betas", "eps", "weight_decay", "amsgrad", "maximize"} - set(group)
            if missing:
                raise ValueError(f"{label} lacks {sorted(missing)}")
            if list(group.get("params", current["params"])) != current["params"]:
                raise ValueError(f"{label}['params'] is {group.get('params')}, but this "
                                 f"optimizer's group holds {current['params']}")
            try:
                hypers.append(hyper(**{k: group.get(k, current[k]) for k in _HYPER_KEYS}))
            except (TypeError, ValueError) as e:
                raise type(e)(f"{label}: {e}") from e
            for option in ("kahan_summation", "master_weights"):
                if option in group and bool(group[option]) != self.options[option]:
                    raise ValueError(f"{label}[{option!r}] is {group[option]}, but this "
                                     f"optimizer has {self.options[option]}")
        state = state_dict["state"]
        if not isinstance(state, dict) or sorted(state) != list(range(len(self._slots))) or not all(
                isinstance(e, dict) for e in state.values()):
            raise ValueError(f"state_dict['state'] must be {{0: {{...}}, ...}} with one entry per "
                             f"params array ({len(self._slots)})")
        loaded = []
        slot_hypers = [h for h, (_, group) in zip(hypers, self._groups) for _ in group]
        for i, (slot, h) in enumerate(zip(self._slots, slot_hypers)):
            entry = state[i]
            step = entry.get("step")
            if isinstance(step, bool) or not isinstance(step, numbers.Integral) or step < 0:
                raise ValueError(f"state_dict['state'][{i}]['step'] must be an int >= 0, "
                                 f"got {step!r}")
            wanted = (True, True, h.amsgrad, slot.flags.kahan, slot.flags.master)
            arrays = [self._loaded(i, name, entry.get(name), dtype, slot) if want else None
                      for name, want, dtype in zip(_STATE, wanted, _state_dtypes(slot))]
            loaded.append((int(step), [None if a is None else from_host(self._backend, a)
                                       for a in arrays]))
        # Everything is checked: commit.
        self._groups = [(h, slots) for h, (_, slots) in zip(hypers, self._groups)]
        for slot, h, (step, arrays) in zip(self._slots, slot_hypers, loaded):
            slot.step, slot.state = step, arrays
            slot.flags = step_flags(h, (slot.flat, slot.flat, *arrays))._replace(
                grad=slot.flags.grad)
        self._prepare_stepping()

    def _adopt_state(self, steps: list[int], moments: list[tuple]) -> None:
        """Step with the given ``(m, v, v_max)`` arrays themselves as the state, one per
        params array in order (v_max None unless amsgrad): for wrappers whose state lives
        in another framework's tensors. Checks everything first; refuses unchanged."""
        if len(steps) != len(self._slots) or len(moments) != len(self._slots):
            raise ValueError(f"expected state for {len(self._slots)} params arrays")
        named, adopted = {}, []
        slot_hypers = [h for h, group in self._groups for _ in group]
        for i, (slot, h, step, arrays) in enumerate(zip(self._slots, slot_hypers, steps,
                                                        moments)):
            if slot.flags.kahan or slot.flags.master:
                raise ValueError("adopted state has no Kahan compensation or master params")
            step = check.step(step + 1) - 1  # an int >= 0
            named[f"params[{i}]"] = slot.array
            views = []
            for name, a, wanted in zip(_STATE, arrays, (True, True, h.amsgrad)):
                if (a is None) == wanted:
                    raise ValueError(f"state {i} {name}: {'missing' if wanted else 'unexpected'}")
                if a is not None:
                    label = f"state[{i}][{name!r}]"
                    a = check.like(label, a, slot.array, writable=True, device=self._device,
                                   dtype=slot.state_dtype)
                    named[label] = a
                views.append(None if a is None else a.reshape(-1))
            adopted.append((step, views))
        check.disjoint(named)
        for slot, (step, views) in zip(self._slots, adopted):
            slot.step, slot.state[:3] = step, views
        self._adopted = True
        self._prepare_stepping()

    def save(self, path) -> None:
        """Write ``state_dict()`` to one ``.npz`` file with a format version, atomically:
        a save killed at any moment leaves the old file or the new one."""
        _checkpoint.save(path, self.state_dict())

    def load(self, path) -> None:
        """Restore what ``save`` wrote. A file of another layout (shapes, options), or a
        damaged one, raises ValueError and changes nothing."""
        self.load_state_dict(_checkpoint.load(path))

    def _loaded(self, i: int, name: str, value, dtype, slot: _Slot) -> np.ndarray:
        label = f"state_dict['state'][{i}][{name!r}]"
        if not isinstance(value, np.ndarray):
            raise TypeError(f"{label} must be a NumPy array, got {type(value).__name__}")
        shape = slot.array.shape
        if value.shape != shape:
            raise ValueError(f"{label} has shape {value.shape}, but params has shape {shape}")
        if check.kind(value.dtype) is None:
            raise TypeError(f"{label} must be a float array, got {value.dtype}")
        return np.array(value, dtype=dtype, order="C", copy=True).reshape(-1)

    def __repr__(self) -> str:
        settings = {**self.hyperparameters, **self.options}
        params = ", ".join(f"{k}={v!r}" for k, v in settings.items())
        return (f"{type(self).__name__}({params}, arrays={len(self._slots)}, "
                f"groups={len(self._groups)}, step={self.step_count}, backend={self._backend!r})")


def _state_dtypes(slot: _Slot) -> tuple:
    return (slot.state_dtype,) * 3 + (slot.array.dtype, np.dtype(np.float32))


def _hyper_dict(h) -> dict:
    return {
        "lr": h.lr, "betas": (h.beta1, h.beta2), "eps": h.eps,
        "weight_decay": h.weight_decay, "amsgrad": h.amsgrad, "maximize": h.maximize,
        "decoupled_weight_decay": h.decoupled_weight_decay,
        "bias_correction": h.bias_correction, "eps_root": h.eps_root,
        "nesterov": h.nesterov, "decouple_lr": h.decouple_lr, "max_lr": h.max_lr,
    }


def _group_specs(params) -> list[dict]:
    """A list of arrays, or of torch-style group dicts, as a list of {"params": [...], ...}."""
    if isinstance(params, (str, bytes, dict)) or not isinstance(params, (list, tuple)):
        raise TypeError("params must be an array, a list of arrays, or a list of param "
                        f"groups (dicts), got {type(params).__name__}")
    if not params:
        raise ValueError("params is empty")
    if not any(isinstance(p, dict) for p in params):
        return [{"params": list(params)}]
    if not all(isinstance(p, dict) for p in params):
        raise TypeError("params mixes arrays and param groups (dicts)")
    specs = []
    for i, group in enumerate(params):
        unknown = set(group) - {"params", *_HYPER_KEYS}
        if unknown:
            raise ValueError(f"params[{i}] has unknown keys {sorted(unknown)}")
        if "params" not in group:
            raise ValueError(f"params[{i}] lacks 'params'")
        arrays = group["params"]
        arrays = [arrays] if isinstance(arrays, np.ndarray) or check.is_device(arrays) else arrays
        if not isinstance(arrays, (list, tuple)) or not arrays:
            raise TypeError(f"params[{i}]['params'] must be an array or a non-empty list of arrays")
        specs.append({**group, "params": list(arrays)})
    return specs


def _group_hyper(defaults: dict, spec: dict):
    settings = {**defaults, **{k: v for k, v in spec.items() if k != "params"}}
    if settings["decouple_lr"] is True and settings["max_lr"] is None:
        settings["max_lr"] = settings["lr"]  # optimi: the initial lr is the peak
    return hyper(**settings)


class AdamW(Adam):
    """Adam with decoupled weight decay (``torch.optim.AdamW`` semantics; weight_decay=1e-2)."""

    def __init__(
        self,
        params,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        amsgrad: bool = False,
        maximize: bool = False,
        backend: str = "auto",
        num_threads: int | None = None,
        **options,
    ) -> None:
        """``options``: the keyword-only options of :class:`Adam`."""
        super().__init__(params, lr, betas, eps, weight_decay, amsgrad, maximize,
                         decoupled_weight_decay=True, backend=backend,
                         num_threads=num_threads, **options)
