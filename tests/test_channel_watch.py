"""A channel that no message carries (its payload key misspelt in mapping.columns or renamed by the gateway and
dropped by an ignored_keys pattern, or a sensor the farm does not send) is reported when it goes silent, on the
log, the errors topic and a gauge, with the keys the patterns dropped; its return is logged too."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest

from scada_tcn.demo.broker import free_port
from scada_tcn.runtime.bundle import load_bundle
from scada_tcn.runtime.channel_watch import PENDING_MAX, SILENT_STEPS, WATCH_STEPS, ChannelWatch
from scada_tcn.runtime.daemon import Daemon
from scada_tcn.runtime.ignored import DROPPED_KEPT, SIGHTED_KEPT, IgnoredKeys
from scada_tcn.runtime.mqtt import Message
from scada_tcn.runtime.stream import make_scorer
from scada_tcn.runtime.telemetry import Sample, parse_timestamp_ns
from tests.mosquitto import daemon_config, read_slice, reexported, sent_by, to_messages

START, END = "2024-01-28T00:00:00+00:00", "2024-01-28T06:00:00+00:00"
STEP = 600 * 10**9


def test_a_channel_never_carried_is_silent_after_the_watch_and_failed_reads_count_as_carried():
    watch = ChannelWatch(3, STEP)
    t0 = 1706400000 * 10**9
    row = np.array([1.0, np.nan, np.nan])
    assert watch.observe([Sample("A", t0, row, (2,))]) == ([], [])  # channel 2's read failed: its key was sent
    for k in range(1, WATCH_STEPS - 1):  # fewer distinct steps than the watch
        assert watch.observe([Sample("A", t0 + k * STEP, row), Sample("B", t0 + k * STEP + 1, row)]) == ([], [])
    assert watch.observe([Sample("B", t0 + (WATCH_STEPS - 1) * STEP, row)]) == ([1], [])
    assert watch.observe([Sample("A", t0 + WATCH_STEPS * STEP, row, (2,))]) == ([], [])  # said once
    assert watch.observe([Sample("A", t0 + (WATCH_STEPS + 1) * STEP, np.array([np.nan, 2.0, 1.0]))]) == ([], [1])


def test_a_channel_that_stops_is_silent_after_hours_and_back_with_its_next_value():
    """A tag renamed by a gateway's update: the fleet's samples stop carrying it. Silent once the fleet's newest
    stamp is SILENT_STEPS steps past its last value (a quiet hour is not silence), back at its next value (said
    when a later step opens: the samples are looked at once per step); a sample forwarded late with the channel
    does not hide the silence unless it is newer."""
    watch = ChannelWatch(2, STEP)
    t0 = 1706400000 * 10**9
    both, first = np.array([1.0, 2.0]), np.array([1.0, np.nan])
    for k in range(WATCH_STEPS):
        assert watch.observe([Sample("A", t0 + k * STEP, both)]) == ([], [])
    last = t0 + (WATCH_STEPS - 1) * STEP
    for k in range(1, SILENT_STEPS):
        assert watch.observe([Sample("A", last + k * STEP, first)]) == ([], [])
    assert watch.observe([Sample("B", last - STEP, both), Sample("A", last + SILENT_STEPS * STEP, first)]) == ([1], [])
    assert watch.observe([Sample("A", last + (SILENT_STEPS + 1) * STEP, first)]) == ([], [])  # said once
    assert watch.observe([Sample("B", last + (SILENT_STEPS + 1) * STEP, both)]) == ([], [])  # looked at once a
    assert watch.observe([Sample("A", last + (SILENT_STEPS + 2) * STEP, first)]) == ([], [1])  # later step opens


def test_a_sample_forwarded_late_does_not_end_the_watch():
    """Found in review: the watch measured the newest stamp less the oldest ever seen, so one sample six steps old
    (a store-and-forward gateway) and one live sample reported a channel after two samples."""
    watch = ChannelWatch(2, STEP)
    t0 = 1706400000 * 10**9
    assert watch.observe([Sample("B", t0 - WATCH_STEPS * STEP, np.array([1.0, np.nan]))]) == ([], [])
    assert watch.observe([Sample("A", t0, np.array([1.0, np.nan]))]) == ([], [])


def test_a_stamp_ahead_of_the_clock_counts_as_now():
    """A publisher's clock up to `ingest.max_future_s` fast stamps its samples ahead: they neither move the watch's
    clock past the daemon's (which called the other channels silent early, by as much) nor hold the samples
    back. Without the daemon's clock, the stamps are the clock."""
    t0 = 1706400000 * 10**9
    both, first = np.array([1.0, 2.0]), np.array([1.0, np.nan])
    ahead = t0 + (WATCH_STEPS - 1 + SILENT_STEPS) * STEP  # a sample this far ahead of the others
    now = t0 + WATCH_STEPS * STEP
    for clock in (None, now):
        watch = ChannelWatch(2, STEP)
        for k in range(WATCH_STEPS):
            watch.observe([Sample("A", t0 + k * STEP, both)], clock)
        gone, _ = watch.observe([Sample("B", ahead, first), Sample("A", now, first)], clock)
        assert gone == ([1] if clock is None else [])
        watch.observe([Sample("A", now + STEP, first)], None if clock is None else now + STEP)  # the next step
        assert len(watch.pending) == (1 if clock is None else 0)  # held back behind the stamp ahead, or looked at


