"""Sparkplug B telemetry (`runtime.sparkplug`, `runtime.protowire`): payloads written by Google's protobuf package
(tests/sparkplug_messages.py) decoded by the runtime's own reader, births and aliases, datatypes, quality, and
messages that must be refused without raising."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from scada_tcn.runtime import sparkplug as sparkplug_module
from scada_tcn.runtime.daemon_config import ConfigError, daemon_config_from_dict
from scada_tcn.runtime.protowire import WireError, fields, signed
from scada_tcn.runtime.sparkplug import SparkplugDecoder, rebirth_request, topic_filters
from scada_tcn.runtime.telemetry import REASONS, BatchDecode, Rejection, TelemetryDecoder, parse_timestamp_ns
from tests.sparkplug_messages import Payload, metric

NOW = parse_timestamp_ns("2024-06-01T00:00:00+00:00")
MS = NOW // 10**6
GROUP = "farm"


def _decoder(**overrides: Any) -> SparkplugDecoder:
    """Channels power (metric `Turbine/Power`), wind speed (`Turbine/WindSpeed`) and pitch (`Pitch`); `Status`
    ignored; turbines WT1, WT2 and gw (a node that is a turbine) allowed; `overrides` replace any argument."""
    args: dict[str, Any] = {"channels": ["power", "wind_speed", "pitch"], "turbine_level": 2,
                            "key_of_channel": {"power": "Turbine/Power", "wind_speed": "Turbine/WindSpeed",
                                               "pitch": "Pitch"},
                            "max_payload_bytes": 1000, "max_future_s": 300.0, "max_past_s": 86400.0,
                            "allowed_turbines": ["WT1", "WT2", "gw"], "ignored_keys": ["Status"],
                            "max_batch_payload_bytes": 1 << 16}  # fmt: skip
    return SparkplugDecoder(TelemetryDecoder(**{**args, **overrides}), GROUP)


def _topic(kind: str, node: str = "gw", device: str | None = "WT1") -> str:
    return f"spBv1.0/{GROUP}/{kind}/{node}" + ("" if device is None else f"/{device}")


def _birth(ts: int = MS - 60_000, power: float | None = 1500.0) -> Any:
    """A device's birth: every channel named with an alias and a datatype, the protocol's and an ignored metric."""
    b = Payload(timestamp=MS, seq=1)
    metric(b, "Device Control/Rebirth", False, "Boolean", alias=100, ts=ts)
    metric(b, "Turbine/Power", power, "Double", alias=1, ts=ts)
    metric(b, "Turbine/WindSpeed", 7.5, "Float", alias=2, ts=ts)
    metric(b, "Pitch", -2, "Int16", alias=3, ts=ts)
    metric(b, "Status", "RUN", "String", alias=4, ts=ts)
    return b


def _samples(res: BatchDecode | Rejection) -> list[tuple[str, int, list[float | None], tuple[int, ...]]]:
    """A decode's samples as (turbine, stamp, values with None for NaN, failed channels)."""
    assert isinstance(res, BatchDecode), res
    return [(s.turbine, s.ts_ns, [None if math.isnan(x) else x for x in s.values.tolist()], s.failed)
            for s in res.samples]  # fmt: skip


def test_the_wire_reader_reads_what_googles_protobuf_writes_and_refuses_what_it_cannot_read():
    """`protowire.fields` against Google's encoder; two's complement of any width; broken buffers raise
    WireError saying where; the rebirth request parses with Google's decoder as Sparkplug's NCMD."""
    p = Payload(timestamp=2**63 + 5, seq=255, uuid="ü")
    metric(p, "a", 2.5, "Double", alias=2**40)
    got = fields(p.SerializeToString())
    assert got[0] == (1, 0, 2**63 + 5) and got[-2:] == [(3, 0, 255), (4, 2, "ü".encode())]
    assert fields(got[1][2]) == [(1, 2, b"a"), (2, 0, 2**40), (4, 0, 10), (13, 1, np.float64(2.5).tobytes())]
    assert [signed(v, b) for v, b in [(255, 8), (2**32 - 1, 8), (2**32 - 1, 32), (127, 8), (2**64 - 2, 64)]] == [
        -1, -1, -1, 127, -2]  # fmt: skip
    for bad in [b"\x08", b"\x08" + b"\xff" * 11, b"\x12\x05ab", b"\x0b", b"\x00\x01", b"\x0d\x01\x02"]:
        with pytest.raises(WireError):
            fields(bad)
    topic, payload = rebirth_request(GROUP, "gw", MS)
    back = Payload()
    back.ParseFromString(payload)
    assert topic == "spBv1.0/farm/NCMD/gw" and back.timestamp == MS
    assert [(m.name, m.datatype, m.boolean_value) for m in back.metrics] == [("Node Control/Rebirth", 11, True)]
    assert topic_filters(GROUP) == [f"spBv1.0/farm/{t}/+" for t in ("NBIRTH", "NDATA", "NDEATH")] + [
        f"spBv1.0/farm/{t}/+/+" for t in ("DBIRTH", "DDATA", "DDEATH")]  # fmt: skip


