"""Every check on arguments, run before any kernel writes.

Each function either returns a normalized value or raises a ``TypeError`` /
``ValueError`` that names the offending argument. Nothing here modifies data.
"""

from __future__ import annotations

import bisect
import math
import numbers

import numpy as np

BACKENDS = ("auto", "numpy", "cpu", "cuda")
KINDS = ("float16", "bfloat16", "float32", "float64")
SIXTEEN_BIT = ("float16", "bfloat16")


def kind(dtype) -> str | None:
    """The float kind of a dtype ("float16", "bfloat16", "float32", "float64"), else None.

    bfloat16 is ml_dtypes' (what JAX uses); it is recognized by name, so fastadam
    needs ml_dtypes only where such arrays exist.
    """
    try:
        return _KIND_OF[dtype]
    except KeyError:
        name = dtype.name
        found = name if name in KINDS and dtype.isnative else None
        _KIND_OF[dtype] = found
        return found


_KIND_OF: dict = {}  # dtype -> kind: a dict look-up is far cheaper than dtype.name


def dtype_kind(name: str, value) -> str:
    """A dtype argument (np.float32, "bfloat16", ml_dtypes.bfloat16, ...) as its kind."""
    try:
        k = kind(np.dtype(value))
    except TypeError:
        k = value if value in KINDS else None
    if k is None:
        raise TypeError(f"{name} must be one of {KINDS}, got {value!r}")
    return k


def positive(name: str, value) -> float:
    """A finite real > 0."""
    value = real(name, value)
    if value == 0.0:
        raise ValueError(f"{name} must be > 0, got {value}")
    return value


def real(name: str, value, *, below_one: bool = False) -> float:
    """A finite real >= 0 (and < 1 when ``below_one``), as a Python float."""
    if type(value) is not float:  # the common case skips the slow ABC check
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
        value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    if value < 0.0:
        raise ValueError(f"{name} must be >= 0, got {value}")
    if below_one and value >= 1.0:
        raise ValueError(f"{name} must be in [0, 1), got {value}")
    return value


def grad_scale(value) -> float | None:
    """None, or a finite loss scale > 0 that the gradients are divided by."""
    return None if value is None else positive("grad_scale", value)


def betas(value) -> tuple[float, float]:
    """A pair (beta1, beta2), each in [0, 1)."""
    if isinstance(value, (str, bytes)) or not hasattr(value, "__len__") or len(value) != 2:
        raise TypeError(f"betas must be a pair (beta1, beta2), got {value!r}")
    return real("betas[0]", value[0], below_one=True), real("betas[1]", value[1], below_one=True)


def flag(name: str, value) -> bool:
    """A bool (Python or NumPy)."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__}")
    return bool(value)


def step(value) -> int:
    """The 1-based count of the update about to be applied."""
    if type(value) is int and value >= 1:
        return value
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"step must be an int >= 1, got {type(value).__name__}")
    value = int(value)
    if value < 1:
        raise ValueError(f"step must be an int >= 1, got {value}")
    return value


def backend(name) -> str:
    """One of ``BACKENDS``."""
    if name not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {name!r}")
    return name


def num_threads(value) -> int | None:
    """None (all of Numba's threads) or an int in [1, NUMBA_NUM_THREADS]."""
    if value is None:
        return None
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"num_threads must be None or an int, got {type(value).__name__}")
    from numba import config  # imported here so that the NumPy path never needs numba

    if not 1 <= value <= config.NUMBA_NUM_THREADS:
        raise ValueError(f"num_threads must be in [1, {config.NUMBA_NUM_THREADS}], got {value}")
    return int(value)


def is_device(x) -> bool:
    """True for GPU arrays: numba's (real or simulated) and any ``__cuda_array_interface__``."""
    if isinstance(x, np.ndarray) or x is None:
        return False
    if getattr(x, "__cuda_ndarray__", False):
        return True
    try:
        return hasattr(x, "__cuda_array_interface__")
    except (RuntimeError, TypeError):  # torch: a CUDA tensor that requires grad, or a
        return True  # bfloat16 one, refuses the interface


