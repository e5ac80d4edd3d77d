"""The backends layer: ``dispatch.py`` picks one and runs it; ``reference.py`` is the
naive NumPy Adam (baseline and oracle); ``cpu/`` and ``cuda/`` hold the compiled
kernels, independent of each other; ``shared/`` what both compile (the element
update, 16-bit conversions, typed pointers, the 8-bit encoder)."""
