"""`scada-demo`: the whole system end to end on the built-in simulator, in a few minutes on a CPU.

simulate a farm -> scada-prepare -> a small scada-train run -> scada-export -> the edge runtime scoring the
held-out timeline (through a Mosquitto broker it starts when `mosquitto` is on PATH, else through
`scada-runtime replay`, the same pipeline) -> a summary a person can read: the alerts raised against the
injected faults, their lead time, the top features of each alert, and where the artifacts are.

The runtime is fed from the start of the validation period, so its rolling windows and the L-step ring buffer
are warm when the test period begins; only test-period alerts are judged.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from scada_tcn.demo.broker import run_through_broker
from scada_tcn.export.bundle_writer import export_bundle
from scada_tcn.runtime.config import config_from_dict
from scada_tcn.runtime.replay import replay_file
from scada_tcn.trainer.config import load_config
from scada_tcn.trainer.data.prepare import format_summary, prepare
from scada_tcn.trainer.evaluation.metrics import event_metrics
from scada_tcn.trainer.sources.simulator import write_synthetic
from scada_tcn.trainer.training.fit import fit

ROOT = Path(__file__).resolve().parents[2]
MAX_LEAD_H = 48.0


@dataclass(frozen=True)
class DemoSizes:
    turbines: int = 6
    days: float = 120.0
    epochs: int = 2
    steps_per_epoch: int = 120
    D: int = 32
    faults_per_turbine_year: float = 15.0  # more than the simulator's default, so the short test period has some


def _slice_from(src: Path, dst: Path, start_iso: str) -> Path:
    """Rows of the raw CSV stamped at or after `start_iso` (the stream the gateway would have seen), cells as text."""
    df = pd.read_csv(src, dtype=str, keep_default_na=False)
    keep = pd.to_datetime(df["timestamp"], utc=True, format="ISO8601") >= pd.Timestamp(start_iso)
    df[keep].to_csv(dst, index=False)
    return dst


def _alert_spans(alerts_path: Path, end_ns: dict[str, int]) -> tuple[dict[str, list], list[dict[str, Any]]]:
    spans: dict[str, list] = {}
    ons: list[dict[str, Any]] = []
    open_at: dict[str, int] = {}
    for line in alerts_path.read_text().splitlines():
        a = json.loads(line)
        t = pd.Timestamp(a["ts"]).value
        if a["state"] == "on":
            open_at[a["turbine"]] = t
            ons.append(a)
        elif a["turbine"] in open_at:
            spans.setdefault(a["turbine"], []).append((open_at.pop(a["turbine"]), t))
    for tid, t in open_at.items():
        spans.setdefault(tid, []).append((t, end_ns[tid]))
    return spans, ons


def summarize(
    labels_csv: Path, alerts_path: Path, test_start: str, test_end: str, turbines: list[str]
) -> dict[str, Any]:
    """Event metrics of the runtime's alerts against the labelled faults of the test period."""
    lo, hi = pd.Timestamp(test_start).value, pd.Timestamp(test_end).value
    labels = pd.read_csv(labels_csv)
    faults: dict[str, list] = {t: [] for t in turbines}
    kinds = {}
    for f in labels.itertuples():
        a, b = pd.Timestamp(f.start).value, pd.Timestamp(f.end).value
        if f.turbine_id in faults and a >= lo and a < hi:
            faults[f.turbine_id].append((a, b))
            kinds[(f.turbine_id, a)] = f.fault
    spans, ons = _alert_spans(alerts_path, {t: hi for t in turbines})
    spans = {t: [(a, b) for a, b in s if a >= lo and a < hi] for t, s in spans.items()}
    ev = event_metrics(spans, faults, {t: hi - lo for t in turbines}, int(MAX_LEAD_H * 3600e9))
    for e in ev["events"]:
        e["fault"] = kinds[(e["turbine"], e["start_ns"])]
    ev["alerts"] = [a for a in ons if lo <= pd.Timestamp(a["ts"]).value < hi]
    return ev


