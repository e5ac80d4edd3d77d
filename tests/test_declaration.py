"""An option is declared once: a new option that changes the element update, added to a
copy of the package in the five places ``docs/design.md`` names (its declaration, the
element update, the NumPy reference, the public signatures), reaches every path: the
CPU kernels one array and lists, the 8-bit kernel, param groups and state_dicts, the
functional step, validation, and ``fastadam.numba`` in compiled code."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).parents[1] / "fastadam"

# ``sign_grad``: step on the gradient's sign (0 stays 0, NaN stays NaN).
EDITS = {
    "_core/options.py": [(
        '    Option("max_lr", None, _optional_positive, "scalar", '
        '"the peak lr for decouple_lr"),\n',
        '    Option("sign_grad", False, checks.flag, "kernel", '
        '"step on the gradient\'s sign"),\n')],
    "_core/element.py": [
        ("    maximize, amsgrad, nesterov = flags.maximize, flags.amsgrad, flags.nesterov\n",
         "    sign_grad = flags.sign_grad\n"),
        ("        if maximize:\n            g = -g\n"
         "        p = load_param(i, param, comp, master_param)\n",
         "        if sign_grad:\n            g = g / abs(g) if g != 0 else g\n")],
    "_backends/reference.py": [(
        "    compute, g, p = _inputs(param, grad, comp, master, grad_scale)\n"
        "    if h.maximize:\n        g = -g\n",
        "    if h.sign_grad:\n        g = np.sign(g)\n")],
    "optimizer.py": [("        max_lr: float | None = None,\n",
                      "        sign_grad: bool = False,\n")],
    "functional.py": [("    max_lr: float | None = None,\n",  # adam_step's, adam_step_8bit's
                       "    sign_grad: bool = False,\n")],
}
PLACES = {"functional.py": 2}  # anchors found more than once: each place takes it

CHECK = """
import numba
import numpy as np
import fastadam
import fastadam.numba as fn

rng = np.random.default_rng(11)
n = 1001
start = rng.standard_normal(n).astype(np.float32)
grads = [rng.standard_normal(n).astype(np.float32) for _ in range(3)]
for g in grads:
    g[::7] = 0.0


def run(grads, **options):
    p = start.copy()
    opt = fastadam.Adam(p, lr=1e-2, **options)
    for g in grads:
        opt.step(g)
    return p, opt


signs = [np.sign(g) for g in grads]
got, opt = run(grads, sign_grad=True)
assert np.array_equal(got, run(signs)[0])  # the kernel: Adam on the signs, to the bit
assert not np.array_equal(got, run(grads)[0])
numpy_got = run(grads, sign_grad=True, backend="numpy")[0]
assert np.allclose(numpy_got, got, rtol=1e-6, atol=1e-7)  # the NumPy reference

p, m, v = start.astype(np.float64), np.zeros(n), np.zeros(n)  # the float64 formula
for t, s in enumerate(signs, 1):
    m = 0.9 * m + 0.1 * s
    v = 0.999 * v + 0.001 * s * s
    p = p - 1e-2 * (m / (1 - 0.9**t)) / (np.sqrt(v / (1 - 0.999**t)) + 1e-8)
assert np.allclose(got, p, rtol=1e-5, atol=1e-6)

assert opt.param_groups[0]["sign_grad"] is True
again = fastadam.Adam(start.copy(), lr=1e-2)
again.load_state_dict(opt.state_dict())
assert again.param_groups[0]["sign_grad"] is True

parts = [start[:300].copy(), start[300:].copy()]  # a list, as one batch
listed = fastadam.Adam(parts, lr=1e-2, sign_grad=True)
for g in grads:
    listed.step([g[:300], g[300:]])
assert np.array_equal(np.concatenate(parts), got)

eight, _ = run(grads, sign_grad=True, state_dtype="8bit")
assert np.array_equal(eight, run(signs, state_dtype="8bit")[0])

p, m, v = start.copy(), np.zeros(n, np.float32), np.zeros(n, np.float32)
fastadam.adam_step(p, grads[0], m, v, step=1, lr=1e-2, sign_grad=True)
assert np.array_equal(p, run(grads[:1], sign_grad=True)[0])


@numba.njit
def compiled_step(p, g, m, v):
    fn.adam_step(p, g, m, v, 1, fn.hyper(lr=1e-2, sign_grad=True))


q, m, v = start.copy(), np.zeros(n, np.float32), np.zeros(n, np.float32)
compiled_step(q, grads[0], m, v)
assert np.array_equal(q, p)
assert "sign_grad" in type(fn.hyper(sign_grad=True)).__name__

try:
    fastadam.Adam(start.copy(), sign_grad=2)
except TypeError as e:
    assert "sign_grad" in str(e)
else:
    raise AssertionError("sign_grad=2 was taken")
print("ok")
"""


def test_a_new_option_touches_five_files(tmp_path):
    copy = tmp_path / "src" / "fastadam"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    for name, edits in EDITS.items():
        path = copy / name
        text = path.read_text()
        for anchor, added in edits:
            assert text.count(anchor) == PLACES.get(name, 1), (name, anchor)
            text = text.replace(anchor, anchor + added)
        path.write_text(text)
    assert len(EDITS) == 5
    env = {**os.environ, "FASTADAM_CACHE_DIR": str(tmp_path / "cache"),
           "PYTHONPATH": str(copy.parent)}
    out = subprocess.run([sys.executable, "-c", CHECK], env=env, capture_output=True,
                         text=True, cwd=copy.parent, timeout=900)
    assert out.returncode == 0, out.stderr[-4000:]
    assert out.stdout.strip().endswith("ok")
