"""Backfill throughput of `scada-runtime replay`: the streaming engine against the window engine, same bundle.

    python bench/bench_replay.py --bundle /path/to/bundle [--turbines 20] [--steps 1500] [--window-steps 400]

Writes a synthetic raw table (CSV, the bundle's training columns: a random walk per channel inside its valid
range, a sample every dt on the grid, 1 % missing cells) for `--turbines` turbines, turbine by turbine (as
per-turbine exports concatenated: replay puts the rows in time order), then replays it through
`replay_file` with `compute.engine: stream` and with `compute.engine: window` (the window engine on the first
`--window-steps` steps only: it is that much slower), on one core each, one after the other. Reported per
engine: turbine-steps scored per second (all closed steps, warm-up included, over the wall time of the replay
including the CSV read), and the ratio stream / window. Then the floors: the per-record cost of reading the table
and of encoding and writing the stream run's records, which bounds any replay of this output format, and the cost
of the step graph alone (`StreamScorer.step` on the same number of turbines, no I/O and no Python around it),
which bounds any replay of this bundle's model whatever the format.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import orjson

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from scada_tcn.runtime.bundle import load_bundle  # noqa: E402
from scada_tcn.runtime.daemon_config import daemon_config_from_dict  # noqa: E402
from scada_tcn.runtime.records import dumps, forecast_json  # noqa: E402
from scada_tcn.runtime.replay import (  # noqa: E402
    CHUNK_ROWS,
    FEED_MIN_ROWS,
    FEED_STEPS,
    in_time_order,
    replay_file,
    table_chunks,
)
from scada_tcn.runtime.stream import StreamScorer  # noqa: E402

T0 = 1_700_000_400  # on the 10-min grid


def write_table(bundle, path: Path, turbines: int, steps: int, seed: int = 0) -> int:
    """A synthetic raw table in the bundle's training columns; returns the number of rows."""
    spec, cols = bundle.spec, bundle.column_mapping
    rng = np.random.default_rng(seed)
    lo = np.array([max(spec.valid_range.get(c, (-1e3, 1e3))[0], -1e3) for c in spec.channels])
    hi = np.array([min(spec.valid_range.get(c, (-1e3, 1e3))[1], 1e3) for c in spec.channels])
    dt = int(spec.dt_seconds)
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["turbine_id", "timestamp", *[cols[c] for c in spec.channels]])
        for i in range(turbines):
            walk = np.cumsum(rng.standard_normal((steps, len(spec.channels))) * 0.01, axis=0)
            x = lo + (hi - lo) * (0.5 + 0.4 * np.sin(walk))
            x[rng.random(x.shape) < 0.01] = np.nan
            for s in range(steps):
                w.writerow([f"T{i:03d}", T0 + s * dt, *["" if np.isnan(v) else f"{v:.4f}" for v in x[s]]])
    return turbines * steps


