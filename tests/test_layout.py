"""The package's layout holds: its import contracts (layers, independent backends, no
cycles), small files with one job each, and no import inside a function but those of
optional dependencies (or of the modules that import them at their top)."""

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).parents[1] / "fastadam"
MAX_LINES = 450

# What a function may import lazily: optional dependencies, numba where loading it at
# import time would cost every user a third of a second, and the modules that import an
# optional dependency at their top (numba.cuda, torch).
LAZY = ("numba", "llvmlite", "torch", "torchao", "mpi4py", "ml_dtypes", "matplotlib",
        "bitsandbytes", "cupy", "schedulefree")
LAZY_MODULES = {
    "fastadam._backends.cpu",  # numba, on the first compiled step
    "fastadam._backends.cuda",  # numba.cuda
    "fastadam.bench.roofline_cuda",  # numba.cuda
    "fastadam.bench.gpu_coefficients",  # numba.cuda
    "fastadam.bench.gpu_inline",  # numba.cuda
    "fastadam",  # fastadam.torch, from the benchmark: torch
    "fastadam.numba",  # fastadam.numba.device (numba.cuda), on first use of fastadam.numba.cuda
}


def test_import_contracts_hold():
    """``lint-imports`` (import-linter, configured in pyproject.toml) keeps every contract."""
    command = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
    if command is None:
        pytest.skip("import-linter is not installed (pip install 'fastadam[test]')")
    result = subprocess.run([command, "--no-cache"], capture_output=True, text=True,
                            cwd=PACKAGE.parent)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def test_no_file_is_too_long():
    long = {str(p.relative_to(PACKAGE)): n for p in PACKAGE.rglob("*.py")
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, f"over {MAX_LINES} lines: {long}"


def _lazy_imports(path: Path):
    """(line, module) of every import inside a function of ``path``, resolved."""
    tree = ast.parse(path.read_text())
    package = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts[:-1])
    for node in ast.walk(tree):
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        for inner in ast.walk(node):
            if isinstance(inner, ast.Import):
                for alias in inner.names:
                    yield inner.lineno, alias.name
            elif isinstance(inner, ast.ImportFrom):
                base = inner.module or ""
                if inner.level:
                    parts = package.split(".")
                    anchor = ".".join(parts[:len(parts) - inner.level + 1])
                    base = f"{anchor}.{base}" if base else anchor
                    if not inner.module:  # from .. import torch: the names are modules
                        for alias in inner.names:
                            yield inner.lineno, f"{base}.{alias.name}"
                        continue
                yield inner.lineno, base


def _allowed(module: str) -> bool:
    if module.split(".")[0] in LAZY:
        return True
    if module == "fastadam.torch" or module.startswith("fastadam.torch."):
        return True
    return any(module == m or module.startswith(m + ".") for m in LAZY_MODULES - {"fastadam"})


def test_functions_import_only_optional_dependencies():
    found = [f"{p.relative_to(PACKAGE)}:{line} imports {module}"
             for p in sorted(PACKAGE.rglob("*.py")) for line, module in _lazy_imports(p)
             if not _allowed(module)]
    assert not found, "imports inside functions dodge the layering:\n" + "\n".join(found)


def test_lazy_imports_say_why():
    """Each import inside a function carries a short comment on its line saying why."""
    silent = []
    for p in sorted(PACKAGE.rglob("*.py")):
        lines = p.read_text().splitlines()
        for line, _ in _lazy_imports(p):
            text = lines[line - 1]
            block = text.rstrip().endswith("(")  # a parenthesized import: the comment ends it
            if "#" not in text and not block:
                silent.append(f"{p.relative_to(PACKAGE)}:{line}: {text.strip()}")
    assert not silent, "say why this import is lazy:\n" + "\n".join(silent)
