"""Anomaly-score thresholds: fitted at export on normal validation windows, applied at the edge.

Contract
--------
A window's *regime* is `regime_of(flags_last, flag_names)`: the first active flag (value > 0.5) in registry
order at the window's last step, or "normal" when none is active. This is the one definition used both by the
export (to fit per-regime thresholds) and by the edge (to pick one).

`fit_calibration` fits a threshold globally, per turbine and per (turbine, regime) when asked, with a
per-group threshold function: `fit_percentile_calibration` uses the `percentile` of the scores; the EVT method
(peaks over threshold, fitted by `trainer.calibration.evt` at export) records its fitted tail parameters per group in
`params`. A group with fewer than `min_windows` scores, or whose fit is refused (CalibrationError, e.g. too few
excesses), gets no threshold of its own: the key and the reason are recorded in `fallbacks` (turbines by id,
pairs as "turbine|regime"), never silently.
`Calibration.threshold_for(turbine, regime)` returns the threshold and the level that supplied it, most specific
first: "turbine_regime", "turbine", "regime", then "global" (an unknown turbine lands on "global" and says so).

`to_dict` / `from_dict` round-trip through JSON types; `from_dict` refuses unknown or missing keys and
non-finite thresholds with CalibrationError (a ValueError).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from scada_tcn.runtime.errors import check_keys
from scada_tcn.runtime.vocab import CalibrationMethod, parse

__all__ = [
    "NORMAL_REGIME",
    "SOURCES",
    "Calibration",
    "CalibrationError",
    "fit_calibration",
    "fit_percentile_calibration",
    "regime_of",
]

NORMAL_REGIME = "normal"
SOURCES = ("turbine_regime", "turbine", "regime", "global")
SEP = "|"
_KEYS = (
    "method",
    "percentile",
    "min_windows",
    "n_windows",
    "global_threshold",
    "per_turbine",
    "per_regime",
    "per_turbine_regime",
    "fallbacks",
    "fitted_on",
    "params",
)


class CalibrationError(ValueError):
    """A calibration cannot be fitted, or its serialised form is malformed."""


def regime_of(flags_last: np.ndarray, flag_names: Sequence[str]) -> list[str]:
    """Regime of each window from its flags at the last step: (B, R) -> B names (first active flag or "normal")."""
    f = np.asarray(flags_last)
    names = list(flag_names)
    if f.ndim != 2 or f.shape[1] != len(names):
        raise CalibrationError(f"regime_of: flags_last must be (B, R={len(names)}) for flags {names}, got {f.shape}")
    if not names:  # a model without flags has one regime
        return [NORMAL_REGIME] * f.shape[0]
    active = f > 0.5  # (B, R)
    first = np.argmax(active, axis=1)
    any_on = active.any(axis=1)
    return [names[int(i)] if on else NORMAL_REGIME for i, on in zip(first, any_on)]


@dataclass(frozen=True)
class Calibration:
    """Fitted thresholds; see the module docstring. Dicts map turbine id, regime or "turbine|regime" to a threshold."""

    method: str
    percentile: float
    min_windows: int
    n_windows: int
    global_threshold: float
    per_turbine: dict[str, float] = field(default_factory=dict)
    per_regime: dict[str, float] = field(default_factory=dict)
    per_turbine_regime: dict[str, float] = field(default_factory=dict)
    fallbacks: dict[str, str] = field(default_factory=dict)  # key -> why it has no threshold of its own
    fitted_on: str = ""
    params: dict[str, dict[str, float]] = field(default_factory=dict)  # evt: key -> fitted tail (u, xi, sigma, ...)

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "method", parse(CalibrationMethod, self.method, "calibration.method"))
        except ValueError as e:
            raise CalibrationError(str(e)) from None
        if not isinstance(self.params, dict) or not all(isinstance(v, dict) for v in self.params.values()):
            raise CalibrationError("calibration.params must map group keys to parameter mappings")
        if not 0.0 < float(self.percentile) < 100.0:
            raise CalibrationError(f"calibration.percentile must be in (0, 100), got {self.percentile}")
        for name in ("min_windows", "n_windows"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise CalibrationError(f"calibration.{name} must be an integer >= 0, got {v!r}")
        values = {"global_threshold": self.global_threshold}
        for name in ("per_turbine", "per_regime", "per_turbine_regime"):
            d = getattr(self, name)
            if not isinstance(d, dict):
                raise CalibrationError(f"calibration.{name} must be a mapping, got {type(d).__name__}")
            values.update({f"{name}.{k}": v for k, v in d.items()})
        bad = [
            k
            for k, v in values.items()
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0
        ]
        if bad:
            raise CalibrationError(f"calibration: thresholds must be finite numbers >= 0 (scores are); bad: {bad}")
        if not isinstance(self.fallbacks, dict) or not all(isinstance(v, str) for v in self.fallbacks.values()):
            raise CalibrationError("calibration.fallbacks must map keys to reason strings")

    def threshold_for(self, turbine_id: str, regime: str = NORMAL_REGIME) -> tuple[float, str]:
        """The threshold for a window of `turbine_id` in `regime`, and the level that supplied it (see SOURCES)."""
        key = f"{turbine_id}{SEP}{regime}"
        if key in self.per_turbine_regime:
            return float(self.per_turbine_regime[key]), "turbine_regime"
        if turbine_id in self.per_turbine:
            return float(self.per_turbine[turbine_id]), "turbine"
        if regime in self.per_regime:
            return float(self.per_regime[regime]), "regime"
        return float(self.global_threshold), "global"

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "percentile": float(self.percentile),
            "min_windows": int(self.min_windows),
            "n_windows": int(self.n_windows),
            "global_threshold": float(self.global_threshold),
            "per_turbine": {k: float(v) for k, v in self.per_turbine.items()},
            "per_regime": {k: float(v) for k, v in self.per_regime.items()},
            "per_turbine_regime": {k: float(v) for k, v in self.per_turbine_regime.items()},
            "fallbacks": dict(self.fallbacks),
            "fitted_on": self.fitted_on,
            "params": {k: {kk: float(vv) for kk, vv in v.items()} for k, v in self.params.items()},
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Calibration:
        check_keys(d, _KEYS, "calibration", CalibrationError)
        if not isinstance(d["fitted_on"], str):
            raise CalibrationError("calibration.fitted_on must be a string")
        return cls(**{k: dict(d[k]) if isinstance(d[k], dict) else d[k] for k in _KEYS})


def _groups(keys: Sequence[str]) -> dict[str, np.ndarray]:
    arr = np.asarray(keys, dtype=object)
    return {str(k): np.nonzero(arr == k)[0] for k in dict.fromkeys(keys)}


ThresholdFn = Callable[[np.ndarray], tuple[float, dict[str, float]]]


def fit_calibration(
    scores: np.ndarray,
    turbine_ids: Sequence[str],
    regimes: Sequence[str],
    method: str,
    threshold_fn: ThresholdFn,
    min_windows: int,
    per_turbine: bool = True,
    per_regime: bool = False,
    fitted_on: str = "",
    percentile: float = 99.5,
) -> Calibration:
    """Thresholds from normal-window scores (B,) by `threshold_fn` (scores -> (threshold, params)) per group,
    with recorded fallbacks below `min_windows` or where the fit is refused. The global fit must succeed."""
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 1 or len(turbine_ids) != len(s) or len(regimes) != len(s):
        raise CalibrationError(
            f"fit_calibration: scores (B,), turbine_ids and regimes must have one entry per window; "
            f"got {s.shape}, {len(turbine_ids)}, {len(regimes)}"
        )
    if len(s) == 0:
        raise CalibrationError("fit_calibration: no windows to calibrate on (check the validation split)")
    if not np.isfinite(s).all():
        raise CalibrationError(f"fit_calibration: {int((~np.isfinite(s)).sum())} non-finite scores")
    if min_windows < 1:
        raise CalibrationError(f"fit_calibration: min_windows must be >= 1, got {min_windows}")
    fallbacks: dict[str, str] = {}
    params: dict[str, dict[str, float]] = {}

    def fit(key: str, idx: np.ndarray, level: str, out: dict[str, float]) -> None:
        if len(idx) < min_windows:
            fallbacks[key] = f"{len(idx)} windows < min_windows={min_windows}; uses the {level} threshold"
            return
        try:
            out[key], p = threshold_fn(s[idx])
        except CalibrationError as e:
            fallbacks[key] = f"fit refused ({e}); uses the {level} threshold"
            return
        if p:
            params[key] = p

    if len(s) < min_windows:
        fallbacks["<global>"] = f"only {len(s)} windows < min_windows={min_windows}; the global threshold uses them all"
    global_threshold, p = threshold_fn(s)
    if p:
        params["<global>"] = p
    out_t: dict[str, float] = {}
    if per_turbine:
        for t, idx in _groups([str(t) for t in turbine_ids]).items():
            fit(t, idx, "global", out_t)
    out_r: dict[str, float] = {}
    out_tr: dict[str, float] = {}
    if per_regime and per_turbine:
        pairs = [f"{t}{SEP}{r}" for t, r in zip(turbine_ids, regimes)]
        for key, idx in _groups(pairs).items():
            fit(key, idx, "turbine" if key.split(SEP, 1)[0] in out_t else "global", out_tr)
    elif per_regime:
        for r, idx in _groups([str(r) for r in regimes]).items():
            sub: dict[str, float] = {}
            fit(f"{SEP}{r}", idx, "global", sub)
            if sub:
                out_r[r] = sub[f"{SEP}{r}"]
    return Calibration(
        method=method,
        percentile=float(percentile),
        min_windows=int(min_windows),
        n_windows=int(len(s)),
        global_threshold=float(global_threshold),
        per_turbine=out_t,
        per_regime=out_r,
        per_turbine_regime=out_tr,
        fallbacks=fallbacks,
        fitted_on=fitted_on,
        params=params,
    )


def fit_percentile_calibration(
    scores: np.ndarray,
    turbine_ids: Sequence[str],
    regimes: Sequence[str],
    percentile: float,
    min_windows: int,
    per_turbine: bool = True,
    per_regime: bool = False,
    fitted_on: str = "",
) -> Calibration:
    """Percentile thresholds from normal-window scores (B,), with recorded fallbacks below `min_windows`."""
    return fit_calibration(
        scores,
        turbine_ids,
        regimes,
        "percentile",
        lambda x: (float(np.percentile(x, percentile)), {}),
        min_windows,
        per_turbine,
        per_regime,
        fitted_on,
        percentile,
    )
