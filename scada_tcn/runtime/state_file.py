"""The daemon's state on disk, so a restart resumes every turbine where it stopped instead of warming up again.

Format: one `.npz` file (numpy, `allow_pickle=False`, never pickle). A state is a tree of dicts, lists, strings,
numbers, booleans, None and numpy arrays (the `state_dict()` of the runtime's stateful objects). Every array is
stored as its own entry `a<i>`; the tree itself is stored as JSON (entry `tree`, utf-8 bytes) with each array
replaced by {"__array__": "a<i>"}. Writes are atomic (a temporary file, then `os.replace`), so a crash while
saving leaves the previous state intact. Refused (ValueError): other object types, and files that are not such
a state.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["load_state", "save_state"]

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


def save_state(path: str | Path, tree: dict[str, Any]) -> None:
    """Write `tree` to `path` atomically."""
    path = Path(path)
    arrays: dict[str, np.ndarray] = {}
    doc = json.dumps(_flatten(tree, arrays)).encode()
    tmp = path.with_name(path.name + ".tmp")
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(tmp, "wb") as fh:
        np.savez(fh, tree=np.frombuffer(doc, dtype=np.uint8), **arrays)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def load_state(path: str | Path) -> dict[str, Any]:
    """Read a tree written by `save_state`."""
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (OSError, ValueError) as e:
        raise ValueError(f"state file {path}: not a readable state ({e})") from e
    if "tree" not in arrays:
        raise ValueError(f"state file {path}: no 'tree' entry; not written by save_state")
    tree = json.loads(arrays.pop("tree").tobytes().decode())
    if not isinstance(tree, dict):
        raise ValueError(f"state file {path}: the tree is not a mapping")
    return _restore(tree, arrays)
