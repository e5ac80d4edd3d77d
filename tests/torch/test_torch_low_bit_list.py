"""fastadam.torch's 8-bit and 4-bit drop-ins step a list as one (the list plan): bit for
bit as tensor by tensor, state that stays bitsandbytes' or this package's 4-bit one,
refused steps that change nothing, and the tensor-by-tensor path where the plan cannot
hold the state."""

import numpy as np
import pytest
from helpers import optional

torch = optional("torch")
optional("ml_dtypes")

import fastadam.torch as ft  # noqa: E402
from fastadam.torch import _list_plan  # noqa: E402

# Two with 8-bit moments (one ragged), two small ones with float32 moments, one at the
# threshold: two groups.
SHAPES = [(300, 70), (4099,), (50,), (64, 64), (7, 3)]


def _params(dtype, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(s, generator=gen).to(dtype)) for s in SHAPES]


def _optimizer(cls, params, **options):
    groups = [{"params": params[:3]},
              {"params": params[3:], "weight_decay": 0.0, "lr": 3e-3}]
    return cls(groups, lr=1e-2, **options)


def _run(cls, dtype, steps, per_tensor, monkeypatch, **options):
    """``steps`` steps with fresh random gradients (one param without a gradient at the
    third step); ``per_tensor``: with the list plan off, else with the per-tensor path off."""
    with monkeypatch.context() as patch:
        if per_tensor:
            patch.setattr(_list_plan.ListPlan, "build", classmethod(lambda *a: None))
        else:
            def refuse(self):
                raise AssertionError("stepped tensor by tensor")
            patch.setattr(cls, "_step_each", refuse)
        params = _params(dtype)
        opt = _optimizer(cls, params, **options)
        gen = torch.Generator().manual_seed(1)
        norms = []
        for step in range(steps):
            for i, p in enumerate(params):
                g = torch.randn(p.shape, generator=gen).to(dtype)
                p.grad = None if (step == 2 and i == 1) else g
            opt.step()
            norms.append(opt.grad_norm)
        return params, opt, norms


@pytest.mark.parametrize("cls,dtype,options", [
    (ft.Adam8bit, torch.float32, {}),
    (ft.AdamW8bit, torch.float32, {}),
    (ft.Adam8bit, torch.float32, {"maximize": True, "max_grad_norm": 1.0}),
    (ft.AdamW8bit, torch.bfloat16, {}),
    (ft.AdamW8bit, torch.bfloat16, {"stochastic_rounding": True, "seed": 5}),
    (ft.AdamW8bit, torch.float16, {}),
    (ft.Adam4bit, torch.float32, {"weight_decay": 0.01}),
    (ft.AdamW4bit, torch.float32, {"amsgrad": True, "max_grad_norm": 1.0}),
    (ft.AdamW4bit, torch.bfloat16, {"bf16_stochastic_round": True, "seed": 5}),
    (ft.AdamW4bit, torch.float16, {}),
])
def test_a_list_steps_as_one_bit_for_bit_as_tensor_by_tensor(monkeypatch, cls, dtype, options):
    ours, opt, norms = _run(cls, dtype, 5, False, monkeypatch, **options)
    theirs, twin, twin_norms = _run(cls, dtype, 5, True, monkeypatch, **options)
    assert opt._plan is not None and twin._plan is None
    assert norms == twin_norms
    for a, b, start in zip(ours, theirs, _params(dtype)):
        assert torch.equal(a, b)
        assert not torch.equal(a, start)  # it moved
        mine, their = opt.state[a], twin.state[b]
        assert mine["step"] == their["step"] and isinstance(mine["step"], int)
        assert mine.keys() == their.keys()
        for key, value in their.items():
            if isinstance(value, torch.Tensor):
                assert mine[key].dtype == value.dtype
                assert torch.equal(mine[key], value), key
    assert [opt.state[p]["step"] for p in ours] == [5, 4, 5, 5, 5]
    if cls in (ft.Adam8bit, ft.AdamW8bit):
        assert opt.state[ours[0]]["state1"].dtype == torch.uint8
        assert opt.state[ours[2]]["state1"].dtype == torch.float32
    else:
        assert opt.state[ours[2]]["exp_avg_codes"].dtype == torch.uint8  # every size: 4 bits


