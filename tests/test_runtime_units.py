"""Unit tests of the runtime's small parts: config schema, alert state machine, telemetry validation, JSON."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np
import pytest

from scada_tcn.runtime.alerts import AlertState
from scada_tcn.runtime.cells import is_number, parse_numbers
from scada_tcn.runtime.daemon_config import ConfigError, MappingCfg, daemon_config_from_dict, describe
from scada_tcn.runtime.ignored import IgnoredKeys
from scada_tcn.runtime.records import ScoreRecord, batches, dumps, forecast_json, iso_utc, split_batch
from scada_tcn.runtime.telemetry import (
    REASONS,
    BatchDecode,
    Rejection,
    Sample,
    TelemetryDecoder,
    parse_timestamp_ns,
)

NOW = parse_timestamp_ns("2024-06-01T00:00:00+00:00")


# ---------------------------------------------------------------------------------------------- config
def test_config_defaults_env_overrides_and_unknown_keys():
    cfg = daemon_config_from_dict(
        {"site": "s1", "broker": {"url": "mqtt://b:1883"}},
        {
            "SCADA_RT_BROKER__URL": "mqtts://b:8883",
            "SCADA_RT_INGEST__GRACE_S": "30",
            "SCADA_RT_MAPPING__COLUMNS": "{power: P_kW}",
            "OTHER": "x",
        },
    )
    assert (
        cfg.broker.url == "mqtts://b:8883" and cfg.ingest.grace_s == 30.0 and cfg.mapping.columns == {"power": "P_kW"}
    )
    with pytest.raises(ConfigError, match=r"unknown keys \['gracee'\]; allowed keys: \['grace_s'"):
        daemon_config_from_dict({"ingest": {"gracee": 1}})
    with pytest.raises(ConfigError, match="environment SCADA_RT_BROKER__PORT: unknown key 'port' in broker"):
        daemon_config_from_dict({}, {"SCADA_RT_BROKER__PORT": "1"})
    with pytest.raises(ConfigError, match=r"ingest.grace_s: expected float, got str"):
        daemon_config_from_dict({"ingest": {"grace_s": "soon"}})
    with pytest.raises(ConfigError, match="use mqtts://"):
        daemon_config_from_dict({"broker": {"tls": {"ca_file": "ca.crt"}}})
    with pytest.raises(ConfigError, match="topics.telemetry: template must contain {turbine}"):
        daemon_config_from_dict({"topics": {"telemetry": "scada/x/telemetry"}})
    assert daemon_config_from_dict({"topics": {"score_batch": "s/{site}/{gateway}/scores"}}).topics.score_batch
    with pytest.raises(ConfigError, match="topics.score_batch: one topic for the whole fleet, no {turbine}"):
        daemon_config_from_dict({"topics": {"score_batch": "s/{turbine}/scores"}})
    with pytest.raises(ConfigError, match="topics.score_batch_bytes: must be >= 8192"):
        daemon_config_from_dict({"topics": {"score_batch": "s/scores", "score_batch_bytes": 4096}})
    assert "broker.url = 'mqtt://localhost:1883'" in describe()


# ---------------------------------------------------------------------------------------------- alerts
def _reference_alerts(scores, thr, T_on, T_off, N_on, N_off):
    on, c_on, c_off, out = False, 0, 0, []
    for s in scores:
        if not on:
            c_on = c_on + 1 if s >= T_on * thr else 0
            if c_on >= N_on:
                on, c_off = True, 0
        else:
            c_off = c_off + 1 if s <= T_off * thr else 0
            if c_off >= N_off:
                on, c_on = False, 0
        out.append(on)
    return out


def test_alert_state_matches_scalar_reference_per_turbine():
    rng = np.random.default_rng(0)
    scores = rng.uniform(0, 2, size=(300, 5))
    a = AlertState(T_on=1.0, T_off=0.8, N_on=3, N_off=4)
    got = np.array([a.step(np.arange(5), scores[t], np.ones(5)).on for t in range(300)])
    for j in range(5):
        assert got[:, j].tolist() == _reference_alerts(scores[:, j], 1.0, 1.0, 0.8, 3, 4)


def test_alert_state_contract():
    a = AlertState(T_on=1.0, T_off=0.5, N_on=1, N_off=1)
    slots, s, thr = np.array([0, 1]), np.array([2.0, 0.1]), np.array([1.0, 1.0])
    keep = (slots.copy(), s.copy(), thr.copy())
    tr = a.step(slots, s, thr)
    assert tr.turned_on.tolist() == [True, False]
    assert all((x == y).all() for x, y in zip((slots, s, thr), keep))  # inputs not mutated
    b = AlertState(T_on=1.0, T_off=0.5, N_on=1, N_off=1)
    b.load_state_dict(a.state_dict())
    assert b.step([0], [0.1], [1.0]).turned_off.tolist() == [True]
    with pytest.raises(ValueError, match="distinct"):
        a.step([0, 0], [1.0, 1.0], [1.0, 1.0])
    with pytest.raises(ValueError, match="T_off=2.0 must be <= T_on=1.0"):
        AlertState(T_on=1.0, T_off=2.0, N_on=1, N_off=1)


# ------------------------------------------------------------------------------------------- telemetry
def _decoder(**overrides: Any) -> TelemetryDecoder:
    """The tests' decoder: power (payload key P) and wind speed (ws), the turbine at topic level 2, payloads of
    1000 bytes at most, stamps up to 300 s ahead and a day back, WT1 allowed; `overrides` replace any argument."""
    args: dict[str, Any] = {"channels": ["power", "wind_speed"], "key_of_channel": {"power": "P", "wind_speed": "ws"},
                            "turbine_level": 2, "max_payload_bytes": 1000, "max_future_s": 300.0,
                            "max_past_s": 86400.0, "allowed_turbines": ["WT1"]}  # fmt: skip
    return TelemetryDecoder(**{**args, **overrides})


@pytest.fixture()
def decoder():
    return _decoder()


@pytest.mark.parametrize(
    "topic,payload,reason",
    [
        ("s/x/WT1/t", b"x" * 1001, "oversized"),
        ("s/x/WT1/t", b"\xff", "not_utf8"),
        ("s/x/WT1/t", b"{", "malformed_json"),
        ("s/x/WT1/t", b"[" * 5000 + b"]" * 5000, "malformed_json"),  # an array: deeper than JSON parsers go
        ("s/x/WT1/t", b"3", "not_an_object"),
        ("s/x/WT1/t", b'"x"', "not_an_object"),
        ("s/x/WT1/t", b'{"ts": 1717200000, "values": {"P": 1}, "id": 1}', "unknown_key"),
        ("s/x/WT1/t", b'{"values": {"P": 1}}', "missing_ts"),
        ("s/x/WT1/t", b'{"ts": "noon", "values": {"P": 1}}', "bad_timestamp"),
        ("s/x/WT1/t", b'{"ts": true, "values": {"P": 1}}', "bad_timestamp"),
        ("s/x/WT1/t", b'{"ts": "2024-06-01T00:00:00", "values": {"P": 1}}', "naive_timestamp"),
        ("s/x/WT1/t", b'{"ts": "2024-06-01T01:00:00Z", "values": {"P": 1}}', "ts_in_future"),
        ("s/x/WT1/t", b'{"ts": "2024-05-01T00:00:00Z", "values": {"P": 1}}', "ts_too_old"),
        ("s/x/WT1/t", b'{"ts": 1717200000, "values": []}', "missing_values"),
        ("s/x/WT1/t", b'{"ts": 1717200000, "values": {"Q": 1}}', "unknown_channel"),
        ("s/x/WT1/t", b'{"ts": 1717200000, "values": {"P": "1"}}', "bad_value_type"),
        ("s/x/WT1/t", b'{"ts": 1717200000, "values": {"P": Infinity}}', "non_finite"),
        ("s/x/WT1/t", b'{"ts": 1717200000, "values": {"P": -1e400}}', "non_finite"),
        ("s/x/WT1/t", b'{"ts": 1717200000, "values": {"P": 1' + b"0" * 400 + b"}}", "non_finite"),
        ("s/x", b"{}", "bad_topic"),
        ("s/x/WT#1/t", b"{}", "bad_turbine_id"),
        ("s/x/WT2/t", b"{}", "unknown_turbine"),
    ],
)
def test_telemetry_rejections(decoder, topic, payload, reason):
    res = decoder.decode(topic, payload, NOW)
    assert isinstance(res, Rejection) and res.reason == reason, res
    assert res.reason in REASONS


def test_stamps_beyond_int64_nanoseconds_are_refused_however_wide_the_clock_checks():
    """With `ingest.max_past_s` / `max_future_s` set very wide (to switch the age check off, say), an ISO stamp of
    year 1 or 9999 passed both clock checks, then crashed the loop outside the message boundary (int64 overflow
    in the journal, or the binning's range check) on every redelivery. It is refused at the boundary."""
    wide = _decoder(max_future_s=1e12, max_past_s=1e12)
    for ts in ("0001-01-01T00:00:00+00:00", "9999-12-31T00:00:00+00:00"):
        res = wide.decode("s/x/WT1/t", b'{"ts": "%s", "values": {"P": 1}}' % ts.encode(), NOW)
        assert isinstance(res, Rejection) and res.reason == "bad_timestamp" and "2255-03-14" in res.detail, ts
    assert isinstance(wide.decode("s/x/WT1/t", b'{"ts": "2255-03-13T00:00:00Z", "values": {"P": 1}}', NOW), Sample)


def test_telemetry_accepts_subsets_and_nulls(decoder):
    res = decoder.decode("s/x/WT1/t", b'{"ts": "2024-06-01T02:00:00+02:00", "values": {"ws": 7.5, "P": null}}', NOW)
    assert isinstance(res, Sample) and res.turbine == "WT1" and res.ts_ns == NOW
    assert np.isnan(res.values[0]) and res.values[1] == 7.5
    assert parse_timestamp_ns(1717200000.5) == NOW + 500_000_000


def test_epoch_milliseconds_read_with_ingest_epoch_unit_ms(decoder):
    """ThingsBoard's `{"ts": 1717200000000, "values": {...}}` (Node-RED's Date.now(), many PLC gateways): with
    `epoch_unit="ms"` a numeric stamp is epoch milliseconds and gets the ns of the same moment stamped in ISO or
    epoch seconds (so the two are deduplicated), fractions to the microsecond; ISO stamps read as before. With the
    default unit such a number is refused and the detail says which setting reads it; seconds under "ms" (1970)
    are refused as too old, saying the same."""
    ms = _decoder(epoch_unit="ms")
    iso = decoder.decode("s/x/WT1/t", b'{"ts": "2024-05-31T23:59:59.123+00:00", "values": {"P": 1}}', NOW)
    assert isinstance(iso, Sample) and iso.ts_ns == NOW - 877_000_000
    for ts in (b"1717199999123", b"1717199999123.0", b"1717199999122.9996", b'"2024-05-31T23:59:59.123Z"'):
        got = ms.decode("s/x/WT1/t", b'{"ts": %s, "values": {"P": 1}}' % ts, NOW)
        assert isinstance(got, Sample) and got.ts_ns == iso.ts_ns, ts
    assert decoder.decode("s/x/WT1/t", b'{"ts": 1717199999.123, "values": {"P": 1}}', NOW).ts_ns == iso.ts_ns
    assert parse_timestamp_ns(1717199999123, 1000) == parse_timestamp_ns(1717199999.123) == iso.ts_ns
    refused = decoder.decode("s/x/WT1/t", b'{"ts": 1717199999123, "values": {"P": 1}}', NOW)
    assert isinstance(refused, Rejection) and refused.reason == "bad_timestamp"
    assert "epoch seconds (a number this large may be epoch milliseconds: set ingest.epoch_unit: ms)" in refused.detail
    old = ms.decode("s/x/WT1/t", b'{"ts": 1717199999, "values": {"P": 1}}', NOW)
    assert isinstance(old, Rejection) and old.reason == "ts_too_old"
    assert old.detail.endswith("(a number this small may be epoch seconds: set ingest.epoch_unit: s)")
    huge = ms.decode("s/x/WT1/t", b'{"ts": 1e20, "values": {"P": 1}}', NOW)
    assert isinstance(huge, Rejection) and huge.reason == "bad_timestamp" and "epoch milliseconds" in huge.detail
    with pytest.raises(ValueError, match="epoch_unit must be one of"):
        TelemetryDecoder(["power"], {"power": "P"}, 2, 1000, 300.0, 86400.0, epoch_unit="us")
    with pytest.raises(ConfigError, match="ingest.epoch_unit: one of s, ms; got 'us'"):
        daemon_config_from_dict({"ingest": {"epoch_unit": "us"}})
    assert daemon_config_from_dict({"ingest": {"epoch_unit": "ms"}}).ingest.epoch_unit == "ms"


def test_keys_a_gateway_publishes_beside_the_channels_are_dropped_when_listed(decoder):
    """A gateway publishing more tags than the model reads had every message rejected (`unknown_channel`). Keys
    in `ignored_keys` (runtime.yaml `mapping.ignored_keys`) are dropped whatever their value; the sample is the
    one without them. Any other key still rejects the message, and the detail lists every such key and the
    setting; a key both read and ignored is refused when the decoder is built and when the config is read."""
    tb = _decoder(ignored_keys=["status_text", "alarm"])
    plain = b'{"ts": 1717200000, "values": {"P": 1.5, "ws": null}}'
    extra = b'{"ts": 1717200000, "values": {"status_text": "RUN", "P": 1.5, "alarm": {"code": 7}, "ws": null}}'
    want, got = decoder.decode("s/x/WT1/t", plain, NOW), tb.decode("s/x/WT1/t", extra, NOW)
    assert isinstance(got, Sample) and got.ts_ns == want.ts_ns
    np.testing.assert_array_equal(got.values, want.values)
    refused = decoder.decode("s/x/WT1/t", extra, NOW)
    assert isinstance(refused, Rejection) and refused.reason == "unknown_channel"
    assert refused.detail.startswith("keys ['status_text', 'alarm'] are not channels; known: ['P', 'ws']")
    assert refused.detail.endswith("(list keys the gateway publishes on purpose in mapping.ignored_keys)")
    other = tb.decode("s/x/WT1/t", b'{"ts": 1717200000, "values": {"alarm": 1, "Q": 2, "P": 1}}', NOW)
    assert isinstance(other, Rejection) and other.reason == "unknown_channel" and "keys ['Q']" in other.detail
    with pytest.raises(ValueError, match=r"mapping.ignored_keys \['P'\] are channels' payload keys"):
        TelemetryDecoder(["power"], {"power": "P"}, 2, 1000, 300.0, 86400.0, ignored_keys=["P"])
    with pytest.raises(ConfigError, match=r"mapping.ignored_keys: \['P'\] are channels' keys in mapping.columns"):
        daemon_config_from_dict({"mapping": {"columns": {"power": "P"}, "ignored_keys": ["P"]}})
    with pytest.raises(ConfigError, match="mapping.ignored_keys: distinct non-empty payload keys expected"):
        daemon_config_from_dict({"mapping": {"ignored_keys": ["a", "a"]}})


def test_an_array_of_documents_judges_each_element_as_a_message(decoder):
    """ThingsBoard's `[{"ts": ..., "values": {...}}, ...]` (a device's buffered samples sent at once) was refused
    whole (`not_an_object`). Each element is now judged as a message of its own on the turbine's topic: a good one
    gives the sample its document gives alone, a bad one is refused with that message's reason by its element
    number. The whole message is refused only when it is not JSON, not UTF-8, empty, or larger than
    `max_batch_payload_bytes` (not `max_payload_bytes`: a buffer holds many samples)."""
    docs = [b'{"ts": %d, "values": {"ws": %d.5, "P": null}}' % (1717200000 - 600 * k, k) for k in range(4)]
    bad = [
        (b"3", "not_an_object"),
        (b'{"ts": 1717200000, "values": {"P": 1}, "id": 1}', "unknown_key"),
        (b'{"ts": 1717200000, "values": {"Q": 1}}', "unknown_channel"),
        (b"[]", "not_an_object"),
        (b'{"ts": "2024-06-01T01:00:00Z", "values": {"P": 1}}', "ts_in_future"),
        (b'{"ts": 1' + b"0" * 400 + b', "values": {"P": 1}}', "bad_timestamp"),
    ]  # an int no float holds: it raised
    elements = [docs[0], bad[0][0], docs[1], bad[1][0], bad[2][0], docs[2], bad[3][0], bad[4][0], docs[3], bad[5][0]]
    payload = b" \n[" + b", ".join(elements) + b"]"
    assert len(payload) > 700
    small = _decoder(max_payload_bytes=700)
    res = small.decode("s/x/WT1/t", payload, NOW)
    assert isinstance(res, BatchDecode)
    assert [(n, r.reason) for n, r in res.rejected] == [(2, "not_an_object"), (4, "unknown_key"),
                                                         (5, "unknown_channel"), (7, "not_an_object"),
                                                         (8, "ts_in_future"), (10, "bad_timestamp")]  # fmt: skip
    assert res.rejected[0][1].detail == "element is a JSON int, expected an object"
    for got, doc in zip(res.samples, docs, strict=True):
        want = decoder.decode("s/x/WT1/t", doc, NOW)
        assert got.turbine == "WT1" and got.ts_ns == want.ts_ns
        np.testing.assert_array_equal(got.values, want.values)
    for whole, reason in ((b"[", "malformed_json"), (b"[]", "missing_values"), (b"[\xff]", "not_utf8"),
                          (b'[{"ts": 1717200000, "values": {"P": NaN}}]', "non_finite")):  # fmt: skip
        got = decoder.decode("s/x/WT1/t", whole, NOW)
        assert isinstance(got, Rejection) and got.reason == reason, whole
    tiny = TelemetryDecoder(["power"], {"power": "P"}, 2, 1000, 300.0, 86400.0, max_batch_payload_bytes=100)
    over = tiny.decode("s/x/WT1/t", b"[" + b",".join([b'{"ts": 1717200000, "values": {"P": 1}}'] * 3) + b"]", NOW)
    assert isinstance(over, Rejection) and over.reason == "oversized" and "max_batch_payload_bytes=100" in over.detail
    assert isinstance(decoder.decode("s/x/WT9/t", b"[]", NOW), Rejection)  # the topic is checked first
    for huge in (b"1" + b"0" * 400, b"-1" + b"0" * 400):  # alone too (it raised there before the arrays came)
        got = decoder.decode("s/x/WT1/t", b'{"ts": %s, "values": {"P": 1}}' % huge, NOW)
        assert isinstance(got, Rejection) and got.reason == "bad_timestamp"


def test_a_telemetry_batch_judges_each_line_as_a_message(decoder):
    """`decode_batch`: a good line gives the sample the same document gives on the turbine's topic; a bad line is
    refused with the reason a message would get, by its line number, and costs nothing else; blank lines are
    skipped; order is kept (a turbine may come twice). Only size, encoding or emptiness refuse the whole message."""
    good = b'{"turbine": "WT1", "ts": %d, "values": {"ws": %s, "P": null}}'
    bad = [
        (b"{", "malformed_json"),
        (b"3", "not_an_object"),
        (b'{"turbine": "WT1", "ts": 1717200000, "values": {"P": 1}, "id": 1}', "unknown_key"),
        (b'{"ts": 1717200000, "values": {"P": 1}}', "bad_turbine_id"),
        (b'{"turbine": "WT#1", "ts": 1717200000, "values": {"P": 1}}', "bad_turbine_id"),
        (b'{"turbine": 1, "ts": 1717200000, "values": {"P": 1}}', "bad_turbine_id"),
        (b'{"turbine": "WT2", "ts": 1717200000, "values": {"P": 1}}', "unknown_turbine"),
        (b'{"turbine": "WT1", "values": {"P": 1}}', "missing_ts"),
        (b'{"turbine": "WT1", "ts": "2024-06-01T01:00:00Z", "values": {"P": 1}}', "ts_in_future"),
        (b'{"turbine": "WT1", "ts": 1717200000, "values": {"Q": 1}}', "unknown_channel"),
        (b'{"turbine": "WT1", "ts": 1717200000, "values": {"P": true}}', "bad_value_type"),
        (b'{"turbine": "WT1", "ts": 1717200000, "values": {"P": NaN}}', "non_finite"),
        (b'{"turbine": "WT1", "ts": 1717200000, "values": {"P": 1' + b"0" * 400 + b"}}", "non_finite"),
        (b'{"turbine": "WT1", "pad": "' + b"x" * 1000 + b'"}', "oversized"),  # a line over max_payload_bytes
    ]
    lines, want_samples, want_rejected = [], [], []
    for k, (line, reason) in enumerate(bad):
        lines.append(good % (1717200000 - 60 * k, str(k + 0.5).encode()))
        want_samples.append(decoder.decode("s/x/WT1/t", lines[-1].replace(b'"turbine": "WT1", ', b""), NOW))
        lines += [line, b"", b"  \r"]  # blank lines count in the numbering and are skipped
        want_rejected.append((len(lines) - 2, reason))
    lines[0] += b"\r"  # a CRLF line end is whitespace
    res = decoder.decode_batch(b"\n".join(lines), NOW)
    assert isinstance(res, BatchDecode)
    assert [(n, r.reason) for n, r in res.rejected] == want_rejected
    assert all(r.reason in REASONS for _, r in res.rejected)
    assert len(res.samples) == len(bad) and all(isinstance(s, Sample) for s in want_samples)
    for got, want in zip(res.samples, want_samples):
        assert got.turbine == want.turbine and got.ts_ns == want.ts_ns
        np.testing.assert_array_equal(got.values, want.values)
    assert "allowed: ['ts', 'turbine', 'values']" in res.rejected[2][1].detail
    # the whole message: too large, not UTF-8, or no line at all
    small = _decoder(max_batch_payload_bytes=500)
    assert small.decode_batch(b"\n".join(lines), NOW).reason == "oversized"
    assert decoder.decode_batch(lines[0] + b"\n\xff", NOW).reason == "not_utf8"
    assert decoder.decode_batch(b"\n \n", NOW).reason == "malformed_json"


def test_thingsboard_gateway_form_judges_each_element_as_a_message_on_its_turbines_topic(decoder):
    """ThingsBoard's gateway API (`v1/gateway/telemetry`: `{"<device>": [{"ts": ..., "values": {...}}, ...], ...}`,
    many devices in one message) was refused line by line on the batch topic. `decode_devices` reads it: each
    element gives the sample that its document gives on its turbine's topic; a bad element is refused with the
    reason it would get there, located by turbine and element number; a bad or unknown turbine refuses each of
    its elements, an entry that is not an array once. Only size, encoding, a payload that is not an object, or
    nothing to read refuse the whole message."""
    doc = b'{"ts": %d, "values": {"ws": %d.5, "P": null}}'
    wt1 = [doc % (1717200000 - 600 * k, k) for k in range(3)]
    entries = [
        b'"WT1": [' + b", ".join([wt1[0], b"3", wt1[1], b'{"ts": 1717200000, "values": {"Q": 1}}', wt1[2]]) + b"]",
        b'"WT2": [' + doc % (1717200000, 9) + b", " + doc % (1717199400, 9) + b"]",  # not on the allow-list
        b'"WT#1": [' + doc % (1717200000, 8) + b"]",
        b'"WT3": {"ts": 1717200000, "values": {"P": 1}}',
        b'"WT4": []',
    ]
    res = decoder.decode_devices(b"{" + b", ".join(entries) + b"}", NOW)
    assert isinstance(res, BatchDecode)
    assert [(res.where(p), r.reason) for p, r in res.rejected] == [
        ({"turbine": "WT1", "element": 2}, "not_an_object"),
        ({"turbine": "WT1", "element": 4}, "unknown_channel"),
        ({"turbine": "WT2", "element": 1}, "unknown_turbine"),
        ({"turbine": "WT2", "element": 2}, "unknown_turbine"),
        ({"turbine": "WT#1", "element": 1}, "bad_turbine_id"),
        ({"turbine": "WT3"}, "not_an_array"),
    ]
    assert all(r.reason in REASONS for _, r in res.rejected)
    assert res.rejected[-1][1].detail == "turbine 'WT3': a JSON dict, expected an array of documents"
    assert len(res.samples) == len(wt1)
    for got, one in zip(res.samples, wt1, strict=True):
        want = decoder.decode("s/x/WT1/t", one, NOW)
        assert got.turbine == "WT1" and got.ts_ns == want.ts_ns
        np.testing.assert_array_equal(got.values, want.values)
    lines = decoder.decode_batch(b'{"turbine": "WT1", "ts": 1717200000, "values": {"P": 1}}', NOW)
    devices = decoder.decode_devices(b'{"WT1": [{"ts": 1717200000, "values": {"P": 1}}]}', NOW)
    assert lines.samples[0].ts_ns == devices.samples[0].ts_ns and not devices.rejected
    np.testing.assert_array_equal(lines.samples[0].values, devices.samples[0].values)
    for whole, reason in ((b"{", "malformed_json"), (b"{}", "missing_values"), (b'{"WT1": []}', "missing_values"),
                          (b"[]", "not_an_object"), (b'{"WT1": [\xff]}', "not_utf8")):  # fmt: skip
        got = decoder.decode_devices(whole, NOW)
        assert isinstance(got, Rejection) and got.reason == reason, whole
    assert "expected an object of turbine id -> array of documents" in decoder.decode_devices(b"[]", NOW).detail
    tiny = TelemetryDecoder(["power"], {"power": "P"}, 2, 1000, 300.0, 86400.0, max_batch_payload_bytes=60)
    over = tiny.decode_devices(b'{"WT1": [' + b",".join([b'{"ts": 1717200000, "values": {"P": 1}}'] * 2) + b"]}", NOW)
    assert isinstance(over, Rejection) and over.reason == "oversized" and "max_batch_payload_bytes=60" in over.detail
    with pytest.raises(
        ConfigError, match="ingest.batch_format: one of lines, devices, kepware, neuron, opcua; got 'thingsboard'"
    ):
        daemon_config_from_dict({"ingest": {"batch_format": "thingsboard"}})
    with pytest.raises(ConfigError, match="ingest.batch_format: devices is the form of topics.telemetry_batch, which"):
        daemon_config_from_dict({"ingest": {"batch_format": "devices"}})
    cfg = daemon_config_from_dict({"ingest": {"batch_format": "devices"},
                                   "topics": {"telemetry_batch": "v1/gateway/telemetry"}})  # fmt: skip
    assert cfg.ingest.batch_format == "devices"


def test_kepware_iot_gateway_values_are_grouped_by_turbine_and_stamp_and_judged_one_by_one(decoder):
    """Kepware's IoT Gateway (standard template: `{"timestamp": ms, "values": [{"id": "<channel>.<device>.<tag>",
    "v": ..., "q": true, "t": ms}, ...]}`) publishes one element per tag value. `decode_tags` takes the turbine and
    the payload key from the id (`mapping.tag_pattern`), groups a turbine's values of one stamp into the sample
    that the same values give as one document, reads a value of quality false as not measured (null, whatever
    `v` holds), and refuses a bad element alone, located by element number and tag id."""
    kep = _decoder(allowed_turbines=["WT1", "WT2"], epoch_unit="ms", ignored_keys=["state"])

    def tag(tid: str, key: str, v: Any, t: int = 1717200000000, q: Any = True) -> dict[str, Any]:
        return {"id": f"Farm.{tid}.{key}", "v": v, "q": q, "t": t}

    good = [
        tag("WT1", "P", 1510.5),
        tag("WT2", "ws", 8),
        tag("WT1", "ws", 7.25),
        tag("WT1", "state", "RUN"),
        tag("WT1", "P", 1490.0, 1717199400000),
        tag("WT2", "P", "garbage", q=False),
        tag("WT1", "P", 1511.0),
    ]  # fmt: skip  (the last: P twice at one stamp, a second sample)
    bad = [
        ({"id": "NoDots", "v": 1, "q": True, "t": 1717200000000}, "bad_tag_id"),
        ({"id": 7, "v": 1, "q": True, "t": 1717200000000}, "bad_tag_id"),
        (tag("WT9", "P", 1), "unknown_turbine"),
        (tag("WT#1", "P", 1), "bad_turbine_id"),
        (tag("WT1", "Q", 1), "unknown_channel"),
        ({"id": "Farm.WT1.P", "v": 1, "q": True}, "missing_ts"),
        ({"id": "Farm.WT1.P", "q": True, "t": 1717200000000}, "missing_values"),
        (tag("WT1", "P", 1, 1717203600000), "ts_in_future"),
        (tag("WT1", "P", 1, 1717200000), "ts_too_old"),  # epoch seconds under epoch_unit ms
        (tag("WT1", "P", True), "bad_value_type"),
        (tag("WT1", "P", "12.5"), "bad_value_type"),  # text without ingest.numeric_strings
        (tag("WT1", "P", 1, q=1), "bad_value_type"),
        ({**tag("WT1", "P", 1), "unit": "kW"}, "unknown_key"),
        (5, "not_an_object"),
    ]
    elements: list[Any] = []
    want_rejected = []
    for k in range(max(len(good), len(bad))):  # interleaved
        elements += good[k : k + 1]
        if k < len(bad):
            elements.append(bad[k][0])
            named = isinstance(bad[k][0], dict) and isinstance(bad[k][0].get("id"), str)
            want_rejected.append(({"element": len(elements), **({"tag": bad[k][0]["id"]} if named else {})}, bad[k][1]))
    res = kep.decode_tags(json.dumps({"timestamp": 1717200000100, "values": elements}).encode(), NOW)
    assert isinstance(res, BatchDecode)
    assert [(res.where(p), r.reason) for p, r in res.rejected] == want_rejected
    assert all(r.reason in REASONS for _, r in res.rejected)
    assert res.rejected[0][1].detail == (r"tag id 'NoDots' does not match mapping.tag_pattern "
                                         r"'[^.]+\\.(?P<turbine>[^.]+)\\.(?P<key>.+)'")  # fmt: skip
    assert "list tags the gateway publishes on purpose in mapping.ignored_keys" in res.rejected[4][1].detail

    def one(tid: str, doc: bytes) -> Sample:
        got = kep.decode(f"s/x/{tid}/t", doc, NOW)
        assert isinstance(got, Sample)
        return got

    want = [one("WT1", b'{"ts": 1717200000000, "values": {"P": 1510.5, "ws": 7.25}}'),
            one("WT2", b'{"ts": 1717200000000, "values": {"ws": 8, "P": null}}'),
            one("WT1", b'{"ts": 1717199400000, "values": {"P": 1490.0}}'),
            one("WT1", b'{"ts": 1717200000000, "values": {"P": 1511.0}}')]  # fmt: skip
    got = sorted(res.samples, key=lambda x: (x.turbine, x.ts_ns, x.values[0]))
    for g, w in zip(got, sorted(want, key=lambda x: (x.turbine, x.ts_ns, x.values[0])), strict=True):
        assert g.turbine == w.turbine and g.ts_ns == w.ts_ns
        np.testing.assert_array_equal(g.values, w.values)
    for whole, reason in ((b"[]", "not_an_object"), (b'{"values": []}', "missing_values"),
                          (b'{"values": {"id": 1}}', "missing_values"), (b'{"values": [], "x": 1}', "unknown_key"),
                          (b"{", "malformed_json")):  # fmt: skip
        got_whole = kep.decode_tags(whole, NOW)
        assert isinstance(got_whole, Rejection) and got_whole.reason == reason, whole
    own = TelemetryDecoder(
        ["power"], {"power": "P"}, 2, 1000, 300.0, 86400.0, tag_pattern=r"(?P<turbine>WT\d+)_(?P<key>.+)"
    )
    mine = own.decode_tags(b'{"values": [{"id": "WT07_P", "v": 3, "t": 1717200000}]}', NOW)
    assert [(x.turbine, x.ts_ns, x.values.tolist()) for x in mine.samples] == [("WT07", NOW, [3.0])]
    with pytest.raises(ValueError, match="needs the named groups"):
        TelemetryDecoder(["power"], {"power": "P"}, 2, 1000, 300.0, 86400.0, tag_pattern=r"(\w+)\.(\w+)")
    kepware = {"ingest": {"batch_format": "kepware"}, "topics": {"telemetry_batch": "iotgateway"}}
    for pattern, msg in ((r"(?P<turbine>[", "is not a regular expression"), (r"(?P<key>.+)", "needs the named groups")):
        with pytest.raises(ConfigError, match=re.escape(msg)):
            daemon_config_from_dict({**kepware, "mapping": {"tag_pattern": pattern}})
    with pytest.raises(ConfigError, match="mapping.tag_pattern: reads the tag ids of ingest.batch_format: kepware"):
        daemon_config_from_dict({"mapping": {"tag_pattern": r"(?P<turbine>\w+)\.(?P<key>\w+)"}})
    assert daemon_config_from_dict(kepware).ingest.batch_format == "kepware"


def test_kepware_tag_ids_of_any_form_are_judged_without_raising_or_growing_memory():
    """What a review found in the Kepware path, each now refused or read as documented: a tag group in the id
    (`<channel>.<device>.<group>.<tag>`) read the group as the turbine; a `tag_pattern` whose `key` group is
    optional raised on an id it matched without one (the daemon lost the message's good values); long ids were
    kept whole in the resolved-id cache (megabytes each) and copied whole into refusal details; an id or stamp
    nested 1,000 deep raised on its way into a detail; `"q": false` without `v` was refused."""
    kep = TelemetryDecoder(["power", "wind_speed"], {"power": "P", "wind_speed": "Nacelle.ws"}, 2, 1000, 300.0,
                           86400.0, epoch_unit="ms")  # fmt: skip

    def values(*els: dict[str, Any]) -> bytes:
        return json.dumps({"values": list(els)}).encode()

    got = kep.decode_tags(values({"id": "Farm.WT1.Nacelle.ws", "v": 7.5, "t": 1717200000000},
                                 {"id": "Farm.WT1.P", "q": False, "t": 1717200000000}), NOW)  # fmt: skip
    assert not got.rejected and [x.turbine for x in got.samples] == ["WT1"]
    np.testing.assert_array_equal(got.samples[0].values, [np.nan, 7.5])
    optional = TelemetryDecoder(["power"], {"power": "P"}, 2, 1000, 300.0, 86400.0, epoch_unit="ms",
                                tag_pattern=r"(?P<turbine>[^.]+)(?:\.(?P<key>.+))?")  # fmt: skip
    got = optional.decode_tags(values({"id": "WT1.P", "v": 1, "t": 1717200000000},
                                      {"id": "WT1", "v": 2, "t": 1717200000000}), NOW)  # fmt: skip
    assert [x.values.tolist() for x in got.samples] == [[1.0]]
    assert [(got.where(p), r.reason) for p, r in got.rejected] == [({"element": 2, "tag": "WT1"}, "bad_tag_id")]
    assert "matched without a turbine or a key" in got.rejected[0][1].detail
    long_id = "F" * 1_000_000 + ".WT1.P"
    got = kep.decode_tags(values({"id": long_id, "v": 3, "t": 1717200000000},
                                 {"id": long_id, "v": "x", "t": 1717200000000}), NOW)  # fmt: skip
    assert len(got.samples) == 1
    np.testing.assert_array_equal(got.samples[0].values, [3.0, np.nan])
    assert got.rejected[0][1].reason == "bad_value_type" and len(got.rejected[0][1].detail) < 200
    assert got.where(got.rejected[0][0]) == {"element": 2, "tag": long_id[:100]}
    assert all(len(t) <= 256 for t in kep._tags)  # the cache keeps short ids only
    deep = b"[" * 1000 + b"1" + b"]" * 1000
    payload = b'{"values": [{"id": %s, "v": 1, "t": 1717200000000}, {"id": "Farm.WT1.P", "v": 1, "t": %s}]}' % (
        deep, deep)  # fmt: skip
    got = kep.decode_tags(payload, NOW)
    want = [({"element": 1}, "bad_tag_id"), ({"element": 2, "tag": "Farm.WT1.P"}, "bad_timestamp")]
    assert [(got.where(p), r.reason) for p, r in got.rejected] == want
    assert "(a JSON array)" in got.rejected[0][1].detail and "(a JSON array)" in got.rejected[1][1].detail
    with pytest.raises(ConfigError, match="environment SCADA_RT_MAPPING__TAG_PATTERN: not a YAML value"):
        daemon_config_from_dict({}, {"SCADA_RT_MAPPING__TAG_PATTERN": "[^.]+\\.(?P<turbine>[^.]+)"})


def test_emqx_neuron_messages_are_one_sample_each_and_failed_reads_are_missing_and_counted():
    """EMQX Neuron's MQTT app publishes one south node's group of tags per message, in its values format
    (`{"timestamp", "node", "group", "values", "errors", "metas"}`) or tags format (`"tags": [{"name", "value"} |
    {"name", "error"}]`; `node_name` / `group_name` before Neuron 2.4). `decode_neuron` reads each as the sample
    its values give as one document on the node's topic; a tag in `errors` was not read: null, and counted by
    channel in the sample's `failed` (so are Kepware's `"q": false`). A message is taken whole or refused whole;
    keys of a tag's element other than its name, value or error (Neuron writes a tag's metas there) are unread."""
    neu = _decoder(epoch_unit="ms", ignored_keys=["state"])
    want = neu.decode("s/x/WT1/t", b'{"ts": 1717200000000, "values": {"ws": 7.5, "P": null}}', NOW)
    forms = [
        {
            "timestamp": 1717200000000,
            "node": "WT1",
            "group": "g",
            "values": {"ws": 7.5, "state": 3},
            "errors": {"P": 2014},
            "metas": {},
        },
        {
            "timestamp": 1717200000000,
            "node_name": "WT1",
            "group_name": "g",
            "values": {"ws": 7.5},
            "errors": {"P": 2014},
        },
        {
            "timestamp": 1717200000000,
            "node": "WT1",
            "group": "g",
            "tags": [
                {"name": "ws", "value": 7.5, "metas": {}},
                {"name": "P", "error": 2014},
                {"name": "state", "value": 3},
            ],
        },
        {"timestamp": 1717200000000, "node": "WT1", "values": {"ws": 7.5, "P": 1.0}, "errors": {"P": 2014}},
    ]  # fmt: skip  (the last: a tag both read and failed counts as failed)
    for doc in forms:
        got = neu.decode_neuron(json.dumps(doc).encode(), NOW)
        assert isinstance(got, BatchDecode) and not got.rejected and got.samples[0].failed == (0,), doc
        assert [x.turbine for x in got.samples] == ["WT1"] and got.samples[0].ts_ns == want.ts_ns
        np.testing.assert_array_equal(got.samples[0].values, want.values)
    bad = [
        ({"timestamp": 1717200000000, "node": "WT2", "values": {"ws": 1}}, "unknown_turbine"),
        ({"timestamp": 1717200000000, "values": {"ws": 1}}, "bad_turbine_id"),
        ({"timestamp": 1717200000000, "node": "WT1", "node_name": "WT1", "values": {"ws": 1}}, "bad_turbine_id"),
        ({"node": "WT1", "values": {"ws": 1}}, "missing_ts"),
        ({"timestamp": 1717200000, "node": "WT1", "values": {"ws": 1}}, "ts_too_old"),
        ({"timestamp": 1717200000000, "node": "WT1", "values": {"Q": 1}}, "unknown_channel"),
        ({"timestamp": 1717200000000, "node": "WT1", "values": {"ws": "1"}}, "bad_value_type"),
        ({"timestamp": 1717200000000, "node": "WT1", "values": {}, "errors": {}}, "missing_values"),
        ({"timestamp": 1717200000000, "node": "WT1", "values": {"ws": 1}, "tags": []}, "missing_values"),
        ({"timestamp": 1717200000000, "node": "WT1", "tags": [{"name": "ws"}]}, "missing_values"),
        ({"timestamp": 1717200000000, "node": "WT1", "tags": [{"name": "ws", "value": 1, "error": 2}]},
         "missing_values"),
        ({"timestamp": 1717200000000, "node": "WT1", "tags": [{"name": "ws", "value": 1}], "errors": {"P": 1}},
         "unknown_key"),  # errors belong to the values format
        ({"timestamp": 1717200000000, "node": "WT1", "values": {"ws": 1}, "quality": 1}, "unknown_key"),
        ([], "not_an_object"),
    ]  # fmt: skip
    for doc, reason in bad:
        got = neu.decode_neuron(json.dumps(doc).encode(), NOW)
        assert isinstance(got, Rejection) and got.reason == reason, (doc, got)
    assert neu.decode_neuron(b"x" * 1001, NOW).reason == "oversized"  # a message is one sample: max_payload_bytes
    kep = neu.decode_tags(json.dumps({"values": [
        {"id": "F.WT1.P", "v": 0, "q": False, "t": 1717200000000},
        {"id": "F.WT1.P", "v": 0, "q": False, "t": 1717199400000},
        {"id": "F.WT1.ws", "v": 0, "q": False, "t": 1717200000000},
        {"id": "F.WT1.state", "v": 0, "q": False, "t": 1717200000000},
        {"id": "F.WT1.ws", "v": 5, "q": True, "t": 1717199400000}]}).encode(), NOW)  # fmt: skip
    # per sample, the channels read as failed (an ignored tag's is not counted)
    assert sorted((x.ts_ns, x.failed) for x in kep.samples) == [(NOW - 600 * 10**9, (0,)), (NOW, (0, 1))]
    assert neu.decode_batch(b'{"turbine": "WT1", "ts": 1717200000000, "values": {"P": 1}}', NOW).samples[0].failed == ()
    assert (
        daemon_config_from_dict(
            {"ingest": {"batch_format": "neuron"}, "topics": {"telemetry_batch": "neuron/scada"}}
        ).ingest.batch_format
        == "neuron"
    )


def test_local_stamps_of_ingest_naive_timezone():
    """A gateway on local clocks (`ingest.naive_timezone`): an ISO stamp without an offset is a local time of the
    zone, in summer and winter time; stamps with an offset and epoch numbers read as before; the hour that the
    autumn change repeats and the one the spring change skips are refused with their reasons. Without the
    setting a local stamp is refused and the detail names it; an unknown zone is a config error."""
    paris = _decoder(naive_timezone="Europe/Paris", max_past_s=400 * 86400.0)

    def stamp(dec: TelemetryDecoder, ts: object) -> int | str:
        got = dec.decode("s/x/WT1/telemetry", json.dumps({"ts": ts, "values": {"P": 1}}).encode(), NOW)
        return got.ts_ns if isinstance(got, Sample) else got.reason  # type: ignore[union-attr]

    winter = parse_timestamp_ns("2024-01-15T00:00:00+00:00")
    assert [stamp(paris, ts) for ts in ["2024-06-01T02:00:00", "2024-01-15T01:00:00", " 2024-06-01T02:00:00.250 ",
                                        "2024-06-01T00:00:00+00:00", 1717200000]] == [
        NOW, winter, NOW + 250_000_000, NOW, NOW]  # fmt: skip
    assert [stamp(paris, ts) for ts in ["2023-10-29T02:30:00", "2024-03-31T02:30:00", "2024-03-31T03:30:00"]] == [
        "ambiguous_local_time", "nonexistent_local_time", parse_timestamp_ns("2024-03-31T01:30:00+00:00")]  # fmt: skip
    detail = _decoder().decode("s/x/WT1/telemetry", b'{"ts": "2024-06-01T02:00:00", "values": {"P": 1}}', NOW)
    assert detail.reason == "naive_timestamp" and "ingest.naive_timezone" in detail.detail  # type: ignore[union-attr]
    assert daemon_config_from_dict({"ingest": {"naive_timezone": "Europe/Paris"}}).ingest.naive_timezone
    with pytest.raises(ConfigError, match="ingest.naive_timezone: unknown time zone 'Europe/Pariss'"):
        daemon_config_from_dict({"ingest": {"naive_timezone": "Europe/Pariss"}})


def test_the_first_occurrence_of_a_repeated_hour_is_read_while_the_second_is_still_ahead():
    """The hour the autumn change repeats (Europe/Paris, 27 Oct 2024: 02:00-02:59 local is 00:00-00:59Z, then
    01:00-01:59Z) was refused whole, both occurrences. While the clock is in the first occurrence the second lies
    beyond max_future_s: no gateway can have sent it yet, so the stamp is the first. Once the second may have come
    (less than max_future_s ahead, or past), it is refused as before: arrival order is not time order."""

    def stamp(now: str, ts: str, future: float = 300.0) -> int | str:
        dec = _decoder(naive_timezone="Europe/Paris", max_future_s=future)
        got = dec.decode("s/x/WT1/telemetry", json.dumps({"ts": ts, "values": {"P": 1}}).encode(),
                         parse_timestamp_ns(now))  # fmt: skip
        return got.ts_ns if isinstance(got, Sample) else got.reason  # type: ignore[union-attr]

    def utc(t: str) -> int:
        return parse_timestamp_ns(t)

    assert stamp("2024-10-27T00:10:30Z", "2024-10-27 02:10:00") == utc("2024-10-27T00:10:00Z")
    assert stamp("2024-10-27T00:54:00Z", "2024-10-27 02:50:00") == utc("2024-10-27T00:50:00Z")
    assert stamp("2024-10-27T00:10:30Z", "2024-10-27 02:10:00", future=3600.0) == "ambiguous_local_time"
    assert stamp("2024-10-27T00:56:00Z", "2024-10-27 02:00:00") == "ambiguous_local_time"  # 01:00Z is 4 min ahead
    assert stamp("2024-10-27T01:10:30Z", "2024-10-27 02:10:00") == "ambiguous_local_time"
    assert stamp("2024-10-27T03:00:00Z", "2024-10-27 02:10:00") == "ambiguous_local_time"
    assert stamp("2024-10-26T23:00:00Z", "2024-10-27 02:10:00") == "ts_in_future"
    dec = _decoder(naive_timezone="Europe/Paris")
    rej = dec.decode("s/x/WT1/telemetry", b'{"ts": "2024-10-27 02:10", "values": {"P": 1}}', utc("2024-10-27T02:00Z"))
    assert "repeats, and its second occurrence may have come" in rej.detail  # type: ignore[union-attr]
    rej = dec.decode("s/x/WT1/telemetry", b'{"ts": "2024-03-31 02:10", "values": {"P": 1}}', utc("2024-03-31T01:00Z"))
    assert "skips" in rej.detail and "Etc/GMT-1 for UTC+1" in rej.detail  # type: ignore[union-attr]


def test_ignored_keys_take_star_patterns_in_every_form():
    """`mapping.ignored_keys` entries with `*` are patterns (`*`: any run of characters, '/' and '.' too): a
    document's keys, Kepware's tag keys and Sparkplug's metric names they match are dropped; channels are read
    first, so `*` drops every other key; an unmatched key is refused as before. Matching agrees with the
    equivalent regular expression on 20,000 random keys and patterns."""
    dec = _decoder(ignored_keys=["status_text", "Gearbox/*", "*_alarm", "a*b*c"], epoch_unit="ms")
    doc = {"ts": 1717200000000, "values": {"P": 1.0, "status_text": "RUN", "Gearbox/Oil/Temp": 50, "yaw_alarm": 1,
                                          "a-x-b-y-c": 0}}  # fmt: skip
    assert isinstance(dec.decode("s/x/WT1/telemetry", json.dumps(doc).encode(), NOW), Sample)
    for key in ["Gearbox", "gearbox/Oil", "yaw_alarm2", "acb", "ab"]:
        bad = dec.decode("s/x/WT1/telemetry", json.dumps({"ts": 1717200000000, "values": {key: 1}}).encode(), NOW)
        assert isinstance(bad, Rejection) and bad.reason == "unknown_channel", key
    everything = _decoder(ignored_keys=["*"])
    assert (
        everything.decode("s/x/WT1/telemetry", b'{"ts": 1717200000, "values": {"P": 2, "x/y": 3}}', NOW).values[0] == 2
    )
    tags = [{"id": "F.WT1.Gearbox/Oil", "v": 1, "t": 1717200000000}, {"id": "F.WT1.P", "v": 4.0, "t": 1717200000000}]
    kep = dec.decode_tags(json.dumps({"values": tags}).encode(), NOW)
    assert not kep.rejected and [s.values[0] for s in kep.samples] == [4.0]
    rng = np.random.default_rng(5)
    alphabet = list("ab*/.")
    for _ in range(20_000):
        pattern = "".join(rng.choice(alphabet, int(rng.integers(1, 7))))
        key = "".join(rng.choice(alphabet[:2] + alphabet[3:], int(rng.integers(0, 9))))
        regex = ".*".join(re.escape(part) for part in pattern.split("*"))
        assert (key in IgnoredKeys([pattern])) == bool(re.fullmatch(regex, key, re.S)), (pattern, key)


def test_numbers_sent_as_text_read_by_the_csv_cell_rule_with_ingest_numeric_strings(decoder):
    """Gateways that send every value as a JSON string (`"12.5"`: some OPC UA and PLC bridges, Node-RED flows)
    had every message rejected (`bad_value_type`). With `numeric_strings` a string reads as the number that
    scada-prepare reads from the same CSV cell (`cells.parse_numbers`), and "" as null (an empty cell); a string
    that is not a number there rejects the message (`not_a_number`, or `non_finite` for "inf"). Off (the
    default), a string is refused as before and the detail names the setting."""
    text = _decoder(numeric_strings=True)
    numbers = ["12.5", "-0.25", "+3", " 7 ", "1e3", "1E-2", ".5", "5.", "-0", "0012", "1234567.125", "1e308"]
    want, bad = parse_numbers(numbers)
    assert bad == 0
    for cell, x in zip(numbers, want, strict=True):
        got = text.decode("s/x/WT1/t", json.dumps({"ts": 1717200000, "values": {"P": cell}}).encode(), NOW)
        assert isinstance(got, Sample) and got.values[0] == x and np.isnan(got.values[1]), cell
    for cell in ("12.5", "-0.25", "1e3", "1E-2", "1234567.125", "1e308"):  # the same number sent as a JSON number
        as_text = text.decode("s/x/WT1/t", b'{"ts": 1717200000, "values": {"P": "%s"}}' % cell.encode(), NOW)
        as_number = decoder.decode("s/x/WT1/t", b'{"ts": 1717200000, "values": {"P": %s}}' % cell.encode(), NOW)
        assert as_text.values[0] == as_number.values[0], cell
    empty = text.decode("s/x/WT1/t", b'{"ts": 1717200000, "values": {"P": "", "ws": "3.5"}}', NOW)
    assert isinstance(empty, Sample) and np.isnan(empty.values[0]) and empty.values[1] == 3.5
    refused = ["n/a", "1,5", "nan", "NaN", "1_000", "\u0661", "12.5 kW", " ", "0x10", "true"]
    assert parse_numbers(refused)[1] == len(refused)  # each counted as text in a table's column
    for cell in refused:
        got = text.decode("s/x/WT1/t", json.dumps({"ts": 1717200000, "values": {"P": cell}}).encode(), NOW)
        assert isinstance(got, Rejection) and got.reason == "not_a_number", cell
        assert got.detail.startswith("P: ") and "is not a number" in got.detail
    for cell in ("inf", "-Infinity", "1e400"):
        got = text.decode("s/x/WT1/t", json.dumps({"ts": 1717200000, "values": {"P": cell}}).encode(), NOW)
        assert isinstance(got, Rejection) and got.reason == "non_finite", cell
    for v in (b"true", b"[1]", b'{"v": 1}'):  # only strings are read as numbers
        got = text.decode("s/x/WT1/t", b'{"ts": 1717200000, "values": {"P": %s}}' % v, NOW)
        assert isinstance(got, Rejection) and got.reason == "bad_value_type", v
    off = decoder.decode("s/x/WT1/t", b'{"ts": 1717200000, "values": {"P": "12.5"}}', NOW)
    assert isinstance(off, Rejection) and off.reason == "bad_value_type"
    assert (
        off.detail == "P: str, expected a number or null (a gateway that sends numbers as text: ingest.numeric_strings)"
    )
    assert daemon_config_from_dict({"ingest": {"numeric_strings": True}}).ingest.numeric_strings is True


def test_a_telemetry_batch_topic_must_be_a_topic_of_its_own():
    ok = daemon_config_from_dict({"topics": {"telemetry_batch": "scada/{site}/{gateway}/telemetry_batch"}})
    assert ok.topics.telemetry_batch == "scada/{site}/{gateway}/telemetry_batch"
    for tpl, clash in (
        ("scada/{site}/{gateway}/telemetry", "['telemetry']"),  # the per-turbine subscription would take it
        ("scada/{site}/{gateway}/score", "['score']"),  # the daemon would consume its own scores
        ("scada/runtime/{gateway}/errors", "['errors']"),
    ):
        with pytest.raises(ConfigError, match=rf"topics.telemetry_batch: .* is also a topic of \{clash}"):
            daemon_config_from_dict({"topics": {"telemetry_batch": tpl}})
    with pytest.raises(ConfigError, match="topics.telemetry_batch: one topic for the whole fleet, no {turbine}"):
        daemon_config_from_dict({"topics": {"telemetry_batch": "scada/{site}/{turbine}/batch"}})
    with pytest.raises(ConfigError, match="ingest.max_batch_payload_bytes"):
        daemon_config_from_dict({"ingest": {"max_batch_payload_bytes": 10}})


def test_dumps_is_deterministic():
    rec = {
        "b": np.float32(0.1),
        "a": [np.float64(1e-12), float("nan")],
        "c": np.int64(3),
        "d": True,
        "e": 0.1 + 0.2,
        "f": np.arange(6, dtype=np.float32).reshape(2, 3).T[1],
        "g": (float("inf"), np.bool_(1)),
    }
    want = b'{"a":[1e-12,null],"b":0.1,"c":3,"d":true,"e":0.30000000000000004,"f":[1.0,4.0],"g":[null,true]}'
    assert dumps(rec) == want and dumps(dict(reversed(rec.items()))) == want
    assert json.loads(dumps(rec))["e"] == 0.1 + 0.2  # a float64 round-trips exactly
    with pytest.raises(TypeError, match="not JSON serializable: object"):
        dumps({"x": object()})
    assert iso_utc(NOW) == "2024-06-01T00:00:00Z"


def test_forecast_json_writes_what_dumps_writes_for_the_forecast_dict():
    """The forecast object of a score record comes out of `forecast_json` (one array per record, keyed by a
    template); it must be the bytes `dumps` gives the plain {feature: float32 row} dict: sorted keys, float32 shortest
    form, NaN/inf as null, whatever the names hold (quotes, %, non-ASCII) and the shape."""
    rng = np.random.default_rng(3)
    names = ["wind_speed", "power", 'a "quoted" %s name', "\u00e9t\u00e9", "Z", "power_rmean6"]
    for B, K in ((4, 6), (1, 1), (3, 2), (0, 3)):
        rows = rng.normal(size=(B, len(names), K)) * 10.0 ** rng.integers(-8, 8, size=(B, len(names), K))
        if B:
            rows[0, 1, 0], rows[-1, -1, -1] = np.nan, np.inf
        got = forecast_json(names, rows)
        want = [dumps(dict(zip(names, r))) for r in np.asarray(rows, dtype=np.float32)]
        assert got == want and len(got) == B
    assert forecast_json(["only"], np.array([[[1.5, -0.0]]])) == [b'{"only":[1.5,-0.0]}']
    assert forecast_json(["a", "b"], np.zeros((2, 2, 0))) == [b'{"a":[],"b":[]}'] * 2
    with pytest.raises(ValueError, match=r"rows must be \(B, F=2, K\)"):
        forecast_json(["a", "b"], np.zeros((2, 3, 1)))


def test_a_waiting_score_record_keeps_its_forecast_bytes_through_the_state_file(tmp_path):
    """A record waiting for its fleet step is saved in the state; restored, it serialises to the same bytes."""
    from scada_tcn.runtime.state_file import load_state, save_state

    rows = np.random.default_rng(4).normal(size=(1, 3, 4)) * 1000
    rec = ScoreRecord("T1", NOW, 600 * 10**9, "m" * 64, "b" * 64, score=1.25, threshold=1.0, threshold_source="pooled",
                      regime="normal", alert=False, top_features=(("g:x", 1.25),), fault_probs=None,
                      forecast=forecast_json(["x", "y", "w"], rows)[0], rul=None, missing_fraction=0.0,
                      missing_now=0.0)  # fmt: skip
    save_state(tmp_path / "s.npz", {"rec": rec.state_dict()})
    back = ScoreRecord.from_state_dict(load_state(tmp_path / "s.npz")["rec"])
    assert dumps(back.to_dict()) == dumps(rec.to_dict())
    published = json.loads(dumps(rec.to_dict()))["forecast"]
    assert list(published) == ["w", "x", "y"]
    np.testing.assert_array_equal(np.float32(published["w"]), np.float32(rows[0, 2]))  # float32, exactly


def test_the_deploy_example_config_is_valid_and_names_its_turbines():
    from scada_tcn.runtime.daemon_config import load_daemon_config

    cfg = load_daemon_config(Path(__file__).resolve().parents[1] / "deploy" / "runtime.yaml", {})
    assert cfg.ingest.turbines and len(cfg.ingest.turbines) <= cfg.ingest.max_turbines
    assert cfg.state.path is not None and cfg.broker.url.startswith("mqtts://")


def _promql_labels(node: Any, series: dict[str, set[str]], alert: str) -> frozenset[str] | None:
    """The labels a PromQL expression's samples carry (None: a scalar), each series with the target's `instance`
    and `job` besides its own (`series`). Asserted on the way: the two sides of every operation between vectors
    carry the same labels, or match on/ignoring ones both have, else no sample matches and the rule never fires
    (`sum(rate(a[5m])) / rate(b[5m])`: the sum has no labels, the rate its target's)."""
    kind = type(node).__name__
    if kind == "NumberLiteral":
        return None
    if kind == "ParenExpr":
        return _promql_labels(node.expr, series, alert)
    if kind == "MatrixSelector":
        return _promql_labels(node.vector_selector, series, alert)
    if kind == "VectorSelector":
        return frozenset({"instance", "job"} | series.get(node.name, set()))
    if kind == "Call":
        return None if node.func.name == "time" else _promql_labels(node.args[0], series, alert)
    if kind == "AggregateExpr":
        inner = _promql_labels(node.expr, series, alert)
        if node.modifier is None:
            return frozenset()
        named = frozenset(node.modifier.labels)
        return named if "By" in str(node.modifier.type) else inner - named
    assert kind == "BinaryExpr", (alert, kind)
    lhs, rhs = _promql_labels(node.lhs, series, alert), _promql_labels(node.rhs, series, alert)
    if lhs is None or rhs is None:
        return rhs if lhs is None else lhs
    matching = node.modifier.matching if node.modifier is not None else None
    if matching is None:
        assert lhs == rhs, (alert, node.lhs.prettify(), sorted(lhs), node.rhs.prettify(), sorted(rhs))
    elif "Include" in str(matching.type):  # on (...)
        assert set(matching.labels) <= lhs & rhs, (alert, node.prettify())
    else:  # ignoring (...)
        assert lhs - set(matching.labels) == rhs - set(matching.labels), (alert, node.prettify())
    return lhs


def test_the_deploy_alert_rules_name_only_metrics_and_settings_that_exist():
    """deploy/prometheus-rules.yml: every rule has an expression that a PromQL parser takes, a duration, a severity,
    a summary and a description; every scada_runtime_ series it queries is one the daemon exposes, every label it
    filters on is one of that metric's, every runtime.yaml setting its texts point to is a real key, and every
    template in them renders (the rules cannot drift from the code)."""
    import dataclasses
    import re

    import promql_parser
    import yaml
    from prometheus_client.metrics import MetricWrapperBase

    from scada_tcn.runtime.daemon_config import RuntimeConfig
    from scada_tcn.runtime.prometheus import RuntimeMetrics

    doc = yaml.safe_load((Path(__file__).resolve().parents[1] / "deploy" / "prometheus-rules.yml").read_text())
    rules = [r for g in doc["groups"] for r in g["rules"]]
    assert len(rules) >= 8 and len({r["alert"] for r in rules}) == len(rules)
    suffixes = {"counter": ("_total",), "gauge": ("",), "histogram": ("_bucket", "_sum", "_count")}
    labels = {m._name + x: set(m._labelnames) | ({"le"} if x == "_bucket" else set())  # each series and its labels
              for m in vars(RuntimeMetrics()).values() if isinstance(m, MetricWrapperBase)
              for x in suffixes[m._type]}  # fmt: skip
    cfg = RuntimeConfig()
    sections = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)}
    settings = {f"{k}.{g.name}" for k, v in sections.items() if dataclasses.is_dataclass(v)
                for g in dataclasses.fields(v)}  # fmt: skip
    for r in rules:
        assert set(r) <= {"alert", "expr", "for", "labels", "annotations"} and {"alert", "expr"} <= set(r), r
        kept = _promql_labels(promql_parser.parse(r["expr"]), labels, r["alert"])  # parse: ValueError if refused
        assert re.fullmatch(r"\d+[smhd]", r.get("for", "0s")), r
        assert r["labels"]["severity"] in ("critical", "warning", "info") and set(r["annotations"]) == {
            "summary", "description"}, r  # fmt: skip
        for name, selector in re.findall(r"(scada_runtime_\w+)(\{[^}]*\})?", r["expr"]):
            assert name in labels, (r["alert"], name)
            used = set(re.findall(r"(\w+)\s*=", selector))
            assert used <= labels[name], (r["alert"], name, used)
        text = " ".join(r["annotations"].values())
        for key in re.findall(r"\b((?:ingest|queues|topics|health|compute|state|broker|mapping)\.\w+)", text):
            assert key in settings, (r["alert"], key)
        # the annotations' Go templates: $value through a function Prometheus has, or a label the alert keeps (one
        # of its series' or the target's, not aggregated away), so Alertmanager never shows "<no value>"
        for t in re.findall(r"{{(.*?)}}", text):
            value = r'\$value(\s*\|\s*(humanize|humanizeDuration|humanizePercentage|printf "%[-+ #0-9.]*[dfge]"))?'
            label = re.fullmatch(r"\$labels\.(\w+)", t.strip())
            assert re.fullmatch(value, t.strip()) or (label and label[1] in kept), (r["alert"], t)


