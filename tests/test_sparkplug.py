"""Sparkplug B telemetry (`runtime.sparkplug`, `runtime.protowire`): payloads written by Google's protobuf package
(tests/sparkplug_messages.py) decoded by the runtime's own reader, births and aliases, datatypes, quality, and
messages that must be refused without raising."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from scada_tcn.runtime import sparkplug as sparkplug_module
from scada_tcn.runtime.birth_hold import BirthHold
from scada_tcn.runtime.daemon_config import ConfigError, daemon_config_from_dict
from scada_tcn.runtime.hold import is_unread
from scada_tcn.runtime.protowire import WireError, bytes_field, fields, varint_field
from scada_tcn.runtime.sparkplug import SparkplugDecoder, rebirth_request, topic_filters
from scada_tcn.runtime.sparkplug_payload import integer_value, parse_payload
from scada_tcn.runtime.telemetry import REASONS, BatchDecode, Rejection, Sample, TelemetryDecoder, parse_timestamp_ns
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
    """`protowire.fields` against Google's encoder; broken buffers raise WireError saying where; the rebirth
    request parses with Google's decoder as Sparkplug's NCMD."""
    p = Payload(timestamp=2**63 + 5, seq=255, uuid="ü")
    metric(p, "a", 2.5, "Double", alias=2**40)
    got = fields(p.SerializeToString())
    assert got[0] == (1, 0, 2**63 + 5) and got[-2:] == [(3, 0, 255), (4, 2, "ü".encode())]
    assert fields(got[1][2]) == [(1, 2, b"a"), (2, 0, 2**40), (4, 0, 10), (13, 1, np.float64(2.5).tobytes())]
    assert fields(b"\x08" + b"\xff" * 9 + b"\x7f") == [(1, 0, 2**64 - 1)]  # 70 bits sent: the low 64, as protobuf
    too_far = varint_field(1 << 29, 1)  # field number 2**29: beyond protobuf's
    for bad in [b"\x08", b"\x08" + b"\xff" * 11, b"\x12\x05ab", b"\x0b", b"\x00\x01", b"\x0d\x01\x02", too_far]:
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
    """A Quality other than 192 is a failed read (UNREAD, in `failed`) whatever is beside it; is_null is UNREAD, not
    a failed read (both end a report-by-exception channel's hold); Booleans, dates, bytes and text (unless
    `numeric_strings`), an integer without a datatype in a birth, NaN: each refused alone, placed by metric number
    and name."""
    spb = _decoder()
    p = Payload(timestamp=MS)
    metric(p, "Turbine/Power", 0.0, "Double", quality=500)  # STALE beside a stale zero
    metric(p, "Turbine/WindSpeed", None, "Float", quality=0)  # BAD and null
    metric(p, "Pitch", None, "Float")
    (read,) = spb.decode(_topic("DDATA"), p.SerializeToString(), NOW).samples  # type: ignore[union-attr]
    assert (read.turbine, read.ts_ns, is_unread(read.values).tolist(), read.failed) == ("WT1", NOW, [True] * 3, (0, 1))
    good = Payload(timestamp=MS)
    metric(good, "Pitch", 1.5, "Double", quality=192)
    assert _samples(spb.decode(_topic("DDATA"), good.SerializeToString(), NOW))[0][2][2] == 1.5
    bad = Payload(timestamp=MS)
    metric(bad, "Turbine/Power", True, "Boolean")
    metric(bad, "Turbine/Power", MS, "DateTime")
    metric(bad, "Turbine/Power", "12.5", "String")
    metric(bad, "Turbine/Power", 7, "Int32", typed=False)  # an integer of no datatype in a birth: sign unknown
    metric(bad, "Turbine/Power", float("nan"), "Double")
    metric(bad, "Turbine/Power", 5, "Int64").ClearField("long_value")  # no value, not null
    metric(bad, "Pitch", 3.0, "Double")
    res = spb.decode(_topic("DBIRTH"), bad.SerializeToString(), NOW)
    assert isinstance(res, BatchDecode) and [s.values[2] for s in res.samples] == [3.0]
    assert [(res.where(p), r.reason) for p, r in res.rejected] == [
        ({"metric": n, "name": "Turbine/Power"}, reason) for n, reason in enumerate(
            ["bad_value_type", "bad_value_type", "bad_value_type", "bad_value_type", "non_finite",
             "missing_values"], 1)]  # fmt: skip
    details = [r.detail for _, r in res.rejected]
    assert "a Boolean of datatype Boolean" in details[0] and "an integer of datatype DateTime" in details[1]
    assert "ingest.numeric_strings" in details[2] and "sign" in details[3]
    text = _decoder(numeric_strings=True).decode(_topic("DBIRTH"), bad.SerializeToString(), NOW)
    assert sorted(s.values[0] for s in text.samples if not np.isnan(s.values[0])) == [12.5]  # type: ignore[union-attr]


def test_an_alias_no_birth_gave_asks_for_a_rebirth_and_deaths_forget_births():
    """DDATA by alias before any birth (the daemon started after it): each such metric refused (`no_birth`)
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
        ({"metric": 1, "alias": 1}, "no_birth"),
        ({"metric": 2, "alias": 2}, "no_birth"),
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
    # a DDEATH whose payload does not parse still forgets; an NDEATH of an older session (its bdSeq) does not
    spb.decode(_topic("DBIRTH"), _birth().SerializeToString(), NOW)
    assert spb.decode(_topic("DDEATH"), b"\x08", NOW) == BatchDecode([], [], sparkplug_module._metric_at)
    assert spb.decode(_topic("DDATA"), data, NOW).rejected  # type: ignore[union-attr]
    spb.decode(_topic("DBIRTH"), _birth().SerializeToString(), NOW)
    stale = Payload(timestamp=MS)
    metric(stale, "bdSeq", 2, "Int64")
    spb.decode(_topic("NDEATH", device=None), stale.SerializeToString(), NOW)
    assert not spb.decode(_topic("DDATA"), data, NOW).rejected  # type: ignore[union-attr]
    metric(stale, "bdSeq", 3, "Int64")  # this session's will
    del stale.metrics[0]
    spb.decode(_topic("NDEATH", device=None), stale.SerializeToString(), NOW)
    assert spb.decode(_topic("DDATA"), data, NOW).rejected and spb._kept == 0  # type: ignore[union-attr]


