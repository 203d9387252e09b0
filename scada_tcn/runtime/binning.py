"""Binning raw SCADA samples of ONE turbine to the model step `spec.dt_seconds` in batch, and the math the edge's
incremental binning (`runtime.open_bins`) shares with it.

Contract
--------
* Timestamps are integer nanoseconds since the Unix epoch (UTC). Values are float (n, C) in `spec.channels`
  order, in each channel's own units (angles in `spec.angle_units`); NaN = channel not present in that sample.
* Bins are right-closed and labelled by their END: a sample stamped t lands in (L - dt, L] with
  L = ceil(t / dt) * dt counted from the epoch. A sample on the grid keeps its own stamp, and a bin never holds
  data stamped after its label (causality).
* (1) A value outside `spec.valid_range`, or +-inf on any channel, is an impossible reading: it becomes missing
  (`hold.UNREAD`, which also ends a report-by-exception channel's hold) and is counted. (2) Per (timestamp,
  channel), NaN ignored: exact repeats (same value) are dropped keeping the first occurrence, so a redelivered
  sample changes nothing; the distinct values left are collapsed by `spec.dedupe`
  ("first"/"last" by order of first appearance, "mean", "max", "min"). (3) Per (bin, channel):
  `spec.aggregation` (default "mean"; "last" = latest timestamp; "time" = a held channel's time-weighted mean,
  `_time_weigh`); angular channels use the circular mean atan2(sum sin, sum cos) mapped to [0, 360) deg or
  [0, 2pi) rad.
* Output: a contiguous grid of bin labels (int64 ns) and values (T, C) float64, NaN where a bin has no present
  value for a channel. Gaps stay missing (never interpolated); winsor caps are NOT applied here.

`bin_timeline` (batch) and `open_bins` (edge: `OpenBins` for a fleet, `BinAccumulator` for one turbine) both run
`_bin_sorted` on the rows of the bins they emit (`aggregate_bins`), so the same samples give the same numbers.
Refused (InputError): non-integer or out-of-range timestamps, wrong shapes or dtypes, grid bounds off the dt grid;
(SpecError): an angular channel aggregated by max/min/last. Caller arrays are never modified.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

from scada_tcn.runtime.errors import InputError, SpecError
from scada_tcn.runtime.hold import UNREAD, Carry, Events, fill, held_before, is_unread, latest, no_carry
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
    out_of_range: dict[str, int]  # per channel: values made missing as impossible readings
    outside_grid: int  # rows whose bin lies outside [grid_start_ns, grid_end_ns]
    held: dict[str, int] = field(default_factory=dict)  # per report-by-exception channel: bins given a held value


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
    held: tuple[int, ...]  # report-by-exception channels (`spec.hold_s`), by index
    hold_ns: np.ndarray  # (H,) int64: how long each one's value holds
    timed: tuple[int, ...]  # those aggregated by `time` (a time-weighted mean), by index into `held`


def _plan(spec: PipelineSpec) -> _Plan:
    bad = {c: a for c, a in spec.aggregation.items() if c in spec.angular_channels and a not in ("mean", "time")}
    if bad:
        raise SpecError(f"aggregation: angular channels use the circular mean; {bad} is not allowed")
    held = tuple(spec.hold_s)
    how = {c: "mean" if a == "time" else a for c, a in spec.aggregation.items()}  # `time` bins as `mean`, then
    # `_time_weigh` replaces what the held values give
    return _Plan(
        channels=spec.channels,
        dt_ns=int(spec.dt_seconds) * _NS_PER_S,
        dedupe=spec.dedupe,
        lo=np.maximum([spec.valid_range.get(c, (-np.inf, np.inf))[0] for c in spec.channels], -_F64_MAX),
        hi=np.minimum([spec.valid_range.get(c, (-np.inf, np.inf))[1] for c in spec.channels], _F64_MAX),
        how=tuple("circular" if c in spec.angular_channels else how.get(c, "mean") for c in spec.channels),
        period=360.0 if spec.angle_units == "deg" else 2.0 * math.pi,
        held=tuple(spec.channels.index(c) for c in held),
        hold_ns=np.array([int(s) * _NS_PER_S for s in spec.hold_s.values()], dtype=np.int64),
        timed=tuple(h for h, c in enumerate(held) if spec.aggregation.get(c) == "time"),
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


def _drop_impossible(values: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """In place on values we own: impossible readings (`_impossible`) -> `UNREAD` (missing, and it ends a hold as a
    failed read does). Returns where they were. The batch's and the edge's one range filter."""
    bad = _impossible(values, lo, hi)
    values[bad] = UNREAD
    return bad


def _range_filter(cols: np.ndarray, plan: _Plan) -> np.ndarray:
    """In place on channel-major (C, m) values we own: `_drop_impossible`. Returns counts (C,)."""
    bad = _drop_impossible(cols, plan.lo[:, None], plan.hi[:, None])
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


def _last_per_bin(ts: np.ndarray, dt_ns: int, start_ns: int) -> tuple[np.ndarray, np.ndarray]:
    """Stamps sorted -> (the index of each bin's last one, that bin's row on the grid from start_ns)."""
    lab = _ceil_labels(ts, dt_ns)
    last = np.flatnonzero(np.append(lab[1:] != lab[:-1], True))
    return last, (lab[last] - start_ns) // dt_ns


def _stream(ts: np.ndarray, col: np.ndarray, order: np.ndarray, rule: str) -> tuple[np.ndarray, np.ndarray]:
    """One held channel's events in time order, from samples sorted by (ts, order): (stamps, values), a stamp's
    values collapsed by `rule` (dedupe), an `UNREAD` as NaN, and the `UNREAD` where they share a stamp."""
    present = ~np.isnan(col)
    t_v, v_v, _ = _dedupe(ts[present], col[present], order[present], rule)
    t_x = np.unique(ts[is_unread(col)])
    if not t_x.size:
        return t_v, v_v
    keep = ~np.isin(t_v, t_x)
    t = np.concatenate((t_v[keep], t_x))
    o = np.argsort(t, kind="stable")
    return t[o], np.concatenate((v_v[keep], np.full(t_x.size, np.nan)))[o]


def _events(streams: list[tuple[np.ndarray, np.ndarray]], plan: _Plan, start_ns: int, n_bins: int) -> Events:
    """`hold.Events` of the held channels from their `_stream`s: per bin, its latest event (offset, value)."""
    offset = np.full((n_bins, len(plan.held)), -1, dtype=np.int64)
    value = np.full((n_bins, len(plan.held)), np.nan)
    for h, (t, v) in enumerate(streams):
        if t.size:
            last, rows = _last_per_bin(t, plan.dt_ns, start_ns)
            offset[rows, h] = start_ns + rows * plan.dt_ns - t[last]
            value[rows, h] = v[last]
    return Events(offset, value)


def _hold(
    plan: _Plan,
    binned: np.ndarray,
    ends: np.ndarray,
    slots: np.ndarray,
    grid: tuple[np.ndarray, np.ndarray, np.ndarray, int, int],
    carry: Carry,
) -> None:
    """`hold.fill` of this plan's report-by-exception channels (nothing to do without them) into `binned`, the
    bins of `grid` (`_bin_sorted`'s samples: ts, order, channel-major values, start, number of bins): a bin filled
    by a hold gets what a bin holding that one sample gets; then `_time_weigh` of those aggregated by `time`."""
    if not plan.held or not ends.size:
        return

    def one_sample(v: np.ndarray, c: int) -> np.ndarray:
        return _circular(v, plan.period) if plan.how[c] == "circular" else v

    ts, order, cols, start, n = grid
    streams = [_stream(ts, cols[c], order, plan.dedupe) for c in plan.held]
    found = latest(ends, slots, _events(streams, plan, start, n), plan.held, carry)
    before = held_before(found, plan.held, plan.timed, carry) if plan.timed else None
    fill(binned, found, plan.held, plan.hold_ns, one_sample, carry)
    if before is not None:
        carry.filled[list(plan.timed)] += _time_weigh(plan, binned, ends, (start, n), streams, before)


def _time_weigh(
    plan: _Plan,
    binned: np.ndarray,
    ends: np.ndarray,
    grid: tuple[int, int],
    streams: list[tuple[np.ndarray, np.ndarray]],
    before: tuple[np.ndarray, np.ndarray],
) -> np.ndarray:
    """The channels aggregated by `time`, in place: a bin (E - dt, E] gets the mean of the values holding over
    [E - dt, E), each weighted by how long it holds there. A value holds from its stamp until the channel's next
    event (its `_stream`), and for at most the channel's hold; an `UNREAD` holds nothing. The value before the bin
    (`before`: `hold.held_before`, per time-weighted channel) holds over its start. A bin over which nothing holds
    (a value stamped on its end E holds after it) keeps what binning and `hold.fill` gave it. Angular channels take
    the weighted circular mean. The mean is taken about one of the bin's values, so a bin over which one value held
    reads it exactly. `grid`: the start and the number of bins of the streams' grid; `ends`: the bins' true ends.
    Returns, per time-weighted channel, the bins given a value by a hold alone (one running out in them)."""
    start, n = grid
    dt = plan.dt_ns
    rows_end = start + dt * np.arange(n, dtype=np.int64)  # each bin's end on the grid's own stamps
    held_only = np.zeros(len(plan.timed), dtype=np.int64)
    for k, h in enumerate(plan.timed):
        (t, v), c, hold = streams[h], plan.held[h], int(plan.hold_ns[h])
        row = (_ceil_labels(t, dt) - start) // dt
        nxt = rows_end[row]  # until the next event in the bin, else the bin's end
        same = np.flatnonzero(row[1:] == row[:-1])
        nxt[same] = t[same + 1]
        w = np.where(np.isnan(v), 0.0, np.minimum(nxt - t, hold) / dt)  # a fraction of the bin
        own = np.zeros(n, dtype=bool)
        own[row] = True
        first = np.full(n, dt, dtype=np.int64)  # per bin, how far into it its first event comes (dt: none)
        head = np.flatnonzero(np.diff(row, prepend=-1))  # each bin's first event (rows are >= 0)
        first[row[head]] = t[head] - (rows_end[row[head]] - dt)
        b_ts, b_val = before[0][:, k], before[1][:, k]
        known = ~np.isnan(b_val)  # the value before the bin: holds until its first event or its hold runs out
        until = np.zeros(n, dtype=np.int64)
        until[known] = np.minimum(first[known], hold - ((ends[known] - dt) - b_ts[known]))
        w0 = np.maximum(until, 0) / dt
        weight = np.bincount(row, w, n) + w0
        some = weight > 0
        held_only[k] = np.count_nonzero(some & ~own & np.isnan(binned[:, c]))
        ref = np.where(w0 > 0, b_val, np.nan)  # the value the mean is taken about: the one before, else the first
        pos = np.flatnonzero(w > 0)
        r, at = np.unique(row[pos], return_index=True)
        take = np.isnan(ref[r])
        ref[r[take]] = v[pos[at[take]]]
        if plan.how[c] == "circular":
            to_rad = 2.0 * math.pi / plan.period
            ref_rad = np.arctan2(np.sin(ref * to_rad), np.cos(ref * to_rad))  # as `_circular` reads one value
            d = np.where(w > 0, (v - ref[row]) * to_rad, 0.0)
            sin = np.bincount(row, w * np.sin(d), n)
            cos = np.bincount(row, w * np.cos(d), n) + w0  # the value before is the reference: an angle of 0
            binned[some, c] = _turns(ref_rad[some] + np.arctan2(sin[some], cos[some]), plan.period)
        else:
            d = np.where(w > 0, v - ref[row], 0.0)
            binned[some, c] = ref[some] + np.bincount(row, w * d, n)[some] / weight[some]
    return held_only


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
    grid = start + dt * np.arange(n_bins, dtype=np.int64)
    carry = Carry(*no_carry(1, len(plan.channels)), np.zeros(len(plan.held), dtype=np.int64))
    _hold(plan, binned, grid, np.zeros(n_bins, dtype=np.int64), (ts, order, cols, start, n_bins), carry)
    stats = BinStats(
        samples=n,
        duplicate_timestamps=int(np.count_nonzero(ts[1:] == ts[:-1])),
        exact_repeats=repeats,
        out_of_range={c: int(k) for c, k in zip(plan.channels, oor)},
        outside_grid=outside,
        held={plan.channels[c]: int(k) for c, k in zip(plan.held, carry.filled)},
    )
    return grid, binned, stats


def _one_grid(raw: list[Any], plan: _Plan) -> tuple[np.ndarray, np.ndarray, np.ndarray, int, int]:
    """Closed bins of any turbines (`aggregate_bins`'s items) as the samples of one grid: ts, order, channel-major
    values, the grid's start and its number of bins."""
    if len(raw) == 1 and isinstance(raw[0], RawBins):
        r = raw[0]
        return r.ts, r.order, r.values.T, r.start_ns, r.n_bins
    dt = plan.dt_ns
    one = [isinstance(r, RawBins) for r in raw]
    n = np.concatenate([[r.n_bins] if k else r.n_bins for r, k in zip(raw, one)]).astype(np.int64)
    starts = np.concatenate([[r.start_ns] if k else r.start_ns for r, k in zip(raw, one)]).astype(np.int64)
    sizes = np.concatenate([[r.ts.size] if k else r.sizes for r, k in zip(raw, one)]).astype(np.int64)
    first_row = np.cumsum(n) - n
    ts = np.concatenate([r.ts for r in raw]) + np.repeat((first_row + 1) * dt - starts, sizes)
    order = np.concatenate([r.order for r in raw])
    cols = np.concatenate([r.values for r in raw]).T  # sorted by (ts, order) already: the blocks follow each other
    return ts, order, cols, dt, int(n.sum())


def closed_slots_ends(raw: list[Any], dt_ns: int) -> tuple[np.ndarray, np.ndarray]:
    """Per bin of `aggregate_bins`'s items, in its order: its slot (a `RawBins`'s: 0) and its end (ns)."""
    one = [isinstance(r, RawBins) for r in raw]
    n = np.concatenate([[r.n_bins] if k else r.n_bins for r, k in zip(raw, one)]).astype(np.int64)
    slots = np.repeat(np.concatenate([[0] if k else r.slots for r, k in zip(raw, one)]).astype(np.int64), n)
    starts = np.concatenate([[r.start_ns] if k else r.start_ns for r, k in zip(raw, one)]).astype(np.int64)
    return slots, np.repeat(starts - (np.cumsum(n) - n) * dt_ns, n) + dt_ns * np.arange(slots.size, dtype=np.int64)


def aggregate_bins(raw: list[Any], plan: _Plan, carry: Carry | None = None) -> np.ndarray:
    """The binned values (sum of n_bins, C) of closed bins of any turbines, in the order given, in one vectorised
    pass. Each item is one turbine's `RawBins` or several turbines' `open_bins.ClosedBins` (its entries in order).
    Each entry's samples are shifted by a whole number of bins onto its own rows of one grid (bin membership,
    order within a bin and exact repeats unchanged; different turbines never share a bin), then `_bin_sorted`.
    With `carry` (of the slots the items name), report-by-exception channels are held (`_hold`); without, not."""
    grid = _one_grid(raw, plan)
    ts, order, cols, start, n = grid
    binned = _bin_sorted(ts, cols, order, plan, start, n)[0]
    if carry is not None and plan.held:
        slots, ends = closed_slots_ends(raw, plan.dt_ns)
        _hold(plan, binned, ends, slots, grid, carry)
    return binned
