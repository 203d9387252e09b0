"""`scada-runtime replay`: the daemon's pipeline fed from a raw SCADA table instead of the broker.

Contract
--------
* Input: a CSV file (read with the csv module; a Parquet file is refused with the command that converts it, since
  the edge install carries no Parquet reader) with one row per turbine and timestamp, in the training table's
  format. Columns map to the bundle's channels through runtime.yaml's `mapping` section (`columns`,
  `turbine_id_col`, `time_col`, `naive_timezone`); with no `columns` the bundle's training mapping is used, so a
  table in the training format
  replays with no mapping given. Stamps: ISO-8601 with a UTC offset, or epoch seconds; naive stamps need
  `naive_timezone`. Non-numeric cells and +-inf become missing (counted per channel), as in scada-prepare.
* Rows are fed to the same `Engine` as `run` in time order (stable: rows of one timestamp keep file order, the
  order scada-prepare's dedupe sees), bins closing as later samples arrive; at the end each turbine's bins are
  closed through its own last sample, like scada-prepare's grid. No wall clock is involved.
* Output: `out` gets exactly the score-topic payloads `run` would publish (warm-up records included), one JSON
  object per line, in closing order; `alerts_out`, when given, the alert transitions. Returns a summary dict.
Refused (InputError): a missing file or column, unparseable or naive stamps without a zone, an empty table.
"""

from __future__ import annotations

import contextlib
import csv
import math
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from scada_tcn.runtime.daemon_config import MappingCfg
from scada_tcn.runtime.engine import Engine
from scada_tcn.runtime.errors import InputError
from scada_tcn.runtime.telemetry import Sample, parse_timestamp_ns

__all__ = ["read_table", "replay"]

_FLUSH_EVERY = 4096  # rows between engine flushes: batches of ready turbines, bounded memory


def _read_rows(path: Path, columns: Sequence[str]) -> dict[str, list[Any]]:
    if path.name.lower().endswith((".parquet", ".pq")):  # the edge install carries no Parquet reader (pyarrow)
        csv_path = path.with_suffix(".csv")
        raise InputError(
            f"{path}: the edge runtime replays CSV only; convert the table where pandas is installed: "
            f"python -c \"import pandas as pd; pd.read_parquet('{path}').to_csv('{csv_path}', "
            'index=False)"'
        )
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.reader(fh)
        header = next(reader, None)
        if header is None:
            raise InputError(f"{path}: empty file")
        missing = [c for c in columns if c not in header]
        if missing:
            raise InputError(
                f"{path}: columns {missing} not found; the table has {header[:40]}. "
                "Fix runtime.yaml `mapping` (columns, turbine_id_col, time_col)"
            )
        idx = {c: header.index(c) for c in dict.fromkeys(columns)}
        out: dict[str, list[Any]] = {c: [] for c in idx}
        for row in reader:
            for c, i in idx.items():
                out[c].append(row[i] if i < len(row) else "")
        return out


def _timestamp(cell: Any, tz: Any) -> int | str:
    if isinstance(cell, datetime):
        cell = cell.isoformat()
    if isinstance(cell, str):
        s = cell.strip()
        try:
            return parse_timestamp_ns(float(s))
        except ValueError:
            pass
        res = parse_timestamp_ns(s)
        if res == "naive_timestamp" and tz is not None:
            return parse_timestamp_ns(datetime.fromisoformat(s).replace(tzinfo=tz).isoformat())
        return res
    return parse_timestamp_ns(cell)


def _number(cell: Any) -> tuple[float, bool]:
    """(value, was_non_numeric); empty -> NaN (not counted), text -> NaN (counted), inf -> NaN."""
    if cell is None or cell == "":
        return math.nan, False
    if isinstance(cell, bool):
        return math.nan, True
    try:
        x = float(cell)
    except (TypeError, ValueError):
        return math.nan, True
    return (x if math.isfinite(x) else math.nan), False


