"""fastadam.torch as a drop-in for torch.optim.Adam/AdamW: torch's own optimizer test
inputs, and everything else torch's optimizers accept, in lockstep with torch."""

import copy
import warnings

import numpy as np
import pytest
from helpers import optional

torch = optional("torch")
optional("expecttest")  # torch's optimizer test inputs import it
optional("ml_dtypes")
from torch.testing._internal import common_optimizers  # noqa: E402

import fastadam.torch as ft  # noqa: E402

PAIRS = [(ft.Adam, torch.optim.Adam), (ft.AdamW, torch.optim.AdamW)]
IDS = ["Adam", "AdamW"]


def torch_info(theirs):
    (info,) = [o for o in common_optimizers.optim_db if o.optim_cls is theirs]
    return info


def twins(seed, dtype=torch.float32, shapes=((13, 7), (7,), (5, 3, 2), (1,), (257,))):
    """The same random params twice (odd sizes, ragged tails), as nn.Parameters."""
    gen = torch.Generator().manual_seed(seed)
    values = [torch.randn(s, generator=gen, dtype=dtype) for s in shapes]
    return ([torch.nn.Parameter(v.clone()) for v in values],
            [torch.nn.Parameter(v.clone()) for v in values])


def set_grads(seed, *param_lists):
    gen = torch.Generator().manual_seed(seed)
    grads = [torch.randn(p.shape, generator=gen, dtype=p.dtype) for p in param_lists[0]]
    for params in param_lists:
        for p, g in zip(params, grads):
            p.grad = g.clone()


def assert_close(ours, theirs, rtol, atol=0.0):
    for a, b in zip(ours, theirs):
        a, b = torch.view_as_real(a.detach()) if a.is_complex() else a.detach(), (
            torch.view_as_real(b.detach()) if b.is_complex() else b.detach())
        np.testing.assert_allclose(a.double().numpy(), b.double().numpy(), rtol=rtol, atol=atol)


def lockstep(ours, theirs, opt_a, opt_b, steps, rtol, atol=0.0, before_step=None):
    for step in range(steps):
        set_grads(100 + step, ours, theirs)
        if before_step:
            before_step(step)
        opt_a.step()
        opt_b.step()
        assert_close(ours, theirs, rtol, atol)


# --- torch's own test inputs --------------------------------------------------------------

def optim_inputs() -> list:
    return list(_optim_inputs())


def _optim_inputs():
    for ours, theirs in PAIRS:
        for dtype in (torch.float32, torch.float64):
            for oi in torch_info(theirs).optim_inputs_func(device="cpu", dtype=dtype):
                yield pytest.param(ours, theirs, dtype, oi,
                                   id=f"{theirs.__name__}-{str(dtype)[6:]}-{oi.desc}")


@pytest.mark.parametrize("ours,theirs,dtype,optim_input", optim_inputs())
def test_torch_optim_inputs_give_torchs_trajectory(ours, theirs, dtype, optim_input):
    """Every CPU optim input of torch's optimizer tests: torch's trajectory over 20 steps,
    float32 to 1e-6 relative, and the same state."""
    assert optim_input.params is None  # torch's CPU inputs for Adam/AdamW use the model's
    a, b = twins(0, dtype)
    opt_a = ours(a, **optim_input.kwargs)
    opt_b = theirs(b, foreach=False, **optim_input.kwargs)
    rtol, atol = (1e-6, 1e-7) if dtype == torch.float32 else (1e-13, 1e-15)
    lockstep(a, b, opt_a, opt_b, 20, rtol, atol)
    for pa, pb in zip(a, b):
        sa, sb = opt_a.state[pa], opt_b.state[pb]
        assert sa.keys() == sb.keys() and float(sa["step"]) == float(sb["step"]) == 20
        for k in sa:
            np.testing.assert_allclose(sa[k].numpy(), sb[k].numpy(), rtol=10 * rtol, atol=atol)


def error_inputs() -> list:
    return list(_error_inputs())


def _error_inputs():
    for ours, theirs in PAIRS:
        info = torch_info(theirs)
        for ei in info.optim_error_inputs_func(device="cpu", dtype=torch.float32):
            yield pytest.param(ours, theirs, ei,
                               id=f"{theirs.__name__}-{ei.optimizer_error_input.desc}")