def test_deaths_name_the_turbines_whose_values_are_stale(monkeypatch):
    """A DDEATH names its device (its payload need not parse); an NDEATH of the node's session names the node, a
    turbine here, and the devices its births named or that sent data (a birth the daemon never saw); an older
    session's will names none, nor does a device the allow-list refuses."""
    spb = _decoder()
    for device in ("WT1", "WT2", "WT9"):
        spb.decode(_topic("DBIRTH", device=device), _birth().SerializeToString(), NOW)
    assert spb.take_deaths() == []
    spb.decode(_topic("DDEATH", device="WT2"), b"\x08", NOW)
    spb.decode(_topic("DDEATH", device="WT9"), Payload(timestamp=MS).SerializeToString(), NOW)
    assert spb.take_deaths() == ["WT2"] and spb.take_deaths() == []
    spb.decode(_topic("DBIRTH", device="WT2"), _birth().SerializeToString(), NOW)
    node = Payload(timestamp=MS, seq=0)
    metric(node, "bdSeq", 3, "Int64")
    spb.decode(_topic("NBIRTH", device=None), node.SerializeToString(), NOW)
    for device in ("WT1", "WT2"):
        spb.decode(_topic("DBIRTH", device=device), _birth().SerializeToString(), NOW)
    older = Payload(timestamp=MS)
    metric(older, "bdSeq", 2, "Int64")
    spb.decode(_topic("NDEATH", device=None), older.SerializeToString(), NOW)
    assert spb.take_deaths() == []
    named = Payload(timestamp=MS, seq=3)  # a device whose birth the daemon never saw, sending by name
    metric(named, "Pitch", 1.5, "Double")
    assert _samples(spb.decode(_topic("DDATA", node="gw2", device="WT2"), named.SerializeToString(), NOW))
    spb.decode(_topic("NDEATH", device=None), node.SerializeToString(), NOW)
    assert spb.take_deaths() == ["gw", "WT1", "WT2"]
    spb.decode(_topic("NDEATH", node="gw2", device=None), Payload(timestamp=MS).SerializeToString(), NOW)
    assert spb.take_deaths() == ["WT2"]  # gw2 is no turbine the allow-list takes; its device, seen in data, is
    spb.decode(_topic("NDEATH", node="gw2", device=None), Payload(timestamp=MS).SerializeToString(), NOW)
    assert spb.take_deaths() == []  # forgotten with the session
    monkeypatch.setattr(sparkplug_module, "DEVICES_KEPT", 2)  # bounded: the least recently heard node goes first
    for n, dev in (("n1", "WT1"), ("n2", "WT2"), ("n3", "WT1")):
        spb.decode(_topic("DDATA", node=n, device=dev), named.SerializeToString(), NOW)
    for n in ("n1", "n2", "n3"):
        spb.decode(_topic("NDEATH", node=n, device=None), Payload(timestamp=MS).SerializeToString(), NOW)
    assert spb.take_deaths() == ["WT2", "WT1"] and spb._n_devices == 0


