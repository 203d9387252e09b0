"""Fleet-relative scores end to end: export, offline inference, the edge engine's wait for peers, its saved state.

The tiny simulated farm (4 turbines) is exported with `infer.fleet.relative=true`. The edge replays a slice of it;
where batch and stream share the whole history, the edge's fleet scores equal `scada-infer`'s.
"""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from scada_tcn.runtime.alerts import AlertState
from scada_tcn.runtime.bundle import AlertingParams, load_bundle
from scada_tcn.runtime.daemon_config import MappingCfg
from scada_tcn.runtime.engine import Engine
from scada_tcn.runtime.records import iso_utc
from scada_tcn.runtime.replay import replay
from scada_tcn.runtime.scorer import OnnxScorer
from scada_tcn.runtime.state_file import load_state, save_state
from scada_tcn.runtime.telemetry import parse_timestamp_ns
from tests.mosquitto import (
    DT_NS,
    SITE,
    Collector,
    DaemonThread,
    by_key,
    daemon_config,
    read_slice,
    scores_through,
    to_samples,
    wait_for,
    write_csv,
)
from tests.test_runtime_e2e import STREAM_END, STREAM_START, assert_close


@pytest.fixture(scope="module")
def fleet_bundle_dir(tiny_run, tmp_path_factory) -> Path:
    from scada_tcn.export.bundle_writer import export_bundle

    out = tmp_path_factory.mktemp("fleet_bundle") / "bundle"
    export_bundle(tiny_run.checkpoint, out_dir=out, overrides=["infer.fleet.relative=true"], verify=False)
    return out


@pytest.fixture(scope="module")
def fleet_bundle(fleet_bundle_dir):
    return load_bundle(fleet_bundle_dir)


@pytest.fixture(scope="module")
def rows(tiny_run):
    return read_slice(tiny_run.synth_dir / "scada.csv", STREAM_START, STREAM_END)


def _scores(outputs) -> dict[tuple[str, str], dict]:
    docs = [json.loads(o.payload) for o in outputs if o.kind == "score"]
    return {(d["turbine"], d["ts"]): d for d in docs if d["status"] == "ok"}


def test_bundle_records_the_fleet_setting_and_thresholds_fitted_on_it(fleet_bundle):
    assert fleet_bundle.fleet.relative and fleet_bundle.fleet.min_peers == 1
    assert fleet_bundle.fleet.min_present_fraction == 0.5
    assert "fleet-relative scores" in fleet_bundle.calibration.fitted_on
    assert all(v > 0 for v in fleet_bundle.calibration.per_turbine.values())


def test_edge_fleet_scores_match_offline_inference(fleet_bundle_dir, fleet_bundle, tiny_run, rows, tmp_path):
    from scada_tcn.trainer.evaluation.offline import infer_split, setup_from_bundle

    header, body = rows
    path = write_csv(tmp_path / "slice.csv", header, body)
    engine = Engine(fleet_bundle, OnnxScorer(fleet_bundle), grace_seconds=0.0, max_turbines=100, max_batch=512)
    replay(engine, path, MappingCfg(), tmp_path / "scores.jsonl")
    docs = [json.loads(line) for line in (tmp_path / "scores.jsonl").read_text().splitlines()]
    edge = {(d["turbine"], d["ts"]): d for d in docs if d["status"] == "ok"}
    assert all("fleet_score" in d and "peers" in d for d in edge.values())

    setup = setup_from_bundle(fleet_bundle_dir, tiny_run.cfg().data.paths.processed_dir)
    res, _, _ = infer_split(setup, "test")
    max_roll = max(fleet_bundle.spec.rolling.windows)
    first = parse_timestamp_ns(STREAM_START) + (max_roll + fleet_bundle.dims.L) * DT_NS
    res = res[res["t_end"] >= pd.Timestamp(first, tz="UTC")]
    n = 0
    for r in res.itertuples():
        d = edge.get((r.turbine_id, r.t_end.strftime("%Y-%m-%dT%H:%M:%SZ")))
        if d is None:  # the slice ends before the test split
            continue
        assert abs(d["score"] - r.score_raw) <= 1e-4 * abs(r.score_raw) + 1e-6
        assert d["peers"] == r.peers == 3 and d["missing_now"] == r.missing_now
        assert abs(d["fleet_score"] - r.score) <= 1e-4 * abs(r.score_raw) + 1e-6, (r.turbine_id, r.t_end)
        assert d["threshold"] == pytest.approx(r.threshold)
        assert abs(d["ratio"] - r.score / r.threshold) <= (1e-4 * abs(r.score_raw) + 1e-6) / r.threshold
        n += 1
    assert n > 50


