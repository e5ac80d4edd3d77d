"""Every CUDA kernel variant compiles to PTX for sm_90, without a GPU.

The simulator runs the kernels as Python; this checks that the real compiler
accepts them too (typing, the bit casts, float32-only arithmetic). It needs
NVRTC (``pip install "numba-cuda[cu13]"``) and no driver.
"""

import itertools
import os

import pytest

cuda = pytest.importorskip("numba.cuda")
if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1":
    pytest.skip("the simulator compiles nothing", allow_module_level=True)

import fastadam.numba.cuda as adam  # noqa: E402
from numba import types  # noqa: E402

import fastadam.numba as fn  # noqa: E402
from fastadam._backends.cuda import dense, eight_bit, memory, sparse  # noqa: E402
from fastadam._core.hyper import Flags  # noqa: E402
from fastadam.bench import roofline_cuda  # noqa: E402

ARRAY = {"float16": types.uint16, "bfloat16": types.uint16, "float32": types.float32,
         "float64": types.float64}


@pytest.fixture(scope="module")
def compile_ptx():
    import numba.cuda.dispatcher as dispatcher

    try:
        cuda.compile_ptx(lambda x: None, (types.float32[::1],), cc=(9, 0))
    except Exception as e:  # no NVRTC/NVVM here
        if os.environ.get("CI"):
            raise
        pytest.skip(f"no CUDA compiler: {type(e).__name__}")

    class Hopper:  # device functions ask the current device for its compute capability
        compute_capability = (9, 0)

    saved = dispatcher.get_current_device
    dispatcher.get_current_device = lambda: Hopper()
    yield lambda fn, sig: cuda.compile_ptx(fn, sig, cc=(9, 0))[0]
    dispatcher.get_current_device = saved


KINDS = [("float32", "float32", "float32"), ("float64", "float64", "float64"),
         ("bfloat16", "bfloat16", "float32"), ("float16", "float32", "float16"),
         ("bfloat16", "float32", "bfloat16"), ("float32", "bfloat16", "float32")]
OPTIONS = [dict(), dict(amsgrad=True, nesterov=True, l2=True, maximize=True),
           dict(kahan=True, decoupled=True), dict(master=True, decoupled=True),
           dict(stochastic=True, decoupled=True)]
SIXTEEN_BIT_ONLY = ("kahan", "master", "stochastic")

CASES = [(k, o) for k, o in itertools.product(KINDS, OPTIONS)
         if not any(o.get(x) for x in SIXTEEN_BIT_ONLY) or k[0] in ("float16", "bfloat16")]


def make_flags(kinds, options) -> Flags:
    param, grad, state = kinds
    return Flags(maximize=options.get("maximize", False), amsgrad=options.get("amsgrad", False),
                 l2_decay=options.get("l2", False), decoupled_decay=options.get("decoupled", False),
                 nesterov=options.get("nesterov", False), kahan=options.get("kahan", False),
                 master=options.get("master", False), param=param, grad=grad, state=state,
                 stochastic=options.get("stochastic", False))


@pytest.mark.parametrize("kinds,options", CASES)
def test_fused_kernel_compiles(compile_ptx, kinds, options):
    param, grad, state = kinds
    flags = make_flags(kinds, options)
    compute = types.float64 if param == "float64" else types.float32
    sig = (ARRAY[param][::1], ARRAY[grad][::1], ARRAY[state][::1], ARRAY[state][::1],
           ARRAY[state][::1], ARRAY[param][::1], types.float32[::1]) + coefficients(compute) + NOISE
    ptx = compile_ptx(dense.fused_kernel(flags).py_func, sig)
    assert "sqrt.rn" in ptx
    if param != "float64" and "float64" not in kinds:
        assert ".f64" not in ptx  # float32 arithmetic only


@pytest.mark.parametrize("kinds,options", CASES)
def test_one_launch_list_kernel_compiles(compile_ptx, kinds, options):
    flags = make_flags(kinds, options)
    compute = types.float64 if kinds[0] == "float64" else types.float32
    sig = (types.uint64[:, ::1], types.uint64[::1], types.int64[:, ::1]) + coefficients(compute)
    ptx = compile_ptx(dense.multi_kernel(flags).py_func, sig + NOISES)
    assert "sqrt.rn" in ptx and "st.global" in ptx  # stores through the table's addresses
    if kinds[0] != "float64" and "float64" not in kinds:
        assert ".f64" not in ptx