def test_births_give_aliases_and_datatypes_and_data_by_alias_reads_as_samples():
    """A DBIRTH's values are a sample; DDATA by alias alone reads by the birth's names and datatypes (Int16 -2
    sent sign-extended, as Java's Tahu does, or in 16 bits, as Python's does); values of two stamps in one message
    make two samples; the metric's stamp, else the payload's; protocol and ignored metrics unread."""
    spb = _decoder()
    ts = MS - 60_000
    assert _samples(spb.decode(_topic("DBIRTH"), _birth().SerializeToString(), NOW)) == [
        ("WT1", ts * 10**6, [1500.0, 7.5, -2.0], ())]  # fmt: skip
    d = Payload(timestamp=MS)
    metric(d, None, 1200.25, "Double", alias=1, ts=ts + 10_000)
    metric(d, None, "STOP", "String", alias=4, ts=ts + 10_000)
    metric(d, None, 6.25, "Float", alias=2)  # no stamp of its own: the payload's
    metric(d, None, 2**16 - 3, "UInt16", alias=3, ts=ts + 10_000, typed=False)  # Int16 -3 as Python's Tahu sends it
    metric(d, None, 1250.5, "Double", alias=1, typed=False)
    assert _samples(spb.decode(_topic("DDATA"), d.SerializeToString(), NOW)) == [
        ("WT1", (ts + 10_000) * 10**6, [1200.25, None, -3.0], ()), ("WT1", NOW, [1250.5, 6.25, None], ())]  # fmt: skip
    assert spb.rebirths() == []


@pytest.mark.parametrize(
    "datatype,value,want",
    [("Int8", -1, -1.0), ("Int8", 127, 127.0), ("Int16", -300, -300.0), ("Int32", -(2**31), -(2.0**31)),
     ("Int64", -5, -5.0), ("UInt8", 255, 255.0), ("UInt16", 65535, 65535.0), ("UInt32", 2**32 - 1, 2.0**32 - 1),
     ("UInt64", 2**64 - 1, 2.0**64), ("Float", 0.5, 0.5), ("Double", -1e-300, -1e-300)],
)  # fmt: skip
def test_every_numeric_datatype_reads_as_its_value(datatype, value, want):
    spb = _decoder()
    p = Payload(timestamp=MS)
    metric(p, "Pitch", value, datatype)
    assert _samples(spb.decode(_topic("DDATA"), p.SerializeToString(), NOW))[0][2][2] == want


def test_quality_null_and_values_that_are_no_numbers():
    """A Quality other than 192 is a failed read (NaN, in `failed`) whatever is beside it; is_null is NaN, not a
    failed read; Booleans, dates, bytes and text (unless `numeric_strings`), an integer without a datatype, NaN:
    each refused alone, placed by metric number and name."""
    spb = _decoder()
    p = Payload(timestamp=MS)
    metric(p, "Turbine/Power", 0.0, "Double", quality=500)  # STALE beside a stale zero
    metric(p, "Turbine/WindSpeed", None, "Float", quality=0)  # BAD and null
    metric(p, "Pitch", None, "Float")
    assert _samples(spb.decode(_topic("DDATA"), p.SerializeToString(), NOW)) == [("WT1", NOW, [None] * 3, (0, 1))]
    good = Payload(timestamp=MS)
    metric(good, "Pitch", 1.5, "Double", quality=192)
    assert _samples(spb.decode(_topic("DDATA"), good.SerializeToString(), NOW))[0][2][2] == 1.5
    bad = Payload(timestamp=MS)
    metric(bad, "Turbine/Power", True, "Boolean")
    metric(bad, "Turbine/Power", MS, "DateTime")
    metric(bad, "Turbine/Power", "12.5", "String")
    metric(bad, "Turbine/Power", 7, "Int32", typed=False)  # an integer of no datatype (no birth): sign unknown
    metric(bad, "Turbine/Power", float("nan"), "Double")
    metric(bad, "Turbine/Power", 5, "Int64").ClearField("long_value")  # no value, not null
    metric(bad, "Pitch", 3.0, "Double")
    res = spb.decode(_topic("DDATA"), bad.SerializeToString(), NOW)
    assert isinstance(res, BatchDecode) and [s.values[2] for s in res.samples] == [3.0]
    assert [(res.where(p), r.reason) for p, r in res.rejected] == [
        ({"metric": n, "name": "Turbine/Power"}, reason) for n, reason in enumerate(
            ["bad_value_type", "bad_value_type", "bad_value_type", "bad_value_type", "non_finite",
             "missing_values"], 1)]  # fmt: skip
    assert "ingest.numeric_strings" in res.rejected[2][1].detail and "sign" in res.rejected[3][1].detail
    text = _decoder(numeric_strings=True).decode(_topic("DDATA"), bad.SerializeToString(), NOW)
    assert sorted(s.values[0] for s in text.samples if not np.isnan(s.values[0])) == [12.5]  # type: ignore[union-attr]


