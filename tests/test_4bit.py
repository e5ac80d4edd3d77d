"""4-bit states (torchao's format): the maps and the encoder bit for bit, the fused kernel
against the three-pass reference and against torchao's own AdamW4bit (codes and scales
after a step, a training run), every option and param dtype through the optimizer,
thread counts, state_dicts across formats, and bad input."""

import subprocess
import sys

import numpy as np
import pytest
from helpers import LOW_BIT_OPTIONS, optional

import fastadam
from fastadam import quant4

F32 = np.float32


def _torchao():
    """torch, torchao's AdamW4bit, its quantizer, scaler and maps (the reference)."""
    torch = optional("torch")
    optim = optional("torchao.optim")
    utils, state = optional("torchao.optim.quant_utils"), optional("torchao.optim.subclass_4bit")
    return (torch, optim.AdamW4bit, utils.quantize_4bit_with_qmap, utils.scale_tensor,
            (state.get_qmap_signed, state.get_qmap_unsigned))


@pytest.mark.parametrize("signed", [True, False])
def test_maps_and_encoding_are_torchaos_bit_for_bit(rng, signed):
    torch, _, quantize, _, maps = _torchao()
    theirs = np.array(maps[0 if signed else 1](), dtype=F32)
    assert np.array_equal(quant4.qmap(signed).view(np.uint32), theirs.view(np.uint32))
    t = quant4.thresholds(signed)
    x = np.concatenate([rng.uniform(-1.0, 1.0, 50_000).astype(F32), t,
                        np.nextafter(t, -np.inf, dtype=F32), quant4.qmap(signed),
                        np.array([0.0, -0.0, 1.0, -1.0, np.inf, -np.inf, np.nan], F32)])
    want = quantize(torch.from_numpy(x), torch.from_numpy(theirs)).numpy()
    assert np.array_equal(quant4.encode_reference(x, signed), want)
    assert np.array_equal(quant4.encode(x, signed), want)


@pytest.mark.parametrize("n", [1, 127, 128, 129, 4099])
def test_round_trip_error_and_ragged_blocks(rng, n):
    x = (rng.standard_normal(n) * 0.01).astype(F32)
    codes, scale = quant4.quantize(x, True)
    assert codes.size == quant4.code_bytes(n) and scale.size == quant4.blocks(n)
    assert np.array_equal(quant4.unpack(quant4.pack(quant4.unpack(codes, n)), n),
                          quant4.unpack(codes, n))
    back = quant4.dequantize(codes, scale, True, n)
    per_block = np.repeat(scale, quant4.BLOCK)[:n]
    assert np.all(np.abs(back - x) <= 0.23 * per_block)  # the widest gap of the map, halved
    assert np.abs(x).max() == scale.max()  # a block's scale is its absmax


def _state(n, amsgrad=False):
    count = 3 if amsgrad else 2
    return ([np.zeros(quant4.code_bytes(n), np.uint8) for _ in range(count)],
            [np.zeros(quant4.blocks(n), F32) for _ in range(count)])


def _step(param, grad, codes, scales, step, **options):
    extra = {}
    if len(codes) == 3:
        extra = dict(v_max_codes=codes[2], v_max_scale=scales[2], amsgrad=True)
    fastadam.adam_step_4bit(param, grad, codes[0], codes[1], scales[0], scales[1], step=step,
                            **extra, **options)


OPTIONS = LOW_BIT_OPTIONS


@pytest.mark.parametrize("option", OPTIONS)
@pytest.mark.parametrize("n", [4099, 70_001])
def test_fused_kernel_equals_the_three_pass_reference(rng, option, n):
    """Decode / NumPy step / encode and the one-pass kernel agree over five steps: codes
    within one of each other, rarely apart (a rounding apart can cross a threshold)."""
    options = dict(OPTIONS[option])
    amsgrad = options.pop("amsgrad", False)
    param = rng.standard_normal(n).astype(F32)
    twin = param.copy()
    state, twin_state = _state(n, amsgrad), _state(n, amsgrad)
    for step in range(1, 6):
        grad = rng.standard_normal(n).astype(F32)
        _step(param, grad, *state, step, backend="cpu", lr=1e-2, **options)
        _step(twin, grad, *twin_state, step, backend="numpy", lr=1e-2, **options)
    assert np.abs(param - twin).max() < 1e-2  # < one step of lr
    for a, b in zip(state[1], twin_state[1]):
        np.testing.assert_allclose(a, b, rtol=1e-6)
    for a, b in zip(state[0], twin_state[0]):
        apart = np.abs(quant4.unpack(a, n).astype(int) - quant4.unpack(b, n).astype(int))
        assert apart.max() <= 1 and (apart > 0).mean() < 0.01


