"""fastadam.numba and on-disk caches: ``fastadam.numba.adam_step`` called from Python
loads from fastadam's cache in a second process, and a user's ``@njit(cache=True)``
functions that call it (whole-array, fused in a prange loop, or with the record made
inside) load from their own; Numba's dispatcher counters say so, not timings."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np

import fastadam.numba as fn

USER = textwrap.dedent("""
    import json
    import numba
    import numpy as np
    import fastadam.numba as fn

    @numba.njit(cache=True)
    def train(p, g, m, v, h, steps):
        for t in range(1, steps + 1):
            fn.adam_step(p, g, m, v, t, h)

    @numba.njit(cache=True, parallel=True)
    def fused(p, target, m, v, h, steps):
        for t in range(1, steps + 1):
            c = fn.coefficients(t, h)
            for i in numba.prange(p.size):
                fn.update(i, 2 * (p[i] - target[i]), p, m, v, c)

    @numba.njit(cache=True)
    def made_inside(p, g, m, v, steps):
        h = fn.hyper(lr=1e-2, nesterov=True)
        for t in range(1, steps + 1):
            fn.adam_step(p, g, m, v, t, h)

    def state():
        rng = np.random.default_rng(3)
        a = [rng.standard_normal(70_001).astype(np.float32) for _ in range(4)]
        a[3] = np.abs(a[3])
        return a

    h = fn.hyper(lr=1e-2, weight_decay=0.1)
    out = {}
    for f, args in ((train, (h, 3)), (fused, (h, 3)), (made_inside, (3,))):
        a = state()
        f(*a, *args)
        out[f.__name__] = [a[0][:4].tolist(), sum(f.stats.cache_hits.values()),
                           sum(f.stats.cache_misses.values())]
    a = state()
    fn.adam_step(*a, 1, h)
    entry = fn._entries()[0]
    out["python"] = [a[0][:4].tolist(), sum(entry.stats.cache_hits.values()),
                     sum(entry.stats.cache_misses.values())]
    print(json.dumps(out))
""")


def run(tmp_path) -> dict:
    env = {**os.environ, "FASTADAM_CACHE_DIR": str(tmp_path / "kernels"),
           "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-c", "import user"], env=env, capture_output=True,
                         text=True, cwd=tmp_path, timeout=600)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_second_process_loads_every_cache(tmp_path):
    (tmp_path / "user.py").write_text(USER)
    first, second = run(tmp_path), run(tmp_path)
    for name in ("train", "fused", "made_inside", "python"):
        assert first[name][1:] == [0, 1], (name, first[name])  # compiled, once
        assert second[name][1:] == [1, 0], (name, second[name])  # loaded, not compiled
        assert second[name][0] == first[name][0]


def test_a_record_type_names_the_kernels_sources():
    """A caller's cache keyed on a record's type misses once fastadam's sources change."""
    from fastadam._backends.cpu.record_types import record_type
    from fastadam._backends.shared import records

    h = fn.hyper(amsgrad=True)
    cls = type(h)
    assert cls.__name__.endswith("@" + records.TAG)
    stale = records.record_class_named(cls.__name__.replace(records.TAG, "0" * 8))
    assert stale is not cls and stale.kind == cls.kind
    assert record_type(stale) != record_type(cls)
    assert records.record_class_named(cls.__name__) is cls  # how a pickled type comes back
    assert np.isnan(h.max_lr)
