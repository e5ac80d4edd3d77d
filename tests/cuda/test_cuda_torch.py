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


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_a_clipped_cuda_list_follows_clip_grad_norm_and_hands_back_a_device_tensor(dtype):
    # One launch per batch with the clip decided on the device: the norm comes back as
    # a fresh 0-d tensor on the GPU each step, as clip_grad_norm_ returns it.
    _, theirs_opt, ours, theirs, gen = _twins(dtype)
    ours_opt = fastadam.torch.AdamW(ours, lr=1e-2, max_grad_norm=1.0)
    norms = []
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        for _ in range(3):
            for a, b in zip(ours, theirs):
                g = torch.randn(a.shape, device="cuda", generator=gen).to(dtype)
                a.grad, b.grad = g.clone(), g.clone()
            ours_opt.step()
            want = torch.nn.utils.clip_grad_norm_(theirs, 1.0)
            theirs_opt.step()
            norms.append((ours_opt.grad_norm, want))
    stream.synchronize()
    for got, want in norms:  # each step's own tensor, none overwritten
        assert got.is_cuda and got.dim() == 0
        assert float(got) == pytest.approx(float(want), rel=1e-5 if dtype == torch.float32
                                           else 1e-2)
    rtol = 1e-5 if dtype == torch.float32 else 1e-2
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a.float(), b.float(), rtol=rtol, atol=rtol)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_adamw8bit_on_cuda_tensors_follows_the_cpu_step(monkeypatch, dtype):
    """fastadam.torch.AdamW8bit on CUDA tensors: state on the device, the step on the
    current stream, the 8-bit tensors in one launch per step (bitsandbytes launches per
    tensor), the CPU step's params and codes (up to the GPU's fused multiply-adds), and a
    state_dict that continues on the CPU."""
    batched = counting(monkeypatch, "multi_kernel", "_backends.cuda.eight_bit")
    alone = counting(monkeypatch, "fused_kernel", "_backends.cuda.eight_bit")
    shapes = [(300, 70), (4099,), (50,)]  # two with 8-bit moments (one ragged), one 32-bit
    gen = torch.Generator().manual_seed(0)
    start = [torch.randn(s, generator=gen).to(dtype) for s in shapes]
    on_gpu = [torch.nn.Parameter(t.cuda()) for t in start]
    on_cpu = [torch.nn.Parameter(t.clone()) for t in start]
    gpu_opt = fastadam.torch.AdamW8bit(on_gpu, lr=1e-2)
    cpu_opt = fastadam.torch.AdamW8bit(on_cpu, lr=1e-2)
    stream = torch.cuda.Stream()
    for _ in range(4):
        for a, b in zip(on_gpu, on_cpu):
            g = torch.randn(b.shape, generator=gen).to(dtype)
            a.grad, b.grad = g.cuda(), g
        stream.wait_stream(torch.cuda.current_stream())  # the gradients' copies
        with torch.cuda.stream(stream):
            gpu_opt.step()
        cpu_opt.step()
    stream.synchronize()
    assert len(batched) == 4 and not alone and gpu_opt._plan is not None
    assert [gpu_opt.state[p]["step"] for p in on_gpu] == [4] * 3
    assert all(v.device.type == "cuda" for s in gpu_opt.state.values() for v in s.values()
               if isinstance(v, torch.Tensor))
    rtol = 1e-5 if dtype == torch.float32 else 1e-2
    for a, b in zip(on_gpu, on_cpu):
        torch.testing.assert_close(a.detach().cpu().float(), b.detach().float(), rtol=rtol,
                                   atol=rtol)
    for p, q in zip(on_gpu[:2], on_cpu[:2]):
        got, want = gpu_opt.state[p]["state2"].cpu().int(), cpu_opt.state[q]["state2"].int()
        assert (got - want).abs().max() <= 1 and (got != want).float().mean() < 0.01
    resumed = fastadam.torch.AdamW8bit([torch.nn.Parameter(a.detach().cpu()) for a in on_gpu],
                                       lr=1e-2)
    resumed.load_state_dict(gpu_opt.state_dict())
    assert resumed.state[resumed.param_groups[0]["params"][0]]["absmax1"].device.type == "cpu"
    for p in resumed.param_groups[0]["params"]:
        p.grad = torch.randn(p.shape, generator=gen).to(dtype)
    resumed.step()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_adamw4bit_on_cuda_tensors_is_the_cpu_step(monkeypatch, dtype):
    """fastadam.torch.AdamW4bit on CUDA tensors: state on the device, the step on the
    current stream, the list in one launch per step, the CPU step's params, codes and
    scales bit for bit, and a state_dict that continues on the CPU."""
    batched = counting(monkeypatch, "multi_kernel", "_backends.cuda.eight_bit")
    alone = counting(monkeypatch, "fused_kernel", "_backends.cuda.eight_bit")
    shapes = [(300, 70), (4099,), (5,)]  # ragged blocks, odd sizes
    gen = torch.Generator().manual_seed(0)
    start = [torch.randn(s, generator=gen).to(dtype) for s in shapes]
    on_gpu = [torch.nn.Parameter(t.cuda()) for t in start]
    on_cpu = [torch.nn.Parameter(t.clone()) for t in start]
    kw = dict(lr=1e-2, amsgrad=True)
    gpu_opt = fastadam.torch.AdamW4bit(on_gpu, **kw)
    cpu_opt = fastadam.torch.AdamW4bit(on_cpu, **kw)
    stream = torch.cuda.Stream()
    for _ in range(4):
        for a, b in zip(on_gpu, on_cpu):
            g = torch.randn(b.shape, generator=gen).to(dtype)
            a.grad, b.grad = g.cuda(), g
        stream.wait_stream(torch.cuda.current_stream())  # the gradients' copies
        with torch.cuda.stream(stream):
            gpu_opt.step()
        cpu_opt.step()
    stream.synchronize()
    assert len(batched) == 4 and not alone and gpu_opt._plan is not None
    assert all(v.device.type == "cuda" for s in gpu_opt.state.values() for v in s.values()
               if isinstance(v, torch.Tensor))
    for a, b in zip(on_gpu, on_cpu):
        assert torch.equal(a.detach().cpu(), b.detach())
        for name, value in cpu_opt.state[b].items():
            if isinstance(value, torch.Tensor):
                assert torch.equal(gpu_opt.state[a][name].cpu(), value), name
    resumed = fastadam.torch.AdamW4bit([torch.nn.Parameter(a.detach().cpu()) for a in on_gpu],
                                       **kw)
    resumed.load_state_dict(gpu_opt.state_dict())
    first = resumed.param_groups[0]["params"][0]
    assert resumed.state[first]["exp_avg_codes"].device.type == "cpu"
    for p in resumed.param_groups[0]["params"]:
        p.grad = torch.randn(p.shape, generator=gen).to(dtype)
    resumed.step()


