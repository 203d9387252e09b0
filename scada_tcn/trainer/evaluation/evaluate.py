"""`scada-evaluate`: forecast, fault, anomaly and event-level metrics, drift, RCA examples and plots.

Scores come from `trainer.evaluation.offline` (either engine). Thresholds are the calibrated ones; the anomaly
metrics' best-F1 threshold is chosen on the validation split and applied to the test split. Labelled fault
events are the runs of fault-labelled steps in the prepared label timelines (test period); alert states come
from the edge's alert state machine over the test windows. Drift compares the test split against the
validation split (the calibration data): KS and Wasserstein per feature and on scores, unbiased MMD on
feature vectors. Event metrics (`events`: detections by alert onsets, lead times, false alerts per
turbine-month, coverage, per fault and per class) are `trainer.evaluation.events.score_events` over each test
turbine's alert timeline.

With the RUL head, `rul` holds RMSE and the PHM08 score at each test turbine's last window
(`trainer.evaluation.rul_eval`).

Writes `metrics.json`, `metrics_flat.csv` (dotted keys, sorted), `rca_examples.json` and PNG plots under
`plots/`: per turbine the score and threshold over time with alert spans and labelled events, and a heatmap of
feature contributions around each alert.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from scada_tcn.trainer.evaluation.drift_report import feature_drift, ks_statistic, mmd2_unbiased, wasserstein_1d
from scada_tcn.trainer.evaluation.edge_records import read_fault_labels
from scada_tcn.trainer.evaluation.events import alert_spans, score_events, timelines_from_table
from scada_tcn.trainer.evaluation.metrics import anomaly_metrics, fault_metrics, forecast_metrics
from scada_tcn.trainer.evaluation.offline import InferSetup, SplitArrays, apply_alerts, infer_val_and_test
from scada_tcn.trainer.evaluation.plots import plot_contribution_heatmap, plot_score_timeline
from scada_tcn.trainer.evaluation.rul_eval import last_window_rul, rul_metrics

HEATMAP_HALF_WIDTH = 36  # windows shown before and after an alert's start
MAX_HEATMAPS = 12


def _fault_events(setup: InferSetup, res: pd.DataFrame) -> dict[str, list[tuple[int, int, str]]]:
    """Runs of fault-labelled steps inside each turbine's scored period: (start_ns, end_ns, class)."""
    out: dict[str, list[tuple[int, int, str]]] = {}
    if not setup.class_names:
        return out
    dt = setup.data.pipeline_spec["dt_seconds"] * 10**9
    for tid, g in res.groupby("turbine_id"):
        d = setup.data.dir / "turbines" / tid
        ts, y = np.load(d / "timestamps.npy"), np.load(d / "labels.npy")
        if y.ndim == 2:  # multilabel: any fault class
            y = np.where(y.any(axis=1), np.argmax(y, axis=1), 0)
        lo, hi = g["t_end"].min().value, g["t_end"].max().value
        sel = (ts >= lo) & (ts <= hi)
        ts, y = ts[sel], y[sel]
        change = np.flatnonzero(np.diff(np.concatenate([[0], y, [0]])) != 0)
        out[tid] = [
            (int(ts[a] - dt), int(ts[b - 1]), setup.class_names[int(y[a])])
            for a, b in zip(change[:-1], change[1:])
            if y[a] > 0
        ]
    return out


def _prepared_zone(data_dir: Path) -> str | None:
    """The naive_timezone the prepared data in `data_dir` was read with (its config.yaml, written by
    scada-prepare): the zone training read its labels in, whatever config the checkpoint was trained with."""
    import yaml

    return yaml.safe_load((data_dir / "config.yaml").read_text())["data"]["identifiers"]["naive_timezone"]


def _file_events(path: str | Path, turbines: list[str], zone: str | None) -> dict[str, list[tuple[int, int, str]]]:
    """Fault events of a labels CSV (turbine_id, start, end, fault; `edge_records.read_fault_labels`), local times
    in `zone`, the prepared data's naive_timezone, as scada-prepare reads labels for training; per turbine."""
    out: dict[str, list[tuple[int, int, str]]] = {t: [] for t in turbines}
    for t, a, b, f in read_fault_labels(path, zone, "data.identifiers.naive_timezone"):  # scada-prepare's setting
        if t in out:
            out[t].append((a, b, f))
    return out


