"""fastadam.torch.Adam/AdamW: drop-in torch optimizers, checked against torch.optim."""

import copy
import io
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
    buffer = io.BytesIO()  # through a file, as a checkpoint goes
    torch.save(opt.state_dict(), buffer)
    buffer.seek(0)
    sd = torch.load(buffer)
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
    """A param whose state does not fit it refuses the step for every param; a strided
    param (a slice with gaps) steps, as in torch."""
    good = torch.nn.Parameter(torch.randn(10))
    strided = torch.nn.Parameter(torch.randn(10, 2)[:, 0])
    assert not strided.is_contiguous()
    opt = ft.Adam([good, strided])
    good.grad, strided.grad = torch.randn(10), torch.randn(10)
    twin = torch.nn.Parameter(strided.detach().clone())
    twin.grad = strided.grad.clone()
    opt.step()
    torch.optim.Adam([twin], foreach=False).step()
    torch.testing.assert_close(strided.detach(), twin.detach())
    opt.state[strided]["exp_avg"] = torch.zeros(11)  # another model's state
    before = good.detach().clone(), opt.state[good]["exp_avg"].clone(), strided.detach().clone()
    good.grad, strided.grad = torch.randn(10), torch.randn(10)
    with pytest.raises(ValueError, match=r"param_groups\[0\]\['params'\]\[1\]: exp_avg"):
        opt.step()
    assert float(opt.state[good]["step"]) == 1
    assert torch.equal(good.detach(), before[0]) and torch.equal(strided.detach(), before[2])
    assert torch.equal(opt.state[good]["exp_avg"], before[1])


def test_import_fastadam_does_not_import_torch():
    code = "import sys, fastadam; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_bfloat16_step_imports_no_ml_dtypes():
    """bfloat16 tensors pass as their bits: ml_dtypes' import (over half a second) is no
    part of a torch user's first step. A list (one batch) and a lone tensor with a
    strided gradient (stepped by itself) both match torch's fused AdamW bit for bit."""
    code = """if True:
        import sys, torch, fastadam.torch
        torch.manual_seed(0)
        ps = [torch.randn(s).bfloat16() for s in ((33, 7), (5,), (1001,))]
        twins = [p.clone() for p in ps]
        ours = fastadam.torch.AdamW(ps, lr=1e-2)
        theirs = torch.optim.AdamW(twins, lr=1e-2, fused=True)
        for _ in range(3):
            for p, t in zip(ps, twins):
                p.grad = torch.randn(p.shape).bfloat16()
                t.grad = p.grad.clone()
            ours.step(); theirs.step()
        lone = torch.randn(9, 4).bfloat16()
        lone.grad = torch.randn(4, 9).bfloat16().t()
        fastadam.torch.Adam([lone]).step()
        assert "ml_dtypes" not in sys.modules, "ml_dtypes imported"
        for p, t in zip(ps, twins):
            assert torch.equal(p, t), (p - t).abs().max()
    """
    subprocess.run([sys.executable, "-c", code], check=True)


def twin_params(seed, dtype=torch.float32, shapes=((7, 5), (5,), (3, 7), (1,), (64,))):
    torch.manual_seed(seed)
    values = [torch.randn(s, dtype=dtype) for s in shapes]
    return ([torch.nn.Parameter(v.clone()) for v in values],
            [torch.nn.Parameter(v.clone()) for v in values])


def set_grads(seed, *param_lists, skip=()):
    gen = torch.Generator().manual_seed(seed)
    grads = [torch.randn(p.shape, generator=gen, dtype=p.dtype) for p in param_lists[0]]
    for params in param_lists:
        for i, (p, g) in enumerate(zip(params, grads)):
            p.grad = None if i in skip else g.to(p.dtype)


def assert_same(ours, theirs, opt_a, opt_b, rtol=1e-6, atol=1e-7):
    for a, b in zip(ours, theirs):
        np.testing.assert_allclose(a.detach().numpy(), b.detach().numpy(), rtol=rtol, atol=atol)
        assert (a in opt_a.state) == (b in opt_b.state)
        if a in opt_a.state:
            assert float(opt_a.state[a]["step"]) == float(opt_b.state[b]["step"])
            for k in ("exp_avg", "exp_avg_sq"):
                np.testing.assert_allclose(opt_a.state[a][k].numpy(), opt_b.state[b][k].numpy(),
                                           rtol=1e-5, atol=1e-6)  # torch's m: a lerp


