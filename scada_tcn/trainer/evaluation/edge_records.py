"""The edge's published score records read back: the project's one event scorer over them, a report, plots.

Contract
--------
* `read_records(path)`: a file of score-topic payloads, one per line: what `scada-runtime replay --out` writes, or
  the score topic captured (`mosquitto_sub -t 'scada/+/+/score' > scores.jsonl`; each line of a batched message
  is one record). Read by the consumers' rule (`runtime.records.dedupe`, applied to the lines' arrays at the
  end): one record per (turbine, ts), identical repeats counted, a key that arrived with two different payloads
  refused (a broken contract). Blank lines are skipped; a line that is not a score record is refused with its line
  number. Only what the report reads is kept, in arrays (not the forecast): about 40 bytes a record and 10 a
  driver. Refused (EdgeRecordsError, a ValueError): no record, a `seq` that is not ts / dt with one dt for the
  whole file, an unknown status.
* `EdgeRecords`: columns sorted by (turbine, ts): the score `ratio` (score / threshold: the per-signal score itself,
  the fleet score's for fleet-relative bundles; NaN without one), the alert state after the step (False for
  warm-up records), and the `drivers` of each `ok` record: per-signal records' group ratios, else the top
  features' contributions.
* `timelines(recs, lo, hi)`: per turbine with an `ok` record in [lo, hi), the alert state after each of them and
  `on_before` from its last `ok` record before lo (an alert raised in the warm-up and still on is no onset): the
  input of `events.score_events`, as for offline inference's alert states.
* `missing_steps`: per turbine, the steps between its first and last record with no record (a gap in `seq`): the
  edge publishes one record per closed step, so a gap is a lost record and the report says it is incomplete.
* `report(...)`: the counts, event metrics against labelled faults (or the alert onsets alone without labels),
  net of the uninjected copy's records where faults were injected into a copy of real data (`clean`; the
  event scorer's rule), `report.json`, and plots: each turbine's score ratio over time with its alert spans and
  faults, and the drivers around each alert onset.
"""

from __future__ import annotations

import hashlib
import json
import time
from array import array
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pandas as pd

from scada_tcn.runtime.errors import InputError
from scada_tcn.runtime.telemetry import parse_timestamp_ns
from scada_tcn.trainer.data.windowing import label_rows
from scada_tcn.trainer.evaluation.events import Fault, Timeline, alert_spans, onsets, score_events
from scada_tcn.trainer.evaluation.plots import plot_contribution_heatmap, plot_score_timeline

__all__ = [
    "EdgeRecords",
    "EdgeRecordsError",
    "event_lines",
    "faults_from_table",
    "format_report",
    "missing_steps",
    "progress_printer",
    "read_fault_labels",
    "read_records",
    "report",
    "timelines",
]

STATUSES = ("ok", "warmup", "insufficient_data")
HEATMAP_HALF_WIDTH = 36  # scored steps shown before and after an alert onset
MAX_HEATMAPS = 12
_PROGRESS_LINES = 250_000


class EdgeRecordsError(ValueError):
    """A records or labels file that cannot be read as the edge's output."""


