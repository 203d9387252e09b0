"""A table's rows at local times that an autumn DST change repeats, placed by each turbine's row order: the one
reading that scada-prepare and replay share (a message has no such order: the daemon reads only what its clock
allows, `telemetry`).

A local-time export over the change writes, say, 02:00-02:50 twice (Europe/Paris: 00:00-00:50Z, then
01:00-01:50Z). `RepeatedHours` takes the table's rows in file order, chunk by chunk (scada-prepare gives the
whole table as one chunk, replay its chunks: the same rows in the same order give the same result), and holds
the rows at a repeated time (`Repeated`: their wall-clock time and both instants, `stamps.repeated_ns`). Once the
table is read, `place()` gives each held row its instant, or NOT_PLACED. A turbine's rows of one change (a
group) are placed when, in the turbine's file order:
* they come together (no other row of the turbine between them);
* the wall clock steps back exactly once: the rows before the step are the first occurrence, the rest the
  second. Rows after the step that repeat a row before it (the same stamp and every value, bit for bit), and
  only such rows where a stamp comes again, are an export written twice over the same rows, not a second hour.
  Then, and when the clock does not step back exactly once, the repeats are set aside (each takes the instant
  of the row it repeats) and the other rows must step back exactly once. (A stopped turbine's rows may repeat
  across the two hours, but not all of them.)
* the turbine's nearest rows at other times, before and after the group, are earlier and later than the placed
  rows (a newest-first export is not taken for a time-ordered one).
Any other group is not placed: which instant its rows were is not in the table (one of the two hours only, an
appended row, rows out of time order). The callers leave such rows out and count them. One case no rule can
tell: a turbine silent in the first hour whose second-hour rows were exported twice with different values reads
exactly as a time-ordered file holding both hours, and is placed so.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np

from scada_tcn.runtime.stamps import STANDARD_TIME, repeated_ns
from scada_tcn.runtime.telemetry import in_epoch_range

__all__ = ["NOT_PLACED", "Repeated", "RepeatedHours", "left_out_said", "repeated_rows"]

NOT_PLACED = np.iinfo(np.int64).min  # a held row's instant until placed, and for good when it is not
_NO_BEFORE, _NO_AFTER = NOT_PLACED, np.iinfo(np.int64).max  # no neighbouring row: no constraint
_GROUP_GAP_NS = 4 * 3600 * 10**9  # first instants further apart than any DST shift (3 h at most): another change


class Repeated(NamedTuple):
    """A chunk's rows at local times a DST change repeats: their positions in the chunk, wall-clock ns (read as
    UTC) and both instants (ns UTC: the first occurrence, the second)."""

    rows: np.ndarray
    wall: np.ndarray
    first: np.ndarray
    second: np.ndarray


def left_out_said(examples: list[str]) -> str:
    """What follows the count of the rows a table's readers left out (scada-prepare's summary, replay's last line),
    with the first of them ("<turbine> <stamp cell>")."""
    return (f"at local times the autumn DST change repeats, which their turbine's row order does not place (e.g. "
            f"{examples[:3]}); stamps with a UTC offset keep them. When no turbine holds that hour twice: "
            f"{STANDARD_TIME}")  # fmt: skip


def repeated_rows(rows: np.ndarray, wall: np.ndarray, tz: Any) -> tuple[Repeated, np.ndarray]:
    """Rows at wall-clock times (ns, read as UTC) that a DST change in zone `tz` repeats -> their `Repeated`, both
    instants of each distinct wall time once (`stamps.repeated_ns`), and which rows have an instant outside the
    epoch range (`telemetry.in_epoch_range`: the callers refuse them, as any stamp out of range)."""
    pairs = {w: repeated_ns(w, tz) for w in dict.fromkeys(wall.tolist())}
    first, second = (np.array([pairs[w][k] for w in wall.tolist()], dtype=np.int64) for k in (0, 1))
    return Repeated(rows, wall, first, second), ~(in_epoch_range(first) & in_epoch_range(second))


class RepeatedHours:
    """Held rows at repeated local times of a table read in file order, and what placing them needs: per turbine,
    the rows taken so far and the instant of its last row at another time; per held row, its turbine, its place in
    the turbine's rows, its neighbours at other times and its values."""

    def __init__(self) -> None:
        self._count: dict[str, int] = {}  # turbine -> its rows taken so far
        self._last: dict[str, int] = {}  # turbine -> ns of its last row at an unrepeated time
        self._waiting: dict[str, list[int]] = {}  # turbine -> held rows waiting for its next unrepeated row
        self.turbines: list[str] = []
        self._pos: list[np.ndarray] = []
        self._wall: list[np.ndarray] = []
        self._first: list[np.ndarray] = []
        self._second: list[np.ndarray] = []
        self._before: list[np.ndarray] = []
        self._after: list[int] = []  # filled as later rows arrive
        self.values: list[np.ndarray] = []

    def take(self, turbines: Sequence[str], ns: np.ndarray, repeated: Repeated | None, values: np.ndarray) -> None:
        """A chunk's rows in file order: their turbine ids, instants (anything at the `repeated` rows) and values
        (n, C). Vectorised over the rows; a loop over the chunk's turbines."""
        n = len(ns)
        if not n:
            return
        names, code = np.unique(np.asarray(turbines, dtype=str), return_inverse=True)
        names, code = names.tolist(), code.reshape(-1)
        held = np.zeros(n, dtype=bool)
        if repeated is not None:
            held[repeated.rows] = True
        order = np.argsort(code, kind="stable")  # by turbine, file order within
        c = code[order]
        starts = np.flatnonzero(np.r_[True, c[1:] != c[:-1]])
        ends = np.r_[starts[1:], n]
        idx = np.arange(n)
        run = np.searchsorted(starts, idx, side="right") - 1  # each sorted row's turbine run
        other = ~held[order]
        last_other = np.maximum.accumulate(np.where(other, idx, -1))  # the nearest unrepeated row at or before
        next_other = np.minimum.accumulate(np.where(other, idx, n)[::-1])[::-1]  # at or after
        stamps = np.asarray(ns, dtype=np.int64)[order]
        for t, s, e in zip(c[starts].tolist(), starts.tolist(), ends.tolist()) if self._waiting else ():
            if next_other[s] < e:  # the turbine's first unrepeated row here follows its held rows of earlier chunks
                for j in self._waiting.pop(names[t], []):
                    self._after[j] = int(stamps[next_other[s]])
        if repeated is not None and len(repeated.rows):
            at = np.flatnonzero(held[order])  # sorted positions of the held rows
            at = at[np.argsort(order[at], kind="stable")]  # in file order, as `repeated.rows`
            tids = [names[i] for i in c[at].tolist()]
            base = len(self._after)
            self.turbines += tids
            rank = at - starts[run[at]]  # place among the turbine's rows of this chunk
            self._pos.append(np.array([self._count.get(t, 0) for t in tids], dtype=np.int64) + rank)
            self._wall.append(repeated.wall)
            self._first.append(repeated.first)
            self._second.append(repeated.second)
            prev = last_other[at]
            carried = np.array([self._last.get(t, _NO_BEFORE) for t in tids], dtype=np.int64)
            self._before.append(np.where(prev >= starts[run[at]], stamps[np.maximum(prev, 0)], carried))
            nxt = next_other[at]
            inside = nxt < ends[run[at]]
            self._after += np.where(inside, stamps[np.minimum(nxt, n - 1)], _NO_AFTER).tolist()
            self.values.append(np.asarray(values)[order[at]])
            for j in np.flatnonzero(~inside).tolist():  # no later unrepeated row of the turbine in this chunk
                self._waiting.setdefault(tids[j], []).append(base + j)
        for t, s, e in zip(c[starts].tolist(), starts.tolist(), ends.tolist()):
            if next_other[s] < e:
                self._last[names[t]] = int(stamps[last_other[e - 1]])
            self._count[names[t]] = self._count.get(names[t], 0) + (e - s)

    def place(self) -> np.ndarray:
        """Every held row's instant, in the order taken: placed by its group's order, or NOT_PLACED."""
        m = len(self.turbines)
        if not m:
            return np.empty(0, dtype=np.int64)
        pos, wall, first, second, before = (np.concatenate(a) for a in (self._pos, self._wall, self._first,
                                                                           self._second, self._before))  # fmt: skip
        after = np.array(self._after, dtype=np.int64)
        code = np.unique(np.asarray(self.turbines, dtype=str), return_inverse=True)[1].reshape(-1)
        by_time = np.lexsort((first, code))  # a turbine's changes apart: months between them, an hour or two within
        cut = np.ones(m, dtype=bool)
        f = first[by_time]
        cut[1:] = (code[by_time][1:] != code[by_time][:-1]) | (f[1:] > f[:-1] + _GROUP_GAP_NS)  # no overflow
        group = np.empty(m, dtype=np.int64)
        group[by_time] = np.cumsum(cut) - 1
        order = np.lexsort((pos, group))  # each group's rows in file order
        g, w, p = group[order], wall[order], pos[order]
        starts = np.flatnonzero(np.r_[True, g[1:] != g[:-1]])
        last = np.r_[starts[1:], m] - 1
        together = p[last] - p[starts] == last - starts  # no other row of the turbine between
        same = _repeats(g, w, np.concatenate(self.values)[order])  # per row: the group row it repeats, or itself
        fo, se = first[order], second[order]
        plain, plain_once, later = _reading(g, w, starts, np.arange(m), fo, se)  # every row as evidence
        aside, aside_once, _ = _reading(g, w, starts, same, fo, se)  # exact repeats set aside
        # the plain reading, unless what follows its step back only re-sends rows before it, bit for bit (two
        # exports over the same rows): a stopped turbine's rows may repeat across the two hours, and not all of them
        resent = _resent(g, w, same, later, len(starts))
        use_plain = plain_once & ~resent
        ns = np.where(use_plain[g], plain, aside)
        lo, hi = np.minimum.reduceat(ns, starts), np.maximum.reduceat(ns, starts)
        bracketed = (before[order][starts] < lo) & (after[order][last] > hi)
        ok = together & (use_plain | aside_once & (resent | ~plain_once)) & bracketed
        ns[~ok[g]] = NOT_PLACED
        out = np.empty(m, dtype=np.int64)
        out[order] = ns
        return out


