"""Loading raw SCADA tables (CSV/Parquet, one row per turbine and timestamp) into checked numpy arrays.

pandas only reads here (Parquet files, and the frame the CSV reader fills); stamps are read by `runtime/`'s
grammar and every computation on the values happens in `runtime/`. What is refused,
with a message that says what to fix: a missing turbine-id or time column, a mapped channel column that is
not in the table, unparseable timestamps, a mix of stamps with and without a UTC offset (or naive stamps
without `data.identifiers.naive_timezone`), local times a DST change skips. Local times the autumn change repeats
are placed by each turbine's row order, as replay places them (`runtime.repeated_hour`); the rows that
order does not place are left out and counted. Non-numeric cells (`-`, `#N/A`, ...) become missing and are
counted per channel. With `data.rul.enabled` the target column `data.rul.column` is read beside the channels
(never as one: it must not reach the features); a non-numeric target cell is refused.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd

from scada_tcn.runtime.bundle import TableFormat
from scada_tcn.runtime.cells import (
    counted_text,
    first_text,
    is_number,
    no_numbers,
    other_decimal,
    parse_numbers,
    wrong_decimal,
)
from scada_tcn.runtime.csv_table import (
    CSV_KINDS,
    PARQUET_KINDS,
    CsvDialect,
    column_positions,
    csv_columns,
    table_files,
)
from scada_tcn.runtime.errors import InputError
from scada_tcn.runtime.ids import file_turbine_id
from scada_tcn.runtime.repeated_hour import NOT_PLACED, Repeated, RepeatedHours, repeated_rows
from scada_tcn.runtime.replay import formatted_stamps_ns
from scada_tcn.runtime.stamps import STANDARD_TIME, iso_ns, wall_utc_ns
from scada_tcn.runtime.telemetry import EPOCH_RANGE, MAX_EPOCH_S, in_epoch_range, table_epoch_ns
from scada_tcn.trainer.config import DataCfg

_CSV_ROWS = 200_000  # rows per chunk of a CSV file
_MAPPING = "data.identifiers / data.columns"  # the settings that name a table's columns
_FILE_ID = "\0turbine id from the file name"  # the column a file's id fills (no export names a column so)


@dataclass
class RawTable:
    """Samples of all turbines: `values[i]` holds `channels` of turbine `turbine_ids[i]` at `ts_ns[i]`."""

    turbine_ids: np.ndarray  # (n,) str
    ts_ns: np.ndarray  # (n,) int64, ns since epoch, UTC
    values: np.ndarray  # (n, C) float64, NaN = missing
    channels: tuple[str, ...]
    non_numeric: dict[str, int] = field(default_factory=dict)  # channel -> cells that were not numbers
    text_examples: dict[str, str] = field(default_factory=dict)  # channel -> the first such cell
    files: list[str] = field(default_factory=list)
    rul: np.ndarray | None = None  # (n,) float64 target column `data.rul.column` when data.rul.enabled, NaN = none
    # rows at a local time the autumn DST change repeats that their turbine's row order does not place, left out
    # ("<turbine> <stamp cell>", file order)
    repeated_hour_dropped: list[str] = field(default_factory=list)


def csv_dialect(data: DataCfg) -> CsvDialect:
    """How `data`'s CSV export is written (data.csv), as the shared reader takes it."""
    c = data.csv
    return CsvDialect(c.delimiter, c.decimal, c.skip_lines, "data.csv", c.encoding)


def table_format(data: DataCfg) -> TableFormat:
    """The raw table's layout as `data` describes it: the record scada-export writes into the bundle for replay."""
    i = data.identifiers
    return TableFormat(dict(data.columns), i.turbine_id_col, i.time_col, i.naive_timezone, csv_dialect(data),
                       i.turbine_id_from_file, i.time_format)  # fmt: skip


def _read(path: Path, columns: list[str], dialect: CsvDialect) -> pd.DataFrame:
    """`columns` of one file: Parquet through pandas, CSV through the reader replay uses (`runtime.csv_table`: the
    same rows and cells, the same refusals), text cells with empty ones missing."""
    if path.name.lower().endswith(PARQUET_KINDS):
        try:
            df = pd.read_parquet(path)
        except (OSError, ValueError) as e:  # pyarrow: not a Parquet file, truncated, unreadable
            raise InputError(f"{path}: cannot read it as Parquet ({e}); export it again, or as CSV") from e
        column_positions(path, [str(c) for c in df.columns], columns, _MAPPING)
        return df[columns]
    chunks = csv_columns(path, columns, _CSV_ROWS, _MAPPING, dialect)
    parts = [pd.DataFrame(chunk, dtype=object) for chunk in chunks]
    df = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame({c: [] for c in columns}, dtype=object)
    return df.mask(df == "")  # an empty cell is missing, as pandas reads it (text cells stay text)