def coefficients(compute) -> tuple:
    """The kernels' coefficient argument: one tuple (``hyper.COEFFICIENTS``)."""
    return (types.UniTuple(compute, 11),)


def counted_scalars(compute) -> tuple:
    """The counted kernels' ``host, terms`` (``dense.counted_scalars``)."""
    return (types.UniTuple(compute, 6), types.UniTuple(types.float64, 6))


COUNTED = (types.int64[::1], types.int32[::1])  # the step count and the skip flag
SCALED = COUNTED + (types.float64[::1],)  # and the gradients' multiplier (with the clip)
NOISE = (types.uint32, types.int64)  # a rounding key and the step (stochastic rounding)
NOISES = (types.uint32[::1], types.int64)  # one key per array of a batch, the step


@pytest.mark.parametrize("kinds,options", CASES)
def test_counted_kernels_compile(compile_ptx, kinds, options):
    """The variants that keep the step count on the device compute their coefficients there,
    in float64 as the host does, and store nothing when the skip flag is set."""
    flags = make_flags(kinds, options)
    param, grad, state = kinds
    compute = types.float64 if param == "float64" else types.float32
    scalars = counted_scalars(compute)
    arrays = (ARRAY[param][::1], ARRAY[grad][::1], ARRAY[state][::1], ARRAY[state][::1],
              ARRAY[state][::1], ARRAY[param][::1], types.float32[::1])
    ptx = compile_ptx(dense.fused_kernel(flags, True).py_func,
                      arrays + SCALED + scalars + NOISE[:1])
    assert "sqrt.rn" in ptx and ".f64" in ptx  # float64 coefficients, as on the host
    tables = (types.uint64[:, ::1], types.uint64[::1], types.int64[:, ::1])
    ptx = compile_ptx(dense.multi_kernel(flags, True).py_func,
                      tables + SCALED + scalars + NOISES[:1])
    assert "sqrt.rn" in ptx and "st.global" in ptx


def test_step_count_kernel_compiles(compile_ptx):
    assert "st.global" in compile_ptx(dense._advance.py_func, COUNTED)


@pytest.mark.parametrize("kind", ["float16", "bfloat16", "float32", "float64"])
def test_nonfinite_kernel_compiles(compile_ptx, kind):
    """The non-finite check of a list: chunks of gradients found through the address table."""
    from fastadam._backends.cuda import norm

    ptx = compile_ptx(norm.nonfinite_rows_kernel(kind).py_func,
                      (types.uint64[::1], types.int64[:, ::1], types.int32[::1]))
    assert "ld.global" in ptx and "st.global.u32" in ptx


def test_memory_only_kernel_compiles(compile_ptx):
    kernel = roofline_cuda.memory_only_kernel(2, 3).kernel
    sig = (types.uint16[::1],) * 2 + (types.uint32[::1],) * 3  # views, as the bench passes
    assert "st.global" in compile_ptx(kernel.py_func, sig)


@pytest.mark.parametrize("width", [types.uint16, types.uint32, types.uint64])
def test_fill_zero_kernel_compiles(compile_ptx, width):
    assert "st.global" in compile_ptx(memory.fill_zero.py_func, (width[::1],))


@pytest.mark.parametrize("kind", ["float16", "bfloat16", "float32", "float64"])
def test_widen_kernel_compiles(compile_ptx, kind):
    ptx = compile_ptx(memory.widen_kernel(kind).py_func, (ARRAY[kind][::1], types.float32[::1]))
    assert "st.global" in ptx and (kind == "float64" or ".f64" not in ptx)


EIGHT_BIT_CASES = [(k, o) for k, o in CASES if k[2] in ("float32", "float64")
                   and k[1] == k[0] or k == ("bfloat16", "bfloat16", "float32")]


def _low_bit(fmt, kinds, options):
    """(flags, the encoder tables' type) of the low-bit kernels in format ``fmt`` (4-bit:
    torchao's moment formula; its maps stand in for the tables)."""
    flags = make_flags(kinds, options)._replace(lerp=fmt == "4bit")
    return flags, types.float32[::1] if fmt == "4bit" else types.uint32[::1]


