"""Adam.save / Adam.load: one versioned file, atomic writes, refusals change nothing."""

import io
import os
import zipfile

import numpy as np
import pytest
from helpers import optional

import fastadam
from fastadam._state import checkpoint


def trained(rng, dtype=np.float32, steps=4, **kw):
    opt = fastadam.AdamW(rng.standard_normal(37).astype(dtype), lr=0.01, amsgrad=True, **kw)
    for _ in range(steps):
        opt.step(rng.standard_normal(37).astype(np.float32))
    return opt


def assert_same_state(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa["param_groups"] == sb["param_groups"]
    assert sa["state"][0].keys() == sb["state"][0].keys()
    for k, v in sa["state"][0].items():
        np.testing.assert_array_equal(sb["state"][0][k], v)


def test_round_trip_continues_the_same_trajectory(rng, tmp_path):
    opt = trained(rng)
    opt.save(tmp_path / "opt.npz")
    other = fastadam.AdamW(opt.params.copy(), amsgrad=True)
    other.load(tmp_path / "opt.npz")
    assert_same_state(opt, other)
    g = rng.standard_normal(37).astype(np.float32)
    opt.step(g)
    other.step(g)
    np.testing.assert_array_equal(opt.params, other.params)


def test_bfloat16_state_and_kahan_round_trip(rng, tmp_path):
    ml_dtypes = optional("ml_dtypes")
    opt = trained(rng, dtype=ml_dtypes.bfloat16, state_dtype=ml_dtypes.bfloat16)
    opt.save(tmp_path / "bf16.npz")
    other = fastadam.AdamW(opt.params.copy(), amsgrad=True, state_dtype=ml_dtypes.bfloat16)
    other.load(tmp_path / "bf16.npz")
    assert_same_state(opt, other)
    assert other.state_dict()["state"][0]["kahan_comp"].dtype == ml_dtypes.bfloat16


def _inside_member(data: bytes, k: int) -> int:
    """The offset of a byte in the middle of the ``k``-th member's stored data."""
    info = zipfile.ZipFile(io.BytesIO(data)).infolist()[k]
    # The local header's name and extra field lengths (the central directory's may differ).
    name_length = int.from_bytes(data[info.header_offset + 26:info.header_offset + 28], "little")
    extra_length = int.from_bytes(data[info.header_offset + 28:info.header_offset + 30], "little")
    start = info.header_offset + 30 + name_length + extra_length
    return start + info.compress_size // 2


def refusals(tmp_path, good):
    data = good.read_bytes()
    cases = {}
    cases["truncated"] = data[: len(data) // 2]
    cases["garbage"] = b"not a checkpoint at all"
    cases["empty"] = b""
    flipped = bytearray(data)
    flipped[_inside_member(data, 1)] ^= 0xFF  # stored bytes (not a zip timestamp, say)
    cases["flipped byte"] = bytes(flipped)
    np.savez(tmp_path / "plain.npz", a=np.zeros(3))
    cases["other npz"] = (tmp_path / "plain.npz").read_bytes()
    return cases


@pytest.mark.parametrize("case", ["truncated", "garbage", "empty", "flipped byte", "other npz"])
def test_damaged_file_refused_unchanged(rng, tmp_path, case):
    opt = trained(rng)
    good = tmp_path / "good.npz"
    opt.save(good)
    bad = tmp_path / "bad.npz"
    bad.write_bytes(refusals(tmp_path, good)[case])
    target = trained(rng, steps=2)
    before = fastadam.AdamW(target.params.copy(), amsgrad=True)
    before.load_state_dict(target.state_dict())
    with pytest.raises(ValueError):
        target.load(bad)
    assert_same_state(before, target)


def test_other_layout_refused_unchanged(rng, tmp_path):
    opt = trained(rng)
    opt.save(tmp_path / "opt.npz")
    other = fastadam.AdamW(np.zeros(12, np.float32), amsgrad=True)
    with pytest.raises(ValueError, match="shape"):
        other.load(tmp_path / "opt.npz")
    assert other.step_count == 0
    not_amsgrad = fastadam.AdamW(np.zeros(37, np.float32))
    not_amsgrad.load(tmp_path / "opt.npz")  # amsgrad comes with the hyperparameters, as in torch
    assert not_amsgrad.hyperparameters["amsgrad"]


def test_other_version_refused(rng, tmp_path, monkeypatch):
    opt = trained(rng)
    monkeypatch.setattr(checkpoint, "VERSION", 99)
    opt.save(tmp_path / "future.npz")
    monkeypatch.undo()
    with pytest.raises(ValueError, match="version"):
        opt.load(tmp_path / "future.npz")


@pytest.mark.parametrize("failing", ["write", "rename"])
def test_interrupted_save_leaves_the_old_file(rng, tmp_path, monkeypatch, failing):
    opt = trained(rng)
    path = tmp_path / "opt.npz"
    opt.save(path)
    old = path.read_bytes()
    opt.step(rng.standard_normal(37).astype(np.float32))

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt  # as if the process were stopped here

    monkeypatch.setattr(np if failing == "write" else os,
                        "savez" if failing == "write" else "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        opt.save(path)
    monkeypatch.undo()
    assert path.read_bytes() == old
    assert os.listdir(tmp_path) == ["opt.npz"]  # no temporary file left behind


def test_killed_save_leaves_a_readable_file(rng, tmp_path):
    """A process killed while it saves over and over: the file is always old or new."""
    import signal
    import subprocess
    import sys
    import time

    path = tmp_path / "opt.npz"
    trained(rng).save(path)
    code = (
        "import numpy as np, fastadam, sys\n"
        "opt = fastadam.Adam(np.random.randn(300_000).astype(np.float32))\n"
        "g = np.random.randn(300_000).astype(np.float32)\n"
        "opt.step(g); opt.save(sys.argv[1]); print('saving', flush=True)\n"
        "while True:\n"
        "    opt.step(g); opt.save(sys.argv[1])\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code, str(path)], stdout=subprocess.PIPE)
    try:
        assert proc.stdout.readline() == b"saving\n"
        for delay in rng.uniform(0.0, 0.02, 20):
            time.sleep(delay)
            proc.send_signal(signal.SIGSTOP)  # frozen mid-save, as a kill would leave it
            state = checkpoint.load(path)  # never a broken file
            assert state["state"][0]["exp_avg"].shape == (300_000,)
            proc.send_signal(signal.SIGCONT)
    finally:
        proc.kill()
        proc.wait()
    assert checkpoint.load(path)["state"][0]["step"] >= 1


def test_a_file_that_is_not_a_checkpoint_says_so_with_its_path(tmp_path):
    opt = fastadam.Adam(np.zeros(3, np.float32))
    for name, data in (("garbage.npz", b"not a checkpoint"), ("empty.npz", b"")):
        path = tmp_path / name
        path.write_bytes(data)
        with pytest.raises(ValueError, match="is not a fastadam checkpoint") as e:
            opt.load(path)
        assert str(path) in str(e.value) and "pickle" not in str(e.value)


def test_loaded_hyperparameters_are_the_state_dicts_as_in_torch(rng):
    """lr and amsgrad follow the state_dict, as torch's load_state_dict takes the saved
    param groups (here against torch itself where it is installed)."""
    saved = fastadam.Adam(rng.standard_normal(10).astype(np.float32), amsgrad=True, lr=0.1)
    saved.step(rng.standard_normal(10).astype(np.float32))
    other = fastadam.Adam(rng.standard_normal(10).astype(np.float32), lr=0.5)
    other.load_state_dict(saved.state_dict())
    assert other.hyperparameters["amsgrad"] is True and other.lr == 0.1
    assert "max_exp_avg_sq" in other.state_dict()["state"][0]
    torch = optional("torch")
    theirs = torch.optim.Adam([torch.nn.Parameter(torch.zeros(10))], lr=0.5)
    theirs.load_state_dict({"state": {}, "param_groups": [
        {**theirs.state_dict()["param_groups"][0], "amsgrad": True, "lr": 0.1}]})
    assert theirs.param_groups[0]["amsgrad"] is True and theirs.param_groups[0]["lr"] == 0.1


def test_a_state_dict_converted_in_one_line_loads_into_torch_adamw(rng):
    """The docs' conversion: NumPy moments and an int step become torch's tensors, and
    torch's next step from them gives fastadam's params."""
    torch = pytest.importorskip("torch")
    shapes = [(5, 3), (7,)]
    params = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    mine = [p.copy() for p in params]
    opt = fastadam.AdamW(mine, lr=1e-2, weight_decay=0.1)
    for _ in range(3):
        opt.step([rng.standard_normal(s).astype(np.float32) for s in shapes])
    theirs = [torch.nn.Parameter(torch.from_numpy(p.copy())) for p in mine]
    state = opt.state_dict()
    state["state"] = {i: {k: torch.tensor(float(v)) if k == "step" else torch.from_numpy(v)
                          for k, v in s.items()} for i, s in state["state"].items()}
    torch_opt = torch.optim.AdamW(theirs, lr=1e-2, weight_decay=0.1)
    torch_opt.load_state_dict(state)
    grads = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    opt.step(grads)
    for t, g in zip(theirs, grads):
        t.grad = torch.from_numpy(g.copy())
    torch_opt.step()
    for a, t in zip(mine, theirs):
        np.testing.assert_allclose(a, t.detach().numpy(), rtol=1e-6, atol=1e-7)
