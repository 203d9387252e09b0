"""OPC UA PubSub over MQTT in JSON (OPC 10000-14, 7.2.5): NetworkMessages of DataSetMessages, as OPC Publisher
(`--mm PubSub --me Json`) and other PubSub publishers write them, on `topics.telemetry_batch`
(`ingest.batch_format: opcua`).

Contract
--------
The payload (at most `ingest.max_batch_payload_bytes`, UTF-8 JSON) is a NetworkMessage, or DataSetMessages
without it (a writer whose NetworkMessage header is off), or a JSON array of either (a publisher's batch): an
object holding `Messages` or `MessageId` is a NetworkMessage, any other a DataSetMessage.

    {"MessageId": "27", "MessageType": "ua-data", "PublisherId": "opc.tcp://scada:4840_7F",
     "DataSetWriterGroup": "farm1",
     "Messages": [{"DataSetWriterName": "WT01", "SequenceNumber": 27, "MetaDataVersion": {...},
                   "MessageType": "ua-deltaframe", "Timestamp": "2024-01-28T00:10:00Z",
                   "Payload": {"WindSpeed": {"Value": 7.9, "SourceTimestamp": "2024-01-28T00:09:58Z"},
                               "Power": {"StatusCode": {"Code": 2150694912, "Symbol": "BadNoCommunication"},
                                         "SourceTimestamp": "2024-01-28T00:09:58Z"}}}]}

* A NetworkMessage's `MessageType` (case aside) is `ua-data` (or absent), or one that holds no values
  (`ua-metadata`, `ua-status`, `ua-application`, `ua-endpoints`, `ua-connection`, `ua-keepalive`: skipped); any
  other refuses the payload. `Messages` is an array, or one object (SingleDataSetMessage).
* A DataSetMessage of type `ua-keepalive`, `ua-event` or `ua-condition` holds no telemetry (skipped), nor does
  one without `Payload`. The turbine is the header field `mapping.opcua_turbine` names (`DataSetWriterName` by
  default; `DataSetWriterId`, `PublisherId`, `WriterGroupName`, or OPC Publisher's `DataSetWriterGroup`): one
  DataSetWriter per turbine; the NetworkMessage's `PublisherId`, `WriterGroupName` and `DataSetWriterGroup`
  count as its DataSetMessages' own. A number (a UInt16 DataSetWriterId) reads as its decimal text; then
  `ingest.turbines` and the id rules, as any turbine id.
* Each field of `Payload` is a tag: its name is the payload key (`mapping.columns`, `mapping.ignored_keys`).
  A field that is an object is a DataValue (`Value`, `SourceTimestamp`, the status as `StatusCode`, or `Status`
  as OPC 10000-6 names it; `ServerTimestamp`, `UaType`, `Dimensions` and the picoseconds, either spelling, not
  read) read by `TagPayload` with the OPC UA StatusCode rule (`tag_topics.opcua_good`): Good severity is a read,
  Uncertain or Bad a failed read (`hold.UNREAD`, counted by channel), an absent or null status Good; a value OPC
  UA's JSON writes as text (an Int64's digits, "NaN") as `tag_topics.opcua_number` reads it. Any other field is a
  bare value (RawData or non-reversible Variant fields), whose status is the DataSetMessage's `Status`: one not
  Good makes it a failed read. A DataValue without `SourceTimestamp`, and a bare value, take the DataSetMessage's
  `Timestamp`; without either the field is refused (`missing_ts`).
* A refused field costs its value only; a refused DataSetMessage (no turbine, an unknown header key, a Payload
  that is not an object) its fields; both are placed by message (counted from 1 across the payload's
  NetworkMessages) and field (`{"message": n, "field": name}`). The values of a turbine and stamp make one
  sample (`telemetry.grouped`). The whole payload is refused when it is oversized, not UTF-8 JSON, empty, or
  holds a NetworkMessage that is not an object, has a key the mapping does not know, or a type it does not read.
  Never raises on bad input.
"""

from __future__ import annotations

from typing import Any

from scada_tcn.runtime.hold import UNREAD
from scada_tcn.runtime.tag_topics import TagPayload, opcua_good
from scada_tcn.runtime.telemetry import (
    NOT_READ,
    BatchDecode,
    ChannelValue,
    Rejection,
    TelemetryDecoder,
    grouped,
    keys_checked,
    parsed,
    shown,
)

