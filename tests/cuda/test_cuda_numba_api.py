"""fastadam.numba.cuda.update inside a user's own @cuda.jit kernel gives the bits of
fastadam.adam_step with the gradient the kernel computed (simulator in CI, or a GPU)."""

import numpy as np
import pytest
from helpers import OPTIONS, make_state

import fastadam

cuda = pytest.importorskip("numba.cuda")
ml_dtypes = pytest.importorskip("ml_dtypes")

import fastadam.numba.cuda as adam  # noqa: E402

import fastadam.numba as fn  # noqa: E402

BF16 = np.dtype(ml_dtypes.bfloat16)


@cuda.jit
def quadratic_step(param, target, m, v, v_max, c):
    """The gradient of sum((param - target)**2), computed per element and applied."""
    i = cuda.grid(1)
    if i < target.size:
        adam.update(i, 2 * (target[i] * -1.0 + param[i]), param, m, v, c, v_max)


@cuda.jit
def bf16_step(param, grad, m, v, c):
    i = cuda.grid(1)
    if i < grad.size:
        adam.update(i, grad[i], param, m, v, c)


@pytest.mark.parametrize("name", ["plain", "all", "variants", "all_decoupled"])
def test_update_in_a_users_kernel_matches_adam_step(rng, name):
    options = OPTIONS[name]
    h = fn.hyper(**options)
    n = 301
    param, target, m, v, v_max = make_state(rng, n, np.float32)
    want = [a.copy() for a in (param, m, v, v_max)]
    device = [cuda.to_device(a) for a in (param, target, m, v, v_max)]
    for step in (1, 2, 3):
        grad = (2 * (target * -1.0 + want[0])).astype(np.float32)
        fastadam.adam_step(want[0], grad, want[1], want[2], step=step, v_max=want[3],
                           **options)
        quadratic_step[(n + 127) // 128, 128](*device, fn.coefficients(step, h))
    got = [device[i].copy_to_host() for i in (0, 2, 3, 4)]
    for g, w, label in zip(got, want, ("param", "m", "v", "v_max")):
        if label != "v_max" or options.get("amsgrad"):
            np.testing.assert_array_equal(g, w, err_msg=label)


def test_bfloat16_params_as_uint16(rng):
    h = fn.hyper(lr=1e-2, weight_decay=0.1, decoupled_weight_decay=True, uint16_as="bfloat16")
    n = 129
    param, grad, m, v, _ = make_state(rng, n, np.float32)
    param = param.astype(BF16)
    want = [param.copy(), m.copy(), v.copy()]
    fastadam.adam_step(*want[:1], grad, *want[1:], step=1, lr=1e-2, weight_decay=0.1,
                       decoupled_weight_decay=True)
    device = [cuda.to_device(a) for a in (param.view(np.uint16), grad, m, v)]
    bf16_step[(n + 127) // 128, 128](*device, fn.coefficients(1, h))
    np.testing.assert_array_equal(device[0].copy_to_host(), want[0].view(np.uint16))
    np.testing.assert_array_equal(device[2].copy_to_host(), want[1])
