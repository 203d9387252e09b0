"""OPC UA PubSub JSON on the batch topic (`ingest.batch_format: opcua`, `runtime.opcua_pubsub`) and OPC UA
StatusCodes as a tag's quality (`mapping.tag_payload.quality_rule: opcua`)."""

from __future__ import annotations

import json
import random
from typing import Any

import numpy as np
import pytest

from scada_tcn.runtime.daemon_config import daemon_config_from_dict
from scada_tcn.runtime.errors import ConfigError
from scada_tcn.runtime.hold import is_unread
from scada_tcn.runtime.opcua_pubsub import PubSubDecoder
from scada_tcn.runtime.tag_topics import TagObjectDecoder, TagPayload, opcua_good
from scada_tcn.runtime.telemetry import BatchDecode, Rejection, parse_timestamp_ns
from tests.test_runtime_units import _decoder

NOW = parse_timestamp_ns("2024-06-01T12:05:00Z")
AT, EARLIER = "2024-06-01T12:00:00Z", "2024-06-01T11:59:58.5Z"
BAD = {"Code": 2150694912, "Symbol": "BadNoCommunication"}  # 0x80310000
UNCERTAIN = 1083310080  # 0x40920000: UncertainLastUsableValue's severity
GOOD_MORE = 0x00A70000  # Good, with detail bits (GoodMoreData)


def _pubsub(**over: Any) -> PubSubDecoder:
    return PubSubDecoder(_decoder(allowed_turbines=["WT1", "WT2", "7"], max_batch_payload_bytes=1 << 16,
                                  ignored_keys=["State*"]), **over)  # fmt: skip


def _network(*messages: dict[str, Any], **header: Any) -> bytes:
    """A NetworkMessage as OPC Publisher writes one (`--mm PubSub --me Json`)."""
    doc = {"MessageId": "27", "MessageType": "ua-data", "PublisherId": "opc.tcp://scada:4840_7F", **header,
           "Messages": list(messages)}  # fmt: skip
    return json.dumps(doc).encode()


def _writer(name: Any, payload: Any, **header: Any) -> dict[str, Any]:
    return {"DataSetWriterName": name, "SequenceNumber": 27, "MetaDataVersion": {"MajorVersion": 1, "MinorVersion": 0},
            "MessageType": "ua-deltaframe", "Timestamp": AT, **header, "Payload": payload}  # fmt: skip


def _rows(res: BatchDecode | Rejection) -> list[tuple[str, str, list[Any], tuple[int, ...]]]:
    assert isinstance(res, BatchDecode), res
    return [(s.turbine, s.ts_ns, ["UNREAD" if is_unread(v) else None if np.isnan(v) else float(v) for v in
             s.values], s.failed) for s in res.samples]  # fmt: skip


def test_a_network_message_gives_each_writers_values_with_their_status():
    """Two DataSetWriters (turbines) in one NetworkMessage. DataValues give their SourceTimestamp; one without it,
    and a bare value, take the DataSetMessage's Timestamp. A Bad StatusCode (an object, no Value) and an Uncertain
    one (a number, beside a value) are failed reads; Good with detail bits is a read. A keep-alive, an ignored
    field and a metadata NetworkMessage hold no values."""
    wt1 = _writer("WT1", {"P": {"Value": 1500.5, "SourceTimestamp": EARLIER, "ServerTimestamp": AT},
                          "ws": {"Value": 7.9, "SourceTimestamp": EARLIER, "StatusCode": GOOD_MORE},
                          "StateCode": {"Value": 3}})  # fmt: skip
    wt2 = _writer("WT2", {"P": {"StatusCode": BAD, "SourceTimestamp": AT}, "ws": 5.5})
    wt2b = _writer("WT2", {"P": {"Value": 80.0, "StatusCode": UNCERTAIN}, "ws": {"Value": 5.6}})
    keepalive = {"DataSetWriterName": "WT1", "MessageType": "ua-keepalive", "SequenceNumber": 28}
    res = _pubsub().decode(_network(wt1, wt2, keepalive), NOW)
    t, t_early = parse_timestamp_ns(AT), parse_timestamp_ns(EARLIER)
    assert _rows(res) == [("WT1", t_early, [1500.5, 7.9], ()), ("WT2", t, ["UNREAD", 5.5], (0,))]
    assert _rows(_pubsub().decode(_network(wt2b), NOW)) == [("WT2", t, ["UNREAD", 5.6], (0,))]
    meta = json.dumps({"MessageId": "1", "MessageType": "ua-metadata", "PublisherId": "x", "DataSetWriterId": 1,
                       "MetaData": {}})  # fmt: skip
    skipped = _pubsub().decode(meta.encode(), NOW)
    assert isinstance(skipped, BatchDecode) and (skipped.samples, skipped.rejected) == ([], [])


