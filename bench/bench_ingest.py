"""The edge's ingestion in process (binning and the engine, no MQTT), in the regimes a gateway meets, against a
baseline tree measured in the same run.

    python bench/bench_ingest.py --bundle /path/to/bundle [--baseline-tree /path/to/older/checkout]

Regimes (CPU seconds of this process, pinned to one core by the caller, e.g. `taskset -c 0`):
  fleet-step     1000 turbines with 10-minute data: each step every turbine sends one sample, taken as one loop
                 iteration (the batch the daemon's loop hands the engine), then tick and flush; 20 measured steps
                 after L warm-up steps. Reported: binning (ingest) per sample, and the whole engine per
                 turbine-step (ingest, tick, flush: features, the step graph, per-signal tracking, records).
  1Hz-small      200 turbines at 1 Hz (300 s: the open bins hold up to 60,000 samples), in batches of 10.
  1Hz-large      the same in batches of 200.
  backlog        one turbine's backlog of 1,000 samples (30 s apart) in one batch, while 1000 turbines hold open
                 bins.
  farm-backlog   every turbine's backlog of 10 samples (a minute apart: a 10-minute outage of the farm's link), all
                 in one batch in time order.
  one-by-one     the fleet-step regime with one `Engine.ingest` call per sample (a caller without batches).
`--baseline-tree` runs the same regimes with another checkout of the project (a `git worktree` of an older commit)
on the import path, in a subprocess, and prints the ratios; a tree without `Engine.ingest_batch` is fed one
sample per call (what its daemon did).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DT_NS = 600 * 10**9
T0 = 1_700_000_400 * 10**9


def _engine(bundle_dir: str) -> tuple:
    """The bundle and an Engine of whichever tree is on the import path."""
    from scada_tcn.runtime.bundle import load_bundle
    from scada_tcn.runtime.engine import Engine
    from scada_tcn.runtime.stream import make_scorer

    b = load_bundle(bundle_dir)
    return b, Engine(b, make_scorer(b), 0, 5000, 4096, max_per_stamp=64)


def _feed(eng: object, samples: list, one_by_one: bool = False) -> None:
    if hasattr(eng, "ingest_batch") and not one_by_one:
        eng.ingest_batch(samples)
    else:
        for s in samples:
            eng.ingest(s)


def fleet_step(bundle_dir: str, one_by_one: bool = False, n: int = 1000, steps: int = 20) -> dict[str, float]:
    from scada_tcn.runtime.telemetry import Sample

    b, eng = _engine(bundle_dir)
    c, L = len(b.spec.channels), int(b.dims.L)
    rng = np.random.default_rng(0)
    names = [f"T{i:04d}" for i in range(n)]
    ingest = total = 0.0
    for k in range(L + steps):
        vals = rng.normal(size=(n, c)) * 0.1 + 5
        samples = [Sample(names[i], T0 + k * DT_NS, vals[i]) for i in range(n)]
        t0 = time.process_time()
        _feed(eng, samples, one_by_one)
        t1 = time.process_time()
        eng.tick(T0 + k * DT_NS)
        eng.flush()
        if k >= L:
            ingest += t1 - t0
            total += time.process_time() - t0
    return {"ingest_us_per_sample": ingest / (n * steps) * 1e6, "engine_us_per_turbine_step": total / (n * steps) * 1e6}


def one_hz(bundle_dir: str, batch: int, n: int = 200, seconds: int = 300) -> dict[str, float]:
    from scada_tcn.runtime.telemetry import Sample

    b, eng = _engine(bundle_dir)
    c = len(b.spec.channels)
    vals = np.random.default_rng(0).normal(size=(64, c)) + 5
    seq = [Sample(f"T{i % n:04d}", T0 + 1 + (i // n) * 10**9, vals[i % 64]) for i in range(n * seconds)]
    t0 = time.process_time()
    for a in range(0, len(seq), batch):
        _feed(eng, seq[a : a + batch])
    return {"ingest_us_per_sample": (time.process_time() - t0) / len(seq) * 1e6}


def backlog(bundle_dir: str, senders: int, depth: int, spacing_s: int, n: int = 1000) -> dict[str, float]:
    """`senders` of n turbines (holding open bins) send `depth` samples each, `spacing_s` apart, in one batch in
    time order (a gateway forwarding its buffer)."""
    from scada_tcn.runtime.telemetry import Sample

    b, eng = _engine(bundle_dir)
    c = len(b.spec.channels)
    rng = np.random.default_rng(0)
    names = [f"T{i:04d}" for i in range(n)]
    for k in range(3):
        _feed(eng, [Sample(names[i], T0 + k * DT_NS - 1, rng.normal(size=c) + 5) for i in range(n)])
        eng.flush()
    back = [Sample(names[i], T0 + 3 * DT_NS + j * spacing_s * 10**9, rng.normal(size=c) + 5)
            for j in range(depth) for i in range(senders)]  # fmt: skip
    t0 = time.process_time()
    _feed(eng, back)
    return {"ingest_us_per_sample": (time.process_time() - t0) / len(back) * 1e6}


def measure(bundle_dir: str) -> dict[str, dict[str, float]]:
    """Every regime, in this process (with whichever tree is on the import path)."""
    out = {}
    for name, run in (("fleet-step", lambda: fleet_step(bundle_dir)), ("1Hz-small", lambda: one_hz(bundle_dir, 10)),
                      ("1Hz-large", lambda: one_hz(bundle_dir, 200)),
                      ("backlog", lambda: backlog(bundle_dir, senders=1, depth=1000, spacing_s=30)),
                      ("farm-backlog", lambda: backlog(bundle_dir, senders=1000, depth=10, spacing_s=60)),
                      ("one-by-one", lambda: fleet_step(bundle_dir, one_by_one=True))):  # fmt: skip
        print(f"  {name} ...", file=sys.stderr, flush=True)
        out[name] = run()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", required=True)
    ap.add_argument("--baseline-tree", type=Path, default=None, help="another checkout of the project")
    ap.add_argument("--json", action="store_true", help=argparse.SUPPRESS)  # the baseline subprocess's output
    args = ap.parse_args()
    if args.json:
        print(json.dumps(measure(args.bundle)))
        return
    base = None
    if args.baseline_tree is not None:
        print(f"baseline: {args.baseline_tree}", file=sys.stderr)
        env = {**os.environ, "PYTHONPATH": str(args.baseline_tree.resolve())}
        cmd = [sys.executable, str(Path(__file__).resolve()), "--bundle", str(Path(args.bundle).resolve()), "--json"]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env, cwd=args.baseline_tree)
        base = json.loads(out.stdout)
    print(f"this tree: {ROOT}", file=sys.stderr)
    now = measure(args.bundle)
    print(f"{'regime':12s} {'figure':28s} {'this tree':>10s} {'baseline':>10s} {'ratio':>7s}")
    for regime, figures in now.items():
        for figure, v in figures.items():
            b = base[regime][figure] if base else float("nan")
            print(f"{regime:12s} {figure:28s} {v:10.1f} {b:10.1f} {v / b:7.2f}")


if __name__ == "__main__":
    main()