@pytest.mark.parametrize("cls", [ft.AdamW8bit, ft.AdamW4bit])
def test_the_list_state_loads_and_continues(monkeypatch, cls):
    """The plan's state_dict loads into a fresh optimizer (through its format checks);
    both continue alike, the loaded one through a new plan."""
    ours, opt, _ = _run(cls, torch.float32, 3, False, monkeypatch)
    again_params = [torch.nn.Parameter(p.detach().clone()) for p in ours]
    again = _optimizer(cls, again_params)
    again.load_state_dict(opt.state_dict())
    gen = torch.Generator().manual_seed(9)
    for _ in range(2):
        for a, b in zip(ours, again_params):
            a.grad = torch.randn(a.shape, generator=gen)
            b.grad = a.grad.clone()
        opt.step()
        again.step()
    assert again._plan is not None
    for a, b in zip(ours, again_params):
        assert torch.equal(a, b)
        for key, value in opt.state[a].items():
            if isinstance(value, torch.Tensor):
                assert torch.equal(value, again.state[b][key]), key


@pytest.mark.parametrize("cls", [ft.AdamW8bit, ft.AdamW4bit])
@pytest.mark.parametrize("bad", ["own_memory", "lr"])
def test_a_refused_list_step_changes_nothing(monkeypatch, cls, bad):
    params, opt, _ = _run(cls, torch.float32, 2, False, monkeypatch)
    before = [p.detach().clone() for p in params]
    state = {i: {k: (v.clone() if isinstance(v, torch.Tensor) else v)
                 for k, v in opt.state[p].items()} for i, p in enumerate(params)}
    for p in params:
        p.grad = torch.randn(p.shape)
    if bad == "own_memory":
        params[1].grad = params[1].detach()  # the param's own memory
        error = "overlap"
    else:
        opt.param_groups[1]["lr"] = -1.0
        error = "lr"
    with pytest.raises(ValueError, match=error):
        opt.step()
    for i, p in enumerate(params):
        assert torch.equal(p.detach(), before[i])
        for k, v in state[i].items():
            got = opt.state[p][k]
            assert torch.equal(got, v) if isinstance(v, torch.Tensor) else got == v


@pytest.mark.parametrize("case", ["min_8bit_size", "float64"])
def test_state_the_plan_cannot_hold_steps_tensor_by_tensor(case):
    """Another ``min_8bit_size`` (the plan's threshold is 4096), or float64 params (whose
    small tensors keep float32 moments here, float64 in the plan): the per-tensor path,
    and the same step as one tensor at a time."""
    dtype = torch.float64 if case == "float64" else torch.float32
    size = 40 if case == "min_8bit_size" else 4096
    params = _params(dtype)
    opt = _optimizer(ft.AdamW8bit, params, min_8bit_size=size)
    alone = [torch.nn.Parameter(p.detach().clone()) for p in params]
    singles = [ft.AdamW8bit([q], lr=1e-2 if i < 3 else 3e-3, min_8bit_size=size,
                            weight_decay=1e-2 if i < 3 else 0.0) for i, q in enumerate(alone)]
    gen = torch.Generator().manual_seed(3)
    for _ in range(3):
        for p, q in zip(params, alone):
            p.grad = torch.randn(p.shape, generator=gen, dtype=dtype)
            q.grad = p.grad.clone()
        opt.step()
        for single in singles:
            single.step()
    assert opt._plan is None
    for p, q in zip(params, alone):
        assert torch.equal(p, q)
    if case == "min_8bit_size":
        assert opt.state[params[2]]["state1"].dtype == torch.uint8  # 50 elements, 8-bit


def test_the_plan_is_built_once_and_again_when_the_state_changes(monkeypatch):
    """The plan is built once and reused while nothing changes: steps cost no rebuild."""
    params = _params(torch.float32)
    opt = _optimizer(ft.AdamW8bit, params)
    built = []
    real = _list_plan.ListPlan.build.__func__

    def build(cls, *args):
        built.append(1)
        return real(cls, *args)

    monkeypatch.setattr(_list_plan.ListPlan, "build", classmethod(build))
    for _ in range(4):
        for p in params:
            p.grad = torch.randn(p.shape)
        opt.step()
    assert len(built) == 1
    opt.state[params[0]]["step"] = 10  # changed behind the plan's back: a new plan
    opt.step()
    assert len(built) == 2 and opt.state[params[0]]["step"] == 11
    assert np.all([opt.state[p]["step"] == 5 for p in params[1:]])