def test_the_forms_of_a_payload_and_the_turbines_header_field():
    """An array of NetworkMessages (a publisher's batch), `Messages` as one object (SingleDataSetMessage), and a
    DataSetMessage alone read alike. `mapping.opcua_turbine` picks the header field naming the turbine: a UInt16
    DataSetWriterId reads as its decimal text, and a NetworkMessage's PublisherId counts as its DataSetMessages'."""
    t = parse_timestamp_ns(AT)
    one = _writer("WT1", {"P": 10.0})
    want = [("WT1", t, [10.0, None], ())]
    for payload in (
        json.dumps([json.loads(_network(one))]).encode(),
        json.dumps({**json.loads(_network()), "Messages": one}).encode(),
        json.dumps(one).encode(),
    ):
        assert _rows(_pubsub().decode(payload, NOW)) == want  # fmt: skip
    by_id = {**_writer(None, {"P": 10.0}), "DataSetWriterId": 7}
    del by_id["DataSetWriterName"]
    assert _rows(_pubsub(turbine_field="DataSetWriterId").decode(_network(by_id), NOW)) == [("7", t, [10.0, None],
                                                                                            ())]  # fmt: skip
    published = _pubsub(turbine_field="PublisherId").decode(_network(by_id, PublisherId="WT2"), NOW)
    assert _rows(published) == [("WT2", t, [10.0, None], ())]
    with pytest.raises(ValueError, match="turbine_field must be one of"):
        _pubsub(turbine_field="NodeId")


@pytest.mark.parametrize(
    "message,place,reason",
    [
        (_writer("WT9", {"P": 1.0}), {"message": 1}, "unknown_turbine"),
        (
            {k: v for k, v in _writer("WT1", {"P": 1.0}).items() if k != "DataSetWriterName"},
            {"message": 1},
            "bad_turbine_id",
        ),
        (_writer("WT1", {"P": 1.0}, Extra=1), {"message": 1}, "unknown_key"),
        (_writer("WT1", [1.0]), {"message": 1}, "not_an_object"),
        (_writer("WT1", {"P": 1.0}, Status="Bad"), {"message": 1}, "bad_value_type"),
        (_writer("WT1", {"Pitch": 1.0}), {"message": 1, "field": "Pitch"}, "unknown_channel"),
        (_writer("WT1", {"P": {"Value": 1.0, "StatusCode": "Bad"}}), {"message": 1, "field": "P"}, "bad_value_type"),
        (_writer("WT1", {"P": {"Value": 1.0, "StatusCode": 1 << 32}}), {"message": 1, "field": "P"}, "bad_value_type"),
        (_writer("WT1", {"P": {"Type": 11, "Body": 1.0}}), {"message": 1, "field": "P"}, "unknown_key"),
        (_writer("WT1", {"P": {"Value": "x"}}), {"message": 1, "field": "P"}, "bad_value_type"),
        (
            _writer("WT1", {"P": {"Value": 1.0, "SourceTimestamp": "2999-01-01T00:00:00Z"}}),
            {"message": 1, "field": "P"},
            "ts_in_future",
        ),
        (
            {k: v for k, v in _writer("WT1", {"P": 1.0}).items() if k != "Timestamp"},
            {"message": 1, "field": "P"},
            "missing_ts",
        ),
        (_writer("WT1", {"P": 1.0}, Timestamp="yesterday"), {"message": 1, "field": "P"}, "bad_timestamp"),
    ],
)
def test_a_refused_field_or_message_costs_only_its_values(message, place, reason):
    """Each refusal is placed by DataSetMessage and field; the other writer's values in the same NetworkMessage
    are read."""
    res = _pubsub().decode(_network(message, _writer("WT2", {"ws": 4.0})), NOW)
    assert _rows(res) == [("WT2", parse_timestamp_ns(AT), [None, 4.0], ())]
    assert [(res.where(p), r.reason) for p, r in res.rejected] == [(place, reason)]


