"""Winsorize caps: fitted per channel on training rows, then applied as a clip everywhere.

Contract
--------
* Values are binned channel values (T, C) float64 in `channels` order, in channel units; NaN = missing.
* `fit_winsor_caps` takes np.nanquantile of each configured channel over exactly the rows it is given: the
  caller passes the training split only, so no statistic leaks from validation/test rows or from the future.
* `apply_winsor` clips each capped channel to [low, high]; NaN stays NaN, other channels are untouched, and a
  new array is returned (caller arrays are never modified).
* Refused: unknown channels and bad quantiles (SpecError); wrong shapes, +-inf values, a channel with no present
  value to fit on (InputError).
"""

from __future__ import annotations

import math

import numpy as np

from scada_tcn.runtime.errors import InputError, SpecError


def _check_values(values: np.ndarray, channels: tuple[str, ...]) -> np.ndarray:
    arr = np.asarray(values)
    if arr.ndim != 2 or arr.shape[1] != len(channels) or arr.dtype.kind not in "fiu":
        raise InputError(
            f"values must be a numeric (T, {len(channels)}) array for channels {list(channels)}, "
            f"got dtype {arr.dtype} shape {arr.shape}"
        )
    return arr.astype(np.float64, copy=False)


def _index(channels: tuple[str, ...], names: list[str], what: str) -> list[int]:
    unknown = sorted(set(names) - set(channels))
    if unknown:
        raise SpecError(f"{what}: unknown channels {unknown}; known channels: {list(channels)}")
    return [channels.index(n) for n in names]


def fit_winsor_caps(
    values: np.ndarray, channels: tuple[str, ...], quantiles: dict[str, tuple[float, float]]
) -> dict[str, tuple[float, float]]:
    """Caps {channel: (low, high)} = nanquantile of each configured channel over the given (training) rows."""
    arr = _check_values(values, channels)
    names = list(quantiles)
    caps: dict[str, tuple[float, float]] = {}
    for name, c in zip(names, _index(channels, names, "winsor quantiles")):
        q_lo, q_hi = (float(q) for q in quantiles[name])
        if not (math.isfinite(q_lo) and math.isfinite(q_hi) and 0.0 <= q_lo <= q_hi <= 1.0):
            raise SpecError(f"winsor quantiles.{name}: need 0 <= low <= high <= 1, got ({q_lo}, {q_hi})")
        col = arr[:, c]
        if np.isinf(col).any():
            raise InputError(f"winsor fit: channel {name!r} holds +-inf values; bin the data first")
        if np.isnan(col).all():
            raise InputError(f"winsor fit: channel {name!r} has no present value in the {col.size} rows given")
        lo, hi = np.nanquantile(col, [q_lo, q_hi])
        caps[name] = (float(lo), float(hi))
    return caps


def apply_winsor(values: np.ndarray, channels: tuple[str, ...], caps: dict[str, tuple[float, float]]) -> np.ndarray:
    """A new (T, C) float64 array with each capped channel clipped to its (low, high); NaN stays NaN."""
    arr = _check_values(values, channels)
    out = arr.copy()
    names = list(caps)
    for name, c in zip(names, _index(channels, names, "winsor caps")):
        lo, hi = (float(x) for x in caps[name])
        if not lo <= hi:
            raise SpecError(f"winsor caps.{name}: low {lo} must be <= high {hi}")
        np.clip(out[:, c], lo, hi, out=out[:, c])
    return out