def host_array(name: str, a, *, writable: bool) -> np.ndarray:
    """A C-contiguous, aligned float32/float64 NumPy array (writable if asked)."""
    if not isinstance(a, np.ndarray):
        if is_device(a):
            raise TypeError(f"{name} is a GPU array, but param is a host NumPy array; "
                            "pass host arrays throughout, or GPU arrays throughout")
        raise TypeError(f"{name} must be a NumPy array, got {type(a).__name__}")
    if kind(a.dtype) is None:
        raise TypeError(
            f"{name} must have a float dtype ({', '.join(KINDS)}), got {a.dtype}; "
            f"convert it with {name}.astype(np.float32)"
        )
    flags = a.flags
    if not flags.c_contiguous:
        raise ValueError(
            f"{name} must be C-contiguous; pass np.ascontiguousarray({name}) "
            "and copy the result back"
        )
    if not flags.aligned:
        raise ValueError(f"{name} must be aligned to its dtype")
    if writable and not flags.writeable:
        raise ValueError(f"{name} is read-only; it is updated in place")
    return a


def device_array(name: str, a, *, writable: bool):
    """A numba device array viewing ``a`` (numba, CuPy, torch CUDA, ...): float, C-contiguous."""
    if isinstance(a, np.ndarray):
        raise TypeError(f"{name} is a host NumPy array, but param is on the GPU; "
                        f"move it with numba.cuda.to_device({name})")
    if not is_device(a):
        raise TypeError(f"{name} must be a GPU array, got {type(a).__name__}")
    from . import _cuda

    try:
        interface = getattr(a, "__cuda_array_interface__", None)
    except RuntimeError as e:  # torch's message says to use .detach()
        raise TypeError(f"{name}: {e}") from e
    except TypeError:  # torch has no interface for bfloat16: its int16 view, below
        interface = None
    d = _cuda.as_device_array(a)
    if kind(d.dtype) is None:
        raise TypeError(f"{name} must have dtype float16, float32 or float64 (bfloat16: "
                        f"declare 16-bit storage with fastadam.as_bfloat16), got {d.dtype}")
    if not d.is_c_contiguous():
        raise ValueError(f"{name} must be C-contiguous")
    if writable and interface is not None and interface["data"][1]:
        raise ValueError(f"{name} is read-only; it is updated in place")
    return d


def like(name: str, a, param, *, writable: bool, device: bool = False, dtype=None):
    """An array of ``param``'s shape (host, or device when ``device``), of ``dtype`` if given."""
    a = (device_array if device else host_array)(name, a, writable=writable)
    if a.shape != param.shape:
        raise ValueError(f"{name} has shape {a.shape}, but param has shape {param.shape}")
    if dtype is not None and a.dtype != dtype:
        raise TypeError(f"{name} must have dtype {dtype}, got {a.dtype}")
    return a


def disjoint(named: dict) -> None:
    """Refuse arrays that share memory: the fused pass reads and writes them at once.

    Sorted by address, contiguous arrays are disjoint exactly when each one ends
    before the next begins: O(n log n) for an optimizer's many params.
    """
    order = {name: i for i, name in enumerate(named)}
    spans = sorted((_interval(a), name) for name, a in named.items() if a is not None and a.size)
    for ((_, end), first), ((start, _), second) in zip(spans, spans[1:]):
        if start < end:
            first, second = sorted((first, second), key=order.get)
            raise ValueError(f"{first} and {second} overlap in memory; pass separate arrays")


def apart(name: str, a, others: dict) -> None:
    """Refuse ``a`` if it shares memory with any of ``others`` (name -> array)."""
    for other_name, b in others.items():
        if b is not None and a.size and b.size and _overlap(a, b):
            raise ValueError(f"{name} and {other_name} overlap in memory; pass separate arrays")


def apart_from_all(items: list, others: list) -> None:
    """Refuse any of ``items`` that shares memory with any of ``others`` (lists of (name,
    array); ``others`` pairwise disjoint). Sorting makes it O(n log n) for many arrays."""
    spans = sorted((_interval(b), name) for name, b in others if b.size)
    starts = [start for (start, _), _ in spans]
    for name, a in items:
        if not a.size:
            continue
        start, end = _interval(a)
        j = bisect.bisect_left(starts, end) - 1  # the last one starting before a ends
        if j >= 0 and spans[j][0][1] > start:
            raise ValueError(f"{name} and {spans[j][1]} overlap in memory; pass separate arrays")


def _interval(a) -> tuple[int, int]:
    if isinstance(a, np.ndarray):
        start = a.__array_interface__["data"][0]
        return start, start + a.nbytes
    return _device_interval(a)


