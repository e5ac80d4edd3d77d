"""Mixed precision on the CUDA kernel: the same results as the CPU kernel."""

import numpy as np
import pytest
from helpers import assert_same_floats

import fastadam

cuda = pytest.importorskip("numba.cuda")
runtime = pytest.importorskip("fastadam._backends.cuda.runtime")
ml_dtypes = pytest.importorskip("ml_dtypes")

from fastadam._backends import dispatch  # noqa: E402
from fastadam._backends.cuda import dense  # noqa: E402
from fastadam._backends.views import kernel_views  # noqa: E402
from fastadam._core.hyper import coefficients, hyper  # noqa: E402

BF16 = np.dtype(ml_dtypes.bfloat16)
F16, F32 = np.dtype(np.float16), np.dtype(np.float32)


def host_step(arrays, h, step, **kw):
    dispatch.apply("cpu", arrays, h, dispatch.step_flags(h, arrays), step, **kw)


def device_step(arrays, h, step, grad_scale=None):
    """The CUDA kernel on device copies of host arrays (16-bit ones as uint16)."""
    flags = dispatch.step_flags(h, arrays)
    views = kernel_views(arrays)
    dev = [cuda.to_device(np.ascontiguousarray(a)) for a in views]
    dense.adam_step_cuda(tuple(dev), flags, coefficients(h, step, grad_scale), 0)
    return [d.copy_to_host() for d in dev]


@pytest.mark.parametrize("param,grad,state,extra", [
    (BF16, BF16, F32, None), (BF16, F32, BF16, "kahan"), (F16, F16, F32, "master"),
    (F32, BF16, F32, None), (F16, F32, F16, "kahan"),
])
def test_kernel_matches_cpu_kernel(rng, param, grad, state, extra):
    n = 257
    arrays = [rng.standard_normal(n).astype(param), rng.standard_normal(n).astype(grad),
              (0.1 * rng.standard_normal(n)).astype(state), (0.01 * rng.random(n)).astype(state),
              (0.02 * rng.random(n)).astype(state),
              np.zeros(n, param) if extra == "kahan" else None,
              rng.standard_normal(n).astype(F32) if extra == "master" else None]
    h = hyper(lr=0.01, betas=(0.9, 0.99), eps=1e-8, weight_decay=0.1, decoupled_weight_decay=True,
              amsgrad=True, nesterov=True, eps_root=1e-9)
    got = device_step(tuple(arrays), h, 4, grad_scale=2.0)
    host_step(tuple(arrays), h, 4, grad_scale=2.0)
    want = kernel_views(tuple(arrays))
    for g, w, a in zip(got, want, arrays):
        if a is not None:  # the rest are placeholders
            np.testing.assert_array_equal(g, w)


def round_trip_kernel(load, store):
    @cuda.jit
    def round_trip(x, decoded, encoded):
        i = cuda.grid(1)
        stride = cuda.gridsize(1)
        while i < x.size:
            decoded[i] = load(x[i])
            encoded[i] = store(decoded[i])
            i += stride

    return round_trip


def test_converters_on_device():
    patterns = np.arange(1 << 16, dtype=np.uint16)
    if runtime.SIMULATOR:  # a Python thread per CUDA thread: every 61st pattern, and the edges
        edges = [0x0000, 0x0001, 0x03FF, 0x0400, 0x7BFF, 0x7C00, 0x7C01, 0x7E00, 0x7F7F, 0x7F80,
                 0x7FC0, 0x8000, 0x8001, 0xFBFF, 0xFC00, 0xFF80]
        patterns = np.union1d(patterns[::61], np.array(edges, np.uint16))
    for name, dtype in (("float16", F16), ("bfloat16", BF16)):
        round_trip = round_trip_kernel(*runtime.converters("float32")[name])
        decoded = cuda.device_array(patterns.size, np.float32)
        encoded = cuda.device_array(patterns.size, np.uint16)
        round_trip[runtime.launch_shape(patterns.size)](cuda.to_device(patterns), decoded, encoded)
        want = patterns.view(dtype).astype(np.float32)
        assert_same_floats(decoded.copy_to_host(), want, name)
        finite = np.isfinite(want)
        np.testing.assert_array_equal(encoded.copy_to_host()[finite], patterns[finite])


