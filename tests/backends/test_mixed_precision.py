"""16-bit params and states, mixed grad dtypes, Kahan summation, master weights,
loss scaling and non-finite skipping, against the float64 formula."""

import platform
import re

import numpy as np
import pytest
from helpers import assert_same_floats, optional
from reference import adam_f64

import fastadam

ml_dtypes = optional("ml_dtypes")
BF16 = np.dtype(ml_dtypes.bfloat16)
F16 = np.dtype(np.float16)
F32 = np.dtype(np.float32)
SIXTEEN = [F16, BF16]
BACKENDS = ["cpu", "numpy"]


def spacing(x, dtype):
    """The distance to the next representable value of ``dtype`` above |x|."""
    x = np.abs(np.asarray(x, np.float64)).astype(dtype)
    bits = x.view(np.uint16) + 1
    return bits.view(dtype).astype(np.float64) - x.astype(np.float64)


def assert_rounded_from(got, exact, dtype):
    """``got`` is ``exact`` rounded to ``dtype``: at most one spacing off (ties, and the
    float32 arithmetic, whose absolute error where terms cancel to ~0 is a float32 ulp of
    the array's scale), and equal to the rounding for almost every element."""
    got = got.astype(np.float64)
    err = np.abs(got - exact)
    float32_floor = 2.0**-23 * np.abs(exact).max()
    assert np.all(err <= spacing(exact, dtype) * 1.0001 + float32_floor)
    assert np.mean(got == exact.astype(dtype).astype(np.float64)) > 0.99


def state(rng, n, param_dtype, grad_dtype, state_dtype):
    param = rng.standard_normal(n).astype(param_dtype)
    grad = rng.standard_normal(n).astype(grad_dtype)
    m = (0.1 * rng.standard_normal(n)).astype(state_dtype)
    v = (0.01 * rng.random(n)).astype(state_dtype)
    return param, grad, m, v


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("param_dtype,grad_dtype,state_dtype", [
    (BF16, BF16, F32), (F16, F16, F32), (BF16, F32, F32), (F32, BF16, F32),
    (F32, F16, F32), (BF16, BF16, BF16), (F16, F32, F16), (np.dtype(np.float64), F32, F32),
])
def test_mixed_dtypes_match_float64(rng, backend, param_dtype, grad_dtype, state_dtype):
    n = 4099
    param, grad, m, v = state(rng, n, param_dtype, grad_dtype, state_dtype)
    kw = {"lr": 0.05, "weight_decay": 0.1, "step": 3}
    want_p, want_m, want_v, _, _ = adam_f64(param, grad, m, v, None, **kw)
    fastadam.adam_step(param, grad, m, v, backend=backend, **kw)
    assert param.dtype == param_dtype and m.dtype == state_dtype
    for got, want, dtype in ((param, want_p, param_dtype), (m, want_m, state_dtype),
                             (v, want_v, state_dtype)):
        if dtype.itemsize == 2:
            assert_rounded_from(got, want, dtype)
        else:
            rtol = 1e-6 if dtype == F32 else 1e-14
            np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol * np.abs(want).max())


def drift(dtype, *, kahan, master, steps=300, n=2000, lr=1e-4, seed=0):
    """Train 16-bit params with tiny updates; return (16-bit result, float32 trajectory)."""
    rng = np.random.default_rng(seed)
    start = (1.0 + rng.random(n)).astype(dtype)  # spacing 2**-7 (bf16): far above lr
    reference = fastadam.Adam(start.astype(np.float32), lr=lr)
    opt = fastadam.Adam(start.copy(), lr=lr, kahan_summation=kahan, master_weights=master)
    for _ in range(steps):
        g = rng.standard_normal(n).astype(np.float32) + 0.5
        reference.step(g)
        opt.step(g)
    return opt, reference.params


@pytest.mark.parametrize("dtype", SIXTEEN)
def test_kahan_summation_follows_float32(dtype):
    plain, want = drift(dtype, kahan=False, master=False)
    kahan, _ = drift(dtype, kahan=True, master=False)
    start = drift(dtype, kahan=False, master=False, steps=0)[0].params.astype(np.float32)
    moved = np.abs(want - start).mean()
    assert moved > 0.01  # the float32 params did move
    # Round to nearest loses every update below half a spacing: the params barely move.
    assert np.abs(plain.params.astype(np.float32) - want).mean() > 0.5 * moved
    # With the compensation, param + comp follows the float32 trajectory: the 16-bit
    # compensation keeps 8 (bf16) or 11 (fp16) bits of each step's residual, so what
    # is left is a random walk far below the movement.
    comp = kahan.state_dict()["state"][0]["kahan_comp"]
    total = kahan.params.astype(np.float32) + comp.astype(np.float32)
    assert np.abs(total - want).mean() < 0.01 * moved
    assert np.abs(total - want).max() < 0.05 * moved
    # And the params are that total, rounded.
    assert np.all(np.abs(kahan.params.astype(np.float64) - total) <= spacing(total, dtype))