def _in_events(res: pd.DataFrame, events: dict[str, list[tuple[int, int, str]]]) -> np.ndarray:
    """Per window: its end time lies in a fault event of its turbine (start < t_end <= end)."""
    t = res["t_end"].astype("int64").to_numpy()
    tid = res["turbine_id"].to_numpy()
    hit = np.zeros(len(res), bool)
    for turbine, evs in events.items():
        sel = tid == turbine
        for a, b, _ in evs:
            hit |= sel & (t > a) & (t <= b)
    return hit


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flat(v, key + "."))
        elif isinstance(v, (int, float, str, bool)) or v is None:
            out[key] = v
    return out


def _json_safe(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_safe(v) for v in x]
    if isinstance(x, (np.floating, float)):
        return None if not math.isfinite(float(x)) else float(x)
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, np.ndarray):
        return _json_safe(x.tolist())
    return x


def _scored(res: pd.DataFrame) -> pd.DataFrame:
    """The windows with a score (a fleet-relative score is NaN where too few other turbines were scored)."""
    return res[np.isfinite(res["score"].to_numpy())]


def _drift(setup: InferSetup, val: pd.DataFrame, test: pd.DataFrame) -> dict[str, Any]:
    """Test split against the validation split: features (present values of every step) and scores."""

    def rows(split: str) -> tuple[np.ndarray, np.ndarray]:
        X, M = [], []
        for tid in sorted(setup.data.index["turbine_id"].unique()):
            d = setup.data.dir / "turbines" / tid
            ts = np.load(d / "timestamps.npy")
            part = val if split == "val" else test
            g = part[part["turbine_id"] == tid]
            if g.empty:
                continue
            sel = (ts >= g["t_end"].min().value) & (ts <= g["t_end"].max().value)
            X.append(np.load(d / "X.npy", mmap_mode="r")[sel])
            M.append(np.load(d / "M_miss.npy", mmap_mode="r")[sel])
        return np.concatenate(X), np.concatenate(M)

    (Xr, Mr), (Xc, Mc) = rows("val"), rows("test")
    col = "score_raw" if "score_raw" in val else "score"  # the model's own scores: the reference is on them
    names = setup.data.feature_reg.feature_names
    fd = feature_drift(Xr, Xc, names, Mr, Mc)
    vs_ref = setup.feature_reference.ks(Xc, Mc)
    full_r, full_c = Mr.all(axis=1), Mc.all(axis=1)
    return {
        "reference": "validation split (the calibration data); for the onnx engine, the quantiles in the bundle",
        "features": fd,
        "ks_vs_reference": vs_ref,
        "drifted_vs_reference": [n for n in names if vs_ref[n] > fd["ks_threshold"]],
        "scores": {"ks": ks_statistic(val[col], test[col]), "wasserstein": wasserstein_1d(val[col], test[col])},
        "mmd2_unbiased": mmd2_unbiased(Xr[full_r], Xc[full_c]) if full_r.sum() > 1 and full_c.sum() > 1 else None,
    }


def _rca(res: pd.DataFrame, events: list[dict[str, Any]], k: int = 20) -> list[dict[str, Any]]:
    ons = [e for e in events if e["event"] == "on"]
    return [
        {
            "turbine_id": e["turbine_id"],
            "ts": e["ts"],
            "score": e["score"],
            "threshold": e["threshold"],
            "top_features": [
                {"feature": f, "contribution": c}
                for f, c in zip(
                    *res.loc[
                        (res["turbine_id"] == e["turbine_id"]) & (res["t_end"] == pd.Timestamp(e["ts"])),
                        ["top_features", "top_contrib"],
                    ].iloc[0]
                )
            ],
        }
        for e in ons[:k]
    ]


def _plots(
    out: Path, res: pd.DataFrame, arrays: SplitArrays, faults: dict, names: list[str], events: list[dict[str, Any]]
) -> list[str]:
    out.mkdir(parents=True, exist_ok=True)
    written = []
    what = "fleet-relative anomaly score" if "score_raw" in res else "anomaly score"
    for tid, tl in timelines_from_table(res).items():
        g = res[res["turbine_id"] == tid].sort_values("t_end")
        written.append(
            str(
                plot_score_timeline(
                    out / f"score_{tid}.png",
                    tl.ts_ns,
                    g["score"].to_numpy(),
                    g["threshold"].to_numpy(),
                    alert_spans(tl.ts_ns, tl.on),
                    faults.get(tid, []),
                    f"{tid}: {what} and calibrated threshold (test split)",
                )
            )
        )
    for n, e in enumerate([e for e in events if e["event"] == "on"][:MAX_HEATMAPS]):
        rows = np.flatnonzero(res["turbine_id"].to_numpy() == e["turbine_id"])
        at = int(np.searchsorted(res["t_end"].iloc[rows].astype("int64").to_numpy(), pd.Timestamp(e["ts"]).value))
        sel = rows[max(0, at - HEATMAP_HALF_WIDTH) : at + HEATMAP_HALF_WIDTH]
        written.append(
            str(
                plot_contribution_heatmap(
                    out / f"contrib_{n:02d}_{e['turbine_id']}.png",
                    res["t_end"].iloc[sel].astype("int64").to_numpy(),
                    arrays.contrib[sel],
                    names,
                    pd.Timestamp(e["ts"]).value,
                    f"{e['turbine_id']}: feature contributions around the alert of {e['ts']}",
                )
            )
        )
    return written