def _utc_ns(stamps: pd.Series) -> np.ndarray:
    naive_utc = stamps.dt.tz_convert("UTC").dt.tz_localize(None).astype("datetime64[ns]")
    return naive_utc.to_numpy().view(np.int64)


def _checked_ns(parsed: pd.Series, s: pd.Series, where: str) -> np.ndarray:
    """Parsed stamps -> int64 ns UTC; refused: missing ones (NaT) and those the edge refuses (beyond MAX_EPOCH_S)."""
    missing = parsed.isna().to_numpy()
    if missing.any():
        raise InputError(f"{where}: {int(missing.sum())} empty timestamps")
    try:
        ns = _utc_ns(parsed)
        ok = in_epoch_range(ns)
    except (pd.errors.OutOfBoundsDatetime, OverflowError):  # beyond int64 ns: found one by one
        ns, ok = None, np.array([abs(t.timestamp()) <= MAX_EPOCH_S for t in parsed])
    if ns is None or not ok.all():
        raise InputError(f"{where}: {int((~ok).sum())} stamps out of range, e.g. {s[~ok].head(3).tolist()}; "
                         f"{EPOCH_RANGE}")  # fmt: skip
    return ns


def parse_timestamps(col: pd.Series, naive_timezone: str | None, where: str, time_format: str | None = None,
                     keys: str | None = None, zone_key: str = "data.identifiers.naive_timezone",
                     held: list[Repeated] | None = None) -> np.ndarray:  # fmt: skip
    """ISO-8601 strings (with offsets) or epoch seconds (numbers, or text cells that are all numbers, as replay and
    the daemon read them) -> int64 ns UTC; with `time_format` (a strptime format, or "epoch_ms") every stamp read
    by it, by the reading replay applies (`runtime.replay.formatted_stamps_ns`). Refuses mixed, unparseable or
    out-of-range stamps, naming the settings section `keys` ("data.identifiers" for the SCADA table; None for a
    file without a time_format, such as the labels); `zone_key` names the setting that gives `naive_timezone`.
    With `held` (a SCADA table), a local time the autumn DST change repeats is NOT_PLACED and its `Repeated`
    appended there, for the table's row order to place (`runtime.repeated_hour`, as replay places it); without
    (the labels) it is refused."""
    if time_format is not None:  # a missing cell (NaN, None, pandas' NA) read as an empty one
        cells = np.where(col.isna().to_numpy(), "", col.astype(str).to_numpy(dtype=object)).tolist()
        return formatted_stamps_ns(cells, time_format, naive_timezone, where, keys or "data.identifiers", held)
    if pd.api.types.is_numeric_dtype(col):
        return table_epoch_ns(col.to_numpy(dtype=np.float64, na_value=np.nan), where, keys=keys)
    if isinstance(col.dtype, pd.DatetimeTZDtype):
        return _checked_ns(col, col.astype(str), where)
    s = col.astype(str).str.strip()
    cells = np.where(col.isna().to_numpy(), "", s.to_numpy(dtype=object))  # a missing cell read as an empty one
    first = next((c for c in cells if c), "")  # the first stamp given: is the column epoch seconds?
    if is_number(first):  # epoch seconds as text (a CSV), read by the rule replay applies
        secs, not_numbers = parse_numbers(cells)
        if not_numbers:  # replay reads such cells one by one and refuses them too (another form, or text)
            bad = counted_text(cells, secs)
            raise InputError(f"{where}: {not_numbers} stamps are not epoch seconds like the rest, e.g. {bad}: "
                             "unparseable or of another form (a header row repeated where files were joined?); "
                             "export every stamp one way")  # fmt: skip
        return table_epoch_ns(secs, where, keys=keys)  # a missing cell read as an empty one: reported there
    return _iso_ns(cells, naive_timezone, where, zone_key, held)


