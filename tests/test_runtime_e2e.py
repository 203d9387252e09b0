"""The edge runtime end to end, against a real Mosquitto: parity with the offline reference, replay, broker restart,
fuzzing, TLS + password, health, lean imports.

A slice of the tiny simulated farm (4 turbines) is streamed from STREAM_START: the streaming pipeline has no
history before it, so parity is checked on steps whose whole window lies at least max(rolling window) steps after
the stream start, where batch and stream see the same history.
"""

from __future__ import annotations

import gzip
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pytest
import yaml

from scada_tcn.demo.broker import free_port
from scada_tcn.runtime import daemon as daemon_module
from scada_tcn.runtime import replay as replay_module
from scada_tcn.runtime.binning import bin_timeline
from scada_tcn.runtime.bundle import load_bundle
from scada_tcn.runtime.daemon import Daemon
from scada_tcn.runtime.daemon_config import MappingCfg
from scada_tcn.runtime.engine import Engine
from scada_tcn.runtime.hold import is_unread
from scada_tcn.runtime.mqtt import Message
from scada_tcn.runtime.prometheus import RuntimeMetrics
from scada_tcn.runtime.records import dedupe, iso_utc, split_batch
from scada_tcn.runtime.replay import replay
from scada_tcn.runtime.state_file import encode_state
from scada_tcn.runtime.stream import make_scorer
from scada_tcn.runtime.telemetry import Sample, parse_timestamp_ns
from tests.mosquitto import (
    DT_NS,
    GATEWAY,
    SITE,
    Broker,
    Collector,
    DaemonThread,
    bin_labels,
    by_key,
    client,
    daemon_config,
    expected_steps,
    overflow_report,
    publish_all,
    read_slice,
    reexported,
    require_mosquitto,
    scores_through,
    to_batches,
    to_messages,
    to_samples,
    wait_for,
    write_csv,
)
from tests.sparkplug_messages import Payload, metric

STREAM_START, STREAM_END = "2024-01-28T00:00:00+00:00", "2024-01-29T12:00:00+00:00"  # 216 steps per turbine


@pytest.fixture(scope="module")
def kind(request) -> str:
    """The engine under test: "window" (the tiny window-mean bundle, window recompute) unless a test is
    parametrized with `ENGINES`, which adds "stream" (the per-signal bundle's step graph, the default engine)."""
    return getattr(request, "param", "window")


ENGINES = pytest.mark.parametrize("kind", ["window", "stream"], indirect=True)


@pytest.fixture(scope="module")
def bundle_dir(kind, tiny_bundle, request) -> Path:
    return request.getfixturevalue("signal_run")[0] if kind == "stream" else tiny_bundle


@pytest.fixture(scope="module")
def bundle(bundle_dir):
    return load_bundle(bundle_dir)


@pytest.fixture(scope="module")
def fresh_scorer(bundle, kind):
    """A new scorer per engine: the streaming scorer holds each turbine's layer state."""
    return lambda: make_scorer(bundle, kind)


@pytest.fixture()
def scorer(fresh_scorer):
    return fresh_scorer()


@pytest.fixture(scope="module")
def timeline(tiny_run, tmp_path_factory):
    header, rows = read_slice(tiny_run.synth_dir / "scada.csv", STREAM_START, STREAM_END)
    path = write_csv(tmp_path_factory.mktemp("rt_slice") / "slice.csv", header, rows)
    return header, rows, path


@pytest.fixture(scope="module")
def replayed(bundle, fresh_scorer, timeline, tmp_path_factory) -> dict[tuple[str, str], bytes]:
    """The slice through `replay` (same Engine as run): (turbine, ts) -> score payload."""
    out = tmp_path_factory.mktemp("rt_replay") / "scores.jsonl"
    engine = Engine(bundle, fresh_scorer(), grace_seconds=0.0, max_turbines=100, max_batch=512)
    replay(engine, timeline[2], MappingCfg(), out)
    return {k: next(iter(v)) for k, v in by_key(out.read_bytes().splitlines()).items()}


def _first_comparable_ns(bundle) -> int:
    """Window end from which batch and stream share the whole history (L steps after max rolling window)."""
    max_roll = max(bundle.spec.rolling.windows) if bundle.spec.rolling else 1
    start_label = parse_timestamp_ns(STREAM_START)
    return start_label + (max_roll + bundle.dims.L) * DT_NS


def _reference(tiny_run, bundle, keys: list[tuple[str, str]]):
    """trainer infer_step on the prepared arrays for the windows ending at `keys` (turbine, ts)."""
    import torch

    from scada_tcn.trainer.model.reference import build_reference, checkpoint_config, infer_step
    from scada_tcn.trainer.training.fit import load_checkpoint

    ckpt = load_checkpoint(tiny_run.checkpoint)
    mods = build_reference(ckpt, checkpoint_config(ckpt))
    proc = Path(tiny_run.cfg().data.paths.processed_dir) / "turbines"
    L = bundle.dims.L
    X, M, Fl = [], [], []
    for tid, ts in keys:
        d = proc / tid
        stamps = np.load(d / "timestamps.npy")
        i = int(np.searchsorted(stamps, parse_timestamp_ns(ts.replace("Z", "+00:00"))))
        X.append(np.load(d / "X.npy")[i - L + 1 : i + 1])
        M.append(np.load(d / "M_miss.npy")[i - L + 1 : i + 1])
        Fl.append(np.load(d / "Flags.npy")[i - L + 1 : i + 1])
    t = [torch.from_numpy(np.stack(a).astype(np.float32)) for a in (X, M, Fl)]
    return infer_step(mods.model, mods.scoring, *t)


def _assert_matches_reference(records: dict[tuple[str, str], bytes], tiny_run, bundle) -> int:
    first = _first_comparable_ns(bundle)
    docs = {k: json.loads(v) for k, v in records.items()}
    keys = sorted(
        k
        for k, d in docs.items()
        if d["status"] == "ok" and parse_timestamp_ns(d["ts"].replace("Z", "+00:00")) >= first
    )
    assert len(keys) > 100
    ref = _reference(tiny_run, bundle, keys)
    names = list(bundle.spec.feature_names)
    center, scale = np.asarray(bundle.scaler.center), np.asarray(bundle.scaler.scale)
    probs = ref.fault_prob.numpy()
    for b, k in enumerate(keys):
        d = docs[k]
        s_ref = float(ref.s_now[b])
        assert abs(d["score"] - s_ref) <= 1e-4 * abs(s_ref) + 1e-7, (k, d["score"], s_ref)
        contrib = ref.feat_contrib[b].numpy()
        got_names = [t["name"] for t in d["top_features"]]
        ref_names = [names[j] for j in ref.top_idx[b].tolist()]
        for g, r in zip(got_names, ref_names):
            assert g == r or abs(contrib[names.index(g)] - contrib[names.index(r)]) < 1e-6, (k, got_names, ref_names)
        for t in d["top_features"]:
            assert abs(t["contribution"] - contrib[names.index(t["name"])]) <= 1e-4 * s_ref + 1e-7
        np.testing.assert_allclose([d["fault_probs"][c] for c in bundle.class_names], probs[b], atol=1e-5)
        y_ref = ref.Y_hat[b].numpy().astype(np.float64) * scale + center
        y_got = np.array([d["forecast"][n] for n in names]).T
        assert (np.abs(y_got - y_ref) <= 1e-4 * np.abs(y_ref) + 1e-4 * scale).all(), k  # 1e-4 in model units
    return len(keys)


def _close(a, b, where: str) -> None:
    if isinstance(a, float) or isinstance(b, float):
        assert abs(a - b) <= 1e-5 * max(abs(a), abs(b)) + 1e-6, (where, a, b)
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            _close(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, list):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _close(x, y, f"{where}[{i}]")
    else:
        assert a == b, (where, a, b)


def assert_close(p: bytes, q: bytes, key) -> None:
    """Two score payloads agree: equal strings and ints, floats within 1e-5 relative (top-N ties excepted)."""
    a, b = json.loads(p), json.loads(q)
    if a.get("top_features") != b.get("top_features") and "top_features" in a:
        ca = {t["name"]: t["contribution"] for t in a.pop("top_features")}
        cb = {t["name"]: t["contribution"] for t in b.pop("top_features")}
        for n in set(ca) ^ set(cb):  # only near-ties may swap in or out
            assert abs(ca.get(n, cb.get(n)) - min(min(ca.values()), min(cb.values()))) < 1e-6, (key, n)
    _close(a, b, str(key))


def assert_the_replays(payloads: Iterable[bytes], want: dict[str, int], replayed: dict) -> None:
    """Score payloads as published: no step twice with different bytes, every closed step of each turbine
    (`want`), each record the replay's (`assert_close`)."""
    got = dedupe(payloads)
    assert got.conflicts == {}
    assert {t: sum(1 for k in got.records if k[0] == t) for t in want} == want
    for k, payload in got.records.items():
        assert_close(payload, replayed[k], k)


def test_stream_features_match_prepared_arrays(bundle, timeline, tiny_run):
    """The fleet's windows equal scada-prepare's arrays within 1e-6 once the stream has history."""
    seen = []

    class Spy:
        def score(self, X, M, Fl):
            seen.append((X.copy(), M.copy(), Fl.copy()))
            raise StopIteration  # only the inputs matter here

    header, rows, _ = timeline
    engine = Engine(bundle, Spy(), 0.0, 100, 10**6)
    for sample in to_samples(header, rows, bundle.spec.channels):
        engine.ingest(sample)
    steps = [s for s in engine.fleet.drain() if s.window is not None]
    proc = Path(tiny_run.cfg().data.paths.processed_dir) / "turbines"
    first, L, n = _first_comparable_ns(bundle), bundle.dims.L, 0
    for s in steps:
        if s.end_ns < first:
            continue
        stamps = np.load(proc / s.turbine / "timestamps.npy")
        i = int(np.searchsorted(stamps, s.end_ns))
        sl = slice(i - L + 1, i + 1)
        np.testing.assert_allclose(s.window.X, np.load(proc / s.turbine / "X.npy")[sl], atol=1e-6, rtol=0)
        np.testing.assert_array_equal(s.window.M_miss, np.load(proc / s.turbine / "M_miss.npy")[sl])
        np.testing.assert_array_equal(s.window.Flags, np.load(proc / s.turbine / "Flags.npy")[sl])
        n += 1
    assert n > 100


def test_replay_matches_offline_reference(replayed, tiny_run, bundle):
    assert _assert_matches_reference(replayed, tiny_run, bundle) > 100


def test_broker_parity_with_reference_and_replay(broker, bundle, scorer, timeline, replayed, tiny_run):
    header, rows, _ = timeline
    col = Collector(broker.url, [f"scada/{SITE}/+/score", f"scada/{SITE}/+/alert/state"])
    wait_for(lambda: col.ready(), 10, "collector connect")
    d = DaemonThread(daemon_config(broker.url), bundle, scorer)
    records = scores_through(broker.url, d, col, header, rows, 60)
    assert d.stop() == 0
    for k, payload in records.items():  # run and replay share the pipeline (batch composition may move ulps)
        assert_close(payload, replayed[k], k)
    _assert_matches_reference(records, tiny_run, bundle)
    assert {t.split("/")[2] for t, _ in col.of("/alert/state")} == set(expected_steps(rows, header))
    col.close()


def _alert_state(turbine: str, state: str, gateway: str | None = None) -> bytes:
    """A retained alert state as an earlier daemon (another model) left it; one from before the records named their
    gateway without `gateway`."""
    doc = {"schema": "scada-score/2", "turbine": turbine, "state": state, "since": "2024-01-27T18:00:00Z",
           "seq": 2838240, "model_id": "an-earlier-model", "bundle_id": "an-earlier-bundle"}  # fmt: skip
    return json.dumps(doc if gateway is None else doc | {"gateway": gateway}).encode()


@pytest.mark.parametrize("kind", ["stream"], indirect=True)
def test_a_start_without_state_closes_the_alerts_the_broker_holds_on(broker, bundle, scorer, timeline):
    """A daemon started without its state (no state.path, a file lost or set aside unreadable) began with every
    alert off: a turbine whose alert a consumer held "on" got, at its first score, a retained state "off" and no
    transition on the alert topic, so a consumer of transitions kept the "on" for ever. Now the daemon reads the
    broker's retained alert states at start, before any telemetry, and carries over those "on" of the turbines
    it scores: the records say alert true until the turbine is scored normal, then an "off" transition is
    published and the retained state says "off". An "off", a payload that is not an alert state, and a turbine
    `ingest.turbines` does not list are left alone."""
    header, rows, _ = timeline
    turbines = sorted(expected_steps(rows, header))
    on, off, garbled = turbines[:3]
    writer = client(broker.url, "retained-writer")
    wait_for(writer.is_connected, 10, "writer")
    for t, payload in ((on, _alert_state(on, "on")), (off, _alert_state(off, "off")), (garbled, b"{not json"),
                       ("elsewhere", _alert_state("elsewhere", "on"))):  # fmt: skip
        writer.publish(f"scada/{SITE}/{t}/alert/state", payload, qos=1, retain=True).wait_for_publish(10)
    writer.disconnect()
    col = Collector(broker.url, [f"scada/{SITE}/+/score", f"scada/{SITE}/+/alert"], client_id="carry-collector")
    wait_for(col.ready, 10, "collector connect")
    d = DaemonThread(daemon_config(broker.url, ingest={"turbines": turbines}), bundle, scorer)
    assert d.daemon.engine.fleet.turbines == [on]  # carried at start, before any telemetry
    records = scores_through(broker.url, d, col, header, rows, 60)
    assert d.stop() == 0
    flags = {t: [json.loads(p)["alert"] for (tt, _), p in sorted(records.items()) if tt == t and b'"alert"' in p]
             for t in turbines}  # fmt: skip
    assert flags[on][0] is True and False in flags[on]  # held on, then scored normal
    assert all(f[0] is False for t, f in flags.items() if t != on)
    transitions = [(t.split("/")[2], json.loads(p)["state"]) for t, p in col.of("/alert")]
    assert transitions[0] == (on, "off")  # the consumer's "on" closed
    states, gateways = _retained_alert_states(broker, "retained-reader", len(turbines) + 1)
    assert states == {t: "on" if flags[t][-1] else "off" for t in turbines} | {"elsewhere": "on"}
    assert gateways == dict.fromkeys(turbines, GATEWAY) | {"elsewhere": None}  # each names the gateway it is from
    col.close()


def _retained_alert_states(broker, client_id: str, n: int) -> tuple[dict[str, str], dict[str, str | None]]:
    """The n retained alert states the broker holds for this site: per turbine, its state and its gateway."""
    docs: dict[str, dict] = {}
    watcher = client(broker.url, client_id, {"on_message": lambda c, u, m: docs.update(
        {m.topic.split("/")[2]: json.loads(m.payload)})})  # fmt: skip
    wait_for(watcher.is_connected, 10, "reader")
    watcher.subscribe(f"scada/{SITE}/+/alert/state", qos=1)
    wait_for(lambda: len(docs) == n, 10, "retained alert states")
    watcher.disconnect()
    return {t: d["state"] for t, d in docs.items()}, {t: d.get("gateway") for t, d in docs.items()}