__all__ = ["TURBINE_FIELDS", "PubSubDecoder"]

TURBINE_FIELDS = ("DataSetWriterName", "DataSetWriterId", "PublisherId", "WriterGroupName", "DataSetWriterGroup")
_INHERITED = ("PublisherId", "WriterGroupName", "DataSetWriterGroup")  # a NetworkMessage's, its DataSetMessages' too
_NETWORK_KEYS = frozenset({"MessageId", "MessageType", "DataSetClassId", "Messages", *_INHERITED})
_DATASET_KEYS = frozenset(
    {"DataSetWriterId", "DataSetWriterName", "SequenceNumber", "MetaDataVersion", "MinorVersion", "Timestamp",
     "Status", "MessageType", "Payload", *_INHERITED}
)  # fmt: skip
_NO_VALUES = frozenset({"ua-metadata", "ua-status", "ua-application", "ua-endpoints", "ua-connection", "ua-keepalive"})
_NOT_TELEMETRY = frozenset({"ua-keepalive", "ua-event", "ua-condition"})  # DataSetMessages of these hold none
_UNREAD_KEYS = ("ServerTimestamp", "SourcePicoseconds", "ServerPicoseconds", "SourcePicoSeconds",
                "ServerPicoSeconds", "UaType", "Dimensions")  # fmt: skip
Refusals = list[tuple[tuple[int, str], Rejection]]


class PubSubDecoder:
    """`ingest.batch_format: opcua` messages -> samples (see the module docstring)."""

    def __init__(self, decoder: TelemetryDecoder, turbine_field: str = "DataSetWriterName") -> None:
        if turbine_field not in TURBINE_FIELDS:
            raise ValueError(f"PubSubDecoder: turbine_field must be one of {TURBINE_FIELDS}, got {turbine_field!r}")
        self.decoder, self.turbine_field = decoder, turbine_field
        self.field = TagPayload(decoder, "Value", "SourceTimestamp", "StatusCode", (), _UNREAD_KEYS, "opcua")

    def decode(self, payload: bytes, now_ns: int) -> BatchDecode | Rejection:
        """One message -> its samples and refused fields, or why it is refused whole."""
        d = self.decoder
        doc = parsed(payload, d.max_batch_payload_bytes, "max_batch_payload_bytes")
        if isinstance(doc, Rejection):
            return doc
        messages = _dataset_messages(doc)
        if isinstance(messages, Rejection):
            return messages
        read: list[ChannelValue] = []
        rejected: Refusals = []
        for n, msg in enumerate(messages, 1):
            self._read(n, msg, now_ns, read, rejected)
        return BatchDecode(grouped(read, len(d.channels)), rejected, _field_at)

    def _read(self, n: int, msg: Any, now_ns: int, read: list[ChannelValue], rejected: Refusals) -> None:
        """DataSetMessage `n`'s values into `read`, its refusals into `rejected`."""
        msg = keys_checked(msg, _DATASET_KEYS, "a DataSetMessage")
        if isinstance(msg, Rejection):
            rejected.append(((n, ""), msg))
            return
        payload = msg.get("Payload")
        kind = msg.get("MessageType")
        if payload is None or isinstance(kind, str) and kind.lower() in _NOT_TELEMETRY:
            return
        tid = self._turbine(msg)
        if not isinstance(tid, Rejection) and not isinstance(payload, dict):
            tid = Rejection("not_an_object", f"Payload is a JSON {type(payload).__name__}: an object of field name -> "
                            "value")  # fmt: skip
        failed = tid if isinstance(tid, Rejection) else _not_good(msg.get("Status"), "Status")
        if isinstance(failed, Rejection):
            rejected.append(((n, ""), failed))
            return
        d = self.decoder
        stamp = msg.get("Timestamp")
        checked = None if stamp is None else d.stamp(stamp, now_ns, "Timestamp")  # the stamp of fields without one
        for key, field in payload.items():
            i = d.channel_of(key)
            if i == NOT_READ:
                continue
            got = d.no_channel(f"field {key[:60]!r} is not a channel", "fields") if i is None else self._value(
                tid, i, field, checked, failed, now_ns)  # fmt: skip
            if isinstance(got, Rejection):
                rejected.append(((n, key), got))
            else:
                read.append(got)

    def _turbine(self, msg: dict[str, Any]) -> str | Rejection:
        """The turbine a DataSetMessage's header names (`turbine_field`), or why it names none this reads."""
        raw = msg.get(self.turbine_field)
        if raw is None:
            return Rejection("bad_turbine_id", f"no {self.turbine_field!r}, which names the turbine "
                             "(mapping.opcua_turbine)")  # fmt: skip
        return self.decoder.check_turbine(str(raw) if type(raw) is int else raw)

    def _value(
        self, tid: str, i: int, field: Any, checked: int | Rejection | None, failed: bool, now_ns: int
    ) -> ChannelValue | Rejection:
        """One field -> its value: a DataValue by its own status, a bare value by the DataSetMessage's (`failed`);
        either stamped by the DataSetMessage's `Timestamp` (`checked`: read, None: none) when it has no own."""
        if isinstance(field, dict) and "Status" in field:  # OPC 10000-6's name; OPC Publisher writes StatusCode
            if "StatusCode" in field:
                return Rejection("unknown_key", "a DataValue with both Status and StatusCode")
            field = {("StatusCode" if k == "Status" else k): v for k, v in field.items()}
        ts_ns = None
        if not (isinstance(field, dict) and "SourceTimestamp" in field):
            if checked is None:
                return Rejection("missing_ts", "no SourceTimestamp, and no Timestamp in its DataSetMessage")
            if isinstance(checked, Rejection):
                return checked
            ts_ns = checked
        bare = not isinstance(field, dict)
        got = self.field.read(tid, i, {"Value": field} if bare else field, now_ns, ts_ns)
        return got if isinstance(got, Rejection) or not (bare and failed) else (*got[:3], UNREAD, True)