def _iso_ns(cells: np.ndarray, zone: str | None, where: str, zone_key: str, held: list[Repeated] | None) -> np.ndarray:
    """ISO-8601 stamp cells (stripped) -> int64 ns UTC (`parse_timestamps`), each distinct cell read once by the
    grammar replay and the daemon read (`stamps.iso_ns`), not by pandas, whose parser changes between versions.
    Stamps without an offset are local times in `zone`: one the spring change skips is refused, one the autumn
    change repeats is NOT_PLACED and held (`Repeated`), or refused without `held`."""
    codes, texts = pd.factorize(cells)  # the distinct cells, in order of first appearance; codes index them
    read = [iso_ns(t) for t in texts.tolist()]
    bad = np.array([r is None for r in read], dtype=bool)
    if bad.any():
        rows = bad[codes]
        raise InputError(f"{where}: {int(rows.sum())} unparseable timestamps, e.g. {cells[rows][:3].tolist()} "
                         "(expected ISO-8601 or epoch seconds; stamps of another form, such as day-first dates: set "
                         "data.identifiers.time_format to their strptime format, e.g. '%d.%m.%Y %H:%M')")  # fmt: skip
    has_offset = np.array([r[1] is not None for r in read], dtype=bool)
    if has_offset.any() and not has_offset.all():
        naive = ~has_offset[codes]
        raise InputError(f"{where}: mixed time zones: {int(naive.sum())} stamps have no UTC offset while others do "
                         f"(e.g. {cells[naive][:3].tolist()}); export all stamps with an offset")  # fmt: skip
    if not has_offset.all() and zone is None:
        raise InputError(f"{where}: timestamps have no UTC offset (e.g. {cells[0]!r}); set {zone_key}=UTC (or the "
                         "site's zone, e.g. Europe/Paris)")  # fmt: skip
    tz = None if zone is None else ZoneInfo(zone)
    # each distinct stamp's instant, or why not: a local time a DST change skips or repeats (a repeated one whose
    # wall clock lies out of range is out of range: its instants are near it), or out of range
    utc = [wall_utc_ns(w, o, tz) for w, o in read]
    reason = np.array([("out_of_range" if not in_epoch_range(w) and u == "ambiguous_local_time" else u)
                       if isinstance(u, str) else "" if in_epoch_range(u) else "out_of_range"
                       for (w, _), u in zip(read, utc)])  # fmt: skip
    fix = f"export the stamps with a UTC offset, or in UTC with {zone_key}=UTC"
    for why, does, extra in (("nonexistent_local_time", "skips", f"; {STANDARD_TIME}"),
                             ("ambiguous_local_time", "repeats", "")):  # fmt: skip
        rows = (reason == why)[codes]
        if rows.any() and (why == "nonexistent_local_time" or held is None):
            raise InputError(f"{where}: {int(rows.sum())} local times that a DST change in {zone} {does}, e.g. "
                             f"{cells[rows][:3].tolist()}; {fix}{extra}")  # fmt: skip
    out = (reason == "out_of_range")[codes]
    if out.any():
        raise InputError(f"{where}: {int(out.sum())} stamps out of range, e.g. {cells[out][:3].tolist()}; "
                         f"{EPOCH_RANGE}")  # fmt: skip
    ns = np.array([NOT_PLACED if isinstance(u, str) else u for u in utc], dtype=np.int64)[codes]
    repeated = np.flatnonzero((reason == "ambiguous_local_time")[codes])
    if repeated.size:
        assert held is not None and tz is not None  # refused above otherwise
        wall = np.array([read[c][0] for c in codes[repeated].tolist()], dtype=np.int64)
        rep, out = repeated_rows(repeated, wall, tz)
        if out.any():
            raise InputError(f"{where}: {int(out.sum())} stamps out of range, e.g. "
                             f"{cells[repeated][out][:3].tolist()}; {EPOCH_RANGE}")  # fmt: skip
        held.append(rep)
    return ns


def place_repeated_rows(turbines: np.ndarray, ts: np.ndarray, held: list[Repeated], values: np.ndarray) -> None:
    """A whole table's rows in file order, stamps from `parse_timestamps` with `held`: the rows at repeated local
    times get their instants in `ts` by their turbine's row order (`runtime.repeated_hour`, one chunk: replay's
    reading), NOT_PLACED where that order does not place them."""
    if held:
        hours = RepeatedHours()
        hours.take(turbines, ts, held[0], values)
        ts[held[0].rows] = hours.place()


def column_numbers(col: pd.Series, decimal: str) -> tuple[np.ndarray, int]:
    """A column's values and its count of non-numeric cells: a numeric column (Parquet) as it is, text cells by
    `runtime.cells.parse_numbers` with the export's `decimal` mark, the rule replay applies (a missing cell reads
    as an empty one). A float32
    column is read through each value's shortest decimal form (4.45, not 4.449999809): the number its CSV export
    and a telemetry payload write, so training sees what replay and the edge read (about 0.3 us per cell)."""
    if pd.api.types.is_float_dtype(col) and col.dtype.itemsize == 4:
        return col.to_numpy(dtype=np.float32, na_value=np.nan).astype(str).astype(np.float64), 0
    if pd.api.types.is_numeric_dtype(col):
        return col.to_numpy(dtype=np.float64, na_value=np.nan), 0
    return parse_numbers(col.fillna("").astype(str).to_numpy(dtype=object), decimal)