@pytest.mark.parametrize("dtype", SIXTEEN)
def test_master_weights_are_the_float32_run(dtype):
    opt, want = drift(dtype, kahan=False, master=True, steps=50)
    master = opt.state_dict()["state"][0]["master_params"]
    assert master.dtype == np.float32
    np.testing.assert_array_equal(master, want)  # the same float32 arithmetic, bit for bit
    np.testing.assert_array_equal(opt.params, master.astype(dtype))


def test_sixteen_bit_defaults():
    opt = fastadam.Adam(np.zeros(5, BF16))
    assert opt.options == {"state_dtype": "float32", "kahan_summation": True,
                           "master_weights": False, "skip_nonfinite": False,
                           "stochastic_rounding": False, "seed": 0, "max_grad_norm": None}
    assert fastadam.Adam(np.zeros(5, F16), master_weights=True).options["kahan_summation"] is False
    light = fastadam.AdamW(np.zeros(5, BF16), state_dtype=ml_dtypes.bfloat16)
    assert light.state_dict()["state"][0]["exp_avg"].dtype == BF16
    assert fastadam.Adam(np.zeros(5)).options["state_dtype"] == "float64"


@pytest.mark.parametrize("kwargs,error", [
    ({"kahan_summation": True}, ValueError),
    ({"master_weights": True}, ValueError),
    ({"state_dtype": np.int8}, TypeError),
    ({"state_dtype": "float128"}, TypeError),
])
def test_sixteen_bit_options_refused_for_float32(kwargs, error):
    name = next(iter(kwargs))
    with pytest.raises(error, match=name):
        fastadam.Adam(np.zeros(5, np.float32), **kwargs)


def test_kahan_and_master_exclude_each_other():
    with pytest.raises(ValueError, match="kahan_summation"):
        fastadam.Adam(np.zeros(5, BF16), kahan_summation=True, master_weights=True)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [F32, BF16])
def test_grad_scale_divides_in_the_kernel(rng, backend, dtype):
    start = rng.standard_normal(777).astype(dtype)
    a = fastadam.Adam(start.copy(), lr=0.01, backend=backend)
    b = fastadam.Adam(start.copy(), lr=0.01, backend=backend)
    for _ in range(5):
        g = rng.standard_normal(777).astype(np.float32)
        a.step(g)
        b.step(g * 4096.0, grad_scale=4096.0)  # a power of two: exactly the same gradients
    np.testing.assert_array_equal(a.params, b.params)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("grad_dtype", [F32, BF16, F16])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_skip_nonfinite_changes_nothing(rng, backend, grad_dtype, bad):
    n = 1001
    opt = fastadam.AdamW(rng.standard_normal(n).astype(np.float32), amsgrad=True,
                         skip_nonfinite=True, backend=backend)
    assert opt.step(rng.standard_normal(n).astype(grad_dtype)) is True
    before = opt.params.copy(), opt.state_dict()
    g = rng.standard_normal(n).astype(grad_dtype)
    g[rng.integers(n)] = bad
    assert opt.step(g) is False
    assert opt.step_count == 1
    np.testing.assert_array_equal(opt.params, before[0])
    for k, a in before[1]["state"][0].items():
        np.testing.assert_array_equal(opt.state_dict()["state"][0][k], a)
    assert opt.step(rng.standard_normal(n).astype(grad_dtype)) is True
    assert opt.step_count == 2


def test_state_dict_round_trip_with_kahan_and_bf16_state(rng):
    start = rng.standard_normal(300).astype(BF16)
    grads = [rng.standard_normal(300).astype(np.float32) for _ in range(8)]
    kw = {"lr": 1e-3, "state_dtype": ml_dtypes.bfloat16}
    whole = fastadam.Adam(start.copy(), **kw)
    for g in grads:
        whole.step(g)
    first = fastadam.Adam(start.copy(), **kw)
    for g in grads[:4]:
        first.step(g)
    resumed = fastadam.Adam(first.params.copy(), **kw)
    resumed.load_state_dict(first.state_dict())
    for g in grads[4:]:
        resumed.step(g)
    np.testing.assert_array_equal(resumed.params, whole.params)
    with pytest.raises(ValueError, match="kahan_summation"):
        fastadam.Adam(start.copy(), kahan_summation=False).load_state_dict(first.state_dict())


