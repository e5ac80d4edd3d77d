"""backend="cuda" against the float64 formula and the CPU kernel; device-array handling.

Small sizes: the simulator runs one Python thread per CUDA thread. The same
tests run unchanged on a real GPU.
"""

import numpy as np
import pytest
from helpers import OPTIONS, assert_close, counting, make_state
from reference import adam_f64

import fastadam

cuda = pytest.importorskip("numba.cuda")
runtime = pytest.importorskip("fastadam._backends.cuda.runtime")

SIZES = [1, 33, 1001]
DTYPES = [np.float32, np.float64]


def to_device(*arrays):
    return [None if a is None else cuda.to_device(a) for a in arrays]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("option", OPTIONS)
@pytest.mark.parametrize("n", SIZES)
def test_one_step_matches_float64(rng, n, dtype, option):
    kw = OPTIONS[option]
    host = make_state(rng, n, dtype)
    param, grad, m, v, v_max = to_device(*host)
    step = int(rng.integers(1, 20))
    want = adam_f64(*host, step=step, **kw)
    fastadam.adam_step(param, grad, m, v, v_max=v_max, step=step, **kw)  # auto picks cuda
    for got, expected in zip((param, m, v), want[:3]):
        got = got.copy_to_host()
        assert got.dtype == dtype
        assert_close(got, expected, dtype)
    if kw.get("amsgrad"):
        assert_close(v_max.copy_to_host(), want[3], dtype)


@pytest.mark.parametrize("cls", [fastadam.Adam, fastadam.AdamW])
def test_optimizer_on_device_follows_cpu(rng, cls):
    start = rng.standard_normal((7, 11)).astype(np.float32)
    on_gpu = cls(cuda.to_device(start), lr=0.01, amsgrad=True, weight_decay=0.02)
    on_cpu = cls(start.copy(), lr=0.01, amsgrad=True, weight_decay=0.02)
    for _ in range(8):
        g = rng.standard_normal((7, 11)).astype(np.float32)
        on_gpu.step(cuda.to_device(g))
        on_cpu.step(g)
    np.testing.assert_allclose(on_gpu.params.copy_to_host(), on_cpu.params, rtol=2e-6, atol=2e-6)
    gpu_state, cpu_state = on_gpu.state_dict()["state"][0], on_cpu.state_dict()["state"][0]
    assert gpu_state["step"] == 8
    for key in ("exp_avg", "exp_avg_sq", "max_exp_avg_sq"):
        assert isinstance(gpu_state[key], np.ndarray) and gpu_state[key].shape == (7, 11)
        np.testing.assert_allclose(gpu_state[key], cpu_state[key], rtol=2e-6, atol=1e-7)


def test_state_dict_round_trip_on_device(rng):
    start = rng.standard_normal(50)
    grads = [rng.standard_normal(50) for _ in range(6)]
    whole = fastadam.Adam(cuda.to_device(start), lr=0.05)
    for g in grads:
        whole.step(cuda.to_device(g))
    first = fastadam.Adam(cuda.to_device(start), lr=0.05)
    for g in grads[:3]:
        first.step(cuda.to_device(g))
    resumed = fastadam.Adam(cuda.to_device(first.params.copy_to_host()))
    resumed.load_state_dict(first.state_dict())
    for g in grads[3:]:
        resumed.step(cuda.to_device(g))
    np.testing.assert_array_equal(resumed.params.copy_to_host(), whole.params.copy_to_host())


def test_one_launch_per_step_covers_everything(rng, monkeypatch):
    launches = counting(monkeypatch, "fused_kernel")
    n = 5000  # more than one grid's worth in the simulator: the loop strides
    host = make_state(rng, n, np.float32, amsgrad=False)
    param, grad, m, v, _ = to_device(*host)
    fastadam.adam_step(param, grad, m, v, step=2)
    assert len(launches) == 1
    want = adam_f64(*host, step=2)[0]
    assert_close(param.copy_to_host(), want, np.float32)


def test_streams(rng):
    host = make_state(rng, 40, np.float32, amsgrad=False)
    param, grad, m, v, _ = to_device(*host)
    stream = cuda.stream()
    fastadam.adam_step(param, grad, m, v, step=1, stream=stream)
    stream.synchronize()
    assert_close(param.copy_to_host(), adam_f64(*host, step=1)[0], np.float32)
    with pytest.raises(TypeError, match="stream"):
        fastadam.adam_step(param, grad, m, v, step=2, stream="fast")
    with pytest.raises(ValueError, match="stream"):
        fastadam.adam_step(*host[:4], step=1, stream=stream)


def test_empty_device_arrays_are_a_no_op():
    e = [cuda.to_device(np.zeros(0, np.float32)) for _ in range(4)]
    fastadam.adam_step(*e, step=1)