def _overlap(a, b) -> bool:
    # Exact for contiguous arrays: each one's memory is one interval.
    if isinstance(a, np.ndarray):
        return np.may_share_memory(a, b)
    (a0, a1), (b0, b1) = _device_interval(a), _device_interval(b)
    return a0 < b1 and b0 < a1


def _device_interval(d) -> tuple[int, int]:
    interface = getattr(d, "__cuda_array_interface__", None)
    if interface is None:  # the simulator's arrays wrap a host array
        start = d._ary.__array_interface__["data"][0]
    else:
        start = interface["data"][0]
    return start, start + d.size * d.dtype.itemsize


def step_arrays(backend: str, param, grad, m, v, v_max, comp, master, amsgrad: bool) -> tuple:
    """Every check on the arrays of one step; returns them flattened to 1-D views.

    ``backend`` is the resolved one: "cuda" wants GPU arrays, the others NumPy
    arrays. grad may have any float dtype; m, v (and v_max) share one float
    dtype; ``comp`` (Kahan compensation) has the param's 16-bit dtype;
    ``master`` (master params) is float32, for 16-bit params.
    """
    device = backend == "cuda"
    param = (device_array if device else host_array)("param", param, writable=True)
    grad = like("grad", grad, param, writable=False, device=device)
    m = like("m", m, param, writable=True, device=device)
    v = like("v", v, param, writable=True, device=device, dtype=m.dtype)
    if amsgrad:
        if v_max is None:
            raise ValueError("amsgrad=True needs v_max, the running maximum of v")
        v_max = like("v_max", v_max, param, writable=True, device=device, dtype=m.dtype)
    else:
        v_max = None
    comp, master = _param_extras(param, comp, master, device)
    disjoint({"param": param, "grad": grad, "m": m, "v": v, "v_max": v_max,
              "kahan_comp": comp, "master_params": master})
    return tuple(None if a is None else a.reshape(-1)
                 for a in (param, grad, m, v, v_max, comp, master))


def _param_extras(param, comp, master, device: bool) -> tuple:
    """The Kahan compensation and master params of 16-bit params, checked (or None)."""
    sixteen = kind(param.dtype) in SIXTEEN_BIT
    if comp is not None and master is not None:
        raise ValueError("kahan_comp and master_params exclude each other: pass one")
    if comp is not None:
        if not sixteen:
            raise ValueError(f"kahan_comp is for 16-bit params; param is {param.dtype}")
        comp = like("kahan_comp", comp, param, writable=True, device=device, dtype=param.dtype)
    if master is not None:
        if not sixteen:
            raise ValueError(f"master_params is for 16-bit params; param is {param.dtype}")
        master = like("master_params", master, param, writable=True, device=device,
                      dtype=np.dtype(np.float32))
    return comp, master


def step_arrays_8bit(backend: str, param, grad, codes: tuple, absmax: tuple, comp, master,
                     amsgrad: bool) -> tuple:
    """``step_arrays`` for 8-bit moments: ``codes`` (m, v, v_max) are uint8 arrays of
    param's size, ``absmax`` (m, v, v_max) float32 1-D arrays of one entry per block of
    256. Returns (param, grad, comp, master) flattened, then the codes and absmax."""
    from .quant8 import blocks

    device = backend == "cuda"
    param = (device_array if device else host_array)("param", param, writable=True)
    grad = like("grad", grad, param, writable=False, device=device)
    comp, master = _param_extras(param, comp, master, device)
    names = ("m_codes", "v_codes", "v_max_codes"), ("m_absmax", "v_absmax", "v_max_absmax")
    wanted = (True, True, amsgrad)
    n = param.size
    out = [], []
    for group, (arrays, labels) in enumerate(zip((codes, absmax), names)):
        for a, name, want in zip(arrays, labels, wanted):
            if not want:
                out[group].append(None)
                continue
            if a is None:
                raise ValueError(f"amsgrad=True needs {name}")
            dtype, size = (np.uint8, n) if group == 0 else (np.float32, blocks(n))
            out[group].append(_state_array(name, a, dtype, size, device))
    named = {"param": param, "grad": grad, "kahan_comp": comp, "master_params": master}
    for labels, arrays in zip(names, out):
        named.update(zip(labels, arrays))
    disjoint(named)
    flat = (None if a is None else a.reshape(-1) for a in (param, grad, comp, master))
    return (*flat, tuple(out[0]), tuple(out[1]))


