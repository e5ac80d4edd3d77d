"""One params array and its state: what the state holds, in which dtypes, and where.

A slot is the unit every stepping plan and the state_dict work on. The state
arrays are, in the order the kernels take them after (param, grad): m, v, v_max
(amsgrad), the Kahan compensation and the float32 master params (16-bit params).
With ``state_dtype="8bit"`` a slot of ``quant8.MIN_8BIT_SIZE`` elements or more
holds m, v and v_max as uint8 codes, plus one float32 absmax per block and moment
(``absmax``); its state_dict entry is bitsandbytes' (state1/2, absmax1/2,
qmap1/2; state3/absmax3 for v_max). Smaller slots keep 32-bit moments. With
``state_dtype="4bit"`` every slot holds torchao's 4-bit format (two codes per byte, a
scale per block of 128) under the same keys, with torchao's 16-value maps.
"""

from __future__ import annotations

import numbers

import numpy as np

from .._backends.dispatch import (
    as_float32,
    flags_8bit,
    from_host,
    noise_of,
    state_copy,
    step_flags,
    to_host,
    zeros,
)
from .._core import array_checks, checks
from .._core.dtypes import SIXTEEN_BIT, compute_dtype, dtype_kind, kind, numpy_dtype
from .._core.lowbit import FORMATS, of_map_size
from .._core.options import ADAM, ADEMAMIX, SCHEDULE_FREE

STATE_KEYS = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq", "kahan_comp", "master_params")
# Each update rule's names for the state arrays, in the kernels' order: schedule-free AdamW
# keeps z where Adam keeps m (its reference's names), AdEMAMix its slow moment in v_max's
# place.
RULE_STATE_KEYS = {
    ADAM: STATE_KEYS,
    SCHEDULE_FREE: ("z", "exp_avg_sq", None, "kahan_comp", "master_params"),
    ADEMAMIX: ("exp_avg", "exp_avg_sq", "exp_avg_slow", "kahan_comp", "master_params"),
}


def third_state(h) -> bool:
    """Whether the rule and options of ``h`` keep a third state array (v_max's place)."""
    return h.amsgrad or h.rule == ADEMAMIX
CODE_KEYS = ("state1", "state2", "state3")  # m, v, v_max as codes (bitsandbytes' names)
ABSMAX_KEYS = ("absmax1", "absmax2", "absmax3")
MAP_KEYS = ("qmap1", "qmap2")  # the signed map (m), the unsigned one (v, v_max)
PARAM_DTYPE = "param"  # state_dtype: moments in each array's own dtype, as torch keeps them
EIGHT_BIT = "8bit"  # state_dtype: m and v (and v_max) in bitsandbytes' 8-bit blockwise format


class Options:
    """What the state of every slot holds, fixed at construction."""

    __slots__ = ("state_kind", "kahan", "master", "stochastic", "seed")

    def __init__(self, state_dtype, kahan_summation, master_weights,
                 stochastic_rounding=False, seed=0) -> None:
        self.master = checks.flag("master_weights", master_weights)
        self.kahan = None if kahan_summation is None else checks.flag(
            "kahan_summation", kahan_summation)
        self.stochastic = checks.flag("stochastic_rounding", stochastic_rounding)
        self.seed = checks.seed(seed)
        for name, on in (("kahan_summation", self.kahan), ("master_weights", self.master)):
            if self.stochastic and on:
                raise ValueError(f"stochastic_rounding and {name} exclude each other: "
                                 "stochastic rounding needs no compensation or master copy")
        named = isinstance(state_dtype, str) and state_dtype in (PARAM_DTYPE, *FORMATS)
        self.state_kind = (None if state_dtype is None else state_dtype if named
                           else dtype_kind("state_dtype", state_dtype))

    def check_params(self, views: list) -> None:
        """Refuse options that none of ``views`` (the params arrays) can take."""
        if self.stochastic and not any(kind(v.dtype) in SIXTEEN_BIT for v in views):
            kinds = sorted({str(v.dtype) for v in views})
            raise ValueError("stochastic_rounding is for float16 and bfloat16 params; the "
                             f"params are {', '.join(kinds)}")

    def name(self, slot: Slot) -> str:
        """How ``options`` reports the state dtype (of ``slot``, the first)."""
        if self.state_kind in FORMATS:
            return self.state_kind
        return kind(slot.state_dtype) or slot.state_dtype.name


