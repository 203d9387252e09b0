"""`scada-runtime replay`: the daemon's pipeline fed from a raw SCADA table instead of the broker.

Contract
--------
* Input: a CSV file, plain or gzipped (`.gz`), or a folder of them (per-turbine exports), read by
  `csv_table.csv_columns` as scada-prepare reads CSV (a Parquet file is refused with the command that converts
  it, since the edge install carries no Parquet reader), with one row per turbine and timestamp, in the training
  table's format. Columns map to the bundle's channels through runtime.yaml's `mapping` section (`columns`,
  `turbine_id_col` or `turbine_id_from_file`, `time_col`, `time_format`, `naive_timezone`, and `csv`: delimiter,
  decimal mark, lines before the header); each one it leaves unset is the training table's
  (`Bundle.table_format`: the column mapping, data.identifiers and data.csv that scada-export recorded), so a
  table in the training format replays with no mapping given. Stamps: ISO-8601 with a UTC offset, or epoch
  seconds, or all in the strptime format `time_format`, or all epoch milliseconds (`time_format: epoch_ms`)
  (`formatted_stamps_ns`, scada-prepare's reading too); naive stamps need a zone. Value cells are read by
  `cells.parse_numbers`, as scada-prepare reads them: non-numeric cells and +-inf become missing (non-numeric
  ones counted per channel).
* The table is parsed in chunks of `CHUNK_ROWS` rows, then fed to the same `Engine` as `run` in time order,
  about `FEED_STEPS` steps of every turbine at a time, and at least `FEED_MIN_ROWS` rows (`Engine.ingest_many`,
  one vectorised call per turbine, is the same as feeding the rows one by one), bins closing as later samples
  arrive, then the closed steps are scored and written (a flush's records wait in memory until written, so they
  stay few; fewer rows per feed would cost more per-call overhead than they save). The order is the table's
  stable sort by stamp, whatever the file's order (by time, by turbine, or per-turbine exports concatenated): rows
  of one stamp keep file order, the order scada-prepare's dedupe sees, so every turbine's step meets its peers'
  same step, as offline. Memory stays bounded for a year of a farm: the parsed values wait in an unnamed temporary
  file next to `out` (8 bytes per channel and row; memory holds 12 bytes per row, 20 when the file is not sorted
  by time). At the end each turbine's bins are closed through its own last sample, like scada-prepare's grid. No
  wall clock is involved. `progress(counts)` comes once before the first chunk (`read_as`: how the table is read,
  `TableFormat.describe`), after every chunk read (`read`) and every `CHUNK_ROWS` rows scored (`rows`).
* Output: `out` gets exactly the score-topic payloads `run` would publish (warm-up records included), one JSON
  object per line, in closing order; `alerts_out`, when given, the alert transitions. Both are written to new
  files beside them that take their names when the replay ends (`_output`): a refused or interrupted replay
  leaves no partial output, and an output of an earlier replay stays as it was. Returns a summary dict: the
  counts, the non-numeric cells per channel and the steps each report-by-exception channel took a held value in
  (`held_steps`).
Refused (InputError): a missing file or column, a file that is not UTF-8 CSV (or not gzip when named .gz), a row
with more cells than the header (`csv_table`), unparseable or naive stamps without a zone, a channel whose cells
are text and not one a number (decimal commas: `cells.no_numbers`, scada-prepare's refusal, given once the whole
table is read and before a record is written), an empty table, an output that cannot be written, no room for the
temporary file.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import math
import os
import secrets
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO, NamedTuple

import numpy as np

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
from scada_tcn.runtime.csv_table import CSV_KINDS, PARQUET_KINDS, CsvDialect, csv_columns, dialect_problem, table_files
from scada_tcn.runtime.daemon_config import ISO_STAMPS, MappingCfg
from scada_tcn.runtime.engine import Engine
from scada_tcn.runtime.errors import InputError
from scada_tcn.runtime.ids import file_turbine_id, turbine_id_problem
from scada_tcn.runtime.repeated_hour import NOT_PLACED, Repeated, RepeatedHours, repeated_rows
from scada_tcn.runtime.stamps import STANDARD_TIME, aware_ns, iso_ns, local_ns, wall_utc_ns
from scada_tcn.runtime.telemetry import (
    EPOCH_FLOOR,
    EPOCH_MILLIS,
    EPOCH_RANGE,
    MAX_EPOCH_S,
    TABLE_EPOCH_FLOOR_S,
    epoch_ms_hint,
    epoch_ns,
    in_epoch_range,
    parse_timestamp_ns,
    table_epoch_ns,
    time_format_source,
)

__all__ = [
    "CHUNK_ROWS", "FEED_MIN_ROWS", "FEED_STEPS", "Text", "in_time_order", "replay", "replay_file", "table_chunks"
]  # fmt: skip

CHUNK_ROWS = 50_000  # rows parsed per chunk
FEED_STEPS = 10  # rows per turbine fed to the engine at a time, then flushed: a flush's records stay few
FEED_MIN_ROWS = 2_000  # and at least this many (a small farm's 10 steps are too few rows per vectorised call)
_WRITE_BUFFER = 1 << 20  # bytes: the score lines go out in large writes
NOT_PLACED_FIX = (
    "a turbine's rows of that hour are placed when they come together and in time order, hold both "
    "occurrences (the clock stepping back once) and lie between the turbine's rows before and after "
    "in time; export the stamps with a UTC offset, or in UTC, to keep them"
)


class Text(NamedTuple):
    """A channel's non-numeric cells in a chunk: its column, their count, the first of them, and the first that is
    a number written with the other decimal mark ("" if none: `cells.other_decimal`)."""

    column: str
    count: int
    example: str
    other: str = ""


def _read_chunks(
    path: Path, columns: Sequence[str], rows: int, dialect: CsvDialect, id_pattern: str | None
) -> Iterator[tuple[str | None, dict[str, list[str]]]]:
    """The table's `columns` in chunks of at most `rows` rows (the turbine id `id_pattern` finds in its file's name,
    or None without one; column -> list of cells): a CSV file, or a folder's CSV files one after the other
    (`csv_table`, the reader scada-prepare uses for CSV). Every file's name is checked before a file is read."""
    files = table_files(path, CSV_KINDS + PARQUET_KINDS)
    parquet = [f for f in files if f.name.lower().endswith(PARQUET_KINDS)]
    if parquet:  # the edge install carries no Parquet reader (pyarrow)
        f = parquet[0]
        csv_path = f.with_suffix(".csv")
        more = f" ({len(parquet)} Parquet files: give replay a folder of CSV files only)" if path.is_dir() else ""
        raise InputError(
            f"{f}: the edge runtime replays CSV only{more}; convert the table where pandas is installed: "
            f"python -c \"import pandas as pd; pd.read_parquet('{f}').to_csv('{csv_path}', "
            'index=False)"'
        )
    key = "the turbine-id pattern (mapping.turbine_id_from_file; unset, the training table's)"
    ids = [file_turbine_id(f, id_pattern, key) for f in files] if id_pattern else [None] * len(files)
    for f, tid in zip(files, ids):
        for chunk in csv_columns(f, columns, rows, "runtime.yaml's mapping (columns, turbine_id_col, time_col; unset, "
                                 "the training table's, which the bundle records)", dialect):  # fmt: skip
            yield tid, chunk