def _ws_chunks(path: Path, rows: int = 9, mapping: MappingCfg | None = None) -> list:
    """`replay.table_chunks` of a one-channel table (column ws -> wind_speed), parsed `rows` rows at a time."""
    from scada_tcn.runtime.bundle import TableFormat
    from scada_tcn.runtime.replay import table_chunks

    training = TableFormat({"wind_speed": "ws"}, "turbine_id", "timestamp", None)
    return list(table_chunks(path, ("wind_speed",), mapping or MappingCfg(), training, rows))


def _stamp_table(path: Path, stamps: list[str]) -> Path:
    """A one-turbine, one-channel table with these stamps."""
    path.write_text("turbine_id,timestamp,ws\n" + "".join(f"WT1,{s},1\n" for s in stamps))
    return path


def test_replay_table_cells_parse_like_scada_prepare(tmp_path):
    """Every cell gets the value and the non-numeric count scada-prepare's reader gives it (pandas.to_numeric on
    the CSV read as strings): empty is missing, not counted; text, "nan", digits grouped with '_' and non-ASCII
    digits (which Python's float would take) are missing and counted; +-inf is missing, not counted. A cell
    with a NUL character is text: numpy's str type dropped a trailing NUL, and both readers took "5\\x00" as 5
    where pandas.to_numeric and the daemon's `numeric_strings` see text."""
    import io

    import pandas as pd

    from scada_tcn.trainer.data.tables import column_numbers

    cells = ["7.5", "1_000", "", " 2 ", "inf", "-3e2", "n/a", "0x10", "1e400", "nan", "NaN", "+5", ".5", "5.",
             "1,5", "  ", "-inf", "Infinity", "1 000", "NA", "null", "-", "\u0661\u0662", "+nan", "1e-400", "e5",
             "0.1e", "5\x00", "\x00", "\x005"]  # fmt: skip
    text = "turbine_id,timestamp,ws\n" + "".join(f'WT1,{1717200000 + 600 * i},"{c}"\n' for i, c in enumerate(cells))
    path = tmp_path / "t.csv"
    path.write_text(text, encoding="utf-8")
    chunks = _ws_chunks(path, 10)
    assert [len(ids) for ids, _, _, _ in chunks] == [10, 10, 10]
    got = np.concatenate([v[:, 0] for _, _, v, _ in chunks])
    column = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False, na_values=[""])["ws"]
    want, counted = column_numbers(column, ".")
    want = np.where(np.isfinite(want), want, np.nan)  # scada-prepare turns +-inf into missing after counting
    np.testing.assert_array_equal(got, want)
    assert sum(bad["wind_speed"].count for _, _, _, bad in chunks if bad) == counted == 18
    assert np.isnan(got[-3:]).all() and np.isnan(pd.to_numeric(column[-3:], errors="coerce")).all()
    assert [bad["wind_speed"].example for _, _, _, bad in chunks] == ["1_000", "NaN", "null"]  # each one's first


