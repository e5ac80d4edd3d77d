"""Schedule-free AdamW and AdEMAMix: trajectories against their references
(schedulefree, bitsandbytes' 32-bit AdEMAMix, optax), every API (arrays, lists, groups,
backends, thread counts, torch drop-ins), 16-bit params, clipping, state_dicts both ways,
and bad input."""

import copy

import numpy as np
import pytest
from helpers import optional

import fastadam
from fastadam._backends.dispatch import apply, step_flags
from fastadam._backends.reference import ademamix_numpy, schedule_free_numpy
from fastadam._core.hyper import hyper, schedule_free_weights

F32, F64 = np.float32, np.float64
SHAPES = [(33, 7), (1001,), (5,)]  # odd sizes: ragged vector tails
SF = dict(lr=1e-2, warmup_steps=10, weight_decay=0.01)
AM = dict(lr=1e-2, t_alpha=50, t_beta3=50, weight_decay=0.1)


def _data(rng, dtype, steps):
    start = [rng.standard_normal(s).astype(dtype) for s in SHAPES]
    grads = [[rng.standard_normal(s).astype(dtype) for s in SHAPES] for _ in range(steps)]
    return start, grads


def _tolerance(dtype):
    return dict(rtol=2e-5, atol=2e-6) if dtype == F32 else dict(rtol=1e-12, atol=1e-13)


def _schedulefree_run(torch, start, grads, cycle_at=None, **kw):
    """The reference's params (y) after ``grads``, with a train/eval/train cycle."""
    import schedulefree

    params = [torch.nn.Parameter(torch.from_numpy(a.copy())) for a in start]
    ref = schedulefree.AdamWScheduleFree(params, foreach=False, **kw)
    ref.train()
    for i, gs in enumerate(grads):
        if i == cycle_at:
            ref.eval()
            x = [p.detach().numpy().copy() for p in params]
            ref.train()
        for p, g in zip(params, gs):
            p.grad = torch.from_numpy(g.copy())
        ref.step()
    return [p.detach().numpy() for p in params], (x if cycle_at is not None else None)


@pytest.mark.parametrize("backend,threads", [("cpu", 1), ("cpu", 2), ("numpy", None)])
@pytest.mark.parametrize("dtype", [F32, F64])
def test_schedule_free_follows_the_reference(rng, dtype, backend, threads):
    """200 steps with warmup and weight decay, a train()/eval()/train() cycle at step 100
    (the eval()'d params are the reference's x), over a list of odd-sized arrays."""
    torch = optional("torch")
    optional("schedulefree")
    start, grads = _data(rng, dtype, 200)
    want, want_x = _schedulefree_run(torch, start, grads, cycle_at=100, **SF)
    params = [a.copy() for a in start]
    opt = fastadam.AdamWScheduleFree(params, backend=backend, num_threads=threads, **SF)
    for i, gs in enumerate(grads):
        if i == 100:
            opt.eval()
            assert not opt.train_mode
            for got, x in zip(params, want_x):
                np.testing.assert_allclose(got, x, **_tolerance(dtype))
            opt.train()
        assert opt.step(gs) is True
    for got, ref in zip(params, want):
        np.testing.assert_allclose(got, ref, **_tolerance(dtype))
        assert np.abs(got - ref).max() < 1e-3 * np.abs(got).max()


@pytest.mark.parametrize("dtype", [F32, F64])
def test_ademamix_follows_bitsandbytes(rng, dtype):
    torch = optional("torch")
    bnb = optional("bitsandbytes")
    start, grads = _data(rng, dtype, 200)
    theirs = [torch.nn.Parameter(torch.from_numpy(a.astype(F32))) for a in start]
    ref = bnb.optim.AdEMAMix(theirs, **AM)
    params = [a.copy() for a in start]
    opt = fastadam.AdEMAMix(params, **AM)
    for gs in grads:
        opt.step(gs)
        for p, g in zip(theirs, gs):
            p.grad = torch.from_numpy(g.astype(F32))
        ref.step()
    for got, p in zip(params, theirs):  # bitsandbytes steps float32 params
        np.testing.assert_allclose(got, p.detach().numpy(), rtol=2e-5, atol=2e-6)


