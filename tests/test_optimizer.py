"""The stateful shell: state_dict round trips, defaults, allocation and import costs."""

import subprocess
import sys
import tracemalloc

import numpy as np
import pytest

import fastadam


@pytest.mark.parametrize("cls", [fastadam.Adam, fastadam.AdamW])
@pytest.mark.parametrize("amsgrad", [False, True])
def test_resume_from_state_dict_equals_uninterrupted(rng, cls, amsgrad):
    start = rng.standard_normal((31, 5)).astype(np.float32)
    grads = [rng.standard_normal((31, 5)).astype(np.float32) for _ in range(12)]
    whole = cls(start.copy(), lr=0.01, amsgrad=amsgrad)
    for g in grads:
        whole.step(g)

    first = cls(start.copy(), lr=0.01, amsgrad=amsgrad)
    for g in grads[:5]:
        first.step(g)
    sd = first.state_dict()
    resumed = cls(first.params.copy(), amsgrad=amsgrad)  # other lr: the state_dict restores it
    resumed.load_state_dict(sd)
    assert resumed.lr == 0.01 and resumed.step_count == 5
    for g in grads[5:]:
        resumed.step(g)
    np.testing.assert_array_equal(resumed.params, whole.params)
    for k, a in whole.state_dict()["state"][0].items():
        np.testing.assert_array_equal(resumed.state_dict()["state"][0][k], a)


def test_state_dict_is_a_copy_of_plain_values(rng):
    opt = fastadam.Adam(rng.standard_normal(10))
    opt.step(rng.standard_normal(10))
    sd = opt.state_dict()
    st = sd["state"][0]
    assert type(st["step"]) is int and st["step"] == 1
    assert all(type(x) is float for x in sd["param_groups"][0]["betas"])
    st["exp_avg"][:] = 99
    assert not np.any(opt.state_dict()["state"][0]["exp_avg"] == 99)


def test_load_state_dict_casts_moments(rng):
    opt = fastadam.Adam(rng.standard_normal(10).astype(np.float32))
    sd = fastadam.Adam(rng.standard_normal(10)).state_dict()  # float64 moments
    sd["state"][0]["exp_avg"] = rng.standard_normal(10)
    opt.load_state_dict(sd)
    got = opt.state_dict()["state"][0]["exp_avg"]
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, sd["state"][0]["exp_avg"], rtol=1e-7)


def test_adamw_is_decoupled_with_torch_default():
    opt = fastadam.AdamW(np.zeros(3))
    assert opt.hyperparameters["weight_decay"] == 1e-2
    assert opt.hyperparameters["decoupled_weight_decay"] is True
    assert "AdamW(" in repr(opt)


def test_zero_gradient_still_decays_only_with_adamw(rng):
    start = rng.standard_normal(100)
    adam, adamw = (
        fastadam.Adam(start.copy(), weight_decay=0.0),
        fastadam.AdamW(start.copy(), lr=0.1),
    )
    for _ in range(3):
        adam.step(np.zeros(100))
        adamw.step(np.zeros(100))
    np.testing.assert_array_equal(adam.params, start)
    np.testing.assert_allclose(adamw.params, start * (1 - 0.1 * 1e-2) ** 3, rtol=1e-12)


@pytest.mark.parametrize("backend,allowed", [("cpu", 0.05), ("numpy", None)])
def test_step_allocates_no_temporaries(rng, backend, allowed):
    n = 1 << 20
    opt = fastadam.Adam(
        rng.standard_normal(n).astype(np.float32), weight_decay=0.1, amsgrad=True, backend=backend
    )
    grads = rng.standard_normal(n).astype(np.float32)
    opt.step(grads)  # compile outside the measurement
    tracemalloc.start()
    try:
        opt.step(grads)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    if allowed is None:  # the naive baseline does allocate: the measurement can see it
        assert peak > 4 * n
    else:
        assert peak < allowed * 4 * n


def test_import_compiles_nothing():
    code = (
        "import sys, fastadam\n"
        "assert 'fastadam._backends.cpu' not in sys.modules\n"
        "assert 'numba' not in sys.modules, 'import fastadam should not load numba'\n"
        "import numpy as np\n"
        "fastadam.adam_step(*(np.ones(3) for _ in range(4)), step=1, backend='numpy')\n"
        "assert 'numba' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_thin_call_is_taken_and_leaves_the_rest_to_the_named_checks(rng, monkeypatch):
    """A good gradient steps through the thin path alone; anything else reaches the checks
    that name it, and changes nothing."""
    from fastadam._state import plans

    params = rng.standard_normal((33, 31)).astype(np.float32)
    opt = fastadam.AdamW(params.copy(), lr=0.01)
    twin = fastadam.AdamW(params.copy(), lr=0.01, skip_nonfinite=True)  # the general path
    calls = []
    original = plans.Plan._checked_grads
    monkeypatch.setattr(plans.Plan, "_checked_grads",
                        lambda self, g: calls.append(1) or original(self, g))
    for _ in range(3):
        g = rng.standard_normal((33, 31)).astype(np.float32)
        opt.step(g)
        twin.step(g)
    assert opt._plans.one is not None and len(calls) == 3  # the twin's only
    np.testing.assert_array_equal(opt.params, twin.params)
    before = opt.params.copy(), opt.state_dict()
    bad = [np.asfortranarray(g), g.astype(np.int32), g[:, :30], g.reshape(-1),
           g.astype(g.dtype.newbyteorder())]
    for grads in bad:
        with pytest.raises((TypeError, ValueError), match="grads"):
            opt.step(grads)
    np.testing.assert_array_equal(opt.params, before[0])
    assert opt.step_count == 3 and len(calls) == 3 + len(bad)


@pytest.mark.parametrize("n", [1024, 3 << 14])  # below and above one-thread stepping
def test_kernel_refuses_overlapping_gradients_before_writing(rng, n):
    buffer = rng.standard_normal(2 * n).astype(np.float32)
    opt = fastadam.Adam(buffer[:n])
    opt.step(rng.standard_normal(n).astype(np.float32))
    before = buffer.copy(), opt.state_dict()
    with pytest.raises(ValueError, match="overlap"):
        opt.step(buffer[n // 2: n // 2 + n])  # half of it is the params
    np.testing.assert_array_equal(buffer, before[0])
    after = opt.state_dict()["state"][0]
    assert after["step"] == 1
    for k in ("exp_avg", "exp_avg_sq"):
        np.testing.assert_array_equal(after[k], before[1]["state"][0][k])


@pytest.mark.parametrize("n", [4099, (1 << 14) - 1, 1 << 14, 70001])
def test_results_do_not_depend_on_threads_or_size_class(rng, n):
    """Small arrays step on one thread, large ones on all: the same bits either way."""
    params = rng.standard_normal(n).astype(np.float32)
    grads = [rng.standard_normal(n).astype(np.float32) for _ in range(3)]
    runs = []
    for threads in (1, 2, None):
        opt = fastadam.Adam(params.copy(), num_threads=threads, amsgrad=True)
        for g in grads:
            opt.step(g)
        runs.append(opt.params)
    reference = params.copy()
    m, v, v_max = (np.zeros(n, np.float32) for _ in range(3))
    for step, g in enumerate(grads, 1):
        fastadam.adam_step(reference, g, m, v, step=step, amsgrad=True, v_max=v_max,
                           backend="numpy")
    for run in runs:
        np.testing.assert_array_equal(run, runs[0])
        np.testing.assert_allclose(run, reference, rtol=1e-6, atol=1e-7)
