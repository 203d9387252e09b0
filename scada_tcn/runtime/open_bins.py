"""Incremental binning of many turbines' sample streams at once: the open bins of a whole fleet in one columnar
store (`OpenBins`), and one turbine's stream (`BinAccumulator`, a store of one slot). The same numbers as
`binning.bin_timeline`: both run `binning._bin_sorted` on the rows of the bins they emit.

Contract (per slot, i.e. per turbine)
-------------------------------------
* Samples of open bins are kept; a bin is closed (emitted) when a sample of a later bin stamped at least the grace
  (at most a step) after its end arrives (a turbine's own samples out of order by up to that much still find their
  bin), or when its end + grace has passed on the caller's clock (`close_until`), including bins that got no
  sample (all-NaN), so emitted bins are contiguous. The stream starts at the earliest bin seen before the first
  close. A sample for an already-closed bin is late: dropped and counted in `late_dropped`, never raised.
* A value outside `spec.valid_range`, or +-inf, becomes NaN and is counted in `out_of_range` (a late sample is not
  looked at). An exact repeat (same stamp, same values, bit for bit) of a sample in the open bins is dropped, so a
  redelivered sample changes nothing; it still closes bins.
* `max_per_stamp` (None = no bound) bounds the memory of a feed whose stamps stop advancing (a collector's clock
  frozen: its samples close no bin, and each new reading under the same stamp is kept): a sample all of whose
  present channels already have that many values of its stamp in the open bins is dropped and counted in
  `full_dropped` (not kept in `state_dict`; exact repeats count too), so a stamp holds at most channels x bound
  samples and no channel crowds out another. It still closes bins. A feed whose stamps advance is bounded by the
  bins closing. `add_sorted` (replay) keeps no bound.

`OpenBins.add(slots, ts, values)` takes n samples of any slots in arrival order: the state afterwards, the bins
closed and the sample that closed each are those of n one-sample calls. Round r holds each slot's r-th sample of
the call (distinct slots), and each round is a few vectorised passes over the round and the open rows (the daemon's
loop iteration: about one sample per turbine, one round). A slot much deeper than the others, with at least
`_DEEP` samples in time order that the bound cannot bite (a turbine's backlog in one message), takes one
`add_sorted` pass instead of a round per sample. `add_sorted(slot, ts, values, arrivals)` takes one slot's block of
samples with non-decreasing stamps (a table sorted by time) in one vectorised call. Closed bins come out as
`ClosedBins` (`BinAccumulator` hands its one turbine's on as `binning.RawBins`), for `binning.aggregate_bins`.
"""

from __future__ import annotations

import itertools
import math
from typing import Any, NamedTuple

import numpy as np

from scada_tcn.runtime.binning import (
    _NS_PER_S,
    ClosedBin,
    RawBins,
    _ceil_labels,
    _check_int,
    _check_ts,
    _check_values,
    _drop_impossible,
    _impossible,
    _Plan,
    _plan,
    aggregate_bins,
)
from scada_tcn.runtime.channel_map import channel_map
from scada_tcn.runtime.errors import InputError, SpecError
from scada_tcn.runtime.hold import NO_VALUE, Carry, no_carry
from scada_tcn.runtime.slots import rounds
from scada_tcn.runtime.spec import PipelineSpec

__all__ = ["BinAccumulator", "ClosedBins", "OpenBins", "NO_SAMPLE", "STORED", "LATE", "FULL"]

NO_SAMPLE = np.iinfo(np.int64).max  # `OpenBins.open_from` of a slot without a sample yet
_BEFORE_ALL = np.iinfo(np.int64).min
STORED, LATE, FULL = 0, 1, 2  # `OpenBins.add` per sample: stored (or an exact repeat), late, dropped by the bound
_DEEP = 8  # samples of one slot in one `OpenBins.add` from which its block may take one `_add_sorted` (a round costs
# some 25-40 us whatever its size: a turbine's backlog of 1,000 samples in one message took 1,000 rounds)


class ClosedBins(NamedTuple):
    """Bins that `OpenBins` closed, for k slots: entry i is slot `slots[i]`'s `n_bins[i]` contiguous bins ending at
    `start_ns[i]`, `start_ns[i]` + dt, ...; their samples are the next `sizes[i]` rows of ts, order, values, sorted
    by (ts, arrival order). `closers` (sum of n_bins,): per bin, the arrival index of the sample that closed it."""

    slots: np.ndarray
    start_ns: np.ndarray
    n_bins: np.ndarray
    sizes: np.ndarray
    ts: np.ndarray
    order: np.ndarray
    values: np.ndarray
    closers: np.ndarray