def bad_cases(host, dev):
    param, grad, m, v, v_max = dev
    other = cuda.to_device(np.zeros(2 * host[0].size, np.float32))
    return {
        "host grad": ({"grad": host[1]}, TypeError, "grad"),
        "host m": ({"m": host[2]}, TypeError, "m"),
        "list v": ({"v": [0.0] * host[0].size}, TypeError, "v"),
        "int grad": ({"grad": cuda.to_device(np.zeros(host[0].size, np.int32))}, TypeError, "grad"),
        "float64 m": ({"m": cuda.to_device(host[2].astype(np.float64))}, TypeError, "m"),
        "shape v": ({"v": cuda.to_device(np.zeros(3, np.float32))}, ValueError, "v"),
        "strided grad": ({"grad": other[::2]}, ValueError, "grad"),
        "grad is param": ({"grad": param}, ValueError, "param and grad"),
        "overlap m v": ({"m": other[: host[0].size], "v": other[1 : host[0].size + 1]},
                        ValueError, "m and v"),
        "v_max missing": ({"v_max": None}, ValueError, "v_max"),
        "cpu backend": ({"backend": "cpu"}, TypeError, "backend"),
        "numpy backend": ({"backend": "numpy"}, TypeError, "backend"),
        "step zero": ({"step": 0}, ValueError, "step"),
    }


@pytest.mark.parametrize("case", [
    "host grad", "host m", "list v", "int grad", "float64 m", "shape v", "strided grad",
    "grad is param", "overlap m v", "v_max missing", "cpu backend", "numpy backend", "step zero"])
def test_bad_input_refused_unchanged(rng, case):
    host = make_state(rng, 21, np.float32)
    dev = to_device(*host)
    change, error, text = bad_cases(host, dev)[case]
    kwargs = dict(zip(("param", "grad", "m", "v", "v_max"), dev), step=3, amsgrad=True)
    kwargs.update(change)
    before = [a.copy_to_host() for a in dev]
    with pytest.raises(error, match=text):
        fastadam.adam_step(kwargs.pop("param"), kwargs.pop("grad"), kwargs.pop("m"),
                           kwargs.pop("v"), **kwargs)
    for a, b in zip(dev, before):
        np.testing.assert_array_equal(a.copy_to_host(), b)


def test_host_param_with_cuda_backend_refused(rng):
    host = make_state(rng, 9, np.float32, amsgrad=False)
    with pytest.raises(TypeError, match="backend='cuda'"):
        fastadam.adam_step(*host[:4], step=1, backend="cuda")


def test_refused_optimizer_step_changes_nothing(rng):
    opt = fastadam.Adam(cuda.to_device(rng.standard_normal(12).astype(np.float32)))
    opt.step(cuda.to_device(rng.standard_normal(12).astype(np.float32)))
    before = opt.params.copy_to_host(), opt.state_dict()
    for bad in (np.ones(12, np.float32), cuda.to_device(np.ones(13, np.float32)), opt.params):
        with pytest.raises((TypeError, ValueError), match="grads"):
            opt.step(bad)
    assert opt.step_count == 1
    np.testing.assert_array_equal(opt.params.copy_to_host(), before[0])
    for k, a in before[1]["state"][0].items():
        np.testing.assert_array_equal(opt.state_dict()["state"][0][k], a)


@pytest.mark.skipif(runtime.SIMULATOR, reason="the simulator has no __cuda_array_interface__")
def test_foreign_arrays_zero_copy(rng):
    """CuPy arrays and torch CUDA tensors, through __cuda_array_interface__."""
    host = make_state(rng, 300, np.float32, amsgrad=False)
    want = adam_f64(*host, step=1, lr=0.01)[0]
    ran = 0
    try:
        import torch

        if torch.cuda.is_available():
            t = [torch.from_numpy(a).cuda() for a in host[:4]]
            fastadam.adam_step(*t, step=1, lr=0.01)
            assert_close(t[0].cpu().numpy(), want, np.float32)
            p = torch.nn.Parameter(torch.from_numpy(host[0]).cuda())
            with pytest.raises(TypeError, match="param"):
                fastadam.adam_step(p, *t[1:], step=1)
            ran += 1
    except ImportError:
        pass
    try:
        import cupy

        c = [cupy.asarray(a) for a in host[:4]]
        fastadam.adam_step(*c, step=1, lr=0.01)
        assert_close(cupy.asnumpy(c[0]), want, np.float32)
        ran += 1
    except ImportError:
        pass
    if not ran:
        pytest.skip("neither torch with CUDA nor CuPy is installed")


