"""8-bit states: the format against bitsandbytes, the fused step against references."""

import numpy as np
import pytest
from helpers import LOW_BIT_OPTIONS, optional

import fastadam
from fastadam import quant8

F32 = np.float32


def _bnb():
    optional("torch")
    return optional("bitsandbytes")


@pytest.mark.parametrize("signed", [True, False])
def test_maps_are_bitsandbytes_bit_for_bit(signed):
    want = _bnb().functional.create_dynamic_map(signed=signed).numpy()
    got = quant8.dynamic_map(signed)
    assert got.dtype == F32 and got.shape == (256,)
    np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32))


def _probe_values(signed: bool, rng) -> np.ndarray:
    q = quant8.dynamic_map(signed)
    mids = (q[:-1] + q[1:]) * F32(0.5)
    values = [q, mids, np.nextafter(mids, F32(2)), np.nextafter(mids, F32(-2)),
              F32([0.0, -0.0, 1.0, -1.0, 1e-30, -1e-30, 2.0**-32, 1e-7, -1e-7]),
              rng.uniform(-1, 1, 5000).astype(F32),
              (rng.standard_normal(5000) * 1e-4).astype(F32)]
    x = np.clip(np.concatenate(values), -1, 1).astype(F32)
    return x if signed else np.abs(x)


@pytest.mark.parametrize("signed", [True, False])
def test_the_table_encoder_is_the_cuda_kernels_search(rng, signed):
    # Codes, midpoints and their neighbours, 0, -0, +-1, tiny and random values.
    x = _probe_values(signed, rng)
    np.testing.assert_array_equal(quant8.encode(x, signed), quant8.encode_reference(x, signed))


@pytest.mark.parametrize("signed", [True, False])
def test_the_encoder_picks_the_nearest_code(rng, signed):
    """Brute force over all 256 codes: the nearest one, wherever the value is not on a
    float32 midpoint (there the search's tie rule decides: the even code). For m, a
    tiny negative value takes the nearest negative code, as bitsandbytes keeps signs."""
    q = quant8.dynamic_map(signed)
    x = _probe_values(signed, rng)
    codes = quant8.encode(x, signed).astype(int)
    distance = np.abs(x[:, None].astype(np.float64) - q[None, :].astype(np.float64))
    best = distance.min(axis=1)
    mine = distance[np.arange(x.size), codes]
    tie = np.isin(x, (q[:-1] + q[1:]) * F32(0.5)) | np.isin(-x, (q[:-1] + q[1:]) * F32(0.5))
    negative = np.signbit(x) & (np.abs(x) < q[128] / 2) if signed else np.zeros_like(tie)
    ok = tie | negative
    np.testing.assert_array_equal(mine[~ok], best[~ok])
    assert (codes[tie] % 2 == 0).all()
    if signed:
        assert (q[codes[negative]] < 0).all()


@pytest.mark.parametrize("n", [1, 255, 256, 257, 4099, 10_000])
def test_round_trip_error_and_ragged_blocks(rng, n):
    x = rng.standard_normal(n).astype(F32)
    x[: min(n, 300)] = 0.0  # an all-zero block (and a partly zero one)
    codes, absmax = quant8.quantize(x, True)
    assert codes.dtype == np.uint8 and codes.shape == (n,)
    assert absmax.shape == (quant8.blocks(n),) and absmax[0] == 0
    back = quant8.dequantize(codes, absmax, True)
    assert (back[: min(n, 256)] == 0).all()
    if n >= 4096:  # bitsandbytes' own bound for randn blocks
        assert np.abs(back - x)[300:].mean() < 0.011
    assert np.abs(back).max() <= np.abs(x).max()
    top = np.argmax(x)  # the largest positive element is exact (code 1.0)
    if x[top] > 0:
        assert back[top] == x[top]


