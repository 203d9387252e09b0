"""A physically plausible wind-farm SCADA simulator, deterministic from its seed.

`simulate(n_turbines, days, seed, start)` returns `(scada, labels)`:

* `scada`: one row per turbine and 10-min interval, columns `COLUMNS`; `timestamp` is tz-aware UTC and marks the
  END of its interval; channels are float64 in the units of `README_TEXT`; `status` is an int code
  (0 running, 1 curtailed, 2 stopped, 3 maintenance). Rows are sorted by turbine, then time (stable).
* `labels`: one row per injected fault, columns `turbine_id, start, end, fault`; the fault covers the rows with
  start < timestamp <= end. Faults never overlap on one turbine.

With `dirty=True` (the default) the table carries the dirt of a real export: dropped rows, multi-hour outages,
NaN cells, exact duplicate rows, duplicate stamps with slightly different values, stamps a few seconds off the
grid, channels frozen for hours and single absurd values. `write_synthetic` adds a few non-numeric cells
("-", "#N/A") to the CSV only. `dirty=False, faults=False` gives the clean physics.

Every random draw comes from a stream keyed by (seed, turbine, purpose), so turbine i is the same whatever
`n_turbines` is, switching faults or dirt off leaves the other streams untouched, and one seed gives
byte-identical files. The physics is vectorised over time: first-order lags are exact block-wise recurrences
(`lag1`); the only per-step Python loop is the yaw deadband (~10 ms per turbine-year).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv

from scada_tcn.trainer.sources.faults import (
    CUT_IN,
    CUT_OUT,
    FEATHER_PITCH,
    GEAR_RATIO,
    IDLE_PITCH,
    IDLE_RPM,
    RATED_KW,
    RATED_RPM,
    RESTART_WIND,
    air_density_ratio,
    as_utc,
    inject_fault,
    operating_point,
    schedule_faults,
)

CHANNELS = (
    "wind_speed",
    "wind_dir",
    "nacelle_dir",
    "power",
    "rotor_speed",
    "gen_speed",
    "pitch",
    "ambient_temp",
    "nacelle_temp",
    "gearbox_oil_temp",
    "gearbox_bearing_temp",
    "gen_bearing_temp",
)
COLUMNS = ("turbine_id", "timestamp", *CHANNELS, "status")
RUNNING, CURTAILED, STOPPED, MAINTENANCE = 0, 1, 2, 3
STEP_S = 600
STEPS_PER_DAY = 144
STEPS_PER_YEAR = 365 * STEPS_PER_DAY
WIND_SCALE = 4.6  # m/s per unit of the weather vector; sets the annual mean wind (~6 m/s, capacity factor ~0.2)
FORMATS = ("csv", "parquet")

# Dirt: channels a stuck logger repeats (temperatures are left to the labelled sensor_freeze fault) and the
# absurd values a spike takes.
DIRT_FREEZE_CHANNELS = ("wind_speed", "wind_dir", "nacelle_dir", "pitch", "ambient_temp")
SPIKES = {
    "wind_speed": (-50.0, 99.9),
    "wind_dir": (-1.0, 720.0),
    "nacelle_dir": (-999.0, 999.0),
    "power": (-9999.0, 65535.0),
    "rotor_speed": (-99.0, 999.0),
    "gen_speed": (-999.0, 65535.0),
    "pitch": (-180.0, 999.0),
    "ambient_temp": (-273.15, 1000.0),
    "nacelle_temp": (-273.15, 1000.0),
    "gearbox_oil_temp": (1000.0, 3276.7),
    "gearbox_bearing_temp": (1000.0, 3276.7),
    "gen_bearing_temp": (1000.0, 3276.7),
}
TEXT_CELLS = ("-", "#N/A")
_FARM, _TURBINE, _CSV = 0, 1, 2  # first element of a stream key
_PHYSICS, _OPERATIONS, _FAULTS, _DIRT = 0, 1, 2, 3


def lag1(x: np.ndarray, tau: float, y0: float) -> np.ndarray:
    """First-order lag y[t] = a*y[t-1] + (1-a)*x[t], a = exp(-1/tau) (tau in steps), y[-1] = y0. Exact.

    Inside a block of L steps the zero-state response is a scaled cumulative sum; a**-L <= e**18 keeps it
    accurate to ~1e-12. Block ends are chained by a loop over the blocks only.
    """
    x = np.asarray(x, dtype=float)
    n, a = x.size, math.exp(-1.0 / tau)
    block = int(max(1, min(n, 18.0 * tau)))
    nb = -(-n // block)
    xb = np.zeros(nb * block)
    xb[:n] = x
    j = np.arange(block)
    z = (1.0 - a) * a**j * np.cumsum(xb.reshape(nb, block) * a ** (-j), axis=1)  # (nb, block)
    carry, c, a_block = [], float(y0), a**block
    for end in z[:, -1].tolist():
        carry.append(c)
        c = end + a_block * c
    return (z + np.asarray(carry)[:, None] * a ** (j + 1)).ravel()[:n]


def _ar1(rng: np.random.Generator, n: int, tau: float) -> np.ndarray:
    """Stationary unit-variance AR(1) with correlation time tau steps."""
    a = math.exp(-1.0 / tau)
    return lag1(rng.standard_normal(n) * math.sqrt(1 - a * a) / (1 - a), tau, rng.standard_normal())


def _events(rng, n, rate_per_year, min_steps, max_steps, t_s=None, hour=None) -> list[tuple[int, int]]:
    """max(1, Poisson(rate * years)) intervals [s, e) with log-uniform lengths; starting near `hour` if given."""
    count = max(1, int(rng.poisson(rate_per_year * n / STEPS_PER_YEAR)))
    starts = rng.integers(0, n, count)
    lengths = np.exp(rng.uniform(math.log(min_steps), math.log(max_steps), count)).astype(int)
    if hour is not None:  # move to the next `hour`:00-`hour+2`:00 of the day (work starts in the morning)
        step_of_day = (t_s[starts] % 86400) // STEP_S
        starts = starts + (6 * hour - step_of_day) % STEPS_PER_DAY + rng.integers(0, 12, count)
    return [(int(s), int(min(n, s + length))) for s, length in zip(starts, lengths) if s < n]


def _latch(on: np.ndarray, off: np.ndarray) -> np.ndarray:
    """A state set where `on`, cleared where `off`, held in between (starts cleared): a hysteresis."""
    last = np.maximum.accumulate(np.where(on | off, np.arange(on.size), -1))
    return (last >= 0) & on[np.maximum(last, 0)]


def _yaw(target: np.ndarray, deadband: float) -> np.ndarray:
    """Nacelle position (unwrapped deg): stays put until the target leaves the deadband, then realigns."""
    out, y = [], float(target[0])
    for x in target.tolist():
        if abs(x - y) > deadband:
            y = x
        out.append(y)
    return np.asarray(out)


def _farm(t_s: np.ndarray, rng: np.random.Generator) -> SimpleNamespace:
    """Farm-wide weather (wind vector, ambient temperature) and grid curtailment."""
    n = t_s.size
    day, hour = t_s / 86400.0, (t_s % 86400) / 3600.0
    winter = np.cos(2 * np.pi * (day - 14.0) / 365.2425)  # +1 mid-January, -1 mid-July
    # Weather-scale wind vector (multi-day AR) around a south-westerly prevailing flow: its length is
    # Rayleigh/Rice, i.e. Weibull-like with k ~ 2; storms and gusts modulate it multiplicatively.
    east = _ar1(rng, n, 2.5 * STEPS_PER_DAY) + 0.4 * math.sin(math.radians(225.0))
    north = _ar1(rng, n, 2.5 * STEPS_PER_DAY) + 0.4 * math.cos(math.radians(225.0))
    storm = np.exp(0.25 * _ar1(rng, n, 4 * STEPS_PER_DAY))
    gust = np.exp(0.08 * _ar1(rng, n, 12))
    diurnal = 1.0 + 0.05 * np.cos(2 * np.pi * (hour - 1.0) / 24)  # hub-height wind peaks at night
    speed = WIND_SCALE * np.hypot(east, north) * (1.0 + 0.15 * winter) * diurnal * storm * gust
    direction = np.degrees(np.unwrap(np.arctan2(east, north))) + 10.0 * _ar1(rng, n, 18)
    ambient = (
        10.5
        - 8.0 * winter
        + (3.0 - 1.5 * winter) * np.cos(2 * np.pi * (hour - 15.0) / 24)
        + 3.0 * _ar1(rng, n, 3 * STEPS_PER_DAY)
        + 0.6 * _ar1(rng, n, 18)
    )
    cap = np.ones(n)
    for s, e in _events(rng, n, 10.0, 6, 48):
        cap[s:e] = rng.uniform(0.3, 0.8)
    return SimpleNamespace(speed=speed, direction=direction, ambient=ambient, cap=cap)


def _turbine(index: int, farm: SimpleNamespace, t_s: np.ndarray, seed: int) -> dict[str, np.ndarray]:
    """Clean channels (unrounded) and status of one turbine."""
    rng = _stream(seed, _TURBINE, index, _PHYSICS)
    n = t_s.size
    noise = lambda sd: sd * rng.standard_normal(n)  # noqa: E731
    # Wind at this rotor: a site factor, a wake sector behind a neighbour, local turbulence.
    site, wake_from, wake_depth = rng.uniform(0.94, 1.03), rng.uniform(0, 360), rng.uniform(0.0, 0.12)
    direction = farm.direction + rng.normal(0.0, 2.0) + (3.0 + 20.0 / (farm.speed + 1.0)) * _ar1(rng, n, 3)
    wake = 1.0 - wake_depth * np.clip(np.cos(np.radians(direction - wake_from)), 0, None) ** 8
    v = farm.speed * site * wake * np.exp(0.05 * _ar1(rng, n, 3))
    ti = 0.05 + 0.9 / (v + 6.0) + 0.02 * np.abs(rng.standard_normal(n))
    nacelle = _yaw(lag1(direction, 1.0, direction[0]), rng.uniform(5.0, 9.0))
    ambient = farm.ambient + rng.normal(0.0, 0.3) + noise(0.1)

    ops = _stream(seed, _TURBINE, index, _OPERATIONS)
    status = np.where(farm.cap < 1.0, CURTAILED, RUNNING)
    for s, e in _events(ops, n, 8.0, 2, 144):
        status[s:e] = STOPPED
    for s, e in _events(ops, n, 3.0, 24, 180, t_s, hour=7):
        status[s:e] = MAINTENANCE
    cap = np.where(status == CURTAILED, farm.cap, 1.0)
    power, rotor, pitch = operating_point(v, ti, air_density_ratio(ambient), cap)
    parked = _latch(v >= CUT_OUT, v < RESTART_WIND) | (status >= STOPPED)
    idle = ~parked & (v < CUT_IN)
    power = np.where(idle | parked, 0.0, np.clip(power * (1.0 + noise(0.01)), 0.0, RATED_KW * cap))
    rotor = np.where(idle, IDLE_RPM * v / CUT_IN + noise(0.1), rotor + noise(0.05))
    rotor = np.abs(np.where(parked, noise(0.2), rotor))
    pitch = np.where(idle, IDLE_PITCH + noise(1.0), pitch + noise(0.1))
    pitch = np.where(parked, FEATHER_PITCH + noise(0.5), pitch)

    # Thermal inertia: each component relaxes towards a target set by ambient, load and speed.
    load, spin = power / RATED_KW, rotor / RATED_RPM
    gain, off = rng.uniform(0.9, 1.1, 4), rng.normal(0.0, 1.5, 4)
    lagged = lambda target, tau: lag1(target, tau, target[0])  # noqa: E731
    nacelle_t = lagged(ambient + 7.0 + off[0] + 4.0 * gain[0] * load, 12)
    oil = lagged(np.minimum(ambient + 20.0 + off[1] + gain[1] * (38.0 * load + 6.0 * spin), 60.0 + 6.0 * load), 18)
    gb_bearing = lagged(oil + 4.0 + off[2] + gain[2] * (10.0 * load + 3.0 * spin), 6)
    gen_bearing = lagged(nacelle_t + 8.0 + off[3] + gain[3] * (8.0 * load + 3.0 * spin), 9)
    return {
        "wind_speed": v,
        "wind_dir": np.mod(direction + noise(1.5), 360.0),
        "nacelle_dir": np.mod(nacelle + noise(0.2), 360.0),
        "power": power,
        "rotor_speed": rotor,
        "gen_speed": GEAR_RATIO * rotor * (1.0 + noise(0.002)),
        "pitch": pitch,
        "ambient_temp": ambient,
        "nacelle_temp": nacelle_t + noise(0.1),
        "gearbox_oil_temp": oil + noise(0.1),
        "gearbox_bearing_temp": gb_bearing + noise(0.1),
        "gen_bearing_temp": gen_bearing + noise(0.1),
        "status": status,
    }


def _add_dirt(cols: dict[str, np.ndarray], t_s: np.ndarray, rng: np.random.Generator):
    """One turbine's rows as a real export delivers them; returns new (cols, t_s), time-sorted (stable)."""
    cols = {k: v.copy() for k, v in cols.items()}
    n = t_s.size
    count = lambda rate: max(1, int(rng.poisson(rate * n / STEPS_PER_YEAR)))  # noqa: E731
    for _ in range(count(4.0)):  # a channel stuck at one value for 1-6 h
        name = DIRT_FREEZE_CHANNELS[int(rng.integers(len(DIRT_FREEZE_CHANNELS)))]
        s = int(rng.integers(n))
        cols[name][s : s + int(rng.integers(6, 37))] = cols[name][s]
    for _ in range(count(12.0)):  # single absurd values
        name = CHANNELS[int(rng.integers(len(CHANNELS)))]
        cols[name][int(rng.integers(n))] = SPIKES[name][int(rng.integers(2))]
    holes = rng.random((n, len(CHANNELS))) < 0.001
    for j, name in enumerate(CHANNELS):
        cols[name][holes[:, j]] = np.nan
    keep = rng.random(n) >= 0.003  # dropped samples
    for _ in range(count(3.0)):  # outages of 2-48 h
        s = int(rng.integers(n))
        keep[s : s + int(rng.integers(12, 289))] = False
    t_s = t_s.copy()
    jitter = rng.choice(n, size=min(n, count(40.0)), replace=False)
    t_s[jitter] += rng.integers(1, 31, jitter.size) * rng.choice([-1, 1], jitter.size)
    kept = np.flatnonzero(keep)
    exact, near = rng.choice(kept, count(20.0)), rng.choice(kept, count(20.0))
    rows = np.concatenate([kept, exact, near])
    out = {k: v[rows] for k, v in cols.items()}
    m = slice(kept.size + exact.size, None)  # same stamp, slightly different values
    for name in CHANNELS:
        x = out[name][m]
        out[name][m] = np.round(x * (1.0 + rng.normal(0.0, 0.003, x.size)) + rng.normal(0.0, 0.02, x.size), 2)
    out["wind_dir"][m] %= 360.0
    out["nacelle_dir"][m] %= 360.0
    order = np.argsort(t_s[rows], kind="stable")
    return {k: v[order] for k, v in out.items()}, t_s[rows][order]


