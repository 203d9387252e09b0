"""The Protocol Buffers wire format, read and written with the standard library: what Sparkplug B needs.

`fields(buf)` reads one message's fields as (field number, wire type, value): an int for a varint (wire type 0;
its low 64 bits, as protobuf keeps them), the raw bytes for a fixed64 (1, 8 bytes), a length-delimited field (2)
and a fixed32 (5, 4 bytes). A message that does not parse (a truncated field, a varint of more than 10 bytes, an
unknown wire type, a field number outside 1 to 2**29 - 1) raises `WireError` saying where, as does a group (wire
types 3 and 4, deprecated: Google's parser skips one it does not know; no Sparkplug payload holds one). Nested
messages are read by calling `fields` on a field's bytes, so the reader never recurses on its own: a caller
decides how deep it goes.

`varint_field` and `bytes_field` write one field each: enough to build a small message (the daemon's Sparkplug
rebirth request).
"""

from __future__ import annotations

__all__ = ["FIXED32", "FIXED64", "LENGTH", "VARINT", "WireError", "bytes_field", "fields", "varint_field"]

VARINT, FIXED64, LENGTH, FIXED32 = 0, 1, 2, 5  # wire types
_U64 = (1 << 64) - 1
_MAX_KEY = (1 << 32) - 1  # a key is a uint32: field numbers up to 2**29 - 1, as protobuf reads them
_SIZES = {FIXED64: 8, FIXED32: 4}


class WireError(ValueError):
    """A buffer that is not a protobuf message."""


def _varint(buf: bytes, at: int) -> tuple[int, int]:
    """The varint starting at `at` -> (value, next position)."""
    value = shift = 0
    end = at + 10 if at + 10 < len(buf) else len(buf)
    while at < end:
        b = buf[at]
        at += 1
        value |= (b & 0x7F) << shift
        if b < 0x80:
            return value & _U64, at  # protobuf keeps the low 64 bits of a 10-byte varint
        shift += 7
    raise WireError(f"a varint runs past the end or beyond 10 bytes at byte {at}")


def fields(buf: bytes) -> list[tuple[int, int, int | bytes]]:
    """One message's fields in their order (repeated fields once per element): see the module docstring."""
    out: list[tuple[int, int, int | bytes]] = []
    at, n = 0, len(buf)
    while at < n:
        key = buf[at]  # keys, lengths and small values are one byte: read inline, the rest by _varint
        if key < 0x80:
            at += 1
        else:
            key, at = _varint(buf, at)
        number, wire = key >> 3, key & 7
        if number == 0 or key > _MAX_KEY:
            raise WireError(f"field number {number} at byte {at}: 1 to 2**29 - 1 expected")
        if wire == VARINT or wire == LENGTH:
            if at < n and buf[at] < 0x80:
                value = buf[at]
                at += 1
            else:
                value, at = _varint(buf, at)
            if wire == VARINT:
                out.append((number, wire, value))
                continue
            size = value
        elif wire in _SIZES:
            size = _SIZES[wire]
        else:
            raise WireError(f"field {number}: wire type {wire} (groups are not read) at byte {at}")
        if at + size > n:
            raise WireError(f"field {number}: {size} bytes from byte {at}, past the end ({n} bytes)")
        out.append((number, wire, buf[at : at + size]))
        at += size
    return out


def _key(number: int, wire: int) -> bytes:
    return _encode_varint(number << 3 | wire)


def _encode_varint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def varint_field(number: int, value: int) -> bytes:
    """A varint field (value >= 0: uint32, uint64, bool)."""
    return _key(number, VARINT) + _encode_varint(value)


def bytes_field(number: int, value: bytes) -> bytes:
    """A length-delimited field: a string's UTF-8, bytes, or a nested message."""
    return _key(number, LENGTH) + _encode_varint(len(value)) + value
