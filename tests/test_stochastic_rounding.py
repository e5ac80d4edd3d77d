"""Stochastic rounding of 16-bit params: the kernels' rounding bit for bit as the NumPy
formula, unbiased, a bfloat16 run tracking float32 as Kahan summation does, the same bits
for any thread count and after a save and load, and the refusals."""

import numba
import numpy as np
import pytest
from helpers import optional

import fastadam
from fastadam._backends.cpu import runtime
from fastadam._backends.reference import random_bits, stochastic_round

ml_dtypes = optional("ml_dtypes")
BF16 = np.dtype(ml_dtypes.bfloat16)
F16 = np.dtype(np.float16)
F32 = np.dtype(np.float32)
SIXTEEN = [BF16, F16]


def kernel_rounding(kind: str, f16c=None):
    """The CPU kernels' stochastic store for ``kind``, over arrays (x float32, r uint32)."""
    store = runtime.rounding(f16c)[0][kind]

    @numba.njit
    def run(x, r, out):
        for i in range(x.size):
            out[i] = store(x[i], r[i])

    return run


@pytest.mark.parametrize("kind", ["bfloat16", "float16"])
@pytest.mark.parametrize("f16c", [None, False])
def test_the_kernels_round_as_the_formula(kind, f16c, rng):
    n = 200_000
    x = np.concatenate([
        (rng.standard_normal(n) * 10.0 ** rng.integers(-9, 6, n)).astype(F32),
        rng.integers(0, 1 << 32, 20_000, dtype=np.uint64).astype(np.uint32).view(F32),
        np.array([0, -0.0, np.inf, -np.inf, np.nan, 65504, 65519, 70000, 6e-8, 1e-45], F32)])
    r = random_bits(12345, np.arange(x.size))
    out = np.empty(x.size, np.uint16)
    kernel_rounding(kind, f16c)(x, r, out)
    want = stochastic_round(x, kind, r).view(np.uint16)
    same = (out == want) | (np.isnan(out.view(BF16 if kind == "bfloat16" else F16))
                            & np.isnan(want.view(BF16 if kind == "bfloat16" else F16)))
    assert same.all(), x[~same][:5]


@pytest.mark.parametrize("dtype", SIXTEEN)
def test_rounding_is_unbiased_and_lands_on_a_neighbour(dtype):
    """The mean of many draws converges to the exact value: within 5 standard errors."""
    values = np.array([1.0 + 2.0**-9, -3.14159, 1e-3 + 1e-7, 7.3e-6, 2.5e-7], F32)
    n = 100_000
    for k, x in enumerate(values):
        down = x.astype(dtype).astype(np.float64)
        r = random_bits(k, np.arange(n))
        got = stochastic_round(np.full(n, x), dtype.name, r).astype(np.float64)
        neighbours = np.unique(got)
        assert len(neighbours) <= 2 and neighbours.min() <= x <= neighbours.max()
        gap = neighbours.max() - neighbours.min() if len(neighbours) == 2 else abs(down - x)
        p = (x - neighbours.min()) / gap if gap else 0.0
        bound = 5 * gap * np.sqrt(max(p * (1 - p), 1e-12) / n) + 1e-12
        assert abs(got.mean() - float(x)) <= bound, (x, got.mean(), bound)


@pytest.mark.parametrize("dtype", SIXTEEN)
def test_one_step_is_unbiased_across_seeds(dtype, rng):
    """Over 400 seeds, the mean of the rounded params is the float32 step's result."""
    n, seeds = 64, 400
    start = (1.0 + rng.random(n)).astype(dtype)
    grad = rng.standard_normal(n).astype(F32)
    exact = fastadam.Adam(start.astype(F32), lr=1e-3)
    exact.step(grad)
    draws = []
    for seed in range(seeds):
        p = start.copy()
        fastadam.Adam(p, lr=1e-3, stochastic_rounding=True, seed=seed).step(grad)
        draws.append(p.astype(np.float64))
    draws = np.array(draws)
    spacing = np.abs(np.nextafter(exact.params.astype(dtype), np.inf, dtype=dtype).astype(
        np.float64) - exact.params.astype(dtype).astype(np.float64)) if dtype == F16 else \
        2.0 ** (np.floor(np.log2(np.abs(exact.params.astype(np.float64)))) - 7)
    error = np.abs(draws.mean(axis=0) - exact.params.astype(np.float64))
    assert np.all(error <= 5 * spacing * np.sqrt(0.25 / seeds) + 1e-9)


