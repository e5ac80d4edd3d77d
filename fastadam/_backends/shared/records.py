"""Records for code compiled into the user's: hyperparameters and per-step scalars whose
class names the options compiled into the element update.

``Hyper[amsgrad,maximize]@tag`` is a named tuple whose fields are ``hyper.Hyper``'s, and
whose class fixes the options (``Kind``): code compiled for one class has no branch on
them, and two classes never share compiled code. ``tag`` is a hash of the kernels'
sources, so a user's on-disk cache of code that takes a record as an argument misses
after fastadam changes instead of running stale code. Classes are made on demand, and
``record_class_named`` remakes one from its name when a pickled type is read back.
"""

from __future__ import annotations

import collections
import re

from ..._core import hyper
from ..._core.options import DEFAULTS, KERNEL_FLAGS
from ..cache import source_hash

# What a record's class fixes: the options compiled into the element update (declared
# in ``options``), the kind of weight decay compiled in, and which 16-bit float uint16
# arrays hold (None: refuse them).
Kind = collections.namedtuple("Kind", [*KERNEL_FLAGS, "l2_decay", "decoupled_decay",
                                       "uint16_as"],
                              defaults=[False] * (len(KERNEL_FLAGS) + 2) + [None])
COMPILED_IN = Kind._fields[:-1]  # the boolean fields, named in a record class's name

FIELDS = {"Hyper": hyper.ADAM_FIELDS, "Coefficients": hyper.COEFFICIENTS}
FLAGS = tuple(name for name in hyper.ADAM_FIELDS
              if isinstance(DEFAULTS.get(name), bool))  # the Hyper fields that are bools


class Record:
    """The base of every record class: what Numba's CPU typing recognizes them by."""

    __slots__ = ()
TAG = source_hash()[:8]
_NAME = re.compile(r"(Hyper|Coefficients)\[([^\]]*)\]@(\w+)$")
_classes: dict = {}


ROLES = {"param": "param", "kahan_comp": "param", "grad": "grad", "m": "state", "v": "state",
         "v_max": "state"}  # which 16-bit kind of a ``uint16_as`` spec an argument takes
_SIXTEEN = ("float16", "bfloat16")


def uint16_kinds(uint16_as: str | None) -> dict | None:
    """``uint16_as`` as ``{role: kind}`` for the roles "param", "grad" and "state": one kind
    for all ("bfloat16"), or one per role ("param=float16;grad=bfloat16;state=float16",
    roles left out taking none); ValueError on anything else."""
    if uint16_as is None:
        return None
    if uint16_as in _SIXTEEN:
        return dict.fromkeys(("param", "grad", "state"), uint16_as)
    kinds = {}
    for part in str(uint16_as).split(";"):
        role, _, value = part.partition("=")
        if role not in ("param", "grad", "state") or value not in _SIXTEEN or role in kinds:
            raise ValueError("uint16_as must be 'float16', 'bfloat16', or one kind per role "
                             f"as 'param=float16;grad=bfloat16;state=float16'; got {uint16_as!r}")
        kinds[role] = value
    return kinds


def uint16_spec(kinds: dict) -> str | None:
    """The ``uint16_as`` of ``{role: kind}``: one kind where the roles agree, else per role."""
    if not kinds:
        return None
    if len(set(kinds.values())) == 1:
        return next(iter(kinds.values()))
    return ";".join(f"{role}={kinds[role]}" for role in ("param", "grad", "state") if role in kinds)


def kind_of(h: hyper.Hyper, uint16_as: str | None) -> Kind:
    """The kind of validated hyperparameters ``h`` (decay as ``hyper.flags`` decides it)."""
    f = hyper.flags(h, "float32", "float32", "float32", False, False)
    return Kind(**{name: getattr(f, name) for name in COMPILED_IN}, uint16_as=uint16_as)


def record_class(family: str, kind: Kind, tag: str = TAG) -> type:
    """The named-tuple class of ``family`` ("Hyper" or "Coefficients") for ``kind``."""
    key = (family, kind, tag)
    found = _classes.get(key)
    if found is None:
        on = [name for name in COMPILED_IN if getattr(kind, name)]
        if kind.uint16_as:
            on.append(f"uint16={kind.uint16_as}")
        name = f"{family}[{','.join(on)}]@{tag}"
        found = type(name, (Record, collections.namedtuple(family, FIELDS[family])),
                     {"__slots__": ()})
        found.__qualname__ = name
        found.__module__ = __name__  # pickled by name: ``__getattr__`` below remakes it
        found.family, found.kind = family, kind
        _classes[key] = found
    return found


def record_class_named(name: str) -> type:
    """The class whose ``__name__`` is ``name`` (AttributeError if none could be)."""
    match = _NAME.match(name)
    if match is None:
        raise AttributeError(name)
    family, items, tag = match.groups()
    values: dict = {}
    for item in filter(None, items.split(",")):
        if item.startswith("uint16="):
            values["uint16_as"] = item[len("uint16="):]
        elif item in COMPILED_IN:
            values[item] = True
        else:
            raise AttributeError(name)
    return record_class(family, Kind(**values), tag)


__getattr__ = record_class_named  # the module's: a pickled type's class, by its name


def family_of(record) -> str | None:
    """"Hyper" or "Coefficients" for a record of these classes, else None."""
    return getattr(type(record), "family", None)


def as_hyper(record) -> hyper.Hyper:
    """The validated ``hyper.Hyper`` a Hyper record holds (max_lr NaN: None)."""
    values = record._asdict()
    if values["max_lr"] != values["max_lr"]:
        values["max_lr"] = None
    return hyper.Hyper(**values)