def run(bundle_dir: Path, table: Path, engine: str, out: Path) -> tuple[float, int]:
    cfg = daemon_config_from_dict({"compute": {"engine": engine}, "ingest": {"grace_s": 0.0}})
    t0 = time.perf_counter()
    summary = replay_file(bundle_dir, table, out, cfg)
    return time.perf_counter() - t0, summary["scores"] + summary["warmup"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", type=Path, required=True)
    ap.add_argument("--turbines", type=int, default=20)
    ap.add_argument("--steps", type=int, default=1500, help="steps per turbine for the streaming engine")
    ap.add_argument("--window-steps", type=int, default=400, help="steps per turbine for the window engine")
    args = ap.parse_args()
    os.sched_setaffinity(0, {0})  # one core
    bundle = load_bundle(args.bundle)
    with tempfile.TemporaryDirectory() as d:
        rows = {}
        for name, steps in (("stream", args.steps), ("window", args.window_steps)):
            table = Path(d) / f"{name}.csv"
            rows[name] = write_table(bundle, table, args.turbines, steps)
        print(f"{'engine':>8} {'rows':>9} {'records':>9} {'seconds':>8} {'steps/s':>9}")
        rate = {}
        for name in ("stream", "window"):
            took, n = run(args.bundle, Path(d) / f"{name}.csv", name, Path(d) / f"{name}.jsonl")
            rate[name] = n / took
            print(f"{name:>8} {rows[name]:>9,} {n:>9,} {took:>8.1f} {rate[name]:>9,.0f}", flush=True)
        print(f"stream / window: {rate['stream'] / rate['window']:.1f}x")
        read_us = floor(bundle, Path(d) / "stream.csv", Path(d) / "stream.jsonl", rate["stream"])
        graph_floor(bundle, args.turbines, read_us)


def floor(bundle, table: Path, scores: Path, achieved: float) -> float:
    """The part of a replay no scoring engine can avoid, timed on the stream run's own table and records: reading
    the table as replay does (parsed in chunks, then put in time order through its temporary file) and encoding
    (`records.dumps`) and writing its records as JSON lines. Their sum is the throughput a replay could reach if
    scoring cost nothing."""
    cfg = daemon_config_from_dict({})
    t0 = time.perf_counter()
    chunks = table_chunks(table, bundle.spec.channels, cfg.mapping, bundle.table_format, CHUNK_ROWS)
    for _ in in_time_order(((ids, ts, v) for ids, ts, v, _ in chunks), FEED_STEPS, table.parent, FEED_MIN_ROWS):
        pass
    read = time.perf_counter() - t0
    records = [orjson.loads(line) for line in scores.read_bytes().splitlines()]
    with_forecast = [r for r in records if r.get("forecast")]  # as the engine has them: (F, K) float32 rows
    names = list(with_forecast[0]["forecast"]) if with_forecast else []
    rows = np.asarray([[r["forecast"][k] for k in names] for r in with_forecast], dtype=np.float32)
    t0 = time.perf_counter()
    texts = iter(forecast_json(names, rows) if with_forecast else [])  # as the engine encodes them
    lines = []
    for r in records:
        if r.get("forecast"):
            r["forecast"] = orjson.Fragment(next(texts))
        lines.append(dumps(r))
    encode = time.perf_counter() - t0
    t0 = time.perf_counter()
    with open(scores.with_suffix(".again"), "wb", buffering=1 << 20) as fh:
        fh.writelines(line for p in lines for line in (p, b"\n"))
    write = time.perf_counter() - t0
    n = len(records)
    us = {k: 1e6 * v / n for k, v in (("read", read), ("encode", encode), ("write", write))}
    best = n / (read + encode + write)
    print(
        f"floor per record: read+parse {us['read']:.1f} us, JSON encode {us['encode']:.1f} us, write "
        f"{us['write']:.1f} us ({sum(len(x) for x in lines) / n:,.0f} bytes): at most {best:,.0f} records/s with "
        f"free scoring; the stream engine reached {achieved / best:.0%} of that"
    )
    return us["read"]


def graph_floor(bundle, turbines: int, read_us: float, steps: int = 300) -> None:
    """The step graph's own cost per turbine-step: `StreamScorer.step` on `turbines` turbines for `steps` steps
    (after 20 unmeasured ones), nothing else. With the table's read, it bounds a replay of this model."""
    d = bundle.dims
    scorer = StreamScorer.from_bundle(bundle)
    rng = np.random.default_rng(0)
    X = rng.standard_normal((turbines, d.F)).astype(np.float32)
    M, Flags = np.ones((turbines, d.F), np.float32), np.zeros((turbines, d.R), np.float32)
    slots = np.arange(turbines)
    for t in range(20):
        scorer.step(slots, t, X, M, Flags)
    t0 = time.perf_counter()
    for t in range(20, 20 + steps):
        scorer.step(slots, t, X, M, Flags)
    us = 1e6 * (time.perf_counter() - t0) / (steps * turbines)
    print(
        f"floor of the model: the step graph alone {us:.1f} us per turbine-step ({1e6 / us:,.0f}/s); with reading "
        f"the table, at most {1e6 / (us + read_us):,.0f} turbine-steps/s with everything else free"
    )


if __name__ == "__main__":
    main()
