"""A Griffe extension for the API reference: a function made at import time from the
declared options (``fastadam.numba.hyper``, whose keywords Numba needs spelled out) is
shown as Python sees it, with its signature and docstring, not as the assignment that
makes it."""

from __future__ import annotations

import griffe

GENERATED = ("fastadam.numba.hyper",)


class GeneratedSignatures(griffe.Extension):
    """Replace each of ``GENERATED`` by what inspecting it at run time finds."""

    def on_package(self, *, pkg: griffe.Module, **kwargs) -> None:
        for path in GENERATED:
            module, name = path.rsplit(".", 1)
            if module.split(".")[0] != pkg.name:
                continue
            inspected = griffe.inspect(module).members[name]
            pkg.get_member(module.split(".", 1)[1]).set_member(name, inspected)