def drift(dtype, *, stochastic, kahan, steps=1000, n=2000, lr=1e-4, seed=0):
    """A 16-bit run with tiny updates against the float32 trajectory: (the mean |error|,
    the mean signed error), each relative to how far float32 moved."""
    rng = np.random.default_rng(seed)
    start = (1.0 + rng.random(n)).astype(dtype)
    reference = fastadam.Adam(start.astype(F32), lr=lr)
    opt = fastadam.Adam(start.copy(), lr=lr, kahan_summation=kahan,
                        stochastic_rounding=stochastic)
    for _ in range(steps):
        g = rng.standard_normal(n).astype(F32) + 0.5
        reference.step(g)
        opt.step(g)
    want = reference.params.astype(np.float64)
    moved = np.abs(want - start.astype(np.float64)).mean()
    error = opt.params.astype(np.float64) - want
    return np.abs(error).mean() / moved, error.mean() / moved


def test_a_thousand_bfloat16_steps_track_float32():
    """Updates 1/80 of bfloat16's spacing: round to nearest never moves; stochastic
    rounding moves on average exactly as float32 (its mean error ~0) with a per-element
    spread of about spacing * sqrt(steps * p); Kahan summation follows float32 closely.
    The README reports the three errors (0.33, 0.043 and 1.0 of the distance moved)."""
    stochastic, stochastic_bias = drift(BF16, stochastic=True, kahan=False)
    kahan, _ = drift(BF16, stochastic=False, kahan=True)
    nearest, _ = drift(BF16, stochastic=False, kahan=False)
    assert nearest > 0.9  # stalled
    assert kahan < 0.1
    assert stochastic < 0.5 and abs(stochastic_bias) < 0.02  # unbiased


@pytest.mark.parametrize("dtype", SIXTEEN)
def test_the_same_bits_for_any_thread_count_and_path(dtype, rng):
    shapes = [(3001,), (17, 19), (70_003,)]
    params = [rng.standard_normal(s).astype(dtype) for s in shapes]
    grads = [[rng.standard_normal(s).astype(F32) for s in shapes] for _ in range(3)]
    runs = {}
    for name, kw in (("one thread", {"num_threads": 1}), ("all", {})):
        opt = fastadam.AdamW([p.copy() for p in params], lr=1e-2, stochastic_rounding=True,
                             seed=3, **kw)
        for g in grads:
            opt.step(g)
        runs[name] = opt.params
    each = fastadam.AdamW([p.copy() for p in params], lr=1e-2, stochastic_rounding=True,
                          seed=3)
    for g in grads:  # mixed gradient dtypes: one kernel call per array, not one region
        each.step([g[0].astype(np.float64), *g[1:]])
    runs["each"] = each.params
    for name in runs:
        for a, b in zip(runs[name], runs["all"]):
            np.testing.assert_array_equal(a.view(np.uint16), b.view(np.uint16), err_msg=name)


def test_the_numpy_baseline_rounds_with_the_same_bits(rng):
    p = rng.standard_normal(5001).astype(BF16)
    g = rng.standard_normal(5001).astype(F32)
    out = {}
    for backend in ("cpu", "numpy"):
        q = p.copy()
        opt = fastadam.Adam(q, lr=1e-2, backend=backend, stochastic_rounding=True, seed=9)
        for _ in range(3):
            opt.step(g)
        out[backend] = q
    assert np.mean(out["cpu"] == out["numpy"]) > 0.999  # float32 order of operations aside


def test_save_and_load_continue_the_same_bits(rng, tmp_path):
    p = rng.standard_normal(4099).astype(BF16)
    grads = [rng.standard_normal(4099).astype(F32) for _ in range(6)]
    straight = fastadam.Adam(p.copy(), lr=1e-2, stochastic_rounding=True, seed=11)
    for g in grads:
        straight.step(g)
    first = fastadam.Adam(p.copy(), lr=1e-2, stochastic_rounding=True, seed=11)
    for g in grads[:3]:
        first.step(g)
    first.save(tmp_path / "sr.npz")
    assert first.state_dict()["param_groups"][0]["seed"] == 11
    resumed = fastadam.Adam(first.params.copy(), lr=1e-2, stochastic_rounding=True, seed=0)
    resumed.load(tmp_path / "sr.npz")  # the seed travels: 11, not 0
    for g in grads[3:]:
        resumed.step(g)
    np.testing.assert_array_equal(resumed.params.view(np.uint16), straight.params.view(np.uint16))


def test_sparse_tables_round_stochastically_by_position(rng):
    table = rng.standard_normal((301, 16)).astype(BF16)
    indices = rng.integers(0, 301, 97)
    values = rng.standard_normal((97, 16)).astype(F32)
    out = {}
    for backend, threads in (("cpu", 1), ("cpu", None), ("numpy", None)):
        t = table.copy()
        opt = fastadam.SparseAdam(t, lr=1e-2, backend=backend, num_threads=threads,
                                  stochastic_rounding=True, seed=5)
        for _ in range(3):
            opt.step(indices, values)
        out[(backend, threads)] = t
    np.testing.assert_array_equal(out[("cpu", 1)].view(np.uint16),
                                  out[("cpu", None)].view(np.uint16))
    assert np.mean(out[("cpu", 1)] == out[("numpy", None)]) > 0.999
    assert opt.options["stochastic_rounding"] and opt.options["kahan_summation"] is False


