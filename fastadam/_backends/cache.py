"""Compiled kernels cached on disk, keyed on everything they are built from.

Numba's own ``cache=True`` keys a function on its source file and the pickled
values its closure captures; fastadam's kernels are closures over compiled
helpers (the element update, the conversions), which pickle differently in every
process, and are built from many files. So each kernel gets a cache of its own
here, keyed on: the kernel's name and specialization (flags, dtypes), the source
of every module of ``fastadam._core`` and ``fastadam._backends``, and the numba,
llvmlite and Python versions; numba adds the target (CPU name and features, or
the GPU's compute capability) to each entry. Each key has its own files, so
variants never share an index. An entry's data carries its SHA-256: a damaged or
truncated entry is recompiled, never loaded. A process compiles a variant under
an exclusive file lock, so processes starting at once (MPI ranks) compile each
variant once and the others load it.

Numba names each compiled function by its qualified name and a number counted from 1 in
every process, and a loaded entry's functions keep the names they were compiled under.
Two variants of one closure (the fused kernel with and without weight decay, say), one
compiled here and one loaded, could then share a name, and the loaded code would call
the other variant's. So numbers here start from a random offset of the process's own.

Where: ``FASTADAM_CACHE_DIR``, else ``NUMBA_CACHE_DIR/fastadam``, else
``__pycache__/kernels`` inside the installed package, or, where that is not
writable, the user's cache directory (``$XDG_CACHE_HOME/fastadam``, by default
``~/.cache/fastadam``). ``FASTADAM_CACHE=0`` turns caching off.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import os
import pickle
import secrets
import sys
import tempfile
import warnings
from pathlib import Path

import llvmlite
import numba
from numba.core import bytecode, caching

try:
    import fcntl
except ImportError:  # not POSIX: processes starting together may compile a variant twice
    fcntl = None

OFF = ("0", "off", "false", "no")
_PACKAGE = Path(__file__).resolve().parents[1]
_SOURCES = ("_core", "_backends", "numba")  # every kernel is assembled from modules here


def _distinct_function_names() -> None:
    """Number this process's compiled functions from a random offset (see the module's
    docstring): names then differ from those of every cached entry another process wrote."""
    ids = getattr(bytecode.FunctionIdentity, "_unique_ids", None)
    if isinstance(ids, itertools.count):  # (numba's; another numba: left as it is)
        bytecode.FunctionIdentity._unique_ids = itertools.count(
            next(ids) + (secrets.randbits(44) << 8))


_distinct_function_names()


def enabled() -> bool:
    """Whether kernels are cached (``FASTADAM_CACHE=0`` turns it off)."""
    return os.environ.get("FASTADAM_CACHE", "1").strip().lower() not in OFF


def _writable(path: Path) -> bool:
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            return True
    except OSError:
        return False


_directory: list = []  # resolved once per process: [Path or None]


def directory() -> Path | None:
    """The cache directory in use (created), or None where caching is off or no directory
    is writable."""
    if not _directory:
        _directory.append(_resolve() if enabled() else None)
    return _directory[0]


def _resolve() -> Path | None:
    explicit = os.environ.get("FASTADAM_CACHE_DIR")
    if explicit:
        return Path(explicit) if _writable(Path(explicit)) else None
    if numba.config.CACHE_DIR:
        candidates = [Path(numba.config.CACHE_DIR) / "fastadam"]
    else:
        user = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
        candidates = [_PACKAGE / "__pycache__" / "kernels", Path(user) / "fastadam"]
    return next((c for c in candidates if _writable(c)), None)


_source_hash: list = []


def source_hash() -> str:
    """SHA-256 of every source file kernels are built from, and the compiler versions."""
    if not _source_hash:
        h = hashlib.sha256()
        for part in (numba.__version__, llvmlite.__version__, sys.version,
                     str(numba.config.OPT), str(numba.config.BOUNDSCHECK)):
            h.update(part.encode() + b"\0")
        for sub in _SOURCES:
            for path in sorted((_PACKAGE / sub).rglob("*.py")):
                h.update(str(path.relative_to(_PACKAGE)).encode() + b"\0")
                h.update(path.read_bytes() + b"\0")
        _source_hash.append(h.hexdigest())
    return _source_hash[0]


def key_of(name: str, *parts) -> str:
    """The cache key of kernel ``name`` specialized on ``parts`` (reprs of plain values)."""
    text = "\0".join([source_hash(), name, *map(repr, parts)])
    return hashlib.sha256(text.encode()).hexdigest()


def _checked_files(base):
    """``base`` (numba's IndexDataCacheFile, CPU or CUDA) with a digest on every data file."""

    class CheckedFiles(base):
        def _save_data(self, name, data):
            payload = self._dump(data)
            path = self._data_path(name)
            with self._open_for_write(path) as f:
                f.write(hashlib.sha256(payload).digest() + payload)

        def _load_data(self, name):
            with open(self._data_path(name), "rb") as f:
                raw = f.read()
            digest, payload = raw[:32], raw[32:]
            if hashlib.sha256(payload).digest() != digest:
                raise ValueError("damaged cache entry")
            return pickle.loads(payload)

    return CheckedFiles


_CLASSES: dict = {}


def _keyed_class(base_cache):
    """A subclass of numba's ``base_cache`` (FunctionCache, or numba-cuda's CUDACache) whose
    files live in ``directory()`` under the kernel's key, and that never fails a step."""
    found = _CLASSES.get(base_cache)
    if found is not None:
        return found
    module = next(sys.modules[c.__module__] for c in base_cache.__mro__
                  if hasattr(sys.modules[c.__module__], "IndexDataCacheFile"))
    files = _checked_files(module.IndexDataCacheFile)  # numba's, or numba-cuda's copy

    class Locator(caching._CacheLocator):
        def __init__(self, py_file):
            self._py_file = py_file

        def ensure_cache_path(self):
            pass  # made, and checked writable, by ``directory()``

        def get_cache_path(self):
            return str(directory())

        def get_source_stamp(self):
            return "keyed"  # the key holds every source's hash

        def get_disambiguator(self):
            return ""

        @classmethod
        def from_function(cls, py_func, py_file):
            return cls(py_file)

    class Keyed(base_cache):
        _impl_class = type("Impl", (base_cache._impl_class,), {"_locator_classes": [Locator]})

        def __init__(self, py_func, key: str, name: str):
            super().__init__(py_func)
            self._key, self._label = key, name
            base = self._impl._filename_base = key[:32]  # a variant's own files
            self._cache_file = files(self._cache_path, base, "keyed")
            if hasattr(self, "_launch_config_marker_path"):  # numba-cuda's, per variant too
                self._launch_config_marker_path = os.path.join(self._cache_path, base + ".lcs")

        def _index_key(self, sig, codegen):
            return (sig, codegen.magic_tuple(), self._key)

        def load_overload(self, sig, target_context):
            try:
                return super().load_overload(sig, target_context)
            except Exception:  # damaged, truncated, foreign: drop the index, compile anew
                with contextlib.suppress(OSError):  # (under the lock: nobody else writes)
                    os.unlink(self._cache_file._index_path)
                return None

        def save_overload(self, sig, data):
            try:
                super().save_overload(sig, data)
            except Exception as e:  # a full or read-only disk costs a compile, not a step
                warnings.warn(f"fastadam could not cache {self._label}: {e}", RuntimeWarning,
                              stacklevel=2)

    _CLASSES[base_cache] = Keyed
    return Keyed


def cached(dispatcher, name: str, *parts):
    """``dispatcher`` (a numba CPU or CUDA dispatcher) with its compiled overloads cached on
    disk under ``key_of(name, *parts)``; it compiles each under a file lock, so that
    processes starting together compile it once. Returned unchanged where caching is off,
    no directory is writable, or the dispatcher cannot cache (the CUDA simulator's)."""
    if directory() is None:
        return dispatcher
    base = _base_cache(dispatcher)
    if base is None:
        return dispatcher
    key = key_of(name, *parts)
    dispatcher._cache = _keyed_class(base)(dispatcher.py_func, key, name)
    compile_unlocked = dispatcher.compile

    def compile(sig):
        with _file_lock(directory() / f"{key[:32]}.lock"):
            return compile_unlocked(sig)

    dispatcher.compile = compile
    return dispatcher


def disk_cached(name: str, *parts):
    """``cached`` as a decorator, for dispatchers defined at module level."""
    return lambda dispatcher: cached(dispatcher, name, *parts)


def _base_cache(dispatcher):
    """The numba cache class for this dispatcher's target, or None."""
    if isinstance(dispatcher, numba.core.registry.CPUDispatcher):
        return caching.FunctionCache
    if numba.config.ENABLE_CUDASIM or type(dispatcher).__name__ != "CUDADispatcher":
        return None  # the simulator's kernels are Python: nothing to cache
    try:
        from numba.cuda.dispatcher import CUDACache, CUDADispatcher  # numba-cuda: optional
    except ImportError:
        return None
    return CUDACache if isinstance(dispatcher, CUDADispatcher) else None


_held: dict = {}


@contextlib.contextmanager
def _file_lock(path: Path):
    """An exclusive lock on ``path`` across processes (reentrant within one)."""
    if path in _held:
        yield
        return
    if fcntl is None:
        yield
        return
    try:
        handle = open(path, "a+b")
    except OSError:
        yield
        return
    with handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        _held[path] = handle
        try:
            yield
        finally:
            del _held[path]
            fcntl.flock(handle, fcntl.LOCK_UN)
