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


class Adam:
    """Adam on one contiguous float array, updated in place (``torch.optim.Adam`` semantics).

    Example::

        params = np.random.randn(1_000_000).astype(np.float32)
        opt = fastadam.Adam(params, lr=1e-3)
        for grads in gradient_stream():
            opt.step(grads)          # params, and the moments, change in place

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
        params: np.ndarray,
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
        if check.flag("decouple_lr", decouple_lr) and max_lr is None:
            max_lr = lr
        self._hyper = hyper(lr, betas, eps, weight_decay, decoupled_weight_decay, amsgrad,
                            maximize, bias_correction, eps_root, nesterov, decouple_lr, max_lr)
        self._backend = resolve(check.backend(backend), params)
        self._device = self._backend == "cuda"
        check_params = check.device_array if self._device else check.host_array
        self._params = check_params("params", params, writable=True)  # validated view
        self._num_threads = check.num_threads(num_threads)
        self._skip_nonfinite = check.flag("skip_nonfinite", skip_nonfinite)
        param_kind = check.kind(self._params.dtype)
        sixteen = param_kind in check.SIXTEEN_BIT
        master_weights = check.flag("master_weights", master_weights)
        if kahan_summation is None:
            kahan_summation = sixteen and not master_weights
        kahan_summation = check.flag("kahan_summation", kahan_summation)
        if (kahan_summation or master_weights) and not sixteen:
            raise ValueError("kahan_summation and master_weights are for 16-bit params; "
                             f"params are {self._params.dtype}")
        if kahan_summation and master_weights:
            raise ValueError("kahan_summation and master_weights exclude each other")
        if state_dtype is None:
            state_kind = "float32" if sixteen else param_kind
        else:
            state_kind = check.dtype_kind("state_dtype", state_dtype)
        if self._device and state_kind == "bfloat16":
            raise ValueError("state_dtype=bfloat16 is for host arrays: GPU arrays cannot "
                             "carry bfloat16 through __cuda_array_interface__")
        self._state_dtype = _numpy_dtype(state_kind)
        self.params = params
        self._flat = self._params.reshape(-1)
        n = self._flat.size
        self._state = [
            zeros(self._backend, n, self._state_dtype),
            zeros(self._backend, n, self._state_dtype),
            zeros(self._backend, n, self._state_dtype) if self._hyper.amsgrad else None,
            zeros(self._backend, n, self._params.dtype) if kahan_summation else None,
            self._master_copy() if master_weights else None,
        ]
        self._flags = step_flags(self._hyper, (self._flat, self._flat, *self._state))
        self._step = 0

    def _master_copy(self):
        host = to_host(self._backend, self._flat, self._params.dtype)
        return from_host(self._backend, host.astype(np.float32))

    @property
    def lr(self) -> float:
        """The learning rate of the next step; settable between steps."""
        return self._hyper.lr

    @lr.setter
    def lr(self, value: float) -> None:
        self._hyper = self._hyper._replace(lr=check.real("lr", value))

    @property
    def step_count(self) -> int:
        """How many updates have been applied."""
        return self._step

    @property
    def hyperparameters(self) -> dict:
        """The current hyperparameters, as a dict."""
        h = self._hyper
        return {
            "lr": h.lr, "betas": (h.beta1, h.beta2), "eps": h.eps,
            "weight_decay": h.weight_decay, "amsgrad": h.amsgrad, "maximize": h.maximize,
            "decoupled_weight_decay": h.decoupled_weight_decay,
            "bias_correction": h.bias_correction, "eps_root": h.eps_root,
            "nesterov": h.nesterov, "decouple_lr": h.decouple_lr, "max_lr": h.max_lr,
        }

    @property
    def options(self) -> dict:
        """What the state holds: fixed at construction."""
        return {
            "state_dtype": self._state_dtype.name,
            "kahan_summation": self._flags.kahan,
            "master_weights": self._flags.master,
            "skip_nonfinite": self._skip_nonfinite,
        }

    def step(self, grads, grad_scale: float | None = None, stream=None) -> bool:
        """Apply one update with ``grads`` (params' shape and device, any float dtype).

        ``grad_scale``: the loss scale, divided out of the gradients in the
        kernel. ``stream``: for params on the GPU, the CUDA stream to launch on.
        Returns False (and changes nothing) when ``skip_nonfinite`` is on and
        the gradient holds NaN or inf; True when the update was applied. A
        refused step (bad arguments) raises and changes nothing.
        """
        grads = check.like("grads", grads, self._params, writable=False, device=self._device)
        check.apart("grads", grads, {"params": self._params})
        scale = check.grad_scale(grad_scale)
        cuda_stream = check.stream(stream, self._backend)
        flat = grads.reshape(-1)
        flags = self._flags
        grad_kind = check.kind(flat.dtype)
        if flags.grad != grad_kind:
            flags = self._flags = flags._replace(grad=grad_kind)
        if self._skip_nonfinite and not all_finite(
            self._backend, flat, flags.grad, num_threads=self._num_threads, stream=cuda_stream
        ):
            return False
        apply(self._backend, (self._flat, flat, *self._state), self._hyper, flags,
              self._step + 1, grad_scale=scale, num_threads=self._num_threads,
              stream=cuda_stream)
        self._step += 1
        return True

    def state_dict(self) -> dict:
        """A copy of the state: ``{"state": {0: {...}}, "param_groups": [{...}]}`` as in torch."""
        shape = self._params.shape
        dtypes = (self._state_dtype,) * 3 + (self._params.dtype, np.dtype(np.float32))
        state = {"step": self._step}
        for name, a, dtype in zip(_STATE, self._state, dtypes):
            if a is not None:
                state[name] = to_host(self._backend, a, dtype).reshape(shape)
        group = {**self.hyperparameters, **self.options, "params": [0]}
        return {"state": {0: state}, "param_groups": [group]}

    def load_state_dict(self, state_dict: dict) -> None:
        """Restore state and hyperparameters from ``state_dict()``; refuses a mismatch unchanged.

        Moments are copied and cast to this optimizer's state dtype. The options
        (``kahan_summation``, ``master_weights``) must match this optimizer's.
        """
        if not isinstance(state_dict, dict) or set(state_dict) != {"state", "param_groups"}:
            raise ValueError("state_dict must be a dict with keys 'state' and 'param_groups'")
        groups = state_dict["param_groups"]
        if not isinstance(groups, (list, tuple)) or len(groups) != 1 or not isinstance(
            groups[0], dict
        ):
            raise ValueError("state_dict['param_groups'] must hold exactly one group (a dict)")
        group = groups[0]
        missing = {"lr", "betas", "eps", "weight_decay", "amsgrad", "maximize"} - set(group)
        if missing:
            raise ValueError(f"state_dict['param_groups'][0] lacks {sorted(missing)}")
        current = self.hyperparameters
        try:
            h = hyper(**{k: group.get(k, current[k]) for k in _HYPER_KEYS})
        except (TypeError, ValueError) as e:
            raise type(e)(f"state_dict['param_groups'][0]: {e}") from e
        for option in ("kahan_summation", "master_weights"):
            if option in group and bool(group[option]) != self.options[option]:
                raise ValueError(f"state_dict['param_groups'][0][{option!r}] is "
                                 f"{group[option]}, but this optimizer has {self.options[option]}")
        state = state_dict["state"]
        if not isinstance(state, dict) or list(state) != [0] or not isinstance(state[0], dict):
            raise ValueError("state_dict['state'] must be {0: {...}} for one params array")
        entry = state[0]
        step = entry.get("step")
        if isinstance(step, bool) or not isinstance(step, numbers.Integral) or step < 0:
            raise ValueError(f"state_dict['state'][0]['step'] must be an int >= 0, got {step!r}")
        wanted = (True, True, h.amsgrad, self._flags.kahan, self._flags.master)
        dtypes = (self._state_dtype,) * 3 + (self._params.dtype, np.dtype(np.float32))
        loaded = [self._loaded(name, entry.get(name), dtype) if want else None
                  for name, want, dtype in zip(_STATE, wanted, dtypes)]
        loaded = [None if a is None else from_host(self._backend, a) for a in loaded]
        # Everything is checked: commit.
        self._hyper, self._step, self._state = h, int(step), loaded
        self._flags = step_flags(h, (self._flat, self._flat, *loaded))._replace(
            grad=self._flags.grad)

    def save(self, path) -> None:
        """Write ``state_dict()`` to one ``.npz`` file with a format version, atomically:
        a save killed at any moment leaves the old file or the new one."""
        _checkpoint.save(path, self.state_dict())

    def load(self, path) -> None:
        """Restore what ``save`` wrote. A file of another layout (shapes, options), or a
        damaged one, raises ValueError and changes nothing."""
        self.load_state_dict(_checkpoint.load(path))

    def _loaded(self, name: str, value, dtype) -> np.ndarray:
        label = f"state_dict['state'][0][{name!r}]"
        if not isinstance(value, np.ndarray):
            raise TypeError(f"{label} must be a NumPy array, got {type(value).__name__}")
        if value.shape != self._params.shape:
            raise ValueError(
                f"{label} has shape {value.shape}, but params has shape {self._params.shape}"
            )
        if check.kind(value.dtype) is None:
            raise TypeError(f"{label} must be a float array, got {value.dtype}")
        return np.array(value, dtype=dtype, order="C", copy=True).reshape(-1)

    def __repr__(self) -> str:
        settings = {**self.hyperparameters, **self.options}
        params = ", ".join(f"{k}={v!r}" for k, v in settings.items())
        return f"{type(self).__name__}({params}, step={self._step}, backend={self._backend!r})"


class AdamW(Adam):
    """Adam with decoupled weight decay (``torch.optim.AdamW`` semantics; weight_decay=1e-2)."""

    def __init__(
        self,
        params: np.ndarray,
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