@pytest.mark.parametrize("fmt", ["8bit", "4bit"])
@pytest.mark.parametrize("counted", [False, True])
@pytest.mark.parametrize("kinds,options", EIGHT_BIT_CASES)
def test_low_bit_kernel_compiles(compile_ptx, kinds, options, counted, fmt):
    """The low-bit kernels: a warp per block, the scales by shuffles (no barrier, no
    atomics), the lanes' elements in registers; float32 arithmetic only for float32 and
    16-bit params; in 4 bits, torchao's division by the scale rounded as IEEE's."""
    param, grad, state = kinds
    flags, entries = _low_bit(fmt, kinds, options)
    compute = types.float64 if param == "float64" else types.float32
    codes, absmax = types.uint8[::1], types.float32[::1]
    sig = ((ARRAY[param][::1], ARRAY[grad][::1]) + (codes,) * 3 + (absmax,) * 3
           + (ARRAY[param][::1], types.float32[::1], absmax, absmax, entries, entries))
    sig += (SCALED + counted_scalars(compute) + NOISE[:1] if counted
            else coefficients(compute) + NOISE)
    ptx = compile_ptx(eight_bit.fused_kernel(flags, counted, fmt).py_func, sig)
    assert "sqrt.rn" in ptx and "shfl.sync.bfly" in ptx
    assert "bar.sync" not in ptx and "atom" not in ptx  # a warp per block: no barrier
    assert "st.global.u8" in ptx and "st.local" not in ptx  # the lanes' elements in registers
    if fmt == "4bit":
        assert "div.rn.f32" in ptx and "div.approx" not in ptx
    if param != "float64" and not counted:
        assert ".f64" not in ptx


@pytest.mark.parametrize("fmt", ["8bit", "4bit"])
@pytest.mark.parametrize("counted", [False, True])
@pytest.mark.parametrize("kinds,options", EIGHT_BIT_CASES)
def test_low_bit_list_kernel_compiles(compile_ptx, kinds, options, counted, fmt):
    """The one-launch low-bit kernels: arrays found through the address table (global
    loads and byte stores through it), the array of each block by a search."""
    flags, entries = _low_bit(fmt, kinds, options)
    compute = types.float64 if kinds[0] == "float64" else types.float32
    sig = (types.uint64[:, ::1], types.uint64[::1], types.int64[::1], types.int64[::1],
           types.float32[::1], types.float32[::1], entries, entries)
    sig += (SCALED + counted_scalars(compute) + NOISES[:1] if counted
            else coefficients(compute) + NOISES)
    ptx = compile_ptx(eight_bit.multi_kernel(flags, counted, fmt).py_func, sig)
    assert "sqrt.rn" in ptx and "shfl.sync.bfly" in ptx and "bar.sync" not in ptx
    assert "st.global.u8" in ptx and "ld.global" in ptx
    if kinds[0] != "float64" and not counted:
        assert ".f64" not in ptx


SPARSE_CASES = [(k, o) for k, o in CASES if not (o.get("amsgrad") or o.get("decoupled"))] + [
    (("float32", "float32", "float32"), dict(maximize=True)),
    (("bfloat16", "bfloat16", "float32"), dict(kahan=True)),
    (("float16", "float16", "float32"), dict(master=True))]


@pytest.mark.parametrize("kinds,options", SPARSE_CASES)
def test_sparse_kernel_compiles(compile_ptx, kinds, options):
    """The row-sparse update: float32 arithmetic only for float32 and 16-bit tables."""
    param, grad, state = kinds
    compute = types.float64 if param == "float64" else types.float32
    table = lambda kind: ARRAY[kind][:, ::1]  # noqa: E731
    sig = (table(param), table(state), table(state), table(param), types.float32[:, ::1],
           types.uint64[::1], table(grad)) + (compute,) * 4 + NOISE
    ptx = compile_ptx(sparse.sparse_kernel(make_flags(kinds, options)).py_func, sig)
    assert "sqrt.rn" in ptx and "st.global" in ptx
    if param != "float64" and "float64" not in kinds:
        assert ".f64" not in ptx


@pytest.mark.parametrize("index", [types.int32, types.int64])
def test_sparse_grouping_kernels_compile(compile_ptx, index):
    """The device sort of the lookups (keys, merge passes) and the index range check."""
    keys = types.uint64[::1]
    assert "shl.b64" in compile_ptx(sparse._keys.py_func, (index[::1], keys))
    assert "st.global.u64" in compile_ptx(sparse._merge.py_func, (keys, keys, types.int64))
    assert "atom.global.add" in compile_ptx(sparse._bad_indices.py_func,
                                            (index[::1], types.int64, types.int64[::1]))