def _state_array(name: str, a, dtype, size: int, device: bool) -> np.ndarray:
    """A writable, C-contiguous array of ``dtype`` and ``size`` elements (on the GPU when
    ``device``), as a 1-D view."""
    if device:
        if not is_device(a):
            raise TypeError(f"{name} must be a GPU array, like param; got {type(a).__name__}")
        from . import _cuda

        a = _cuda.as_device_array(a)
        if not a.is_c_contiguous():
            raise ValueError(f"{name} must be C-contiguous")
    elif not isinstance(a, np.ndarray):
        raise TypeError(f"{name} must be a NumPy array, got {type(a).__name__}")
    if a.dtype != dtype:
        raise TypeError(f"{name} must have dtype {np.dtype(dtype).name}, got {a.dtype}")
    if a.size != size:
        raise ValueError(f"{name} must have {size} elements, got {a.size}")
    if device:
        return a.reshape(-1)
    if not a.flags.c_contiguous:
        raise ValueError(f"{name} must be C-contiguous")
    if not a.flags.writeable:
        raise ValueError(f"{name} is read-only; it is updated in place")
    return a.reshape(-1)


def stream(value, kind: str):
    """A CUDA stream for the cuda backend (None: the default stream); None elsewhere."""
    if kind != "cuda":
        if value is not None:
            raise ValueError(f"stream is for backend='cuda' only; this step runs on {kind!r}")
        return None
    from . import _cuda

    return _cuda.to_stream(value)


def sparse_arrays(backend: str, param, indices, values, m, v, comp, master,
                  stream=None) -> tuple:
    """Every check on a row-sparse step: ``param``, ``m``, ``v`` (rows, dim), m and v of one
    float dtype; ``indices`` (nnz,) integers in [0, rows) (on the GPU checked by a launch
    on ``stream`` and a wait for its answer); ``values`` (nnz, dim) of any float dtype;
    ``comp`` and ``master`` as in ``step_arrays``. Returns them in that order (host
    indices as int64)."""
    device = backend == "cuda"
    param = (device_array if device else host_array)("param", param, writable=True)
    if param.ndim != 2:
        raise ValueError(f"param must be a (rows, dim) table, got shape {param.shape}")
    m = like("m", m, param, writable=True, device=device)
    v = like("v", v, param, writable=True, device=device, dtype=m.dtype)
    indices = _indices(indices, device)
    values = (device_array if device else host_array)("values", values, writable=False)
    if values.shape != (indices.size, param.shape[1]):
        raise ValueError(f"values must have shape (nnz, dim) = {(indices.size, param.shape[1])}, "
                         f"got {values.shape}")
    comp, master = _param_extras(param, comp, master, device)
    if not device and indices.size and (indices.min() < 0 or indices.max() >= param.shape[0]):
        bad = indices[(indices < 0) | (indices >= param.shape[0])][0]
        raise ValueError(f"indices must be in [0, {param.shape[0]}) (param's rows); "
                         f"found {bad}")
    disjoint({"param": param, "m": m, "v": v, "values": values, "indices": indices,
              "kahan_comp": comp, "master_params": master})
    if device:
        if param.shape[0] >= 1 << 32 or indices.size >= 1 << 32:
            raise ValueError("on the GPU the row-sparse step takes fewer than 2**32 rows and "
                             "2**32 lookups (it sorts keys row << 32 | lookup)")
        from ._cudasparse import check_indices

        check_indices(indices, param.shape[0], stream)
    else:
        indices = np.ascontiguousarray(indices, dtype=np.int64)
    return param, indices, values, m, v, comp, master


def _indices(indices, device: bool):
    """Row indices: a 1-D integer array where the step runs (a NumPy one on the CPU)."""
    if device:
        if isinstance(indices, np.ndarray) or not is_device(indices):
            raise TypeError(f"indices must be a GPU integer array, like param, got "
                            f"{type(indices).__name__}")
        from . import _cuda

        indices = _cuda.as_device_array(indices)
    elif not isinstance(indices, np.ndarray):
        raise TypeError(f"indices must be a NumPy integer array, got {type(indices).__name__}")
    if indices.dtype == np.bool_ or not np.issubdtype(indices.dtype, np.integer):
        raise TypeError(f"indices must hold integers, got {indices.dtype}")
    if indices.ndim != 1:
        raise ValueError(f"indices must be 1-D (nnz,), got shape {indices.shape}")
    if device and not indices.is_c_contiguous():
        raise ValueError("indices must be contiguous")
    return indices