def _text_cells(col: pd.Series, values: np.ndarray, count: int, channel: str, decimal: str) -> str:
    """The first of a channel's `count` non-numeric cells (for the summary: 'NaN' is a gap, '12.5' under decimal
    ',' a misread), after the refusals replay gives too: a column of text and not one number (`no_numbers`), and a
    column of numbers holding a number written with the other decimal mark (`wrong_decimal`)."""
    text = [str(c) for c in col.to_numpy(dtype=object)[np.isnan(values) & col.notna().to_numpy()]]
    example = first_text(text, decimal) or ""
    if not np.isfinite(values).any():
        raise no_numbers(str(col.name), channel, count, example, "map the channel to a numeric column in "
                         "data.columns", "data.csv.decimal")  # fmt: skip
    other = other_decimal(text, decimal)
    if other is not None:
        raise wrong_decimal(str(col.name), channel, other, decimal, "data.csv.decimal")
    return example


def load_raw_table(data: DataCfg) -> RawTable:
    """Read every file of `data.paths.raw_dir`, map columns to channels, parse stamps and values."""
    ident = data.identifiers
    channels = tuple(data.columns)
    pattern = ident.turbine_id_from_file
    id_col = _FILE_ID if pattern else ident.turbine_id_col  # with a pattern, the file name's id fills a column
    source_cols = ([] if pattern else [id_col]) + [ident.time_col] + [data.columns[c] for c in channels]
    if data.rul.enabled:
        source_cols.append(data.rul.column)
    kinds = {"csv": CSV_KINDS, "parquet": PARQUET_KINDS, "auto": CSV_KINDS + PARQUET_KINDS}[data.format]
    try:
        files = table_files(Path(data.paths.raw_dir), kinds)
    except InputError as e:
        raise InputError(f"data.paths.raw_dir: {e}") from e
    dialect = csv_dialect(data)
    file_ids = [file_turbine_id(f, pattern, "data.identifiers.turbine_id_from_file") for f in files] if pattern else []
    frames = [_read(f, list(dict.fromkeys(source_cols)), dialect) for f in files]
    for frame, tid in zip(frames, file_ids):
        frame[_FILE_ID] = tid
    df = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
    ids = df[id_col]
    if ids.isna().any():
        raise InputError(f"{int(ids.isna().sum())} rows have no turbine id in column {id_col!r}")
    held: list[Repeated] = []
    ts = parse_timestamps(df[ident.time_col], ident.naive_timezone, f"column {ident.time_col!r}", ident.time_format,
                          "data.identifiers", held=held)  # fmt: skip
    values = np.empty((len(df), len(channels)), dtype=np.float64)
    non_numeric: dict[str, int] = {}
    examples: dict[str, str] = {}
    for j, c in enumerate(channels):
        values[:, j], non_numeric[c] = column_numbers(df[data.columns[c]], dialect.decimal)
        if non_numeric[c]:
            examples[c] = _text_cells(df[data.columns[c]], values[:, j], non_numeric[c], c, dialect.decimal)
    values[~np.isfinite(values)] = np.nan
    rul = None
    if data.rul.enabled:
        rul, bad = column_numbers(df[data.rul.column], dialect.decimal)
        if bad:
            raise InputError(f"target column {data.rul.column!r} (data.rul.column) holds {bad} non-numeric cells")
        rul[~np.isfinite(rul)] = np.nan
    place_repeated_rows(ids.astype(str).to_numpy(dtype=object), ts, held, values)
    placed = ts != NOT_PLACED  # the rows replay leaves out too: their cells were judged above, as replay judges them
    out = df[ident.time_col][~placed].astype(str).str.strip()
    dropped = [f"{i} {c}" for i, c in zip(ids[~placed].astype(str), out)]
    return RawTable(
        turbine_ids=ids[placed].astype(str).to_numpy(dtype=object),
        ts_ns=ts[placed],
        values=values[placed],
        channels=channels,
        non_numeric=non_numeric,
        text_examples=examples,
        files=[str(f) for f in files],
        rul=None if rul is None else rul[placed],
        repeated_hour_dropped=dropped,
    )