@dataclass(frozen=True)
class EdgeRecords:
    """Score records, one per (turbine, ts), sorted by turbine then ts (see the module docstring)."""

    turbines: list[str]  # sorted; `turbine` indexes it
    turbine: np.ndarray  # (N,) int
    ts_ns: np.ndarray  # (N,) int64, the step end
    seq: np.ndarray  # (N,) int64
    status: np.ndarray  # (N,) int, an index of STATUSES
    ratio: np.ndarray  # (N,) float64
    alert: np.ndarray  # (N,) bool
    driver_names: list[str]
    driver_kind: str  # "group ratio" (per-signal records' groups) or "contribution" (top features)
    line: np.ndarray  # (N,) int32: each record's index among the file's non-blank lines
    drivers: tuple[np.ndarray, np.ndarray, np.ndarray]  # (line, driver, value) of the ok records, by line
    dt_ns: int
    model_ids: list[str]
    bundle_ids: list[str]  # the bundles that scored them: another than the model's one means other settings
    duplicates: int
    path: str

    def rows_of(self, k: int) -> slice:
        """The rows of turbine index k."""
        a, b = np.searchsorted(self.turbine, [k, k + 1])
        return slice(int(a), int(b))

    def driver_matrix(self, rows: np.ndarray) -> tuple[np.ndarray, list[str]]:
        """The drivers of `rows` (record indices) as a dense (len(rows), D) matrix (0 where a record names none,
        or a null) with the D driver names any of them has."""
        at, col, val = self.drivers
        lines = self.line[rows]
        start, end = np.searchsorted(at, lines), np.searchsorted(at, lines + 1)
        n = end - start
        entry = np.repeat(start - np.cumsum(n) + n, n) + np.arange(n.sum())  # each row's entries, in row order
        used, c = np.unique(col[entry], return_inverse=True)
        m = np.zeros((rows.size, used.size))
        m[np.repeat(np.arange(rows.size), n), c] = np.nan_to_num(val[entry])
        return m, [self.driver_names[i] for i in used.tolist()]


def _number(x: Any) -> float:
    return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) else float("nan")


class _Lines:
    """What `read_records` keeps of each record line, in compact arrays (about 40 bytes a record, and 10 per
    driver): the turbine as an index, the stamp in ns, a 64-bit digest of the line, the status, ratio and alert
    state, and the drivers as (line, driver, value) triples, in line order (`EdgeRecords.driver_matrix` finds a
    record's by binary search, so they are never sorted or copied)."""

    def __init__(self) -> None:
        self.turbines: dict[str, int] = {}
        self.drivers: dict[str, int] = {}
        self.models: set[str] = set()
        self.bundles: set[str] = set()  # "null": records of a state saved before records named their bundle
        self.grouped = False  # per-signal records (groups) seen
        self.tid, self.ts, self.seq, self.digest = array("i"), array("q"), array("q"), array("Q")
        self.status, self.ratio, self.alert = array("b"), array("d"), array("b")
        self.d_line, self.d_col, self.d_val = array("i"), array("h"), array("f")

    def add(self, line: bytes) -> None:
        """One record line; raises ValueError, KeyError or TypeError for one that is not a score record."""
        d = orjson.loads(line)
        if not isinstance(d, dict):
            raise ValueError("not a JSON object")
        code = _CODES.get(d.get("status"))
        if code is None:
            raise ValueError(f"status {d.get('status')!r} is none of {list(STATUSES)}")
        self.tid.append(self.turbines.setdefault(str(d["turbine"]), len(self.turbines)))
        self.ts.append(_ns(d["ts"]))
        self.seq.append(int(d["seq"]))
        self.digest.append(int.from_bytes(hashlib.blake2b(line, digest_size=8).digest(), "little"))
        self.status.append(code)
        self.models.add(str(d.get("model_id")))
        self.bundles.add("null" if d.get("bundle_id") is None else str(d["bundle_id"]))
        self.ratio.append(_number(d.get("ratio")))
        self.alert.append(bool(d.get("alert")))
        if code:
            return
        groups = d.get("groups")
        if isinstance(groups, list):
            self.grouped = True
            pairs = [(g["group"], g.get("ratio")) for g in groups]
        else:
            pairs = [(f["name"], f.get("contribution")) for f in d.get("top_features") or []]
        row = len(self.tid) - 1
        for name, value in pairs:
            self.d_line.append(row)
            self.d_col.append(self.drivers.setdefault(str(name), len(self.drivers)))
            self.d_val.append(_number(value))


_CODES = {s: i for i, s in enumerate(STATUSES)}


def _ns(ts: Any) -> int:
    """A record's ts (ISO-8601 with a UTC offset) -> ns since the epoch, read as the daemon reads telemetry stamps."""
    ns = parse_timestamp_ns(ts) if isinstance(ts, str) else "not a string"
    if isinstance(ns, str):
        raise ValueError(f"ts {ts!r}: {ns}")
    return ns