def format_report(ev: dict[str, Any], paths: dict[str, Path], how: str, timings: dict[str, float]) -> str:
    lines = ["", "=" * 78, f"scada-demo: the edge runtime scored the held-out period ({how})", "=" * 78]
    lines.append(
        f"labelled faults in the test period: {ev['n_events']}, detected: {ev['n_detected']} "
        f"(an alert from {MAX_LEAD_H:g} h before the fault to its end)"
    )
    for e in ev["events"]:
        start = pd.Timestamp(e["start_ns"], tz="UTC").strftime("%Y-%m-%d %H:%M")
        lead = f"lead {e['lead_ns'] / 3.6e12:+.1f} h" if e["detected"] else "missed"
        lines.append(f"  {e['turbine']}  {e['fault']:<18} starts {start}   {lead}")
    per_month = ev["false_alerts_per_turbine_month"]
    lines.append(
        f"alerts raised: {ev['n_alerts']}, of which false (no fault nearby): {ev['n_false_alerts']} "
        f"= {per_month:.2f} per turbine-month"
    )
    for a in ev["alerts"][:12]:
        top = ", ".join(f"{f['name']} {f['contribution']:.3f}" for f in a["top_features"][:3])
        lines.append(f"  {a['ts'][:16]} {a['turbine']} score {a['score']:.3f} ({a['ratio']:.2f}x threshold): {top}")
    lines.append("timings: " + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items()))
    lines.append("artifacts:")
    lines += [f"  {k:<10} {v}" for k, v in paths.items()]
    return "\n".join(lines)


def run_demo(
    workdir: str | Path,
    sizes: DemoSizes = DemoSizes(),
    seed: int = 0,
    use_broker: bool | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run every stage under `workdir`; returns the event summary (also written to demo_summary.json)."""
    w = Path(workdir).resolve()
    timings: dict[str, float] = {}
    t = time.perf_counter()
    synth = write_synthetic(
        w / "synth", sizes.turbines, sizes.days, seed, "2024-01-01", "csv", fault_rate=sizes.faults_per_turbine_year
    )
    timings["simulate"] = time.perf_counter() - t
    cfg = load_config(
        ROOT / "configs" / "config.yaml",
        [
            f"data.paths.raw_dir={synth['scada']}",
            f"data.paths.labels_file={synth['labels']}",
            f"data.paths.processed_dir={w / 'processed'}",
            f"output_dir={w / 'run'}",
            f"seed={seed}",
            f"train.epochs={sizes.epochs}",
            f"train.max_steps_per_epoch={sizes.steps_per_epoch}",
            f"model.tcn.D={sizes.D}",
            "model.heads.forecast.hidden=64",
            "model.heads.fault.hidden=32",
            "infer.calibration.min_windows=100",
        ],
    )
    t = time.perf_counter()
    log(format_summary(prepare(cfg)))
    timings["prepare"] = time.perf_counter() - t
    t = time.perf_counter()
    best = fit(cfg, log=log)
    timings["train"] = time.perf_counter() - t
    t = time.perf_counter()
    bundle = export_bundle(best, out_dir=w / "bundle", log=log)
    timings["export"] = time.perf_counter() - t
    val_start, (test_start, test_end) = cfg.data.splits.val_range[0], cfg.data.splits.test_range
    stream = _slice_from(Path(synth["scada"]), w / "stream.csv", val_start)
    scores, alerts = w / "runtime_scores.jsonl", w / "runtime_alerts.jsonl"
    t = time.perf_counter()
    if use_broker is None or use_broker:
        how = run_through_broker(bundle.path, stream, scores, alerts, w / "broker", required=bool(use_broker), log=log)
    else:
        how = None
    if how is None:
        replay_file(bundle.path, stream, scores, config_from_dict({}), alerts_out=alerts)
        how = "scada-runtime replay" + (" (no mosquitto on PATH)" if use_broker is None else "")
    timings["runtime"] = time.perf_counter() - t
    turbines = [f"WT{i:02d}" for i in range(1, sizes.turbines + 1)]
    ev = summarize(Path(synth["labels"]), alerts, test_start, test_end, turbines)
    paths = {
        "data": w / "synth",
        "prepared": w / "processed",
        "checkpoint": best,
        "bundle": bundle.path,
        "scores": scores,
        "alerts": alerts,
    }
    log(format_report(ev, paths, how, timings))
    (w / "demo_summary.json").write_text(json.dumps({**ev, "runtime": how, "timings": timings}, indent=2, default=str))
    return ev