def test_ademamix_follows_optax(rng):
    optional("jax")
    optax = optional("optax")
    import jax.numpy as jnp

    start, grads = _data(rng, F32, 200)
    tx = optax.contrib.ademamix(learning_rate=1e-2, b1=0.9, b2=0.999, b3=0.999, alpha=3.0,
                                weight_decay=0.0)
    x = [jnp.asarray(a) for a in start]
    state = tx.init(x)
    params = [a.copy() for a in start]
    opt = fastadam.AdEMAMix(params, lr=1e-2, betas=(0.9, 0.999, 0.999), alpha=3.0,
                            weight_decay=0.0)
    for gs in grads:
        opt.step(gs)
        updates, state = tx.update([jnp.asarray(g) for g in gs], state, x)
        x = optax.apply_updates(x, updates)
    for got, want in zip(params, x):  # optax adds eps outside the bias correction too
        np.testing.assert_allclose(got, np.asarray(want), rtol=1e-4, atol=2e-5)


def test_the_kernels_are_the_float64_formulas(rng):
    """One step of each rule, float64: the fused kernel against the NumPy formulas."""
    n = 4099
    for rule, step_fn, settings in (
            ("schedulefree", schedule_free_numpy, dict(lr=0.1, weight_decay=0.1,
                                                       warmup_steps=3, r=0.5)),
            ("ademamix", ademamix_numpy, dict(lr=0.1, weight_decay=0.1, t_alpha=4,
                                              t_beta3=4))):
        h = hyper(rule, **settings)
        if rule == "schedulefree":
            lr, ckp1, *_ = schedule_free_weights(h, 3, 0.5, 0.05)
            h = h._replace(scheduled_lr=lr, ckp1=ckp1)
        arrays = [rng.standard_normal(n) for _ in range(5)]
        arrays[3] = np.abs(arrays[3])  # v
        want = [a.copy() for a in arrays]
        step_fn(*want[:2], *want[2:], None, None, h, 3)
        views = (*arrays, None, None)
        apply("cpu", views, h, step_flags(h, views), 3)
        for got, ref in zip(arrays, want):
            np.testing.assert_allclose(got, ref, rtol=1e-14, atol=1e-15)


@pytest.mark.parametrize("cls,kw", [(fastadam.AdamWScheduleFree, SF), (fastadam.AdEMAMix, AM)])
def test_groups_lists_and_one_array_step_alike(rng, cls, kw):
    """Two groups (the second with its own lr) step as each array alone would."""
    start, grads = _data(rng, F32, 5)
    params = [a.copy() for a in start]
    second = {"lr": 3e-2, **({"betas": (0.8, 0.99, 0.999)} if cls is fastadam.AdEMAMix
                             else {"betas": (0.8, 0.99)})}
    opt = cls([{"params": params[:2]}, {"params": params[2:], **second}], **kw)
    alone = [cls(a.copy(), **{**kw, **(second if i == 2 else {})})
             for i, a in enumerate(start)]
    for gs in grads:
        opt.step(gs)
        for o, g in zip(alone, gs):
            o.step(g)
    for got, o in zip(params, alone):
        np.testing.assert_array_equal(got, o.params)


@pytest.mark.parametrize("cls,kw", [(fastadam.AdamWScheduleFree, SF), (fastadam.AdEMAMix, AM)])
@pytest.mark.parametrize("options", [{"kahan_summation": True}, {"master_weights": True},
                                     {"stochastic_rounding": True, "seed": 3}])
def test_16bit_params_step_as_the_numpy_formulas(rng, cls, kw, options):
    ml_dtypes = optional("ml_dtypes")
    bf16 = np.dtype(ml_dtypes.bfloat16)
    start = rng.standard_normal(1001).astype(bf16)
    fused, numpy = start.copy(), start.copy()
    a = cls(fused, **kw, **options)
    b = cls(numpy, backend="numpy", **kw, **options)
    for _ in range(5):
        g = rng.standard_normal(1001).astype(F32)
        a.step(g)
        b.step(g)
    if isinstance(a, fastadam.AdamWScheduleFree):
        a.eval()
        b.eval()
    got, want = fused.astype(F32), numpy.astype(F32)
    assert (got != want).mean() < 0.01  # rounding of one operation apart, at most
    np.testing.assert_allclose(got, want, rtol=1e-2)
    assert not np.array_equal(fused, start)


