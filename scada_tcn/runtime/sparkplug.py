"""Sparkplug B telemetry: what Ignition's MQTT Transmission, Cirrus Link's modules, HiveMQ Edge, EMQX Neuron and
Eclipse Tahu publish (Eclipse Sparkplug 3.0, topic namespace `spBv1.0`).

Topics: `spBv1.0/<group>/<type>/<edge node>[/<device>]`. The daemon subscribes to a group's node messages
(NBIRTH, NDATA, NDEATH: the edge node is the turbine) and device messages (DBIRTH, DDATA, DDEATH: the device is
the turbine), never to commands or other hosts' states. Payloads are Sparkplug B's protobuf `Payload`, read as protobuf
reads it (`sparkplug_payload`; no protobuf package): a publish `timestamp` and `metrics`, each with a `name` (a
birth gives it, with an `alias` that later data messages may send alone), a `timestamp` (epoch ms, else the
payload's), a `datatype`, `is_null`, `properties` and one value.

`SparkplugDecoder(decoder, group).decode(topic, payload, now_ns)` -> `BatchDecode | Rejection`; it does not raise
on any input:
* A metric's name is a payload key of the bundle's channels (runtime.yaml `mapping`) or one of
  `mapping.ignored_keys`; Sparkplug's own metrics (`bdSeq`, `Node Control/...`, `Device Control/...`,
  `Node Info/...`, `Device Info/...`, `Properties/...`) are not read; any other name refuses that metric
  (`unknown_channel`). A refused metric costs its value only, located by its number in the message (from 1) and
  its name or alias (`where`).
* A value is read by its datatype (the metric's, else its birth's): integers by `sparkplug_payload.integer_value`
  (two's complement of the datatype's width, sign-extended or not, from either integer field; a value outside
  the datatype's range is refused), Float and Double as sent (either). Booleans, strings (numbers as text only
  under `ingest.numeric_strings`), dates, bytes, datasets, templates, and a value in a field its datatype does
  not use, are not numbers (`bad_value_type`).
* `is_null` is `hold.UNREAD` (missing, and the source says it has no value). A `Quality` property other than 192
  (Sparkplug's GOOD; 0 BAD, 500 STALE) says the source could not read the value: `UNREAD` whatever value or null
  is beside it, and the channel is in the sample's `failed`. A Quality that is no integer refuses the metric
  (`bad_value_type`).
* The values of a turbine and stamp make one sample (`telemetry.grouped`), checked against the clock as every
  telemetry stamp is (`TelemetryDecoder.clock_checked`); the turbine id as every turbine id is. A message
  holding a channel's metric for a turbine that is refused (`bad_turbine_id`, `unknown_turbine`) is refused whole.
* Births: an NBIRTH starts the edge node's session (the aliases of the node and its devices are forgotten), a
  DBIRTH gives a device's aliases anew; their metrics' values are samples too. A birth is remembered only for a
  turbine the id rule and allow-list take, and at most `BIRTH_METRICS_KEPT` names and aliases in all (a birth
  beyond is refused, `oversized`). A DDEATH forgets the device's, an NDEATH the node's and its devices' (read
  from the topic: its payload need not parse), unless its `bdSeq` is not the one of the node's last NBIRTH (the
  will of an older session, delivered late).
* A data message of a turbine taken that names an alias no birth gave, or sends an integer whose datatype no
  birth gave (the daemon started after the births, or a birth was lost): `no_birth` for that metric, and the
  edge node is put in `rebirths()`, the nodes whose rebirth the daemon asks for (`rebirth_request`: an NCMD
  with `Node Control/Rebirth` = true, as Sparkplug host applications do). Such metrics of a turbine refused are
  not read and ask nothing: the message can give no sample.
* The whole message is refused when it is larger than `ingest.max_batch_payload_bytes` (`oversized`), not a
  protobuf message (`malformed_protobuf`), or on a topic that is not a Sparkplug topic of the group with an
  edge node id of at most 256 characters (`bad_topic`).

Deaths: values a turbine reported before its DDEATH (or its node's NDEATH) are stale (Sparkplug: the host marks
them so). `take_deaths` names those turbines, so that the daemon ends the holds of their report-by-exception
channels (`runtime.hold`) at once rather than after `hold_s`.

Sequence numbers: the messages a node's `seq` skipped (Sparkplug's data goes at QoS 0, so a broker or link may
drop some) are counted (`take_lost`; `_count_lost` says how); they are not asked for again (a rebirth would not
bring them back). Not read: metric metadata.

History: a metric's `is_historical` says it was stored and forwarded. A data message whose every value read is
history is marked so (`BatchDecode.historical`), and a birth's (`BatchDecode.birth`): the daemon holds a birth's
values back while the history that follows it comes in (`runtime.birth_hold`).

Host STATE: with `topics.sparkplug_host_id`, the daemon is a Sparkplug host application of that id. Its STATE
(`host_state_topic`, payload `host_state`: JSON `{"online": bool, "timestamp": ms}`) is kept by
`runtime.presence`; `read_state` reads one.
"""

