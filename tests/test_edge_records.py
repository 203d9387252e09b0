"""The edge's published records read back (`edge_records`, `scada-evaluate --records`): a real replay's scores
through the tiny per-signal bundle, checked against the alert records the same replay wrote, and edited copies of
it that lose, repeat or contradict a record."""

from __future__ import annotations

import json

import numpy as np
import orjson
import pandas as pd
import pytest
from typer.testing import CliRunner

from scada_tcn.runtime.bundle import load_bundle
from scada_tcn.runtime.records import dedupe
from scada_tcn.runtime.replay import replay_file
from scada_tcn.trainer.cli.pipeline import evaluate_app
from scada_tcn.trainer.evaluation.edge_records import (
    EdgeRecordsError,
    format_report,
    missing_steps,
    read_fault_labels,
    read_records,
    report,
    timelines,
)
from scada_tcn.trainer.evaluation.events import score_events
from tests.mosquitto import read_slice, write_csv

H = 3_600 * 10**9


@pytest.fixture(scope="module")
def replayed(signal_run, tiny_run, tmp_path_factory):
    """The tiny farm from its validation start through the per-signal bundle: (scores, alerts) files."""
    d = tmp_path_factory.mktemp("edge_records")
    header, rows = read_slice(tiny_run.synth_dir / "scada.csv", "2024-01-21T00:00:00Z", "2024-02-15T00:00:00Z")
    table = write_csv(d / "table.csv", header, rows)
    replay_file(signal_run[0], table, d / "scores.jsonl", alerts_out=d / "alerts.jsonl")
    return d / "scores.jsonl", d / "alerts.jsonl"


def _onsets(tls) -> set[tuple[str, int]]:
    out = set()
    for t, tl in tls.items():
        prev = np.concatenate([[tl.on_before], tl.on[:-1]])
        out |= {(t, int(x)) for x in tl.ts_ns[tl.on & ~prev]}
    return out


def test_the_timelines_turn_on_where_the_alert_records_say(replayed):
    scores, alerts = replayed
    lines = scores.read_bytes().splitlines()
    recs = read_records(scores)
    assert recs.ts_ns.size == len(lines) and recs.duplicates == 0 and recs.driver_kind == "group ratio"
    assert recs.turbines == ["WT01", "WT02", "WT03", "WT04"] and recs.dt_ns == 600 * 10**9
    assert all(n == 0 for n in missing_steps(recs).values())
    statuses = [orjson.loads(x)["status"] for x in lines]
    by_status = [statuses.count(s) for s in ("ok", "warmup", "insufficient_data")]
    assert np.bincount(recs.status, minlength=3).tolist() == by_status
    on = {(d["turbine"], pd.Timestamp(d["ts"]).value) for d in map(orjson.loads, alerts.read_bytes().splitlines())
          if d["state"] == "on"}  # fmt: skip
    tls = timelines(recs, int(recs.ts_ns.min()), int(recs.ts_ns.max()) + 1)
    assert on and _onsets(tls) == on
    first = min(on, key=lambda k: k[1])
    parsed = {(d["turbine"], pd.Timestamp(d["ts"]).value): d for d in map(orjson.loads, lines)}
    k = recs.turbines.index(first[0])
    at = int(np.flatnonzero((recs.turbine == k) & (recs.ts_ns == first[1]))[0])
    rows = np.arange(at - 5, at + 5)
    rows = rows[(recs.turbine[rows] == k) & (recs.status[rows] == 0)]
    m, names = recs.driver_matrix(rows)
    for i, r in enumerate(rows.tolist()):
        rec = parsed[(first[0], int(recs.ts_ns[r]))]
        assert recs.ratio[r] == rec["ratio"] and recs.alert[r] == rec["alert"]
        want = {g["group"]: np.float32(g["ratio"] or 0.0) for g in rec["groups"]}  # kept as float32
        assert dict(zip(names, m[i])) == {n: want.get(n, 0.0) for n in names} and set(want) <= set(names)
    # a period that starts after the first onset: an alert still on there is no onset of the period
    lo = first[1] + 600 * 10**9
    later = timelines(recs, lo, int(recs.ts_ns.max()) + 1)
    assert _onsets(later) == {k for k in on if k[1] >= lo}
    assert later[first[0]].on_before == bool(tls[first[0]].on[np.searchsorted(tls[first[0]].ts_ns, lo) - 1])


