"""La Haute Borne: train on the first months, score the colder rest, detect faults injected into one turbine.

    python bench/lhb_injection.py [--workdir artifacts/lhb] [--turbine R80736] [--epochs 3] [--steps 250]

Runs the documented procedure with the project's own commands (their Python functions):
  1. scada-prepare data=la_haute_borne                       (train Aug 9 - Oct 15, val - Nov 1, test - Jan 13)
  2. scada-train data=la_haute_borne ...                      (a CPU-sized budget)
  3. scada-export <run>/checkpoints/best.pt                   (thresholds from the validation split)
  4. scada-inject data=la_haute_borne --turbine T --out <workdir>/injected   (5 fault kinds in T's test period)
  5. scada-prepare on the injected copy (same config: the training rows, so scaler and caps, are unchanged)
  6. scada-evaluate --bundle ... on the original and on the injected copy, --labels <injected>/labels.csv
Prints: detection and the time from fault start to alert per injected fault, counting a detection only where an
alert turns on during the fault and the uninjected copy of the same period does not alarm; false alerts per
turbine-month on the untouched turbines; and, per month of the test period, the untouched turbines' median score
over threshold and the share of windows above threshold (the season shift must not move the calibrated level).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "config.yaml"


def untouched_alerts(res: pd.DataFrame, injected_turbine: str) -> tuple[int, float]:
    """(alerts raised, turbine-months observed) on the turbines nobody injected; rows time-sorted per turbine."""
    u = res[res.turbine_id != injected_turbine]
    on = u["alert_on"].astype(int)
    raised = int((on.groupby(u.turbine_id).diff().fillna(on) == 1).sum())  # first window counts when it is on
    months = (u.t_end.max() - u.t_end.min()).total_seconds() / (30.4375 * 86400) * u.turbine_id.nunique()
    return raised, months


def detections(original: pd.DataFrame, injected: pd.DataFrame, labels: pd.DataFrame, lead: pd.Timedelta) -> list[dict]:
    """Per injected fault: detected, hours from its start to the alert, and whether the uninjected copy alarmed.

    Both tables are time-sorted per turbine with `alert_on`. A detection is an alert that turns on in the injected
    copy between the fault's start and end, while the uninjected copy has no alert on from `lead` before the start
    to the end. The data before the start are identical in both copies, so an earlier alert cannot come from this
    fault: at best it is the tail of the previous fault's alarm, which must not count for this one.
    """
    onset = injected["alert_on"] & ~injected.groupby("turbine_id")["alert_on"].shift(1, fill_value=False)
    out = []
    for f in labels.itertuples():
        s, e = pd.Timestamp(f.start), pd.Timestamp(f.end)
        t_inj, t_orig = injected.turbine_id == f.turbine_id, original.turbine_id == f.turbine_id
        ons = injected.t_end[t_inj & onset & (injected.t_end >= s) & (injected.t_end <= e)]
        fired_orig = bool(original.alert_on[t_orig & (original.t_end > s - lead) & (original.t_end <= e)].any())
        det = len(ons) > 0 and not fired_orig
        hours = (ons.min() - s).total_seconds() / 3600 if det else float("nan")
        out.append(
            {
                "fault": f.fault,
                "start": f.start,
                "detected": det,
                "hours_after_start": hours,
                "uninjected_alarmed": fired_orig,
            }
        )
    return out


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
    labels = pd.read_csv(inj["labels"])
    print(f"\nLa Haute Borne, faults injected into {a.turbine} (seed {a.seed}); bundle {bundle.model_id[:12]}")
    print(f"{'fault':<18} {'start':<26} detected  hours after start  also on uninjected copy")
    found = detections(res["original"], res["injected"], labels, pd.Timedelta(hours=a.max_lead_hours))
    for d in found:
        print(
            f"{d['fault']:<18} {d['start']:<26} {str(d['detected']):<9} {d['hours_after_start']:>17.1f}  "
            f"{d['uninjected_alarmed']}"
        )
    n_det = sum(d["detected"] for d in found)
    print(f"detected {n_det}/{len(labels)} injected faults (alarms that also fire on the uninjected copy do not count)")
    untouched = res["original"][res["original"].turbine_id != a.turbine]
    spans, months = untouched_alerts(res["original"], a.turbine)
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
    (w / "lhb_summary.json").write_text(
        json.dumps(
            {k: {kk: r[kk] for kk in ("anomaly", "events", "alerts") if kk in r} for k, r in reports.items()},
            indent=2,
            default=str,
        )
    )


if __name__ == "__main__":
    main()
