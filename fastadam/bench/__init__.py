"""Benchmark of the fused step against the naive NumPy Adam and the memory limit.

``python -m fastadam bench --help`` for the command line (``cli.py``). Every
contender is timed through the public API (``contenders.py``, ``peers.py``),
interleaved with the others in each repeat (``harness.py``); rows report medians,
and ratios as medians of the ratios within one repeat. Bandwidth is the traffic the
configuration needs (each array read once, each state written once) over the time,
so rows are comparable and the memory-only kernel moving exactly that traffic
(``roofline.py``) is the physical limit. ``suites.py`` and ``sparse_suite.py`` hold
the tables, ``report.py`` and ``plot.py`` their output.
"""
