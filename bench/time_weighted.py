"""Instantaneous readings sent by exception, averaged over each step by time or by sample: how close each comes to
the signal's step means, and what one model detects from each, by the project's event scorer.

    python bench/time_weighted.py --bundle artifacts/demo/bundle --table artifacts/demo/stream.csv \\
        --labels artifacts/demo/synth/labels.csv --start 2024-03-21T00:00:00Z

A gateway reading a turbine live sends instantaneous values, not the 10-minute means a historian exports. Here the
dense table's step values are taken as a signal at each step's middle, read once a minute (in the middle of each
minute) by linear interpolation between two present steps (angles along the shorter arc, the status code as its
step's): no reading where a step is missing. The readings are then sent by exception as `report_by_exception.py`
sends them (its deadbands, a value at least every `--heartbeat-min`; the stuck-signal check's channels every
minute). The truth of a step is the time-weighted mean of every reading (each holds until the next).

Prints, per channel sent by exception, each binning's error against the truth (mean absolute, 99th percentile and
largest over the steps both have, in the channel's units: angles as arcs), then per variant the replay's figures
(`report_by_exception.scored`; all with the bundle holding those channels `--hold-s`):

    dense/time     every reading, time-weighted: the truth
    dense/sample   every reading, the samples' mean
    rbe/sample     the readings sent, the samples' mean (runtime.yaml's mapping.time_weighted: [])
    rbe/time       the readings sent, time-weighted (mapping.time_weighted: the channels sent by exception that
                   aggregate by their mean; not the status code)
"""

from __future__ import annotations

import csv
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.report_by_exception import arguments, by_exception, scored, with_holds  # noqa: E402
from scada_tcn.runtime.binning import bin_timeline  # noqa: E402
from scada_tcn.runtime.bundle import Bundle, load_bundle  # noqa: E402
from scada_tcn.runtime.cells import parse_numbers  # noqa: E402
from scada_tcn.runtime.records import iso_utc  # noqa: E402
from scada_tcn.runtime.telemetry import parse_timestamp_ns  # noqa: E402

MINUTE = 60 * 10**9


def _table(path: Path) -> tuple[list[str], list[list[str]]]:
    with open(path, newline="") as fh:
        rows = list(csv.reader(fh))
    return rows[0], rows[1:]


