"""Sessions: ``nox -s tests``, ``nox -s bench``, ``nox -s lint``."""

import nox

nox.options.sessions = ["lint", "tests"]
nox.options.default_venv_backend = "venv"


@nox.session
def tests(session: nox.Session) -> None:
    """The test suite: torch (CPU build) as a reference, then the CUDA tests on the simulator."""
    # numba-cuda's cu13 extra brings NVRTC, so the CUDA kernels compile to PTX here too.
    session.install("-e", ".[test,plot,cuda]", "numba-cuda[cu13]")
    env = {"CI": "true"}  # a missing reference fails instead of skipping
    session.run("pytest", "tests", "--ignore=tests/cuda", *session.posargs, env=env)
    # The simulator must be switched on before numba loads: its own process.
    session.run("pytest", "tests/cuda", *session.posargs, env={**env, "NUMBA_ENABLE_CUDASIM": "1"})


@nox.session
def bench(session: nox.Session) -> None:
    """The pytest-benchmark suite (1K to 64M elements), then the quick CLI sweep."""
    session.install("-e", ".[test]")
    session.run("pytest", "bench", "--benchmark-only", *session.posargs)
    session.run("python", "-m", "fastadam", "bench", "--quick", "--peers")


@nox.session
def lint(session: nox.Session) -> None:
    """ruff."""
    session.install("ruff")
    session.run("ruff", "check", "fastadam", "tests", "bench", "noxfile.py")
