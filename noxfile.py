"""Sessions: ``nox -s tests``, ``nox -s bench``, ``nox -s lint``."""

import nox

nox.options.sessions = ["lint", "tests"]
nox.options.default_venv_backend = "venv"


@nox.session
def tests(session: nox.Session) -> None:
    """The test suite, with torch (CPU build) as a reference and matplotlib for the plot."""
    session.install("-e", ".[test,plot]")
    session.run("pytest", "tests", *session.posargs, env={"CI": "true"})


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
