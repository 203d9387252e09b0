"""Per-tag telemetry topics (`topics.telemetry_tag`, `runtime/tag_topics.py`): the decoder and its config."""

from __future__ import annotations

import json
import math
import random
from typing import Any

import pytest
from paho.mqtt.client import topic_matches_sub

from scada_tcn.runtime import tag_topics
from scada_tcn.runtime.daemon_config import daemon_config_from_dict
from scada_tcn.runtime.errors import ConfigError
from scada_tcn.runtime.hold import is_unread
from scada_tcn.runtime.tag_topics import TagObjectDecoder, TagPayload, TagTopicDecoder, tag_filter, template_problem
from scada_tcn.runtime.telemetry import BatchDecode, Rejection, TelemetryDecoder

NOW = 1_717_200_000 * 10**9
TS = "2024-06-01T00:00:00Z"


def _tags(**payload: Any) -> TagTopicDecoder:
    """Power (key `Nacelle/P`) and wind speed (`ws`) on `uns/{site}/{turbine}/{key}`, turbines WT1 and WT2, a
    status tag ignored; `payload` sets mapping.tag_payload's keys."""
    telemetry = TelemetryDecoder(
        ["power", "wind_speed"], {"power": "Nacelle/P", "wind_speed": "ws"}, 2, 1000, 300.0, 86400.0,
        allowed_turbines=["WT1", "WT2"], ignored_keys=["status"],
    )  # fmt: skip
    return TagTopicDecoder(TagPayload(telemetry, **payload), "uns/{site}/{turbine}/{key}", "farm", "gw")


def _read(res: BatchDecode | Rejection) -> tuple[str, int, list[float], tuple[int, ...]]:
    """The one sample of a decoded tag message: (turbine, stamp, values, failed)."""
    assert isinstance(res, BatchDecode) and res.rejected == [] and len(res.samples) == 1, res
    s = res.samples[0]
    return s.turbine, s.ts_ns, s.values.tolist(), s.failed


def _reason(res: BatchDecode | Rejection) -> str:
    assert isinstance(res, Rejection), res
    return res.reason


def test_a_tag_topic_gives_its_turbine_and_channel_and_the_payload_its_value_and_stamp():
    tags = _tags()
    assert tags.filter == "uns/farm/+/#"
    got = _read(tags.decode("uns/farm/WT1/Nacelle/P", b'{"value": 1500.5, "timestamp": "2024-06-01T00:00:00Z"}', NOW))
    assert got[:2] == ("WT1", NOW) and got[2][0] == 1500.5 and math.isnan(got[2][1]) and not is_unread(got[2][1])
    assert got[3] == ()
    again = _read(tags.decode("uns/farm/WT1/Nacelle/P", b'{"value": 3, "timestamp": 1717200000}', NOW))  # memo
    assert again[2][0] == 3.0
    null = _read(tags.decode("uns/farm/WT2/ws", json.dumps({"value": None, "timestamp": TS}).encode(), NOW))
    assert null[0] == "WT2" and is_unread(null[2][1]) and null[3] == ()  # a null ends a hold; not a failed read
    for payload in (json.dumps({"value": "RUN", "timestamp": TS}).encode(), b'"RUN"', b"\xff"):  # whatever it is
        ignored = tags.decode("uns/farm/WT1/status", payload, NOW)
        assert isinstance(ignored, BatchDecode) and ignored.samples == [] and ignored.rejected == []
    assert tags.reads("uns/farm/WT1/a/b") and tags.reads("uns/farm/WT1") and not tags.reads("uns/other/WT1/ws")
    odd = tags.decode("uns/farm/WT1/ws\n", json.dumps({"value": 1, "timestamp": TS}).encode(), NOW)
    assert _reason(odd) == "unknown_channel" and "'ws\\n'" in odd.detail  # type: ignore[union-attr]


def test_the_topics_kept_are_bounded_and_made_up_ones_do_not_keep_the_fleets_out(monkeypatch):
    monkeypatch.setattr(tag_topics, "_TOPICS_KEPT", 4)
    tags, doc = _tags(), json.dumps({"value": 1, "timestamp": TS}).encode()
    for n in range(10):
        tags.decode(f"uns/farm/WT1/made-up-{n}", doc, NOW)
        assert len(tags._topics) <= 4
    assert _read(tags.decode("uns/farm/WT1/ws", doc, NOW))[2][1] == 1.0
    assert "uns/farm/WT1/ws" in tags._topics
    tags.decode("uns/farm/WT1/" + "x" * 300, doc, NOW)
    assert all(len(t) <= 256 for t in tags._topics)


