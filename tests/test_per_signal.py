"""Per-signal scoring end to end: a group-mask model of the tiny farm, exported per signal, scored offline
(`scada-infer`), by `scada-runtime replay` and by the daemon through a real Mosquitto, with the streaming engine
(step graph, the default) and the window engine.

The replayed slice starts four days before the test split, so by the test split the edge's aggregators (EWMA with
a 1 h half-life here, stuck runs) have forgotten where they started and must equal the offline tracker's, which
was warmed up over the validation split: residuals, predictions, aggregates, ratios and alerts alike.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from scada_tcn.runtime.bundle import load_bundle
from scada_tcn.runtime.daemon_config import MappingCfg
from scada_tcn.runtime.engine import Engine
from scada_tcn.runtime.records import iso_utc
from scada_tcn.runtime.replay import replay
from scada_tcn.runtime.scorer import OnnxScorer
from scada_tcn.runtime.state_file import load_state, save_state
from scada_tcn.runtime.stream import StreamScorer
from tests.mosquitto import (
    SITE,
    Collector,
    DaemonThread,
    daemon_config,
    double_levels,
    read_slice,
    reexported,
    scores_through,
    to_samples,
    wait_for,
    write_csv,
)

SLICE = ("2024-01-24T00:00:00+00:00", "2024-02-03T00:00:00+00:00")


@pytest.fixture(scope="module")
def bundle(signal_run):
    return load_bundle(signal_run[0])


@pytest.fixture(scope="module")
def rows(tiny_run):
    return read_slice(tiny_run.synth_dir / "scada.csv", *SLICE)


def _replay(bundle, rows, tmp: Path, scorer) -> dict[tuple[str, str], dict]:
    header, body = rows
    engine = Engine(bundle, scorer, grace_seconds=0.0, max_turbines=100, max_batch=512)
    replay(engine, write_csv(tmp / "slice.csv", header, body), MappingCfg(), tmp / "scores.jsonl")
    docs = [json.loads(line) for line in (tmp / "scores.jsonl").read_text().splitlines()]
    return {(d["turbine"], d["ts"]): d for d in docs}


@pytest.fixture(scope="module")
def replayed(bundle, rows, tmp_path_factory) -> dict[tuple[str, str], dict]:
    """The streaming engine (the step graph), as `scada-runtime replay` runs it by default."""
    return _replay(bundle, rows, tmp_path_factory.mktemp("replay"), StreamScorer.from_bundle(bundle))


def test_bundle_holds_monitors_stuck_checks_and_levels(bundle):
    sig = bundle.signals
    assert bundle.scoring.kind == "per_signal" and bundle.calibration is None
    names = sig.spec.monitor_names
    assert "power" in names and not any(n.endswith(("_delta", "_rmean6", "_rstd6")) for n in names)
    assert {f"stuck:{c}" for c in bundle.spec.repeat_channels} <= set(names)
    assert len(sig.levels.pooled) == len(names) and min(sig.levels.pooled) > 0
    assert sig.spec.skip_flags == ("stopped",) and sig.halflife == 6.0
    assert bundle.parity is not None and bundle.parity.passed
    assert bundle.stream is not None and bundle.dims.RF <= bundle.dims.L
    case = bundle.parity.cases["stream_consecutive"]
    assert case["n_windows"] > 1500 and case["outputs"]["step/resid"]["max_abs"] < 1e-5


def test_export_cli_reports_the_levels_of_a_per_signal_bundle(bundle, signal_run):
    lv = bundle.signals.levels
    text = (signal_run[0].parent / "export.txt").read_text()
    assert f"levels p{lv.percentile:g}: {len(lv.pooled)} monitors on {lv.n_steps} validation steps" in text
    assert "streams (step.onnx)" in text and "parity within atol=1e-05" in text


def test_stream_engine_equals_window_engine(bundle, rows, replayed, tmp_path):
    """The window engine re-scores every window; the streaming engine steps once per step: the same records."""
    window = _replay(bundle, rows, tmp_path, OnnxScorer(bundle))
    assert set(window) == set(replayed)
    n = 0
    for k, w in window.items():
        s = replayed[k]
        assert (w["status"], w.get("alert"), w.get("score") is None) == (s["status"], s.get("alert"),
                                                                          s.get("score") is None), k  # fmt: skip
        if w["status"] == "ok" and w["score"] is not None:
            assert w["score"] == pytest.approx(s["score"], abs=1e-5), k
            sg = {g["group"]: g for g in s["groups"]}
            for a in w["groups"]:  # by group: equal ratios (stuck runs at 0, say) may be listed in either order
                b = sg[a["group"]]
                assert a["ratio"] == pytest.approx(b["ratio"], abs=1e-5), (k, a, b)
                if a["signal"] == b["signal"]:  # two monitors of a group at the same ratio may swap
                    assert a["value"] == pytest.approx(b["value"], abs=1e-5), (k, a, b)
            for j, name in enumerate(bundle.spec.feature_names):  # in scaled units, where the graphs compute
                diff = np.subtract(w["forecast"][name], s["forecast"][name]) / bundle.scaler.scale[j]
                assert np.abs(diff).max() <= 1e-5, (k, name)
            n += 1
    assert n > 2000


@pytest.mark.parametrize("graph", ["step", "window"])
def test_replay_equals_offline_inference(bundle, replayed, tiny_run, graph):
    """Every test-split step of the slice: the same score, per-group ratios, values and alert state, whichever
    graph scores offline (the step graph by default; the window graph is the check across engines)."""
    assert _steps_equal_to_offline(bundle, replayed, tiny_run, graph) > 1500


def _group_halflife(doc: dict) -> None:
    doc["signals"]["group_halflife"] = {"power": 3.0, doc["signals"]["spec"]["groups"][-1]: 12.0}


def test_group_half_lives_reach_the_edge_and_the_offline_reference(bundle, rows, replayed, tiny_run, tmp_path):
    """A bundle with half-lives per group (`infer.signals.group_halflife`): the replay through the streaming engine
    equals offline inference over the same bundle at every step, and the groups given their own memory read other
    values than under the bundle's one half-life, the others the same."""
    other = reexported(bundle, tmp_path / "groups", _group_halflife)
    last = bundle.signals.spec.groups[-1]
    assert other.signals.group_halflife == {"power": 3.0, last: 12.0} and other.model_id == bundle.model_id
    mine = _replay(other, rows, tmp_path, StreamScorer.from_bundle(other))
    assert _steps_equal_to_offline(other, mine, tiny_run) > 1500
    changed = {g["group"] for k, d in mine.items() if d["status"] == "ok" for g in d["groups"]
               if g not in replayed[k]["groups"]}  # fmt: skip
    assert changed == {"power", last}


