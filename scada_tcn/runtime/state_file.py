"""The daemon's state on disk, so a restart resumes every turbine where it stopped instead of warming up again.

Format: one `.npz` file (numpy, `allow_pickle=False`, never pickle). A state is a tree of dicts, lists, strings,
numbers, booleans, None and numpy arrays (the `state_dict()` of the runtime's stateful objects). Every array is
stored as its own entry `a<i>`; the tree itself is stored as JSON (entry `tree`, utf-8 bytes) with each array
replaced by {"__array__": "a<i>"}. Writes are atomic (a temporary file, fsynced, then `os.replace`), so a crash
while saving leaves the previous state intact, and durable: the directory is fsynced after the rename, so once
`write_state` returns the new file survives a power cut (the daemon deletes the journal frames it holds only
then). Refused (ValueError): other object types, and files that are not such a state (empty, truncated or
corrupted ones included).

`encode_state(tree)` takes everything the file needs (the tree as JSON, a copy of every array) and
`write_state(path, encoded)` writes it, so the state can be captured at one point of a loop and written by
another thread while the loop goes on changing the live arrays; `save_state` does both.
"""

from __future__ import annotations

import json
import os
import zipfile
import zlib
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

__all__ = ["EncodedState", "encode_state", "fsync_dir", "load_state", "save_state", "write_state"]

_ARRAY = "__array__"


def _flatten(x: Any, arrays: dict[str, np.ndarray]) -> Any:
    if isinstance(x, np.ndarray):
        key = f"a{len(arrays)}"
        arrays[key] = x
        return {_ARRAY: key}
    if isinstance(x, dict):
        if _ARRAY in x or not all(isinstance(k, str) for k in x):
            raise ValueError(f"save_state: dict keys must be strings other than {_ARRAY!r}")
        return {k: _flatten(v, arrays) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_flatten(v, arrays) for v in x]
    if isinstance(x, np.generic):
        return x.item()
    if x is None or isinstance(x, (str, bool, int, float)):
        return x
    raise ValueError(f"save_state: cannot store a {type(x).__name__}")


def _restore(x: Any, arrays: Any) -> Any:
    if isinstance(x, dict):
        if set(x) == {_ARRAY}:
            return arrays[x[_ARRAY]]
        return {k: _restore(v, arrays) for k, v in x.items()}
    if isinstance(x, list):
        return [_restore(v, arrays) for v in x]
    return x


class EncodedState(NamedTuple):
    doc: bytes  # the tree as JSON, arrays replaced by their entry names
    arrays: dict[str, np.ndarray]  # copies: later changes to the live arrays do not reach the file


def encode_state(tree: dict[str, Any]) -> EncodedState:
    """Everything the state file of `tree` holds, taken now (see the module docstring)."""
    arrays: dict[str, np.ndarray] = {}
    doc = json.dumps(_flatten(tree, arrays)).encode()
    return EncodedState(doc, {k: np.array(v, copy=True) for k, v in arrays.items()})


def fsync_dir(path: str | Path) -> None:
    """Make the entries just created, renamed or deleted in directory `path` durable (a power cut keeps them)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_state(path: str | Path, encoded: EncodedState) -> None:
    """Write an encoded state to `path` atomically and durably (the file fsynced before it replaces the previous
    one, the directory after)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(tmp, "wb") as fh:
        np.savez(fh, tree=np.frombuffer(encoded.doc, dtype=np.uint8), **encoded.arrays)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def save_state(path: str | Path, tree: dict[str, Any]) -> None:
    """Write `tree` to `path` atomically."""
    write_state(path, encode_state(tree))


def load_state(path: str | Path) -> dict[str, Any]:
    """Read a tree written by `save_state`. A file that is not one (empty, truncated, corrupted: a zip entry's CRC
    fails; a plain .npy, a zip of other files, a tree naming an array the file lacks) is refused with ValueError;
    a file that cannot be read (permissions, a disk error) raises its OSError."""
    with open(path, "rb") as fh:  # OSError: the file is fine as far as we know, it cannot be read
        try:
            z = np.load(fh, allow_pickle=False)
            if not isinstance(z, np.lib.npyio.NpzFile):
                raise ValueError(f"a {type(z).__name__}, not an .npz archive")
            with z:
                arrays = {k: z[k] for k in z.files}
        except (ValueError, EOFError, zipfile.BadZipFile, zlib.error) as e:
            raise ValueError(f"state file {path}: not a readable state ({type(e).__name__}: {e})") from e
    if not isinstance(arrays.get("tree"), np.ndarray) or not all(isinstance(a, np.ndarray) for a in arrays.values()):
        raise ValueError(f"state file {path}: no 'tree' entry or not .npy entries; not written by save_state")
    try:
        tree = json.loads(arrays.pop("tree").tobytes().decode())
    except (ValueError, RecursionError) as e:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise ValueError(f"state file {path}: the tree is not JSON ({type(e).__name__})") from e
    if not isinstance(tree, dict):
        raise ValueError(f"state file {path}: the tree is not a mapping")
    try:
        return _restore(tree, arrays)
    except (KeyError, TypeError, RecursionError) as e:
        raise ValueError(f"state file {path}: the tree names an array the file lacks, or nests too deep ({e!r})") from e