@pytest.mark.parametrize("ours,theirs,error_input", error_inputs())
def test_torch_error_inputs_raise_as_torch(ours, theirs, error_input):
    """Every error input of torch's optimizer tests raises (or warns) what torch does,
    where torch does: at construction, or at the step."""
    oi = error_input.optimizer_error_input
    expect = (pytest.warns if issubclass(error_input.error_type, Warning) else pytest.raises)(
        error_input.error_type, match=error_input.error_regex)
    on_step = error_input.error_on == common_optimizers.OptimizerErrorEnum.STEP_ERROR
    for cls in (theirs, ours):  # the same input fails the same way for both
        with expect:
            opt = cls(oi.params, **oi.kwargs)
            if on_step:
                opt.step()


@pytest.mark.parametrize("ours,theirs", PAIRS, ids=IDS)
def test_they_are_torchs_classes(ours, theirs):
    a, _ = twins(1)
    opt = ours(a, fused=True)
    assert isinstance(opt, theirs)
    assert opt._step_supports_amp_scaling is False  # GradScaler unscales for us
    for kw in ({"capturable": True}, {"differentiable": True}):
        with pytest.raises(ValueError, match=next(iter(kw))):
            ours(a, **kw)
    with pytest.raises(ValueError, match="capturable"):
        opt.add_param_group({"params": [torch.nn.Parameter(torch.ones(3))], "capturable": True})
    assert len(opt.param_groups) == 1


# --- everything else torch's optimizers accept --------------------------------------------

@pytest.mark.parametrize("ours,theirs", PAIRS, ids=IDS)
@pytest.mark.parametrize("kw", [{}, {"amsgrad": True, "weight_decay": 0.1},
                                {"maximize": True, "weight_decay": 0.05}])
def test_complex_params_step_as_pairs_of_reals(ours, theirs, kw):
    a, b = twins(2, torch.complex64)
    opt_a, opt_b = ours(a, lr=0.01, **kw), theirs(b, lr=0.01, foreach=False, **kw)
    lockstep(a, b, opt_a, opt_b, 10, 1e-6, 1e-7)
    assert opt_a._plan is not None and opt_a.state[a[0]]["exp_avg"].dtype == torch.complex64


@pytest.mark.parametrize("ours,theirs", PAIRS, ids=IDS)
def test_tensor_lr_and_betas(ours, theirs):
    a, b = twins(3)

    def kw():
        return {"lr": torch.tensor(0.01), "betas": (torch.tensor(0.8), torch.tensor(0.99))}

    opt_a, opt_b = ours(a, **kw()), theirs(b, foreach=False, **kw())

    def schedule(step):  # change the tensors in place, as a scheduler may
        for opt in (opt_a, opt_b):
            opt.param_groups[0]["lr"].fill_(0.01 / (1 + step))

    lockstep(a, b, opt_a, opt_b, 8, 1e-6, 1e-7, before_step=schedule)


@pytest.mark.parametrize("ours,theirs", PAIRS, ids=IDS)
def test_named_parameters(ours, theirs):
    torch.manual_seed(4)
    model_a = torch.nn.Sequential(torch.nn.Linear(9, 17), torch.nn.GELU(), torch.nn.Linear(17, 3))
    model_b = copy.deepcopy(model_a)
    opt_a, opt_b = ours(model_a.named_parameters()), theirs(model_b.named_parameters(),
                                                            foreach=False)
    x = torch.randn(32, 9)
    for _ in range(5):
        for m, o in ((model_a, opt_a), (model_b, opt_b)):
            o.zero_grad()
            m(x).square().mean().backward()
            o.step()
    assert_close(list(model_a.parameters()), list(model_b.parameters()), 1e-6, 1e-7)
    sd = opt_a.state_dict()
    assert sd["param_groups"][0]["param_names"] == [n for n, _ in model_a.named_parameters()]
    opt_b.load_state_dict(sd)  # named state_dicts interchange too


@pytest.mark.parametrize("ours", [ft.Adam, ft.AdamW], ids=IDS)
def test_step_hooks(ours):
    a, _ = twins(5)
    opt = ours(a)
    seen = []
    opt.register_step_pre_hook(lambda o, args, kwargs: seen.append(("pre", o.state.get(a[0]))))
    opt.register_step_post_hook(lambda o, args, kwargs: seen.append(("post", len(o.state))))
    set_grads(0, a)
    opt.step()
    assert seen == [("pre", None), ("post", len(a))]


