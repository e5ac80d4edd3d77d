"""Schedule-free AdamW and AdEMAMix: Adam's one-pass machinery with other element updates.

Each is an ``Adam`` whose update rule (``_rule``) picks its element update, its per-step
coefficients and its state layout; groups, lists, 16-bit params (Kahan summation,
master weights, stochastic rounding), clipping, state_dicts and checkpoints are Adam's.
"""

from __future__ import annotations

from ._backends.dispatch import swap
from ._core import checks
from ._core.hyper import schedule_free_weights
from ._core.options import ADEMAMIX, SCHEDULE_FREE, SETTINGS
from .optimizer import Adam

__all__ = ["AdEMAMix", "AdamWScheduleFree"]


def _no_device_decisions(opt: Adam) -> None:
    """Refuse what these rules do not yet do on the GPU: skip non-finite steps (decided on
    the device, whose step count computes Adam's coefficients). Clipping there reads the
    norm back to the host (a wait), then steps."""
    if opt._backend == "cuda" and opt._skip_nonfinite:
        raise ValueError(f"{type(opt).__name__} on the GPU does not take skip_nonfinite yet "
                         "(it runs on the CPU)")


class AdamWScheduleFree(Adam):
    """Schedule-free AdamW (Defazio et al. 2024; ``schedulefree.AdamWScheduleFree``), fused.

    No learning-rate schedule: the params hold the point y where gradients are taken,
    the state the base sequence ``z`` (starting at the params) and ``exp_avg_sq``; each
    step moves y and z in one pass. ``eval()`` moves the params to the average x (for
    evaluating and saving), ``train()`` back to y, one pass each. The optimizer starts
    in train mode; a step in eval mode raises ``RuntimeError`` and changes nothing;
    ``train()`` in train mode and ``eval()`` in eval mode do nothing (as the reference).

    Hyperparameters as the reference's: ``warmup_steps`` (linear lr warmup), ``r``
    (polynomial weighting of the average), ``weight_lr_power`` (the average's weights
    are the peak lr to this power), ``weight_decay`` taken at y. The keyword-only
    options are :class:`fastadam.Adam`'s, but for ``state_dtype`` "8bit"/"4bit".
    ``state_dict()`` groups carry ``weight_sum``, ``lr_max`` and ``train_mode`` too.
    """

    _rule = SCHEDULE_FREE

    def __init__(self, params, lr: float = 0.0025, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0, warmup_steps: int = 0,
                 r: float = 0.0, weight_lr_power: float = 2.0, backend: str = "auto",
                 num_threads: int | None = None, **options) -> None:
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                        warmup_steps=warmup_steps, r=r, weight_lr_power=weight_lr_power)
        self._setup(params, defaults, backend, num_threads, **_settings(options))
        _no_device_decisions(self)
        self._sums = [(0.0, -1.0)] * len(self._groups)  # per group: (weight_sum, lr_max)
        self._train_mode = True

    @property
    def train_mode(self) -> bool:
        """Whether the params hold y (train mode) or the average x (eval mode)."""
        return self._train_mode

    def step(self, grads, grad_scale: float | None = None, stream=None) -> bool:
        """One update (see :meth:`fastadam.Adam.step`); in train mode only."""
        if not self._train_mode:
            raise RuntimeError("AdamWScheduleFree.step in eval mode: call train() first "
                               "(the params hold the average x, not y)")
        before = [h for h, _ in self._groups]
        sums, hypers = [], []
        for (h, slots), (weight_sum, lr_max) in zip(self._groups, self._sums):
            lr, ckp1, weight_sum, lr_max = schedule_free_weights(h, slots[0].step + 1,
                                                                 weight_sum, lr_max)
            hypers.append(h._replace(scheduled_lr=lr, ckp1=ckp1))
            sums.append((weight_sum, lr_max))
        self._set_hyper(hypers)
        try:
            done = self._plans.step(grads, grad_scale, stream)
        except BaseException:
            self._set_hyper(before)
            raise
        if done is not False:
            self._sums = sums
        return done

    def eval(self, stream=None) -> None:
        """Move the params to the average x (``lerp(y, z, 1 - 1/beta1)``), one pass."""
        self._move(False, stream)

    def train(self, stream=None) -> None:
        """Move the params back to y (``lerp(x, z, 1 - beta1)``), one pass."""
        self._move(True, stream)

    def _move(self, to_train: bool, stream) -> None:
        if self._train_mode == to_train:
            return
        stream = checks.stream(stream, self._backend)
        for h, slots in self._groups:
            weight = 1.0 - h.beta1 if to_train else 1.0 - 1.0 / h.beta1
            for slot in slots:
                swap(self._backend, (slot.flat, slot.state[0], *slot.state[3:]), slot.flags,
                     weight, num_threads=self._num_threads, stream=stream)
        self._train_mode = to_train

    @property
    def param_groups(self) -> list[dict]:
        """Each group's hyperparameters, running sums and params' indices (a copy)."""
        return [{**group, "weight_sum": weight_sum, "lr_max": lr_max,
                 "train_mode": self._train_mode}
                for group, (weight_sum, lr_max) in zip(super().param_groups, self._sums)]

    def load_state_dict(self, state_dict: dict) -> None:
        """:meth:`fastadam.Adam.load_state_dict`, with the groups' ``weight_sum``,
        ``lr_max`` and ``train_mode`` (the mode the saved params were in)."""
        groups = state_dict.get("param_groups") if isinstance(state_dict, dict) else None
        sums, modes = [], set()
        for i, group in enumerate(groups if isinstance(groups, (list, tuple)) else []):
            label = f"state_dict['param_groups'][{i}]"
            if not isinstance(group, dict) or not {"weight_sum", "lr_max"} <= set(group):
                raise ValueError(f"{label} lacks 'weight_sum' and 'lr_max' (schedule-free "
                                 "AdamW's running sums)")
            lr_max = checks.real(f"{label}['lr_max']", group["lr_max"], negative=True)
            sums.append((checks.real(f"{label}['weight_sum']", group["weight_sum"]), lr_max))
            modes.add(checks.flag(f"{label}['train_mode']", group.get("train_mode", True)))
        if len(modes) > 1:
            raise ValueError("state_dict['param_groups'] disagree on 'train_mode'")
        super().load_state_dict(state_dict)
        self._sums = sums
        self._train_mode = modes.pop() if modes else True


