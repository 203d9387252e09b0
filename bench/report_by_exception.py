"""Detections of one model fed a report-by-exception feed, with and without `hold_s`, by the project's event scorer.

    python bench/report_by_exception.py --bundle artifacts/demo/bundle --table artifacts/demo/stream.csv \\
        --labels artifacts/demo/synth/labels.csv --start 2024-03-21T00:00:00Z --end 2025-01-01T00:00:00Z

A dense table (one row per turbine and step) is written as a report-by-exception source would send it: a channel's
value only when it moved more than its deadband since the value last sent, or `--heartbeat-min` after it (the
source's "publish at least every" setting); the channels the stuck-signal check reads (`repeat_channels`) are sent
every step, as they cannot be held. Each variant is replayed (`scada-runtime replay`, the edge's own pipeline) and
scored against the labels by `edge_records.report`:

    dense        the table as it is, the bundle as it is (the reference)
    rbe          the report-by-exception table, the bundle as it is (no holds: unsent values are missing)
    rbe+hold     the report-by-exception table, the bundle with pipeline_spec.hold_s = --hold-s for every channel
                 sent by exception
    dense+hold   the table as it is with those holds (what the holds change on a dense feed: its gaps)

The bundle with holds is the same model (graphs, scaler, levels) with `pipeline_spec.hold_s` set in bundle.json, as
a re-export of the checkpoint with `data.qc.hold_s` would write it (a bundle of schema 10 is lifted to 11, which
adds that key alone). Prints, per variant: whether the report is complete, the records in the period and how many
were `ok` and `insufficient_data`, the mean fraction of channels missing (`missing_now`), faults detected, false
alerts, the median onset in hours after the fault's start, and the replay's seconds.
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from scada_tcn.runtime.bundle import load_bundle  # noqa: E402
from scada_tcn.runtime.daemon_config import daemon_config_from_dict  # noqa: E402
from scada_tcn.runtime.replay import replay_file  # noqa: E402
from scada_tcn.runtime.telemetry import parse_timestamp_ns  # noqa: E402
from scada_tcn.trainer.evaluation.edge_records import read_fault_labels, read_records, report  # noqa: E402

# deadbands in each channel's units: what a SCADA historian or an OPC UA subscription typically sets
DEADBANDS = {"wind_speed": 0.5, "wind_dir": 10.0, "nacelle_dir": 5.0, "power": 50.0, "rotor_speed": 0.5,
             "gen_speed": 50.0, "ambient_temp": 0.5, "status": 0.0}  # fmt: skip


def _number(cell: str) -> float | None:
    try:
        return float(cell)
    except ValueError:
        return None


def _moved(a: str, b: str, band: float, angle: bool) -> bool:
    """Whether value b is sent after a was (a cell that is no number, such as a logger's `#N/A`, always is)."""
    x, y = _number(a), _number(b)
    if x is None or y is None:
        return True
    d = abs(x - y)
    return (min(d, 360.0 - d) if angle else d) > band or (band == 0.0 and x != y)


def by_exception(table: Path, out: Path, channels: dict[str, float], heartbeat_ns: int) -> tuple[int, int]:
    """Write `table` as a report-by-exception feed of `channels` (column -> deadband); returns (cells of those
    channels, cells sent)."""
    with open(table, newline="") as fh:
        rows = list(csv.reader(fh))
    header, body = rows[0], rows[1:]
    ti, ii = header.index("timestamp"), header.index("turbine_id")
    cols = {header.index(c): band for c, band in channels.items()}
    sent: dict[tuple[str, int], tuple[str, int]] = {}
    cells = kept = 0
    for r in body:
        t = parse_timestamp_ns(r[ti])
        for j, band in cols.items():
            if r[j] == "":
                continue
            cells += 1
            last = sent.get((r[ii], j))
            if last is None or _moved(last[0], r[j], band, "dir" in header[j]) or t - last[1] >= heartbeat_ns:
                sent[(r[ii], j)] = (r[j], t)
                kept += 1
            else:
                r[j] = ""
    with open(out, "w", newline="") as fh:
        csv.writer(fh).writerows([header, *body])
    return cells, kept


def with_holds(bundle: Path, out: Path, hold: dict[str, int]) -> Path:
    """The bundle's files with `pipeline_spec.hold_s` set (schema 10 lifted to 11)."""
    shutil.copytree(bundle, out)
    doc = json.loads((out / "bundle.json").read_text())
    doc["schema_version"] = max(doc["schema_version"], 11)
    doc["pipeline_spec"]["hold_s"] = hold
    (out / "bundle.json").write_text(json.dumps(doc, indent=2) + "\n")
    load_bundle(out)  # refuses what the runtime would
    return out


def scored(
    bundle: Path, table: Path, labels: Path, work: Path, max_lead_h: float, period: tuple, mapping: dict | None = None
) -> dict:
    """Replay (runtime.yaml's `mapping` section: `mapping`) and the event scorer over `period` ([start, end) ns,
    None: all of it): the figures printed."""
    t0 = time.perf_counter()
    cfg = daemon_config_from_dict({"ingest": {"grace_s": 0.0}, "mapping": mapping or {}})
    replay_file(bundle, table, work / "scores.jsonl", cfg)
    took = time.perf_counter() - t0
    recs = read_records(work / "scores.jsonl")
    faults = read_fault_labels(labels)
    rep = report(recs, None, faults, *period, max_lead_ns=int(max_lead_h * 3600e9), plots=False)
    lo, hi = period[0] or -(2**63), period[1] or 2**63 - 1
    docs = [d for d in map(json.loads, (work / "scores.jsonl").read_text().splitlines())
            if lo <= parse_timestamp_ns(d["ts"]) < hi]  # fmt: skip
    ev = rep["events"]  # None: no step scored ok in the period
    leads = [e["lead_ns"] / 3600e9 for e in ev["events"] if e["detected"]] if ev else []
    n_faults = sum(lo <= f[1] < hi for f in faults)
    return {
        "complete": rep["complete"],
        "steps": len(docs),
        "ok": sum(d["status"] == "ok" for d in docs),
        "insufficient_data": sum(d["status"] == "insufficient_data" for d in docs),
        "missing_now": round(float(np.mean([d["missing_now"] for d in docs])), 4),
        "detected": f"{ev['n_detected'] if ev else 0} of {n_faults}",
        "false_alerts": ev["n_false_alerts"] if ev else 0,
        "median_onset_h": None if not leads else round(-float(np.median(leads)), 1),
        "replay_s": round(took, 1),
    }


def arguments(doc: str, table: str) -> tuple[argparse.Namespace, tuple, dict[str, float]]:
    """The command line of this bench and `time_weighted.py` (`table`: what --table holds): the arguments, the
    scored period ([start, end) ns, None: open) and the deadbands of the bundle's channels sent by exception (those
    the stuck-signal check does not read)."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", type=Path, required=True)
    ap.add_argument("--table", type=Path, required=True, help=table)
    ap.add_argument("--labels", type=Path, required=True, help="fault events CSV (turbine_id,start,end,fault)")
    ap.add_argument("--heartbeat-min", type=float, default=60.0, help="a value is sent at least this often")
    ap.add_argument("--hold-s", type=int, default=3900, help="hold_s of every channel sent by exception")
    ap.add_argument("--max-lead-hours", type=float, default=48.0)
    ap.add_argument("--start", help="score events from this stamp on (the demo's test split: 2024-03-21T00:00Z)")
    ap.add_argument("--end", help="... up to this one, excluded")
    args = ap.parse_args()
    period = tuple(None if x is None else parse_timestamp_ns(x) for x in (args.start, args.end))
    spec = load_bundle(args.bundle).spec
    return args, period, {c: b for c, b in DEADBANDS.items() if c in spec.channels and c not in spec.repeat_channels}


def main() -> None:
    args, period, bands = arguments(__doc__, "a dense table in the bundle's training layout")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        rbe = work / "rbe.csv"
        cells, kept = by_exception(args.table, rbe, bands, int(args.heartbeat_min * 60e9))
        print(f"report by exception: {', '.join(f'{c} {b:g}' for c, b in bands.items())}; heartbeat "
              f"{args.heartbeat_min:g} min: {kept:,} of {cells:,} values sent ({kept / cells:.1%})")  # fmt: skip
        held = with_holds(args.bundle, work / "held", dict.fromkeys(bands, args.hold_s))
        variants = {"dense": (args.bundle, args.table), "rbe": (args.bundle, rbe), "rbe+hold": (held, rbe),
                    "dense+hold": (held, args.table)}  # fmt: skip
        rows = {}
        for name, (bundle, table) in variants.items():
            (work / name).mkdir()
            rows[name] = scored(bundle, table, args.labels, work / name, args.max_lead_hours, period)
            print(f"{name:<11} {json.dumps(rows[name])}", flush=True)


if __name__ == "__main__":
    main()