@pytest.mark.parametrize("ours,theirs", PAIRS, ids=IDS)
def test_add_param_group_mid_run(ours, theirs):
    a, b = twins(6)
    opt_a, opt_b = ours(a[:3], lr=0.01), theirs(b[:3], lr=0.01, foreach=False)

    def grow(step):
        if step == 4:
            for opt, ps in ((opt_a, a), (opt_b, b)):
                opt.add_param_group({"params": ps[3:], "lr": 0.003, "amsgrad": True})

    lockstep(a, b, opt_a, opt_b, 9, 1e-6, 1e-7, before_step=grow)
    assert opt_a.param_groups[1]["betas"] == opt_b.param_groups[1]["betas"]


@pytest.mark.parametrize("ours,theirs", PAIRS, ids=IDS)
def test_scheduler_changing_betas(ours, theirs):
    """OneCycleLR cycles beta1 with the lr: read at every step, not a new plan each step."""
    a, b = twins(7)
    opt_a, opt_b = ours(a), theirs(b, foreach=False)
    scheds = [torch.optim.lr_scheduler.OneCycleLR(o, max_lr=0.05, total_steps=12,
                                                  cycle_momentum=True, base_momentum=0.8,
                                                  max_momentum=0.95) for o in (opt_a, opt_b)]
    plans = set()
    for step in range(12):
        set_grads(200 + step, a, b)
        opt_a.step()
        opt_b.step()
        for s in scheds:
            s.step()
        plans.add(id(opt_a._plan))
        assert_close(a, b, 1e-6, 1e-7)
    assert opt_a.param_groups[0]["betas"][0] != 0.9 and len(plans) == 1


@pytest.mark.parametrize("ours,theirs", PAIRS, ids=IDS)
def test_compiled_model(ours, theirs):
    """A torch.compile'd model's parameters (AOT autograd, no C++ build)."""
    torch.manual_seed(8)
    eager = torch.nn.Sequential(torch.nn.Linear(11, 23), torch.nn.ReLU(), torch.nn.Linear(23, 1))
    twin = copy.deepcopy(eager)
    compiled = torch.compile(twin, backend="aot_eager")
    opt_a, opt_b = ours(compiled.parameters(), lr=0.01), theirs(eager.parameters(), lr=0.01,
                                                                foreach=False)
    x, y = torch.randn(64, 11), torch.randn(64, 1)
    for _ in range(6):
        for m, o in ((compiled, opt_a), (eager, opt_b)):
            o.zero_grad()
            torch.nn.functional.mse_loss(m(x), y).backward()
            o.step()
    assert_close(list(twin.parameters()), list(eager.parameters()), 1e-5, 1e-6)


def test_grad_scaler():
    """GradScaler unscales and skips non-finite steps around fastadam's step."""
    torch.manual_seed(9)
    models = [torch.nn.Linear(7, 5) for _ in range(2)]
    models[1].load_state_dict(models[0].state_dict())
    opts = [ft.AdamW(models[0].parameters(), fused=True),
            torch.optim.AdamW(models[1].parameters(), foreach=False)]
    scalers = [torch.amp.GradScaler("cpu", init_scale=1024.0) for _ in range(2)]
    x = torch.randn(16, 7)
    for step in range(4):
        for m, o, s in zip(models, opts, scalers):
            o.zero_grad()
            loss = m(x).square().mean() * (float("inf") if step == 2 else 1.0)
            s.scale(loss).backward()
            s.step(o)
            s.update()
    assert_close(list(models[0].parameters()), list(models[1].parameters()), 1e-6, 1e-7)
    assert float(opts[0].state[models[0].weight]["step"]) == 3  # the inf step was skipped


# --- every CPU dtype through the one-parallel-region list path ----------------------------

