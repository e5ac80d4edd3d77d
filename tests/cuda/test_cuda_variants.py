"""Schedule-free AdamW and AdEMAMix on the CUDA kernels: the CPU kernels' params and state,
bit for bit (one array, a list in one launch per batch, schedule-free's eval/train)."""

import numpy as np
import pytest
from helpers import counting, on_device, to_host

import fastadam

cuda = pytest.importorskip("numba.cuda")
pytest.importorskip("fastadam._backends.cuda.runtime")
ml_dtypes = pytest.importorskip("ml_dtypes")

F32 = np.float32
BF16 = np.dtype(ml_dtypes.bfloat16)
CASES = [(fastadam.AdamWScheduleFree, dict(lr=1e-2, warmup_steps=2, weight_decay=0.01)),
         (fastadam.AdEMAMix, dict(lr=1e-2, t_alpha=3, t_beta3=3, weight_decay=0.1))]


@pytest.mark.parametrize("cls,kw", CASES)
@pytest.mark.parametrize("dtype,options", [(F32, {}), (BF16, {"kahan_summation": True}),
                                           (BF16, {"stochastic_rounding": True})])
def test_device_steps_are_the_cpu_steps(rng, monkeypatch, cls, kw, dtype, options):
    shapes = [(300,), (13, 7), (5,)]
    host = [rng.standard_normal(s).astype(dtype) for s in shapes]
    device = [on_device(a) for a in host]
    cpu_opt, gpu_opt = cls(host, **kw, **options), cls(device, **kw, **options)
    single_host = rng.standard_normal(257).astype(dtype)
    single_device = on_device(single_host)
    cpu_one, gpu_one = cls(single_host, **kw, **options), cls(single_device, **kw, **options)
    launches = counting(monkeypatch, "multi_kernel")
    for step in range(3):
        grads = [rng.standard_normal(s).astype(F32) for s in shapes]
        cpu_opt.step(grads)
        gpu_opt.step([cuda.to_device(g) for g in grads])
        g = rng.standard_normal(257).astype(F32)
        cpu_one.step(g)
        gpu_one.step(cuda.to_device(g))
        if step == 1 and cls is fastadam.AdamWScheduleFree:
            for opt in (cpu_opt, gpu_opt, cpu_one, gpu_one):
                opt.eval()
                opt.train()
    assert len(launches) == 3  # the list: one launch per step
    for d, h in zip([*device, single_device], [*host, single_host]):
        np.testing.assert_array_equal(to_host(d, dtype).view(np.uint8), h.view(np.uint8))
    a, b = gpu_opt.state_dict(), cpu_opt.state_dict()
    for i in range(len(shapes)):
        for k, v in b["state"][i].items():
            np.testing.assert_array_equal(a["state"][i][k], v)


@pytest.mark.parametrize("cls,kw", CASES)
def test_device_clipping_follows_the_cpu(rng, cls, kw):
    """Clipping by the global norm on the GPU (the norm read back): the CPU's step, up to
    the order of the norm's sum."""
    shapes = [(300,), (13, 7)]
    host = [rng.standard_normal(s).astype(F32) for s in shapes]
    device = [cuda.to_device(a) for a in host]
    cpu_opt, gpu_opt = cls(host, max_grad_norm=1.0, **kw), cls(device, max_grad_norm=1.0, **kw)
    for _ in range(3):
        grads = [(3 * rng.standard_normal(s)).astype(F32) for s in shapes]
        cpu_opt.step(grads)
        assert gpu_opt.step([cuda.to_device(g) for g in grads]) is True
        assert float(gpu_opt.grad_norm) == pytest.approx(cpu_opt.grad_norm, rel=1e-12)
    for d, h in zip(device, host):
        np.testing.assert_allclose(d.copy_to_host(), h, rtol=1e-6, atol=1e-7)


def test_device_refuses_what_it_cannot_decide_yet(rng):
    p = cuda.to_device(rng.standard_normal(50).astype(F32))
    for cls, _ in CASES:
        with pytest.raises(ValueError, match="skip_nonfinite"):
            cls(p, skip_nonfinite=True)
