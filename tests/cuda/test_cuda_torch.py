"""fastadam.torch on CUDA tensors: needs torch with a CUDA GPU (``nox -s gpu``)."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
if not torch.cuda.is_available():
    pytest.skip("needs torch with a CUDA GPU (nox -s gpu)", allow_module_level=True)

from helpers import counting  # noqa: E402

import fastadam.torch  # noqa: E402

SHAPES = [(768, 2304), (2304,), (50, 768), (7,), (3, 4, 5)]


def _twins(dtype, **options):
    gen = torch.Generator(device="cuda").manual_seed(0)
    params = [torch.randn(s, device="cuda", generator=gen).to(dtype) for s in SHAPES]
    ours = [torch.nn.Parameter(p.clone()) for p in params]
    theirs = [torch.nn.Parameter(p.clone()) for p in params]
    return (fastadam.torch.AdamW(ours, lr=1e-2, **options),
            torch.optim.AdamW(theirs, lr=1e-2, fused=True, **options), ours, theirs, gen)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("options", [{}, {"amsgrad": True, "maximize": True}])
def test_a_cuda_list_steps_in_one_launch_per_batch_as_torch_fused(monkeypatch, dtype, options):
    launches = counting(monkeypatch, "multi_kernel")
    ours_opt, theirs_opt, ours, theirs, gen = _twins(dtype, **options)
    for step in range(5):
        for a, b in zip(ours, theirs):
            g = torch.randn(a.shape, device="cuda", generator=gen).to(dtype)
            a.grad, b.grad = g.clone(), g.clone()
        ours_opt.step()
        theirs_opt.step()
        assert len(launches) == step + 1  # one dtype, one group: one launch per step
    rtol = 1e-5 if dtype == torch.float32 else 1e-2
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a.float(), b.float(), rtol=rtol, atol=rtol)
    theirs_opt.load_state_dict(ours_opt.state_dict())  # and the state is torch's


def test_a_cuda_gradient_sharing_a_params_memory_is_refused_unchanged():
    ours_opt, _, ours, _, gen = _twins(torch.float32)
    for p in ours:
        p.grad = torch.randn(p.shape, device="cuda", generator=gen)
    ours_opt.step()
    before = [p.detach().clone() for p in ours]
    ours[1].grad = ours[1].detach()  # the param's own memory
    with pytest.raises(ValueError, match="overlap"):
        ours_opt.step()
    for a, b in zip(ours, before):
        assert torch.equal(a, b)
    assert all(float(ours_opt.state[p]["step"]) == 1 for p in ours)


def test_a_cuda_list_steps_on_the_current_stream():
    ours_opt, theirs_opt, ours, theirs, gen = _twins(torch.float32)
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        for a, b in zip(ours, theirs):
            g = torch.randn(a.shape, device="cuda", generator=gen)
            a.grad, b.grad = g.clone(), g.clone()
        ours_opt.step()
        theirs_opt.step()
    stream.synchronize()
    for a, b in zip(ours, theirs):
        np.testing.assert_allclose(a.detach().cpu().numpy(), b.detach().cpu().numpy(),
                                   rtol=1e-5, atol=1e-6)
