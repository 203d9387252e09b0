"""ISO-8601 stamps: the one reading of a stamp string that the daemon (telemetry), replay (a table's cells) and
scada-prepare (a table's column, each distinct cell once) share. The grammar follows pandas' `format="ISO8601"`
(3.1: the same instants for 120,000 random stamps), so that a table reads as users expect; pandas itself is not
called, since its rules change between versions.

`iso_ns(s)` reads the wall-clock time and the UTC offset of a stripped stamp, or None for any form pandas refuses;
`wall_utc_ns` turns them into ns UTC, reading a stamp without an offset as a local time of a zone (`local_ns`,
which refuses the hour a DST change repeats or skips). `iso_utc_ns(s, tz)` is the two in one. `repeated_ns`
gives both instants of a local time the autumn change repeats (a table's rows there are placed by each
turbine's row order, `repeated_hour`). Python's own
`datetime.fromisoformat` is not used for stamps: it takes forms pandas refuses (week dates, decimal commas,
offsets with seconds, a lowercase 't') and refuses some it takes ('/' separators, one-digit fields, `+2`), and it
truncates a fraction to the microsecond.
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, timedelta
from typing import Any

__all__ = ["STANDARD_TIME", "aware_ns", "iso_ns", "iso_utc_ns", "local_ns", "repeated_ns", "wall_utc_ns"]

_ISO = re.compile(  # after strip(); ASCII digits only, as pandas
    r"(\d{4})(?:([-./\\ ])(\d\d?)(?:\2(\d\d?))?|(\d\d)(\d\d))"  # 2017-8-9, 2017/08/09, 2017-08, 20170809
    r"(?:[T ](?:(\d\d?):(\d\d?)(?::(\d\d?)(?:\.(\d{0,18}))?)?"  # T10:10:00.5, T1:5:0, T10:10
    r"|(\d\d)(?:(\d\d)(?:(\d\d)(?:\.(\d{0,18}))?)?)?)"  # T101000.5, T1010, T10
    r"[ \t\n\v\f\r]*(?:(Z)|([-+])(\d\d?)(?::?(\d\d?))?)?)?",  # Z, +2, +02, +0200, +02:00
    re.ASCII,
)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_EPOCH_DAY = date(1970, 1, 1).toordinal()
_NAIVE_EPOCH = datetime(1970, 1, 1)
_NS = 1_000_000_000
# said where local times meet a DST change the clocks may not have made (a time it skips; a repeated hour that no
# turbine holds twice): a zone with DST reads such clocks an hour off all summer
STANDARD_TIME = (
    "if the clocks keep standard time all year (turbine controllers often do), name a fixed offset "
    "instead of the zone: e.g. Etc/GMT-1 for UTC+1 (POSIX inverts the sign)"
)


def iso_ns(s: str) -> tuple[int, int | None] | None:
    """An ISO-8601 stamp (stripped) as pandas' ISO8601 parser reads it -> (ns of its wall-clock time read as UTC,
    its UTC offset in minutes or None when it has none), or None when pandas refuses it. The forms: a date with one
    of the separators - . / \\ or a space and one- or two-digit month and day (a month alone ends the stamp), or
    eight digits; then 'T' or a space and hh[:mm[:ss[.fraction]]] (one-digit fields only with ':'), or
    hh[mm[ss[.fraction]]]; a fraction of at most 18 digits, kept to the nanosecond; optional whitespace, then Z or
    an offset +h, +hh, +hhmm or +hh:mm."""
    m = _ISO.fullmatch(s)
    if m is None:
        return None
    y, sep, mo, d, mo2, d2, h, mi, sec, f, h2, mi2, sec2, f2, z, sign, oh, om = m.groups()
    hour = h or h2
    if hour is not None and sep and d is None:  # 2017-08T10: a time needs a day
        return None
    hh, mm, ss = int(hour or 0), int(mi or mi2 or 0), int(sec or sec2 or 0)
    if hh > 23 or mm > 59 or ss > 59:
        return None
    try:
        days = date(int(y), int(mo or mo2), int(d or d2 or 1)).toordinal() - _EPOCH_DAY  # Feb 29 2017: refused
    except ValueError:
        return None
    digits = (f or f2 or "")[:9]
    ns = (((days * 24 + hh) * 60 + mm) * 60 + ss) * _NS + (int(digits.ljust(9, "0")) if digits else 0)
    if z:
        return ns, 0
    if sign is None:
        return ns, None
    off_h, off_m = int(oh), int(om or 0)
    if off_h > 23 or off_m > 59:
        return None
    return ns, (off_h * 60 + off_m) * (-1 if sign == "-" else 1)


def aware_ns(dt: datetime) -> int:
    """A time-zone-aware datetime -> int ns since the epoch (UTC), exact to the microsecond."""
    td = dt - _EPOCH
    return (td.days * 86400 + td.seconds) * _NS + td.microseconds * 1000


def local_ns(naive: datetime, tz: Any) -> int | str:
    """A wall-clock time in zone `tz` -> ns UTC, or why not: "ambiguous_local_time" for a time a DST change
    repeats (clocks going back), "nonexistent_local_time" for one it skips (clocks going forward). scada-prepare
    refuses both alike; replay reads a table's local stamps and the daemon a message's (`naive_timezone`) here."""
    early, late = naive.replace(tzinfo=tz, fold=0), naive.replace(tzinfo=tz, fold=1)
    if early.utcoffset() != late.utcoffset():
        there = early.astimezone(UTC).astimezone(tz).replace(tzinfo=None) == naive
        return "ambiguous_local_time" if there else "nonexistent_local_time"
    return aware_ns(early)


def repeated_ns(wall: int, tz: Any) -> tuple[int, int]:
    """A wall-clock time (ns, read as UTC) that a DST change in zone `tz` repeats -> its two instants, ns UTC: the
    first occurrence (before the clocks go back) and the second (`fold` 0 and 1, PEP 495: the earlier and the
    later, whichever of them the zone calls daylight time)."""
    naive, sub_us = _naive(wall)
    return aware_ns(naive.replace(tzinfo=tz)) + sub_us, aware_ns(naive.replace(tzinfo=tz, fold=1)) + sub_us


def _naive(wall: int) -> tuple[datetime, int]:
    """Wall-clock ns (read as UTC) -> the naive datetime to the microsecond, and the ns below it."""
    us, sub_us = divmod(wall, 1000)
    return _NAIVE_EPOCH + timedelta(microseconds=us), sub_us


def wall_utc_ns(wall: int, offset: int | None, tz: Any) -> int | str:
    """`iso_ns`'s (wall-clock ns, offset in minutes or None) -> ns UTC: less the offset, or without one a local time
    in zone `tz` (the sub-microsecond digits kept), or why not: "naive_timestamp" (no offset, no zone) or
    `local_ns`'s reasons."""
    if offset is not None:
        return wall - offset * 60 * _NS
    if tz is None:
        return "naive_timestamp"
    naive, sub_us = _naive(wall)
    res = local_ns(naive, tz)
    return res + sub_us if isinstance(res, int) else res


def iso_utc_ns(s: str, tz: Any = None) -> int | str:
    """A stamp string (stripped) -> ns UTC (`iso_ns`, then `wall_utc_ns`), or why not: "bad_timestamp" for a form
    pandas refuses, "naive_timestamp" for one without an offset when `tz` is None, or a DST reason."""
    parsed = iso_ns(s)
    return "bad_timestamp" if parsed is None else wall_utc_ns(*parsed, tz)
