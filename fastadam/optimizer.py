"""Adam and AdamW: a thin stateful shell around the functional core."""

from __future__ import annotations

import numbers

import numpy as np

from . import _validate as check
from ._dispatch import apply, from_host, resolve, to_host, zeros_like
from ._scalars import flags
from .functional import hyper

_MOMENTS = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq")


class Adam:
    """Adam on one contiguous float array, updated in place (``torch.optim.Adam`` semantics).

    Example::

        params = np.random.randn(1_000_000).astype(np.float32)
        opt = fastadam.Adam(params, lr=1e-3)
        for grads in gradient_stream():
            opt.step(grads)          # params, and the moments, change in place

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
    ) -> None:
        self._hyper = hyper(lr, betas, eps, weight_decay, decoupled_weight_decay, amsgrad, maximize)
        self._backend = resolve(check.backend(backend), params)
        self._device = self._backend == "cuda"
        check_params = check.device_array if self._device else check.host_array
        self._params = check_params("params", params, writable=True)  # validated view
        self._num_threads = check.num_threads(num_threads)
        self.params = params
        self._flat = self._params.reshape(-1)
        self._m = zeros_like(self._backend, self._flat)
        self._v = zeros_like(self._backend, self._flat)
        self._v_max = zeros_like(self._backend, self._flat) if self._hyper.amsgrad else None
        self._flags = flags(self._hyper)
        self._step = 0

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
            "lr": h.lr,
            "betas": (h.beta1, h.beta2),
            "eps": h.eps,
            "weight_decay": h.weight_decay,
            "amsgrad": h.amsgrad,
            "maximize": h.maximize,
            "decoupled_weight_decay": h.decoupled_weight_decay,
        }

    def step(self, grads, stream=None) -> None:
        """Apply one update with ``grads`` (same shape, dtype and device as params).

        ``stream``: for params on the GPU, the CUDA stream to launch on (see
        ``adam_step``). A refused step (bad ``grads``) raises and changes nothing.
        """
        grads = check.like("grads", grads, self._params, writable=False, device=self._device)
        check.apart("grads", grads, {"params": self._params})
        apply(self._backend, self._flat, grads.reshape(-1), self._m, self._v, self._v_max,
              self._hyper, self._flags, self._step + 1, self._num_threads,
              check.stream(stream, self._backend))
        self._step += 1

    def state_dict(self) -> dict:
        """A copy of the state: ``{"state": {0: {...}}, "param_groups": [{...}]}`` as in torch."""
        shape = self._params.shape
        state = {"step": self._step}
        for name, a in zip(_MOMENTS, (self._m, self._v, self._v_max)):
            if a is not None:
                state[name] = to_host(self._backend, a).reshape(shape)
        return {"state": {0: state}, "param_groups": [{**self.hyperparameters, "params": [0]}]}

    def load_state_dict(self, state_dict: dict) -> None:
        """Restore state and hyperparameters from ``state_dict()``; refuses a mismatch unchanged.

        Moments are copied and cast to the params' dtype, as torch does.
        """
        if not isinstance(state_dict, dict) or set(state_dict) != {"state", "param_groups"}:
            raise ValueError("state_dict must be a dict with keys 'state' and 'param_groups'")
        groups = state_dict["param_groups"]
        if (
            not isinstance(groups, (list, tuple))
            or len(groups) != 1
            or not isinstance(groups[0], dict)
        ):
            raise ValueError("state_dict['param_groups'] must hold exactly one group (a dict)")
        group = groups[0]
        missing = {"lr", "betas", "eps", "weight_decay", "amsgrad", "maximize"} - set(group)
        if missing:
            raise ValueError(f"state_dict['param_groups'][0] lacks {sorted(missing)}")
        try:
            h = hyper(
                group["lr"],
                group["betas"],
                group["eps"],
                group["weight_decay"],
                group.get("decoupled_weight_decay", self._hyper.decoupled_weight_decay),
                group["amsgrad"],
                group["maximize"],
            )
        except (TypeError, ValueError) as e:
            raise type(e)(f"state_dict['param_groups'][0]: {e}") from e
        state = state_dict["state"]
        if not isinstance(state, dict) or list(state) != [0] or not isinstance(state[0], dict):
            raise ValueError("state_dict['state'] must be {0: {...}} for one params array")
        entry = state[0]
        step = entry.get("step")
        if isinstance(step, bool) or not isinstance(step, numbers.Integral) or step < 0:
            raise ValueError(f"state_dict['state'][0]['step'] must be an int >= 0, got {step!r}")
        wanted = _MOMENTS if h.amsgrad else _MOMENTS[:2]
        moments = [self._loaded_moment(name, entry.get(name)) for name in wanted]
        moments = [from_host(self._backend, a) for a in moments]
        # Everything is checked: commit.
        self._hyper, self._flags = h, flags(h)
        self._step = int(step)
        self._m, self._v = moments[0], moments[1]
        self._v_max = moments[2] if h.amsgrad else None

    def _loaded_moment(self, name: str, value) -> np.ndarray:
        label = f"state_dict['state'][0][{name!r}]"
        if not isinstance(value, np.ndarray):
            raise TypeError(f"{label} must be a NumPy array, got {type(value).__name__}")
        if value.shape != self._params.shape:
            raise ValueError(
                f"{label} has shape {value.shape}, but params has shape {self._params.shape}"
            )
        if value.dtype.kind != "f":
            raise TypeError(f"{label} must be a float array, got {value.dtype}")
        return np.array(value, dtype=self._params.dtype, order="C", copy=True).reshape(-1)

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in self.hyperparameters.items())
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
    ) -> None:
        super().__init__(
            params,
            lr,
            betas,
            eps,
            weight_decay,
            amsgrad,
            maximize,
            decoupled_weight_decay=True,
            backend=backend,
            num_threads=num_threads,
        )