@pytest.mark.parametrize("options", [dict(), dict(amsgrad=True, weight_decay=0.1, nesterov=True)])
def test_a_list_steps_in_one_launch_and_equals_the_cpu(rng, monkeypatch, options):
    multi = counting(monkeypatch, "multi_kernel")
    single = counting(monkeypatch, "fused_kernel")
    shapes = [(3, 7), (1,), (130,), (2, 2, 5)]  # 130 > one simulated chunk: several rows
    host = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    on_gpu = fastadam.AdamW([cuda.to_device(a) for a in host], lr=0.01, **options)
    on_cpu = fastadam.AdamW([a.copy() for a in host], lr=0.01, **options)
    for step in range(3):
        grads = [rng.standard_normal(s).astype(np.float32) for s in shapes]
        on_gpu.step([cuda.to_device(g) for g in grads])
        on_cpu.step(grads)
        assert len(multi) == step + 1 and not single  # one launch per step, none per array
    for got, want in zip(on_gpu.params, on_cpu.params):
        np.testing.assert_allclose(got.copy_to_host(), want, rtol=2e-6, atol=2e-6)
    for a, b in zip(on_gpu.state_dict()["state"].values(), on_cpu.state_dict()["state"].values()):
        assert a["step"] == b["step"] == 3
        np.testing.assert_allclose(a["exp_avg_sq"], b["exp_avg_sq"], rtol=2e-6, atol=1e-7)


@pytest.mark.parametrize("single", [True, False])
def test_gradient_buffers_reused_every_step_are_checked_once(rng, monkeypatch, single):
    """A training loop that refills the same gradient arrays: checked on their first step
    only (they cannot change shape, dtype or memory), stepping as fresh arrays would."""
    from fastadam._core import array_checks

    shapes = [(37,)] if single else [(3, 7), (1,), (130,)]
    host = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    grads = [cuda.to_device(np.zeros(s, np.float32)) for s in shapes]
    reused = fastadam.Adam(cuda.to_device(host[0]) if single else
                           [cuda.to_device(a) for a in host], lr=0.01)
    fresh = fastadam.Adam(cuda.to_device(host[0]) if single else
                          [cuda.to_device(a) for a in host], lr=0.01)
    checked = []
    like = array_checks.like
    monkeypatch.setattr(array_checks, "like", lambda *a, **k: checked.append(a[0]) or like(*a, **k))
    for _ in range(3):
        values = [rng.standard_normal(s).astype(np.float32) for s in shapes]
        for g, v in zip(grads, values):
            g.copy_to_device(v)
        reused.step(grads[0] if single else grads)
        fresh.step(cuda.to_device(values[0]) if single else [cuda.to_device(v) for v in values])
    assert len(checked) == len(shapes) * (1 + 3)  # reused: the first step; fresh: each
    pairs = zip([reused.params], [fresh.params]) if single else zip(reused.params, fresh.params)
    for got, want in pairs:
        np.testing.assert_array_equal(got.copy_to_host(), want.copy_to_host())
    with pytest.raises(ValueError, match="shape"):  # other arrays are checked again
        reused.step(cuda.to_device(np.ones(36, np.float32)) if single else
                    [cuda.to_device(np.ones(s, np.float32)) for s in ((3, 6), (1,), (130,))])


def test_a_list_with_mixed_dtypes_and_groups_on_device(rng, monkeypatch):
    multi = counting(monkeypatch, "multi_kernel")
    single = counting(monkeypatch, "fused_kernel")
    host = [rng.standard_normal(n).astype(d) for n, d in
            [(40, np.float32), (9, np.float64), (17, np.float32), (5, np.float64), (3, np.float32)]]
    groups = lambda arrays: [{"params": arrays[:4]}, {"params": arrays[4:], "lr": 0.1}]  # noqa: E731
    on_gpu = fastadam.Adam(groups([cuda.to_device(a) for a in host]), lr=0.01)
    on_cpu = fastadam.Adam(groups([a.copy() for a in host]), lr=0.01)
    grads = [rng.standard_normal(a.shape).astype(a.dtype) for a in host]
    on_gpu.step([cuda.to_device(g) for g in grads])
    on_cpu.step(grads)
    assert len(multi) == 3 and not single  # float32 and float64 batches, and the lone array
    for got, want in zip(on_gpu.params, on_cpu.params):
        np.testing.assert_allclose(got.copy_to_host(), want, rtol=2e-6, atol=2e-6)