def test_adam8bit_takes_a_bitsandbytes_cuda_checkpoint():
    """bitsandbytes' own 8-bit AdamW on the GPU, continued by fastadam's from its
    state_dict: the same params within the 8-bit tolerance."""
    bnb = pytest.importorskip("bitsandbytes")
    gen = torch.Generator(device="cuda").manual_seed(0)
    start = torch.randn(256, 100, device="cuda", generator=gen)
    grads = [torch.randn(start.shape, device="cuda", generator=gen) for _ in range(10)]
    p = torch.nn.Parameter(start.clone())
    theirs = bnb.optim.AdamW8bit([p], lr=1e-2)
    for g in grads[:5]:
        p.grad = g.clone()
        theirs.step()
    middle, saved = p.detach().clone(), theirs.state_dict()
    for g in grads[5:]:
        p.grad = g.clone()
        theirs.step()
    q = torch.nn.Parameter(middle.clone())
    ours = fastadam.torch.AdamW8bit([q], lr=1e-2)
    ours.load_state_dict(saved)
    for g in grads[5:]:
        q.grad = g.clone()
        ours.step()
    moved = (p.detach() - middle).abs().mean()
    assert (q.detach() - p.detach()).abs().mean() <= 0.05 * moved


def test_host_reads_wait_for_a_step_on_a_non_blocking_stream():
    # torch's side streams do not wait for the legacy default stream, nor it for them:
    # step_count, grad_norm and state_dict must still see a step queued behind a long
    # kernel there, and the state zeroed at construction must be zero when it runs.
    gen = torch.Generator(device="cuda").manual_seed(1)
    p = torch.randn(1 << 20, device="cuda", generator=gen)
    g = torch.randn(1 << 20, device="cuda", generator=gen)
    torch.cuda.synchronize()
    opt = fastadam.Adam(p, lr=1e-2, skip_nonfinite=True, max_grad_norm=1.0)
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        torch.cuda._sleep(200_000_000)  # a long spin before the step on this stream
        opt.step(g, stream=stream)
    assert opt.step_count == 1
    assert float(opt.grad_norm) == pytest.approx(float(torch.linalg.vector_norm(
        g.double())), rel=1e-9)
    state = opt.state_dict()["state"][0]
    assert state["step"] == 1
    np.testing.assert_allclose(state["exp_avg"], 0.1 * g.cpu().numpy() * min(
        1.0, 1.0 / (float(torch.linalg.vector_norm(g.double())) + 1e-6)), rtol=1e-5)


def test_cupy_gradients_are_waited_for_on_the_device_not_the_host():
    # A CuPy gradient names the stream that made it; the step's stream waits for that
    # stream on the device (the host does not), so a gradient still being written
    # behind a long kernel is read only once it is done.
    cupy = pytest.importorskip("cupy")
    n = 1 << 20
    p = cupy.asarray(np.linspace(-1, 1, n, dtype=np.float32))
    opt = fastadam.Adam(p, lr=1e-2)
    producer = torch.cuda.Stream()
    with cupy.cuda.ExternalStream(producer.cuda_stream):
        g = cupy.empty(n, dtype=cupy.float32)
        with torch.cuda.stream(producer):
            torch.cuda._sleep(200_000_000)  # the fill below waits behind this
        g.fill(0.5)
        opt.step(g)  # on the default stream; g's interface names the producer
    torch.cuda.synchronize()
    want = np.linspace(-1, 1, n, dtype=np.float32) - np.float32(1e-2)  # step 1: lr * sign
    np.testing.assert_allclose(cupy.asnumpy(p), want, rtol=0, atol=1e-6)
