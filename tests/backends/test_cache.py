"""The on-disk kernel cache: a second process loads what the first compiled (Numba's
dispatcher counters say so, not timings), a changed source or a damaged entry is never
served, processes starting at once compile each kernel once, the switch turns it off,
and ``precompile`` fills it."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import fastadam
from fastadam._backends import cache

PACKAGE = Path(fastadam.__file__).parent

# One AdamW step on a float32 array and one on a list (the many-array kernel, the header
# reader, the overlap check): prints the params and every fastadam kernel's hits/misses.
STEP = """
import json, sys
import numpy as np
import fastadam
from fastadam._backends.cpu import dense, headers
from fastadam._backends import owned

rng = np.random.default_rng(5)
p = rng.standard_normal(1001).astype(np.float32)
opt = fastadam.AdamW(p, lr=0.1)
opt.step(rng.standard_normal(1001).astype(np.float32))
ps = [rng.standard_normal(n).astype(np.float32) for n in (7, 300)]
many = fastadam.AdamW(ps, lr=0.1)
many.step([rng.standard_normal(a.size).astype(np.float32) for a in ps])
flags = opt._slots[0].flags._replace(grad="float32")
# A small array steps through the serial kernel.
kernels = {"fused": dense.serial_kernel(flags), "multi": dense.multi_kernel(flags),
           "headers": headers.check_arrays, "overlap": owned._overlap}
print(json.dumps({"params": [float(x) for x in opt.params[:5]] + [float(ps[1][0])],
                  "file": fastadam.__file__,
                  "kernels": {k: [sum(d.stats.cache_hits.values()),
                                  sum(d.stats.cache_misses.values())]
                              for k, d in kernels.items()},
                  "directory": str(__import__("fastadam._backends.cache").
                                   _backends.cache.directory())}))