def test_a_message_status_fails_its_bare_values_and_a_datavalue_has_its_own():
    """A DataSetMessage whose Status is not Good (here Uncertain) makes its bare values failed reads; a DataValue
    keeps its own status (OPC Publisher sets Status to the first field's that is not Good). OPC 10000-6 names a
    DataValue's status `Status`, OPC Publisher `StatusCode`: both read, not both at once. A Symbol alone is judged
    by its first word; the other unread DataValue keys (1.05's UaType, 1.04's picoseconds spelling) pass. A Good
    DataValue without Value (OPC UA's JSON leaves a null out) is a null value."""
    t = parse_timestamp_ns(AT)
    res = _pubsub().decode(_network(_writer("WT1", {"P": 1.0, "ws": {"Value": 2.0, "SourceTimestamp": AT}},
                                            Status=UNCERTAIN)), NOW)  # fmt: skip
    assert _rows(res) == [("WT1", t, ["UNREAD", 2.0], (0,))]
    spec = {"P": {"Value": 1.0, "Status": {"Code": 1073741824, "Symbol": "Uncertain"}, "SourceTimestamp": AT},
            "ws": {"UaType": 11, "Value": 3.0, "SourceTimestamp": AT, "SourcePicoSeconds": 5}}  # fmt: skip
    assert _rows(_pubsub().decode(_network(_writer("WT1", spec)), NOW)) == [("WT1", t, ["UNREAD", 3.0], (0,))]
    symbol = {"P": {"Value": 1.0, "StatusCode": {"Symbol": "BadNoCommunication"}}, "ws": {"Value": 3.0, "StatusCode":
              {"Symbol": "GoodLocalOverride"}}}  # fmt: skip
    assert _rows(_pubsub().decode(_network(_writer("WT1", symbol)), NOW)) == [("WT1", t, ["UNREAD", 3.0], (0,))]
    omitted = _pubsub().decode(_network(_writer("WT1", {"P": {"SourceTimestamp": AT}, "ws": {"Value": 3.0}})), NOW)
    assert _rows(omitted) == [("WT1", t, ["UNREAD", 3.0], ())]  # a null Value left out: no value, no failed read
    both = _pubsub().decode(_network(_writer("WT1", {"P": {"Value": 1.0, "Status": 0, "StatusCode": 0}})), NOW)
    assert [(r.reason, r.detail) for _, r in both.rejected] == [("unknown_key", "a DataValue with both Status and "
                                                                                "StatusCode")]  # fmt: skip


def test_opc_publisher_headers_arrays_of_dataset_messages_and_message_types():
    """OPC Publisher's NetworkMessage header holds DataSetWriterGroup (a turbine field too); an array of
    DataSetMessages (no NetworkMessage header) reads as their NetworkMessage does; the type is read whatever its
    case; events, conditions and keep-alives hold no telemetry; a NetworkMessage type this does not read refuses
    the payload."""
    t = parse_timestamp_ns(AT)
    group = _pubsub(turbine_field="DataSetWriterGroup").decode(_network(_writer(None, {"P": 1.0}),
                                                                        DataSetWriterGroup="WT2"), NOW)  # fmt: skip
    assert _rows(group) == [("WT2", t, [1.0, None], ())]
    plain = [_writer("WT1", {"P": 1.0}), _writer("WT2", {"ws": 2.0})]
    want = [("WT1", t, [1.0, None], ()), ("WT2", t, [None, 2.0], ())]
    assert _rows(_pubsub().decode(json.dumps(plain).encode(), NOW)) == want
    assert _rows(_pubsub().decode(_network(*plain, MessageType="UA-DATA"), NOW)) == want
    event = _writer("WT1", {"EventId": "x", "Message": "overspeed"}, MessageType="ua-event")
    assert _rows(_pubsub().decode(_network(event, _writer("WT2", {"ws": 2.0})), NOW)) == want[1:]
    got = _pubsub().decode(_network(*plain, MessageType="ua-action"), NOW)
    assert isinstance(got, Rejection) and "MessageType 'ua-action'" in got.detail