def test_cuda_kernels_are_cached_on_disk_per_variant(tmp_path):
    """Every CUDA kernel gets a disk cache of its own (numba-cuda keys each entry by the
    device's compute capability too); its files never collide with another variant's."""
    from fastadam._backends import cache

    kernels = [dense.fused_kernel(make_flags(("float32",) * 3, {})),
               dense.fused_kernel(make_flags(("float32",) * 3, {"amsgrad": True})),
               dense.multi_kernel(make_flags(("bfloat16", "float32", "float32"), {}), True),
               eight_bit.fused_kernel(make_flags(("float32",) * 3, {})),
               sparse.sparse_kernel(make_flags(("float32",) * 3, {})), memory.fill_zero]
    if cache.directory() is None:
        pytest.skip("caching is off here")
    paths = {k._cache._cache_file._index_path for k in kernels}
    assert len(paths) == len(kernels)
    assert all(type(k._cache).__name__ == "Keyed" for k in kernels)


@pytest.mark.parametrize("kinds,options", [c for c in CASES if c[0][0] != "float64"][::3])
def test_the_update_never_fuses_a_multiply_into_an_add(compile_ptx, kinds, options):
    """NVVM contracts a * b + c into one FMA, which rounds once where the CPU rounds twice:
    the element update's products are libdevice's round-to-nearest multiplies instead, so
    the GPU gives the CPU's bits. (The counted variants compute their float64
    coefficients with pow and sqrt, which are libdevice's own.)"""
    flags = make_flags(kinds, options)
    param, grad, state = kinds
    sig = (ARRAY[param][::1], ARRAY[grad][::1], ARRAY[state][::1], ARRAY[state][::1],
           ARRAY[state][::1], ARRAY[param][::1], types.float32[::1]) + coefficients(types.float32)
    for ptx in (compile_ptx(dense.fused_kernel(flags).py_func, sig + NOISE),
                compile_ptx(dense.multi_kernel(flags).py_func,
                            (types.uint64[:, ::1], types.uint64[::1], types.int64[:, ::1])
                            + coefficients(types.float32) + NOISES)):
        assert "fma.rn.f32" not in ptx and "mul.rn.f32" in ptx
    if kinds[2] == "float32" and not options.get("amsgrad"):
        table = lambda kind: ARRAY[kind][:, ::1]  # noqa: E731
        sparse_sig = (table(param), table(state), table(state), table(param),
                      types.float32[:, ::1], types.uint64[::1], table(grad)) + (types.float32,) * 4
        assert "fma.rn.f32" not in compile_ptx(
            sparse.sparse_kernel(make_flags(kinds, {k: v for k, v in options.items()
                                                    if k not in ("decoupled", "l2")})).py_func,
            sparse_sig + NOISE)


@pytest.mark.parametrize("kind", ["float32", "bfloat16", "float16", "float64"])
def test_norm_kernels_compile(compile_ptx, kind):
    """The clip's sum of squares: float64 sums through shared memory, a fixed tree."""
    from fastadam._backends.cuda import norm

    sig = (types.uint64[::1], types.int64[::1], types.int64[:, ::1], types.float64[::1])
    ptx = compile_ptx(norm.squares_kernel(kind).py_func, sig)
    assert "bar.sync" in ptx and "st.shared.f64" in ptx
    assert "st.global.f64" in compile_ptx(norm._total.py_func,
                                          (types.float64[::1], types.float64[::1]))


def test_clip_kernels_compile(compile_ptx):
    """The clip coefficient on the device: the host's float64 arithmetic (IEEE sqrt and
    division, no fast-math approximation), and the multiplier put from the host."""
    from fastadam._backends.cuda import norm

    one = types.float64[::1]
    ptx = compile_ptx(norm.clip_kernel.py_func, (one, types.float64, types.float64,
                                                 types.boolean, one, one, types.int32[::1]))
    assert "sqrt.rn.f64" in ptx and "div.rn.f64" in ptx and "st.global.f64" in ptx
    assert "st.global.f64" in compile_ptx(dense._put.py_func, (one, types.float64))