def _first_of_each_key(path: Path, lines: _Lines) -> tuple[np.ndarray, int]:
    """The consumers' rule (`runtime.records.dedupe`) on the lines' arrays: the first line of each (turbine, ts),
    and the number of identical repeats; a key with two different lines is refused."""
    tid, ts = np.frombuffer(lines.tid, np.int32), np.frombuffer(lines.ts, np.int64)
    digest = np.frombuffer(lines.digest, np.uint64)
    order = np.lexsort((np.arange(tid.size), ts, tid))  # by key, then arrival
    first = np.ones(order.size, bool)
    first[1:] = (tid[order][1:] != tid[order][:-1]) | (ts[order][1:] != ts[order][:-1])
    head = np.maximum.accumulate(np.where(first, np.arange(order.size), 0))  # each line's key's first line
    differ = digest[order] != digest[order][head]
    if differ.any():
        at = order[np.flatnonzero(differ)[0]]
        turbine = list(lines.turbines)[tid[at]]
        stamp = np.datetime64(int(ts[at]), "ns")
        raise EdgeRecordsError(
            f"{path}: {int(np.unique(head[differ]).size)} (turbine, ts) keys arrived with two different records "
            f"(e.g. {turbine} at {stamp}): the edge scores a step once, so the file mixes runs or models; split it"
        )
    return np.sort(order[first]), int(order.size - first.sum())


