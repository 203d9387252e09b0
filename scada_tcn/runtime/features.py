"""Engineered features and their missingness mask, batch and incremental, from binned raw values.

Contract
--------
Input: `raw` (T, C) float64 in `spec.channels` order (binned, winsorised), NaN = missing; +-inf is
refused. Output columns are exactly `spec.feature_names`:

* base columns, in `spec.base_names()` order: feature channels as they are, angular channels as
  `{c}_sin`, `{c}_cos` (angles in `spec.angle_units`), then the yaw error
  wrap(wind_dir - nacelle_dir) into [-180, 180) deg or [-pi, pi) rad (with `min_wind_speed`: only where the
  wind speed is at least that, since an idle turbine does not track the wind);
* `{c}_delta` = x[t] - x[t-1] for `spec.deltas` (base columns);
* `{c}_r{stat}{w}`: causal strict-present rolling mean / population std over the last w steps.

Missingness (1 = present in the uint8 mask M, NaN in the engineered array E): sin/cos missing iff
the angle is missing; yaw error missing iff either side is (or, with `min_wind_speed`, the wind speed is
missing or below it); a delta is missing iff the current or
the previous step is (so always at the first step); a rolling value is missing iff any of its w
steps is missing or fewer than w steps exist. Nothing at step t uses data after t.

Two adapters share the same math functions (`base_columns`, `delta_columns`, `wrap_angle`,
`sin_cos`); only the rolling differs: `build_features` uses `rolling_mean_std` over the whole
series, `FeatureState.step` uses `window_mean_std` on a ring buffer of the last max(window) base
values (NaN marks a missing step). Both agree to float64 rounding (~1e-13 relative).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from scada_tcn.runtime.errors import InputError, SpecError
from scada_tcn.runtime.rolling import rolling_mean_std, window_mean_std
from scada_tcn.runtime.slots import Chain
from scada_tcn.runtime.spec import PipelineSpec

__all__ = [
    "wrap_angle",
    "sin_cos",
    "yaw_error",
    "base_columns",
    "delta_columns",
    "build_features",
    "FeatureState",
]

_PERIOD = {"deg": 360.0, "rad": 2.0 * np.pi}


def _period(units: str) -> float:
    if units not in _PERIOD:
        raise SpecError(f"angle units must be one of {sorted(_PERIOD)}, got {units!r}")
    return _PERIOD[units]


def wrap_angle(x: np.ndarray, units: str) -> np.ndarray:
    """Wrap angles into [-180, 180) deg or [-pi, pi) rad; NaN stays NaN."""
    period = _period(units)
    half = period / 2.0
    r = np.mod(np.asarray(x, dtype=np.float64) + half, period) - half
    # np.mod can round a tiny negative up to exactly `period`; keep the interval half-open.
    return np.where(r >= half, r - period, r)


def sin_cos(angle: np.ndarray, units: str) -> tuple[np.ndarray, np.ndarray]:
    """(sin, cos) of an angle in `units`; NaN stays NaN."""
    a = np.asarray(angle, dtype=np.float64)
    rad = np.deg2rad(a) if _period(units) == 360.0 else a
    return np.sin(rad), np.cos(rad)


def yaw_error(wind_dir: np.ndarray, nacelle_dir: np.ndarray, units: str) -> np.ndarray:
    """wrap(wind_dir - nacelle_dir); NaN if either side is NaN."""
    return wrap_angle(np.asarray(wind_dir, dtype=np.float64) - np.asarray(nacelle_dir, dtype=np.float64), units)


def base_columns(raw: np.ndarray, spec: PipelineSpec) -> np.ndarray:
    """Base engineered columns (T, len(spec.base_names())) from raw (T, C); NaN = missing.

    Computed column by column on a channel-major copy; the result is a column-major (T, nb) view.
    """
    chan = {c: row for c, row in zip(spec.channels, np.ascontiguousarray(raw.T))}
    out = np.empty((len(spec.base_names()), raw.shape[0]))
    j = 0
    for c in spec.feature_channels:
        if c in spec.angular_channels:
            out[j], out[j + 1] = sin_cos(chan[c], spec.angle_units)
            j += 2
        else:
            out[j] = chan[c]
            j += 1
    if spec.yaw_error is not None:
        ye = spec.yaw_error
        out[j] = yaw_error(chan[ye.wind_dir], chan[ye.nacelle_dir], spec.angle_units)
        if ye.wind_speed is not None:
            out[j] = np.where(chan[ye.wind_speed] >= ye.min_wind_speed, out[j], np.nan)  # NaN wind -> missing
        j += 1
    for a, b in spec.differences.values():
        out[j] = chan[a] - chan[b]  # NaN (missing) when either side is
        j += 1
    return out.T


def delta_columns(current: np.ndarray, previous: np.ndarray) -> np.ndarray:
    """current - previous; NaN (missing) where either is missing."""
    return current - previous


def _check_raw(raw: np.ndarray, spec: PipelineSpec, ndim: int, where: str) -> np.ndarray:
    """Validate a raw block (ndim 2: (T, C)) or row (ndim 1: (C,)) and return it as float64."""
    raw = np.asarray(raw)
    n_ch = len(spec.channels)
    want = "(T, C)" if ndim == 2 else "(C,)"
    if raw.ndim != ndim or raw.shape[-1] != n_ch:
        raise InputError(
            f"{where}: expected raw of shape {want} with C={n_ch} channels {list(spec.channels)}, got {raw.shape}"
        )
    if not np.issubdtype(raw.dtype, np.floating):
        raise InputError(f"{where}: raw must be a float array (NaN = missing), got dtype {raw.dtype}")
    raw = raw.astype(np.float64, copy=False)
    inf = np.isinf(raw)
    if inf.any():
        bad = sorted({spec.channels[i] for i in np.nonzero(inf.reshape(-1, n_ch).any(axis=0))[0]})
        raise InputError(f"{where}: infinite values in channels {bad}; use NaN for missing")
    return raw


_ROLL_ROWS = 4096  # rows per window copy of `FeatureState._roll` (4096 x channels x w floats)


@dataclass(frozen=True)
class _Layout:
    """Column layout of E for a spec: base | deltas | rolling (channel, window, stat) in name order."""

    n_base: int
    n_features: int
    delta_src: list[int]  # base column of each delta
    roll_src: list[int]  # base column of each rolling channel
    windows: tuple[int, ...]
    stats: tuple[str, ...]
    roll_cols: np.ndarray  # (channels, windows, stats) -> column of E

    @classmethod
    def of(cls, spec: PipelineSpec) -> _Layout:
        base = spec.base_names()
        ro = spec.rolling
        roll_src = [] if ro is None else [base.index(c) for c in ro.channels]
        windows = () if ro is None else tuple(int(w) for w in ro.windows)
        stats = () if ro is None else tuple(ro.stats)
        first = len(base) + len(spec.deltas)
        cols = first + np.arange(len(roll_src) * len(windows) * len(stats))
        return cls(
            n_base=len(base),
            n_features=spec.n_features,
            delta_src=[base.index(c) for c in spec.deltas],
            roll_src=roll_src,
            windows=windows,
            stats=stats,
            roll_cols=cols.reshape(len(roll_src), len(windows), len(stats)),
        )

    def pick(self, q: int, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
        """The statistic with index q in `stats` out of (mean, std)."""
        return mean if self.stats[q] == "mean" else std


def build_features(raw: np.ndarray, spec: PipelineSpec) -> tuple[np.ndarray, np.ndarray]:
    """Batch adapter: raw (T, C) -> (E (T, F) float64 NaN-missing, M (T, F) uint8 1=present)."""
    raw = _check_raw(raw, spec, 2, "build_features")
    lay = _Layout.of(spec)
    work = np.empty((lay.n_features, raw.shape[0]))  # feature-major: every column is contiguous
    work[: lay.n_base] = base_columns(raw, spec).T
    deltas = work[lay.n_base : lay.n_base + len(lay.delta_src)]
    deltas[:, :1] = np.nan
    deltas[:, 1:] = delta_columns(work[lay.delta_src, 1:], work[lay.delta_src, :-1])
    for i, j in enumerate(lay.roll_src):
        present = ~np.isnan(work[j])
        for k, w in enumerate(lay.windows):
            mean, std, _ = rolling_mean_std(work[j], present, w)
            for q in range(len(lay.stats)):
                work[lay.roll_cols[i, k, q]] = lay.pick(q, mean, std)
    present = ~np.isnan(work)
    return np.ascontiguousarray(work.T), present.T.astype(np.uint8, order="C")


class FeatureState:
    """Incremental adapter: one raw row per step and turbine, identical (to rounding) to `build_features`.

    State per slot (a turbine): the previous base row (for deltas) and a ring buffer (rolling channels, max window)
    of base values, NaN = missing or not yet seen. `step(row)` advances slot 0; `step_many(slots, rows)` advances
    several slots in one vectorised call (a fleet whose step closed together). A fresh slot is the reset.
    """

    def __init__(self, spec: PipelineSpec, slots: int = 1) -> None:
        self.spec = spec
        self._lay = _Layout.of(spec)
        self.slots = 0
        self._prev = np.empty((0, self._lay.n_base))
        self._ring = np.empty((0, len(self._lay.roll_src), max(self._lay.windows, default=0)))
        for _ in range(slots):
            self.add_slot()

    def add_slot(self) -> int:
        """A new slot in its reset state; returns its index (capacity doubles as needed)."""
        if self.slots == self._prev.shape[0]:
            cap = max(2 * self.slots, 1)
            self._prev = np.concatenate([self._prev, np.full((cap - self.slots, self._prev.shape[1]), np.nan)])
            ring = np.full((cap - self.slots, *self._ring.shape[1:]), np.nan)
            self._ring = np.concatenate([self._ring, ring])
        self.slots += 1
        return self.slots - 1

    def step(self, raw_row: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """raw_row (C,) of slot 0 -> (e_row (F,) float64 NaN-missing, m_row (F,) uint8 1=present)."""
        row = _check_raw(raw_row, self.spec, 1, "FeatureState.step")
        e, m = self.step_many(np.zeros(1, dtype=np.int64), row[None, :])
        return e[0], m[0]

    def step_many(
        self, slots: np.ndarray, raw: np.ndarray, chain: Chain | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """raw (B, C), row b the next step of slot slots[b] -> (E (B, F), M (B, F) uint8). A slot may have several
        rows, its consecutive steps in row order (a replay's chunk): the same as one call per step. `chain`: the
        slots' Chain, when the caller has one."""
        lay = self._lay
        raw = _check_raw(raw, self.spec, 2, "FeatureState.step_many")
        slots = np.asarray(slots, dtype=np.int64)
        if slots.shape != (raw.shape[0],) or (slots < 0).any() or (slots >= self.slots).any():
            raise InputError(f"FeatureState.step_many: slots must be {raw.shape[0]} slots in [0, {self.slots})")
        chain = Chain(slots) if chain is None else chain
        e = np.empty((raw.shape[0], lay.n_features))
        base = base_columns(raw, self.spec)
        e[:, : lay.n_base] = base
        prev = chain.previous(base, self._prev)
        e[:, lay.n_base : lay.n_base + len(lay.delta_src)] = delta_columns(base[:, lay.delta_src],
                                                                           prev[:, lay.delta_src])  # fmt: skip
        self._prev[chain.slots] = chain.newest(base)
        if lay.roll_src and raw.shape[0]:
            self._roll(chain, base[:, lay.roll_src], e)
        return e, (~np.isnan(e)).astype(np.uint8)

    def _roll(self, chain: Chain, values: np.ndarray, e: np.ndarray) -> None:
        """The rolling columns of `e` from each slot's ring buffer and its new `values` (B, channels); the rings
        advance. Each row's window is the last w values up to it, the ring's values before the slot's first row."""
        lay, W = self._lay, self._ring.shape[2]
        n_ch, S, B = values.shape[1], chain.slots.size, values.shape[0]
        off = np.arange(S) * W + np.cumsum(chain.count) - chain.count  # each slot: its ring, then its rows
        seq = np.empty((n_ch, S * W + B))
        seq[:, (off[:, None] + np.arange(W)).ravel()] = self._ring[chain.slots].transpose(1, 0, 2).reshape(n_ch, -1)
        pos = np.empty(B, dtype=np.int64)  # each row's place in seq, in row order
        pos[chain.order] = np.arange(B) + W * np.repeat(np.arange(1, S + 1), chain.count)
        seq[:, pos] = values.T
        for k, w in enumerate(lay.windows):
            windows = np.lib.stride_tricks.sliding_window_view(seq, w, axis=1)
            for a in range(0, B, _ROLL_ROWS):  # (rows, channels, w) copies of bounded size
                mean, std = window_mean_std(windows[:, pos[a : a + _ROLL_ROWS] - w + 1].transpose(1, 0, 2))
                for q in range(len(lay.stats)):
                    e[a : a + _ROLL_ROWS, lay.roll_cols[:, k, q]] = lay.pick(q, mean, std)
        rings = np.lib.stride_tricks.sliding_window_view(seq, W, axis=1)[:, off + chain.count]  # (channels, S, W)
        self._ring[chain.slots] = rings.transpose(1, 0, 2)

    def state_dict(self, slot: int = 0) -> dict[str, Any]:
        """Plain copy of one slot's state: feature names, previous base row, ring buffer."""
        return {
            "feature_names": list(self.spec.feature_names),
            "prev_base": self._prev[slot].copy(),
            "ring": self._ring[slot].copy(),
        }

    def load_state_dict(self, state: dict[str, Any], slot: int = 0) -> None:
        """Restore a `state_dict()` taken from a FeatureState with the same spec into `slot`."""
        want = {"feature_names", "prev_base", "ring"}
        if not isinstance(state, dict) or set(state) != want:
            got = sorted(state) if isinstance(state, dict) else type(state).__name__
            raise InputError(f"FeatureState.load_state_dict: expected keys {sorted(want)}, got {got}")
        if list(state["feature_names"]) != list(self.spec.feature_names):
            raise InputError(
                "FeatureState.load_state_dict: state was saved for features "
                f"{list(state['feature_names'])}, this spec has {list(self.spec.feature_names)}"
            )
        prev = np.array(state["prev_base"], dtype=np.float64)
        ring = np.array(state["ring"], dtype=np.float64)
        for name, arr, shape in (("prev_base", prev, self._prev.shape[1:]), ("ring", ring, self._ring.shape[1:])):
            if arr.shape != shape:
                raise InputError(f"FeatureState.load_state_dict: {name} has shape {arr.shape}, expected {shape}")
            if np.isinf(arr).any():
                raise InputError(f"FeatureState.load_state_dict: {name} holds infinite values")
        self._prev[slot], self._ring[slot] = prev, ring
