"""The daemon's recovery paths: what a failure, a damaged file or a refused state leaves behind.

Daemons here are never started (no broker: every publish waits in the link's queue, unacknowledged) and are
driven by `Daemon.step`, as the loop drives them; a crash is a daemon abandoned without `_shutdown`. What must
hold: a failure in the loop loses no score and changes none (the restart replays the journal); damaged state and
journal files never stop the daemon from starting; a state refused part-way leaves no trace in the engine, and
its unacknowledged records are still published; a restart's replay fits the publish queue.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.reasoncodes import ReasonCode

from scada_tcn.demo.broker import free_port
from scada_tcn.runtime.bundle import load_bundle
from scada_tcn.runtime.daemon import Daemon
from scada_tcn.runtime.daemon_config import ConfigError
from scada_tcn.runtime.engine import Engine
from scada_tcn.runtime.journal import Journal
from scada_tcn.runtime.mqtt import Message, Publish
from scada_tcn.runtime.records import iso_utc, split_batch
from scada_tcn.runtime.state_file import load_state, save_state
from scada_tcn.runtime.stream import make_scorer
from scada_tcn.runtime.telemetry import parse_timestamp_ns
from tests.mosquitto import (
    GATEWAY,
    SITE,
    by_key,
    daemon_config,
    double_levels,
    overflow_report,
    read_slice,
    reexported,
    sent_by,
    to_messages,
)
from tests.sparkplug_messages import Payload, metric

START, END = "2024-01-28T00:00:00+00:00", "2024-01-28T12:00:00+00:00"  # 72 steps per turbine


@pytest.fixture(scope="module")
def bundle(signal_run):
    return load_bundle(signal_run[0])


@pytest.fixture(scope="module")
def messages(tiny_run) -> list[Message]:
    """The tiny farm's telemetry of 12 hours, one QoS 1 message per turbine and step, in time order."""
    header, rows = read_slice(tiny_run.synth_dir / "scada.csv", START, END)
    return [Message(t, p, 1, False, False, i + 1, 0, 0) for i, (t, p) in enumerate(to_messages(header, rows))]


def _daemon(bundle, folder: Path, engine: str = "stream", **sections) -> Daemon:
    cfg = daemon_config(f"mqtt://127.0.0.1:{free_port()}", state={"path": str(folder / "state.npz")},
                        compute={"engine": engine}, **sections)  # fmt: skip
    return Daemon(cfg, bundle, make_scorer(bundle, engine), clock=lambda: parse_timestamp_ns(END))


def _feed(d: Daemon, messages: list[Message], per_step: int = 20) -> None:
    """The messages through the loop, `per_step` per iteration."""
    for i in range(0, len(messages), per_step):
        for m in messages[i : i + per_step]:
            d.inbound.put_nowait(m)
        d.step(0.0)


def _run(bundle, folder: Path, messages: list[Message], engine: str = "stream") -> Daemon:
    """A daemon started on `folder`'s state that has taken `messages` (not stopped: a crash leaves it so)."""
    d = _daemon(bundle, folder, engine)
    d._restore_state()
    _feed(d, messages)
    return d


def _scores(d: Daemon) -> dict[tuple[str, str], set[bytes]]:
    """Every score record the daemon has queued (none is acknowledged: no broker)."""
    return by_key([p.payload for p in d.link.unacked() if p.topic.endswith("/score")])


def test_a_failure_in_the_loop_saves_nothing_and_the_restart_loses_no_score(bundle, messages, tmp_path):
    """An error in the loop (here the step graph, once) stops the daemon as designed. It used to save a snapshot on
    the way out, holding the steps the failed iteration had drained but not scored, and counting its journal frame
    as applied: after the restart those steps were never scored (their redelivered samples are exact repeats).
    Now the files stay as a crash leaves them; the restart replays the journal, and every step gets the record an
    uninterrupted run gives it, byte for byte."""
    whole = _daemon(bundle, tmp_path / "whole")
    whole._restore_state()
    _feed(whole, messages)
    want = _scores(whole)

    d = _daemon(bundle, tmp_path / "failed", queues={"receive_maximum": 20})
    d._restore_state()  # no state yet: the start-up snapshot (frame 0)
    real, calls = d.engine.scorer.step, [0]

    def flaky(*args, **kwargs):
        calls[0] += 1
        if calls[0] == 10:
            raise RuntimeError("onnxruntime: transient failure")
        return real(*args, **kwargs)

    d.engine.scorer.step = flaky
    for m in messages:
        d.inbound.put_nowait(m)
    guard = threading.Timer(60, d.request_stop)  # should the failure not come
    guard.start()
    with pytest.raises(RuntimeError, match="transient failure"):
        d.run_forever()
    guard.cancel()
    assert d.inbound.qsize() > 0 and load_state(tmp_path / "failed" / "state.npz")["frame_no"] == 0
    again = _daemon(bundle, tmp_path / "failed")
    again._restore_state()  # the journal's frames, the failed one included
    _feed(again, messages)  # the broker redelivers what was not acknowledged (here: everything, to be sure)
    got = _scores(again)
    assert set(got) == set(want) and all(v == want[k] for k, v in got.items())
    assert all(v == want[k] for k, v in _scores(d).items())  # what went out before the failure, too


def test_zeros_after_the_journal_frames_are_a_torn_tail_not_a_crash(bundle, messages, tmp_path):
    """A power cut can leave zeros where a write had extended the file. Eight zero bytes read as a frame of length
    0 whose CRC (crc32 of nothing is 0) holds: decoding it raised struct.error at every start. Now reading stops
    there (a torn tail), and the daemon restores the frames before it."""
    d = _daemon(bundle, tmp_path)
    d._restore_state()
    _feed(d, messages[:200])
    journal = tmp_path / "state.npz.journal"
    frames = list(Journal(journal, len(bundle.spec.channels)).read())
    assert frames
    with open(journal, "ab") as fh:
        fh.write(bytes(4096))
    j = Journal(journal, len(bundle.spec.channels))
    assert [f.frame_no for f in j.read()] == [f.frame_no for f in frames] and j.torn_tail
    other = Journal(journal, len(bundle.spec.channels) + 1)  # frames of another bundle's channels: not decoded
    assert list(other.read()) == [] and other.torn_tail
    again = _daemon(bundle, tmp_path)
    again._restore_state()
    assert again._frame_no == d._frame_no and len(again.engine.fleet) == len(d.engine.fleet)


def test_a_state_refused_part_way_leaves_no_trace_and_its_outbox_is_still_published(bundle, messages, tmp_path, caplog):
    """A state the engine refuses after restoring part of it (here one saved by the window engine, restarted on
    the stream engine): the fleet it had restored stayed, without the step graph's layer state, and the daemon
    published `ok` scores from layer state it never had. Now the engine starts fresh and every turbine warms up
    again. The records the broker never acknowledged, in the file's outbox, used to be dropped with it; they are
    published all the same, and saved in the fresh state at once (a crash before the next snapshot lost them)."""
    first = _daemon(bundle, tmp_path, engine="window")
    first._restore_state()
    half = len(messages) // 2
    _feed(first, messages[:half])
    first._shutdown()  # a clean stop: the state and the unacknowledged records are saved
    outbox = load_state(tmp_path / "state.npz")["outbox"]
    assert outbox and load_state(tmp_path / "state.npz")["engine"]["stream"] is None
    with caplog.at_level(logging.WARNING, logger="scada.runtime.daemon"):
        d = _daemon(bundle, tmp_path)
        d._restore_state()
    assert any("state file not used" in r.getMessage() for r in caplog.records)
    assert [p.payload.decode() for p in d.link.unacked()] == [p["payload"] for p in outbox]
    assert (tmp_path / "state.npz.unused").exists()
    assert load_state(tmp_path / "state.npz")["outbox"] == outbox  # saved at once: a crash now loses none of it
    assert d.engine.fleet.turbines == first.engine.fleet.turbines  # with their open bins (carried over)
    assert d.engine.fleet.bins_closed == 0 and d.engine.scorer.n == 0
    before = len(d.link.unacked())
    _feed(d, messages[half:])
    first_record: dict[str, dict] = {}
    for p in d.link.unacked()[before:]:
        if p.topic.endswith("/score"):
            doc = json.loads(p.payload)
            first_record.setdefault(doc["turbine"], doc)
    assert first_record and all(r["status"] == "warmup" and r["steps"] == 1 for r in first_record.values())


def _alert_view(publishes: list[Publish], turbine: str) -> tuple[list[tuple[str, bool]], dict[str, str], str]:
    """A consumer's view of one turbine: (ts, alert) of its score records that carry the flag, alert-topic states by
    ts, and the last retained alert state."""
    flags, turned, retained = [], {}, ""
    for p in publishes:
        doc = json.loads(p.payload) if p.topic.endswith(f"/{turbine}/score") or f"/{turbine}/alert" in p.topic else {}
        if p.topic.endswith("/score") and "alert" in doc:
            flags.append((doc["ts"], doc["alert"]))
        elif p.topic.endswith("/alert") and doc:
            turned[doc["ts"]] = doc["state"]
        elif doc and p.retain:
            retained = doc["state"]
    return flags, turned, retained


def test_a_refused_state_carries_the_alerts_that_were_on(bundle, messages, tmp_path):
    """A turbine's alert on when the daemon stops, and its state refused at the restart (another model, another
    engine, a damaged engine part): the fresh engine started with every alert off. Consumers kept the retained
    "on" while the records said alert false, and the alert topic never said "off" (with the fault still there,
    a second "on" came with no "off" between). Now the alerts that were on stay on, in the records and the
    retained state, until the turbine is scored and its alert turns off by its rule, with a published
    transition; they are in the fresh state saved at once, so a second restart keeps them. The retained "on" is
    not published again at the first score (its `since` became that step's): the broker's, with its `since`, holds."""
    first = _daemon(bundle, tmp_path, engine="window")
    first._restore_state()
    half = len(messages) // 2
    _feed(first, messages[:half])
    turbine = first.engine.fleet.turbines[0]
    first.engine.alerts.hold(np.array([first.engine.fleet.slot_of(turbine)]), [True])  # as scores would turn it on
    first._shutdown()
    d = _daemon(bundle, tmp_path)  # the stream engine refuses the window engine's state
    d._restore_state()
    assert (tmp_path / "state.npz.unused").exists()
    on = d.engine.alerts.get()
    assert on[d.engine.fleet.slot_of(turbine)] and on.sum() == 1
    again = _daemon(bundle, tmp_path)  # the fresh state, saved at once, holds it
    again._restore_state()
    assert again.engine.alerts.get().tolist() == on.tolist()
    before = len(again.link.unacked())
    _feed(again, messages[half:])
    flags, turned, retained = _alert_view(again.link.unacked()[before:], turbine)
    assert flags and flags[0][1] is True  # held: the first record with the flag still says on
    changes = [(ts, now) for (_, was), (ts, now) in zip(flags, flags[1:]) if was != now]
    assert changes and changes[0][1] is False  # scored normal again: it turns off ...
    assert all(turned.get(ts) == ("on" if now else "off") for ts, now in changes)  # ... each change published
    assert retained == ("on" if flags[-1][1] else "off")
    topic = f"/{turbine}/alert/state"
    states = [json.loads(p.payload) for p in again.link.unacked()[before:] if p.topic.endswith(topic)]
    assert states[0] == states[0] | {"state": "off", "since": changes[0][0]}  # the broker's "on" (its since) held


def test_a_model_change_loses_no_sample_acknowledged_before_it(bundle, messages, tmp_path):
    """A clean stop, then a start on another model (here another engine): the state is refused. Its open bins, the
    samples acknowledged and not yet in a closed step, went with it, and every turbine's step open at the stop got
    no record at all. Now they are carried over: every step of the telemetry gets exactly one record over the two
    runs, as in an uninterrupted one, but those the state held waiting for the fleet's step (scored by the other
    model, counted as dropped), and the first record of each turbine after the change is its step open at the stop."""
    half = len(messages) // 2
    whole = _run(bundle, tmp_path / "whole", messages)
    first = _run(bundle, tmp_path, messages[:half], engine="window")
    before = _scores(first)
    first._shutdown()
    fleet = first.engine.fleet
    open_ends = {t: int(fleet._bins.open_from[fleet.slot_of(t)]) for t in fleet.turbines}
    d = _daemon(bundle, tmp_path)  # the stream engine refuses the window engine's state
    d._restore_state()
    assert (tmp_path / "state.npz.unused").exists()
    n = len(d.link.unacked())  # the outbox, published again
    _feed(d, messages[half:])
    after = by_key([p.payload for p in d.link.unacked()[n:] if p.topic.endswith("/score")])
    waiting = {(r["record"]["turbine"], iso_utc(r["record"]["end_ns"]))
               for r in load_state(tmp_path / "state.npz.unused")["engine"]["pending"]}  # fmt: skip
    assert not set(before) & set(after) and set(before) | set(after) == set(_scores(whole)) - waiting
    dropped = d.metrics.value("scada_runtime_scores_dropped_total", reason="state_refused")
    assert dropped == len(waiting) < len(open_ends)  # (counted: scored by the other model, held for the fleet)
    assert all(len(v) == 1 for v in after.values())
    for t, end in open_ends.items():
        first_after = min(ts for turbine, ts in after if turbine == t)
        assert parse_timestamp_ns(first_after) == end  # the step open at the stop
    assert d.metrics.value("scada_runtime_state_samples_dropped_total") == 0


