"""The demo's runtime stage: it waits for the work, counts steps in distinct `seq` per turbine, and says so."""

from __future__ import annotations

import json

import pytest

from scada_tcn.demo.broker import run_through_broker
from scada_tcn.demo.pipeline import _replay, format_report
from tests.mosquitto import read_slice, require_mosquitto, write_csv


@pytest.fixture(scope="module")
def stream(tiny_run, tmp_path_factory):
    header, rows = read_slice(
        tiny_run.synth_dir / "scada.csv", "2024-01-25T00:00:00+00:00", "2024-01-27T00:00:00+00:00"
    )
    return write_csv(tmp_path_factory.mktemp("demo_stream") / "stream.csv", header, rows)


def test_broker_run_scores_every_closed_step_and_reports_it(tiny_bundle, stream, tmp_path):
    require_mosquitto()
    lines: list[str] = []
    run = run_through_broker(tiny_bundle, stream, tmp_path / "s.jsonl", tmp_path / "a.jsonl", tmp_path / "broker",
                             required=True, log=lines.append)  # fmt: skip
    assert run is not None and run.complete and run.conflicts == 0 and run.reconnects == 0
    assert set(run.sent) == {"WT01", "WT02", "WT03", "WT04"} and all(run.scored[t] == n for t, n in run.sent.items())
    written = [json.loads(x) for x in (tmp_path / "s.jsonl").read_text().splitlines()]
    assert len(written) == len({(d["turbine"], d["ts"]) for d in written}) == sum(run.scored.values())
    assert any("published" in x and "scored" in x for x in lines)  # progress while publishing
    report = format_report({"n_events": 0, "n_detected": 0, "events": [], "false_alerts_per_turbine_month": 0.0,
                            "n_onsets": 0, "n_false_alerts": 0, "alert_coverage": float("nan"), "alerts": []},
                           {}, run, {"runtime": run.seconds})  # fmt: skip
    assert f"steps scored: {sum(run.sent.values()):,} of {sum(run.sent.values()):,} sent (complete)" in report


def test_replay_path_reports_the_same_steps(tiny_bundle, stream, tmp_path):
    run = _replay(tiny_bundle, stream, tmp_path / "s.jsonl", tmp_path / "a.jsonl", "")
    assert run.complete and run.duplicates == 0 and run.how == "scada-runtime replay"
    assert all(run.scored[t] == n for t, n in run.sent.items())