def _dataset_messages(doc: Any) -> list[Any] | Rejection:
    """The DataSetMessages of a payload, each with its NetworkMessage's shared header fields, or why the payload is
    refused whole."""
    form = ("an OPC UA PubSub JSON NetworkMessage ({MessageType: ua-data, Messages: [...]}), DataSetMessages "
            "({DataSetWriterName, Payload, ...}), or an array of either (ingest.batch_format: opcua)")  # fmt: skip
    if not isinstance(doc, (dict, list)):
        return Rejection("not_an_object", f"payload is a JSON {type(doc).__name__}: {form}")
    items = doc if isinstance(doc, list) else [doc]
    if not items or items == [{}]:
        return Rejection("missing_values", f"an empty payload: {form}")
    out: list[Any] = []
    for item in items:
        if not isinstance(item, dict) or ("Messages" not in item and "MessageId" not in item):
            out.append(item)  # a DataSetMessage (refused, if need be, as one)
            continue
        kind = item.get("MessageType", "ua-data")
        kind = kind.lower() if isinstance(kind, str) else kind
        if isinstance(kind, str) and kind in _NO_VALUES:
            continue
        if kind != "ua-data":
            return Rejection("unknown_key", f"NetworkMessage of MessageType {shown(kind, 40)}: this reads ua-data")
        net = keys_checked(item, _NETWORK_KEYS, "a NetworkMessage")
        if isinstance(net, Rejection):
            return net
        msgs = net.get("Messages")
        msgs = [msgs] if isinstance(msgs, dict) else msgs
        if not isinstance(msgs, list):
            return Rejection("missing_values", f"a ua-data NetworkMessage holds 'Messages': {form}")
        shared = {k: net[k] for k in _INHERITED if k in net}
        out += [{**shared, **m} if isinstance(m, dict) else m for m in msgs]
    return out


def _not_good(status: Any, name: str) -> bool | Rejection:
    """Whether a status (`opcua_good`) makes a value a failed read (absent: Good)."""
    if status is None:
        return False
    good = opcua_good(status, name)
    return good if isinstance(good, Rejection) else not good


def _field_at(place: tuple[int, str]) -> dict[str, Any]:
    """A refusal's place in an OPC UA message: its DataSetMessage (from 1) and field."""
    n, key = place
    return {"message": n, **({"field": key[:100]} if key else {})}