def _steps_equal_to_offline(bundle, replayed: dict, tiny_run, graph: str = "auto") -> int:
    """Assert that every test-split step of `replayed` (records by (turbine, ts)) has offline inference's score,
    per-group ratios, values and alert state over the same bundle; the number of steps compared."""
    from scada_tcn.trainer.evaluation.offline import apply_alerts, infer_split, setup_from_bundle

    setup = setup_from_bundle(bundle.path, tiny_run.cfg().data.paths.processed_dir, graph=graph)
    assert setup.graph == ("window" if graph == "window" else "step")
    res, _, _ = infer_split(setup, "test")
    apply_alerts(res, setup.alerting)
    groups = bundle.signals.spec.groups
    n = 0
    for r in res.to_dict("records"):
        d = replayed.get((r["turbine_id"], r["t_end"].strftime("%Y-%m-%dT%H:%M:%SZ")))
        if d is None:  # after the slice
            continue
        where = (r["turbine_id"], r["t_end"])
        assert d["status"] == "ok", d
        if np.isnan(r["score"]):
            assert d["score"] is None
            continue
        assert d["score"] == pytest.approx(r["score"], abs=1e-5), where
        by_group = {g["group"]: g for g in d["groups"]}
        for g in groups:
            if np.isfinite(r[f"ratio_{g}"]):
                m = bundle.signals.spec.monitor_names[int(r[f"top_{g}"])]
                assert by_group[g]["ratio"] == pytest.approx(r[f"ratio_{g}"], abs=1e-5), (g, where)
                assert by_group[g]["signal"] == m and by_group[g]["value"] == pytest.approx(r[f"value_{m}"], abs=1e-5)
        assert d["alert"] == r["alert_on"], where
        n += 1
    return n


def test_daemon_through_mosquitto_publishes_the_replay(broker, bundle, rows, replayed):
    header, body = rows
    col = Collector(broker.url, [f"scada/{SITE}/+/score"])
    wait_for(lambda: col.ready(), 10, "collector connect")
    d = DaemonThread(daemon_config(broker.url), bundle, StreamScorer.from_bundle(bundle))
    got = scores_through(broker.url, d, col, header, body, 120)
    assert d.stop() == 0
    n = 0
    for k, v in got.items():
        a, b = json.loads(v), replayed[k]
        assert a["status"] == b["status"], k
        if a["status"] == "ok" and b["score"] is not None:
            assert a["score"] == pytest.approx(b["score"], abs=1e-5), k
            assert [g["signal"] for g in a["groups"]] == [g["signal"] for g in b["groups"]], k
            assert a["alert"] == b["alert"], k
            n += 1
    assert n > 2000
    col.close()


def test_engine_restart_resumes_every_aggregator(bundle, rows, tmp_path):
    """Stopped mid-stream, saved and loaded into a fresh engine: the same records as an uninterrupted run."""
    header, body = rows
    samples = to_samples(header, body, bundle.spec.channels)

    def records(outputs) -> dict:
        return {(json.loads(o.payload)["turbine"], json.loads(o.payload)["ts"]): o.payload
                for o in outputs if o.kind == "score"}  # fmt: skip

    whole = Engine(bundle, StreamScorer.from_bundle(bundle), 0.0, 100, 512)
    for s in samples:
        whole.ingest(s)
    want = records(whole.flush(final=True))
    cut = len(samples) * 2 // 3
    one = Engine(bundle, StreamScorer.from_bundle(bundle), 0.0, 100, 512)
    for s in samples[:cut]:
        one.ingest(s)
    got = records(one.flush())
    state = one.state_dict()
    assert state["signals"]["aggregator"] is not None and state["signals"]["stuck"] is not None
    save_state(tmp_path / "state.npz", state)
    two = Engine(bundle, StreamScorer.from_bundle(bundle), 0.0, 100, 512)
    two.load_state_dict(load_state(tmp_path / "state.npz"))
    for s in samples[cut:]:
        two.ingest(s)
    got |= records(two.flush(final=True))
    assert set(got) == set(want)
    assert sum(got[k] == want[k] for k in want) == len(want), "a restart changed a published record"


