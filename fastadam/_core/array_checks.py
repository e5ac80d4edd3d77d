"""Every check on array arguments, run before any kernel writes: adoption (host or GPU,
dtype, layout), shapes, and memory overlap.

Each function either returns the array (as the kernels will see it) or raises a
``TypeError`` / ``ValueError`` that names the offending argument. Nothing here
modifies data or launches a kernel.
"""

from __future__ import annotations

import bisect

import numpy as np

from .dtypes import KINDS, SIXTEEN_BIT, kind
from .gpu import as_device_array, device_interval, is_device, wait_for_producer
from .lowbit import FORMATS


def refuse_torch_tensor(name: str, a) -> None:
    """A torch tensor given to the NumPy API: point to the drop-ins."""
    if type(a).__module__.split(".")[0] == "torch":
        raise TypeError(f"{name} is a torch tensor: fastadam.torch.Adam and AdamW step "
                        "tensors as torch.optim does; this API takes NumPy arrays "
                        f"({name}.numpy() shares the tensor's memory)")


def host_array(name: str, a, *, writable: bool) -> np.ndarray:
    """A C-contiguous, aligned float32/float64 NumPy array (writable if asked)."""
    if not isinstance(a, np.ndarray):
        if is_device(a):
            raise TypeError(f"{name} is a GPU array, but param is a host NumPy array; "
                            "pass host arrays throughout, or GPU arrays throughout")
        refuse_torch_tensor(name, a)
        raise TypeError(f"{name} must be a NumPy array, got {type(a).__name__}")
    if kind(a.dtype) is None:
        raise TypeError(
            f"{name} must have a float dtype ({', '.join(KINDS)}), got {a.dtype}; "
            f"convert it with {name}.astype(np.float32)"
        )
    flags = a.flags
    if not flags.c_contiguous:
        advice = " and copy the result back" if writable else " (a copy is fine: it is only read)"
        raise ValueError(f"{name} must be C-contiguous; pass np.ascontiguousarray({name})"
                         + advice)
    if not flags.aligned:
        raise ValueError(f"{name} must be aligned to its dtype")
    if writable and not flags.writeable:
        raise ValueError(f"{name} is read-only; it is updated in place")
    return a


def device_array(name: str, a, *, writable: bool):
    """A numba device array viewing ``a`` (numba, CuPy, torch CUDA, ...): float, C-contiguous.
    Not waited for on the host: a step's stream waits for the stream its interface
    names (``dispatch.wait_for_inputs``), and what an optimizer keeps it waits for once
    (``gpu.wait_for_producer``)."""
    if isinstance(a, np.ndarray):
        raise TypeError(f"{name} is a host NumPy array, but param is on the GPU; "
                        f"move it with numba.cuda.to_device({name})")
    if not is_device(a):
        raise TypeError(f"{name} must be a GPU array, got {type(a).__name__}")
    try:
        interface = getattr(a, "__cuda_array_interface__", None)
    except RuntimeError as e:  # torch's message says to use .detach()
        raise TypeError(f"{name}: {e}") from e
    except TypeError:  # torch has no interface for bfloat16: its int16 view, below
        interface = None
    d = as_device_array(a, sync=False)
    if kind(d.dtype) is None:
        raise TypeError(f"{name} must have dtype float16, float32 or float64 (bfloat16: "
                        f"declare 16-bit storage with fastadam.as_bfloat16), got {d.dtype}")
    if not d.is_c_contiguous():
        raise ValueError(f"{name} must be C-contiguous")
    if writable and interface is not None and interface["data"][1]:
        raise ValueError(f"{name} is read-only; it is updated in place")
    return d


def kept(name: str, a, *, device: bool):
    """A writable array an optimizer keeps (params, adopted state): host, or device when
    ``device``, waited for once there."""
    if not device:
        return host_array(name, a, writable=True)
    d = device_array(name, a, writable=True)
    wait_for_producer(d)
    return d


def flat(a):
    """``a`` as a 1-D view; a device array keeps the stream its interface named (numba's
    reshape drops it), for the step to wait for."""
    out = a.reshape(-1)
    producer = getattr(a, "stream", 0)
    if producer and not isinstance(a, np.ndarray):
        out.stream = producer
    return out


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
    return device_interval(a)


def _overlap(a, b) -> bool:
    # Exact for contiguous arrays: each one's memory is one interval.
    if isinstance(a, np.ndarray):
        return np.may_share_memory(a, b)
    (a0, a1), (b0, b1) = device_interval(a), device_interval(b)
    return a0 < b1 and b0 < a1


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
    return tuple(None if a is None else flat(a) for a in (param, grad, m, v, v_max, comp, master))