def _state(n, amsgrad=False):
    blocks = quant8.blocks(n)
    codes = [np.zeros(n, np.uint8) for _ in range(3 if amsgrad else 2)]
    absmax = [np.zeros(blocks, F32) for _ in range(3 if amsgrad else 2)]
    return codes, absmax


def _step(param, grad, codes, absmax, step, backend, **options):
    extra = {}
    if len(codes) == 3:
        extra = dict(v_max_codes=codes[2], v_max_absmax=absmax[2], amsgrad=True)
    fastadam.adam_step_8bit(param, grad, codes[0], codes[1], absmax[0], absmax[1], step=step,
                            backend=backend, **extra, **options)


OPTIONS = LOW_BIT_OPTIONS


@pytest.mark.parametrize("option", OPTIONS)
@pytest.mark.parametrize("n", [4099, 70_001])
def test_fused_kernel_equals_the_three_pass_reference(rng, option, n):
    """The one-pass kernel and decode / NumPy step / encode agree over five steps to float32
    rounding: params, absmax, and codes (a rounding apart can move a value across a
    midpoint: then by one code, rarely)."""
    options = dict(OPTIONS[option])
    amsgrad = options.pop("amsgrad", False)
    param = rng.standard_normal(n).astype(F32)
    twin = param.copy()
    state, twin_state = _state(n, amsgrad), _state(n, amsgrad)
    for step in range(1, 6):
        grad = rng.standard_normal(n).astype(F32)
        _step(param, grad, *state, step, "cpu", lr=1e-2, **options)
        _step(twin, grad, *twin_state, step, "numpy", lr=1e-2, **options)
    off = np.abs(param - twin) > 1e-6 * (1 + np.abs(twin))
    assert off.mean() < 1e-3 and np.abs(param - twin).max() < 1e-2  # < one step of lr
    for a, b in zip(state[1], twin_state[1]):
        np.testing.assert_allclose(a, b, rtol=1e-6)
    for a, b in zip(state[0], twin_state[0]):
        apart = np.abs(a.astype(int) - b.astype(int))
        assert apart.max() <= 1 and (apart > 0).mean() < 0.01


@pytest.mark.parametrize("kind", ["float16", "bfloat16", "float64"])
def test_every_param_dtype_with_its_options(rng, kind):
    if kind == "bfloat16":
        dtype = np.dtype(optional("ml_dtypes").bfloat16)
    else:
        dtype = np.dtype(kind)
    n = 5000
    start = rng.standard_normal(n).astype(dtype)
    extras = [{}]
    if kind != "float64":
        extras = [{"kahan_comp": np.zeros(n, dtype)},
                  {"master_params": start.astype(F32)}]
    for extra in extras:
        results = []
        for backend in ("cpu", "numpy"):
            param = start.copy()
            own = {k: v.copy() for k, v in extra.items()}
            state = _state(n)
            for step in range(1, 4):
                grad = np.random.default_rng(step).standard_normal(n).astype(dtype)
                _step(param, grad, *state, step, backend, lr=1e-2, **own)
            results.append((param.astype(np.float64), state))
        (a, sa), (b, sb) = results
        tol = 1e-12 if kind == "float64" else 1e-2
        np.testing.assert_allclose(a, b, rtol=tol, atol=tol)
        assert not np.array_equal(a, start.astype(np.float64))


def test_nonfinite_gradient_elements_stay_in_their_element(rng):
    n = 1000
    param = rng.standard_normal(n).astype(F32)
    state = _state(n)
    grad = rng.standard_normal(n).astype(F32)
    _step(param, grad, *state, 1, "cpu")
    before = [a.copy() for a in state[1]]
    grad[10], grad[600] = np.nan, np.inf
    _step(param, grad, *state, 2, "cpu")
    assert np.isnan(param[10]) and not np.isfinite(param[600])
    assert np.isfinite(np.delete(param, [10, 600])).all()
    q = quant8.dynamic_map(True)
    assert q[state[0][0][10]] == 0 and q[state[0][0][600]] == 0  # stored as 0
    assert np.isfinite(state[1][0]).all() and np.isfinite(state[1][1]).all()
    assert (state[1][0] > 0).all() and not np.array_equal(state[1][1], before[1])


