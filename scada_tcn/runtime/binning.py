"""Binning raw SCADA samples of ONE turbine to the model step `spec.dt_seconds`, in batch and incrementally.

Contract
--------
* Timestamps are integer nanoseconds since the Unix epoch (UTC). Values are float (n, C) in `spec.channels`
  order, in each channel's own units (angles in `spec.angle_units`); NaN = channel not present in that sample.
* Bins are right-closed and labelled by their END: a sample stamped t lands in (L - dt, L] with
  L = ceil(t / dt) * dt counted from the epoch. A sample on the grid keeps its own stamp, and a bin never holds
  data stamped after its label (causality).
* (1) A value outside `spec.valid_range`, or +-inf on any channel, is an impossible reading: it becomes NaN and
  is counted. (2) Per (timestamp, channel), NaN ignored: exact repeats (same value) are dropped keeping the first
  occurrence, so a redelivered sample changes nothing; the distinct values left are collapsed by `spec.dedupe`
  ("first"/"last" by order of first appearance, "mean", "max", "min"). (3) Per (bin, channel):
  `spec.aggregation` (default "mean"; "last" = latest timestamp); angular channels use the circular mean
  atan2(sum sin, sum cos) mapped to [0, 360) deg or [0, 2pi) rad.
* Output: a contiguous grid of bin labels (int64 ns) and values (T, C) float64, NaN where a bin has no present
  value for a channel. Gaps stay missing (never interpolated); winsor caps are NOT applied here.

`bin_timeline` (batch) and `BinAccumulator` (edge) both run `_bin_sorted` on the rows of the bins they emit, so
the same samples give the same numbers. Refused (InputError): non-integer or out-of-range timestamps, wrong shapes
or dtypes, grid bounds off the dt grid; (SpecError): an angular channel aggregated by max/min/last, a negative
grace. Caller arrays are never modified.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from scada_tcn.runtime.errors import InputError, SpecError
from scada_tcn.runtime.spec import PipelineSpec

_NS_PER_S = 1_000_000_000
_I64 = np.iinfo(np.int64)
_F64_MAX = float(np.finfo(np.float64).max)


class ClosedBin(NamedTuple):
    """One emitted bin: its end label (ns) and the binned channel values (C,) float64, NaN = missing."""

    end_ns: int
    values: np.ndarray


class RawBins(NamedTuple):
    """Bins closed but not aggregated yet: `n_bins` contiguous bins ending at start_ns, start_ns + dt, ...; their
    range-filtered samples sorted by (ts, arrival order): ts (m,) int64, order (m,) int64, values (m, C)."""

    start_ns: int
    n_bins: int
    ts: np.ndarray
    order: np.ndarray
    values: np.ndarray


@dataclass(frozen=True)
class BinStats:
    """Counts from one `bin_timeline` call. Samples outside the grid are dropped first; the rest count kept rows."""

    samples: int  # input rows
    duplicate_timestamps: int  # kept rows whose timestamp repeats an earlier row's
    exact_repeats: int  # (timestamp, channel, value) entries dropped as repeats
    out_of_range: dict[str, int]  # per channel: values turned NaN as impossible readings
    outside_grid: int  # rows whose bin lies outside [grid_start_ns, grid_end_ns]


@dataclass(frozen=True)
class _Plan:
    """The binning parameters of a spec, resolved per channel."""

    channels: tuple[str, ...]
    dt_ns: int
    dedupe: str
    lo: np.ndarray  # (C,) lower valid bound, the lowest finite float when unset (so -inf is below it)
    hi: np.ndarray  # (C,) upper valid bound, the highest finite float when unset (so +inf is above it)
    how: tuple[str, ...]  # per channel: mean/max/min/last or "circular"
    period: float  # full turn in angle units


def _plan(spec: PipelineSpec) -> _Plan:
    bad = {c: a for c, a in spec.aggregation.items() if c in spec.angular_channels and a != "mean"}
    if bad:
        raise SpecError(f"aggregation: angular channels use the circular mean; {bad} is not allowed")
    return _Plan(
        channels=spec.channels,
        dt_ns=int(spec.dt_seconds) * _NS_PER_S,
        dedupe=spec.dedupe,
        lo=np.maximum([spec.valid_range.get(c, (-np.inf, np.inf))[0] for c in spec.channels], -_F64_MAX),
        hi=np.minimum([spec.valid_range.get(c, (-np.inf, np.inf))[1] for c in spec.channels], _F64_MAX),
        how=tuple("circular" if c in spec.angular_channels else spec.aggregation.get(c, "mean") for c in spec.channels),
        period=360.0 if spec.angle_units == "deg" else 2.0 * math.pi,
    )


def _check_int(x: Any, name: str, dt_ns: int) -> int:
    if isinstance(x, bool) or not isinstance(x, (int, np.integer)):
        raise InputError(f"{name} must be an integer number of nanoseconds, got {type(x).__name__}")
    if not _I64.min + dt_ns < int(x) < _I64.max - dt_ns:
        raise InputError(f"{name}={x} is out of the int64 nanosecond range that can be binned")
    return int(x)


def _check_ts(ts_ns: np.ndarray, dt_ns: int) -> np.ndarray:
    ts = np.asarray(ts_ns)
    if ts.ndim != 1 or ts.dtype.kind not in "iu":
        raise InputError(f"timestamps must be a 1-D integer (int64 ns) array, got dtype {ts.dtype} shape {ts.shape}")
    if ts.size and (int(ts.min()) <= _I64.min + dt_ns or int(ts.max()) >= _I64.max - dt_ns):
        raise InputError("timestamps out of the int64 nanosecond range that can be binned")
    return ts.astype(np.int64, copy=False)


def _check_values(values: np.ndarray, shape: tuple[int, ...], plan: _Plan) -> np.ndarray:
    arr = np.asarray(values)
    if arr.shape != shape or arr.dtype.kind not in "fiu":
        raise InputError(
            f"values must be a numeric {shape} array for channels {list(plan.channels)}, "
            f"got dtype {arr.dtype} shape {arr.shape}"
        )
    return arr


def _ceil_labels(ts: np.ndarray, dt_ns: int) -> np.ndarray:
    return -((-ts) // dt_ns) * dt_ns


def bin_end_ns(ts_ns: np.ndarray, dt_seconds: int) -> np.ndarray:
    """Bin label (end, int64 ns) of each timestamp: ceil(t / dt) * dt; a stamp on the grid keeps its value."""
    if isinstance(dt_seconds, bool) or not isinstance(dt_seconds, (int, np.integer)) or dt_seconds <= 0:
        raise InputError(f"dt_seconds must be a positive integer, got {dt_seconds!r}")
    dt_ns = int(dt_seconds) * _NS_PER_S
    return _ceil_labels(_check_ts(ts_ns, dt_ns), dt_ns)


def _impossible(values: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Impossible readings: outside [lo, hi], the plan's finite bounds, so +-inf always is (NaN compares False: a
    missing value is not one)."""
    return (values < lo) | (values > hi)


