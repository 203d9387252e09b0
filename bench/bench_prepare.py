"""Benchmark: scada-prepare on N simulated turbine-years against a plain pandas groupby().rolling() pipeline.

    python bench/bench_prepare.py [--turbines 50] [--days 365] [--workdir /tmp/scada_bench]

Both run in a fresh subprocess on the same Parquet export, so wall time and peak resident memory (ru_maxrss)
are measured the same way. The pandas baseline computes the same features (10-min bins, sin/cos, wrapped yaw
error, deltas, rolling mean/std, median/IQR scaling on the training rows) the way one would write it first,
without QC, flags, labels or the window index, which scada-prepare also does in its time.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_ours(data_dir: Path, out_dir: Path) -> dict:
    from scada_tcn.trainer.config import load_config
    from scada_tcn.trainer.data.prepare import prepare

    cfg = load_config(
        ROOT / "configs" / "config.yaml",
        [
            f"data.paths.raw_dir={data_dir / 'scada.parquet'}",
            f"data.paths.labels_file={data_dir / 'labels.csv'}",
            f"data.paths.processed_dir={out_dir}",
        ],
    )
    t = time.perf_counter()
    s = prepare(cfg)
    return {"wall_s": time.perf_counter() - t, "steps": s["steps"], "F": s["F"], "windows": s["windows"]}


def run_pandas(data_dir: Path, out_dir: Path) -> dict:
    import numpy as np
    import pandas as pd

    t = time.perf_counter()
    df = pd.read_parquet(data_dir / "scada.parquet")
    chans = [
        "wind_speed",
        "power",
        "rotor_speed",
        "gen_speed",
        "pitch",
        "wind_dir",
        "nacelle_dir",
        "ambient_temp",
        "nacelle_temp",
        "gearbox_oil_temp",
        "gearbox_bearing_temp",
        "gen_bearing_temp",
    ]
    df["step"] = df["timestamp"].dt.ceil("10min")
    df = df.drop_duplicates(["turbine_id", "timestamp"], keep="last")
    binned = df.groupby(["turbine_id", "step"])[chans].mean()
    full = []
    for tid, g in binned.groupby(level=0):
        g = g.droplevel(0)
        g = g.reindex(pd.date_range(g.index.min(), g.index.max(), freq="10min"))
        g.index.name = "step"
        full.append(g.assign(turbine_id=tid).set_index("turbine_id", append=True).swaplevel())
    b = pd.concat(full)
    for c in ("wind_dir", "nacelle_dir"):
        b[f"{c}_sin"], b[f"{c}_cos"] = np.sin(np.radians(b[c])), np.cos(np.radians(b[c]))
    b["yaw_error"] = (b["wind_dir"] - b["nacelle_dir"] + 180) % 360 - 180
    grp = b.groupby(level=0)
    for c in ("gearbox_oil_temp", "gearbox_bearing_temp", "gen_bearing_temp"):
        b[f"{c}_delta"] = grp[c].diff()
    for c in ("wind_speed", "power", "yaw_error"):
        for w in (6, 36):
            r = grp[c].rolling(w)
            b[f"{c}_rmean{w}"] = r.mean().droplevel(0)
            b[f"{c}_rstd{w}"] = r.std(ddof=0).droplevel(0)
    feats = b.drop(columns=["wind_dir", "nacelle_dir"])
    train = feats[feats.index.get_level_values("step") < pd.Timestamp("2024-03-01", tz="UTC")]
    med, iqr = train.median(), train.quantile(0.75) - train.quantile(0.25)
    scaled = ((feats - med) / iqr.where(iqr > 1e-6, 1.0)).fillna(0.0)
    out_dir.mkdir(parents=True, exist_ok=True)
    scaled.astype("float32").to_parquet(out_dir / "features.parquet")
    return {"wall_s": time.perf_counter() - t, "steps": len(feats), "F": feats.shape[1]}


def _child(stage: str, data_dir: Path, out_dir: Path) -> dict:
    code = (
        f"import json,sys,resource; sys.path.insert(0,{str(ROOT)!r}); from bench.bench_prepare import run_{stage};"
        f"r=run_{stage}(__import__('pathlib').Path({str(data_dir)!r}),__import__('pathlib').Path({str(out_dir)!r}));"
        "r['peak_rss_mb']=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss/1024; print(json.dumps(r))"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    if res.returncode != 0:
        raise SystemExit(f"{stage} failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--turbines", type=int, default=50)
    ap.add_argument("--days", type=float, default=365)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/scada_bench_prepare"))
    a = ap.parse_args()
    from scada_tcn.trainer.sources.simulator import write_synthetic

    data = a.workdir / "synth"
    if not (data / "scada.parquet").is_file():
        t = time.perf_counter()
        write_synthetic(data, a.turbines, a.days, 0, "2024-01-01", "parquet")
        print(f"simulated {a.turbines} turbines x {a.days:g} days in {time.perf_counter() - t:.1f} s", flush=True)
    ours = _child("ours", data, a.workdir / "ours")
    base = _child("pandas", data, a.workdir / "pandas")
    print(f"rows (10-min steps): ours {ours['steps']:,}, pandas {base['steps']:,}; features {ours['F']} / {base['F']}")
    print(
        f"scada-prepare (full: load, QC, features, scaler, flags, labels, windows, write): "
        f"{ours['wall_s']:.1f} s, peak RSS {ours['peak_rss_mb']:.0f} MB"
    )
    print(
        f"pandas groupby().rolling() (load, bin, features, scaler, write): "
        f"{base['wall_s']:.1f} s, peak RSS {base['peak_rss_mb']:.0f} MB"
    )
    print(
        f"ratio pandas/ours: time {base['wall_s'] / ours['wall_s']:.2f}x, memory "
        f"{base['peak_rss_mb'] / ours['peak_rss_mb']:.2f}x"
    )


if __name__ == "__main__":
    main()