def test_a_list_with_one_nan_skips_the_step_on_device(rng):
    host = [rng.standard_normal(n).astype(np.float32) for n in (40, 9, 17)]
    opt = fastadam.Adam([cuda.to_device(a) for a in host], lr=0.01, skip_nonfinite=True)
    grads = [rng.standard_normal(a.shape).astype(np.float32) for a in host]
    grads[2][16] = np.inf  # the last element of the last gradient
    # Decided on the device: nothing waits, step returns None, the count stays there.
    assert opt.step([cuda.to_device(g) for g in grads]) is None
    for got, want in zip(opt.params, host):
        np.testing.assert_array_equal(got.copy_to_host(), want)
    assert opt.step_count == 0 and opt.state_dict()["state"][0]["step"] == 0
    assert not opt.state_dict()["state"][1]["exp_avg"].any()
    grads[2][16] = 1.0
    assert opt.step([cuda.to_device(g) for g in grads]) is None and opt.step_count == 1
    assert not np.array_equal(opt.params[0].copy_to_host(), host[0])
    twin = fastadam.Adam([a.copy() for a in host], lr=0.01, skip_nonfinite=True)
    assert twin.step(grads) is True  # the same step on the host
    for got, want in zip(opt.params, twin.params):
        np.testing.assert_array_equal(got.copy_to_host(), want)


@pytest.mark.parametrize("single", [True, False])
def test_skip_nonfinite_on_device_never_waits(rng, monkeypatch, single):
    """With skip_nonfinite on the GPU, a step copies nothing back to the host: the skip and
    the step count stay on the device (as in torch's fused Adam); the trajectory is the
    CPU's, skipped steps included, and state_dicts carry the device's count both ways."""
    shapes = [(300,)] if single else [(40,), (9,), (17,)]
    host = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    opt = fastadam.AdamW(cuda.to_device(host[0]) if single else
                         [cuda.to_device(a) for a in host], lr=0.01, skip_nonfinite=True)
    twin = fastadam.AdamW(host[0].copy() if single else [a.copy() for a in host], lr=0.01,
                          skip_nonfinite=True)
    copies = []
    original = type(opt._plans.steps.count).copy_to_host
    monkeypatch.setattr(type(opt._plans.steps.count), "copy_to_host",
                        lambda self, *a, **k: copies.append(1) or original(self, *a, **k))
    for step in range(6):
        grads = [rng.standard_normal(s).astype(np.float32) for s in shapes]
        if step in (1, 4):
            grads[-1][3] = np.nan if step == 1 else -np.inf
        device_grads = [cuda.to_device(g) for g in grads]
        assert opt.step(device_grads[0] if single else device_grads) is None
        twin.step(grads[0] if single else grads)
    assert copies == []  # six steps, two skipped, not one wait
    monkeypatch.undo()
    assert opt.step_count == twin.step_count == 4
    params = [opt.params] if single else opt.params
    for got, want in zip(params, [twin.params] if single else twin.params):
        np.testing.assert_array_equal(got.copy_to_host(), want)
    sd = opt.state_dict()
    assert sd["state"][0]["step"] == 4
    again = fastadam.AdamW(cuda.to_device(host[0]) if single else
                           [cuda.to_device(a) for a in host], lr=0.01, skip_nonfinite=True)
    again.load_state_dict(sd)
    assert again.step_count == 4
    if not single:
        sd["state"][1]["step"] = 3
        with pytest.raises(ValueError, match="step"):
            again.load_state_dict(sd)
        assert again.step_count == 4


def test_a_list_given_by_addresses_steps_as_the_checked_list(rng, monkeypatch):
    """The path wrappers take (fastadam.torch on CUDA tensors): gradients as device
    addresses, one launch per batch, the same update as the checked list; where a
    batch cannot step as one (its arrays' step counts differ) it does nothing."""
    multi = counting(monkeypatch, "multi_kernel")
    host = [rng.standard_normal(n).astype(d) for n, d in
            [(40, np.float32), (9, np.float64), (17, np.float32), (5, np.float64)]]
    by_address = fastadam.AdamW([cuda.to_device(a) for a in host], lr=0.01)
    checked = fastadam.AdamW([cuda.to_device(a) for a in host], lr=0.01)
    kinds = [a.dtype.name for a in host]
    for step in range(3):
        grads = [cuda.to_device(rng.standard_normal(a.shape).astype(a.dtype)) for a in host]
        addresses = np.array([runtime.address(g) for g in grads], dtype=np.uint64)
        assert by_address._step_addresses(kinds, addresses) is True
        checked.step(grads)
        assert len(multi) == 4 * (step + 1)  # one launch per batch each time, on both paths
    for got, want in zip(by_address.params, checked.params):
        np.testing.assert_array_equal(got.copy_to_host(), want.copy_to_host())
    assert by_address.step_count == 3
    sd = by_address.state_dict()
    sd["state"][2]["step"] = 1  # arrays 0 and 2 form a batch: now their counts differ
    by_address.load_state_dict(sd)
    before = [p.copy_to_host() for p in by_address.params]
    assert by_address._step_addresses(kinds, addresses) is False
    for got, want in zip(by_address.params, before):
        np.testing.assert_array_equal(got.copy_to_host(), want)