def test_one_step_from_torchaos_state_gives_torchaos_codes_and_scales(rng):
    """From the same state and gradient, the codes and scales after a step are torchao's:
    the moments move as torchao moves them (m + (1 - beta1) * (g - m)), and the encoder is
    its search; the params agree to float32 rounding (the update's order differs)."""
    torch, AdamW4bit, *_ = _torchao()
    n = 128 * 257
    weight = torch.nn.Parameter(torch.from_numpy(rng.standard_normal(n).astype(F32)))
    opt = AdamW4bit([weight], lr=1e-2, weight_decay=0.01)
    codes, scales = _state(n)
    mismatches = []
    for step in range(1, 6):
        grad = rng.standard_normal(n).astype(F32)
        param = weight.detach().numpy().copy()
        if step > 1:  # start from torchao's state
            state = opt.state[weight]
            for i, key in enumerate(("exp_avg", "exp_avg_sq")):
                codes[i][:] = state[key].codes.numpy()
                scales[i][:] = state[key].scale.numpy()
        weight.grad = torch.from_numpy(grad.copy())
        opt.step()
        _step(param, grad, codes, scales, step, lr=1e-2, weight_decay=0.01,
              decoupled_weight_decay=True)
        state = opt.state[weight]
        for i, key in enumerate(("exp_avg", "exp_avg_sq")):
            ours, theirs = quant4.unpack(codes[i], n), quant4.unpack(state[key].codes.numpy(), n)
            mismatches.append(int((ours != theirs).sum()))
            np.testing.assert_array_equal(scales[i], state[key].scale.numpy())
        np.testing.assert_allclose(param, weight.detach().numpy(), rtol=0, atol=1e-6)
    assert mismatches == [0] * 10, mismatches  # not even ties apart


def _least_squares(rng, steps, make_step):
    """A 64 x 64 least-squares fit (4,096 weights: torchao quantizes them), fixed data; the
    final loss of ``steps`` steps of ``make_step(weights)(grad)``."""
    x = rng.standard_normal((256, 64)).astype(F32)
    target = x @ rng.standard_normal((64, 64)).astype(F32)
    weights = np.zeros((64, 64), F32)
    step = make_step(weights)
    for _ in range(steps):
        residual = x @ weights - target
        step(weights, (2.0 / x.shape[0]) * (x.T @ residual))
    return float(np.mean((x @ weights - target) ** 2))


def test_a_training_run_ends_where_torchaos_does():
    torch, AdamW4bit, *_ = _torchao()

    def fastadam_step(state_dtype):
        def make(weights):
            opt = fastadam.AdamW(weights, lr=1e-2, weight_decay=0.0, state_dtype=state_dtype)
            return lambda w, g: opt.step(g)
        return make

    def torchao_step(weights):
        tensor = torch.nn.Parameter(torch.from_numpy(weights))  # shares the array
        opt = AdamW4bit([tensor], lr=1e-2, weight_decay=0.0)

        def step(w, g):
            tensor.grad = torch.from_numpy(np.ascontiguousarray(g))
            opt.step()
        return step

    losses = {name: _least_squares(np.random.default_rng(7), 1000, make) for name, make in (
        ("4bit", fastadam_step("4bit")), ("torchao", torchao_step),
        ("fp32", fastadam_step(None)))}
    assert abs(losses["4bit"] - losses["torchao"]) <= 0.01 * losses["torchao"], losses
    assert abs(losses["4bit"] - losses["fp32"]) <= max(
        abs(losses["torchao"] - losses["fp32"]), 0.01 * losses["fp32"]), losses


@pytest.mark.parametrize("option", OPTIONS)
def test_optimizer_steps_as_the_functional_4bit_step_on_any_thread_count(rng, option):
    options = dict(OPTIONS[option])
    grad_scale = options.pop("grad_scale", None)
    amsgrad = options.get("amsgrad", False)
    n = 70_001
    param = rng.standard_normal(n).astype(F32)
    twins = [param.copy(), param.copy()]
    opts = [fastadam.Adam(t, lr=1e-2, state_dtype="4bit", num_threads=threads, **options)
            for t, threads in zip(twins, (1, 2))]
    codes, scales = _state(n, amsgrad)
    for step in range(1, 4):
        grad = rng.standard_normal(n).astype(F32)
        for opt in opts:
            opt.step(grad, grad_scale=grad_scale)
        extra = {k: v for k, v in options.items() if k != "amsgrad"}
        _step(param, grad, codes, scales, step, lr=1e-2, grad_scale=grad_scale, **extra)
    np.testing.assert_array_equal(twins[0], twins[1])
    np.testing.assert_array_equal(twins[0], param)
    saved = opts[0].state_dict()["state"][0]
    for i in range(len(codes)):
        np.testing.assert_array_equal(saved[f"state{i + 1}"], codes[i])
        np.testing.assert_array_equal(saved[f"absmax{i + 1}"], scales[i])


