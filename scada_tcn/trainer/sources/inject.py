"""`scada-inject`: put the simulator's labelled faults into a real SCADA export, reproducibly.

For judging detection on data without fault labels (La Haute Borne): one turbine's rows in a period (default:
the config's test range) receive each fault kind of `trainer.sources.faults` in turn, one per equal slot of the
period, centred in its slot, lasting `hours` (capped at half the slot). The injectors work on canonical
channels; `data.columns` maps them to and from the export's own columns, so every other column and every other
row is written back untouched. Output: the whole table with the injected turbine (same format family as the
input: CSV, gzip-compressed when the input was, written as data.csv says: its separator, its decimal mark in the
injected cells, its preamble lines copied as they were) and `labels.csv` (turbine_id, start, end, fault), which
`scada-evaluate --labels` reads. The same seed gives the same faults.
"""

from __future__ import annotations

import gzip
import itertools
from pathlib import Path
from typing import IO

import numpy as np
import pandas as pd

from scada_tcn.runtime.cells import parse_numbers
from scada_tcn.runtime.csv_table import CsvDialect
from scada_tcn.runtime.errors import InputError
from scada_tcn.runtime.ids import file_turbine_id
from scada_tcn.trainer.config import DataCfg
from scada_tcn.trainer.data.tables import csv_dialect, parse_timestamps
from scada_tcn.trainer.sources.faults import FAULT_KINDS, inject_fault


def _open(path: Path, mode: str) -> IO[str]:
    """A text file, gzipped when named .gz."""
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    return opener(path, mode, newline="", encoding="utf-8")


def _read_all(path: Path, dialect: CsvDialect) -> tuple[pd.DataFrame, str]:
    """The export (CSV cells as text) and its preamble, the `dialect.skip_lines` lines before its header."""
    if path.is_dir():
        raise InputError(f"{path} is a folder: scada-inject takes one CSV/Parquet export (data.paths.raw_dir)")
    if path.name.lower().endswith((".parquet", ".pq")):
        return pd.read_parquet(path), ""
    with _open(path, "rt") as fh:
        preamble = "".join(itertools.islice(iter(fh.readline, ""), dialect.skip_lines))
    df = pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""], sep=dialect.delimiter,
                     skiprows=dialect.skip_lines, encoding="utf-8-sig")  # fmt: skip
    return df, preamble


def _numbers(col: pd.Series, decimal: str) -> np.ndarray:
    """A column's values: numeric as they are (Parquet), text cells by the rule scada-prepare reads them."""
    if pd.api.types.is_numeric_dtype(col):
        return col.to_numpy(dtype=np.float64, na_value=np.nan)
    return parse_numbers(col.fillna("").to_numpy(dtype=str), decimal)[0]


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
    """Inject `kinds` into `turbine` of the export `data.paths.raw_dir`; write the table and labels.csv."""
    unknown = sorted(set(kinds) - set(FAULT_KINDS))
    if unknown:
        raise InputError(f"unknown fault kinds {unknown}; allowed {list(FAULT_KINDS)}")
    src = Path(data.paths.raw_dir)
    dialect = csv_dialect(data)
    df, preamble = _read_all(src, dialect)
    ident = data.identifiers
    if ident.turbine_id_from_file:  # a per-turbine file: its name says which
        tid = file_turbine_id(src, ident.turbine_id_from_file, "data.identifiers.turbine_id_from_file")
        ids = pd.Series(tid, index=df.index)
    else:
        ids = df[ident.turbine_id_col].astype(str)
    if turbine not in set(ids):
        raise InputError(f"turbine {turbine!r} not in {src}; turbines: {sorted(set(ids))}")
    rows = np.flatnonzero(ids.to_numpy() == turbine)
    canon = {src_col: ch for ch, src_col in data.columns.items()}
    part = pd.DataFrame(
        {ch: _numbers(df[col].iloc[rows], dialect.decimal) for col, ch in canon.items()}, index=df.index[rows]
    )
    ts = parse_timestamps(df[ident.time_col].iloc[rows], ident.naive_timezone, f"column {ident.time_col!r}",
                          ident.time_format)  # fmt: skip
    part["timestamp"] = pd.to_datetime(ts, utc=True)
    rng_start = pd.Timestamp(start or data.splits.test_range[0]).tz_convert("UTC")
    rng_end = pd.Timestamp(end or data.splits.test_range[1]).tz_convert("UTC")
    rng_end = min(rng_end, part["timestamp"].max())
    if not rng_start < rng_end:
        raise InputError(f"empty injection period {rng_start} -> {rng_end} for turbine {turbine}")
    plan = schedule(rng_start, rng_end, kinds, hours)
    rng = np.random.default_rng(seed)
    for kind, a, b in plan:
        part = inject_fault(part, kind, a, b, rng)
    out_df = df.copy()
    for src_col, ch in canon.items():
        changed = part[ch].to_numpy()
        if pd.api.types.is_numeric_dtype(df[src_col]):
            out_df.loc[out_df.index[rows], src_col] = changed
        else:  # keep the export's text form where the value did not change
            old = _numbers(df[src_col].iloc[rows], dialect.decimal)
            same = (old == changed) | (np.isnan(old) & np.isnan(changed))
            new = np.strings.replace(np.round(changed, 4).astype(str), ".", dialect.decimal)
            text = np.where(same, df[src_col].iloc[rows].to_numpy(dtype=object), new)
            out_df.loc[out_df.index[rows], src_col] = np.where(np.isnan(changed) & ~same, "", text)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    name = src.name if src.name.lower().endswith((".csv", ".csv.gz", ".parquet", ".pq")) else "scada.csv"
    table = out / name
    if name.lower().endswith((".parquet", ".pq")):
        out_df.to_parquet(table, index=False)
    else:
        with _open(table, "wt") as fh:
            fh.write(preamble)
            out_df.to_csv(fh, index=False, sep=dialect.delimiter)
    labels = pd.DataFrame(
        [(turbine, a.isoformat(), b.isoformat(), k) for k, a, b in plan],
        columns=["turbine_id", "start", "end", "fault"],
    )
    labels.to_csv(out / "labels.csv", index=False)
    return {"scada": table, "labels": out / "labels.csv"}
