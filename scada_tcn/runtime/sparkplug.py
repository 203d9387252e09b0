"""Sparkplug B telemetry: what Ignition's MQTT Transmission, Cirrus Link's modules, HiveMQ Edge, EMQX Neuron and
Eclipse Tahu publish (Eclipse Sparkplug 3.0, topic namespace `spBv1.0`).

Topics: `spBv1.0/<group>/<type>/<edge node>[/<device>]`. The daemon subscribes to a group's node messages
(NBIRTH, NDATA, NDEATH: the edge node is the turbine) and device messages (DBIRTH, DDATA, DDEATH: the device is
the turbine), never to commands or host states. Payloads are Sparkplug B's protobuf `Payload` (read with
`protowire`, no protobuf package): a publish `timestamp` and `metrics`, each with a `name` (a birth gives it,
with an `alias` that later data messages may send alone), a `timestamp` (epoch ms, else the payload's), a
`datatype`, `is_null`, `properties` and one value.

`SparkplugDecoder(decoder, group).decode(topic, payload, now_ns)` -> `BatchDecode | Rejection`, never raising
on bad input:
* A metric's name is a payload key of the bundle's channels (runtime.yaml `mapping`) or one of
  `mapping.ignored_keys`; Sparkplug's own metrics (`bdSeq`, `Node Control/...`, `Device Control/...`,
  `Node Info/...`, `Device Info/...`, `Properties/...`) are not read; any other name refuses that metric
  (`unknown_channel`). A refused metric costs its value only, located by its number in the message (from 1) and
  its name or alias (`where`).
* A value is read by its datatype (the metric's, else its birth's): Int8/16/32 from `int_value` and Int64 from
  `long_value` as two's complement of their width (Java's Tahu sends Int8 -1 as 2**32 - 1, Python's as 255: both
  read -1), UInt8..UInt64 as they are, Float and Double as sent. Booleans, strings (numbers as text only under
  `ingest.numeric_strings`), dates, bytes, datasets and templates are not numbers (`bad_value_type`). An integer
  without a known datatype is refused: its sign cannot be told.
* `is_null` is NaN (not measured). A `Quality` property other than 192 (Sparkplug's GOOD; 0 BAD, 500 STALE)
  says the source could not read the value: NaN whatever value or null is beside it, and the channel is in the
  sample's `failed`.
* The values of a turbine and stamp make one sample (`telemetry.grouped`), checked against the clock as every
  telemetry stamp is (`TelemetryDecoder.clock_checked`); the turbine id as every turbine id is.
* Births: an NBIRTH starts the edge node's session (the aliases of the node and its devices are forgotten), a
  DBIRTH gives a device's aliases anew; their metrics' values are samples too. NDEATH and DDEATH forget them.
  At most `BIRTH_METRICS_KEPT` metrics are remembered in all; a birth beyond is refused (`oversized`).
* A data message naming an alias no birth gave (the daemon started after the births, or a birth was lost):
  `unknown_alias` for that metric, and the edge node is put in `rebirths()`, the nodes whose rebirth the daemon
  asks for (`rebirth_request`: an NCMD with `Node Control/Rebirth` = true, as Sparkplug host applications do).
* The whole message is refused when it is larger than `ingest.max_batch_payload_bytes` (`oversized`), not a
  Sparkplug B payload (`malformed_protobuf`), or on a topic that is not a Sparkplug topic of the group
  (`bad_topic`).

Not read: sequence numbers (`seq`: a gap is not detected), `is_historical` (historical values are samples as
any other: the daemon's bins take what is late), metric metadata, and the primary-host STATE handshake.
"""

from __future__ import annotations

import math
import struct
from typing import Any, NamedTuple

from scada_tcn.runtime.protowire import LENGTH, VARINT, WireError, bytes_field, fields, signed, varint_field
from scada_tcn.runtime.telemetry import (
    BatchDecode,
    ChannelValue,
    Rejection,
    TelemetryDecoder,
    grouped,
    parse_timestamp_ns,
)

__all__ = [
    "BIRTH_METRICS_KEPT",
    "NAMESPACE",
    "SparkplugDecoder",
    "rebirth_request",
    "topic_filters",
]

NAMESPACE = "spBv1.0"
NODE_TYPES = ("NBIRTH", "NDATA", "NDEATH")
DEVICE_TYPES = ("DBIRTH", "DDATA", "DDEATH")
GOOD = 192  # Sparkplug's Quality property: 0 BAD, 192 GOOD, 500 STALE
BIRTH_METRICS_KEPT = 1 << 18  # names and aliases remembered from births, in all (1,000 turbines x 262 metrics)
_PROTOCOL = ("bdSeq",)
_PROTOCOL_PREFIXES = ("Node Control/", "Device Control/", "Node Info/", "Device Info/", "Properties/")
_NAME_KEPT_CHARS = 256  # a refused metric's name is remembered this long, no longer
# datatypes: integers sent in int_value (field 10) or long_value (11) -> (bits, signed)
_INTS = {1: (8, True), 2: (16, True), 3: (32, True), 4: (64, True), 5: (8, False), 6: (16, False),
         7: (32, False), 8: (64, False)}  # fmt: skip
