"""`scada-inject`: put the simulator's labelled faults into a real SCADA export, reproducibly.

For judging detection on data without fault labels (La Haute Borne): one turbine's rows in a period (default:
the config's test range) receive each fault kind of `trainer.sources.faults` in turn, one per equal slot of the
period, centred in its slot, lasting `hours` (capped at half the slot). The injectors work on canonical
channels; `data.columns` maps them to and from the export's own columns, so every other column and every other
row is written back untouched. Output: the whole table with the injected turbine and `labels.csv` (turbine_id,
start, end, fault), which `scada-evaluate --labels` reads. The table keeps the input's format: CSV (gzipped when
the input was, written as data.csv says: its separator, its decimal mark in the injected cells, its preamble
lines copied as they were) or Parquet; a folder of per-turbine or per-period files gives a folder `scada` of the
same files, those without the turbine's rows copied byte for byte. The same seed gives the same faults.
"""

from __future__ import annotations

import gzip
import io
import shutil
from pathlib import Path
from typing import IO

import numpy as np
import pandas as pd

from scada_tcn.runtime.csv_table import (
    CSV_KINDS,
    PARQUET_KINDS,
    CsvDialect,
    lines_before_header,
    read_encoding,
    table_files,
)
from scada_tcn.runtime.errors import InputError
from scada_tcn.runtime.ids import file_turbine_id
from scada_tcn.runtime.repeated_hour import Repeated
from scada_tcn.trainer.config import DataCfg
from scada_tcn.trainer.config.checks import split_bound_ns
from scada_tcn.trainer.data.tables import column_numbers, csv_dialect, parse_timestamps, place_repeated_rows
from scada_tcn.trainer.sources.faults import FAULT_KINDS, inject_fault


def _test_bound(data: DataCfg, key: str, i: int) -> str:
    """The config's test range's start (i = 0) or end (1), for a `key` (--start / --end) not given."""
    rng = data.splits.test_range
    if rng is None:
        raise InputError(f"{key}: the config has no data.splits.test_range (splits.method={data.splits.method}) to "
                         "inject into by default: give --start and --end, ISO-8601 with a UTC offset")  # fmt: skip
    return rng[i]


def _create(path: Path, encoding: str) -> IO[str]:
    """A text file to write, gzipped when named .gz with a zero gzip time stamp, so that the same seed gives the
    same bytes."""
    if not path.name.lower().endswith(".gz"):
        return open(path, "w", newline="", encoding=encoding)
    return io.TextIOWrapper(gzip.GzipFile(path, "wb", mtime=0), encoding=encoding, newline="")


def _read_all(path: Path, dialect: CsvDialect) -> tuple[pd.DataFrame, str]:
    """One file of the export (CSV cells as text) and its preamble, the `dialect.skip_lines` lines before its
    header."""
    if path.name.lower().endswith((".parquet", ".pq")):
        return pd.read_parquet(path), ""
    df = pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""], sep=dialect.delimiter,
                     skiprows=dialect.skip_lines, encoding=read_encoding(dialect.encoding))  # fmt: skip
    return df, lines_before_header(path, dialect)


def schedule(start: pd.Timestamp, end: pd.Timestamp, kinds: tuple[str, ...], hours: float) -> list[tuple]:
    """(kind, start, end) per kind: equal slots of [start, end), each fault centred in its slot."""
    slot = (end - start) / len(kinds)
    dur = min(pd.Timedelta(hours=hours), slot / 2)
    out = []
    for i, kind in enumerate(kinds):
        mid = start + slot * (i + 0.5)
        a = (mid - dur / 2).floor("10min")
        out.append((kind, a, a + dur))
    return out


def _rows_of(path: Path, df: pd.DataFrame, data: DataCfg) -> np.ndarray:
    """The turbine id of each row of one file: its id column, or the id its name carries."""
    ident = data.identifiers
    if ident.turbine_id_from_file:  # a per-turbine file: its name says which
        return np.full(
            len(df), file_turbine_id(path, ident.turbine_id_from_file, "data.identifiers.turbine_id_from_file")
        )
    return df[ident.turbine_id_col].astype(str).to_numpy()


def _write(table: Path, df: pd.DataFrame, preamble: str, dialect: CsvDialect) -> None:
    """One file of the export, in its own format: Parquet, or CSV as data.csv says, its preamble first."""
    if table.name.lower().endswith((".parquet", ".pq")):
        df.to_parquet(table, index=False)
        return
    with _create(table, dialect.encoding) as fh:
        fh.write(preamble)
        df.to_csv(fh, index=False, sep=dialect.delimiter)