def test_whole_payloads_refused_and_hostile_ones_never_raise():
    """Oversized, not JSON, or of neither form: refused whole. 20,000 random mutations of valid messages never
    raise."""
    dec = _pubsub()
    for payload, reason in ((b"x" * (1 << 17), "oversized"), (b"{", "malformed_json"), (b"3", "not_an_object"),
                            (b'{"MessageId": "1", "MessageType": "ua-data"}', "missing_values"),
                            (b'{"MessageId": "1", "Messages": 5}', "missing_values"), (b"{}", "missing_values"),
                            (b"[]", "missing_values"), (b'[{"MessageId": "1", "Messages": []}, 5]', None)):  # fmt: skip
        got = dec.decode(payload, NOW)
        if reason is None:  # a non-object beside a NetworkMessage: a DataSetMessage refused, placed
            assert [(got.where(p), r.reason) for p, r in got.rejected] == [({"message": 1}, "not_an_object")]
        else:
            assert isinstance(got, Rejection) and got.reason == reason, (payload[:40], got)
    deep = b'{"Code": ' * 1000 + b"0" + b"}" * 1000  # deeper than str() recurses, within the JSON parser's depth
    for msg, reasons in ((_writer("WT1", {"P": {"Value": 1.0, "StatusCode": "<deep>"}}), ["bad_value_type"]),
                         (_writer("WT1", {"P": 1.0}, Status="<deep>"), ["bad_value_type"]),
                         (_writer("WT1", {"P": 1.0}, MessageType="<deep>"), [])):  # fmt: skip
        got = dec.decode(json.dumps(msg).encode().replace(b'"<deep>"', deep), NOW)
        assert isinstance(got, BatchDecode) and [r.reason for _, r in got.rejected] == reasons
    net = _network(_writer("WT1", {"P": 1.0}), MessageType="<deep>").replace(b'"<deep>"', deep)
    assert dec.decode(net, NOW).reason == "unknown_key"
    rng = random.Random(5)
    atoms: list[Any] = [None, True, 0, -1, 1 << 40, 1.5, "x", "", [], {}, AT, "WT1", BAD, {"Code": "x"}]
    base = json.loads(_network(_writer("WT1", {"P": {"Value": 1.0, "SourceTimestamp": AT}, "ws": 2.0})))
    for _ in range(20_000):
        doc = json.loads(json.dumps(base))
        node = doc
        for _ in range(rng.randint(1, 4)):
            if not isinstance(node, (dict, list)) or not node:
                break
            key = rng.choice(list(node) if isinstance(node, dict) else range(len(node)))  # (a list: as randrange)
            if rng.random() < 0.5 or not isinstance(node[key], (dict, list)):
                node[key] = rng.choice(atoms)
                break
            node = node[key]
        got = dec.decode(json.dumps(doc).encode(), NOW)
        assert isinstance(got, (BatchDecode, Rejection))


def test_opcua_status_codes_as_a_tags_quality():
    """`quality_rule: opcua`: a StatusCode of Good severity (0, or with detail bits) is a read, Uncertain and Bad
    are failed reads, a number or {Code, Symbol} (Code absent: Good); anything else is refused."""
    for code, good in ((0, True), (GOOD_MORE, True), ({"Symbol": "Good"}, True), (UNCERTAIN, False), (BAD, False),
                       (0x80000000, False), (0xFFFFFFFF, False)):  # fmt: skip
        assert opcua_good(code, "StatusCode") is good
    for code in (-1, 1 << 32, 1.0, True, "Good", None, {"Code": 0, "Extra": 1}):
        assert isinstance(opcua_good(code, "StatusCode"), Rejection)
    tag = TagPayload(_decoder(), "Value", "SourceTimestamp", "StatusCode", quality_rule="opcua")
    tags = TagObjectDecoder(tag)
    doc = {"P": {"Value": 3.0, "SourceTimestamp": AT, "StatusCode": BAD}, "ws": {"Value": 4.0, "SourceTimestamp": AT,
                                                                              "StatusCode": GOOD_MORE}}  # fmt: skip
    (s,) = tags.decode("s/x/WT1/t", json.dumps(doc).encode(), NOW).samples
    assert is_unread(s.values).tolist() == [True, False] and s.values[1] == 4.0 and s.failed == (0,)
    with pytest.raises(ValueError, match="quality_rule must be one of"):
        TagPayload(_decoder(), quality_rule="severity")