def test_float16_optimizer_on_device(rng):
    start = rng.standard_normal(300).astype(np.float16)
    on_gpu = fastadam.Adam(cuda.to_device(start), lr=1e-3, skip_nonfinite=True)
    on_cpu = fastadam.Adam(start.copy(), lr=1e-3, skip_nonfinite=True)
    assert on_gpu.options["kahan_summation"] and on_gpu.options["state_dtype"] == "float32"
    for step in range(6):
        g = rng.standard_normal(300).astype(np.float16)
        if step == 3:
            g[7] = np.inf
        assert on_gpu.step(cuda.to_device(g), grad_scale=4.0) is None  # decided on the GPU
        assert on_cpu.step(g, grad_scale=4.0) is (step != 3)
    assert on_gpu.step_count == 5
    np.testing.assert_array_equal(on_gpu.params.copy_to_host(), on_cpu.params)
    a, b = on_gpu.state_dict()["state"][0], on_cpu.state_dict()["state"][0]
    for k in b:
        np.testing.assert_array_equal(a[k], b[k])


def test_master_weights_on_device(rng):
    start = rng.standard_normal(100).astype(np.float16)
    opt = fastadam.AdamW(cuda.to_device(start), master_weights=True, lr=1e-2)
    ref = fastadam.AdamW(start.astype(np.float32), lr=1e-2)
    for _ in range(4):
        g = rng.standard_normal(100).astype(np.float32)
        opt.step(cuda.to_device(g))
        ref.step(g)
    master = opt.state_dict()["state"][0]["master_params"]
    np.testing.assert_array_equal(master, ref.params)
    np.testing.assert_array_equal(opt.params.copy_to_host(), master.astype(np.float16))


def device_bf16(host, storage=np.uint16):
    """bfloat16 on the device, as users reach it: 16-bit integer storage, declared."""
    return fastadam.as_bfloat16(cuda.to_device(host.view(storage)))


@pytest.mark.parametrize("options", [{}, {"kahan_summation": False}, {"master_weights": True},
                                     {"state_dtype": ml_dtypes.bfloat16, "amsgrad": True},
                                     {"skip_nonfinite": True, "weight_decay": 0.1}])
@pytest.mark.parametrize("storage", [np.uint16, np.int16])
def test_bfloat16_optimizer_on_device(rng, options, storage):
    """bfloat16 params, grads and state on the device (declared over uint16/int16
    storage): the same bits as the CPU kernel, state_dicts included, and they load."""
    start = rng.standard_normal(301).astype(BF16)
    on_gpu = fastadam.AdamW(device_bf16(start, storage), lr=1e-2, **options)
    on_cpu = fastadam.AdamW(start.copy(), lr=1e-2, **options)
    for step in range(5):
        g = rng.standard_normal(301).astype(BF16)
        if step == 2 and options.get("skip_nonfinite"):
            g[5] = np.nan
        applied = on_cpu.step(g)
        assert on_gpu.step(device_bf16(g, storage)) is (
            None if options.get("skip_nonfinite") else applied)
    assert on_gpu.step_count == on_cpu.step_count
    np.testing.assert_array_equal(on_gpu.params.copy_to_host(), on_cpu.params)
    a, b = on_gpu.state_dict()["state"][0], on_cpu.state_dict()["state"][0]
    assert a.keys() == b.keys() and a.pop("step") == b.pop("step")
    for k in b:
        assert a[k].dtype == b[k].dtype, k
        np.testing.assert_array_equal(a[k], b[k])
    again = fastadam.AdamW(device_bf16(start, storage), lr=1e-2, **options)
    again.load_state_dict(on_gpu.state_dict())
    assert again.state_dict()["state"][0]["exp_avg"].tobytes() == a["exp_avg"].tobytes()


