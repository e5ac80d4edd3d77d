"""The step's coefficients travel as one tuple in ``hyper.COEFFICIENTS``' order; each
update rule unpacks it, first thing, under its own names. Those names are the ones the
host declares for that rule (``hyper.RULE_COEFFICIENTS``): a place added or moved on one
side and not the other fails here, not as a silently shifted scalar."""

import inspect

import numba
import pytest

from fastadam._backends.cpu.runtime import converters, rounding
from fastadam._core import element, hyper
from fastadam._core.options import RULES


def unpacked_names(update) -> tuple[str, ...]:
    """The local names an update assigns first, after its arguments: its unpacking of
    ``coef`` (the code object lists them in order of first assignment)."""
    code = update.py_func.__code__
    return code.co_varnames[code.co_argcount:code.co_argcount + len(hyper.COEFFICIENTS)]


@pytest.mark.parametrize("rule", RULES)
def test_each_rule_unpacks_the_coefficients_by_its_declared_names(rule):
    flags = hyper.Flags(**{**dict.fromkeys(hyper.Flags._fields, False), "param": "float32",
                           "grad": "float32", "state": "float32", "rule": rule})
    update = element.make_value(numba.njit(inline="always"), flags,
                                converters("float32"), rounding())
    assert "coef" in inspect.signature(update.py_func).parameters
    assert unpacked_names(update) == hyper.RULE_COEFFICIENTS[rule]
    assert len(hyper.RULE_COEFFICIENTS[rule]) == len(hyper.COEFFICIENTS)