def test_replay_table_with_a_byte_order_mark_or_semicolons(tmp_path):
    """A UTF-8 byte-order mark (Excel's "CSV UTF-8") is skipped, as pandas does for scada-prepare; a table
    separated by ';' and read as comma-separated is refused, naming the setting that reads it."""
    from scada_tcn.runtime.errors import InputError

    text = "turbine_id,timestamp,ws\nWT1,1717200000,7.5\n"
    (tmp_path / "bom.csv").write_bytes(b"\xef\xbb\xbf" + text.encode())
    (tmp_path / "semi.csv").write_text(text.replace(",", ";"))
    ((ids, ts, values, _),) = _ws_chunks(tmp_path / "bom.csv")
    assert ids == ["WT1"] and ts.tolist() == [1717200000 * 10**9] and values.tolist() == [[7.5]]
    with pytest.raises(InputError, match=r"separated by ';' \(semicolon\): set mapping.csv.delimiter to ';'"):
        _ws_chunks(tmp_path / "semi.csv")


def test_naive_local_stamps_parse_alike_in_replay_and_scada_prepare(tmp_path):
    """Naive stamps in Europe/Paris around both 2017 DST changes: replay and scada-prepare give the same UTC
    instants on either side of each change, and both refuse a time the change skips (02:30 on Mar 26, clocks
    forward), saying how to export instead. A time the change repeats (02:30 on Oct 29, clocks back) is placed by
    its turbine's row order (tests/test_csv_exports.py); a lone one is placed by none: refused when not placed."""
    import pandas as pd

    from scada_tcn.runtime.errors import InputError
    from scada_tcn.trainer.data.tables import parse_timestamps

    mapping = MappingCfg(naive_timezone="Europe/Paris")

    def replayed(stamps: list[str]) -> list[int]:
        chunks = _ws_chunks(_stamp_table(tmp_path / "t.csv", stamps), 100, mapping)
        return [t for _, ts, _, _ in chunks for t in ts.tolist()]

    good = ["2017-03-26 01:50:00", "2017-03-26 03:10:00", "2017-10-29 01:50:00", "2017-10-29 03:10:00"]
    utc = ["2017-03-26T00:50Z", "2017-03-26T01:10Z", "2017-10-28T23:50Z", "2017-10-29T02:10Z"]
    want = [pd.Timestamp(u).value for u in utc]
    assert replayed(good) == want == parse_timestamps(pd.Series(good), "Europe/Paris", "t").tolist()
    with pytest.raises(InputError, match=r"nonexistent_local_time.*DST change in Europe/Paris skips.*UTC offset"):
        replayed([*good, "2017-03-26 02:30:00"])
    with pytest.raises(InputError, match=r"DST change in Europe/Paris skips.*UTC offset"):
        parse_timestamps(pd.Series([*good, "2017-03-26 02:30:00"]), "Europe/Paris", "t")
    with pytest.raises(InputError, match=r"1 rows at local times the DST change in Europe/Paris repeats.*UTC offset"):
        replayed([*good, "2017-10-29 02:30:00"])
    with pytest.raises(InputError, match=r"1 local times that a DST change in Europe/Paris repeats.*UTC offset"):
        parse_timestamps(pd.Series([*good, "2017-10-29 02:30:00"]), "Europe/Paris", "t")