def _timestamp(cell: str, tz: Any) -> tuple[int | str, str]:
    """A stamp cell -> (ns UTC, or the reason it is refused; its form: "epoch", "offset" or "naive"), as
    scada-prepare reads it: a number (`cells.is_number`) is epoch seconds, anything else ISO-8601 by the one
    grammar (`stamps.iso_ns`), a stamp without an offset in `tz` (refused without one)."""
    s = cell.strip()
    if is_number(s):
        x = float(s)
        ns = "out_of_range" if math.isfinite(x) and abs(x) > MAX_EPOCH_S else _in_range(parse_timestamp_ns(x))
        return ("epoch_before_1990" if isinstance(ns, int) and ns < TABLE_EPOCH_FLOOR_S * 10**9 else ns), "epoch"
    parsed = iso_ns(s)
    if parsed is None:
        return "bad_timestamp", "offset"
    return _in_range(wall_utc_ns(*parsed, tz)), ("offset" if parsed[1] is not None else "naive")


def _in_range(ns: int | str) -> int | str:
    """A parsed stamp, or "out_of_range" outside `in_epoch_range` (int64 ns end in 2262; the daemon's clock checks
    refuse such stamps, a table has no clock)."""
    return "out_of_range" if isinstance(ns, int) and not in_epoch_range(ns) else ns


