"""Optimizer checkpoints: one ``.npz`` file, a format version, written atomically.

The file holds ``state_dict()``: a JSON header (format, version, hyperparameters,
array dtypes) and the state arrays. 16-bit arrays are stored as uint16 with their
dtype in the header, so bfloat16 needs no pickling. A save writes a temporary
file beside the target, syncs it, then renames it over the target: a save killed
at any moment leaves the old file or the new one, never a broken one.
"""

from __future__ import annotations

import json
import os
import tempfile
import zipfile

import numpy as np

from .._core.dtypes import kind

FORMAT = "fastadam-checkpoint"
VERSION = 1


def save(path, state_dict: dict) -> None:
    """Write ``state_dict`` (as ``Adam.state_dict()`` makes it) to ``path`` atomically."""
    arrays, dtypes, steps = {}, {}, {}
    for i, entry in state_dict["state"].items():
        steps[str(i)] = entry["step"]
        for name, value in entry.items():
            if isinstance(value, np.ndarray):
                key = f"{i}.{name}"
                dtypes[key] = kind(value.dtype) or value.dtype.name  # uint8: 8-bit codes
                arrays[key] = value.view(np.uint16) if value.itemsize == 2 else value
    header = {"format": FORMAT, "version": VERSION, "steps": steps,
              "param_groups": state_dict["param_groups"], "dtypes": dtypes}
    arrays["header"] = np.frombuffer(json.dumps(header).encode(), dtype=np.uint8)
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".fastadam-", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)  # atomic on POSIX and Windows
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    try:  # make the rename itself durable
        dir_fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)


def load(path) -> dict:
    """Read a checkpoint back as a ``state_dict``; ValueError for anything else."""
    path = os.fspath(path)
    try:
        with np.load(path, allow_pickle=False) as npz:
            contents = {name: npz[name] for name in npz.files}
        header = json.loads(contents.pop("header").tobytes().decode())
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, UnicodeDecodeError,
            json.JSONDecodeError) as e:
        if isinstance(e, FileNotFoundError):
            raise
        # (numpy's own message may suggest allow_pickle: never load pickles from a file)
        raise ValueError(f"{path} is not a fastadam checkpoint (not an .npz file fastadam "
                         "wrote, or a damaged one)") from e
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise ValueError(f"{path} is not a fastadam checkpoint")
    if header.get("version") != VERSION:
        raise ValueError(f"{path} has checkpoint version {header.get('version')!r}; "
                         f"this fastadam reads version {VERSION}")
    dtypes, steps = header.get("dtypes"), header.get("steps")
    if not isinstance(dtypes, dict) or set(dtypes) != set(contents) or not isinstance(steps, dict):
        raise ValueError(f"{path} is damaged: its arrays do not match its header")
    state = {}
    for key, step in steps.items():
        if not key.isdigit():
            raise ValueError(f"{path} is damaged: a state entry named {key!r}")
        state[int(key)] = {"step": step}
    for key, array in contents.items():
        index, _, name = key.partition(".")
        if not index.isdigit() or int(index) not in state:
            raise ValueError(f"{path} is damaged: an array named {key!r}")
        state[int(index)][name] = _restore(array, dtypes[key], path)
    return {"state": state, "param_groups": header.get("param_groups")}


def _restore(array: np.ndarray, dtype_name, path) -> np.ndarray:
    if dtype_name == "bfloat16":
        try:
            import ml_dtypes  # optional
        except ImportError as e:
            raise ImportError(f"{path} holds bfloat16 state: pip install ml_dtypes") from e
        return array.view(ml_dtypes.bfloat16)
    if dtype_name == "uint8" and array.dtype == np.uint8:
        return array
    if dtype_name not in ("float16", "float32", "float64") or array.dtype.name not in (
            dtype_name, "uint16"):
        raise ValueError(f"{path} is damaged: an array of dtype {array.dtype} for {dtype_name!r}")
    return array.view(np.dtype(dtype_name))