def test_a_lost_a_repeated_and_a_contradicting_record(replayed, tmp_path):
    scores, _ = replayed
    lines = scores.read_bytes().splitlines()
    full = report(read_records(scores), None)
    assert full["complete"] and full["incomplete_because"] == []
    mid = len(lines) // 2
    lost = tmp_path / "lost.jsonl"
    lost.write_bytes(b"\n".join(lines[:mid] + lines[mid + 1 :]) + b"\n")
    turbine = orjson.loads(lines[mid])["turbine"]
    r = report(read_records(lost), None)
    assert not r["complete"] and r["missing_steps"] == {turbine: 1}
    assert "INCOMPLETE: steps with no record (gaps in seq): 1" in format_report(r)
    repeated = tmp_path / "repeated.jsonl"
    repeated.write_bytes(b"\n".join(lines + lines[:100]) + b"\n\n")
    r = report(read_records(repeated), None)
    assert r["duplicates"] == 100 and r["by_status"] == full["by_status"]
    assert json.dumps(r["events"]) == json.dumps(full["events"])
    assert dedupe(lines + lines[:100]).duplicates == 100
    d = orjson.loads(lines[mid])
    d["missing_now"] = 0.123 if d.get("missing_now") != 0.123 else 0.5
    contradicting = tmp_path / "contradicting.jsonl"
    contradicting.write_bytes(b"\n".join([*lines, orjson.dumps(d)]))
    with pytest.raises(EdgeRecordsError, match="two different records"):
        read_records(contradicting)
    assert len(dedupe([*lines, orjson.dumps(d)]).conflicts) == 1
    garbage = tmp_path / "garbage.jsonl"
    garbage.write_bytes(b"\n".join([*lines[:3], b'{"turbine": "WT01"}']))
    with pytest.raises(EdgeRecordsError, match="line 4: not a score record"):
        read_records(garbage)


