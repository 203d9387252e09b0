"""Remaining-useful-life scores at each unit's last scored window (the C-MAPSS / PHM08 protocol), numpy only.

Contract
--------
* `d = predicted - true`, in steps (cycles). RMSE = sqrt(mean(d^2)). The PHM08 score sums, per unit,
  exp(-d/13) - 1 for an early prediction (d < 0) and exp(d/10) - 1 for a late one (d >= 0): lateness costs more.
  Lower is better for both; a perfect prediction scores 0.
* `last_window_rul` keeps, per turbine, the row with the latest window end (`t_end`): for a test unit prepared with
  `data.windowing.include_last` and K = 0 that window ends at the unit's last step, where the protocol scores.
* Truth is the target stored with the window (uncapped). The protocol's published figures mostly compare
  against it; `rul_metrics(..., cap=...)` also reports the scores against min(true, cap), which some papers use,
  so the two cannot be confused.
* Refused (MetricsError): arrays of different lengths, non-finite values, no unit.

>>> round(phm08_score(np.array([-13.0, 10.0])), 4)  # (e - 1) + (e - 1)
3.4366
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from scada_tcn.trainer.evaluation.metrics import MetricsError

__all__ = ["last_window_rul", "phm08_score", "rmse", "rul_metrics"]


def _pair(pred: Any, true: Any) -> tuple[np.ndarray, np.ndarray]:
    p, t = np.asarray(pred, np.float64).reshape(-1), np.asarray(true, np.float64).reshape(-1)
    if p.shape != t.shape or p.size == 0:
        raise MetricsError(
            f"RUL metrics need non-empty predictions and truths of one length, got {p.size} and {t.size}"
        )
    if not (np.isfinite(p).all() and np.isfinite(t).all()):
        raise MetricsError("RUL metrics: predictions and truths must be finite")
    return p, t


def rmse(pred: Any, true: Any) -> float:
    """Root mean squared error of the predictions."""
    p, t = _pair(pred, true)
    return float(np.sqrt(np.mean((p - t) ** 2)))


def phm08_score(d: Any) -> float:
    """PHM08 score of the errors d = predicted - true: sum(exp(-d/13) - 1 if d < 0 else exp(d/10) - 1)."""
    d = np.asarray(d, np.float64).reshape(-1)
    if not np.isfinite(d).all():
        raise MetricsError("phm08_score: errors must be finite")
    return float(np.sum(np.where(d < 0, np.expm1(-d / 13.0), np.expm1(d / 10.0))))


def last_window_rul(results: pd.DataFrame, pred_col: str = "rul", true_col: str = "rul_true") -> pd.DataFrame:
    """One row per turbine (sorted): its latest window's turbine_id, t_end, predicted and true RUL."""
    need = ["turbine_id", "t_end", pred_col, true_col]
    missing = [c for c in need if c not in results]
    if missing:
        raise MetricsError(f"last_window_rul: results lack columns {missing}; they have {list(results.columns)}")
    rows = results.loc[results.groupby("turbine_id", sort=True)["t_end"].idxmax(), need]
    return rows.rename(columns={pred_col: "rul_pred", true_col: "rul_true"}).reset_index(drop=True)


def rul_metrics(pred: Any, true: Any, cap: float | None = None) -> dict[str, Any]:
    """RMSE, PHM08 score, mean error (bias) and mean absolute error of one prediction per unit; with `cap`, the
    same against min(true, cap) under `vs_capped_truth`."""
    p, t = _pair(pred, true)
    d = p - t
    out: dict[str, Any] = {
        "units": int(p.size),
        "rmse": rmse(p, t),
        "phm08": phm08_score(d),
        "mean_error": float(d.mean()),
        "mae": float(np.abs(d).mean()),
    }
    if cap is not None:
        tc = np.minimum(t, cap)
        out["vs_capped_truth"] = {"cap": float(cap), "rmse": rmse(p, tc), "phm08": phm08_score(p - tc)}
    return out