@pytest.mark.parametrize("ours,theirs", PAIRS, ids=IDS)
def test_bfloat16_list_steps_as_one_batch_bitwise_like_torch_fused(ours, theirs):
    """A bfloat16 transformer's params step as one batch. torch's fused Adam computes in
    float32 and rounds to bfloat16, as fastadam does: given the same gradients, the same
    bits in params and state, step after step, but where rounding falls between torch's
    lerp for m and fastadam's ``beta1 * m + (1 - beta1) * g``: one bfloat16 step apart."""
    torch.manual_seed(10)
    layer = torch.nn.TransformerEncoderLayer(32, 4, 64, dropout=0.0, batch_first=True)
    model = torch.nn.TransformerEncoder(layer, 2, enable_nested_tensor=False).bfloat16()
    a = list(model.parameters())
    b = [torch.nn.Parameter(p.detach().clone()) for p in a]
    opt_a = ours(a, lr=1e-3, weight_decay=0.01)
    opt_b = theirs(b, lr=1e-3, weight_decay=0.01, fused=True)
    for step in range(10):
        set_grads(300 + step, a, b)
        opt_a.step()
        opt_b.step()
        params = [(pa, pb) for pa, pb in zip(a, b)]
        moments = [(opt_a.state[pa][k], opt_b.state[pb][k])
                   for pa, pb in zip(a, b) for k in ("exp_avg", "exp_avg_sq")]
        for pairs, floor in ((params, 1e-3 / 4), (moments, 0.0)):  # a quarter of lr
            for u, w in pairs:
                x, y = u.detach().float(), w.detach().float()
                # one bfloat16 step; where m cancels to near 0, a step of the tensor's scale
                bound = 2.0 ** -7 * torch.maximum(x.abs(), y.abs()) + floor + (
                    2.0 ** -7 * y.abs().max() if pairs is moments else 0.0)
                assert ((x - y).abs() <= bound).all()
        x = torch.cat([pa.detach().float().flatten() for pa, _ in params])
        y = torch.cat([pb.detach().float().flatten() for _, pb in params])
        assert (x == y).float().mean() > 0.995
    host = opt_a._plan.inner._plans.host
    assert len(host.batches[0]) == 1 and len(host.batches[0][0].slots) == len(a)


@pytest.mark.parametrize("ours,theirs", PAIRS, ids=IDS)
def test_mixed_dtypes_step_as_one_batch_per_dtype(ours, theirs):
    """float32, float64 and complex64 tensors in one group: a batch per dtype, each with
    torch's result (state in each tensor's own dtype, as torch keeps it)."""
    a32, b32 = twins(11, torch.float32)
    a64, b64 = twins(12, torch.float64, shapes=((33,), (4, 4)))
    ac, bc = twins(13, torch.complex64, shapes=((9,), (2, 3)))
    a, b = a32 + a64 + ac, b32 + b64 + bc
    opt_a, opt_b = ours(a, lr=0.01, amsgrad=True), theirs(b, lr=0.01, amsgrad=True,
                                                          foreach=False)
    lockstep(a, b, opt_a, opt_b, 8, 1e-6, 1e-7)
    assert len(opt_a._plan.inner._plans.host.batches[0]) == 2  # float32 (complex too), float64
    assert opt_a.state[a64[0]]["exp_avg"].dtype == torch.float64


def test_plan_survives_pickling():
    a, _ = twins(14)
    opt = ft.Adam(a)
    set_grads(0, a)
    opt.step()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        clone = copy.deepcopy(opt)
    copies = clone.param_groups[0]["params"]
    set_grads(1, copies, a)
    clone.step()  # no plan carried over: a fresh one
    opt.step()
    assert float(clone.state[copies[0]]["step"]) == 2
    assert_close(copies, a, 0.0)


def test_another_models_state_is_refused_in_torchs_words():
    """The state by torch's names, the param by group and index, and what to check; the
    step changes nothing."""
    big, small = torch.nn.Linear(64, 32), torch.nn.Linear(16, 8)
    opt_big, opt_small = ft.AdamW(big.parameters()), ft.AdamW(small.parameters())
    for net, opt in ((big, opt_big), (small, opt_small)):
        net(torch.randn(2, net.in_features)).sum().backward()
        opt.step()
    opt_small.load_state_dict(opt_big.state_dict())
    small(torch.randn(2, 16)).sum().backward()
    before = [p.detach().clone() for p in small.parameters()]
    with pytest.raises(ValueError, match=r"param_groups\[0\]\['params'\]\[0\]: exp_avg has "
                                         r"shape \(32, 64\), but param has shape \(8, 16\)") as e:
        opt_small.step()
    assert "saved from another model" in str(e.value)
    for p, b in zip(small.parameters(), before):
        assert torch.equal(p.detach(), b)