def test_replay_refuses_stamps_of_mixed_forms_as_scada_prepare_does(tmp_path):
    """One stamp form per table, in replay as in scada-prepare: offsets mixed with local times, or epoch seconds
    mixed with ISO-8601, are refused by both (replay also across its parse chunks) instead of read two ways."""
    import pandas as pd

    from scada_tcn.runtime.errors import InputError
    from scada_tcn.trainer.data.tables import parse_timestamps

    mapping = MappingCfg(naive_timezone="Europe/Paris")
    for stamps in (["2017-07-01T12:00:00+02:00", "2017-07-01 12:10:00"], ["1498903200", "2017-07-01T12:10:00+02:00"]):
        path = _stamp_table(tmp_path / "t.csv", stamps)
        with pytest.raises(InputError, match="'timestamp': stamps of different forms.*export every stamp one way"):
            _ws_chunks(path, 1, mapping)  # one row per chunk
        with pytest.raises(InputError, match="mixed time zones|unparseable"):
            parse_timestamps(pd.Series(stamps), "Europe/Paris", "t")


def test_replay_applies_the_turbine_id_rule_of_scada_prepare(tmp_path):
    """A turbine id that scada-prepare refuses (a space, empty, a '/') is refused by replay too, not stripped or
    scored under a name the daemon would reject."""
    from scada_tcn.runtime.errors import InputError

    path = tmp_path / "t.csv"
    for bad in (" WT01", "", "WT/1"):
        path.write_text(f"turbine_id,timestamp,ws\nWT02,1717200000,2\n{bad},1717200000,1\n")
        with pytest.raises(InputError, match=rf"column 'turbine_id': turbine id '{bad}' breaks the id rule"):
            _ws_chunks(path)