class Slot:
    """One params array (``array``, and ``flat``, its 1-D view), its state arrays (1-D, in
    ``STATE_KEYS`` order, None where an option is off), kernel flags and step count."""

    __slots__ = ("array", "flat", "state", "flags", "step", "state_dtype", "absmax", "key",
                 "fmt")

    @classmethod
    def new(cls, view, h, backend: str, options: Options) -> Slot:
        """Zeroed state for ``view`` (a validated params array) under ``h``'s options."""
        slot = cls()
        slot.array, slot.flat, slot.step, slot.key = view, view.reshape(-1), 0, 0
        param_kind = kind(view.dtype)
        sixteen = param_kind in SIXTEEN_BIT
        stochastic = options.stochastic and sixteen  # (wider params round exactly enough)
        kahan = (sixteen and not (options.master or stochastic) if options.kahan is None
                 else options.kahan)
        if (kahan or options.master) and not sixteen:
            raise ValueError("kahan_summation and master_weights are for 16-bit params; "
                             f"params are {view.dtype}")
        if kahan and options.master:
            raise ValueError("kahan_summation and master_weights exclude each other")
        state_kind = options.state_kind
        n = slot.flat.size
        slot.absmax = slot.fmt = None
        if state_kind in FORMATS:
            if h.rule != ADAM:
                raise ValueError(f"state_dtype={state_kind!r} is for Adam and AdamW; this "
                                 "optimizer keeps its state in 16, 32 or 64 bits")
            if n >= FORMATS[state_kind].min_size:
                return slot._low_bit(state_kind, h, kahan, options.master, backend, stochastic)
            state_kind = compute_dtype(param_kind)  # small arrays: 32-bit moments
        if state_kind == PARAM_DTYPE:  # the params' own dtype object (bfloat16's bits stay)
            slot.state_dtype = view.dtype
        else:
            slot.state_dtype = numpy_dtype(state_kind or ("float32" if sixteen else param_kind))
        first = (state_copy(backend, slot.flat, slot.state_dtype) if h.rule == SCHEDULE_FREE
                 else zeros(backend, n, slot.state_dtype))  # z starts at the params
        slot.state = [
            first,
            zeros(backend, n, slot.state_dtype),
            zeros(backend, n, slot.state_dtype) if third_state(h) else None,
            zeros(backend, n, view.dtype) if kahan else None,
            as_float32(backend, slot.flat) if options.master else None,
        ]
        slot.flags = slot._flags(h, slot.state, stochastic)
        return slot

    def _low_bit(self, fmt: str, h, kahan: bool, master: bool, backend: str,
                 stochastic: bool) -> Slot:
        form = FORMATS[fmt]
        n, blocks, size = self.flat.size, form.blocks(self.flat.size), form.code_bytes(
            self.flat.size)
        self.fmt, self.state_dtype = fmt, np.dtype(np.uint8)
        self.state = [zeros(backend, size, np.uint8), zeros(backend, size, np.uint8),
                      zeros(backend, size, np.uint8) if h.amsgrad else None,
                      zeros(backend, n, self.array.dtype) if kahan else None,
                      as_float32(backend, self.flat) if master else None]
        self.absmax = [zeros(backend, blocks, np.float32), zeros(backend, blocks, np.float32),
                       zeros(backend, blocks, np.float32) if h.amsgrad else None]
        self.flags = self._flags(h, self.state, stochastic)
        return self

    def _flags(self, h, state: list, stochastic: bool):
        if self.absmax is not None:
            return flags_8bit(h, self.flat, self.flat, state[3] is not None,
                              state[4] is not None, stochastic, self.fmt)
        return step_flags(h, (self.flat, self.flat, *state), stochastic)

    def noise(self, step: int) -> int:
        """The params' random bits at update ``step`` (stochastic rounding; else 0)."""
        return noise_of(self.key, step) if self.flags.stochastic else 0

    def dtypes(self) -> tuple:
        """The dtype of each state array, in ``STATE_KEYS`` order."""
        return (self.state_dtype,) * 3 + (self.array.dtype, np.dtype(np.float32))

    def entry(self, backend: str) -> dict:
        """This slot's state_dict entry: host copies shaped like the params."""
        entry = {"step": self.step}
        low = self.absmax is not None
        names = RULE_STATE_KEYS[self.flags.rule]
        for i, (name, a, dtype) in enumerate(zip(names, self.state, self.dtypes())):
            if a is not None and not (low and i < 3):
                entry[name] = to_host(backend, a, dtype).reshape(self.array.shape)
        if low:  # codes, scales and maps in place of the moments
            shape = self.array.shape if self.fmt == EIGHT_BIT else (-1,)  # 4-bit: packed
            for i, (a, top) in enumerate(zip(self.state, self.absmax)):
                if a is not None:
                    entry[CODE_KEYS[i]] = to_host(backend, a, np.uint8).reshape(shape)
                    entry[ABSMAX_KEYS[i]] = to_host(backend, top, np.float32)
            for name, signed in zip(MAP_KEYS, (True, False)):
                entry[name] = FORMATS[self.fmt].qmap(signed).copy()
        return entry

    def loaded(self, i: int, entry: dict, h, backend: str) -> tuple[int, list, list | None]:
        """(step, state arrays, absmax or None) from a state_dict entry, checked and
        copied to where the state lives; raises naming the entry, and changes nothing.

        Moments convert between the layouts: 32-bit ones load into a low-bit slot
        quantized, low-bit ones (8 or 4 bits, which the entry's maps say) into a 32-bit
        slot decoded, or into a slot of the other format decoded and quantized."""
        label = f"state_dict['state'][{i}]"
        step = entry.get("step")
        if isinstance(step, bool) or not isinstance(step, numbers.Integral) or step < 0:
            raise ValueError(f"{label}['step'] must be an int >= 0, got {step!r}")
        wanted = (True, True, third_state(h), self.flags.kahan, self.flags.master)
        names = RULE_STATE_KEYS[h.rule]
        low = self.absmax is not None
        own, other = (CODE_KEYS[0], STATE_KEYS[0]) if low else (STATE_KEYS[0], CODE_KEYS[0])
        saved_low = low != (other in entry and own not in entry)  # the other layout?
        saved = self._format(label, entry) if saved_low else None
        moment_dtype = np.float32 if low else self.state_dtype
        moments = (self._codes(label, entry, wanted[:3], saved) if saved_low
                   else [self._floats(label, entry, name, moment_dtype) if want else None
                         for name, want in zip(names, wanted[:3])])
        extras = [self._floats(label, entry, name, dtype) if want else None
                  for name, want, dtype in zip(names[3:], wanted[3:], self.dtypes()[3:])]
        signs, n = (True, False, False), self.flat.size
        if saved_low and (not low or saved.name != self.fmt):  # decoded, as floats
            moments = [None if c is None else saved.dequantize(*c, signed, n)
                       for c, signed in zip(moments, signs)]
        if low:
            if not (saved_low and saved.name == self.fmt):
                moments = [None if a is None else FORMATS[self.fmt].quantize(a, signed)
                           for a, signed in zip(moments, signs)]
            codes = [None if c is None else from_host(backend, c[0]) for c in moments]
            absmax = [None if c is None else from_host(backend, c[1]) for c in moments]
            return int(step), codes + [None if a is None else from_host(backend, a)
                                       for a in extras], absmax
        moments = [None if a is None else np.asarray(a, dtype=self.state_dtype)
                   for a in moments]
        return int(step), [None if a is None else from_host(backend, a)
                           for a in moments + extras], None

    def _floats(self, label: str, entry: dict, name: str, dtype) -> object:
        """A float state array of the params' shape, as a fresh 1-D copy of ``dtype``."""
        label = f"{label}[{name!r}]"
        value = entry.get(name)
        if not isinstance(value, np.ndarray):
            raise TypeError(f"{label} must be a NumPy array, got {type(value).__name__}")
        if value.shape != self.array.shape:
            raise ValueError(f"{label} has shape {value.shape}, but params has shape "
                             f"{self.array.shape}")
        if kind(value.dtype) is None:
            raise TypeError(f"{label} must be a float array, got {value.dtype}")
        return np.array(value, dtype=dtype, order="C", copy=True).reshape(-1)

    @staticmethod
    def _format(label: str, entry: dict):
        """The low-bit format of an entry, which its maps say (8-bit: bitsandbytes' 256
        values, 4-bit: torchao's 16), checked to be that format's own."""
        first = entry.get(MAP_KEYS[0])
        form = of_map_size(first.size) if isinstance(first, np.ndarray) else None
        for name, signed in zip(MAP_KEYS, (True, False)):
            q = entry.get(name)
            if not (form is not None and isinstance(q, np.ndarray) and q.dtype == np.float32
                    and np.array_equal(q.reshape(-1).view(np.uint32),
                                       form.qmap(signed).view(np.uint32))):
                raise ValueError(f"{label}[{name!r}] must be a standard "
                                 f"{'signed' if signed else 'unsigned'} map: "
                                 "fastadam.quant8.dynamic_map (8 bits) or "
                                 "fastadam.quant4.qmap (4 bits)")
        return form

    def _codes(self, label: str, entry: dict, wanted: tuple, form) -> list:
        """The (codes, scales) of each wanted moment of a low-bit entry in ``form``,
        checked, copied."""
        n = self.flat.size
        out = []
        for codes_key, absmax_key, want in zip(CODE_KEYS, ABSMAX_KEYS, wanted):
            if not want:
                out.append(None)
                continue
            codes, top = entry.get(codes_key), entry.get(absmax_key)
            size, blocks = form.code_bytes(n), form.blocks(n)
            if not (isinstance(codes, np.ndarray) and codes.dtype == np.uint8
                    and codes.size == size):
                raise ValueError(f"{label}[{codes_key!r}] must be a uint8 array of {size} "
                                 f"elements ({form.name} codes of {n})")
            if not (isinstance(top, np.ndarray) and top.dtype == np.float32
                    and top.size == blocks):
                raise ValueError(f"{label}[{absmax_key!r}] must be a float32 array of "
                                 f"{blocks} elements (one per block of {form.block})")
            if not (np.isfinite(top).all() and (top >= 0).all()):
                raise ValueError(f"{label}[{absmax_key!r}] must be finite and >= 0")
            out.append((codes.reshape(-1).copy(), top.reshape(-1).copy()))
        return out

    def adoptable(self, i: int, h, arrays: tuple, scales, device: bool) -> tuple:
        """(moments, scales, {label: array}) of a wrapper's own state arrays, checked to
        be what this slot steps in place (``Adam._adopt_state``): ``arrays`` (m, v,
        v_max; a low-bit slot's codes), ``scales`` (a low-bit slot's absmax, else None)
        as 1-D views. Raises naming the array; changes nothing."""
        if self.flags.kahan or self.flags.master:
            raise ValueError("adopted state has no Kahan compensation or master params")
        low = self.absmax is not None
        if low != (scales is not None):
            raise ValueError(f"state {i}: {'low-bit' if low else '32-bit'} moments expected")
        named: dict = {}

        def checked(label: str, a, want: bool, own):
            if (a is None) == want:
                raise ValueError(f"{label}: {'missing' if want else 'unexpected'}")
            if a is None:
                return None
            named[label] = a = (
                array_checks.state_array(label, a, own.dtype, own.size, device) if low
                else array_checks.flat(array_checks.like(label, a, self.array, writable=True,
                                                         device=device,
                                                         dtype=self.state_dtype)))
            return a

        wanted = (True, True, third_state(h))
        keys = CODE_KEYS if low else STATE_KEYS
        views = [checked(f"state[{i}][{key!r}]", a, want, own)
                 for key, a, want, own in zip(keys, arrays, wanted, self.state)]
        tops = None if not low else [
            checked(f"state[{i}][{key!r}]", a, want, own)
            for key, a, want, own in zip(ABSMAX_KEYS, scales, wanted, self.absmax)]
        return views, tops, named

    def restore(self, h, step: int, arrays: list, absmax: list | None) -> None:
        """Take loaded state (from ``loaded``) under the hyperparameters ``h``."""
        self.step, self.state, self.absmax = step, arrays, absmax
        self.flags = self._flags(h, arrays, self.flags.stochastic)._replace(grad=self.flags.grad)
