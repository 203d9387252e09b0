"""NASA C-MAPSS turbofan files -> the raw-table format `scada-prepare` reads (engines as turbines, cycles as steps).

Input (`../shared/data/nasa_cmapss`, see its PROVENANCE.md): `train_FD00x.txt[.gz]`, `test_FD00x.txt[.gz]`
(26 space-separated numbers per row: unit, cycle, 3 operational settings, 21 sensors) and `RUL_FD00x.txt` (true
RUL after each test unit's last cycle, line i = unit i).

Output in `out_dir`:
* `cmapss.csv`: one row per unit and cycle. `turbine_id` = `train_001`, `test_001`, ...; `timestamp` = EPOCH +
  cycle * 10 min (cycles have no wall-clock time; mapping them to 10-min steps lets the SCADA pipeline bin them
  one cycle per step, `data.sampling.dt_minutes: 10`); `cycle`; `setting_1..3`; `s1..s21`; `rul`, the true
  remaining useful life in cycles: last cycle - cycle for a training unit (run to failure), and
  RUL_FD00x + last cycle - cycle for a test unit (stopped before failure).
* `labels.csv` (`turbine_id,start,end,fault`): one `near_failure` interval per unit whose true RUL drops below
  NEAR_FAILURE_RUL (30) cycles: a training unit's last 30 cycles, a test unit's cycles from the first with RUL < 30
  (none when it stopped earlier). The interval [stamp(c0) - 10 min, stamp(c_last)) covers exactly the steps
  of cycles c0..c_last under the step rule (t - dt, t] of `trainer.data.windowing.label_timeline`.
* `README.txt`: what was converted and how.

Refused (InputError): a missing file, a row that is not 26 numbers, a unit whose cycles are not 1, 2, ..., n, a RUL
file whose length is not the number of test units, an unknown subset.
"""

from __future__ import annotations

import gzip
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from scada_tcn.runtime.errors import InputError

__all__ = ["CYCLE_MINUTES", "EPOCH", "NEAR_FAILURE_RUL", "SENSORS", "SETTINGS", "SUBSETS", "convert", "write_cmapss"]

SUBSETS = ("FD001", "FD002", "FD003", "FD004")
SETTINGS = tuple(f"setting_{i}" for i in range(1, 4))
SENSORS = tuple(f"s{i}" for i in range(1, 22))
EPOCH = pd.Timestamp("2000-01-01T00:00:00+00:00")
CYCLE_MINUTES = 10
NEAR_FAILURE_RUL = 30
FAULT = "near_failure"


def _find(src: Path, name: str) -> Path:
    for p in (src / name, src / f"{name}.gz"):
        if p.is_file():
            return p
    raise InputError(f"{src / name}[.gz] not found: point --src at the nasa_cmapss folder")


def _read_rows(path: Path) -> np.ndarray:
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rt") as f:
        rows = [line.split() for line in f if line.strip()]
    bad = [i + 1 for i, r in enumerate(rows) if len(r) != 2 + len(SETTINGS) + len(SENSORS)]
    if bad:
        raise InputError(f"{path}: lines {bad[:5]} do not hold 26 numbers (unit, cycle, 3 settings, 21 sensors)")
    return np.asarray(rows, dtype=np.float64)


def _stamp(cycles: np.ndarray) -> pd.DatetimeIndex:
    return EPOCH + pd.to_timedelta(cycles * CYCLE_MINUTES, unit="min")


