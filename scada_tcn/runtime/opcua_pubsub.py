"""OPC UA PubSub over MQTT in JSON (OPC 10000-14, 7.2.5): NetworkMessages of DataSetMessages, as OPC Publisher
(`--mm PubSub --me Json`) and other PubSub publishers write them, on `topics.telemetry_batch`
(`ingest.batch_format: opcua`).

Contract
--------
The payload (at most `ingest.max_batch_payload_bytes`, UTF-8 JSON) is a NetworkMessage, a JSON array of them (a
publisher's batch), or a DataSetMessage alone (a writer without the NetworkMessage header):

    {"MessageId": "27", "MessageType": "ua-data", "PublisherId": "opc.tcp://scada:4840_7F",
     "Messages": [{"DataSetWriterName": "WT01", "SequenceNumber": 27, "MetaDataVersion": {...},
                   "MessageType": "ua-deltaframe", "Timestamp": "2024-01-28T00:10:00Z",
                   "Payload": {"WindSpeed": {"Value": 7.9, "SourceTimestamp": "2024-01-28T00:09:58Z"},
                               "Power": {"StatusCode": {"Code": 2150694912, "Symbol": "BadNoCommunication"},
                                         "SourceTimestamp": "2024-01-28T00:09:58Z"}}}]}

* A NetworkMessage of another `MessageType` (`ua-metadata`, `ua-status`, ...) holds no values and is skipped, as
  is a DataSetMessage without `Payload` (a keep-alive). `Messages` may be one object (SingleDataSetMessage).
* The turbine of a DataSetMessage is the header field `mapping.opcua_turbine` names (`DataSetWriterName` by
  default; or `DataSetWriterId`, `PublisherId`, `WriterGroupName`): one DataSetWriter per turbine. A
  NetworkMessage's `PublisherId` and `WriterGroupName` count as its DataSetMessages' own. A number (a UInt16
  DataSetWriterId) reads as its decimal text; then `ingest.turbines` and the id rules, as any turbine id.
* Each field of `Payload` is a tag: its name is the payload key (`mapping.columns`, `mapping.ignored_keys`), its
  content a DataValue (`Value`, `SourceTimestamp`, `StatusCode`, and `ServerTimestamp`, `SourcePicoseconds`,
  `ServerPicoseconds`, not read) read by `TagPayload` with the OPC UA StatusCode rule: Good severity is a read,
  Uncertain or Bad a failed read (`hold.UNREAD`, counted by channel), an absent StatusCode Good. A DataValue
  without `SourceTimestamp`, and a bare value (RawData or Variant fields), take the DataSetMessage's
  `Timestamp`; without either the field is refused (`missing_ts`). A DataSetMessage whose `Status` is not Good
  makes each of its fields a failed read.
* A refused field costs its value only; a refused DataSetMessage (no turbine, an unknown header field, a Payload
  that is not an object) its fields; both are placed by message and field (`{"message": n, "field": name}`). The
  values of a turbine and stamp make one sample (`telemetry.grouped`). The whole payload is refused when it is
  oversized, not UTF-8 JSON, or neither form. Never raises on bad input.
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
    parsed,
)

__all__ = ["TURBINE_FIELDS", "PubSubDecoder", "opcua_value_reader"]

TURBINE_FIELDS = ("DataSetWriterName", "DataSetWriterId", "PublisherId", "WriterGroupName")
_NETWORK_KEYS = frozenset({"MessageId", "MessageType", "PublisherId", "WriterGroupName", "DataSetClassId", "Messages"})
_DATASET_KEYS = frozenset(
    {"DataSetWriterId", "DataSetWriterName", "PublisherId", "WriterGroupName", "SequenceNumber", "MetaDataVersion",
     "MinorVersion", "Timestamp", "Status", "MessageType", "Payload"}
)  # fmt: skip
_INHERITED = ("PublisherId", "WriterGroupName")  # a NetworkMessage's header fields its DataSetMessages share


def opcua_value_reader(decoder: TelemetryDecoder) -> TagPayload:
    """The `TagPayload` of an OPC UA DataValue in JSON: `Value`, `SourceTimestamp`, the `StatusCode` rule."""
    return TagPayload(decoder, "Value", "SourceTimestamp", "StatusCode", (), ("ServerTimestamp", "SourcePicoseconds",
                      "ServerPicoseconds"), quality_rule="opcua")  # fmt: skip


class PubSubDecoder:
    """`ingest.batch_format: opcua` messages -> samples (see the module docstring)."""

    def __init__(self, decoder: TelemetryDecoder, turbine_field: str = "DataSetWriterName") -> None:
        if turbine_field not in TURBINE_FIELDS:
            raise ValueError(f"PubSubDecoder: turbine_field must be one of {TURBINE_FIELDS}, got {turbine_field!r}")
        self.decoder, self.turbine_field = decoder, turbine_field
        self.field = opcua_value_reader(decoder)

    def decode(self, payload: bytes, now_ns: int) -> BatchDecode | Rejection:
        """One message -> its samples and refused fields, or why it is refused whole."""
        d = self.decoder
        doc = parsed(payload, d.max_batch_payload_bytes, "max_batch_payload_bytes")
        if isinstance(doc, Rejection):
            return doc
        messages = self._dataset_messages(doc)
        if isinstance(messages, Rejection):
            return messages
        read: list[ChannelValue] = []
        rejected: list[tuple[tuple[int, str], Rejection]] = []
        for n, msg in enumerate(messages, 1):
            self._read(n, msg, now_ns, read, rejected)
        return BatchDecode(grouped(read, len(d.channels)), rejected, _field_at)

    def _dataset_messages(self, doc: Any) -> list[dict[str, Any]] | Rejection:
        """The DataSetMessages of a payload, each with its NetworkMessage's shared header fields, or why the payload
        is refused."""
        form = ("an OPC UA PubSub JSON NetworkMessage ({MessageType: ua-data, Messages: [...]}), an array of them, "
                "or a DataSetMessage ({DataSetWriterName, Payload, ...}) (ingest.batch_format: opcua)")  # fmt: skip
        if isinstance(doc, dict) and "Messages" not in doc and "MessageId" not in doc:
            return [doc]
        networks = doc if isinstance(doc, list) else [doc]
        out: list[dict[str, Any]] = []
        for net in networks:
            if not isinstance(net, dict):
                return Rejection("not_an_object", f"a NetworkMessage is a JSON {type(net).__name__}: {form}")
            if net.get("MessageType", "ua-data") != "ua-data":
                continue  # metadata, status, discovery: no values
            extra = sorted(str(k)[:40] for k in net if k not in _NETWORK_KEYS)
            if extra:
                return Rejection("unknown_key", f"NetworkMessage keys {extra[:5]}; allowed: {sorted(_NETWORK_KEYS)}")
            msgs = net.get("Messages")
            msgs = [msgs] if isinstance(msgs, dict) else msgs
            if not isinstance(msgs, list):
                return Rejection("missing_values", f"a ua-data NetworkMessage holds 'Messages': {form}")
            shared = {k: net[k] for k in _INHERITED if k in net}
            out += [{**shared, **m} if isinstance(m, dict) else m for m in msgs]
        return out

    def _read(self, n: int, msg: Any, now_ns: int, read: list, rejected: list) -> None:
        """DataSetMessage `n`'s values into `read`, its refusals into `rejected`."""
        if not isinstance(msg, dict):
            rejected.append(((n, ""), Rejection("not_an_object", f"a DataSetMessage is a JSON {type(msg).__name__}")))
            return
        extra = sorted(str(k)[:40] for k in msg if k not in _DATASET_KEYS)
        if extra:
            why = f"DataSetMessage keys {extra[:5]}; allowed: {sorted(_DATASET_KEYS)}"
            rejected.append(((n, ""), Rejection("unknown_key", why)))
            return
        payload = msg.get("Payload")
        if payload is None or msg.get("MessageType") == "ua-keepalive":
            return
        raw = msg.get(self.turbine_field)
        if raw is None:
            why = f"no {self.turbine_field!r}, which names the turbine (mapping.opcua_turbine)"
            rejected.append(((n, ""), Rejection("bad_turbine_id", why)))
            return
        tid = self.decoder.check_turbine(str(raw) if type(raw) is int else raw)
        if isinstance(tid, Rejection) or not isinstance(payload, dict):
            rejected.append(
                (
                    (n, ""),
                    tid
                    if isinstance(tid, Rejection)
                    else Rejection(
                        "not_an_object", f"Payload is a JSON {type(payload).__name__}: an object of field name -> value"
                    ),
                )
            )
            return  # fmt: skip
        failed = self._failed(msg.get("Status"))
        if isinstance(failed, Rejection):
            rejected.append(((n, ""), failed))
            return
        stamp = msg.get("Timestamp")
        d = self.decoder
        for key, field in payload.items():
            i = d.channel_of(key)
            if i == NOT_READ:
                continue
            if i is None:
                got: Any = d.no_channel(f"field {key[:60]!r} is not a channel", "fields")
            else:
                value = field if isinstance(field, dict) else {"Value": field}
                if "SourceTimestamp" not in value and stamp is not None:
                    value = {**value, "SourceTimestamp": stamp}
                got = self.field.read(tid, i, value, now_ns)
            if isinstance(got, Rejection):
                rejected.append(((n, key), got))
            else:
                read.append(got if not failed else (*got[:3], UNREAD, True))

    def _failed(self, status: Any) -> bool | Rejection:
        """Whether a DataSetMessage's `Status` makes its fields failed reads (absent: Good)."""
        if status is None:
            return False
        good = opcua_good(status, "Status")
        return good if isinstance(good, Rejection) else not good


def _field_at(place: tuple[int, str]) -> dict[str, Any]:
    """A refusal's place in an OPC UA message: its DataSetMessage (from 1) and field."""
    n, key = place
    return {"message": n, **({"field": key[:100]} if key else {})}
