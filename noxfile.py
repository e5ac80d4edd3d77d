"""Sessions: ``nox -s tests``, ``nox -s bench``, ``nox -s lint``; ``nox -s gpu`` on a machine
with an NVIDIA GPU."""

import nox

nox.options.sessions = ["lint", "tests"]
nox.options.default_venv_backend = "venv"


@nox.session
def tests(session: nox.Session) -> None:
    """The test suite: the import contracts, torch (CPU build) as a reference, MPI from
    wheels for the sharded optimizer's multi-process tests, the README's and the docs'
    code blocks, the docs site, then the CUDA tests on the simulator."""
    # numba-cuda's cu13 extra brings NVRTC, so the CUDA kernels compile to PTX here too.
    session.install("-e", ".[test,plot,cuda,mpi,docs]", "numba-cuda[cu13]")
    env = {"CI": "true"}  # a missing reference fails instead of skipping
    session.run("lint-imports", "--no-cache")  # the layers (also a test: it fails the run)
    # Two processes: most of the suite's time is compiling and one core's Python.
    session.run("pytest", "tests", "--ignore=tests/cuda", "-n", "2", *session.posargs, env=env)
    # Every Python block of the README and the docs runs (GPU and multi-process ones are
    # marked notest), and the site builds with no warning.
    session.run("pytest", "--markdown-docs", "-m", "markdown-docs", "README.md", "docs",
                env=env)
    session.run("mkdocs", "build", "--strict", "--site-dir", f"{session.create_tmp()}/site",
                env={"NO_MKDOCS_2_WARNING": "1"})
    # The simulator must be switched on before numba loads: its own processes, two of
    # them, as it runs each CUDA thread in Python on one core.
    session.run("pytest", "tests/cuda", "-n", "2", *session.posargs,
                env={**env, "NUMBA_ENABLE_CUDASIM": "1"})


@nox.session
def gpu(session: nox.Session) -> None:
    """On a machine with an NVIDIA GPU and driver: the CUDA tests against the real device,
    the PTX checks, then the GPU rows of the benchmark with torch's fused CUDA Adam."""
    session.install("-e", ".[test,cuda]", "numba-cuda[cu13]")
    session.run("python", "-c", "from numba import cuda; assert cuda.is_available(), "
                "'no CUDA GPU: nox -s tests runs the CUDA tests on the simulator'")
    session.run("pytest", "tests/cuda", "tests/backends/test_cuda_codegen.py", *session.posargs)
    session.run("python", "-m", "fastadam", "bench", "--peers", "--dtypes", "float32,float16",
                "--configs", "adam,8bit", "--sizes", "1024,1048576,67108864,268435456")


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