def _units(a: np.ndarray, path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Unit ids (sorted) and each row's last cycle of its unit; checks cycles run 1..n per unit."""
    unit, cycle = a[:, 0].astype(np.int64), a[:, 1].astype(np.int64)
    order = np.lexsort((cycle, unit))
    if not np.array_equal(order, np.arange(len(a))):
        raise InputError(f"{path}: rows are not sorted by unit and cycle")
    ids, first, counts = np.unique(unit, return_index=True, return_counts=True)
    expected = np.concatenate([np.arange(1, n + 1) for n in counts])
    if not np.array_equal(cycle, expected):
        raise InputError(f"{path}: some unit's cycles are not 1, 2, ..., n")
    return ids, np.repeat(counts, counts)


def _frame(a: np.ndarray, prefix: str, rul: np.ndarray) -> pd.DataFrame:
    unit, cycle = a[:, 0].astype(np.int64), a[:, 1].astype(np.int64)
    df = pd.DataFrame(
        {
            "turbine_id": [f"{prefix}_{u:03d}" for u in unit],
            "timestamp": _stamp(cycle).strftime("%Y-%m-%dT%H:%M:%S+00:00"),
            "cycle": cycle,
        }
    )
    for j, name in enumerate(SETTINGS + SENSORS):
        df[name] = a[:, 2 + j]
    df["rul"] = rul.astype(np.int64)
    return df


def _labels(df: pd.DataFrame) -> pd.DataFrame:
    """One near_failure interval per unit whose RUL falls below NEAR_FAILURE_RUL."""
    near = df[df["rul"] < NEAR_FAILURE_RUL]
    g = near.groupby("turbine_id", sort=True)["cycle"].agg(["min", "max"])
    dt = pd.Timedelta(minutes=CYCLE_MINUTES)
    fmt = "%Y-%m-%dT%H:%M:%S+00:00"
    return pd.DataFrame(
        {
            "turbine_id": g.index.to_numpy(),
            "start": (_stamp(g["min"].to_numpy()) - dt).strftime(fmt),
            "end": _stamp(g["max"].to_numpy()).strftime(fmt),
            "fault": FAULT,
        }
    )


def convert(src_dir: str | Path, subset: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(table, labels) of one subset: train units then test units, rows by unit and cycle."""
    if subset not in SUBSETS:
        raise InputError(f"unknown C-MAPSS subset {subset!r}; choose one of {list(SUBSETS)}")
    src = Path(src_dir)
    paths = {k: _find(src, f"{k}_{subset}.txt") for k in ("train", "test", "RUL")}
    train, test = _read_rows(paths["train"]), _read_rows(paths["test"])
    _, train_last = _units(train, paths["train"])
    test_ids, test_last = _units(test, paths["test"])
    rul_after = np.loadtxt(paths["RUL"], dtype=np.float64, ndmin=1)
    if len(rul_after) != len(test_ids) or not np.array_equal(test_ids, np.arange(1, len(test_ids) + 1)):
        raise InputError(f"{paths['RUL']}: {len(rul_after)} values for {len(test_ids)} test units numbered 1..n")
    cyc_tr, cyc_te = train[:, 1], test[:, 1]
    table = pd.concat(
        [
            _frame(train, "train", train_last - cyc_tr),
            _frame(test, "test", rul_after[test[:, 0].astype(np.int64) - 1] + test_last - cyc_te),
        ],
        ignore_index=True,
    )
    return table, _labels(table)


def write_cmapss(src_dir: str | Path, subset: str, out_dir: str | Path) -> dict[str, Any]:
    """Convert one subset and write cmapss.csv, labels.csv and README.txt to `out_dir`; returns a summary."""
    table, labels = convert(src_dir, subset)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "cmapss.csv", index=False)
    labels.to_csv(out / "labels.csv", index=False)
    is_train = table["turbine_id"].str.startswith("train_")
    summary = {
        "subset": subset,
        "rows": int(len(table)),
        "train_units": int(table.loc[is_train, "turbine_id"].nunique()),
        "test_units": int(table.loc[~is_train, "turbine_id"].nunique()),
        "near_failure_intervals": int(len(labels)),
        "out_dir": str(out),
    }
    (out / "README.txt").write_text(
        f"NASA C-MAPSS {subset} converted by trainer/cmapss.py from {Path(src_dir).resolve()}\n"
        f"turbine_id: train_NNN / test_NNN (NASA unit NNN); timestamp: {EPOCH.isoformat()} + cycle * "
        f"{CYCLE_MINUTES} min (cycles mapped to 10-min steps, no wall-clock meaning)\n"
        "columns: cycle, setting_1..3, s1..s21 (NASA order), rul (true RUL in cycles; test units: RUL file value + "
        "last cycle - cycle)\n"
        f"labels.csv: '{FAULT}' over each unit's cycles with true RUL < {NEAR_FAILURE_RUL}\n"
        f"{summary}\n"
    )
    return summary