def _no_baseline(doc: dict) -> None:
    doc["signals"]["baseline"] = "none"


def test_every_record_names_the_bundle_that_scored_it(bundle, replayed, tmp_path):
    """Records name the model and the whole bundle: a re-export with other levels is the same model, another
    bundle, and its records say so."""
    assert {d["model_id"] for d in replayed.values()} == {bundle.model_id}
    assert {d["bundle_id"] for d in replayed.values()} == {bundle.bundle_id}
    assert load_bundle(bundle.path).bundle_id == bundle.bundle_id  # a property of the files
    other = reexported(bundle, tmp_path / "levels", double_levels)
    assert other.model_id == bundle.model_id and other.bundle_id != bundle.bundle_id


@pytest.mark.parametrize("edit", [double_levels, _no_baseline, _group_halflife])
def test_a_state_resumes_on_a_reexport_and_restarts_only_aggregates_of_another_basis(bundle, rows, tmp_path, edit):
    """A gateway's state resumes on a re-export of its model with other settings (no warm-up). Levels only compare
    the aggregates, which carry on exactly; another baseline changes what they average, and they start again
    rather than mix two kinds of deviation for a few half-lives."""
    header, body = rows
    samples = to_samples(header, body, bundle.spec.channels)
    cut = len(samples) * 2 // 3

    def run(b, part, state=None):
        engine = Engine(b, StreamScorer.from_bundle(b), 0.0, 100, 512)
        resumed = None if state is None else engine.load_state_dict(state)
        for s in part:
            engine.ingest(s)
        docs = [json.loads(o.payload) for o in engine.flush(final=state is not None) if o.kind == "score"]
        return engine, resumed, {(d["turbine"], d["ts"]): d for d in docs}

    one, _, _ = run(bundle, samples[:cut])
    state = one.state_dict()
    other = reexported(bundle, tmp_path / "other", edit)
    _, resumed, after = run(other, samples[cut:], state)
    restarted = edit is not double_levels  # another baseline or memory: the aggregates start again
    assert resumed == (bundle.bundle_id, restarted)
    assert {d["bundle_id"] for d in after.values()} == {other.bundle_id}
    assert not any(d["status"] == "warmup" for d in after.values())  # the layer state resumed
    first = {t: min(ts for u, ts in after if u == t) for t, _ in after}
    assert all(after[t, ts]["status"] == "ok" for t, ts in first.items())
    if restarted:  # the aggregates and runs start again: at first only the stuck checks' runs (0) are defined
        firsts = [g for k in first.items() for g in after[k]["groups"]]
        assert all(g["signal"].startswith("stuck:") and g["value"] == 0 for g in firsts)
        assert any(not g["signal"].startswith("stuck:") for d in after.values() for g in d["groups"])
    else:  # the aggregates carried on: the uninterrupted run's values, step for step
        _, _, whole = run(other, samples)
        assert all(after[k]["groups"] == whole[k]["groups"] for k in after)