def _one_form(forms: dict[str, str], where: str) -> None:
    if len(forms) > 1:
        raise InputError(f"{where}: stamps of different forms ({forms}); export every stamp one way: ISO-8601 with a "
                         "UTC offset, epoch seconds, or local times with mapping.naive_timezone")  # fmt: skip


def _formatted(cell: str, fmt: str, tz: Any) -> tuple[int | str, str]:
    """A stamp cell written in the strptime format `fmt` -> (ns UTC, or the reason it is refused; "format"): with
    an offset (%z) as it says, else a local time in `tz` (refused without one), as `_timestamp` reads one."""
    try:
        t = datetime.strptime(cell.strip(), fmt)
    except ValueError:
        return "bad_timestamp", "format"
    if t.tzinfo is not None:
        return _in_range(aware_ns(t)), "format"
    return ("naive_timestamp" if tz is None else _in_range(local_ns(t, tz))), "format"


def formatted_stamps_ns(cells: Sequence[str], fmt: str, zone: str | None, where: str, keys: str,
                        held: list[Repeated] | None = None) -> np.ndarray:  # fmt: skip
    """Stamp cells written in the strptime format `fmt` (a table's time_format), local times in `zone` unless the
    format has %z, or epoch milliseconds (`fmt` EPOCH_MILLIS) -> int64 ns UTC: the one reading of such stamps,
    scada-prepare's and replay's. Refused as `_stamps` refuses (`keys`: the section of the settings to name,
    "data.identifiers" or "mapping"); with `held`, a local time the autumn change repeats is NOT_PLACED and
    its `Repeated` appended there, for the table's row order to place (`repeated_hour`)."""
    from zoneinfo import ZoneInfo

    return _stamps(list(cells), None if zone is None else ZoneInfo(zone), {}, where, zone, fmt, keys, held)


def _wall(cell: str, fmt: str | None) -> int:
    """The wall-clock ns (read as UTC) of a local stamp cell already read once by `_timestamp` or `_formatted`."""
    s = cell.strip()
    return iso_ns(s)[0] if fmt is None else aware_ns(datetime.strptime(s, fmt).replace(tzinfo=UTC))


def _repeated(cells: list[str], parsed: list[tuple[int | str, str]], tz: Any, fmt: str | None) -> Repeated:
    """The rows whose local time a DST change repeats (`repeated_hour.repeated_rows`); a row whose instants lie
    outside the epoch range is marked "out_of_range" in `parsed` instead."""
    rows = np.array([i for i, (t, _) in enumerate(parsed) if t == "ambiguous_local_time"], dtype=np.int64)
    walls = {c: _wall(c, fmt) for c in dict.fromkeys(cells[i] for i in rows.tolist())}
    rep, out = repeated_rows(rows, np.array([walls[cells[i]] for i in rows.tolist()], dtype=np.int64), tz)
    for i in rows[out].tolist():
        parsed[i] = ("out_of_range", parsed[i][1])
    return Repeated(*(a[~out] for a in rep))


def _stamps(cells: list[str], tz: Any, forms: dict[str, str], where: str, zone: str | None, fmt: str | None = None,
            keys: str = "mapping", held: list[Repeated] | None = None) -> np.ndarray:  # fmt: skip
    """A chunk's stamp cells -> int64 ns UTC. Refused (InputError): an unparseable stamp, a local time that a DST
    change skips, one it repeats unless `held` is given, and a second stamp form in one table (`forms`: each form
    seen so far -> an example, kept across chunks; scada-prepare demands one form per table too). With `held`, the
    rows at a repeated local time are NOT_PLACED in the result and their `Repeated` is appended to `held`: their
    instant is for the whole table's row order to tell (`repeated_hour`). A chunk of epoch seconds is
    parsed in one vectorised pass (the same numbers as cell by cell: `parse_numbers`, `epoch_ns`). With a strptime
    format `fmt` every stamp is read by it (`_formatted`), and only by it; with EPOCH_MILLIS every stamp is a
    number of milliseconds (`_millis`)."""
    if fmt == EPOCH_MILLIS:
        return _millis(cells, where, keys)
    if fmt is not None:
        read = {c: _formatted(c, fmt, tz) for c in dict.fromkeys(cells)}  # each distinct stamp once
        return _checked(cells, [read[c] for c in cells], where, zone, fmt, keys, tz, held)
    if cells and is_number(cells[0]):
        secs, not_numbers = parse_numbers(cells)
        ns = None if not_numbers else epoch_ns(secs)  # None too for an empty, infinite or out-of-range stamp
        if ns is not None and secs.min() >= TABLE_EPOCH_FLOOR_S:  # else read cell by cell, for the reasons
            forms.setdefault("epoch", cells[0])
            _one_form(forms, where)
            return ns
    read = {c: _timestamp(c, tz) for c in dict.fromkeys(cells)}  # each distinct stamp once: a farm's rows share them
    parsed = [read[c] for c in cells]
    for c, (t, form) in read.items():  # the forms of the stamps read (a repeated local time was), each first seen
        if form not in forms and (not isinstance(t, str) or t == "ambiguous_local_time"):
            forms[form] = c
    _one_form(forms, where)
    return _checked(cells, parsed, where, zone, fmt, keys, tz, held)