def test_stamp_formats_of_real_exports_parse_alike_in_replay_and_scada_prepare(tmp_path):
    """The stamp forms SCADA and database exports write (offsets +02:00, +0200, +02 as PostgreSQL writes them, Z,
    a space or a T, minutes only, microseconds, epoch seconds) give replay and scada-prepare the same instant."""
    import pandas as pd

    from scada_tcn.trainer.data.tables import parse_timestamps

    forms = ["2017-08-09T10:10:00+02:00", "2017-08-09 10:10:00+02:00", "2017-08-09T10:10:00.000+0200",
             "2017-08-09 10:10:00+02", "2017-08-09 10:10+02", "2017-08-09T08:10:00Z", "2017-08-09T10:10+02:00",
             "2017-08-09 10:10:00.000123+02", "20170809T081000Z", "1502266200", "1502266200.0",
             "2017/08/09 10:10:00+02:00", "2017-8-9 10:10:00+02:00", "2017.08.09T10:10+2", "20170809T101000+02",
             "2017-08-09T10:10:00 +02:00", "2017-08-09T10:10:00.000000100+02:00",
             "2017-08-09T08:10:00.0000001234Z"]  # fmt: skip
    for stamp in forms:
        path = _stamp_table(tmp_path / "t.csv", [stamp])
        ((_, ts, _, _),) = _ws_chunks(path)
        col = pd.read_csv(path, dtype=str)["timestamp"]  # as scada-prepare reads a CSV: text cells
        assert ts.tolist() == parse_timestamps(col, None, "t").tolist(), stamp
        assert abs(int(ts[0]) - 1502266200 * 10**9) < 10**6, stamp
        if stamp.replace(".", "").isdigit():  # epoch seconds: a Parquet number column too
            assert parse_timestamps(pd.to_numeric(col), None, "t").tolist() == ts.tolist()
    assert ts.tolist() == [1502266200 * 10**9 + 123]  # to the nanosecond, as pandas reads it (Python's parser: 0)


