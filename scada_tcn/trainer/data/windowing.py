"""Labels timelines, split assignment and the window index (spec D windowing), vectorised per turbine.

A window starting at position s has inputs [s, s+L) and forecast targets [s+L, s+L+K). Step stamps are bin
END times, so step t covers (t - dt, t]. A window belongs to a time split only when every step it touches,
targets included, lies inside that split's [start, end); windows straddling a boundary are dropped so no
split sees another's data. Label rules: `window_last` = label of the last input step; `window_any` = label
of the latest faulty input step (any fault in the window); `horizon_any` = label of the first faulty step
of the forecast horizon (a fault coming up).

Starts run 0, stride, 2 stride, ...; with `windowing.include_last` the turbine's last complete window (inputs
ending at step T-K-1) is indexed too when the stride skips it, so e.g. a RUL is scored at a unit's last cycle.
With `splits.method=turbine` the split lists hold turbine ids or fnmatch patterns (`train_??[!05]`); a turbine
matching two splits is refused (`turbine_split`), and so is a pattern matching no turbine
(`check_turbine_patterns`). With a RUL target (`data.rul`) each window stores `rul`, the target at its last
input step (NaN = none), and `has_rul`.
"""

from __future__ import annotations

from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path

import numpy as np
import pandas as pd

from scada_tcn.runtime.errors import InputError
from scada_tcn.runtime.windows import enough_present, sliding_present_fraction
from scada_tcn.trainer.config import DataCfg
from scada_tcn.trainer.config.checks import split_bound_ns
from scada_tcn.trainer.data.tables import parse_timestamps

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class LabelEvent:
    turbine_id: str
    start_ns: int
    end_ns: int
    class_idx: int


LabelRows = tuple[list[str], np.ndarray, np.ndarray, list[str]]  # turbines, start ns, end ns, faults


def label_rows(df: pd.DataFrame, naive_timezone: str | None, where: str,
               zone_key: str = "data.identifiers.naive_timezone") -> LabelRows:  # fmt: skip
    """A labels table's rows (turbine_id, start, end, fault) -> (turbines, start ns, end ns, faults): the one reading
    of a labels file, training's and the event scorer's. Stamps as `tables.parse_timestamps` reads them (local
    times in `naive_timezone`, the setting `zone_key`); refused (InputError, naming `where`): a missing column,
    an empty turbine id or fault, a row that ends before it starts."""
    need = ["turbine_id", "start", "end", "fault"]
    missing = [c for c in need if c not in df.columns]
    if missing:
        raise InputError(f"{where}: missing columns {missing}; expected {need}")
    empty = [c for c in ("turbine_id", "fault") if df[c].isna().any() or (df[c].astype(str).str.strip() == "").any()]
    if empty:
        raise InputError(f"{where}: empty cells in columns {empty}: every row names its turbine and fault")
    starts = parse_timestamps(df["start"], naive_timezone, f"{where} start", zone_key=zone_key)
    ends = parse_timestamps(df["end"], naive_timezone, f"{where} end", zone_key=zone_key)
    bad = np.flatnonzero(ends <= starts)
    if bad.size:
        raise InputError(f"{where}: rows {bad[:5].tolist()} end before they start")
    return df["turbine_id"].astype(str).tolist(), starts, ends, df["fault"].astype(str).tolist()


