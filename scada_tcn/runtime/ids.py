"""The turbine-id rule, the one both `scada-prepare` and the edge apply.

A turbine id is 1 to 64 characters of letters, digits, '_', '.' and '-': it names a folder of the prepared data
and a level of an MQTT topic, so anything else (a '/', '+' or '#', a space, an empty id, a 65-character id) is
refused at both ends, and a turbine that trains is never one whose telemetry the gateway would reject.
"""

from __future__ import annotations

import re

__all__ = ["TURBINE_ID_RULE", "turbine_id_problem"]

_TURBINE_ID = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
TURBINE_ID_RULE = "1-64 letters, digits, '_', '.', '-'"


def turbine_id_problem(tid: object) -> str | None:
    """None for a valid turbine id, else what is wrong with it (for an error message)."""
    if not isinstance(tid, str) or not _TURBINE_ID.match(tid):
        return f"turbine id {str(tid)[:80]!r} breaks the id rule: {TURBINE_ID_RULE}"
    return None
