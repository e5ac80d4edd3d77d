"""The row-sparse step (functional, fastadam.SparseAdam, fastadam.torch.SparseAdam) against
torch.optim.SparseAdam and torch's formulas in float64."""

import copy
import io

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
        values = values.astype(np.int32)
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


def _bf16():
    return optional("ml_dtypes").bfloat16


def _table_dtypes():
    return [np.float32, np.float64, np.float16, _bf16()]


@pytest.mark.parametrize("dtype_index,option", [
    (0, "default"), (1, "default"),
    *((i, o) for i in (2, 3) for o in ("default", "master_weights", "no_kahan", "bf16_state"))])
def test_sparse_adam_class_follows_a_float64_formula(rng, dtype_index, option):
    """Every table dtype and 16-bit option: the kernel equals the NumPy formulas bit for
    bit, and both follow torch's formulas in float64 to the table dtype's precision."""
    dtype = np.dtype(_table_dtypes()[dtype_index])
    sixteen = dtype.itemsize == 2
    kwargs = {"master_weights": {"master_weights": True}, "no_kahan": {"kahan_summation": False},
              "bf16_state": {"state_dtype": _bf16()}, "default": {}}[option]
    rows, dim = 301, 17
    start = rng.standard_normal((rows, dim))
    fused = fastadam.SparseAdam(start.astype(dtype), lr=1e-2, **kwargs)
    naive = fastadam.SparseAdam(start.astype(dtype), lr=1e-2, backend="numpy", **kwargs)
    exact, em, ev = start.copy(), np.zeros_like(start), np.zeros_like(start)
    for step in range(1, 13):
        nnz = 0 if step == 4 else 150
        indices, values = _lookups(rng, rows - 20, nnz, dim, hot=[2, 7])
        fused.step(indices, values.astype(dtype))
        naive.step(indices, values.astype(dtype))
        fastadam.sparse_adam_step(exact, indices, values.astype(dtype).astype(np.float64), em,
                                  ev, step=step, lr=1e-2)
    assert fused.step_count == 12
    np.testing.assert_array_equal(fused.table.view(np.uint8), naive.table.view(np.uint8))
    for key, value in fused.state_dict()["state"][0].items():
        if key != "step":
            np.testing.assert_array_equal(value, naive.state_dict()["state"][0][key])
    np.testing.assert_array_equal(fused.table[rows - 20:], start[rows - 20:].astype(dtype))
    error = np.abs(fused.table.astype(np.float64) - exact).max()
    movement = np.abs(exact - start).max()
    assert movement > 0.05
    if not sixteen:
        assert error < {4: 1e-5, 8: 1e-13}[dtype.itemsize] * movement
        return
    ulp = float(np.spacing(dtype.type(np.abs(exact).max())))
    # The table holds the accurate value rounded once (Kahan, master weights); rounded
    # at each of the 11 steps without them; bfloat16 moments add a relative 2^-8 per step.
    allowed = {"no_kahan": 6 * ulp, "bf16_state": ulp + 0.03 * movement}.get(option, ulp)
    assert error <= allowed


def test_sparse_adam_class_state_dict_and_checkpoint(rng, tmp_path):
    rows, dim = 200, 9
    table = rng.standard_normal((rows, dim)).astype(F32)
    a = fastadam.SparseAdam(table.copy(), lr=3e-3, betas=(0.8, 0.99), maximize=True)
    for _ in range(4):
        a.step(*_lookups(rng, rows, 60, dim, hot=[1]))
    state = a.state_dict()
    assert state["state"][0]["step"] == 4 and set(state["state"][0]) == {
        "step", "exp_avg", "exp_avg_sq"}
    assert state["param_groups"][0]["betas"] == (0.8, 0.99)
    b = fastadam.SparseAdam(a.table.copy())
    b.load_state_dict(state)
    path = tmp_path / "sparse.npz"
    a.save(path)
    c = fastadam.SparseAdam(a.table.copy())
    c.load(path)
    assert c.lr == 3e-3 and c.step_count == 4
    lookups = [_lookups(rng, rows, 60, dim, hot=[1]) for _ in range(3)]
    for opt in (a, b, c):
        for indices, values in lookups:
            opt.step(indices, values)
    np.testing.assert_array_equal(a.table, b.table)
    np.testing.assert_array_equal(a.table, c.table)
    with pytest.raises(ValueError, match="exp_avg"):
        bad = a.state_dict()
        bad["state"][0]["exp_avg"] = bad["state"][0]["exp_avg"][1:]
        b.load_state_dict(bad)
    np.testing.assert_array_equal(a.table, b.table)
    assert b.step_count == 7