"""


def run(env_extra: dict, code: str = STEP, cwd=None, path=None) -> dict:
    env = {**os.environ, **env_extra}
    if path is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(path), env.get("PYTHONPATH", "")])
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         cwd=path or cwd, timeout=600)  # "-c" puts the cwd first on sys.path
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_a_second_process_loads_every_kernel(tmp_path):
    env = {"FASTADAM_CACHE_DIR": str(tmp_path)}
    first, second = run(env), run(env)
    assert all(misses == 1 and hits == 0 for hits, misses in first["kernels"].values())
    assert all(hits == 1 and misses == 0 for hits, misses in second["kernels"].values())
    assert first["params"] == second["params"]
    assert first["directory"] == str(tmp_path)


def test_off_switch_compiles_every_time_and_writes_nothing(tmp_path):
    env = {"FASTADAM_CACHE_DIR": str(tmp_path / "c"), "FASTADAM_CACHE": "0"}
    first, second = run(env), run(env)
    for result in (first, second):
        assert all(hits == 0 and misses == 1 for hits, misses in result["kernels"].values())
    assert not (tmp_path / "c").exists()
    assert first["params"] == run({"FASTADAM_CACHE_DIR": str(tmp_path / "d")})["params"]


def test_numba_cache_dir_is_honoured(tmp_path):
    result = run({"FASTADAM_CACHE_DIR": "", "NUMBA_CACHE_DIR": str(tmp_path)})
    assert result["directory"] == str(tmp_path / "fastadam")
    assert list((tmp_path / "fastadam").glob("*.nbi"))


def test_a_damaged_entry_is_compiled_again_not_loaded(tmp_path):
    env = {"FASTADAM_CACHE_DIR": str(tmp_path)}
    want = run(env)["params"]
    data = sorted(tmp_path.glob("*.nbc"))
    assert data
    for i, path in enumerate(data):  # flipped bits, a truncated file, a garbage index
        raw = bytearray(path.read_bytes())
        if i % 2:
            raw[len(raw) // 2] ^= 0xFF
            path.write_bytes(bytes(raw))
        else:
            path.write_bytes(bytes(raw[:40]))
    next(tmp_path.glob("*.nbi")).write_bytes(b"garbage")
    again = run(env)
    assert again["params"] == want
    assert all(misses == 1 for _, misses in again["kernels"].values())
    assert all(hits == 1 for hits, _ in run(env)["kernels"].values())  # and cached again


def test_an_edited_source_is_never_served_an_old_kernel(tmp_path):
    """On a copy of the package: the shared element update changed after a run, the
    next process compiles anew and steps with the new code."""
    copy = tmp_path / "src"
    shutil.copytree(PACKAGE, copy / "fastadam", ignore=shutil.ignore_patterns("__pycache__"))
    env = {"FASTADAM_CACHE_DIR": str(tmp_path / "cache")}
    before = run(env, path=copy)
    element = copy / "fastadam" / "_core" / "element.py"
    text = element.read_text()
    line = "p = p - mul(m_coef, div(m_i, denom))"
    assert line in text  # the step of the update every dense kernel inlines: doubled
    element.write_text(text.replace(line, "p = p - 2 * mul(m_coef, div(m_i, denom))"))
    after = run(env, path=copy)
    assert after["file"] == str(copy / "fastadam" / "__init__.py")
    assert all(misses == 1 for name, (_, misses) in after["kernels"].items()
               if name in ("fused", "multi"))
    assert after["params"] != before["params"]
    assert run(env)["params"] == before["params"]  # the installed package: its own entries


def test_processes_starting_together_compile_each_kernel_once(tmp_path):
    env = {**os.environ, "FASTADAM_CACHE_DIR": str(tmp_path)}
    procs = [subprocess.Popen([sys.executable, "-c", STEP], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(4)]
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err
        results.append(json.loads(out.strip().splitlines()[-1]))
    assert all(r["params"] == results[0]["params"] for r in results)
    for name in results[0]["kernels"]:
        assert sum(r["kernels"][name][1] for r in results) == 1, name  # one compile in all
        assert sum(r["kernels"][name][0] for r in results) == 3, name  # three loads


def test_precompile_fills_the_cache(tmp_path):
    env = {**os.environ, "FASTADAM_CACHE_DIR": str(tmp_path)}
    out = subprocess.run([sys.executable, "-m", "fastadam", "precompile", "--dtypes", "float32",
                          "--options", "adamw"], env=env, capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stderr
    assert "[2/2] cpu float32 adamw, one list" in out.stdout
    result = run({"FASTADAM_CACHE_DIR": str(tmp_path)})
    assert all(hits == 1 and misses == 0 for hits, misses in result["kernels"].values())
    listing = subprocess.run([sys.executable, "-m", "fastadam", "cache"], env=env,
                             capture_output=True, text=True, check=True)
    assert str(tmp_path) in listing.stdout and "kernels" in listing.stdout
    subprocess.run([sys.executable, "-m", "fastadam", "cache", "--clear"], env=env, check=True)
    assert not tmp_path.exists() or not list(tmp_path.glob("*.nbi"))


def test_an_unwritable_install_falls_back_to_the_user_cache(tmp_path, monkeypatch):
    """Where the package's own folder is read-only, the user's cache directory."""
    monkeypatch.delenv("FASTADAM_CACHE_DIR", raising=False)
    monkeypatch.setattr(cache.numba.config, "CACHE_DIR", "")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    real = cache._writable
    monkeypatch.setattr(cache, "_writable",
                        lambda path: False if cache._PACKAGE in path.parents else real(path))
    assert cache._resolve() == tmp_path / "fastadam"


def test_keys_cover_the_specialization_and_sources():
    from fastadam._core.hyper import Flags

    a = Flags(maximize=False, amsgrad=False, nesterov=False, l2_decay=False,
              decoupled_decay=True, kahan=False, master=False, param="float32",
              grad="float32", state="float32")
    assert cache.key_of("k", a) != cache.key_of("k", a._replace(amsgrad=True))
    assert cache.key_of("k", a) != cache.key_of("k", a._replace(grad="bfloat16"))
    assert cache.key_of("k", a) != cache.key_of("other", a)
    assert cache.key_of("k", a) == cache.key_of("k", a)
    assert len(cache.source_hash()) == 64


def test_cached_kernels_give_the_same_bits_as_uncached(tmp_path):
    cached = run({"FASTADAM_CACHE_DIR": str(tmp_path)})
    loaded = run({"FASTADAM_CACHE_DIR": str(tmp_path)})
    off = run({"FASTADAM_CACHE": "0"})
    assert cached["params"] == loaded["params"] == off["params"]
    p = np.float32(cached["params"][0])
    assert np.isfinite(p)


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX file locks")
def test_the_lock_file_is_per_kernel(tmp_path):
    run({"FASTADAM_CACHE_DIR": str(tmp_path)})
    locks = list(tmp_path.glob("*.lock"))
    assert len(locks) == len(list(tmp_path.glob("*.nbi"))) >= 4


# Steps an AdamW without weight decay, then one with it (both small arrays: the one-thread
# wrapper with the fused kernel compiled into it); prints the second one's params.
VARIANTS = """
import json
import numpy as np
import fastadam

if {plain_first}:
    plain = fastadam.AdamW(np.ones(64, np.float32), lr=1e-2, weight_decay=0.0)
    plain.step(np.ones(64, np.float32))
p = np.full(1001, 3.0, np.float32)
decayed = fastadam.AdamW(p, lr=1e-2, weight_decay=0.5)
for _ in range(3):
    decayed.step(np.full(1001, 1e-3, np.float32))
print(json.dumps({{"params": [float(x) for x in p[:3]]}}))
"""


def test_a_loaded_variant_never_runs_another_variants_code(tmp_path):
    """A process compiles one variant of a kernel and loads another from the cache: the
    loaded one runs its own code. (Numba names functions by a per-process count, so both
    variants, compiled first in their processes, were once the same function to the
    linker, and the loaded one called the other's code: no weight decay.)"""
    env = {"FASTADAM_CACHE_DIR": str(tmp_path)}
    alone = run(env, VARIANTS.format(plain_first=False))  # caches the decayed variant
    mixed = run(env, VARIANTS.format(plain_first=True))  # compiles plain, loads decayed
    off = run({"FASTADAM_CACHE": "0"}, VARIANTS.format(plain_first=True))
    assert alone["params"] == mixed["params"] == off["params"]
    assert off["params"][0] < 3.0 - 3 * 1e-2 * 0.5 * 2.9  # the decay applied
