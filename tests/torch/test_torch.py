"""fastadam.Adam/AdamW against torch.optim.Adam/AdamW over tens of steps."""

import numpy as np
import pytest
from helpers import TORCH_OPTIONS, optional

import fastadam

torch = optional("torch")

TORCH_IMPLS = {"single": {"foreach": False}, "fused": {"fused": True}}


def run_both(rng, n, dtype, kw, *, backend, impl, steps=30, lr_schedule=None):
    kw = dict(kw)
    decoupled = kw.pop("decoupled_weight_decay", False)
    start = rng.standard_normal(n).astype(dtype)
    t_param = torch.tensor(start.copy(), requires_grad=True)
    t_cls, f_cls = (
        (torch.optim.AdamW, fastadam.AdamW) if decoupled else (torch.optim.Adam, fastadam.Adam)
    )
    if decoupled:
        kw.setdefault("weight_decay", 1e-2)
    t_opt = t_cls([t_param], **kw, **TORCH_IMPLS[impl])
    param = start.copy()
    opt = f_cls(param, backend=backend, **kw)
    for step in range(steps):
        if lr_schedule is not None:
            t_opt.param_groups[0]["lr"] = opt.lr = lr_schedule(step)
        grad = (rng.standard_normal(n) * (1 + step % 5)).astype(dtype)
        t_param.grad = torch.from_numpy(grad.copy())
        t_opt.step()
        opt.step(grad)
    return param, t_param.detach().numpy(), opt, t_opt


def assert_matches(param, t_param, t_opt, opt, rel):
    scale = np.abs(t_param).max()
    np.testing.assert_allclose(param, t_param, rtol=rel, atol=rel * scale)
    t_state = t_opt.state[t_opt.param_groups[0]["params"][0]]
    state = opt.state_dict()["state"][0]
    for key in ("exp_avg", "exp_avg_sq", "max_exp_avg_sq"):
        if key in t_state:
            want = t_state[key].numpy()
            np.testing.assert_allclose(state[key], want, rtol=rel, atol=rel * np.abs(want).max())
    assert state["step"] == int(t_state["step"])


@pytest.mark.parametrize("impl", TORCH_IMPLS)
@pytest.mark.parametrize("backend", ["cpu", "numpy"])
@pytest.mark.parametrize("option", TORCH_OPTIONS)
def test_float32_matches_torch(rng, option, backend, impl):
    param, t_param, opt, t_opt = run_both(
        rng, 4099, np.float32, TORCH_OPTIONS[option], backend=backend, impl=impl
    )
    assert np.abs(param - t_param).max() < 1e-5  # same trajectory, not just close
    assert_matches(param, t_param, t_opt, opt, rel=1e-6)


@pytest.mark.parametrize("option", TORCH_OPTIONS)
def test_float64_matches_torch(rng, option):
    param, t_param, opt, t_opt = run_both(
        rng, 1001, np.float64, TORCH_OPTIONS[option], backend="cpu", impl="single"
    )
    assert_matches(param, t_param, t_opt, opt, rel=1e-13)


def test_torch_defaults_are_ours():
    import inspect

    for ours, theirs in ((fastadam.Adam, torch.optim.Adam), (fastadam.AdamW, torch.optim.AdamW)):
        mine = inspect.signature(ours).parameters
        for name, p in inspect.signature(theirs).parameters.items():
            if name in mine:
                assert mine[name].default == p.default, (ours.__name__, name)


def test_lr_schedule_matches_torch(rng):
    def schedule(step):
        return 1e-2 * 0.9**step

    param, t_param, opt, t_opt = run_both(
        rng,
        777,
        np.float32,
        {"weight_decay": 0.1, "decoupled_weight_decay": True},
        backend="cpu",
        impl="single",
        lr_schedule=schedule,
    )
    assert opt.lr == pytest.approx(schedule(29))
    assert_matches(param, t_param, t_opt, opt, rel=1e-6)


def test_functional_matches_torch(rng):
    n = 333
    start = rng.standard_normal(n).astype(np.float32)
    t_param = torch.tensor(start.copy(), requires_grad=True)
    t_opt = torch.optim.Adam([t_param], lr=0.02, amsgrad=True, foreach=False)
    param, m, v, v_max = (
        start.copy(),
        np.zeros(n, np.float32),
        np.zeros(n, np.float32),
        np.zeros(n, np.float32),
    )
    for step in range(1, 21):
        grad = rng.standard_normal(n).astype(np.float32)
        t_param.grad = torch.from_numpy(grad.copy())
        t_opt.step()
        fastadam.adam_step(param, grad, m, v, v_max=v_max, step=step, lr=0.02, amsgrad=True)
    np.testing.assert_allclose(param, t_param.detach().numpy(), rtol=1e-6, atol=1e-6)