def _with_injected(df: pd.DataFrame, part: pd.DataFrame, rows: np.ndarray, canon: dict[str, str], decimal: str
                   ) -> pd.DataFrame:  # fmt: skip
    """`df` with the injected values of `part` (canonical channels of `rows`) in its own columns; a text cell keeps
    its export's form where the value did not change."""
    out_df = df.copy()
    for src_col, ch in canon.items():
        changed = part[ch].to_numpy()
        if pd.api.types.is_numeric_dtype(df[src_col]):
            out_df.loc[out_df.index[rows], src_col] = changed
        else:
            old = column_numbers(df[src_col].iloc[rows], decimal)[0]
            same = (old == changed) | (np.isnan(old) & np.isnan(changed))
            new = np.strings.replace(np.round(changed, 4).astype(str), ".", decimal)
            text = np.where(same, df[src_col].iloc[rows].to_numpy(dtype=object), new)
            out_df.loc[out_df.index[rows], src_col] = np.where(np.isnan(changed) & ~same, "", text)
    return out_df


def inject_table(
    data: DataCfg,
    turbine: str,
    out_dir: str | Path,
    seed: int = 0,
    hours: float = 72.0,
    start: str | None = None,
    end: str | None = None,
    kinds: tuple[str, ...] = FAULT_KINDS,
) -> dict[str, Path]:
    """Inject `kinds` into `turbine` of the export `data.paths.raw_dir` (a file, or a folder of them: the injected
    copy is then a folder `scada` of the same files, those without the turbine's rows copied as they are); write
    the table and labels.csv."""
    unknown = sorted(set(kinds) - set(FAULT_KINDS))
    if unknown:
        raise InputError(f"unknown fault kinds {unknown}; allowed {list(FAULT_KINDS)}")
    rng_start, rng_end = (pd.Timestamp(split_bound_ns(key, given or _test_bound(data, key, i)), tz="UTC")
                          for i, (key, given) in enumerate((("--start", start), ("--end", end))))  # fmt: skip
    src = Path(data.paths.raw_dir)
    kinds_of_files = {"csv": CSV_KINDS, "parquet": PARQUET_KINDS, "auto": CSV_KINDS + PARQUET_KINDS}[data.format]
    files = table_files(src, kinds_of_files)
    dialect = csv_dialect(data)
    ident = data.identifiers
    tables = [_read_all(f, dialect) for f in files]
    ids = [_rows_of(f, df, data) for f, (df, _) in zip(files, tables)]
    picks = [np.flatnonzero(i == turbine) for i in ids]
    if not any(len(r) for r in picks):
        found = sorted(set().union(*(set(i.tolist()) for i in ids)))
        raise InputError(f"turbine {turbine!r} not in {src}; turbines: {found}")
    canon = {src_col: ch for ch, src_col in data.columns.items()}
    mine = [k for k, rows in enumerate(picks) if len(rows)]  # the files holding the turbine's rows
    parts = [pd.DataFrame({ch: column_numbers(tables[k][0][col].iloc[picks[k]], dialect.decimal)[0]
                           for col, ch in canon.items()}) for k in mine]  # fmt: skip
    stamps = pd.concat([tables[k][0][ident.time_col].iloc[picks[k]] for k in mine], ignore_index=True)
    held: list[Repeated] = []  # the turbine's rows at repeated local times, placed as scada-prepare places them
    ts = parse_timestamps(stamps, ident.naive_timezone, f"column {ident.time_col!r}", ident.time_format,
                          "data.identifiers", held=held)  # fmt: skip
    part = pd.concat(parts, keys=mine)  # (file, row): each value goes back to its place
    place_repeated_rows(np.full(len(ts), turbine, dtype=object), ts, held, part.to_numpy())
    part["timestamp"] = pd.to_datetime(ts, utc=True)  # NOT_PLACED is NaT: a row no order places gets no fault
    rng_end = min(rng_end, part["timestamp"].max())
    if not rng_start < rng_end:
        raise InputError(f"empty injection period {rng_start} -> {rng_end} for turbine {turbine}")
    plan = schedule(rng_start, rng_end, kinds, hours)
    rng = np.random.default_rng(seed)
    for kind, a, b in plan:
        part = inject_fault(part, kind, a, b, rng)
    out = Path(out_dir)
    folder = out / "scada" if src.is_dir() else out  # labels.csv must not join the folder's tables
    folder.mkdir(parents=True, exist_ok=True)
    for k, (f, (df, preamble), rows) in enumerate(zip(files, tables, picks)):
        if k not in mine:  # only in a folder: a file of other turbines, as it was
            shutil.copyfile(f, folder / f.name)
            continue
        name = f.name if f.name.lower().endswith((".csv", ".csv.gz", ".parquet", ".pq")) else "scada.csv"
        _write(folder / name, _with_injected(df, part.loc[k], rows, canon, dialect.decimal), preamble, dialect)
    table = folder if src.is_dir() else folder / name
    labels = pd.DataFrame(
        [(turbine, a.isoformat(), b.isoformat(), k) for k, a, b in plan],
        columns=["turbine_id", "start", "end", "fault"],
    )
    labels.to_csv(out / "labels.csv", index=False)
    return {"scada": table, "labels": out / "labels.csv"}