@pytest.mark.parametrize("case", ["codes_dtype", "codes_size", "absmax_size", "absmax_dtype",
                                  "read_only", "amsgrad_missing", "overlap", "device"])
def test_bad_input_is_refused_and_nothing_changes(rng, case):
    n = 3000
    param = rng.standard_normal(n).astype(F32)
    grad = rng.standard_normal(n).astype(F32)
    (m, v), (am, av) = _state(n)
    m[:] = 7
    kwargs = dict(step=1)
    if case == "codes_dtype":
        v = v.astype(np.int8)
    elif case == "codes_size":
        v = np.zeros(n + 1, np.uint8)
    elif case == "absmax_size":
        av = np.zeros(quant8.blocks(n) + 1, F32)
    elif case == "absmax_dtype":
        av = av.astype(np.float64)
    elif case == "read_only":
        m.flags.writeable = False
    elif case == "amsgrad_missing":
        kwargs["amsgrad"] = True
    elif case == "overlap":
        m = grad.view(np.uint8)[:n]  # m's codes in the gradient's memory
    elif case == "device":
        kwargs["backend"] = "cuda"
    snapshot = [a.copy() for a in (param, m, am, grad)]
    with pytest.raises((TypeError, ValueError, ImportError, RuntimeError)) as error:
        fastadam.adam_step_8bit(param, grad, m, v, am, av, **kwargs)
    if case != "device":
        assert any(name in str(error.value) for name in
                   ("v_codes", "v_absmax", "m_codes", "v_max", "grad", "param"))
    for a, b in zip((param, m, am, grad), snapshot):
        np.testing.assert_array_equal(a, b)


def _trajectories(rng, steps=50, n=8192):
    """Params after ``steps`` of 32-bit AdamW, of fastadam's 8-bit step, and of
    bitsandbytes' 8-bit AdamW on the same gradients."""
    torch = optional("torch")
    bnb = _bnb()
    start = rng.standard_normal(n).astype(F32)
    grads = [rng.standard_normal(n).astype(F32) for _ in range(steps)]
    fp32 = start.copy()
    opt32 = fastadam.AdamW(fp32, lr=1e-3)
    ours = start.copy()
    state = _state(n)
    theirs = torch.nn.Parameter(torch.from_numpy(start.copy()))
    opt_bnb = bnb.optim.AdamW8bit([theirs], lr=1e-3, weight_decay=0.01)
    for step, g in enumerate(grads, 1):
        opt32.step(g)
        _step(ours, g, *state, step, "cpu", lr=1e-3, weight_decay=0.01,
              decoupled_weight_decay=True)
        theirs.grad = torch.from_numpy(g.copy())
        opt_bnb.step()
    return start, fp32, ours, theirs.detach().numpy(), opt_bnb


def test_fifty_steps_follow_fp32_as_closely_as_bitsandbytes(rng):
    start, fp32, ours, theirs, _ = _trajectories(rng)
    movement = np.abs(fp32 - start).mean()
    ours_error = np.abs(ours - fp32).mean() / movement
    bnb_error = np.abs(theirs - fp32).mean() / movement
    assert ours_error <= bnb_error * 1.05 + 1e-3, (ours_error, bnb_error)
    assert ours_error < 0.05
    # and against bitsandbytes itself, within the 8-bit tolerance
    assert np.abs(ours - theirs).mean() / movement < 0.05