@pytest.mark.parametrize("dtype", [BF16, F16])
def test_16bit_lists_step_in_one_launch_as_on_the_cpu(rng, monkeypatch, dtype):
    """16-bit params and grads in a list: the one-launch kernel reads them through its
    address table as 16-bit bits, and gives the CPU kernel's params and state."""
    from helpers import counting, on_device, to_host

    multi = counting(monkeypatch, "multi_kernel")
    host = [rng.standard_normal(n).astype(dtype) for n in (70, 9, 33)]
    on_gpu = fastadam.AdamW([on_device(a) for a in host], lr=1e-2, amsgrad=True)
    on_cpu = fastadam.AdamW(host, lr=1e-2, amsgrad=True)
    for _ in range(3):
        grads = [rng.standard_normal(a.shape).astype(dtype) for a in host]
        on_gpu.step([on_device(g) for g in grads])
        on_cpu.step(grads)
    assert len(multi) == 3
    for got, want in zip(on_gpu.params, host):
        np.testing.assert_array_equal(to_host(got, dtype), want)
    for a, b in zip(on_gpu.state_dict()["state"].values(), on_cpu.state_dict()["state"].values()):
        for k in b:
            np.testing.assert_array_equal(a[k], b[k])


def test_bfloat16_functional_on_device(rng):
    n = 257
    p, g = (rng.standard_normal(n).astype(BF16) for _ in range(2))
    m, v = np.zeros(n, BF16), np.zeros(n, BF16)
    host = [p.copy(), m.copy(), v.copy()]
    dev = [device_bf16(a) for a in (p, m, v)]
    for step in (1, 2):
        fastadam.adam_step(host[0], g, host[1], host[2], step=step, lr=0.1)
        fastadam.adam_step(dev[0], device_bf16(g), dev[1], dev[2], step=step, lr=0.1)
    for h, d in zip(host, dev):
        np.testing.assert_array_equal(d.copy_to_host(), h)


def test_bfloat16_declarations_refused():
    for bad in (cuda.to_device(np.zeros(4, np.float32)), cuda.to_device(np.zeros(4, np.uint8)),
                np.zeros(4, np.float16), [1, 2]):
        with pytest.raises(TypeError, match="storage"):
            fastadam.as_bfloat16(bad)
    u16 = cuda.to_device(np.zeros(4, np.uint16))
    with pytest.raises(TypeError, match="as_bfloat16"):  # undeclared: says how to declare
        fastadam.Adam(u16)
    params = device_bf16(np.ones(4, BF16))
    opt = fastadam.Adam(params)
    with pytest.raises(TypeError, match="grads"):
        opt.step(u16)  # the same bits, undeclared: refused, nothing changed
    assert opt.step_count == 0 and (params.copy_to_host() == 1).all()


def test_torch_cuda_bfloat16_tensors_directly():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("needs torch with a CUDA GPU (nox -s gpu)")
    p = torch.randn(1000, device="cuda").bfloat16()
    g = torch.randn(1000, device="cuda").bfloat16()
    expected = p.cpu().view(torch.int16).numpy().view(BF16).copy()
    fastadam.AdamW(expected).step(g.cpu().view(torch.int16).numpy().view(BF16))
    fastadam.AdamW(p).step(g)
    assert (p.cpu().view(torch.int16).numpy().view(BF16) == expected).all()


@pytest.mark.parametrize("dtype,options", [(F32, {"amsgrad": True}),
                                           (F16, {"kahan_summation": True, "amsgrad": True}),
                                           (F16, {"master_weights": True})])
def test_state_is_made_on_the_device(rng, monkeypatch, dtype, options):
    """Zeroed moments, Kahan buffers and master weights are made on the device: nothing
    goes from the host to the device while the optimizer is built."""
    host = rng.standard_normal(1000).astype(dtype)
    params = cuda.to_device(host)

    def refuse(*args, **kwargs):
        raise AssertionError("a host buffer was copied to the device")

    monkeypatch.setattr(cuda, "to_device", refuse)
    opt = fastadam.Adam(params, **options)
    monkeypatch.undo()
    state = opt.state_dict()["state"][0]
    for k in ("exp_avg", "exp_avg_sq", "max_exp_avg_sq", "kahan_comp"):
        if k in state:
            assert state[k].shape == (1000,) and not state[k].any(), k
    if "master_params" in state:
        np.testing.assert_array_equal(state["master_params"], host.astype(F32))
    grad = rng.standard_normal(1000).astype(dtype)
    opt.step(cuda.to_device(grad))  # and it steps as the CPU does
    twin = fastadam.Adam(host.copy(), **options)
    twin.step(grad)
    np.testing.assert_array_equal(params.copy_to_host(), twin.params)
