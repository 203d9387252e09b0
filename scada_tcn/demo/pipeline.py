"""`scada-demo`: the whole system end to end on the built-in simulator, in a few minutes on a CPU.

simulate a farm -> scada-prepare -> a small scada-train run -> scada-export -> the edge runtime scoring the
held-out timeline (through a Mosquitto broker it starts when `mosquitto` is on PATH, else through
`scada-runtime replay`, the same pipeline) -> a summary a person can read: the alerts raised against the
injected faults, their lead time, the top features of each alert, and where the artifacts are.

The runtime is fed from the start of the validation period, so its rolling windows and the L-step ring buffer
are warm when the test period begins; only test-period alerts are judged.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from scada_tcn.demo.broker import BrokerRun, run_through_broker
from scada_tcn.export.bundle_writer import export_bundle
from scada_tcn.runtime.daemon_config import daemon_config_from_dict
from scada_tcn.runtime.records import dedupe
from scada_tcn.runtime.replay import replay_file
from scada_tcn.trainer.config import load_config
from scada_tcn.trainer.data.prepare import format_summary, prepare
from scada_tcn.trainer.evaluation.edge_records import event_lines, read_fault_labels, read_records, report
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


def _raised(alerts_path: Path, lo: int, hi: int) -> list[dict[str, Any]]:
    """The runtime's alert records that turned an alert on in [lo, hi), in file order (for their top features)."""
    recs = [json.loads(line) for line in dict.fromkeys(alerts_path.read_text().splitlines())]
    return [a for a in recs if a["state"] == "on" and lo <= pd.Timestamp(a["ts"]).value < hi]


def summarize(
    labels_csv: Path, scores_path: Path, alerts_path: Path, test_start: str, test_end: str, out_dir: Path
) -> dict[str, Any]:
    """`score_events` of the runtime's test-period alert timelines against the labelled faults starting in it, by
    the report of the edge's records (`edge_records.report`: its report.json and plots go to `out_dir`).

    Adds "alerts": the alert records raised in the test period, and "report": the report's other figures."""
    lo, hi = pd.Timestamp(test_start).value, pd.Timestamp(test_end).value
    rep = report(read_records(scores_path), out_dir, read_fault_labels(labels_csv), lo, hi, int(MAX_LEAD_H * 3600e9))
    ev = rep.pop("events")
    ev["alerts"] = _raised(alerts_path, lo, hi)
    ev["report"] = rep
    return ev


def format_report(ev: dict[str, Any], paths: dict[str, Path], run: BrokerRun, timings: dict[str, float]) -> str:
    lines = ["", "=" * 78, f"scada-demo: the edge runtime scored the held-out period ({run.how})", "=" * 78]
    sent, scored = sum(run.sent.values()), sum(min(run.scored.get(t, 0), n) for t, n in run.sent.items())
    state = "complete" if run.complete else "INCOMPLETE: the figures below are not a result"
    lines.append(
        f"steps scored: {scored:,} of {sent:,} sent ({state}); {run.messages:,} messages, {run.duplicates:,} "
        f"duplicate records, {run.reconnects} reconnects, {run.seconds:.0f} s"
    )
    lines += event_lines(ev, "the test period", MAX_LEAD_H)
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
    run = None
    if use_broker is None or use_broker:
        run = run_through_broker(bundle.path, stream, scores, alerts, w / "broker", required=bool(use_broker), log=log)
    if run is None:
        run = _replay(bundle.path, stream, scores, alerts, "(no mosquitto on PATH)" if use_broker is None else "")
    timings["runtime"] = time.perf_counter() - t
    t = time.perf_counter()
    ev = summarize(Path(synth["labels"]), scores, alerts, test_start, test_end, w / "report")
    timings["report"] = time.perf_counter() - t
    paths = {
        "data": w / "synth",
        "prepared": w / "processed",
        "checkpoint": best,
        "bundle": bundle.path,
        "scores": scores,
        "alerts": alerts,
        "report": w / "report",
    }
    log(format_report(ev, paths, run, timings))
    summary = {**ev, "runtime": dataclasses.asdict(run) | {"complete": run.complete}, "timings": timings}
    (w / "demo_summary.json").write_text(json.dumps(summary, indent=2, default=str))
    if not run.complete:
        missing = {t: n - run.scored.get(t, 0) for t, n in run.sent.items() if run.scored.get(t, 0) < n}
        raise DemoIncomplete(
            f"the runtime scored {sum(run.scored.values()):,} of {sum(run.sent.values()):,} closed steps "
            f"(missing per turbine: {missing}; {run.conflicts} steps with two different records): the figures above "
            "are incomplete, not a result"
        )
    return ev


class DemoIncomplete(RuntimeError):
    """The runtime did not score every step the demo sent it: the report is not a result."""


def _replay(bundle_dir: Path, stream: Path, scores: Path, alerts: Path, why: str) -> BrokerRun:
    """The replay path, reported like a broker run (every step of the table is closed at its end)."""
    t0 = time.perf_counter()
    replay_file(bundle_dir, stream, scores, daemon_config_from_dict({}), alerts_out=alerts)
    d = dedupe(scores.read_bytes().splitlines())
    df = pd.read_csv(stream, usecols=["turbine_id", "timestamp"], dtype=str)
    labels = pd.to_datetime(df["timestamp"], utc=True, format="ISO8601").dt.ceil("10min")
    span = labels.groupby(df["turbine_id"]).agg(["min", "max"])  # replay closes every bin of each turbine's grid
    sent = {str(t): int((r["max"] - r["min"]) / pd.Timedelta("10min")) + 1 for t, r in span.iterrows()}
    scored = {t: len(v) for t, v in d.seqs().items()}
    return BrokerRun(f"scada-runtime replay {why}".strip(), len(df), sent, scored, d.duplicates, len(d.conflicts), 0,
                     time.perf_counter() - t0)  # fmt: skip