def test_torch_adamw8bit_state_dict_moves_to_bitsandbytes_and_back(rng):
    torch = optional("torch")
    bnb = _bnb()
    import fastadam.torch as ft

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.Tanh(),
                                torch.nn.Linear(128, 10))  # 8192 weights: 8-bit; the rest 32-bit
    x, y = torch.randn(256, 64), torch.randint(0, 10, (256,))

    def train(opt, steps):
        for _ in range(steps):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            opt.step()

    ours = ft.AdamW8bit(model.parameters(), lr=3e-3)
    train(ours, 10)
    state = ours.state[model[0].weight]
    assert state["state1"].dtype == torch.uint8 and state["absmax1"].shape == (32,)
    assert ours.state[model[0].bias]["state1"].dtype == torch.float32  # 128 < min_8bit_size
    saved = ours.state_dict()
    assert "__bnb_optimizer_quant_state__" in saved["state"][0]
    snapshot = [p.detach().clone() for p in model.parameters()]
    theirs = bnb.optim.AdamW8bit(model.parameters(), lr=3e-3)
    theirs.load_state_dict(saved)
    train(theirs, 5)
    after_bnb = [p.detach().clone() for p in model.parameters()]
    for p, s in zip(model.parameters(), snapshot):  # the same start, continued by fastadam
        p.data.copy_(s)
    again = ft.AdamW8bit(model.parameters(), lr=3e-3)
    again.load_state_dict(saved)
    train(again, 5)
    for a, b, s in zip(model.parameters(), after_bnb, snapshot):
        moved = (b - s).abs().mean()
        assert (a.detach() - b).abs().mean() <= 0.05 * moved + 1e-7
    back = ft.AdamW8bit(model.parameters(), lr=3e-3)
    back.load_state_dict(theirs.state_dict())  # bitsandbytes' checkpoint into fastadam
    assert back.state[model[0].weight]["step"] == 15


@pytest.mark.parametrize("entry,value,match", [
    ("qmap1", "reversed", "qmap1"), ("absmax2", "short", "absmax2"),
    ("state1", "float", "state1"), ("absmax1", "nan", "absmax1")])
def test_bad_8bit_state_dict_is_refused_unchanged(entry, value, match):
    torch = optional("torch")
    import fastadam.torch as ft

    p = torch.nn.Parameter(torch.randn(5000))
    opt = ft.Adam8bit([p])
    p.grad = torch.randn(5000)
    opt.step()
    saved = opt.state_dict()
    quant = saved["state"][0]["__bnb_optimizer_quant_state__"]
    before = {k: v.clone() for k, v in opt.state[p].items() if isinstance(v, torch.Tensor)}
    if value == "reversed":
        quant[entry] = quant[entry].flip(0)
    elif value == "short":
        quant[entry] = quant[entry][:-1]
    elif value == "float":
        quant[entry] = quant[entry].float()
    else:
        quant[entry] = quant[entry].clone()
        quant[entry][0] = float("nan")
    with pytest.raises(ValueError, match=match):
        opt.load_state_dict(saved)
    for k, v in before.items():
        assert torch.equal(opt.state[p][k], v)


def test_a_small_model_trains_like_torch_adamw():
    torch = optional("torch")
    import fastadam.torch as ft

    def run(cls):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.Tanh(),
                                    torch.nn.Linear(256, 10))
        x, y = torch.randn(512, 64), torch.randint(0, 10, (512,))
        opt = cls(model.parameters(), lr=3e-3)
        for _ in range(150):
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
        return loss.item()

    ours, reference = run(ft.AdamW8bit), run(torch.optim.AdamW)
    assert abs(ours - reference) <= 0.02 * reference + 1e-3, (ours, reference)


# --- fastadam.Adam(state_dtype="8bit") ---------------------------------------------------


def _params_8bit(rng, dtype=F32):
    # two arrays take 8-bit states (one ragged, one 2-D), one stays under min_8bit_size
    return [rng.standard_normal(5003).astype(dtype), rng.standard_normal((5, 1031)).astype(dtype),
            rng.standard_normal(999).astype(dtype)]