EVENTS = {
    "nothing": lambda ours, theirs, a, b: None,
    "load_state_dict": lambda ours, theirs, a, b: a.load_state_dict(copy.deepcopy(b.state_dict())),
    "state tensor replaced": lambda ours, theirs, a, b: [
        o.state[p].__setitem__("exp_avg", o.state[p]["exp_avg"].clone())
        for o, p in ((a, ours[0]), (b, theirs[0]))],
    "step edited in place": lambda ours, theirs, a, b: [
        o.state[p]["step"].fill_(40.0) for o, p in ((a, ours[2]), (b, theirs[2]))],
    "param storage swapped": lambda ours, theirs, a, b: [
        setattr(p, "data", p.data.clone()) for p in (ours[1], theirs[1])],
    "weight decay changed": lambda ours, theirs, a, b: [
        o.param_groups[0].__setitem__("weight_decay", 0.3) for o in (a, b)],
    "lr changed": lambda ours, theirs, a, b: [
        o.param_groups[1].__setitem__("lr", 0.05) for o in (a, b)],
}


@pytest.mark.parametrize("event", EVENTS)
@pytest.mark.parametrize("ours_cls,theirs_cls", [(ft.Adam, torch.optim.Adam),
                                                 (ft.AdamW, torch.optim.AdamW)])
def test_list_fast_path_follows_every_change(event, ours_cls, theirs_cls):
    ours, theirs = twin_params(3)
    spec = lambda ps: [{"params": ps[:3], "amsgrad": True, "weight_decay": 0.1},  # noqa: E731
                       {"params": ps[3:], "lr": 0.01, "betas": (0.8, 0.95)}]
    opt_a, opt_b = ours_cls(spec(ours)), theirs_cls(spec(theirs), foreach=False)
    for step in range(9):
        # a param without a gradient at some steps changes which tensors step
        set_grads(step, ours, theirs, skip=(4,) if step in (2, 3) else ())
        if step == 6:  # the plan is then three steps old
            EVENTS[event](ours, theirs, opt_a, opt_b)
        opt_a.step()
        opt_b.step()
        assert opt_a._plan is not None  # the list path, not tensor by tensor
        assert_same(ours, theirs, opt_a, opt_b)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16])
def test_list_fast_path_other_dtypes(dtype):
    ours, theirs = twin_params(4, dtype)
    # torch's float16 Adam rounds every intermediate (eps=1e-8 underflows to 0 and some
    # params become inf); fastadam computes in float32 and rounds once: compare with float64.
    theirs = [torch.nn.Parameter(p.detach().double()) for p in theirs]
    opt_a, opt_b = ft.Adam(ours, lr=1e-2), torch.optim.Adam(theirs, lr=1e-2, foreach=False)
    for step in range(5):
        set_grads(step, ours, theirs)
        opt_a.step()
        opt_b.step()
    assert opt_a._plan is not None and opt_a.state[ours[0]]["exp_avg"].dtype == dtype
    tol = dict(rtol=1e-12, atol=1e-14) if dtype == torch.float64 else dict(rtol=2e-3, atol=1e-3)
    for a, b in zip(ours, theirs):
        np.testing.assert_allclose(a.detach().double().numpy(), b.detach().numpy(), **tol)


def test_list_fast_path_refusal_changes_nothing():
    ours, _ = twin_params(5)
    opt = ft.Adam(ours)
    set_grads(0, ours)
    opt.step()
    before = [p.detach().clone() for p in ours], {p: copy.deepcopy(s) for p, s in opt.state.items()}
    set_grads(1, ours)
    ours[4].grad = ours[4].detach()  # the gradient is the param itself
    with pytest.raises(ValueError, match="overlap"):
        opt.step()
    for p, b in zip(ours, before[0]):
        assert torch.equal(p.detach(), b)
    for p, s in before[1].items():
        for k, v in s.items():
            assert torch.equal(opt.state[p][k], v)
    fresh, _ = twin_params(6)  # a refused first step creates no state
    opt = ft.Adam(fresh)
    set_grads(0, fresh)
    fresh[0].grad = fresh[1].detach().reshape(5).repeat(7).reshape(7, 5)  # fine
    fresh[3].grad = fresh[3].detach()
    with pytest.raises(ValueError, match="overlap"):
        opt.step()
    assert len(opt.state) == 0


def test_refused_step_then_good_ones_with_mixed_groups():
    ours, theirs = twin_params(7)
    spec = lambda ps: [{"params": ps[:2], "amsgrad": True}, {"params": ps[2:]}]  # noqa: E731
    opt_a, opt_b = ft.Adam(spec(ours), lr=0.01), torch.optim.Adam(spec(theirs), lr=0.01,
                                                                  foreach=False)
    set_grads(0, ours, theirs, skip=(4,))
    opt_a.step()
    opt_b.step()
    set_grads(1, ours, theirs)  # the last param's first gradient: a new plan
    ours[3].grad = ours[3].detach()
    with pytest.raises(ValueError, match="overlap"):
        opt_a.step()
    assert ours[4] not in opt_a.state
    for step in (2, 3):
        set_grads(step, ours, theirs)
        opt_a.step()
        opt_b.step()
        assert_same(ours, theirs, opt_a, opt_b)