def test_sparse_adam_class_loads_torch_sparse_adam_state(rng):
    """A torch SparseAdam's state_dict (tensors as arrays) loads, and stepping on gives
    torch's trajectory; an empty state (before torch's first step) loads as fresh."""
    torch = optional("torch")
    rows, dim = 120, 6
    emb = torch.nn.Embedding(rows, dim, sparse=True)
    table = emb.weight.detach().numpy().copy()
    theirs = torch.optim.SparseAdam(emb.parameters(), lr=1e-2)
    ours = fastadam.SparseAdam(table.copy(), lr=5.0)
    ours.load_state_dict({"state": {}, "param_groups": [
        {k: v for k, v in theirs.state_dict()["param_groups"][0].items()}]})
    assert ours.lr == 1e-2 and ours.step_count == 0
    lookups = [rng.integers(0, rows, 40) for _ in range(6)]
    for indices in lookups[:3]:
        theirs.zero_grad()
        emb(torch.from_numpy(indices)).sum().backward()
        theirs.step()
    sd = theirs.state_dict()
    ours = fastadam.SparseAdam(emb.weight.detach().numpy().copy())
    ours.load_state_dict({"state": {0: {k: v if k == "step" else v.numpy()
                                        for k, v in sd["state"][0].items()}},
                          "param_groups": sd["param_groups"]})
    for indices in lookups[3:]:
        theirs.zero_grad()
        emb(torch.from_numpy(indices)).sum().backward()
        theirs.step()
        ours.step(indices, np.ones((indices.size, dim), F32))
    np.testing.assert_allclose(ours.table, emb.weight.detach().numpy(), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("case", ["too_big", "values_shape", "float_indices", "readonly"])
def test_sparse_adam_class_refused_step_changes_nothing(rng, case):
    rows, dim = 64, 5
    opt = fastadam.SparseAdam(rng.standard_normal((rows, dim)).astype(F32))
    opt.step(*_lookups(rng, rows, 30, dim))
    before = opt.state_dict()
    table = opt.table.copy()
    indices, values = _lookups(rng, rows, 30, dim)
    if case == "too_big":
        indices[7] = rows
    elif case == "values_shape":
        values = values[1:]
    elif case == "float_indices":
        indices = indices.astype(np.float64)
    else:
        opt.table.flags.writeable = False
    with pytest.raises((ValueError, TypeError)):
        opt.step(indices, values)
    opt.table.flags.writeable = True
    np.testing.assert_array_equal(opt.table, table)
    after = opt.state_dict()
    assert after["state"][0]["step"] == before["state"][0]["step"] == opt.step_count == 1
    for key in ("exp_avg", "exp_avg_sq"):
        np.testing.assert_array_equal(after["state"][0][key], before["state"][0][key])


def test_sparse_adam_class_refuses_bad_construction(rng):
    with pytest.raises(ValueError, match="8bit"):
        fastadam.SparseAdam(np.zeros((10, 4), F32), state_dtype="8bit")
    with pytest.raises(ValueError, match="table"):
        fastadam.SparseAdam(np.zeros(10, F32))
    with pytest.raises(ValueError, match="16-bit"):
        fastadam.SparseAdam(np.zeros((10, 4), F32), master_weights=True)
    with pytest.raises(ValueError, match="lr"):
        fastadam.SparseAdam(np.zeros((10, 4), F32), lr=-1.0)


# --- fastadam.torch.SparseAdam ------------------------------------------------------


def _module_pair(torch, kind, rows, dim, dtype):
    make = (lambda: torch.nn.Embedding(rows, dim, sparse=True)) if kind == "embedding" else (
        lambda: torch.nn.EmbeddingBag(rows, dim, mode="sum", sparse=True))
    a, b = make().to(dtype), make().to(dtype)
    with torch.no_grad():
        b.weight.copy_(a.weight)
    return a, b


def _backward(torch, module, kind, indices, coalesce):
    module.zero_grad()
    idx = torch.from_numpy(indices)
    out = module(idx) if kind == "embedding" else module(idx, torch.arange(0, idx.numel(), 5))
    (out * torch.linspace(-1, 1, out.shape[-1], dtype=out.dtype)).square().sum().backward()
    if coalesce:
        module.weight.grad = module.weight.grad.coalesce()


@pytest.mark.parametrize("kind", ["embedding", "bag"])
@pytest.mark.parametrize("coalesce", [False, True])
@pytest.mark.parametrize("maximize", [False, True])
def test_torch_drop_in_matches_torch_sparse_adam(rng, kind, coalesce, maximize):
    torch = optional("torch")
    import fastadam.torch as fat

    rows, dim = 777, 12
    theirs_module, ours_module = _module_pair(torch, kind, rows, dim, torch.float32)
    theirs = torch.optim.SparseAdam(theirs_module.parameters(), lr=2e-2, maximize=maximize)
    ours = fat.SparseAdam(ours_module.parameters(), lr=2e-2, maximize=maximize)
    for step in range(12):
        indices = rng.integers(0, 700, 0 if step == 5 else 150)
        indices[:40] = 3  # a hot row
        for module, opt in ((theirs_module, theirs), (ours_module, ours)):
            if indices.size:
                _backward(torch, module, kind, indices, coalesce)
            else:  # an empty gradient still counts a step
                module.weight.grad = torch.sparse_coo_tensor(
                    torch.zeros((1, 0), dtype=torch.long), torch.zeros((0, dim)), (rows, dim),
                    check_invariants=True)
            opt.step()
    torch.testing.assert_close(ours_module.weight, theirs_module.weight, rtol=1e-5, atol=1e-6)
    for key in ("exp_avg", "exp_avg_sq"):
        torch.testing.assert_close(ours.state[ours_module.weight][key],
                                   theirs.state[theirs_module.weight][key])
    assert ours.state[ours_module.weight]["step"] == theirs.state[theirs_module.weight]["step"]
    assert torch.equal(ours_module.weight[700:], theirs_module.weight[700:])


def test_torch_drop_in_state_dict_is_interchangeable(rng):
    torch = optional("torch")
    import fastadam.torch as fat

    rows, dim = 300, 8
    a, b = _module_pair(torch, "embedding", rows, dim, torch.float32)
    ours, theirs = fat.SparseAdam(a.parameters(), lr=1e-2), torch.optim.SparseAdam(
        b.parameters(), lr=1e-2)
    for _ in range(3):
        indices = rng.integers(0, rows, 80)
        _backward(torch, a, "embedding", indices, False)
        ours.step()
    with torch.no_grad():
        b.weight.copy_(a.weight)
    theirs.load_state_dict(copy.deepcopy(ours.state_dict()))  # ours -> torch
    again = fat.SparseAdam(a.parameters(), lr=1.0)
    again.load_state_dict(copy.deepcopy(theirs.state_dict()))  # torch -> ours
    assert again.param_groups[0]["lr"] == 1e-2
    for _ in range(3):
        indices = rng.integers(0, rows, 80)
        for module, opt in ((a, again), (b, theirs)):
            _backward(torch, module, "embedding", indices, False)
            opt.step()
    torch.testing.assert_close(a.weight, b.weight, rtol=1e-5, atol=1e-6)


def test_torch_drop_in_16bit_tables_follow_float64(rng):
    """bfloat16 and float16 tables with their state in the table dtype, as torch keeps it:
    fastadam computes in float32 and rounds once (torch computes in the 16-bit dtype)."""
    torch = optional("torch")
    optional("ml_dtypes")
    import fastadam.torch as fat

    rows, dim = 200, 10
    torch.manual_seed(3)
    for dtype in (torch.bfloat16, torch.float16):
        module, exact_module = _module_pair(torch, "embedding", rows, dim, dtype)
        start = module.weight.detach().double().numpy().copy()
        opt = fat.SparseAdam(module.parameters(), lr=1e-2)
        exact, em, ev = start.copy(), np.zeros_like(start), np.zeros_like(start)
        for step in range(1, 9):
            indices = rng.integers(0, rows, 60)
            values = rng.standard_normal((60, dim))
            module.weight.grad = torch.sparse_coo_tensor(
                torch.from_numpy(indices)[None], torch.from_numpy(values).to(dtype), (rows, dim),
                check_invariants=True)
            opt.step()
            rounded = torch.from_numpy(values).to(dtype).double().numpy()
            fastadam.sparse_adam_step(exact, indices, rounded, em, ev, step=step, lr=1e-2)
        assert opt.state[module.weight]["exp_avg"].dtype == dtype
        error = np.abs(module.weight.detach().double().numpy() - exact).max()
        # rounded to the table dtype at each of 8 steps (no Kahan in torch's state layout)
        ulp = 2.0 ** (np.floor(np.log2(np.abs(exact).max())) - (7 if dtype == torch.bfloat16
                                                                 else 10))
        assert error <= 8 * ulp / 2


def test_torch_drop_in_fresh_state_is_zeros_like_the_param(rng):
    """The drop-in makes its state in NumPy's memory (huge pages): torch tensors of the
    param's dtype and shape all the same, zero in the rows no step touched."""
    torch = optional("torch")
    import fastadam.torch as fat

    rows, dim = 90, 5
    for dtype in (torch.float32, torch.float64, torch.float16, torch.bfloat16):
        module = torch.nn.Embedding(rows, dim, sparse=True, dtype=dtype)
        opt = fat.SparseAdam(module.parameters(), lr=1e-2)
        indices = rng.integers(0, 60, 40)
        touched = torch.from_numpy(np.unique(indices))
        module.weight.grad = torch.sparse_coo_tensor(
            torch.from_numpy(indices)[None], torch.randn(40, dim, dtype=dtype), (rows, dim),
            check_invariants=True)
        opt.step()
        state = opt.state[module.weight]
        for key in ("exp_avg", "exp_avg_sq"):
            t = state[key]
            assert (t.dtype, t.shape, t.device) == (dtype, module.weight.shape, torch.device("cpu"))
            assert t.is_contiguous() and not t.requires_grad
            assert not t[60:].any() and t[touched].abs().sum(dim=1).all()
        saved = io.BytesIO()
        torch.save(opt.state_dict(), saved)
        saved.seek(0)
        loaded = torch.load(saved)["state"][0]
        assert torch.equal(loaded["exp_avg_sq"], state["exp_avg_sq"])


def test_torch_drop_in_refuses_bad_gradients_and_changes_nothing(rng):
    torch = optional("torch")
    import fastadam.torch as fat

    good, bad = torch.nn.Embedding(50, 4, sparse=True), torch.nn.Embedding(50, 4, sparse=True)
    opt = fat.SparseAdam(list(good.parameters()) + list(bad.parameters()))
    before = [good.weight.detach().clone(), bad.weight.detach().clone()]
    good(torch.tensor([1, 2, 2])).sum().backward()
    bad.weight.grad = torch.ones(50, 4)  # dense
    with pytest.raises(TypeError, match=r"\['params'\]\[1\]\.grad is dense"):
        opt.step()
    assert torch.equal(good.weight, before[0]) and torch.equal(bad.weight, before[1])
    assert len(opt.state) == 0
    bad.weight.grad = None
    opt.step()
    assert not torch.equal(good.weight, before[0]) and len(opt.state) == 1


def test_torch_drop_in_element_sparse_gradient_steps_as_torch(rng):
    """A gradient sparse in both dims is not row-sparse: torch's own function steps it."""
    torch = optional("torch")
    import fastadam.torch as fat

    a, b = torch.nn.Parameter(torch.randn(20, 3)), torch.nn.Parameter(torch.randn(20, 3))
    with torch.no_grad():
        b.copy_(a)
    ours, theirs = fat.SparseAdam([a], lr=0.1), torch.optim.SparseAdam([b], lr=0.1)
    grad = torch.sparse_coo_tensor(torch.tensor([[1, 5, 5], [0, 2, 2]]), torch.randn(3), (20, 3),
                                   check_invariants=True)
    for p, opt in ((a, ours), (b, theirs)):
        p.grad = grad.clone()
        opt.step()
    assert torch.equal(a, b)


def _touched(param, m, v, values, rows):
    """What the memory-only pass should leave: each of ``rows`` plus the sum of the
    values rows that fall to it (nnz / rows.size each, in order)."""
    nnz, n = values.shape[0], rows.size
    sums = np.stack([values[u * nnz // n:(u + 1) * nnz // n].sum(axis=0, dtype=np.float64)
                     for u in range(n)])
    out = [a.astype(np.float64) for a in (param, m, v)]
    for a in out:
        a[rows] += sums
    return out


def test_memory_only_pass_reads_every_values_row_and_writes_only_the_rows(rng):
    """The benchmark's limit has the step's traffic: all nnz values rows read (not only
    one per distinct row) and each distinct row of param, m, v written, no other."""
    from fastadam.bench.roofline import touch_rows

    param, m, v = (rng.standard_normal((301, 13)).astype(F32) for _ in range(3))
    values = rng.standard_normal((157, 13)).astype(F32)
    rows = rng.permutation(301)[:41]
    expected = _touched(param, m, v, values, rows)
    touch_rows(param, m, v, values, rows)
    for got, want in zip((param, m, v), expected):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
