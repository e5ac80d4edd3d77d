"""fastadam.numba: the whole-array step, the per-step scalars and the element update,
called from Python, from ``@njit`` and from ``@njit(parallel=True)`` code, give exactly
the bits of ``fastadam.adam_step``; bad input is refused before anything is written."""

import numba
import numpy as np
import pytest
from helpers import OPTIONS, make_state, optional
from numba.core.errors import TypingError

import fastadam
import fastadam.numba as fn
from fastadam._core.options import HYPERPARAMETERS, KEYS

ml_dtypes = optional("ml_dtypes")
BF16, F16, F32, F64 = np.dtype(ml_dtypes.bfloat16), np.dtype(np.float16), np.dtype(np.float32), \
    np.dtype(np.float64)
STEPS = 3


def split(options: dict) -> tuple[dict, float | None]:
    """Hyperparameters, and the loss scale (not one of them)."""
    options = dict(options)
    return options, options.pop("grad_scale", None)


def bits(a):
    """An array as compiled code takes it: 16-bit floats as uint16."""
    return None if a is None else (a.view(np.uint16) if a.dtype.itemsize == 2 else a)


@numba.njit
def step_loop(param, grad, m, v, h, steps, v_max, kahan_comp, master_params):
    for t in range(1, steps + 1):
        fn.adam_step(param, grad, m, v, t, h, v_max, kahan_comp, master_params)


@numba.njit(parallel=True)
def fused_loop(param, grad, m, v, h, steps, grad_scale, v_max, kahan_comp, master_params):
    for t in range(1, steps + 1):
        c = fn.coefficients(t, h, grad_scale)
        for i in numba.prange(param.size):
            fn.update(i, grad[i], param, m, v, c, v_max, kahan_comp, master_params)


@numba.njit
def serial_update_loop(param, grad, m, v, h, steps, grad_scale, v_max):
    for t in range(1, steps + 1):
        c = fn.coefficients(t, h, grad_scale)
        for i in range(param.size):
            fn.update(i, grad[i], param, m, v, c, v_max)


def reference(arrays, options, grad_scale, steps=STEPS):
    param, grad, m, v, v_max, comp, master = [None if a is None else a.copy() for a in arrays]
    for t in range(1, steps + 1):
        fastadam.adam_step(param, grad, m, v, step=t, v_max=v_max, kahan_comp=comp,
                           master_params=master, grad_scale=grad_scale, **options)
    return param, m, v, v_max, comp, master


def assert_same(got_arrays, want):
    param, _, m, v, v_max, comp, master = got_arrays
    for name, got, expected in zip(("param", "m", "v", "v_max", "kahan_comp", "master"),
                                   (param, m, v, v_max, comp, master), want):
        if expected is not None:
            np.testing.assert_array_equal(bits(got), bits(expected), err_msg=name)


def copies(arrays):
    return [None if a is None else a.copy() for a in arrays]


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("n", [1001, 70_001])  # below and above the threads' threshold
@pytest.mark.parametrize("name", sorted(OPTIONS))
def test_three_levels_give_adam_steps_bits(rng, name, n, threads):
    options, grad_scale = split(OPTIONS[name])
    h = fn.hyper(**options)
    arrays = (*make_state(rng, n, np.float32), None, None)
    want = reference(arrays, options, grad_scale)
    previous = numba.get_num_threads()
    numba.set_num_threads(threads)
    try:
        fused = copies(arrays)
        fused_loop(fused[0], fused[1], *fused[2:4], h, STEPS, grad_scale, *fused[4:])
        assert_same(fused, want)
        if grad_scale is not None:
            return  # the step takes no loss scale: the per-step scalars do
        python, compiled = copies(arrays), copies(arrays)
        for t in range(1, STEPS + 1):
            fn.adam_step(*python[:4], t, h, *python[4:])
        step_loop(*compiled[:4], h, STEPS, *compiled[4:])
        assert_same(python, want)
        assert_same(compiled, want)
    finally:
        numba.set_num_threads(previous)


@pytest.mark.parametrize("name", ["all", "variants", "decouple_lr"])
def test_float64_and_a_plain_range_loop(rng, name):
    options, grad_scale = split(OPTIONS[name])
    h = fn.hyper(**options)
    arrays = (*make_state(rng, 4099, np.float64), None, None)
    want = reference(arrays, options, grad_scale)
    compiled, looped = copies(arrays), copies(arrays)
    step_loop(*compiled[:4], h, STEPS, *compiled[4:])
    serial_update_loop(*looped[:4], h, STEPS, grad_scale, looped[4])
    assert_same(compiled, want)
    assert_same(looped, want)


MIXED = [(BF16, BF16, F32), (F16, F16, F32), (BF16, F32, F32), (F32, BF16, F32),
         (F32, F16, F32), (BF16, BF16, BF16), (F16, F32, F16), (F64, F32, F32),
         (F32, F64, F64), (F64, F64, F32), (F16, BF16, F32), (BF16, F16, F16),
         (F32, BF16, F16)]