@pytest.mark.parametrize(
    "topic,payload,reason",
    [
        ("uns/farm/WT1", {"value": 1, "timestamp": TS}, "bad_topic"),  # the filter takes it; no key after the turbine
        ("uns/farm/WT9/ws", {"value": 1, "timestamp": TS}, "unknown_turbine"),
        ("uns/farm/W T/ws", {"value": 1, "timestamp": TS}, "bad_turbine_id"),
        ("uns/farm/WT1/P", {"value": 1, "timestamp": TS}, "unknown_channel"),  # the key is Nacelle/P
        ("uns/farm/WT1/ws", 7.5, "not_an_object"),  # a bare value: no stamp
        ("uns/farm/WT1/ws", {"value": 1}, "missing_ts"),
        ("uns/farm/WT1/ws", {"timestamp": TS}, "missing_values"),
        ("uns/farm/WT1/ws", {"value": 1, "timestamp": TS, "unit": "m/s"}, "unknown_key"),
        ("uns/farm/WT1/ws", {"value": "7.5", "timestamp": TS}, "bad_value_type"),
        ("uns/farm/WT1/ws", {"value": True, "timestamp": TS}, "bad_value_type"),
        ("uns/farm/WT1/ws", {"value": 1, "timestamp": "2030-01-01T00:00:00Z"}, "ts_in_future"),
        ("uns/farm/WT1/ws", {"value": 1, "timestamp": "2024-06-01T00:00:00"}, "naive_timestamp"),
        ("uns/farm/WT1/ws", {"value": 1, "timestamp": 1717200000000}, "bad_timestamp"),  # ms under epoch_unit s
    ],
)
def test_what_a_tag_message_must_not_be_is_refused_with_its_reason(topic, payload, reason):
    assert _reason(_tags().decode(topic, json.dumps(payload).encode(), NOW)) == reason


def test_unparsable_payloads_are_refused_never_raised():
    tags = _tags()
    for payload, reason in [(b"\xff", "not_utf8"), (b"{", "malformed_json"), (b'{"value": NaN}', "non_finite"),
                            (b"x" * 1001, "oversized"), (b"[1, 2]", "not_an_object"),
                            (b"null", "not_an_object")]:  # fmt: skip
        assert _reason(tags.decode("uns/farm/WT1/ws", payload, NOW)) == reason, payload
    refused = tags.decode("uns/farm/WT1/ws", b'{"value": 1, "timestamp": 0, "unit": 1}', NOW)
    assert "mapping.tag_payload.other_keys" in refused.detail  # type: ignore[union-attr]


def test_a_quality_other_than_the_good_ones_is_a_failed_read_whatever_the_value():
    """AVEVA's JSON-VTQ1 (`{"d", "dt", "ts", "q"}`, OPC DA's 192 good): a quality compared by JSON type and value."""
    vtq = _tags(value="d", ts="ts", quality="q", good=[192], other_keys=["dt"])

    def one(doc: dict) -> BatchDecode | Rejection:
        return vtq.decode("uns/farm/WT1/ws", json.dumps({"ts": TS, "dt": 5, **doc}).encode(), NOW)

    assert _read(one({"d": 7.5, "q": 192}))[2][1] == 7.5
    assert _read(one({"d": 7.5}))[2][1] == 7.5  # no quality sent: a good read
    for doc in ({"d": 7.5, "q": 0}, {"d": 7.5, "q": 24}, {"q": 0}, {"d": 7.5, "q": "192"}, {"d": 7.5, "q": True}):
        _, _, values, failed = _read(one(doc))
        assert is_unread(values[1]) and failed == (1,), doc
    assert _reason(one({"d": 7.5, "q": 192.0})) == "bad_value_type"
    assert _reason(one({"d": 7.5, "q": None})) == "bad_value_type"
    xentara = _tags(quality="quality", good=["good"])
    ok = xentara.decode("uns/farm/WT1/ws", b'{"value": 4, "quality": "good", "timestamp": 1717200000}', NOW)
    bad = xentara.decode("uns/farm/WT1/ws", b'{"value": 4, "quality": "uncertain", "timestamp": 1717200000}', NOW)
    assert _read(ok)[2][1] == 4.0 and _read(bad)[3] == (1,)
    texts = _tags()
    texts.decoder.numeric_strings = True
    assert _read(texts.decode("uns/farm/WT1/ws", b'{"value": "7.25", "timestamp": 1717200000}', NOW))[2][1] == 7.25


