"""fastadam.flatten: many arrays in one buffer, stepped as one."""

import numpy as np
import pytest

import fastadam


def shapes():
    return [(3, 4), (7,), (), (2, 3, 5), (1,)]


def test_views_hold_the_values_and_share_the_buffer(rng):
    arrays = [rng.standard_normal(s).astype(np.float32) for s in shapes()]
    flat = fastadam.flatten(arrays)
    assert flat.data.ndim == 1 and flat.data.flags.c_contiguous
    assert flat.data.size == sum(a.size for a in arrays)
    for view, a in zip(flat.views, arrays):
        assert view.shape == a.shape and view.dtype == a.dtype
        np.testing.assert_array_equal(view, a)
        assert np.shares_memory(view, flat.data)
        assert not np.shares_memory(view, a)  # a copy: the inputs are left alone
    flat.views[0][1, 2] = 42.0
    assert 42.0 in flat.data


def test_one_step_on_the_buffer_equals_a_step_per_array(rng):
    arrays = [rng.standard_normal(s) for s in shapes()]
    grads = [rng.standard_normal(s) for s in shapes()]
    flat = fastadam.flatten(arrays)
    opt = fastadam.AdamW(flat.data, lr=0.01)
    g = flat.like()
    for view, grad in zip(g.views, grads):
        view[...] = grad  # as a backward pass would write them
    opt.step(g.data)
    np.testing.assert_array_equal(flat.gather(grads), g.data)
    for view, a, grad in zip(flat.views, arrays, grads):
        one = fastadam.AdamW(a.copy(), lr=0.01)
        one.step(grad)
        np.testing.assert_array_equal(view, one.params)


def test_gradients_of_another_dtype(rng):
    ml_dtypes = pytest.importorskip("ml_dtypes")
    flat = fastadam.flatten([rng.standard_normal(s).astype(np.float32) for s in shapes()])
    grads = flat.like(ml_dtypes.bfloat16)
    assert grads.data.dtype == ml_dtypes.bfloat16 and grads.shapes == flat.shapes


@pytest.mark.parametrize("arrays,error", [
    (np.zeros(3), TypeError),
    ([np.zeros(3), [1.0, 2.0]], TypeError),
    ([np.zeros(3, np.float32), np.zeros(3, np.float64)], TypeError),
    ([np.zeros(3, np.int32)], TypeError),
])
def test_bad_input(arrays, error):
    with pytest.raises(error, match="arrays"):
        fastadam.flatten(arrays)


def test_gather_checks_shapes(rng):
    flat = fastadam.flatten([np.zeros((2, 2)), np.zeros(3)])
    with pytest.raises(ValueError, match="shapes"):
        flat.gather([np.zeros(4), np.zeros(3)])
    with pytest.raises(ValueError, match="out"):
        flat.gather([np.zeros((2, 2)), np.zeros(3)], out=np.zeros(6))
