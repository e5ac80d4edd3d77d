"""Low-bit states (8-bit and 4-bit) on the CUDA kernel: the same params, codes and scales
as the CPU kernel."""

import numpy as np
import pytest
from helpers import counting, on_device, to_host

import fastadam
from fastadam._core.lowbit import FORMATS

cuda = pytest.importorskip("numba.cuda")
runtime = pytest.importorskip("fastadam._backends.cuda.runtime")
ml_dtypes = pytest.importorskip("ml_dtypes")

BF16 = np.dtype(ml_dtypes.bfloat16)
F32 = np.float32
N = 4099  # 17 blocks of 256 (33 of 128), the last one of 3 elements
FMTS = ("8bit", "4bit")

OPTIONS = {
    "plain": {},
    "adamw": {"weight_decay": 0.1, "decoupled_weight_decay": True},
    "amsgrad_maximize": {"amsgrad": True, "maximize": True},
    "nesterov_scale": {"nesterov": True, "grad_scale": 256.0, "weight_decay": 0.01},
}


def _state(n, amsgrad, fmt="8bit"):
    form = FORMATS[fmt]
    codes = [np.zeros(form.code_bytes(n), np.uint8) for _ in range(3 if amsgrad else 2)]
    absmax = [np.zeros(form.blocks(n), F32) for _ in range(3 if amsgrad else 2)]
    return codes, absmax


def _step(param, grad, codes, absmax, step, backend, fmt="8bit", **options):
    extra = {}
    if fmt == "4bit":
        if len(codes) == 3:
            extra = dict(v_max_codes=codes[2], v_max_scale=absmax[2])
        fastadam.adam_step_4bit(param, grad, codes[0], codes[1], absmax[0], absmax[1],
                                step=step, backend=backend, **extra, **options)
        return
    if len(codes) == 3:
        extra = dict(v_max_codes=codes[2], v_max_absmax=absmax[2])
    fastadam.adam_step_8bit(param, grad, codes[0], codes[1], absmax[0], absmax[1], step=step,
                            backend=backend, **extra, **options)


@pytest.mark.parametrize("fmt", FMTS)
@pytest.mark.parametrize("option", OPTIONS)
def test_device_step_equals_cpu_step(rng, option, fmt):
    options = dict(OPTIONS[option])
    amsgrad = options.get("amsgrad", False)
    param = rng.standard_normal(N).astype(F32)
    host_state = _state(N, amsgrad, fmt)
    dev_param = cuda.to_device(param)
    dev_codes = [cuda.to_device(c) for c in host_state[0]]
    dev_absmax = [cuda.to_device(a) for a in host_state[1]]
    for step in range(1, 4):
        grad = rng.standard_normal(N).astype(F32)
        grad[5] = np.nan if step == 3 else grad[5]  # stays in its element, on both
        _step(param, grad, *host_state, step, "cpu", fmt, lr=1e-2, **options)
        _step(dev_param, cuda.to_device(grad), dev_codes, dev_absmax, step, "cuda", fmt,
              lr=1e-2, **options)
    np.testing.assert_array_equal(dev_param.copy_to_host(), param)
    for d, h in zip(dev_codes + dev_absmax, host_state[0] + host_state[1]):
        np.testing.assert_array_equal(d.copy_to_host(), h)


@pytest.mark.parametrize("fmt", FMTS)
@pytest.mark.parametrize("dtype,extra", [(np.float16, "kahan_comp"), (BF16, "master_params"),
                                         (np.float64, None)])