def test_daemon_publishes_the_fleet_scores_of_replay(broker, fleet_bundle, rows, tmp_path):
    header, body = rows
    engine = Engine(fleet_bundle, OnnxScorer(fleet_bundle), grace_seconds=0.0, max_turbines=100, max_batch=512)
    replay(engine, write_csv(tmp_path / "slice.csv", header, body), MappingCfg(), tmp_path / "scores.jsonl")
    replayed = {k: next(iter(v)) for k, v in by_key((tmp_path / "scores.jsonl").read_bytes().splitlines()).items()}
    col = Collector(broker.url, [f"scada/{SITE}/+/score"])
    wait_for(lambda: col.ready(), 10, "collector connect")
    d = DaemonThread(daemon_config(broker.url), fleet_bundle, OnnxScorer(fleet_bundle))
    got = scores_through(broker.url, d, col, header, body, 60)
    metrics = urllib.request.urlopen(f"http://127.0.0.1:{d.daemon.health.port}/metrics").read().decode()
    assert "scada_runtime_fleet_waiting_records " in metrics
    assert d.stop() == 0
    n = 0
    for k, v in got.items():  # run and replay batch steps differently, which moves raw scores by float32 ulps
        a, b = json.loads(v), json.loads(replayed[k])
        if a["status"] == "ok":
            tol = 1e-5 * abs(b["score"]) + 1e-6  # a fleet score is a difference of scores: absolute, not relative
            assert abs(a.pop("fleet_score") - b.pop("fleet_score")) <= tol, k
            assert abs(a.pop("ratio") - b.pop("ratio")) <= tol / b["threshold"], k
            n += 1
        assert_close(json.dumps(a).encode(), json.dumps(b).encode(), k)
    assert n > 100
    col.close()


def test_a_step_waits_until_every_turbine_has_closed_it(fleet_bundle, rows):
    header, body = rows
    samples = to_samples(header, body, fleet_bundle.spec.channels)
    turbines = sorted({s.turbine for s in samples})
    lagging = turbines[-1]
    engine = Engine(fleet_bundle, OnnxScorer(fleet_bundle), grace_seconds=0.0, max_turbines=100, max_batch=512)
    first_of = {}
    for s in samples:  # everybody's first sample, so the fleet knows all four turbines
        first_of.setdefault(s.turbine, s)
    for s in first_of.values():
        engine.ingest(s)
    ahead = [s for s in samples if s.turbine != lagging and s is not first_of[s.turbine]]
    for s in ahead:
        engine.ingest(s)
    out = _scores(engine.flush())
    assert out == {}, "no step may be released while one turbine has not closed it"
    assert engine.waiting() == len(engine.state_dict()["pending"]) > 0, "the leading turbines' scored steps wait"
    for s in samples:
        if s.turbine == lagging and s is not first_of[s.turbine]:
            engine.ingest(s)
    released = _scores(engine.flush())
    assert released and {t for t, _ in released} == set(turbines)
    assert all(d["peers"] == 3 for d in released.values())
    rest = _scores(engine.flush(final=True))  # the last bins of the leading turbines: nobody else closed them yet
    assert not set(rest) & set(released)
    steps = sorted({ts for _, ts in released})
    assert steps == sorted(steps) and all(d["fleet_score"] is not None for d in released.values())


