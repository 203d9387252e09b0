"""The fault catalogue: inject labelled turbine faults into a clean SCADA frame, simulated or real.

Frame contract: one turbine, one row per 10-min interval, a `timestamp` column (tz-aware, or ISO-8601 strings
with an offset) that marks the END of its interval, and the canonical channels (`wind_speed` m/s, `power` kW,
`pitch` deg, `rotor_speed` / `gen_speed` rpm, `nacelle_dir` deg, temperatures in C). A fault on
[start, end] touches exactly the rows with start < timestamp <= end: the intervals that lie inside it.
`inject_fault` returns a new frame; the input frame and every row outside the interval are left bit-for-bit
as they were. NaN cells stay NaN, so the injectors also run on real data with holes (e.g. La Haute Borne).

Some faults change how the rotor converts wind into power, so this module also holds the turbine's
steady-state operating curves (a 2.05 MW, 82 m machine, Senvion MM82-like); `trainer.sources.simulator` drives the
same curves, so a fault injected here is the same fault the simulator would have produced.

    gearbox_overheat   gearbox oil and bearing temperatures drift up over days, more under load
    yaw_misalignment   nacelle 10-25 deg off the wind; power falls ~cos^3 below rated
    pitch_stuck        pitch frozen at a small angle: power above rated in strong wind, below it in light wind
    sensor_freeze      one component temperature repeats its value while everything else moves
    underperformance   power 5-15 % below the curve (blade soiling/erosion, a derated converter)
"""

from __future__ import annotations

import numpy as np
import pandas as pd

FAULT_KINDS = ("gearbox_overheat", "yaw_misalignment", "pitch_stuck", "sensor_freeze", "underperformance")
FAULT_HOURS = {  # (shortest, longest) duration of each kind, hours; durations are drawn log-uniformly
    "gearbox_overheat": (48.0, 240.0),
    "yaw_misalignment": (12.0, 120.0),
    "pitch_stuck": (3.0, 48.0),
    "sensor_freeze": (12.0, 96.0),
    "underperformance": (24.0, 240.0),
}
FREEZE_CHANNELS = ("nacelle_temp", "gearbox_oil_temp", "gearbox_bearing_temp", "gen_bearing_temp")
_NEEDS = {
    "gearbox_overheat": ("power", "gearbox_oil_temp", "gearbox_bearing_temp"),
    "yaw_misalignment": ("wind_speed", "nacelle_dir", "power", "pitch", "rotor_speed", "gen_speed"),
    "pitch_stuck": ("wind_speed", "power", "pitch"),
    "sensor_freeze": (),
    "underperformance": ("power",),
}

# Turbine model. Instantaneous curves at wind u; `operating_point` averages them over a 10-min wind spread.
RATED_KW = 2050.0
CUT_IN, RATED_WIND, CUT_OUT, RESTART_WIND = 3.5, 12.5, 25.0, 22.0  # m/s; restart after a cut-out below 22
RATED_RPM, MIN_RPM, IDLE_RPM, RPM_KNEE_WIND = 15.0, 9.0, 2.0, 8.0  # rotor rpm; rated rpm reached at 8 m/s
GEAR_RATIO = 100.0
IDLE_PITCH, FEATHER_PITCH, PITCH_SCALE = 45.0, 90.0, 15.0  # deg
OVERLOAD = 1.2  # converter limit / rated: reached only when the pitch cannot shed power
TI_DEFAULT = 0.10
_Z, _W = np.polynomial.hermite_e.hermegauss(5)  # nodes/weights of a standard normal
_W = _W / _W.sum()


def aero_ratio(u: np.ndarray, rho: np.ndarray | float = 1.0) -> np.ndarray:
    """Aerodynamic power at fine pitch over rated power: cubic in wind, 0 below cut-in, 1 at the rated wind."""
    u = np.asarray(u, dtype=float)
    return rho * np.clip(u**3 - CUT_IN**3, 0.0, None) / (RATED_WIND**3 - CUT_IN**3)


def pitch_efficiency(theta: np.ndarray | float) -> np.ndarray:
    """Fraction of the aerodynamic power kept at pitch `theta` deg (1 at fine pitch)."""
    return np.exp(-((np.clip(theta, 0.0, None) / PITCH_SCALE) ** 1.5))


def pitch_to_hold(ratio: np.ndarray) -> np.ndarray:
    """The pitch (deg) that sheds aerodynamic power `ratio` (x rated) down to rated; 0 when ratio <= 1."""
    return PITCH_SCALE * np.log(np.maximum(ratio, 1.0)) ** (2.0 / 3.0)