@pytest.mark.parametrize("option", OPTIONS)
def test_optimizer_steps_as_the_functional_8bit_step(rng, option):
    """Adam(state_dtype="8bit") on a list with groups is adam_step_8bit per array, bit for bit;
    arrays under min_8bit_size step as the 32-bit optimizer does."""
    options = dict(OPTIONS[option])
    scale = options.pop("grad_scale", None)
    amsgrad = options.get("amsgrad", False)
    params = _params_8bit(rng)
    twins = [p.copy() for p in params]
    small = fastadam.Adam([twins[2]], lr=1e-2, **options)
    groups = [{"params": params[:2]}, {"params": [params[2]], "lr": 1e-2}]
    opt = fastadam.Adam(groups, lr=2e-2, state_dtype="8bit", **options)
    assert opt.options["state_dtype"] == "8bit"
    states = [_state(p.size, amsgrad) for p in params[:2]]
    functional = {k: v for k, v in options.items() if k != "amsgrad"}
    for step in range(1, 5):
        grads = [rng.standard_normal(p.shape).astype(F32) for p in params]
        assert opt.step(grads, grad_scale=scale)
        for twin, g, state in zip(twins, grads, states):
            _step(twin, g, *state, step, "cpu", lr=2e-2, grad_scale=scale, **functional)
        small.step([grads[2]], grad_scale=scale)
    for a, b in zip(params, twins):
        np.testing.assert_array_equal(a, b)
    sd = opt.state_dict()
    for i, (codes, absmax) in enumerate(states):
        entry = sd["state"][i]
        assert entry["state1"].shape == params[i].shape and entry["absmax1"].dtype == F32
        for k, (c, a) in enumerate(zip(codes, absmax), 1):
            np.testing.assert_array_equal(entry[f"state{k}"].reshape(-1), c)
            np.testing.assert_array_equal(entry[f"absmax{k}"], a)
        np.testing.assert_array_equal(entry["qmap1"], quant8.dynamic_map(True))
    assert "exp_avg" in sd["state"][2] and "state1" not in sd["state"][2]


@pytest.mark.parametrize("kind", ["float16", "bfloat16", "float64"])
def test_optimizer_8bit_with_every_param_dtype(rng, kind):
    dtype = np.dtype(optional("ml_dtypes").bfloat16) if kind == "bfloat16" else np.dtype(kind)
    for extra in ([{}] if kind == "float64" else [{}, {"master_weights": True}]):
        params = _params_8bit(rng, dtype)[:1]
        start = params[0].copy()
        twin = params[0].copy()
        opt = fastadam.AdamW(params, lr=1e-2, state_dtype="8bit", **extra)
        state = _state(twin.size)
        comp = ({"master_params": twin.astype(F32)} if extra else
                {} if kind == "float64" else {"kahan_comp": np.zeros(twin.size, dtype)})
        for step in range(1, 4):
            g = rng.standard_normal(twin.size).astype(dtype)
            opt.step([g])
            _step(twin, g, *state, step, "cpu", lr=1e-2, weight_decay=1e-2,
                  decoupled_weight_decay=True, **comp)
        np.testing.assert_array_equal(params[0].view(np.uint8), twin.view(np.uint8))
        assert not np.array_equal(params[0].view(np.uint8), start.view(np.uint8))


def test_optimizer_8bit_save_load_continues_exactly(rng, tmp_path):
    params = _params_8bit(rng)
    opt = fastadam.AdamW(params, lr=1e-2, state_dtype="8bit", amsgrad=True)
    grads = [[rng.standard_normal(p.shape).astype(F32) for p in params] for _ in range(6)]
    for g in grads[:3]:
        opt.step(g)
    opt.save(tmp_path / "opt.npz")
    copies = [p.copy() for p in params]
    other = fastadam.AdamW(copies, lr=1e-2, state_dtype="8bit", amsgrad=True)
    other.load(tmp_path / "opt.npz")
    for g in grads[3:]:
        opt.step(g)
        other.step(g)
    for a, b in zip(params, copies):
        np.testing.assert_array_equal(a, b)
    assert other.step_count == 6


