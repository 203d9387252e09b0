"""Robust per-feature scaling fitted on training rows only.

Contract
--------
`fit_robust_scaler(E_train (n, F) float64, feature_names, scaled_mask, clip, eps)` fits, per scaled
column, center = median and scale = IQR (75th - 25th percentile) of the present (non-NaN) training
values. The scale source is recorded per feature, never silently:

* "iqr"  - IQR >= eps * max(1, |median|);
* "std"  - otherwise, the root-mean-square deviation of the training values around the median,
           if that passes the same threshold;
* "unit" - otherwise scale 1.0; also every unscaled column (sin/cos), which has center 0, scale 1.

`RobustScaler.transform(E (T, F))` returns (E - center) / scale as float64 (T, F), then clips
scaled columns to [-clip, clip] when `clip` is set; NaN stays NaN (filling is the caller's job,
after the mask). Refused with ScalerError: a column count or name mismatch, a scaled column with no
present training value, infinite training values, bad clip/eps, and unknown or missing keys in
`from_dict`. Inputs are never mutated; the fitted arrays are read-only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from scada_tcn.runtime.errors import ScalerError, check_keys

__all__ = ["RobustScaler", "fit_robust_scaler", "SCALE_SOURCES"]

SCALE_SOURCES = ("iqr", "std", "unit")
_KEYS = ("feature_names", "center", "scale", "scaled", "clip", "scale_source")


def _frozen(values: Any, dtype: type, name: str, n: int) -> np.ndarray:
    arr = np.array(values, dtype=dtype)
    if arr.shape != (n,):
        raise ScalerError(f"RobustScaler.{name}: expected {n} values (one per feature), got shape {arr.shape}")
    arr.setflags(write=False)
    return arr


@dataclass(frozen=True, eq=False)
class RobustScaler:
    """Fitted robust scaler; see the module docstring. Arrays are (F,) and read-only."""

    feature_names: tuple[str, ...]
    center: np.ndarray
    scale: np.ndarray
    scaled: np.ndarray
    clip: float | None
    scale_source: tuple[str, ...]

    def __post_init__(self) -> None:
        names = tuple(str(n) for n in self.feature_names)
        n = len(names)
        object.__setattr__(self, "feature_names", names)
        object.__setattr__(self, "center", _frozen(self.center, np.float64, "center", n))
        object.__setattr__(self, "scale", _frozen(self.scale, np.float64, "scale", n))
        object.__setattr__(self, "scaled", _frozen(self.scaled, np.bool_, "scaled", n))
        object.__setattr__(self, "scale_source", tuple(self.scale_source))
        if len(set(names)) != n:
            raise ScalerError(f"RobustScaler: duplicate feature names in {list(names)}")
        if len(self.scale_source) != n:
            raise ScalerError(f"RobustScaler.scale_source: expected {n} entries, got {len(self.scale_source)}")
        bad_src = sorted({s for s in self.scale_source if s not in SCALE_SOURCES})
        if bad_src:
            raise ScalerError(f"RobustScaler.scale_source: unknown {bad_src}; allowed {list(SCALE_SOURCES)}")
        bad_mask = ~np.isfinite(self.center) | ~np.isfinite(self.scale) | ~(self.scale > 0)
        if bad_mask.any():
            bad = [names[i] for i in np.nonzero(bad_mask)[0]]
            raise ScalerError(f"RobustScaler: center must be finite and scale finite and > 0; bad features {bad}")
        if self.clip is not None:
            if isinstance(self.clip, bool) or not np.isfinite(self.clip) or self.clip <= 0:
                raise ScalerError(f"RobustScaler.clip must be None or a finite number > 0, got {self.clip!r}")
            object.__setattr__(self, "clip", float(self.clip))
        unscaled_bad = [
            names[i]
            for i in np.nonzero(~self.scaled)[0]
            if self.center[i] != 0.0 or self.scale[i] != 1.0 or self.scale_source[i] != "unit"
        ]
        if unscaled_bad:
            raise ScalerError(
                f"RobustScaler: unscaled features must have center 0, scale 1, source 'unit': {unscaled_bad}"
            )

    def __eq__(self, other: object) -> bool:
        """Equal iff the serialised forms are equal (arrays compared by value)."""
        return isinstance(other, RobustScaler) and self.to_dict() == other.to_dict()

    __hash__ = None  # type: ignore[assignment]

    def transform(self, E: np.ndarray, feature_names: Sequence[str] | None = None) -> np.ndarray:
        """(E - center) / scale, clipped on scaled columns; (T, F) float64, NaN stays NaN.

        `feature_names`, when given, must equal the fitted names (order included).
        """
        E = np.asarray(E)
        if E.ndim != 2 or E.shape[1] != len(self.feature_names):
            n = len(self.feature_names)
            raise ScalerError(f"RobustScaler.transform: expected (T, {n}) features, got {E.shape}")
        if feature_names is not None and tuple(feature_names) != self.feature_names:
            raise ScalerError(
                "RobustScaler.transform: feature names differ from the fitted ones:\n"
                f"  given:  {list(feature_names)}\n  fitted: {list(self.feature_names)}"
            )
        X = (E.astype(np.float64, copy=False) - self.center) / self.scale
        if self.clip is not None:
            np.clip(X, -self.clip, self.clip, out=X, where=self.scaled)
        return X

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON types; floats round-trip exactly."""
        return {
            "feature_names": list(self.feature_names),
            "center": [float(v) for v in self.center],
            "scale": [float(v) for v in self.scale],
            "scaled": [bool(v) for v in self.scaled],
            "clip": self.clip,
            "scale_source": list(self.scale_source),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RobustScaler:
        """Inverse of `to_dict`; unknown or missing keys raise ScalerError."""
        check_keys(d, _KEYS, "RobustScaler.from_dict", ScalerError)
        if any(not isinstance(v, bool) for v in d["scaled"]):
            raise ScalerError("RobustScaler.from_dict: 'scaled' must hold booleans")
        return cls(
            feature_names=tuple(d["feature_names"]),
            center=d["center"],
            scale=d["scale"],
            scaled=d["scaled"],
            clip=None if d["clip"] is None else float(d["clip"]),
            scale_source=tuple(d["scale_source"]),
        )


def fit_robust_scaler(
    E_train: np.ndarray,
    feature_names: Sequence[str],
    scaled_mask: np.ndarray,
    clip: float | None = None,
    eps: float = 1e-6,
) -> RobustScaler:
    """Fit on training rows only: median / IQR per scaled column, with a recorded fallback."""
    E = np.asarray(E_train)
    names = tuple(feature_names)
    mask = np.asarray(scaled_mask)
    if E.ndim != 2 or E.shape[1] != len(names):
        raise ScalerError(
            f"fit_robust_scaler: E_train must be (n, {len(names)}) for features {list(names)}, got {E.shape}"
        )
    if mask.dtype != np.bool_ or mask.shape != (len(names),):
        raise ScalerError(
            f"fit_robust_scaler: scaled_mask must be bool of shape ({len(names)},), got {mask.dtype} {mask.shape}"
        )
    if not np.isfinite(eps) or eps < 0:
        raise ScalerError(f"fit_robust_scaler: eps must be finite and >= 0, got {eps}")
    if not np.issubdtype(E.dtype, np.floating):
        raise ScalerError(f"fit_robust_scaler: E_train must be float (NaN = missing), got {E.dtype}")
    cols = np.nonzero(mask)[0]
    Es = E[:, cols].astype(np.float64, copy=False)
    if np.isinf(Es).any():
        bad = [names[cols[i]] for i in np.nonzero(np.isinf(Es).any(axis=0))[0]]
        raise ScalerError(f"fit_robust_scaler: infinite training values in {bad}")
    empty = [names[cols[i]] for i in np.nonzero(np.isnan(Es).all(axis=0))[0]]
    if empty:
        raise ScalerError(f"fit_robust_scaler: scaled features with no present training value: {empty}")

    center = np.zeros(len(names))
    scale = np.ones(len(names))
    source = ["unit"] * len(names)
    if cols.size:
        med = np.nanmedian(Es, axis=0)
        q25, q75 = np.nanpercentile(Es, [25.0, 75.0], axis=0)
        iqr = q75 - q25
        rms = np.sqrt(np.nanmean((Es - med) ** 2, axis=0))
        threshold = eps * np.maximum(1.0, np.abs(med))
        for i, c in enumerate(cols):
            center[c] = med[i]
            if iqr[i] >= threshold[i]:
                scale[c], source[c] = iqr[i], "iqr"
            elif rms[i] >= threshold[i]:
                scale[c], source[c] = rms[i], "std"
    return RobustScaler(names, center, scale, mask.copy(), clip, tuple(source))
