"""Gradient clipping by the global norm inside the step: torch's ``clip_grad_norm_`` then
Adam, on every path (one array, a list in one region, one call per array, 8-bit), against
torch and a float64 formula; the norm's bits do not depend on the thread count."""

import math

import numpy as np
import pytest
from helpers import optional
from reference import adam_f64

import fastadam

SHAPES = [(33, 17), (1001,), (5,), (4099,)]


def grads_like(rng, params, scale=3.0):
    return [(scale * rng.standard_normal(p.shape)).astype(p.dtype) for p in params]


def torch_clip_coefficient(norm: float, max_norm: float) -> float:
    return min(1.0, max_norm / (norm + 1e-6))


def test_list_follows_float64_clip_then_adamw(rng):
    params = [rng.standard_normal(s).astype(np.float32) for s in SHAPES]
    opt = fastadam.AdamW([p.copy() for p in params], lr=1e-2, max_grad_norm=2.0)
    state = [(p.astype(np.float64), np.zeros(p.shape), np.zeros(p.shape)) for p in params]
    for step in range(1, 6):
        grads = grads_like(rng, params)
        norm = math.sqrt(sum(float(np.sum(g.astype(np.float64) ** 2)) for g in grads))
        coef = torch_clip_coefficient(norm, 2.0)
        opt.step(grads)
        assert opt.grad_norm == pytest.approx(norm, rel=1e-12)
        new = []
        for (p, m, v), g in zip(state, grads):
            p, m, v, _, _ = adam_f64(p, g.astype(np.float64) * coef, m, v, None, step=step,
                                     lr=1e-2, weight_decay=1e-2, decoupled_weight_decay=True)
            new.append((p, m, v))
        state = new
    for got, (want, _, _) in zip(opt.params, state):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("layout", ["array", "list", "each"])
def test_matches_torch_clip_grad_norm_then_adamw(rng, layout):
    torch = optional("torch")
    shapes = [(1001,)] if layout == "array" else SHAPES
    params = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    tensors = [torch.nn.Parameter(torch.from_numpy(p.copy())) for p in params]
    theirs = torch.optim.AdamW(tensors, lr=1e-2)
    mine = fastadam.AdamW(params[0].copy() if layout == "array" else [p.copy() for p in params],
                          lr=1e-2, max_grad_norm=1.0)
    for _ in range(4):
        grads = grads_like(rng, params)
        for t, g in zip(tensors, grads):
            t.grad = torch.from_numpy(g.copy())
        total = torch.nn.utils.clip_grad_norm_(tensors, 1.0)
        theirs.step()
        if layout == "array":
            mine.step(grads[0])
        elif layout == "list":
            mine.step(grads)
        else:  # mixed gradient dtypes: one kernel call per array
            mine.step([g.astype(np.float64) if i % 2 else g for i, g in enumerate(grads)])
        assert mine.grad_norm == pytest.approx(float(total), rel=2e-6)
    got = [mine.params] if layout == "array" else mine.params
    for a, t in zip(got, tensors):
        np.testing.assert_allclose(a, t.detach().numpy(), rtol=2e-6, atol=2e-7)


def test_below_the_limit_is_the_unclipped_step_bit_for_bit(rng):
    params = [rng.standard_normal(s).astype(np.float32) for s in SHAPES]
    clipped = fastadam.Adam([p.copy() for p in params], max_grad_norm=1e9)
    plain = fastadam.Adam([p.copy() for p in params])
    for _ in range(3):
        grads = grads_like(rng, params)
        clipped.step(grads)
        plain.step(grads)
    for a, b in zip(clipped.params, plain.params):
        np.testing.assert_array_equal(a, b)


