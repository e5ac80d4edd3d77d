"""One params array and its state: what the state holds, in which dtypes, and where.

A slot is the unit every stepping plan and the state_dict work on. The state
arrays are, in the order the kernels take them after (param, grad): m, v, v_max
(amsgrad), the Kahan compensation and the float32 master params (16-bit params).
A new state format (8-bit moments, say) is a new slot layout: its arrays, their
state_dict entries, and the kernel flags that select its kernels.
"""

from __future__ import annotations

import numbers

import numpy as np

from . import _validate as check
from ._dispatch import as_float32, from_host, step_flags, to_host, zeros

STATE_KEYS = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq", "kahan_comp", "master_params")
PARAM_DTYPE = "param"  # state_dtype: moments in each array's own dtype, as torch keeps them


class Options:
    """What the state of every slot holds, fixed at construction."""

    __slots__ = ("state_kind", "kahan", "master")

    def __init__(self, state_dtype, kahan_summation, master_weights) -> None:
        self.master = check.flag("master_weights", master_weights)
        self.kahan = None if kahan_summation is None else check.flag(
            "kahan_summation", kahan_summation)
        self.state_kind = (None if state_dtype is None else PARAM_DTYPE
                           if isinstance(state_dtype, str) and state_dtype == PARAM_DTYPE
                           else check.dtype_kind("state_dtype", state_dtype))


def numpy_dtype(kind: str) -> np.dtype:
    """The NumPy dtype of a float kind (bfloat16 from ml_dtypes)."""
    if kind == "bfloat16":
        try:
            import ml_dtypes
        except ImportError as e:
            raise ImportError("bfloat16 state needs ml_dtypes: pip install ml_dtypes") from e
        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(kind)


class Slot:
    """One params array (``array``, and ``flat``, its 1-D view), its state arrays (1-D, in
    ``STATE_KEYS`` order, None where an option is off), kernel flags and step count."""

    __slots__ = ("array", "flat", "state", "flags", "step", "state_dtype")

    @classmethod
    def new(cls, view, h, backend: str, options: Options) -> Slot:
        """Zeroed state for ``view`` (a validated params array) under ``h``'s options."""
        slot = cls()
        slot.array, slot.flat, slot.step = view, view.reshape(-1), 0
        param_kind = check.kind(view.dtype)
        sixteen = param_kind in check.SIXTEEN_BIT
        kahan = (sixteen and not options.master) if options.kahan is None else options.kahan
        if (kahan or options.master) and not sixteen:
            raise ValueError("kahan_summation and master_weights are for 16-bit params; "
                             f"params are {view.dtype}")
        if kahan and options.master:
            raise ValueError("kahan_summation and master_weights exclude each other")
        state_kind = options.state_kind
        if state_kind is None:
            state_kind = "float32" if sixteen else param_kind
        elif state_kind == PARAM_DTYPE:
            state_kind = param_kind
        slot.state_dtype = numpy_dtype(state_kind)
        n = slot.flat.size
        slot.state = [
            zeros(backend, n, slot.state_dtype),
            zeros(backend, n, slot.state_dtype),
            zeros(backend, n, slot.state_dtype) if h.amsgrad else None,
            zeros(backend, n, view.dtype) if kahan else None,
            as_float32(backend, slot.flat) if options.master else None,
        ]
        slot.flags = step_flags(h, (slot.flat, slot.flat, *slot.state))
        return slot

    def dtypes(self) -> tuple:
        """The dtype of each state array, in ``STATE_KEYS`` order."""
        return (self.state_dtype,) * 3 + (self.array.dtype, np.dtype(np.float32))

    def entry(self, backend: str) -> dict:
        """This slot's state_dict entry: host copies shaped like the params."""
        entry = {"step": self.step}
        for name, a, dtype in zip(STATE_KEYS, self.state, self.dtypes()):
            if a is not None:
                entry[name] = to_host(backend, a, dtype).reshape(self.array.shape)
        return entry

    def loaded(self, i: int, entry: dict, h, backend: str) -> tuple[int, list]:
        """(step, state arrays) from a state_dict entry, checked and copied to where the
        state lives; raises naming the entry, and changes nothing."""
        step = entry.get("step")
        if isinstance(step, bool) or not isinstance(step, numbers.Integral) or step < 0:
            raise ValueError(f"state_dict['state'][{i}]['step'] must be an int >= 0, "
                             f"got {step!r}")
        wanted = (True, True, h.amsgrad, self.flags.kahan, self.flags.master)
        arrays = []
        for name, want, dtype in zip(STATE_KEYS, wanted, self.dtypes()):
            if not want:
                arrays.append(None)
                continue
            label = f"state_dict['state'][{i}][{name!r}]"
            value = entry.get(name)
            if not isinstance(value, np.ndarray):
                raise TypeError(f"{label} must be a NumPy array, got {type(value).__name__}")
            if value.shape != self.array.shape:
                raise ValueError(f"{label} has shape {value.shape}, but params has shape "
                                 f"{self.array.shape}")
            if check.kind(value.dtype) is None:
                raise TypeError(f"{label} must be a float array, got {value.dtype}")
            copy = np.array(value, dtype=dtype, order="C", copy=True).reshape(-1)
            arrays.append(from_host(backend, copy))
        return int(step), arrays

    def restore(self, h, step: int, arrays: list) -> None:
        """Take loaded state (from ``loaded``) under the hyperparameters ``h``."""
        self.step, self.state = step, arrays
        self.flags = step_flags(h, (self.flat, self.flat, *arrays))._replace(
            grad=self.flags.grad)