def _layouts():
    """Params as CNN users and slicing code meet them: channels_last convolution weights,
    a transposed view, a slice of a bigger tensor (gaps between rows), a contiguous one."""
    torch.manual_seed(3)
    conv = torch.randn(8, 3, 5, 5).to(memory_format=torch.channels_last)
    transposed = torch.randn(20, 7).t()
    sliced = torch.randn(10, 20)[:, 3:10]
    return [conv, transposed, sliced, torch.randn(33)]


@pytest.mark.parametrize("amsgrad", [False, True])
def test_params_of_any_layout_step_as_torch_steps_them(amsgrad):
    mine = [torch.nn.Parameter(t.clone()) for t in _layouts()]
    # clone keeps dense layouts (channels_last, transposed) and closes gaps: re-slice
    base = torch.randn(10, 20)
    base[:, 3:10] = mine[2].detach()
    mine[2] = torch.nn.Parameter(base[:, 3:10])
    theirs = [torch.nn.Parameter(t.detach().clone()) for t in mine]
    assert mine[0].stride() == (75, 1, 15, 3) and not mine[2].is_contiguous()
    opt, ref = ft.AdamW(mine, lr=1e-2, amsgrad=amsgrad), torch.optim.AdamW(
        theirs, lr=1e-2, amsgrad=amsgrad, foreach=False)
    for step in range(3):
        for a, b in zip(mine, theirs):
            g = torch.randn_like(a)
            a.grad, b.grad = g, g.clone()
        if step == 1:  # a gradient in another layout than its param
            mine[0].grad = mine[0].grad.contiguous()
        opt.step()
        ref.step()
    for a, b in zip(mine, theirs):
        torch.testing.assert_close(a.detach(), b.detach(), rtol=2e-6, atol=2e-7)
        torch.testing.assert_close(opt.state[a]["exp_avg"], ref.state[b]["exp_avg"])
    assert opt.state[mine[0]]["exp_avg"].stride() == mine[0].stride()  # its own layout
    assert base[:, :3].abs().sum() > 0 and torch.equal(base[:, 3:10], mine[2].detach())


def test_meta_params_step_as_torch_steps_them():
    model = torch.nn.Linear(3, 4, device="meta")
    opt = ft.AdamW(model.parameters())
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    state = opt.state[model.weight]
    assert float(state["step"]) == 1.0 and state["exp_avg"].device.type == "meta"


def layout_twins(seed, dtype=torch.float32):
    """The same params twice in the layouts CNN and slicing code make: a channels_last
    convolution weight, a transposed view, a slice with gaps between its rows."""
    gen = torch.Generator().manual_seed(seed)
    conv = torch.randn(4, 3, 3, 5, generator=gen, dtype=dtype)
    flipped = torch.randn(9, 5, generator=gen, dtype=dtype)
    base = torch.randn(6, 10, generator=gen, dtype=dtype)
    out = []
    for _ in range(2):
        sliced = base.clone()[:, 2:7]
        params = [conv.clone().to(memory_format=torch.channels_last), flipped.clone().t(),
                  sliced]
        out.append([torch.nn.Parameter(p) for p in params])
    assert out[0][0].stride() == (45, 1, 15, 3) and not out[0][2].is_contiguous()
    return out


@pytest.mark.parametrize("ours,theirs,dtype,optim_input",
                         [p for p in optim_inputs() if p.values[2] == torch.float32])
def test_torch_optim_inputs_on_params_of_any_layout(ours, theirs, dtype, optim_input):
    """Every CPU optim input of torch's optimizer tests on channels_last, transposed and
    sliced params: torch's trajectory over 10 steps, the state in each param's layout."""
    a, b = layout_twins(1, dtype)
    opt_a = ours(a, **optim_input.kwargs)
    opt_b = theirs(b, foreach=False, **optim_input.kwargs)
    lockstep(a, b, opt_a, opt_b, 10, 1e-6, 1e-7)
    for pa, pb in zip(a, b):
        sa, sb = opt_a.state[pa], opt_b.state[pb]
        assert sa.keys() == sb.keys()
        for k in sa:
            np.testing.assert_allclose(sa[k].numpy(), sb[k].numpy(), rtol=1e-5, atol=1e-7)
        assert sa["exp_avg"].stride() == sb["exp_avg"].stride()