def load_label_events(path: str | Path, class_names: list[str], naive_timezone: str | None) -> list[LabelEvent]:
    """Read a labels CSV (turbine_id,start,end,fault; `label_rows`); every fault name must be a configured class."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"labels file {path} not found (data.paths.labels_file)")
    turbines, starts, ends, faults = label_rows(pd.read_csv(path, dtype=str), naive_timezone, str(path))
    unknown = sorted(set(faults) - set(class_names[1:]))
    if unknown:
        raise InputError(f"{path}: fault classes {unknown} are not in data.labels.class_names {class_names[1:]}")
    idx = {n: i for i, n in enumerate(class_names)}
    return [LabelEvent(t, int(a), int(b), idx[f]) for t, a, b, f in zip(turbines, starts, ends, faults, strict=True)]


def label_timeline(
    ts_ns: np.ndarray, dt_ns: int, events: list[LabelEvent], n_classes: int, multilabel: bool
) -> np.ndarray:
    """Per-step labels: (T,) class index (0 = normal) or (T, C) 0/1 for multilabel. Overlap rule: a step
    (t - dt, t] is labelled when it intersects the event interval [start, end)."""
    y = np.zeros((len(ts_ns), n_classes), np.uint8) if multilabel else np.zeros(len(ts_ns), np.int64)
    for ev in events:
        lo = np.searchsorted(ts_ns, ev.start_ns, side="right")  # first t > start
        hi = np.searchsorted(ts_ns, ev.end_ns + dt_ns, side="left")  # last t - dt < end
        if multilabel:
            y[lo:hi, ev.class_idx] = 1
        else:
            y[lo:hi] = ev.class_idx
    return y


def turbine_split(turbine_id: str, data: DataCfg) -> int:
    """Split of a turbine under splits.method=turbine: 0 train, 1 val, 2 test, -1 in no list.

    Entries are exact ids or fnmatch patterns (case-sensitive); a turbine matched by two splits is refused."""
    sp = data.splits
    hits = [
        k
        for k, name in enumerate(SPLITS)
        if any(fnmatchcase(turbine_id, p) for p in getattr(sp, f"{name}_turbines") or [])
    ]
    if len(hits) > 1:
        names = [f"data.splits.{SPLITS[k]}_turbines" for k in hits]
        raise InputError(f"turbine {turbine_id!r} matches {names}: a turbine may belong to one split only")
    return hits[0] if hits else -1


def check_turbine_patterns(turbine_ids: list[str], data: DataCfg) -> None:
    """Refuse split entries (ids or patterns) that match none of `turbine_ids`: most likely a typo."""
    sp = data.splits
    for name in SPLITS:
        dead = [p for p in getattr(sp, f"{name}_turbines") or [] if not any(fnmatchcase(t, p) for t in turbine_ids)]
        if dead:
            raise InputError(
                f"data.splits.{name}_turbines: {dead} match no turbine of the data ({len(turbine_ids)} turbines, "
                f"e.g. {sorted(turbine_ids)[:3]})"
            )


def step_splits(ts_ns: np.ndarray, turbine_id: str, data: DataCfg) -> np.ndarray:
    """Split index per step: 0 train, 1 val, 2 test, -1 none."""
    sp = data.splits
    if sp.method != "time":
        return np.full(len(ts_ns), turbine_split(turbine_id, data), np.int8)
    out = np.full(len(ts_ns), -1, np.int8)
    for k, name in enumerate(SPLITS):
        a, b = (split_bound_ns(f"data.splits.{name}_range", x) for x in getattr(sp, f"{name}_range"))
        out[(ts_ns >= a) & (ts_ns < b)] = k
    return out


def window_starts(T: int, L: int, K: int, stride: int, include_last: bool) -> np.ndarray:
    """Window starts 0, stride, ... of a timeline of T steps, plus the last complete one (T-L-K) if asked."""
    last = T - (L + K)
    starts = np.arange(0, max(last + 1, 0), stride, dtype=np.int64)
    if include_last and last >= 0 and starts[-1] != last:
        starts = np.append(starts, np.int64(last))
    return starts


def window_labels(y: np.ndarray, starts: np.ndarray, L: int, K: int, rule: str) -> np.ndarray:
    """Window labels from per-step labels (see module docstring)."""
    multilabel = y.ndim == 2
    faulty = y.any(axis=1) if multilabel else y > 0
    T = len(faulty)
    pos = np.arange(T)
    if rule == "window_last":
        return y[starts + L - 1]
    if rule == "window_any":
        if multilabel:
            c = np.vstack([np.zeros((1, y.shape[1]), np.int64), np.cumsum(y, axis=0, dtype=np.int64)])
            return (c[starts + L] - c[starts] > 0).astype(np.uint8)
        last = np.maximum.accumulate(np.where(faulty, pos, -1))[starts + L - 1]
        return np.where(last >= starts, y[np.maximum(last, 0)], 0)
    if rule == "horizon_any":
        if K <= 0:
            raise InputError("label_rule=horizon_any needs data.windowing.K > 0")
        if multilabel:
            c = np.vstack([np.zeros((1, y.shape[1]), np.int64), np.cumsum(y, axis=0, dtype=np.int64)])
            return (c[starts + L + K] - c[starts + L] > 0).astype(np.uint8)
        nxt = np.minimum.accumulate(np.where(faulty, pos, T)[::-1])[::-1][starts + L]
        return np.where(nxt < starts + L + K, y[np.minimum(nxt, T - 1)], 0)
    raise InputError(f"unknown label rule {rule!r}")


def build_window_index(
    turbine_id: str,
    ts_ns: np.ndarray,
    M_miss: np.ndarray,
    splits: np.ndarray,
    data: DataCfg,
    y: np.ndarray | None,
    rul: np.ndarray | None = None,
) -> pd.DataFrame:
    """One row per kept window: turbine_id, start, t_end (last input stamp), split, present_fraction, labels,
    and with a per-step target `rul` (T,) the columns rul (at the last input step, NaN = none) and has_rul."""
    w = data.windowing
    L, K, T = w.L, w.K, len(ts_ns)
    starts = window_starts(T, L, K, w.stride, w.include_last)
    present_frac = sliding_present_fraction(M_miss, starts, L)
    first_split, last_split = splits[starts], splits[starts + L + K - 1]
    # splits are contiguous in time per turbine, so equal first and last split means the window is inside it
    keep = (first_split >= 0) & (first_split == last_split) & enough_present(present_frac, w.min_present_fraction)
    if data.splits.method == "time":
        split_cum = [np.concatenate([[0], np.cumsum(splits == k)]) for k in range(len(SPLITS))]
        inside = np.zeros(len(starts), bool)
        for k in range(len(SPLITS)):
            inside |= (split_cum[k][starts + L + K] - split_cum[k][starts] == L + K) & (first_split == k)
        keep &= inside
    starts = starts[keep]
    out = {
        "turbine_id": np.full(len(starts), turbine_id, dtype=object),
        "start": starts,
        "t_end": ts_ns[starts + L - 1],
        "split": np.array(SPLITS, dtype=object)[splits[starts]] if len(starts) else np.array([], dtype=object),
        "present_fraction": present_frac[keep].astype(np.float32),
    }
    if y is not None:
        lab = window_labels(y, starts, L, K, data.labels.label_rule)
        if lab.ndim == 2:
            for j, name in enumerate(data.labels.class_names):
                out[f"y_{name}"] = lab[:, j]
        else:
            out["y"] = lab.astype(np.int64)
        out["has_label"] = np.ones(len(starts), bool)
    if rul is not None:
        r = np.asarray(rul, np.float64)[starts + L - 1]
        out["rul"] = r
        out["has_rul"] = np.isfinite(r)
    return pd.DataFrame(out)