def read_table(path: str | Path, channels: Sequence[str], mapping: MappingCfg, default_columns: dict[str, str]):
    """-> (turbine ids list, ts_ns (n,) int64, values (n, C) float64, non_numeric {channel: count})."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"replay input {p} does not exist")
    colmap = dict(mapping.columns) or dict(default_columns)
    missing = [c for c in channels if c not in colmap]
    if missing:
        raise InputError(f"mapping.columns: no column for channels {missing}; the bundle needs {list(channels)}")
    cols = [mapping.turbine_id_col, mapping.time_col] + [colmap[c] for c in channels]
    data = _read_rows(p, cols)
    ids = [str(x).strip() if x is not None else "" for x in data[mapping.turbine_id_col]]
    if not ids:
        raise InputError(f"{p}: no rows")
    if any(not t for t in ids):
        raise InputError(f"{p}: {sum(not t for t in ids)} rows have no turbine id in {mapping.turbine_id_col!r}")
    tz = None
    if mapping.naive_timezone is not None:
        from zoneinfo import ZoneInfo

        tz = ZoneInfo(mapping.naive_timezone)
    ts = [_timestamp(c, tz) for c in data[mapping.time_col]]
    bad = [(i, data[mapping.time_col][i]) for i, t in enumerate(ts) if isinstance(t, str)]
    if bad:
        kinds = sorted({ts[i] for i, _ in bad})
        raise InputError(
            f"{p}: {len(bad)} bad timestamps in {mapping.time_col!r} ({kinds}), e.g. "
            f"{[c for _, c in bad[:3]]}; expected ISO-8601 with a UTC offset (or set "
            "mapping.naive_timezone) or epoch seconds"
        )
    values = np.empty((len(ids), len(channels)))
    non_numeric: dict[str, int] = {}
    for j, c in enumerate(channels):
        parsed = [_number(x) for x in data[colmap[c]]]
        values[:, j] = [v for v, _ in parsed]
        non_numeric[c] = sum(b for _, b in parsed)
    return ids, np.array(ts, dtype=np.int64), values, non_numeric


def replay(
    engine: Engine, path: str | Path, mapping: MappingCfg, out: str | Path, alerts_out: str | Path | None = None
) -> dict[str, Any]:
    """Replay a table through `engine`; write score payloads (JSON lines) to `out`. Returns a summary."""
    spec = engine.bundle.spec
    ids, ts, values, non_numeric = read_table(path, spec.channels, mapping, engine.bundle.column_mapping)
    order = np.argsort(ts, kind="stable")
    last_ns: dict[str, int] = {}
    for i in order:
        last_ns[ids[i]] = int(ts[i])
    counts = {"rows": len(ids), "turbines": len(last_ns), "scores": 0, "warmup": 0, "alerts": 0, "late": 0}
    grace_ns = int(engine.fleet.grace_seconds * 1e9)
    dt_ns = engine.dt_ns
    with contextlib.ExitStack() as stack:
        fh = stack.enter_context(open(out, "wb"))
        fa = stack.enter_context(open(alerts_out, "wb")) if alerts_out is not None else None

        def write(outputs: list) -> None:
            for o in outputs:
                if o.kind == "score":
                    fh.write(o.payload + b"\n")
                    counts["warmup" if b'"status":"warmup"' in o.payload else "scores"] += 1
                elif o.kind == "alert":
                    counts["alerts"] += 1
                    if fa is not None:
                        fa.write(o.payload + b"\n")

        for n, i in enumerate(order, 1):
            if not engine.ingest(Sample(ids[i], int(ts[i]), values[i])):
                counts["late"] += 1
            if n % _FLUSH_EVERY == 0:
                write(engine.flush())
        for tid, last in last_ns.items():  # each turbine's grid ends at its own last sample's bin
            end = -(-last // dt_ns) * dt_ns
            engine.fleet.close_turbine_until(tid, end + grace_ns)
        write(engine.flush(final=True))  # fleet-relative steps waiting for a turbine whose data ended go out too
    counts["non_numeric"] = non_numeric
    counts["score_drift"] = engine.score_drift()
    return counts


def replay_file(
    bundle_dir: str | Path,
    input_path: str | Path,
    out: str | Path,
    cfg: Any = None,
    alerts_out: str | Path | None = None,
) -> dict[str, Any]:
    """Load the bundle and replay `input_path` with the settings of `cfg` (a RuntimeConfig; None = defaults)."""
    from scada_tcn.runtime.bundle import load_bundle
    from scada_tcn.runtime.daemon_config import daemon_config_from_dict
    from scada_tcn.runtime.stream import make_scorer

    cfg = cfg if cfg is not None else daemon_config_from_dict({})
    bundle = load_bundle(bundle_dir)
    scorer = make_scorer(bundle, cfg.compute.engine, cfg.compute.intra_op_threads, cfg.compute.inter_op_threads)
    engine = Engine(
        bundle,
        scorer,
        cfg.ingest.grace_s,
        max_turbines=10**6,
        max_batch=cfg.compute.max_batch,
        drift_window=cfg.health.drift_window,
    )
    return replay(engine, input_path, cfg.mapping, out, alerts_out)