from __future__ import annotations

import json
from typing import Any

from scada_tcn.runtime.hold import UNREAD
from scada_tcn.runtime.protowire import WireError
from scada_tcn.runtime.sparkplug_payload import (
    BOOLEAN_VALUE,
    DOUBLE_VALUE,
    FLOAT_VALUE,
    INT_VALUE,
    INTEGERS,
    LONG_VALUE,
    STRING_VALUE,
    Metric,
    integer_value,
    parse_payload,
    rebirth_payload,
)
from scada_tcn.runtime.telemetry import (
    NOT_READ,
    BatchDecode,
    ChannelValue,
    Rejection,
    TelemetryDecoder,
    grouped,
    parse_timestamp_ns,
)

__all__ = [
    "BIRTH_METRICS_KEPT",
    "DEVICES_KEPT",
    "NAMESPACE",
    "SparkplugDecoder",
    "host_state",
    "host_state_topic",
    "rebirth_request",
    "read_state",
    "topic_filters",
]

NAMESPACE = "spBv1.0"
NODE_TYPES = ("NBIRTH", "NDATA", "NDEATH")
DEVICE_TYPES = ("DBIRTH", "DDATA", "DDEATH")
GOOD = 192  # Sparkplug's Quality property: 0 BAD, 192 GOOD, 500 STALE
BIRTH_METRICS_KEPT = 1 << 18  # names and aliases kept from births, in all (1,000 turbines x 131 aliased metrics)
_PROTOCOL = ("bdSeq",)
_PROTOCOL_PREFIXES = ("Node Control/", "Device Control/", "Node Info/", "Device Info/", "Properties/")
_NAME_KEPT_CHARS = 256  # a metric's name is kept (and looked up) this long, no longer
_NODE_CHARS = 256  # an edge node id longer than this is refused (Sparkplug ids are short; they are kept)
_STATE_BYTES = 256  # a longer payload on a STATE topic is not read as one
_STATE_MS = 1 << 53  # a STATE timestamp (epoch ms) at or past this is none (JSON's exact integers end there)
_NODES_KEPT = 16_384  # edge nodes whose session and sequence number are kept, the most recent
DEVICES_KEPT = 1 << 16  # devices kept to name at their node's death (`_seen`)
_TYPE_NAMES = {1: "Int8", 2: "Int16", 3: "Int32", 4: "Int64", 5: "UInt8", 6: "UInt16", 7: "UInt32", 8: "UInt64",
               9: "Float", 10: "Double", 11: "Boolean", 12: "String", 13: "DateTime", 14: "Text", 15: "UUID",
               16: "DataSet", 17: "Bytes", 18: "File", 19: "Template"}  # fmt: skip
_FLOATS, _TEXTS = (9, 10), (12, 14)  # the datatypes sent as float_value / double_value, and as string_value
_FIELD_NAMES = {INT_VALUE: "an integer", LONG_VALUE: "an integer", FLOAT_VALUE: "a Float", DOUBLE_VALUE: "a Double",
                BOOLEAN_VALUE: "a Boolean", STRING_VALUE: "a string", 16: "bytes", 17: "a DataSet", 18: "a Template",
                19: "an extension"}  # fmt: skip
_Entry = tuple[str, int | None, int | None]  # a name as a birth gave it: (name, channel or NOT_READ or None, datatype)