def _range_filter(cols: np.ndarray, plan: _Plan) -> np.ndarray:
    """In place on channel-major (C, m) values we own: impossible readings -> NaN. Returns counts (C,)."""
    bad = _impossible(cols, plan.lo[:, None], plan.hi[:, None])
    cols[bad] = np.nan
    return np.count_nonzero(bad, axis=1).astype(np.int64)


def _dedupe(ts: np.ndarray, val: np.ndarray, order: np.ndarray, rule: str) -> tuple[np.ndarray, np.ndarray, int]:
    """Present samples of one channel sorted by (ts, order) -> one value per distinct ts, and the repeats dropped."""
    if ts.size < 2:
        return ts, val, 0
    new_ts = ts[1:] != ts[:-1]
    if new_ts.all():
        return ts, val, 0
    first = np.concatenate(([True], new_ts))
    in_dup = ~(first & np.concatenate((new_ts, [True])))
    d_ts, d_val, d_ord = ts[in_dup], val[in_dup], order[in_dup]
    o = np.lexsort((d_ord, d_val, d_ts))
    d_ts, d_val, d_ord = d_ts[o], d_val[o], d_ord[o]
    distinct = np.concatenate(([True], (d_ts[1:] != d_ts[:-1]) | (d_val[1:] != d_val[:-1])))
    repeats = int(d_ts.size - np.count_nonzero(distinct))
    d_ts, d_val, d_ord = d_ts[distinct], d_val[distinct], d_ord[distinct]
    g = np.flatnonzero(np.concatenate(([True], d_ts[1:] != d_ts[:-1])))
    if rule in ("first", "last"):
        by_order = d_val[np.lexsort((d_ord, d_ts))]
        res = by_order[g] if rule == "first" else by_order[np.append(g[1:], d_val.size) - 1]
    elif rule == "mean":
        res = np.add.reduceat(d_val, g) / np.diff(np.append(g, d_val.size))
    else:
        res = (np.maximum if rule == "max" else np.minimum).reduceat(d_val, g)
    t_u, v_u = ts[first], val[first]
    v_u[in_dup[first]] = res
    return t_u, v_u, repeats