def test_the_devices_a_death_names_are_kept_across_a_restart():
    """`devices()` (each node's devices: those its births named, those whose data it sent) given to a new decoder
    (`resume_devices`, as the daemon does from its state file): the node's death names them, though the new decoder
    has seen nothing of theirs."""
    spb = _decoder()
    node = Payload(timestamp=MS, seq=0)
    metric(node, "bdSeq", 3, "Int64")
    spb.decode(_topic("NBIRTH", device=None), node.SerializeToString(), NOW)
    for device in ("WT1", "WT2"):
        spb.decode(_topic("DBIRTH", device=device), _birth().SerializeToString(), NOW)
    named = Payload(timestamp=MS, seq=3)
    metric(named, "Pitch", 1.5, "Double")
    spb.decode(_topic("DDATA", node="gw2", device="WT2"), named.SerializeToString(), NOW)
    kept = spb.devices()
    assert kept == {"gw": ["WT1", "WT2"], "gw2": ["WT2"]}
    again = _decoder()
    again.resume_devices(kept)
    assert again.devices() == kept
    again.decode(_topic("NDEATH", device=None), Payload(timestamp=MS).SerializeToString(), NOW)
    assert again.take_deaths() == ["gw", "WT1", "WT2"] and again.node_deaths == ["gw", "WT1", "WT2"]
    assert again.devices() == {"gw2": ["WT2"]}  # forgotten with the node's session


def test_births_kept_are_those_of_turbines_taken_and_bounded():
    """A birth of a device off the allow-list is not kept (its data by alias asks no rebirth: it can give no
    sample); an empty birth counts one; births and deaths in any order keep the count true."""
    spb = _decoder()
    spb.decode(_topic("DBIRTH", device="WT9"), _birth().SerializeToString(), NOW)
    assert spb._kept == 0
    d = Payload(timestamp=MS)
    metric(d, None, 900.0, "Double", alias=1)
    res = spb.decode(_topic("DDATA", device="WT9"), d.SerializeToString(), NOW)
    assert res == BatchDecode([], [], sparkplug_module._metric_at) and spb.rebirths() == []
    rng = np.random.default_rng(3)
    kinds = ["DBIRTH", "NBIRTH", "DDEATH", "NDEATH"]
    for _ in range(3000):
        kind, device = kinds[int(rng.integers(4))], ["WT1", "WT2", "WT9"][int(rng.integers(3))]
        node = ["gw", "WT1", "edge"][int(rng.integers(3))]
        body = Payload(timestamp=MS) if rng.random() < 0.3 else _birth()
        spb.decode(_topic(kind, node=node, device=None if kind[0] == "N" else device), body.SerializeToString(), NOW)
        assert spb._kept == sum(max(1, len(t)) for ds in spb._births.values() for t in ds.values())
        assert all(spb._births.values())  # no node left without a table