def topic_filters(group: str) -> list[str]:
    """The MQTT filters of a Sparkplug group's node and device messages that the daemon reads."""
    return [f"{NAMESPACE}/{group}/{t}/+" for t in NODE_TYPES] + [f"{NAMESPACE}/{group}/{t}/+/+" for t in DEVICE_TYPES]


def command_filter(group: str) -> str:
    """The MQTT filter of the group's node commands, where the daemon publishes its rebirth requests."""
    return f"{NAMESPACE}/{group}/NCMD/+"


def rebirth_request(group: str, node: str, now_ms: int) -> tuple[str, bytes]:
    """(topic, payload) of the NCMD that asks edge node `node` to publish its births again."""
    return f"{NAMESPACE}/{group}/NCMD/{node}", rebirth_payload(now_ms)


def host_state_topic(host_id: str) -> str:
    """The topic of Sparkplug host application `host_id`'s STATE (its birth and death certificates)."""
    return f"{NAMESPACE}/STATE/{host_id}"


def host_state(online: bool, ts_ms: int) -> bytes:
    """A host application's STATE payload (Sparkplug 3.0, 4.2.3): UTF-8 JSON with `online` and `timestamp`."""
    return json.dumps({"online": bool(online), "timestamp": int(ts_ms)}, separators=(",", ":")).encode()


def read_state(payload: bytes) -> tuple[bool, int] | None:
    """A host application's STATE payload as (online, timestamp ms); None for one that is no STATE (nor is one over
    `_STATE_BYTES`: a STATE is some 40 bytes, and a short payload cannot nest too deep to parse; nor one stamped
    before 1970 or at 2**53 ms or later)."""
    if len(payload) > _STATE_BYTES:
        return None
    try:
        doc = json.loads(payload)
    except ValueError:  # not JSON, or not UTF-8: no STATE
        return None
    if not isinstance(doc, dict):
        return None
    online, ts = doc.get("online"), doc.get("timestamp")
    if not isinstance(online, bool) or isinstance(ts, bool) or not isinstance(ts, int) or not 0 <= ts < _STATE_MS:
        return None
    return online, ts


def _metric_at(place: tuple[int, str | int | None]) -> dict[str, Any]:
    """A refusal's place in a Sparkplug message: the metric's number, and its name (or alias) when it has one."""
    n, label = place
    if isinstance(label, str):
        return {"metric": n, "name": label[:100]}
    return {"metric": n} if label is None else {"metric": n, "alias": label}


def _keep(record: dict[str, int], node: str, value: int) -> None:
    """Record a node's value (its session, its last sequence number) as its newest, the oldest node's dropped
    beyond _NODES_KEPT: node ids come from topics, whatever publishers make up."""
    record.pop(node, None)
    record[node] = value
    if len(record) > _NODES_KEPT:
        del record[next(iter(record))]


def _bdseq(metrics: list[Metric]) -> int | None:
    """A node birth's or death's `bdSeq` (the session it belongs to), None when it sends none as an integer."""
    for m in metrics:
        if m.name == "bdSeq" and m.value is not None and m.value[0] in (INT_VALUE, LONG_VALUE):
            return m.value[1]  # type: ignore[return-value]
    return None


