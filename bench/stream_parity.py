"""Long-run parity of the two engines: `scada-runtime replay` of one table with the streaming engine (step graph)
and with the window engine (window recompute), record by record.

    python bench/stream_parity.py --bundle B --table scada.csv

For every (turbine, ts): the same status, the same alert state, and scores, group ratios, values and levels
within `--atol` (default 1e-5, relative to max(1, |value|)). Prints the number of steps compared, the largest
differences and any mismatch; exits 1 on a mismatch. The demo's held-out table (6 turbines x 60 days,
`artifacts/demo/stream.csv`) is the reference case.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from scada_tcn.runtime.daemon_config import daemon_config_from_dict  # noqa: E402
from scada_tcn.runtime.replay import replay_file  # noqa: E402


def _records(bundle: Path, table: Path, engine: str, out: Path) -> tuple[dict, float]:
    cfg = daemon_config_from_dict({"compute": {"engine": engine}, "ingest": {"grace_s": 0.0}})
    t0 = time.perf_counter()
    replay_file(bundle, table, out, cfg)
    took = time.perf_counter() - t0
    docs = (json.loads(line) for line in out.read_text().splitlines())
    return {(d["turbine"], d["ts"]): d for d in docs}, took


def _numbers(d: dict) -> dict[str, float]:
    out = {"score": d.get("score")}
    for g in d.get("groups") or []:
        for k in ("ratio", "value", "level"):
            out[f"{g['group']}.{k}"] = g[k]
    return {k: v for k, v in out.items() if v is not None}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", type=Path, required=True)
    ap.add_argument("--table", type=Path, required=True)
    ap.add_argument("--atol", type=float, default=1e-5)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        stream, t_s = _records(args.bundle, args.table, "stream", Path(d) / "stream.jsonl")
        window, t_w = _records(args.bundle, args.table, "window", Path(d) / "window.jsonl")
    bad, worst, ok = [], 0.0, 0
    if set(stream) != set(window):
        bad.append(f"different steps: {len(set(stream) ^ set(window))}")
    for key in sorted(set(stream) & set(window)):
        a, b = stream[key], window[key]
        if a["status"] != b["status"] or a.get("alert") != b.get("alert"):
            bad.append(f"{key}: status/alert {a['status']}/{a.get('alert')} vs {b['status']}/{b.get('alert')}")
            continue
        na, nb = _numbers(a), _numbers(b)
        if set(na) != set(nb):
            bad.append(f"{key}: fields {sorted(set(na) ^ set(nb))}")
            continue
        for k in na:
            diff = abs(na[k] - nb[k]) / max(1.0, abs(nb[k]))
            worst = max(worst, diff)
            if diff > args.atol:
                bad.append(f"{key} {k}: {na[k]} vs {nb[k]}")
        ok += a["status"] == "ok"
    turbines = len({t for t, _ in stream})
    print(f"{len(stream):,} steps of {turbines} turbines ({ok:,} scored); stream {t_s:.1f} s, window {t_w:.1f} s")
    print(f"largest relative difference of scores, group ratios, values and levels: {worst:.2e} (atol {args.atol})")
    print(f"mismatches: {len(bad)}" + "".join(f"\n  {b}" for b in bad[:10]))
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
