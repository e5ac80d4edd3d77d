"""Adam and AdamW: a thin stateful shell around the functional core.

The shell holds param groups (``_state/groups.py``), one slot per params array with
its state (``_state/slots.py``), the stepping plans (``_state/plans.py``, over the
backends' batches) and the state_dict (``_state/state_dict.py``,
``_state/checkpoint.py``); each of those has one job.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ._backends.dispatch import resolve, rounding_key
from ._core import array_checks, checks
from ._core.gpu import is_device, wait_for_producer
from ._core.options import ADAM
from ._core.options import KEYS as HYPER_KEYS
from ._state import checkpoint as _checkpoint
from ._state import groups as _groups
from ._state import state_dict as _state_dict
from ._state.plans import plan_for
from ._state.slots import Options, Slot

if TYPE_CHECKING:  # numba.cuda, imported only when a GPU step is asked for
    from ._backends.dispatch import DeviceNorm


class Adam:
    """Adam on contiguous float arrays, updated in place (``torch.optim.Adam`` semantics).

    Example:
        ```python
        params = np.random.randn(1_000_000).astype(np.float32)
        opt = fastadam.Adam(params, lr=1e-3)
        for grads in gradient_stream():
            opt.step(grads)          # params, and the moments, change in place
        ```

    ``params`` is one array, a list of arrays, or torch-style param groups: a
    list of dicts, each with ``"params"`` (an array or a list of arrays) and
    any of the hyperparameters below for that group. ``step`` then takes the
    gradients as a list, in the order the params were given.

    Beyond torch's options: ``bias_correction``, ``eps_root`` and ``nesterov``
    (as optax), ``decouple_lr`` with ``max_lr`` (optimi's fully decoupled
    weight decay; ``max_lr`` defaults to the initial lr), and for 16-bit params
    (float16, ml_dtypes.bfloat16):

    - ``state_dtype``: dtype of m and v; None is float32 for 16-bit params and
      the param dtype otherwise; ``ml_dtypes.bfloat16`` halves their memory;
      ``"param"`` keeps each array's own dtype (torch's layout, for mixed lists).
    - ``kahan_summation``: None is on for 16-bit params without master weights.
      A 16-bit compensation buffer keeps what rounding to 16 bits lost, so tiny
      updates still accumulate and the params follow the fp32 trajectory.
    - ``master_weights``: a float32 copy of the params lives in the state; the
      16-bit params get it rounded after every step.
    - ``state_dtype="8bit"`` (any params dtype): m and v (and amsgrad's v_max) in
      bitsandbytes' blockwise 8-bit format, about 2 bytes per param instead of 8,
      for arrays of ``fastadam.quant8.MIN_8BIT_SIZE`` (4096) elements or more;
      smaller ones keep 32-bit moments. ``state_dict()`` then holds,
      per array, the codes (``state1``, ``state2``, ``state3``), the absmax per
      block (``absmax1`` ...) and the maps (``qmap1``, ``qmap2``), bitsandbytes'
      names; 32-bit moments load into it quantized, and its state into a 32-bit
      optimizer decoded.
    - ``state_dtype="4bit"`` (CPU and GPU, any params dtype): m and v (and v_max) in
      torchao's 4-bit format (``fastadam.quant4``), 1.06 bytes per param, for arrays
      of any size; the moments move as torchao's do (``m + (1 - beta1) * (g - m)``), so
      from the same state the codes are torchao's. ``state_dict()`` uses the 8-bit
      keys with packed codes and torchao's 16-value maps; entries move between 32, 8
      and 4 bits, decoded and quantized.
    - ``stochastic_rounding`` (with ``seed``): 16-bit params are rounded up or down with
      probability proportional to the distance, unbiased, with no compensation buffer
      and no master copy (2 bytes per param fewer than Kahan summation, which stays the
      default). The random bits come from a counter-based hash of (seed, params array,
      step, element): the same for any thread count and on the GPU as on the CPU; the
      seed travels in the state_dict. Excludes ``kahan_summation=True`` and
      ``master_weights=True``.
    - ``skip_nonfinite``: a step whose gradient holds NaN or inf changes nothing
      and ``step`` returns False. It costs one extra read of the gradient (on
      the GPU also a wait for the result).
    - ``max_grad_norm``: clip the gradients by their global norm first, exactly as
      ``torch.nn.utils.clip_grad_norm_(all params, max_grad_norm)`` followed by the
      step: the coefficient ``min(1, max_grad_norm / (norm + 1e-6))`` over the norm
      of the gradients after ``grad_scale`` unscales them. One extra read of the
      gradients (shared with ``skip_nonfinite``'s check, which then skips a step
      whose norm is NaN or inf); the coefficient joins the step's gradient scale, so
      the gradients are never written. ``grad_norm`` holds the norm before clipping.

    ``lr`` may be set between steps (schedules). ``state_dict()`` and
    ``load_state_dict()`` use plain NumPy arrays and numbers, laid out as torch's.
    """

    _rule = ADAM  # the element update (``options.RULES``)

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
        stochastic_rounding: bool = False,
        seed: int = 0,
        max_grad_norm: float | None = None,
    ) -> None:
        # Every declared hyperparameter, by name, as passed (the first statement: the
        # arguments are all the locals there are).
        defaults = {k: v for k, v in locals().items() if k in HYPER_KEYS}
        self._setup(params, defaults, backend, num_threads, state_dtype=state_dtype,
                    kahan_summation=kahan_summation, master_weights=master_weights,
                    skip_nonfinite=skip_nonfinite, stochastic_rounding=stochastic_rounding,
                    seed=seed, max_grad_norm=max_grad_norm)

    def _setup(self, params, defaults: dict, backend: str, num_threads: int | None, *,
               state_dtype, kahan_summation, master_weights, skip_nonfinite,
               stochastic_rounding, seed, max_grad_norm) -> None:
        """Build groups, slots and plans from the hyperparameters ``defaults`` (of this
        class's update rule, ``_rule``) and the settings."""
        self._single = isinstance(params, np.ndarray) or is_device(params)
        specs = ([{"params": [params]}] if self._single
                 else _groups.specs(params, self._rule))
        hypers = [_groups.group_hyper(defaults, spec, self._rule) for spec in specs]
        self._backend = resolve(checks.backend(backend), specs[0]["params"][0])
        self._num_threads = checks.num_threads(num_threads)
        self._skip_nonfinite = checks.flag("skip_nonfinite", skip_nonfinite)
        self._max_grad_norm = checks.max_grad_norm(max_grad_norm)
        options = self._options = Options(state_dtype, kahan_summation, master_weights,
                                          stochastic_rounding, seed)
        arrays = [a for spec in specs for a in spec["params"]]
        names = ["params"] if self._single else [f"params[{i}]" for i in range(len(arrays))]
        views = [self._checked(name, a) for name, a in zip(names, arrays)]
        array_checks.disjoint(dict(zip(names, views)))
        options.check_params(views)
        self._groups, it = [], iter(views)
        for h, spec in zip(hypers, specs):
            self._groups.append(
                (h, [Slot.new(next(it), h, self._backend, options) for _ in spec["params"]]))
        self._slots = [slot for _, group in self._groups for slot in group]
        self._seed(options.seed)
        self.params = params if self._single else arrays
        self._adopted = False
        self._replan()

    def _seed(self, seed: int) -> None:
        """Give every params array its rounding key under ``seed``."""
        self._options.seed = seed
        for i, slot in enumerate(self._slots):
            slot.key = rounding_key(seed, i)

    def _replan(self) -> None:
        norm = getattr(getattr(self, "_plans", None), "grad_norm", None)
        self._plans = plan_for(self._groups, self._slots, single=self._single,
                               backend=self._backend, num_threads=self._num_threads,
                               skip_nonfinite=self._skip_nonfinite, adopted=self._adopted,
                               max_grad_norm=self._max_grad_norm)
        self._plans.grad_norm = norm

    def _checked(self, name: str, array):
        if self._backend != "cuda" and is_device(array):
            raise TypeError(f"{name} is a GPU array, but the other params are host arrays")
        return array_checks.kept(name, array, device=self._backend == "cuda")

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
        value = checks.real("lr", value)
        indices = (range(len(self._groups)) if group is None
                   else [_groups.index(group, len(self._groups))])
        for i in indices:
            h, slots = self._groups[i]
            self._groups[i] = (h._replace(lr=value), slots)

    def _set_hyper(self, hypers: list) -> None:
        """Replace each group's hyperparameters (validated ``Hyper``s with the same kernel
        options): for wrappers that read them from another framework at every step."""
        for i, h in enumerate(hypers):  # in place: the plans hold this list
            self._groups[i] = (h, self._groups[i][1])

    @property
    def step_count(self) -> int:
        """How many updates have been applied (on the GPU with ``skip_nonfinite``, read
        from the device: a wait)."""
        return self._plans.step_count()

    @property
    def hyperparameters(self) -> dict:
        """The current hyperparameters (of the first group), as a dict."""
        return _groups.as_dict(self._groups[0][0])

    @property
    def param_groups(self) -> list[dict]:
        """Each group's hyperparameters and its params' indices (a copy)."""
        out, start = [], 0
        for h, slots in self._groups:
            out.append({**_groups.as_dict(h), "params": list(range(start, start + len(slots)))})
            start += len(slots)
        return out

    @property
    def options(self) -> dict:
        """What the state holds: fixed at construction."""
        flags = self._slots[0].flags
        return {
            "state_dtype": self._options.name(self._slots[0]),
            "kahan_summation": flags.kahan,
            "master_weights": flags.master,
            "skip_nonfinite": self._skip_nonfinite,
            "stochastic_rounding": flags.stochastic,
            "seed": self._options.seed,
            "max_grad_norm": self._max_grad_norm,
        }

    @property
    def grad_norm(self) -> float | DeviceNorm | None:
        """With ``max_grad_norm``: the total norm of the last step's gradients, before
        clipping (after ``grad_scale``; NaN or inf where one held NaN or inf). None
        before the first step and without clipping.

        On the GPU the norm stays on the device, so that the step never waits for it:
        a ``DeviceNorm`` that ``float()`` reads (a wait) and CuPy or torch take as a 0-d
        float64 array without one (``__cuda_array_interface__``). The next step
        overwrites it: reading it after that raises, so copy what you keep."""
        return self._plans.grad_norm

    # --- stepping -----------------------------------------------------------

    def step(self, grads, grad_scale: float | None = None, stream=None) -> bool:
        """Apply one update with ``grads``: an array for one params array, else a list in
        the order the params were given (params' shapes and device, any float dtype).

        ``grad_scale``: the loss scale, divided out of the gradients in the
        kernel. ``stream``: for params on the GPU, the CUDA stream to launch on.
        Returns False (and changes nothing) when ``skip_nonfinite`` is on and a
        gradient holds NaN or inf; True when the update was applied. On the GPU
        with ``skip_nonfinite`` that decision stays on the device, as in torch's
        fused Adam: nothing waits for it, ``step`` returns None, and a skipped step
        changes nothing and is not counted (``step_count`` reads the count). A
        refused step (bad arguments) raises and changes nothing.
        """
        return self._plans.step(grads, grad_scale, stream)

    def _step_prescaled(self, grads, grad_scale: float | None, stream=None) -> bool:
        """``step`` with a loss scale already worked out by a wrapper (the sharded step's,
        with its clip coefficient: it may be inf, or NaN as torch's clip makes it)."""
        return self._plans.step(grads, grad_scale, stream, prescaled=True)

    def _step_addresses(self, kinds: list, addresses: np.ndarray, stream=None) -> bool:
        """For wrappers that check GPU gradients themselves (``fastadam.torch``): step with
        gradients given by float kind and device address, one launch per batch; False,
        nothing done, where that path does not apply (``step`` then takes the arrays)."""
        return self._plans.step_addresses(kinds, addresses, checks.stream(stream, self._backend))

    # --- state --------------------------------------------------------------

    def state_dict(self) -> dict:
        """A copy of the state: ``{"state": {i: {...}}, "param_groups": [{...}]}`` as torch
        lays it out, with NumPy arrays and Python numbers."""
        self._plans.sync_steps()
        return _state_dict.build(self._slots, self.param_groups, self.options, self._backend)

    def load_state_dict(self, state_dict: dict) -> None:
        """Restore state and hyperparameters from ``state_dict()``; refuses a mismatch unchanged.

        Moments are copied and cast to this optimizer's state dtypes. As torch's
        ``load_state_dict`` takes the saved param groups, every hyperparameter comes from
        ``state_dict`` (``lr``, ``betas``, ``eps``, ``weight_decay``, ``amsgrad``,
        ``maximize`` and the rest of each group; a missing one keeps its current value):
        an amsgrad state_dict makes this optimizer amsgrad, with its ``max_exp_avg_sq``,
        and a non-amsgrad one drops it. The layout (groups, params, shapes) and the
        options (``kahan_summation``, ``master_weights``, ``stochastic_rounding``) must
        match this optimizer's; a
        ``seed`` in the state_dict becomes this optimizer's, so that a resumed run
        draws the bits it would have drawn.
        """
        hypers, loaded = _state_dict.checked(state_dict, self._groups, self._slots,
                                             self.param_groups, self.options, self._backend)
        seed = _state_dict.seed_of(state_dict, self._options.seed)
        if self._plans.steps is not None and len({step for step, *_ in loaded}) > 1:
            raise ValueError("state_dict['state'] entries differ in 'step'; on the GPU with "
                             "skip_nonfinite the optimizer keeps one step count")
        # Everything is checked: commit.
        self._groups = [(h, slots) for h, (_, slots) in zip(hypers, self._groups)]
        slot_hypers = [h for h, slots in self._groups for _ in slots]
        for slot, h, (step, arrays, absmax) in zip(self._slots, slot_hypers, loaded):
            slot.restore(h, step, arrays, absmax)
        self._seed(seed)
        self._replan()

    def _adopt_state(self, steps: list[int], moments: list[tuple],
                     scales: list | None = None) -> None:
        """Step with the given state arrays themselves as the state, one entry per params
        array in order: for wrappers whose state lives in another framework's tensors.
        ``moments[i]``: ``(m, v, v_max)`` (v_max None unless amsgrad), a low-bit slot's
        codes in their place, with ``scales[i]`` their per-block absmax (None for 32-bit
        slots, or ``scales`` None for all). Checks everything first; refuses unchanged."""
        n = len(self._slots)
        if len(steps) != n or len(moments) != n or (scales is not None and len(scales) != n):
            raise ValueError(f"expected state for {n} params arrays")
        named, adopted = {}, []
        slot_hypers = [h for h, group in self._groups for _ in group]
        device = self._backend == "cuda"
        for i, (slot, h, step, arrays) in enumerate(zip(self._slots, slot_hypers, steps,
                                                        moments)):
            step = checks.step(step + 1) - 1  # an int >= 0
            views, tops, labelled = slot.adoptable(i, h, arrays,
                                                   None if scales is None else scales[i], device)
            named[f"params[{i}]"] = slot.array
            named.update(labelled)
            if device:
                for a in labelled.values():
                    wait_for_producer(a)  # kept: waited for once
            adopted.append((step, views, tops))
        array_checks.disjoint(named)
        for slot, (step, views, tops) in zip(self._slots, adopted):
            slot.step, slot.state[:3] = step, views
            if tops is not None:
                slot.absmax = tops
        self._adopted = True
        self._replan()

    def save(self, path) -> None:
        """Write ``state_dict()`` to one ``.npz`` file with a format version, atomically:
        a save killed at any moment leaves the old file or the new one."""
        _checkpoint.save(path, self.state_dict())

    def load(self, path) -> None:
        """Restore what ``save`` wrote. A file of another layout (shapes, options), or a
        damaged one, raises ValueError and changes nothing."""
        self.load_state_dict(_checkpoint.load(path))

    def __repr__(self) -> str:
        settings = {**self.hyperparameters, **self.options}
        params = ", ".join(f"{k}={v!r}" for k, v in settings.items())
        return (f"{type(self).__name__}({params}, arrays={len(self._slots)}, "
                f"groups={len(self._groups)}, step={self.step_count}, backend={self._backend!r})")


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
