"""The project's one definition of "an alert detected a fault": event scoring of alert timelines (numpy).

Contract
--------
Times are int ns since the Unix epoch. Per turbine, a `Timeline` holds the stamps of its scored steps `ts_ns`
(T,) int, strictly increasing, T >= 1, the alert state after each step `on` (T,) bool, and `on_before`, the
state before the first step (default False: nothing is known before the data). `timelines_from_table` builds
them from a results table (turbine, t_end, alert_on). A fault is (turbine, start_ns, end_ns, fault class) with
end >= start. `score_events` applies these rules:

* ONSET: an off -> on transition between consecutive scored steps, at the stamp of the step that is on. The
  first scored step is an onset when it is on (and `on_before` is False).
* DETECTION: a fault is detected by an onset at t with start - max_lead_ns <= t <= end (its fault window). An
  alert already on before the window (its onset earlier) does not detect it, however long it stays on. The
  lead time is start - t of the earliest qualifying onset: positive before the fault began, negative after.
  One onset may detect every fault whose window holds it.
* NET OF A CLEAN COPY (optional `clean`: timelines of an uninjected copy of the same data, for injection
  benches): an onset counts, for detection and as a false alert, only when the clean copy's alert is not on at
  the same stamp; a stamp (or turbine) the clean copy lacks counts as not on. The onsets removed that way are
  reported (`n_onsets_masked_by_clean`); `n_onsets` counts those left.
* FALSE ALERTS: counted onsets in no fault window [start - max_lead_ns, end] of their turbine. Turbine-months:
  per turbine, last stamp - first stamp + dt_ns, summed, / MONTH_NS (an average Gregorian month).
* SPANS AND COVERAGE: an alert spans [stamp of the step it turns on, stamp of the first step off again]; one
  still on at the end of the data is cut at the last scored step, never stretched (and one on at the first
  step starts there). A fault's coverage is the time of [start, end] inside its turbine's spans over end -
  start; `alert_coverage` pools it (covered time / fault time over all faults). Spans are the timeline's own,
  not net of a clean copy.

Rates and lead statistics over an empty set are NaN. Refused (MetricsError, a ValueError): timelines that are
empty, unsorted, of mismatched shapes or non-bool states; faults of a turbine without a timeline, non-integer
times or end < start; max_lead_ns < 0 or dt_ns <= 0. Inputs are never modified.

>>> H = 3_600 * 10**9
>>> tl = {"T1": Timeline(np.arange(6) * H, np.array([0, 0, 1, 1, 0, 0], bool))}
>>> ev = score_events(tl, [("T1", 3 * H, 4 * H, "gear")], max_lead_ns=2 * H, dt_ns=H)
>>> ev["n_detected"], ev["lead_ns_median"] / H, ev["n_false_alerts"]
(1, 1.0, 0)
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Mapping
from typing import Any, NamedTuple

import numpy as np

from scada_tcn.trainer.evaluation.metrics import MONTH_NS, MetricsError

__all__ = ["Fault", "Timeline", "alert_spans", "onsets", "score_events", "timelines_from_table"]

Fault = tuple[Hashable, int, int, str]  # (turbine, start_ns, end_ns, fault class)


class Timeline(NamedTuple):
    """One turbine's scored steps: stamps (T,) int ns, alert state after each step (T,) bool, state before."""

    ts_ns: np.ndarray
    on: np.ndarray
    on_before: bool = False


def _is_int(x: Any) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, (bool, np.bool_))