def evaluate(
    setup: InferSetup,
    out_dir: str | Path,
    drift: bool = False,
    max_lead_hours: float = 48.0,
    plots: bool = True,
    batch_size: int = 256,
    labels_file: str | Path | None = None,
) -> dict[str, Any]:
    """All metrics and reports for the validation and test splits; returns the metrics dict.

    `labels_file` (turbine_id, start, end, fault) replaces the prepared labels as the fault events and as the
    anomaly labels of windows (a window is anomalous when its end lies in an event): for data prepared without
    labels, such as a real export with injected faults."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    val, test, rate, arr = infer_val_and_test(setup, batch_size)
    events = apply_alerts(test, setup.alerting)
    names = setup.data.feature_reg.feature_names
    m: dict[str, Any] = {
        **setup.engine_fields(),
        "windows": {"val": len(val), "test": len(test)},
        "windows_per_s": rate,
        "calibration": setup.calibration_source,
    }
    if arr.Y_hat is not None:
        m["forecast"] = forecast_metrics(arr.Y_true, arr.Y_hat, arr.M_future, names)
    if setup.class_names and arr.y is not None and arr.fault_prob is not None:
        m["fault"] = fault_metrics(arr.y, arr.fault_prob, setup.class_names, from_logits=False)
    if labels_file is not None:
        turbines = sorted(set(val["turbine_id"]) | set(test["turbine_id"]))
        faults = _file_events(labels_file, turbines, _prepared_zone(setup.data.dir))
        m["labels"] = str(labels_file)
        v, t = _scored(val), _scored(test)
        m["anomaly"] = anomaly_metrics(v["score"], _in_events(v, faults), t["score"], _in_events(t, faults))
    else:
        faults = _fault_events(setup, test)
        if setup.class_names and "y" in test:
            v, t = _scored(val), _scored(test)
            m["anomaly"] = anomaly_metrics(v["score"], v["y"] > 0, t["score"], t["y"] > 0)
    if setup.fleet.relative:
        m["fleet"] = {
            "relative": True,
            "min_peers": setup.fleet.min_peers,
            "test_windows_without_fleet_score": int(test["score"].isna().sum()),
        }
    if "rul_true" in test and test["rul_true"].notna().any():  # the protocol: each unit's last window
        last = last_window_rul(test.dropna(subset=["rul_true"]))
        m["rul"] = {
            "at": "last window of each test turbine",
            **rul_metrics(last["rul_pred"], last["rul_true"], cap=setup.cfg.data.rul.cap),
        }
    m["events"] = score_events(
        timelines_from_table(test),
        [(t, a, b, c) for t, evs in faults.items() for a, b, c in evs],
        max_lead_ns=int(max_lead_hours * 3600 * 10**9),
        dt_ns=int(setup.data.pipeline_spec["dt_seconds"]) * 10**9,
    )
    m["alerts"] = {
        "raised": sum(e["event"] == "on" for e in events),
        "score_above_threshold_share": float((test["score"] >= test["threshold"]).mean()),
    }
    if drift:
        m["drift"] = _drift(setup, val, test)
    m = _json_safe(m)
    (out / "metrics.json").write_text(json.dumps(m, indent=2, sort_keys=True) + "\n")
    with (out / "metrics_flat.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["metric", "value"])
        for k, v in sorted(_flat(m).items()):
            w.writerow([k, v])
    (out / "rca_examples.json").write_text(json.dumps(_json_safe(_rca(test, events)), indent=2) + "\n")
    test.to_parquet(out / "results_test.parquet", index=False)
    if plots:
        m["plots"] = _plots(out / "plots", test, arr, faults, names, events)
    return m