def test_the_norm_is_taken_after_grad_scale(rng):
    params = [rng.standard_normal(s).astype(np.float32) for s in SHAPES]
    scaled = fastadam.Adam([p.copy() for p in params], max_grad_norm=1.0)
    plain = fastadam.Adam([p.copy() for p in params], max_grad_norm=1.0)
    for _ in range(3):
        grads = grads_like(rng, params)
        scaled.step([g * np.float32(1024) for g in grads], grad_scale=1024.0)
        plain.step(grads)
        assert scaled.grad_norm == pytest.approx(plain.grad_norm, rel=1e-12)
    for a, b in zip(scaled.params, plain.params):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_the_norm_is_the_same_bits_for_any_thread_count(rng):
    grads = [rng.standard_normal(n).astype(np.float32) for n in (1 << 18, 3, 70_001)]
    norms = {t: fastadam.grad_norm(grads, num_threads=t) for t in (1, None)}
    assert norms[1] == norms[None]
    want = math.sqrt(sum(float(np.sum(g.astype(np.float64) ** 2)) for g in grads))
    assert norms[1] == pytest.approx(want, rel=1e-13)


def test_grad_norm_of_mixed_dtypes_and_one_array(rng):
    ml_dtypes = optional("ml_dtypes")
    grads = [rng.standard_normal(300).astype(d) for d in
             (np.float16, ml_dtypes.bfloat16, np.float32, np.float64)]
    want = math.sqrt(sum(float(np.sum(g.astype(np.float64) ** 2)) for g in grads))
    assert fastadam.grad_norm(grads) == pytest.approx(want, rel=1e-13)
    one = grads[2].reshape(20, 15)
    assert fastadam.grad_norm(one) == pytest.approx(float(np.linalg.norm(
        one.astype(np.float64))), rel=1e-13)
    assert fastadam.grad_norm([]) == 0.0


def test_non_finite_norm_skips_under_skip_nonfinite_and_acts_as_torch_otherwise(rng):
    torch = optional("torch")
    params = [rng.standard_normal(s).astype(np.float32) for s in SHAPES]
    grads = grads_like(rng, params)
    grads[1][7] = np.inf
    skipping = fastadam.Adam([p.copy() for p in params], max_grad_norm=1.0,
                             skip_nonfinite=True)
    assert skipping.step(grads) is False and skipping.step_count == 0
    assert math.isinf(skipping.grad_norm)
    for a, p in zip(skipping.params, params):
        np.testing.assert_array_equal(a, p)
    mine = fastadam.Adam([p.copy() for p in params], max_grad_norm=1.0)
    mine.step(grads)
    tensors = [torch.nn.Parameter(torch.from_numpy(p.copy())) for p in params]
    for t, g in zip(tensors, grads):
        t.grad = torch.from_numpy(g.copy())
    torch.nn.utils.clip_grad_norm_(tensors, 1.0)
    torch.optim.Adam(tensors).step()
    for a, t in zip(mine.params, tensors):  # an inf norm: coefficient 0, inf * 0 = NaN
        np.testing.assert_array_equal(np.isnan(a), np.isnan(t.detach().numpy()))
        np.testing.assert_allclose(a, t.detach().numpy(), rtol=1e-6, atol=1e-7)


def test_eight_bit_state_clips_as_the_scaled_gradient(rng):
    params = [rng.standard_normal(n).astype(np.float32) for n in (5000, 8192)]
    clipped = fastadam.Adam([p.copy() for p in params], state_dtype="8bit", max_grad_norm=1.0)
    by_hand = fastadam.Adam([p.copy() for p in params], state_dtype="8bit")
    for _ in range(3):
        grads = grads_like(rng, params)
        norm = fastadam.grad_norm(grads)
        clipped.step(grads)
        by_hand.step(grads, grad_scale=1.0 / torch_clip_coefficient(norm, 1.0))
        assert clipped.grad_norm == norm
    for a, b in zip(clipped.params, by_hand.params):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_torch_drop_in_clips_in_the_step(rng):
    torch = optional("torch")
    import fastadam.torch as ft

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(17, 33), torch.nn.Linear(33, 5))
    twin = torch.nn.Sequential(torch.nn.Linear(17, 33), torch.nn.Linear(33, 5))
    twin.load_state_dict(model.state_dict())
    mine = ft.AdamW(model.parameters(), lr=1e-2, max_grad_norm=0.5)
    theirs = torch.optim.AdamW(twin.parameters(), lr=1e-2)
    for _ in range(4):
        x = torch.randn(8, 17)
        for net in (model, twin):
            net.zero_grad()
            (net(x) ** 2).sum().backward()
        total = torch.nn.utils.clip_grad_norm_(twin.parameters(), 0.5)
        theirs.step()
        mine.step()
        assert mine.grad_norm == pytest.approx(float(total), rel=2e-6)
    for a, b in zip(model.parameters(), twin.parameters()):
        np.testing.assert_allclose(a.detach().numpy(), b.detach().numpy(), rtol=2e-6, atol=2e-7)