def test_mixed_lists_round_only_their_16_bit_params(rng):
    params = [rng.standard_normal(300).astype(BF16), rng.standard_normal(300).astype(F32)]
    grads = [rng.standard_normal(300).astype(F32) for _ in params]
    mixed = fastadam.Adam([p.copy() for p in params], stochastic_rounding=True)
    alone = fastadam.Adam(params[1].copy())
    mixed.step(grads)
    alone.step(grads[1])
    np.testing.assert_array_equal(mixed.params[1], alone.params)


def test_torch_drop_in_rounds_bfloat16_params_stochastically(rng):
    torch = optional("torch")
    import fastadam.torch as ft

    start = torch.from_numpy(rng.standard_normal(5000).astype(np.float32)).to(torch.bfloat16)
    grad = torch.from_numpy(rng.standard_normal(5000).astype(np.float32)).to(torch.bfloat16)
    results = []
    for seed in (1, 1, 2):
        p = torch.nn.Parameter(start.clone())
        opt = ft.AdamW([p], lr=1e-3, stochastic_rounding=True, seed=seed)
        p.grad = grad.clone()
        opt.step()
        results.append(p.detach().clone())
        assert opt.state_dict()["param_groups"][0]["seed"] == seed
    assert torch.equal(results[0], results[1]) and not torch.equal(results[0], results[2])
    nearest = torch.nn.Parameter(start.clone())
    nearest.grad = grad.clone()
    ft.AdamW([nearest], lr=1e-3).step()  # the same float32 arithmetic, rounded to nearest
    # The float32 result's lower or upper neighbour; round to nearest gives one of them.
    apart = (results[0].view(torch.int16).int() - nearest.detach().view(torch.int16).int()).abs()
    assert int(apart.max()) <= 1 and bool((apart == 1).any())


@pytest.mark.parametrize("kw,match", [
    ({"stochastic_rounding": True, "kahan_summation": True}, "stochastic_rounding and kahan"),
    ({"stochastic_rounding": True, "master_weights": True}, "stochastic_rounding and master"),
    ({"stochastic_rounding": "yes"}, "stochastic_rounding"),
    ({"stochastic_rounding": True, "seed": 1.5}, "seed"),
    ({"stochastic_rounding": True, "seed": True}, "seed"),
])
def test_bad_options_are_refused_by_name(kw, match):
    with pytest.raises((TypeError, ValueError), match=match):
        fastadam.Adam(np.zeros(3, BF16), **kw)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_wide_params_refuse_stochastic_rounding(dtype):
    with pytest.raises(ValueError, match="stochastic_rounding is for float16 and bfloat16"):
        fastadam.Adam(np.zeros(3, dtype), stochastic_rounding=True)
    with pytest.raises(ValueError, match="stochastic_rounding"):
        fastadam.SparseAdam(np.zeros((3, 2), dtype), stochastic_rounding=True)


@pytest.mark.parametrize("kind", ["8bit", "sparse"])
def test_torch_8bit_and_sparse_drop_ins_round_stochastically(kind, rng):
    torch = optional("torch")
    import fastadam.torch as ft

    n = 5000
    start = torch.from_numpy(rng.standard_normal((n // 50, 50)).astype(np.float32))
    start = start.to(torch.bfloat16)
    rows = torch.from_numpy(rng.integers(0, n // 50, 30))
    values = torch.from_numpy(rng.standard_normal((30, 50)).astype(np.float32)).to(torch.bfloat16)
    dense = torch.from_numpy(rng.standard_normal((n // 50, 50)).astype(np.float32)).to(
        torch.bfloat16)
    results = []
    for seed in (1, 1, 2, None):
        p = torch.nn.Parameter(start.clone())
        kw = {} if seed is None else {"stochastic_rounding": True, "seed": seed}
        if kind == "8bit":
            opt = ft.AdamW8bit([p], lr=1e-3, **kw)
            p.grad = dense.clone()
        else:
            opt = ft.SparseAdam([p], lr=1e-3, **kw)
            p.grad = torch.sparse_coo_tensor(rows[None], values, p.shape)
        opt.step()
        results.append(p.detach().clone())
        if seed is not None:
            assert opt.state_dict()["param_groups"][0]["seed"] == seed
    same, again, other, nearest = results
    assert torch.equal(same, again) and not torch.equal(same, other)
    apart = (same.view(torch.int16).int() - nearest.view(torch.int16).int()).abs()
    assert int(apart.max()) <= 1 and bool((apart == 1).any())