def read_records(path: str | Path, progress: Callable[[int, float], None] | None = None) -> EdgeRecords:
    """The score records of `path` (module docstring). `progress(lines, fraction of the file read)` follows every
    250,000 lines."""
    path = Path(path)
    if not path.is_file():
        raise EdgeRecordsError(f"{path}: no such file (give the scores file of scada-runtime replay --out)")
    size = max(path.stat().st_size, 1)
    lines = _Lines()
    with path.open("rb") as fh:
        for n, line in enumerate(fh, 1):
            if progress is not None and n % _PROGRESS_LINES == 0:
                progress(n, fh.tell() / size)
            if not line.strip():
                continue
            try:
                lines.add(line.rstrip(b"\r\n"))
            except (ValueError, KeyError, TypeError) as e:
                raise EdgeRecordsError(f"{path}, line {n}: not a score record: {e!r}") from None
    if not lines.tid:
        raise EdgeRecordsError(f"{path}: holds no score record")
    kept, repeats = _first_of_each_key(path, lines)
    ts = np.frombuffer(lines.ts, np.int64)[kept]
    seqs = np.frombuffer(lines.seq, np.int64)[kept]
    dt = int(ts[0] // seqs[0]) if seqs[0] else 0
    if dt <= 0 or not np.array_equal(seqs * dt, ts):
        raise EdgeRecordsError(f"{path}: seq is not ts / dt with one step dt for every record (records of models "
                               "with different steps mixed?)")  # fmt: skip
    turbines = sorted(lines.turbines)
    rank = np.empty(len(turbines), np.int64)
    rank[[lines.turbines[t] for t in turbines]] = np.arange(len(turbines))
    turbine = rank[np.frombuffer(lines.tid, np.int32)[kept]]
    order = np.lexsort((ts, turbine))
    return EdgeRecords(
        turbines=turbines,
        turbine=turbine[order],
        ts_ns=ts[order],
        seq=seqs[order],
        status=np.frombuffer(lines.status, np.int8)[kept][order].astype(np.int64),
        ratio=np.frombuffer(lines.ratio, np.float64)[kept][order],
        alert=np.frombuffer(lines.alert, np.int8)[kept][order].astype(bool),
        driver_names=list(lines.drivers),
        driver_kind="group ratio" if lines.grouped else "contribution",
        line=kept[order].astype(np.int32),
        drivers=(
            np.frombuffer(lines.d_line, np.int32),
            np.frombuffer(lines.d_col, np.int16),
            np.frombuffer(lines.d_val, np.float32),
        ),  # fmt: skip
        dt_ns=dt,
        model_ids=sorted(lines.models),
        bundle_ids=sorted(lines.bundles),
        duplicates=repeats,
        path=str(path),
    )


def missing_steps(recs: EdgeRecords) -> dict[str, int]:
    """Per turbine, the steps between its first and last record that have no record."""
    out = {}
    for k, name in enumerate(recs.turbines):
        s = recs.seq[recs.rows_of(k)]
        out[name] = int(s[-1] - s[0] + 1 - s.size)
    return out


def _scored_rows(recs: EdgeRecords, k: int, lo: int, hi: int) -> tuple[np.ndarray, int | None]:
    """Turbine index k's ok rows in [lo, hi), in time order, and its last ok row before lo (None: none)."""
    span = recs.rows_of(k)
    rows = span.start + np.flatnonzero(recs.status[span] == 0)
    a, b = np.searchsorted(recs.ts_ns[rows], [lo, hi])
    return rows[a:b], int(rows[a - 1]) if a else None


def timelines(recs: EdgeRecords, lo: int, hi: int) -> dict[str, Timeline]:
    """Per turbine with an ok record in [lo, hi): its Timeline there (module docstring)."""
    out = {}
    for k, name in enumerate(recs.turbines):
        rows, before = _scored_rows(recs, k, lo, hi)
        if rows.size:
            out[name] = Timeline(recs.ts_ns[rows], recs.alert[rows], before is not None and bool(recs.alert[before]))
    return out


def read_fault_labels(path: str | Path, naive_timezone: str | None = None,
                      zone_key: str = "--naive-timezone") -> list[Fault]:  # fmt: skip
    """Labelled faults of a CSV with columns turbine_id, start, end, fault (as scada-synth and scada-inject write);
    see `faults_from_table`."""
    return faults_from_table(pd.read_csv(path, dtype=str), f"labels file {path}", naive_timezone, zone_key)


def faults_from_table(df: pd.DataFrame, name: str = "labels", naive_timezone: str | None = None,
                      zone_key: str = "--naive-timezone") -> list[Fault]:  # fmt: skip
    """Labelled faults of a table with columns turbine_id, start, end, fault, read and checked as training reads a
    labels file (`windowing.label_rows`): stamps with a UTC offset, or local times in `naive_timezone` (the
    setting `zone_key`); `name` names the table in errors."""
    try:
        turbines, starts, ends, faults = label_rows(df, naive_timezone, name, zone_key)
    except InputError as e:
        raise EdgeRecordsError(str(e)) from None
    return list(zip(turbines, starts.tolist(), ends.tolist(), faults, strict=True))


def _iso(ns: int) -> str:
    return pd.Timestamp(int(ns), tz="UTC").strftime("%Y-%m-%d %H:%M")


def report(
    recs: EdgeRecords,
    out_dir: str | Path | None,
    faults: Sequence[Fault] | None = None,
    lo: int | None = None,
    hi: int | None = None,
    max_lead_ns: int = 48 * 3_600 * 10**9,
    plots: bool = True,
    clean: EdgeRecords | None = None,
) -> dict[str, Any]:
    """Counts, completeness and event metrics of `recs` in [lo, hi) (default: all of it) against `faults` (those
    that start in it; None: no labels, the alert onsets alone), net of `clean`, the records of the uninjected copy
    of the same data where faults were injected (an onset while the clean copy's alert is on does not count; its
    lost records make the report incomplete too). Writes `report.json` and, with `plots`, `plots/` under `out_dir`
    (None: nothing written). Returns what report.json holds."""
    lo = int(recs.ts_ns.min()) if lo is None else lo
    hi = int(recs.ts_ns.max()) + 1 if hi is None else hi
    if hi <= lo:
        raise EdgeRecordsError(f"the period is empty: end {_iso(hi)} is not after start {_iso(lo)}")
    tls = timelines(recs, lo, hi)
    gaps = missing_steps(recs)
    if clean is not None and clean.dt_ns != recs.dt_ns:
        raise EdgeRecordsError(f"{clean.path}: a step of {clean.dt_ns / 1e9:g} s, {recs.path}: {recs.dt_ns / 1e9:g} s: "
                               "the clean copy must be scored by the same model")  # fmt: skip
    clean_tls = timelines(clean, lo, hi) if clean is not None else None
    clean_gaps = missing_steps(clean) if clean is not None else {}
    counts = np.bincount(recs.status, minlength=len(STATUSES))
    out: dict[str, Any] = {
        "records": recs.path,
        "n_records": int(recs.ts_ns.size),
        "duplicates": recs.duplicates,
        "by_status": {s: int(c) for s, c in zip(STATUSES, counts)},
        "model_ids": recs.model_ids,
        "bundle_ids": recs.bundle_ids,
        "dt_ns": recs.dt_ns,
        "period": [_iso(max(lo, int(recs.ts_ns.min()))), _iso(min(hi - 1, int(recs.ts_ns.max())))],
        "turbines": len(recs.turbines),
        "turbines_scored_in_period": len(tls),
        "missing_steps": {t: n for t, n in gaps.items() if n},
        "labels": faults is not None,
        "clean": clean.path if clean is not None else None,
        "clean_missing_steps": {t: n for t, n in clean_gaps.items() if n},
    }
    incomplete = []
    if any(gaps.values()):
        incomplete.append(f"steps with no record (gaps in seq): {sum(gaps.values()):,}")
    if any(clean_gaps.values()):
        incomplete.append(f"steps of the clean copy with no record: {sum(clean_gaps.values()):,}")
    if faults is not None:
        inside = [f for f in faults if lo <= f[1] < hi]
        unscored = [f for f in inside if f[0] not in tls]
        if unscored:
            incomplete.append(f"labelled faults of turbines with no scored step in the period: {len(unscored)}")
        out["faults_without_scores"] = [{"turbine": t, "start": _iso(a), "fault": c} for t, a, _, c in unscored]
    scored = [f for f in inside if f[0] in tls] if faults is not None else []
    ev = score_events(tls, scored, max_lead_ns, recs.dt_ns, clean_tls) if tls else None
    out["events"] = ev
    # the uninjected copy alone: no fault injected there, so each of its onsets is an alert without a labelled cause
    out["clean_events"] = score_events(clean_tls, [], max_lead_ns, recs.dt_ns) if clean_tls else None
    out["complete"] = not incomplete
    out["incomplete_because"] = incomplete
    if out_dir is not None:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        found = {(e["turbine"], e["onset_ns"]) for e in ev["events"] if e["detected"]} if ev else set()
        out["plots"] = _plots(recs, out_dir / "plots", tls, faults or [], lo, hi, found) if plots and tls else []
        (out_dir / "report.json").write_text(json.dumps(out, indent=2, default=str))
    return out


def _plots(
    recs: EdgeRecords,
    out: Path,
    tls: dict[str, Timeline],
    faults: Sequence[Fault],
    lo: int,
    hi: int,
    found: set[tuple[str, int]],
) -> list[str]:
    """Each turbine's score ratio with its alert spans and faults; the drivers around MAX_HEATMAPS alert onsets:
    those that detected a fault (`found`: (turbine, onset ns)) first, then the others, each by time."""
    out.mkdir(parents=True, exist_ok=True)
    written, starts = [], []
    for k, name in enumerate(recs.turbines):
        tl = tls.get(name)
        if tl is None:
            continue
        rows, _ = _scored_rows(recs, k, lo, hi)  # the timeline's steps
        mine = [(a, b, c) for t, a, b, c in faults if t == name]
        title = f"{name}: score / threshold published by the edge ({len(rows):,} scored steps)"
        written.append(str(plot_score_timeline(out / f"score_{name}.png", tl.ts_ns, recs.ratio[rows], 1.0,
                                               alert_spans(tl.ts_ns, tl.on), mine, title)))  # fmt: skip
        starts += [(int(i), name, rows) for i in onsets(tl)]
    starts.sort(key=lambda o: ((o[1], int(recs.ts_ns[o[2][o[0]]])) not in found, int(recs.ts_ns[o[2][o[0]]])))
    for n, (i, name, rows) in enumerate(starts[:MAX_HEATMAPS]):
        sel = rows[max(0, i - HEATMAP_HALF_WIDTH) : i + HEATMAP_HALF_WIDTH]
        m, names = recs.driver_matrix(sel)
        if not names:
            continue
        at = int(recs.ts_ns[rows[i]])
        written.append(str(plot_contribution_heatmap(
            out / f"drivers_{n:02d}_{name}.png", recs.ts_ns[sel], m, names, at,
            f"{name}: what drove the score around the alert of {_iso(at)} UTC", label=recs.driver_kind,
        )))  # fmt: skip
    return written


def event_lines(ev: dict[str, Any], period: str, lead_h: float, extra: Sequence[str] = ()) -> list[str]:
    """`score_events`' figures as text: the faults in `period` and which were detected (with their leads, an onset
    up to `lead_h` hours before a fault counting), then `extra`, then the alerts raised, the false ones and the
    coverage."""
    lines = [f"labelled faults in {period}: {ev['n_events']}, detected: {ev['n_detected']} (an alert onset from "
             f"{lead_h:g} h before the fault to its end)"]  # fmt: skip
    for e in ev["events"]:
        lead = f"lead {e['lead_ns'] / 3.6e12:+.1f} h" if e["detected"] else "missed"
        lines.append(f"  {e['turbine']}  {e['fault']:<18} starts {_iso(e['start_ns'])}   {lead}")
    return [*lines, *extra, f"alerts raised: {ev['n_onsets']}, of which false (no fault nearby): "
            f"{ev['n_false_alerts']} = {ev['false_alerts_per_turbine_month']:.2f} per turbine-month; alert on during "
            f"{ev['alert_coverage']:.0%} of the fault time"]  # fmt: skip


def format_report(r: dict[str, Any]) -> str:
    """The report as text for a person."""
    by = r["by_status"]
    lines = [
        f"edge records {r['records']}: {r['n_records']:,} records of {r['turbines']} turbines "
        f"({r['duplicates']:,} identical repeats read once), period {r['period'][0]} to {r['period'][1]} UTC",
        f"  ok {by['ok']:,}, warmup {by['warmup']:,}, insufficient_data {by['insufficient_data']:,}; models "
        + ", ".join(m[:12] for m in r["model_ids"])
        + "; bundles "
        + ", ".join(b[:12] for b in r["bundle_ids"]),
    ]
    if r["complete"]:
        lines.append("  complete: every turbine has a record for every step between its first and last")
    else:
        lines.append("  INCOMPLETE: " + "; ".join(r["incomplete_because"]) + ": the figures below are not a result")
    ev = r["events"]
    if ev is None:
        lines.append("no scored step in the period")
        return "\n".join(lines)
    if r["labels"]:
        extra = []
        if r["clean"]:
            c = r["clean_events"]
            extra = [f"net of the uninjected copy {r['clean']}: {ev['n_onsets_masked_by_clean']} onsets while its "
                     "alert was on do not count",
                     f"  the uninjected copy alone raised {c['n_onsets']} alerts over {c['turbine_months']:.1f} "
                     f"turbine-months ({c['false_alerts_per_turbine_month']:.2f} per turbine-month)"]  # fmt: skip
        lines += event_lines(ev, "the period", ev["max_lead_ns"] / 3.6e12, extra)
    else:
        lines.append(f"alerts raised: {ev['n_onsets']} over {ev['turbine_months']:.1f} turbine-months "
                     f"({ev['false_alerts_per_turbine_month']:.2f} per turbine-month; no labels given)")  # fmt: skip
    if r.get("plots"):
        lines.append(f"plots: {len(r['plots'])} files in {Path(r['plots'][0]).parent}")
    return "\n".join(lines)


def progress_printer(path: str | Path, log: Callable[[str], None]) -> Callable[[int, float], None]:
    """A `read_records` progress callback that logs lines read, the share of the file and the rate."""
    t0 = time.perf_counter()

    def show(lines: int, fraction: float) -> None:
        rate = lines / max(time.perf_counter() - t0, 1e-9)
        log(f"reading {path}: {lines:,} lines ({fraction:.0%}), {rate:,.0f} lines/s")

    return show
