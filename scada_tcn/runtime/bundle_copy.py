"""A copy of the running bundle beside the daemon's state file, for the restart after a crash on another bundle.

    <state.path>.bundles/<bundle_id>/bundle.json, clean.onnx, scoring.onnx[, step.onnx]

After a crash, the journal holds samples the broker considers delivered, and the steps they closed were scored
and published (or queued) by the bundle that wrote it. A restart on another bundle (a new model, a re-export,
another `mapping.time_weighted`) cannot score those steps again with its own numbers: a consumer would see two
different records of one step. With this copy the daemon scores them again with the bundle that wrote the
journal, byte for byte the records the crashed run gave them, and publishes them; then it changes bundle.

The daemon keeps the copy of the bundle it runs before its first snapshot names that bundle (`keep`), finds the
copy of the state's bundle at a restart (`find`), and deletes the others once the state names the running one
(`prune`). A copy is written as a hidden folder, each file fsynced, then renamed into place, and deleted by a rename
to a hidden name first, so a crash leaves no partial folder under a bundle id; `keep` also writes again a folder
that does not load as its bundle. A copy holds the bundle's graphs (their verified bytes) and its document: the
folder's bundle.json as it is when it gives the bundle's id (one edited by hand keeps its own numbers), else
`Bundle.to_dict()` (a time-weighted bundle's). A copy that does not read back as the running bundle is not kept
(BundleError).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from scada_tcn.runtime.bundle import BUNDLE_JSON, GRAPH_FILES, Bundle, compute_bundle_id, load_bundle
from scada_tcn.runtime.errors import BundleError
from scada_tcn.runtime.state_file import fsync_dir

__all__ = ["copies_dir", "find", "keep", "prune"]


def copies_dir(state_path: str | Path) -> Path:
    """The folder of the bundle copies kept beside `state_path`."""
    path = Path(state_path)
    return path.with_name(path.name + ".bundles")


def find(state_path: str | Path, bundle_id: object) -> Path | None:
    """The copy of the bundle `bundle_id` beside `state_path`, or None when there is none."""
    if not isinstance(bundle_id, str) or len(bundle_id) != 64 or not all(c in "0123456789abcdef" for c in bundle_id):
        return None
    where = copies_dir(state_path) / bundle_id
    return where if (where / BUNDLE_JSON).is_file() else None


def keep(bundle: Bundle, state_path: str | Path) -> Path:
    """Write the copy of `bundle` beside `state_path` unless it is there; returns its folder. BundleError when the
    copy does not read back as `bundle` (its document does not give its bundle id)."""
    root = copies_dir(state_path)
    final = root / bundle.bundle_id
    if final.exists():
        if _reads_as(final, bundle):
            return final
        _delete(final)  # not a copy of this bundle any more (damaged by hand or by the disk): written again
    root.mkdir(exist_ok=True)
    tmp = root / f".{bundle.bundle_id}.tmp"
    if tmp.exists():  # a copy a crash left half-written
        shutil.rmtree(tmp)
    tmp.mkdir()
    files = {GRAPH_FILES[g]: data for g, data in bundle.graphs.items()}
    files[BUNDLE_JSON] = _document(bundle)
    for name, data in files.items():
        with open(tmp / name, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
    fsync_dir(tmp)
    if not _reads_as(tmp, bundle):
        shutil.rmtree(tmp)
        raise BundleError(f"the copy of bundle {bundle.bundle_id[:12]} beside the state file does not read back as it")
    os.replace(tmp, final)
    fsync_dir(root)
    return final


def _document(bundle: Bundle) -> bytes:
    """The bundle.json of `bundle`'s copy: its folder's as it is when that gives its bundle id, else `to_dict()`."""
    try:
        raw = (bundle.path / BUNDLE_JSON).read_bytes()
        if compute_bundle_id(json.loads(raw)) == bundle.bundle_id:
            return raw
    except (OSError, ValueError, TypeError, KeyError):  # gone or changed since it was loaded: its own document
        pass
    return (json.dumps(bundle.to_dict(), indent=2, allow_nan=False) + "\n").encode()


def _reads_as(folder: Path, bundle: Bundle) -> bool:
    """Whether `folder` loads as a bundle whose id and graphs are `bundle`'s."""
    try:
        read = load_bundle(folder, check_graphs=False)
    except (OSError, ValueError):
        return False
    return read.bundle_id == bundle.bundle_id and read.graphs == bundle.graphs


def _delete(folder: Path) -> None:
    """Delete a copy: renamed to a hidden name first (one step), so no partial folder is left under its id."""
    gone = folder.with_name(f".{folder.name}.del")
    if gone.exists():
        shutil.rmtree(gone)
    os.replace(folder, gone)
    fsync_dir(folder.parent)
    shutil.rmtree(gone)


def prune(state_path: str | Path, bundle_id: str) -> list[str]:
    """Delete the copies beside `state_path` other than `bundle_id`'s (and any half-written one); returns the ids
    of those deleted."""
    root = copies_dir(state_path)
    if not root.is_dir():
        return []
    gone = []
    for entry in sorted(root.iterdir()):
        if entry.name == bundle_id:
            continue
        if entry.is_dir() and entry.name.startswith("."):  # half-written or half-deleted
            shutil.rmtree(entry)
        elif entry.is_dir():
            _delete(entry)
        else:
            entry.unlink()
        gone.append(entry.name)
    if gone:
        fsync_dir(root)
    return [g for g in gone if not g.startswith(".")]