def test_waiting_steps_survive_a_restart(fleet_bundle, rows, tmp_path):
    header, body = rows
    samples = to_samples(header, body, fleet_bundle.spec.channels)
    half = len(samples) // 2
    lagging = sorted({s.turbine for s in samples})[0]

    def feed(engine, part):
        for s in part:
            engine.ingest(s)

    one = Engine(fleet_bundle, OnnxScorer(fleet_bundle), 0.0, 100, 512)
    feed(one, samples[:half])
    feed(one, [s for s in samples[half:] if s.turbine != lagging])
    before = _scores(one.flush())
    save_state(tmp_path / "state.npz", one.state_dict())
    assert one.state_dict()["pending"]

    two = Engine(fleet_bundle, OnnxScorer(fleet_bundle), 0.0, 100, 512)
    two.load_state_dict(load_state(tmp_path / "state.npz"))
    feed(two, [s for s in samples[half:] if s.turbine == lagging])
    after = _scores(two.flush(final=True))

    whole = Engine(fleet_bundle, OnnxScorer(fleet_bundle), 0.0, 100, 512)
    feed(whole, samples)
    want = _scores(whole.flush(final=True))
    got = {**before, **after}
    assert set(got) == set(want)
    for k, d in want.items():  # batch composition may move the raw scores by ulps
        assert (got[k]["fleet_score"] is None) == (d["fleet_score"] is None), k
        if d["fleet_score"] is not None:
            assert abs(got[k]["fleet_score"] - d["fleet_score"]) <= 1e-5 * d["score"] + 1e-7, k
        assert got[k]["alert"] == d["alert"]
    assert {d["bundle_id"] for d in got.values()} == {fleet_bundle.bundle_id}

    # a state saved before states named their bundle: its waiting records' bundle is unknown (null)
    legacy = load_state(tmp_path / "state.npz")
    del legacy["bundle_id"], legacy["signals_basis"]
    for item in legacy["pending"]:
        del item["record"]["bundle_id"]
    three = Engine(fleet_bundle, OnnxScorer(fleet_bundle), 0.0, 100, 512)
    assert three.load_state_dict(legacy) == (None, False)
    feed(three, [s for s in samples[half:] if s.turbine == lagging])
    old = _scores(three.flush(final=True))
    waited = {(i["record"]["turbine"], iso_utc(i["record"]["end_ns"])) for i in legacy["pending"] if i["kind"] == "ok"}
    assert waited and {k for k, d in old.items() if d["bundle_id"] is None} == waited
    assert {d["bundle_id"] for k, d in old.items() if k not in waited} == {fleet_bundle.bundle_id}


def test_offline_alerts_hold_their_state_without_a_score():
    from scada_tcn.trainer.evaluation.offline import apply_alerts

    t = pd.date_range("2024-01-01", periods=10, freq="10min", tz="UTC")
    score = [2.0, 2.0, np.nan, 0.1, 2.0, np.nan, 0.1, 0.1, np.nan, 0.1]
    missing_now = [0.0, 0.5, 0.0, 1.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0]
    res = pd.DataFrame({"turbine_id": "T1", "t_end": t, "score": score, "missing_now": missing_now, "threshold": 1.0,
                        "top_features": [["a"]] * 10})  # fmt: skip
    apply_alerts(res, AlertingParams(T_on=1.0, T_off=0.8, N_on=3, N_off=2))
    # NaN windows and windows whose newest step is all missing neither count toward N_on / N_off nor change the state
    assert res["alert_on"].tolist() == [False, False, False, False, True, True, True, True, True, False]