class _Rows:
    """The open bins' samples of every slot: columns in buffers that grow by doubling (a closed row's position is
    free for the next), indexed by slot (its rows in arrival order) and by (slot, stamp), so that a round's work is
    proportional to its samples and the rows it closes, not to every open sample of the fleet (a 1 Hz feed keeps
    some 600 per turbine)."""

    def __init__(self, channels: int) -> None:
        self.slot = np.zeros(64, dtype=np.int64)
        self.ts = np.zeros(64, dtype=np.int64)
        self.order = np.zeros(64, dtype=np.int64)
        self.vals = np.zeros((64, channels), dtype=np.float64)
        self.used = 0  # positions handed out so far
        self.free = np.zeros(0, dtype=np.int64)  # positions below `used` of rows removed since
        self.of_slot: list[list[int]] = []  # per slot: its rows' positions, in arrival order
        self.by_stamp: dict[tuple[int, int], list[int]] = {}  # (slot, stamp) -> positions

    def add_slot(self) -> None:
        self.of_slot.append([])

    def append(self, slots: np.ndarray, ts: np.ndarray, order: np.ndarray, vals: np.ndarray) -> None:
        """Store k rows (in arrival order)."""
        k = slots.size
        reuse = min(k, self.free.size)
        fresh = k - reuse
        if self.used + fresh > self.ts.size:
            self._grow(self.used + fresh)
        at = np.concatenate([self.free[self.free.size - reuse :], np.arange(self.used, self.used + fresh)])
        self.free = self.free[: self.free.size - reuse]
        self.used += fresh
        self.slot[at], self.ts[at], self.order[at], self.vals[at] = slots, ts, order, vals
        of, by = self.of_slot, self.by_stamp
        for s, t, p in zip(slots.tolist(), ts.tolist(), at.tolist()):
            of[s].append(p)
            by.setdefault((s, t), []).append(p)

    def positions(self, slots: np.ndarray) -> np.ndarray:
        """The rows of these slots (each slot's in arrival order, slot after slot)."""
        of = self.of_slot
        return np.fromiter(itertools.chain.from_iterable(of[s] for s in slots.tolist()), dtype=np.int64)

    def same_stamp(self, slots: np.ndarray, ts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Rows sharing slot and stamp with the samples (slots, ts): (positions, index of the sample of each)."""
        by = self.by_stamp
        hits = [(j, by[key]) for j, key in enumerate(zip(slots.tolist(), ts.tolist())) if key in by]
        if not hits:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
        pos = np.fromiter(itertools.chain.from_iterable(p for _, p in hits), dtype=np.int64)
        return pos, np.repeat([j for j, _ in hits], [len(p) for _, p in hits])

    def remove(self, pos: np.ndarray) -> None:
        """Forget these rows (their positions become holes)."""
        if not pos.size:
            return
        gone = set(pos.tolist())
        of, by = self.of_slot, self.by_stamp
        for s in np.unique(self.slot[pos]).tolist():
            of[s] = [p for p in of[s] if p not in gone]
        for key in set(zip(self.slot[pos].tolist(), self.ts[pos].tolist())):
            left = [p for p in by[key] if p not in gone]
            if left:
                by[key] = left
            else:
                del by[key]
        self.free = np.concatenate([self.free, pos])

    def _grow(self, need: int) -> None:
        cap = max(need, 2 * self.ts.size)
        for name in ("slot", "ts", "order", "vals"):
            a = getattr(self, name)
            b = np.zeros((cap, *a.shape[1:]), dtype=a.dtype)
            b[: self.used] = a[: self.used]
            setattr(self, name, b)


class OpenBins:
    """The open bins of any number of slots (turbines); see the module docstring."""

    def __init__(self, spec: PipelineSpec, grace_seconds: float, max_per_stamp: int | None = None) -> None:
        ok = isinstance(grace_seconds, (int, float, np.integer, np.floating)) and not isinstance(grace_seconds, bool)
        if not ok or not math.isfinite(grace_seconds) or grace_seconds < 0:
            raise SpecError(f"grace_seconds must be a finite number >= 0, got {grace_seconds!r}")
        if max_per_stamp is not None and (not isinstance(max_per_stamp, int) or max_per_stamp < 1):
            raise SpecError(f"max_per_stamp must be None or an integer >= 1, got {max_per_stamp!r}")
        self.max_per_stamp = max_per_stamp
        self.plan: _Plan = _plan(spec)
        self._grace_ns = int(round(grace_seconds * _NS_PER_S))
        self._close_lag_ns = min(self._grace_ns, self.plan.dt_ns)  # how far past a bin's end a sample closes it
        c = len(self.plan.channels)
        self.n = 0  # slots
        self.open_from = np.zeros(0, dtype=np.int64)  # per slot: the label of its first bin not emitted yet
        self.closed_any = np.zeros(0, dtype=bool)
        self.next_order = np.zeros(0, dtype=np.int64)  # per slot: the arrival order its next kept sample gets
        self.late_dropped = np.zeros(0, dtype=np.int64)
        self.full_dropped = np.zeros(0, dtype=np.int64)
        self.out_of_range = np.zeros((0, c), dtype=np.int64)
        self.hold_ts, self.hold_val = no_carry(0, c)  # per slot, each channel's latest value in its closed bins
        self.held = np.zeros(len(self.plan.held), dtype=np.int64)  # per held channel: bins given a held value (the
        # caller may zero it: `Fleet.take_held`)
        self._rows = _Rows(c)  # the open bins' samples of every slot (range-filtered)

    # ---------------------------------------------------------------------------------------------- slots
    def add_slot(self) -> int:
        """A new slot (no sample yet); returns its number."""
        c = len(self.plan.channels)
        self.open_from = np.append(self.open_from, NO_SAMPLE)
        self.closed_any = np.append(self.closed_any, False)
        self.next_order = np.append(self.next_order, 0)
        self.late_dropped = np.append(self.late_dropped, 0)
        self.full_dropped = np.append(self.full_dropped, 0)
        self.out_of_range = np.concatenate([self.out_of_range, np.zeros((1, c), dtype=np.int64)])
        ts, val = no_carry(1, c)
        self.hold_ts, self.hold_val = np.concatenate([self.hold_ts, ts]), np.concatenate([self.hold_val, val])
        self._rows.add_slot()
        self.n += 1
        return self.n - 1

    @property
    def carry(self) -> Carry:
        """The holds' `hold.Carry` of every slot, for `binning.aggregate_bins` (views: updated in place)."""
        return Carry(self.hold_ts, self.hold_val, self.held)

    def open_samples(self) -> np.ndarray:
        """Per slot: the samples its open bins hold."""
        return np.array([len(p) for p in self._rows.of_slot], dtype=np.int64)

    def newest_ns(self, slot: int | None = None) -> int | None:
        """The newest stamp among the open bins' samples (of one slot, or of all); None when they hold none."""
        r = self._rows
        ts = r.ts[r.positions(np.arange(self.n) if slot is None else np.array([slot]))]
        return int(ts.max()) if ts.size else None

    def closable_through(self, now_ns: int) -> int:
        """The end of the last bin that may close at clock time now_ns: its end + grace <= now_ns."""
        dt = self.plan.dt_ns
        return ((_check_int(now_ns, "now_ns", dt) - self._grace_ns) // dt) * dt

    # ------------------------------------------------------------------------------------------- samples
    def add(
        self, slots: np.ndarray, ts_ns: np.ndarray, values: np.ndarray, first_arrival: int = 0
    ) -> tuple[np.ndarray, ClosedBins | None]:
        """Store n samples in arrival order: slots (n,), ts_ns (n,) int64, values (n, C). Returns what became of
        each (STORED, LATE or FULL) and the bins they closed (closers: `first_arrival` + the closing sample's
        index), None when none closed."""
        plan, dt = self.plan, self.plan.dt_ns
        ts = _check_ts(ts_ns, dt)
        sl = np.asarray(slots, dtype=np.int64)
        vals = _check_values(values, (ts.size, len(plan.channels)), plan)
        if sl.shape != ts.shape or (sl.size and (sl.min() < 0 or sl.max() >= self.n)):
            raise InputError(f"OpenBins.add: slots must be (n,) = {ts.shape} integers in [0, {self.n})")
        status = np.full(ts.size, STORED, dtype=np.int8)
        if not ts.size:
            return status, None
        closed: list[ClosedBins | None] = []
        in_rounds = np.ones(ts.size, dtype=bool)
        for slot, mine in self._backlogs(sl, ts):  # a deep, time-ordered block of one slot: one vectorised call
            block, late = self._block(slot, ts[mine], vals[mine], first_arrival + mine)
            status[mine[:late]] = LATE
            closed.append(block)
            in_rounds[mine] = False
        rest = np.flatnonzero(in_rounds)
        if rest.size < ts.size:
            sl, ts, vals = sl[rest], ts[rest], vals[rest]
        labels = _ceil_labels(ts, dt)
        rows = vals.astype(np.float64)  # always a copy: filtered in place
        bad = _drop_impossible(rows, plan.lo, plan.hi)
        for i in rounds(sl) if ts.size else []:
            idx = rest[i]
            closed.append(self._round(idx, sl[i], ts[i], labels[i], rows[i], bad[i], status, first_arrival))
        return status, _join([c for c in closed if c is not None])

    def _backlogs(self, sl: np.ndarray, ts: np.ndarray) -> list[tuple[int, np.ndarray]]:
        """The slots of a call whose samples take one `_add_sorted` each instead of a round per sample (a turbine's
        backlog in one message), with their samples' indices. A block and a round cost about the same, so the
        deepest j slots go as blocks where j + the rounds left is least (one deep turbine among many shallow
        ones: a block; 200 turbines of 25 samples each: 25 rounds, not 200 blocks). A slot goes as a block only
        with at least `_DEEP` samples, in non-decreasing stamps, where the bound cannot bite (no stamp has more
        than `max_per_stamp` samples, open ones included); the others stay in the rounds."""
        if sl.size < _DEEP:
            return []
        counts = np.bincount(sl, minlength=self.n)
        deep = np.flatnonzero(counts >= _DEEP)
        if not deep.size:
            return []
        deep = deep[np.argsort(-counts[deep], kind="stable")]
        depth = np.append(counts[deep], np.sort(counts)[-deep.size - 1] if deep.size < self.n else 0)
        j = int(np.argmin(np.arange(depth.size) + depth))  # blocks + rounds left
        by_slot = np.argsort(sl, kind="stable")
        first = np.cumsum(counts) - counts
        out = []
        for slot in deep[:j].tolist():
            mine = by_slot[first[slot] : first[slot] + counts[slot]]
            t = ts[mine]
            if (t[1:] < t[:-1]).any():
                continue
            if self.max_per_stamp is not None:
                stamps, n = np.unique(t, return_counts=True)
                by = self._rows.by_stamp
                held = np.array([len(by.get((slot, x), ())) for x in stamps.tolist()], dtype=np.int64)
                if (n + held > self.max_per_stamp).any():
                    continue
            out.append((slot, mine))
        return out

    def _round(
        self, idx: np.ndarray, s: np.ndarray, ts: np.ndarray, lab: np.ndarray, rows: np.ndarray, bad: np.ndarray,
        status: np.ndarray, first_arrival: int,
    ) -> ClosedBins | None:  # fmt: skip
        """Samples of distinct slots, in arrival order: the one-sample rule, for all of them at once."""
        dt = self.plan.dt_ns
        late = self.closed_any[s] & (lab < self.open_from[s])
        if late.any():
            status[idx[late]] = LATE
            self.late_dropped[s[late]] += 1
            keep = ~late
            idx, s, ts, lab, rows, bad = idx[keep], s[keep], ts[keep], lab[keep], rows[keep], bad[keep]
            if not idx.size:
                return None
        if bad.any():
            self.out_of_range[s] += bad
        self.open_from[s] = np.minimum(self.open_from[s], lab)
        through = np.minimum(lab - dt, ((ts - self._close_lag_ns) // dt) * dt)  # of an earlier bin, the grace ago
        closing = through >= self.open_from[s]
        closed = self._close(s[closing], through[closing], first_arrival + idx[closing]) if closing.any() else None
        keep = self._not_held(idx, s, ts, rows, status)
        if keep is not None:
            s, ts, rows = s[keep], ts[keep], rows[keep]
        self._rows.append(s, ts, self.next_order[s], rows)
        self.next_order[s] += 1
        return closed

    def _not_held(
        self, idx: np.ndarray, s: np.ndarray, ts: np.ndarray, rows: np.ndarray, status: np.ndarray
    ) -> np.ndarray | None:
        """Of a round's samples (distinct slots), which to keep (None: all): not over the bound (counted, FULL) and
        not an exact repeat of an open bin's sample. Only open samples of the same slot and stamp can decide it."""
        same, j = self._rows.same_stamp(s, ts)  # j: the round's sample each of them shares slot and stamp with
        if not same.size:
            return None
        vals = self._rows.vals[same]
        drop = np.zeros(s.size, dtype=bool)
        if self.max_per_stamp is not None:
            held = np.zeros(rows.shape, dtype=np.int64)
            np.add.at(held, j, ~np.isnan(vals))
            present = ~np.isnan(rows)
            full = present.any(axis=1) & ((held >= self.max_per_stamp) | ~present).all(axis=1)
            if full.any():
                status[idx[full]] = FULL
                self.full_dropped[s[full]] += 1
                drop |= full
        repeat = (vals.view(np.int64) == rows[j].view(np.int64)).all(axis=1)
        drop[j[repeat]] = True
        return ~drop

    def _close(self, s: np.ndarray, through: np.ndarray, closers: np.ndarray) -> ClosedBins:
        """Close the bins of slots `s` (distinct, started) up to the labels `through` (>= their open_from): hand
        over their samples, keep the later ones."""
        dt = self.plan.dt_ns
        by_slot = np.argsort(s)
        s, through, closers = s[by_slot], through[by_slot], closers[by_slot]
        r = self._rows
        limit = np.full(self.n, _BEFORE_ALL, dtype=np.int64)
        limit[s] = through
        pos = r.positions(s)
        sel = pos[r.ts[pos] <= limit[r.slot[pos]]]  # a stamp <= a bin end lies in that bin or before
        sel = sel[np.lexsort((r.order[sel], r.ts[sel], r.slot[sel]))]  # by slot, (ts, arrival order)
        start = self.open_from[s]
        n_bins = (through - start) // dt + 1
        out = ClosedBins(s, start, n_bins, np.bincount(r.slot[sel], minlength=self.n)[s], r.ts[sel], r.order[sel],
                         r.vals[sel], np.repeat(closers, n_bins))  # fmt: skip
        r.remove(sel)
        self.open_from[s] = through + dt
        self.closed_any[s] = True
        return out

    def close_until(self, now_ns: int, arrival: int, slot: int | None = None) -> ClosedBins | None:
        """Close the bins whose end + grace <= now_ns (of one slot, or of all), empty ones included; `arrival`:
        their closer. None when nothing closed."""
        last = self.closable_through(now_ns)
        s = np.flatnonzero(self.open_from <= last) if slot is None else np.array([slot])[self.open_from[[slot]] <= last]
        if not s.size:
            return None
        return self._close(s, np.full(s.size, last, dtype=np.int64), np.full(s.size, arrival, dtype=np.int64))

    def add_sorted(
        self, slot: int, ts_ns: np.ndarray, values: np.ndarray, arrivals: np.ndarray | None = None
    ) -> tuple[ClosedBins | None, int]:
        """n samples of one slot in one vectorised call: ts_ns (n,) int64 non-decreasing (a table sorted by time),
        values (n, C), in arrival order; no `max_per_stamp` bound. The state afterwards and the bins closed are
        those of n one-sample calls. Returns (the bins closed, None when none: per bin, its closer is the arrival
        index (`arrivals`, per sample; by default its index in the block) of the sample that closed it, the first
        of a later bin; the number of late samples dropped)."""
        if self.max_per_stamp is not None:
            raise SpecError("add_sorted keeps no max_per_stamp bound (replay): use add")
        ts = _check_ts(ts_ns, self.plan.dt_ns)
        vals = _check_values(values, (ts.size, len(self.plan.channels)), self.plan)
        if ts.size and (ts[1:] < ts[:-1]).any():
            raise InputError("add_sorted: the stamps must be non-decreasing (sort the rows by time)")
        return self._block(slot, ts, vals, np.arange(ts.size) if arrivals is None else np.asarray(arrivals, np.int64))

    def _block(
        self, slot: int, ts: np.ndarray, vals: np.ndarray, arrivals: np.ndarray
    ) -> tuple[ClosedBins | None, int]:
        """`_add_sorted` with the closed bins as `ClosedBins`, their closers taken from `arrivals` (per sample)."""
        raw, closers, late = self._add_sorted(slot, ts, vals)
        return (None if raw is None else _as_closed(slot, raw, arrivals[closers])), late

    def _add_sorted(self, slot: int, ts: np.ndarray, vals: np.ndarray) -> tuple[RawBins | None, np.ndarray, int]:
        """`add_sorted` of checked arrays, without the bound (the caller knows that it cannot bite)."""
        plan, dt = self.plan, self.plan.dt_ns
        none = np.empty(0, dtype=np.int64)
        labels = _ceil_labels(ts, dt)
        late = int(np.searchsorted(labels, self.open_from[slot])) if self.closed_any[slot] else 0
        self.late_dropped[slot] += late
        if late == ts.size:
            return None, none, late
        ts, labels = ts[late:], labels[late:]
        rows = vals[late:].astype(np.float64)  # always a copy: filtered in place below
        bad = _drop_impossible(rows, plan.lo, plan.hi)
        self.out_of_range[slot] += np.count_nonzero(bad, axis=0)
        r = self._rows
        mine = r.positions(np.array([slot]))
        fresh = self._fresh(ts, rows, r.ts[mine], r.vals[mine])
        stamps, ts, rows = ts, ts[fresh], rows[fresh]  # (every sample closes bins: repeats too)
        order = int(self.next_order[slot]) + np.arange(ts.size, dtype=np.int64)
        self.next_order[slot] += ts.size
        self.open_from[slot] = min(int(self.open_from[slot]), int(labels[0]))
        start = int(self.open_from[slot])
        last_ns = min(int(labels[-1]) - dt, ((int(stamps[-1]) - self._close_lag_ns) // dt) * dt)  # the newest: most
        if last_ns < start:
            r.append(np.full(ts.size, slot, dtype=np.int64), ts, order, rows)
            return None, none, late
        all_ts = np.concatenate([r.ts[mine], ts])
        all_order = np.concatenate([r.order[mine], order])
        all_vals = np.concatenate([r.vals[mine], rows])
        closing = all_ts <= last_ns  # a stamp <= a bin end lies in that bin or before
        kept = ~closing
        r.remove(mine)
        r.append(np.full(int(kept.sum()), slot, dtype=np.int64), all_ts[kept], all_order[kept], all_vals[kept])
        sel = np.flatnonzero(closing)
        sel = sel[np.lexsort((all_order[sel], all_ts[sel]))]  # by (ts, arrival order)
        self.open_from[slot], self.closed_any[slot] = last_ns + dt, True
        ends = np.arange(start, last_ns + dt, dt, dtype=np.int64)
        closers = late + np.maximum(np.searchsorted(labels, ends, side="right"),  # of a later bin, the grace after
                                    np.searchsorted(stamps, ends + self._close_lag_ns))  # fmt: skip
        return RawBins(start, ends.size, all_ts[sel], all_order[sel], all_vals[sel]), closers, late

    @staticmethod
    def _fresh(ts: np.ndarray, rows: np.ndarray, open_ts: np.ndarray, open_vals: np.ndarray) -> np.ndarray:
        """Which of these (filtered) samples are not exact repeats (same stamp, same values) of an earlier one of
        them or of an open bin's sample (open_ts, open_vals), as one-sample calls decide one at a time."""
        n, c = rows.shape
        keys = np.empty((n, c + 1), dtype=np.float64)
        keys[:, 0] = ts.view(np.float64)  # the bytes of (stamp, values) as one record
        keys[:, 1:] = rows
        flat = np.ascontiguousarray(keys).view(np.dtype((np.void, 8 * (c + 1)))).ravel()
        _, first = np.unique(flat, return_index=True)
        fresh = np.zeros(n, dtype=bool)
        fresh[first] = True
        maybe = np.flatnonzero(np.isin(ts, open_ts))  # only samples stamped like an open one can repeat it
        if maybe.size:
            seen = {(int(t), v.tobytes()) for t, v in zip(open_ts, open_vals)}
            fresh[maybe] &= np.array([(int(ts[i]), rows[i].tobytes()) not in seen for i in maybe], dtype=bool)
        return fresh

    # --------------------------------------------------------------------------------------------- state
    def state_dict(self, slot: int) -> dict[str, Any]:
        """One slot's state as plain ints, bools and numpy arrays (no pickle needed)."""
        r = self._rows
        mine = r.positions(np.array([slot]))
        started = bool(self.open_from[slot] != NO_SAMPLE)
        return {
            "dt_seconds": self.plan.dt_ns // _NS_PER_S,
            "channels": np.array(self.plan.channels, dtype=str),
            "started": started,
            "closed_any": bool(self.closed_any[slot]),
            "open_from_ns": int(self.open_from[slot]) if started else 0,
            "next_order": int(self.next_order[slot]),
            "late_dropped": int(self.late_dropped[slot]),
            "out_of_range": self.out_of_range[slot].copy(),
            "ts_ns": r.ts[mine],
            "order": r.order[mine],
            "values": r.vals[mine],
            "hold_ts": self.hold_ts[slot].copy(),
            "hold_values": self.hold_val[slot].copy(),
        }

    def checked_state(self, state: dict[str, Any], foreign: bool = False) -> dict[str, Any]:
        """A `state_dict()` of a slot with the same dt and channels, checked (InputError: malformed, SpecError:
        another dt or channels) and converted, for `load_state`. `foreign`: another spec's state (refused at a
        restart), where any malformation is an InputError, and whose channels are taken by name (`_in_channels`:
        SpecError only when it shares none)."""
        if foreign:
            try:
                return self.checked_state(_in_channels(state, self.plan.channels))
            except (TypeError, KeyError, AttributeError) as e:
                raise InputError(f"accumulator state: malformed ({e!r})") from e
        keys = set(_STATE_KEYS)
        if set(state) not in (keys, keys - set(_HOLD_KEYS)):  # a state saved before holds: it holds nothing
            raise InputError(f"accumulator state: expected keys {sorted(keys)}, got {sorted(state)}")
        c = len(self.plan.channels)
        channels = tuple(str(x) for x in np.asarray(state["channels"]).tolist())
        if int(state["dt_seconds"]) * _NS_PER_S != self.plan.dt_ns or channels != self.plan.channels:
            raise SpecError(
                f"accumulator state is for dt_seconds={state['dt_seconds']}, channels {list(channels)}; "
                f"this spec has dt_seconds={self.plan.dt_ns // _NS_PER_S}, channels {list(self.plan.channels)}"
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
        hold_ts, hold_val = no_carry(1, c)
        if "hold_ts" in state:
            hold_ts = np.asarray(state["hold_ts"], dtype=np.int64)
            hold_val = np.array(state["hold_values"], dtype=np.float64)
            if hold_ts.shape != (c,) or hold_val.shape != (c,):
                raise InputError(f"accumulator state: hold_ts {hold_ts.shape} and hold_values {hold_val.shape} "
                                 f"must be ({c},)")  # fmt: skip
        started = bool(state["started"])
        return {"open_from": int(state["open_from_ns"]) if started else NO_SAMPLE,
                "closed_any": bool(state["closed_any"]), "next_order": int(state["next_order"]),
                "late_dropped": int(state["late_dropped"]), "out_of_range": oor, "ts": ts, "order": order,
                "values": vals, "hold_ts": hold_ts.reshape(c), "hold_values": hold_val.reshape(c)}  # fmt: skip

    def load_state(self, slot: int, checked: dict[str, Any], through_range: bool = False) -> int:
        """Give `slot` a `checked_state` (its open bins replace the slot's); `through_range`: its samples and held
        values go through this spec's range filter too (another spec's state: the stricter of the two ranges holds).
        Returns the samples it holds. The slot's `full_dropped` is kept (it is not part of a state)."""
        vals = checked["values"].copy()
        oor = checked["out_of_range"].copy()
        hold_ts, hold_val = checked["hold_ts"].copy(), checked["hold_values"].copy()
        if through_range:
            oor += _drop_impossible(vals, self.plan.lo, self.plan.hi).sum(axis=0)
            gone = _impossible(hold_val, self.plan.lo, self.plan.hi)  # a value this spec would not have taken
            hold_ts[gone], hold_val[gone] = NO_VALUE, np.nan
        self.open_from[slot] = checked["open_from"]
        self.closed_any[slot] = checked["closed_any"]
        self.next_order[slot] = checked["next_order"]
        self.late_dropped[slot] = checked["late_dropped"]
        self.out_of_range[slot] = oor
        self.hold_ts[slot], self.hold_val[slot] = hold_ts, hold_val
        self._rows.remove(self._rows.positions(np.array([slot])))
        self._rows.append(np.full(checked["ts"].size, slot, dtype=np.int64), checked["ts"], checked["order"], vals)
        return int(checked["ts"].size)


def _in_channels(state: dict[str, Any], channels: tuple[str, ...]) -> dict[str, Any]:
    """Another spec's accumulator state in `channels`, each channel's columns (values, out-of-range count, held
    value) moved by name (`channel_map`, as the journal's values are): a channel the state lacks has none.
    Unchanged when its channels are these, or when they share none or do not fit its arrays (`checked_state`
    refuses it then)."""
    had = tuple(str(x) for x in np.asarray(state["channels"]).tolist())
    by_name = None if had == channels else channel_map(had, channels)
    vals = np.asarray(state["values"])
    if by_name is None or vals.ndim != 2 or vals.shape[1] != len(had):
        return state
    out = {**state, "channels": np.array(channels, dtype=str), "values": by_name.moved(vals, np.nan, np.float64),
           "out_of_range": by_name.moved(state["out_of_range"], 0, np.int64)}  # fmt: skip
    if "hold_ts" in state:
        out["hold_ts"] = by_name.moved(state["hold_ts"], NO_VALUE, np.int64)
        out["hold_values"] = by_name.moved(state["hold_values"], np.nan, np.float64)
    return out


_HOLD_KEYS = ("hold_ts", "hold_values")  # per channel, its latest value in the closed bins (`runtime.hold`)
_STATE_KEYS = ("dt_seconds", "channels", "started", "closed_any", "open_from_ns", "next_order", "late_dropped",
               "out_of_range", "ts_ns", "order", "values", *_HOLD_KEYS)  # fmt: skip


def _join(parts: list[ClosedBins]) -> ClosedBins | None:
    """Several rounds' closed bins as one, in round order (a slot's later bins after its earlier ones)."""
    if len(parts) < 2:
        return parts[0] if parts else None
    return ClosedBins(*(np.concatenate(f) for f in zip(*parts)))


def _as_closed(slot: int, raw: RawBins, closers: np.ndarray) -> ClosedBins:
    """One slot's `RawBins` and its closers (one per bin) as `ClosedBins`."""
    one = np.array([slot], dtype=np.int64)
    return ClosedBins(one, np.array([raw.start_ns], dtype=np.int64), np.array([raw.n_bins], dtype=np.int64),
                      np.array([raw.ts.size], dtype=np.int64), raw.ts, raw.order, raw.values, closers)  # fmt: skip


def _raw(closed: ClosedBins | None) -> RawBins | None:
    """The one slot's closed bins of a store of one slot as `RawBins`."""
    if closed is None:
        return None
    return RawBins(int(closed.start_ns[0]), int(closed.n_bins[0]), closed.ts, closed.order, closed.values)


class BinAccumulator:
    """Incremental binning of one turbine's sample stream (an `OpenBins` of one slot), with the same numbers as
    `bin_timeline`; see the module docstring."""

    def __init__(self, spec: PipelineSpec, grace_seconds: float, max_per_stamp: int | None = None) -> None:
        self._bins = OpenBins(spec, grace_seconds, max_per_stamp)
        self._bins.add_slot()

    @property
    def plan(self) -> _Plan:
        """The binning parameters (for `aggregate_bins`)."""
        return self._bins.plan

    @property
    def carry(self) -> Carry:
        """This turbine's report-by-exception holds (for `aggregate_bins`)."""
        return self._bins.carry

    @property
    def open_from(self) -> int | None:
        """End (label) of the first bin not yet emitted; None before the first sample."""
        first = int(self._bins.open_from[0])
        return None if first == NO_SAMPLE else first

    @property
    def late_dropped(self) -> int:
        return int(self._bins.late_dropped[0])

    @property
    def full_dropped(self) -> int:
        return int(self._bins.full_dropped[0])

    @property
    def out_of_range(self) -> np.ndarray:
        """(C,) impossible readings made missing, per channel."""
        return self._bins.out_of_range[0]

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
        return int(self._bins.open_samples()[0])

    @property
    def newest_ns(self) -> int | None:
        """The newest stamp among the open bins' samples; None when they hold none."""
        return self._bins.newest_ns(0)

    def add(self, ts_ns: int, values: np.ndarray) -> list[ClosedBin]:
        """Store one sample (C,) and return the bins closed because it belongs to a later bin."""
        return self._bins_of(self.add_deferred(ts_ns, values))

    def close_until(self, now_ns: int) -> list[ClosedBin]:
        """Close every bin whose end + grace <= now_ns (the caller's clock, ns), empty ones included."""
        return self._bins_of(self.close_until_deferred(now_ns))

    def add_deferred(self, ts_ns: int, values: np.ndarray) -> RawBins | None:
        """`add`, with the closed bins' samples returned for `aggregate_bins` (None when nothing closed); their
        report-by-exception channels are held by `aggregate_bins` with this accumulator's `carry`, as `add` does."""
        plan = self._bins.plan
        ts = _check_int(ts_ns, "ts_ns", plan.dt_ns)
        row = _check_values(values, (len(plan.channels),), plan)
        return _raw(self._bins.add(np.zeros(1, dtype=np.int64), np.array([ts], dtype=np.int64), row[None, :])[1])

    def add_many_deferred(self, ts_ns: np.ndarray, values: np.ndarray) -> tuple[RawBins | None, np.ndarray, int]:
        """`add_deferred` of n samples with non-decreasing stamps in one vectorised call (`OpenBins.add_sorted`)."""
        if self._bins.max_per_stamp is not None:
            raise SpecError("add_many_deferred keeps no max_per_stamp bound (replay): use add_deferred")
        closed, late = self._bins.add_sorted(0, ts_ns, values)
        return _raw(closed), np.empty(0, dtype=np.int64) if closed is None else closed.closers, late

    def closable_through(self, now_ns: int) -> int:
        """The end of the last bin that may close at clock time now_ns: its end + grace <= now_ns."""
        return self._bins.closable_through(now_ns)

    def close_until_deferred(self, now_ns: int) -> RawBins | None:
        """`close_until`, with the closed bins' samples returned for `aggregate_bins` (None when nothing closed)."""
        return _raw(self._bins.close_until(now_ns, 0))

    def _bins_of(self, raw: RawBins | None) -> list[ClosedBin]:
        """Closed bins aggregated, report-by-exception channels held with this turbine's carry."""
        if raw is None:
            return []
        binned = aggregate_bins([raw], self.plan, self.carry)
        return [ClosedBin(raw.start_ns + i * self.plan.dt_ns, binned[i]) for i in range(raw.n_bins)]

    def state_dict(self) -> dict[str, Any]:
        """The accumulator state as plain ints, bools and numpy arrays (no pickle needed)."""
        return self._bins.state_dict(0)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a `state_dict()` taken from an accumulator with the same dt and channels."""
        self._bins.load_state(0, self._bins.checked_state(state))

    def take_over(self, state: dict[str, Any]) -> int:
        """Take the open bins of another spec's accumulator, from its `state_dict()` (a state refused at a restart:
        another model with the same dt and channels), so that samples acknowledged before the restart are not lost:
        its samples through this spec's range filter too (the stricter of the two ranges holds), its position (the
        bins it emitted stay closed: a sample for them is late) and its counters. Returns the samples taken.
        SpecError for another dt or channels, InputError for a malformed state (nothing is changed then)."""
        return self._bins.load_state(0, self._bins.checked_state(state, foreign=True), through_range=True)