_INT_FIELD = {1: 10, 2: 10, 3: 10, 5: 10, 6: 10, 7: 10, 4: 11, 8: 11}  # the field a datatype's integer is sent in
_TYPE_NAMES = {9: "Float", 10: "Double", 11: "Boolean", 12: "String", 13: "DateTime", 14: "Text", 15: "UUID",
               16: "DataSet", 17: "Bytes", 18: "File", 19: "Template"}  # fmt: skip
_FIELD_NAMES = {14: "a Boolean", 15: "a string", 16: "bytes", 17: "a DataSet", 18: "a Template", 19: "an extension"}
_FLOAT, _DOUBLE = struct.Struct("<f").unpack, struct.Struct("<d").unpack
_IGNORED = -1  # a birth table's entry for a name that is not read (Sparkplug's own, or in ignored_keys)


class _Metric(NamedTuple):
    name: str | None
    alias: int | None
    ts_ms: int | None
    datatype: int | None
    is_null: bool
    quality: int | None  # the Quality property, None when absent
    value: tuple[int, int | bytes] | None  # (field number, raw value), None when the metric holds none


def topic_filters(group: str) -> list[str]:
    """The MQTT filters of a Sparkplug group's node and device messages that the daemon reads."""
    return [f"{NAMESPACE}/{group}/{t}/+" for t in NODE_TYPES] + [f"{NAMESPACE}/{group}/{t}/+/+" for t in DEVICE_TYPES]


def rebirth_request(group: str, node: str, now_ms: int) -> tuple[str, bytes]:
    """(topic, payload) of the NCMD that asks edge node `node` to publish its births again."""
    metric = (bytes_field(1, b"Node Control/Rebirth") + varint_field(3, now_ms) + varint_field(4, 11)
              + varint_field(14, 1))  # fmt: skip
    return f"{NAMESPACE}/{group}/NCMD/{node}", varint_field(1, now_ms) + bytes_field(2, metric)


def _text(raw: int | bytes) -> str | None:
    try:
        return raw.decode("utf-8") if isinstance(raw, bytes) else None
    except UnicodeDecodeError:
        return None


def _metric(buf: bytes) -> _Metric:
    """One Metric message (WireError when it does not parse as one)."""
    name = alias = ts = datatype = quality = value = None
    is_null = False
    for number, wire, raw in fields(buf):
        if number in (2, 3, 4, 7) and wire != VARINT or number in (1, 9) and wire != LENGTH:
            raise WireError(f"metric field {number} of wire type {wire}")
        if number == 1:
            name = _text(raw)
            if name is None:
                raise WireError("a metric name that is not UTF-8")
        elif number == 2:
            alias = raw
        elif number == 3:
            ts = raw
        elif number == 4:
            datatype = raw
        elif number == 7:
            is_null = bool(raw)
        elif number == 9:
            quality = _quality(raw)  # type: ignore[arg-type]
        elif 10 <= number <= 19:
            value = (number, raw)
    return _Metric(name, alias, ts, datatype, is_null, quality, value)  # type: ignore[arg-type]


def _quality(buf: bytes) -> int | None:
    """A metric's PropertySet -> its Quality property's code (None: no such property)."""
    got = fields(buf)
    keys = [_text(raw) for number, _, raw in got if number == 1]
    values = [raw for number, wire, raw in got if number == 2 and wire == LENGTH]
    if "Quality" not in keys:
        return None
    k = keys.index("Quality")
    if k >= len(values):
        raise WireError("a Quality property without a value")
    for number, wire, raw in fields(values[k]):  # type: ignore[arg-type]
        if number in (3, 4) and wire == VARINT:
            return signed(raw, 32 if number == 3 else 64)  # type: ignore[arg-type]
    raise WireError("a Quality property that is not an integer")


def _payload(buf: bytes) -> tuple[int | None, list[_Metric]]:
    """A Payload message -> (its timestamp, its metrics) (WireError when it does not parse as one)."""
    ts, metrics = None, []
    for number, wire, raw in fields(buf):
        if number == 1:
            if wire != VARINT:
                raise WireError(f"payload timestamp of wire type {wire}")
            ts = raw
        elif number == 2:
            if wire != LENGTH:
                raise WireError(f"payload metric of wire type {wire}")
            metrics.append(_metric(raw))  # type: ignore[arg-type]
    return ts, metrics  # type: ignore[return-value]