@pytest.mark.parametrize("cls,kw", [(fastadam.AdamWScheduleFree, SF), (fastadam.AdEMAMix, AM)])
def test_clipping_is_the_unclipped_step_with_the_clip_scale(rng, cls, kw):
    start, grads = _data(rng, F32, 3)
    clipped_params, plain_params = [a.copy() for a in start], [a.copy() for a in start]
    clipped = cls(clipped_params, max_grad_norm=1.0, **kw)
    plain = cls(plain_params, **kw)
    for gs in grads:
        gs = [3 * g for g in gs]
        norm = np.sqrt(sum(float(np.sum(g.astype(F64) ** 2)) for g in gs))
        clipped.step(gs)
        assert clipped.grad_norm == pytest.approx(norm, rel=1e-12)
        plain.step(gs, grad_scale=(norm + 1e-6) / 1.0)
    for a, b in zip(clipped_params, plain_params):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("cls,kw", [(fastadam.AdamWScheduleFree, SF), (fastadam.AdEMAMix, AM)])
def test_checkpoints_continue_exactly(rng, cls, kw, tmp_path):
    start, grads = _data(rng, F32, 6)
    params = [a.copy() for a in start]
    opt = cls(params, **kw)
    for gs in grads[:3]:
        opt.step(gs)
    opt.save(tmp_path / "opt.npz")
    resumed_params = [a.copy() for a in params]
    resumed = cls(resumed_params, **kw)
    resumed.load(tmp_path / "opt.npz")
    assert resumed.state_dict()["param_groups"] == opt.state_dict()["param_groups"]
    for gs in grads[3:]:
        opt.step(gs)
        resumed.step(gs)
    for a, b in zip(params, resumed_params):
        np.testing.assert_array_equal(a, b)
    keys = set(opt.state_dict()["state"][0])
    assert keys == ({"step", "z", "exp_avg_sq"} if cls is fastadam.AdamWScheduleFree
                    else {"step", "exp_avg", "exp_avg_sq", "exp_avg_slow"})


def test_schedule_free_modes_and_refusals(rng):
    params = rng.standard_normal(101).astype(F32)
    opt = fastadam.AdamWScheduleFree(params, **SF)
    g = rng.standard_normal(101).astype(F32)
    opt.step(g)
    opt.eval()
    x = params.copy()
    opt.eval()  # eval twice: nothing moves (the reference's behaviour)
    np.testing.assert_array_equal(params, x)
    before = (params.copy(), opt.state_dict())
    with pytest.raises(RuntimeError, match="eval mode"):
        opt.step(g)
    np.testing.assert_array_equal(params, before[0])
    after = opt.state_dict()
    assert after["param_groups"] == before[1]["param_groups"]
    for k, v in before[1]["state"][0].items():
        np.testing.assert_array_equal(after["state"][0][k], v)
    opt.train()
    opt.train()
    with pytest.raises(ValueError, match="grads"):
        opt.step(np.ones(7, F32))  # a refused step leaves the running sums as they were
    assert opt.param_groups[0]["weight_sum"] == before[1]["param_groups"][0]["weight_sum"]