def test_a_state_saved_before_states_named_their_bundle_resumes(bundle, rows):
    """A state of the runtime before records carried the bundle id (no bundle_id, no signals_basis, waiting records
    without it) resumes as before. Its waiting records are scored when their fleet step is released (aggregates,
    levels, alert): by this bundle, which they name, as every other record."""
    header, body = rows
    samples = to_samples(header, body, bundle.spec.channels)
    one = Engine(bundle, StreamScorer.from_bundle(bundle), 0.0, 100, 512)
    for s in samples[: len(samples) // 2]:
        one.ingest(s)
    one.flush()
    state = one.state_dict()
    del state["bundle_id"], state["signals_basis"]
    for item in state["pending"]:
        del item["record"]["bundle_id"]
    assert state["pending"], "no record waits for its fleet step: the case is not exercised"
    two = Engine(bundle, StreamScorer.from_bundle(bundle), 0.0, 100, 512)
    assert two.load_state_dict(state) == (None, False)
    for s in samples[len(samples) // 2 :]:
        two.ingest(s)
    docs = [json.loads(o.payload) for o in two.flush(final=True) if o.kind == "score"]
    assert {d["bundle_id"] for d in docs} == {bundle.bundle_id}
    assert {(d["turbine"], d["ts"]) for d in docs} >= {(p["record"]["turbine"], iso_utc(p["record"]["end_ns"]))
                                                       for p in state["pending"]}  # fmt: skip


def test_a_stuck_channel_is_named_and_alerts(bundle, rows, tmp_path):
    """Freeze one turbine's gearbox bearing temperature for two days: its stuck check crosses its level."""
    header, body = rows
    ti, ci, ii = header.index("timestamp"), header.index("gearbox_bearing_temp"), header.index("turbine_id")
    turbine = body[0][ii]
    start, end = pd.Timestamp("2024-01-30T00:00:00Z"), pd.Timestamp("2024-02-01T00:00:00Z")
    frozen = None
    out = []
    for r in body:
        r = list(r)
        if r[ii] == turbine and start <= pd.Timestamp(r[ti]) < end and r[ci] != "":
            frozen = frozen if frozen is not None else r[ci]
            r[ci] = frozen
        out.append(r)
    engine = Engine(bundle, StreamScorer.from_bundle(bundle), 0.0, 100, 512)
    replay(engine, write_csv(tmp_path / "frozen.csv", header, out), MappingCfg(), tmp_path / "scores.jsonl")
    docs = [json.loads(line) for line in (tmp_path / "scores.jsonl").read_text().splitlines()]
    mine = [d for d in docs if d["turbine"] == turbine and d["status"] == "ok" and d["score"] is not None]
    worst = max(mine, key=lambda d: d["score"])
    assert worst["groups"][0]["signal"] == "stuck:gearbox_bearing_temp", worst["groups"][:2]
    assert any(d["alert"] for d in mine if start <= pd.Timestamp(d["ts"]) < end)


def _excursion_then(bundle, rows, tmp_path, magnitude: float, after) -> list[dict]:
    """A gearbox excursion of `magnitude` (11:10-11:40) on the first turbine, then `after(row)` on its rows of
    11:50-13:40 (a changed row, or None to drop it), replayed: the turbine's ok records."""
    header, body = rows
    ti, ii = header.index("timestamp"), header.index("turbine_id")
    hot = [header.index("gearbox_oil_temp"), header.index("gearbox_bearing_temp")]
    turbine = body[0][ii]
    out = []
    for r in body:
        r, t = list(r), pd.Timestamp(r[ti])
        if r[ii] == turbine and pd.Timestamp("2024-01-28T11:10Z") <= t <= pd.Timestamp("2024-01-28T11:40Z"):
            r = [str(float(r[c]) + magnitude) if c in hot and r[c] != "" else r[c] for c in range(len(r))]
        if r[ii] == turbine and pd.Timestamp("2024-01-28T11:50Z") <= t <= pd.Timestamp("2024-01-28T13:40Z"):
            r = after(r)
        if r is not None:
            out.append(r)
    engine = Engine(bundle, StreamScorer.from_bundle(bundle), 0.0, 100, 512)
    replay(engine, write_csv(tmp_path / "table.csv", header, out), MappingCfg(), tmp_path / "scores.jsonl")
    return [d for line in (tmp_path / "scores.jsonl").read_text().splitlines()
            if (d := json.loads(line))["turbine"] == turbine and d["status"] == "ok"]  # fmt: skip


def _alerts_skip(bundle, mine: list[dict], held: list[bool]) -> None:
    """Each record's alert is the state machine run over the records not `held` (those hold it)."""
    from scada_tcn.runtime.alerts import AlertState

    a = bundle.alerting
    state = AlertState(a.T_on, a.T_off, a.N_on, a.N_off)
    on = False
    for d, h in zip(mine, held):
        if not h and d["score"] is not None:
            on = bool(state.step([0], [d["score"]], [1.0]).on[0])
        assert d["alert"] == on, (d["ts"], d["regime"], d["missing_now"], d["score"])


@pytest.mark.parametrize("magnitude", [40.0, 60.0])
def test_a_stop_holds_the_alert_as_offline_inference_does(bundle, rows, tmp_path, magnitude):
    """A short gearbox excursion, then the turbine stops (status 2: its steps are skipped). The skipped steps
    carry the frozen aggregate as their score; they stepped the alert state machine, so one step over the level
    followed by a stop met the N_on debounce and raised the alert during the stop. Offline inference (which
    calibration and evaluation use) leaves skipped steps out of the alerting: the edge now holds the alert over
    them too, so its alerts are the state machine run over the steps that are not skipped."""
    si = rows[0].index("status")
    mine = _excursion_then(bundle, rows, tmp_path, magnitude, lambda r: r[:si] + ["2"] + r[si + 1 :])
    skipped = [d["regime"] == "skipped" for d in mine]
    assert sum(skipped) >= 12 and any(d["score"] > 1 for d in mine if d["regime"] == "skipped")
    _alerts_skip(bundle, mine, skipped)


@pytest.mark.parametrize("magnitude", [40.0, 60.0])
def test_a_turbine_whose_feed_stops_holds_its_alert(bundle, rows, tmp_path, magnitude):
    """A short gearbox excursion, then the turbine sends nothing for two hours. While its window stays present
    enough, the empty steps are scored (status ok, every feature missing) with the aggregate frozen over the gap,
    and they stepped the alert state machine: the excursion and the silence met the N_on debounce and raised the
    alert at a step the turbine sent nothing (the review: on at the second empty step; with the feed on, no
    alert). A step where no monitored or stuck-checked feature is present is no new evidence: the alert holds,
    here and in offline inference (the same tracker)."""
    mine = _excursion_then(bundle, rows, tmp_path, magnitude, lambda r: None)
    silent = [d["missing_now"] == 1.0 for d in mine]
    assert sum(silent) >= 6 and any(d["score"] > 1 for d, s in zip(mine, silent) if s)
    _alerts_skip(bundle, mine, silent)


def test_every_change_of_the_alert_flag_is_a_published_transition(bundle, rows, tmp_path):
    """A stuck channel raises the alert; then the turbine's data stops, and after 12 hours the channel alone comes
    back, moving (insufficient_data records: the window lacks the other channels). Those steps used to step the
    alert state machine, the stuck check's run ended, and an insufficient_data record publishes no transition:
    the alert went off silently (at 07:00 here), the alert topic never said off, and the score records' `alert`
    contradicted it. Now unscored steps hold the alert: every change of `alert` between a turbine's records is
    an alert-topic transition at that step, and each transition is such a change."""
    header, body = rows
    ti, ci, ii = header.index("timestamp"), header.index("gearbox_bearing_temp"), header.index("turbine_id")
    values = [i for i, h in enumerate(header) if h not in ("timestamp", "turbine_id")]
    turbine = body[0][ii]
    start, end = pd.Timestamp("2024-01-30T00:00:00Z"), pd.Timestamp("2024-02-01T00:00:00Z")
    gap = (pd.Timestamp("2024-01-30T18:00:00Z"), pd.Timestamp("2024-01-31T18:00:00Z"))
    frozen, out = None, []
    for r in body:
        r, t = list(r), pd.Timestamp(r[ti])
        if r[ii] == turbine and gap[0] <= t < gap[1]:  # no data, then the channel alone, moving again
            r = ["" if c in values and (c != ci or t < gap[0] + pd.Timedelta("12h")) else r[c] for c in range(len(r))]
        elif r[ii] == turbine and start <= t < end and r[ci] != "":
            frozen = frozen if frozen is not None else r[ci]
            r[ci] = frozen
        out.append(r)
    engine = Engine(bundle, StreamScorer.from_bundle(bundle), 0.0, 100, 512)
    replay(engine, write_csv(tmp_path / "gap.csv", header, out), MappingCfg(), tmp_path / "scores.jsonl",
           tmp_path / "alerts.jsonl")  # fmt: skip
    mine = [d for line in (tmp_path / "scores.jsonl").read_text().splitlines()
            if (d := json.loads(line))["turbine"] == turbine and d["status"] != "warmup"]  # fmt: skip
    assert any(d["status"] == "insufficient_data" and gap[0] < pd.Timestamp(d["ts"]) <= gap[1] for d in mine)
    changes = {b["ts"]: "on" if b["alert"] else "off" for a, b in zip(mine, mine[1:]) if a["alert"] != b["alert"]}
    events = [json.loads(line) for line in (tmp_path / "alerts.jsonl").read_text().splitlines()]
    published = {e["ts"]: e["state"] for e in events if e["turbine"] == turbine}
    assert "on" in published.values() and changes == published


def test_replay_in_small_chunks_writes_the_same_bytes(bundle, rows, tmp_path):
    """A table parsed 997 rows at a time and fed 7 steps of each turbine at a time (flushing after each) replays
    exactly as read and fed whole; the progress reports every chunk read, then about every 997 rows scored."""
    header, body = rows
    table = write_csv(tmp_path / "slice.csv", header, body)
    feed = 7 * len({r[header.index("turbine_id")] for r in body})  # rows per feed
    outs = []
    for chunk, steps in ((10**9, 10**9), (997, 7)):
        engine = Engine(bundle, StreamScorer.from_bundle(bundle), grace_seconds=0.0, max_turbines=100, max_batch=512)
        out = tmp_path / f"scores-{chunk}.jsonl"
        seen: list[tuple[int, int]] = []
        summary = replay(engine, table, MappingCfg(), out, chunk_rows=chunk, feed_steps=steps, feed_min_rows=1,
                         progress=lambda c, seen=seen: seen.append((c["read"], c["rows"])))  # fmt: skip
        assert summary["read"] == summary["rows"] == len(body)
        outs.append(out.read_bytes())
    assert outs[0] == outs[1] and outs[0].count(b"\n") > 2000
    reads = [0] + [min(len(body), 997 * (i + 1)) for i in range(-(-len(body) // 997))]  # 0: before the first
    assert seen[: len(reads)] == [(r, 0) for r in reads]
    scored = [n for r, n in seen[len(reads) :] if r == len(body)]
    assert len(scored) == len(seen) - len(reads) and scored[-1] == len(body)
    gaps = np.diff([0, *scored])
    assert ((gaps[:-1] >= 997) & (gaps[:-1] < 997 + feed)).all() and 0 < gaps[-1] < 997 + feed
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scores-1000000000.jsonl", "scores-997.jsonl", "slice.csv"]


@pytest.mark.parametrize("newest_first", [False, True])
def test_replay_scores_a_table_by_turbine_as_the_same_rows_by_time(bundle, rows, tmp_path, newest_first):
    """Per-turbine exports concatenated (each turbine's rows together, in either turbine order) read 997 rows at a
    time give the records of the time-sorted table: every turbine's step meets its peers' same step. Fed in file
    order, a chunk of one turbine's steps went out before its peers' steps arrived."""
    header, body = rows
    ti = header.index("turbine_id")
    by_turbine = sorted(body, key=lambda r: r[ti], reverse=newest_first)  # stable: each turbine's rows in order
    assert by_turbine != body
    outs = []
    for name, table in (("time", body), ("turbine", by_turbine)):
        engine = Engine(bundle, StreamScorer.from_bundle(bundle), grace_seconds=0.0, max_turbines=100, max_batch=512)
        out = tmp_path / f"scores-{name}.jsonl"
        summary = replay(engine, write_csv(tmp_path / f"{name}.csv", header, table), MappingCfg(), out,
                         chunk_rows=997, feed_steps=7, feed_min_rows=1)  # fmt: skip
        assert summary["rows"] == len(body)
        outs.append(sorted(out.read_bytes().splitlines()))  # within a fleet step, records follow the turbines' slots
    assert outs[0] == outs[1] and len(outs[0]) > 2000
    alerts = sum(json.loads(line).get("alert", False) for line in outs[0])
    assert alerts > 0


def _random_steps(bundle, T: int, n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Random step-graph inputs of T steps of n turbines: X (T, n, F), M_miss and Flags, 10 % missing."""
    d, rng = bundle.dims, np.random.default_rng(seed)
    X = rng.standard_normal((T, n, d.F)).astype(np.float32)
    M = (rng.random((T, n, d.F)) > 0.1).astype(np.float32)
    return X, M, (rng.random((T, n, d.R)) > 0.8).astype(np.float32)


def test_step_graph_outputs_do_not_depend_on_the_batch(bundle):
    """A turbine stepped alone, in a batch of 3 or in a batch of 40 gets the same bits (live and replay batch the
    fleet differently; the published bytes must not change); so does a fleet step taken in two runs of consecutive
    slots (the part of it each loop iteration of the daemon took: views of the rings, not copies), and the rings
    it leaves are those of the whole step."""
    n, T = 40, 12
    X, M, Fl = _random_steps(bundle, T, n, seed=0)
    whole, alone, three, halves = (StreamScorer.from_bundle(bundle) for _ in range(4))
    for t in range(T):
        a = whole.step(np.arange(n), t, X[t], M[t], Fl[t])
        b = alone.step(np.array([7]), t, X[t, 7:8], M[t, 7:8], Fl[t, 7:8])
        c = three.step(np.array([2, 7, 30]), t, X[t, [2, 7, 30]], M[t, [2, 7, 30]], Fl[t, [2, 7, 30]])
        cut = 5 + 3 * t  # a different split at each step
        h = [
            halves.step(np.arange(lo, hi), t, X[t, lo:hi], M[t, lo:hi], Fl[t, lo:hi]) for lo, hi in ((cut, n), (0, cut))
        ]
        for k in (0, 1):  # residuals and predictions
            np.testing.assert_array_equal(a[k][7:8], b[k])
            np.testing.assert_array_equal(a[k][[2, 7, 30]], c[k])
            np.testing.assert_array_equal(a[k], np.concatenate([h[1][k], h[0][k]]))
    for r1, r2 in zip(whole.rings, halves.rings):
        np.testing.assert_array_equal(r1, r2)
    if whole.has_h:
        for x, y in zip((whole.pool.ring, *whole.pool.levels), (halves.pool.ring, *halves.pool.levels)):
            np.testing.assert_array_equal(x, y)
    empty = whole.step(np.zeros(0, dtype=np.int64), T, X[0, :0], M[0, :0], Fl[0, :0])  # no turbine steps
    assert empty.resid.shape == (0, X.shape[2]) and empty.pred.shape == (0, X.shape[2])


def test_a_fleet_step_larger_than_one_call_is_scored_in_calls_with_the_same_bits(bundle, monkeypatch):
    """More turbines than `MAX_CALL_TURBINES` step in several graph calls (views of consecutive slots for the
    whole fleet, copies for a part of it): the outputs and the state they leave equal one call's, bit for bit."""
    from scada_tcn.runtime import stream

    n, T = 23, 10
    X, M, Fl = _random_steps(bundle, T, n, seed=1)
    one, split = StreamScorer.from_bundle(bundle), StreamScorer.from_bundle(bundle)
    part = np.array([0, 3, 4, 5, 9, 10, 11, 12, 17, 20, 22])
    for t in range(T):
        slots = part if t % 3 == 2 else np.arange(n)  # every third step a part of the fleet
        a = one.step(slots, t, X[t, slots], M[t, slots], Fl[t, slots])
        monkeypatch.setattr(stream, "MAX_CALL_TURBINES", 4)
        b = split.step(slots, t, X[t, slots], M[t, slots], Fl[t, slots])
        monkeypatch.setattr(stream, "MAX_CALL_TURBINES", 10**6)
        for x, y in zip(a, b):
            if x is not None:
                np.testing.assert_array_equal(x, y)
    for r1, r2 in zip(one.rings, split.rings):
        np.testing.assert_array_equal(r1, r2)


def test_levels_per_turbine_for_some_groups_keep_the_pooled_levels_of_the_others(signal_run, bundle):
    """`turbine_groups`: the named groups' monitors get each turbine's own level, every other monitor the pooled
    one; without it every monitor is per turbine."""
    from scada_tcn.trainer.config import load_config
    from scada_tcn.trainer.data.store import PreparedData
    from scada_tcn.trainer.evaluation.signals import fit_levels, signal_steps
    from tests.conftest import CONFIG

    base = [*signal_run[1], "infer.signals.per_turbine=true", "infer.signals.min_steps=1"]
    scorer = OnnxScorer(bundle)
    cfg_all = load_config(CONFIG, base)
    steps = signal_steps(PreparedData(cfg_all), cfg_all, ("val",), _resid(scorer))
    every, _ = fit_levels(steps, PreparedData(cfg_all), cfg_all)
    cfg_some = load_config(CONFIG, [*base, "infer.signals.turbine_groups=[power]"])
    some, _ = fit_levels(steps, PreparedData(cfg_some), cfg_some)
    own = np.array([n == "power" for n in some.spec.monitor_names])
    assert own.sum() == 1 and some.levels.pooled == every.levels.pooled
    assert set(some.levels.per_turbine) == set(every.levels.per_turbine) and len(some.levels.per_turbine) > 1
    for t, lv in some.levels.per_turbine.items():
        lv, mine = np.array(lv), np.array(every.levels.per_turbine[t])
        np.testing.assert_array_equal(lv[own], mine[own])
        np.testing.assert_array_equal(lv[~own], np.array(every.levels.pooled)[~own])
    assert len({lv[int(np.flatnonzero(own)[0])] for lv in some.levels.per_turbine.values()}) > 1


def test_a_turbine_level_that_comes_out_at_or_below_zero_keeps_the_pooled_level(signal_run, bundle):
    """A turbine whose power aggregate never rises above its baseline on validation (it runs below its peers, or
    is predicted exactly) had its own level floored at 1e-6, so any later rise alerted with a ratio in the
    millions (a user's 6-turbine farm, twenty-second session: 7 of 30 own levels, a score of 1.4e6). It keeps the
    pooled level for that monitor instead, said in the log."""
    import dataclasses

    from scada_tcn.trainer.config import load_config
    from scada_tcn.trainer.data.store import PreparedData
    from scada_tcn.trainer.evaluation.signals import fit_levels, signal_steps
    from tests.conftest import CONFIG

    cfg = load_config(CONFIG, [*signal_run[1], "infer.signals.per_turbine=true", "infer.signals.min_steps=1"])
    steps = signal_steps(PreparedData(cfg), cfg, ("val",), _resid(OnnxScorer(bundle)))
    before, _ = fit_levels(steps, PreparedData(cfg), cfg)
    spec = before.spec
    f = list(spec.features).index("power")
    m = list(spec.monitor_names).index("power")
    low = {"above": -100.0, "below": 100.0, "both": 0.0}[spec.direction[f]]  # the smallest deviation there is
    quiet = sorted(before.levels.per_turbine)[0]
    resid = steps.resid.copy()
    resid[steps.turbine == quiet, f] = low
    said: list[str] = []
    after, _ = fit_levels(dataclasses.replace(steps, resid=resid), PreparedData(cfg), cfg, said.append)
    assert after.levels.per_turbine[quiet][m] == after.levels.pooled[m] > 1e-3
    assert any(f"{quiet} power" in line and "never rose above its baseline" in line for line in said), said
    assert all(x > 1e-6 for lv in after.levels.per_turbine.values() for x in lv)


def test_a_centred_level_puts_the_margin_on_the_spread_above_the_median_aggregate():
    """level_centred: a monitor's level is its median aggregate c + margin x (percentile p - c), so a turbine
    that runs above its peers is not given the margin on its offset too, and one that runs a little below them
    gets a level above its typical value instead of none; stuck checks are unchanged."""
    from scada_tcn.trainer.config import load_config
    from scada_tcn.trainer.evaluation.signals import _levels
    from tests.conftest import CONFIG

    rng = np.random.default_rng(0)
    above = 2.0 + rng.uniform(-1, 1, 999)  # runs above its peers: median 2, max < 3
    below = -1.2 + rng.uniform(-1, 1, 999)  # runs below them: every aggregate < 0
    values = np.stack([above, below, rng.integers(0, 30, 999).astype(float)], axis=1)
    values[::7, 0] = np.nan  # steps without a value are left out
    ov = ["infer.signals.level_margin=2.5", "infer.signals.percentile=100", "infer.signals.stuck_margin=1.5"]
    plain = _levels(values, 2, load_config(CONFIG, ov))
    centred = _levels(values, 2, load_config(CONFIG, [*ov, "infer.signals.level_centred=true"]))
    for j in range(2):
        v = values[:, j][np.isfinite(values[:, j])]
        c, p = np.median(v), v.max()
        assert plain[j] == pytest.approx(2.5 * p) and centred[j] == pytest.approx(c + 2.5 * (p - c))
    assert centred[0] < plain[0] and plain[1] < 0 < centred[1]
    assert centred[2] == plain[2] == 1.5 * values[:, 2].max()


def test_series_passes_give_every_window_s_newest_residuals(signal_run, monkeypatch):
    """scada-export fits the residual scales and levels from passes over each turbine's series
    (`SeriesResiduals`); a step's residuals and predictions equal those of its L-step window's newest step at every
    step of the validation split, across the passes' edges (passes of 300 steps here), and a model whose
    receptive field exceeds L is refused."""
    import torch

    from scada_tcn.trainer.data.store import PreparedData
    from scada_tcn.trainer.evaluation import signals as sig
    from scada_tcn.trainer.model.reference import build_reference, checkpoint_config
    from scada_tcn.trainer.model.signals import SignalModule

    ckpt = torch.load(signal_run[0].parent / "run" / "checkpoints" / "best.pt", weights_only=False)
    cfg = checkpoint_config(ckpt)
    module = build_reference(ckpt, cfg).scoring
    module.set_scale(torch.linspace(0.5, 2.0, module.F))
    data = PreparedData(cfg)
    monkeypatch.setattr(sig, "SERIES_STEPS", 300)
    windows = sig.signal_steps(data, cfg, ("val",), sig.torch_residuals(module))
    series = sig.signal_steps(data, cfg, ("val",), sig.SeriesResiduals(module))
    assert np.unique(windows.turbine[windows.scored], return_counts=True)[1].min() > 2 * 300  # several passes
    for k in ("turbine", "t_end", "scored", "present", "flags", "repeat", "split", "label"):
        np.testing.assert_array_equal(getattr(series, k), getattr(windows, k), err_msg=k)
    np.testing.assert_allclose(series.resid, windows.resid, rtol=0, atol=1e-5)
    np.testing.assert_allclose(series.pred, windows.pred, rtol=0, atol=1e-5)
    tdir = sorted((Path(data.dir) / "turbines").iterdir())[0]  # steps with gaps between them (unscored windows)
    X, M, Fl = (np.load(tdir / f"{n}.npy") for n in ("X", "M_miss", "Flags"))
    rows = np.arange(cfg.data.windowing.L - 1, len(X), 7)
    win = rows[:, None] + np.arange(-(cfg.data.windowing.L - 1), 1)[None, :]
    want = sig.torch_residuals(module)(*(np.ascontiguousarray(a[win], dtype=np.float32) for a in (X, M, Fl)))
    for got, ref in zip(sig.SeriesResiduals(module)(X, M, Fl, rows), want):
        np.testing.assert_allclose(got, ref, rtol=0, atol=1e-5)
    assert [a.shape for a in sig.SeriesResiduals(module)(X, M, Fl, rows[:0])] == [(0, module.F)] * 2  # no rows
    short = SignalModule(module.model, module.model.receptive_field - 1, module.group_of)
    with pytest.raises(ValueError, match="receptive field"):
        sig.SeriesResiduals(short)


def test_a_bundles_step_graph_gives_every_windows_newest_residuals(signal_run, bundle):
    """`scada-infer --bundle` and `scada-evaluate --bundle` score a per-signal bundle through its step graph
    (`StepResiduals`: the edge's streaming engine, every turbine's series stepped once, in chunks of 300 steps
    here) instead of L steps per window: the residuals and predictions of every validation step equal the window
    graph's within the export's parity tolerance, across chunk edges (a chunk's steps also bounded by its turbine
    count), gaps between the steps asked for, runs of different lengths and a turbine with no step to score; a
    bundle without a step graph is refused."""
    import dataclasses

    from scada_tcn.trainer.config import load_config
    from scada_tcn.trainer.data.store import PreparedData
    from scada_tcn.trainer.evaluation.signals import StepResiduals, signal_steps
    from tests.conftest import CONFIG

    cfg = load_config(CONFIG, signal_run[1])
    data, tol = PreparedData(cfg), bundle.parity
    windows = signal_steps(data, cfg, ("val",), _resid(OnnxScorer(bundle)))
    said: list[str] = []
    stepped = signal_steps(data, cfg, ("val",), StepResiduals(bundle, chunk=300), log=said.append)
    n = f"{int(stepped.scored.sum()):,}"
    assert said[-1].startswith(f"scored steps of val: {n} of {n} (100%)")  # progress, the last line at the end
    assert np.unique(windows.turbine[windows.scored], return_counts=True)[1].min() > 2 * 300  # several chunks
    for k in ("turbine", "t_end", "scored", "present", "flags", "repeat", "split", "label"):
        np.testing.assert_array_equal(getattr(stepped, k), getattr(windows, k), err_msg=k)
    for k in ("resid", "pred"):
        np.testing.assert_allclose(getattr(stepped, k), getattr(windows, k), rtol=tol.rtol, atol=tol.atol, err_msg=k)
    L, series, want = bundle.dims.L, [], []
    for i, tdir in enumerate(sorted((Path(data.dir) / "turbines").iterdir())[:3]):
        X, M, Fl = (np.load(tdir / f"{n}.npy") for n in ("X", "M_miss", "Flags"))
        rows = np.concatenate([np.arange(L - 1 + 50 * i, 700), np.arange(1000, 1400, 7), np.arange(1402, 1500)])
        series.append((X, M, Fl, rows))  # runs of different lengths; a gap of more than L starts a new run
        win = rows[:, None] + np.arange(-(L - 1), 1)[None, :]
        want.append(_resid(OnnxScorer(bundle))(*(np.ascontiguousarray(a[win], np.float32) for a in (X, M, Fl))))
    series.append((X, M, Fl, rows[:0]))  # a turbine with no step to score: nothing, in its place
    want.append((np.zeros((0, bundle.dims.F)),) * 2)
    stepper = StepResiduals(bundle, chunk=300)
    stepper.CELLS = 1000  # chunks of 1000 // (runs still going) steps: shorter as runs end
    for got, ref in zip(stepper.many(series), want, strict=True):
        for g, r in zip(got, ref):
            np.testing.assert_allclose(g, r, rtol=tol.rtol, atol=tol.atol)
    with pytest.raises(ValueError, match="no step graph"):
        StepResiduals(dataclasses.replace(bundle, stream=None))


def test_evaluate_scores_the_validation_split_once_with_the_same_results(bundle, tiny_run):
    """scada-evaluate needs the validation split's results and the test split's, whose warm-up is the validation
    split: one pass gives both, equal to those of a pass per split."""
    from scada_tcn.trainer.evaluation.offline import infer_split, infer_val_and_test, setup_from_bundle

    setup = setup_from_bundle(bundle.path, tiny_run.cfg().data.paths.processed_dir)
    val, test, _, arrays = infer_val_and_test(setup)
    pd.testing.assert_frame_equal(val, infer_split(setup, "val")[0])
    alone, _, want = infer_split(setup, "test", collect=True)
    pd.testing.assert_frame_equal(test, alone)
    np.testing.assert_array_equal(arrays.contrib, want.contrib)
    assert len(val) > 1000 and len(test) > 1000


def _resid(scorer: OnnxScorer):
    def residuals(X: np.ndarray, M: np.ndarray, F: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        out = scorer.score(X, M, F)
        return out.resid, out.pred

    return residuals