def test_stamp_edge_cases_are_refused_alike_with_what_to_fix(tmp_path):
    """Found in review: the range's last second, a lowercase date-time separator (Python's parser takes any
    character), empty cells in an epoch column (replay said "stamps of different forms", scada-prepare called every
    epoch stamp unparseable) and NaT in a time-zone-aware column (scada-prepare: "out of range", or a ValueError
    when a stamp past 2262 sat in the same column)."""
    import pandas as pd

    from scada_tcn.runtime.errors import InputError
    from scada_tcn.trainer.data.tables import parse_timestamps

    for stamp in ("2255-03-14T16:00:00.5Z", "2017-08-09t10:10:00+02:00"):
        path = _stamp_table(tmp_path / "t.csv", ["2017-08-09T10:00:00+02:00", stamp])
        with pytest.raises(InputError, match=r"1 bad timestamps"):
            _ws_chunks(path)
        with pytest.raises(InputError, match=r"1 (stamps out of range|unparseable timestamps)"):
            parse_timestamps(pd.read_csv(path, dtype=str)["timestamp"], None, "t")
    path = _stamp_table(tmp_path / "t.csv", ["1502266200", "", "1502266800"])
    with pytest.raises(InputError, match=r"1 bad timestamps \(\['bad_timestamp'\]\), e.g. \[''\]"):
        _ws_chunks(path)
    column = pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""])["timestamp"]  # as scada-prepare
    with pytest.raises(InputError, match=r"1 empty \(or infinite\) timestamps"):
        parse_timestamps(column, None, "t")
    aware = [pd.Timestamp("2017-08-09", tz="UTC"), pd.NaT, pd.Timestamp("2300-01-01", tz="UTC")]
    for col in (pd.Series(aware, dtype="datetime64[us, UTC]"), pd.Series(aware[:2], dtype="datetime64[ns, UTC]")):
        with pytest.raises(InputError, match=r"1 empty timestamps"):
            parse_timestamps(col, None, "t")


