"""`mapping.ignored_keys`: the payload keys, tag keys and metric names a gateway publishes that the model does not
read, dropped whatever their value, in every telemetry form.

An entry is a key, or a pattern where `*` stands for any run of characters (`/` and `.` included; nothing else
is special): `Gearbox/*` drops a whole tag folder, `*` every key that is not a channel's. Channels are looked up
first, so no entry hides a channel, but a pattern also drops a key misspelt in `mapping.columns`, which would
otherwise be refused and show on the errors topic: the narrower the pattern, the more such mistakes show. The
`DROPPED_KEPT` distinct keys a pattern dropped most recently for the first time are kept (`dropped`: key ->
pattern, oldest first), for the daemon to name them when a channel goes silent (`runtime.channel_watch`): a key a
gateway's update renamed is among the newest.

Matching is linear in the key's length (a `*` pattern is matched by finding its parts in order, not by a
backtracking regular expression): a hostile key costs what its length costs.
"""

from __future__ import annotations

from collections.abc import Iterable
from itertools import islice

__all__ = ["DROPPED_KEPT", "SIGHTED_KEPT", "IgnoredKeys"]

DROPPED_KEPT = 32  # distinct keys a pattern dropped, the newest first sightings, kept to be named
SIGHTED_KEPT = 1 << 14  # distinct keys remembered as sighted (a gateway's tags; a hostile stream cycles them)


def _matches(parts: tuple[str, ...], key: str) -> bool:
    """Whether `key` matches the pattern whose literal parts, in order, are `parts` (joined by `*`): the first a
    prefix, the last a suffix, the others in order between them (each placed leftmost, which finds a match
    whenever one exists)."""
    first, last = parts[0], parts[-1]
    if len(key) < len(first) + len(last) or not key.startswith(first) or not key.endswith(last):
        return False
    at, end = len(first), len(key) - len(last)
    for part in parts[1:-1]:
        at = key.find(part, at, end)
        if at < 0:
            return False
        at += len(part)
    return True


class IgnoredKeys:
    """The keys and `*` patterns of `mapping.ignored_keys`; `key in ignored` says whether a key is dropped."""

    def __init__(self, entries: Iterable[str] = ()) -> None:
        entries = list(entries)
        self.exact = frozenset(e for e in entries if "*" not in e)
        self.patterns = tuple(tuple(e.split("*")) for e in entries if "*" in e)
        self._sighted: dict[str, str] = {}  # distinct keys a pattern dropped -> it, oldest first, SIGHTED_KEPT at most

    @property
    def dropped(self) -> dict[str, str]:
        """The DROPPED_KEPT distinct keys a pattern dropped most recently for the first time -> the pattern."""
        return dict(reversed(list(islice(reversed(self._sighted.items()), DROPPED_KEPT))))

    def __contains__(self, key: object) -> bool:
        if key in self.exact:
            return True
        if not isinstance(key, str):
            return False
        for parts in self.patterns:
            if _matches(parts, key):
                shown = key[:200]  # a hostile message's long keys are kept short
                if shown not in self._sighted:
                    self._sighted[shown] = "*".join(parts)
                    if len(self._sighted) > SIGHTED_KEPT:
                        del self._sighted[next(iter(self._sighted))]
                return True
        return False
