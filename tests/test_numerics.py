"""Every backend and option against the float64 formula, and against torch.optim."""

import numpy as np
import pytest
from helpers import DTYPES, OPTIONS, RTOL, SIZES, assert_close, make_state
from reference import adam_f64

import fastadam

BACKENDS = ["cpu", "numpy"]
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("option", OPTIONS)
@pytest.mark.parametrize("shape", SIZES + [(33, 17)])
def test_one_step_matches_float64(rng, backend, dtype, option, shape):
    kw = OPTIONS[option]
    param, grad, m, v, v_max = make_state(rng, shape, dtype)
    step = int(rng.integers(1, 20))
    want_p, want_m, want_v, want_vmax, update = adam_f64(param, grad, m, v, v_max, step=step, **kw)
    assert np.abs(update).max() > 0  # the step moves the params
    fastadam.adam_step(param, grad, m, v, v_max=v_max, step=step, backend=backend, **kw)
    assert param.dtype == dtype and m.dtype == dtype
    assert_close(param, want_p, dtype)
    assert_close(m, want_m, dtype)
    assert_close(v, want_v, dtype)
    if kw.get("amsgrad"):
        assert_close(v_max, want_vmax, dtype)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_first_steps_from_zero_state(rng, backend, dtype):
    """Bias correction is largest in the first steps, from the zero state."""
    n = 1001
    param = rng.standard_normal(n).astype(dtype)
    ref = param.astype(np.float64)
    m = np.zeros(n, dtype)
    v = np.zeros(n, dtype)
    ref_m, ref_v = m.astype(np.float64), v.astype(np.float64)
    for step in range(1, 6):
        grad = rng.standard_normal(n).astype(dtype)
        ref, ref_m, ref_v, _, _ = adam_f64(ref, grad, ref_m, ref_v, None, step=step, lr=0.01)
        fastadam.adam_step(param, grad, m, v, step=step, lr=0.01, backend=backend)
    np.testing.assert_allclose(param, ref, rtol=0, atol=10 * RTOL[dtype] * np.abs(ref).max())


def test_backends_differ_only_by_rounding(rng):
    """The fused kernel and the naive baseline agree over many steps, in float64."""
    a = make_state(rng, 5003, np.float64)
    b = [x.copy() for x in a]
    for step in range(1, 31):
        grad = rng.standard_normal(5003)
        for backend, (param, _, m, v, v_max) in (("cpu", a), ("numpy", b)):
            fastadam.adam_step(param, grad, m, v, v_max=v_max, step=step, amsgrad=True,
                               weight_decay=0.1, backend=backend)
    for x, y in zip(a, b):
        if x is not a[1]:
            np.testing.assert_allclose(x, y, rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("n", [4099, 100_003])
def test_bitwise_identical_for_any_thread_count(rng, n):
    import numba

    states = {}
    for threads in range(1, numba.config.NUMBA_NUM_THREADS + 1):
        param, _, m, v, v_max = make_state(np.random.default_rng(1), n, np.float32)
        data = np.random.default_rng(2)
        for step in range(1, 4):
            grad = data.standard_normal(n).astype(np.float32)
            fastadam.adam_step(
                param,
                grad,
                m,
                v,
                v_max=v_max,
                step=step,
                amsgrad=True,
                weight_decay=0.01,
                backend="cpu",
                num_threads=threads,
            )
        states[threads] = (param, m, v, v_max)
    first = states[1]
    for threads, state in states.items():
        for x, y in zip(first, state):
            assert x.tobytes() == y.tobytes(), f"{threads} threads differ from 1"


def test_num_threads_restored(rng):
    import numba

    before = numba.get_num_threads()
    param, grad, m, v, _ = make_state(rng, 100, np.float32, amsgrad=False)
    fastadam.adam_step(param, grad, m, v, step=1, num_threads=1)
    assert numba.get_num_threads() == before


def test_num_threads_restored_on_error(rng, monkeypatch):
    import numba

    from fastadam._backends.cpu import dense

    wanted = numba.config.NUMBA_NUM_THREADS  # (one thread runs the serial loop instead)
    if wanted < 2:
        pytest.skip("one Numba thread: no thread count to set")

    def failing(flags):
        def kernel(*args):
            assert numba.get_num_threads() == wanted
            raise RuntimeError("boom")

        return kernel

    monkeypatch.setattr(dense, "fused_kernel", failing)
    numba.set_num_threads(1)
    param, grad, m, v, _ = make_state(rng, 100, np.float32, amsgrad=False)
    try:
        with pytest.raises(RuntimeError, match="boom"):
            fastadam.adam_step(param, grad, m, v, step=1, num_threads=wanted, backend="cpu")
        assert numba.get_num_threads() == 1
    finally:
        numba.set_num_threads(wanted)


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_arrays_are_a_no_op(backend):
    e = np.zeros(0, np.float32)
    fastadam.adam_step(e, e.copy(), e.copy(), e.copy(), step=1, backend=backend)
    opt = fastadam.Adam(np.zeros((0, 3)), backend=backend)
    opt.step(np.zeros((0, 3)))
    assert opt.step_count == 1


@pytest.mark.parametrize("backend", BACKENDS)
def test_zero_dimensional_param(backend):
    param = np.array(1.5)
    fastadam.adam_step(
        param, np.array(0.25), np.array(0.0), np.array(0.0), step=1, lr=0.1, backend=backend
    )
    np.testing.assert_allclose(param, 1.4, rtol=1e-7)  # first step moves by lr * sign(grad)