def swap_arrays(backend: str, param, z) -> tuple:
    """(param, z) of schedule-free AdamW's move between y and x, checked, as 1-D views."""
    device = backend == "cuda"
    param = (device_array if device else host_array)("param", param, writable=True)
    z = like("z", z, param, writable=False, device=device)
    disjoint({"param": param, "z": z})
    return flat(param), flat(z)


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
                     amsgrad: bool, fmt: str = "8bit") -> tuple:
    """``step_arrays`` for low-bit moments in format ``fmt`` (``lowbit.FORMATS``):
    ``codes`` (m, v, v_max) are uint8 arrays of the format's bytes for param's size,
    ``absmax`` (m, v, v_max) float32 1-D arrays of one scale per block. Returns (param,
    grad, comp, master) flattened, then the codes and scales."""
    form = FORMATS[fmt]
    device = backend == "cuda"
    param = (device_array if device else host_array)("param", param, writable=True)
    grad = like("grad", grad, param, writable=False, device=device)
    comp, master = _param_extras(param, comp, master, device)
    names = (("m_codes", "v_codes", "v_max_codes"),
             tuple(f"{m}_{form.scale_name}" for m in ("m", "v", "v_max")))
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
            dtype, size = ((np.uint8, form.code_bytes(n)) if group == 0
                           else (np.float32, form.blocks(n)))
            out[group].append(state_array(name, a, dtype, size, device))
    named = {"param": param, "grad": grad, "kahan_comp": comp, "master_params": master}
    for labels, arrays in zip(names, out):
        named.update(zip(labels, arrays))
    disjoint(named)
    flats = (None if a is None else flat(a) for a in (param, grad, comp, master))
    return (*flats, tuple(out[0]), tuple(out[1]))


def state_array(name: str, a, dtype, size: int, device: bool) -> np.ndarray:
    """A writable, C-contiguous array of ``dtype`` and ``size`` elements (on the GPU when
    ``device``), as a 1-D view."""
    if device:
        if not is_device(a):
            raise TypeError(f"{name} must be a GPU array, like param; got {type(a).__name__}")
        a = as_device_array(a, sync=False)  # the step's stream waits for it
        if not a.is_c_contiguous():
            raise ValueError(f"{name} must be C-contiguous")
    elif not isinstance(a, np.ndarray):
        raise TypeError(f"{name} must be a NumPy array, got {type(a).__name__}")
    if a.dtype != dtype:
        raise TypeError(f"{name} must have dtype {np.dtype(dtype).name}, got {a.dtype}")
    if a.size != size:
        raise ValueError(f"{name} must have {size} elements, got {a.size}")
    if device:
        return flat(a)
    if not a.flags.c_contiguous:
        raise ValueError(f"{name} must be C-contiguous")
    if not a.flags.writeable:
        raise ValueError(f"{name} is read-only; it is updated in place")
    return a.reshape(-1)


def sparse_arrays(backend: str, param, indices, values, m, v, comp, master) -> tuple:
    """Every check on a row-sparse step: ``param``, ``m``, ``v`` (rows, dim), m and v of one
    float dtype; ``indices`` (nnz,) integers (on the host checked to lie in [0, rows); on
    the GPU that check is the step's first launch, before anything is written);
    ``values`` (nnz, dim) of any float dtype; ``comp`` and ``master`` as in
    ``step_arrays``. Returns them in that order (host indices as int64)."""
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
    else:
        indices = np.ascontiguousarray(indices, dtype=np.int64)
    return param, indices, values, m, v, comp, master


def _indices(indices, device: bool):
    """Row indices: a 1-D integer array where the step runs (a NumPy one on the CPU)."""
    if device:
        if isinstance(indices, np.ndarray) or not is_device(indices):
            raise TypeError(f"indices must be a GPU integer array, like param, got "
                            f"{type(indices).__name__}")
        indices = as_device_array(indices, sync=False)  # the step's stream waits for it
    elif not isinstance(indices, np.ndarray):
        raise TypeError(f"indices must be a NumPy integer array, got {type(indices).__name__}")
    if indices.dtype == np.bool_ or not np.issubdtype(indices.dtype, np.integer):
        raise TypeError(f"indices must hold integers, got {indices.dtype}")
    if indices.ndim != 1:
        raise ValueError(f"indices must be 1-D (nnz,), got shape {indices.shape}")
    if device and not indices.is_c_contiguous():
        raise ValueError("indices must be contiguous")
    return indices