@pytest.mark.parametrize("kind,extra", [("bfloat16", {}), ("bfloat16", {"master_weights": True}),
                                        ("float16", {"stochastic_rounding": True}),
                                        ("float64", {})])
def test_every_param_dtype_and_rounding(rng, kind, extra):
    ml_dtypes = optional("ml_dtypes")
    dtype = ml_dtypes.bfloat16 if kind == "bfloat16" else np.dtype(kind)
    target = rng.standard_normal(4099).astype(np.float64)
    param = np.zeros(4099, dtype)
    opt = fastadam.AdamW(param, lr=3e-2, state_dtype="4bit", max_grad_norm=100.0, **extra)
    for _ in range(300):
        opt.step((2 * (param.astype(np.float64) - target)).astype(dtype))
    assert np.abs(param.astype(np.float64) - target).mean() < 0.05


def test_state_dicts_move_between_32_8_and_4_bits(rng):
    n = 8192
    param = rng.standard_normal(n).astype(F32)
    opt = fastadam.AdamW(param.copy(), lr=1e-2, state_dtype="4bit")
    for _ in range(3):
        opt.step(rng.standard_normal(n).astype(F32))
    saved = opt.state_dict()
    assert saved["state"][0]["state1"].size == n // 2 and saved["state"][0]["qmap1"].size == 16
    for state_dtype in (None, "8bit", "4bit"):
        other = fastadam.AdamW(param.copy(), lr=1e-2, state_dtype=state_dtype)
        other.load_state_dict(saved)
        back = fastadam.AdamW(param.copy(), lr=1e-2, state_dtype="4bit")
        back.load_state_dict(other.state_dict())
        m = quant4.dequantize(saved["state"][0]["state1"], saved["state"][0]["absmax1"], True, n)
        again = back.state_dict()["state"][0]
        m_again = quant4.dequantize(again["state1"], again["absmax1"], True, n)
        assert np.abs(m_again - m).max() <= 0.3 * np.abs(m).max()
        if state_dtype == "4bit":
            np.testing.assert_array_equal(again["state1"], saved["state"][0]["state1"])


@pytest.mark.parametrize("entry,value,match", [
    ("state1", np.zeros(10, np.uint8), "uint8 array of 4096"),
    ("absmax1", np.zeros(3, F32), "one per block of 128"),
    ("qmap1", np.zeros(16, F32), "standard signed map"),
])
def test_a_bad_4bit_state_dict_is_refused_unchanged(rng, entry, value, match):
    n = 8192
    opt = fastadam.AdamW(rng.standard_normal(n).astype(F32), lr=1e-2, state_dtype="4bit")
    opt.step(rng.standard_normal(n).astype(F32))
    good = opt.state_dict()
    bad = opt.state_dict()
    bad["state"][0][entry] = value
    with pytest.raises(ValueError, match=match):
        opt.load_state_dict(bad)
    after = opt.state_dict()
    for key, saved in good["state"][0].items():
        np.testing.assert_array_equal(after["state"][0][key], saved)


def test_bad_functional_input_is_refused_and_nothing_changes(rng):
    n = 300
    param, grad = rng.standard_normal(n).astype(F32), rng.standard_normal(n).astype(F32)
    codes, scales = _state(n)
    before = [param.copy(), *[c.copy() for c in codes], *[s.copy() for s in scales]]
    with pytest.raises(ValueError, match="m_codes must have 150 elements"):
        fastadam.adam_step_4bit(param, grad, codes[0][:10], codes[1], *scales, step=1)
    with pytest.raises(ValueError, match="v_scale must have 3 elements"):
        fastadam.adam_step_4bit(param, grad, *codes, scales[0], scales[1][:1], step=1)
    with pytest.raises(TypeError, match="unexpected keyword"):
        fastadam.adam_step_4bit(param, grad, *codes, *scales, step=1, lr_schedule=1)
    after = [param, *codes, *scales]
    assert all(np.array_equal(a, b) for a, b in zip(before, after))


def test_state_bytes_per_param():
    """Two moments of 4 bits and a float32 scale per 128 elements each: 1.0625 bytes per
    param at 64M elements (by the format's sizes), and so on a real optimizer's arrays."""
    n = 1 << 26
    per_param = 2 * (quant4.code_bytes(n) + 4 * quant4.blocks(n)) / n
    assert per_param == 1.0625
    opt = fastadam.Adam(np.zeros(1 << 20, F32), state_dtype="4bit")
    held = sum(a.nbytes for s in opt._slots for a in [*s.state, *s.absmax] if a is not None)
    assert held / (1 << 20) == 1.0625


