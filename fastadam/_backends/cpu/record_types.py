"""The records of ``shared.records`` as Numba CPU types: a struct of float64 and bool
fields whose type carries the record's class (so its options), with attribute access,
unboxing, boxing and construction in compiled code.

Named tuples would type on their own, but a ``prange`` loop rebuilds a named tuple it
uses by its class's name, which fails for classes made at run time (and for any named
tuple made inside the function); a struct passes into the loop as a plain value.
"""

from __future__ import annotations

from functools import cache

from numba.core import cgutils, types
from numba.extending import (
    NativeValue,
    box,
    intrinsic,
    make_attribute_wrapper,
    models,
    register_model,
    typeof_impl,
    unbox,
)

from ..shared import records


class RecordType(types.Type):
    """A record class's type: its fields, as float64 or boolean members."""

    def __init__(self, cls):
        self.instance_class = cls
        self.fields = [(name, types.boolean if name in records.FLAGS else types.float64)
                       for name in records.FIELDS[cls.family]]
        super().__init__(name=f"fastadam.numba.{cls.__name__}")


class HyperType(RecordType):
    """The type of ``fastadam.numba.hyper`` records."""


class CoefficientsType(RecordType):
    """The type of ``fastadam.numba.coefficients`` records."""


_TYPES = {"Hyper": HyperType, "Coefficients": CoefficientsType}


def record_type(cls) -> RecordType:
    """The Numba type of a record class."""
    return _TYPES[cls.family](cls)


@typeof_impl.register(records.Record)
def _typeof_record(value, context):
    return record_type(type(value))


for family, typ in _TYPES.items():
    register_model(typ)(type(f"{family}Model", (models.StructModel,), {
        "__init__": lambda self, dmm, fe_type: models.StructModel.__init__(
            self, dmm, fe_type, fe_type.fields)}))
    for name in records.FIELDS[family]:
        make_attribute_wrapper(typ, name, name)


@unbox(RecordType)
def _unbox(typ, obj, c):
    struct = cgutils.create_struct_proxy(typ)(c.context, c.builder)
    for name, member in typ.fields:
        attr = c.pyapi.object_getattr_string(obj, name)
        setattr(struct, name, c.unbox(member, attr).value)
        c.pyapi.decref(attr)
    failed = cgutils.is_not_null(c.builder, c.pyapi.err_occurred())
    return NativeValue(struct._getvalue(), is_error=failed)


@box(RecordType)
def _box(typ, value, c):
    struct = cgutils.create_struct_proxy(typ)(c.context, c.builder, value=value)
    cls = c.pyapi.unserialize(c.pyapi.serialize_object(typ.instance_class))
    members = [c.box(member, getattr(struct, name)) for name, member in typ.fields]
    out = c.pyapi.call_function_objargs(cls, members)
    for obj in (*members, cls):
        c.pyapi.decref(obj)
    return out


@cache
def constructor(cls):
    """``make(values)``: a record of class ``cls`` in compiled code, from a tuple of its
    fields' values (float64 and bool, in order)."""
    typ = record_type(cls)

    @intrinsic
    def make(typingctx, values):
        def codegen(context, builder, signature, args):
            struct = cgutils.create_struct_proxy(typ)(context, builder)
            for index, (name, member) in enumerate(typ.fields):
                value = builder.extract_value(args[0], index)
                setattr(struct, name, context.cast(builder, value, values.types[index], member))
            return struct._getvalue()

        return typ(values), codegen

    return make
