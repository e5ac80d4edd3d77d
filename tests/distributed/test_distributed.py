"""The sharded optimizer on several processes: launches ``checks.py`` beside it under
``mpiexec`` (2, 3 and 4 ranks, oversubscribed on a small machine) and under torch.distributed
(gloo), each with a timeout, so that a hang fails instead of blocking."""

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import optional

from fastadam.distributed import ShardedAdam, shard_counts

CHECKS = Path(__file__).parent / "checks.py"
TIMEOUT_S = 300


def _launch(command: list[str]) -> str:
    """Run ``command`` in its own process group; kill the group on timeout."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[2]),
                                          os.environ.get("PYTHONPATH", "")])}
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, env=env, start_new_session=True)
    try:
        out, _ = process.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        out, _ = process.communicate()
        pytest.fail(f"timed out after {TIMEOUT_S} s (a rank hung):\n{out[-4000:]}")
    assert process.returncode == 0, out[-6000:]
    return out


def _mpiexec() -> str:
    optional("mpi4py")
    found = shutil.which("mpiexec", path=str(Path(sys.executable).parent)) or \
        shutil.which("mpiexec")
    if found is None:
        if os.environ.get("CI"):
            raise RuntimeError("no mpiexec: pip install 'fastadam[mpi]' (mpi4py, mpich)")
        pytest.skip("no mpiexec")
    return found


@pytest.mark.parametrize("ranks", [2, 3, 4])
def test_sharded_adam_over_mpi(ranks):
    out = _launch([_mpiexec(), "-n", str(ranks), sys.executable, "-m", "mpi4py", str(CHECKS),
                   "mpi"])
    assert out.count("all checks passed") == ranks


@pytest.mark.parametrize("ranks", [2, 3, 4])
def test_sharded_adam_and_zero_redundancy_optimizer_over_torch_distributed(ranks):
    optional("torch")
    out = _launch([sys.executable, str(CHECKS), "torch", str(ranks)])
    assert out.count("all checks passed") == ranks


def test_shards_are_even_to_within_one_element():
    for n in (0, 1, 2, 3, 10, 1001):
        for ranks in (1, 2, 3, 4):
            counts = shard_counts(n, ranks)
            assert sum(counts) == n and max(counts) - min(counts) <= 1
            assert counts == sorted(counts, reverse=True)


def test_comm_must_be_a_communicator():
    with pytest.raises(TypeError, match="comm"):
        ShardedAdam(np.ones(10, np.float32), comm="world")


def test_import_needs_no_mpi_or_torch():
    code = ("import sys, fastadam, fastadam.distributed; "
            "assert 'mpi4py' not in sys.modules and 'torch' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