@pytest.mark.parametrize("kind", ["stream"], indirect=True)
def test_a_start_without_state_clears_the_alert_state_of_a_turbine_this_gateway_retired(broker, bundle, scorer,
                                                                                          caplog):  # fmt: skip
    """A turbine taken off `ingest.turbines` while the daemon ran without its state (no state.path, a file lost)
    kept its retained alert state for ever: "on", its consumers held the alert, and nothing would close it
    (`_retire` clears it only when the state knows the turbine). The retained states now name the gateway that
    published them: a start clears those of its own gateway whose turbine it no longer scores. Another gateway's
    turbine of the site, and a state that names no gateway (written before records named it), are left as they
    are."""
    written = {"WT07": _alert_state("WT07", "on", GATEWAY), "WT08": _alert_state("WT08", "off", GATEWAY),
               "WT21": _alert_state("WT21", "on", "gw2"), "WT22": _alert_state("WT22", "on")}  # fmt: skip
    writer = client(broker.url, "retained-writer-retired")
    wait_for(writer.is_connected, 10, "writer")
    for t, payload in written.items():
        writer.publish(f"scada/{SITE}/{t}/alert/state", payload, qos=1, retain=True).wait_for_publish(10)
    writer.disconnect()
    cleared: list[str] = []
    watcher = client(broker.url, "retained-watcher-retired", {"on_message": lambda c, u, m: cleared.append(
        m.topic.split("/")[2]) if m.payload == b"" else None})  # fmt: skip
    wait_for(watcher.is_connected, 10, "watcher")
    watcher.subscribe(f"scada/{SITE}/+/alert/state", qos=1)
    with caplog.at_level(logging.WARNING, logger="scada.runtime.daemon"):
        d = DaemonThread(daemon_config(broker.url, ingest={"turbines": ["WT01", "WT02"]}), bundle, scorer)
        try:
            assert d.daemon.engine.fleet.turbines == []  # nothing carried: none of them is scored here
            wait_for(lambda: sorted(cleared) == ["WT07", "WT08"], 20, "the retired turbines' states cleared")
        finally:
            assert d.stop() == 0
    watcher.disconnect()
    warned = [r for r in caplog.records if "retired while the daemon ran without its state" in r.getMessage()]
    assert len(warned) == 1 and warned[0].turbines == ["WT07", "WT08"]
    states, gateways = _retained_alert_states(broker, "retained-reader-retired", 2)
    assert states == {"WT21": "on", "WT22": "on"} and gateways == {"WT21": "gw2", "WT22": None}


def test_a_broker_away_at_start_is_asked_for_the_alerts_once_back(broker, bundle, scorer):
    """A daemon that starts while its broker is away cannot read the retained alert states then: it asks once
    more when its link first connects, and carries the "on" it finds (the broker kept it: persistence)."""
    writer = client(broker.url, "retained-writer-away")
    wait_for(writer.is_connected, 10, "writer")
    on = writer.publish(f"scada/{SITE}/WT09/alert/state", _alert_state("WT09", "on"), qos=1, retain=True)
    on.wait_for_publish(10)
    writer.disconnect()
    broker.stop()
    d = DaemonThread(daemon_config(broker.url), bundle, scorer)
    try:
        assert d.daemon.engine.fleet.turbines == []  # unreachable at start: nothing read
        broker.start()
        wait_for(lambda: d.daemon.engine.fleet.turbines == ["WT09"], 20, "the retained alert states read once back")
        assert d.daemon.engine.alerts_on() == 1
    finally:
        assert d.stop() == 0


@pytest.fixture()
def limited_broker(tmp_path, request):
    """A Mosquitto whose max_packet_size (its MQTT v5 Maximum Packet Size) is the test's parameter."""
    b = Broker(tmp_path / "limited", max_packet=request.param)
    b.start()
    yield b
    b.stop()


@pytest.mark.parametrize("kind", ["stream"], indirect=True)
@pytest.mark.parametrize("limited_broker", [8192], indirect=True)
def test_batched_score_topic_carries_the_same_records(limited_broker, bundle, scorer, timeline, replayed):
    """`topics.score_batch`: the fleet's score records as JSON lines on one topic, several per message and none over
    the broker's Maximum Packet Size (8,192 here, below score_batch_bytes' 60,000); each line is the record the
    turbine's own topic would carry (the replay's); nothing goes to the per-turbine score topics; alert states stay
    per turbine."""
    broker = limited_broker
    header, rows, _ = timeline
    col = Collector(broker.url, [f"scada/{SITE}/{GATEWAY}/scores", f"scada/{SITE}/+/score",
                                 f"scada/{SITE}/+/alert/state"])  # fmt: skip
    wait_for(col.ready, 10, "collector connect")
    d = DaemonThread(daemon_config(broker.url, topics={"score_batch": "scada/{site}/{gateway}/scores"}), bundle, scorer)
    pub = client(broker.url, "publisher-batch")
    wait_for(lambda: pub.is_connected() and d.daemon.link.connected, 10, "connections")
    publish_all(pub, to_messages(header, rows))
    want = expected_steps(rows, header)

    def lines() -> list[bytes]:
        return [line for _, m in col.of("/scores") for line in split_batch(m)]

    wait_for(lambda: len(dedupe(lines()).records) >= sum(want.values()), 60, "all scores")
    pub.disconnect()
    assert d.daemon.link.connects == 2  # never dropped by the broker for a packet over its limit
    assert d.stop() == 0
    messages = [m for _, m in col.of("/scores")]
    topic = f"scada/{SITE}/{GATEWAY}/scores"  # a PUBLISH packet: 1 + 2 (length) + 2 + topic + 2 + 1 + payload
    assert max(8 + len(topic) + len(m) for m in messages) <= 8192 and len(messages) < len(lines()) / 1.5
    assert_the_replays(lines(), want, replayed)
    assert col.of("/score") == []
    assert {t.split("/")[2] for t, _ in col.of("/alert/state")} == set(want)
    col.close()


def _published_and_scored(broker, cfg, bundle, scorer, messages: list[tuple[str, bytes]], steps: int, reports: int,
                          name: str) -> tuple[Collector, DaemonThread]:  # fmt: skip
    """A daemon of `cfg` sent `messages` through the broker until `steps` scores and `reports` error reports came
    out: (the collector of both, the daemon still running)."""
    col = Collector(broker.url, [f"scada/{SITE}/+/score", f"scada/runtime/{GATEWAY}/errors"], client_id=f"col-{name}")
    wait_for(col.ready, 10, "collector connect")
    d = DaemonThread(cfg, bundle, scorer)
    pub = client(broker.url, f"publisher-{name}")
    wait_for(lambda: pub.is_connected() and d.daemon.link.connected, 10, "connections")
    publish_all(pub, messages)
    wait_for(lambda: col.has_steps(steps), 60, "all scores")
    wait_for(lambda: len(col.of("/errors")) >= reports, 30, "all error reports")
    pub.disconnect()
    return col, d


@pytest.mark.parametrize("kind", ["stream"], indirect=True)
def test_batched_telemetry_scores_as_per_turbine_telemetry(broker, bundle, scorer, timeline, replayed):
    """`topics.telemetry_batch`: the slice as JSON lines, 16 samples per message, with the fuzz test's hostile
    messages turned into lines (its document plus the turbine id) and scattered among them. Each bad line alone is
    rejected with the reason its message gets on the turbine's topic, counted and reported with its line number;
    a batch that is not UTF-8 is rejected whole. Every valid sample is admitted and every step scored, each score
    the replay's (which the per-turbine path matches, tests above)."""
    header, rows, _ = timeline
    topic = f"scada/{SITE}/{GATEWAY}/telemetry_batch"
    rng = np.random.default_rng(1)
    hostile = _hostile(to_messages(header, rows), 120, rng)
    batches_ = [[(line, None) for line in m.split(b"\n")] for _, m in to_batches(header, rows, topic, 16)]
    whole: list[bytes] = []  # messages refused whole
    for t, payload, reason in hostile:
        if reason == "not_utf8":
            whole.append(payload)
            continue
        try:
            doc = json.loads(payload)
        except (ValueError, RecursionError):
            doc = None
        line = json.dumps({"turbine": t.split("/")[2], **doc}).encode() if isinstance(doc, dict) else payload
        lines = batches_[int(rng.integers(len(batches_)))]
        lines.insert(int(rng.integers(len(lines) + 1)), (line, reason))
    messages = [(topic, b"\n".join(line for line, _ in lines)) for lines in batches_] + [(topic, p) for p in whole]
    want_lines = [(n, r) for lines in batches_ for n, (_, r) in enumerate(lines, 1) if r is not None]
    cfg = daemon_config(broker.url, topics={"telemetry_batch": "scada/{site}/{gateway}/telemetry_batch"},
                        ingest={"turbines": ["WT01", "WT02", "WT03", "WT04"], "max_payload_bytes": 4096})  # fmt: skip
    want = expected_steps(rows, header)
    col, d = _published_and_scored(broker, cfg, bundle, scorer, messages, sum(want.values()), len(hostile), "tb")
    m = d.daemon.metrics
    assert m.value("scada_runtime_messages_in_total") == len(messages)
    assert m.value("scada_runtime_samples_in_total") == len(rows)
    drift = d.daemon.engine.drift  # the gauge follows the monitor (it is recomputed when scores were pushed)
    wait_for(lambda: m.value("scada_runtime_score_drift_ks") == drift.get()["ks"] and drift.pushed > 0, 10, "drift")
    assert d.stop() == 0
    expected: dict[str, float] = {}
    for _, _, r in hostile:
        expected[r] = expected.get(r, 0.0) + 1.0
    assert m.rejected_by_reason() == expected
    reports = [json.loads(p) for _, p in col.of("/errors")]
    assert all(r["topic"] == topic for r in reports)
    assert sorted(r["reason"] for r in reports if "line" not in r) == ["not_utf8"] * len(whole)
    got_lines = sorted((r["line"], r["reason"]) for r in reports if "line" in r)
    assert got_lines == sorted(want_lines)
    assert_the_replays((p for _, p in col.of("/score")), want, replayed)
    col.close()