class AdEMAMix(Adam):
    """AdEMAMix (Pagliardini et al. 2024; bitsandbytes' ``AdEMAMix``, optax's
    ``contrib.ademamix``), fused: Adam with a second, slow first moment, mixed in.

    ``p -= lr * ((m1 / bc1 + alpha * m2) / (sqrt(v / bc2) + eps) + weight_decay * p)``
    with ``m2`` the moment of rate ``beta3``; ``t_alpha`` and ``t_beta3`` warm alpha and
    beta3 up over that many steps (bitsandbytes' schedules). ``betas`` is
    ``(beta1, beta2, beta3)``, as in bitsandbytes (a group's too); ``param_groups``
    report ``betas`` as the pair and ``beta3`` apart. One pass over p, g, m1, m2, v. The
    state keys are ``exp_avg``, ``exp_avg_slow`` and ``exp_avg_sq``. The keyword-only
    options are :class:`fastadam.Adam`'s, but for ``state_dtype`` "8bit"/"4bit".
    """

    _rule = ADEMAMIX

    def __init__(self, params, lr: float = 1e-3,
                 betas: tuple[float, float, float] = (0.9, 0.999, 0.9999), alpha: float = 5.0,
                 t_alpha: int | None = None, t_beta3: int | None = None, eps: float = 1e-8,
                 weight_decay: float = 1e-2, backend: str = "auto",
                 num_threads: int | None = None, **options) -> None:
        defaults = dict(lr=lr, eps=eps, weight_decay=weight_decay, alpha=alpha,
                        t_alpha=t_alpha, t_beta3=t_beta3, **_three_betas(betas))
        if isinstance(params, (list, tuple)) and any(isinstance(g, dict) for g in params):
            params = [{**g, **_three_betas(g["betas"])} if isinstance(g, dict) and "betas" in g
                      else g for g in params]
        self._setup(params, defaults, backend, num_threads, **_settings(options))
        _no_device_decisions(self)


def _three_betas(betas) -> dict:
    """``(beta1, beta2, beta3)`` as the settings ``betas`` (a pair) and ``beta3``."""
    if isinstance(betas, (str, bytes)) or not hasattr(betas, "__len__") or len(betas) != 3:
        raise TypeError(f"betas must be (beta1, beta2, beta3), got {betas!r}")
    return {"betas": (betas[0], betas[1]), "beta3": betas[2]}


def _settings(options: dict) -> dict:
    """The keyword-only settings over their defaults; unknown keywords raise TypeError."""
    unknown = set(options) - set(SETTINGS)
    if unknown:
        raise TypeError(f"unexpected keyword arguments {sorted(unknown)}")
    return {**SETTINGS, **options}