def _turns(ang: np.ndarray, period: float) -> np.ndarray:
    """Angles in radians -> [0, period) in the channel's units."""
    agg = np.mod(ang * (period / (2.0 * math.pi)), period)
    agg[agg >= period] = 0.0  # mod of a tiny negative angle rounds up to a full turn
    return agg


def _circular(val: np.ndarray, period: float) -> np.ndarray:
    """The circular mean of one value each (what `_aggregate` computes for a single-sample bin), elementwise."""
    rad = val * (2.0 * math.pi / period)
    return _turns(np.arctan2(np.sin(rad), np.cos(rad)), period)


def _aggregate(ts: np.ndarray, val: np.ndarray, dt_ns: int, how: str, period: float) -> tuple[np.ndarray, np.ndarray]:
    """Deduped samples of one channel sorted by ts -> (bin labels, aggregated values) of the bins holding any."""
    if ts.size == 0:
        return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.float64)
    lab = _ceil_labels(ts, dt_ns)
    starts = np.flatnonzero(np.concatenate(([True], lab[1:] != lab[:-1])))
    if how == "circular":
        rad = val * (2.0 * math.pi / period)
        agg = _turns(np.arctan2(np.add.reduceat(np.sin(rad), starts), np.add.reduceat(np.cos(rad), starts)), period)
    elif how == "mean":
        agg = np.add.reduceat(val, starts) / np.diff(np.append(starts, val.size))
    elif how == "last":
        agg = val[np.append(starts[1:], val.size) - 1]
    else:
        agg = (np.maximum if how == "max" else np.minimum).reduceat(val, starts)
    return lab[starts], agg


