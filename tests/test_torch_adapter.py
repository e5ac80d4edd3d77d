"""fastadam.torch.Adam/AdamW: drop-in torch optimizers, checked against torch.optim."""

import copy
import subprocess
import sys

import numpy as np
import pytest
from helpers import optional

torch = optional("torch")
import fastadam.torch as ft  # noqa: E402


def model(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(13, 31), torch.nn.Tanh(), torch.nn.Linear(31, 3))


def groups(m):
    first, second = m[0], m[2]
    return [{"params": list(first.parameters()), "lr": 3e-3, "weight_decay": 0.05,
             "amsgrad": True},
            {"params": list(second.parameters()), "betas": (0.8, 0.99), "maximize": False}]


def train(opt_cls, steps=40, scheduler=False, **kw):
    """A real training loop: autograd gradients, MSE loss, returns the loss curve."""
    torch.manual_seed(1)
    x, y = torch.randn(64, 13), torch.randn(64, 3)
    m = model()
    opt = opt_cls(groups(m), **kw)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=10, gamma=0.5) if scheduler else None
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(m(x), y)
        loss.backward()
        opt.step()
        if sched:
            sched.step()
        losses.append(loss.item())
    return np.array(losses), m, opt


@pytest.mark.parametrize("ours,theirs", [(ft.Adam, torch.optim.Adam),
                                         (ft.AdamW, torch.optim.AdamW)])
@pytest.mark.parametrize("scheduler", [False, True])
def test_training_loop_matches_torch(ours, theirs, scheduler):
    loss_a, m_a, opt_a = train(ours, scheduler=scheduler)
    loss_b, m_b, opt_b = train(theirs, scheduler=scheduler, foreach=False)
    assert loss_a[-1] < 0.9 * loss_a[0]  # it learns
    np.testing.assert_allclose(loss_a, loss_b, rtol=1e-5)
    for pa, pb in zip(m_a.parameters(), m_b.parameters()):
        np.testing.assert_allclose(pa.detach().numpy(), pb.detach().numpy(), rtol=1e-5, atol=1e-6)
    for pa, pb in zip(m_a.parameters(), m_b.parameters()):
        sa, sb = opt_a.state[pa], opt_b.state[pb]
        assert sa.keys() == sb.keys() and float(sa["step"]) == float(sb["step"])


def test_signatures_and_defaults_are_torchs():
    import inspect

    for ours, theirs in ((ft.Adam, torch.optim.Adam), (ft.AdamW, torch.optim.AdamW)):
        mine = inspect.signature(ours).parameters
        for name, p in inspect.signature(theirs).parameters.items():
            assert name in mine, (ours.__name__, name)
            assert mine[name].default == p.default, (ours.__name__, name)


@pytest.mark.parametrize("direction", ["ours to torch", "torch to ours"])
def test_state_dict_interchangeable(direction):
    first, second = (ft.AdamW, torch.optim.AdamW)
    if direction == "torch to ours":
        first, second = second, first
    _, m, opt = train(first, steps=10)
    sd = copy.deepcopy(opt.state_dict())  # torch's state_dict shares the state tensors
    m2 = model()
    m2.load_state_dict(m.state_dict())
    opt2 = second(groups(m2))
    opt2.load_state_dict(sd)
    # one more step each, from the same state, gives the same params
    torch.manual_seed(5)
    x, y = torch.randn(8, 13), torch.randn(8, 3)
    for mm, oo in ((m, opt), (m2, opt2)):
        oo.zero_grad()
        torch.nn.functional.mse_loss(mm(x), y).backward()
        oo.step()
    for pa, pb in zip(m.parameters(), m2.parameters()):
        np.testing.assert_allclose(pa.detach().numpy(), pb.detach().numpy(), rtol=1e-5, atol=1e-6)
    assert opt2.state_dict()["param_groups"][0]["lr"] == sd["param_groups"][0]["lr"]


def test_bfloat16_parameters_zero_copy():
    optional("ml_dtypes")
    p = torch.nn.Parameter(torch.randn(100).to(torch.bfloat16))
    before = p.detach().clone()
    opt = ft.Adam([p], lr=0.1)
    p.grad = torch.ones(100, dtype=torch.bfloat16)
    opt.step()
    # the first step moves every parameter by lr * sign(grad), rounded to bfloat16
    np.testing.assert_allclose(p.detach().float().numpy(), (before.float() - 0.1).numpy(),
                               atol=1e-2)
    assert opt.state[p]["exp_avg"].dtype == torch.bfloat16


def test_refused_step_changes_nothing():
    good = torch.nn.Parameter(torch.randn(10))
    strided = torch.nn.Parameter(torch.randn(10, 2)[:, 0])  # can't be updated in place
    assert not strided.is_contiguous()
    opt = ft.Adam([good, strided])
    good.grad = torch.randn(10)
    opt.step()  # strided has no grad yet: skipped, as in torch
    before = good.detach().clone(), opt.state[good]["exp_avg"].clone()
    good.grad, strided.grad = torch.randn(10), torch.randn(10)
    with pytest.raises(ValueError, match="param"):
        opt.step()
    assert float(opt.state[good]["step"]) == 1 and strided not in opt.state
    assert torch.equal(good.detach(), before[0])
    assert torch.equal(opt.state[good]["exp_avg"], before[1])


def test_import_fastadam_does_not_import_torch():
    code = "import sys, fastadam; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
