"""The turbine-id rule, the one both `scada-prepare` and the edge apply.

A turbine id is 1 to 64 characters of letters, digits, '_', '.' and '-': it names a folder of the prepared data
and a level of an MQTT topic, so anything else (a '/', '+' or '#', a space, an empty id, a 65-character id) is
refused at both ends, and a turbine that trains is never one whose telemetry the gateway would reject.

Per-turbine exports without an id column (Greenbyte's `Turbine_Data_Kelmarsh_1_2016-01-03_-_2017-01-01_228.csv`)
name the turbine in the file name: `file_turbine_id(path, pattern, key)` is the id a regular expression finds
there (its group, or the whole match when it has none), the one rule scada-prepare, replay and scada-inject apply;
`id_pattern_problem(pattern, key)` says what is wrong with such a pattern.
"""

from __future__ import annotations

import re
from pathlib import Path

from scada_tcn.runtime.errors import InputError

__all__ = ["TURBINE_ID_RULE", "file_turbine_id", "id_pattern_problem", "turbine_id_problem"]

_TURBINE_ID = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
TURBINE_ID_RULE = "1-64 letters, digits, '_', '.', '-'"


def turbine_id_problem(tid: object) -> str | None:
    """None for a valid turbine id, else what is wrong with it (for an error message)."""
    if not isinstance(tid, str) or not _TURBINE_ID.fullmatch(tid):
        return f"turbine id {str(tid)[:80]!r} breaks the id rule: {TURBINE_ID_RULE}"
    return None


def id_pattern_problem(pattern: object, key: str) -> str | None:
    """None for a usable file-name pattern (a regular expression with at most one group), else what is wrong."""
    if not isinstance(pattern, str) or not pattern:
        return f"{key}: a regular expression expected, got {pattern!r}"
    try:
        groups = re.compile(pattern).groups
    except re.error as e:
        return f"{key}: {pattern!r} is not a regular expression ({e})"
    if groups > 1:
        return f"{key}: {pattern!r} has {groups} groups; put one around the id (or none: the whole match is the id)"
    return None


def file_turbine_id(path: Path, pattern: str, key: str) -> str:
    """The turbine id `pattern` (`key`: its setting) finds in the name of `path`; refused: no match, or an id
    that breaks the id rule."""
    m = re.search(pattern, path.name)
    tid = None if m is None else m.group(1 if m.re.groups else 0)
    if not tid:
        raise InputError(f"{path}: {key} {pattern!r} finds no turbine id in the file name {path.name!r}; name the "
                         "file after its turbine or fix the pattern")  # fmt: skip
    problem = turbine_id_problem(tid)
    if problem:
        raise InputError(f"{path}: {key} {pattern!r} takes {problem} from the file name; fix the pattern")
    return tid