def _by_turbine(table: Path, columns: list[str]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per turbine of `table`, in file order: its stamps (ns) and its values of `columns` (n, len(columns)), each
    column parsed once for the whole table."""
    header, body = _table(table)
    ti, ii = header.index("timestamp"), header.index("turbine_id")
    ids = np.array([r[ii] for r in body])
    ts = np.array([parse_timestamp_ns(r[ti]) for r in body], dtype=np.int64)
    values = np.column_stack([parse_numbers(np.array([r[header.index(c)] for r in body], dtype=object))[0]
                              for c in columns])  # fmt: skip
    return {t: (ts[ids == t], values[ids == t]) for t in dict.fromkeys(ids.tolist())}


def minute_readings(table: Path, out: Path, dt_ns: int, angular: set[str], discrete: set[str]) -> int:
    """Write the readings once a minute of `table`'s turbines (see the module docstring); returns how many."""
    header = _table(table)[0]
    ti, ii = header.index("timestamp"), header.index("turbine_id")
    chans = [header[j] for j in range(len(header)) if j not in (ti, ii)]
    per_step = dt_ns // MINUTE
    lines = []
    for turbine, (ends, values) in _by_turbine(table, chans).items():
        k = (ends - ends.min()) // dt_ns  # each row's step on the turbine's own grid (gaps stay empty)
        steps = np.full((int(k.max()) + 1, len(chans)), np.nan)
        steps[k] = values
        n = steps.shape[0]
        # minute m of step s is read at end(s) - dt + (m + 0.5) minutes, between the middles of steps s-1, s, s+1
        pos = (np.arange(n * per_step) + 0.5) / per_step - 0.5  # in steps, 0 = the first step's middle
        lo = np.clip(np.floor(pos).astype(np.int64), 0, n - 1)
        hi = np.clip(lo + 1, 0, n - 1)
        frac = (pos - lo)[:, None]
        a, b = steps[lo], steps[hi]
        value = a + frac * (b - a)
        for c, name in enumerate(chans):
            if name in angular:
                value[:, c] = (a[:, c] + frac[:, 0] * ((b[:, c] - a[:, c] + 180.0) % 360.0 - 180.0)) % 360.0
            if name in discrete:
                value[:, c] = steps[np.arange(n * per_step) // per_step, c]
        stamps = ends.min() - dt_ns + (np.arange(n * per_step) * MINUTE + MINUTE // 2)
        for t, v in zip(stamps.tolist(), value):
            if not np.isnan(v).all():
                lines.append([turbine, iso_utc(t), *("" if np.isnan(x) else f"{x:.6g}" for x in v)])
    with open(out, "w", newline="") as fh:
        csv.writer(fh).writerows([[header[ii], header[ti], *chans], *lines])
    return len(lines)


def binned(bundle: Bundle, turbines: dict[str, tuple[np.ndarray, np.ndarray]]) -> dict[str, tuple]:
    """Per turbine (`_by_turbine` of the bundle's columns), `bin_timeline` by the bundle's spec: (ends, values)."""
    return {t: bin_timeline(ts, values, bundle.spec)[:2] for t, (ts, values) in turbines.items()}


def errors(truth: dict, got: dict, bundle: Bundle, channels: list[str]) -> dict[str, tuple[float, float, float]]:
    """Per channel: the mean, the 99th percentile and the largest |got - truth| over the steps both have."""
    diffs: dict[str, list[np.ndarray]] = {c: [] for c in channels}
    for turbine, (grid, want) in truth.items():
        g, have = got[turbine]
        common, i, k = np.intersect1d(grid, g, return_indices=True)
        for c in channels:
            x = bundle.spec.channels.index(c)
            d = np.abs(have[k, x] - want[i, x])
            if c in bundle.spec.angular_channels:
                d = np.minimum(d, 360.0 - d)
            diffs[c].append(d[~np.isnan(d)])
    every = {c: np.concatenate(d) for c, d in diffs.items()}
    return {c: (float(np.mean(d)), float(np.percentile(d, 99)), float(d.max())) for c, d in every.items()}


def main() -> None:
    args, period, bands = arguments(__doc__, "a dense table of step means in the bundle's training layout")
    spec = load_bundle(args.bundle).spec
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        dense, rbe = work / "readings.csv", work / "rbe.csv"
        n = minute_readings(args.table, dense, spec.dt_seconds * 10**9, set(spec.angular_channels), {"status"})
        cells, kept = by_exception(dense, rbe, bands, int(args.heartbeat_min * 60e9))
        said = ", ".join(f"{c} {b:g}" for c, b in bands.items())
        print(f"{n:,} readings a minute; by exception ({said}; heartbeat {args.heartbeat_min:g} min): {kept:,} of "
              f"{cells:,} values sent ({kept / cells:.1%})")  # fmt: skip
        held = load_bundle(with_holds(args.bundle, work / "held", dict.fromkeys(bands, args.hold_s)))
        weighed = [c for c in bands if spec.aggregation.get(c, "mean") == "mean"]  # not the status code's max
        timed = held.with_time_weighted(weighed)
        columns = [held.column_mapping[c] for c in held.spec.channels]
        tables = {"dense": _by_turbine(dense, columns), "rbe": _by_turbine(rbe, columns)}  # each read once
        truth = binned(timed, tables["dense"])
        for name, bundle, table in (("dense/sample", held, "dense"), ("rbe/sample", held, "rbe"),
                                    ("rbe/time", timed, "rbe")):  # fmt: skip
            err = errors(truth, binned(bundle, tables[table]), held, weighed)
            print(f"{name:<13} " + "; ".join(f"{c} {m:.3g} (p99 {p:.3g}, max {x:.3g})" for c, (m, p, x) in err.items()),
                  flush=True)  # fmt: skip
        variants = {"dense/time": (dense, weighed), "dense/sample": (dense, []), "rbe/sample": (rbe, []),
                    "rbe/time": (rbe, weighed)}  # fmt: skip
        for name, (table, weighted) in variants.items():
            out = work / name.replace("/", "_")
            out.mkdir()
            row = scored(held.path, table, args.labels, out, args.max_lead_hours, period, {"time_weighted": weighted})
            print(f"{name:<13} {json.dumps(row)}", flush=True)


if __name__ == "__main__":
    main()