def test_optimizer_moments_convert_between_32_and_8_bits(rng):
    """A 32-bit state_dict loads into an 8-bit optimizer quantized, and back decoded."""
    params = _params_8bit(rng)
    opt32 = fastadam.Adam([p.copy() for p in params], lr=1e-2)
    for _ in range(3):
        opt32.step([rng.standard_normal(p.shape).astype(F32) for p in params])
    sd32 = opt32.state_dict()
    opt8 = fastadam.Adam([p.copy() for p in params], lr=1e-2, state_dtype="8bit")
    opt8.load_state_dict(sd32)
    sd8 = opt8.state_dict()
    for i in (0, 1):
        m = sd32["state"][i]["exp_avg"].reshape(-1)
        codes, absmax = quant8.quantize(m, True)
        np.testing.assert_array_equal(sd8["state"][i]["state1"].reshape(-1), codes)
        np.testing.assert_array_equal(sd8["state"][i]["absmax1"], absmax)
    back = fastadam.Adam([p.copy() for p in params], lr=1e-2)
    back.load_state_dict(sd8)
    for i in (0, 1):
        v = back.state_dict()["state"][i]["exp_avg_sq"]
        want = quant8.dequantize(sd8["state"][i]["state2"], sd8["state"][i]["absmax2"], False)
        np.testing.assert_array_equal(v.reshape(-1), want)
        exact = sd32["state"][i]["exp_avg_sq"]
        assert np.abs(v - exact).max() <= 0.1 * exact.max()  # within the 8-bit error
    np.testing.assert_array_equal(back.state_dict()["state"][2]["exp_avg"],
                                  sd32["state"][2]["exp_avg"])


@pytest.mark.parametrize("entry,change,match", [
    ("qmap1", lambda q: q[::-1].copy(), "qmap1"),
    ("qmap2", lambda q: quant8.dynamic_map(True).copy(), "qmap2"),
    ("state1", lambda c: c.astype(np.int16), "state1"),
    ("state2", lambda c: c[:-1], "state2"),
    ("absmax1", lambda a: a.astype(np.float64), "absmax1"),
    ("absmax2", lambda a: -a, "absmax2"),
    ("absmax2", lambda a: a[:-1], "absmax2"),
    ("state1", None, "exp_avg_sq"),  # 32-bit moments, but not all of them
])
def test_optimizer_refuses_a_bad_8bit_state_dict_unchanged(rng, entry, change, match):
    params = _params_8bit(rng)
    opt = fastadam.Adam(params, lr=1e-2, state_dtype="8bit")
    opt.step([rng.standard_normal(p.shape).astype(F32) for p in params])
    sd = opt.state_dict()
    bad = opt.state_dict()
    if change is None:
        del bad["state"][1][entry]
        bad["state"][1]["exp_avg"] = np.zeros(params[1].shape, F32)  # the other layout, half
    else:
        bad["state"][1][entry] = change(bad["state"][1][entry])
    bad["state"][0]["step"] = 7
    with pytest.raises((ValueError, TypeError), match=match):
        opt.load_state_dict(bad)
    now = opt.state_dict()
    assert now["state"][0]["step"] == 1
    for i in range(3):
        for k, v in sd["state"][i].items():
            np.testing.assert_array_equal(now["state"][i][k], v)


def test_optimizer_8bit_skips_nonfinite_and_refuses_overlap(rng):
    params = _params_8bit(rng)
    opt = fastadam.Adam(params, lr=1e-2, state_dtype="8bit", skip_nonfinite=True)
    opt.step([rng.standard_normal(p.shape).astype(F32) for p in params])
    before = [p.copy() for p in params]
    sd = opt.state_dict()
    grads = [rng.standard_normal(p.shape).astype(F32) for p in params]
    grads[0][4097] = np.inf
    assert opt.step(grads) is False
    with pytest.raises(ValueError, match="grads"):
        opt.step([params[0], *grads[1:]])  # a gradient that is the params
    for a, b in zip(params, before):
        np.testing.assert_array_equal(a, b)
    assert opt.step_count == 1
    for k, v in sd["state"][0].items():
        np.testing.assert_array_equal(opt.state_dict()["state"][0][k], v)