def test_ignored_metric_names_take_patterns():
    """A tag folder the model does not read, dropped by a pattern of `mapping.ignored_keys`, from births and data
    by alias alike; a name outside it is still refused."""
    spb = _decoder(ignored_keys=["Status", "Gearbox/*"])
    b = _birth()
    metric(b, "Gearbox/Oil/Temp", 55.0, "Double", alias=60, ts=MS - 60_000)
    metric(b, "Hydraulics/Pressure", 1.0, "Double", alias=61, ts=MS - 60_000)
    res = spb.decode(_topic("DBIRTH"), b.SerializeToString(), NOW)
    assert [(res.where(p), r.reason) for p, r in res.rejected] == [  # type: ignore[union-attr]
        ({"metric": 7, "name": "Hydraulics/Pressure"}, "unknown_channel")]  # fmt: skip
    d = Payload(timestamp=MS)
    metric(d, None, 56.0, "Double", alias=60, typed=False)
    metric(d, None, 1.0, "Double", alias=1, typed=False)
    assert _samples(spb.decode(_topic("DDATA"), d.SerializeToString(), NOW)) == [("WT1", NOW, [1.0, None, None], ())]


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
    for name, tpl in [("errors", "spBv1.0/f/NDATA/{gateway}"), ("status", "spBv1.0/f/DBIRTH/{gateway}/status"),
                      ("score", "spBv1.0/f/DDATA/{turbine}/score"), ("telemetry_batch", "spBv1.0/f/DDEATH/gw/b"),
                      ("telemetry", "spBv1.0/{turbine}/NDATA/x"),
                      ("telemetry", "spBv1.0/f/NCMD/{turbine}"),  # the daemon's own rebirth requests
                      ("score", "spBv1.0/f/NCMD/{turbine}")]:  # its records sent to edge nodes as commands  # fmt: skip
        with pytest.raises(ConfigError, match=rf"the group's Sparkplug topics .* \['{name}'\]"):
            daemon_config_from_dict({"topics": {"sparkplug_group": "f", name: tpl}})
    assert daemon_config_from_dict({"topics": {"sparkplug_group": "f", "errors": "spBv1.0/f/NCMD/{gateway}/e"}})