def mixed_state(rng, n, param_dtype, grad_dtype, state_dtype, extra=None):
    param, grad, m, v, v_max = make_state(rng, n, np.float32)
    param, grad = param.astype(param_dtype), grad.astype(grad_dtype)
    m, v, v_max = (a.astype(state_dtype) for a in (m, v, v_max))
    comp = master = None
    if extra == "kahan":
        comp = (param.astype(np.float32) * 1e-3).astype(param_dtype)
    elif extra == "master":
        master = param.astype(np.float32) + np.float32(1e-3)
    return param, grad, m, v, v_max, comp, master


@pytest.mark.parametrize("param_dtype,grad_dtype,state_dtype,extra", [
    (*dtypes, extra) for dtypes in MIXED
    for extra in ([None, "kahan", "master"] if dtypes[0].itemsize == 2 else [None])])
def test_every_dtype_combination(rng, param_dtype, grad_dtype, state_dtype, extra):
    options = {"lr": 0.02, "weight_decay": 0.1, "amsgrad": True}
    arrays = mixed_state(rng, 4099, param_dtype, grad_dtype, state_dtype, extra)
    want = reference(arrays, options, None)
    roles = {role: a.dtype.name for role, a in zip(("param", "grad", "state"), arrays[:3])
             if a.dtype.itemsize == 2}  # what uint16 arrays hold, per role where they differ
    spec = (None if not roles else next(iter(roles.values())) if len(set(roles.values())) == 1
            else ";".join(f"{role}={k}" for role, k in roles.items()))
    h = fn.hyper(**options, uint16_as=spec)
    python, compiled, fused = copies(arrays), copies(arrays), copies(arrays)
    for t in range(1, STEPS + 1):
        fn.adam_step(*python[:4], t, fn.hyper(**options), *python[4:])  # dtypes say 16-bit kind
    as_bits = [bits(a) for a in compiled]
    step_loop(*as_bits[:4], h, STEPS, *as_bits[4:])
    grad_values = fused[1].astype(np.float64)  # the gradient as a value, not its storage
    as_bits = [bits(a) for a in fused]
    fused_loop(as_bits[0], grad_values, *as_bits[2:4], h, STEPS, None, *as_bits[4:])
    for got in (python, compiled, fused):
        assert_same(got, want)


@numba.njit
def made_inside(weight_decay):
    return fn.hyper(lr=0.01, betas=(0.8, 0.99), weight_decay=weight_decay, amsgrad=True,
                    decoupled_weight_decay=True, uint16_as="bfloat16")


@numba.njit
def made_inside_plain():
    return fn.hyper()


def test_a_record_made_in_compiled_code_is_pythons():
    inside = made_inside(0.1)
    outside = fn.hyper(lr=0.01, betas=(0.8, 0.99), weight_decay=0.1, amsgrad=True,
                       decoupled_weight_decay=True, uint16_as="bfloat16")
    assert type(inside) is type(outside)
    assert inside == outside or all(a == b or a != a for a, b in zip(inside, outside))
    assert type(made_inside_plain()) is type(fn.hyper())
    assert "amsgrad" in type(inside).__name__ and "decoupled_decay" in type(inside).__name__


@numba.njit
def coefficients_of(step, h, grad_scale):
    c = fn.coefficients(step, h, grad_scale)
    return (c.beta1, c.one_minus_beta1, c.beta2, c.one_minus_beta2, c.m_coef, c.g_coef,
            c.scaled_eps_root, c.scaled_eps, c.weight_decay, c.decay_factor, c.inv_grad_scale)


@pytest.mark.parametrize("name", ["plain", "variants", "decouple_lr", "nesterov_amsgrad"])
def test_compiled_coefficients_equal_the_hosts(name):
    options, _ = split(OPTIONS[name])
    h = fn.hyper(**options)
    for step in np.unique(np.geomspace(1, 10**7, 60).astype(np.int64)):
        for scale in (None, 1024.0):
            assert coefficients_of(step, h, scale) == tuple(fn.coefficients(int(step), h, scale))


def test_update_from_python_matches_the_step(rng):
    h = fn.hyper(lr=0.01, amsgrad=True)
    arrays = (*make_state(rng, 33, np.float32), None, None)
    want = reference(arrays, {"lr": 0.01, "amsgrad": True}, None, steps=1)
    got = copies(arrays)
    c = fn.coefficients(1, h)
    for i in range(33):
        fn.update(i, float(got[1][i]), got[0], got[2], got[3], c, got[4])
    assert_same(got, want)
    with pytest.raises(ValueError, match="i must index"):
        fn.update(33, 0.5, got[0], got[2], got[3], c, got[4])


def unchanged(arrays):
    saved = copies(arrays)
    return lambda: all(a is None or np.array_equal(bits(a), bits(b), equal_nan=True)
                       for a, b in zip(arrays, saved))