def test_numbers_opcua_json_writes_as_text_and_a_null_status():
    """OPC 10000-6 writes an Int64 or UInt64 as its decimal digits, and a Float or Double's NaN and infinities as
    "NaN", "Infinity" and "-Infinity": the digits read as the number (in a DataValue, a bare field, and a tag
    object under quality_rule opcua; a sign and leading zeros allowed, beyond Int64 and UInt64 refused), NaN as
    null, the infinities refused (`non_finite`). Other text is a String's: refused unless ingest.numeric_strings.
    A null StatusCode, or Code, is a Good one, as one left out. A `UaType` of a text type (12: String) keeps digits
    text."""
    t = parse_timestamp_ns(AT)
    wt1 = _writer("WT1", {"P": {"Value": "-1500", "SourceTimestamp": AT}, "ws": "18446744073709551615"})
    assert _rows(_pubsub().decode(_network(wt1), NOW)) == [("WT1", t, [-1500.0, 18446744073709551615.0], ())]
    nan = _writer("WT1", {"P": {"Value": "NaN", "StatusCode": None}, "ws": {"Value": 4.0, "StatusCode": None}})
    assert _rows(_pubsub().decode(_network(nan), NOW)) == [("WT1", t, ["UNREAD", 4.0], ())]
    for text, reason in (("Infinity", "non_finite"), ("-Infinity", "non_finite"), ("1.5", "bad_value_type"),
                         ("RUN", "bad_value_type"), ("0x10", "bad_value_type"), ("\u0663", "bad_value_type"),
                         ("", "bad_value_type"), ("18446744073709551616", "bad_value_type"),
                         ("-9223372036854775809", "bad_value_type")):  # fmt: skip
        res = _pubsub().decode(_network(_writer("WT1", {"P": {"Value": text}, "ws": 1.0})), NOW)
        assert [r.reason for _, r in res.rejected] == [reason], text
    strings = PubSubDecoder(_decoder(allowed_turbines=["WT1"], max_batch_payload_bytes=1 << 16, numeric_strings=True))
    got = strings.decode(_network(_writer("WT1", {"P": {"Value": "1.5"}, "ws": "RUN"})), NOW)
    assert _rows(got)[0][2] == [1.5, None] and [r.reason for _, r in got.rejected] == ["not_a_number"]
    tags = TagObjectDecoder(TagPayload(_decoder(), "Value", "SourceTimestamp", "StatusCode", quality_rule="opcua"))
    doc = {
        "P": {"Value": "42", "SourceTimestamp": AT, "StatusCode": None},
        "ws": {"Value": "+007", "SourceTimestamp": AT, "StatusCode": {"Code": None, "Symbol": "Good"}},
    }
    assert _rows(tags.decode("s/x/WT1/t", json.dumps(doc).encode(), NOW)) == [("WT1", t, [42.0, 7.0], ())]
    edges = _writer("WT1", {"P": {"Value": "-9223372036854775808"}, "ws": "-0"})
    assert _rows(_pubsub().decode(_network(edges), NOW)) == [("WT1", t, [-9223372036854775808.0, 0.0], ())]
    typed = _writer("WT1", {"P": {"Value": "42", "UaType": 8}, "ws": {"Value": "42", "UaType": 12}})  # Int64, String
    got = _pubsub().decode(_network(typed), NOW)
    assert _rows(got) == [("WT1", t, [42.0, None], ())] and [r.reason for _, r in got.rejected] == ["bad_value_type"]
    odd = _writer("WT1", {"P": {"Value": "42", "UaType": [8]}, "ws": {"Value": "7", "UaType": {"Id": 12}}})
    assert _rows(_pubsub().decode(_network(odd), NOW)) == [("WT1", t, [42.0, 7.0], ())]  # no type id: no type


def test_the_config_of_opcua_sources():
    """batch_format opcua needs the batch topic; opcua_turbine is one of the header fields; quality_rule opcua reads
    the quality key and takes no good list."""
    ok = daemon_config_from_dict({"topics": {"telemetry_batch": "opcua/data"}, "ingest": {"batch_format": "opcua"},
                                  "mapping": {"opcua_turbine": "DataSetWriterId"}})  # fmt: skip
    assert ok.ingest.batch_format == "opcua"
    for doc, said in (
        ({"ingest": {"batch_format": "opcua"}}, "ingest.batch_format: opcua is the form of topics.telemetry_batch"),
        ({"mapping": {"opcua_turbine": "NodeId"}}, "mapping.opcua_turbine: one of DataSetWriterName, "),
        ({"mapping": {"opcua_turbine": "DataSetWriterId"}}, "ingest.batch_format: opcua messages, which is not set"),
        ({"ingest": {"telemetry_format": "tags"}, "mapping": {"tag_payload": {"quality_rule": "opcua"}}},
         "quality_rule opcua reads the StatusCode under quality"),
        ({"ingest": {"telemetry_format": "tags"}, "mapping": {"tag_payload": {"quality_rule": "opcua",
                                                                              "quality": "StatusCode",
                                                                              "good": [0]}}},
         "quality_rule opcua reads the StatusCode under quality"),
        ({"ingest": {"telemetry_format": "tags"}, "mapping": {"tag_payload": {"quality_rule": "x"}}},
         "mapping.tag_payload.quality_rule: one of listed, opcua"),
    ):  # fmt: skip
        with pytest.raises(ConfigError, match=said):
            daemon_config_from_dict(doc)