def test_what_the_review_found_is_read_as_protobuf_reads_it_or_refused_alone():
    """Stamps in microseconds, a value field or a name of the wrong wire type, UInt32 in long_value (Java's Tahu),
    a name that is not UTF-8, an unreadable Quality, integers outside their datatype, data by name with no
    datatype and no birth: none raises, none refuses more than its metric, and each reads as Google's protobuf
    reads the payload."""
    spb = _decoder()
    p = Payload(timestamp=MS * 1000)  # microseconds
    metric(p, "Pitch", 1.0, "Double")
    assert [r.reason for _, r in spb.decode(_topic("DDATA"), p.SerializeToString(), NOW).rejected] == ["bad_timestamp"]  # type: ignore[union-attr]
    wrong = bytes_field(1, b"Pitch") + varint_field(13, 5) + bytes_field(4, b"x")  # double and datatype mistyped
    res = spb.decode(_topic("DDATA"), varint_field(1, MS) + bytes_field(2, wrong), NOW)
    assert [r.reason for _, r in res.rejected] == ["missing_values"]  # type: ignore[union-attr]
    back = Payload()
    back.ParseFromString(varint_field(1, MS) + bytes_field(2, wrong))
    assert back.metrics[0].WhichOneof("value") is None and not back.metrics[0].HasField("datatype")
    u32 = Payload(timestamp=MS)
    u32.metrics.add(name="Pitch", datatype=7, long_value=4_000_000_000)  # as Java's Tahu writes UInt32
    assert _samples(spb.decode(_topic("DDATA"), u32.SerializeToString(), NOW))[0][2][2] == 4e9
    b = _birth()
    b.metrics.add(name="Temp\u00e9rature", alias=50, datatype=10, double_value=1.0)
    raw = b.SerializeToString().replace("\u00e9".encode(), b"\xe9x")  # as long, no longer UTF-8
    birth = spb.decode(_topic("DBIRTH"), raw, NOW)
    assert [(r.reason, birth.where(p)["name"]) for p, r in birth.rejected] == [  # type: ignore[union-attr]
        ("unknown_channel", "Temp\ufffdxrature")]  # fmt: skip
    data = Payload(timestamp=MS)
    metric(data, None, 3, "Int16", alias=3, typed=False)
    assert _samples(spb.decode(_topic("DDATA"), data.SerializeToString(), NOW))[0][2][2] == 3.0  # the birth held
    q = Payload(timestamp=MS)
    metric(q, "Pitch", 1.0, "Double").properties.keys.append("Quality")
    metric(q, "Turbine/Power", 2.0, "Double").properties.keys.append("Quality")
    q.metrics[1].properties.values.add(type=12, string_value="GOOD")
    metric(q, "Turbine/WindSpeed", 3.0, "Double", quality=500).properties.values[0].int_value = 192  # last wins
    res = spb.decode(_topic("DDATA"), q.SerializeToString(), NOW)
    assert [(r.reason, r.detail.split(": ")[1]) for _, r in res.rejected] == [  # type: ignore[union-attr]
        ("bad_value_type", "a Quality property without a value"),
        ("bad_value_type", "a Quality property that is not an integer")]  # fmt: skip
    assert _samples(res)[0][2] == [None, 3.0, None]
    for datatype, value in [("Int8", 300), ("UInt8", 256), ("Int16", 70_000), ("UInt32", 2**32)]:
        big = Payload(timestamp=MS)
        m = big.metrics.add(name="Pitch", datatype=dict(Int8=1, UInt8=5, Int16=2, UInt32=7)[datatype])
        m.long_value = value
        assert [r.reason for _, r in spb.decode(_topic("DDATA"), big.SerializeToString(), NOW).rejected] == [  # type: ignore[union-attr]
            "bad_value_type"], datatype  # fmt: skip
    assert [integer_value(v, f, t) for v, f, t in [(255, 10, 1), (2**32 - 1, 10, 1), (2**64 - 1, 11, 1),
                                                   (2**32 - 2, 11, 3), (2**33, 11, 3), (2**63, 11, 4),
                                                   (2**32 - 1, 10, 7)]] == [
        -1, -1, -1, -2, None, -(2**63), 2**32 - 1]  # fmt: skip
    fresh = _decoder()
    by_name = Payload(timestamp=MS)
    metric(by_name, "Pitch", -3, "Int16", typed=False)  # data by name, no datatype: only a birth could say
    res = fresh.decode(_topic("DDATA"), by_name.SerializeToString(), NOW)
    assert [r.reason for _, r in res.rejected] == ["no_birth"] and fresh.rebirths() == ["gw"]  # type: ignore[union-attr]