def test_device_step_for_every_param_dtype(rng, dtype, extra, fmt):
    dtype = np.dtype(dtype)
    param = rng.standard_normal(N).astype(dtype)
    dev_param = on_device(param)
    buffers = {}
    if extra == "kahan_comp":
        buffers = {extra: np.zeros(N, dtype)}
    elif extra:
        buffers = {extra: param.astype(F32)}
    dev_buffers = {k: on_device(v) for k, v in buffers.items()}
    host_state = _state(N, False, fmt)
    dev_state = ([cuda.to_device(c) for c in host_state[0]],
                 [cuda.to_device(a) for a in host_state[1]])
    for step in range(1, 3):
        grad = rng.standard_normal(N).astype(dtype)
        _step(param, grad, *host_state, step, "cpu", fmt, lr=1e-2, **buffers)
        _step(dev_param, on_device(grad), *dev_state, step, "cuda", fmt, lr=1e-2,
              **dev_buffers)
    np.testing.assert_array_equal(to_host(dev_param, dtype), param)
    for d, h in zip(dev_state[0] + dev_state[1], host_state[0] + host_state[1]):
        np.testing.assert_array_equal(d.copy_to_host(), h)


@pytest.mark.parametrize("fmt", FMTS)
def test_device_optimizer_equals_cpu_optimizer(rng, monkeypatch, fmt):
    """A list on the GPU: its low-bit arrays in one launch (in 8 bits the small one is
    batched as 32-bit); state_dicts equal to the CPU optimizer's, and skip_nonfinite
    decided on the device."""
    host = [rng.standard_normal(N).astype(F32), rng.standard_normal(300).astype(F32),
            rng.standard_normal((2, 2100)).astype(F32)]
    device = [cuda.to_device(a) for a in host]
    kw = dict(lr=1e-2, state_dtype=fmt, amsgrad=True, skip_nonfinite=True)
    cpu_opt, gpu_opt = fastadam.AdamW(host, **kw), fastadam.AdamW(device, **kw)
    launches = counting(monkeypatch, "multi_kernel", "_backends.cuda.eight_bit")
    alone = counting(monkeypatch, "fused_kernel", "_backends.cuda.eight_bit")
    for step in range(3):
        grads = [rng.standard_normal(a.shape).astype(F32) for a in host]
        if step == 1:
            grads[2][0, 7] = np.inf
        assert cpu_opt.step(grads) is (step != 1)
        gpu_opt.step([cuda.to_device(g) for g in grads])
    assert len(launches) == 3 and not alone  # every step launches; the skipped one changes nothing
    assert gpu_opt.step_count == cpu_opt.step_count == 2
    for d, h in zip(device, host):
        np.testing.assert_array_equal(d.copy_to_host(), h)
    a, b = gpu_opt.state_dict(), cpu_opt.state_dict()
    for i in range(3):
        assert a["state"][i].keys() == b["state"][i].keys()
        for k, v in b["state"][i].items():
            np.testing.assert_array_equal(a["state"][i][k], v)
    restored = fastadam.AdamW([cuda.to_device(h) for h in host], **kw)
    restored.load_state_dict(b)
    np.testing.assert_array_equal(restored.state_dict()["state"][0]["state2"],
                                  b["state"][0]["state2"])


@pytest.mark.parametrize("fmt", FMTS)
@pytest.mark.parametrize("dtype,options", [
    (F32, {"nesterov": True, "grad_scale": 8.0}),
    (BF16, {"master_weights": True, "amsgrad": True, "maximize": True}),
    (np.float16, {"weight_decay": 0.1, "decoupled_weight_decay": True}),
])
def test_device_low_bit_batches_step_in_one_launch_each(rng, monkeypatch, dtype, options, fmt):
    """Two groups of low-bit arrays with ragged last blocks (and a small one, 32-bit in
    8 bits): one launch per group and step, the params, codes and scales of the CPU
    optimizer."""
    dtype = np.dtype(dtype)
    grad_scale = options.pop("grad_scale", None)
    shapes = [(N,), (3, 1500), (300,), (2 * 4096 + 1,)]
    host = [rng.standard_normal(s).astype(dtype) for s in shapes]
    groups = lambda params: [{"params": params[:3]},  # noqa: E731
                             {"params": params[3:], "lr": 3e-2, "betas": (0.8, 0.99)}]
    kw = dict(lr=1e-2, state_dtype=fmt, **options)
    cpu_opt = fastadam.Adam(groups(host), **kw)
    device = [on_device(a) for a in host]
    gpu_opt = fastadam.Adam(groups(device), **kw)
    launches = counting(monkeypatch, "multi_kernel", "_backends.cuda.eight_bit")
    for _ in range(2):
        grads = [rng.standard_normal(a.shape).astype(dtype) for a in host]
        cpu_opt.step(grads, grad_scale=grad_scale)
        gpu_opt.step([on_device(g) for g in grads], grad_scale=grad_scale)
    assert len(launches) == 2 * 2
    for d, h in zip(device, host):
        np.testing.assert_array_equal(to_host(d, dtype), h)
    a, b = gpu_opt.state_dict(), cpu_opt.state_dict()
    for i in range(len(shapes)):
        for k, v in b["state"][i].items():
            np.testing.assert_array_equal(a["state"][i][k], v)