def test_one_cell_is_a_number_by_the_rule_of_a_whole_column():
    """`cells.is_number` (replay's stamps, one cell at a time) agrees with `parse_numbers` (a column)."""
    from scada_tcn.runtime.cells import is_number, parse_numbers

    cells = [
        "7.5",
        "1_000",
        "",
        " 2 ",
        "inf",
        "-3e2",
        "n/a",
        "0x10",
        "1e400",
        "nan",
        "NaN",
        "+5",
        ".5",
        "5.",
        "1,5",
        "  ",
        "-inf",
        "Infinity",
        "1 000",
        "NA",
        "\u0661\u0662",
        "+nan",
        "1e-400",
        "e5",
        "0.1e",
        "1502266200",
        "7\u00a0",
        "\u20037",
    ]  # fmt: skip  (no-break / em spaces: is_number stripped them)
    for c in cells:
        _, bad = parse_numbers([c])
        assert is_number(c) == (not bad and c.strip() != ""), c


def test_iso_forms_that_scada_prepare_refuses_are_refused_by_replay(tmp_path):
    """Python's ISO parser takes week dates, decimal commas and offsets with seconds; pandas' (scada-prepare's) does
    not. Replay refuses them too, instead of scoring a table that cannot be trained on as written."""
    import pandas as pd

    from scada_tcn.runtime.errors import InputError
    from scada_tcn.trainer.data.tables import parse_timestamps

    for stamp in ("2017-W32-3T10:10:00+02:00", '"2017-08-09T10:10:00,5+02:00"', "2017-08-09T10:10:00+02:00:00"):
        path = _stamp_table(tmp_path / "t.csv", ["2017-08-09T10:00:00+02:00", stamp])
        with pytest.raises(InputError, match=r"1 bad timestamps \(\['bad_timestamp'\]\)"):
            _ws_chunks(path)
        with pytest.raises(InputError, match="1 unparseable timestamps"):
            parse_timestamps(pd.read_csv(path, dtype=str)["timestamp"], None, "t")


def _stamp_corpus(rng: np.random.Generator, n: int) -> list[str]:
    """n stamps built from the pieces of ISO-8601 (each piece a near miss one time in eight): date separators
    (pandas takes - . / \\ and a space; not _ or ,), padded or not, months and days out of range, 'T' or a space
    before the time (not 't'), times with and without ':', fractions of up to 20 digits or after a comma, offsets
    of every length and out of range, Z, lowercase z, a trailing NUL."""

    def pick(good: tuple, bad: tuple) -> Any:
        options = bad if rng.random() < 0.125 else good
        return options[int(rng.integers(len(options)))]

    def two(x: int, pad: bool) -> str:
        return f"{x:02d}" if pad else str(x)

    out = []
    for _ in range(n):
        sep, pad = pick(("-", "/", ".", "\\", " ", ""), ("_", ",")), bool(rng.random() < 0.6)
        year = pick(("2017", "2016", "1999", "2255"), ("0000", "17", "2256"))
        date = f"{year}{sep}{two(pick((1, 2, 8, 10, 12), (0, 13)), pad or not sep)}"
        if rng.random() < 0.95:
            date += f"{sep}{two(pick((1, 9, 10, 28, 29, 31), (0, 32)), pad or not sep)}"
        if rng.random() < 0.1:
            out.append(date)
            continue
        colon, pad = pick((":", ":", ""), (".",)), bool(rng.random() < 0.7)
        parts = [two(pick((0, 1, 9, 10, 23), (24,)), pad), two(pick((0, 5, 59), (60,)), pad or not colon),
                 two(pick((0, 5, 59), (60,)), pad or not colon)][: int(rng.integers(1, 4))]  # fmt: skip
        time = colon.join(parts)
        if rng.random() < 0.4:
            digits = pick((0, 1, 3, 6, 9, 12, 18), (19, 20))
            time += pick((".",), (",",)) + "".join(str(d) for d in rng.integers(0, 10, digits))
        zone = pick(("", "Z", " Z", "+02:00", "+0200", "+02", "+2", "-2:30", "+2:3", "-00:00", " +01:00", "\n+01:00"),
                    ("z", "+24:00", "+12:60", "+02:00:00", "+", "UTC", "+02:", "Z\x00"))  # fmt: skip
        out.append(f"{date}{pick(('T', ' '), ('t', '  ', '_'))}{time}{zone}")
    return out