def test_a_turbines_tags_in_one_object_are_read_tag_by_tag():
    """Azure IoT Operations' connector for OPC UA (`ingest.telemetry_format: tags`): an asset's data points as one
    object of tag -> {SourceTimestamp, Value}, a bad StatusCode beside one. Values of one stamp make one sample; a
    refused tag costs its value only and is placed by its key; an ignored tag is skipped whatever it holds."""
    tags = _tags(value="Value", ts="SourceTimestamp", quality="StatusCode", good=[0])
    objects = TagObjectDecoder(tags.tag)
    later = "2024-06-01T00:00:01Z"
    doc = {"Nacelle/P": {"SourceTimestamp": TS, "Value": 1500.5}, "ws": {"SourceTimestamp": TS, "Value": 7.5},
           "status": "RUN", "Nacelle/Q": {"SourceTimestamp": TS, "Value": 1.0}}  # fmt: skip
    res = objects.decode("uns/farm/WT1/telemetry", json.dumps(doc).encode(), NOW)
    assert isinstance(res, BatchDecode) and len(res.samples) == 1
    s = res.samples[0]
    assert (s.turbine, s.ts_ns, s.values.tolist(), s.failed) == ("WT1", NOW, [1500.5, 7.5], ())
    assert [(res.where(place), r.reason) for place, r in res.rejected] == [({"tag": "Nacelle/Q"}, "unknown_channel")]
    bad = {"Nacelle/P": {"SourceTimestamp": TS, "Value": 0.0, "StatusCode": 2150891520},
           "ws": {"SourceTimestamp": later, "Value": "7.5"}}  # fmt: skip
    res = objects.decode("uns/farm/WT1/telemetry", json.dumps(bad).encode(), NOW)
    assert isinstance(res, BatchDecode) and len(res.samples) == 1 and res.samples[0].failed == (0,)
    assert is_unread(res.samples[0].values[0]) and [r.reason for _, r in res.rejected] == ["bad_value_type"]
    two = {"Nacelle/P": {"SourceTimestamp": TS, "Value": 1.0}, "ws": {"SourceTimestamp": later, "Value": 2.0}}
    res = objects.decode("uns/farm/WT1/telemetry", json.dumps(two).encode(), NOW)
    assert isinstance(res, BatchDecode) and [x.ts_ns - NOW for x in res.samples] == [0, 10**9]
    assert res.samples[0].values[0] == 1.0 and math.isnan(res.samples[0].values[1])
    assert math.isnan(res.samples[1].values[0]) and res.samples[1].values[1] == 2.0
    for topic, payload, reason in [
        ("uns/farm/WT9/t", b'{"ws": {}}', "unknown_turbine"), ("uns", b"{}", "bad_topic"),
        ("uns/farm/WT1/t", b"[]", "not_an_object"), ("uns/farm/WT1/t", b"{}", "missing_values"),
        ("uns/farm/WT1/t", b"{" * 2000, "oversized"), ("uns/farm/WT1/t", b"\xff", "not_utf8"),
    ]:  # fmt: skip
        assert _reason(objects.decode(topic, payload, NOW)) == reason, payload


def test_the_template_and_its_subscription():
    assert template_problem("uns/{site}/{turbine}/scada/{key}") is None
    for bad in ("uns/{turbine}/{key}/x", "uns/{site}/{key}", "uns/{turbine}/tag-{key}", "uns/+/{turbine}/{key}",
                "uns/{turbine}/{key}/{key}", "uns/{turbine}/{unit}/{key}", "uns/t{turbine}/{key}",
                "uns/{turbine}/{turbine}/{key}", "uns/x{turbine}/{turbine}/{key}"):  # fmt: skip
        assert template_problem(bad) is not None, bad
    filt, pattern = tag_filter("uns/{site}/{gateway}/{turbine}/{key}", "s.1", "g")
    assert filt == "uns/s.1/g/+/#"
    assert pattern.fullmatch("uns/s.1/g/WT1/Gearbox/Oil/Temp").groups() == ("WT1", "Gearbox/Oil/Temp")  # type: ignore[union-attr]
    assert pattern.fullmatch("uns/sx1/g/WT1/ws") is None  # the site's '.' is no regex wildcard
    with pytest.raises(ValueError, match="topics.telemetry_tag"):
        TagTopicDecoder(_tags().tag, "uns/{key}", "s", "g")