def _bin_sorted(
    ts: np.ndarray, cols: np.ndarray, order: np.ndarray, plan: _Plan, start_ns: int, n_bins: int
) -> tuple[np.ndarray, int]:
    """Range-filtered samples sorted by (ts, order), channel-major values (C, m), all inside the grid
    -> binned (n_bins, C) and the number of exact repeats dropped."""
    out = np.full((n_bins, len(plan.channels)), np.nan)
    labels = _ceil_labels(ts, plan.dt_ns)
    if ts.size and (labels[1:] > labels[:-1]).all():  # one sample per bin (the usual stream): no dedupe, and
        rows = (labels - start_ns) // plan.dt_ns  # every aggregation of one value is that value
        out[rows] = cols.T
        circ = [c for c, how in enumerate(plan.how) if how == "circular"]
        if circ:
            out[np.ix_(rows, circ)] = _circular(cols[circ].T, plan.period)
        return out, 0
    repeats = 0
    for c, how in enumerate(plan.how):
        col = cols[c]
        present = ~np.isnan(col)
        sel = slice(None) if present.all() else present  # a view when every sample has the channel
        t_u, v_u, r = _dedupe(ts[sel], col[sel], order[sel], plan.dedupe)
        labels, agg = _aggregate(t_u, v_u, plan.dt_ns, how, plan.period)
        out[(labels - start_ns) // plan.dt_ns, c] = agg
        repeats += r
    return out, repeats


def _grid_bound(x: Any, dt_ns: int, name: str) -> int:
    v = _check_int(x, name, dt_ns)
    if v % dt_ns:
        raise InputError(f"{name}={v} is not a multiple of dt ({dt_ns} ns)")
    return v


def bin_timeline(
    ts_ns: np.ndarray,
    values: np.ndarray,
    spec: PipelineSpec,
    grid_start_ns: int | None = None,
    grid_end_ns: int | None = None,
) -> tuple[np.ndarray, np.ndarray, BinStats]:
    """Bin samples (any order) to labels (T,) int64 and values (T, C) float64 on a contiguous grid.

    The grid runs from the first to the last sample's bin, or over [grid_start_ns, grid_end_ns] (inclusive,
    multiples of dt) where given; rows binned outside it are dropped and counted.
    """
    plan = _plan(spec)
    dt = plan.dt_ns
    ts = _check_ts(ts_ns, dt)
    vals_in = _check_values(values, (ts.size, len(plan.channels)), plan)
    n = ts.size
    order = np.argsort(ts, kind="stable")
    ts = ts[order]
    labels = _ceil_labels(ts, dt)
    if n == 0 and grid_start_ns is None and grid_end_ns is None:
        start, end = 0, -dt  # no samples, no grid: T = 0
    elif n == 0 and (grid_start_ns is None or grid_end_ns is None):
        raise InputError("no samples: give both grid_start_ns and grid_end_ns (or neither) to define the grid")
    else:
        start = int(labels[0]) if grid_start_ns is None else _grid_bound(grid_start_ns, dt, "grid_start_ns")
        end = int(labels[-1]) if grid_end_ns is None else _grid_bound(grid_end_ns, dt, "grid_end_ns")
        if end < start:
            raise InputError(f"empty grid: grid end {end} ns is before grid start {start} ns")
    inside = (labels >= start) & (labels <= end)
    outside = int(n - np.count_nonzero(inside))
    if outside:
        order, ts = order[inside], ts[inside]
    cols = np.ascontiguousarray(vals_in.T[:, order], dtype=np.float64)  # channel-major copy
    oor = _range_filter(cols, plan)
    n_bins = (end - start) // dt + 1
    binned, repeats = _bin_sorted(ts, cols, order, plan, start, n_bins)
    stats = BinStats(
        samples=n,
        duplicate_timestamps=int(np.count_nonzero(ts[1:] == ts[:-1])),
        exact_repeats=repeats,
        out_of_range={c: int(k) for c, k in zip(plan.channels, oor)},
        outside_grid=outside,
    )
    return start + dt * np.arange(n_bins, dtype=np.int64), binned, stats


def aggregate_bins(raw: list[RawBins], plan: _Plan) -> np.ndarray:
    """The binned values (sum of n_bins, C) of closed bins of any turbines, in the order given, in one vectorised
    pass: each RawBins' samples are shifted by a whole number of bins onto its own rows of one grid (bin membership,
    order within a bin and exact repeats unchanged; different turbines never share a bin), then `_bin_sorted`."""
    if len(raw) == 1:
        r = raw[0]
        return _bin_sorted(r.ts, r.values.T, r.order, plan, r.start_ns, r.n_bins)[0]
    dt = plan.dt_ns
    n = np.array([r.n_bins for r in raw], dtype=np.int64)
    first_row = np.cumsum(n) - n
    starts = np.array([r.start_ns for r in raw], dtype=np.int64)
    sizes = [r.ts.size for r in raw]
    ts = np.concatenate([r.ts for r in raw]) + np.repeat((first_row + 1) * dt - starts, sizes)
    order = np.concatenate([r.order for r in raw])
    cols = np.concatenate([r.values for r in raw]).T  # sorted by (ts, order) already: the blocks follow each other
    return _bin_sorted(ts, cols, order, plan, dt, int(n.sum()))[0]


class BinAccumulator:
    """Incremental binning of one turbine's sample stream, with the same numbers as `bin_timeline`.

    Samples of open bins are kept; a bin is closed (emitted) when a sample of a later bin stamped at least the grace
    (at most a step) after its end arrives (`add`: a turbine's own samples out of order by up to that much still
    find their bin) or when its end + grace has passed on the caller's clock (`close_until`), including bins that
    got no sample (all-NaN), so emitted bins are contiguous. The stream starts at the earliest bin seen before the
    first close. A sample for an already-closed bin is late: dropped and counted in `late_dropped`, never raised.

    `max_per_stamp` (None = no bound) bounds the memory of a feed whose stamps stop advancing (a collector's clock
    frozen: its samples close no bin, and each new reading under the same stamp is kept): a sample all of whose
    present channels already have that many values of its stamp in the open bins is dropped and counted in
    `full_dropped` (not kept in `state_dict`; exact repeats count too), so a stamp holds at most channels x bound
    samples and no channel crowds out another. It still closes bins. A feed whose stamps advance is bounded by the
    bins closing. `add_many_deferred` (replay) keeps no bound.
    """

    def __init__(self, spec: PipelineSpec, grace_seconds: float, max_per_stamp: int | None = None) -> None:
        ok = isinstance(grace_seconds, (int, float, np.integer, np.floating)) and not isinstance(grace_seconds, bool)
        if not ok or not math.isfinite(grace_seconds) or grace_seconds < 0:
            raise SpecError(f"grace_seconds must be a finite number >= 0, got {grace_seconds!r}")
        if max_per_stamp is not None and (not isinstance(max_per_stamp, int) or max_per_stamp < 1):
            raise SpecError(f"max_per_stamp must be None or an integer >= 1, got {max_per_stamp!r}")
        self._max_per_stamp = max_per_stamp
        self._per_stamp: dict[int, np.ndarray] = {}  # with a bound: per stamp, (C,) values kept in the open bins
        self.full_dropped = 0
        self._plan = _plan(spec)
        self._grace_ns = int(round(grace_seconds * _NS_PER_S))
        self._close_lag_ns = min(self._grace_ns, self._plan.dt_ns)  # how far past a bin's end a sample closes it
        self._open_from: int | None = None  # label of the first bin not yet emitted
        self._closed_any = False
        self._rows: list[tuple[int, int, np.ndarray]] = []  # (ts, arrival order, filtered values) of open bins
        self._seen: set[tuple[int, bytes]] = set()
        self._next_order = 0
        self.late_dropped = 0
        self.out_of_range = np.zeros(len(self._plan.channels), dtype=np.int64)

    @property
    def plan(self) -> _Plan:
        """The binning parameters (for `aggregate_bins`)."""
        return self._plan

    @property
    def open_from(self) -> int | None:
        """End (label) of the first bin not yet emitted; None before the first sample."""
        return self._open_from

    @staticmethod
    def samples_in(state: Any) -> int:
        """The samples a `state_dict()` holds in its open bins (0 when it cannot say: a malformed state)."""
        try:
            return len(state["ts_ns"])
        except (KeyError, TypeError, ValueError):
            return 0

    @property
    def open_samples(self) -> int:
        """The samples the open bins hold."""
        return len(self._rows)

    @property
    def newest_ns(self) -> int | None:
        """The newest stamp among the open bins' samples; None when they hold none."""
        return max((r[0] for r in self._rows), default=None)

    def add(self, ts_ns: int, values: np.ndarray) -> list[ClosedBin]:
        """Store one sample (C,) and return the bins closed because it belongs to a later bin."""
        return self._bins(self.add_deferred(ts_ns, values))

    def close_until(self, now_ns: int) -> list[ClosedBin]:
        """Close every bin whose end + grace <= now_ns (the caller's clock, ns), empty ones included."""
        return self._bins(self.close_until_deferred(now_ns))

    def add_deferred(self, ts_ns: int, values: np.ndarray) -> RawBins | None:
        """`add`, with the closed bins' samples returned for `aggregate_bins` (None when nothing closed): a fleet
        aggregates the bins every turbine closed in one call."""
        dt = self._plan.dt_ns
        ts = _check_int(ts_ns, "ts_ns", dt)
        row = _check_values(values, (len(self._plan.channels),), self._plan)
        label = -(-ts // dt) * dt
        if self._closed_any and label < self._open_from:
            self.late_dropped += 1
            return None
        row = row.astype(np.float64)  # always a copy: filtered in place below
        bad = _impossible(row, self._plan.lo, self._plan.hi)
        if np.count_nonzero(bad):
            row[bad] = np.nan
            self.out_of_range += bad
        if self._open_from is None or label < self._open_from:
            self._open_from = label
        raw = self._take_through(self._closed_by(ts, label))  # (after the bins it closes: kept below)
        if self._max_per_stamp is not None:
            held, present = self._per_stamp.get(ts), ~np.isnan(row)
            if held is not None and present.any() and (held[present] >= self._max_per_stamp).all():
                self.full_dropped += 1
                return raw
        key = (ts, row.tobytes())
        if key not in self._seen:
            self._seen.add(key)
            self._rows.append((ts, self._next_order, row))
            self._next_order += 1
            if self._max_per_stamp is not None:
                if held is None:
                    self._per_stamp[ts] = present.astype(np.int64)
                else:
                    held += present
        return raw

    def add_many_deferred(self, ts_ns: np.ndarray, values: np.ndarray) -> tuple[RawBins | None, np.ndarray, int]:
        """`add_deferred` of n samples in one vectorised call: ts_ns (n,) int64 non-decreasing (a table sorted by
        time), values (n, C), in arrival order. The state afterwards and the bins closed are those of n
        `add_deferred` calls. Returns (the closed bins' samples, None when nothing closed; per closed bin, the
        index of the sample that closed it, the first of a later bin; the number of late samples dropped)."""
        plan = self._plan
        dt = plan.dt_ns
        if self._max_per_stamp is not None:
            raise SpecError("add_many_deferred keeps no max_per_stamp bound (replay): use add_deferred")
        ts = _check_ts(ts_ns, dt)
        vals = _check_values(values, (ts.size, len(plan.channels)), plan)
        none = np.empty(0, dtype=np.int64)
        if ts.size and (ts[1:] < ts[:-1]).any():
            raise InputError("add_many_deferred: the stamps must be non-decreasing (sort the rows by time)")
        labels = _ceil_labels(ts, dt)
        late = int(np.searchsorted(labels, self._open_from)) if self._closed_any else 0  # labels < open_from
        self.late_dropped += late
        if late == ts.size:
            return None, none, late
        ts, labels = ts[late:], labels[late:]
        rows = vals[late:].astype(np.float64)  # always a copy: filtered in place below
        bad = _impossible(rows, plan.lo, plan.hi)
        rows[bad] = np.nan
        self.out_of_range += np.count_nonzero(bad, axis=0)
        fresh = self._fresh(ts, rows)
        stamps, ts, rows = ts, ts[fresh], rows[fresh]  # (every sample closes bins: repeats too)
        order = self._next_order + np.arange(ts.size, dtype=np.int64)
        self._next_order += int(ts.size)
        first = int(labels[0])
        self._open_from = first if self._open_from is None else min(self._open_from, first)
        last_ns = self._closed_by(int(stamps[-1]), int(labels[-1]))  # the newest sample closes the most
        if last_ns < self._open_from:
            added = list(zip(ts.tolist(), order.tolist(), rows))
            self._rows.extend(added)
            self._seen.update((t, r.tobytes()) for t, _, r in added)
            return None, none, late
        start = self._open_from
        old_ts, old_order, old_vals = self._arrays()
        all_ts, all_order = np.concatenate([old_ts, ts]), np.concatenate([old_order, order])
        all_vals = np.concatenate([old_vals, rows])
        closing = all_ts <= last_ns  # a stamp <= a bin end lies in that bin or before
        kept = np.flatnonzero(~closing)
        self._rows = list(zip(all_ts[kept].tolist(), all_order[kept].tolist(), all_vals[kept]))
        self._seen = {(t, v.tobytes()) for t, _, v in self._rows}
        sel = np.flatnonzero(closing)
        sel = sel[np.lexsort((all_order[sel], all_ts[sel]))]  # by (ts, arrival order)
        self._open_from, self._closed_any = last_ns + dt, True
        ends = np.arange(start, last_ns + dt, dt, dtype=np.int64)
        closers = late + np.maximum(np.searchsorted(labels, ends, side="right"),  # of a later bin, the grace after
                                    np.searchsorted(stamps, ends + self._close_lag_ns))  # fmt: skip
        return RawBins(start, ends.size, all_ts[sel], all_order[sel], all_vals[sel]), closers, late

    def _fresh(self, ts: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """Which of these (filtered) samples are not exact repeats (same stamp, same values) of an earlier one of
        them or of an open bin's sample, as `add_deferred` decides one at a time."""
        n, c = rows.shape
        keys = np.empty((n, c + 1), dtype=np.float64)
        keys[:, 0] = ts.view(np.float64)  # the bytes of (stamp, values) as one record
        keys[:, 1:] = rows
        flat = np.ascontiguousarray(keys).view(np.dtype((np.void, 8 * (c + 1)))).ravel()
        _, first = np.unique(flat, return_index=True)
        fresh = np.zeros(n, dtype=bool)
        fresh[first] = True
        if self._seen:  # only samples stamped like an open bin's sample can repeat one (usually none or a few)
            maybe = np.flatnonzero(np.isin(ts, np.array([t for t, _ in self._seen], dtype=np.int64)))
            fresh[maybe] &= np.array([(int(ts[i]), rows[i].tobytes()) not in self._seen for i in maybe], bool)
        return fresh

    def _closed_by(self, ts: int, label: int) -> int:
        """The end of the last bin a sample stamped ts (in bin `label`) closes: of an earlier bin, and the grace
        (at most a step) or more before ts."""
        dt = self._plan.dt_ns
        return min(label - dt, ((ts - self._close_lag_ns) // dt) * dt)

    def closable_through(self, now_ns: int) -> int:
        """The end of the last bin that may close at clock time now_ns: its end + grace <= now_ns."""
        dt = self._plan.dt_ns
        return ((_check_int(now_ns, "now_ns", dt) - self._grace_ns) // dt) * dt

    def close_until_deferred(self, now_ns: int) -> RawBins | None:
        """`close_until`, with the closed bins' samples returned for `aggregate_bins` (None when nothing closed)."""
        return self._take_through(self.closable_through(now_ns))

    def _bins(self, raw: RawBins | None) -> list[ClosedBin]:
        if raw is None:
            return []
        binned = aggregate_bins([raw], self._plan)
        return [ClosedBin(raw.start_ns + i * self._plan.dt_ns, binned[i]) for i in range(raw.n_bins)]

    def _arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        ts = np.array([r[0] for r in self._rows], dtype=np.int64)
        order = np.array([r[1] for r in self._rows], dtype=np.int64)
        vals = np.stack([r[2] for r in self._rows]) if self._rows else np.empty((0, len(self._plan.channels)))
        return ts, order, vals

    def _take_through(self, last_ns: int) -> RawBins | None:
        """Close the bins up to label last_ns: hand over their samples, keep the later ones."""
        if self._open_from is None or last_ns < self._open_from:
            return None
        dt, start = self._plan.dt_ns, self._open_from
        n_bins = (last_ns - start) // dt + 1
        closing: list[tuple[int, int, np.ndarray]] = []
        kept: list[tuple[int, int, np.ndarray]] = []
        for r in self._rows:  # a stamp <= a bin end lies in that bin or before
            (closing if r[0] <= last_ns else kept).append(r)
        if len(closing) > 1:
            closing.sort(key=lambda r: (r[0], r[1]))  # by (ts, arrival order)
        ts = np.array([r[0] for r in closing], dtype=np.int64)
        order = np.array([r[1] for r in closing], dtype=np.int64)
        if len(closing) == 1:  # the usual stream: one sample per bin
            vals = closing[0][2][None, :]
        else:
            vals = np.array([r[2] for r in closing]) if closing else np.empty((0, len(self._plan.channels)))
        self._rows = kept
        self._seen = {(t, v.tobytes()) for t, _, v in kept}
        if self._per_stamp:  # the closed stamps' counts go with them
            self._per_stamp = {t: held for t, held in self._per_stamp.items() if t > last_ns}
        self._open_from, self._closed_any = last_ns + dt, True
        return RawBins(start, n_bins, ts, order, vals)

    def state_dict(self) -> dict[str, Any]:
        """The accumulator state as plain ints, bools and numpy arrays (no pickle needed)."""
        ts, order, vals = self._arrays()
        return {
            "dt_seconds": self._plan.dt_ns // _NS_PER_S,
            "channels": np.array(self._plan.channels, dtype=str),
            "started": self._open_from is not None,
            "closed_any": self._closed_any,
            "open_from_ns": 0 if self._open_from is None else self._open_from,
            "next_order": self._next_order,
            "late_dropped": self.late_dropped,
            "out_of_range": self.out_of_range.copy(),
            "ts_ns": ts,
            "order": order,
            "values": vals,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a `state_dict()` taken from an accumulator with the same dt and channels."""
        keys = set(self.state_dict())
        if set(state) != keys:
            raise InputError(f"accumulator state: expected keys {sorted(keys)}, got {sorted(state)}")
        c = len(self._plan.channels)
        channels = tuple(str(x) for x in np.asarray(state["channels"]).tolist())
        if int(state["dt_seconds"]) * _NS_PER_S != self._plan.dt_ns or channels != self._plan.channels:
            raise SpecError(
                f"accumulator state is for dt_seconds={state['dt_seconds']}, channels {list(channels)}; "
                f"this spec has dt_seconds={self._plan.dt_ns // _NS_PER_S}, channels {list(self._plan.channels)}"
            )
        ts = np.asarray(state["ts_ns"], dtype=np.int64)
        order = np.asarray(state["order"], dtype=np.int64)
        vals = np.array(state["values"], dtype=np.float64)
        oor = np.array(state["out_of_range"], dtype=np.int64)
        if ts.ndim != 1 or order.shape != ts.shape or vals.shape != (ts.size, c) or oor.shape != (c,):
            raise InputError(
                f"accumulator state: inconsistent shapes ts {ts.shape}, order {order.shape}, "
                f"values {vals.shape}, out_of_range {oor.shape} for {c} channels"
            )
        self._open_from = int(state["open_from_ns"]) if bool(state["started"]) else None
        self._closed_any = bool(state["closed_any"])
        self._next_order = int(state["next_order"])
        self.late_dropped = int(state["late_dropped"])
        self.out_of_range = oor
        self._set_rows(ts, order, vals)

    def take_over(self, state: dict[str, Any]) -> int:
        """Take the open bins of another spec's accumulator, from its `state_dict()` (a state refused at a restart:
        another model with the same dt and channels), so that samples acknowledged before the restart are not lost:
        its samples through this spec's range filter too (the stricter of the two ranges holds), its position (the
        bins it emitted stay closed: a sample for them is late) and its counters. Returns the samples taken.
        SpecError for another dt or channels, InputError for a malformed state (this accumulator is then not
        to be used)."""
        try:
            self.load_state_dict(state)
        except (TypeError, KeyError, AttributeError) as e:
            raise InputError(f"accumulator state: malformed ({e!r})") from e
        ts, order, vals = self._arrays()
        bad = _impossible(vals, self._plan.lo, self._plan.hi)
        if bad.any():
            vals[bad] = np.nan
            self.out_of_range += bad.sum(axis=0)
            self._set_rows(ts, order, vals)
        return int(ts.size)

    def _set_rows(self, ts: np.ndarray, order: np.ndarray, vals: np.ndarray) -> None:
        """The open bins' samples, with the dedupe keys and the per-stamp counts that follow from them."""
        self._rows = list(zip(ts.tolist(), order.tolist(), vals))
        self._seen = {(t, v.tobytes()) for t, _, v in self._rows}
        self._per_stamp = {}
        if self._max_per_stamp is not None:
            for t, _, v in self._rows:
                self._per_stamp.setdefault(t, np.zeros(v.size, dtype=np.int64))[:] += ~np.isnan(v)