def _checked(tl: Any, name: str) -> Timeline:
    """A validated Timeline (int64 stamps, bool states) from a Timeline or a (ts_ns, on[, on_before]) tuple."""
    if not isinstance(tl, tuple) or len(tl) not in (2, 3):
        raise MetricsError(f"{name} must be a Timeline or a (ts_ns, on[, on_before]) tuple, got {type(tl).__name__}")
    ts, on = np.asarray(tl[0]), np.asarray(tl[1])
    before = tl[2] if len(tl) == 3 else False
    if ts.ndim != 1 or ts.size == 0 or ts.dtype.kind not in "iu" or on.shape != ts.shape or on.dtype != bool:
        raise MetricsError(
            f"{name}: ts_ns must be a non-empty (T,) integer array of ns and on a (T,) bool array, got "
            f"{ts.dtype} {ts.shape} and {on.dtype} {on.shape} (drop turbines without scored steps)"
        )
    if not isinstance(before, (bool, np.bool_)):
        raise MetricsError(f"{name}: on_before must be a bool, got {before!r}")
    if (np.diff(ts) <= 0).any():
        bad = int(np.flatnonzero(np.diff(ts) <= 0)[0])
        raise MetricsError(f"{name}: ts_ns must be strictly increasing, step {bad + 1} is at or before step {bad}")
    return Timeline(ts.astype(np.int64), on, bool(before))


def _span_bounds(tl: Timeline) -> tuple[np.ndarray, np.ndarray]:
    """Start and end stamps (k,) of the alert spans, cut at the first and last scored steps."""
    on = tl.on
    prev = np.concatenate([[False], on[:-1]])
    starts = np.flatnonzero(on & ~prev)
    ends = np.flatnonzero(~on & prev)
    if on[-1]:
        ends = np.append(ends, on.size - 1)
    return tl.ts_ns[starts], tl.ts_ns[ends]


def alert_spans(ts_ns: Any, on: Any) -> list[tuple[int, int]]:
    """One turbine's alert states per step -> spans [start_ns, end_ns], an open one cut at the last step."""
    starts, ends = _span_bounds(_checked((ts_ns, on), "alert_spans"))
    return list(zip(starts.tolist(), ends.tolist()))