def test_samples_are_looked_at_once_per_step_and_at_most_pending_max_wait():
    watch = ChannelWatch(2, STEP)
    t0 = 1706400000 * 10**9
    for k in range(WATCH_STEPS):
        watch.observe([Sample("A", t0 + k * STEP, np.array([1.0, np.nan]))])
    assert watch.silent.tolist() == [False, True]
    late = t0 + (WATCH_STEPS - 1) * STEP + 1
    for _ in range(PENDING_MAX - 1):  # the same step: held
        assert watch.observe([Sample("B", late, np.array([np.nan, 1.0]))]) == ([], [])
    assert watch.observe([Sample("B", late, np.array([np.nan, 1.0]))]) == ([], [1]) and not watch.pending


def test_the_newest_keys_a_pattern_dropped_are_kept_to_be_named_and_bounded():
    """Found in review: the first 32 keys a pattern dropped were kept, so on a gateway sending 40 other tags of the
    folder, a key renamed later by an update was never named. The 32 newest first sightings are kept now."""
    ignored = IgnoredKeys(["status", "Gearbox/*"])
    assert "status" in ignored and "Gearbox/Vib" in ignored and "oil" not in ignored
    assert ignored.dropped == {"Gearbox/Vib": "Gearbox/*"}  # an exact entry is not a pattern's drop
    for _ in range(3):  # every message sends the folder's 40 tags again
        assert all(f"Gearbox/T{i}" in ignored for i in range(40))
    assert "Gearbox/Oil_Temp" in ignored  # the renamed key, first seen now
    assert len(ignored.dropped) == DROPPED_KEPT and list(ignored.dropped)[-1] == "Gearbox/Oil_Temp"
    assert "Gearbox/T0" not in ignored.dropped and "Gearbox/T39" in ignored.dropped
    for i in range(2 * SIGHTED_KEPT):  # a hostile stream of made-up keys: both records stay bounded
        assert f"Gearbox/{i}" + "x" * 300 in ignored
    assert len(ignored.dropped) == DROPPED_KEPT and len(ignored._sighted) == SIGHTED_KEPT
    assert max(map(len, ignored.dropped)) == 200


@pytest.fixture(scope="module")
def bundle(signal_run):
    return load_bundle(signal_run[0])


def test_a_channel_hidden_by_a_pattern_is_reported_once_with_the_key_the_pattern_dropped(
    bundle, tiny_run, tmp_path, caplog
):
    """The tiny farm's telemetry with one channel's key renamed `<key>_raw`, which the pattern `*_raw` drops: the
    daemon scores, and after WATCH_STEPS steps of data it reports that channel once, naming its payload key and
    the dropped key, and the gauge says so (and, the channel being sent by exception, that a source without a
    heartbeat is silent while it is steady); when the key comes right, its return is logged and the gauge clears."""
    header, rows = read_slice(tiny_run.synth_dir / "scada.csv", START, END)
    channel = bundle.spec.channels[1]
    key = bundle.column_mapping[channel]
    messages = []
    for i, (topic, payload) in enumerate(to_messages(header, rows)):
        doc = json.loads(payload)
        if i < len(rows) // 2 and key in doc["values"]:
            doc["values"][f"{key}_raw"] = doc["values"].pop(key)
        messages.append(Message(topic, json.dumps(doc).encode(), 1, False, False, i + 1, 0, 0))
    cfg = daemon_config(f"mqtt://127.0.0.1:{free_port()}", mapping={"ignored_keys": ["*_raw"]})
    assert channel not in bundle.spec.repeat_channels
    held = reexported(bundle, tmp_path / "held", lambda doc: doc["pipeline_spec"].update(hold_s={channel: 3600}))
    d = Daemon(cfg, held, make_scorer(held, "stream"), clock=lambda: parse_timestamp_ns(END))
    sent = sent_by(d)
    with caplog.at_level(logging.WARNING, logger="scada.runtime.daemon"):
        for i in range(0, len(messages), 8):
            for m in messages[i : i + 8]:
                d.inbound.put_nowait(m)
            d.step(0.0)
    reports = [json.loads(p) for t, p in sent if t == d.errors_topic]
    assert [r["reason"] for r in reports] == ["channels_without_values"]
    assert reports[0]["payload_keys"] == {channel: key}
    assert reports[0]["dropped_by_patterns"] == {f"{key}_raw": "*_raw"}
    assert f"['{channel}'] are sent by exception (the bundle's hold_s)" in reports[0]["detail"]
    assert any("has values again" in r.getMessage() and r.channel == channel for r in caplog.records)  # type: ignore[attr-defined]
    assert d.metrics.value("scada_runtime_channel_silent", channel=channel) == 0
    assert d.metrics.value("scada_runtime_rejected_total", reason="unknown_channel") == 0
    assert sum(1 for t, _ in sent if t.endswith("/score")) > 0
