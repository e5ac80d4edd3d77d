"""The bulk reader of array headers that checks a list of gradients, against NumPy's own view."""

import pickle

import numpy as np
import pytest

import fastadam
from fastadam._backends.cpu import headers

F32, F64 = np.dtype(np.float32), np.dtype(np.float64)
SHAPES = [(3, 5), (7,), (2, 1, 4), (0,)]


@pytest.fixture(params=["headers", "attributes"])
def path(request, monkeypatch):
    """Each test runs through the compiled header reader and the Python fallback."""
    if request.param == "attributes":
        monkeypatch.setattr(headers, "layout_ok", lambda: False)
    return request.param


def good_arrays(rng):
    readonly = rng.standard_normal(SHAPES[1])
    readonly.flags.writeable = False
    return [rng.standard_normal(SHAPES[0]).astype(np.float32), readonly,
            rng.standard_normal(SHAPES[2]).astype(np.float32), np.empty(0, np.float64)]


def test_layout_confirmed_on_this_interpreter():
    assert headers.layout_ok()


def test_good_arrays_read_back_as_numpy_sees_them(rng, path):
    arrays = good_arrays(rng)
    table = headers.Table(SHAPES, [F32, F64])
    addresses, codes = table.read(arrays)
    assert addresses.tolist() == [a.ctypes.data for a in arrays]
    assert [table.dtypes[c] for c in codes] == [a.dtype for a in arrays]


def test_an_equal_dtype_object_is_learned(rng, path):
    arrays = good_arrays(rng)
    arrays[0] = pickle.loads(pickle.dumps(arrays[0]))  # the same dtype, another object
    table = headers.Table(SHAPES, [F32, F64])
    addresses, codes = table.read(arrays)
    assert addresses[0] == arrays[0].ctypes.data and table.dtypes[codes[0]] == F32


def misaligned():
    raw = np.zeros(3 * 5 * 4 + 1, dtype=np.uint8)
    return np.frombuffer(raw.data, dtype=np.float32, count=15, offset=1).reshape(3, 5)


BAD = {
    "wrong shape": lambda: np.ones((5, 3), np.float32),
    "same size, other ndim": lambda: np.ones(15, np.float32),
    "integer dtype": lambda: np.ones((3, 5), np.int32),
    "float16 not accepted here": lambda: np.ones((3, 5), np.float16),
    "byte-swapped": lambda: np.ones((3, 5), ">f4"),
    "strided": lambda: np.ones((3, 10), np.float32)[:, ::2],
    "Fortran order": lambda: np.asfortranarray(np.ones((3, 5), np.float32)),
    "misaligned": misaligned,
    "subclass": lambda: np.ma.ones((3, 5), np.float32),
    "float": lambda: 1.0,
    "None": lambda: None,
    "list": lambda: [[1.0] * 5] * 3,
    "long string": lambda: "x" * 10_000,
}


@pytest.mark.parametrize("bad", BAD, ids=list(BAD))
@pytest.mark.parametrize("position", [0, 3])
def test_anything_unusual_fails(rng, path, bad, position):
    arrays = good_arrays(rng)
    arrays[0], arrays[position] = arrays[position], arrays[0]
    shapes = list(SHAPES)
    shapes[0], shapes[position] = shapes[position], shapes[0]
    arrays[position] = BAD[bad]()
    assert headers.Table(shapes, [F32, F64]).read(arrays) is None


def test_list_steps_the_same_through_either_reader(rng, monkeypatch):
    shapes = [(64, 3), (5,), (70_001,), (1,)]
    params = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    grads = [[rng.standard_normal(s).astype(np.float32) for s in shapes] for _ in range(3)]
    results = []
    for layout in (True, False):
        monkeypatch.setattr(headers, "layout_ok", lambda layout=layout: layout)
        opt = fastadam.AdamW([p.copy() for p in params], lr=0.01, weight_decay=0.1)
        for g in grads:
            assert opt.step(g)
        results.append(opt.params)
    for a, b in zip(*results):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("where", [(0, 3), (2, 69_999)])
def test_nonfinite_anywhere_skips_the_whole_list(rng, where):
    shapes = [(64, 3), (5,), (70_001,)]  # the large one spans two chunks
    params = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    opt = fastadam.Adam(params, skip_nonfinite=True)
    grads = [rng.standard_normal(s).astype(d) for s, d in zip(shapes, [F32, F64, F32])]
    assert opt.step(grads)
    before = opt.state_dict()
    array, index = where
    grads[array].reshape(-1)[index] = np.inf
    assert opt.step(grads) is False
    after = opt.state_dict()
    for i in before["state"]:
        assert after["state"][i]["step"] == before["state"][i]["step"] == 1
        np.testing.assert_array_equal(after["state"][i]["exp_avg"], before["state"][i]["exp_avg"])
    grads[array].reshape(-1)[index] = 0.5
    assert opt.step(grads) and opt.step_count == 2


def test_bfloat16_is_learned_in_either_form_and_bare_uint16_never(rng, path):
    """A table accepting bfloat16 takes ml_dtypes' arrays and uint16 declared bfloat16
    (``BFLOAT16_BITS``, torch's tensors), each learned on sight, and still refuses plain
    uint16, which equals (and hashes as) the declared one."""
    from fastadam._core.dtypes import BFLOAT16_BITS, kind

    bits = rng.integers(0, 1 << 15, 15, dtype=np.uint16).reshape(3, 5)
    table = headers.Table([(3, 5)], [F32], ("float32", "bfloat16"))
    assert table.read([bits]) is None and kind(bits.dtype) is None
    addresses, codes = table.read([bits.view(BFLOAT16_BITS)])
    assert kind(table.dtypes[codes[0]]) == "bfloat16" and addresses[0] == bits.ctypes.data
    assert table.read([bits]) is None and kind(bits.dtype) is None
    ml_dtypes = pytest.importorskip("ml_dtypes")
    _, codes = table.read([bits.view(ml_dtypes.bfloat16)])
    assert kind(table.dtypes[codes[0]]) == "bfloat16"
