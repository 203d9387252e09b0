"""La Haute Borne: train on the first months, score the colder rest, detect faults injected into one turbine.

    python bench/lhb_injection.py [--workdir artifacts/lhb] [--turbine R80736] [--epochs 3] [--steps 250]

Runs the documented procedure with the project's own commands (their Python functions):
  1. scada-prepare data=la_haute_borne                       (train Aug 9 - Oct 15, val - Nov 1, test - Jan 13)
  2. scada-train data=la_haute_borne ...                      (a CPU-sized budget)
  3. scada-export <run>/checkpoints/best.pt                   (thresholds from the validation split)
  4. scada-inject data=la_haute_borne --turbine T --out <workdir>/injected   (5 fault kinds in T's test period)
  5. scada-prepare on the injected copy (same config: the training rows, so scaler and caps, are unchanged)
  6. scada-evaluate --bundle ... on the original and on the injected copy, --labels <injected>/labels.csv
Prints, by `trainer.evaluation.events.score_events` (the project's one detection rule): detection and lead time
per injected fault, counting only an alert that turns on from --max-lead-hours before the fault to its end while
the uninjected copy has no alert on at that step; false alerts per turbine-month on the untouched turbines; and,
per month of the test period, the untouched turbines' median score over threshold and the share of windows above
threshold (the season shift must not move the calibrated level); and the alerts the injected faults raised on the
untouched turbines (their onsets in the injected copy net of the original: fleet-relative scores move with a
faulty peer).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from scada_tcn.trainer.evaluation.edge_records import faults_from_table
from scada_tcn.trainer.evaluation.events import score_events, timelines_from_table

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "config.yaml"


def untouched_alerts(res: pd.DataFrame, injected_turbine: str, dt: pd.Timedelta) -> tuple[int, float]:
    """(alerts raised, turbine-months observed) on the turbines nobody injected, by `score_events` (no fault there,
    so every onset is a false alert)."""
    timelines = timelines_from_table(res[res.turbine_id != injected_turbine])
    ev = score_events(timelines, [], max_lead_ns=0, dt_ns=dt.value)
    return ev["n_false_alerts"], ev["turbine_months"]


def peer_alerts(
    original: pd.DataFrame, injected: pd.DataFrame, injected_turbine: str, dt: pd.Timedelta
) -> dict[str, Any]:
    """`score_events` of the turbines nobody injected, in the injected copy, net of the uninjected copy: the alerts
    the injected faults raised on them (no fault there, so each counted onset is a false alert). A turbine scored
    against its peers (fleet-relative residuals) moves with a faulty peer."""
    peers = {t: tl for t, tl in timelines_from_table(injected).items() if t != injected_turbine}
    return score_events(peers, [], max_lead_ns=0, dt_ns=dt.value, clean=timelines_from_table(original))


def detections(
    original: pd.DataFrame, injected: pd.DataFrame, labels: pd.DataFrame, lead: pd.Timedelta, dt: pd.Timedelta
) -> dict[str, Any]:
    """`score_events` of the injected copy's alerts against the injected faults, net of the uninjected copy.

    Both tables hold (turbine_id, t_end, alert_on). A fault is detected by an alert that turns on from `lead` before
    its start to its end while the uninjected copy has no alert on at that step: the data before an injection are
    identical in both copies, so such an alert comes from the injected fault. An alert already on before that
    (the tail of the previous fault's alarm) does not count. The injected turbine's other onsets are false alerts.
    """
    timelines = timelines_from_table(injected)
    faults = faults_from_table(labels)
    turbines = {f[0] for f in faults}
    return score_events(
        {t: tl for t, tl in timelines.items() if t in turbines},
        faults,
        max_lead_ns=lead.value,
        dt_ns=dt.value,
        clean=timelines_from_table(original),
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", type=Path, default=ROOT / "artifacts" / "lhb")
    ap.add_argument("--turbine", default="R80736")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--steps", type=int, default=250, help="training steps per epoch")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-lead-hours", type=float, default=48.0)
    ap.add_argument("overrides", nargs="*", help="extra config overrides, e.g. infer.calibration.per_regime=true")
    a = ap.parse_args()
    from scada_tcn.export.bundle_writer import export_bundle
    from scada_tcn.trainer.config import load_config
    from scada_tcn.trainer.data.prepare import prepare
    from scada_tcn.trainer.evaluation.evaluate import evaluate
    from scada_tcn.trainer.evaluation.offline import setup_from_bundle
    from scada_tcn.trainer.sources.inject import inject_table
    from scada_tcn.trainer.training.fit import fit

    w = a.workdir
    base = [
        "data=la_haute_borne",
        f"output_dir={w / 'run'}",
        f"seed={a.seed}",
        f"train.epochs={a.epochs}",
        f"train.max_steps_per_epoch={a.steps}",
        "train.early_stopping_patience=100",
        *a.overrides,
    ]
    cfg = load_config(CONFIG, [*base, f"data.paths.processed_dir={w / 'processed'}"])
    prepare(cfg)
    best = w / "run" / "checkpoints" / "best.pt"
    if not best.is_file():
        fit(cfg, log=print)
    bundle = export_bundle(
        best, out_dir=w / "bundle", overrides=[o for o in a.overrides if o.startswith("infer.")], log=print
    )
    inj = inject_table(cfg.data, a.turbine, w / "injected", seed=a.seed)
    cfg_inj = load_config(
        CONFIG, [*base, f"data.paths.raw_dir={inj['scada']}", f"data.paths.processed_dir={w / 'processed_injected'}"]
    )
    prepare(cfg_inj)
    reports = {}
    for name, data_dir in (("original", w / "processed"), ("injected", w / "processed_injected")):
        setup = setup_from_bundle(bundle.path, data_dir)
        reports[name] = evaluate(setup, w / f"eval_{name}", max_lead_hours=a.max_lead_hours, labels_file=inj["labels"])
    res = {k: pd.read_parquet(w / f"eval_{k}" / "results_test.parquet") for k in reports}
    ids = f"bundle {bundle.bundle_id[:12]} (model {bundle.model_id[:12]})"
    print(f"\nLa Haute Borne, faults injected into {a.turbine} (seed {a.seed}); {ids}")
    dt = pd.Timedelta(seconds=int(setup.data.pipeline_spec["dt_seconds"]))
    labels = pd.read_csv(inj["labels"], dtype=str)
    found = detections(res["original"], res["injected"], labels, pd.Timedelta(hours=a.max_lead_hours), dt)
    print(f"{'fault':<18} {'start':<26} detected  lead h (+: before the start)  coverage")
    for e in found["events"]:
        start = pd.Timestamp(e["start_ns"], tz="UTC").isoformat()
        lead = e["lead_ns"] / 3.6e12 if e["detected"] else float("nan")
        print(f"{e['fault']:<18} {start:<26} {str(e['detected']):<9} {lead:>26.1f}  {e['coverage']:>8.1%}")
    print(
        f"detected {found['n_detected']}/{found['n_events']} injected faults; "
        f"{found['n_onsets_masked_by_clean']} onsets on {a.turbine} were not counted because the uninjected copy "
        f"was alarming at the same step; {found['n_false_alerts']} false alerts on {a.turbine}"
    )
    leak = peer_alerts(res["original"], res["injected"], a.turbine, dt)
    print(
        f"untouched turbines in the injected copy, net of the uninjected one: {leak['n_onsets']} alerts raised by the "
        f"faults injected into {a.turbine} ({leak['n_onsets_masked_by_clean']} onsets were in both copies)"
    )
    untouched = res["original"][res["original"].turbine_id != a.turbine]
    spans, months = untouched_alerts(res["original"], a.turbine, dt)
    print(
        f"untouched turbines: {spans} alerts in {months:.1f} turbine-months = "
        f"{spans / months:.2f} false alerts per turbine-month"
    )
    val = setup_from_bundle(bundle.path, w / "processed")
    from scada_tcn.trainer.evaluation.offline import infer_split

    v, _, _ = infer_split(val, "val")
    v = v[v.turbine_id != a.turbine]
    rows = [("validation", v)] + [
        (str(p), g) for p, g in untouched.groupby(untouched.t_end.dt.tz_convert(None).dt.to_period("M"))
    ]
    print(f"{'period':<11} {'windows':>8} {'median score/threshold':>23} {'share above threshold':>22}")
    for name, g in rows:
        ratio = g["score"] / g["threshold"]
        print(f"{name:<11} {len(g):>8} {ratio.median():>23.3f} {np.mean(ratio >= 1.0):>22.4f}")
    summary = {k: {kk: r[kk] for kk in ("anomaly", "events", "alerts") if kk in r} for k, r in reports.items()}
    summary["detections_net_of_original"] = found
    summary["peer_alerts_net_of_original"] = leak
    (w / "lhb_summary.json").write_text(json.dumps(summary, indent=2, default=str))


if __name__ == "__main__":
    main()