def test_payloads_read_as_googles_protobuf_reads_them():
    """Differential: 6,000 payloads of every metric form, each cut or with bytes changed. Whenever Google's
    parser takes one, ours does too and reads its timestamp and seq, and each metric's name, alias, timestamp,
    datatype, is_null and value as Google's does."""
    rng = np.random.default_rng(11)
    forms = [("Int8", -5), ("UInt64", 2**64 - 1), ("Float", 0.25), ("Double", -7.5), ("Boolean", True),
             ("String", "12.5"), ("Int32", -(2**31)), ("DateTime", MS)]  # fmt: skip
    seen = agreed = 0
    for k in range(6000):
        p = Payload(timestamp=MS - k, seq=k % 256)
        for j in range(int(rng.integers(1, 5))):
            datatype, value = forms[int(rng.integers(len(forms)))]
            metric(p, f"m{j}" if rng.random() < 0.7 else None, None if rng.random() < 0.1 else value, datatype,
                   alias=int(rng.integers(0, 2**40)), ts=MS - j, typed=bool(rng.random() < 0.8),
                   quality=192 if rng.random() < 0.3 else None)  # fmt: skip
        buf = bytearray(p.SerializeToString())
        for _ in range(int(rng.integers(0, 4))):
            buf[int(rng.integers(len(buf)))] = int(rng.integers(256))
        if rng.random() < 0.25:
            buf = buf[: int(rng.integers(len(buf) // 2, len(buf) + 1))]
        google = Payload()
        try:
            google.ParseFromString(bytes(buf))
        except Exception:  # noqa: BLE001  (google.protobuf.message.DecodeError and kin: Google refuses it)
            continue
        seen += 1
        ts, seq, ours = parse_payload(bytes(buf))
        assert ts == (google.timestamp if google.HasField("timestamp") else None)
        assert seq == (google.seq if google.HasField("seq") else None)
        assert len(ours) == len(google.metrics)
        for a, g in zip(ours, google.metrics):
            field = g.WhichOneof("value")
            want = None if field is None else getattr(g, field)
            got = None if a.value is None else a.value[1]
            if isinstance(want, str):
                want = want.encode()
            assert (a.alias, a.ts_ms, a.datatype, a.is_null) == (
                g.alias if g.HasField("alias") else None, g.timestamp if g.HasField("timestamp") else None,
                g.datatype if g.HasField("datatype") else None, g.is_null)  # fmt: skip
            assert got == want or (isinstance(got, float) and math.isnan(got) and math.isnan(want)), (got, want)
            if g.HasField("name") and "\ufffd" not in (a.name or ""):
                assert a.name == g.name
        agreed += 1
    assert seen > 2000 and agreed == seen


def test_messages_the_sequence_numbers_skipped_are_counted():
    """Each message of an edge node after its NBIRTH carries the next seq modulo 256: the numbers skipped are
    counted as lost messages (any of the node's messages, node or device), across the wrap; a number fewer than
    128 behind is a redelivery, not counted; an NBIRTH starts the count again; a node first seen mid-session
    starts it at its first message; a DDEATH's number is followed; an NDEATH or a new NBIRTH (one without a number,
    or one that does not parse) ends the count; the nodes followed are bounded, the most recent kept."""
    spb = _decoder()

    def send(kind: str, seq: int | None, node: str = "gw") -> None:
        p = Payload(timestamp=MS) if seq is None else Payload(timestamp=MS, seq=seq)
        metric(p, "bdSeq", 1, "Int64")
        metric(p, "Pitch", 1.0, "Double")
        spb.decode(_topic(kind, node=node, device=None if kind[0] == "N" else "WT1"), p.SerializeToString(), NOW)

    send("NBIRTH", 0)
    for seq in [1, 2, 3, 5, 6]:  # 4 lost
        send("DDATA", seq)
    assert spb.take_lost() == 1 and spb.take_lost() == 0
    for seq in [7, 100, 200, 250, 3, 4]:  # 8..99, 101..199, 201..249 and 251..2 lost, across the wrap
        send("NDATA" if seq % 2 else "DDATA", seq)
    assert spb.take_lost() == 92 + 99 + 49 + 8
    for seq in [2, 3, 4, 5, None, 9]:  # redelivered 2, 3, 4; 6, 7, 8 lost (the message without seq is not counted)
        send("DDATA", seq)
    assert spb.take_lost() == 3
    send("NBIRTH", 0)
    send("DDATA", 1)
    send("DDATA", 40, node="other")  # first seen mid-session
    send("DDATA", 41, node="other")
    assert spb.take_lost() == 0
    send("DDEATH", 2)  # a DDEATH carries the next number, an NDEATH none
    send("DBIRTH", 3)
    send("NDEATH", None)
    send("NBIRTH", None)  # a new session without a number: the old one's last is not followed
    send("NDATA", 1)
    spb.decode(_topic("NBIRTH", device=None), b"\x08", NOW)  # a garbled NBIRTH still starts a session
    send("NDATA", 200)
    assert spb.take_lost() == 0
    sparkplug_module._NODES_KEPT, kept = 8, sparkplug_module._NODES_KEPT
    try:
        for k in range(100):  # made-up node ids: the most recent nodes are kept
            send("NBIRTH", 0, node=f"n{k}")
        send("NDATA", 5, node="n99")
        assert len(spb._seqs) == len(spb._sessions) == 8 and spb.take_lost() == 4
    finally:
        sparkplug_module._NODES_KEPT = kept


def test_births_and_history_are_marked():
    """A birth's decode is marked `birth`; a data message whose every value read is `is_historical` is marked
    `historical` (metrics not read do not count), and one with a current value among them is not."""
    dec = _decoder()
    born = dec.decode(_topic("DBIRTH"), _birth().SerializeToString(), NOW)
    assert born.birth and not born.historical
    for flags, want in (((True, True), True), ((True, False), False), ((False, False), False)):
        p = Payload(timestamp=MS, seq=2)
        for alias, flag in zip((1, 2), flags):
            metric(p, None, 1.0, "Double", alias=alias, ts=MS - 1000, typed=False).is_historical = flag
        metric(p, None, "RUN", "String", alias=4, ts=MS, typed=False)  # ignored, current: not read, not counted
        res = dec.decode(_topic("DDATA"), p.SerializeToString(), NOW)
        assert (res.birth, res.historical, len(res.samples)) == (False, want, 1)
        assert [m.is_historical for m in parse_payload(p.SerializeToString()).metrics] == [*flags, False]
    empty = Payload(timestamp=MS, seq=3)
    metric(empty, None, "RUN", "String", alias=4, ts=MS, typed=False).is_historical = True
    assert not dec.decode(_topic("DDATA"), empty.SerializeToString(), NOW).historical  # nothing read


def test_birth_hold_keeps_a_birth_until_its_turbines_data_reaches_it():
    """`BirthHold`: a birth waits while history older than it comes; history reaching part of what is held
    releases that part, merged with its samples by time; a current message releases the rest; a later birth of
    the turbine joins what it holds (in place of the same stamps) and does not count as activity; a death drops
    what it holds (counted) and keeps the turbine until its next birth or `quiet_ns`; `quiet_ns` without history
    (twice that while the caller has not read what came), or a clock set back, releases it; a death with a wait
    keeps every turbine it names until the wait is over or a birth comes."""
    s = lambda t, ts: Sample(t, ts, np.zeros(1))  # noqa: E731
    h = BirthHold(quiet_ns=100)
    b1, b2 = s("WT1", 1000), s("WT1", 1000)
    h.hold([b1, b2], now_ns=0)
    assert len(h) == 1 and h.turbines() == ["WT1"]
    history = [s("WT1", 400), s("WT1", 999)]
    assert h.merge(history, historical=True, now_ns=50) == history  # older history: held
    other = [s("WT2", 2000)]
    assert h.merge(other, historical=False, now_ns=60) == other  # another turbine's data
    assert h.due(now_ns=149, drained=True) == [] and h.due(now_ns=249, drained=False) == []
    assert h.due(now_ns=150, drained=True) == [b1, b2] and len(h) == 0  # 100 after the last history

    b3, again = s("WT1", 3000), s("WT1", 1000)
    h.hold([b1], 0)
    h.hold([b3, again], 90)  # a rebirth in the middle of the history: both wait, `again` in b1's place
    assert h.due(now_ns=100, drained=True) == [b3, again]  # the rebirth was no activity
    h.hold([b1], 0)
    h.hold([b3], 1)
    reaching = [s("WT1", 900), s("WT1", 1000), s("WT1", 1500)]
    assert h.merge(reaching, historical=True, now_ns=2) == [reaching[0], b1, *reaching[1:]]  # by time, held first
    assert h.turbines() == ["WT1"]
    live = [s("WT1", 2000), s("WT1", 4000)]
    assert h.merge(live, historical=False, now_ns=3) == [live[0], b3, live[1]] and len(h) == 0

    h.hold([b1, s("WT2", 1000)], 0)
    assert h.drop(["WT2", "WT9"]) == 1 and h.turbines() == ["WT1", "WT2"]  # a death: WT2 stays, holding nothing
    assert h.due(now_ns=100, drained=True) == [b1] and len(h) == 0  # WT2 goes too
    h.hold([b1], 50)
    assert h.due(now_ns=-1, drained=True) == [b1]  # the clock set back
    h.hold([b1, b2, s("WT3", 5)], 0)
    assert h.drop() == 3 and len(h) == 0  # stop

    b7 = s("WT7", 3000)
    assert h.drop(["WT7"], now_ns=10) == 0 and len(h) == 0  # a death of a turbine not held: nothing to keep
    h.wait(["WT7"], now_ns=10, wait_ns=500)  # an NDEATH's, waiting for history
    assert h.due(now_ns=200, drained=True) == [] and h.turbines() == ["WT7"]  # quiet, but within the wait
    h.hold([b7], 300)  # back: its birth starts afresh (quiet from now), the wait kept for the next death
    assert h.due(now_ns=399, drained=True) == [] and h.due(now_ns=400, drained=True) == [b7]
    h.wait(["WT7"], now_ns=10, wait_ns=500)
    h.hold([b7], 20)
    assert h.drop(["WT7"], now_ns=30) == 1
    h.wait(["WT7"], now_ns=30, wait_ns=500)  # a death again within the first one's wait: not extended
    assert h.due(now_ns=509, drained=True) == [] and h.due(now_ns=510, drained=True) == [] and len(h) == 0
    h.wait(["WT7"], now_ns=600, wait_ns=500)  # after the wait: a wait of its own
    assert h.due(now_ns=1099, drained=True) == [] and len(h) == 1
    current = [s("WT7", 5)]
    assert h.merge(current, historical=False, now_ns=700) == current and len(h) == 0  # current data ends it

    h.wait(["WT7", "WT8"], now_ns=1000, wait_ns=500)  # the waits a state file keeps, and a restart takes back
    h.hold([b7], 1100)  # WT7's births came: no longer a death's wait
    assert h.waits(now_ns=1200) == {"WT8": 1500} and h.waits(now_ns=1500) == {}
    again = BirthHold(quiet_ns=100)
    again.hold([s("WT9", 1)], 1200)
    again.resume({"WT8": 1500, "WT9": 1500, "WT6": 1200}, now_ns=1200)  # WT9 held already; WT6's wait ended
    assert again.turbines() == ["WT9", "WT8"] and again.waits(now_ns=1200) == {"WT8": 1500}
    assert again.due(now_ns=1499, drained=True) == [s("WT9", 1)] and again.turbines() == ["WT8"]
    assert again.due(now_ns=1500, drained=True) == [] and len(again) == 0


def test_birth_hold_accounts_for_every_sample_it_holds():
    """10,000 random operations (births with repeated stamps, history, current data, deaths, quiet releases,
    clocks set back): every held sample comes back once or is dropped (counted) or replaced by a birth's sample of
    the same turbine and stamp; what `merge` returns is in time order and holds its message's samples."""
    rng = np.random.default_rng(7)
    h = BirthHold(quiet_ns=50)
    live: dict[int, Sample] = {}  # id -> sample, held now
    out = dropped = replaced = held_n = 0
    now = 0
    for _ in range(10_000):
        now += int(rng.integers(-5, 30))
        t = f"WT{rng.integers(3)}"
        op = rng.integers(5)
        if op == 0:
            births = [Sample(t, int(ts), np.zeros(1)) for ts in rng.integers(0, 100, size=rng.integers(1, 4))]
            same = {b.ts_ns for b in births}
            gone = [k for k, s in live.items() if s.turbine == t and s.ts_ns in same]
            replaced += len(gone)
            for k in gone:
                del live[k]
            h.hold(births, now)
            live.update((id(b), b) for b in births)
            held_n += len(births)
        elif op in (1, 2):
            stamps = sorted(int(ts) for ts in rng.integers(0, 100, size=3))
            msg = [Sample(t, ts, np.zeros(1)) for ts in stamps]
            got = h.merge(msg, historical=op == 1, now_ns=now)
            assert [s.ts_ns for s in got] == sorted(s.ts_ns for s in got)
            assert all(any(g is s for g in got) for s in msg)
            released = [s for s in got if id(s) in live]
            out += len(released)
            for s in released:
                del live[id(s)]
        elif op == 3:
            before = {k for k, s in live.items() if s.turbine == t}
            dropped += h.drop([t])
            for k in before:
                del live[k]
        else:
            for s in h.due(now, drained=bool(rng.integers(2))):
                assert id(s) in live
                del live[id(s)]
                out += 1
    dropped += h.drop()
    assert out + dropped + replaced == held_n and out > 1000 and dropped > 100
