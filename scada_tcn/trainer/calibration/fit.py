"""Calibration at export: thresholds and a score reference from the validation split's normal windows.

Contract
--------
Only windows of the validation split are scored, and of those only the ones without a fault label: windows whose
`has_label` is false, or whose label is the normal class 0 (multilabel: no fault class set). Test windows and
fault-labelled windows never reach a threshold. Scores come from the torch `ScoringModule` that is exported,
the regime of each window from `runtime.calibration.regime_of` on its last step's flags (the definition the
edge uses). Thresholds per `infer.calibration.method`: a percentile (`fit_percentile_calibration`), or a
peaks-over-threshold generalized-Pareto tail per group (`evt`, `trainer.calibration.evt.pot_threshold`, whose fitted
u, xi,
sigma and excess count go into the bundle);
turbines and (turbine, regime) pairs below `min_windows` fall back, and the bundle records which and why.
With `infer.fleet.relative` the thresholds are fitted on fleet-relative scores (`runtime.peers`) of the normal
windows that have peers. Fault-labelled windows are not peers either, so no labelled fault reaches a threshold,
not even through another turbine's baseline. The score reference for drift stays on the scores themselves.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from scada_tcn.runtime.bundle import ScoreReference
from scada_tcn.runtime.calibration import Calibration, fit_calibration, fit_percentile_calibration, regime_of
from scada_tcn.runtime.drift import DriftReference
from scada_tcn.runtime.peers import fleet_relative
from scada_tcn.runtime.windows import enough_present
from scada_tcn.trainer.calibration.evt import pot_threshold
from scada_tcn.trainer.config import RootCfg
from scada_tcn.trainer.data.dataset import WindowDataset
from scada_tcn.trainer.data.store import PreparedData
from scada_tcn.trainer.data.windowing import SPLITS, step_splits
from scada_tcn.trainer.model.scoring import ScoringModule

__all__ = [
    "CALIBRATION_SPLIT",
    "QUANTILE_LEVELS",
    "CalibrationResult",
    "calibrate",
    "feature_reference",
    "fit_feature_scale",
    "normal_windows",
    "score_windows",
]

CALIBRATION_SPLIT = "val"
QUANTILE_LEVELS = (0.0, 0.01, 0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 0.995, 0.999, 1.0)


def fit_feature_scale(scoring: ScoringModule, data: PreparedData, cfg: RootCfg, batch_size: int = 256) -> None:
    """feature_topk only: each feature's median error on the validation split's normal windows becomes its level
    (features never present there keep 1). Must run before calibration and before the export traces the graph."""
    if scoring.aggregation != "feature_topk":
        return
    split = data.index[data.index["split"] == CALIBRATION_SPLIT].reset_index(drop=True)
    rows = split[normal_windows(split, cfg)].reset_index(drop=True)
    if len(rows) == 0:
        raise ValueError(f"no normal windows in the {CALIBRATION_SPLIT!r} split to fit the feature error levels on")
    ds = WindowDataset(data.dir, rows, cfg.data.windowing.L, cfg.data.windowing.K, data.F, data.R, None, False)
    errs, seen = [], []
    with torch.no_grad():
        for start in range(0, len(ds), batch_size):
            b = ds.__getitems__(list(range(start, min(start + batch_size, len(ds)))))
            E = scoring(b["X"], b["M_miss"], b["Flags"]).E
            errs.append(scoring.per_feature_error(E, b["M_miss"]).double().numpy())
            seen.append(b["M_miss"].numpy().any(axis=1))
    err = np.where(np.concatenate(seen), np.concatenate(errs), np.nan)  # (N, F); NaN where never present
    with np.errstate(all="ignore"):
        level = np.nanmedian(err, axis=0)
    level = np.where(np.isfinite(level) & (level > scoring.eps), level, 1.0)
    scoring.set_feature_scale(torch.as_tensor(level, dtype=torch.float32))


FEATURE_REFERENCE_LEVELS = tuple(np.linspace(0.0, 1.0, 21).tolist())  # every 5 %: small enough for bundle.json


def feature_reference(data: PreparedData, cfg: RootCfg) -> DriftReference:
    """Per-feature quantiles, mean and std of every step of the validation split (present values only)."""
    X, M = [], []
    for tid in sorted(data.index["turbine_id"].unique()):
        d = data.dir / "turbines" / tid
        split = step_splits(np.load(d / "timestamps.npy"), tid, cfg.data)
        sel = split == SPLITS.index(CALIBRATION_SPLIT)
        if sel.any():
            X.append(np.load(d / "X.npy", mmap_mode="r")[sel])
            M.append(np.load(d / "M_miss.npy", mmap_mode="r")[sel])
    if not X:
        raise ValueError(f"the {CALIBRATION_SPLIT!r} split has no steps for the drift reference")
    return DriftReference.fit(
        np.concatenate(X), data.feature_reg.feature_names, np.concatenate(M), levels=FEATURE_REFERENCE_LEVELS
    )


@dataclass(frozen=True)
class CalibrationResult:
    calibration: Calibration
    score_reference: ScoreReference
    n_split: int  # windows of the split
    n_excluded: int  # of which fault-labelled, so not used


def normal_windows(index: pd.DataFrame, cfg: RootCfg) -> np.ndarray:
    """Bool per row of `index`: True when the window carries no fault label (unlabelled, or labelled normal)."""
    labels = cfg.data.labels
    if not labels.enabled or "has_label" not in index:
        return np.ones(len(index), dtype=bool)
    has_label = index["has_label"].to_numpy(bool)
    if labels.multilabel:
        faults = [f"y_{c}" for c in list(labels.class_names)[1:]]
        faulty = index[faults].to_numpy(np.float64).max(axis=1, initial=0.0) > 0.5
    else:
        faulty = index["y"].to_numpy(np.int64) != 0
    return ~has_label | ~faulty


def score_windows(
    scoring: ScoringModule, data: PreparedData, cfg: RootCfg, index: pd.DataFrame, batch_size: int = 256
) -> tuple[np.ndarray, list[str]]:
    """Scores (N,) float64 and regimes of the windows of `index`, with the torch scoring module."""
    ds = WindowDataset(
        data.dir, index.reset_index(drop=True), cfg.data.windowing.L, cfg.data.windowing.K, data.F, data.R, None, False
    )
    scores, regimes = [], []
    was_training = scoring.training
    scoring.eval()
    try:
        with torch.no_grad():
            for start in range(0, len(ds), batch_size):
                b = ds.__getitems__(list(range(start, min(start + batch_size, len(ds)))))
                scores.append(scoring(b["X"], b["M_miss"], b["Flags"]).s_now.double().numpy())
                regimes += regime_of(b["Flags"][:, -1, :].numpy(), data.flag_reg.flag_names)
    finally:
        scoring.train(was_training)
    return (np.concatenate(scores) if scores else np.zeros(0)), regimes


def calibrate(scoring: ScoringModule, data: PreparedData, cfg: RootCfg) -> CalibrationResult:
    """Thresholds and the score reference from the normal windows of the validation split."""
    c = cfg.infer.calibration
    if not c.enabled:
        raise ValueError("infer.calibration.enabled=false: a bundle needs thresholds; enable calibration")
    split = data.index[data.index["split"] == CALIBRATION_SPLIT].reset_index(drop=True)
    keep = normal_windows(split, cfg)
    rows = split[keep].reset_index(drop=True)
    if len(rows) == 0:
        raise ValueError(
            f"no normal windows in the {CALIBRATION_SPLIT!r} split to calibrate on "
            f"({len(split)} windows, all fault-labelled or none): check data.splits.val_range"
        )
    fitted_on = (
        f"split={CALIBRATION_SPLIT}: {len(rows)} windows without a fault label of {len(split)} "
        f"({len(split) - len(rows)} fault-labelled excluded); data fingerprint {data.fingerprint}"
    )
    raw, regimes = score_windows(scoring, data, cfg, rows)
    scores, turbines = raw, rows["turbine_id"].astype(str).tolist()
    fleet = cfg.infer.fleet
    if fleet.relative:
        rel, _ = fleet_relative(
            raw,
            rows["t_end"].to_numpy(np.int64),
            enough_present(rows["present_fraction"].to_numpy(), cfg.data.windowing.min_present_fraction),
            fleet.min_peers,
        )
        fit = np.isfinite(rel)
        if not fit.any():
            raise ValueError(
                f"infer.fleet.relative: no normal {CALIBRATION_SPLIT!r} window has {fleet.min_peers} "
                "other turbine(s) scored at its step; fleet-relative scores need a fleet"
            )
        scores, regimes = rel[fit], [r for r, k in zip(regimes, fit) if k]
        turbines = [t for t, k in zip(turbines, fit) if k]
        fitted_on += (
            f"; fleet-relative scores (minus the median of >= {fleet.min_peers} other turbines at the same "
            f"step) of {int(fit.sum())} of those windows"
        )
    if c.method == "evt":

        def pot(x: np.ndarray) -> tuple[float, dict[str, float]]:
            fit = pot_threshold(x, c.evt_tail_quantile, c.evt_exceedance_prob, c.evt_min_excesses)
            return fit["threshold"], {k: float(v) for k, v in fit.items() if k != "threshold"}

        cal = fit_calibration(
            scores,
            turbines,
            regimes,
            "evt",
            pot,
            c.min_windows,
            c.per_turbine,
            c.per_regime,
            fitted_on + f"; POT tail from q={c.evt_tail_quantile}, target exceedance {c.evt_exceedance_prob}",
            c.percentile,
        )
    else:
        cal = fit_percentile_calibration(
            scores,
            turbines,
            regimes,
            percentile=c.percentile,
            min_windows=c.min_windows,
            per_turbine=c.per_turbine,
            per_regime=c.per_regime,
            fitted_on=fitted_on,
        )
    bad = {
        k: v
        for k, v in {
            "global": cal.global_threshold,
            **cal.per_turbine,
            **cal.per_regime,
            **cal.per_turbine_regime,
        }.items()
        if not v > 0
    }
    if bad:
        raise ValueError(
            f"calibration gave thresholds <= 0 {bad}: the alert state machine needs positive ones. "
            "With infer.fleet.relative, the turbines score alike even in their tails; use a higher "
            "infer.calibration.percentile or score the turbines without it"
        )
    ref = ScoreReference(
        split=CALIBRATION_SPLIT,
        n_windows=int(len(raw)),
        levels=tuple(float(q) for q in QUANTILE_LEVELS),
        values=tuple(float(v) for v in np.quantile(raw, QUANTILE_LEVELS)),
    )
    return CalibrationResult(cal, ref, n_split=len(split), n_excluded=int((~keep).sum()))