@pytest.mark.parametrize("f16c", [False, True], ids=["portable", "f16c"])
def test_converters_are_exact(f16c):
    """Every 16-bit pattern decodes, and float32 values encode, as NumPy/ml_dtypes do:
    the portable bit operations, and float16 through the CPU's F16C instructions."""
    import numba

    from fastadam._backends.cpu import runtime

    if f16c and not runtime.hardware_float16():
        pytest.skip("this CPU has no F16C")

    @numba.njit
    def run(fn, x, out):
        for i in range(x.size):
            out[i] = fn(x[i])

    rng = np.random.default_rng(7)
    patterns = np.arange(1 << 16, dtype=np.uint16)
    values = np.concatenate([
        (rng.standard_normal(200_000) * 10.0 ** rng.integers(-10, 6, 200_000)).astype(F32),
        rng.integers(0, 1 << 32, 200_000, dtype=np.uint64).astype(np.uint32).view(F32),
        np.array([0, -0.0, np.inf, -np.inf, 65504, 65520, 6e-8, 2.98e-8, 1e-45], F32),
    ])
    for name, dtype in (("float16", F16), ("bfloat16", BF16)):
        load, store = runtime.converters("float32", f16c)[name]
        decoded = np.empty(patterns.size, F32)
        run(load, patterns, decoded)
        want = patterns.view(dtype).astype(F32)
        assert_same_floats(decoded, want, name)
        encoded = np.empty(values.size, np.uint16)
        run(store, values, encoded)
        with np.errstate(all="ignore"):
            want = values.astype(dtype).view(np.uint16)
        finite = ~np.isnan(values)
        np.testing.assert_array_equal(encoded[finite], want[finite], err_msg=name)
        assert np.isnan(encoded[~finite].view(dtype).astype(F32)).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_mixed_precision_functional_state_arrays(rng, backend):
    """adam_step takes the Kahan compensation and master params as arrays."""
    param = rng.standard_normal(500).astype(BF16)
    grad = rng.standard_normal(500).astype(BF16)
    m, v = np.zeros(500, F32), np.zeros(500, F32)
    comp = np.zeros(500, BF16)
    master = param.astype(F32)
    p2, m2, v2 = param.copy(), m.copy(), v.copy()
    fastadam.adam_step(param, grad, m, v, step=1, kahan_comp=comp, backend=backend, lr=1e-2)
    fastadam.adam_step(p2, grad, m2, v2, step=1, master_params=master, backend=backend, lr=1e-2)
    np.testing.assert_array_equal(param, p2)  # same rounding of the same float32 result
    # The compensation is what rounding the float32 result lost, itself rounded.
    np.testing.assert_array_equal(comp, (master - param.astype(F32)).astype(BF16))


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="reads x86 assembly")
@pytest.mark.parametrize("param,f16c", [("float16", False), ("float16", None),
                                         ("bfloat16", None)], ids=["f16-portable", "f16", "bf16"])
@pytest.mark.parametrize("state", ["float32", "bfloat16"])
@pytest.mark.parametrize("option", ["round", "kahan", "master", "amsgrad"])
def test_sixteen_bit_kernels_vectorize(param, f16c, state, option):
    """Every 16-bit variant of the CPU kernel is one vectorized loop: packed square roots,
    and no per-element call (float16 with Kahan once stayed a call, at 3% of the limit)."""
    import numba

    from fastadam._backends.cpu import dense
    from fastadam._core.hyper import Flags

    flags = Flags(maximize=False, amsgrad=option == "amsgrad", nesterov=False, l2_decay=False,
                  decoupled_decay=False, kahan=option == "kahan", master=option == "master",
                  param=param, grad=param, state=state)
    cached = dense.fused_kernel(flags, f16c)
    # A fresh compile: a kernel loaded from the disk cache has no assembly text to read.
    kernel = numba.njit(**cached.targetoptions)(cached.py_func)
    u16 = np.zeros(64, np.uint16)
    moments = np.zeros(64, np.uint16 if state == "bfloat16" else F32)
    kernel(u16, u16.copy(), moments, moments.copy(), moments.copy(), u16.copy(),
           np.zeros(64, F32), np.zeros(11, F32), np.uint32(0))
    (asm,) = kernel.inspect_asm().values()
    assert re.search(r"vsqrtps\s+%[yz]mm", asm), "the loop did not vectorize"
    assert not re.search(r"^_ZN8fastadam8_element4make.*update.*:$", asm, re.M), \
        "the element update was not inlined"


def test_state_in_each_arrays_own_dtype(rng):
    """state_dtype="param" keeps every array's moments in its own dtype (torch's layout):
    the same results as one optimizer per array with that state dtype."""
    kinds = ((1000, F16), (37, F32), (5, np.float64))
    arrays = [rng.standard_normal(n).astype(d) for n, d in kinds]
    together = fastadam.Adam([a.copy() for a in arrays], lr=0.01, state_dtype="param")
    apart = [fastadam.Adam(a.copy(), lr=0.01, state_dtype=a.dtype) for a in arrays]
    for _ in range(4):
        grads = [rng.standard_normal(a.shape).astype(a.dtype) for a in arrays]
        together.step(grads)
        for opt, g in zip(apart, grads):
            opt.step(g)
    state = together.state_dict()["state"]
    for i, (a, opt) in enumerate(zip(arrays, apart)):
        assert state[i]["exp_avg"].dtype == a.dtype
        np.testing.assert_array_equal(together.params[i], opt.params)
    with pytest.raises(TypeError, match="state_dtype"):
        fastadam.Adam(arrays[1].copy(), state_dtype="params")