def air_density_ratio(ambient_c: np.ndarray) -> np.ndarray:
    """rho / rho(15 C) at constant pressure; 1 where the temperature is unknown."""
    t = np.asarray(ambient_c, dtype=float)
    return np.where(np.isfinite(t), 288.15 / (np.nan_to_num(t) + 273.15), 1.0)


def operating_point(v, ti=TI_DEFAULT, rho=1.0, cap=1.0, stuck_pitch: float | None = None):
    """10-min means (power kW, rotor rpm, pitch deg) of a turbine producing at mean wind `v` (m/s).

    The instantaneous curves are averaged over wind v*(1 + ti*z), z ~ N(0, 1) (5-point Gauss-Hermite), which
    rounds the knee at rated as real 10-min data does. `cap` is a curtailment limit (fraction of rated) that the
    pitch holds; `stuck_pitch` replaces the pitch controller by a fixed angle. Cut-in, cut-out and stops are the
    caller's decisions: this is the producing branch only. All arguments broadcast to the shape of `v`.
    """
    v = np.asarray(v, dtype=float)
    ti, rho, cap = (np.broadcast_to(np.asarray(a, dtype=float), v.shape)[..., None] for a in (ti, rho, cap))
    u = np.clip(v[..., None] * (1.0 + ti * _Z), 0.0, None)  # (..., 5)
    x = aero_ratio(u, rho)
    if stuck_pitch is None:
        p, pitch = np.minimum(x, cap), pitch_to_hold(x / cap)
    else:
        p, pitch = np.minimum(x * pitch_efficiency(stuck_pitch), OVERLOAD), np.full_like(x, stuck_pitch)
    rpm = np.clip(RATED_RPM * u / RPM_KNEE_WIND, MIN_RPM, RATED_RPM)
    return RATED_KW * (p @ _W), rpm @ _W, pitch @ _W


def schedule_faults(n_steps: int, rng: np.random.Generator, rate_per_year: float) -> list[tuple[str, int, int]]:
    """Non-overlapping faults for one turbine as (kind, k0, k1): the fault covers 10-min steps k0 <= k < k1.

    Gaps between faults are 1 day plus an exponential with mean 1/rate; a fault that would run past the end
    is not started.
    """
    if rate_per_year < 0:
        raise ValueError(f"fault rate_per_year must be >= 0, got {rate_per_year}")
    out: list[tuple[str, int, int]] = []
    if rate_per_year == 0:
        return out
    k = 0
    while True:
        k += 144 + int(rng.exponential(365.0 * 144 / rate_per_year))
        kind = FAULT_KINDS[int(rng.integers(len(FAULT_KINDS)))]
        lo, hi = FAULT_HOURS[kind]
        steps = int(round(6 * np.exp(rng.uniform(np.log(lo), np.log(hi)))))
        if k + steps > n_steps:
            return out
        out.append((kind, k, k + steps))
        k += steps


def inject_fault(df: pd.DataFrame, kind: str, start, end, rng: np.random.Generator) -> pd.DataFrame:
    """Return a copy of one turbine's frame with fault `kind` on the rows start < timestamp <= end.

    Parameters
    ----------
    df : one turbine's rows in canonical columns (see the module docstring); not modified.
    kind : one of FAULT_KINDS.
    start, end : interval bounds, anything `pd.Timestamp` reads; naive stamps are taken as UTC.
    rng : draws the fault's parameters (offset, stuck angle, severity, channel).
    """
    if kind not in FAULT_KINDS:
        raise ValueError(f"unknown fault kind {kind!r}; allowed: {list(FAULT_KINDS)}")
    missing = [c for c in ("timestamp",) + _NEEDS[kind] if c not in df.columns]
    if kind == "sensor_freeze" and not any(c in df.columns for c in FREEZE_CHANNELS):
        missing.append(f"one of {list(FREEZE_CHANNELS)}")
    if missing:
        raise ValueError(f"inject_fault({kind!r}): the frame lacks columns {missing}")
    if "turbine_id" in df.columns and df["turbine_id"].nunique() > 1:
        raise ValueError("inject_fault: the frame holds several turbines; pass one turbine's rows")
    t0, t1 = as_utc(start), as_utc(end)
    if not t0 < t1:
        raise ValueError(f"inject_fault: start {t0} must be before end {t1}")
    out = df.copy()
    ts_ns = pd.to_datetime(out["timestamp"], utc=True, format="ISO8601").to_numpy("datetime64[ns]").astype("int64")
    lo, hi = t0.as_unit("ns").value, t1.as_unit("ns").value
    rows = np.flatnonzero((ts_ns > lo) & (ts_ns <= hi))
    rows = rows[np.argsort(ts_ns[rows], kind="stable")]
    if rows.size:
        frac = (ts_ns[rows] - lo) / (hi - lo)  # (0, 1]: how far into the fault each row is
        _INJECTORS[kind](out, rows, frac, rng)
    return out