def _millis(cells: list[str], where: str, keys: str) -> np.ndarray:
    """Stamp cells of epoch milliseconds -> int64 ns UTC (`table_epoch_ns`), in one vectorised pass; a cell that is
    not a number is refused, as the range and the 1990 floor are (seconds read as milliseconds lie in 1970)."""
    ms, not_numbers = parse_numbers(cells)
    if not_numbers:
        bad = counted_text(cells, ms)
        raise InputError(f"{where}: {not_numbers} stamps are not numbers, e.g. {bad}; expected every stamp in epoch "
                         f"milliseconds ({time_format_source(keys)}: {EPOCH_MILLIS})")  # fmt: skip
    return table_epoch_ns(ms, where, 1000, keys)


def _checked(cells: list[str], parsed: list[tuple[int | str, str]], where: str, zone: str | None, fmt: str | None,
             keys: str, tz: Any = None, held: list[Repeated] | None = None) -> np.ndarray:  # fmt: skip
    """The parsed stamps as int64 ns, or an InputError naming the refused ones, their reasons and the fix. With
    `held`, the rows at local times a DST change repeats are NOT_PLACED and appended to it (`_stamps`)."""
    bad = [(t, c) for (t, _), c in zip(parsed, cells) if isinstance(t, str)]
    if held is not None and any(t == "ambiguous_local_time" for t, _ in bad):
        repeated = _repeated(cells, parsed, tz, fmt)
        held.append(repeated)
        for i in repeated.rows.tolist():
            parsed[i] = (NOT_PLACED, parsed[i][1])
        bad = [(t, c) for (t, _), c in zip(parsed, cells) if isinstance(t, str)]
    if bad:
        kinds = sorted({t for t, _ in bad})
        if {"ambiguous_local_time", "nonexistent_local_time"} & set(kinds):
            change = {"ambiguous_local_time": "repeats", "nonexistent_local_time": "skips"}
            does = " or ".join(change[k] for k in kinds if k in change)
            fix = (f"local times that a DST change in {zone} {does}: export the stamps with a UTC offset, "
                   f"or in UTC with {keys}.naive_timezone: UTC")  # fmt: skip
            fix += f"; {STANDARD_TIME}" if "nonexistent_local_time" in kinds else ""
        elif kinds == ["out_of_range"]:
            ms = fmt is None and all(is_number(c) for _, c in bad[:3])
            fix = EPOCH_RANGE + (epoch_ms_hint(keys) if ms else "")
        elif fmt is not None:
            fix = (f"expected every stamp written as {fmt!r} ({time_format_source(keys)})" + (f", local times with "
                   f"{keys}.naive_timezone" if "naive_timestamp" in kinds else ""))  # fmt: skip
        elif kinds == ["epoch_before_1990"]:
            fix = EPOCH_FLOOR
        else:
            fix = (
                "expected ISO-8601 with a UTC offset or epoch seconds (local times: set mapping.naive_timezone "
                "to the zone of the table's clocks, as scada-prepare's data.identifiers.naive_timezone; stamps of "
                "another form, such as day-first dates: set mapping.time_format to their strptime format)"
            )
        raise InputError(f"{where}: {len(bad)} bad timestamps ({kinds}), e.g. {[c for _, c in bad[:3]]}; {fix}")
    return np.array([t for t, _ in parsed], dtype=np.int64)