def test_thingsboard_telemetry_in_epoch_milliseconds_scores_as_iso_telemetry(broker, bundle, scorer, timeline,
                                                                             replayed):  # fmt: skip
    """ThingsBoard's device telemetry, `{"ts": <epoch ms>, "values": {...}}` (Node-RED and many PLC gateways stamp
    alike), with tags the model does not read beside the channels, one turbine's samples sent 4 at a time as an
    array (a device's buffer), through Mosquitto with `ingest.epoch_unit: ms` and `mapping.ignored_keys`: every
    sample admitted, every step scored, each score the replay's of the ISO-stamped table."""
    header, rows, _ = timeline
    messages = []
    for topic, payload in to_messages(header, rows):
        doc = json.loads(payload)
        ns = parse_timestamp_ns(doc["ts"])
        assert ns % 10**6 == 0  # the table's stamps hold whole milliseconds: the ms stamp is the same moment
        tags = {"status_text": "RUN", **doc["values"], "alarm_code": 0}
        messages.append((topic, json.dumps({"ts": ns // 10**6, "values": tags}).encode()))
    assert re.fullmatch(rb'\{"ts": 1\d{12}, "values": \{"status_text": .*\}\}', messages[0][1]), messages[0][1]
    held: list[bytes] = []  # WT02 buffers: every 4 samples sent at once as an array, in place of the 4th
    for i, (topic, payload) in enumerate(list(messages)):
        if "/WT02/" in topic:
            held.append(payload)
            messages[i] = (topic, b"[" + b", ".join(held) + b"]" if len(held) == 4 else b"")
            held = [] if len(held) == 4 else held
    messages = [(t, p) for t, p in messages if p] + [(f"scada/{SITE}/WT02/telemetry", b"[" + b", ".join(held) + b"]")]
    assert sum(p.startswith(b"[") for _, p in messages) > 10
    col = Collector(broker.url, [f"scada/{SITE}/+/score"], client_id="col-ms")
    wait_for(col.ready, 10, "collector connect")
    tags = {"ignored_keys": ["status_text", "alarm_code"]}
    cfg = daemon_config(broker.url, ingest={"epoch_unit": "ms"}, mapping=tags)
    d = DaemonThread(cfg, bundle, scorer)
    pub = client(broker.url, "publisher-ms")
    wait_for(lambda: pub.is_connected() and d.daemon.link.connected, 10, "connections")
    publish_all(pub, messages)
    want = expected_steps(rows, header)
    wait_for(lambda: col.has_steps(sum(want.values())), 60, "all scores")
    pub.disconnect()
    m = d.daemon.metrics
    assert m.value("scada_runtime_samples_in_total") == len(rows) and m.rejected_by_reason() == {}
    assert d.stop() == 0
    assert_the_replays((p for _, p in col.of("/score")), want, replayed)
    col.close()


def _assert_scored_and_refused(broker, cfg, bundle, scorer, timeline, replayed, messages: list[tuple[str, bytes]],
                               want_refused: list[tuple[dict, str]], name: str) -> RuntimeMetrics:  # fmt: skip
    """A daemon of `cfg` sent `messages` on the batch topic admits every sample of the timeline, refuses exactly
    `want_refused` ((where, reason), reported in order with the topic), and scores every step as the replay:
    the daemon's metrics."""
    header, rows, _ = timeline
    want = expected_steps(rows, header)
    col, d = _published_and_scored(broker, cfg, bundle, scorer, messages, sum(want.values()), len(want_refused), name)
    m = d.daemon.metrics
    assert m.value("scada_runtime_samples_in_total") == len(rows)
    assert m.rejected_by_reason() == {r: float(k) for r, k in Counter(r for _, r in want_refused).items()}
    assert d.stop() == 0
    reports = [json.loads(p) for _, p in col.of("/errors")]
    assert all(r["topic"] == cfg.topics.telemetry_batch for r in reports)
    where = {k for w, _ in want_refused for k in w}
    assert [({k: r[k] for k in where if k in r}, r["reason"]) for r in reports] == want_refused
    assert_the_replays((p for _, p in col.of("/score")), want, replayed)
    col.close()
    return m


def test_thingsboard_gateway_messages_with_numbers_as_text_score_as_per_turbine_telemetry(
    broker, bundle, scorer, timeline, replayed
):
    """ThingsBoard's gateway API on `v1/gateway/telemetry` (`ingest.batch_format: devices`): the tiny farm's samples,
    12 rows a message as `{"<turbine>": [{"ts": <epoch ms>, "values": {...}}, ...], ...}`, every value a string
    (`ingest.numeric_strings`) beside an ignored tag. Among them, elements the daemon must refuse: a value that is
    no number, a turbine off the allow-list, an entry that is not an array. Each refusal is counted and reported
    with its turbine and element; every sample of the table is admitted and every step scored, each score the
    replay's of the ISO-stamped table with numbers."""
    header, rows, _ = timeline
    topic = "v1/gateway/telemetry"
    entries: list[tuple[str, dict]] = []
    for t, payload in to_messages(header, rows):
        doc = json.loads(payload)
        text = {k: None if v is None else repr(v) for k, v in doc["values"].items()}  # repr: the float's digits
        entries.append((t.split("/")[2], {"ts": parse_timestamp_ns(doc["ts"]) // 10**6,
                                          "values": {**text, "status_text": "RUN"}}))  # fmt: skip
    messages, want_refused = [], []
    for i in range(0, len(entries), 12):
        devices: dict[str, list] = {}
        for tid, doc in entries[i : i + 12]:
            devices.setdefault(tid, []).append(doc)
        if i % 240 == 0:  # now and then what a gateway must not send, beside the good elements
            first = next(iter(devices))
            key = next(iter(devices[first][0]["values"]))
            devices[first].append({"ts": devices[first][0]["ts"], "values": {key: "n/a"}})
            devices["WT09"] = [devices[first][0]]
            devices["WT10"] = {"ts": 0}  # type: ignore[assignment]
            want_refused += [
                ({"turbine": first, "element": len(devices[first])}, "not_a_number"),
                ({"turbine": "WT09", "element": 1}, "unknown_turbine"),
                ({"turbine": "WT10"}, "not_an_array"),
            ]
        messages.append((topic, json.dumps(devices).encode()))
    assert len(want_refused) >= 6 and any(len(json.loads(m)) > 1 for _, m in messages)
    cfg = daemon_config(broker.url, topics={"telemetry_batch": topic}, mapping={"ignored_keys": ["status_text"]},
                        ingest={"batch_format": "devices", "numeric_strings": True, "epoch_unit": "ms",
                                "turbines": ["WT01", "WT02", "WT03", "WT04"]})  # fmt: skip
    _assert_scored_and_refused(broker, cfg, bundle, scorer, timeline, replayed, messages, want_refused, "gw")


def test_kepware_iot_gateway_values_score_as_per_turbine_telemetry(broker, bundle, scorer, timeline, replayed):
    """Kepware's IoT Gateway (`ingest.batch_format: kepware`): the tiny farm's samples as one element per tag value,
    `{"id": "Farm.<turbine>.<key>", "v": ..., "q": ..., "t": <epoch ms>}`, 5 rows a message, a value the table
    lacks sent as Kepware sends a bad read (`"q": false` beside a stale number), and a status tag the model does
    not read. Elements the daemon must refuse sit among them: a tag of no channel, an id the pattern cannot take
    apart, a turbine off the allow-list. Each refusal is counted and reported with its element and tag; every
    sample is admitted and every step scored, each score the replay's."""
    header, rows, _ = timeline
    topic = "iotgateway"
    messages, want_refused = [], []
    docs = [(t.split("/")[2], json.loads(payload)) for t, payload in to_messages(header, rows)]
    for i in range(0, len(docs), 5):
        values: list[dict] = []
        for tid, doc in docs[i : i + 5]:
            t = parse_timestamp_ns(doc["ts"]) // 10**6
            values += [{"id": f"Farm.{tid}.{k}", "v": 0.0 if v is None else v, "q": v is not None, "t": t}
                       for k, v in doc["values"].items()]  # fmt: skip
            values.append({"id": f"Farm.{tid}.state", "v": "RUN", "q": True, "t": t})
        if i % 200 == 0:  # after the third element (numbered from 1)
            t = values[0]["t"]
            bad = [({"id": "Farm.WT01.power_setpoint", "v": 1.0, "q": True, "t": t}, "unknown_channel"),
                   ({"id": "heartbeat", "v": 1, "q": True, "t": t}, "bad_tag_id"),
                   ({"id": "Farm.WT09.state", "v": 1, "q": True, "t": t}, "unknown_turbine")]  # fmt: skip
            values[3:3] = [el for el, _ in bad]
            want_refused += [({"element": 4 + k, "tag": el["id"]}, r) for k, (el, r) in enumerate(bad)]
        messages.append((topic, json.dumps({"timestamp": values[-1]["t"] + 50, "values": values}).encode()))
    assert any(not v["q"] for _, m in messages for v in json.loads(m)["values"]), "no bad-quality value sent"
    cfg = daemon_config(broker.url, topics={"telemetry_batch": topic}, mapping={"ignored_keys": ["state"]},
                        ingest={"batch_format": "kepware", "epoch_unit": "ms", "max_batch_payload_bytes": 1 << 16,
                                "turbines": ["WT01", "WT02", "WT03", "WT04"]})  # fmt: skip
    _assert_scored_and_refused(broker, cfg, bundle, scorer, timeline, replayed, messages, want_refused, "kw")


def _replayed_records(bundle, path: Path, out: Path) -> tuple[dict[tuple[str, str], bytes], dict[str, int]]:
    """A table through `replay` with the streaming engine of `bundle`: (turbine, ts) -> score payload, and the
    summary's steps per held channel."""
    engine = Engine(bundle, make_scorer(bundle, "stream"), grace_seconds=0.0, max_turbines=100, max_batch=512)
    summary = replay(engine, path, MappingCfg(), out)
    return {k: next(iter(v)) for k, v in by_key(out.read_bytes().splitlines()).items()}, summary["held_steps"]


@pytest.mark.parametrize("kind", ["stream"], indirect=True)
def test_a_report_by_exception_feed_with_holds_scores_as_its_whole_table(broker, bundle, timeline, tmp_path):
    """A Kepware feed that sends a tag only when it changes or 30 minutes after it was last sent (the tiny farm's
    numbers rounded to whole units, so many repeat), scored by the same model exported with `pipeline_spec.hold_s`
    (an hour for every channel the stuck check does not read; those are sent every time): every step gets the
    record that replay gives the whole table, and the table written as the feed sends it (unsent cells empty)
    replays to those records too. Without the holds the same table reads steps with channels missing."""
    header, rows, _ = timeline
    ti, ii = header.index("timestamp"), header.index("turbine_id")
    held = [c for c in bundle.spec.channels if c not in bundle.spec.repeat_channels]
    held_bundle = reexported(bundle, tmp_path / "held", lambda d: d["pipeline_spec"].update(hold_s=dict.fromkeys(
        held, 3600)))  # fmt: skip
    whole = [[c if j in (ti, ii) or c == "" else str(round(float(c))) for j, c in enumerate(r)] for r in rows]
    rbe = [j for j, c in enumerate(header) if c in held]  # the held channels' columns (the mapping is by name)
    sent: dict[tuple[str, int], tuple[str, int]] = {}  # (turbine, column) -> the last value sent, when
    sparse = []  # each cell as the feed sends it: a held channel only when it changes, or 30 minutes after
    for r in whole:
        t = parse_timestamp_ns(r[ti])
        keep = {j for j in rbe if r[j] != "" and (sent.get((r[ii], j), ("", t))[0] != r[j] or
                                                   t - sent[(r[ii], j)][1] >= 1800 * 10**9)}  # fmt: skip
        sent.update({(r[ii], j): (r[j], t) for j in keep})
        sparse.append([c if j not in rbe or j in keep else "" for j, c in enumerate(r)])
    n_held = sum(r[j] != "" for r in whole for j in rbe)
    assert (
        sum(r[j] == "" for r in sparse for j in rbe) - sum(r[j] == "" for r in whole for j in rbe) > 0.3 * n_held
    )  # 39 %
    want_records, _ = _replayed_records(held_bundle, write_csv(tmp_path / "whole.csv", header, whole), tmp_path / "a")
    sparse_csv = write_csv(tmp_path / "sparse.csv", header, sparse)
    sparse_records, held_in_replay = _replayed_records(held_bundle, sparse_csv, tmp_path / "b")
    assert sparse_records == want_records
    unheld, none_held = _replayed_records(bundle, sparse_csv, tmp_path / "c")
    assert none_held == {} and set(held_in_replay) == set(held)
    missing = [np.mean([json.loads(p)["missing_now"] for p in recs.values()]) for recs in (want_records, unheld)]
    assert missing[1] > missing[0] + 0.3
    messages = []
    for i in range(0, len(sparse), 5):
        values = [{"id": f"Farm.{r[ii]}.{header[j]}", "v": float(c), "q": True,
                   "t": parse_timestamp_ns(r[ti]) // 10**6} for r in sparse[i : i + 5]
                  for j, c in enumerate(r) if j not in (ti, ii) and c != ""]  # fmt: skip
        messages.append(("iotgateway", json.dumps({"timestamp": 0, "values": values}).encode()))
    cfg = daemon_config(broker.url, topics={"telemetry_batch": "iotgateway"},
                        ingest={"batch_format": "kepware", "epoch_unit": "ms", "max_batch_payload_bytes": 1 << 16,
                                "turbines": ["WT01", "WT02", "WT03", "WT04"]})  # fmt: skip
    want = expected_steps(rows, header)
    col, d = _published_and_scored(broker, cfg, held_bundle, make_scorer(held_bundle, "stream"), messages,
                                   sum(want.values()), 0, "rbe")  # fmt: skip
    assert d.stop() == 0
    assert_the_replays((p for _, p in col.of("/score")), want, want_records)
    col.close()
    held_by = {c: 0 for c in held}  # the held values of the closed steps (each turbine's last step stays open)
    for t in want:
        mine = [s for s in to_samples(header, sparse, held_bundle.spec.channels) if s.turbine == t]
        ts, values = np.array([s.ts_ns for s in mine]), np.stack([s.values for s in mine])
        plain = bin_timeline(ts, values, bundle.spec)[1][:-1]
        given = bin_timeline(ts, values, held_bundle.spec)[1][:-1]
        for k, c in enumerate(held_bundle.spec.channels):
            if c in held_by:
                held_by[c] += int((np.isnan(plain[:, k]) & ~np.isnan(given[:, k])).sum())
    got = {c: d.daemon.metrics.value("scada_runtime_held_values_total", channel=c) for c in held}
    assert got == held_by and sum(got.values()) > 1000
    assert all(held_in_replay[c] >= held_by[c] for c in held)  # replay closes each turbine's last step too


@pytest.mark.parametrize("kind", ["stream"], indirect=True)
def test_instantaneous_readings_time_weighted_at_the_edge_score_as_replay_does(broker, bundle, timeline, tmp_path):
    """A gateway that sends instantaneous readings: each row of the tiny farm read 5 minutes before its step's end,
    and its held channels read again 1 minute before the end, 4 % higher. The same model, exported holding those
    channels, scores them through Mosquitto with runtime.yaml's `mapping.time_weighted` naming them: every step
    gets the record that replay gives the readings as a table with that setting (the same bundle id, which is
    not the exported bundle's), and those records differ from the samples' plain means. A channel named there that
    does not hold in the bundle stops `run` and `replay` with exit 2 and a message naming the key."""
    header, rows, _ = timeline
    ti = header.index("timestamp")
    held = [c for c in bundle.spec.channels if c not in bundle.spec.repeat_channels]
    held_bundle = reexported(bundle, tmp_path / "held", lambda d: d["pipeline_spec"].update(hold_s=dict.fromkeys(
        held, 3600)))  # fmt: skip
    weighed = [c for c in held if bundle.spec.aggregation.get(c, "mean") == "mean"]  # not the status code's max
    timed = held_bundle.with_time_weighted(weighed)
    cols = [j for j, c in enumerate(header) if c in held]
    readings = []
    for r in rows:
        end = parse_timestamp_ns(r[ti])
        first, second = list(r), [c if j not in cols and j != ti else "" for j, c in enumerate(r)]
        first[ti] = iso_utc(end - 300 * 10**9)
        second[ti] = iso_utc(end - 60 * 10**9)
        for j in cols:
            second[j] = "" if r[j] == "" else repr(float(r[j]) * 1.04)
        readings += [first, second]
    table = write_csv(tmp_path / "readings.csv", header, readings)
    want_records, _ = _replayed_records(timed, table, tmp_path / "a")
    plain_records, _ = _replayed_records(held_bundle, table, tmp_path / "b")
    assert {json.loads(p)["bundle_id"] for p in want_records.values()} == {timed.bundle_id} != {held_bundle.bundle_id}
    differ = sum(json.loads(want_records[k]).get("score") != json.loads(plain_records[k]).get("score")
                 for k in want_records)  # fmt: skip
    assert differ > 0.5 * len(want_records)
    cfg = daemon_config(broker.url, mapping={"time_weighted": weighed})
    # a step closes at a reading a whole step after its end: each turbine's last two stay open
    want = {t: n - 1 for t, n in expected_steps(readings, header).items()}
    ii = header.index("turbine_id")
    messages = [(f"scada/{SITE}/{r[ii]}/telemetry", json.dumps({"ts": r[ti], "values": {  # a cell the table
        c: float(r[j]) for j, c in enumerate(header) if j not in (ti, ii) and r[j] != ""}}).encode())  # lacks: absent
        for r in readings]  # fmt: skip
    col, d = _published_and_scored(broker, cfg, held_bundle, make_scorer(held_bundle, "stream"), messages,
                                   sum(want.values()), 0, "timed")  # fmt: skip
    assert d.stop() == 0
    assert_the_replays((p for _, p in col.of("/score")), want, want_records)
    col.close()
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"mapping": {"time_weighted": [bundle.spec.repeat_channels[0]]}}))
    code = "import sys; from scada_tcn.runtime.cli import main; sys.exit(main(sys.argv[1:]))"  # run sets up logging
    for args in (["run"], ["replay", "--input", str(table), "--out", str(tmp_path / "c.jsonl")]):
        res = subprocess.run([sys.executable, "-c", code, *args, "--config", str(bad), "--bundle",
                              str(held_bundle.path)], capture_output=True, text=True, timeout=120)  # fmt: skip
        assert res.returncode == 2 and "mapping.time_weighted: ['" in res.stderr and "Traceback" not in res.stderr


def test_emqx_neuron_messages_score_as_per_turbine_telemetry(broker, bundle, scorer, timeline, replayed):
    """EMQX Neuron's MQTT app (`ingest.batch_format: neuron`): each row of the tiny farm as the message of its
    turbine's south node, alternately in Neuron's values format and its tags format, a value the table lacks sent
    as a failed read (in `errors`, or a tag with an `error` code; a tag's metas beside it, as Neuron writes them).
    The daemon must refuse every 50th message (a node off the allow-list) and, at the end, messages of a fifth
    turbine beyond `ingest.max_turbines`, failed reads included. Every sample of the table is admitted, every step
    scored as the replay's, and each failed read of the samples taken counted under its channel in
    `scada_runtime_failed_reads_total`, none of those refused."""
    header, rows, _ = timeline
    topic = "neuron/scada"
    channel_of = {key: ch for ch, key in bundle.column_mapping.items()}
    messages, want_refused, failed = [], [], Counter()
    for n, (t, payload) in enumerate(to_messages(header, rows)):
        doc = json.loads(payload)
        ms, node = parse_timestamp_ns(doc["ts"]) // 10**6, t.split("/")[2]
        read = {k: v for k, v in doc["values"].items() if v is not None}
        errors = {k: 2014 for k, v in doc["values"].items() if v is None}
        failed.update(channel_of[k] for k in errors)
        if n % 2:
            tags = [{"name": k, "value": v, "metas": {}} for k, v in read.items()] + [
                {"name": k, "error": e} for k, e in errors.items()
            ]
            msg = {"timestamp": ms, "node": node, "group": "scada", "tags": tags}
        else:
            msg = {"timestamp": ms, "node": node, "group": "scada", "values": read, "errors": errors, "metas": {}}
        messages.append((topic, json.dumps(msg).encode()))
        if n % 50 == 0:
            messages.append((topic, json.dumps({**msg, "node": "WT09"}).encode()))
            want_refused.append(({}, "unknown_turbine"))
    assert sum(failed.values()) > 0, "no failed read sent"
    for _, m in messages[-4:]:  # the fleet is full by now: refused whole, failed reads and all
        failing = {"timestamp": json.loads(m)["timestamp"], "node": "WT05", "values": {},
                   "errors": dict.fromkeys(channel_of, 2014)}  # fmt: skip
        messages.append((topic, json.dumps(failing).encode()))
        want_refused.append(({"turbine": "WT05"}, "too_many_turbines"))
    cfg = daemon_config(broker.url, topics={"telemetry_batch": topic},
                        ingest={"batch_format": "neuron", "epoch_unit": "ms", "max_turbines": 4,
                                "turbines": ["WT01", "WT02", "WT03", "WT04", "WT05"]})  # fmt: skip
    m = _assert_scored_and_refused(broker, cfg, bundle, scorer, timeline, replayed, messages, want_refused, "neu")
    assert {ch: m.value("scada_runtime_failed_reads_total", channel=ch) for ch in failed} == {
        ch: float(k) for ch, k in failed.items()}  # fmt: skip


def test_a_unified_namespace_one_value_per_topic_scores_as_per_turbine_telemetry(broker, bundle, scorer, timeline,
                                                                                 replayed):  # fmt: skip
    """Per-tag topics (`topics.telemetry_tag`): each value of the tiny farm on its own topic
    `uns/<site>/<turbine>/scada/Turbine/<key>` (a key of two levels, by `mapping.columns`), in AVEVA's JSON-VTQ1
    form `{"d": value, "dt": 5, "ts": ISO, "q": 192}`, a value the table lacks sent as a bad read (quality 0 beside
    a stale number), a status tag the model does not read. Among them, messages the daemon must refuse: a tag of
    no channel, a turbine off the allow-list, a bare number (no stamp), a stamp missing, a quality of no known
    type. Each refusal is counted and reported with its topic; every value is admitted (one sample a message),
    every step scored as the replay's, each bad read counted under its channel."""
    header, rows, _ = timeline
    key_of = dict(bundle.column_mapping)  # channel -> the table's key in to_messages' documents
    channel_of = {k: ch for ch, k in key_of.items()}
    uns = f"uns/{SITE}/{{}}/scada/Turbine/{{}}"
    messages, want_refused, failed, values = [], [], Counter(), 0
    for n, (t, payload) in enumerate(to_messages(header, rows)):
        doc, tid = json.loads(payload), t.split("/")[2]
        for k, v in doc["values"].items():
            vtq = {"d": 0.0 if v is None else v, "dt": 5, "ts": doc["ts"], "q": 0 if v is None else 192}
            messages.append((uns.format(tid, k), json.dumps(vtq).encode()))
            failed[channel_of[k]] += v is None
            values += 1
        messages.append((uns.format(tid, "state"), json.dumps({"d": "RUN", "dt": 8, "ts": doc["ts"]}).encode()))
        if n % 100 == 0:
            k = next(iter(doc["values"]))
            bad = [(uns.format(tid, "power_setpoint"), {"d": 1.0, "ts": doc["ts"]}, "unknown_channel"),
                   (uns.format("WT09", k), {"d": 1.0, "ts": doc["ts"]}, "unknown_turbine"),
                   (uns.format(tid, k), 7.5, "not_an_object"),
                   (uns.format(tid, k), {"d": 1.0, "q": 192}, "missing_ts"),
                   (uns.format(tid, k), {"d": 1.0, "ts": doc["ts"], "q": 192.5}, "bad_value_type")]  # fmt: skip
            messages += [(topic, json.dumps(p).encode()) for topic, p, _ in bad]
            want_refused += [({"topic": topic}, reason) for topic, _, reason in bad]
    assert sum(failed.values()) > 0, "no bad read sent"
    cfg = daemon_config(broker.url, topics={"telemetry_tag": "uns/{site}/{turbine}/scada/{key}"},
                        mapping={"columns": {ch: f"Turbine/{k}" for ch, k in key_of.items()},
                                 "ignored_keys": ["Turbine/state"],
                                 "tag_payload": {"value": "d", "ts": "ts", "quality": "q", "good": [192],
                                                 "other_keys": ["dt"]}},
                        ingest={"turbines": ["WT01", "WT02", "WT03", "WT04"]})  # fmt: skip
    _assert_tags_scored(broker, cfg, bundle, scorer, timeline, replayed, messages, want_refused, values, failed, "uns")


def test_a_turbines_tags_as_one_object_score_as_per_turbine_telemetry(broker, bundle, scorer, timeline, replayed):
    """A turbine's tags in one object on its telemetry topic (`ingest.telemetry_format: tags`), as Azure IoT
    Operations' connector for OPC UA publishes an asset's data points: `{"<key>": {"SourceTimestamp": ISO, "Value":
    v}, ...}`, every other row each tag with a stamp of its own (a sample each), a value the table lacks sent with a
    bad StatusCode (BadCommunicationError) beside a stale number, a status tag ignored. Every 100 rows a message
    also holds a tag of no channel, and a message of its own a tag whose stamp lies in the future: each costs its
    value only and is reported with its tag. Every value is admitted, every step scored as the replay's, each bad
    read counted under its channel."""
    header, rows, _ = timeline
    channel_of = {k: ch for ch, k in bundle.column_mapping.items()}
    messages, want_refused, failed, samples = [], [], Counter(), 0
    for n, (t, payload) in enumerate(to_messages(header, rows)):
        doc = json.loads(payload)
        tags: dict = {"state": "RUN"}
        ns = parse_timestamp_ns(doc["ts"])
        apart = n % 2 == 1  # every other row: each tag stamped when read, microseconds apart within the row's step
        for j, (k, v) in enumerate(doc["values"].items()):
            at = ns - j * 1000 if ns - j * 1000 > (ns - 1) // DT_NS * DT_NS else ns + j * 1000
            stamp = iso_utc(at) if apart else doc["ts"]
            tags[k] = {"SourceTimestamp": stamp, "Value": 0.0 if v is None else v}
            if v is None:
                tags[k]["StatusCode"] = 2150891520
            failed[channel_of[k]] += v is None
        if n % 100 == 0:  # a tag of no channel among the rest, then a message of one tag stamped ahead
            k = next(iter(doc["values"]))
            tags["power_setpoint"] = {"SourceTimestamp": doc["ts"], "Value": 1.0}
            ahead = {k: {"SourceTimestamp": "2999-01-01T00:00:00Z", "Value": 1.0}}
            want_refused += [({"tag": "power_setpoint"}, "unknown_channel"), ({"tag": k}, "ts_in_future")]
        messages.append((t, json.dumps(tags).encode()))
        samples += len(doc["values"]) if apart else 1
        if n % 100 == 0:
            messages.append((t, json.dumps(ahead).encode()))
    assert sum(failed.values()) > 0, "no bad read sent"
    aio = {"value": "Value", "ts": "SourceTimestamp", "quality": "StatusCode", "good": [0]}
    cfg = daemon_config(broker.url, mapping={"ignored_keys": ["state"], "tag_payload": aio},
                        ingest={"telemetry_format": "tags", "turbines": ["WT01", "WT02", "WT03", "WT04"]})  # fmt: skip
    _assert_tags_scored(broker, cfg, bundle, scorer, timeline, replayed, messages, want_refused, samples, failed, "aio")


def test_opc_ua_pubsub_network_messages_score_as_per_turbine_telemetry(broker, bundle, scorer, timeline, replayed,
                                                                         caplog):  # fmt: skip
    """OPC UA PubSub JSON as OPC Publisher writes it (`ingest.batch_format: opcua`): NetworkMessages of 8 rows, each
    row its turbine's DataSetMessage (DataSetWriterName the turbine), each value a DataValue with its
    SourceTimestamp, a value the table lacks sent as a Bad StatusCode object, a status field ignored, a metadata
    NetworkMessage first. Every 100 rows a NetworkMessage also holds a writer off the allow-list and a field of no
    channel: each costs its values only and is reported with its message and field. Every sample is admitted,
    every step scored as the replay's, each bad read counted under its channel; with the daemon's log at DEBUG (a
    refusal's place `message` is also a log record's attribute: it once cost the message its samples)."""
    header, rows, _ = timeline
    channel_of = {k: ch for ch, k in bundle.column_mapping.items()}
    bad = {"Symbol": "BadNoCommunication", "Code": 2150694912}
    meta = {"MessageId": "0", "MessageType": "ua-metadata", "PublisherId": "opcpub", "DataSetWriterId": 1,
            "MetaData": {"Name": "WT01", "Fields": []}}  # fmt: skip
    messages, want_refused, failed = [("opcua/data", json.dumps(meta).encode())], [], Counter()
    docs = [json.loads(p) for _, p in to_messages(header, rows)]
    ii = header.index("turbine_id")
    for n in range(0, len(rows), 8):
        writers = []
        for r, doc in zip(rows[n : n + 8], docs[n : n + 8]):
            fields: dict = {"StateCode": {"Value": 3, "SourceTimestamp": doc["ts"]}}
            for k, v in doc["values"].items():
                fields[k] = {"StatusCode": bad, "SourceTimestamp": doc["ts"]} if v is None else {
                    "Value": v, "SourceTimestamp": doc["ts"], "ServerTimestamp": doc["ts"]}  # fmt: skip
                failed[channel_of[k]] += v is None
            writers.append({"DataSetWriterName": r[ii], "SequenceNumber": n, "MessageType": "ua-deltaframe",
                            "MetaDataVersion": {"MajorVersion": 1, "MinorVersion": 0}, "Payload": fields})  # fmt: skip
        if n % 100 < 8:
            writers[0]["Payload"]["power_setpoint"] = {"Value": 1.0, "SourceTimestamp": docs[n]["ts"]}
            writers.append({"DataSetWriterName": "WT09", "Payload": {"x": 1.0}})
            want_refused += [({"message": 1, "field": "power_setpoint"}, "unknown_channel"),
                             ({"message": len(writers)}, "unknown_turbine")]  # fmt: skip
        net = {"MessageId": str(n), "MessageType": "ua-data", "PublisherId": "opcpub", "Messages": writers}
        messages.append(("opcua/data", json.dumps(net).encode()))
    assert sum(failed.values()) > 0, "no bad read sent"
    cfg = daemon_config(broker.url, topics={"telemetry_batch": "opcua/data"}, mapping={"ignored_keys": ["StateCode"]},
                        ingest={"batch_format": "opcua", "turbines": ["WT01", "WT02", "WT03", "WT04"]})  # fmt: skip
    with caplog.at_level(logging.DEBUG, logger="scada.runtime.daemon"):
        _assert_tags_scored(broker, cfg, bundle, scorer, timeline, replayed, messages, want_refused, len(rows), failed,
                            "opcua")  # fmt: skip
    placed = [r.where for r in caplog.records if r.getMessage() == "rejected"]  # type: ignore[attr-defined]
    assert {"message": 1, "field": "power_setpoint"} in placed


def test_decode_shows_what_the_daemon_reads_in_one_message(bundle_dir, bundle, tmp_path, capsys):
    """`scada-runtime decode`: the setting that routes a message, its samples (null where the source has no value),
    its refusals; exit 0 when nothing was refused, 1 otherwise, 2 for a bad --now. The daemon reads through the
    same `Ingress`, so this is what it would take."""
    from scada_tcn.runtime.cli import main

    path = tmp_path / "runtime.yaml"
    path.write_text(yaml.safe_dump({"site": SITE, "topics": {"telemetry_tag": "uns/{site}/{turbine}/{key}",
                                                             "sparkplug_group": "farm"},
                                    "mapping": {"ignored_keys": ["state"]}}))  # fmt: skip
    (c0, k0), (c1, k1) = list(bundle.column_mapping.items())[:2]
    ts, now = "2024-01-28T00:10:00Z", "2024-01-28T00:10:30Z"

    def decode(topic: str, payload: object, *extra: str) -> tuple[int, dict]:
        text = payload if isinstance(payload, str) else json.dumps(payload)
        code = main(["decode", "--bundle", str(bundle_dir), "--config", str(path), "--topic", topic,
                     "--payload", text, *extra])  # fmt: skip
        out = capsys.readouterr().out
        return code, json.loads(out) if out else {}

    code, got = decode(f"scada/{SITE}/WT01/telemetry", {"ts": ts, "values": {k0: 7.5, k1: None, "state": 1}},
                       "--now", now)  # fmt: skip
    assert code == 0 and got["read_as"] == "telemetry" and got["refused"] == []
    assert got["samples"] == [{"turbine": "WT01", "ts": "2024-01-28T00:10:00Z", "values": {c0: 7.5, c1: None},
                               "failed": []}]  # fmt: skip
    code, got = decode(f"uns/{SITE}/WT02/{k0}", {"value": 3, "timestamp": ts}, "--now", now)
    assert code == 0 and got["read_as"] == "telemetry_tag" and got["samples"][0]["values"] == {c0: 3.0}
    code, got = decode(f"scada/{SITE}/WT01/telemetry", {"ts": ts, "values": {"power_kw": 1}}, "--now", now)
    assert code == 1 and [r["reason"] for r in got["refused"]] == ["unknown_channel"] and got["samples"] == []
    code, got = decode("elsewhere/WT01", {"ts": ts, "values": {k0: 1}}, "--now", now)
    assert code == 1 and got["read_as"] is None and got["refused"][0]["reason"] == "bad_topic"
    code, got = decode(f"scada/{SITE}/WT01/telemetry", {"ts": ts, "values": {k0: 1}})  # checked against the clock
    assert code == 1 and got["refused"][0]["reason"] == "ts_too_old"
    assert decode(f"scada/{SITE}/WT01/telemetry", "{}", "--now", "yesterday") == (2, {})
    capture = tmp_path / "capture.jsonl"  # as `mosquitto_sub -F %j` writes it, each version's `tst`
    tel = f"scada/{SITE}/WT01/telemetry"
    lines = [("2024-01-28T01:10:30.000000+0100", tel, {"ts": ts, "values": {k0: 1, k1: None}}),
             (1706400630, f"uns/{SITE}/WT02/{k0}", {"value": 3, "timestamp": ts}),
             ("2024-01-28T00:10:30.000000Z+0000", f"scada/{SITE}/WT03/telemetry", {"ts": ts, "values": {"kw": 1}}),
             (None, "elsewhere/x", {})]  # fmt: skip
    capture.write_text("".join(json.dumps({**({"tst": t} if t is not None else {}), "topic": topic, "qos": 1,
                                           "payload": json.dumps(p)}) + "\n" for t, topic, p in lines))  # fmt: skip
    code = main(["decode", "--bundle", str(bundle_dir), "--config", str(path), "--capture", str(capture)])
    got = json.loads(capsys.readouterr().out)
    assert code == 1 and (got["messages"], got["samples"], got["turbine_ids"]) == (4, 2, ["WT01", "WT02"])
    assert got["values_by_channel"][c0] == 2 and got["values_by_channel"][c1] == 1
    assert got["refused"] == {"unknown_channel": 1, "bad_topic": 1} and len(got["examples"]) == 2
    assert len(got["channels_without_values"]) == len(bundle.spec.channels) - 2
    birth, data = Payload(timestamp=1706400600000, seq=0), Payload(timestamp=1706400600000, seq=1)  # Sparkplug, in hex
    metric(birth, k0, 5.0, "Double", alias=1, ts=1706400600000)
    metric(data, None, 6.0, "Double", alias=1, ts=1706400600000, typed=False)
    hexed = [{"tst": "2024-01-28T01:10:30+0100", "topic": f"spBv1.0/farm/{kind}/edge1/WT04",
              "hex": p.SerializeToString().hex()} for kind, p in (("DBIRTH", birth), ("DDATA", data))]  # fmt: skip
    capture.write_text("".join(json.dumps(line) + "\n" for line in hexed))
    assert main(["decode", "--bundle", str(bundle_dir), "--config", str(path), "--capture", str(capture)]) == 0
    got = json.loads(capsys.readouterr().out)
    assert (got["samples"], got["turbine_ids"], got["values_by_channel"][c0], got["refused"]) == (2, ["WT04"], 2, {})
    capture.write_text('{"topic": "x"}\n')
    assert main(["decode", "--bundle", str(bundle_dir), "--config", str(path), "--capture", str(capture)]) == 2
    assert "line 1: not a message as `mosquitto_sub -F %j` prints it, nor" in capsys.readouterr().err


def _assert_tags_scored(broker, cfg, bundle, scorer, timeline, replayed, messages: list[tuple[str, bytes]],
                        want_refused: list[tuple[dict, str]], samples: int, failed: Counter,
                        name: str) -> None:  # fmt: skip
    """A daemon of `cfg` sent `messages` admits `samples` samples, refuses exactly `want_refused` ((where, reason),
    reported in order), counts the `failed` reads by channel and scores every step of the timeline as the replay."""
    header, rows, _ = timeline
    want = expected_steps(rows, header)
    col, d = _published_and_scored(broker, cfg, bundle, scorer, messages, sum(want.values()), len(want_refused), name)
    m = d.daemon.metrics
    assert m.value("scada_runtime_samples_in_total") == samples
    assert m.rejected_by_reason() == {r: float(k) for r, k in Counter(r for _, r in want_refused).items()}
    assert {ch: m.value("scada_runtime_failed_reads_total", channel=ch) for ch in failed if failed[ch]} == {
        ch: float(k) for ch, k in failed.items() if k}  # fmt: skip
    assert d.stop() == 0
    reports = [json.loads(p) for _, p in col.of("/errors")]
    where = {k for w, _ in want_refused for k in w}
    assert [({k: r[k] for k in where if k in r}, r["reason"]) for r in reports] == want_refused
    assert_the_replays((p for _, p in col.of("/score")), want, replayed)
    col.close()


def test_sparkplug_b_devices_score_as_per_turbine_telemetry_after_a_rebirth(broker, bundle, scorer, timeline,
                                                                          replayed):  # fmt: skip
    """Sparkplug B (`topics.sparkplug_group`): an edge node `edge1` whose devices are the tiny farm's turbines,
    metric names mapped as paths (`Nacelle/<channel>`), a status metric the model does not read. The daemon starts
    after the births: the node's first DDATA names aliases only, is refused (`no_birth`) and the daemon asks
    for a rebirth (NCMD). The node answers with its NBIRTH and a DBIRTH per device holding the turbine's first row;
    then every other row goes as DDATA by alias alone, a value the table lacks sent as null or as a STALE stale
    value (Quality 500), a metric of no channel every 100th message, the sequence numbers skipping 3 once. Every
    sample is admitted, every step scored as the replay's; the refusals are reported with their metric; failed
    reads counted by channel; one rebirth; 3 messages counted lost."""
    header, rows, _ = timeline
    group, node = "tinyfarm", "edge1"
    names = {ch: f"Nacelle/{ch}" for ch in bundle.spec.channels}
    key_of = dict(bundle.column_mapping)  # channel -> the table's key in to_messages' documents
    alias = {ch: n for n, ch in enumerate(names, 1)}
    status = len(alias) + 1
    firsts: dict[str, tuple[int, dict]] = {}  # each turbine's first row: the values of its birth
    data, want_refused, failed = [], [], Counter()
    for n, (t, payload) in enumerate(to_messages(header, rows)):
        doc, tid = json.loads(payload), t.split("/")[2]
        ms = parse_timestamp_ns(doc["ts"]) // 10**6
        if tid not in firsts:
            firsts[tid] = (ms, doc["values"])
            continue
        seq = (len(firsts) + 1 + len(data) + 3 * (len(data) >= 100)) % 256  # after the births; 3 skipped once
        p = Payload(timestamp=ms + 40, seq=seq)
        for ch, k in alias.items():
            v = doc["values"].get(key_of[ch])
            stale = v is None and n % 2 == 1
            failed[ch] += stale
            metric(p, None, 0.0 if stale else v, "Double", alias=k, ts=ms, quality=500 if stale else None, typed=False)
        metric(p, None, "RUN", "String", alias=status, ts=ms, typed=False)
        if n % 100 == 1:
            metric(p, "Gearbox/Vibration", 1.0, "Double", ts=ms)
            want_refused.append(({"metric": len(p.metrics), "name": "Gearbox/Vibration"}, "unknown_channel"))
        data.append((f"spBv1.0/{group}/DDATA/{node}/{tid}", p.SerializeToString()))
    assert sum(failed.values()) > 0 and len(want_refused) >= 5

    def births() -> list[tuple[str, bytes]]:
        nb = Payload(timestamp=min(ms for ms, _ in firsts.values()), seq=0)
        metric(nb, "bdSeq", 1, "Int64")
        metric(nb, "Node Control/Rebirth", False, "Boolean")
        out = [(f"spBv1.0/{group}/NBIRTH/{node}", nb.SerializeToString())]
        for tid, (ms, values) in firsts.items():
            db = Payload(timestamp=ms, seq=len(out))
            for ch, k in alias.items():
                metric(db, names[ch], values.get(key_of[ch]), "Double", alias=k, ts=ms)
            metric(db, "Status", "RUN", "String", alias=status, ts=ms)
            out.append((f"spBv1.0/{group}/DBIRTH/{node}/{tid}", db.SerializeToString()))
        return out

    asked = threading.Event()

    def on_command(c, u, m) -> None:  # the edge node: a rebirth request is answered with its births
        cmd = Payload()
        cmd.ParseFromString(m.payload)
        if [(x.name, x.boolean_value) for x in cmd.metrics] == [("Node Control/Rebirth", True)]:
            for topic, birth in births():
                c.publish(topic, birth, qos=1)
            asked.set()

    subscribed = threading.Event()
    edge = client(broker.url, "edge1", {
        "on_connect": lambda c, u, f, rc, p: c.subscribe(f"spBv1.0/{group}/NCMD/{node}", 1),
        "on_subscribe": lambda c, u, mid, rcs, p: subscribed.set(), "on_message": on_command})  # fmt: skip
    col = Collector(broker.url, [f"scada/{SITE}/+/score", f"scada/runtime/{GATEWAY}/errors"], client_id="col-spb")
    wait_for(lambda: col.ready() and subscribed.is_set(), 10, "collector and edge node")
    cfg = daemon_config(broker.url, topics={"sparkplug_group": group},
                        mapping={"columns": names, "ignored_keys": ["Status"]},
                        ingest={"turbines": sorted(firsts), "max_batch_payload_bytes": 1 << 16})  # fmt: skip
    d = DaemonThread(cfg, bundle, scorer)
    wait_for(lambda: d.daemon.link.connected, 10, "daemon connect")
    early = Payload(timestamp=firsts["WT01"][0])  # before the daemon knew the births: aliases only
    metric(early, None, "RUN", "String", alias=status, ts=firsts["WT01"][0], typed=False)
    publish_all(edge, [(f"spBv1.0/{group}/DDATA/{node}/WT01", early.SerializeToString())])
    wait_for(asked.is_set, 10, "a rebirth request")
    publish_all(edge, data)
    want = expected_steps(rows, header)
    wait_for(lambda: col.has_steps(sum(want.values())), 60, "all scores")
    wait_for(lambda: len(col.of("/errors")) >= len(want_refused) + 1, 30, "all error reports")
    m = d.daemon.metrics
    assert m.value("scada_runtime_samples_in_total") == len(rows)
    assert m.value("scada_runtime_sparkplug_rebirth_requests_total") == 1
    assert m.value("scada_runtime_sparkplug_lost_messages_total") == 3  # the seq numbers skipped once
    assert m.rejected_by_reason() == {"no_birth": 1.0, "unknown_channel": float(len(want_refused))}
    assert {ch: m.value("scada_runtime_failed_reads_total", channel=ch) for ch in failed if failed[ch]} == {
        ch: float(k) for ch, k in failed.items() if k}  # fmt: skip
    assert d.stop() == 0
    reports = [json.loads(p) for _, p in col.of("/errors")]
    got = [({k: r[k] for k in ("metric", "name", "alias") if k in r}, r["reason"]) for r in reports]
    assert got == [({"metric": 1, "alias": status}, "no_birth"), *want_refused]
    assert_the_replays((p for _, p in col.of("/score")), want, replayed)
    edge.disconnect()
    col.close()


def test_sparkplug_history_forwarded_after_a_rebirth_is_scored_in_its_steps(broker, bundle, scorer, timeline,
                                                                             replayed):  # fmt: skip
    """An edge node (its devices the turbines) is away for the middle third of the slice (its NDEATH) and stores
    what it reads. Back, it does as Sparkplug's store and forward does: its births first, with the values read
    then, then the stored rows as history (every metric `is_historical`), oldest first, then live data. Every row
    is taken (none late) and every step scored as the replay scores the whole slice: the births' values waited for
    the history after them (runtime.birth_hold). Taken as they came, each birth closed its turbine's bins up to its
    stamp, and the stored third came late."""
    header, rows, _ = timeline
    group, node = "histfarm", "edge1"
    names = {ch: f"Nacelle/{ch}" for ch in bundle.spec.channels}
    key_of = dict(bundle.column_mapping)
    docs = []
    for t, payload in to_messages(header, rows):
        doc = json.loads(payload)
        docs.append((t.split("/")[2], parse_timestamp_ns(doc["ts"]) // 10**6, doc["values"]))
    cut1, cut2 = len(docs) // 3, 2 * len(docs) // 3
    seq = [0]

    def sent(kind: str, tid: str | None, ms: int, values: dict | None = None,
             protocol: tuple = ()) -> tuple[str, bytes]:  # fmt: skip
        if kind == "NBIRTH":
            seq[0] = 0
        p = Payload(timestamp=ms, seq=seq[0] % 256)
        seq[0] += 1
        for name, value, datatype in protocol:
            metric(p, name, value, datatype)
        for ch, name in names.items() if values is not None else ():
            metric(p, name, values.get(key_of[ch]), "Double", ts=ms)
        return f"spBv1.0/{group}/{kind}/{node}" + (f"/{tid}" if tid else ""), p.SerializeToString()

    def session(part: list, bdseq: int) -> tuple[list, set[int]]:
        """A node session's births (each turbine's first row of `part`) and the rows they hold."""
        firsts: dict[str, int] = {}
        for i, (tid, _, _) in enumerate(part):
            firsts.setdefault(tid, i)
        out = [
            sent(
                "NBIRTH",
                None,
                part[0][1],
                protocol=(("bdSeq", bdseq, "Int64"), ("Node Control/Rebirth", False, "Boolean")),
            )
        ]
        out += [sent("DBIRTH", tid, part[i][1], part[i][2]) for tid, i in firsts.items()]
        return out, set(firsts.values())

    first, born = session(docs[:cut1], 0)
    first += [sent("DDATA", tid, ms, v) for i, (tid, ms, v) in enumerate(docs[:cut1]) if i not in born]
    death = Payload(timestamp=docs[cut1][1])
    metric(death, "bdSeq", 0, "Int64")
    first.append((f"spBv1.0/{group}/NDEATH/{node}", death.SerializeToString()))
    back, born = session(docs[cut2:], 1)
    history = [(t, _historical(p)) for t, p in (sent("DDATA", tid, ms, v) for tid, ms, v in docs[cut1:cut2])]
    live = [sent("DDATA", tid, ms, v) for i, (tid, ms, v) in enumerate(docs[cut2:]) if i not in born]

    edge = client(broker.url, "edge-history")
    col = Collector(broker.url, [f"scada/{SITE}/+/score"], client_id="col-history")
    cfg = daemon_config(broker.url, topics={"sparkplug_group": group}, mapping={"columns": names},
                        ingest={"max_batch_payload_bytes": 1 << 16})  # fmt: skip
    d = DaemonThread(cfg, bundle, scorer)
    wait_for(lambda: col.ready() and edge.is_connected() and d.daemon.link.connected, 10, "connections")
    publish_all(edge, first + back + history + live)
    want = expected_steps(rows, header)
    wait_for(lambda: col.has_steps(sum(want.values())), 60, "all scores")
    m = d.daemon.metrics
    assert m.value("scada_runtime_samples_in_total") == len(rows)
    assert m.value("scada_runtime_late_samples_total") == 0
    assert m.rejected_by_reason() == {}
    assert d.stop() == 0
    assert_the_replays((p for _, p in col.of("/score")), want, replayed)
    edge.disconnect()
    col.close()


def _historical(payload: bytes) -> bytes:
    """A Sparkplug payload with every metric flagged is_historical (stored and forwarded)."""
    p = Payload()
    p.ParseFromString(payload)
    for m in p.metrics:
        m.is_historical = True
    return p.SerializeToString()


def test_rebirth_requests_are_bounded_per_node_and_in_all(bundle, scorer):
    """Data naming what no birth gave asks its node for a rebirth: each node at most once per REBIRTH_EVERY_S and
    at most REBIRTHS_PER_WINDOW nodes in that time, whatever node ids publishers make up; the record of nodes
    asked holds one window's, and a clock set back does not freeze it."""
    now = [parse_timestamp_ns(STREAM_END)]
    cfg = daemon_config(f"mqtt://127.0.0.1:{free_port()}", topics={"sparkplug_group": "farm"})
    d = Daemon(cfg, bundle, scorer, clock=lambda: now[0])
    sent: list[tuple[str, str, bytes]] = []
    d._publish = lambda kind, topic, payload, retain: sent.append((kind, topic, payload))  # type: ignore[method-assign]
    asked = lambda: d.metrics.value("scada_runtime_sparkplug_rebirth_requests_total")  # noqa: E731
    for k in range(1000):
        d._ask_rebirth(f"node{k}", now[0])
    assert asked() == daemon_module.REBIRTHS_PER_WINDOW
    d._ask_rebirth("node0", now[0] + (daemon_module.REBIRTH_EVERY_S - 1) * 10**9)
    assert asked() == daemon_module.REBIRTHS_PER_WINDOW
    later = now[0] + daemon_module.REBIRTH_EVERY_S * 10**9
    for k in range(1000):
        d._ask_rebirth(f"node{k % 3}", later)
    assert asked() == daemon_module.REBIRTHS_PER_WINDOW + 3 and len(d._rebirth_asked) == 3
    assert len(sent) == asked() and {k for k, _, _ in sent} == {"rebirth"}
    assert [t for _, t, _ in sent[-3:]] == [f"spBv1.0/farm/NCMD/node{k}" for k in range(3)]
    cmd = Payload()
    cmd.ParseFromString(sent[-1][2])
    assert [(m.name, m.boolean_value) for m in cmd.metrics] == [("Node Control/Rebirth", True)]
    d._ask_rebirth("node0", later - 3600 * 10**9)  # the clock set back an hour: no request blocks it
    assert asked() == daemon_module.REBIRTHS_PER_WINDOW + 4 and list(d._rebirth_asked) == ["node0"]


def test_a_sparkplug_death_ends_the_holds_of_its_turbine(bundle, scorer, tmp_path):
    """With report-by-exception channels, a DDEATH (or its node's NDEATH) makes the device's values stale: the
    daemon adds a sample of UNREAD on every channel at the turbine's newest stamp (not counted as telemetry), so
    the steps after its last value are missing instead of held for an hour, until the device is born again (the
    will and the rebirth may come in one batch). Without holds a death adds nothing."""
    now = parse_timestamp_ns(STREAM_END)
    held = [c for c in bundle.spec.channels if c not in bundle.spec.repeat_channels]
    held_bundle = reexported(bundle, tmp_path / "held", lambda d: d["pipeline_spec"].update(hold_s=dict.fromkeys(
        held, 3600)))  # fmt: skip
    cfg = daemon_config(f"mqtt://127.0.0.1:{free_port()}", topics={"sparkplug_group": "farm"}, ingest={"grace_s": 0})
    keys = held_bundle.column_mapping
    t0 = (now - 3600 * 10**9) // DT_NS * DT_NS - 120 * 10**9  # two minutes before a step's end
    birth = Payload(timestamp=t0 // 10**6, seq=0)
    for k, c in enumerate(held_bundle.spec.channels):
        metric(birth, keys[c], float(k), "Double", alias=k + 1, ts=t0 // 10**6)

    def message(kind: str, payload: bytes) -> Message:
        return Message(f"spBv1.0/farm/{kind}/gw/WT01", payload, 0, False, False, 1, 0, now)

    death = message("DDEATH", Payload(timestamp=now // 10**6, seq=1).SerializeToString())
    steps = {}
    for name, b, dies in (("held", held_bundle, False), ("dies", held_bundle, True), ("unheld", bundle, True)):
        d = Daemon(cfg, b, make_scorer(b, "window"), clock=lambda: now)
        samples, redelivered = d._admit([message("DBIRTH", birth.SerializeToString())], now)
        d.engine.ingest_batch(samples)
        if dies:
            stale, redelivered = d._admit([death], now)
            assert redelivered == [False] * len(stale) and d.metrics.value("scada_runtime_samples_in_total") == 1
            if b is bundle:
                assert stale == []
            else:
                ((turbine, ts, values, failed),) = stale
                assert (turbine, ts, is_unread(values).all(), failed) == ("WT01", t0, True, ())
            d.engine.ingest_batch(stale)
        d.engine.tick(t0 + 5 * DT_NS)
        steps[name] = d.engine.fleet.drain()
    # the will and the rebirth in one batch (a node reconnecting): the death ends the old session's holds only
    reborn = Payload(timestamp=(t0 + 2 * DT_NS) // 10**6, seq=0)
    for k, c in enumerate(held_bundle.spec.channels):
        metric(reborn, keys[c], float(k), "Double", alias=k + 1, ts=(t0 + 2 * DT_NS) // 10**6)
    d = Daemon(cfg, held_bundle, make_scorer(held_bundle, "window"), clock=lambda: now)
    d.engine.ingest_batch(d._admit([message("DBIRTH", birth.SerializeToString())], now)[0])
    both, _ = d._admit([death, message("DBIRTH", reborn.SerializeToString())], now)
    assert [(s.ts_ns, bool(is_unread(s.values).all())) for s in both] == [(t0, True), (t0 + 2 * DT_NS, False)]
    d.engine.ingest_batch(both)
    d.engine.tick(t0 + 5 * DT_NS)
    steps["reborn"] = d.engine.fleet.drain()
    held_idx = [j for j, f in enumerate(held_bundle.spec.feature_names) if f in held]
    present = {k: [int(s.rows.M_miss[held_idx].sum()) for s in v] for k, v in steps.items()}
    assert present["held"][0] == present["dies"][0] == len(held_idx) and len(present["held"]) == 5
    assert present["held"][1:] == [len(held_idx)] * 4 and present["dies"][1:] == [0] * 4
    assert present["unheld"][1:] == [0] * 4
    assert present["reborn"] == [len(held_idx), 0] + [len(held_idx)] * 3  # ended at the death, held from the birth


def _same_state(a: Daemon, b: Daemon) -> bool:
    ea, eb = encode_state(a.engine.state_dict()), encode_state(b.engine.state_dict())
    return ea.doc == eb.doc and all(np.array_equal(x, eb.arrays[k], equal_nan=x.dtype.kind == "f")
                                    for k, x in ea.arrays.items())  # fmt: skip


@pytest.mark.parametrize("kind", ["stream"], indirect=True)
def test_the_periodic_snapshot_is_written_off_the_loop(bundle, fresh_scorer, timeline, tmp_path, monkeypatch):
    """The periodic snapshot: the loop takes the state, rotates the journal and goes on while a thread writes the
    file (held here until released). A restart from the files as they are while it writes (a crash then: no
    snapshot yet, the rotated frames and the new ones) and after it wrote rebuilds the same engine state; the
    rotated frames are dropped once the file is on disk. A failed write stops the loop with its cause."""
    header, rows, _ = timeline
    messages = [Message(t, p, 1, False, False, i + 1, 0, 0) for i, (t, p) in enumerate(to_messages(header, rows))]
    now = [parse_timestamp_ns(STREAM_END)]
    state_dir = tmp_path / "run"

    def daemon(folder: Path) -> Daemon:
        cfg = daemon_config(f"mqtt://127.0.0.1:{free_port()}", state={"path": str(folder / "state.npz")},
                            queues={"receive_maximum": 50})  # fmt: skip
        return Daemon(cfg, bundle, fresh_scorer(), clock=lambda: now[0])

    release, write = threading.Event(), daemon_module.write_state

    def held(path: str, encoded) -> None:  # only the first daemon's writes wait; a restored copy saves at once
        if Path(path).parent == state_dir:
            assert release.wait(30), "the test never released the write"
        write(path, encoded)

    monkeypatch.setattr(daemon_module, "write_state", held)
    d = daemon(state_dir)
    for m in messages:
        d.inbound.put_nowait(m)
    while d.inbound.qsize():
        d.step(0.0)  # the first iteration starts the periodic save (none before), the others go on
    assert d._writer is not None and d._writer.is_alive()  # the loop did not wait for it
    assert (state_dir / "state.npz.journal.prev").exists() and not (state_dir / "state.npz").exists()
    crashed = tmp_path / "crashed_while_writing"
    shutil.copytree(state_dir, crashed)
    again = daemon(crashed)
    assert not _same_state(again, d)
    again._restore_state()
    assert _same_state(again, d)
    release.set()
    d._wait_for_writer()
    assert (state_dir / "state.npz").exists() and not (state_dir / "state.npz.journal.prev").exists()
    later = tmp_path / "crashed_after"
    shutil.copytree(state_dir, later)
    again = daemon(later)
    again._restore_state()
    assert _same_state(again, d)

    def failing(path, encoded):
        raise OSError("No space left on device")

    monkeypatch.setattr(daemon_module, "write_state", failing)
    now[0] += 61 * 10**9  # the next save is due
    d.step(0.0)
    d._writer.join(10)
    with pytest.raises(RuntimeError, match="writing the state snapshot failed: OSError.*No space left"):
        d.step(0.0)


@pytest.mark.parametrize("kind", ["stream"], indirect=True)
def test_each_step_of_a_snapshot_is_durable_before_the_next_relies_on_it(bundle, fresh_scorer, timeline, tmp_path,
                                                                          monkeypatch):  # fmt: skip
    """A power cut keeps only what was fsynced (file data by its own fsync, a directory entry by the directory's).
    The file operations of a periodic snapshot, recorded: the rotation's rename is made durable before the new
    journal's first frame is relied on; the snapshot is fsynced before it replaces the old one, and that rename is
    made durable before the rotated frames it includes are deleted (else a power cut could keep the deletion and
    lose the rename: the old snapshot and no frames since)."""
    header, rows, _ = timeline
    messages = [Message(t, p, 1, False, False, i + 1, 0, 0) for i, (t, p) in enumerate(to_messages(header, rows))]
    run = tmp_path / "run"
    cfg = daemon_config(f"mqtt://127.0.0.1:{free_port()}", state={"path": str(run / "state.npz")},
                        queues={"receive_maximum": 50})  # fmt: skip
    d = Daemon(cfg, bundle, fresh_scorer(), clock=lambda: parse_timestamp_ns(STREAM_END))
    ops: list[tuple[str, ...]] = []
    fsync, replace, unlink = os.fsync, os.replace, os.unlink

    def named(x) -> str:
        return Path(x).name if Path(x).parent == run else str(x)

    monkeypatch.setattr(os, "fsync", lambda fd: (ops.append(("fsync", named(os.readlink(f"/proc/self/fd/{fd}")))),
                                                 fsync(fd))[1])  # fmt: skip
    monkeypatch.setattr(os, "replace", lambda a, b: (ops.append(("replace", named(a), named(b))), replace(a, b))[1])
    monkeypatch.setattr(os, "unlink", lambda a, **k: (ops.append(("unlink", named(a))), unlink(a, **k))[1])
    for m in messages:
        d.inbound.put_nowait(m)
    while d.inbound.qsize():
        d.step(0.0)  # the first iteration starts the periodic save
    d._wait_for_writer()
    at = {op: i for i, op in reversed(list(enumerate(ops)))}  # each operation's first index
    rotated = at[("replace", "state.npz.journal", "state.npz.journal.prev")]
    dir_syncs = [i for i, op in enumerate(ops) if op == ("fsync", str(run))]
    frame = next(i for i, op in enumerate(ops) if i > rotated and op == ("fsync", "state.npz.journal"))
    assert any(rotated < i < frame for i in dir_syncs), ops
    written, renamed = at[("fsync", "state.npz.tmp")], at[("replace", "state.npz.tmp", "state.npz")]
    dropped = at[("unlink", "state.npz.journal.prev")]
    assert written < renamed < dropped and any(renamed < i < dropped for i in dir_syncs), ops


@pytest.mark.parametrize("kind", ["stream"], indirect=True)
def test_every_score_record_is_queued_or_counted_as_dropped(bundle, scorer, timeline):
    """No broker to acknowledge anything (unreachable, the daemon keeps publishes for later): the publish queue
    (queues.outbound = 30) fills and the rest overflow. Every score record is either in the queue or counted in
    scores_dropped_total, several per dropped batched message, and the report sent when the queue takes a publish
    again says both."""
    header, rows, _ = timeline
    batch_topic = f"scada/{SITE}/{GATEWAY}/scores"
    cfg = daemon_config(f"mqtt://127.0.0.1:{free_port()}", queues={"outbound": 30, "publish_backlog": 30},
                        topics={"score_batch": "scada/{site}/{gateway}/scores", "score_batch_bytes": 8192})  # fmt: skip
    d = Daemon(cfg, bundle, scorer)  # never started: the link never connects
    d._apply(to_samples(header, rows, bundle.spec.channels), None)  # one flush of every step the rows close
    m = d.metrics
    produced = sum(
        m.value("scada_runtime_scores_published_total", status=s) for s in ("ok", "warmup", "insufficient_data")
    )
    assert produced == sum(expected_steps(rows, header).values())
    queued = [p for p in d.link.unacked() if p.topic == batch_topic]
    in_queue = sum(len(split_batch(p.payload)) for p in queued)
    dropped = m.value("scada_runtime_scores_dropped_total", reason="overflow")
    messages = m.value("scada_runtime_publish_overflow_total", kind="score")
    assert len(d.link.unacked()) == 30 and in_queue > 0
    assert in_queue + dropped == produced and dropped > messages > 0  # ~4 kB records, two to an 8 kB message
    report = overflow_report(d)
    assert report["reason"] == "publish_queue_overflow" and report["scores_dropped"] == dropped
    assert report["dropped"] == messages + sum(m.value("scada_runtime_publish_overflow_total", kind=k)
                                               for k in ("alert", "alert_state"))  # fmt: skip


@pytest.mark.parametrize("kind", ["stream"], indirect=True)
@pytest.mark.parametrize("limited_broker", [2048], indirect=True)
def test_a_record_over_the_brokers_packet_limit_is_reported_and_the_link_stays_up(limited_broker, bundle, scorer,
                                                                                  timeline):  # fmt: skip
    """A broker whose max_packet_size (2,048 bytes) is below a scored record (~4 kB): each such record is dropped
    before it is sent, counted (publish_too_large_total) and reported on the errors topic; warm-up records, which
    fit, still arrive, and the broker never drops the daemon's connection."""
    broker = limited_broker
    header, rows, _ = timeline
    col = Collector(broker.url, [f"scada/{SITE}/+/score", f"scada/runtime/{GATEWAY}/errors"], client_id="col-big")
    wait_for(col.ready, 10, "collector connect")
    d = DaemonThread(daemon_config(broker.url), bundle, scorer)
    pub = client(broker.url, "publisher-big")
    wait_for(lambda: pub.is_connected() and d.daemon.link.connected, 10, "connections")
    publish_all(pub, to_messages(header, rows))
    dropped = lambda: d.daemon.metrics.value("scada_runtime_publish_too_large_total", kind="score")  # noqa: E731
    wait_for(lambda: dropped() > 0 and len(col.of("/errors")) >= dropped(), 60, "too-large reports")
    pub.disconnect()
    assert d.daemon.link.connected and d.daemon.link.connects == 2
    assert d.stop() == 0
    reports = [json.loads(p) for _, p in col.of("/errors")]
    assert {r["reason"] for r in reports} == {"publish_too_large"} and all(r["bytes"] > 2048 for r in reports)
    assert all(r["scores_dropped"] == 1 for r in reports)  # one record per score message
    assert d.daemon.metrics.value("scada_runtime_scores_dropped_total", reason="too_large") == dropped()
    statuses = {json.loads(p)["status"] for _, p in col.of("/score")}
    assert "warmup" in statuses and "ok" not in statuses
    col.close()


# --------------------------------------------------------------------------------------------- faults


@ENGINES
def test_broker_restart_loses_nothing_and_changes_nothing(broker, bundle, scorer, timeline, replayed):
    header, rows, _ = timeline
    msgs = to_messages(header, rows)
    col = Collector(broker.url, [f"scada/{SITE}/+/score"], client_id="collector-ft")
    wait_for(lambda: col.ready(), 10, "collector connect")
    d = DaemonThread(daemon_config(broker.url), bundle, scorer)
    pub = client(broker.url, "publisher-ft")
    wait_for(lambda: pub.is_connected() and d.daemon.link.connected, 10, "connections")
    cut = len(msgs) * 2 // 5
    publish_all(pub, msgs[:cut])
    broker.stop()  # mid-stream; persistence on
    publish_all(pub, msgs[cut : cut + 50], wait=False)  # queued by the publisher while the broker is down
    broker.start()
    wait_for(lambda: d.daemon.link.connected and pub.is_connected(), 20, "reconnect")
    publish_all(pub, msgs[cut + 50 :])
    publish_all(pub, msgs[: cut // 2])  # redelivered telemetry
    want = expected_steps(rows, header)
    wait_for(lambda: len(by_key([p for _, p in col.of("/score")])) >= sum(want.values()), 60, "all steps scored")
    assert d.stop() == 0
    got = by_key([p for _, p in col.of("/score")])
    assert all(len(v) == 1 for v in got.values()), "a step got two different scores"
    assert {t: sum(1 for k in got if k[0] == t) for t in want} == want
    for k, v in got.items():
        assert_close(next(iter(v)), replayed[k], k)
    assert d.daemon.metrics.value("scada_runtime_late_samples_total") >= cut // 2 - 20
    pub.disconnect()
    col.close()


def _hostile(valid: list[tuple[str, bytes]], n: int, rng: np.random.Generator) -> list[tuple[str, bytes, str]]:
    """n hostile messages (topic, payload, expected reason) built around the valid stream."""
    base = f"scada/{SITE}"
    kinds = [
        ("malformed_json", lambda i: (f"{base}/WT01/telemetry", b'{"ts": "2024-01-28T00:00:00+00:00", "values": {')),
        ("malformed_json", lambda i: (f"{base}/WT02/telemetry", bytes(rng.integers(32, 127, 40, dtype=np.uint8)))),
        ("not_utf8", lambda i: (f"{base}/WT01/telemetry", b"\xff\xfe" + bytes(rng.integers(0, 256, 30, np.uint8)))),
        ("not_an_object", lambda i: (f"{base}/WT03/telemetry", b"[1]")),  # an array's element is refused alone
        (
            "non_finite",
            lambda i: (f"{base}/WT01/telemetry", b'{"ts": "2024-01-28T06:00:00+00:00", "values": {"power": NaN}}'),
        ),
        (
            "non_finite",
            lambda i: (f"{base}/WT02/telemetry", b'{"ts": "2024-01-28T06:00:00+00:00", "values": {"power": 1e999}}'),
        ),
        (
            "bad_value_type",
            lambda i: (f"{base}/WT01/telemetry", b'{"ts": "2024-01-28T06:00:00+00:00", "values": {"power": "12"}}'),
        ),
        (
            "bad_value_type",
            lambda i: (f"{base}/WT04/telemetry", b'{"ts": "2024-01-28T06:00:00+00:00", "values": {"power": true}}'),
        ),
        (
            "unknown_channel",
            lambda i: (f"{base}/WT01/telemetry", b'{"ts": "2024-01-28T06:00:00+00:00", "values": {"pwr": 1.0}}'),
        ),
        (
            "unknown_turbine",
            lambda i: (f"{base}/WT99/telemetry", b'{"ts": "2024-01-28T06:00:00+00:00", "values": {"power": 1.0}}'),
        ),
        ("bad_turbine_id", lambda i: (f"{base}/WT 1/telemetry", b"{}")),
        (
            "ts_in_future",
            lambda i: (f"{base}/WT01/telemetry", b'{"ts": "2999-01-01T00:00:00+00:00", "values": {"power": 1.0}}'),
        ),
        ("ts_too_old", lambda i: (f"{base}/WT01/telemetry", b'{"ts": 946684800, "values": {"power": 1.0}}')),
        (
            "naive_timestamp",
            lambda i: (f"{base}/WT01/telemetry", b'{"ts": "2024-01-28T06:00:00", "values": {"power": 1.0}}'),
        ),
        ("bad_timestamp", lambda i: (f"{base}/WT01/telemetry", b'{"ts": "yesterday", "values": {"power": 1}}')),
        ("missing_ts", lambda i: (f"{base}/WT01/telemetry", b'{"values": {"power": 1}}')),
        ("missing_values", lambda i: (f"{base}/WT01/telemetry", b'{"ts": 1706400000, "values": {}}')),
        ("unknown_key", lambda i: (f"{base}/WT01/telemetry", b'{"ts": 1706400000, "values": {"power": 1}, "x": 1}')),
        (
            "oversized",
            lambda i: (
                f"{base}/WT02/telemetry",
                b'{"ts": 1706400000, "values": {"power": 1}, "pad": "' + b"x" * 5000 + b'"}',
            ),
        ),
        # valid JSON, but deeper than the parsers go (orjson >= 3.10 stops at 1024 levels): refused unparsed
        ("malformed_json", lambda i: (f"{base}/WT01/telemetry", b"[" * 1500 + b"]" * 1500)),
    ]
    out = []
    for i in range(n):
        reason, make = kinds[i % len(kinds)]
        t, p = make(i)
        out.append((t, p, reason))
    return out


@ENGINES
def test_fuzzed_stream_keeps_daemon_up_and_scores_unchanged(broker, bundle, scorer, timeline, replayed):
    header, rows, _ = timeline
    valid = to_messages(header, rows)
    rng = np.random.default_rng(0)
    hostile = _hostile(valid, 2600, rng)
    late = []  # out-of-order samples and duplicates of steps already closed: dropped as late
    for j in range(200, len(valid), 7):
        t, p = valid[j - 60]
        doc = json.loads(p)
        doc["values"] = {k: (v + 1.0 if isinstance(v, float) else v) for k, v in doc["values"].items()}
        late.append((t, json.dumps(doc).encode() if j % 2 else p))
    mixed: list[tuple[str, bytes]] = []
    h, lt = iter(hostile), iter(late)
    for j, m in enumerate(valid):
        mixed.append(m)
        mixed += [(t, p) for t, p, _ in [next(h, None) for _ in range(3)] if t is not None]
        if j >= 200 and j % 7 == 4:
            mixed += [x for x in [next(lt, None)] if x is not None]
        if j % 50 == 0:
            mixed.append(m)  # an exact duplicate of a sample in the open bin: changes nothing
    mixed += [(t, p) for t, p, _ in h]
    cfg = daemon_config(
        broker.url,
        ingest={
            "turbines": ["WT01", "WT02", "WT03", "WT04"],
            "max_payload_bytes": 4096,
            "max_past_s": 5 * 365 * 86400.0,
        },
    )
    col = Collector(broker.url, [f"scada/{SITE}/+/score", f"scada/runtime/{GATEWAY}/errors"], client_id="col-fz")
    wait_for(lambda: col.ready(), 10, "collector connect")
    d = DaemonThread(cfg, bundle, scorer)
    pub = client(broker.url, "publisher-fz")
    wait_for(lambda: pub.is_connected() and d.daemon.link.connected, 10, "connections")
    publish_all(pub, mixed)
    want = expected_steps(rows, header)
    wait_for(lambda: len(col.of("/score")) >= sum(want.values()), 60, "all scores")
    wait_for(lambda: len(col.of("/errors")) >= len(hostile), 30, "all error reports")
    assert d.thread.is_alive()
    assert d.stop() == 0
    expected: dict[str, int] = {}
    for _, _, r in hostile:
        expected[r] = expected.get(r, 0) + 1
    assert d.daemon.metrics.rejected_by_reason() == {k: float(v) for k, v in expected.items()}
    assert d.daemon.metrics.value("scada_runtime_late_samples_total") == len([x for x in late])
    reasons = [json.loads(p)["reason"] for _, p in col.of("/errors")]
    assert sorted(reasons) == sorted(r for _, _, r in hostile)
    got = by_key([p for _, p in col.of("/score")])
    assert all(len(v) == 1 for v in got.values())
    assert {t: sum(1 for k in got if k[0] == t) for t in want} == want
    for k, v in got.items():
        assert_close(next(iter(v)), replayed[k], k)
    pub.disconnect()
    col.close()


# ------------------------------------------------------------------------------------------- security


def _certs(tmp: Path) -> dict[str, Path]:
    def ssl(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=tmp)

    ssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=test-ca",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
    )
    ssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost", "-keyout", "server.key", "-out", "server.csr")
    (tmp / "ext.cnf").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    ssl(
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        "ext.cnf",
        "-out",
        "server.crt",
    )
    return {"ca": tmp / "ca.crt", "cert": tmp / "server.crt", "key": tmp / "server.key"}


def _connect_failures(daemon) -> float:
    return sum(
        s.value for m in daemon.metrics.connect_failures.collect() for s in m.samples if s.name.endswith("_total")
    )


def test_tls_and_password(tmp_path, bundle, scorer, timeline):
    require_mosquitto()
    certs = _certs(tmp_path)
    b = Broker(tmp_path / "tls-broker", users={"gw1": "s3cret", "ops": "ops-pass"}, tls=certs)
    b.start()
    try:
        auth = {"username": "ops", "password": "ops-pass", "ca_file": str(certs["ca"])}
        col = Collector(b.url, [f"scada/runtime/{GATEWAY}/status", f"scada/{SITE}/+/score", "spBv1.0/STATE/+"],
                        "col-tls", **auth)  # fmt: skip
        wait_for(lambda: col.ready(), 10, "collector connect over TLS")
        header, rows, _ = timeline
        held = rows[0][header.index("turbine_id")]  # its consumers hold its alert on: the start reads it over TLS
        writer = client(b.url, "writer-tls", **auth)
        wait_for(writer.is_connected, 10, "writer connect over TLS")
        on = writer.publish(f"scada/{SITE}/{held}/alert/state", _alert_state(held, "on"), qos=1, retain=True)
        on.wait_for_publish(10)
        writer.disconnect()
        bad = DaemonThread(
            daemon_config(b.url, broker={"username": "gw1", "password": "wrong", "tls": {"ca_file": str(certs["ca"])}}),
            bundle,
            scorer,
        )
        wait_for(lambda: _connect_failures(bad.daemon) >= 1, 10, "a refused connection")
        assert not bad.daemon.link.connected and bad.daemon.engine.fleet.turbines == []  # refused: nothing read
        bad.stop()
        pw = tmp_path / "pw"
        pw.write_text("s3cret\n")
        good = DaemonThread(
            daemon_config(
                b.url,
                broker={"username": "gw1", "password_file": str(pw), "tls": {"ca_file": str(certs["ca"])}},
                topics={"sparkplug_group": "farm", "sparkplug_host_id": "scada-{gateway}"},  # its STATE over TLS too
            ),
            bundle,
            scorer,
        )
        wait_for(lambda: good.daemon.link.connected, 10, "TLS + password connection")
        assert good.daemon.engine.fleet.turbines == [held]
        pub = client(b.url, "pub-tls", **auth)
        wait_for(lambda: pub.is_connected(), 10, "publisher connect")
        publish_all(pub, to_messages(header, rows[:40]))
        wait_for(lambda: len(col.of("/score")) > 0, 20, "a score over TLS")
        statuses = [json.loads(p)["state"] for _, p in col.of("/status")]
        assert "online" in statuses
        wait_for(lambda: any(json.loads(p)["online"] for _, p in col.of(f"/STATE/scada-{GATEWAY}")), 10, "STATE")
        assert good.stop() == 0
        wait_for(lambda: json.loads(col.of("/status")[-1][1])["state"] == "offline", 10, "offline status")
        assert json.loads(col.of(f"/STATE/scada-{GATEWAY}")[-1][1])["online"] is False
        pub.disconnect()
        col.close()
    finally:
        b.stop()


# --------------------------------------------------------------------------------------------- health


def test_health_endpoint_notices_a_stalled_loop(broker, bundle, scorer):
    now = [1_800_000_000 * 10**9]
    from scada_tcn.runtime.daemon import Daemon

    cfg = daemon_config(broker.url, health={"stall_s": 5.0, "status_interval_s": 0.2})
    d = Daemon(cfg, bundle, scorer, clock=lambda: now[0])
    d.start()
    try:
        col = Collector(broker.url, [f"scada/runtime/{GATEWAY}/status"], client_id="col-health")
        wait_for(lambda: d.link.connected, 10, "daemon connect")
        d.step(timeout=0.01)
        url = f"http://127.0.0.1:{d.health.port}"
        assert urllib.request.urlopen(url + "/healthz").status == 200
        assert b"scada_runtime_connected 1.0" in urllib.request.urlopen(url + "/metrics").read()
        now[0] += 6 * 10**9  # the process is alive, the loop is not running
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(url + "/healthz")
        assert e.value.code == 503
        wait_for(
            lambda: any(json.loads(p)["state"] == "stalled" for _, p in col.of("/status")), 10, "a 'stalled' status"
        )
        d.step(timeout=0.01)
        assert urllib.request.urlopen(url + "/healthz").status == 200
        col.close()
    finally:
        d.request_stop()
        d.run_forever()


# ----------------------------------------------------------------------------------------------- lean


def test_import_and_replay_load_neither_torch_nor_pandas(bundle_dir, timeline, tmp_path):
    code = (
        "import sys, scada_tcn.runtime, scada_tcn.runtime.daemon, scada_tcn.runtime.cli\n"
        "from scada_tcn.runtime.replay import replay_file\n"
        f"replay_file({str(bundle_dir)!r}, {str(timeline[2])!r}, {str(tmp_path / 's.jsonl')!r})\n"
        "heavy = sorted(m for m in ('torch', 'pandas', 'pyarrow', 'omegaconf') if m in sys.modules)\n"
        "print(heavy)\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert res.stdout.strip() == "[]", res.stdout + res.stderr
    assert (tmp_path / "s.jsonl").stat().st_size > 0


def test_replay_cli(bundle_dir, timeline, tmp_path, replayed):
    out = tmp_path / "cli.jsonl"
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "scada_tcn.runtime.cli",
            "replay",
            "--bundle",
            str(bundle_dir),
            "--input",
            str(timeline[2]),
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
    )
    assert res.returncode == 0, res.stderr
    got = {k: next(iter(v)) for k, v in by_key(out.read_bytes().splitlines()).items()}
    assert got == replayed
    bad = tmp_path / "bad.yaml"
    bad.write_text("brokr: {}\n")
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "scada_tcn.runtime.cli",
            "replay",
            "--bundle",
            str(bundle_dir),
            "--input",
            str(timeline[2]),
            "--out",
            str(out),
            "--config",
            str(bad),
        ],
        capture_output=True,
        text=True,
    )
    assert res.returncode == 2 and "unknown keys ['brokr']" in res.stderr
    table = tmp_path / "scada.parquet"  # the edge carries no Parquet reader: refused with the conversion to run
    table.write_bytes(b"PAR1")
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "scada_tcn.runtime.cli",
            "replay",
            "--bundle",
            str(bundle_dir),
            "--input",
            str(table),
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
    )
    assert res.returncode == 2 and "replays CSV only" in res.stderr and "to_csv" in res.stderr
    assert "Traceback" not in res.stderr


def test_replay_reads_a_gzipped_table_and_refuses_one_that_is_not_utf8_csv(
    bundle_dir, timeline, tmp_path, replayed, capsys, monkeypatch
):
    """A .csv.gz replays to the plain table's records; a .gz that is not gzip, a Latin-1 file, an output in a
    missing folder, a read-only output and no room for the temporary file are refused (exit 2, what and why named,
    no traceback), each leaving the earlier replay's output as it was and no partial file."""
    from scada_tcn.runtime.cli import main

    plain = Path(timeline[2]).read_bytes()
    table = tmp_path / "scada.csv.gz"
    table.write_bytes(gzip.compress(plain))
    out = tmp_path / "gz.jsonl"
    assert main(["replay", "--bundle", str(bundle_dir), "--input", str(table), "--out", str(out)]) == 0
    scored = out.read_bytes()
    assert {k: next(iter(v)) for k, v in by_key(scored.splitlines()).items()} == replayed
    assert oct(out.stat().st_mode & 0o777) == oct(0o666 & ~_umask())  # a plain file's mode, not a temp file's
    capsys.readouterr()
    latin1 = plain.replace(b"\n", "é\n".encode("latin-1"), 3)
    for name, data, why in (("fake.csv.gz", plain, "not a UTF-8 CSV file (gzip)"),
                            ("latin1.csv", latin1, "not a UTF-8 CSV file")):  # fmt: skip
        (tmp_path / name).write_bytes(data)
        assert main(["replay", "--bundle", str(bundle_dir), "--input", str(tmp_path / name), "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert f"{tmp_path / name}: {why}" in err and "Traceback" not in err
    missing = tmp_path / "no_such_folder" / "scores.jsonl"
    assert main(["replay", "--bundle", str(bundle_dir), "--input", str(table), "--out", str(missing)]) == 2
    assert "replay: cannot write the output" in capsys.readouterr().err
    out.chmod(0o444)
    if not os.access(out, os.W_OK):  # root may write a read-only file
        assert main(["replay", "--bundle", str(bundle_dir), "--input", str(table), "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert "replay: cannot write the output" in err and "read-only" in err
    out.chmod(0o644)

    def full(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(replay_module.tempfile, "TemporaryFile", full)
    assert main(["replay", "--bundle", str(bundle_dir), "--input", str(table), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"cannot keep the parsed table in {tmp_path}" in err and "No space left" in err
    assert out.read_bytes() == scored and not list(tmp_path.glob("*.partial"))  # refused: the old output stays
    monkeypatch.undo()
    link = tmp_path / "latest.jsonl"
    link.symlink_to(out)
    out.write_bytes(b"")
    assert main(["replay", "--bundle", str(bundle_dir), "--input", str(table), "--out", str(link)]) == 0
    assert link.is_symlink() and out.read_bytes() == scored  # written through the link, as open() does


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@ENGINES
def test_paused_reads_bound_the_inbound_queue_and_nothing_is_dropped(broker, bundle, scorer, timeline):
    """An inbound bound far smaller than the burst: the link stops reading, the broker holds the rest back,
    nothing is dropped, and the queue never holds much more than the bound (one socket buffer at most)."""
    header, rows, _ = timeline
    col = Collector(broker.url, [f"scada/{SITE}/+/score"], client_id="bp-collector")
    wait_for(lambda: col.ready(), 10, "collector connect")
    cfg = daemon_config(broker.url, queues={"inbound": 20, "receive_maximum": 20})
    d = DaemonThread(cfg, bundle, scorer)
    pub = client(broker.url, "bp-publisher")
    wait_for(lambda: pub.is_connected() and d.daemon.link.connected, 10, "connections")
    publish_all(pub, to_messages(header, rows))
    want = expected_steps(rows, header)
    wait_for(lambda: len(col.of("/score")) >= sum(want.values()), 90, "all scores")
    assert d.stop() == 0
    rejected = {
        s.labels["reason"]: s.value
        for m in d.daemon.metrics.registry.collect()
        if m.name == "scada_runtime_rejected"
        for s in m.samples
        if s.name.endswith("_total")
    }
    assert rejected.get("inbound_queue_full", 0) == 0
    assert d.daemon.inbound_peak <= 20 + 1000, d.daemon.inbound_peak  # 1000 ~ a 256 KB socket buffer of telemetry
    got = by_key([p for _, p in col.of("/score")])
    assert {t: sum(1 for k in got if k[0] == t) for t in want} == want
    pub.disconnect()
    col.close()


def test_replay_and_daemon_report_score_drift(bundle, scorer, timeline, tmp_path):
    """The cheap edge-side drift check: KS of recent scores against the bundle's validation-score quantiles."""
    engine = Engine(bundle, scorer, grace_seconds=0.0, max_turbines=100, max_batch=512, drift_window=200)
    summary = replay(engine, timeline[2], MappingCfg(), tmp_path / "s.jsonl")
    d = summary["score_drift"]
    assert d["n"] == 200 and 0.0 <= d["ks"] <= 1.0
    from scada_tcn.runtime.drift import ks_to_quantiles

    scores = [
        json.loads(x)["score"]
        for x in (tmp_path / "s.jsonl").read_text().splitlines()
        if b'"status":"ok"' in x.encode()
    ]
    ref = bundle.score_reference
    assert d["ks"] == round(ks_to_quantiles(np.array(scores[-200:]), ref.levels, ref.values), 6)


@ENGINES
def test_engine_state_survives_a_restart(bundle, fresh_scorer, timeline, tmp_path):
    """Replay half, save the state to disk, resume in a new engine: identical records, no second warm-up."""
    from scada_tcn.runtime.state_file import load_state, save_state

    header, rows, path = timeline
    label = bin_labels(header, rows)
    cut = label[len(rows) // 2]  # split at a bin boundary: every bin lies wholly in one half
    first = write_csv(tmp_path / "a.csv", header, [r for r, b in zip(rows, label) if b <= cut])
    second = write_csv(tmp_path / "b.csv", header, [r for r, b in zip(rows, label) if b > cut])
    full = Engine(bundle, fresh_scorer(), grace_seconds=1e9, max_turbines=100, max_batch=128)
    replay(full, path, MappingCfg(), tmp_path / "full.jsonl")
    a = Engine(bundle, fresh_scorer(), grace_seconds=1e9, max_turbines=100, max_batch=128)
    replay(a, first, MappingCfg(), tmp_path / "a.jsonl")
    save_state(tmp_path / "state.npz", a.state_dict())
    b = Engine(bundle, fresh_scorer(), grace_seconds=1e9, max_turbines=100, max_batch=128)
    b.load_state_dict(load_state(tmp_path / "state.npz"))
    replay(b, second, MappingCfg(), tmp_path / "b.jsonl")
    full_recs = by_key((tmp_path / "full.jsonl").read_bytes().splitlines())
    resumed = by_key(
        (tmp_path / "a.jsonl").read_bytes().splitlines() + (tmp_path / "b.jsonl").read_bytes().splitlines()
    )
    assert set(resumed) == set(full_recs)
    for k, v in resumed.items():
        assert len(v) == 1
        assert_close(next(iter(v)), next(iter(full_recs[k])), k)
    assert not any(b'"status":"warmup"' in p for p in (tmp_path / "b.jsonl").read_bytes().splitlines())
    other = Engine(bundle, fresh_scorer(), grace_seconds=1e9, max_turbines=100, max_batch=128)
    state = a.state_dict()
    state["model_id"] = "0" * 64
    with pytest.raises(ValueError, match="belongs to model"):
        other.load_state_dict(state)


@ENGINES
def test_daemon_restart_resumes_from_its_state_file(broker, bundle, fresh_scorer, timeline, replayed, tmp_path):
    header, rows, _ = timeline
    label = bin_labels(header, rows)
    cut = label[len(rows) // 2]
    col = Collector(broker.url, [f"scada/{SITE}/+/score"], client_id="st-collector")
    wait_for(lambda: col.ready(), 10, "collector connect")
    cfg = daemon_config(broker.url, state={"path": str(tmp_path / "state.npz"), "save_interval_s": 3600.0})
    pub = client(broker.url, "st-publisher")
    first = [r for r, b in zip(rows, label) if b <= cut]
    targets = (sum(expected_steps(first, header).values()), sum(expected_steps(rows, header).values()))
    for part, target in zip((first, [r for r, b in zip(rows, label) if b > cut]), targets):
        d = DaemonThread(cfg, bundle, fresh_scorer())
        wait_for(lambda d=d: pub.is_connected() and d.daemon.link.connected, 10, "connections")
        publish_all(pub, to_messages(header, part))
        wait_for(lambda t=target: len(by_key([p for _, p in col.of("/score")])) >= t, 60, "scores")
        assert d.stop() == 0
        assert (tmp_path / "state.npz").is_file()
    want = expected_steps(rows, header)
    got = by_key([p for _, p in col.of("/score")])
    assert all(len(v) == 1 for v in got.values())  # the restart did not score any step twice
    assert {t: sum(1 for k in got if k[0] == t) for t in want} == want
    warm = [k for k, v in got.items() if b'"status":"warmup"' in next(iter(v))]
    assert all(replayed[k] == next(iter(got[k])) or b"warmup" in replayed[k] for k in warm)
    assert len(warm) == sum(1 for p in replayed.values() if b'"status":"warmup"' in p)  # one warm-up, not two
    pub.disconnect()
    col.close()


def test_a_state_file_that_cannot_be_read_is_set_aside_and_the_daemon_starts_fresh(
    broker, bundle, fresh_scorer, timeline, tmp_path, caplog
):
    """An empty, truncated or corrupted state file (a disk or copy gone wrong) is moved to `<name>.unused` with a
    warning, and the daemon scores from a fresh start (warm-up records), instead of failing at every start: before,
    np.load's EOFError or BadZipFile escaped the check and ended the daemon."""
    import logging

    from scada_tcn.runtime.state_file import load_state, save_state

    header, rows, _ = timeline
    path = tmp_path / "state.npz"
    save_state(path, {"format": "x", "engine": {"a": np.arange(2000.0)}, "frame_no": 0, "outbox": []})
    whole = path.read_bytes()
    flipped = bytearray(whole)
    flipped[len(whole) // 2] ^= 0xFF
    broken = {"empty": b"", "truncated": whole[: len(whole) // 2], "corrupted": bytes(flipped)}
    for data in broken.values():
        path.write_bytes(data)
        with pytest.raises(ValueError, match="not a readable state"):
            load_state(path)
    first = rows[: 3 * len({r[header.index("turbine_id")] for r in rows})]  # three steps of every turbine
    col = Collector(broker.url, [f"scada/{SITE}/+/score"], client_id="sa-collector")
    wait_for(lambda: col.ready(), 10, "collector connect")
    pub = client(broker.url, "sa-publisher")
    cfg = daemon_config(broker.url, state={"path": str(path), "save_interval_s": 3600.0})
    for kind, data in broken.items():
        path.write_bytes(data)
        (tmp_path / "state.npz.unused").unlink(missing_ok=True)
        before = len(col.of("/score"))
        with caplog.at_level(logging.WARNING, logger="scada.runtime.daemon"):
            d = DaemonThread(cfg, bundle, fresh_scorer())
        assert (tmp_path / "state.npz.unused").read_bytes() == data, kind
        assert any("state file not used" in r.getMessage() for r in caplog.records), kind
        wait_for(lambda d=d: pub.is_connected() and d.daemon.link.connected, 10, "connections")
        publish_all(pub, to_messages(header, first))
        wait_for(lambda n=before: len(col.of("/score")) > n, 30, f"scores after a {kind} state file")
        assert b'"status":"warmup"' in col.of("/score")[-1][1], kind
        assert d.stop() == 0
        assert isinstance(load_state(path), dict)  # the clean stop wrote a readable state
        path.unlink()
    pub.disconnect()
    col.close()


def test_a_window_without_enough_data_publishes_no_score(bundle, scorer, timeline):
    """Below the bundle's minimum present fraction: an insufficient-data record, never a number; the alert
    state is held, and scoring resumes once the window has enough data again."""
    header, rows, _ = timeline
    samples = to_samples(header, [r for r in rows if r[header.index("turbine_id")] == "WT01"], bundle.spec.channels)
    L = bundle.dims.L
    gap_from, gap_to = 2 * L, 2 * L + int(0.7 * L)  # 70 % of a window without any sample
    stream = samples[:gap_from] + samples[gap_to:]
    engine = Engine(bundle, scorer, grace_seconds=1e9, max_turbines=10, max_batch=64)
    out = []
    for s in stream:
        engine.ingest(s)
        out += engine.flush()
    docs = [json.loads(o.payload) for o in out if o.kind == "score"]
    status = [d["status"] for d in docs]
    insufficient = [d for d in docs if d["status"] == "insufficient_data"]
    assert insufficient and "ok" in status[status.index("insufficient_data") :]  # scoring resumes after the gap
    assert min(bundle.fleet.min_present_fraction, 1.0) == insufficient[0]["min_present_fraction"] == 0.5
    for d in insufficient:
        assert "score" not in d and "ratio" not in d and d["present_fraction"] < 0.5
    ok = [d for d in docs if d["status"] == "ok"]
    assert all(d["missing_fraction"] <= 0.5 for d in ok)
    for i, d in enumerate(docs):  # the held state is the last scored step's
        if d["status"] == "insufficient_data":
            before = [p for p in docs[:i] if p["status"] == "ok"]
            assert d["alert"] == (before[-1]["alert"] if before else False)


def test_two_hostile_samples_on_an_unknown_turbine_publish_no_score(bundle, scorer):
    """Two samples two days apart on a new id: warm-up, then insufficient-data records for the empty steps
    between them, and not one number."""
    engine = Engine(bundle, scorer, grace_seconds=1e9, max_turbines=10, max_batch=64)
    t0 = parse_timestamp_ns("2024-02-01T00:00:00+00:00")
    values = np.full(len(bundle.spec.channels), 5.0)
    for ts in (t0, t0 + 2 * 86400 * 10**9):
        engine.ingest(Sample("intruder", ts, values))
    docs = [json.loads(o.payload) for o in engine.flush() if o.kind == "score"]
    assert len(docs) == 288 and {d["status"] for d in docs} == {"warmup", "insufficient_data"}
    assert not any("score" in d for d in docs)