def test_state_dtype_8bit_is_a_cpu_state():
    with pytest.raises(TypeError, match="state_dtype"):
        fastadam.Adam(np.zeros(8, F32), state_dtype="2bit")


def _own_state(opt) -> tuple[list, list]:
    """Copies of an optimizer's moments (codes) and scales, as a wrapper would hold them."""
    moments = [[None if a is None else a.copy() for a in s.state[:3]] for s in opt._slots]
    scales = [None if s.absmax is None else [None if a is None else a.copy() for a in s.absmax]
              for s in opt._slots]
    return moments, scales


@pytest.mark.parametrize("fmt", ["8bit", "4bit"])
def test_adopted_low_bit_state_is_stepped_in_place(rng, fmt):
    """A wrapper's own codes and scales (``_adopt_state``) step in place, bit for bit as
    the optimizer's own state; a 32-bit slot beside them adopts float moments."""
    params = _params_8bit(rng)
    own = fastadam.AdamW([p.copy() for p in params], lr=1e-2, state_dtype=fmt, amsgrad=True)
    other = fastadam.AdamW([p.copy() for p in params], lr=1e-2, state_dtype=fmt, amsgrad=True)
    moments, scales = _own_state(other)
    if fmt == "4bit":
        assert all(s is not None for s in scales)
    other._adopt_state([0, 0, 0], moments, scales)
    for _ in range(3):
        grads = [rng.standard_normal(p.shape).astype(F32) for p in params]
        own.step(grads)
        other.step(grads)
    for a, b in zip(own.params, other.params):
        np.testing.assert_array_equal(a, b)
    for slot, codes, tops in zip(own._slots, moments, scales):
        for a, b in zip(slot.state[:3], codes):
            np.testing.assert_array_equal(a, b)  # the adopted arrays themselves
        for a, b in zip(slot.absmax or (), tops or ()):
            np.testing.assert_array_equal(a, b)
    assert np.any(moments[0][0] != 0) and np.any(scales[0][1] != 0)


@pytest.mark.parametrize("change,match", [
    (lambda m, s: s[0].__setitem__(1, s[0][1][:-1]), r"state\[0\]\['absmax2'\].*elements"),
    (lambda m, s: m[0].__setitem__(0, m[0][0].astype(np.int8)), r"state\[0\]\['state1'\]"),
    (lambda m, s: s[1].__setitem__(2, None), r"state\[1\]\['absmax3'\]: missing"),
    (lambda m, s: s.__setitem__(0, None), "low-bit moments expected"),
    (lambda m, s: s.__setitem__(2, [np.zeros(4, F32)] * 3), "32-bit moments expected"),
    (lambda m, s: s[0].__setitem__(0, m[0][0][:4 * s[0][0].size].view(F32)), "overlap"),
])
def test_bad_adopted_low_bit_state_is_refused_unchanged(rng, change, match):
    params = _params_8bit(rng)
    opt = fastadam.AdamW(params, lr=1e-2, state_dtype="8bit", amsgrad=True)
    opt.step([rng.standard_normal(p.shape).astype(F32) for p in params])
    before = [list(s.state) for s in opt._slots], [s.absmax for s in opt._slots]
    moments, scales = _own_state(opt)
    change(moments, scales)
    with pytest.raises((ValueError, TypeError), match=match):
        opt._adopt_state([1, 1, 1], moments, scales)
    assert [list(s.state) for s in opt._slots] == before[0]  # the same arrays, untouched
    assert [s.absmax for s in opt._slots] == before[1]
    assert opt.step_count == 1