def test_kernels_launch_without_the_low_occupancy_warning():
    """One thread for a scalar, one block for a tree sum: small grids are meant, so the
    backend's kernels configure their launches without numba-cuda's warning (and leave
    the setting as it was for everyone else's kernels)."""
    import warnings

    from numba import config

    from fastadam._backends.cuda import runtime

    def body(a):
        a[0] = 1

    with warnings.catch_warnings(record=True) as plain:
        warnings.simplefilter("always")
        cuda.jit(body)[1, 1]  # configures only: nothing runs without a driver
    assert any("under-utilization" in str(w.message) for w in plain)  # the control
    setting = config.CUDA_LOW_OCCUPANCY_WARNINGS
    with warnings.catch_warnings(record=True) as ours:
        warnings.simplefilter("always")
        runtime.cached(cuda.jit(body), "tests.quiet")[1, 1]
        memory.fill_zero[1, 1]
    assert not ours and config.CUDA_LOW_OCCUPANCY_WARNINGS == setting
    assert runtime.stream_handle(None) == 0


def test_kernels_compile_under_a_numpy_without_row_stack(compile_ptx):
    """NumPy 2.5 removed ``np.row_stack``, which numba-cuda 0.30 overloads while loading
    its typing at the first compile: fastadam's kernels still compile, and NumPy is left
    as it was (a fresh process, as NumPy 2.5 would be)."""
    import subprocess
    import sys

    script = """
import numpy as np
if hasattr(np, "row_stack"):
    del np.row_stack
    np.__all__.remove("row_stack")
from numba import cuda, types
import numba.cuda.dispatcher as dispatcher
from fastadam._backends.cuda import dense
class Hopper:
    compute_capability = (9, 0)
dispatcher.get_current_device = lambda: Hopper()
f32 = types.float32[::1]
ptx, _ = cuda.compile_ptx(lambda a: None, (f32,), cc=(9, 0))
assert ".entry" in ptx and not hasattr(np, "row_stack")
print("ok")
"""
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env=env, timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-3000:]


def _user_kernel(p, target, m, v, v_max, c):
    """A user's kernel: the gradient of a quadratic, then fastadam.numba.cuda.update."""
    i = cuda.grid(1)
    if i < p.size:
        adam.update(i, 2.0 * (target[i] - target[i] * 0.5), p, m, v, c, v_max)


@pytest.mark.parametrize("param,state", [("float32", "float32"), ("bfloat16", "float32"),
                                         ("float16", "float16"), ("float64", "float64")])
def test_update_compiles_into_a_users_kernel(compile_ptx, param, state):
    from numba.cuda.typing.typeof import typeof

    c = fn.coefficients(2, fn.hyper(amsgrad=True, weight_decay=0.1, uint16_as=(
        param if param in ("float16", "bfloat16") else None)))
    sig = (ARRAY[param][::1], types.float32[::1], ARRAY[state][::1], ARRAY[state][::1],
           ARRAY[state][::1], typeof(c))
    ptx = compile_ptx(_user_kernel, sig)
    assert "sqrt.rn" in ptx and "st.global" in ptx
    assert "fma.rn.f32" not in ptx  # products round on their own, as on the CPU


VARIANT_CASES = [(k, o) for k, o in CASES if not (o.get("amsgrad") or o.get("master"))
                 and k[2] != "bfloat16"]


@pytest.mark.parametrize("rule", ["schedulefree", "ademamix"])
@pytest.mark.parametrize("kinds,options", VARIANT_CASES)
def test_variant_kernels_compile(compile_ptx, kinds, options, rule):
    """Schedule-free AdamW's and AdEMAMix's element updates in the one-array and list
    kernels (and schedule-free's swap): IEEE square root and division, float32 only
    for float32 and 16-bit params."""
    param, grad, state = kinds
    flags = make_flags(kinds, options)._replace(rule=rule)
    compute = types.float64 if param == "float64" else types.float32
    sig = (ARRAY[param][::1], ARRAY[grad][::1], ARRAY[state][::1], ARRAY[state][::1],
           ARRAY[state][::1], ARRAY[param][::1], types.float32[::1]) + coefficients(compute) + NOISE
    many = (types.uint64[:, ::1], types.uint64[::1], types.int64[:, ::1]) + coefficients(compute)
    ptxs = [compile_ptx(dense.fused_kernel(flags).py_func, sig),
            compile_ptx(dense.multi_kernel(flags).py_func, many + NOISES)]
    if rule == "schedulefree":
        ptxs.append(compile_ptx(dense.swap_kernel(flags).py_func, (
            ARRAY[param][::1], ARRAY[state][::1], ARRAY[param][::1], types.float32[::1],
            compute)))
    for ptx in ptxs:
        if param != "float64" and "float64" not in kinds:
            assert ".f64" not in ptx
    assert "sqrt.rn" in ptxs[0] and "div.rn" in ptxs[0]
