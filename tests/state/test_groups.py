"""Lists of arrays and torch-style param groups, against torch.optim with the same groups."""

import numpy as np
import pytest
from helpers import optional

import fastadam

torch = optional("torch")

SHAPES = [(5, 7), (13,), (2, 3, 4), (1,)]


def arrays(rng, dtype=np.float32):
    return [rng.standard_normal(s).astype(dtype) for s in SHAPES]


def torch_groups(specs, tensors):
    out, it = [], iter(tensors)
    for spec in specs:
        out.append({**{k: v for k, v in spec.items() if k != "params"},
                    "params": [next(it) for _ in spec["params"]]})
    return out


def run_both(rng, specs, ours_cls, theirs_cls, steps=25, schedule=None, **kw):
    params = [a for spec in specs for a in spec["params"]]
    tensors = [torch.tensor(a.copy(), requires_grad=True) for a in params]
    theirs = theirs_cls(torch_groups(specs, tensors), foreach=False, **kw)
    ours = ours_cls(specs, **kw)
    for step in range(steps):
        if schedule:
            for i, lr in schedule(step):
                theirs.param_groups[i]["lr"] = lr
                ours.set_lr(lr, group=i)
        grads = [rng.standard_normal(a.shape).astype(np.float32) for a in params]
        for t, g in zip(tensors, grads):
            t.grad = torch.from_numpy(g.copy())
        theirs.step()
        assert ours.step(grads) is True
    return params, tensors, ours, theirs


def group_specs(rng):
    a = arrays(rng)
    return [{"params": a[:2], "lr": 3e-2, "weight_decay": 0.1, "amsgrad": True},
            {"params": a[2:], "betas": (0.8, 0.99), "eps": 1e-6}]


@pytest.mark.parametrize("cls", ["Adam", "AdamW"])
def test_param_groups_match_torch(rng, cls):
    params, tensors, ours, theirs = run_both(rng, group_specs(rng), getattr(fastadam, cls),
                                             getattr(torch.optim, cls))
    for a, t in zip(params, tensors):
        np.testing.assert_allclose(a, t.detach().numpy(), rtol=1e-6, atol=1e-6)
    sd = ours.state_dict()
    assert [g["params"] for g in sd["param_groups"]] == [[0, 1], [2, 3]]
    for i, t in enumerate(tensors):
        for key, value in theirs.state[t].items():
            if key != "step":
                np.testing.assert_allclose(sd["state"][i][key], value.numpy(), rtol=1e-6,
                                           atol=1e-7)
        assert sd["state"][i]["step"] == 25


def test_list_of_arrays_is_one_group(rng):
    specs = [{"params": arrays(rng)}]
    params, tensors, ours, _ = run_both(rng, specs, fastadam.Adam, torch.optim.Adam)
    for a, t in zip(params, tensors):
        np.testing.assert_allclose(a, t.detach().numpy(), rtol=1e-6, atol=1e-6)
    plain = fastadam.Adam(arrays(rng))
    assert len(plain.param_groups) == 1 and plain.param_groups[0]["params"] == [0, 1, 2, 3]


def test_per_group_lr_schedule_matches_torch(rng):
    def schedule(step):
        return [(0, 3e-2 * 0.9**step), (1, 1e-3 * (step + 1))]

    params, tensors, ours, _ = run_both(rng, group_specs(rng), fastadam.AdamW,
                                        torch.optim.AdamW, schedule=schedule)
    for a, t in zip(params, tensors):
        np.testing.assert_allclose(a, t.detach().numpy(), rtol=1e-6, atol=1e-6)
    assert ours.param_groups[1]["lr"] == pytest.approx(1e-3 * 25)


def test_refused_step_changes_no_array(rng):
    opt = fastadam.Adam(group_specs(rng))
    grads = [np.ones(s, np.float32) for s in SHAPES]
    opt.step(grads)
    before = [p.copy() for p in opt.params], opt.state_dict()
    bad = list(grads)
    bad[3] = np.ones(2, np.float32)  # the last one is wrong: none may be written
    for wrong, error in ((bad, ValueError), (grads[:3], ValueError), (grads[0], TypeError)):
        with pytest.raises(error, match="grads"):
            opt.step(wrong)
    for p, b in zip(opt.params, before[0]):
        np.testing.assert_array_equal(p, b)
    assert opt.step_count == 1


def test_state_dict_round_trip_and_refusal(rng, tmp_path):
    specs = group_specs(rng)
    opt = fastadam.Adam(specs)
    for _ in range(3):
        opt.step([rng.standard_normal(s).astype(np.float32) for s in SHAPES])
    opt.save(tmp_path / "groups.npz")
    copy = fastadam.Adam([{**s, "params": [p.copy() for p in s["params"]]} for s in specs])
    copy.load(tmp_path / "groups.npz")
    assert copy.param_groups == opt.param_groups
    one_group = fastadam.Adam([p.copy() for s in specs for p in s["params"]])
    with pytest.raises(ValueError, match="param_groups"):
        one_group.load_state_dict(opt.state_dict())
    assert one_group.step_count == 0