class SparkplugDecoder:
    """Sparkplug B messages of one group -> samples; remembers the births' names, aliases and datatypes."""

    def __init__(self, decoder: TelemetryDecoder, group: str) -> None:
        self.decoder = decoder
        self.group = group
        self._prefix = f"{NAMESPACE}/{group}/"
        # edge node -> device (None: the node's own metrics) -> {alias or name: _Entry}
        self._births: dict[str, dict[str | None, dict[int | str, _Entry]]] = {}
        self._kept = 0  # names and aliases in _births, in all (an empty birth counts 1)
        self._sessions: dict[str, int] = {}  # edge node -> the bdSeq of its last NBIRTH (`_keep`)
        self._rebirth: set[str] = set()
        self._seqs: dict[str, int] = {}  # edge node -> the sequence number of its last message (`_keep`)
        self._lost = 0  # messages the sequence numbers skipped, since take_lost
        self._deaths: list[str] = []  # the turbines of the deaths since take_deaths
        self._node_deaths: list[str] = []  # ... those an NDEATH named
        self.node_deaths: list[str] = []  # of the last take_deaths, those an NDEATH named
        self._devices: dict[str, dict[str, None]] = {}  # edge node -> its devices seen (`_seen`, `resume_devices`)
        self._n_devices = 0  # devices in _devices, in all

    def reads(self, topic: str) -> bool:
        """Whether `topic` is one of this group's (the daemon routes it here)."""
        return topic.startswith(self._prefix)

    def rebirths(self) -> list[str]:
        """The edge nodes whose rebirth is wanted since the last call (data that no birth explains)."""
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
        size = 4 if kind in NODE_TYPES else 5 if kind in DEVICE_TYPES else 0
        if not self.reads(topic) or len(levels) != size or len(levels[3]) > _NODE_CHARS:
            return Rejection("bad_topic", f"{topic[:200]!r} is not spBv1.0/{self.group}/<N or D message>/<node>"
                             f"[/<device>] with a node id of at most {_NODE_CHARS} characters")  # fmt: skip
        node, device = levels[3], (levels[4] if size == 5 else None)
        try:
            sent_ms, seq, metrics = parse_payload(payload)
        except WireError as e:
            if kind.endswith("DEATH"):
                self._died(node, device)
            if kind.endswith("DEATH") or kind == "NBIRTH":  # the topic says it all: a session ends or starts
                self._forget(node, device)
            if kind.endswith("DEATH"):
                return BatchDecode([], [], _metric_at)
            return Rejection("malformed_protobuf", f"not a Sparkplug B payload: {e}"[:300])
        if kind == "NDEATH":
            session = _bdseq(metrics)
            if session is None or session == self._sessions.get(node, session):  # not an older session's will
                self._died(node, None)
                self._forget(node, None)
            return BatchDecode([], [], _metric_at)
        if kind == "NBIRTH":
            self._forget(node, None)  # the old session's births, bdSeq and sequence numbers
            session = _bdseq(metrics)
            if session is not None:
                _keep(self._sessions, node, session)
        self._count_lost(node, seq, kind == "NBIRTH")
        if kind == "DDEATH":
            self._died(node, device)
            self._forget(node, device)
            return BatchDecode([], [], _metric_at)
        tid = d.check_turbine(device if device is not None else node)  # refuses the message if it has a channel
        if device is not None and isinstance(tid, str):
            self._seen(node, device)
        birth = kind.endswith("BIRTH")
        if birth and isinstance(tid, str):
            problem = self._remember(node, device, metrics)
            if problem is not None:
                return problem
        table = self._births.get(node, {}).get(device, {})
        read: list[ChannelValue] = []
        rejected: list[tuple[tuple[int, str | int | None], Rejection]] = []
        stamps: dict[int, int | Rejection] = {}  # the message's stamps read so far: its metrics share a few
        history = not birth  # every value read is history (is_historical), so far
        for n, m in enumerate(metrics, 1):
            got = self._read(m, table, tid, birth, sent_ms, now_ns, stamps)
            if isinstance(got, Rejection):
                if got.reason in ("bad_turbine_id", "unknown_turbine"):  # the message's turbine: refused whole
                    return got
                if got.reason == "no_birth":
                    if isinstance(tid, Rejection):  # a turbine not taken: nothing to read, nothing to ask
                        continue
                    self._rebirth.add(node)
                rejected.append(((n, m.name if m.name is not None else m.alias), got))
            elif got is not None:
                read.append(got)
                history = history and m.is_historical
        return BatchDecode(grouped(read, len(d.channels)), rejected, _metric_at, birth, history and bool(read))

    def take_deaths(self) -> list[str]:
        """The turbines whose values a death made stale since the last call, in order: a DDEATH's device, an
        NDEATH's node and the devices its births named or whose messages it sent (before a restart too:
        `resume_devices`).
        `node_deaths` then holds those an NDEATH named (their node may have stored what it read, to forward)."""
        deaths, self._deaths = self._deaths, []
        self.node_deaths, self._node_deaths = self._node_deaths, []
        return deaths

    def _died(self, node: str, device: str | None) -> None:
        """Note the turbines a death makes stale (before its births are forgotten); ids the id rule or allow-list
        refuse are none of the fleet's."""
        if device is not None:
            names = [device]
            devices = self._devices.get(node, {})
            if device in devices:
                del devices[device]
                self._n_devices -= 1
        else:
            born = (d for d in self._births.get(node, {}) if d is not None)
            names = list(dict.fromkeys([node, *born, *self._devices.get(node, {})]))
            self._n_devices -= len(self._devices.pop(node, {}))
        taken = [t for t in names if isinstance(self.decoder.check_turbine(t), str)]
        self._deaths += taken
        if device is None:
            self._node_deaths += taken

    def _seen(self, node: str, device: str) -> None:
        """Remember a device of a turbine taken as the node's, so that the node's death names it even when the
        daemon never saw its birth: at most DEVICES_KEPT in all, the least recently heard node's dropped first."""
        devices = self._devices.pop(node, {})
        self._devices[node] = devices  # the most recent last
        if device not in devices:
            devices[device] = None
            self._n_devices += 1
        while self._n_devices > DEVICES_KEPT:
            self._n_devices -= len(self._devices.pop(next(iter(self._devices))))

    def devices(self) -> dict[str, list[str]]:
        """Each edge node's devices that its death would name (`take_deaths`): those its births named and those
        whose messages it sent, for the daemon's state file (`resume_devices`)."""
        nodes = dict.fromkeys([*self._births, *self._devices])
        known = {n: [*(d for d in self._births.get(n, {}) if d is not None), *self._devices.get(n, {})] for n in nodes}
        return {n: list(dict.fromkeys(ds)) for n, ds in known.items() if ds}

    def resume_devices(self, devices: dict[str, list[str]]) -> None:
        """Remember `devices()` of an earlier run (after a restart, an edge node's death names the devices it had
        before, though no message of theirs has come since), within DEVICES_KEPT as `_seen` keeps them."""
        for node, names in devices.items():
            for device in names:
                self._seen(node, device)

    def take_lost(self) -> int:
        """Messages the edge nodes' sequence numbers say were lost since the last call (see `_count_lost`)."""
        lost, self._lost = self._lost, 0
        return lost

    def _count_lost(self, node: str, seq: int | None, starts: bool) -> None:
        """Count the messages an edge node's sequence number skipped: each message of a node after its NBIRTH
        (which `starts` the count) carries the next, modulo 256 (DDEATH too; NDEATH none). A number fewer than 128
        behind the next is a message delivered again (a reconnect's redelivery), not a gap: neither counted nor
        followed."""
        if seq is None or seq > 255:
            return
        last = self._seqs.get(node)
        if not starts and last is not None:
            skipped = (seq - last - 1) % 256
            if skipped >= 128:
                return
            self._lost += skipped
        _keep(self._seqs, node, seq)

    def _forget(self, node: str, device: str | None) -> None:
        """Forget a device's birth, or (device None) the node's and all its devices'."""
        if device is None:
            tables = self._births.pop(node, {}).values()
            self._sessions.pop(node, None)
            self._seqs.pop(node, None)
        else:
            devices = self._births.get(node, {})
            table = devices.pop(device, None)
            tables = [] if table is None else [table]  # type: ignore[assignment]
            if not devices:
                self._births.pop(node, None)
        self._kept -= sum(max(1, len(t)) for t in tables)

    def _remember(self, node: str, device: str | None, metrics: list[Metric]) -> Rejection | None:
        """A birth's names, aliases and datatypes, replacing the device's (or node's) earlier ones."""
        if device is not None:
            self._forget(node, device)
        table: dict[int | str, _Entry] = {}
        for m in metrics:
            if m.name is None:
                continue
            entry = (m.name[:_NAME_KEPT_CHARS], self._channel(m.name), m.datatype)
            table[entry[0]] = entry
            if m.alias is not None:
                table[m.alias] = entry
        if self._kept + max(1, len(table)) > BIRTH_METRICS_KEPT:
            return Rejection("oversized", f"a birth of {len(table)} names and aliases: more than the "
                             f"{BIRTH_METRICS_KEPT} kept in all")  # fmt: skip
        self._births.setdefault(node, {})[device] = table
        self._kept += max(1, len(table))
        return None

    def _channel(self, name: str) -> int | None:
        """A metric name's channel index, NOT_READ for a name not read (in ignored_keys, or Sparkplug's own), None
        for a name of no channel."""
        i = self.decoder.channel_of(name)
        if i is None and (name in _PROTOCOL or name.startswith(_PROTOCOL_PREFIXES)):
            return NOT_READ
        return i

    def _read(self, m: Metric, table: dict[int | str, _Entry], tid: str | Rejection, birth: bool,
              sent_ms: int | None, now_ns: int, stamps: dict[int, int | Rejection]
              ) -> ChannelValue | Rejection | None:  # fmt: skip
        """One metric of turbine `tid` (or why the message's turbine is refused) -> (turbine, ts ns, channel index,
        value, failed), None when it is not read, or why not (`birth`: of a birth message; `stamps`: the
        message's stamps read so far)."""
        if m.name is not None:
            entry = table.get(m.name[:_NAME_KEPT_CHARS]) or (m.name, self._channel(m.name), None)
        elif m.alias is not None and m.alias in table:
            entry = table[m.alias]
        elif m.alias is not None and not birth:
            return Rejection("no_birth", f"alias {m.alias}: no birth since the daemon started gave it (a rebirth "
                             "is asked for)")  # fmt: skip
        else:
            return Rejection("unknown_channel", "a metric without a name" + ("" if birth else " or an alias"))
        name, i, born_type = entry
        if i == NOT_READ:
            return None
        if i is None:
            return self.decoder.no_channel(f"metric {name[:100]!r} is not a channel", "metrics")
        if isinstance(tid, Rejection):
            return tid
        ms = m.ts_ms if m.ts_ms is not None else sent_ms
        if ms is None:
            return Rejection("missing_ts", f"metric {name[:100]!r}: no timestamp, nor the payload's")
        ts = stamps.get(ms)
        if ts is None:
            ts = stamps[ms] = self._stamp(ms, now_ns)
        if isinstance(ts, Rejection):
            return ts
        if isinstance(m.quality, str):
            return Rejection("bad_value_type", f"metric {name[:100]!r}: {m.quality}")
        if m.quality is not None and m.quality != GOOD:  # whatever value is beside it (null, stale, 0)
            return tid, ts, i, UNREAD, True
        if m.is_null:
            return tid, ts, i, UNREAD, False
        datatype = m.datatype if m.datatype is not None or birth else born_type  # a birth's own, as it gives it
        x = self._number(name[:100], m, datatype, birth)
        return x if isinstance(x, Rejection) else (tid, ts, i, x, False)

    def _stamp(self, ms: int, now_ns: int) -> int | Rejection:
        """A metric's stamp in epoch ms -> ns, or why it is refused (beyond the epoch or the clock checks)."""
        ts = parse_timestamp_ns(ms, 1000)
        if isinstance(ts, str):
            return Rejection(ts, f"timestamp {ms}: epoch milliseconds expected (microseconds or nanoseconds?)")
        return self.decoder.clock_checked(ts, f"{ms} ms", now_ns, "timestamp")

    def _number(self, name: str, m: Metric, datatype: int | None, birth: bool) -> float | Rejection:
        """A metric's value as a float by its datatype, or why it is none."""
        if m.value is None:
            return Rejection("missing_values", f"metric {name!r}: no value and not is_null")
        field, raw = m.value
        known = datatype in _TYPE_NAMES
        if field in (FLOAT_VALUE, DOUBLE_VALUE) and (not known or datatype in _FLOATS):
            return self.decoder.number(name, raw)
        if field in (INT_VALUE, LONG_VALUE) and datatype in INTEGERS:
            x = integer_value(raw, field, datatype)  # type: ignore[arg-type]
            if x is None:
                return Rejection("bad_value_type", f"metric {name!r}: {raw} lies outside {_TYPE_NAMES[datatype]}")
            return float(x)
        if field in (INT_VALUE, LONG_VALUE) and not known:
            return Rejection("bad_value_type" if birth else "no_birth", f"metric {name!r}: an integer whose "
                             "datatype no birth gave: its sign cannot be told")  # fmt: skip
        if field == STRING_VALUE and (not known or datatype in _TEXTS):
            return self.decoder.number(name, raw.decode("utf-8", "replace"))  # type: ignore[union-attr]
        what = _FIELD_NAMES.get(field, f"field {field}")
        kind = f" of datatype {_TYPE_NAMES[datatype]}" if known else ""  # type: ignore[index]
        return Rejection("bad_value_type", f"metric {name!r}: {what}{kind}, not a number")
