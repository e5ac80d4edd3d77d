"""Stochastic rounding and clipping on the CUDA kernels: the same bits as the CPU kernels
for the rounding (dense, a list in one launch, 8-bit, row-sparse), the same clipped step
and norm as the CPU's."""

import numpy as np
import pytest
from helpers import on_device, to_host

import fastadam

cuda = pytest.importorskip("numba.cuda")
pytest.importorskip("fastadam._backends.cuda.runtime")
ml_dtypes = pytest.importorskip("ml_dtypes")

BF16 = np.dtype(ml_dtypes.bfloat16)
F16, F32 = np.dtype(np.float16), np.dtype(np.float32)


def bits(a):
    return np.asarray(a).view(np.uint16)


@pytest.mark.parametrize("dtype,state_dtype", [(BF16, None), (F16, None), (F16, "8bit"),
                                                     (BF16, "4bit")])
def test_stochastic_rounding_is_the_cpu_kernels_bit_for_bit(rng, dtype, state_dtype):
    shapes = [(300,), (5000,)] if state_dtype else [(300,), (33, 7)]
    params = [rng.standard_normal(s).astype(dtype) for s in shapes]
    grads = [[rng.standard_normal(s).astype(F32) for s in shapes] for _ in range(2)]
    kw = dict(lr=1e-2, stochastic_rounding=True, seed=21, state_dtype=state_dtype)
    host = fastadam.AdamW([p.copy() for p in params], **kw)
    device = fastadam.AdamW([on_device(p) for p in params], **kw)
    single = fastadam.AdamW(on_device(params[-1]), **kw)  # one array: its own launch
    for g in grads:
        host.step(g)
        device.step([on_device(x) for x in g])
    for g in grads:
        single.step(on_device(g[-1]))
    for got, want in zip(device.params, host.params):
        np.testing.assert_array_equal(bits(to_host(got, dtype)), bits(want))
    alone = fastadam.AdamW(params[-1].copy(), **kw)
    for g in grads:
        alone.step(g[-1])
    # A lone array is params array 0 of its optimizer: its own bits, as on the CPU.
    np.testing.assert_array_equal(bits(to_host(single.params, dtype)), bits(alone.params))


def test_sparse_stochastic_rounding_is_the_cpu_kernels(rng):
    table = rng.standard_normal((97, 16)).astype(BF16)
    indices = rng.integers(0, 97, 41)
    values = rng.standard_normal((41, 16)).astype(F32)
    host = fastadam.SparseAdam(table.copy(), lr=1e-2, stochastic_rounding=True, seed=4)
    device = fastadam.SparseAdam(on_device(table), lr=1e-2, stochastic_rounding=True, seed=4)
    for _ in range(2):
        host.step(indices, values)
        device.step(cuda.to_device(indices), cuda.to_device(values))
    np.testing.assert_array_equal(bits(to_host(device.table, BF16)), bits(host.table))