def _sent(publishes: list[Publish]) -> list[tuple[str, bytes, bool]]:
    return [(p.topic, p.payload, p.retain) for p in publishes]


@pytest.mark.parametrize("change", ["engine", "window", "levels", "channels"])
def test_a_crash_then_a_change_publishes_the_journals_steps_as_the_crashed_run_did(bundle, messages, tmp_path,
                                                                                   caplog, change):  # fmt: skip
    """A crash after a snapshot, then a start on another engine kind (window to stream: the state is refused; stream
    to window: it resumes), on a re-export with other levels (it resumes), or on a bundle of other channels
    (refused). (Stream to window used to publish the window engine's numbers for the journal's steps: 48 of 140
    steps got two different records in the review.) The steps the
    journal closed were scored and published by the crashed run, and the broker may not have acknowledged them:
    they were not published again (another engine's numbers would contradict them), so those records were lost.
    The daemon keeps a copy of its bundle beside the state file now, and the engine that wrote the state scores
    the journal's steps again, in step with this one, and publishes them: after the outbox, exactly what the
    crashed run published after its snapshot (topic, payload, retain, in order). The copies of other bundles are
    deleted once the state names this one. No step gets two different records over the two runs."""
    q = len(messages) // 4
    first = _run(bundle, tmp_path, messages[:q], engine="window" if change == "engine" else "stream")
    assert first.engine.streams == (change != "engine")
    first.engine.alerts.hold(np.array([0]), [True])  # an alert on at the snapshot, as scores would turn it on
    first._save_state()  # a periodic snapshot, then journal frames after it, then the crash
    outbox = len(first.link.unacked())
    _feed(first, messages[q : 2 * q])
    after_snapshot = _sent(first.link.unacked()[outbox:])
    on_at_crash = Engine.alerts_on_in(first.engine.state_dict())
    assert sum(topic.endswith("/score") for topic, _, _ in after_snapshot) == 72  # 4 turbines x 18 steps
    assert [p.name for p in (tmp_path / "state.npz.bundles").iterdir()] == [bundle.bundle_id]
    other = {"engine": lambda: bundle, "window": lambda: bundle,
             "levels": lambda: reexported(bundle, tmp_path / "other", double_levels),
             "channels": lambda: _other_channels(bundle, tmp_path, extra=False)}[change]()  # fmt: skip
    with caplog.at_level(logging.WARNING, logger="scada.runtime.daemon"):
        d = _daemon(other, tmp_path, engine="window" if change == "window" else "stream")
        d._restore_state()
    assert (tmp_path / "state.npz.unused").exists() == (change in ("engine", "channels"))
    assert not any("not published again" in r.getMessage() for r in caplog.records)
    assert _sent(d.link.unacked()[outbox:]) == after_snapshot
    assert [p.name for p in (tmp_path / "state.npz.bundles").iterdir()] == [other.bundle_id]
    if change == "engine":
        assert Engine.alerts_on_in(load_state(tmp_path / "state.npz.unused")["engine"]) == ["WT01"] != on_at_crash
    assert Engine.alerts_on_in(d.engine.state_dict()) == on_at_crash  # as they were published
    n = len(d.link.unacked())
    _feed(d, messages[2 * q :])
    assert len(d.link.unacked()) > n
    both = by_key([p.payload for p in [*first.link.unacked(), *d.link.unacked()] if p.topic.endswith("/score")])
    assert all(len(v) == 1 for v in both.values())


@pytest.mark.parametrize("refused", [True, False], ids=["refused", "resumed"])
def test_after_a_crash_and_a_change_the_engine_holds_the_alert_states_the_old_one_published(
    bundle, messages, tmp_path, refused
):
    """A bundle whose alerts turn on at once and never off, a snapshot, a journal of 36 steps per turbine (more than
    the window of 24), a crash, then a start on a bundle of other channels (refused: a fresh engine, which scores
    every turbine during the replay) or on a re-export with the shipped alerting (resumed). The old bundle
    publishes the journal's steps, its retained alert states "on" among them; the new engine held its own states
    (off): a fresh one carries no alert of a turbine it has scored, and a resumed one kept its own. Consumers then
    held an "on" that nothing would close. The new engine takes the states the old one published now."""
    q = len(messages) // 4
    always = reexported(bundle, tmp_path / "always", lambda d: d["alerting"].update(T_on=1e-9, T_off=1e-12))
    first = _run(always, tmp_path, messages[:q])
    first._save_state()
    _feed(first, messages[q : 3 * q])
    on_at_crash = Engine.alerts_on_in(first.engine.state_dict())
    assert len(on_at_crash) == 4
    other = _other_channels(bundle, tmp_path, extra=False) if refused else bundle
    d = _daemon(other, tmp_path)
    d._restore_state()
    assert (tmp_path / "state.npz.unused").exists() == refused
    retained = {p.topic.split("/")[2]: json.loads(p.payload)["state"] for p in d.link.unacked()
                if p.topic.endswith("/alert/state") and p.payload}  # fmt: skip
    assert retained == dict.fromkeys(on_at_crash, "on")
    assert sorted(Engine.alerts_on_in(d.engine.state_dict())) == sorted(on_at_crash)
    again = _daemon(other, tmp_path)  # saved at once: a second restart keeps them
    again._restore_state()
    assert sorted(Engine.alerts_on_in(again.engine.state_dict())) == sorted(on_at_crash)


def test_a_crash_then_a_model_change_without_a_copy_gives_no_step_a_second_record(bundle, messages, tmp_path,
                                                                                   caplog):  # fmt: skip
    """A crash after a snapshot, then a start on another bundle, with no copy of the state's bundle beside the state
    file (a state of the release before copies): the carried open bins were the snapshot's, out of date, and the
    journal after it was dropped. The steps the journal had closed, which the other bundle scored and published,
    closed again empty, with a second record (72 steps in the review: `ok`, then `warmup`), and the samples
    acknowledged since were lost uncounted. Now the journal goes through the fresh engine's bins without
    publishing what it closes: no step gets a second record, and none goes without one (logged)."""
    q = len(messages) // 4
    whole = _run(bundle, tmp_path / "whole", messages)
    first = _run(bundle, tmp_path, messages[:q])
    first._save_state()  # a periodic snapshot, then journal frames after it, then the crash
    _feed(first, messages[q : 2 * q])
    published = _scores(first)  # (no broker: every record the crash left unacknowledged counts as published)
    shutil.rmtree(tmp_path / "state.npz.bundles")
    with caplog.at_level(logging.WARNING, logger="scada.runtime.daemon"):
        d = _daemon(_other_channels(bundle, tmp_path, extra=False), tmp_path)  # refuses the state (its channels)
        d._restore_state()
    assert (tmp_path / "state.npz.unused").exists()
    assert any("not published again" in r.getMessage() for r in caplog.records)
    assert any("no copy of bundle" in str(getattr(r, "reason", "")) for r in caplog.records)
    n = len(d.link.unacked())
    _feed(d, messages[2 * q :])
    after = by_key([p.payload for p in d.link.unacked()[n:] if p.topic.endswith("/score")])
    assert not set(after) & set(published) and set(published) | set(after) == set(_scores(whole))


def test_a_crash_then_a_reexport_with_other_levels_resumes_and_gives_no_step_a_second_record(
    bundle, messages, tmp_path, caplog
):
    """A crash after a snapshot, then a start on a re-export of the same model with other levels, with no copy of
    the state's bundle: the state resumes (no warm-up), and the steps the journal closes, which the old bundle
    scored and published, are not published again with other numbers (a consumer would see two different records
    of one step). Every record names the bundle that scored it."""
    q = len(messages) // 4
    whole = _run(bundle, tmp_path / "whole", messages)
    first = _run(bundle, tmp_path, messages[:q])
    first._save_state()
    _feed(first, messages[q : 2 * q])
    published = _scores(first)
    other = reexported(bundle, tmp_path / "other", double_levels)
    shutil.rmtree(tmp_path / "state.npz.bundles")  # a state of the release before copies
    with caplog.at_level(logging.WARNING, logger="scada.runtime.daemon"):
        d = _daemon(other, tmp_path)
        d._restore_state()
    assert not (tmp_path / "state.npz.unused").exists()
    assert any("another bundle of this model" in r.getMessage() for r in caplog.records)
    assert any("not published again" in r.getMessage() for r in caplog.records)
    n = len(d.link.unacked())
    _feed(d, messages[2 * q :])
    after = by_key([p.payload for p in d.link.unacked()[n:] if p.topic.endswith("/score")])
    assert not set(after) & set(published) and set(published) | set(after) == set(_scores(whole))
    docs = [json.loads(p) for ps in after.values() for p in ps]
    assert {doc["bundle_id"] for doc in docs} == {other.bundle_id} and {doc["status"] for doc in docs} == {"ok"}
    assert json.loads(d._status_payload("online"))["bundle_id"] == other.bundle_id


def test_a_crash_then_a_start_time_weighting_the_held_channels_resumes_as_another_bundle(
    bundle, messages, tmp_path, caplog
):
    """The same bundle, restarted after a crash with runtime.yaml's `mapping.time_weighted` naming its held
    channels: that changes the steps' numbers, so the state resumes as another bundle's. The steps the journal
    closes are not published again, and the records after it name the time-weighted bundle."""
    names = [c for c in bundle.spec.channels if c not in bundle.spec.repeat_channels]
    held = reexported(bundle, tmp_path / "held", lambda d: d["pipeline_spec"].update(hold_s=dict.fromkeys(
        names, 3600)))  # fmt: skip
    names = [c for c in names if bundle.spec.aggregation.get(c, "mean") == "mean"]  # not the status code's max
    q = len(messages) // 4
    first = _run(held, tmp_path, messages[:q])
    first._save_state()
    _feed(first, messages[q : 2 * q])
    published = _scores(first)
    with caplog.at_level(logging.WARNING, logger="scada.runtime.daemon"):
        d = _daemon(held, tmp_path, mapping={"time_weighted": names})
        d._restore_state()
    assert any("another bundle of this model" in r.getMessage() for r in caplog.records)
    n = len(d.link.unacked())
    _feed(d, messages[2 * q :])
    after = by_key([p.payload for p in d.link.unacked()[n:] if p.topic.endswith("/score")])
    assert after and not set(after) & set(published)
    timed = held.with_time_weighted(names).bundle_id
    assert {json.loads(p)["bundle_id"] for ps in after.values() for p in ps} == {timed} != {held.bundle_id}


def test_a_damaged_accumulator_in_another_models_state_costs_only_its_turbines_bins(bundle, messages, tmp_path):
    """Another model's state (refused at once) with one turbine's accumulator damaged: carrying its open bins
    raised TypeError at every start. Now that turbine's bins are not carried (a malformed one cannot say how many
    samples it held) and the others are."""
    state = _window_state(bundle, tmp_path, messages[:200])
    state["engine"]["model_id"] = "0" * 64
    names = [t["name"] for t in state["engine"]["fleet"]["turbines"]]
    state["engine"]["fleet"]["turbines"][1]["accumulator"] = None
    state["engine"]["fleet"]["turbines"][2]["accumulator"]["ts_ns"] = None
    save_state(tmp_path / "state.npz", state)
    d = _daemon(bundle, tmp_path, engine="window")
    d._restore_state()
    assert (tmp_path / "state.npz.unused").exists()
    assert d.engine.fleet.turbines == [names[0], *names[3:]]


def _window_state(bundle, folder: Path, messages: list[Message]) -> dict:
    """The state file a window-engine daemon saves after `messages` and a clean stop (the stream engine refuses it)."""
    first = _daemon(bundle, folder, engine="window")
    first._restore_state()
    _feed(first, messages)
    first._shutdown()
    return load_state(folder / "state.npz")


def test_open_bins_of_another_step_are_counted_as_dropped(bundle, messages, tmp_path, caplog):
    """A state set aside whose open bins were binned to another step (or channels) cannot give them to this
    bundle: none is carried, and their samples are counted (`state_samples_dropped_total`) and logged."""
    state = _window_state(bundle, tmp_path, messages[:200])
    accs = [t["accumulator"] for t in state["engine"]["fleet"]["turbines"]]
    for acc in accs:
        acc["dt_seconds"] = 300
    save_state(tmp_path / "state.npz", state)
    with caplog.at_level(logging.WARNING, logger="scada.runtime.daemon"):
        d = _daemon(bundle, tmp_path)
        d._restore_state()
    held = sum(len(acc["ts_ns"]) for acc in accs)
    assert held and d.metrics.value("scada_runtime_state_samples_dropped_total") == held
    assert len(d.engine.fleet) == 0
    assert any("do not fit this bundle" in r.getMessage() for r in caplog.records)


def _rows_of(state: dict, names: list[str]) -> dict[str, list]:
    """Each turbine's rows of a saved engine state's slot-indexed parts (fleet entry, alert state, tracker, hidden
    states), by name: what retiring other turbines must keep, whatever slot it lands in."""
    eng = state["engine"]
    slots = {t["name"]: i for i, t in enumerate(eng["fleet"]["turbines"])}
    parts = [eng["alerts"], eng["signals"]["aggregator"], *([{"h": eng["stream"]["h_ring"]}] if eng["stream"] else [])]
    return {t: [repr(eng["fleet"]["turbines"][slots[t]])] + [np.asarray(a)[slots[t]].tolist() for part in parts
                                                            for a in part.values()] for t in names}  # fmt: skip