def test_python_refuses_bad_input_before_writing(rng):
    h = fn.hyper(amsgrad=True)
    param, grad, m, v, v_max = make_state(rng, 7, np.float32)
    same = unchanged([param, grad, m, v, v_max])
    with pytest.raises(TypeError, match="h must be a record"):
        fn.adam_step(param, grad, m, v, 1, {"lr": 1e-3}, v_max)
    with pytest.raises(TypeError, match="h must be a record"):
        fn.adam_step(param, grad, m, v, 1, fn.coefficients(1, h), v_max)
    with pytest.raises(ValueError, match="step"):
        fn.adam_step(param, grad, m, v, 0, h, v_max)
    with pytest.raises(ValueError, match="amsgrad=True needs v_max"):
        fn.adam_step(param, grad, m, v, 1, h)
    with pytest.raises(ValueError, match="grad has shape"):
        fn.adam_step(param, grad[:5], m, v, 1, h, v_max)
    with pytest.raises(TypeError, match="v must have dtype"):
        fn.adam_step(param, grad, m, v.astype(np.float64), 1, h, v_max)
    with pytest.raises(ValueError, match="overlap|share"):
        fn.adam_step(param, m, m, v, 1, h, v_max)
    with pytest.raises(ValueError, match="betas"):
        fn.hyper(betas=(0.9, 1.0))
    with pytest.raises(ValueError, match="uint16_as"):
        fn.hyper(uint16_as="int16")
    with pytest.raises(ValueError, match="uint16_as"):
        fn.hyper(uint16_as="param=float16;param=bfloat16")
    assert same()


@numba.njit
def one_step(param, grad, m, v, step, h):
    fn.adam_step(param, grad, m, v, step, h)


def test_compiled_code_refuses_bad_input_before_writing(rng):
    h = fn.hyper()
    param, grad, m, v, _ = make_state(rng, 70_001, np.float32)
    same = unchanged([param, grad, m, v])
    with pytest.raises(ValueError, match="param's shape"):
        one_step(param, grad[:5], m, v, 1, h)
    with pytest.raises(ValueError, match="step must be >= 1"):
        one_step(param, grad, m, v, 0, h)
    for grad_aliased in (m, param, v):
        with pytest.raises(ValueError, match="overlap"):
            one_step(param, grad_aliased, m, v, 1, h)
    with pytest.raises(ValueError, match="overlap"):
        one_step(param, grad, param, v, 1, h)
    assert same()
    with pytest.raises((TypeError, TypingError), match="uint16_as"):
        one_step(param.view(np.uint16)[:4], grad[:4], m[:4], v[:4], 1, h)
    with pytest.raises((TypeError, TypingError), match="v must have m's dtype"):
        one_step(param, grad, m, v.astype(np.float64), 1, h)
    with pytest.raises((TypeError, TypingError), match="must be a record"):
        one_step(param, grad, m, v, 1, fn.coefficients(1, h))
    assert same()


@numba.njit
def negative_lr():
    return fn.hyper(lr=-1.0)


@numba.njit
def runtime_flag(flag):
    return fn.hyper(amsgrad=flag)


@numba.njit
def literal_flag(flag):
    return fn.hyper(amsgrad=numba.literally(flag))


def test_hyper_in_compiled_code_checks_values_and_wants_constant_options():
    with pytest.raises(ValueError, match="lr must be finite and >= 0"):
        negative_lr()
    with pytest.raises((TypeError, TypingError), match="amsgrad must be a constant"):
        runtime_flag(True)
    # numba.literally compiles the caller once per value of its argument.
    assert type(literal_flag(True)) is type(fn.hyper(amsgrad=True))
    assert type(literal_flag(False)) is type(fn.hyper())


def _compiled_hyper(name: str):
    """An ``@njit`` function ``f(value)`` returning ``fn.hyper(<name>=value)``."""
    scope = {"fn": fn}
    exec(f"def f(value):\n    return fn.hyper({name}=value)\n", scope)
    return numba.njit(scope["f"])


NUMBERS = [o.name for o in HYPERPARAMETERS if o.name in KEYS and not isinstance(o.default, bool)]


@pytest.mark.parametrize("name", NUMBERS)
def test_compiled_hyper_refuses_what_python_refuses(name):
    """The compiled checks are generated from the declared options: each numeric option,
    valid and not, is taken or refused (ValueError naming it) as in Python."""
    compiled = _compiled_hyper(name)
    pair = name == "betas"
    values = [0.5, 0.0, 1e-3, 2.0, -1.0, np.inf, -np.inf] + ([] if name == "max_lr" else [np.nan])
    for value in values:  # max_lr's NaN is None in a record
        argument = (value, 0.99) if pair else value
        try:
            want = fn.hyper(**{name: argument})
        except ValueError as e:
            assert name in str(e)
            with pytest.raises(ValueError, match=name):
                compiled(argument)
        else:
            got = compiled(argument)  # weight decay passed is compiled in (documented)
            assert type(got) is type(want) or name == "weight_decay"
            assert all(a == b or a != a and b != b for a, b in zip(got, want)), (name, value)
