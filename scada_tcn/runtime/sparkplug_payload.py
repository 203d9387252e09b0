"""Sparkplug B's protobuf `Payload`, read as Google's protobuf reads it (Eclipse Tahu's sparkplug_b.proto), and
the one message the daemon writes (a rebirth request).

`parse_payload(buf)` -> `Payload` (the publish timestamp, the sequence number, the `Metric`s), or `WireError` for
a buffer that is not a protobuf message at all (truncated, a broken varint). Everything else is read as protobuf
does: a field of the wrong wire type is an unknown field and skipped, the last occurrence of a scalar wins (and of
a `oneof`'s members, the value), varints are cut to their type's bits (64, and 32 for `uint32` fields), repeated
`properties` merge, a name that is not UTF-8 reads with U+FFFD (proto2 does not check it). Two differences:
a group (deprecated wire types 3 and 4) refuses the message, where Google skips an unknown one, and nested
messages that are not read (metadata, datasets, templates, properties other than Quality) are not checked,
where Google refuses a corrupt one. Of a metric's
properties only `Quality` is read (Sparkplug's: an Int32, 0 BAD, 192 GOOD, 500 STALE); one that is not an
integer (null, a string, a set) is unreadable, said by `Metric.quality` being a str.

`integer_value(raw, field, datatype)` reads Sparkplug's integers: Int8..Int64 two's complement of their width,
whether sign-extended to the field (Java's Tahu: Int8 -1 is 2**32 - 1) or not (Python's: 255), from either
integer field (Java's Tahu writes UInt32 in `long_value`), and None for a value outside the datatype's range.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

from scada_tcn.runtime.protowire import FIXED32, FIXED64, LENGTH, VARINT, bytes_field, fields, varint_field

__all__ = ["INTEGERS", "Metric", "Payload", "integer_value", "parse_payload", "rebirth_payload"]

INT_VALUE, LONG_VALUE, FLOAT_VALUE, DOUBLE_VALUE, BOOLEAN_VALUE, STRING_VALUE = 10, 11, 12, 13, 14, 15
# datatype -> (bits, signed) of the integer datatypes
INTEGERS = {1: (8, True), 2: (16, True), 3: (32, True), 4: (64, True), 5: (8, False), 6: (16, False),
            7: (32, False), 8: (64, False)}  # fmt: skip
_U32 = (1 << 32) - 1
# Metric: field -> wire type (the fields read; 6 is_transient and 8 metadata are not)
_METRIC = {1: LENGTH, 2: VARINT, 3: VARINT, 4: VARINT, 5: VARINT, 7: VARINT, 9: LENGTH, 10: VARINT, 11: VARINT,
           12: FIXED32, 13: FIXED64, 14: VARINT, 15: LENGTH, 16: LENGTH, 17: LENGTH, 18: LENGTH,
           19: LENGTH}  # fmt: skip
# PropertyValue: its oneof's fields -> wire type (3 int, 4 long, 5 float, 6 double, 7 bool, 8 string, 9-11 sets)
_PROPERTY_VALUE = {3: VARINT, 4: VARINT, 5: FIXED32, 6: FIXED64, 7: VARINT, 8: LENGTH, 9: LENGTH, 10: LENGTH,
                   11: LENGTH}  # fmt: skip
_FLOAT, _DOUBLE = struct.Struct("<f").unpack, struct.Struct("<d").unpack


class Metric(NamedTuple):
    name: str | None
    alias: int | None
    ts_ms: int | None
    datatype: int | None
    is_null: bool
    quality: int | str | None  # the Quality property's code; a str says why it is unreadable; None: absent
    value: tuple[int, int | float | bool | bytes] | None  # (field number, value as protobuf reads it), None: none
    is_historical: bool = False  # sent after the fact (stored and forwarded), not a current value


def _utf8(raw: bytes) -> str:
    return raw.decode("utf-8", "replace")


def _metric(buf: bytes) -> Metric:
    """One Metric message (WireError when it is not a protobuf message)."""
    name = alias = ts = datatype = value = None
    is_null = is_historical = False
    properties: list[bytes] = []
    for number, wire, raw in fields(buf):
        if _METRIC.get(number) != wire:
            continue  # unread, or of another wire type: an unknown field to protobuf
        if number == 1:
            name = _utf8(raw)  # type: ignore[arg-type]
        elif number == 2:
            alias = raw
        elif number == 3:
            ts = raw
        elif number == 4:
            datatype = raw & _U32  # type: ignore[operator]
        elif number == 5:
            is_historical = bool(raw)
        elif number == 7:
            is_null = bool(raw)
        elif number == 9:
            properties.append(raw)  # type: ignore[arg-type]
        elif number == FLOAT_VALUE or number == DOUBLE_VALUE:
            value = (number, (_FLOAT if number == FLOAT_VALUE else _DOUBLE)(raw)[0])  # type: ignore[arg-type]
        elif number == INT_VALUE:
            value = (number, raw & _U32)  # type: ignore[operator]
        else:
            value = (number, bool(raw) if number == BOOLEAN_VALUE else raw)
    quality = _quality(properties) if properties else None
    return Metric(name, alias, ts, datatype, is_null, quality, value, is_historical)  # type: ignore[arg-type]


def _quality(sets: list[bytes]) -> int | str | None:
    """The `Quality` of a metric's PropertySets (merged, as protobuf merges a repeated message field): its code,
    why it is unreadable, or None when there is none."""
    keys: list[str] = []
    values: list[bytes] = []
    for buf in sets:
        for number, wire, raw in fields(buf):
            if number == 1 and wire == LENGTH:
                keys.append(_utf8(raw))  # type: ignore[arg-type]
            elif number == 2 and wire == LENGTH:
                values.append(raw)  # type: ignore[arg-type]
    if "Quality" not in keys:
        return None
    k = len(keys) - 1 - keys[::-1].index("Quality")  # the last
    if k >= len(values):
        return "a Quality property without a value"
    is_null, last = False, None
    for number, wire, raw in fields(values[k]):
        if number == 2 and wire == VARINT:
            is_null = bool(raw)
        elif _PROPERTY_VALUE.get(number) == wire:
            last = (number, raw)
    if is_null or last is None or last[0] not in (3, 4):
        return "a Quality property that is not an integer"
    number, raw = last
    code = raw & _U32 if number == 3 else raw  # type: ignore[operator]
    return code - (1 << 32) if number == 3 and code >> 31 else code - (1 << 64) if code >> 63 else code  # type: ignore[operator]


class Payload(NamedTuple):
    ts_ms: int | None  # the publish timestamp
    seq: int | None  # the message's sequence number (0-255 per edge node), None when it has none
    metrics: list[Metric]


def parse_payload(buf: bytes) -> Payload:
    """A Payload message (WireError when it is not a protobuf message)."""
    ts = seq = None
    metrics = []
    for number, wire, raw in fields(buf):
        if number == 1 and wire == VARINT:
            ts = raw
        elif number == 2 and wire == LENGTH:
            metrics.append(_metric(raw))  # type: ignore[arg-type]
        elif number == 3 and wire == VARINT:
            seq = raw
    return Payload(ts, seq, metrics)  # type: ignore[arg-type]


def integer_value(raw: int, field: int, datatype: int) -> int | None:
    """An integer metric's value (`raw` from int_value, field 10, or long_value, 11) by its integer datatype (in
    INTEGERS), or None when it lies outside the datatype's range."""
    bits, is_signed = INTEGERS[datatype]
    width = 32 if field == INT_VALUE else 64
    if not is_signed:
        return raw if raw < 1 << bits else None
    bits = min(bits, width)
    if raw < 1 << (bits - 1):
        return raw
    if raw < 1 << bits:  # two's complement in the datatype's bits (Python's Tahu)
        return raw - (1 << bits)
    if raw >= (1 << width) - (1 << (bits - 1)):  # sign-extended to the field's (Java's Tahu)
        return raw - (1 << width)
    return None


def rebirth_payload(now_ms: int) -> bytes:
    """The NCMD payload that asks an edge node for its births: `Node Control/Rebirth` = true (a Boolean)."""
    metric = (bytes_field(1, b"Node Control/Rebirth") + varint_field(3, now_ms) + varint_field(4, 11)
              + varint_field(14, 1))  # fmt: skip
    return varint_field(1, now_ms) + bytes_field(2, metric)