def _layout(mapping: MappingCfg, training: TableFormat) -> TableFormat:
    """The layout replay reads: runtime.yaml's `mapping`, each part it leaves unset (no `columns`, a null column,
    zone or CSV setting) the training table's. Refused: a separator and decimal mark that cannot go together."""
    zone = training.naive_timezone if mapping.naive_timezone is None else mapping.naive_timezone
    set_here = {k: v for k, v in dataclasses.asdict(mapping.csv).items() if v is not None}
    dialect = training.dialect._replace(**set_here, settings="mapping.csv")
    problem = dialect_problem(*dialect[:3], "mapping.csv (unset parts: the training table's, the bundle's table_csv)",
                              dialect.encoding)  # fmt: skip
    if problem:
        raise InputError(problem)
    id_col, pattern = training.turbine_id_col, training.turbine_id_from_file  # a column, or the file names
    if mapping.turbine_id_col is not None or mapping.turbine_id_from_file is not None:  # runtime.yaml sets one
        id_col, pattern = mapping.turbine_id_col, mapping.turbine_id_from_file
    fmt = training.time_format if mapping.time_format is None else mapping.time_format
    fmt = None if fmt == ISO_STAMPS else fmt  # runtime.yaml asks for ISO-8601 or epoch seconds
    return TableFormat(dict(mapping.columns) or dict(training.columns), id_col, mapping.time_col or
                       training.time_col, zone, dialect, pattern, fmt)  # fmt: skip


Chunk = tuple[list[str], np.ndarray, np.ndarray, dict[str, Text]]


@dataclasses.dataclass
class LeftOut:
    """The rows `table_chunks` left out: at local times the autumn DST change repeats, which their turbine's row
    order does not place (`repeated_hour`), as "<turbine> <stamp cell>", and per channel how many of their cells
    were numbers (their non-numeric cells are in the chunks' `Text` counts: every row read is judged)."""

    rows: list[str] = dataclasses.field(default_factory=list)
    numbers: np.ndarray | None = None


def table_chunks(path: str | Path, channels: Sequence[str], mapping: MappingCfg, training: TableFormat, rows: int,
                 left_out: LeftOut | None = None) -> Iterator[Chunk]:  # fmt: skip
    """Per chunk of at most `rows` rows of the table laid out as `_layout(mapping, training)` says: (turbine
    ids, ts_ns (n,) int64, values (n, C) float64, per channel with non-numeric cells their `Text`). Rows at local
    times the autumn DST change repeats are held until the table is read, then placed by each turbine's row order
    (`repeated_hour.RepeatedHours`, as scada-prepare places them) and yielded as one last chunk; a row that order
    does not place is left out and said in `left_out`, or refused when it is None."""
    p = Path(path)
    layout = _layout(mapping, training)
    colmap, id_col, time_col = layout.columns, layout.turbine_id_col, layout.time_col
    missing = [c for c in channels if c not in colmap]
    if missing:
        raise InputError(f"mapping.columns: no column for channels {missing}; the bundle needs {list(channels)}")
    tz = None
    if layout.naive_timezone is not None:
        from zoneinfo import ZoneInfo

        tz = ZoneInfo(layout.naive_timezone)
    pattern = layout.turbine_id_from_file
    cols = ([] if pattern else [id_col]) + [time_col] + [colmap[c] for c in channels]
    forms: dict[str, str] = {}  # each stamp form seen -> an example: one form per table, as scada-prepare demands
    decimal = layout.dialect.decimal
    hours = RepeatedHours()  # local times: the rows of repeated hours wait for the whole table's order
    cells: list[str] = []  # their stamp cells, in the order held
    where = f"{p}: column {time_col!r}"
    for tid, data in _read_chunks(p, cols, rows, layout.dialect, pattern):
        ids = data[id_col] if tid is None else [tid] * len(data[time_col])  # a per-turbine file: its name says which
        problems = sorted(filter(None, map(turbine_id_problem, set(ids))))  # the rule scada-prepare applies
        if problems:
            raise InputError(f"{p}: column {id_col!r}: {problems[0]} ({len(problems)} such ids)")
        repeated: list[Repeated] = []
        ts = _stamps(data[time_col], tz, forms, where, layout.naive_timezone, layout.time_format, held=repeated)
        values = np.empty((len(ids), len(channels)))
        text: dict[str, Text] = {}
        for j, c in enumerate(channels):
            column = data[colmap[c]]
            values[:, j], n = parse_numbers(column, decimal)
            if n:  # the first text cell is among the missing values: the rest need no second look
                missing_at = np.flatnonzero(np.isnan(values[:, j])).tolist()
                other = other_decimal((column[i] for i in missing_at), decimal) or ""
                text[c] = Text(colmap[c], n, first_text((column[i] for i in missing_at), decimal) or "", other)
        if tz is not None:
            hours.take(ids, ts, repeated[0] if repeated else None, values)
        if repeated:
            at = repeated[0].rows
            cells += [data[time_col][i] for i in at.tolist()]
            keep = np.ones(len(ids), dtype=bool)
            keep[at] = False
            ids, ts, values = [i for i, k in zip(ids, keep.tolist()) if k], ts[keep], values[keep]
        yield ids, ts, values, text
    if cells:
        yield _placed(hours, cells, where, layout.naive_timezone, left_out)


