"""Telemetry payloads and topics: decode and validate one MQTT message, or say why it is rejected.

Contract
--------
Topic: the configured template (default `scada/{site}/{turbine}/telemetry`); the turbine id is the topic level
at `{turbine}`. Payload (UTF-8 JSON object, at most `max_payload_bytes`):

    {"ts": "2024-01-28T00:10:00+00:00" | 1706400600, "values": {"<key>": number | null, ...}}

* `ts`: ISO-8601 with a UTC offset (or `Z`), or epoch seconds (int or float, rounded to the microsecond like
  scada-prepare); with `epoch_unit="ms"` (runtime.yaml `ingest.epoch_unit`) a number is epoch milliseconds, as
  ThingsBoard's `{"ts": 1706400600000, "values": {...}}` and Node-RED's `Date.now()` write it. With
  `naive_timezone` (runtime.yaml `ingest.naive_timezone`) an ISO-8601 stamp without an offset is a local time of
  that zone (a PLC's clock), the hour a DST change skips refused (`stamps.local_ns`), the hour it repeats read as
  the first occurrence while the second lies beyond max_future_s, then refused (`_first_occurrence`). ISO stamps
  are read as scada-prepare and replay read a table's (`stamps.iso_ns`). It must lie
  within [now - max_past_s, now + max_future_s] of the wall clock.
* `values`: a non-empty object; keys are the mapped payload keys of the bundle's channels (runtime.yaml `mapping`,
  default the training data's mapping); a value is a finite number or null (= not measured in this sample). Keys
  listed in `ignored_keys` (runtime.yaml `mapping.ignored_keys`: tags the gateway publishes that the model does
  not read; `*` patterns too, `runtime.ignored`) are dropped whatever their value; any other key rejects the
  message.
* No other top-level keys. Booleans are not numbers. NaN/Infinity literals are refused. A string is not a number
  either, unless `numeric_strings` (runtime.yaml `ingest.numeric_strings`, for gateways that send every value as
  text): then "12.5" reads as 12.5 by the rule scada-prepare applies to a CSV cell (`cells.cell_number`: a plain
  ASCII number), "" as null (an empty cell), and any other string ("n/a", "1,5", "nan", "inf") rejects the
  message.

`TelemetryDecoder.decode(topic, payload, now_ns)` returns a `Sample(turbine, ts_ns, values (C,) float64 NaN =
missing)` or a `Rejection(reason, detail)`; it never raises on bad input and never mutates anything. The message
is taken whole or not at all: one bad value rejects the message. Reasons are the fixed strings in `REASONS`.
A payload that is a JSON array of such documents (ThingsBoard's form for a device's buffered samples; at most
`max_batch_payload_bytes`) gives a `BatchDecode` as a batch does: each element judged as a message of its own.

Batched telemetry (opt-in `topics.telemetry_batch`, one topic for a whole farm): the payload (at most
`max_batch_payload_bytes`, UTF-8) is JSON lines, one document per line with the turbine id in it:

    {"turbine": "T01", "ts": "2024-01-28T00:10:00+00:00", "values": {"<key>": number | null, ...}}

`decode_batch(payload, now_ns)` returns a `BatchDecode(samples, rejected)`: every line is a message of its own,
checked exactly as `decode` checks one (at most `max_payload_bytes`, the same keys plus `turbine`, the same
turbine-id rule and allow-list) and taken whole or not at all, so one bad line costs that line only
(`rejected`: (line number from 1, Rejection)); blank lines are skipped; samples keep the lines' order. The whole
message is refused (a Rejection) only when it is oversized, not UTF-8, or holds no line.

With `batch_format="devices"` (runtime.yaml `ingest.batch_format`) a batch message is ThingsBoard's gateway form
instead (its `v1/gateway/telemetry`): one JSON object of turbine id -> array of documents,

    {"T01": [{"ts": 1706400600000, "values": {...}}, ...], "T02": [...]}

`decode_devices(payload, now_ns)`: each element is judged as a message on that turbine's topic (an array's element:
the document's keys, the turbine-id rule and allow-list); `rejected` locates each refusal by turbine and element
(from 1). A turbine whose entry is not an array, or a bad or unknown turbine id, refuses every element of it (one
refusal when it is not an array). As for a turbine's array, the elements are bounded as a whole by
`max_batch_payload_bytes`. A turbine named twice in one message keeps its last entry (JSON objects do).

With `batch_format="kepware"` (`decode_tags`) a message is Kepware IoT Gateway's standard template, one element per
tag value (`{"id", "v", "q", "t"}`, the turbine and key taken from the id by `tag_pattern`); with "neuron"
(`decode_neuron`) EMQX Neuron's MQTT app's message, one sample per message. A value the source says it failed to
read (Kepware's `"q": false`, Neuron's `errors`) is `hold.UNREAD` (a NaN that ends a report-by-exception
channel's hold), and its channel is in the sample's `failed`. A null, in any form, is `UNREAD` too (the source says
it has no value; not a failed read), while a channel absent from a message is plain NaN.

`BatchDecode.rejected` holds (place, Rejection) and `BatchDecode.where(place)` the refusal's place as reported:
{"line": n} for a batch of lines, {"element": n} for a turbine's array, {"turbine": id, "element": n} (or
{"turbine": id}) for the devices form, {"element": n, "tag": id} for Kepware's (`decode_tags`). The dicts are made
only for the refusals reported: a hostile message holds millions.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime, timedelta, timezone
from typing import Any, NamedTuple
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

import numpy as np
import orjson

from scada_tcn.runtime.cells import cell_number
from scada_tcn.runtime.errors import InputError
from scada_tcn.runtime.hold import UNREAD
from scada_tcn.runtime.ids import turbine_id_problem
from scada_tcn.runtime.ignored import IgnoredKeys
from scada_tcn.runtime.stamps import STANDARD_TIME, iso_ns, iso_utc_ns, repeated_ns

__all__ = [
    "EPOCH_FLOOR",
    "EPOCH_MILLIS",
    "EPOCH_UNITS",
    "EPOCH_RANGE",
    "KEPWARE_TAG_PATTERN",
    "MAX_EPOCH_S",
    "NOT_READ",
    "TABLE_EPOCH_FLOOR_S",
    "REASONS",
    "BATCH_FORMATS",
    "BatchDecode",
    "ChannelValue",
    "Rejection",
    "Sample",
    "TelemetryDecoder",
    "epoch_ms_hint",
    "epoch_ns",
    "grouped",
    "in_epoch_range",
    "keys_checked",
    "parse_timestamp_ns",
    "parsed",
    "shown",
    "table_epoch_ns",
    "tag_pattern_problem",
    "time_format_source",
    "topic_filter",
    "turbine_topics",
    "zone_problem",
]

REASONS = (
    "oversized",
    "not_utf8",
    "malformed_json",
    "not_an_object",
    "unknown_key",
    "missing_ts",
    "bad_timestamp",
    "naive_timestamp",
    "ambiguous_local_time",
    "nonexistent_local_time",
    "ts_in_future",
    "ts_too_old",
    "missing_values",
    "unknown_channel",
    "bad_value_type",
    "not_a_number",
    "non_finite",
    "bad_topic",
    "bad_turbine_id",
    "unknown_turbine",
    "not_an_array",
    "bad_tag_id",
    "malformed_protobuf",
    "no_birth",
)
_DOC_KEYS = frozenset(("ts", "values"))  # a telemetry document's keys
_LINE_KEYS = frozenset(("turbine", "ts", "values"))  # a batched telemetry line's keys
_TAGS_KEYS = frozenset(("timestamp", "values"))  # a Kepware IoT Gateway message's keys (standard template)
_TAG_KEYS = frozenset(("id", "v", "q", "t"))  # one value of it: tag id, value, quality, stamp
# an EMQX Neuron message's keys (values or tags format; node_name / group_name before Neuron 2.4)
_NEURON_KEYS = frozenset(("timestamp", "node", "group", "node_name", "group_name", "values", "errors", "metas", "tags"))
# Kepware's tag ids are <channel>.<device>[.<group>...].<tag>: the device is the turbine, the rest the key
KEPWARE_TAG_PATTERN = r"[^.]+\.(?P<turbine>[^.]+)\.(?P<key>.+)"
_NS = 1_000_000_000
_ISO_MEMO = 4096  # stamp texts a decoder remembers (then forgets them all): a fleet's step shares a few
MAX_STAMP_CHARS = 64  # a message's ISO stamp, stripped (the longest form, 18 fraction digits and +hh:mm, has 45)
_DST_REASONS = ("ambiguous_local_time", "nonexistent_local_time")
_MAX_ABS_S = 1e11  # ~ year 5138: anything beyond is nonsense (the daemon's future / past checks refuse far less)
MAX_EPOCH_S = 9e9  # |epoch seconds| of a table's stamps, inside int64 ns (1677-2262) with room for a bin
EPOCH_RANGE = "stamps must lie within 9e9 s of 1970 (1684-10-19 to 2255-03-14)"
# a table's epoch-second stamps lie after 1990-01-01: smaller numbers are Excel serial days or a counter, which
# read as epoch seconds would put a whole table in 1970 (scada-prepare and replay both refuse them)
TABLE_EPOCH_FLOOR_S = 631_152_000
EPOCH_FLOOR = ("numeric stamps are read as epoch seconds, and these lie before 1990: Excel serial dates or a "
               "counter? Export ISO-8601 stamps with a UTC offset, or epoch seconds")  # fmt: skip
EPOCH_MILLIS = "epoch_ms"  # a table's time_format: every stamp a number of milliseconds since 1970 (UTC)
EPOCH_UNITS = {"s": 1, "ms": 1000}  # a numeric telemetry stamp's unit (ingest.epoch_unit) -> units per second
# topics.telemetry_batch's payload form (ingest.batch_format) -> the TelemetryDecoder method that reads it (None:
# a decoder of its own, `opcua_pubsub.PubSubDecoder`)
BATCH_FORMATS = {
    "lines": "decode_batch",
    "devices": "decode_devices",
    "kepware": "decode_tags",
    "neuron": "decode_neuron",
    "opcua": None,
}


def epoch_ms_hint(keys: str | None) -> str:
    """The hint for numeric stamps too large for epoch seconds: the setting that reads milliseconds (`keys`: the
    section holding the table's time_format, "data.identifiers" or "mapping"; None: a file without one)."""
    fix = "export epoch seconds" if keys is None else f"set {keys}.time_format: {EPOCH_MILLIS}"
    return f" (numbers this large may be epoch milliseconds: {fix})"


def time_format_source(keys: str) -> str:
    """Where a table's time_format came from, for a refusal: scada-prepare's setting, or replay's (whose null is
    the training table's, recorded in the bundle)."""
    if keys == "mapping":
        return "mapping.time_format, or the bundle's table_identifiers.time_format where that is null"
    return f"{keys}.time_format"


def _ms_floor(keys: str) -> str:
    """The refusal's fix for stamps read as epoch milliseconds that lie before 1990 (seconds, most likely)."""
    reset = "ISO8601" if keys == "mapping" else "null"  # runtime.yaml's null is the bundle's: ISO8601 resets it
    return (
        f"stamps read as epoch milliseconds ({time_format_source(keys)}: {EPOCH_MILLIS}) lie before 1990: epoch "
        f"seconds? set {keys}.time_format: {reset}"
    )


def zone_problem(name: str | None, key: str) -> str | None:
    """Why `name` (the setting `key`) is not a time zone this machine knows, or None (None is no zone)."""
    if name is None:
        return None
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        if not available_timezones():
            return f"{key}: this machine has no time zone database to read {name!r}: pip install tzdata"
        return f"{key}: unknown time zone {name!r}; give an IANA name such as Europe/Paris or UTC"
    return None


_FORMAT_PROBE = datetime(2017, 8, 9, 13, 20)  # every field distinct and non-zero but the seconds


def time_format_problem(fmt: str | None, key: str) -> str | None:
    """Why `fmt` (the setting `key`), a strptime format of a table's stamps or EPOCH_MILLIS, cannot be used, or
    None (None: no format, the stamps are ISO-8601 or epoch seconds). A format must read back a stamp it writes to
    the minute."""
    if fmt is None or fmt == EPOCH_MILLIS:
        return None
    if not isinstance(fmt, str) or "%" not in fmt:
        return (f"{key}: a strptime format such as '%d.%m.%Y %H:%M', or {EPOCH_MILLIS} (stamps in epoch "
                f"milliseconds), expected (null: ISO-8601 or epoch seconds), got {fmt!r}")  # fmt: skip
    if "%Z" in fmt:  # strptime reads a zone name and drops it: '12:00 UTC' would be a local time
        return f"{key}: {fmt!r}: %Z is not supported (strptime ignores the zone it names); use %z, or naive_timezone"
    probe = _FORMAT_PROBE.replace(tzinfo=timezone(timedelta(hours=2))) if "%z" in fmt else _FORMAT_PROBE
    try:
        back = datetime.strptime(probe.strftime(fmt), fmt)
    except ValueError as e:
        return f"{key}: {fmt!r} cannot read the stamps it writes ({e})"
    if back != probe:
        return (f"{key}: {fmt!r} does not hold the year, month, day, hour and minute (it reads "
                f"{_FORMAT_PROBE:%Y-%m-%d %H:%M} back as {back:%Y-%m-%d %H:%M})")  # fmt: skip
    return None


# one channel's value: turbine, stamp (ns), channel index, value (NaN: not measured), whether its read failed
ChannelValue = tuple[str, int, int, float, bool]
NOT_READ = -1  # `channel_of` a key that mapping.ignored_keys drops
_IGNORED = ("", NOT_READ)  # a tag id whose key is in ignored_keys
_TAG_IDS_KEPT = 1 << 16  # tag ids resolved and kept: a fleet's turbines x keys; hostile ids beyond are resolved anew
_TAG_ID_KEPT_CHARS = 256  # ... and only ids this short: at most 16 M characters kept, whatever a publisher sends


def tag_pattern_problem(pattern: str | None) -> str | None:
    """Why `mapping.tag_pattern` cannot take a tag id apart (not a regular expression, or without the named groups
    `turbine` and `key`), or None."""
    if pattern is None:
        return None
    try:
        groups = re.compile(pattern).groupindex
    except (re.error, TypeError) as e:
        return f"mapping.tag_pattern: {pattern!r} is not a regular expression ({e})"
    if not {"turbine", "key"} <= set(groups):
        return (f"mapping.tag_pattern: {pattern!r} needs the named groups (?P<turbine>...) and (?P<key>...), e.g. "
                f"{KEPWARE_TAG_PATTERN!r} (Kepware's <channel>.<device>[.<group>...].<tag>)")  # fmt: skip
    return None


def in_epoch_range(ns: Any) -> Any:
    """Whether stamps in ns (an int of any size, or an int64 array) lie within MAX_EPOCH_S of 1970 (EPOCH_RANGE):
    the range a table's stamps keep, and a message's however wide the clock checks are set."""
    return abs(ns) <= MAX_EPOCH_S * _NS


class Sample(NamedTuple):
    turbine: str
    ts_ns: int
    values: np.ndarray  # (C,) float64 in spec.channels order, NaN = not in this message (`hold.UNREAD`: null)
    failed: tuple[int, ...] = ()  # channels whose value the source said it failed to read (UNREAD in `values`)


class Rejection(NamedTuple):
    reason: str  # one of REASONS
    detail: str


class BatchDecode(NamedTuple):
    samples: list[Sample]  # the valid lines' (elements') samples, in their order
    rejected: list[tuple[Any, Rejection]]  # (place, why) of each refusal, in order: `where(place)` locates it
    where: Callable[[Any], dict[str, Any]]  # a place -> {"line": n}, {"element": n}, ... (made for those reported)
    birth: bool = False  # a Sparkplug birth's (runtime.birth_hold)
    historical: bool = False  # every value read is history (Sparkplug's is_historical): stored and forwarded


def grouped(values: Iterable[ChannelValue], n_channels: int) -> list[Sample]:
    """Values sent one channel at a time (Kepware's elements, Sparkplug's metrics) -> samples: the values of a
    turbine and stamp make one sample (a channel again at that stamp: a second one), in order of first value."""
    rows: dict[tuple[str, int], list[tuple[list[float | None], list[int]]]] = {}  # values (None = unset), failed
    for tid, ts, i, x, failed in values:
        rs = rows.setdefault((tid, ts), [])
        if not rs or rs[-1][0][i] is not None:  # the first value, or the channel again at this stamp: a new sample
            rs.append(([None] * n_channels, []))
        rs[-1][0][i] = x
        if failed:
            rs[-1][1].append(i)
    return [Sample(tid, ts, np.array([math.nan if x is None else x for x in r], dtype=np.float64), tuple(f))
            for (tid, ts), rs in rows.items() for r, f in rs]  # fmt: skip


def shown(x: Any, n: int) -> str:
    """A refused JSON value in a detail: a scalar's text cut to `n` characters, a container by its type only (a
    deeply nested one has no text: str() would recurse past the interpreter's limit)."""
    if isinstance(x, (list, dict)):
        return f"(a JSON {'array' if isinstance(x, list) else 'object'})"
    return repr(x[:n]) if isinstance(x, str) else str(x)[:n]  # a number unquoted: it was sent as one


def _number_text(v: str) -> float | Rejection:
    """A value sent as a string under `numeric_strings`: a plain number by the CSV cell rule (`cells.cell_number`) ->
    its float, "" -> `UNREAD` (not measured: a null), else why not."""
    if v == "":
        return UNREAD
    x = cell_number(v)
    if math.isfinite(x):
        return x
    if math.isnan(x):
        return Rejection("not_a_number", f"{v[:40]!r} is not a number (a plain ASCII number, '.' the decimal mark)")
    return Rejection("non_finite", f"{v[:40]!r}")


def _reject_constant(name: str) -> Any:
    raise ValueError(f"non-finite literal {name}")


def parse_timestamp_ns(ts: Any, per_second: int = 1, tz: Any = None) -> int | str:
    """ISO-8601 (`stamps.iso_utc_ns`: pandas' forms, with an offset, or without one a local time in zone `tz`) or
    epoch seconds (`per_second` 1; epoch milliseconds: 1000, `EPOCH_UNITS`) -> int ns since the epoch (UTC), or a
    rejection reason string. The int may lie beyond int64 (after 2262): the daemon refuses it as in the future,
    tables beyond MAX_EPOCH_S. A fractional epoch number is rounded to the microsecond (a float's ns carry its
    rounding error: 1706400000.123 read as ...122999808), so the same reading stamped either way to the microsecond
    gets the same ns and is deduplicated; an ISO stamp keeps up to nanoseconds, as pandas reads it. A string longer
    than MAX_STAMP_CHARS once stripped is refused unread (the grammar allows any run of whitespace before the
    offset: a hostile message would cost the loop its length in regex time)."""
    if isinstance(ts, bool):
        return "bad_timestamp"
    if isinstance(ts, int):  # before math.isfinite, which cannot take an int beyond a float (JSON allows one)
        return "bad_timestamp" if abs(ts) > _MAX_ABS_S * per_second else ts * (_NS // per_second)
    if isinstance(ts, float):
        if not math.isfinite(ts) or abs(ts) > _MAX_ABS_S * per_second:
            return "bad_timestamp"
        return int(round(ts * (1e6 / per_second))) * 1000  # to the microsecond (a float holds no more)
    if not isinstance(ts, str):
        return "bad_timestamp"
    s = ts.strip()
    return "bad_timestamp" if len(s) > MAX_STAMP_CHARS else iso_utc_ns(s, tz)


def epoch_ns(numbers: np.ndarray, per_second: int = 1) -> np.ndarray | None:
    """`parse_timestamp_ns` of many float epoch seconds (`per_second` 1) or milliseconds (1000) at once, for a
    table: int64 ns, None if any is not finite or beyond MAX_EPOCH_S."""
    x = np.asarray(numbers, dtype=np.float64)
    if not (np.isfinite(x) & (np.abs(x) <= MAX_EPOCH_S * per_second)).all():
        return None
    return np.rint(x * (1e6 / per_second)).astype(np.int64) * 1000  # round() and rint both round half to even


def table_epoch_ns(numbers: np.ndarray, where: str, per_second: int = 1, keys: str | None = None) -> np.ndarray:
    """A table's column of epoch seconds (`per_second` 1) or milliseconds (1000; float64, NaN = empty) -> int64 ns
    (`epoch_ns`). Refused (InputError, what to fix, naming the section `keys` that holds the table's time_format;
    None: a file without one, such as the labels): empty or infinite stamps, stamps beyond MAX_EPOCH_S (epoch
    milliseconds read as seconds?), stamps before 1990 (TABLE_EPOCH_FLOOR_S: Excel serial days, a counter, or
    seconds read as milliseconds?)."""
    if np.isnan(numbers).any():
        raise InputError(f"{where}: {int(np.isnan(numbers).sum())} empty (or infinite) timestamps")
    ns = epoch_ns(numbers, per_second)
    unit = "seconds" if per_second == 1 else "milliseconds"
    if ns is None:
        bad = numbers[~(np.abs(numbers) <= MAX_EPOCH_S * per_second)][:3].tolist()
        hint = epoch_ms_hint(keys) if per_second == 1 else ""
        raise InputError(f"{where}: epoch {unit} out of range, e.g. {bad}; {EPOCH_RANGE}{hint}")
    early = numbers < TABLE_EPOCH_FLOOR_S * per_second
    if early.any():
        floor = EPOCH_FLOOR if per_second == 1 else _ms_floor(keys or "data.identifiers")
        raise InputError(f"{where}: {int(early.sum())} stamps before 1990, e.g. {numbers[early][:3].tolist()}; "
                         f"{floor}")  # fmt: skip
    return ns


def _parse(payload: bytes, text: str | None) -> Any:
    """JSON -> document, or a Rejection saying why not (`text`: the payload decoded, when already done)."""
    try:
        return orjson.loads(payload)  # strict RFC 8259: NaN/Infinity refused; integers beyond 64 bits read as floats
    except orjson.JSONDecodeError:  # the standard parser says why (or takes a huge integer)
        try:
            return json.loads(payload.decode("utf-8") if text is None else text, parse_constant=_reject_constant)
        except RecursionError:  # valid or not, deeper than either parser goes (orjson: 1024 levels)
            return Rejection("malformed_json", "nested deeper than 1024 levels")
        except ValueError as e:
            reason = "non_finite" if "non-finite literal" in str(e) else "malformed_json"
            return Rejection(reason, f"{type(e).__name__}: {str(e)[:200]}")


def parsed(payload: bytes, limit: int, setting: str) -> Any:
    """The payload as JSON, or a Rejection saying why not: larger than `limit` bytes (`ingest.<setting>`), not
    UTF-8, not JSON."""
    text = _text(payload, limit, setting)
    return text if isinstance(text, Rejection) else _parse(payload, text)


def _text(payload: bytes, limit: int, setting: str, what: str = "") -> str | Rejection:
    """The payload decoded, or why not: larger than `limit` bytes (`ingest.<setting>`; `what` opens the detail),
    or not UTF-8."""
    if len(payload) > limit:
        return Rejection("oversized", f"{what}{len(payload)} bytes > ingest.{setting}={limit}")
    try:
        return payload.decode("utf-8")
    except UnicodeDecodeError as e:
        return Rejection("not_utf8", str(e)[:200])


def _judged(results: Iterable[tuple[Any, Sample | Rejection]], where: Callable[[Any], dict[str, Any]]) -> BatchDecode:
    """A batch's or an array's (place: a line or element number from 1, sample or why refused) as a BatchDecode, in
    their order; `where(place)` locates a refusal as a dict, made only for those reported (a hostile message holds
    millions)."""
    samples: list[Sample] = []
    rejected: list[tuple[Any, Rejection]] = []
    for place, res in results:
        if isinstance(res, Rejection):
            rejected.append((place, res))
        else:
            samples.append(res)
    return BatchDecode(samples, rejected, where)


def _line_at(n: int) -> dict[str, Any]:
    return {"line": n}


def _element_at(n: int) -> dict[str, Any]:
    return {"element": n}


def _device_element_at(place: tuple[str, int | None]) -> dict[str, Any]:
    """A refusal's place in ThingsBoard's gateway form: the turbine, and the element unless the entry as a whole."""
    return {"turbine": place[0]} if place[1] is None else {"turbine": place[0], "element": place[1]}


def _neuron_reads(doc: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]] | Rejection:
    """A Neuron message's (values read, tags whose read failed), from its values or tags format, or why not."""
    if ("values" in doc) == ("tags" in doc):
        return Rejection("missing_values", "a Neuron message holds 'values' (values format) or 'tags' (tags format)")
    if "values" in doc:
        values, errors = doc["values"], doc.get("errors", {})
        if not isinstance(values, dict) or not isinstance(errors, dict):
            return Rejection("missing_values", "'values' and 'errors' must be objects of tag -> value or error code")
        return values, errors
    if "errors" in doc:
        return Rejection("unknown_key", "'errors' belongs to the values format; the tags format gives a tag's error "
                         "in its element")  # fmt: skip
    tags = doc["tags"]
    if not isinstance(tags, list) or any(not isinstance(t, dict) for t in tags):
        return Rejection("missing_values", "'tags' must be an array of {name, value} or {name, error}")
    values, errors = {}, {}
    for t in tags:
        name = t.get("name")
        if not isinstance(name, str) or ("value" in t) == ("error" in t):  # other keys (a tag's metas) unread
            return Rejection("missing_values", f"a tag is {{name, value}} or {{name, error}}, got keys "
                             f"{sorted(str(k)[:40] for k in t)[:5]}")  # fmt: skip
        if "error" in t:
            errors[name] = t["error"]
        else:
            values[name] = t["value"]
    return values, errors


def _tag_element_at(place: tuple[int, Any]) -> dict[str, Any]:
    """A refusal's place in a Kepware message: the element, and its tag id when it has one (cut to 100)."""
    n, el = place
    tag = el.get("id") if isinstance(el, dict) else None
    return {"element": n, "tag": tag[:100]} if isinstance(tag, str) else {"element": n}


def _object(payload: bytes, text: str | None, allowed: frozenset[str], what: str) -> dict[str, Any] | Rejection:
    """The payload as a JSON object with no keys beyond `allowed`, or why not (`what` names it: payload, line)."""
    doc = _parse(payload, text)
    return doc if isinstance(doc, Rejection) else keys_checked(doc, allowed, what)


def keys_checked(doc: Any, allowed: frozenset[str], what: str) -> dict[str, Any] | Rejection:
    """A parsed document if it is a JSON object with no keys beyond `allowed`, else why not."""
    if not isinstance(doc, dict):
        return Rejection("not_an_object", f"{what} is a JSON {type(doc).__name__}, expected an object")
    if doc.keys() - allowed:
        extra = sorted(str(k)[:40] for k in doc if k not in allowed)
        return Rejection("unknown_key", f"keys {extra[:5]}; allowed: {sorted(allowed)}")
    return doc


def turbine_topics(template: str, site: str, gateway: str) -> tuple[str, re.Pattern[str]]:
    """(MQTT subscription filter matching every turbine's topic of a per-turbine template: `+` for each level that
    holds {turbine}; the pattern whose `fullmatch` of a topic gives the turbine id, group 1, or None for a topic
    of no turbine)."""
    marked = template.format(site=site, gateway=gateway, turbine="\0")
    filt = "/".join("+" if "\0" in lv else lv for lv in marked.split("/"))
    return filt, re.compile(re.escape(marked).replace("\0", "([^/]+)"))


def topic_filter(template: str, site: str, gateway: str) -> tuple[str, int]:
    """(MQTT subscription filter with `+` at {turbine} (`turbine_topics`), index of the turbine level) of a
    template whose {turbine} is a whole level."""
    return turbine_topics(template, site, gateway)[0], template.split("/").index("{turbine}")


class TelemetryDecoder:
    """Stateless validation of telemetry messages against the bundle's channels and the ingest limits (a tag id
    is resolved once and kept: its turbine and channel are the same every time)."""

    def __init__(
        self,
        channels: Sequence[str],
        key_of_channel: dict[str, str],
        turbine_level: int,
        max_payload_bytes: int,
        max_future_s: float,
        max_past_s: float,
        allowed_turbines: Sequence[str] = (),
        max_batch_payload_bytes: int = 4 << 20,
        epoch_unit: str = "s",
        ignored_keys: Sequence[str] = (),
        numeric_strings: bool = False,
        tag_pattern: str | None = None,
        naive_timezone: str | None = None,
    ) -> None:
        zone = zone_problem(naive_timezone, "ingest.naive_timezone")
        if zone is not None:
            raise ValueError(f"TelemetryDecoder: {zone}")
        if epoch_unit not in EPOCH_UNITS:
            raise ValueError(f"TelemetryDecoder: epoch_unit must be one of {list(EPOCH_UNITS)}, got {epoch_unit!r}")
        problem = tag_pattern_problem(tag_pattern)
        if problem is not None:
            raise ValueError(f"TelemetryDecoder: {problem}")
        missing = [c for c in channels if c not in key_of_channel]
        unknown = sorted(set(key_of_channel) - set(channels))
        if missing or unknown:
            raise ValueError(
                f"TelemetryDecoder: mapping must name every channel once; missing {missing}, unknown {unknown}"
            )
        keys = [key_of_channel[c] for c in channels]
        if len(set(keys)) != len(keys):
            raise ValueError(f"TelemetryDecoder: two channels map to the same payload key in {key_of_channel}")
        ignored = IgnoredKeys(ignored_keys)
        read_and_ignored = sorted(set(keys) & ignored.exact)
        if read_and_ignored:
            raise ValueError(f"TelemetryDecoder: mapping.ignored_keys {read_and_ignored} are channels' payload keys "
                             f"(the mapping {key_of_channel}): take them out of mapping.ignored_keys")  # fmt: skip
        self.channels = tuple(channels)
        self.key_of_channel = dict(key_of_channel)
        self.turbine_level = int(turbine_level)
        self.max_payload_bytes = int(max_payload_bytes)
        self.max_future_s = float(max_future_s)
        self.max_past_s = float(max_past_s)
        self.max_batch_payload_bytes = int(max_batch_payload_bytes)
        self.allowed_turbines = tuple(allowed_turbines)
        self.epoch_unit = epoch_unit
        self._per_second = EPOCH_UNITS[epoch_unit]
        self.key_index = {k: i for i, k in enumerate(keys)}
        self._known = str(sorted(self.key_index))  # the channels' keys, in a refusal's detail (`no_channel`)
        self.ignored_keys = ignored  # keys and `*` patterns: `key in ignored_keys`
        self.numeric_strings = bool(numeric_strings)
        self._tag = re.compile(KEPWARE_TAG_PATTERN if tag_pattern is None else tag_pattern)
        self.naive_timezone = naive_timezone
        self._tz = None if naive_timezone is None else ZoneInfo(naive_timezone)
        self._iso: dict[str, int | str] = {}  # stamp text -> its reading: a fleet's messages of a step share one
        self._tags: dict[str, tuple[str, int]] = {}  # tag ids resolved (at most _TAG_IDS_KEPT): the same every time
        self._allowed = frozenset(self.allowed_turbines)

    def turbine_of(self, topic: str) -> str | Rejection:
        """The turbine id in a telemetry topic, or a Rejection."""
        levels = topic.split("/")
        if len(levels) <= self.turbine_level:
            return Rejection("bad_topic", f"topic {topic[:200]!r} has no turbine level {self.turbine_level}")
        return self.check_turbine(levels[self.turbine_level])

    def check_turbine(self, tid: Any) -> str | Rejection:
        """`tid` if it is a valid turbine id on the allow-list, else a Rejection."""
        problem = turbine_id_problem(tid)
        if problem is not None:
            return Rejection("bad_turbine_id", problem)
        if self._allowed and tid not in self._allowed:
            return Rejection("unknown_turbine", f"turbine {tid!r} is not in ingest.turbines")
        return tid

    def decode(self, topic: str, payload: bytes, now_ns: int) -> Sample | BatchDecode | Rejection:
        """One message -> Sample, or for a JSON array of documents (`_array`) a BatchDecode, or Rejection (never
        raises on bad input)."""
        tid = self.turbine_of(topic)
        if isinstance(tid, Rejection):
            return tid
        if payload.lstrip()[:1] == b"[":
            return self._array(tid, payload, now_ns)
        text = _text(payload, self.max_payload_bytes, "max_payload_bytes")
        if isinstance(text, Rejection):
            return text
        doc = _object(payload, text, _DOC_KEYS, "payload")
        return doc if isinstance(doc, Rejection) else self._check_doc(tid, doc, now_ns)

    def _array(self, tid: str, payload: bytes, now_ns: int) -> BatchDecode | Rejection:
        """A turbine's samples as a JSON array of documents (ThingsBoard's form: a device's store-and-forward buffer
        sent at once): each element checked as a message of its own and taken whole or not at all (`rejected`:
        (element number from 1, Rejection)), in element order. The whole message is refused when it is larger than
        `max_batch_payload_bytes`, not UTF-8 or not JSON, or holds no element."""
        text = _text(payload, self.max_batch_payload_bytes, "max_batch_payload_bytes", "an array of ")
        docs = text if isinstance(text, Rejection) else _parse(payload, text)
        if isinstance(docs, Rejection):
            return docs
        if not docs:
            return Rejection("missing_values", "an empty array: a message holds one document or an array of them")

        return _judged(((n, self._element(tid, doc, now_ns)) for n, doc in enumerate(docs, 1)), _element_at)

    def _element(self, tid: str, doc: Any, now_ns: int) -> Sample | Rejection:
        """One element of a turbine's array of documents, checked as a message on its topic."""
        checked = keys_checked(doc, _DOC_KEYS, "element")
        return checked if isinstance(checked, Rejection) else self._check_doc(tid, checked, now_ns)

    def decode_devices(self, payload: bytes, now_ns: int) -> BatchDecode | Rejection:
        """A `topics.telemetry_batch` message in ThingsBoard's gateway form (`batch_format="devices"`): a JSON object
        of turbine id -> array of documents. Each element judged as `_array` judges one, located by turbine and
        element; the whole message refused when it is oversized, not UTF-8, not a JSON object, or empty."""
        text = _text(payload, self.max_batch_payload_bytes, "max_batch_payload_bytes")
        doc = text if isinstance(text, Rejection) else _parse(payload, text)
        if isinstance(doc, Rejection):
            return doc
        if not isinstance(doc, dict):
            return Rejection("not_an_object", f"payload is a JSON {type(doc).__name__}, expected an object of "
                             "turbine id -> array of documents (ingest.batch_format: devices)")  # fmt: skip
        if not doc:
            return Rejection("missing_values", "an empty object: it holds turbine id -> array of documents")
        results: list[tuple[tuple[str, int | None], Sample | Rejection]] = []
        for device, docs in doc.items():
            tid = self.check_turbine(device)
            name = device if isinstance(tid, str) else device[:64]
            if not isinstance(docs, list):
                what = f"turbine {name!r}: a JSON {type(docs).__name__}, expected an array of documents"
                results.append(((name, None), Rejection("not_an_array", what)))
                continue
            for n, one in enumerate(docs, 1):
                res = tid if isinstance(tid, Rejection) else self._element(tid, one, now_ns)
                results.append(((name, n), res))
        if not results:
            return Rejection("missing_values", "every turbine's array is empty")
        return _judged(results, _device_element_at)

    def decode_batch(self, payload: bytes, now_ns: int) -> BatchDecode | Rejection:
        """A `topics.telemetry_batch` message (JSON lines) -> the samples of its valid lines and why each other
        line was refused; a Rejection for the whole message when it is oversized, not UTF-8 or empty."""
        # UTF-8 as a whole, so every line is too: a newline byte never sits inside a character
        text = _text(payload, self.max_batch_payload_bytes, "max_batch_payload_bytes")
        if isinstance(text, Rejection):
            return text
        lines = [(n, line) for n, line in enumerate(payload.split(b"\n"), 1) if line.strip()]  # blank lines skipped
        if not lines:
            return Rejection("malformed_json", "a telemetry batch needs at least one line (one JSON object per line)")
        return _judged(((n, self._line(line, now_ns)) for n, line in lines), _line_at)

    def _unit_hint(self, ts: Any) -> str:
        """A refused numeric stamp's likely cause when its size fits the other unit: 1.7e12 is today in epoch
        milliseconds, 1.7e9 today in epoch seconds (1e11 s is the year 5138, 1e11 ms 1973)."""
        if isinstance(ts, bool) or not isinstance(ts, (int, float)):  # inf and huge ints compare as they should
            return ""
        if self._per_second == 1 and _MAX_ABS_S < abs(ts) <= _MAX_ABS_S * 1000:
            return " (a number this large may be epoch milliseconds: set ingest.epoch_unit: ms)"
        if self._per_second == 1000 and abs(ts) <= _MAX_ABS_S:
            return " (a number this small may be epoch seconds: set ingest.epoch_unit: s)"
        return ""

    def _line(self, line: bytes, now_ns: int) -> Sample | Rejection:
        """One line of a telemetry batch, checked as `decode` checks a message, its turbine id inside."""
        if len(line) > self.max_payload_bytes:
            limit = self.max_payload_bytes
            return Rejection("oversized", f"line of {len(line)} bytes > ingest.max_payload_bytes={limit}")
        doc = _object(line, None, _LINE_KEYS, "line")
        if isinstance(doc, Rejection):
            return doc
        if "turbine" not in doc:
            return Rejection("bad_turbine_id", "no 'turbine' in the line")
        tid = self.check_turbine(doc["turbine"])
        if isinstance(tid, Rejection):
            return tid
        return self._check_doc(tid, doc, now_ns)

    def _check_doc(self, tid: str, doc: dict[str, Any], now_ns: int) -> Sample | Rejection:
        """A telemetry document's `ts` and `values` (its keys already checked) -> Sample or Rejection."""
        if "ts" not in doc:
            return Rejection("missing_ts", "no 'ts'")
        ts = self.stamp(doc["ts"], now_ns, "ts")
        if isinstance(ts, Rejection):
            return ts
        values = doc.get("values")
        if not isinstance(values, dict) or not values:
            return Rejection("missing_values", "'values' must be a non-empty object of channel -> number or null")
        row = [math.nan] * len(self.channels)
        index = self.key_index
        for key, v in values.items():
            i = index.get(key)
            if i is None:
                if key in self.ignored_keys:
                    continue
                unknown = [str(k)[:60] for k in values if k not in index and k not in self.ignored_keys]
                return self.no_channel(f"keys {unknown[:20]} are not channels", "keys")
            if type(v) is float and math.isfinite(v):  # the usual case (a JSON number with a fraction or exponent)
                row[i] = v
            elif v is not None:
                x = self.number(key, v)
                if isinstance(x, Rejection):
                    return x
                row[i] = x
            else:  # null: the source says it has no value (a report-by-exception channel's hold ends)
                row[i] = UNREAD
        return Sample(tid, ts, np.array(row))

    def stamp(self, raw: Any, now_ns: int, name: str) -> int | Rejection:
        """A document's stamp (`name`: its key) -> ns, or why it is refused: not a stamp, beyond the clock checks
        `max_future_s` / `max_past_s`, or outside the epoch range."""
        if type(raw) is str:
            ts = self._iso.get(raw)
            if ts is None:
                ts = parse_timestamp_ns(raw, tz=self._tz)
                if len(raw) <= MAX_STAMP_CHARS:  # a hostile message's long stamps are not kept
                    if len(self._iso) >= _ISO_MEMO:
                        self._iso.clear()
                    self._iso[raw] = ts
        else:
            ts = parse_timestamp_ns(raw, self._per_second)
        if ts == "ambiguous_local_time":
            ts = self._first_occurrence(raw, now_ns)
        if ts in _DST_REASONS:  # a local time of ingest.naive_timezone
            change = "repeats, and its second occurrence may have come" if ts == "ambiguous_local_time" else "skips"
            skip = f"; {STANDARD_TIME}" if ts == "nonexistent_local_time" else ""
            return Rejection(ts, f"{name} {shown(raw, 60)}: a local time that a DST change in "
                             f"{self.naive_timezone} {change}: send stamps with a UTC offset to keep that "
                             f"hour{skip}")  # fmt: skip
        if isinstance(ts, str):
            unit = "seconds" if self._per_second == 1 else "milliseconds"
            local = " (local times: set ingest.naive_timezone)" if ts == "naive_timestamp" else ""
            return Rejection(ts, f"{name} {shown(raw, 60)}: ISO-8601 with a UTC offset, or epoch {unit}"
                             f"{self._unit_hint(raw)}{local}")  # fmt: skip
        return self.clock_checked(ts, raw, now_ns, name)

    def _first_occurrence(self, raw: str, now_ns: int) -> int | str:
        """A local time the autumn DST change repeats (`raw`, read once) -> its first occurrence while its second
        lies beyond the clock check `max_future_s` (no clock has shown it yet: during the first occurrence and
        before it), else "ambiguous_local_time": a message's arrival order is not its time order (a gateway's
        buffer, a broker's redelivery), so once both have come the stamp alone cannot tell them apart."""
        first, second = repeated_ns(iso_ns(raw.strip())[0], self._tz)
        return first if second > now_ns + self.max_future_s * _NS else "ambiguous_local_time"

    def clock_checked(self, ts: int, raw: Any, now_ns: int, name: str) -> int | Rejection:
        """A stamp read as `ts` ns from `raw` (`name`: its key), or why it is refused: beyond the clock checks
        `max_future_s` / `max_past_s`, or outside the epoch range."""
        if ts > now_ns + self.max_future_s * _NS:
            return Rejection("ts_in_future", f"{name} {shown(raw, 60)} is more than {self.max_future_s} s ahead of now")
        if ts < now_ns - self.max_past_s * _NS:
            return Rejection("ts_too_old", f"{name} {shown(raw, 60)} is more than {self.max_past_s} s before now"
                             f"{self._unit_hint(raw)}")  # fmt: skip
        if not in_epoch_range(ts):  # past both clock checks only when they are set very wide
            return Rejection("bad_timestamp", f"{name} {shown(raw, 60)}: {EPOCH_RANGE}")
        return ts

    def value(self, key: str, v: Any) -> float | Rejection:
        """A channel's value as one tag sends it (`key`: its payload key): null -> `UNREAD` (the source has no
        value), a finite float as it is, anything else by `number`."""
        return UNREAD if v is None else v if type(v) is float and math.isfinite(v) else self.number(key, v)

    def number(self, key: str, v: Any) -> float | Rejection:
        """A channel's value other than null (`key`: its payload key) -> float, or why it is refused."""
        t = type(v)
        if t is float or t is int:
            x = v if t is float else float(v) if abs(v) < 1e300 else math.inf  # huge ints would overflow float()
            return x if math.isfinite(x) else Rejection("non_finite", f"{key}: {str(v)[:40]}")
        if t is str and self.numeric_strings:
            x = _number_text(v)
            return Rejection(x.reason, f"{key}: {x.detail}") if isinstance(x, Rejection) else x
        strings = "" if t is not str else " (a gateway that sends numbers as text: ingest.numeric_strings)"
        return Rejection("bad_value_type", f"{key}: {t.__name__}, expected a number or null{strings}")

    def decode_tags(self, payload: bytes, now_ns: int) -> BatchDecode | Rejection:
        """A `topics.telemetry_batch` message in Kepware's IoT Gateway standard template (`batch_format="kepware"`):
        `{"timestamp": <ms>, "values": [{"id": "<tag id>", "v": value, "q": quality, "t": <stamp>}, ...]}`. Each
        element is one value: the tag id gives the turbine and the payload key (`tag_pattern`), `t` its stamp
        (epoch milliseconds under `epoch_unit="ms"`), `v` its value (a number or null, text under
        `numeric_strings`), `q` false: the source says the value is bad, so it is not a measurement (read as null,
        `v` unread, absent or not). A refused element costs its value only (placed by element and tag id); an id
        of a key in `ignored_keys` is dropped. The values of a turbine and stamp make one sample (a key twice at
        one stamp: a second sample). The whole message is refused when it is oversized, not UTF-8, not an object
        holding `values` (and at most `timestamp`, the publish time, unread), or has no value."""
        text = _text(payload, self.max_batch_payload_bytes, "max_batch_payload_bytes")
        doc = text if isinstance(text, Rejection) else _object(payload, text, _TAGS_KEYS, "payload")
        if isinstance(doc, Rejection):
            return doc
        values = doc.get("values")
        if not isinstance(values, list) or not values:
            return Rejection("missing_values", "'values' must be a non-empty array of {id, v, q, t}")
        read: list[ChannelValue] = []
        rejected: list[tuple[tuple[int, Any], Rejection]] = []
        stamps: dict[Any, int | Rejection] = {}
        for n, el in enumerate(values, 1):
            got = self._tag_value(el, now_ns, stamps)
            if isinstance(got, Rejection):
                rejected.append(((n, el), got))
            elif got is not None:
                read.append(got)
        return BatchDecode(grouped(read, len(self.channels)), rejected, _tag_element_at)

    def decode_neuron(self, payload: bytes, now_ns: int) -> BatchDecode | Rejection:
        """A `topics.telemetry_batch` message of EMQX Neuron's MQTT app (`batch_format="neuron"`): one south node's
        group of tags read at one time, in its values format `{"timestamp": <ms>, "node": "<turbine>", "group":
        ..., "values": {"<key>": value}, "errors": {"<key>": <error code>}, "metas": {...}}` or its tags format
        (`"tags": [{"name": "<key>", "value": value} | {"name": "<key>", "error": <code>}, ...]`); Neuron before 2.4
        wrote `node_name` and `group_name`. The node is the turbine; a tag in `errors` (or with an `error`) was not
        read: null, and in the sample's `failed`. The message is one sample, taken whole or not at all as a document
        on the turbine's topic (the same key, value and stamp checks; `timestamp` is its `ts`)."""
        text = _text(payload, self.max_payload_bytes, "max_payload_bytes")
        doc = text if isinstance(text, Rejection) else _object(payload, text, _NEURON_KEYS, "payload")
        if isinstance(doc, Rejection):
            return doc
        nodes = [doc[k] for k in ("node", "node_name") if k in doc]
        if len(nodes) != 1:
            return Rejection("bad_turbine_id", "a Neuron message names its node (the turbine) once, under 'node' "
                             f"or 'node_name'; found {len(nodes)}")  # fmt: skip
        tid = self.check_turbine(nodes[0])
        if isinstance(tid, Rejection):
            return tid
        read = _neuron_reads(doc)
        if isinstance(read, Rejection):
            return read
        values, errors = read
        merged = {**values, **dict.fromkeys(errors)}  # a tag in both: its read failed
        if "timestamp" not in doc:
            return Rejection("missing_ts", "no 'timestamp'")
        sample = self._check_doc(tid, {"ts": doc["timestamp"], "values": merged}, now_ns)
        if isinstance(sample, Rejection):
            return sample
        failed = tuple(sorted(self.key_index[k] for k in errors if k in self.key_index))
        return BatchDecode([sample._replace(failed=failed)], [], _element_at)

    def _tag_value(self, el: Any, now_ns: int, stamps: dict[Any, int | Rejection]) -> ChannelValue | Rejection | None:
        """One element of a Kepware message -> (turbine, ts ns, channel index, value, failed: `"q": false`), None for
        an ignored key, or why it is refused (`stamps`: the message's stamps read so far, by type and value)."""
        if type(el) is not dict or not el.keys() <= _TAG_KEYS:
            checked = keys_checked(el, _TAG_KEYS, "element")
            if isinstance(checked, Rejection):
                return checked
        tag = el.get("id")
        where = self._tags.get(tag) if isinstance(tag, str) else None
        if where is None:
            where = self._tag_of(tag)
            if isinstance(where, Rejection):
                return where
            if len(self._tags) < _TAG_IDS_KEPT and len(tag) <= _TAG_ID_KEPT_CHARS:
                self._tags[tag] = where
        if where is _IGNORED:
            return None
        if "t" not in el:
            return Rejection("missing_ts", "no 't'")
        raw = el["t"]
        key = (type(raw), raw) if type(raw) in (int, float, str) else None
        ts = stamps.get(key) if key is not None else None
        if ts is None:
            ts = self.stamp(raw, now_ns, "t")
            if key is not None:
                stamps[key] = ts
        if isinstance(ts, Rejection):
            return ts
        q = el.get("q", True)
        if type(q) is not bool:
            return Rejection("bad_value_type", f"q: {type(q).__name__}, expected true or false (the value's quality)")
        tid, i = where
        if not q:
            return tid, ts, i, UNREAD, True
        if "v" not in el:
            return Rejection("missing_values", "no 'v'")
        x = self.value(tag[:100], el["v"])
        return x if isinstance(x, Rejection) else (tid, ts, i, x, False)

    def channel_of(self, key: str) -> int | None:
        """A payload key's (tag key's, metric name's) channel index, NOT_READ for a key `ignored_keys` drops, None for
        a key of no channel."""
        i = self.key_index.get(key)
        if i is not None:
            return i
        return NOT_READ if key in self.ignored_keys else None

    def no_channel(self, what: str, kind: str) -> Rejection:
        """The refusal of keys of no channel: `what` says which ("tag 'x' of ... is not a channel"), `kind` what the
        gateway calls them (keys, tags, metrics); the channels' keys are listed, written once."""
        return Rejection("unknown_channel", f"{what}; known: {self._known} (list {kind} the gateway publishes on "
                         "purpose in mapping.ignored_keys)")  # fmt: skip

    def _tag_of(self, tag: Any) -> tuple[str, int] | Rejection:
        """A tag id -> (turbine, channel index), `_IGNORED` for a key in `ignored_keys`, or why it is refused: no
        match of `tag_pattern`, a bad or unknown turbine id, a key of no channel."""
        match = self._tag.fullmatch(tag) if isinstance(tag, str) else None
        if match is None:
            return Rejection("bad_tag_id", f"tag id {shown(tag, 100)} does not match mapping.tag_pattern "
                             f"{self._tag.pattern!r}")  # fmt: skip
        if match["turbine"] is None or match["key"] is None:  # a pattern whose group is optional
            return Rejection("bad_tag_id", f"tag id {tag[:100]!r}: mapping.tag_pattern {self._tag.pattern!r} "
                             "matched without a turbine or a key")  # fmt: skip
        tid = self.check_turbine(match["turbine"])
        if isinstance(tid, Rejection):
            return tid
        key = match["key"]
        i = self.channel_of(key)
        if i is None:
            return self.no_channel(f"tag {key[:60]!r} of {tag[:100]!r} is not a channel", "tags")
        return _IGNORED if i == NOT_READ else (tid, i)