def _repeats(group: np.ndarray, wall: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Rows sorted by group, file order within: per row, the index of the first row of its group with the same wall
    time and the same values bit for bit (itself when none came before)."""
    v = np.asarray(values, dtype=np.float64)
    bits = np.ascontiguousarray(np.where(np.isfinite(v), v, np.nan)).view(np.int64).reshape(len(wall), -1)  # missing
    key = np.concatenate([group[:, None], wall[:, None], bits], axis=1)
    _, first_seen, inverse = np.unique(key, axis=0, return_index=True, return_inverse=True)
    return first_seen[inverse.reshape(-1)]


def _reading(g: np.ndarray, w: np.ndarray, starts: np.ndarray, same: np.ndarray, first: np.ndarray,
             second: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:  # fmt: skip
    """One reading of the groups' rows (sorted by group, file order within), taking as evidence the rows that
    `same` maps to themselves: per row its instant (the first occurrence before the wall clock steps back, the
    second from there; a row set aside takes the instant of the row it repeats), per group whether the clock
    stepped back exactly once, and per row whether it comes after a step back."""
    kept = np.flatnonzero(same == np.arange(len(w)))
    back = np.zeros(len(w), dtype=bool)
    back[kept[1:]] = (w[kept[1:]] < w[kept[:-1]]) & (g[kept[1:]] == g[kept[:-1]])
    steps = np.cumsum(back)
    within = steps - steps[starts][g]  # steps back so far within the group
    once = np.bincount(g, weights=back, minlength=len(starts)) == 1
    return np.where(within >= 1, second, first)[same], once, within >= 1


def _resent(g: np.ndarray, w: np.ndarray, same: np.ndarray, later: np.ndarray, groups: int) -> np.ndarray:
    """Per group: whether the rows after its step back that share a wall time with a row before it are all exact
    repeats of such a row (and there is one): an export written again over the same rows, not a second hour."""
    k = np.unique(np.stack([g, w], axis=1), axis=0, return_inverse=True)[1].reshape(-1)
    early_at = np.zeros(k.max() + 1, dtype=bool)
    early_at[k[~later]] = True
    matched = later & early_at[k]
    repeat = (same != np.arange(len(w))) & ~later[same]
    n = np.bincount(g, weights=matched, minlength=groups)
    return (n > 0) & (np.bincount(g, weights=matched & repeat, minlength=groups) == n)