def _covered(span_s: np.ndarray, span_e: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Time of each [a, b] inside the disjoint sorted spans, via the measure of the spans up to x."""
    lengths = span_e - span_s
    before = np.concatenate([[0], np.cumsum(lengths)])  # before[j]: total length of spans 0 .. j-1

    def upto(x: np.ndarray) -> np.ndarray:
        j = np.searchsorted(span_s, x, side="right")  # spans starting at or before x
        last = np.maximum(j - 1, 0)
        partial = np.where(j > 0, np.minimum(x, span_e[last]) - span_s[last], 0) if span_s.size else 0
        return before[last] + partial

    return upto(b) - upto(a)


def _in_any(t: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Per stamp t: inside at least one closed window [lo, hi]."""
    if lo.size == 0:
        return np.zeros(t.shape, bool)
    order = np.argsort(lo, kind="stable")
    lo, reach = lo[order], np.maximum.accumulate(hi[order])
    k = np.searchsorted(lo, t, side="right") - 1  # the last window opening at or before t
    return (k >= 0) & (t <= reach[np.maximum(k, 0)])


def _faults(faults: Iterable[Any], turbines: Mapping[Hashable, Any]) -> list[Fault]:
    out: list[Fault] = []
    for n, f in enumerate(faults):
        if not isinstance(f, tuple) or len(f) != 4:
            raise MetricsError(f"faults[{n}] must be (turbine, start_ns, end_ns, fault class), got {f!r}")
        turbine, a, b, cls = f
        if not _is_int(a) or not _is_int(b) or b < a:
            raise MetricsError(f"faults[{n}] {f!r}: start_ns and end_ns must be integer ns with end_ns >= start_ns")
        if turbine not in turbines:
            raise MetricsError(
                f"faults[{n}]: turbine {turbine!r} has no timeline; its faults cannot be judged "
                f"(timelines hold {sorted(map(str, turbines))[:10]})"
            )
        out.append((turbine, int(a), int(b), str(cls)))
    return out


def _nan_div(num: float, den: float) -> float:
    return float(num) / float(den) if den else float("nan")


def _median(x: list[int]) -> float:
    return float(np.median(x)) if x else float("nan")


def onsets(tl: Timeline) -> np.ndarray:
    """Indices of the steps of `tl` where an alert turns on (ONSET in the module docstring)."""
    prev = np.concatenate([[tl.on_before], tl.on[:-1]])
    return np.flatnonzero(tl.on & ~prev)


def score_events(
    timelines: Mapping[Hashable, Any],
    faults: Iterable[Fault],
    max_lead_ns: int,
    dt_ns: int,
    clean: Mapping[Hashable, Any] | None = None,
) -> dict[str, Any]:
    """Detections, lead times, false alerts and coverage of alert timelines against faults (module docstring).

    Parameters
    ----------
    timelines: turbine -> Timeline (or a (ts_ns, on[, on_before]) tuple); every turbine judged.
    faults: (turbine, start_ns, end_ns, fault class) per labelled fault.
    max_lead_ns: how long before a fault's start an onset still detects it (>= 0).
    dt_ns: one step, added to each turbine's observed time (> 0).
    clean: turbine -> Timeline of an uninjected copy; onsets while it is on do not count.

    Returns
    -------
    A JSON-serialisable dict: "n_events", "n_detected", "detection_rate", "lead_ns_median", "lead_ns_mean",
    "n_onsets", "n_onsets_masked_by_clean", "n_false_alerts", "turbine_months", "false_alerts_per_turbine_month",
    "fault_ns", "covered_ns", "alert_coverage", "max_lead_ns", "dt_ns", "events" (per fault in input order:
    "turbine", "fault", "start_ns", "end_ns", "detected", "onset_ns", "lead_ns" (None when missed), "coverage"),
    "by_fault" (per class, sorted: "n_events", "n_detected", "detection_rate", "lead_ns_median").
    """
    for name, v, low in (("max_lead_ns", max_lead_ns, 0), ("dt_ns", dt_ns, 1)):
        if not _is_int(v) or v < low:
            raise MetricsError(f"score_events: {name} must be an integer >= {low} (ns), got {v!r}")
    tls = {t: _checked(tl, f"timelines[{t!r}]") for t, tl in timelines.items()}
    cleans = {t: _checked(tl, f"clean[{t!r}]") for t, tl in (clean or {}).items()}
    fs = _faults(faults, tls)
    events: list[dict[str, Any]] = [
        {
            "turbine": t,
            "fault": c,
            "start_ns": a,
            "end_ns": b,
            "detected": False,
            "onset_ns": None,
            "lead_ns": None,
            "coverage": float("nan"),
        }
        for t, a, b, c in fs
    ]
    of_turbine: dict[Hashable, list[int]] = {}
    for i, f in enumerate(fs):
        of_turbine.setdefault(f[0], []).append(i)
    n_onsets = n_masked = n_false = 0
    observed_ns = fault_ns = covered_ns = 0
    for turbine, tl in tls.items():
        onset = tl.ts_ns[onsets(tl)]
        if turbine in cleans:
            c = cleans[turbine]
            j = np.minimum(np.searchsorted(c.ts_ns, onset), c.ts_ns.size - 1)
            masked = (c.ts_ns[j] == onset) & c.on[j]
            n_masked += int(masked.sum())
            onset = onset[~masked]
        idx = np.array(of_turbine.get(turbine, []), np.int64)
        start = np.array([fs[i][1] for i in idx], np.int64)
        end = np.array([fs[i][2] for i in idx], np.int64)
        k = np.searchsorted(onset, start - max_lead_ns, side="left")  # the earliest onset in each window
        first = onset[np.minimum(k, onset.size - 1)] if onset.size else np.zeros(idx.size, np.int64)
        detected = (k < onset.size) & (first <= end)
        span_s, span_e = _span_bounds(tl)
        cov = _covered(span_s, span_e, start, end)
        for n, i in enumerate(idx.tolist()):
            dur = end[n] - start[n]
            events[i]["coverage"] = _nan_div(cov[n], dur)
            if detected[n]:
                events[i].update(detected=True, onset_ns=int(first[n]), lead_ns=int(start[n] - first[n]))
        n_onsets += int(onset.size)
        n_false += int((~_in_any(onset, start - max_lead_ns, end)).sum())
        observed_ns += int(tl.ts_ns[-1] - tl.ts_ns[0] + dt_ns)
        fault_ns += int((end - start).sum())
        covered_ns += int(cov.sum())
    leads = [e["lead_ns"] for e in events if e["detected"]]
    by_fault: dict[str, dict[str, Any]] = {}
    for cls in sorted({e["fault"] for e in events}):
        mine = [e for e in events if e["fault"] == cls]
        lead_c = [e["lead_ns"] for e in mine if e["detected"]]
        by_fault[cls] = {
            "n_events": len(mine),
            "n_detected": len(lead_c),
            "detection_rate": _nan_div(len(lead_c), len(mine)),
            "lead_ns_median": _median(lead_c),
        }
    months = observed_ns / MONTH_NS
    return {
        "n_events": len(events),
        "n_detected": len(leads),
        "detection_rate": _nan_div(len(leads), len(events)),
        "lead_ns_median": _median(leads),
        "lead_ns_mean": float(np.mean(leads)) if leads else float("nan"),
        "n_onsets": n_onsets,
        "n_onsets_masked_by_clean": n_masked,
        "n_false_alerts": n_false,
        "turbine_months": months,
        "false_alerts_per_turbine_month": _nan_div(n_false, months),
        "fault_ns": fault_ns,
        "covered_ns": covered_ns,
        "alert_coverage": _nan_div(covered_ns, fault_ns),
        "max_lead_ns": int(max_lead_ns),
        "dt_ns": int(dt_ns),
        "events": events,
        "by_fault": by_fault,
    }


def _as_ns(col: Any, name: str) -> np.ndarray:
    """Stamps as int64 ns from integers or datetimes (a tz-aware pandas column converts to UTC)."""
    a = np.asarray(col)
    if a.dtype.kind in "iu":
        return a.astype(np.int64)
    problem = f"timelines_from_table: column {name!r} must hold int ns or datetimes, got {a.dtype}"
    if a.dtype.kind not in "MO":
        raise MetricsError(problem)
    try:
        return np.asarray(col, dtype="datetime64[ns]").view(np.int64)
    except (TypeError, ValueError) as err:
        raise MetricsError(problem) from err


def timelines_from_table(
    table: Any, turbine: str = "turbine_id", time: str = "t_end", alert: str = "alert_on"
) -> dict[Any, Timeline]:
    """Per turbine (sorted), its Timeline from a results table's columns (rows in any order).

    `table` maps column names to arrays (a pandas DataFrame works); `time` holds int ns or datetimes, `alert` bool.
    Two rows of one turbine at one stamp are refused.
    """
    tid = np.asarray(table[turbine])
    ts = _as_ns(table[time], time)
    on = np.asarray(table[alert])
    if on.dtype != bool or tid.ndim != 1 or ts.shape != tid.shape or on.shape != tid.shape:
        raise MetricsError(
            f"timelines_from_table: columns {turbine!r}, {time!r} and {alert!r} must be 1-D of one length with "
            f"{alert!r} bool, got {tid.shape}, {ts.shape} and {on.dtype} {on.shape}"
        )
    names, code = np.unique(tid, return_inverse=True)
    order = np.lexsort((ts, code))
    bounds = np.searchsorted(code[order], np.arange(names.size + 1))
    out: dict[Any, Timeline] = {}
    for k, name in enumerate(names.tolist()):
        rows = order[bounds[k] : bounds[k + 1]]
        out[name] = _checked((ts[rows], on[rows]), f"timelines_from_table: turbine {name!r}")
    return out
