"""The canonical JSON that the runtime's identities hash (model id, bundle id, the per-signal tracker's basis):
sorted keys, no spaces, NaN and infinities refused, so equal documents give equal bytes on any machine."""

from __future__ import annotations

import json
from typing import Any

__all__ = ["canonical_json"]


def canonical_json(obj: Any) -> bytes:
    """`obj` (plain JSON types) as canonical JSON bytes; ValueError for NaN or an infinity."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()
