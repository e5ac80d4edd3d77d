"""The row-sparse step against torch.optim.SparseAdam and torch's formulas in float64."""

import numpy as np
import pytest
from helpers import optional

import fastadam

F32 = np.float32


def _lookups(rng, rows, nnz, dim, dtype=F32, hot=None):
    """Row indices with duplicates (a few hot rows looked up many times), and values."""
    indices = rng.integers(0, rows, nnz)
    if hot is not None and nnz:
        indices[: nnz // 4] = rng.choice(hot, nnz // 4)
    return indices, rng.standard_normal((nnz, dim)).astype(dtype)


@pytest.mark.parametrize("maximize", [False, True])
def test_matches_torch_sparse_adam_over_many_steps(rng, maximize):
    """Duplicates, rows absent for many steps, an empty step: the same as torch's
    SparseAdam on an nn.Embedding(sparse=True) table, to float32 rounding."""
    torch = optional("torch")
    rows, dim = 1001, 19
    table = rng.standard_normal((rows, dim)).astype(F32)
    emb = torch.nn.Embedding(rows, dim, sparse=True)
    with torch.no_grad():
        emb.weight.copy_(torch.from_numpy(table))
    opt = torch.optim.SparseAdam(emb.parameters(), lr=1e-2, maximize=maximize)
    param, m, v = table.copy(), np.zeros_like(table), np.zeros_like(table)
    never = np.arange(900, rows)  # rows 900.. stay absent throughout
    for step in range(1, 31):
        nnz = 0 if step == 7 else int(rng.integers(1, 400))
        indices, values = _lookups(rng, 900, nnz, dim, hot=[3, 5])
        emb.weight.grad = torch.sparse_coo_tensor(
            torch.from_numpy(indices)[None], torch.from_numpy(values), (rows, dim),
            check_invariants=True)
        opt.step()
        fastadam.sparse_adam_step(param, indices, values, m, v, step=step, lr=1e-2,
                                  maximize=maximize)
    theirs = emb.weight.detach().numpy()
    np.testing.assert_allclose(param, theirs, rtol=1e-5, atol=1e-6)
    state = opt.state[emb.weight]
    np.testing.assert_allclose(m, state["exp_avg"].to_dense().numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(v, state["exp_avg_sq"].to_dense().numpy(), rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(param[never], table[never])
    assert not np.array_equal(param[:900], table[:900])


def test_matches_a_float64_formula(rng):
    """float32 kernel against torch's formulas computed in float64."""
    rows, dim = 513, 33
    start = rng.standard_normal((rows, dim))
    param = start.astype(F32)
    m, v = np.zeros_like(param), np.zeros_like(param)
    exact = start.copy()
    em, ev = np.zeros_like(exact), np.zeros_like(exact)
    for step in range(1, 11):
        indices, values = _lookups(rng, rows, 300, dim, hot=[0, rows - 1])
        fastadam.sparse_adam_step(param, indices, values, m, v, step=step, lr=1e-2)
        fastadam.sparse_adam_step(exact, indices, values.astype(np.float64), em, ev, step=step,
                                  lr=1e-2)
    movement = np.abs(exact - start).max()
    assert np.abs(param - exact).max() < 1e-4 * movement + 1e-6


def test_kernel_equals_numpy_formulas_and_any_thread_count(rng):
    rows, dim = 700, 65
    table = rng.standard_normal((rows, dim)).astype(F32)
    results = []
    for backend, threads in (("numpy", None), ("cpu", 1), ("cpu", None)):
        param, m, v = table.copy(), np.zeros_like(table), np.zeros_like(table)
        r = np.random.default_rng(5)
        for step in range(1, 6):
            indices, values = _lookups(r, rows, 2000, dim, hot=[1, 2, 3])
            fastadam.sparse_adam_step(param, indices, values, m, v, step=step, lr=1e-3,
                                      backend=backend, num_threads=threads)
        results.append((param, m, v))
    for other in results[1:]:  # duplicates summed in one order: bit for bit
        for a, b in zip(results[0], other):
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("case,error,match", [
    ("negative", ValueError, "indices"), ("too_big", ValueError, "indices"),
    ("float_indices", TypeError, "indices"), ("bool_indices", TypeError, "indices"),
    ("values_shape", ValueError, "values"), ("values_dtype", TypeError, "values"),
    ("dense", ValueError, "param"), ("m_shape", ValueError, "m"), ("step", ValueError, "step"),
    ("overlap", ValueError, "overlap"), ("readonly", ValueError, "param"),
])
def test_bad_input_is_refused_and_nothing_changes(rng, case, error, match):
    rows, dim = 50, 8
    param = rng.standard_normal((rows, dim)).astype(F32)
    m, v = rng.random((rows, dim)).astype(F32), rng.random((rows, dim)).astype(F32)
    indices, values = _lookups(rng, rows, 20, dim)
    step = 3
    if case == "negative":
        indices[4] = -1
    elif case == "too_big":
        indices[-1] = rows
    elif case == "float_indices":
        indices = indices.astype(F32)
    elif case == "bool_indices":
        indices = indices > 3
    elif case == "values_shape":
        values = values[:, :-1]
    elif case == "values_dtype":
        values = values.astype(np.float64)
    elif case == "dense":
        param = param.reshape(-1)
    elif case == "m_shape":
        m = m[:-1]
    elif case == "step":
        step = 0
    elif case == "overlap":
        values = m[:20]
    elif case == "readonly":
        param.flags.writeable = False
    snapshot = [a.copy() for a in (param, m, v)]
    with pytest.raises(error, match=match):
        fastadam.sparse_adam_step(param, indices, values, m, v, step=step)
    for a, b in zip((param, m, v), snapshot):
        np.testing.assert_array_equal(a, b)