def test_device_8bit_refuses_host_state(rng):
    param = cuda.to_device(rng.standard_normal(N).astype(F32))
    grad = cuda.to_device(rng.standard_normal(N).astype(F32))
    codes, absmax = _state(N, False)
    dev_absmax = [cuda.to_device(a) for a in absmax]
    with pytest.raises(TypeError, match="m_codes"):
        fastadam.adam_step_8bit(param, grad, codes[0], cuda.to_device(codes[1]), *dev_absmax,
                                step=1)
    with pytest.raises(ValueError, match="v_absmax"):
        fastadam.adam_step_8bit(param, grad, cuda.to_device(codes[0]), cuda.to_device(codes[1]),
                                dev_absmax[0], cuda.to_device(absmax[1][:-1]), step=1)


@pytest.mark.parametrize("fmt", FMTS)
def test_adopted_low_bit_state_steps_by_address_in_one_launch(rng, monkeypatch, fmt):
    """The path fastadam.torch's 8-bit drop-ins take on CUDA tensors: the wrapper's own
    device codes and scales adopted (``_adopt_state``), gradients given by address, one
    launch per batch; the params, codes and scales of the CPU optimizer, in the adopted
    arrays themselves."""
    host = [rng.standard_normal(N).astype(F32), rng.standard_normal((3, 1500)).astype(F32),
            rng.standard_normal(300).astype(F32)]
    cpu_opt = fastadam.AdamW(host, lr=1e-2, state_dtype=fmt)
    gpu_opt = fastadam.AdamW([cuda.to_device(a) for a in host], lr=1e-2, state_dtype=fmt)
    moments = [[None if a is None else cuda.to_device(np.zeros(a.size, a.dtype))
                for a in s.state[:3]] for s in cpu_opt._slots]
    scales = [None if s.absmax is None else
              [None if a is None else cuda.to_device(np.zeros(a.size, F32)) for a in s.absmax]
              for s in cpu_opt._slots]
    gpu_opt._adopt_state([0, 0, 0], moments, scales)
    launches = counting(monkeypatch, "multi_kernel", "_backends.cuda.eight_bit")
    kinds = ["float32"] * 3
    for _ in range(2):
        grads = [rng.standard_normal(a.shape).astype(F32) for a in host]
        cpu_opt.step(grads)
        device_grads = [cuda.to_device(g.reshape(-1)) for g in grads]  # (simulated: 1-D)
        addresses = np.array([runtime.address(g) for g in device_grads], dtype=np.uint64)
        assert gpu_opt._step_addresses(kinds, addresses) is True
    assert len(launches) == 2  # one low-bit batch (in 8 bits the small array is 32-bit)
    for d, h in zip(gpu_opt.params, host):
        np.testing.assert_array_equal(d.copy_to_host(), h)
    for slot, codes, tops in zip(cpu_opt._slots, moments, scales):
        for a, b in zip(slot.state[:2], codes):
            np.testing.assert_array_equal(b.copy_to_host(), a)
        for a, b in zip(slot.absmax or (), tops or ()):
            if a is not None:
                np.testing.assert_array_equal(b.copy_to_host(), a)
    assert np.any(moments[0][1].copy_to_host() != 0)