def _placed(hours: RepeatedHours, cells: list[str], where: str, zone: str | None, left_out: LeftOut | None) -> Chunk:
    """The held rows of every chunk (`table_chunks`), placed by their turbines' row order, as one chunk; those not
    placed said in `left_out`, or refused when it is None."""
    ts = hours.place()
    values = np.concatenate(hours.values)
    out = ts == NOT_PLACED
    if out.any():
        said = [f"{i} {c.strip()}" for i, c, o in zip(hours.turbines, cells, out.tolist()) if o]
        if left_out is None:
            raise InputError(
                f"{where}: {len(said)} rows at local times the DST change in {zone} repeats, which "
                f"their turbine's row order does not place, e.g. {said[:3]}: " + NOT_PLACED_FIX
            )
        left_out.rows += said
        left_out.numbers = np.isfinite(values[out]).sum(axis=0)
    keep = ~out
    return [i for i, k in zip(hours.turbines, keep.tolist()) if k], ts[keep], values[keep], {}


def in_time_order(
    chunks: Iterable[tuple[Sequence[str], np.ndarray, np.ndarray]],
    steps: int,
    spill_dir: str | Path,
    min_rows: int = FEED_MIN_ROWS,
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Parsed chunks (turbine ids, ts_ns (n,) int64, values (n, C)) in file order -> the same rows in stable time
    order (rows of one stamp keep file order), `steps` x the number of turbines at a time (about `steps` rows of
    each), at least `min_rows`. Every chunk is taken first: the values wait in an unnamed temporary file in
    `spill_dir` (gone when the generator ends, even on a crash), the stamps and turbine codes in memory. A file
    already sorted by time is read back in file order, without a sort."""
    names: dict[str, int] = {}
    stamps: list[np.ndarray] = []
    codes: list[np.ndarray] = []
    width = 0

    def cannot(e: OSError) -> InputError:
        return InputError(f"replay: cannot keep the parsed table in {spill_dir} ({e}); it needs 8 bytes per channel "
                          "and row there: free space, or write --out to a folder on another disk")  # fmt: skip

    try:
        spill = tempfile.TemporaryFile(dir=spill_dir, prefix=".scada-replay-")
    except OSError as e:
        raise cannot(e) from e
    with spill as fh:
        for ids, ts, values in chunks:
            uniq, inv = np.unique(np.asarray(ids, dtype=str), return_inverse=True)
            code = np.array([names.setdefault(u, len(names)) for u in uniq.tolist()], dtype=np.int32)
            codes.append(code[inv])
            stamps.append(np.asarray(ts, dtype=np.int64))
            width = values.shape[1]
            try:
                fh.write(np.ascontiguousarray(values, dtype=np.float64).tobytes())
            except OSError as e:
                raise cannot(e) from e
        if not stamps:
            return
        ts, code = np.concatenate(stamps), np.concatenate(codes)
        del stamps, codes
        fh.flush()
        values = np.memmap(fh, dtype=np.float64, mode="r", shape=(ts.size, width))
        order = None if bool((ts[1:] >= ts[:-1]).all()) else np.argsort(ts, kind="stable")
        table = np.array(list(names), dtype=str)  # code -> turbine id
        rows = max(steps * len(names), min_rows)
        for i in range(0, ts.size, rows):
            sel = slice(i, i + rows) if order is None else order[i : i + rows]
            yield table[code[sel]], ts[sel], np.array(values[sel])


@contextlib.contextmanager
def _few_collections() -> Iterator[None]:
    """For the length of a replay: what start-up loaded (bundle, sessions) is left out of the garbage collector's
    passes, and the young generation is collected every 50,000 allocations instead of 700 (a backfill makes a
    record's worth of short-lived containers per step; the default passes took ~10 % of its time). Restored after."""
    before = gc.get_threshold()
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, *before[1:])
    try:
        yield
    finally:
        gc.set_threshold(*before)
        gc.unfreeze()


@contextlib.contextmanager
def _output(path: str | Path, buffering: int) -> Iterator[BinaryIO]:
    """A file to write `path` through: a new file beside it that takes its name only when the block ends without
    an error, so a refused or interrupted replay leaves no partial output and an earlier output as it was. An
    existing path that is not a regular file (a pipe, /dev/stdout) is written in place. Refused (InputError): a
    folder that is not there or not writable, an existing output that is read-only. A symbolic link is written
    through, as open() would: its target is replaced."""
    path = Path(path).resolve() if Path(path).is_symlink() else Path(path)
    try:
        if path.exists() and not path.is_file():
            with open(path, "wb", buffering=buffering) as fh:
                yield fh
            return
        if path.exists() and not os.access(path, os.W_OK):
            raise PermissionError(13, "Permission denied (the existing file is read-only)", str(path))
        tmp = path.parent / f".{path.name}.{secrets.token_hex(6)}.partial"
        fh = open(tmp, "xb", buffering=buffering)  # the mode a plain open() gives the output
    except OSError as e:
        raise InputError(f"replay: cannot write the output: {e}") from e
    try:
        with fh:
            yield fh
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def replay(
    engine: Engine,
    path: str | Path,
    mapping: MappingCfg,
    out: str | Path,
    alerts_out: str | Path | None = None,
    progress: Callable[[dict[str, Any]], None] | None = None,
    chunk_rows: int = CHUNK_ROWS,
    feed_steps: int = FEED_STEPS,
    feed_min_rows: int = FEED_MIN_ROWS,
) -> dict[str, Any]:
    """Replay a table through `engine` (parsed `chunk_rows` rows at a time, fed `feed_steps` rows per turbine at a
    time, at least `feed_min_rows`); write score payloads (JSON lines) to `out`.

    `progress(counts)` is called after every chunk parsed and every `chunk_rows` rows scored. Returns a summary."""
    spec = engine.bundle.spec
    layout = _layout(mapping, engine.bundle.table_format)
    counts: dict[str, Any] = {"read_as": layout.describe(table_files(path, CSV_KINDS + PARQUET_KINDS)), "read": 0,
                              "rows": 0, "turbines": 0, "scores": 0, "warmup": 0, "alerts": 0}  # fmt: skip
    if progress is not None:  # before the first chunk: how the table is read (`read_as`)
        progress(counts)
    non_numeric = dict.fromkeys(spec.channels, 0)
    numbers = np.zeros(len(spec.channels), dtype=np.int64)  # cells read as numbers, per channel
    left_out = LeftOut()  # rows at a repeated local time that their turbine's row order does not place
    grace_ns = int(engine.fleet.grace_seconds * 1e9)
    dt_ns = engine.dt_ns

    def parsed() -> Iterator[tuple[list[str], np.ndarray, np.ndarray]]:
        text: dict[str, Text] = {}  # per channel, its first chunk's non-numeric cells
        other: dict[str, Text] = {}  # per channel, its first chunk with a number of the other decimal mark
        for ids, ts, values, bad in table_chunks(path, spec.channels, mapping, engine.bundle.table_format, chunk_rows,
                                                 left_out):  # fmt: skip
            for c, t in bad.items():
                non_numeric[c] += t.count
                text.setdefault(c, t)
                if t.other:
                    other.setdefault(c, t)
            numbers[:] += np.isfinite(values).sum(axis=0)
            counts["read"] += len(ids)
            if progress is not None:
                progress(counts)
            yield ids, ts, values
        counts["read"] += len(left_out.rows)
        counts["repeated_hour_dropped"] = len(left_out.rows)
        counts["repeated_hour_examples"] = left_out.rows[:5]
        if left_out.numbers is not None:  # their cells are judged as scada-prepare judges every row it read
            numbers[:] += left_out.numbers
        # the whole table is read before its first row is scored (`in_time_order`): a channel of text and not one
        # number is refused as scada-prepare refuses it, before a record is written
        decimal = layout.dialect.decimal
        for c, n in zip(spec.channels, numbers.tolist()):
            if n and c in other:  # scada-prepare's refusal of a column of numbers and cells of the other mark
                raise wrong_decimal(other[c].column, c, other[c].other, decimal, "mapping.csv.decimal")
            if non_numeric[c] and not n:
                raise no_numbers(text[c].column, c, non_numeric[c], text[c].example, "map the channel to a "
                                 "numeric column in runtime.yaml's mapping.columns", "mapping.csv.decimal")  # fmt: skip

    with contextlib.ExitStack() as stack:
        fh = stack.enter_context(_output(out, _WRITE_BUFFER))
        fa = stack.enter_context(_output(alerts_out, -1)) if alerts_out is not None else None

        def write(outputs: list) -> None:
            scores = [o for o in outputs if o.kind == "score"]
            if scores:
                fh.writelines(line for o in scores for line in (o.payload, b"\n"))
                warmup = sum(o.state == "warmup" for o in scores)
                counts["warmup"] += warmup
                counts["scores"] += len(scores) - warmup
            alerts = [o.payload for o in outputs if o.kind == "alert"]
            counts["alerts"] += len(alerts)
            if fa is not None:
                fa.writelines(line for p in alerts for line in (p, b"\n"))

        last_ns: dict[str, int] = {}
        reported = 0
        for names, stamps, values in in_time_order(parsed(), feed_steps, Path(out).parent, feed_min_rows):
            late = engine.ingest_many(names, stamps, values)
            if late:  # every turbine's rows come in time order: no bin can have closed before its sample
                raise RuntimeError(f"replay: {late} rows in time order were dropped as late (a bug: please report)")
            uniq, last = np.unique(names[::-1], return_index=True)  # each turbine's last row: its newest stamp
            last_ns.update(zip(uniq.tolist(), stamps[names.size - 1 - last].tolist()))
            write(engine.flush())
            counts["rows"] += names.size
            counts["turbines"] = len(last_ns)
            if progress is not None and counts["rows"] - reported >= chunk_rows:
                reported = counts["rows"]
                progress(counts)
        if progress is not None and counts["rows"] != reported:
            progress(counts)
        if not counts["rows"]:
            raise InputError(f"{path}: no rows")
        for tid, last in last_ns.items():  # each turbine's grid ends at its own last sample's bin
            end = -(-last // dt_ns) * dt_ns
            engine.fleet.close_turbine_until(tid, end + grace_ns)
        write(engine.flush(final=True))  # fleet-relative steps waiting for a turbine whose data ended go out too
    counts["non_numeric"] = non_numeric
    counts["held_steps"] = engine.fleet.take_held()  # report-by-exception holds
    counts["score_drift"] = engine.score_drift()
    return counts


def replay_file(
    bundle_dir: str | Path,
    input_path: str | Path,
    out: str | Path,
    cfg: Any = None,
    alerts_out: str | Path | None = None,
    progress: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Load the bundle and replay `input_path` with the settings of `cfg` (a RuntimeConfig; None = defaults)."""
    from scada_tcn.runtime.bundle import load_bundle
    from scada_tcn.runtime.daemon_config import daemon_config_from_dict
    from scada_tcn.runtime.stream import make_scorer

    cfg = cfg if cfg is not None else daemon_config_from_dict({})
    bundle = load_bundle(bundle_dir).with_time_weighted(cfg.mapping.time_weighted)
    scorer = make_scorer(bundle, cfg.compute.engine, cfg.compute.intra_op_threads, cfg.compute.inter_op_threads)
    engine = Engine(
        bundle,
        scorer,
        cfg.ingest.grace_s,
        max_turbines=10**6,
        max_batch=cfg.compute.max_batch,
        drift_window=cfg.health.drift_window,
    )
    with _few_collections():
        return replay(engine, input_path, cfg.mapping, out, alerts_out, progress)