def _metric_at(place: tuple[int, str | int | None]) -> dict[str, Any]:
    """A refusal's place in a Sparkplug message: the metric's number, and its name (or alias) when it has one."""
    n, label = place
    if isinstance(label, str):
        return {"metric": n, "name": label[:100]}
    return {"metric": n} if label is None else {"metric": n, "alias": label}


class SparkplugDecoder:
    """Sparkplug B messages of one group -> samples; remembers the births' names, aliases and datatypes."""

    def __init__(self, decoder: TelemetryDecoder, group: str) -> None:
        self.decoder = decoder
        self.group = group
        self._prefix = f"{NAMESPACE}/{group}/"
        # (edge node, device or None) -> {alias or name: (name, channel index or _IGNORED or None, datatype)}
        self._births: dict[tuple[str, str | None], dict[int | str, tuple[str, int | None, int | None]]] = {}
        self._kept = 0  # entries in _births, in all
        self._rebirth: set[str] = set()

    def reads(self, topic: str) -> bool:
        """Whether `topic` is one of this group's (the daemon routes it here)."""
        return topic.startswith(self._prefix)

    def rebirths(self) -> list[str]:
        """The edge nodes whose rebirth is wanted since the last call (an alias no birth gave)."""
        nodes, self._rebirth = sorted(self._rebirth), set()
        return nodes

    def decode(self, topic: str, payload: bytes, now_ns: int) -> BatchDecode | Rejection:
        """One message of the group -> its samples and refused metrics, or why it is refused whole (see the module
        docstring)."""
        d = self.decoder
        if len(payload) > d.max_batch_payload_bytes:
            return Rejection("oversized", f"{len(payload)} bytes > ingest.max_batch_payload_bytes="
                             f"{d.max_batch_payload_bytes}")  # fmt: skip
        levels = topic.split("/")
        kind = levels[2] if len(levels) > 2 else ""
        if not self.reads(topic) or len(levels) != (4 if kind in NODE_TYPES else 5 if kind in DEVICE_TYPES else 0):
            return Rejection("bad_topic", f"{topic[:200]!r} is not spBv1.0/{self.group}/<N or D message>/<node>"
                             "[/<device>]")  # fmt: skip
        node, device = levels[3], (levels[4] if len(levels) == 5 else None)
        try:
            sent_ms, metrics = _payload(payload)
        except WireError as e:
            return Rejection("malformed_protobuf", f"not a Sparkplug B payload: {e}"[:300])
        if kind.endswith("DEATH"):
            self._forget(node, device)
            return BatchDecode([], [], _metric_at)
        if kind.endswith("BIRTH"):
            if kind == "NBIRTH":
                self._forget(node, None)
            problem = self._remember(node, device, metrics)
            if problem is not None:
                return problem
        table = self._births.get((node, device), {})
        tid = d.check_turbine(device if device is not None else node)  # refuses the message if it has a channel
        read: list[ChannelValue] = []
        rejected: list[tuple[tuple[int, str | int | None], Rejection]] = []
        stamps: dict[int, int | Rejection] = {}  # the message's stamps read so far: its metrics share a few
        for n, m in enumerate(metrics, 1):
            got = self._read(m, table, tid, sent_ms, now_ns, stamps)
            if isinstance(got, Rejection):
                if got.reason == "unknown_alias":
                    self._rebirth.add(node)
                if got.reason in ("bad_turbine_id", "unknown_turbine"):  # the message's turbine: refused whole
                    return got
                rejected.append(((n, m.name if m.name is not None else m.alias), got))
            elif got is not None:
                read.append(got)
        return BatchDecode(grouped(read, len(d.channels)), rejected, _metric_at)

    def _forget(self, node: str, device: str | None) -> None:
        """Forget a device's birth, or (device None) the node's and all its devices'."""
        for key in [k for k in self._births if k[0] == node and (device is None or k[1] == device)]:
            self._kept -= len(self._births.pop(key))

    def _remember(self, node: str, device: str | None, metrics: list[_Metric]) -> Rejection | None:
        """A birth's names, aliases and datatypes, replacing the device's (or node's) earlier ones."""
        if device is not None:
            self._forget(node, device)
        table: dict[int | str, tuple[str, int | None, int | None]] = {}
        for m in metrics:
            if m.name is None:
                continue
            entry = (m.name[:_NAME_KEPT_CHARS], self._channel(m.name), m.datatype)
            table[m.name[:_NAME_KEPT_CHARS]] = entry
            if m.alias is not None:
                table[m.alias] = entry
        if self._kept + len(table) > BIRTH_METRICS_KEPT:
            return Rejection("oversized", f"a birth of {len(table)} names and aliases: more than the "
                             f"{BIRTH_METRICS_KEPT} kept in all")  # fmt: skip
        self._births[(node, device)] = table
        self._kept += len(table)
        return None

    def _channel(self, name: str) -> int | None:
        """A metric name's channel index, _IGNORED for a name not read, None for a name of no channel."""
        i = self.decoder.key_index.get(name)
        if i is not None:
            return i
        if name in self.decoder.ignored_keys or name in _PROTOCOL or name.startswith(_PROTOCOL_PREFIXES):
            return _IGNORED
        return None

    def _read(self, m: _Metric, table: dict[int | str, tuple[str, int | None, int | None]], tid: str | Rejection,
              sent_ms: int | None, now_ns: int, stamps: dict[int, int | Rejection]
              ) -> ChannelValue | Rejection | None:  # fmt: skip
        """One metric of turbine `tid` (or why the message's turbine is refused) -> (turbine, ts ns, channel index,
        value, failed), None when it is not read, or why not (`stamps`: the message's stamps read so far)."""
        if m.name is not None:
            known = table.get(m.name[:_NAME_KEPT_CHARS])
            name, i, born_type = known if known is not None else (m.name, self._channel(m.name), None)
        elif m.alias is not None and m.alias in table:
            name, i, born_type = table[m.alias]
        else:
            what = "a metric without a name or an alias" if m.alias is None else f"alias {m.alias}"
            return Rejection("unknown_alias", f"{what}: no birth since the daemon started named it (a rebirth is "
                             "asked for)")  # fmt: skip
        if i == _IGNORED:
            return None
        if i is None:
            known = sorted(self.decoder.key_index)
            return Rejection("unknown_channel", f"metric {name[:100]!r} is not a channel; known: {known} (list "
                             "metrics the gateway publishes on purpose in mapping.ignored_keys)")  # fmt: skip
        if isinstance(tid, Rejection):
            return tid
        ms = m.ts_ms if m.ts_ms is not None else sent_ms
        if ms is None:
            return Rejection("missing_ts", f"metric {name[:100]!r}: no timestamp, nor the payload's")
        ts = stamps.get(ms)
        if ts is None:
            ts = stamps[ms] = self.decoder.clock_checked(parse_timestamp_ns(ms, 1000), f"{ms} ms", now_ns, "timestamp")  # type: ignore[arg-type]
        if isinstance(ts, Rejection):
            return ts
        if m.quality is not None and m.quality != GOOD:  # whatever value is beside it (null, stale, 0)
            return tid, ts, i, math.nan, True
        if m.is_null:
            return tid, ts, i, math.nan, False
        x = self._number(name, m, m.datatype if m.datatype is not None else born_type)
        return x if isinstance(x, Rejection) else (tid, ts, i, x, False)

    def _number(self, name: str, m: _Metric, datatype: int | None) -> float | Rejection:
        """A metric's value as a float by its datatype, or why it is none."""
        if m.value is None:
            return Rejection("missing_values", f"metric {name[:100]!r}: no value and not is_null")
        number, raw = m.value
        if number == 13 and len(raw) == 8:  # type: ignore[arg-type]  # a Double, the usual case
            x = _DOUBLE(raw)[0]
            if math.isfinite(x):
                return x
        if number in (12, 13) and isinstance(raw, bytes) and len(raw) == (4 if number == 12 else 8):
            return self.decoder.number(name[:100], (_FLOAT if number == 12 else _DOUBLE)(raw)[0])
        if number in (10, 11) and isinstance(raw, int):
            if datatype not in _INTS:
                return Rejection("bad_value_type", f"metric {name[:100]!r}: an integer of datatype {datatype} "
                                 "(no birth gave it one: its sign cannot be told)")  # fmt: skip
            if _INT_FIELD[datatype] != number:
                return Rejection("bad_value_type", f"metric {name[:100]!r}: datatype {datatype} sent in field "
                                 f"{number}")  # fmt: skip
            bits, is_signed = _INTS[datatype]
            return float(signed(raw, bits) if is_signed else raw & ((1 << bits) - 1))
        if number == 15 and isinstance(raw, bytes):
            text = _text(raw)
            if text is not None:
                return self.decoder.number(name[:100], text)
        what = _FIELD_NAMES.get(number, f"field {number}")
        kind = _TYPE_NAMES.get(datatype, "") if datatype is not None else ""
        return Rejection("bad_value_type", f"metric {name[:100]!r}: {what}{f' ({kind})' if kind else ''}, "
                         "expected a number or is_null")  # fmt: skip