def test_an_alias_no_birth_gave_asks_for_a_rebirth_and_deaths_forget_births():
    """DDATA by alias before any birth (the daemon started after it): each such metric refused (`unknown_alias`)
    and the node wanted once for a rebirth. After the birth the same message reads. DDEATH forgets the device's
    aliases, NDEATH the node's and its devices', and an NBIRTH starts the node's session afresh."""
    spb = _decoder()
    d = Payload(timestamp=MS)
    metric(d, None, 900.0, "Double", alias=1)
    metric(d, None, 5.0, "Double", alias=2)
    data = d.SerializeToString()
    res = spb.decode(_topic("DDATA"), data, NOW)
    assert isinstance(res, BatchDecode) and res.samples == []
    assert [(res.where(p), r.reason) for p, r in res.rejected] == [
        ({"metric": 1, "alias": 1}, "unknown_alias"),
        ({"metric": 2, "alias": 2}, "unknown_alias"),
    ]
    assert spb.rebirths() == ["gw"] and spb.rebirths() == []
    spb.decode(_topic("DBIRTH"), _birth().SerializeToString(), NOW)
    spb.decode(_topic("DBIRTH", device="WT2"), _birth().SerializeToString(), NOW)
    assert _samples(spb.decode(_topic("DDATA"), data, NOW))[0][2][:2] == [900.0, 5.0]
    assert _samples(spb.decode(_topic("DDEATH"), Payload(timestamp=MS).SerializeToString(), NOW)) == []
    assert spb.decode(_topic("DDATA"), data, NOW).rejected  # type: ignore[union-attr]
    assert _samples(spb.decode(_topic("DDATA", device="WT2"), data, NOW))[0][0] == "WT2"
    spb.decode(_topic("NDEATH", device=None), Payload(timestamp=MS).SerializeToString(), NOW)
    assert spb.decode(_topic("DDATA", device="WT2"), data, NOW).rejected  # type: ignore[union-attr]
    spb.decode(_topic("DBIRTH", device="WT2"), _birth().SerializeToString(), NOW)
    node = Payload(timestamp=MS, seq=0)
    metric(node, "bdSeq", 3, "Int64")
    metric(node, "Node Control/Rebirth", False, "Boolean")
    assert _samples(spb.decode(_topic("NBIRTH", device=None), node.SerializeToString(), NOW)) == []
    assert spb.decode(_topic("DDATA", device="WT2"), data, NOW).rejected  # type: ignore[union-attr]
    assert spb.rebirths() == ["gw"]