def _stream(seed: int, *key: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=key))


def _round(cols: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """SCADA export precision: two decimals (an angle that rounds up to 360 wraps to 0)."""
    out = {k: (np.round(v, 2) if k in CHANNELS else v) for k, v in cols.items()}
    for name in ("wind_dir", "nacelle_dir"):
        out[name] = np.mod(out[name], 360.0)
    return out


def _frame(tid, t_s: np.ndarray, cols: dict[str, np.ndarray]) -> pd.DataFrame:
    """The public table from epoch seconds and channel arrays; `tid` is one id or one per row."""
    ts = pd.DatetimeIndex((t_s * 1_000_000_000).astype("datetime64[ns]")).tz_localize("UTC")
    return pd.DataFrame(
        {
            "turbine_id": pd.array(np.broadcast_to(np.asarray(tid, dtype=object), t_s.shape), dtype="str"),
            "timestamp": ts,
            **{c: cols[c].astype(float) for c in CHANNELS},
            "status": cols["status"].astype("int64"),
        }
    )


def simulate(
    n_turbines: int = 10,
    days: float = 365,
    seed: int = 0,
    start="2024-01-01",
    *,
    faults: bool = True,
    dirty: bool = True,
    fault_rate: float = 6.0,
    progress: Callable[[int, int, str], None] | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Simulate a farm; returns (scada, labels) as described in the module docstring.

    Parameters
    ----------
    n_turbines, days : farm size and length (days * 144 steps per turbine before dirt).
    seed : everything random derives from it.
    start : first interval's start (UTC if naive); the first row is stamped start + 10 min.
    faults, dirty : inject labelled faults / the dirt of a real export.
    fault_rate : mean faults per turbine-year.
    progress : called as progress(done, n_turbines, turbine_id) after each turbine.
    """
    if int(n_turbines) != n_turbines or n_turbines < 1:
        raise ValueError(f"n_turbines must be a positive integer, got {n_turbines!r}")
    n = int(round(days * STEPS_PER_DAY))
    if n < 1:
        raise ValueError(f"days must cover at least one 10-min step, got {days!r}")
    if int(seed) != seed or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    try:
        t0 = as_utc(start)
    except (TypeError, ValueError) as err:
        raise ValueError(f"start: cannot read {start!r} as a timestamp; use ISO-8601 such as 2024-01-01") from err
    if t0 != t0.floor(f"{STEP_S}s"):
        raise ValueError(f"start must lie on the 10-min grid (e.g. 2024-01-01 or 2024-01-01T06:10), got {t0}")
    t_s = t0.as_unit("ns").value // 1_000_000_000 + STEP_S * np.arange(1, n + 1, dtype=np.int64)
    farm = _farm(t_s.astype(float), _stream(seed, _FARM))
    width = max(2, len(str(n_turbines)))
    parts, labels = [], []
    for i in range(n_turbines):
        tid = f"WT{i + 1:0{width}d}"
        cols = _turbine(i, farm, t_s, seed)
        if faults:
            frame, rng = _frame(tid, t_s, cols), _stream(seed, _TURBINE, i, _FAULTS)
            for kind, k0, k1 in schedule_faults(n, rng, fault_rate):
                start_ts, end_ts = t0 + pd.Timedelta(seconds=STEP_S * k0), t0 + pd.Timedelta(seconds=STEP_S * k1)
                frame = inject_fault(frame, kind, start_ts, end_ts, rng)
                labels.append((tid, start_ts, end_ts, kind))
            cols = {c: frame[c].to_numpy() for c in (*CHANNELS, "status")}
        cols, ts = _round(cols), t_s
        if dirty:
            cols, ts = _add_dirt(cols, t_s, _stream(seed, _TURBINE, i, _DIRT))
        parts.append((tid, ts, cols))
        if progress is not None:
            progress(i + 1, n_turbines, tid)
    return _assemble(parts), _labels_frame(labels)


def _assemble(parts: list[tuple[str, np.ndarray, dict[str, np.ndarray]]]) -> pd.DataFrame:
    tids = np.repeat(np.array([p[0] for p in parts], dtype=object), [p[1].size for p in parts])
    cols = {c: np.concatenate([p[2][c] for p in parts]) for c in (*CHANNELS, "status")}
    return _frame(tids, np.concatenate([p[1] for p in parts]), cols)


def _labels_frame(labels: list) -> pd.DataFrame:
    frame = pd.DataFrame(labels, columns=["turbine_id", "start", "end", "fault"])
    for c in ("start", "end"):
        frame[c] = pd.to_datetime(frame[c], utc=True).astype("datetime64[ns, UTC]")
    return frame.astype({"turbine_id": "str", "fault": "str"})


def _iso(ts: pd.Series) -> np.ndarray:
    """ISO-8601 with an explicit UTC offset, to the second (a numpy unicode array)."""
    secs = ts.to_numpy("datetime64[ns]").astype("datetime64[s]")
    return np.strings.add(np.datetime_as_string(secs, unit="s"), "+00:00")


def write_synthetic(
    out_dir,
    n_turbines: int = 10,
    days: float = 365,
    seed: int = 0,
    start="2024-01-01",
    fmt: str = "csv",
    *,
    fault_rate: float = 6.0,
    progress: Callable[[int, int, str], None] | None = None,
) -> dict[str, Path]:
    """Simulate and write DIR/scada.csv (or .parquet), DIR/labels.csv and DIR/README.txt; returns the paths."""
    if fmt not in FORMATS:
        raise ValueError(f"fmt must be one of {list(FORMATS)}, got {fmt!r}")
    scada, labels = simulate(n_turbines, days, seed, start, fault_rate=fault_rate, progress=progress)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"scada": out / f"scada.{fmt}", "labels": out / "labels.csv", "readme": out / "README.txt"}
    if fmt == "parquet":
        scada.to_parquet(paths["scada"], index=False)
    else:
        _to_csv_with_text_cells(scada, paths["scada"], _stream(seed, _CSV))
    labels.assign(start=_iso(labels["start"]), end=_iso(labels["end"])).to_csv(
        paths["labels"], index=False, lineterminator="\n"
    )
    settings = dict(
        n_turbines=n_turbines, days=days, seed=seed, start=as_utc(start).isoformat(), fmt=fmt, fault_rate=fault_rate
    )
    paths["readme"].write_text(README_TEXT.format(**settings, rows=len(scada), faults=len(labels)), encoding="utf-8")
    return paths


def _to_csv_with_text_cells(scada: pd.DataFrame, path: Path, rng: np.random.Generator) -> None:
    """Write the CSV with a few numeric cells replaced by the strings loggers emit for 'no value'.

    pyarrow formats the floats (shortest round-trip repr, NaN as an empty cell): ~5x faster than `to_csv`.
    """
    n = len(scada)
    k = min(n, 3 + n // 250_000)
    rows = np.sort(rng.choice(n, size=k, replace=False))  # replace_with_mask fills in row order
    names = np.asarray(CHANNELS)[rng.integers(0, len(CHANNELS), k)]
    texts = np.asarray(TEXT_CELLS)[rng.integers(0, len(TEXT_CELLS), k)]
    columns = {"turbine_id": pa.array(scada["turbine_id"]), "timestamp": pa.array(_iso(scada["timestamp"]))}
    for name in CHANNELS:
        col = pc.cast(pa.array(scada[name].to_numpy(), from_pandas=True), pa.string())  # NaN -> null
        if name in names:
            mask = np.zeros(n, dtype=bool)
            mask[rows[names == name]] = True
            col = pc.replace_with_mask(col, pa.array(mask), pa.array(texts[names == name]))
        columns[name] = col
    columns["status"] = pa.array(scada["status"].to_numpy())
    with open(path, "wb") as f:
        f.write((",".join(COLUMNS) + "\n").encode())
        pcsv.write_csv(pa.table(columns), f, pcsv.WriteOptions(include_header=False, quoting_style="none"))


README_TEXT = """Synthetic wind-farm SCADA (scada-tcn simulator)
==============================================
settings: turbines={n_turbines} days={days} seed={seed} start={start} format={fmt} fault_rate={fault_rate}/turbine-year
rows: {rows}   labelled faults: {faults}

scada.{fmt}: one row per turbine and 10-min interval (then the dirt below), sorted by turbine then time.
  turbine_id            WT01, WT02, ...
  timestamp             ISO-8601 UTC ("2024-01-01T00:10:00+00:00"); marks the END of the 10-min interval
  wind_speed            m/s, hub height (10-min mean)
  wind_dir              deg in [0, 360), direction the wind comes from
  nacelle_dir           deg in [0, 360); yaw error = wind_dir - nacelle_dir, usually a few deg
  power                 kW, active power; rated 2050 kW (cut-in 3.5, rated ~12.5, cut-out 25 m/s)
  rotor_speed           rpm, 9-15 when producing, ~2 idling below cut-in, ~0 when stopped
  gen_speed             rpm, gearbox ratio 100 x rotor_speed
  pitch                 deg, ~0 below rated, rising above rated; 45 idling, ~90 feathered (stopped)
  ambient_temp          C, seasonal + diurnal + weather
  nacelle_temp          C  \\
  gearbox_oil_temp      C   | first-order lags driven by ambient, load and speed
  gearbox_bearing_temp  C   |
  gen_bearing_temp      C  /
  status                0 running (includes idling below cut-in and high-wind cut-out), 1 curtailed
                        (power capped by the grid operator), 2 stopped / fault stop, 3 maintenance

labels.csv: turbine_id,start,end,fault (ISO-8601 UTC). A fault covers the rows with start < timestamp <= end;
faults on one turbine never overlap.
  gearbox_overheat      gearbox oil and bearing temperatures drift up over days, more under load
  yaw_misalignment      nacelle 10-25 deg off the wind; power falls ~cos^3 below rated
  pitch_stuck           pitch frozen at one small angle; power above rated in strong wind, below it in light wind
  sensor_freeze         one component temperature repeats one value while the others move
  underperformance      power 5-15 % below the curve

Dirt (unlabelled, as in a real export): dropped rows, 2-48 h outages (all rows of a turbine missing),
single NaN cells, exact duplicate rows, duplicate timestamps with slightly different values, timestamps
1-30 s off the 10-min grid, wind/direction/pitch/ambient channels frozen for 1-6 h, single absurd values
(1000 C, -50 m/s, 65535 ...), and in the CSV only a few numeric cells holding "-" or "#N/A".
"""