def test_event_metrics_of_the_records_and_the_cli(replayed, signal_run, tmp_path):
    scores, alerts = replayed
    recs = read_records(scores)
    first = min(_onsets(timelines(recs, int(recs.ts_ns.min()), int(recs.ts_ns.max()) + 1)), key=lambda k: k[1])
    labels = tmp_path / "labels.csv"
    start = pd.Timestamp(first[1] + 2 * H, tz="UTC")
    rows = [(first[0], start, start + pd.Timedelta("6h"), "gear"), ("WT99", start, start + pd.Timedelta("1h"), "x")]
    pd.DataFrame(rows, columns=["turbine_id", "start", "end", "fault"]).to_csv(labels, index=False)
    faults = read_fault_labels(labels)
    r = report(recs, None, faults)
    ev = r["events"]
    assert ev["n_events"] == 1 and ev["events"][0]["detected"] and ev["events"][0]["lead_ns"] == 2 * H
    lo, hi = int(recs.ts_ns.min()), int(recs.ts_ns.max()) + 1
    assert ev == score_events(timelines(recs, lo, hi), faults[:1], 48 * H, recs.dt_ns)
    assert not r["complete"] and r["faults_without_scores"] == [{"turbine": "WT99", "start": start.strftime(
        "%Y-%m-%d %H:%M"), "fault": "x"}]  # fmt: skip
    out = tmp_path / "report"
    res = CliRunner().invoke(evaluate_app, ["--records", str(scores), "--labels", str(labels), "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "labelled faults in the period: 1, detected: 1" in res.output and "lead +2.0 h" in res.output
    written = json.loads((out / "report.json").read_text())
    assert written["events"]["n_detected"] == 1 and written["n_records"] == recs.ts_ns.size
    bundle = load_bundle(signal_run[0])  # which model, and which bundle of it, scored the records
    assert written["model_ids"] == [bundle.model_id] and written["bundle_ids"] == [bundle.bundle_id]
    assert f"bundles {bundle.bundle_id[:12]}" in res.output
    assert {f"score_{t}.png" for t in recs.turbines} <= {p.name for p in (out / "plots").iterdir()}
    assert any(p.name.startswith("drivers_00_") for p in (out / "plots").iterdir())
    # its own copy as the uninjected one: every onset happens while the copy's alert is on, so none counts
    args = ["--records", str(scores), "--labels", str(labels), "--clean", str(scores), "--no-plots", "--out"]
    res = CliRunner().invoke(evaluate_app, [*args, str(tmp_path / "net")])
    assert res.exit_code == 0, res.output
    net = json.loads((tmp_path / "net" / "report.json").read_text())["events"]
    assert net["n_onsets"] == 0 and net["n_detected"] == 0 and net["n_onsets_masked_by_clean"] == written["events"][
        "n_onsets"] > 0  # fmt: skip
    assert "onsets while its alert was on do not count" in res.output
    refused = CliRunner().invoke(evaluate_app, ["--records", str(scores), "--bundle", str(alerts.parent)])
    assert refused.exit_code == 2 and "leave out ['--bundle']" in refused.output


def test_window_mean_records_give_their_top_features_as_drivers(tiny_bundle, tiny_run, tmp_path):
    header, rows = read_slice(tiny_run.synth_dir / "scada.csv", "2024-01-28T00:00:00Z", "2024-02-01T00:00:00Z")
    replay_file(tiny_bundle, write_csv(tmp_path / "t.csv", header, rows), tmp_path / "s.jsonl")
    recs = read_records(tmp_path / "s.jsonl")
    assert recs.driver_kind == "contribution"
    ok = np.flatnonzero(recs.status == 0)
    assert ok.size > 100
    m, names = recs.driver_matrix(ok)
    parsed = {(d["turbine"], pd.Timestamp(d["ts"]).value): d for d in map(orjson.loads, (tmp_path / "s.jsonl")
                                                                           .read_bytes().splitlines())}  # fmt: skip
    for i, r in enumerate(ok.tolist()):
        rec = parsed[(recs.turbines[recs.turbine[r]], int(recs.ts_ns[r]))]
        want = {f["name"]: np.float32(f["contribution"]) for f in rec["top_features"]}
        assert {n: v for n, v in zip(names, m[i]) if n in want} == want and m[i].sum() == pytest.approx(
            sum(want.values()), rel=1e-6)  # fmt: skip
    assert report(recs, None)["complete"]


def test_labels_are_read_as_training_reads_them(tmp_path):
    """The event scorer reads a labels file as scada-prepare does for training (`tables.parse_timestamps`): before,
    it took a stamp without an offset as UTC, where training with data.identifiers.naive_timezone read it as a
    local time (an hour or two apart), and without a zone refused it. Now such labels are refused unless a zone is
    given, and read in it as training reads them."""
    from scada_tcn.trainer.data.windowing import load_label_events

    labels = tmp_path / "labels.csv"
    labels.write_text("turbine_id,start,end,fault\nWT01,2024-01-28 10:00,2024-01-28T12:00:00,gear\n"
                      "WT02,2024/07/01 10:00,2024-07-01 11:00,gear\n")  # fmt: skip
    with pytest.raises(EdgeRecordsError, match=r"no UTC offset .* set --naive-timezone=UTC"):
        read_fault_labels(labels)
    faults = read_fault_labels(labels, "Europe/Paris")
    trained = load_label_events(labels, ["normal", "gear"], "Europe/Paris")
    assert [(t, a, b) for t, a, b, _ in faults] == [(e.turbine_id, e.start_ns, e.end_ns) for e in trained]
    assert [f[1] for f in faults] == [pd.Timestamp(t).value for t in ("2024-01-28T09:00Z", "2024-07-01T08:00Z")]
    res = CliRunner().invoke(evaluate_app, ["--records", str(labels), "--naive-timezone", "Europe/Pariss",
                                            "--labels", str(labels)])  # fmt: skip
    assert res.exit_code != 0 and "unknown time zone 'Europe/Pariss'" in res.output


def test_the_scorer_refuses_the_labels_training_refuses(tmp_path):
    """A row that ends before it starts, or has no fault or turbine: training refused such a labels file and the
    event scorer counted it (a fault window of negative length, or a fault named 'nan'). Both read a labels file
    by one function now (`windowing.label_rows`)."""
    from scada_tcn.runtime.errors import InputError
    from scada_tcn.trainer.data.windowing import load_label_events

    day = "2024-01-01T00:00Z,2024-01-02T00:00Z"
    rows = {"backwards": "WT01,2024-01-02T00:00Z,2024-01-01T00:00Z,gear", "no fault": f"WT01,{day},",
            "no turbine": f",{day},gear"}  # fmt: skip
    for what, row in rows.items():
        labels = tmp_path / "labels.csv"
        labels.write_text(f"turbine_id,start,end,fault\n{row}\n")
        want = "end before they start" if what == "backwards" else "empty cells in columns"
        with pytest.raises(EdgeRecordsError, match=want):
            read_fault_labels(labels)
        with pytest.raises(InputError, match=want):
            load_label_events(labels, ["normal", "gear"], None)
