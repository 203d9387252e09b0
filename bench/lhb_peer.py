"""La Haute Borne: fleet-relative scores and pooled thresholds on a finished run, without exporting it again.

    python bench/lhb_injection.py --workdir artifacts/lhb_group_ctx2_dec ...   # first: run H of the README
    python bench/lhb_peer.py --workdir artifacts/lhb_group_ctx2_dec

Reads what `lhb_injection.py` left in the workdir: the bundle, the prepared original data, and the test results
of the original and the injected copy. It scores the validation split once with the bundle (cached as
`val_results.parquet`). Then it compares two alerting scores, each with thresholds at the bundle's calibration
percentile of its own validation scores, and the bundle's alert state machine (`runtime.alerts` via
`trainer.evaluation.offline.apply_alerts`):
- `raw`: the model's score;
- `peer`: score minus the median score of the other turbines at the same step (`runtime.peers`, what a bundle
  exported with `infer.fleet.relative=true` alerts on). Storms, icing and grid events reach every turbine of a
  farm at once, a fault reaches one. With no other turbine scored at that step the window has no peer score and
  cannot raise an alert.
Each comes with per-turbine thresholds and with one pooled threshold for the fleet (a turbine with few validation
windows, such as R80711 here, gets a noisy threshold of its own).

Prints, per variant: detected injected faults with their lead time (`lhb_injection.detections`: the project's
`score_events`, an alert that turns on from --max-lead-hours before the fault to its end while the uninjected copy
has no alert on at that step), the false alerts per turbine-month and the share of windows above threshold per
month on the untouched turbines.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

from scada_tcn.runtime.peers import fleet_relative


def peer_relative(res: pd.DataFrame) -> np.ndarray:
    """Each window's score minus the median score of the other turbines at the same window end (NaN without peers)."""
    rel, _ = fleet_relative(
        res["score"].to_numpy(), res["t_end"].astype("int64").to_numpy(), np.ones(len(res), bool), min_peers=1
    )
    return rel


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", type=Path, required=True, help="a finished lhb_injection.py workdir")
    ap.add_argument("--turbine", default="R80736", help="the turbine the faults were injected into")
    ap.add_argument("--max-lead-hours", type=float, default=48.0)
    a = ap.parse_args()
    from lhb_injection import detections, untouched_alerts  # this folder is on sys.path when the script runs

    from scada_tcn.trainer.evaluation.offline import apply_alerts, infer_split, setup_from_bundle

    w = a.workdir
    setup = setup_from_bundle(w / "bundle", w / "processed")
    cache = w / "val_results.parquet"
    if not cache.is_file():
        pd.DataFrame(infer_split(setup, "val")[0]).to_parquet(cache, index=False)
    runs = {"val": pd.read_parquet(cache)}
    for name in ("original", "injected"):
        runs[name] = pd.read_parquet(w / f"eval_{name}" / "results_test.parquet")
    for k, r in runs.items():
        r = runs[k] = r.sort_values(["turbine_id", "t_end"], ignore_index=True)
        r["raw"] = r["score_raw"] if "score_raw" in r else r["score"]  # a fleet-relative bundle keeps both
        r["peer"] = peer_relative(r.assign(score=r["raw"]))
    q = setup.calibration.percentile
    labels = pd.read_csv(w / "injected" / "labels.csv")
    lead = pd.Timedelta(hours=a.max_lead_hours)
    dt = pd.Timedelta(seconds=int(setup.data.pipeline_spec["dt_seconds"]))
    print(
        f"thresholds: the {q}th percentile of each variant's validation scores "
        f"({len(runs['val'])} windows, {runs['val'].peer.notna().mean():.0%} with a peer score)"
    )
    print(
        f"{'score':<5} {'threshold':<11} {'detected (lead, +: before the start)':<52} {'FA/turbine-month':>16}  "
        "share above threshold (untouched turbines, per month)"
    )
    for col in ("raw", "peer"):
        for pooled in (False, True):
            v = runs["val"].dropna(subset=[col])
            thr = (
                pd.Series(np.percentile(v[col], q), index=v.turbine_id.unique())
                if pooled
                else v.groupby("turbine_id")[col].quantile(q / 100.0)
            )
            for name in ("original", "injected"):
                r = runs[name]
                r["threshold"] = r.turbine_id.map(thr)
                # no peer at this step: the score cannot raise an alert (the alert state machine needs a number)
                r["score"] = r[col].fillna(-np.inf).clip(lower=-1e9)
                apply_alerts(r, setup.alerting)
            found = detections(runs["original"], runs["injected"], labels, lead, dt)
            det = [f"{e['fault']} {e['lead_ns'] / 3.6e12:+.0f} h" for e in found["events"] if e["detected"]]
            u = runs["original"][runs["original"].turbine_id != a.turbine]
            raised, months = untouched_alerts(runs["original"], a.turbine, dt)
            fa = raised / months
            vu = v[v.turbine_id != a.turbine]
            shares = [f"val {np.mean(vu[col] >= vu.turbine_id.map(thr)):.1%}"]
            for p, g in u.groupby(u.t_end.dt.tz_convert(None).dt.to_period("M")):
                shares.append(f"{p} {np.mean(g.score >= g.threshold):.1%}")
            found_s = f"{len(det)}/{len(labels)}: " + ", ".join(det)
            kind = "pooled" if pooled else "per turbine"
            print(f"{col:<5} {kind:<11} {found_s:<52} {fa:>16.2f}  {' / '.join(shares)}")


if __name__ == "__main__":
    main()