def test_mixed_dtypes_get_their_own_state(rng):
    ml_dtypes = optional("ml_dtypes")
    bf16 = rng.standard_normal(10).astype(ml_dtypes.bfloat16)
    f32 = rng.standard_normal(10).astype(np.float32)
    opt = fastadam.Adam([bf16, f32])
    opt.step([np.ones(10, np.float32), np.ones(10, np.float32)])
    state = opt.state_dict()["state"]
    assert "kahan_comp" in state[0] and "kahan_comp" not in state[1]
    assert state[0]["exp_avg"].dtype == np.float32


@pytest.mark.parametrize("params,error", [
    ([], ValueError),
    ([{"lr": 1.0}], ValueError),
    ([{"params": [np.zeros(3)], "momentum": 0.9}], ValueError),
    ([np.zeros(3), {"params": [np.zeros(3)]}], TypeError),
    ({"params": [np.zeros(3)]}, TypeError),
    ([{"params": [np.zeros(3)], "lr": -1.0}], ValueError),
])
def test_bad_groups(params, error):
    with pytest.raises(error):
        fastadam.Adam(params)


def test_same_array_twice_refused():
    a = np.zeros(4)
    with pytest.raises(ValueError, match="overlap"):
        fastadam.Adam([a, a[1:]])


@pytest.mark.parametrize("amsgrad", [False, True])
def test_one_parallel_region_equals_one_array_at_a_time(rng, amsgrad):
    sizes = [70_001, 1, 4096, 33, 65_536, 7]  # chunks split the large ones
    params = [rng.standard_normal(n).astype(np.float32) for n in sizes]
    singles = [fastadam.AdamW(p.copy(), amsgrad=amsgrad, lr=0.01) for p in params]
    many = fastadam.AdamW(params, amsgrad=amsgrad, lr=0.01)
    assert many._plans.host is not None and len(many._plans.host.batches[0]) == 1  # one batch
    for _ in range(3):
        grads = [rng.standard_normal(n).astype(np.float32) for n in sizes]
        many.step(grads)
        for opt, g in zip(singles, grads):
            opt.step(g)
    for p, opt in zip(params, singles):
        np.testing.assert_array_equal(p, opt.params)


def test_gradient_aliasing_another_param_refused(rng):
    a, b = rng.standard_normal(8), rng.standard_normal(8)
    opt = fastadam.Adam([a, b])
    before = a.copy(), b.copy()
    with pytest.raises(ValueError, match="overlap"):
        opt.step([b, np.ones(8)])  # grads[0] is params[1]
    np.testing.assert_array_equal(a, before[0])
    np.testing.assert_array_equal(b, before[1])


def test_mixed_gradient_dtypes_in_one_batch(rng):
    ml_dtypes = optional("ml_dtypes")
    params = [rng.standard_normal(100).astype(np.float32) for _ in range(3)]
    singles = [fastadam.Adam(p.copy()) for p in params]
    many = fastadam.Adam(params)
    grads = [rng.standard_normal(100).astype(d) for d in (np.float32, ml_dtypes.bfloat16,
                                                           np.float32)]
    many.step(grads)
    for opt, g in zip(singles, grads):
        opt.step(g)
    for p, opt in zip(params, singles):
        np.testing.assert_array_equal(p, opt.params)


@pytest.mark.parametrize("options", [{}, {"master_weights": True}, {"skip_nonfinite": True},
                                     {"state_dtype": "bfloat16", "nesterov": True}])
def test_sixteen_bit_lists_equal_one_array_at_a_time(rng, options):
    ml_dtypes = optional("ml_dtypes")
    if options.get("state_dtype"):
        options = {**options, "state_dtype": ml_dtypes.bfloat16}
    sizes = [3000, 17, 70_000]
    params = [rng.standard_normal(n).astype(ml_dtypes.bfloat16) for n in sizes]
    singles = [fastadam.Adam(p.copy(), lr=1e-3, **options) for p in params]
    many = fastadam.Adam(params, lr=1e-3, **options)
    for step in range(3):
        grads = [rng.standard_normal(n).astype(np.float32) for n in sizes]
        if options.get("skip_nonfinite") and step == 1:
            grads[2][5] = np.nan
        finite = all(np.isfinite(g).all() for g in grads)
        assert many.step(grads, grad_scale=2.0) is finite  # one NaN skips the whole step
        if finite:
            for opt, g in zip(singles, grads):
                opt.step(g, grad_scale=2.0)
    for p, opt in zip(params, singles):
        np.testing.assert_array_equal(p, opt.params)
    for a, b in zip(many.state_dict()["state"].values(),
                    [opt.state_dict()["state"][0] for opt in singles]):
        for k in b:
            np.testing.assert_array_equal(a[k], b[k])