@pytest.mark.parametrize("bad,error", [(-1.0, ValueError), (float("nan"), ValueError),
                                       ("1.0", TypeError), (True, TypeError)])
def test_bad_max_grad_norm_is_refused_by_name(bad, error):
    with pytest.raises(error, match="max_grad_norm"):
        fastadam.Adam(np.zeros(3, np.float32), max_grad_norm=bad)


def test_a_refused_step_changes_nothing_and_records_no_norm(rng):
    params = [rng.standard_normal(s).astype(np.float32) for s in SHAPES]
    opt = fastadam.Adam([p.copy() for p in params], max_grad_norm=1.0)
    with pytest.raises(ValueError, match=r"grads\[1\]"):
        opt.step([g if i != 1 else g[:-1] for i, g in enumerate(grads_like(rng, params))])
    assert opt.grad_norm is None and opt.step_count == 0
    for a, p in zip(opt.params, params):
        np.testing.assert_array_equal(a, p)


def test_torch_8bit_drop_in_clips_in_the_step(rng):
    torch = optional("torch")
    import fastadam.torch as ft

    start = [rng.standard_normal(n).astype(np.float32) for n in (5000, 300)]
    clipped = [torch.nn.Parameter(torch.from_numpy(a.copy())) for a in start]
    by_hand = [torch.nn.Parameter(torch.from_numpy(a.copy())) for a in start]
    mine = ft.AdamW8bit(clipped, max_grad_norm=1.0)
    twin = ft.AdamW8bit(by_hand)
    for _ in range(3):
        grads = [torch.from_numpy((3 * rng.standard_normal(a.shape)).astype(np.float32))
                 for a in start]
        for p, q, g in zip(clipped, by_hand, grads):
            p.grad, q.grad = g.clone(), g.clone()
        total = torch.nn.utils.clip_grad_norm_(by_hand, 1.0)
        mine.step()
        twin.step()
        assert mine.grad_norm == pytest.approx(float(total), rel=2e-6)
    for p, q in zip(clipped, by_hand):
        np.testing.assert_allclose(p.detach().numpy(), q.detach().numpy(), rtol=1e-5,
                                   atol=1e-6)


@pytest.mark.parametrize("name", ["AdamW", "AdamW8bit", "AdamW4bit", "AdamWScheduleFree",
                                  "AdEMAMix"])
def test_a_copied_torch_drop_in_still_clips(rng, name):
    """``copy.deepcopy`` (and pickling) keeps ``max_grad_norm`` and the drop-in's other
    settings (``min_8bit_size``, the rounding seed), which torch's own ``__getstate__``
    leaves out: the copy steps and clips as the original does, bit for bit."""
    import copy
    import warnings

    torch = optional("torch")
    import fastadam.torch as ft

    start = [rng.standard_normal(n).astype(np.float32) for n in (5000, 300)]
    params = [torch.nn.Parameter(torch.from_numpy(a.copy())) for a in start]
    opt = getattr(ft, name)(params, lr=1e-2, max_grad_norm=1.0)
    if name == "AdamWScheduleFree":
        opt.train()  # as schedulefree's: steps in train mode
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        clone = copy.deepcopy(opt)
    copies = clone.param_groups[0]["params"]
    assert clone.grad_norm is None
    for _ in range(2):
        grads = [torch.from_numpy((3 * rng.standard_normal(a.shape)).astype(np.float32))
                 for a in start]
        for p, q, g in zip(params, copies, grads):
            p.grad, q.grad = g.clone(), g.clone()
        opt.step()
        clone.step()
        assert clone.grad_norm == opt.grad_norm > 1.0
    for p, q in zip(params, copies):
        assert torch.equal(p, q)