@pytest.mark.parametrize("which", ["window_mean", "fleet_relative"])
def test_a_turbine_that_sends_nothing_holds_its_alert(which, tiny_bundle, fleet_bundle, rows, tmp_path):
    """A turbine silent for an hour in every five, its window still present enough: the silent steps are scored
    (their window's score still moves) and they stepped the alert state machine, so an alert could turn on or
    off at a step the turbine sent nothing. A step with every input missing is no new evidence: the alert holds,
    as in offline inference (`apply_alerts`, `missing_now`). The alerting here flips at the turbine's median
    ratio, one step each way, so stepping on the silent steps would change the alerts."""
    import dataclasses

    bundle = fleet_bundle if which == "fleet_relative" else load_bundle(tiny_bundle)
    header, body = rows
    ti, ii = header.index("timestamp"), header.index("turbine_id")
    turbine = sorted({r[ii] for r in body})[0]
    stamps = sorted({r[ti] for r in body})
    silent = {t for k, t in enumerate(stamps) if (k // 6) % 5 == 4}
    table = write_csv(tmp_path / "silent.csv", header, [r for r in body if not (r[ii] == turbine and r[ti] in silent)])

    def records(b) -> list[dict]:
        engine = Engine(b, OnnxScorer(b), grace_seconds=0.0, max_turbines=100, max_batch=512)
        replay(engine, table, MappingCfg(), tmp_path / "scores.jsonl")
        return [d for line in (tmp_path / "scores.jsonl").read_text().splitlines()
                if (d := json.loads(line))["turbine"] == turbine and d["status"] == "ok"]  # fmt: skip

    key = "fleet_score" if which == "fleet_relative" else "score"
    median = float(np.median([d[key] / d["threshold"] for d in records(bundle)]))
    params = AlertingParams(T_on=median, T_off=median, N_on=1, N_off=1)
    mine = records(dataclasses.replace(bundle, alerting=params))
    empty = [d["missing_now"] == 1.0 for d in mine]
    assert sum(empty) >= 12 and len(mine) - sum(empty) >= 60

    def machine(held: list[bool]) -> list[bool]:
        state, on = AlertState(params.T_on, params.T_off, params.N_on, params.N_off), False
        out = []
        for d, h in zip(mine, held):
            if not h:
                on = bool(state.step([0], [d[key]], [d["threshold"]]).on[0])
            out.append(on)
        return out

    assert [d["alert"] for d in mine] == machine(empty) != machine([False] * len(mine))


def _fault_in_validation(src: Path, dst: Path, label: int, magnitude: float | None) -> None:
    """Copy prepared data; label every validation window of the first turbine `label` and, unless `magnitude` is
    None, overwrite the validation part of its series with `magnitude`."""
    import shutil

    shutil.copytree(src, dst)
    index = pd.read_parquet(dst / "window_index.parquet")
    tid = sorted(index["turbine_id"].unique())[0]
    val = (index["split"] == "val") & (index["turbine_id"] == tid)
    if magnitude is not None:
        X = np.load(dst / "turbines" / tid / "X.npy")
        lo, hi = int(index.loc[val, "start"].min()), int(index.loc[val, "start"].max())
        X[lo : hi + 24] = magnitude  # L = 24 in the tiny run
        np.save(dst / "turbines" / tid / "X.npy", X)
    index.loc[val, "y"], index.loc[val, "has_label"] = label, True
    index.to_parquet(dst / "window_index.parquet", index=False)


def test_fleet_calibration_never_sees_a_labelled_fault_not_even_as_a_peer(tiny_run, tmp_path):
    from scada_tcn.trainer.calibration.fit import calibrate
    from scada_tcn.trainer.data.store import PreparedData
    from scada_tcn.trainer.model.reference import build_reference, checkpoint_config
    from scada_tcn.trainer.training.fit import load_checkpoint

    ckpt = load_checkpoint(tiny_run.checkpoint)
    cfg = checkpoint_config(ckpt, ["infer.fleet.relative=true"])
    scoring = build_reference(ckpt, cfg).scoring
    src = PreparedData(cfg).dir

    def thresholds(label: int, magnitude: float | None):
        dst = tmp_path / f"{label}_{magnitude}"
        _fault_in_validation(src, dst, label, magnitude)
        c = checkpoint_config(ckpt, ["infer.fleet.relative=true"], data_dir=dst)
        cal = calibrate(scoring, PreparedData(c), c).calibration
        return cal.global_threshold, cal.per_turbine

    clean_fault_label = thresholds(2, None)
    assert thresholds(2, 50.0) == clean_fault_label  # the planted values reach no threshold, not even via peers
    assert thresholds(0, 50.0)[0] != thresholds(0, None)[0]  # control: labelled normal, they do