def test_iso_stamps_read_alike_by_replay_the_daemon_and_scada_prepare_over_a_generated_corpus():
    """Replay and the daemon read an ISO-8601 stamp by pandas' grammar (scada-prepare's reader): over 1,500
    generated stamps and near misses, each is refused by all three or read by all as the same instant, with no zone
    (a stamp without an offset is refused) and with Europe/Paris for stamps without an offset (DST changes
    included). Before, replay refused 2017/8/9 and single-digit fields that pandas takes, and took 19-digit
    fractions and a trailing NUL that pandas refuses; the daemon read stamps with Python's parser, which refuses
    2017/08/09 and +2 and takes week dates, and cut fractions to the microsecond."""
    import pandas as pd

    from scada_tcn.runtime.errors import InputError
    from scada_tcn.runtime.replay import _timestamp
    from scada_tcn.trainer.data.tables import parse_timestamps

    corpus = _stamp_corpus(np.random.default_rng(5), 1500)
    for zone in (None, "Europe/Paris"):
        tz = None if zone is None else ZoneInfo(zone)
        read = 0
        for stamp in corpus:
            try:
                want: int | str | None = int(parse_timestamps(pd.Series([stamp]), zone, "t")[0])
            except InputError as e:
                want = "naive" if "no UTC offset" in str(e) else None
            table, _ = _timestamp(stamp, tz)
            daemon = parse_timestamp_ns(stamp, tz=tz)
            got = "naive" if table == "naive_timestamp" else None if isinstance(table, str) else table
            if {got, want} != {None, "naive"}:  # a year-0 date: refused by both, for different reasons
                assert got == want, (zone, stamp)
            if table != "out_of_range" and not is_number(stamp):  # a cell's number is epoch seconds; beyond a
                assert daemon == table, (zone, stamp)  # table's range, the daemon's clock checks refuse far less
            read += isinstance(got, int)
        assert read > 150  # many stamps of the corpus are read (202 with no zone, more with one)


def test_the_daemon_reads_a_message_stamp_as_replay_reads_a_cell():
    """Forms a gateway may send, through `TelemetryDecoder.decode`: the instant replay and scada-prepare read, or
    the same refusal. Before, the daemon refused '/' separators, one-digit fields and a `+2` offset (which pandas
    and replay take), took week dates, decimal commas, offsets with seconds, a lowercase 't' and non-ASCII digits
    (which they refuse), and cut a fraction to the microsecond."""
    import pandas as pd

    from scada_tcn.runtime.errors import InputError
    from scada_tcn.runtime.replay import _timestamp
    from scada_tcn.trainer.data.tables import parse_timestamps

    read = ["2024/01/28 00:10:00+01:00", "2024-1-28T0:10:00Z", "2024-01-28T00:10:00+1", "2024.01.28T00:10:00 Z",
            "2024-01-28T00:10:00.123456789Z", "20240128T001000Z", "  2024-01-28T00:10:00Z "]  # fmt: skip
    refused = ["2024-W04-7T00:10:00Z", "2024-01-28T00:10:00,5Z", "2024-01-28T00:10:00+01:00:30",
               "2024-01-28t00:10:00Z", "\u0662\u0660\u0662\u0664-01-28T00:10:00Z", "2024-028T00:10:00Z"]  # fmt: skip
    dec, now = _decoder(), 1706400600 * 10**9
    for stamp in read + refused:
        text = stamp.encode().decode("unicode_escape")
        table, _ = _timestamp(text, None)
        try:
            prepare = int(parse_timestamps(pd.Series([text]), None, "t")[0])
        except InputError:
            prepare = None
        for _ in range(2):  # read, then from the decoder's memo of stamp texts
            got = dec.decode("s/x/WT1/telemetry", json.dumps({"ts": text, "values": {"P": 1.0}}).encode(), now)
            if stamp in read:
                assert not isinstance(got, Rejection), (stamp, got)
                assert got.ts_ns == table == prepare, stamp  # type: ignore[union-attr]
            else:
                assert isinstance(got, Rejection) and got.reason == "bad_timestamp", (stamp, got)
                assert table == "bad_timestamp" and prepare is None, stamp


def test_an_offset_scada_prepare_did_not_spot_was_dropped_under_a_naive_timezone():
    """scada-prepare decided whether a stamp had an offset by a pattern that missed forms pandas reads (+02 after a
    time without ':', +2, +2:30). With naive_timezone set, such a column was taken as local time: the parsed
    offset dropped and the wall-clock time placed in the zone, 20170809T101000+02 becoming 06:10 UTC instead of
    08:10 in Europe/Paris' summer (replay read 08:10). Both now read the instant the offset gives."""
    import pandas as pd

    from scada_tcn.runtime.replay import _timestamp
    from scada_tcn.trainer.data.tables import parse_timestamps

    stamps = ["20170809T101000+02", "2017-08-09T10+02", "2017-08-09 10:10:00+2", "2017-08-09T11:40:00.0 +3:30"]
    want = [1502266200 * 10**9, 1502265600 * 10**9, 1502266200 * 10**9, 1502266200 * 10**9]
    for zone in (None, "Europe/Paris"):
        assert parse_timestamps(pd.Series(stamps), zone, "t").tolist() == want
        tz = None if zone is None else ZoneInfo(zone)
        assert [_timestamp(s, tz)[0] for s in stamps] == want


def test_epoch_seconds_read_alike_one_by_one_in_batches_and_in_scada_prepare(tmp_path):
    """Epoch seconds with fractions down to below a nanosecond (ties included): the daemon's per-sample rule
    (`parse_timestamp_ns`), replay's vectorised chunk (`epoch_ns`) and scada-prepare give the same ns, to the
    microsecond, as an ISO stamp of the same instant (before, 3 of 4 stamps with milliseconds differed from their
    ISO form by up to 256 ns: the same reading sent both ways was not deduplicated)."""
    import pandas as pd

    from scada_tcn.runtime.telemetry import TABLE_EPOCH_FLOOR_S, epoch_ns, parse_timestamp_ns
    from scada_tcn.trainer.data.tables import parse_timestamps

    rng = np.random.default_rng(11)
    edges = [0.0, -0.0, 1.5e-9, 2.5e-9, 9e9, -9e9]
    secs = np.concatenate([rng.uniform(-2e9, 4e9, 3000), rng.integers(0, 2**31, 1000) + 0.5e-9,
                           np.round(rng.uniform(1e9, 2e9, 1000), 3), edges])  # fmt: skip
    assert epoch_ns(secs).tolist() == [parse_timestamp_ns(float(repr(float(x)))) for x in secs]
    secs = secs[secs >= TABLE_EPOCH_FLOOR_S]  # a table's stamps lie after 1990 (`test_numeric_stamps_...`)
    cells = [repr(float(x)) for x in secs]
    one_by_one = [parse_timestamp_ns(float(c)) for c in cells]
    path = _stamp_table(tmp_path / "t.csv", cells)
    assert [t for _, ts, _, _ in _ws_chunks(path, 997) for t in ts.tolist()] == one_by_one
    assert parse_timestamps(pd.read_csv(path, dtype=str)["timestamp"], None, "t").tolist() == one_by_one
    assert epoch_ns(np.array([1.7e9, 9.1e9])) is None and epoch_ns(np.array([np.nan])) is None
    ms = rng.integers(1_000_000_000, 2_000_000_000, 2000) * 1000 + rng.integers(0, 1000, 2000)  # epoch ms
    iso = [datetime.fromtimestamp(int(m) // 1000, UTC).strftime("%Y-%m-%dT%H:%M:%S") + f".{int(m) % 1000:03d}Z"
           for m in ms]  # fmt: skip
    floats = [float(f"{int(m) // 1000}.{int(m) % 1000:03d}") for m in ms]
    assert [parse_timestamp_ns(f) for f in floats] == [parse_timestamp_ns(t) for t in iso] == (ms * 10**6).tolist()
    assert epoch_ns(np.array(floats)).tolist() == (ms * 10**6).tolist()


def test_stamps_beyond_int64_nanoseconds_are_refused_not_crashed_on(tmp_path):
    """A table's stamp past 2255 (int64 ns end in 2262): replay and scada-prepare refuse the table saying the range,
    instead of an OverflowError (replay, scada-prepare on ISO stamps) or a stamp wrapped to 1677 (scada-prepare on
    epoch numbers). The daemon refuses such a stamp as in the future (`test_runtime_e2e`'s fuzz)."""
    import pandas as pd

    from scada_tcn.runtime.errors import InputError
    from scada_tcn.trainer.data.tables import parse_timestamps

    for stamp in ("11000000000", "-9500000000", "2300-01-01T00:00:00Z", "2260-06-01T00:00:00+02:00"):
        number = stamp.lstrip("-").isdigit()
        path = _stamp_table(
            tmp_path / "t.csv", ["2017-08-09T08:10:00Z", stamp] if not number else ["1502266200", stamp]
        )
        with pytest.raises(InputError, match=r"1 bad timestamps \(\['out_of_range'\]\).*1684-10-19 to 2255-03-14"):
            _ws_chunks(path)
        col = pd.read_csv(path, dtype=str)["timestamp"]
        with pytest.raises(InputError, match=r"out of range.*1684-10-19 to 2255-03-14"):
            parse_timestamps(col, None, "t")
        if number:
            with pytest.raises(InputError, match=r"out of range.*1684-10-19 to 2255-03-14"):
                parse_timestamps(pd.to_numeric(col), None, "t")


def test_score_batches_keep_order_and_the_size_bound():
    """`records.batches` packs records one per line, in order, each message within the bound (a longer record goes
    alone); `split_batch` gives back exactly the records."""
    rng = np.random.default_rng(0)
    payloads = [dumps({"turbine": f"T{i}", "seq": i, "pad": "x" * int(n)})
                for i, n in enumerate(rng.integers(0, 3000, 200))]  # fmt: skip
    payloads[57] = dumps({"turbine": "big", "seq": 57, "pad": "y" * 9000})
    messages = list(batches(payloads, 8192))
    assert [r for m in messages for r in split_batch(m)] == payloads
    assert all(len(m) <= 8192 for m in messages if b'"big"' not in m)
    assert any(split_batch(m) == [payloads[57]] for m in messages)
    assert len(messages) < len(payloads) / 3
    assert list(batches([], 8192)) == []


def test_a_long_stamp_is_refused_unread_with_a_short_detail():
    """Found in review: the grammar allows any run of whitespace before the offset (as pandas does), and the
    length check of Python's parser had gone: a 60 kB stamp was parsed (about 140 ns a character in the regex) and
    its `ts_in_future` refusal carried the whole stamp to the errors topic. A message's stamp longer than 64
    characters, stripped, is refused unread, and clock refusals show at most 60 characters of it."""
    dec = _decoder(max_payload_bytes=1 << 20)
    for stamp in ("2099-01-01T00:00" + " " * 60_000 + "+01:00", "2024-06-01T00:00" + " " * 60_000 + "x"):
        got = dec.decode("s/x/WT1/telemetry", json.dumps({"ts": stamp, "values": {"P": 1}}).encode(), NOW)
        assert got.reason == "bad_timestamp" and len(got.detail) < 300  # type: ignore[union-attr]
    doc = {"ts": "2099-01-01T00:00:00.000000000000000001     +01:00", "values": {"P": 1}}
    future = dec.decode("s/x/WT1/telemetry", json.dumps(doc).encode(), NOW)
    assert future.reason == "ts_in_future" and "'2099-01-01T00:00:00.0000" in future.detail  # type: ignore[union-attr]
    assert len(future.detail) < 120  # type: ignore[union-attr]
    number = dec.decode("s/x/WT1/telemetry", b'{"ts": 4102444800, "values": {"P": 1}}', NOW)  # a number, unquoted
    assert number.detail.startswith("ts 4102444800 is more than")  # type: ignore[union-attr]