def test_clipping_on_the_device_follows_the_cpu(rng):
    shapes = [(300,), (13, 7), (131,)]
    params = [rng.standard_normal(s).astype(F32) for s in shapes]
    host = fastadam.AdamW([p.copy() for p in params], lr=1e-2, max_grad_norm=1.0)
    device = fastadam.AdamW([cuda.to_device(p) for p in params], lr=1e-2, max_grad_norm=1.0)
    for _ in range(3):
        grads = [(3 * rng.standard_normal(s)).astype(F32) for s in shapes]
        host.step(grads)
        assert device.step([cuda.to_device(g) for g in grads]) is True
        assert float(device.grad_norm) == pytest.approx(host.grad_norm, rel=1e-13)
        assert fastadam.grad_norm([cuda.to_device(g) for g in grads]) == pytest.approx(
            fastadam.grad_norm(grads), rel=1e-13)
    assert device.step_count == 3 and device.state_dict()["state"][2]["step"] == 3
    for got, want in zip(device.params, host.params):
        np.testing.assert_allclose(got.copy_to_host(), want, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("state_dtype,grad_scale", [(None, None), (None, 64.0), ("8bit", 8.0),
                                                       ("4bit", 8.0)])
def test_the_device_clips_with_the_hosts_arithmetic(rng, state_dtype, grad_scale):
    # The device turns its sum of squares into the clip coefficient as the host does: a
    # clipped step equals an unclipped one given the host's coefficient for that sum.
    shapes = [(150,), (77,)]
    params = [rng.standard_normal(s).astype(F32) for s in shapes]
    kw = dict(lr=1e-2, state_dtype=state_dtype)
    clipped = fastadam.AdamW([cuda.to_device(p) for p in params], max_grad_norm=0.5, **kw)
    plain = fastadam.AdamW([cuda.to_device(p) for p in params], **kw)
    for _ in range(2):
        grads = [(grad_scale or 1.0) * rng.standard_normal(s).astype(F32) for s in shapes]
        norm = fastadam.grad_norm([cuda.to_device(g) for g in grads]) / (grad_scale or 1.0)
        clipped.step([cuda.to_device(g) for g in grads], grad_scale=grad_scale)
        assert float(clipped.grad_norm) == norm
        factor = 0.5 / (norm + 1e-6)
        assert factor < 1
        plain.step([cuda.to_device(g) for g in grads], grad_scale=(grad_scale or 1.0) / factor)
    for got, want in zip(clipped.params, plain.params):
        np.testing.assert_array_equal(got.copy_to_host(), want.copy_to_host())


def test_the_device_norm_waits_only_when_read(rng):
    p = rng.standard_normal(257).astype(F32)
    grads = [rng.standard_normal(257).astype(F32) for _ in range(2)]
    opt = fastadam.Adam(cuda.to_device(p), max_grad_norm=1.0)
    assert opt.grad_norm is None
    opt.step(cuda.to_device(grads[0]))
    first = opt.grad_norm
    assert float(first) == pytest.approx(np.linalg.norm(grads[0].astype(np.float64)), rel=1e-12)
    assert np.asarray(first).shape == () and first.item() == float(first)
    opt.step(cuda.to_device(grads[1]))
    with pytest.raises(RuntimeError, match="overwritten by a later step"):
        float(first)
    assert float(opt.grad_norm) == pytest.approx(np.linalg.norm(grads[1]), rel=1e-6)


def test_a_non_finite_norm_skips_on_the_device(rng):
    shapes = [(300,), (70,)]
    g = [rng.standard_normal(s).astype(F32) for s in shapes]
    g[1][5] = np.nan
    p = [rng.standard_normal(s).astype(F32) for s in shapes]
    opt = fastadam.Adam([cuda.to_device(x) for x in p], max_grad_norm=1.0, skip_nonfinite=True)
    assert opt.step([cuda.to_device(x) for x in g]) is None  # decided on the device
    assert np.isnan(float(opt.grad_norm)) and opt.step_count == 0
    for got, want in zip(opt.params, p):
        np.testing.assert_array_equal(got.copy_to_host(), want)
    g[1][5] = 0.5
    opt.step([cuda.to_device(x) for x in g])
    assert opt.step_count == 1 and np.isfinite(float(opt.grad_norm))
    assert not np.array_equal(opt.params[0].copy_to_host(), p[0])


@pytest.mark.parametrize("max_grad_norm", [None, 0.5])
def test_a_list_of_mixed_gradient_dtypes_is_checked_in_one_pass(rng, max_grad_norm):
    # The non-finite check (or the norm) reads each kind's chunks in its own launch: an
    # inf in the float16 gradient skips the step, a finite list steps as on the CPU.
    shapes = [(130,), (70,)]
    p = [rng.standard_normal(s).astype(F32) for s in shapes]
    kw = dict(skip_nonfinite=True, max_grad_norm=max_grad_norm, lr=1e-2)
    device = fastadam.Adam([cuda.to_device(x) for x in p], **kw)
    host = fastadam.Adam([x.copy() for x in p], **kw)
    g = [rng.standard_normal(130).astype(F32), rng.standard_normal(70).astype(F16)]
    g[1][69] = np.inf
    device.step([cuda.to_device(x) for x in g])
    assert device.step_count == 0
    for got, want in zip(device.params, p):
        np.testing.assert_array_equal(got.copy_to_host(), want)
    g[1][69] = 1.0
    device.step([cuda.to_device(x) for x in g])
    host.step(g)
    assert device.step_count == 1
    for got, want in zip(device.params, host.params):
        np.testing.assert_allclose(got.copy_to_host(), want, rtol=1e-6, atol=1e-7)
