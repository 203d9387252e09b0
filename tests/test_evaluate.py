"""scada-evaluate end to end on the tiny run: every report is written and consistent with the results."""

from __future__ import annotations

import csv
import json

import numpy as np
import pandas as pd

from scada_tcn.trainer.evaluation.evaluate import evaluate
from scada_tcn.trainer.evaluation.offline import setup_from_checkpoint
from scada_tcn.trainer.evaluation.progress import Progress


def test_evaluate_writes_all_reports(tiny_run, tmp_path):
    setup, said = setup_from_checkpoint(tiny_run.checkpoint), []
    setup.log = said.append  # the CLI's: stderr
    m = evaluate(setup, tmp_path, drift=True)
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["windows"]["test"] == m["windows"]["test"] > 0
    n = {k: f"{v:,}" for k, v in saved["windows"].items()}
    assert [line.split("),")[0] for line in said] == [f"scored windows of {k}: {n[k]} of {n[k]} (100%" for k in
                                                       ("val", "test")]  # fmt: skip
    assert {"forecast", "fault", "anomaly", "events", "alerts", "drift"} <= set(saved)
    assert saved["forecast"]["mae"] > 0 and len(saved["forecast"]["per_feature"]) == 30
    assert 0.0 <= saved["anomaly"]["roc_auc"] <= 1.0
    ev = saved["events"]
    assert ev["n_events"] >= 1  # the simulator labelled faults in the test period
    assert len(ev["events"]) == ev["n_events"] == sum(c["n_events"] for c in ev["by_fault"].values())
    assert ev["n_detected"] == sum(e["detected"] for e in ev["events"]) and ev["n_onsets_masked_by_clean"] == 0
    res = pd.read_parquet(tmp_path / "results_test.parquet").sort_values(["turbine_id", "t_end"])
    on = res["alert_on"]
    onsets = int((on & ~on.groupby(res["turbine_id"]).shift(1, fill_value=False)).sum())
    assert ev["n_onsets"] == onsets == saved["alerts"]["raised"]  # the state machine starts off on the test split
    # drift of validation against test: features and scores are summarised, nothing is NaN-serialised as text
    assert set(saved["drift"]["features"]["per_feature"]) == set(saved["forecast"]["per_feature"])
    rows = list(csv.reader((tmp_path / "metrics_flat.csv").open()))
    keys = [r[0] for r in rows[1:]]
    assert rows[0] == ["metric", "value"] and keys == sorted(keys) and "anomaly.roc_auc" in keys
    assert {"events.n_onsets", "events.false_alerts_per_turbine_month"} <= set(keys)
    assert {f"events.by_fault.{c}.n_events" for c in ev["by_fault"]} <= set(keys)
    rca = json.loads((tmp_path / "rca_examples.json").read_text())
    assert len(rca) == min(20, saved["alerts"]["raised"])
    for ex in rca:
        c = [f["contribution"] for f in ex["top_features"]]
        assert c == sorted(c, reverse=True) and sum(c) <= ex["score"] + 1e-5
    pngs = sorted(p.name for p in (tmp_path / "plots").glob("*.png"))
    assert [p for p in pngs if p.startswith("score_")] == [f"score_WT0{i}.png" for i in range(1, 5)]
    assert len([p for p in pngs if p.startswith("contrib_")]) == min(12, saved["alerts"]["raised"])
    assert all((tmp_path / "plots" / p).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)
    assert np.isfinite(saved["drift"]["scores"]["ks"])
    ks_ref = saved["drift"]["ks_vs_reference"]
    assert set(ks_ref) == set(saved["forecast"]["per_feature"]) and all(0 <= v <= 1 for v in ks_ref.values())
    assert set(saved["drift"]["drifted_vs_reference"]) <= set(ks_ref)


def test_progress_says_how_far_at_most_every_interval_and_always_at_the_end():
    said: list[str] = []
    slow = Progress("scored steps of val", 3, said.append, every_s=3600.0)
    for done in (1, 2, 3):
        slow(done)
    assert len(said) == 1 and said[0].startswith("scored steps of val: 3 of 3 (100%), ") and said[0].endswith("/s")
    every = Progress("scored windows", 2_000, said.append, every_s=0.0)
    every(1_000)
    assert said[-1].startswith("scored windows: 1,000 of 2,000 (50%), ")


def test_labels_are_read_in_the_zone_the_prepared_data_was_read_with(tiny_run, tmp_path):
    """Found in review: with --checkpoint the labels were read in the checkpoint's config's zone, not the zone
    the --data folder was prepared with, so naive labels were refused with advice that could not be followed.
    They are read in the prepared data's naive_timezone (its config.yaml), as scada-prepare read its labels."""
    from scada_tcn.trainer.data.prepare import prepare

    data = tmp_path / "processed_utc"
    prepare(tiny_run.cfg(f"data.paths.processed_dir={data}", "data.identifiers.naive_timezone=UTC"))
    setup = setup_from_checkpoint(tiny_run.checkpoint, data)
    labels = tmp_path / "labels.csv"
    pd.DataFrame({"turbine_id": ["WT01"], "start": ["2024-02-01 00:00"], "end": ["2024-02-03 00:00"],
                  "fault": ["gearbox_overheat"]}).to_csv(labels, index=False)  # fmt: skip
    m = evaluate(setup, tmp_path / "eval", plots=False, labels_file=labels)
    assert m["labels"] == str(labels) and "anomaly" in m