@pytest.mark.parametrize("engine", ["stream", "window"])
def test_a_turbine_taken_off_ingest_turbines_is_retired_at_the_restart(bundle, messages, tmp_path, engine):
    """The fleet only grew: a decommissioned turbine, or an id a publisher mistyped, kept its slot, its room under
    `max_turbines` and its place in the state file, and published records for ever. Taking it off `ingest.turbines`
    and restarting now retires it: every slot-indexed part of the state drops it and the others are renumbered,
    each keeping its rows exactly (it resumes scoring, no warm-up); its retained alert state is cleared, its
    telemetry refused, its room freed."""
    names = sorted({m.topic.split("/")[2] for m in messages})
    gone, kept = names[1], [n for n in names if n != names[1]]  # a middle slot: the later ones are renumbered
    half = len(messages) // 2
    first = _daemon(bundle, tmp_path, engine)
    first._restore_state()
    _feed(first, messages[:half])
    first.engine.alerts.hold(np.array([first.engine.fleet.slot_of(gone)]), [True])  # its alert on: to be cleared
    first._shutdown()
    before = load_state(tmp_path / "state.npz")
    d = _daemon(bundle, tmp_path, engine, ingest={"turbines": kept})
    d._restore_state()
    assert d.engine.fleet.turbines == [t for t in first.engine.fleet.turbines if t != gone]
    assert _rows_of(load_state(tmp_path / "state.npz"), kept) == _rows_of(before, kept)
    cleared = [p for p in d.link.unacked() if p.topic.endswith(f"/{gone}/alert/state")][-1]  # after its outbox's
    assert cleared.payload == b"" and cleared.retain  # MQTT's way to delete a retained message
    n = len(d.link.unacked())
    _feed(d, messages[half:])
    theirs = sum(f"/{gone}/" in m.topic for m in messages[half:])
    assert d.metrics.value("scada_runtime_rejected_total", reason="unknown_turbine") == theirs
    after = [json.loads(p.payload) for p in d.link.unacked()[n:] if p.topic.endswith("/score")]
    assert {r["turbine"] for r in after} == set(kept)
    firsts = {t: next(r for r in after if r["turbine"] == t) for t in kept}
    assert all(r["status"] == "ok" for r in firsts.values())  # resumed, not warmed up again
    assert len(d.engine.fleet) == len(kept)  # its room is free


def test_a_turbine_retired_after_a_crash_leaves_the_journals_records_unchanged(bundle, messages, tmp_path):
    """A crash, then a restart with a turbine taken off `ingest.turbines`: the journal, acknowledged with it, is
    replayed with the whole fleet first, so every record it publishes again is byte-identical to the one published
    before the crash (retired first, the fleet baseline compared the others with one turbine fewer: 72 of 147 came
    out different in the review); then the turbine is retired and the samples of its open bins counted."""
    first = _daemon(bundle, tmp_path)
    first._restore_state()  # the start-up snapshot: an empty fleet; then only the journal, and a crash
    _feed(first, messages[:200])
    gone = first.engine.fleet.turbines[1]
    open_gone = first.engine.fleet.open_samples([gone])
    d = _daemon(bundle, tmp_path, ingest={"turbines": [t for t in first.engine.fleet.turbines if t != gone]})
    d._restore_state()
    assert _scores(d) == _scores(first)  # every record again, none different
    assert gone not in d.engine.fleet.turbines and len(d.engine.fleet) == len(first.engine.fleet) - 1
    assert open_gone and d.metrics.value("scada_runtime_state_samples_dropped_total") == open_gone


def test_a_journal_of_more_turbines_than_a_lowered_max_turbines_does_not_stop_the_start(bundle, messages, tmp_path):
    """A crash after new turbines' first samples, then a restart with `ingest.max_turbines` lowered: the snapshot
    fits, but replaying the journal added every turbine it held and raised ValueError, at every start, until the
    config or the files were changed. The samples of the turbines beyond it are now refused and counted."""
    first = _daemon(bundle, tmp_path)
    first._restore_state()  # the start-up snapshot: an empty fleet
    _feed(first, messages[:200])  # then only the journal (no periodic snapshot: the clock stands still)
    assert len(first.engine.fleet) > 2
    d = _daemon(bundle, tmp_path, ingest={"max_turbines": 2})
    sent = sent_by(d)
    d._restore_state()
    kept = first.engine.fleet.turbines[:2]
    assert d.engine.fleet.turbines == kept
    beyond = sum(not any(f"/{t}/" in f"{m.topic}/" for t in kept) for m in messages[:200])
    assert beyond and d.metrics.value("scada_runtime_rejected_total", reason="too_many_turbines") == beyond
    (report,) = [json.loads(payload) for topic, payload in sent if topic == d.errors_topic]
    assert report["reason"] == "too_many_turbines" and sum(report["samples_by_turbine"].values()) == beyond


def test_which_alerts_a_refused_state_carries(bundle, messages, tmp_path, caplog):
    """Alert states for fewer turbines than the fleet (its newest turbines never scored: off) carry those that are
    on; the turbines of a non-empty `ingest.turbines` only (a turbine taken off the list is not given a place);
    alert states for more turbines than the fleet carry none, and say so."""
    saved = _window_state(bundle, tmp_path, messages[:200])
    names = [t["name"] for t in saved["engine"]["fleet"]["turbines"]]

    def restart(on: np.ndarray, **sections) -> Daemon:
        state = load_state(tmp_path / "state.npz.unused") if (tmp_path / "state.npz.unused").exists() else saved
        state["engine"]["alerts"] = {"on": on, "on_count": np.zeros(on.size, int), "off_count": np.zeros(on.size, int)}
        save_state(tmp_path / "state.npz", state)
        d = _daemon(bundle, tmp_path, **sections)
        d._restore_state()
        return d

    def on(d: Daemon) -> list[str]:
        states = d.engine.alerts.get()
        return [t for t in d.engine.fleet.turbines if d.engine.fleet.slot_of(t) < states.size and states[
            d.engine.fleet.slot_of(t)]]  # fmt: skip

    shorter = np.zeros(len(names) - 1, bool)
    shorter[[0, 1]] = True
    assert on(restart(shorter)) == names[:2]
    listed = restart(shorter, ingest={"turbines": [names[1], *names[2:]]})
    assert listed.engine.fleet.turbines == names[1:] and on(listed) == [names[1]]  # (their open bins carried)
    with caplog.at_level(logging.WARNING, logger="scada.runtime.daemon"):
        longer = restart(np.ones(len(names) + 1, bool))
    assert longer.engine.fleet.turbines == names and not longer.engine.alerts.get().any()
    assert any("alert states of the state set aside cannot be read" in r.getMessage() for r in caplog.records)


def test_an_outbox_larger_than_the_publish_queue_is_counted_as_dropped(bundle, messages, tmp_path, caplog):
    """A state whose outbox (publishes the broker never acknowledged) is larger than `queues.outbound` (lowered
    since): the records that did not fit were dropped with nothing counted, reported or logged. They are counted,
    and logged once (it was a line per publish dropped, thousands in a long outage), the report at the connect."""
    first = _daemon(bundle, tmp_path)
    first._restore_state()
    _feed(first, messages[:300])
    first._shutdown()
    outbox = load_state(tmp_path / "state.npz")["outbox"]
    scores = sum(p["topic"].endswith("/score") for p in outbox[40:])
    assert len(outbox) > 40 and scores
    d = _daemon(bundle, tmp_path, queues={"outbound": 40, "publish_backlog": 20, "receive_maximum": 10})
    with caplog.at_level(logging.ERROR, logger="scada.runtime.daemon"):
        d._restore_state()
    assert len(d.link.unacked()) == 40
    assert d.metrics.value("scada_runtime_scores_dropped_total", reason="overflow") == scores
    assert sum("publish queue full" in r.getMessage() for r in caplog.records) == 1
    report = overflow_report(d)
    assert report["reason"] == "publish_queue_overflow" and report["dropped"] == len(outbox) - 40


def test_each_episode_of_a_full_publish_queue_is_logged_once_and_reported_when_it_ends(bundle, tmp_path, caplog):
    """An episode ends at the first publish the queue takes again, with a report of what it dropped; the next one
    is logged again. (The report waited for the publisher's next connect: an overflow while connected, a broker
    too slow, was reported days later if ever, and the next episode was not logged.)"""
    d = _daemon(bundle, tmp_path, queues={"outbound": 40, "publish_backlog": 20, "receive_maximum": 10})
    reports = []
    with caplog.at_level(logging.ERROR, logger="scada.runtime.daemon"):
        for n in (60, 10):
            for i in range(n):
                d._publish("error", d.errors_topic, b"x%d" % i, False)
            reports.append(overflow_report(d)["dropped"])
    assert reports == [20, 10]
    assert sum("publish queue full" in r.getMessage() for r in caplog.records) == 2


def test_no_online_status_once_stopping(bundle, tmp_path):
    """The subscriptions acknowledged while a stop drains the queue: "online" went out after the final "offline",
    and a clean stop sends no last will, so it stayed until the next start."""
    d = _daemon(bundle, tmp_path)
    sent = sent_by(d)
    d._on_connection_change(True)
    d._stopped.set()
    d._on_connection_change(True)
    assert [json.loads(payload)["state"] for topic, payload in sent if topic == d.status_topic] == ["online"]


def test_a_daemon_without_a_state_file_says_what_a_restart_will_lose(bundle, caplog):
    """Without `state.path` a restart warms every turbine up again and loses the telemetry not yet scored: the
    daemon says so at start, with what to set (the alerts that were on are carried over from the broker:
    tests/test_runtime_e2e.py)."""
    cfg = daemon_config(f"mqtt://127.0.0.1:{free_port()}")
    d = Daemon(cfg, bundle, make_scorer(bundle, "stream"), clock=lambda: parse_timestamp_ns(END))
    with caplog.at_level(logging.WARNING, logger="scada.runtime.daemon"):
        d._restore_state()
    assert [r.getMessage() for r in caplog.records if "state.path is not set" in r.getMessage()] == [
        "state.path is not set: a restart warms every turbine up again and loses the telemetry acknowledged and not "
        "yet scored (the alerts that were on are carried over from the broker's retained alert states); set "
        "state.path in production"
    ]


def test_the_last_will_says_offline_without_times_or_counts_it_cannot_know(bundle, tmp_path):
    """The broker publishes the last will when the connection drops, at a time the daemon cannot know: it carried
    the start's time and counts (`turbines: 0`, no last message) as if they were the gateway's last state."""
    d = _daemon(bundle, tmp_path)
    will = json.loads(d.link.will.payload)
    live = json.loads(d._status_payload("online"))
    assert set(will) == set(live) and will["state"] == "offline" and will["model_id"] == bundle.model_id
    assert will["bundle_id"] == bundle.bundle_id
    assert all(will[k] is None for k in set(live) - {"state", "gateway", "site", "model_id", "bundle_id"})


def test_a_restart_replays_no_more_than_the_publish_queue_holds(bundle, messages, tmp_path):
    """A restart publishes again everything the journal frames after the last snapshot produce, before the link
    starts. With the broker acknowledging at once the live daemon never fills its queue, but a journal of
    `state.save_interval_s` at full speed produced more records than `queues.outbound` holds: the replay dropped
    the rest. A snapshot is now also due after (outbound - publish_backlog) / 4 publishes (here 20), so the
    replay fits."""
    queues = {"outbound": 120, "publish_backlog": 40, "receive_maximum": 20}
    d = _daemon(bundle, tmp_path, queues=queues)
    d._restore_state()
    d.link.publish = lambda *args, **kwargs: True  # a broker acknowledging every publish at once
    _feed(d, messages)
    assert d.metrics.value("scada_runtime_scores_published_total", status="ok") > 120  # more than the queue holds
    d._wait_for_writer()
    crashed = tmp_path / "crashed"
    shutil.copytree(tmp_path, crashed, ignore=shutil.ignore_patterns("crashed"))
    again = _daemon(bundle, crashed, queues=queues)
    again._restore_state()
    assert again.metrics.value("scada_runtime_scores_dropped_total", reason="overflow") == 0
    assert len(again.link.unacked()) <= 120