def test_the_topics_routed_to_the_tags_are_those_the_broker_delivers_on_the_subscription():
    """`reads` (a regular expression, a tenth of paho's matcher's time) against paho's `topic_matches_sub`, over
    random topics of levels that match and miss, empty levels and '/' included."""
    tags = _tags()
    rng = random.Random(0)
    parts = ["uns", "farm", "WT1", "", "x", "a/b", "farm/", "/", "uns/farm", "\n"]
    topics = ["/".join(rng.choice(parts) for _ in range(rng.randint(1, 6))) for _ in range(20000)]
    assert [tags.reads(t) for t in topics] == [topic_matches_sub(tags.filter, t) for t in topics]
    assert sum(tags.reads(t) for t in topics) > 100


def test_per_tag_topics_config():
    aio = {"value": "Value", "ts": "SourceTimestamp", "quality": "StatusCode", "good": [0]}
    tags = daemon_config_from_dict({"ingest": {"telemetry_format": "tags"}, "mapping": {"tag_payload": aio}})
    assert tags.ingest.telemetry_format == "tags" and tags.mapping.tag_payload.good == [0]
    with pytest.raises(ConfigError, match="ingest.telemetry_format: one of values, tags; got 'opcua'"):
        daemon_config_from_dict({"ingest": {"telemetry_format": "opcua"}})
    cfg = daemon_config_from_dict(
        {
            "topics": {"telemetry_tag": "uns/{site}/{turbine}/{key}"},
            "mapping": {
                "tag_payload": {
                    "value": "d",
                    "ts": "ts",
                    "quality": "q",
                    "good": [192, "GOOD", True],
                    "other_keys": ["dt"],
                }
            },
        }  # fmt: skip
    )
    assert cfg.mapping.tag_payload.good == [192, "GOOD", True]
    assert [type(g) for g in cfg.mapping.tag_payload.good] == [int, str, bool]
    for override, needle in [
        ({"topics": {"telemetry_tag": "scada/{site}/{turbine}/{key}"}}, r"also takes the topics of \['telemetry'"),
        ({"topics": {"telemetry_tag": "scada/runtime/{turbine}/{key}"}}, r"\['status', 'errors'\]"),
        ({"topics": {"telemetry_tag": "spBv1.0/{turbine}/{key}", "sparkplug_group": "f"}}, r"\['sparkplug_group'\]"),
        ({"topics": {"telemetry_tag": "spBv1.0/f/NCMD/{turbine}/{key}", "sparkplug_group": "f"}},
         r"\['sparkplug_group'\]"),  # the daemon's own rebirth requests
        ({"topics": {"telemetry_tag": "uns/{turbine}"}}, "{turbine} must be a whole topic level and {key} the last"),
        ({"mapping": {"tag_payload": {"value": "v"}}}, "tag_payload: reads topics.telemetry_tag and"),
        ({"topics": {"telemetry_tag": "u/{turbine}/{key}"}, "mapping": {"tag_payload": {"quality": "q"}}},
         "quality and good go together"),
        ({"topics": {"telemetry_tag": "u/{turbine}/{key}"}, "mapping": {"tag_payload": {"ts": "value"}}},
         "must be distinct non-empty keys"),
        ({"topics": {"telemetry_tag": "u/{turbine}/{key}"}, "mapping": {"tag_payload": {"good": [1.5]}}},
         r"tag_payload.good\[0\]: expected str or int or bool, got float"),
        ({"topics": {"telemetry_tag": "u/{turbine}/{key}"}, "mapping": {"tag_payload": {"vaule": "d"}}},
         r"unknown keys \['vaule'\]"),
    ]:  # fmt: skip
        with pytest.raises(ConfigError, match=needle):
            daemon_config_from_dict(override)