def test_node_metrics_the_turbine_and_metrics_of_no_channel():
    """NBIRTH/NDATA: the edge node is the turbine. A node that is no turbine (a farm gateway named off the
    allow-list) publishing only Sparkplug's own metrics is not refused; one publishing a channel is, whole. A
    metric of no channel is refused alone (`unknown_channel`), one in ignored_keys dropped."""
    spb = _decoder()
    b = Payload(timestamp=MS)
    metric(b, "bdSeq", 0, "Int64")
    metric(b, "Node Info/Version", "8.1", "String")
    metric(b, "Turbine/Power", 10.0, "Double", alias=7)
    metric(b, "Gearbox/Oil", 55.0, "Double", alias=8)
    metric(b, "Status", "RUN", "String", alias=9)
    res = spb.decode(_topic("NBIRTH", device=None), b.SerializeToString(), NOW)
    assert _samples(res) == [("gw", NOW, [10.0, None, None], ())]
    assert [(res.where(p), r.reason) for p, r in res.rejected] == [  # type: ignore[union-attr]
        ({"metric": 4, "name": "Gearbox/Oil"}, "unknown_channel")]  # fmt: skip
    farm = Payload(timestamp=MS)
    metric(farm, "bdSeq", 0, "Int64")
    metric(farm, "Node Control/Rebirth", False, "Boolean")
    assert _samples(spb.decode(_topic("NBIRTH", node="Farm Gateway", device=None), farm.SerializeToString(), NOW)) == []
    metric(farm, "Turbine/Power", 1.0, "Double")
    assert spb.decode(_topic("NDATA", node="WT9", device=None), farm.SerializeToString(), NOW).reason == (
        "unknown_turbine"
    )  # type: ignore[union-attr]
    assert spb.decode(_topic("DDATA", device="WT 1"), farm.SerializeToString(), NOW).reason == "bad_turbine_id"  # type: ignore[union-attr]


def test_messages_refused_whole_and_hostile_payloads_never_raise():
    """Oversized, not protobuf, a topic of another form: refused whole. 20,000 payloads of random bytes and of
    valid ones cut or with a byte changed never raise, and every refusal's reason is one of REASONS. The births
    kept are bounded (`BIRTH_METRICS_KEPT`)."""
    spb = _decoder(max_batch_payload_bytes=2000)
    assert spb.decode(_topic("DDATA"), b"\x00" * 2001, NOW).reason == "oversized"  # type: ignore[union-attr]
    assert spb.decode(_topic("DDATA"), b"\x00\x01", NOW).reason == "malformed_protobuf"  # type: ignore[union-attr]
    for topic in [
        "spBv1.0/farm/DDATA/gw",
        "spBv1.0/farm/NDATA/gw/WT1",
        "spBv1.0/farm/NCMD/gw",
        "spBv1.0/other/DDATA/gw/WT1",
    ]:
        assert spb.decode(topic, b"", NOW).reason == "bad_topic"  # type: ignore[union-attr]
    rng = np.random.default_rng(7)
    valid = [_birth().SerializeToString()]
    d = Payload(timestamp=MS)
    metric(d, None, 1.0, "Double", alias=1, quality=0)
    metric(d, "Pitch", -4, "Int8")
    valid.append(d.SerializeToString())
    for k in range(20_000):
        base = bytearray(valid[k % 2])
        form = k % 3
        if form == 0:
            buf = bytes(rng.integers(0, 256, int(rng.integers(0, 200)), dtype=np.uint8))
        elif form == 1:
            buf = bytes(base[: int(rng.integers(0, len(base)))])
        else:
            base[int(rng.integers(len(base)))] = int(rng.integers(256))
            buf = bytes(base)
        kind = ("DBIRTH", "DDATA", "NBIRTH", "NDATA")[k % 4]
        res = spb.decode(_topic(kind, device=None if kind[0] == "N" else "WT1"), buf, NOW)
        reasons = [res.reason] if isinstance(res, Rejection) else [r.reason for _, r in res.rejected]
        assert all(r in REASONS for r in reasons), reasons
    small = _decoder()
    sparkplug_module.BIRTH_METRICS_KEPT, kept = 12, sparkplug_module.BIRTH_METRICS_KEPT
    try:
        assert isinstance(small.decode(_topic("DBIRTH"), _birth().SerializeToString(), NOW), BatchDecode)
        assert small.decode(_topic("DBIRTH", device="WT2"), _birth().SerializeToString(), NOW).reason == "oversized"  # type: ignore[union-attr]
        assert isinstance(small.decode(_topic("DBIRTH"), _birth().SerializeToString(), NOW), BatchDecode)  # replaced
    finally:
        sparkplug_module.BIRTH_METRICS_KEPT = kept


def test_sparkplug_group_config():
    cfg = daemon_config_from_dict({"site": "north", "topics": {"sparkplug_group": "{site}-wind"}})
    assert cfg.topics.sparkplug_group == "{site}-wind"
    with pytest.raises(ConfigError, match=r"topics.sparkplug_group: a Sparkplug group id \(one topic level"):
        daemon_config_from_dict({"topics": {"sparkplug_group": "a/b"}})
    with pytest.raises(ConfigError, match=r"topics.sparkplug_group: the group's Sparkplug topics .* \['telemetry'\]"):
        daemon_config_from_dict({"topics": {"sparkplug_group": "f", "telemetry": "spBv1.0/f/NDATA/{turbine}"}})