def test_damaged_state_files_are_set_aside_and_unreadable_ones_stop_the_daemon(bundle, tmp_path):
    """What `load_state` refuses with ValueError (the daemon sets the file aside and starts fresh): an empty,
    truncated or corrupted snapshot, a plain .npy, a zip of other files, a tree nested deeper than Python
    recurses, a tree naming an array the file lacks. Before, several raised TypeError, AttributeError, EOFError,
    BadZipFile or RecursionError, and the daemon failed at every start. A file that cannot be read at all (here a
    directory) raises its OSError: the state may be fine, so it is not thrown away."""
    import zipfile

    path = tmp_path / "state.npz"
    save_state(path, {"a": np.arange(3000.0), "b": [1, 2]})
    whole = path.read_bytes()
    flipped = bytearray(whole)
    flipped[len(whole) // 2] ^= 0xFF
    np.save(tmp_path / "plain.npy", np.arange(3))
    with zipfile.ZipFile(tmp_path / "other.zip", "w") as z:
        z.writestr("tree.npy", b"not an array")
    deep = np.frombuffer(("[" * 100_000 + "]" * 100_000).encode(), np.uint8)
    missing = np.frombuffer(b'{"a": {"__array__": "a7"}}', np.uint8)
    damaged = {"empty": b"", "truncated": whole[: len(whole) // 2], "corrupted": bytes(flipped),
               "npy": (tmp_path / "plain.npy").read_bytes(), "zip": (tmp_path / "other.zip").read_bytes()}  # fmt: skip
    for kind, tree in (("deep", deep), ("missing", missing)):
        np.savez(tmp_path / "t.npz", tree=tree)
        damaged[kind] = (tmp_path / "t.npz").read_bytes()
    for kind, data in damaged.items():
        path.write_bytes(data)
        with pytest.raises(ValueError, match="state file"):
            load_state(path)
        d = _daemon(bundle, tmp_path)
        d._restore_state()
        assert (tmp_path / "state.npz.unused").read_bytes() == data, kind
        assert isinstance(load_state(path), dict)  # the fresh state, saved at once
    (tmp_path / "folder.npz").mkdir()
    with pytest.raises(IsADirectoryError):
        load_state(tmp_path / "folder.npz")


class _Clock:
    """The gateway's wall clock, set by the test."""

    def __init__(self) -> None:
        self.ns = 0

    def __call__(self) -> int:
        return self.ns


# an idle tick's wait for telemetry (> 0: a wait that brings nothing tells the daemon that no backlog is left),
# short enough not to sleep: the clocked tests run thousands of idle ticks (at 1 ms, 50 s of the suite's time)
IDLE_WAIT = 1e-6


def _clocked(bundle, folder: Path, clock: _Clock, **sections) -> Daemon:
    """A daemon with the shipped grace (120 s) on a clock the test moves, a snapshot every 10 minutes of it (no
    broker acknowledges the records: each snapshot holds them all); `sections` add to its config."""
    cfg = daemon_config(f"mqtt://127.0.0.1:{free_port()}",
                        state={"path": str(folder / "state.npz"), "save_interval_s": 600.0},
                        ingest={"grace_s": 120.0, "max_past_s": 10 * 365 * 86400.0, **sections.pop("ingest", {})},
                        compute={"engine": "stream", "tick_s": 0.05}, **sections)  # fmt: skip
    d = Daemon(cfg, bundle, make_scorer(bundle, "stream"), clock=clock)
    d.link._up = {"sub": True, "pub": True, "subscribed": True}  # as if connected (no broker acks the publishes)
    d._restore_state()
    return d


def _live(d: Daemon, clock: _Clock, messages: list[Message]) -> None:
    """Each message arrives 30 s after its stamp, one loop iteration each (ticks included)."""
    for m in messages:
        clock.ns = max(clock.ns, parse_timestamp_ns(json.loads(m.payload)["ts"]) + 30 * 10**9)
        d.inbound.put_nowait(m)
        d.step(0.0)


def _uninterrupted(bundle, messages: list[Message], folder: Path) -> dict[tuple[str, str], set[bytes]]:
    clock = _Clock()
    d = _clocked(bundle, folder, clock)
    _live(d, clock, messages)
    d._wait_for_writer()
    return _scores(d)


def _union(*parts: dict[tuple[str, str], set[bytes]]) -> dict[tuple[str, str], set[bytes]]:
    out: dict[tuple[str, str], set[bytes]] = {}
    for part in parts:
        for k, v in part.items():
            out.setdefault(k, set()).update(v)
    return out


def test_telemetry_whose_stamps_stopped_advancing_keeps_a_bounded_open_bin(bundle, messages, tmp_path):
    """A collector whose clock froze stamps every new reading alike. Until the daemon is live (here from the
    start: a start or a reconnect waits for the backlog), bins close on the newest stamp, which no longer moves:
    no bin closes, and every distinct reading used to be kept (unbounded memory). Each turbine now keeps at most
    `ingest.max_values_per_stamp` of one stamp; the rest are counted, and nothing else is dropped."""
    frozen = json.loads(messages[0].payload)["ts"]
    stuck = []
    for m in messages:
        doc = json.loads(m.payload)
        doc["ts"] = frozen
        stuck.append(m._replace(payload=json.dumps(doc).encode()))
    clock = _Clock()
    cfg = daemon_config(f"mqtt://127.0.0.1:{free_port()}", state={"path": str(tmp_path / "state.npz")},
                        ingest={"max_values_per_stamp": 5, "max_past_s": 10 * 365 * 86400.0},
                        compute={"engine": "stream", "tick_s": 0.05})  # fmt: skip
    d = Daemon(cfg, bundle, make_scorer(bundle, "stream"), clock=clock)
    d._restore_state()
    for m, true in zip(stuck, messages):
        clock.ns = max(clock.ns, parse_timestamp_ns(json.loads(true.payload)["ts"]) + 30 * 10**9)
        d.inbound.put_nowait(m)
        d.step(0.0)
    held = d.engine.fleet._bins.open_samples().tolist()
    assert held == [5] * 4  # without the bound: every message of the 12 hours (72 or 73 per turbine)
    assert d.metrics.value("scada_runtime_stamp_full_samples_total") == len(stuck) - sum(held)
    assert d.metrics.value("scada_runtime_late_samples_total") == 0 and d.engine.fleet.bins_closed == 0


def test_what_the_tick_remembers_of_the_telemetrys_progress_stays_small(bundle, messages, tmp_path):
    """When the newest stamp grew (`Daemon._reached`, for the live tick) is kept per second and for the grace
    only: it grew by an entry per loop iteration when the daemon was never live (a review: 4,200 entries after
    4,200 iterations, about 12 MB a day)."""
    never_live = _daemon(bundle, tmp_path / "a")  # no broker: never connected, and its clock stands still
    never_live._restore_state()
    _feed(never_live, messages, per_step=1)
    assert len(never_live._reached) == 1
    clock = _Clock()
    d = _clocked(bundle, tmp_path / "b", clock)
    stamps = [parse_timestamp_ns(json.loads(m.payload)["ts"]) for m in messages]
    _arriving(d, clock, [(t + 7200 * 10**9, m) for t, m in zip(stamps, messages)])  # two hours late
    assert len(d._reached) <= (120 + 300) / 10 + 2  # one per loop iteration of the grace and max_future_s


def test_a_restart_after_a_downtime_longer_than_the_grace_loses_no_telemetry(bundle, messages, tmp_path):
    """The broker keeps the telemetry of a downtime (a reboot, an upgrade) for the daemon's session. The first
    iteration after a restart runs before it arrives, and used to tick on the wall clock: every bin of the
    downtime closed empty, and the telemetry that followed was dropped as late (12 steps changed in a 2-turbine
    review case). Bins now close on the fleet's data clock (the newest telemetry taken, never ahead of the wall
    clock), so the restart gives every step the uninterrupted run's bytes."""
    want = _uninterrupted(bundle, messages, tmp_path / "whole")
    clock = _Clock()
    d = _clocked(bundle, tmp_path / "run", clock)
    cut = len(messages) // 2
    _live(d, clock, messages[:cut])
    d._wait_for_writer()  # then killed; back 15 minutes later
    clock.ns += 15 * 60 * 10**9
    again = _clocked(bundle, tmp_path / "run", clock)
    again.step(0.0)  # the link is still connecting: nothing has arrived
    _live(again, clock, messages[cut:])  # the broker's backlog, then live telemetry
    assert again.metrics.value("scada_runtime_late_samples_total") == 0
    got = _union(_scores(d), _scores(again))
    assert set(got) == set(want) and all(v == want[k] for k, v in got.items())


def test_a_clock_stepped_ahead_and_back_closes_no_bin_early(bundle, messages, tmp_path):
    """A wall clock 2 hours ahead for one iteration (a bad NTP step, an RTC in local time): its tick closed 2 hours
    of bins empty for every turbine and published their records, and every real sample of them was then dropped as
    late. On the data clock the tick closes nothing early, and when the clock steps back the ticks and snapshots go
    on (they waited for the clock to pass its old reading)."""
    want = _uninterrupted(bundle, messages, tmp_path / "whole")
    clock = _Clock()
    d = _clocked(bundle, tmp_path / "run", clock)
    third = len(messages) // 3
    _live(d, clock, messages[:third])
    d.step(0.01)  # live: no backlog
    before = len(d.link.unacked())
    clock.ns += 2 * 3600 * 10**9
    d.step(0.0)
    assert len(d.link.unacked()) == before  # nothing closed, nothing published
    clock.ns -= 2 * 3600 * 10**9 + 60 * 10**9  # NTP steps it back, a minute below its last reading
    saves = d._last_save_ns
    _live(d, clock, messages[third:])
    assert d.metrics.value("scada_runtime_late_samples_total") == 0 and d._last_save_ns != saves
    d._wait_for_writer()
    got = _scores(d)
    assert set(got) == set(want) and all(v == want[k] for k, v in got.items())


def test_a_clock_behind_the_telemetry_takes_none_until_it_catches_up(bundle, messages, tmp_path):
    """An RTC back at 1970 at boot, before NTP syncs: every sample was refused as in the future and acknowledged,
    so the broker deleted the telemetry the daemon had been away for. With a state, the daemon knows the newest
    telemetry it took: while the clock is behind it (by more than `ingest.max_future_s`) it takes nothing (the
    broker keeps it), says so in `clock_behind` and the log, and carries on once the clock is right."""
    want = _uninterrupted(bundle, messages, tmp_path / "whole")
    clock = _Clock()
    d = _clocked(bundle, tmp_path / "run", clock)
    cut = len(messages) // 2
    _live(d, clock, messages[:cut])
    d._shutdown()
    clock.ns = 35 * 10**9  # 1970-01-01T00:00:35Z
    again = _clocked(bundle, tmp_path / "run", clock)
    held = messages[cut : cut + 10]
    for m in held:
        again.inbound.put_nowait(m)
    assert again.step(0.0) == 0 and again.inbound.qsize() == len(held)  # taken: none; acknowledged: none
    assert again.metrics.value("scada_runtime_clock_behind") == 1
    assert again.metrics.value("scada_runtime_rejected_total", reason="ts_in_future") == 0
    clock.ns = parse_timestamp_ns(json.loads(held[-1].payload)["ts"]) + 30 * 10**9  # NTP has synced
    while again.inbound.qsize():
        again.step(0.0)
    assert again.metrics.value("scada_runtime_clock_behind") == 0
    _live(again, clock, messages[cut + len(held) :])
    again._wait_for_writer()
    got = _union(_scores(d), _scores(again))
    assert set(got) == set(want) and all(v == want[k] for k, v in got.items())


def test_score_records_the_broker_refuses_are_counted_as_dropped(bundle, messages, tmp_path):
    """`MqttLink` reports a publish the broker refused (PUBACK 0x87 from an ACL without the topic): the daemon
    counts its score records in `scores_dropped_total{reason="refused"}`, one for a score topic, one per line for
    a batched score message, none for an alert-state message."""
    d = _daemon(bundle, tmp_path)
    d._restore_state()
    _feed(d, messages[:100])
    queued = d.link.unacked()
    score = next(p for p in queued if p.topic.endswith("/score"))
    state = next(p for p in queued if "alert" in p.topic)
    d._refused(score, "Not authorized")
    d._refused(state, "Not authorized")
    assert d.metrics.value("scada_runtime_scores_dropped_total", reason="refused") == 1
    d._shutdown()
    again = _daemon(bundle, tmp_path)
    again._restore_state()  # the outbox is published again before any score of this run names its topic
    again._refused(next(p for p in again.link.unacked() if p.topic.endswith("/score")), "Not authorized")
    assert again.metrics.value("scada_runtime_scores_dropped_total", reason="refused") == 1
    batched = _daemon(bundle, tmp_path / "b", topics={"score_batch": "scada/{site}/{gateway}/scores"})
    batch = Publish(batched._batch_topic, b"\n".join(p.payload for p in queued if p.topic.endswith("/score")), False)
    batched._refused(batch, "Quota exceeded")
    n = sum(p.topic.endswith("/score") for p in queued)
    assert batched.metrics.value("scada_runtime_scores_dropped_total", reason="refused") == n


def test_live_a_step_closes_its_grace_after_the_telemetry_reached_its_end(bundle, messages, tmp_path):
    """Live (connected, no backlog at the broker, the newest telemetry less than a step and the grace old), bins
    close on the wall clock: with one record per turbine and step, stamped at its end and arriving 30 s later,
    the last step's records go out once the clock passes that arrival + 120 s, not when the next step's telemetry
    arrives (a pure data clock published every score one step late, 630 s after its end instead of 120 s in the
    review's case)."""
    clock = _Clock()
    d = _clocked(bundle, tmp_path, clock)
    _live(d, clock, messages)
    d.step(0.01)  # a tick's wait brings nothing: the broker holds no backlog, the daemon is live
    last = max(parse_timestamp_ns(json.loads(m.payload)["ts"]) for m in messages)
    end = datetime.fromtimestamp(last // 10**9, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    for after, closed in ((30, False), (149, False), (151, True)):  # its telemetry came 30 s after it
        clock.ns = last + after * 10**9
        d.step(0.0)
        assert (end in {json.loads(p.payload)["ts"] for p in d.link.unacked() if p.topic.endswith("/score")}) == closed


def _arriving(d: Daemon, clock: _Clock, items: list[tuple[int, Message]], settle_s: int = 0) -> None:
    """Each message at its arrival time (ns), in arrival order, with the loop waiting (idle ticks every 10 s of
    the clock) in between, as a live daemon does, and `settle_s` seconds after the last."""
    items = sorted(items, key=lambda x: x[0])
    clock.ns = max(clock.ns, items[0][0])
    for at, m in items + [(items[-1][0] + settle_s * 10**9, None)]:
        while clock.ns + 10 * 10**9 < at:
            clock.ns += 10 * 10**9
            d.step(IDLE_WAIT)
        clock.ns = max(clock.ns, at)
        if m is not None:
            d.inbound.put_nowait(m)
            d.step(0.0)


def _settled(bundle, items: list[tuple[int, Message]], folder: Path, **sections) -> dict[tuple[str, str], set[bytes]]:
    """The records of a daemon given `items` (arrival ns, message) and then 20 quiet minutes."""
    clock = _Clock()
    d = _clocked(bundle, folder, clock, **sections)
    _arriving(d, clock, items, settle_s=1200)
    d._wait_for_writer()
    return _scores(d)


def _stamped(m: Message, seconds: int) -> Message:
    doc = json.loads(m.payload)
    doc["ts"] = (parse_timestamp_ns(doc["ts"]) + seconds * 10**9) / 1e9
    return m._replace(payload=json.dumps(doc).encode())


class _EveryTick(Daemon):
    """A daemon that journals and applies every tick, as it did before idle ticks were skipped."""

    def _advance(self, samples, tick_ns, redelivered=None):
        out = super()._advance(samples, tick_ns, redelivered)
        self._settled = None
        return out


def test_an_idle_gateway_writes_no_frame_and_no_snapshot_and_its_records_are_unchanged(bundle, messages, tmp_path,
                                                                                      monkeypatch):  # fmt: skip
    """The tick's frame was written and fsynced every `compute.tick_s`, and a snapshot every `state.save_interval_s`,
    even with no telemetry for hours (flash wear on a gateway's SD card). A tick that can close nothing (no later
    than the last one applied, no sample since) is now skipped, and so is a periodic snapshot with no frame since
    the last. The records are those of a daemon that applies every tick (the publisher away for two hours,
    then forwarding its buffer, and an hour idle at the end), with far fewer frames."""
    import scada_tcn.runtime.daemon as daemon_module

    stamps = [parse_timestamp_ns(json.loads(m.payload)["ts"]) for m in messages]
    cut = stamps[len(stamps) // 2]
    items = [(max(t, cut + 7200 * 10**9) if cut < t <= cut + 7200 * 10**9 else t, m) for t, m in zip(stamps, messages)]
    items = [(t + 30 * 10**9, m) for t, m in items]
    runs = {}
    for name, kind in (("skip", Daemon), ("every", _EveryTick)):
        clock = _Clock()
        cfg = daemon_config(f"mqtt://127.0.0.1:{free_port()}", state={"path": str(tmp_path / name / "state.npz")},
                            ingest={"grace_s": 120.0, "max_past_s": 10 * 365 * 86400.0},
                            compute={"engine": "stream", "tick_s": 0.05})  # fmt: skip
        d = kind(cfg, bundle, make_scorer(bundle, "stream"), clock=clock)
        d.link._up = {"sub": True, "pub": True, "subscribed": True}
        d._restore_state()
        _arriving(d, clock, items, settle_s=600)
        d._wait_for_writer()
        frames, scores = d._frame_no, _scores(d)
        while d.link.unacked():  # the broker acknowledges every record
            for mid in list(d.link._inflight):
                d.link._handle_publish(None, None, mid, ReasonCode(PacketTypes.PUBACK, "Success"), None)
        written: list[str] = []
        monkeypatch.setattr(daemon_module, "write_state", lambda path, enc, into=written: into.append(path))
        for _ in range(360):  # an hour with no telemetry
            clock.ns += 10 * 10**9
            d.step(IDLE_WAIT)
            d._wait_for_writer()  # the clock's 10 s let a snapshot land (a busy CI core may not have run it yet)
        runs[name] = (scores, frames, d._frame_no - frames, len(written))
        monkeypatch.undo()
    (skip, frames, idle_frames, idle_saves), every = runs["skip"], runs["every"]
    assert skip == every[0] and len(skip) >= len(messages)
    assert every[1:] == (4609, 360, 60)  # a frame each tick (10 s of the clock apart here), a snapshot a minute
    assert (frames, idle_frames, idle_saves) == (415, 0, 1)  # the one after the broker acknowledged the outbox


def test_an_idle_gateway_whose_broker_is_away_writes_its_snapshot_once(bundle, messages, tmp_path, monkeypatch):
    """With records the broker had not acknowledged (the broker away), an idle gateway wrote the same snapshot,
    outbox and all, every `state.save_interval_s` (60 in an idle hour here: flash wear while the farm's link is
    down). It now writes one only when a frame, a publish or an acknowledgement came since the last: none in the
    idle hour, one after the broker acknowledged part of the outbox (which then holds the rest), then none again."""
    import scada_tcn.runtime.daemon as daemon_module

    clock = _Clock()
    d = _clocked(bundle, tmp_path / "away", clock)
    stamps = [parse_timestamp_ns(json.loads(m.payload)["ts"]) for m in messages]
    _arriving(d, clock, [(t + 30 * 10**9, m) for t, m in zip(stamps[:200], messages[:200])], settle_s=1200)
    d._wait_for_writer()
    outbox = len(d.link.unacked())
    written: list[int] = []

    def write_state(path, encoded, into=written):
        into.append(len(json.loads(encoded.doc)["outbox"]))

    monkeypatch.setattr(daemon_module, "write_state", write_state)

    def idle(minutes: int) -> None:
        for _ in range(6 * minutes):
            clock.ns += 10 * 10**9
            d.step(IDLE_WAIT)
        d._wait_for_writer()

    idle(60)
    assert outbox >= 40 and written == []
    for mid in list(d.link._inflight)[: outbox // 2]:  # the broker is back and acknowledges half of it
        d.link._handle_publish(None, None, mid, ReasonCode(PacketTypes.PUBACK, "Success"), None)
    idle(60)
    assert written == [len(d.link.unacked())] and 0 < written[0] < outbox


def test_a_whole_fleets_publisher_away_for_minutes_loses_no_sample(bundle, messages, tmp_path):
    """The publisher of the whole fleet loses its link for 4 minutes, from 1 minute before a step's end, then
    forwards what it buffered. Bins closed on the wall clock at end + grace (120 s), before the buffered samples
    came: they were dropped as late (3 here) and the step was scored without them. A step now closes its grace
    after the telemetry reached its end, so every record is the uninterrupted run's, byte for byte."""
    want = _uninterrupted(bundle, messages, tmp_path / "whole")
    stamps = [parse_timestamp_ns(json.loads(m.payload)["ts"]) for m in messages]
    cut = stamps[len(stamps) // 2]  # a step's end: its samples are stamped there
    items = [(t + 30 * 10**9 if not cut - 60 * 10**9 < t <= cut + 180 * 10**9 else cut + 180 * 10**9, m)
             for t, m in zip(stamps, messages)]  # fmt: skip
    clock = _Clock()
    d = _clocked(bundle, tmp_path / "away", clock)
    _arriving(d, clock, items)
    d._wait_for_writer()
    assert sum(cut - 60 * 10**9 < t <= cut + 180 * 10**9 for t in stamps) == 4
    assert d.metrics.value("scada_runtime_late_samples_total") == 0
    assert _scores(d) == want


def test_a_gateway_clock_ahead_by_more_than_the_grace_closes_no_step_early(bundle, messages, tmp_path):
    """The gateway's clock runs 5 minutes ahead (more than the grace, less than a step and the grace: still
    live). On the wall clock a step closed 3 minutes before its telemetry came, which was then dropped as late.
    Now it closes its grace after the telemetry reached its end: the uninterrupted run's records."""
    stamps = [parse_timestamp_ns(json.loads(m.payload)["ts"]) for m in messages]
    want = _settled(bundle, [(t + 30 * 10**9, m) for t, m in zip(stamps, messages)], tmp_path / "whole")
    clock = _Clock()
    d = _clocked(bundle, tmp_path / "ahead", clock)
    _arriving(d, clock, [(t + (300 + 30) * 10**9, m) for t, m in zip(stamps, messages)], settle_s=1200)
    d._wait_for_writer()
    assert d.metrics.value("scada_runtime_late_samples_total") == 0
    assert _scores(d) == want and len(want) >= len(messages)  # every step, the last one too


def test_a_stored_and_forwarded_feed_gives_a_lagging_turbine_the_skew_of_the_data_clock(bundle, messages, tmp_path):
    """The fleet's telemetry comes 2 hours late (stored and forwarded), WT02's 200 s after the others'. Before
    this session such a feed was not live: bins closed on the newest stamp less `max_future_s`, which gave WT02
    the grace and 300 s more. Counted live on the wall clock it got only the grace: all 72 of its samples late
    (a third review). A feed whose stamps come more than a step and the grace old gets `max_future_s` more."""
    stamps = [parse_timestamp_ns(json.loads(m.payload)["ts"]) for m in messages]
    want = _settled(bundle, [(t + 30 * 10**9, m) for t, m in zip(stamps, messages)], tmp_path / "whole")
    delay = [(7200 + 30 + 200 * ("/WT02/" in m.topic)) * 10**9 for m in messages]
    clock = _Clock()
    d = _clocked(bundle, tmp_path / "forwarded", clock)
    _arriving(d, clock, [(t + w, m) for t, w, m in zip(stamps, delay, messages)], settle_s=1800)
    d._wait_for_writer()
    assert d.metrics.value("scada_runtime_late_samples_total") == 0
    assert _scores(d) == want


def test_a_feed_stamped_at_the_start_of_each_interval_loses_no_sample(bundle, messages, tmp_path):
    """SCADA systems often stamp a 10-minute average with the START of its interval and publish it after the
    interval ends: a sample stamped 10:00 (of bin 09:50-10:00, as scada-prepare bins it) arrives after 10:10. On
    the wall clock the bin closed at 10:02: every sample was late and every record insufficient_data. A step
    now closes its grace after the telemetry reached its end: the records of an immediate feed, byte for byte."""
    dt = bundle.spec.dt_seconds
    start = [_stamped(m, -dt) for m in messages]
    stamps = [parse_timestamp_ns(json.loads(m.payload)["ts"]) for m in start]
    want = _settled(bundle, [(t + 30 * 10**9, m) for t, m in zip(stamps, start)], tmp_path / "whole")
    clock = _Clock()
    d = _clocked(bundle, tmp_path / "start", clock)
    _arriving(d, clock, [(t + (dt + 30) * 10**9, m) for t, m in zip(stamps, start)], settle_s=1200)
    d._wait_for_writer()
    assert d.metrics.value("scada_runtime_late_samples_total") == 0
    assert _scores(d) == want and len(want) >= len(messages)  # every step, the last one too


def test_a_turbines_samples_out_of_order_by_less_than_the_grace_find_their_step(bundle, messages, tmp_path):
    """WT01 also sends each reading 30 s after the step's end, and that copy (of the next step) comes first. Its
    sample of the next step closed the step at once, whatever the grace: the reading for the step itself was
    then late (71 here) and the step scored without it. A sample now closes the steps ending at least the grace
    (at most a step) before it: the records of the same samples sent in time order."""
    ordered, swapped = [], []
    for m in messages:
        if "/WT01/" in m.topic:
            copy = _stamped(m, 30)
            ordered += [m, copy]
            swapped += [copy, m]
        else:
            ordered.append(m)
            swapped.append(m)
    want = _uninterrupted(bundle, ordered, tmp_path / "ordered")
    clock = _Clock()
    d = _clocked(bundle, tmp_path / "swapped", clock)
    _live(d, clock, swapped)
    d._wait_for_writer()
    assert d.metrics.value("scada_runtime_late_samples_total") == 0
    assert _scores(d) == want


def test_lines_of_a_batch_out_of_order_are_taken_in_time_order(bundle, messages, tmp_path):
    """A gateway that does not sort its batch: WT01's line of each step comes after its line of the next step, in
    one `topics.telemetry_batch` message, sent after the later step (the grace, 30 minutes, covers the wait). The
    later line closed the earlier step (10 minutes apart: a step) and the earlier line was late (35 here). The
    lines of a message are taken in time order, as scada-prepare sorts a table: the records of a sorted feed
    (messages stay in arrival order: what a sample finds never depends on how the loop batched them)."""
    topic = "scada/{site}/{gateway}/telemetry_batch"

    def stamp(m: Message) -> int:
        return parse_timestamp_ns(json.loads(m.payload)["ts"])

    def batch_of(ms: list[Message]) -> Message:
        lines = [json.dumps({"turbine": m.topic.split("/")[-2], **json.loads(m.payload)}).encode() for m in ms]
        return ms[0]._replace(topic=topic.format(site=SITE, gateway=GATEWAY), payload=b"\n".join(lines))

    wt01 = [m for m in messages if "/WT01/" in m.topic]
    pairs = [wt01[i : i + 2] for i in range(0, len(wt01) - 1, 2)]
    results = []
    for name, order in (("sorted", lambda p: p), ("swapped", lambda p: p[::-1])):
        items = [(stamp(m), m) for m in messages if "/WT01/" not in m.topic]
        items += [(stamp(p[-1]), batch_of(order(p))) for p in pairs]  # sent with its newer line
        clock = _Clock()
        cfg = daemon_config(f"mqtt://127.0.0.1:{free_port()}", state={"path": str(tmp_path / name / "state.npz")},
                            topics={"telemetry_batch": topic}, compute={"engine": "stream", "tick_s": 0.05},
                            ingest={"grace_s": 1800.0, "max_past_s": 10 * 365 * 86400.0})  # fmt: skip
        d = Daemon(cfg, bundle, make_scorer(bundle, "stream"), clock=clock)
        d._restore_state()
        for t, m in sorted(items, key=lambda x: x[0]):
            clock.ns = max(clock.ns, t + 30 * 10**9)
            d.inbound.put_nowait(m)
            d.step(0.0)
        results.append((d.metrics.value("scada_runtime_late_samples_total"), _scores(d)))
    assert results[1][0] == 0 and results[1] == results[0]


def _skewed(messages: list[Message], turbine: str, seconds: int) -> list[tuple[int, Message]]:
    """(true stamp, message) with `turbine`'s stamps moved ahead by `seconds` (its clock runs fast)."""
    out = []
    for m in messages:
        doc = json.loads(m.payload)
        true = parse_timestamp_ns(doc["ts"])
        if f"/{turbine}/" in m.topic:
            doc["ts"] = (true + seconds * 10**9) / 1e9
        out.append((true, m._replace(payload=json.dumps(doc).encode())))
    return out


def test_a_publisher_clock_ahead_within_max_future_does_not_break_a_restart(bundle, messages, tmp_path):
    """A turbine whose clock runs 240 s fast is admitted (`ingest.max_future_s` 300). Its stamps are the fleet's
    newest: a data clock taken as they are closed the other turbines' bins before their backlog came in after a
    restart (3 late samples, 144 records changed in the review's case). Behind, bins close on the newest stamp
    less `max_future_s`: the restart gives every step the uninterrupted run's bytes."""

    def live(d: Daemon, clock: _Clock, items: list[tuple[int, Message]]) -> None:
        for true, m in items:  # the wall clock follows the true time
            clock.ns = max(clock.ns, true + 30 * 10**9)
            d.inbound.put_nowait(m)
            d.step(0.0)

    items = _skewed(messages, "WT01", 240)
    clock = _Clock()
    whole = _clocked(bundle, tmp_path / "whole", clock)
    live(whole, clock, items)
    whole._wait_for_writer()
    want = _scores(whole)
    clock = _Clock()
    d = _clocked(bundle, tmp_path / "run", clock)
    cut = len(items) // 2
    live(d, clock, items[:cut])
    d._wait_for_writer()
    clock.ns += 15 * 60 * 10**9
    again = _clocked(bundle, tmp_path / "run", clock)
    again.step(0.0)
    for _, m in items[cut:]:  # the backlog drains with the wall clock moving on
        clock.ns += 10**8
        again.inbound.put_nowait(m)
        again.step(0.0)
    assert again.metrics.value("scada_runtime_late_samples_total") == 0
    got = _union(_scores(d), _scores(again))
    assert set(got) <= set(want) and all(v == want[k] for k, v in got.items())


def test_the_status_names_a_turbine_whose_samples_all_come_late(bundle, messages, tmp_path):
    """A turbine whose link delays its samples by more than the grace behind the rest of the fleet's (here 200 s
    more) loses every sample as late and publishes insufficient_data: the counter had no turbine, so nothing said
    which one. The retained status message names it."""
    clock = _Clock()
    d = _clocked(bundle, tmp_path, clock)
    delay = [(30 + 200 * ("/WT03/" in m.topic)) * 10**9 for m in messages]
    _arriving(d, clock, [(parse_timestamp_ns(json.loads(m.payload)["ts"]) + w, m) for w, m in zip(delay, messages)])
    late = json.loads(d._status_payload("online"))["late_samples"]
    assert list(late) == ["WT03"] and late["WT03"] > 60
    assert late["WT03"] == d.metrics.value("scada_runtime_late_samples_total")


def test_late_samples_of_redelivered_messages_are_also_counted_apart(bundle, messages, tmp_path):
    """A message the broker sends again (after a reconnect, unacknowledged) comes flagged DUP. Its samples whose step
    has closed are late like any other's, and also counted in late_redelivered_samples_total, so a rise of
    late_samples_total at a reconnect reads as the redelivery it is, not as a turbine's lagging clock. The same
    samples published again, not flagged, are late only."""
    d = _daemon(bundle, tmp_path)
    _feed(d, messages)
    late = "scada_runtime_late_samples_total"
    again = "scada_runtime_late_redelivered_samples_total"
    assert d.metrics.value(late) == d.metrics.value(again) == 0
    old = messages[:40]
    _feed(d, messages[-3:] + [m._replace(dup=True) for m in old])  # the newest three: exact repeats in open bins
    assert d.metrics.value(late) == d.metrics.value(again) == 40
    _feed(d, old)
    assert d.metrics.value(late) == 80 and d.metrics.value(again) == 40


def test_a_busy_feed_goes_live_without_an_idle_wait(bundle, messages, tmp_path):
    """A feed of several samples per turbine and step (here one a minute) leaves the loop no tick-long idle wait,
    so "no backlog left" is also read from a batch of 10 or more samples, most younger than the grace (a median:
    one publisher's skewed clock does not decide it). Live, a turbine gone silent has its step closed its grace
    after the step's end, and the rest of the fleet's records of that step go out with it, instead of waiting
    `max_future_s` longer."""
    per_minute = []  # each step's message as ten, stamped a minute apart up to the step's end
    for m in messages:
        doc = json.loads(m.payload)
        end = parse_timestamp_ns(doc["ts"])
        for k in range(9, -1, -1):
            per_minute.append(m._replace(payload=json.dumps({**doc, "ts": (end - k * 60 * 10**9) / 1e9}).encode()))
    stamps = [parse_timestamp_ns(json.loads(m.payload)["ts"]) for m in per_minute]
    silent = "/WT04/"
    last = max(stamps)
    keep = [(t, m) for t, m in zip(stamps, per_minute) if silent not in m.topic or t <= last - 3600 * 10**9]
    keep.sort(key=lambda x: x[0])
    clock = _Clock()
    d = _clocked(bundle, tmp_path, clock)
    i = 0
    while i < len(keep):  # three minutes of the fleet's telemetry per loop iteration, 5 s after the newest
        j = i
        while j < len(keep) and keep[j][0] < keep[i][0] + 180 * 10**9:
            j += 1
        clock.ns = keep[j - 1][0] + 5 * 10**9
        for _, m in keep[i:j]:
            d.inbound.put_nowait(m)
        while d.inbound.qsize():
            d.step(0.0)
        i = j
    assert d._drained
    clock.ns = last + 126 * 10**9  # its telemetry came 5 s after it, and the grace is 120 s
    d.step(0.0)
    end = datetime.fromtimestamp(last // 10**9, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    done = {(json.loads(p.payload)["turbine"], json.loads(p.payload)["ts"]) for p in d.link.unacked()
            if p.topic.endswith("/score")}  # fmt: skip
    assert ("WT01", end) in done and ("WT04", end) in done


def test_a_reconnect_while_a_batch_is_admitted_does_not_count_as_live(bundle, messages, tmp_path):
    """The link's connection count is read before the batch is admitted and the tick computed after: a reconnect
    in between (the network thread's CONNACK) used to leave the old "no backlog" in force, and the tick closed, on
    the wall clock, bins whose telemetry the broker had kept during the outage. The tick now checks the count
    again (the third review's race; reproduced here by reconnecting inside the admission)."""
    clock = _Clock()
    d = _clocked(bundle, tmp_path, clock)
    half = len(messages) // 2
    _live(d, clock, messages[:half])
    d.step(0.01)
    assert d._drained
    before = len(d.link.unacked())
    clock.ns += 300 * 10**9  # five minutes away: the broker kept that telemetry
    admit = d._admit

    def reconnecting(*args):
        d.link._generation += 1  # the subscriber's CONNACK, handled on the network thread
        return admit(*args)

    d._admit = reconnecting
    d.step(0.01)  # the reconnect's first iteration, nothing received yet
    assert len(d.link.unacked()) == before  # the tick closed nothing on the wall clock


def test_a_replay_in_batches_over_the_brokers_packet_size_is_split_to_fit(bundle, messages, tmp_path):
    """`topics.score_batch`: a restart replays its journal before the first CONNACK tells the broker's Maximum
    Packet Size, so the replayed batches were cut at `score_batch_bytes` (60,000); a broker with a smaller limit
    closed the publisher's connection at every resend and nothing left the gateway (the review's case: 16,384).
    The link takes them back on the CONNACK and the daemon publishes their records again in batches that fit:
    every record arrives, once, on one connection."""
    from tests.mosquitto import Broker, Collector, wait_for

    broker = Broker(tmp_path / "broker", max_packet=16384)
    broker.start()
    col = Collector(broker.url, ["scada/farm/gw1/scores"], client_id="batch-col")
    try:
        wait_for(col.ready, 10, "collector")
        cfg = daemon_config(broker.url, state={"path": str(tmp_path / "state.npz")},
                            topics={"score_batch": "scada/{site}/{gateway}/scores"})  # fmt: skip
        d = Daemon(cfg, bundle, make_scorer(bundle, "stream"), clock=lambda: parse_timestamp_ns(END))
        d._restore_state()
        _feed(d, messages, per_step=len(messages))  # one iteration: the batches are cut before any CONNACK
        queued = [p for p in d.link.unacked() if p.topic.endswith("/scores")]
        want = sorted(line for p in queued for line in split_batch(p.payload))
        assert max(len(p.payload) for p in queued) > 16384
        d.link.start()
        wait_for(lambda: d.link.connected, 10, "link")

        def arrived() -> list[bytes]:
            return sorted(line for _, payload in col.of("/scores") for line in split_batch(payload))

        deadline = time.monotonic() + 20
        while arrived() != want and time.monotonic() < deadline:
            d.step(0.01)
        assert arrived() == want and d.link.connects == 2
        assert max(len(p) for _, p in col.of("/scores")) <= 16384
        d.link.stop([], timeout=5)
        taken = Publish("scada/farm/gw1/scores", b"\n".join(want[:3]), False)
        d.link._too_large.append((taken, True))  # taken back by the link, not claimed yet: a snapshot keeps it
        d._save_state()
        assert {"topic": taken.topic, "payload": taken.payload.decode(), "retain": False} in load_state(
            tmp_path / "state.npz"
        )["outbox"]
    finally:
        col.close()
        broker.stop()


def test_a_message_of_many_bad_elements_is_reported_in_one_report_past_the_first_twenty(bundle, messages, tmp_path):
    """One message may hold many samples (an array on a turbine's topic, or a batch), so one message of bad
    elements gave one error report each: 100,000 of them would fill the publish queue, where score records wait.
    The first 20 refused elements are reported one by one, the rest in one `more_rejected` report by reason; every
    one is counted, and the message's good elements are scored."""
    d = _daemon(bundle, tmp_path / "s")
    sent = sent_by(d)
    doc = json.loads(messages[0].payload)
    good = json.dumps(doc).encode()
    bad = [b'{"ts": %s, "values": {"nope": 1}}' % json.dumps(doc["ts"]).encode(), b"7"] * 600
    payload = b"[" + b", ".join([good, *bad]) + b"]"
    d.inbound.put_nowait(Message(messages[0].topic, payload, 1, False, False, 1, 0, 0))
    d.step(0.0)
    reports = [json.loads(p) for t, p in sent if t == d.errors_topic]
    assert [r.get("element") for r in reports] == [*range(2, 22), None]
    assert [r["reason"] for r in reports[:2]] == ["unknown_channel", "not_an_object"]
    assert reports[-1]["reason"] == "more_rejected" and reports[-1]["by_reason"] == {
        "unknown_channel": 590,
        "not_an_object": 590,
    }
    assert reports[-1]["detail"] == "1180 more elements of the message rejected, not reported one by one"
    m = d.metrics
    assert m.rejected_by_reason() == {"unknown_channel": 600.0, "not_an_object": 600.0}
    assert m.value("scada_runtime_samples_in_total") == 1
    # a new turbine's array when the fleet is full: its samples refused alike, reported alike
    full = _daemon(bundle, tmp_path / "full", ingest={"max_turbines": 1})
    sent = sent_by(full)
    mine = [m for m in messages if "/WT01/" in m.topic][:1]
    other = [json.loads(m.payload) for m in messages if "/WT02/" in m.topic][:30]
    array = b"[" + b", ".join(json.dumps(doc).encode() for doc in other) + b"]"
    wt02 = next(m.topic for m in messages if "/WT02/" in m.topic)
    for msg in (*mine, Message(wt02, array, 1, False, False, 2, 0, 0)):
        full.inbound.put_nowait(msg)
    full.step(0.0)
    reports = [json.loads(p) for t, p in sent if t == full.errors_topic]
    assert [r.get("turbine") for r in reports] == ["WT02"] * 20 + [None]
    assert reports[-1]["by_reason"] == {"too_many_turbines": 10}
    assert full.metrics.rejected_by_reason() == {"too_many_turbines": 30.0}


def test_a_payload_key_both_read_and_ignored_is_a_config_error_at_start(bundle, tmp_path):
    """`mapping.ignored_keys` naming a key the bundle's own mapping reads (runtime.yaml's `mapping.columns` left
    empty) passed the config's check and stopped `scada-runtime run` with a ValueError traceback (exit 1): a
    ConfigError now, which the command prints as a config error (exit 2)."""
    key = next(iter(bundle.column_mapping.values()))
    with pytest.raises(ConfigError, match=rf"mapping\.ignored_keys \['{key}'\] are channels' payload keys"):
        _daemon(bundle, tmp_path, mapping={"ignored_keys": [key]})
    config = tmp_path / "runtime.yaml"
    config.write_text(f"broker: {{url: 'mqtt://127.0.0.1:{free_port()}'}}\nmapping: {{ignored_keys: [{key}]}}\n")
    code = "import sys; from scada_tcn.runtime.cli import main; sys.exit(main(sys.argv[1:]))"
    res = subprocess.run([sys.executable, "-c", code, "run", "--bundle", str(bundle.path), "--config", str(config)],
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert res.returncode == 2 and res.stderr.startswith("config error: runtime.yaml mapping against the bundle's")
    assert "Traceback" not in res.stderr


SPB_GROUP = "farm"


def _sparkplug_feeds(bundle, messages: list[Message], cut: int, back: int, flush_s: int, without: str | None = None,
                     flap: bool = False, apart: set[str] | None = None):  # fmt: skip
    """The tiny farm's telemetry as Sparkplug edge nodes' (a device per turbine: node `edge1`, or `edge2` for the
    turbines `apart`), each row arriving 30 s after its stamp: (uninterrupted, with an outage), as (arrival ns,
    message). The uninterrupted nodes' births hold each turbine's first row and come first. With the outage, the
    node going away (`edge1`, or `edge2` when `apart` is set) dies after its row stamped `cut` and stores the rows
    stamped up to `back`; 30 s after that, its births hold each of its turbines' newest row, the rows it stored
    follow as history (`is_historical`, oldest first, over `flush_s` seconds), and then live data goes on; the
    other node goes on all along. Turbine `without` read nothing between its rows stamped `cut` and `back` (both
    runs lack those rows). With `flap`, the node's link drops three quarters through the history: its old
    connection's will (NDEATH), 30 s later its births again, and the rest of the history."""
    names = {ch: f"Nacelle/{ch}" for ch in bundle.spec.channels}
    key_of = dict(bundle.column_mapping)
    rows = [(m.topic.split("/")[2], parse_timestamp_ns(json.loads(m.payload)["ts"]), json.loads(m.payload)["values"])
            for m in messages]  # fmt: skip
    mid = iter(range(1, 10**6))
    lag = 30 * 10**9
    node_of = {t: "edge2" if apart and t in apart else "edge1" for t, _, _ in rows}
    gone = "edge2" if apart else "edge1"

    def sent(kind: str, t: str, ts: int, values: dict | None, historical: bool = False) -> Message:
        """A message of turbine `t`'s node (`kind` N...) or device (D...)."""
        p = Payload(timestamp=ts // 10**6)
        if kind.startswith("N"):
            metric(p, "bdSeq", 0, "Int64")
        for ch, name in names.items() if values is not None else ():
            metric(p, name, values.get(key_of[ch]), "Double", ts=ts // 10**6).is_historical = historical
        topic = f"spBv1.0/{SPB_GROUP}/{kind}/{node_of[t]}" + (f"/{t}" if kind.startswith("D") else "")
        return Message(topic, p.SerializeToString(), 1, False, False, next(mid), 0, 0)

    def births(at: int, row_of: dict[str, tuple[int, dict]]) -> list[tuple[int, Message]]:
        nodes = {node_of[t]: t for t in row_of}  # each node's NBIRTH, then its devices' DBIRTHs
        return [(at, sent("NBIRTH", t, at, None)) for t in nodes.values()] + [
            (at, sent("DBIRTH", t, ts, v)) for t, (ts, v) in row_of.items()]  # fmt: skip

    newest = {t: (ts, v) for t, ts, v in rows if ts <= back and node_of[t] == gone}
    rows = [(t, ts, v) for t, ts, v in rows if not (t == without and cut < ts < newest[t][0])]  # never read
    firsts: dict[str, tuple[int, dict]] = {}
    for t, ts, v in rows:
        firsts.setdefault(t, (ts, v))
    born = {(t, ts) for t, (ts, _) in firsts.items()}
    live = [(t, ts, v) for t, ts, v in rows if (t, ts) not in born]
    whole = births(rows[0][1] + lag, firsts) + [(ts + lag, sent("DDATA", t, ts, v)) for t, ts, v in live]
    stored = [(t, ts, v) for t, ts, v in rows if t in newest and cut < ts < newest[t][0]]
    away = births(rows[0][1] + lag, firsts) + [(ts + lag, sent("DDATA", t, ts, v)) for t, ts, v in live
                                                if t not in newest or ts <= cut or ts > back]  # fmt: skip
    death = next(t for t in newest)  # a turbine of the node going away: its NDEATH
    away.append((cut + lag, sent("NDEATH", death, cut, None)))
    away += births(back + lag, newest)
    step = flush_s * 10**9 // max(len(stored), 1)
    history = [(back + lag + 1 + k * step, sent("DDATA", t, ts, v, historical=True)) for k, (t, ts, v) in
               enumerate(stored)]  # fmt: skip
    if flap:  # the will, and 30 s later (ticks in between), the births and the rest
        half, gap = 3 * len(history) // 4, 30 * 10**9  # (the wall clock's live rule lags the grace: late enough)
        died = history[half - 1][0] + 1
        again = [(died, sent("NDEATH", death, cut, None)), *births(died + gap, newest)]
        history = history[:half] + again + [(at + gap + 1, m) for at, m in history[half:]]
    return whole, away + history


@pytest.mark.parametrize("flap", [False, True], ids=["forwarded", "reconnecting"])
def test_a_sparkplug_node_back_from_an_outage_forwards_its_history_into_its_steps(bundle, messages, tmp_path, flap):
    """On the shipped grace and the wall clock: the Sparkplug node dies for two hours and stores what it reads;
    back, it births with its newest row and forwards the stored rows as history over four minutes, oldest first
    (and, `flap`, its link drops late in it: its will, its births again, the rest of the history). One turbine read
    nothing then (the uninterrupted node lacks those rows too): its birth waits a minute (half the grace) for
    history and is then taken. That moved the fleet's data clock past the others' history, and their steps
    closed on its newest stamp less `max_future_s`; the clock now stays below the history still to come of
    turbines whose births wait, or whose node died while they did. No sample is late (the births' values
    the death dropped come again with the next births), and every record is the uninterrupted node's, byte for
    byte."""
    stamps = sorted({parse_timestamp_ns(json.loads(m.payload)["ts"]) for m in messages})
    cut, back = stamps[24], stamps[36]
    turbines = sorted({m.topic.split("/")[2] for m in messages})
    whole, away = _sparkplug_feeds(bundle, messages, cut, back, flush_s=240, without=turbines[-1], flap=flap)
    spb = {
        "topics": {"sparkplug_group": SPB_GROUP},
        "mapping": {"columns": {ch: f"Nacelle/{ch}" for ch in bundle.spec.channels}},
    }
    want = _settled(bundle, whole, tmp_path / "whole", **spb)
    clock = _Clock()
    d = _clocked(bundle, tmp_path / "away", clock, **spb)
    _arriving(d, clock, away, settle_s=1200)
    d._wait_for_writer()
    assert d.metrics.value("scada_runtime_late_samples_total") == 0
    dropped = d.metrics.value("scada_runtime_sparkplug_birth_samples_dropped_total")
    assert dropped == (len(turbines) - 1 if flap else 0)  # the births its will found waiting (not `without`'s)
    assert _scores(d) == want and len(want) >= len(messages)


def _one_node_away(bundle, messages: list[Message], folder: Path, wait_s: float) -> tuple[dict, list, dict]:
    """One turbine's own edge node (`edge2`) away from the 24th to the 36th stamp while the other node goes on
    (`_sparkplug_feeds`): the uninterrupted nodes' records, the feed with the outage, and the config's sections
    (`ingest.sparkplug_history_wait_s` = `wait_s`)."""
    stamps = sorted({parse_timestamp_ns(json.loads(m.payload)["ts"]) for m in messages})
    turbines = sorted({m.topic.split("/")[2] for m in messages})
    whole, away = _sparkplug_feeds(bundle, messages, stamps[24], stamps[36], flush_s=120, apart={turbines[0]})
    spb = {
        "topics": {"sparkplug_group": SPB_GROUP},
        "mapping": {"columns": {ch: f"Nacelle/{ch}" for ch in bundle.spec.channels}},
        "ingest": {"sparkplug_history_wait_s": wait_s},
    }
    return _settled(bundle, whole, folder / "whole", **spb), away, spb


@pytest.mark.parametrize("wait_s", [0, 3 * 3600])
def test_a_turbines_sparkplug_node_away_while_the_fleet_is_live_forwards_its_history(bundle, messages, tmp_path,
                                                                                    wait_s):  # fmt: skip
    """One turbine's own edge node (`edge2`) dies for two hours while the other turbines' node goes on; back, it
    forwards what it stored. With `ingest.sparkplug_history_wait_s` 0, the live fleet's clock closed that turbine's
    steps as missing while it was away (as any silent turbine's) and its history came late. Waiting three hours
    after a death, no step of its closes on the clock meanwhile: nothing is late and every record is the
    uninterrupted nodes', byte for byte."""
    want, away, spb = _one_node_away(bundle, messages, tmp_path, wait_s)
    clock = _Clock()
    d = _clocked(bundle, tmp_path / "away", clock, **spb)
    _arriving(d, clock, away, settle_s=1200)
    d._wait_for_writer()
    late = d.metrics.value("scada_runtime_late_samples_total")
    if wait_s:
        assert late == 0 and _scores(d) == want
    else:
        assert late == 11  # the stored rows (11 of the 12 away steps; the 12th came with the births)


def test_only_a_nodes_death_waits_for_history_and_only_for_turbines_of_the_fleet(bundle, messages, tmp_path):
    """`ingest.sparkplug_history_wait_s`: a DDEATH (a device lost by a node that stays: nothing stored to forward)
    starts no wait; an NDEATH does, for the turbines the fleet has samples of, not for ids it never saw (the node's
    own id here); the node's next births and death within the wait do not extend it."""
    spb = {"topics": {"sparkplug_group": SPB_GROUP}, "ingest": {"sparkplug_history_wait_s": 3600.0},
           "mapping": {"columns": {ch: f"Nacelle/{ch}" for ch in bundle.spec.channels}}}  # fmt: skip
    last = max(parse_timestamp_ns(json.loads(m.payload)["ts"]) for m in messages[:40])
    whole, _ = _sparkplug_feeds(bundle, messages[:40], last, last, flush_s=1)
    turbines = sorted({m.topic.split("/")[2] for m in messages[:40]})
    clock = _Clock()
    d = _clocked(bundle, tmp_path / "deaths", clock, **spb)
    _arriving(d, clock, whole)

    def death(kind: str, device: str = "") -> None:
        p = Payload(timestamp=clock.ns // 10**6)
        metric(p, "bdSeq", 0, "Int64")
        d.inbound.put_nowait(Message(f"spBv1.0/{SPB_GROUP}/{kind}/edge1" + device, p.SerializeToString(), 1, False,
                                     False, 1, 0, 0))  # fmt: skip
        d.step(0.0)

    death("DDEATH", f"/{turbines[0]}")
    death("DDEATH", "/WT99")  # a device the fleet never had
    assert d._births.turbines() == []
    death("NDEATH")
    assert sorted(d._births.turbines()) == turbines[1:]  # the devices it named (WT01's DDEATH came first)
    until = {t: d._births._held[t].until_ns for t in turbines[1:]}
    clock.ns += 600 * 10**9
    for _, m in whole[: 1 + len(turbines)]:  # its births again
        d.inbound.put_nowait(m)
        d.step(0.0)
    death("NDEATH")
    assert sorted(d._births.turbines()) == turbines
    assert {t: d._births._held[t].until_ns for t in turbines[1:]} == until
    assert d._births._held[turbines[0]].until_ns == clock.ns + 3600 * 10**9


@pytest.mark.parametrize("restart", ["before_the_death", "after_the_death"])
def test_a_restart_goes_on_waiting_for_the_history_of_a_sparkplug_node_away(bundle, messages, tmp_path, restart):
    """The scenario above (one turbine's own node away two hours while the fleet is live, a wait of three hours),
    the node's death (its will) coming two minutes after its last message, as a broker sends it when the node's
    keepalive runs out, and the daemon stopped and started again on its state file between the two, or half an
    hour after the death. Each node's devices and the running waits were kept in memory only: restarted before
    the death, the daemon did not know which devices the NDEATH named; after it, it forgot the wait. Either way
    the live fleet's clock closed the away turbine's steps as missing, and its history came late (11 samples).
    They are in the state file now: nothing is late and every record is the uninterrupted nodes', byte for
    byte."""
    want, away, spb = _one_node_away(bundle, messages, tmp_path, 3 * 3600)
    last = next(at for at, m in away if "/NDEATH/" in m.topic)  # the node's last message came then too
    away = [(at + 120 * 10**9 if "/NDEATH/" in m.topic else at, m) for at, m in away]
    cut = last + (60 if restart == "before_the_death" else 1800) * 10**9
    clock = _Clock()
    first = _clocked(bundle, tmp_path / "away", clock, **spb)
    _arriving(first, clock, [(at, m) for at, m in away if at < cut])
    first.link._up["pub"] = False  # no broker to drain to
    first._shutdown()
    d = _clocked(bundle, tmp_path / "away", clock, **spb)
    _arriving(d, clock, [(at, m) for at, m in away if at >= cut], settle_s=1200)
    d._wait_for_writer()
    late = first.metrics.value("scada_runtime_late_samples_total") + d.metrics.value("scada_runtime_late_samples_total")
    assert late == 0 and _scores(d) == want


def test_a_state_file_of_the_format_before_loads_and_a_bad_section_is_refused(bundle, messages, tmp_path,
                                                                                        caplog):  # fmt: skip
    """A snapshot of the format before Sparkplug's edge nodes and the journal's channels were kept
    (scada-runtime-state/2) resumes as one that knows no edge node; a section of the wrong shape sets the state
    aside, as any damaged state file."""
    first = _run(bundle, tmp_path, messages[: len(messages) // 2])
    first._shutdown()
    doc = load_state(tmp_path / "state.npz")
    assert doc["format"] == "scada-runtime-state/3" and doc["sparkplug"] == {"devices": {}, "waits": {}}
    assert doc["channels"] == list(bundle.spec.channels)
    save_state(tmp_path / "state.npz", {**{k: v for k, v in doc.items() if k not in ("sparkplug", "channels")},
                                        "format": "scada-runtime-state/2"})  # fmt: skip
    d = _daemon(bundle, tmp_path)
    d._restore_state()
    assert d.engine.fleet.turbines == first.engine.fleet.turbines and d.engine.fleet.bins_closed > 0
    d._shutdown()
    doc = load_state(tmp_path / "state.npz")
    bad_sections = ({"devices": {"edge1": "WT01"}, "waits": {}}, {"devices": {}, "waits": {"WT01": True}}, {})
    bad_docs = [{**doc, "sparkplug": section} for section in bad_sections] + [{**doc, "format": ["x"]}]
    for bad in bad_docs + [{**doc, "channels": []}, {**doc, "channels": "wind_speed"}]:
        save_state(tmp_path / "state.npz", bad)
        with caplog.at_level(logging.WARNING, logger="scada.runtime.daemon"):
            d = _daemon(bundle, tmp_path)
            d._restore_state()
        # (a format that is a list raised TypeError, which stopped every start)
        why = ("not a scada-runtime state snapshot" if isinstance(bad["format"], list) else
               "channels" if bad["channels"] != doc["channels"] else "sparkplug")  # fmt: skip
        assert any("state file not used" in r.getMessage() and why in r.reason for r in caplog.records)
        assert d.engine.fleet.bins_closed == 0
        (tmp_path / "state.npz.unused").unlink()
        caplog.clear()


def test_a_wait_taken_back_from_the_state_file_is_bounded_by_the_wait_set_now(bundle, messages, tmp_path):
    """A wait in the state file ends no later than `ingest.sparkplug_history_wait_s` from the restart (the setting
    lowered since, a clock set back, a file that says 10^40 ns), and none is taken back with the setting at 0; only
    turbines of the fleet wait."""
    spb = {"topics": {"sparkplug_group": SPB_GROUP}}
    first = _daemon(bundle, tmp_path, **spb)
    first._restore_state()
    _feed(first, messages[:40])
    first._shutdown()
    doc = load_state(tmp_path / "state.npz")
    turbines = sorted(first.engine.fleet.turbines)
    now = parse_timestamp_ns(END)  # `_daemon`'s clock
    waits = {turbines[0]: 10**40, turbines[1]: now + 60 * 10**9, turbines[2]: now - 1, "WT99": now + 10**12}
    for wait_s, want in ((3600.0, {turbines[0]: now + 3600 * 10**9, turbines[1]: now + 60 * 10**9}), (0.0, {})):
        save_state(tmp_path / "state.npz", {**doc, "sparkplug": {"devices": {}, "waits": waits}})
        d = _daemon(bundle, tmp_path, ingest={"sparkplug_history_wait_s": wait_s}, **spb)
        d._restore_state()
        assert d._births.waits(now) == want


def test_a_wait_started_on_an_idle_gateway_is_saved_by_the_next_periodic_snapshot(bundle, messages, tmp_path):
    """A periodic snapshot is skipped while nothing it holds has changed; a node's death on an otherwise idle
    gateway starts a wait that no journal frame records, and the skip kept it out of the file for as long as the
    gateway stayed idle (a crash then lost it). Sparkplug's edge nodes now count as a change."""
    spb = {"topics": {"sparkplug_group": SPB_GROUP}, "ingest": {"sparkplug_history_wait_s": 3600.0}}
    d = _daemon(bundle, tmp_path, **spb)
    d._restore_state()
    _feed(d, messages[:40])
    d._save_state()
    assert d._unchanged()
    d._wait_for_history(sorted(d.engine.fleet.turbines), parse_timestamp_ns(END))
    assert not d._unchanged()
    d._save_state()
    assert d._unchanged() and load_state(tmp_path / "state.npz")["sparkplug"]["waits"]


def _other_channels(bundle, folder: Path, extra: bool) -> Any:
    """This model's bundle with its channels in the reverse order, and (`extra`) a channel more, mapped to a key
    the telemetry never sends: another bundle of the same model, binning another channel list."""
    dst = folder / ("extra" if extra else "reversed")
    shutil.copytree(bundle.path, dst)
    doc = json.loads((dst / "bundle.json").read_text())
    doc["pipeline_spec"]["channels"] = ["grid_frequency"] * extra + doc["pipeline_spec"]["channels"][::-1]
    if extra:
        doc["column_mapping"]["grid_frequency"] = "GridFrequency"
    (dst / "bundle.json").write_text(json.dumps(doc, indent=2))
    return load_bundle(dst)


@pytest.mark.parametrize("extra", [False, True], ids=["reordered", "one_more"])
def test_a_crash_then_a_bundle_of_other_channels_takes_the_journal_by_channel_name(bundle, messages, tmp_path,
                                                                                   caplog, extra):  # fmt: skip
    """A crash, then a start on a bundle whose channels differ from the state's (a model retrained with a channel
    more, or listed in another order). The journal's frames hold the values in the old bundle's channel order and
    were read in the new one's: in another order, each value went to another channel (wind speed read as the
    generator bearing's temperature, into the fresh engine's bins and the model's history); with another count,
    the frames did not decode and were taken for a torn tail, and their samples, acknowledged, were lost. The
    state file names its channels now: every replayed value goes to its own channel, bit for bit, and a channel
    the old bundle lacked is missing."""
    first = _daemon(bundle, tmp_path)
    first._restore_state()
    half = len(messages) // 2
    _feed(first, messages[:half])
    first._save_state()  # a periodic snapshot, then journal frames after it, then the crash
    _feed(first, messages[half : half + 200])
    written = bundle.spec.channels
    frames = list(Journal(tmp_path / "state.npz.journal", len(written)).read())
    sent = [(s.turbine, s.ts_ns, dict(zip(written, s.values.tolist()))) for f in frames for s in f.samples]
    assert len(sent) >= 100
    other = _other_channels(bundle, tmp_path, extra)
    d = _daemon(other, tmp_path)
    taken = _taking(d)
    with caplog.at_level(logging.WARNING, logger="scada.runtime.daemon"):
        d._restore_state()
    assert not d.journal.torn_tail  # (before: another count of channels read as a damaged frame)
    got = [(s.turbine, s.ts_ns, dict(zip(other.spec.channels, s.values.tolist()))) for s in taken]
    want = [(t, ts, {c: values.get(c, math.nan) for c in other.spec.channels}) for t, ts, values in sent]
    assert [g[:2] for g in got] == [w[:2] for w in want]
    for (_, _, g), (_, _, w) in zip(got, want):  # bit for bit (NaN payloads included)
        assert np.array(list(g.values())).view(np.int64).tolist() == np.array(list(w.values())).view(np.int64).tolist()
    assert any("taken by channel name" in r.getMessage() for r in caplog.records)


def _taking(d: Daemon) -> list:
    """The samples `d`'s engine is given from now on (`_advance`)."""
    taken: list = []
    advance = d._advance

    def spy(samples, tick_ns, redelivered=None):
        taken.extend(samples)
        return advance(samples, tick_ns, redelivered)

    d._advance = spy  # type: ignore[method-assign]
    return taken


def test_a_journal_whose_channels_nothing_names_is_not_replayed(bundle, messages, tmp_path, caplog):
    """Which channel each journalled value is of is not guessed. A state file of the format before (/2) with no
    turbine yet, from another bundle (a crash before the first periodic snapshot, then a model change), and a
    journal that follows a snapshot since deleted (the file deleted to start afresh): their frames were read in
    this bundle's channels, into the wrong channels (and, without a state file, published as a fresh engine's
    records of steps already published, from another engine's). Their samples are now counted as dropped and
    logged. The journal of a run that started with no state, with its state file gone, is replayed as before: it
    scored from a fresh engine too, and its records come again byte for byte. A crash while a refused state is
    set aside, after the journal was replayed into the fresh engine, emptied the journal before the fresh state
    was on disk: the restart found the old state and no journal. The fresh state is written first now."""
    from scada_tcn.runtime import daemon as daemon_module

    first = _daemon(bundle, tmp_path)
    first._restore_state()  # the snapshot of a fresh start: no turbine
    _feed(first, messages[:200])  # then the crash
    n = sum(len(f.samples) for f in Journal(tmp_path / "state.npz.journal", len(bundle.spec.channels)).read())
    doc = load_state(tmp_path / "state.npz")
    assert doc["channels"] == list(bundle.spec.channels) and not doc["engine"]["fleet"]["turbines"]
    fresh_run = tmp_path / "fresh_run"
    shutil.copytree(tmp_path, fresh_run, ignore=shutil.ignore_patterns("fresh_run"))
    save_state(tmp_path / "state.npz", {**{k: v for k, v in doc.items() if k not in ("sparkplug", "channels")},
                                        "format": "scada-runtime-state/2"})  # fmt: skip
    d = _daemon(_other_channels(bundle, tmp_path / "b", extra=False), tmp_path)
    taken = _taking(d)
    with caplog.at_level(logging.WARNING, logger="scada.runtime.daemon"):
        d._restore_state()
    assert taken == [] and d.metrics.value("scada_runtime_state_samples_dropped_total") == n > 0
    assert any("journal's samples are not replayed" in r.getMessage() for r in caplog.records)
    (fresh_run / "state.npz").unlink()  # a fresh run's journal, its state file gone
    d = _daemon(bundle, fresh_run)
    d._restore_state()
    assert _scores(d) == _scores(first) and d.metrics.value("scada_runtime_state_samples_dropped_total") == 0

    crashed = tmp_path / "crashed"
    (crashed / "b").mkdir(parents=True)
    first = _daemon(bundle, crashed)
    first._restore_state()
    _feed(first, messages[:200])
    first._save_state()  # turbines in the snapshot: the other bundle refuses it (their open bins' channels)
    _feed(first, messages[200:400])
    n = sum(len(f.samples) for f in Journal(crashed / "state.npz.journal", len(bundle.spec.channels)).read())
    deleted = tmp_path / "deleted"
    shutil.copytree(crashed, deleted)
    (deleted / "state.npz").unlink()  # the journal after a snapshot that is gone
    d = _daemon(bundle, deleted)
    taken = _taking(d)
    d._restore_state()
    assert taken == [] and not d.link.unacked() and d.metrics.value("scada_runtime_state_samples_dropped_total") == n

    other = _other_channels(bundle, crashed / "b", extra=False)  # a crash while the refused state is set aside
    real = daemon_module.write_state

    def power_cut(*args, **kwargs):
        raise OSError("the power went")

    daemon_module.write_state = power_cut
    try:
        with pytest.raises(OSError, match="the power went"):
            _daemon(other, crashed)._restore_state()
    finally:
        daemon_module.write_state = real
    d = _daemon(other, crashed)
    taken = _taking(d)
    with caplog.at_level(logging.WARNING, logger="scada.runtime.daemon"):
        d._restore_state()
    assert len(taken) == n > 0  # the journal was still there
    assert any("state file not used" in r.getMessage() for r in caplog.records)


def test_a_model_change_with_other_channels_carries_the_open_bins_by_channel_name(bundle, messages, tmp_path,
                                                                                  caplog):  # fmt: skip
    """A clean stop, then a start on a bundle whose channels differ (here reversed, with a channel more): the
    open bins' samples (acknowledged, in no closed step) were not carried (`state_samples_dropped_total`), while
    after a crash the journal's are. Each channel's values, out-of-range count and held value are now taken by
    name, and a channel the old bundle lacked has none."""
    first = _daemon(bundle, tmp_path)
    first._restore_state()
    _feed(first, messages[:203])
    first._shutdown()
    before = Engine.open_bins_in(load_state(tmp_path / "state.npz")["engine"])
    other = _other_channels(bundle, tmp_path, extra=True)
    d = _daemon(other, tmp_path)
    with caplog.at_level(logging.WARNING, logger="scada.runtime.daemon"):
        d._restore_state()
    assert d.metrics.value("scada_runtime_state_samples_dropped_total") == 0
    after = Engine.open_bins_in(d.engine.state_dict())
    assert set(after) == set(before) and sum(len(b["ts_ns"]) for b in before.values()) > 0
    for t, old in before.items():
        new = after[t]
        assert new["ts_ns"].tolist() == old["ts_ns"].tolist()
        at = {c: i for i, c in enumerate(old["channels"].tolist())}
        for j, c in enumerate(new["channels"].tolist()):
            col = new["values"][:, j].view(np.int64).tolist()
            want = old["values"][:, at[c]] if c in at else np.full(len(old["ts_ns"]), np.nan)
            assert col == np.asarray(want, dtype=np.float64).view(np.int64).tolist(), (t, c)
