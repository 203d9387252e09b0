"""`scada-prepare`: raw SCADA table -> per-turbine model arrays, registries, scaler and window index.

Order (spec D): load -> per-turbine binning/QC (runtime.binning) -> winsor caps fitted on training rows ->
engineered features, masks and flags (runtime.pipeline) -> robust scaler fitted on training rows ->
scaling and fill -> labels -> window index. All arithmetic is runtime/'s, the same code the edge runs.

Output layout under `data.paths.processed_dir`:
    turbines/<id>/{X.npy (T,F) float32, M_miss.npy (T,F) uint8, Flags.npy (T,R) float32,
                   Repeat.npy (T,S) uint8 exact-repeat codes of the spec's repeat_channels,
                   timestamps.npy (T,) int64 ns UTC, labels.npy (T,) int64 | (T,C) uint8 (labels on),
                   rul.npy (T,) float32 target in steps, NaN = none (data.rul on)}
    window_index.parquet   registries/{feature,flag}_registry.json   scalers/robust_scaler.json
    pipeline_spec.json     summary.json   config.yaml   fingerprint.txt
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from scada_tcn.runtime.binning import bin_end_ns, bin_timeline
from scada_tcn.runtime.errors import InputError
from scada_tcn.runtime.ids import turbine_id_problem
from scada_tcn.runtime.pipeline import Preprocessor, scaled_mask
from scada_tcn.runtime.qc import fit_winsor_caps
from scada_tcn.runtime.registry import registries_from_spec
from scada_tcn.runtime.repeated_hour import left_out_said
from scada_tcn.runtime.scaling import fit_robust_scaler
from scada_tcn.trainer.config import RootCfg, save_resolved
from scada_tcn.trainer.config.derive import spec_from_config
from scada_tcn.trainer.data.registry import save_registry
from scada_tcn.trainer.data.tables import RawTable, load_raw_table, table_format
from scada_tcn.trainer.data.windowing import (
    SPLITS,
    build_window_index,
    check_turbine_patterns,
    label_timeline,
    load_label_events,
    step_splits,
)


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _per_turbine(table: RawTable) -> dict[str, np.ndarray]:
    """Row indices of each turbine, in file order."""
    order = np.argsort(table.turbine_ids, kind="stable")
    ids, first = np.unique(table.turbine_ids[order], return_index=True)
    return {str(t): idx for t, idx in zip(ids, np.split(order, first[1:]), strict=True)}


def target_timeline(grid: np.ndarray, ts_ns: np.ndarray, target: np.ndarray, dt_seconds: int) -> np.ndarray:
    """Per-step target (T,) float64 on `grid`: the present value of the latest sample of each step (t - dt, t]
    (binned like the channels), NaN for a step without one."""
    out = np.full(len(grid), np.nan)
    ok = np.isfinite(target)
    order = np.argsort(ts_ns[ok], kind="stable")
    ts, v = ts_ns[ok][order], target[ok][order]
    if len(grid) == 0 or len(ts) == 0:
        return out
    pos = (bin_end_ns(ts, dt_seconds) - grid[0]) // (int(dt_seconds) * 10**9)
    last = np.concatenate([pos[1:] != pos[:-1], [True]]) & (pos >= 0) & (pos < len(grid))  # latest per step
    out[pos[last]] = v[last]
    return out


def _fingerprint(folder: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if p.is_file() and p.name not in ("fingerprint.txt", "summary.json", "config.yaml"):
            h.update(str(p.relative_to(folder)).encode())
            h.update(hashlib.sha256(p.read_bytes()).digest())
    return h.hexdigest()


def prepare(cfg: RootCfg) -> dict[str, Any]:
    """Run the whole preparation for `cfg` and return the summary that is also saved to summary.json."""
    data = cfg.data
    spec0 = spec_from_config(cfg)
    out = Path(data.paths.processed_dir)
    _log(f"[prepare] reading {data.paths.raw_dir}")
    table = load_raw_table(data)
    groups = _per_turbine(table)
    _log(f"[prepare] {len(table.ts_ns):,} rows, {len(groups)} turbines, channels {list(table.channels)}")
    if data.splits.method == "turbine":
        check_turbine_patterns(list(groups), data)

    binned: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
    ruls: dict[str, np.ndarray] = {}
    skipped: dict[str, str] = {}
    bin_stats: dict[str, dict[str, Any]] = {}
    for i, (tid, idx) in enumerate(groups.items(), 1):
        problem = turbine_id_problem(tid)
        if problem is not None:
            raise InputError(f"{problem}: it names a folder of the prepared data and a level of the MQTT topics")
        vals = table.values[idx]
        if not np.isfinite(vals).any():
            skipped[tid] = "no present value in any channel"
            _log(f"[prepare] turbine {tid}: skipped (empty)")
            continue
        grid, b, stats = bin_timeline(table.ts_ns[idx], vals, spec0)
        binned[tid] = (grid, b, step_splits(grid, tid, data))
        if table.rul is not None:
            ruls[tid] = target_timeline(grid, table.ts_ns[idx], table.rul[idx], spec0.dt_seconds)
        bin_stats[tid] = asdict(stats)
        _log(f"[prepare] binned {i}/{len(groups)} {tid}: {len(idx):,} samples -> {len(grid):,} steps")
    if not binned:
        raise InputError("no turbine has any data after loading; check data.columns and the input file")

    train_rows = np.concatenate([b[s == 0] for _, b, s in binned.values()])
    if len(train_rows) == 0:
        raise InputError("the training split holds no rows: check data.splits against the data's time span")
    quantiles = {c: (float(lo), float(hi)) for c, (lo, hi) in data.qc.winsorize.items()}
    caps = fit_winsor_caps(train_rows, spec0.channels, quantiles) if quantiles else {}
    spec = spec0.with_winsor_caps(caps)

    pre = Preprocessor(spec, None)
    engineered = {tid: pre.engineer(b) for tid, (_, b, _) in binned.items()}
    E_train = np.concatenate([engineered[tid][0][s == 0] for tid, (_, _, s) in binned.items()])
    mask = scaled_mask(spec) if not cfg.features.scaler.scale_angles else np.ones(spec.n_features, bool)
    scaler = fit_robust_scaler(E_train, list(spec.feature_names), mask, clip=cfg.features.scaler.clip_iqr)
    pre = Preprocessor(spec, scaler)

    labels = cfg.data.labels
    events = []
    if labels.enabled:
        assert data.paths.labels_file is not None  # validate_config guarantees it
        events = load_label_events(data.paths.labels_file, list(labels.class_names), data.identifiers.naive_timezone)
        unknown = sorted({e.turbine_id for e in events} - set(binned) - set(skipped))
        if unknown:
            raise InputError(f"labels file names turbines {unknown} that are not in the data")

    if (out / "turbines").exists():
        shutil.rmtree(out / "turbines")
    windows = []
    miss_sum = np.zeros(spec.n_features)
    n_steps = 0
    for tid, (grid, _, splits) in binned.items():
        E, M, Flags = engineered[tid]
        X = pre.finish(E, M)
        tdir = out / "turbines" / tid
        tdir.mkdir(parents=True, exist_ok=True)
        np.save(tdir / "X.npy", X)
        np.save(tdir / "M_miss.npy", M)
        np.save(tdir / "Flags.npy", Flags)
        np.save(tdir / "Repeat.npy", pre.repeats(binned[tid][1]))
        np.save(tdir / "timestamps.npy", grid)
        y = None
        if labels.enabled:
            ev = [e for e in events if e.turbine_id == tid]
            y = label_timeline(grid, spec.dt_seconds * 10**9, ev, len(labels.class_names), labels.multilabel)
            np.save(tdir / "labels.npy", y)
        rul = ruls.get(tid)
        if rul is not None:
            np.save(tdir / "rul.npy", rul.astype(np.float32))
        windows.append(build_window_index(tid, grid, M, splits, data, y, rul))
        miss_sum += (M == 0).sum(axis=0)
        n_steps += len(grid)
    index = pd.concat(windows, ignore_index=True)
    index.to_parquet(out / "window_index.parquet", index=False)

    feature_reg, flag_reg = registries_from_spec(spec)
    save_registry(feature_reg, flag_reg, out / "registries")
    (out / "scalers").mkdir(parents=True, exist_ok=True)
    (out / "scalers" / "robust_scaler.json").write_text(json.dumps(scaler.to_dict(), indent=2) + "\n")
    (out / "pipeline_spec.json").write_text(json.dumps(spec.to_dict(), indent=2) + "\n")
    fingerprint = _fingerprint(out)
    (out / "fingerprint.txt").write_text(fingerprint + "\n")
    save_resolved(cfg, out / "config.yaml")

    summary = {
        "raw_rows": int(len(table.ts_ns)),
        "files": table.files,
        "read": table_format(data).describe(table.files),
        "turbines": sorted(binned),
        "skipped_turbines": skipped,
        "steps": n_steps,
        "F": spec.n_features,
        "R": spec.n_flags,
        "feature_names": list(spec.feature_names),
        "flag_names": list(spec.flag_names),
        "missing_fraction": {n: round(float(m) / max(n_steps, 1), 5) for n, m in zip(spec.feature_names, miss_sum)},
        "non_numeric_cells": {k: v for k, v in table.non_numeric.items() if v},
        "non_numeric_examples": dict(table.text_examples),
        "repeated_hour_dropped": len(table.repeated_hour_dropped),
        "repeated_hour_examples": table.repeated_hour_dropped[:5],
        "binning": bin_stats,
        "held_steps": {c: sum(st["held"][c] for st in bin_stats.values()) for c in spec.hold_s},
        "winsor_caps": {k: list(v) for k, v in caps.items()},
        "scaler_fallbacks": {
            n: s for n, s, sc in zip(scaler.feature_names, scaler.scale_source, scaler.scaled) if sc and s != "iqr"
        },
        "windows": {s: int((index["split"] == s).sum()) for s in SPLITS},
        "fingerprint": fingerprint,
    }
    if labels.enabled and "y" in index:
        summary["window_labels"] = {
            s: {
                labels.class_names[int(k)]: int(v)
                for k, v in index.loc[index["split"] == s, "y"].value_counts().items()
            }
            for s in SPLITS
        }
    if data.rul.enabled:
        summary["windows_with_rul"] = {s: int(index.loc[index["split"] == s, "has_rul"].sum()) for s in SPLITS}
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def format_summary(summary: dict[str, Any]) -> str:
    """Human-readable digest of a prepare summary."""
    lines = [
        f"read: {summary['read']}",
        f"turbines: {len(summary['turbines'])} kept {summary['turbines']}"
        + (f", skipped {summary['skipped_turbines']}" if summary["skipped_turbines"] else ""),
        f"rows: {summary['raw_rows']:,} raw -> {summary['steps']:,} steps; "
        f"F={summary['F']} features, R={summary['R']} flags",
        "windows: " + ", ".join(f"{k} {v:,}" for k, v in summary["windows"].items()),
        "missing fraction per feature:",
    ]
    lines += [f"  {n:<28} {m:.4f}" for n, m in summary["missing_fraction"].items()]
    if summary["non_numeric_cells"]:
        said = [
            f"{k} {v:,} (e.g. {summary['non_numeric_examples'][k]!r})" for k, v in summary["non_numeric_cells"].items()
        ]
        lines.append("non-numeric cells made missing: " + ", ".join(said))
    if summary["repeated_hour_dropped"]:
        lines.append(
            f"rows left out: {summary['repeated_hour_dropped']:,} " + left_out_said(summary["repeated_hour_examples"])
        )
    if summary["held_steps"]:
        said = [f"{c} {k:,} ({k / max(summary['steps'], 1):.1%})" for c, k in summary["held_steps"].items()]
        lines.append("steps given a report-by-exception channel's last value (data.qc.hold_s): " + ", ".join(said))
    if summary["scaler_fallbacks"]:
        lines.append(f"scaler fallbacks (IQR ~ 0 on the training split): {summary['scaler_fallbacks']}")
    if "window_labels" in summary:
        lines.append(f"window labels: {summary['window_labels']}")
    if "windows_with_rul" in summary:
        lines.append(f"windows with a RUL target: {summary['windows_with_rul']}")
    return "\n".join(lines)