@pytest.mark.parametrize("make,error,match", [
    (lambda p: fastadam.AdEMAMix(p, betas=(0.9, 0.999, 1.0)), ValueError, "beta3"),
    (lambda p: fastadam.AdEMAMix(p, betas=(0.9, 0.999)), TypeError, "beta1, beta2, beta3"),
    (lambda p: fastadam.AdEMAMix(p, alpha=-1.0), ValueError, "alpha"),
    (lambda p: fastadam.AdEMAMix(p, t_alpha=0), ValueError, "t_alpha"),
    (lambda p: fastadam.AdEMAMix(p, t_beta3=1.5), TypeError, "t_beta3"),
    (lambda p: fastadam.AdEMAMix(p, state_dtype="8bit"), ValueError, "state_dtype"),
    (lambda p: fastadam.AdamWScheduleFree(p, warmup_steps=-1), ValueError, "warmup_steps"),
    (lambda p: fastadam.AdamWScheduleFree(p, weight_lr_power=-2.0), ValueError,
     "weight_lr_power"),
    (lambda p: fastadam.AdamWScheduleFree(p, amsgrad=True), TypeError, "amsgrad"),
    (lambda p: fastadam.AdamWScheduleFree([{"params": [p], "alpha": 1.0}]), ValueError,
     "alpha"),
])
def test_bad_hyperparameters_are_refused_and_nothing_changes(rng, make, error, match):
    params = rng.standard_normal(50).astype(F32)
    before = params.copy()
    with pytest.raises(error, match=match):
        make(params)
    np.testing.assert_array_equal(params, before)


def test_torch_drop_ins_follow_the_references_and_share_state_dicts(rng):
    torch = optional("torch")
    schedulefree = optional("schedulefree")
    bnb = optional("bitsandbytes")
    import fastadam.torch as ft

    start, grads = _data(rng, F32, 60)
    for ours_cls, ref_cls, kw in ((ft.AdamWScheduleFree, schedulefree.AdamWScheduleFree, SF),
                                  (ft.AdEMAMix, bnb.optim.AdEMAMix, AM)):
        ours_p = [torch.nn.Parameter(torch.from_numpy(a.copy())) for a in start]
        ref_p = [torch.nn.Parameter(torch.from_numpy(a.copy())) for a in start]
        ours, ref = ours_cls(ours_p, **kw), ref_cls(ref_p, **kw)
        if hasattr(ref, "train"):
            with pytest.raises(RuntimeError, match="train mode"):
                ours_p[0].grad = torch.ones_like(ours_p[0])
                ours.step()
            ours.train()
            ref.train()
        for i, gs in enumerate(grads):
            if i == 30:  # the reference continues from our state, and we from its
                ours.load_state_dict(copy.deepcopy(ref.state_dict()))
                ref.load_state_dict(copy.deepcopy(ours.state_dict()))
            for a, b, g in zip(ours_p, ref_p, gs):
                a.grad, b.grad = torch.from_numpy(g.copy()), torch.from_numpy(g.copy())
            ours.step()
            ref.step()
        for a, b in zip(ours_p, ref_p):
            torch.testing.assert_close(a.detach(), b.detach(), rtol=2e-5, atol=2e-6)
        if hasattr(ref, "eval"):
            ours.eval()
            ref.eval()
            for a, b in zip(ours_p, ref_p):
                torch.testing.assert_close(a.detach(), b.detach(), rtol=2e-5, atol=2e-6)


def test_torch_ademamix_refuses_8bit_and_bad_betas():
    torch = optional("torch")
    import fastadam.torch as ft

    p = [torch.nn.Parameter(torch.zeros(3))]
    with pytest.raises(ValueError, match="optim_bits"):
        ft.AdEMAMix(p, optim_bits=8)
    with pytest.raises(ValueError, match="beta3"):
        ft.AdEMAMix(p, betas=(0.9, 0.999, 1.5))
    with pytest.raises(ValueError, match="alpha"):
        ft.AdEMAMix(p, alpha=-1.0)


@pytest.mark.parametrize("cls,kw", [(fastadam.AdamWScheduleFree, SF), (fastadam.AdEMAMix, AM)])
def test_a_nonfinite_step_is_skipped_and_changes_nothing(rng, cls, kw):
    start, grads = _data(rng, F32, 2)
    params = [a.copy() for a in start]
    opt = cls(params, skip_nonfinite=True, **kw)
    opt.step(grads[0])
    before = [a.copy() for a in params], opt.state_dict()
    bad = [g.copy() for g in grads[1]]
    bad[1][7] = np.nan
    assert opt.step(bad) is False
    for a, b in zip(params, before[0]):
        np.testing.assert_array_equal(a, b)
    after = opt.state_dict()
    assert after["param_groups"] == before[1]["param_groups"]
    assert opt.step_count == 1