def as_utc(t) -> pd.Timestamp:
    """`t` as a UTC timestamp; a naive one is taken to be UTC already."""
    t = pd.Timestamp(t)
    return t.tz_localize("UTC") if t.tzinfo is None else t.tz_convert("UTC")


def _col(df: pd.DataFrame, name: str) -> np.ndarray:
    return df[name].to_numpy(dtype=float, copy=True)


def _gearbox_overheat(df, rows, frac, rng) -> None:
    amp = rng.uniform(8.0, 20.0)  # bearing excess at full load by the end of the fault, C
    load = np.clip(_col(df, "power")[rows] / RATED_KW, 0.0, 1.2)
    load = pd.Series(load).rolling(6, min_periods=1).mean().fillna(0.0).to_numpy()  # heat lags load by ~1 h
    rise = amp * frac**1.5 * (0.35 + 0.65 * load)
    for name, share in (("gearbox_bearing_temp", 1.0), ("gearbox_oil_temp", 0.6)):
        col = _col(df, name)
        col[rows] += share * rise
        df[name] = col


def _yaw_misalignment(df, rows, frac, rng) -> None:
    offset = rng.uniform(10.0, 25.0) * rng.choice([-1.0, 1.0]) + rng.normal(0.0, 1.0, rows.size)
    nacelle = _col(df, "nacelle_dir")
    nacelle[rows] = np.mod(nacelle[rows] + offset, 360.0)
    df["nacelle_dir"] = nacelle
    v = _col(df, "wind_speed")[rows]
    rho = air_density_ratio(_col(df, "ambient_temp")[rows]) if "ambient_temp" in df else 1.0
    p0, r0, b0 = operating_point(v, rho=rho)
    p1, r1, b1 = operating_point(v * np.cos(np.radians(offset)), rho=rho)  # only the normal wind works
    producing = _col(df, "power")[rows] > 0  # a stopped or idling rotor feels no misalignment
    ratio = np.nan_to_num(np.divide(p1, p0, out=np.ones_like(p0), where=p0 > 0), nan=1.0)
    drpm = np.nan_to_num(r1 - r0)
    for name, scale, shift in (
        ("power", ratio, 0.0),
        ("pitch", 1.0, np.nan_to_num(b1 - b0)),
        ("rotor_speed", 1.0, drpm),
        ("gen_speed", 1.0, GEAR_RATIO * drpm),
    ):
        col = _col(df, name)
        col[rows] = np.where(producing, col[rows] * scale + shift, col[rows])
        df[name] = col


def _pitch_stuck(df, rows, frac, rng) -> None:
    angle = rng.uniform(0.5, 6.0)  # stuck near fine pitch: the rotor cannot shed power in strong wind
    v = _col(df, "wind_speed")[rows]
    rho = air_density_ratio(_col(df, "ambient_temp")[rows]) if "ambient_temp" in df else 1.0
    p0, _, _ = operating_point(v, rho=rho)
    p1, _, _ = operating_point(v, rho=rho, stuck_pitch=angle)
    ratio = np.nan_to_num(np.divide(p1, p0, out=np.ones_like(p0), where=p0 > 0), nan=1.0)
    power, pitch = _col(df, "power"), _col(df, "pitch")
    power[rows] = np.where(power[rows] > 0, power[rows] * ratio, power[rows])
    pitch[rows] = np.where(np.isnan(pitch[rows]), np.nan, angle)  # it cannot feather either
    df["power"], df["pitch"] = power, pitch


def _sensor_freeze(df, rows, frac, rng) -> None:
    present = [c for c in FREEZE_CHANNELS if c in df.columns]
    name = present[int(rng.integers(len(present)))]
    col = _col(df, name)
    seen = col[rows][np.isfinite(col[rows])]
    if seen.size:
        col[rows] = np.where(np.isnan(col[rows]), np.nan, seen[0])
        df[name] = col


def _underperformance(df, rows, frac, rng) -> None:
    loss = rng.uniform(0.05, 0.15)
    power = _col(df, "power")
    power[rows] *= 1.0 - loss
    df["power"] = power


_INJECTORS = {
    "gearbox_overheat": _gearbox_overheat,
    "yaw_misalignment": _yaw_misalignment,
    "pitch_stuck": _pitch_stuck,
    "sensor_freeze": _sensor_freeze,
    "underperformance": _underperformance,
}