_NO_TEMPORARIES = """
import numba, numpy as np, fastadam
def status(field):  # this process's own (ru_maxrss would count the parent's before exec)
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(field))
def current():
    return status("VmRSS:")
def peak():
    return status("VmHWM:")
small = fastadam.AdamW(np.ones(1000, np.float32), state_dtype="4bit", amsgrad=True,
                       num_threads=numba.config.NUMBA_NUM_THREADS)
small.step(np.ones(1000, np.float32))  # compiled before the big arrays exist
n = 1 << 26
rng = np.random.default_rng(0)
threads = numba.config.NUMBA_NUM_THREADS  # fixed: a thread pool started later adds memory
opt = fastadam.AdamW(rng.standard_normal(n, dtype=np.float32), state_dtype="4bit",
                     amsgrad=True, num_threads=threads)
grad = rng.standard_normal(n, dtype=np.float32)
for _ in range(2):
    opt.step(grad)  # the state's pages touched, the threads started
before, now = peak(), current()
for _ in range(3):
    opt.step(grad)
print(before, now, peak())
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_a_step_makes_no_temporaries_of_the_arrays_size():
    """The process's peak memory does not move over three steps at 64M elements (the
    codes are 32 MB each, the params 256 MB): the step allocates only its blocks'
    scratch. Measured where the arrays already set the peak, so that a temporary
    would raise it."""
    out = subprocess.run([sys.executable, "-c", _NO_TEMPORARIES], capture_output=True,
                         text=True, timeout=300, check=True)
    before, current, after = map(int, out.stdout.split())
    assert before - current < 16 << 20, (before, current)  # the arrays set the peak
    assert after - before < 4 << 20, f"the peak rose by {(after - before) >> 20} MB"


def _mlp(torch):
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.Tanh(),
                               torch.nn.Linear(128, 10))


def _train(torch, model, opt, steps, data):
    x, y = data
    for _ in range(steps):
        opt.zero_grad()
        ((model(x) - y) ** 2).mean().backward()
        opt.step()


def test_torch_drop_in_state_moves_to_torchao_and_back():
    """A torchao AdamW4bit state_dict loads into fastadam.torch.AdamW4bit and the reverse
    (torchao_state_dict); the next step agrees to float32 rounding on the 8,192-weight
    layer, which torchao keeps in 4 bits (it keeps the smaller ones in float32, which
    fastadam quantizes: those agree to the 4-bit error)."""
    torch, AdamW4bit, *_ = _torchao()
    import fastadam.torch as ft

    torch.manual_seed(1)
    data = (torch.randn(32, 64), torch.randn(32, 10))
    ours, theirs = _mlp(torch), _mlp(torch)
    ours_opt = ft.AdamW4bit(ours.parameters(), lr=1e-2)
    theirs_opt = AdamW4bit(theirs.parameters(), lr=1e-2)
    _train(torch, ours, ours_opt, 5, data)
    _train(torch, theirs, theirs_opt, 5, data)
    for source, source_opt, make, convert in (
            (theirs, theirs_opt, lambda m: ft.AdamW4bit(m.parameters(), lr=1e-2),
             lambda o: o.state_dict()),
            (ours, ours_opt, lambda m: AdamW4bit(m.parameters(), lr=1e-2),
             ft.torchao_state_dict)):
        twin = _mlp(torch)
        twin.load_state_dict(source.state_dict())
        twin_opt = make(twin)
        twin_opt.load_state_dict(convert(source_opt))
        _train(torch, source, source_opt, 1, data)
        _train(torch, twin, twin_opt, 1, data)
        torch.testing.assert_close(twin[0].weight, source[0].weight, rtol=0, atol=1e-6)


def test_torch_drop_in_refuses_bad_state_unchanged():
    torch = optional("torch")
    import fastadam.torch as ft

    model = _mlp(torch)
    opt = ft.AdamW4bit(model.parameters(), lr=1e-2)
    _train(torch, model, opt, 2, (torch.randn(8, 64), torch.randn(8, 10)))
    before = {k: v.clone() for k, v in opt.state[model[0].weight].items() if torch.is_tensor(v)}
    bad = opt.state_dict()
    bad["state"][0] = {**bad["state"][0]}  # torch's state_dict shares the live entries
    bad["state"][0]["exp_avg_codes"] = bad["state"][0]["exp_avg_codes"][:7]
    with pytest.raises(ValueError, match="exp_avg_codes"):
        opt.load_state_dict(bad)
    dense = ft.AdamW(_mlp(torch).parameters(), lr=1e-2)  # a 4-bit state in a 32-bit drop-in
    with pytest.raises(ValueError, match="low-bit moments"):
        dense.load_state_dict(opt.state_dict())
    assert not dense.state
    for k, v in opt.state[model[0].weight].items():
        if torch.is_tensor(v):
            assert torch.equal(v, before[k])
    with pytest.raises(ValueError, match="block_size"):
        ft.AdamW4bit(model.parameters(), block_size=256)
