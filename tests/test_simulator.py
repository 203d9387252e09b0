"""The SCADA simulator: determinism, physics, faults (with their labels), dirt, the injector contract and the CLI."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from scada_tcn.trainer.cli.synth import app
from scada_tcn.trainer.sources.faults import (
    CUT_IN,
    CUT_OUT,
    FAULT_KINDS,
    FREEZE_CHANNELS,
    RATED_KW,
    RATED_WIND,
    inject_fault,
    operating_point,
)
from scada_tcn.trainer.sources.simulator import CHANNELS, COLUMNS, SPIKES, lag1, simulate, write_synthetic

SEED = 12
TEMPS = ("nacelle_temp", "gearbox_oil_temp", "gearbox_bearing_temp", "gen_bearing_temp")


@pytest.fixture(scope="module")
def clean() -> pd.DataFrame:
    return simulate(4, 60, SEED, faults=False, dirty=False)[0]


@pytest.fixture(scope="module")
def faulty() -> tuple[pd.DataFrame, pd.DataFrame]:
    return simulate(4, 60, SEED, faults=True, dirty=False, fault_rate=60)


@pytest.fixture(scope="module")
def dirty() -> pd.DataFrame:
    return simulate(3, 20, 5)[0]


def _yaw_error(df: pd.DataFrame) -> pd.Series:
    return (df["wind_dir"] - df["nacelle_dir"] + 180.0) % 360.0 - 180.0


def _in_interval(df: pd.DataFrame, row) -> np.ndarray:
    ts = df["timestamp"]
    return ((df["turbine_id"] == row.turbine_id) & (ts > row.start) & (ts <= row.end)).to_numpy()


def _peak_lag(x: np.ndarray, y: np.ndarray, max_lag: int = 72) -> int:
    """Lag k (steps) maximising corr(x[t], y[t + k])."""
    x, y = (x - x.mean()) / x.std(), (y - y.mean()) / y.std()
    n = x.size
    lags = range(-max_lag, max_lag + 1)
    corr = [np.mean(x[max(0, -k) : n - max(0, k)] * y[max(0, k) : n - max(0, -k)]) for k in lags]
    return int(np.argmax(corr)) - max_lag


# --- determinism -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_same_seed_writes_identical_bytes_and_other_seed_differs(tmp_path, fmt):
    names = (f"scada.{fmt}", "labels.csv", "README.txt")
    read = lambda d: [(d / n).read_bytes() for n in names]  # noqa: E731
    write_synthetic(tmp_path / "a", 3, 8, 7, fmt=fmt, fault_rate=40)
    write_synthetic(tmp_path / "b", 3, 8, 7, fmt=fmt, fault_rate=40)
    write_synthetic(tmp_path / "c", 3, 8, 8, fmt=fmt, fault_rate=40)
    assert read(tmp_path / "a") == read(tmp_path / "b")
    assert read(tmp_path / "a")[0] != read(tmp_path / "c")[0]


def test_a_turbine_does_not_depend_on_farm_size():
    small, _ = simulate(2, 5, SEED)
    large, _ = simulate(3, 5, SEED)
    pd.testing.assert_frame_equal(small, large[large["turbine_id"] != "WT03"].reset_index(drop=True))


# --- table shape ------------------------------------------------------------------------------------------------


def test_columns_dtypes_and_grid(clean):
    assert tuple(clean.columns) == COLUMNS
    assert isinstance(clean["timestamp"].dtype, pd.DatetimeTZDtype) and str(clean["timestamp"].dt.tz) == "UTC"
    assert clean["turbine_id"].dtype == "str" and clean["status"].dtype == "int64"
    assert all(clean[c].dtype == "float64" for c in CHANNELS)
    assert sorted(clean["turbine_id"].unique()) == ["WT01", "WT02", "WT03", "WT04"]
    one = clean[clean["turbine_id"] == "WT01"]["timestamp"]
    assert one.iloc[0] == pd.Timestamp("2024-01-01T00:10:00+00:00")  # stamps mark the END of the interval
    assert len(one) == 60 * 144 and (one.diff().dropna() == pd.Timedelta(minutes=10)).all()
    assert clean[list(CHANNELS)].notna().all().all()
    assert ((clean["wind_dir"] >= 0) & (clean["wind_dir"] < 360)).all()
    assert set(clean["status"].unique()) == {0, 1, 2, 3}


def test_bad_arguments_are_refused_with_a_message():
    with pytest.raises(ValueError, match="n_turbines"):
        simulate(0, 5)
    with pytest.raises(ValueError, match="days"):
        simulate(1, 0)
    with pytest.raises(ValueError, match="start"):
        simulate(1, 1, start="2024-13-01")
    with pytest.raises(ValueError, match="10-min grid"):
        simulate(1, 1, start="2024-01-01T00:05:00")
    with pytest.raises(ValueError, match="fmt"):
        write_synthetic("unused", 1, 1, fmt="xlsx")


# --- physics ----------------------------------------------------------------------------------------------------


def test_lag1_is_the_exact_first_order_recurrence():
    x = np.random.default_rng(0).normal(size=3000)
    for tau in (0.7, 6.0, 400.0):
        a, y, expected = np.exp(-1.0 / tau), 2.0, []
        for value in x:
            y = a * y + (1 - a) * value
            expected.append(y)
        np.testing.assert_allclose(lag1(x, tau, 2.0), expected, rtol=0, atol=1e-12)


def test_power_respects_the_curve(clean):
    running = clean["status"] == 0
    assert (clean.loc[running & (clean["wind_speed"] < CUT_IN), "power"] == 0).all()
    assert (clean.loc[running & (clean["wind_speed"] >= CUT_OUT), "power"] == 0).all()
    assert (clean["power"] >= 0).all() and (clean["power"] <= RATED_KW).all()
    assert clean.loc[running & clean["wind_speed"].between(15, 22), "power"].min() > 0.95 * RATED_KW
    parked = clean["status"] >= 2
    assert (clean.loc[parked, "power"] == 0).all()
    assert (clean.loc[parked, "pitch"] > 85).all() and (clean.loc[parked, "rotor_speed"] < 1).all()
    curtailed = clean["status"] == 1
    assert clean.loc[curtailed, "power"].max() <= 0.8 * RATED_KW
    ratio = clean["gen_speed"] / clean["rotor_speed"]
    assert ratio[clean["rotor_speed"] > 5].between(99, 101).all()


def test_pitch_is_fine_below_rated_and_rises_above(clean):
    producing = clean[(clean["status"] == 0) & (clean["power"] > 0)]
    by_wind = producing.groupby(pd.cut(producing["wind_speed"], [4, 10, 14, 17, 25]), observed=True)["pitch"].median()
    assert abs(by_wind.iloc[0]) < 0.5
    assert by_wind.is_monotonic_increasing and by_wind.iloc[-1] > 10
    # the pitch controller holds rated power: steady state of the same curves
    power, rpm, pitch = operating_point(np.array([6.0, RATED_WIND, 20.0]), ti=0.0)
    assert pitch[0] == 0 and pitch[2] > 15
    assert power[2] == pytest.approx(RATED_KW) and rpm[2] == pytest.approx(15)


def test_temperatures_lag_load_and_ambient(clean):
    for _, one in clean.groupby("turbine_id"):
        load = one["power"].to_numpy()
        for name in ("gearbox_oil_temp", "gearbox_bearing_temp", "gen_bearing_temp"):
            assert _peak_lag(load, one[name].to_numpy()) > 0, name
        assert _peak_lag(one["ambient_temp"].to_numpy(), one["nacelle_temp"].to_numpy()) > 0


def test_yaw_error_is_mostly_small_when_running(clean):
    err = _yaw_error(clean[(clean["status"] == 0) & (clean["power"] > 0)]).abs()
    assert err.median() < 6 and err.quantile(0.9) < 15


# --- faults -----------------------------------------------------------------------------------------------------


def test_labels_are_well_formed_and_do_not_overlap(faulty, tmp_path):
    scada, labels = faulty
    assert list(labels.columns) == ["turbine_id", "start", "end", "fault"]
    assert set(labels["fault"]) == set(FAULT_KINDS)
    assert (labels["start"] < labels["end"]).all()
    assert (labels["start"] >= scada["timestamp"].min() - pd.Timedelta(minutes=10)).all()
    assert (labels["end"] <= scada["timestamp"].max()).all()
    for _, per in labels.groupby("turbine_id"):
        per = per.sort_values("start")
        assert (per["start"].iloc[1:].to_numpy() >= per["end"].iloc[:-1].to_numpy()).all()
    paths = write_synthetic(tmp_path, 2, 10, 3, fault_rate=80)
    text = pd.read_csv(paths["labels"], dtype=str)
    assert list(text.columns) == ["turbine_id", "start", "end", "fault"] and len(text) > 0
    assert text["start"].str.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00").all()
    assert text["fault"].isin(FAULT_KINDS).all()


def test_faults_change_nothing_outside_their_labels(clean, faulty):
    scada, labels = faulty
    inside = np.zeros(len(scada), dtype=bool)
    for row in labels.itertuples():
        inside |= _in_interval(scada, row)
    pd.testing.assert_frame_equal(scada[~inside], clean[~inside])
    for row in labels.itertuples():  # ... and every fault changes something inside its label
        rows = _in_interval(scada, row)
        assert not scada[rows].equals(clean[rows]), row


def _check_signature(kind: str, fault: pd.DataFrame, base: pd.DataFrame) -> None:
    """Assert the signature of `kind` on rows of one interval (`fault`) against the same rows without it."""
    others = lambda keep: [c for c in CHANNELS if c not in keep]  # noqa: E731
    strong = (base["power"] > 100).to_numpy()
    if kind == "gearbox_overheat":
        rise = (fault["gearbox_bearing_temp"] - base["gearbox_bearing_temp"]).to_numpy()
        assert (rise >= 0).all() and rise.max() > 2
        assert rise[-len(rise) // 4 :].mean() > rise[: len(rise) // 4].mean()
        assert (fault["gearbox_oil_temp"] >= base["gearbox_oil_temp"]).all()
        pd.testing.assert_frame_equal(fault[others(TEMPS)], base[others(TEMPS)])
    elif kind == "yaw_misalignment":
        assert 9 < _yaw_error(fault).abs().median() < 27
        assert (fault["power"][strong] <= base["power"][strong] + 0.02).all()
        assert not strong.any() or (fault["power"][strong] < base["power"][strong]).any()
    elif kind == "pitch_stuck":
        assert fault["pitch"].nunique() == 1
        assert not np.allclose(fault["power"], base["power"])
    elif kind == "sensor_freeze":
        frozen = [c for c in TEMPS if fault[c].nunique() == 1]
        assert len(frozen) == 1 and base[frozen[0]].nunique() > 1
        assert all(fault[c].nunique() > 1 for c in TEMPS if c not in frozen)
    elif kind == "underperformance":
        ratio = fault["power"][strong] / base["power"][strong]
        assert ratio.between(0.84, 0.96).all() and ratio.std() < 0.01
        pd.testing.assert_frame_equal(fault[others(("power",))], base[others(("power",))])


@pytest.mark.parametrize("kind", FAULT_KINDS)
def test_each_fault_has_its_signature_inside_its_label(clean, faulty, kind):
    scada, labels = faulty
    rows_of_kind = labels[labels["fault"] == kind]
    assert len(rows_of_kind) > 0
    for row in rows_of_kind.itertuples():
        rows = _in_interval(scada, row)
        _check_signature(kind, scada[rows].reset_index(drop=True), clean[rows].reset_index(drop=True))


def _one_turbine(clean: pd.DataFrame) -> pd.DataFrame:
    return clean[clean["turbine_id"] == "WT02"].reset_index(drop=True)


@pytest.mark.parametrize("kind", FAULT_KINDS)
def test_inject_fault_touches_only_its_interval_and_not_the_input(clean, kind):
    df = _one_turbine(clean)
    before = df.copy(deep=True)
    start, end = "2024-01-20T06:00:00+00:00", "2024-01-24T06:00:00+00:00"
    out = inject_fault(df, kind, start, end, np.random.default_rng(1))
    pd.testing.assert_frame_equal(df, before)
    rows = ((df["timestamp"] > pd.Timestamp(start)) & (df["timestamp"] <= pd.Timestamp(end))).to_numpy()
    assert rows.sum() == 4 * 144
    pd.testing.assert_frame_equal(out[~rows], df[~rows])
    _check_signature(kind, out[rows].reset_index(drop=True), df[rows].reset_index(drop=True))


def test_inject_fault_on_real_looking_data(clean):
    """String stamps with jitter, NaN cells and no ambient column, as a real export may have."""
    df = _one_turbine(clean).drop(columns=["ambient_temp"]).iloc[:2000].copy()
    df["timestamp"] = (df["timestamp"] + pd.Timedelta(seconds=3)).dt.strftime("%Y-%m-%dT%H:%M:%S+00:00")
    df.loc[df.index[::7], ["power", "wind_speed", "gearbox_oil_temp"]] = np.nan
    for kind in FAULT_KINDS:
        out = inject_fault(df, kind, "2024-01-03", "2024-01-05", np.random.default_rng(2))
        assert out[["power", "wind_speed"]].isna().equals(df[["power", "wind_speed"]].isna())
        assert out["timestamp"].equals(df["timestamp"])


def test_stuck_pitch_drives_power_above_rated_and_misalignment_costs_cos_cubed():
    wind = np.linspace(5.0, 22.0, 144)
    power, rotor, pitch = operating_point(wind)
    frame = pd.DataFrame(
        {
            "timestamp": pd.date_range("2024-01-01T00:10", periods=wind.size, freq="10min", tz="UTC"),
            "wind_speed": wind,
            "power": power,
            "rotor_speed": rotor,
            "gen_speed": 100 * rotor,
            "pitch": pitch,
            "nacelle_dir": 180.0,
            "wind_dir": 180.0,
        }
    )
    stuck = inject_fault(frame, "pitch_stuck", "2024-01-01", "2024-01-02", np.random.default_rng(0))
    assert stuck["pitch"].nunique() == 1 and stuck["power"].max() > 1.1 * RATED_KW
    assert (stuck["power"][wind < 9] < frame["power"][wind < 9]).all()
    yawed = inject_fault(frame, "yaw_misalignment", "2024-01-01", "2024-01-02", np.random.default_rng(0))
    gamma = np.radians(_yaw_error(yawed).abs())
    cubic = (wind > 7) & (wind < 11)  # the loss is about cos^3 there (more near cut-in, none far above rated)
    exponent = np.log(yawed["power"][cubic] / frame["power"][cubic]) / np.log(np.cos(gamma[cubic]))
    assert 2.5 < exponent.median() < 4.0
    assert (yawed["power"][wind < 12] < frame["power"][wind < 12]).all()
    assert yawed["power"][wind > 20].min() > 0.97 * RATED_KW  # strong wind still reaches rated


def test_inject_fault_refuses_bad_requests(clean):
    df = _one_turbine(clean)
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="unknown fault kind 'icing'"):
        inject_fault(df, "icing", "2024-01-02", "2024-01-03", rng)
    with pytest.raises(ValueError, match="must be before"):
        inject_fault(df, "pitch_stuck", "2024-01-03", "2024-01-02", rng)
    with pytest.raises(ValueError, match=r"lacks columns \['pitch'\]"):
        inject_fault(df.drop(columns=["pitch"]), "pitch_stuck", "2024-01-02", "2024-01-03", rng)
    with pytest.raises(ValueError, match="one of"):
        inject_fault(df.drop(columns=list(FREEZE_CHANNELS)), "sensor_freeze", "2024-01-02", "2024-01-03", rng)
    with pytest.raises(ValueError, match="several turbines"):
        inject_fault(clean, "underperformance", "2024-01-02", "2024-01-03", rng)


# --- dirt -------------------------------------------------------------------------------------------------------


def test_the_dirt_is_there(dirty):
    key = ["turbine_id", "timestamp"]
    assert dirty.duplicated().any()  # exact duplicate rows
    same_stamp = dirty[dirty.duplicated(key, keep=False)]
    assert (same_stamp.groupby(key)["power"].nunique() > 1).any()  # same stamp, different values
    seconds = dirty["timestamp"].astype("int64") // 10**9
    assert ((seconds % 600 != 0) & ((seconds % 600 < 31) | (seconds % 600 > 569))).any()  # jitter of seconds
    assert (seconds % 600 == 0).mean() > 0.99
    for _, one in dirty.groupby("turbine_id"):
        gaps = one["timestamp"].diff().dropna()
        assert (gaps >= pd.Timedelta(hours=2)).any()  # an outage
        assert len(one) < 20 * 144 + 20
    assert dirty[list(CHANNELS)].isna().sum().sum() > 0
    spikes = sum(int(dirty[c].isin(values).sum()) for c, values in SPIKES.items())
    assert spikes >= dirty["turbine_id"].nunique()  # at least one absurd value per turbine
    assert ((dirty["status"] >= 0) & (dirty["status"] <= 3)).all()
    assert (dirty.groupby("turbine_id")["timestamp"].apply(lambda t: t.is_monotonic_increasing)).all()


def test_frozen_channel_runs_exist_in_dirt_but_not_in_clean(clean, dirty):
    def longest_run(x: pd.Series) -> int:
        change = x.ne(x.shift()).cumsum()
        return int(change.value_counts().max())

    def longest(df: pd.DataFrame) -> int:
        channels = ("wind_speed", "pitch", "wind_dir")
        return max(longest_run(one[c]) for _, one in df.groupby("turbine_id") for c in channels)

    assert longest(dirty) >= 6 and longest(clean[clean["status"] == 0]) < 6


def test_csv_holds_a_few_non_numeric_cells(tmp_path):
    paths = write_synthetic(tmp_path, 2, 10, 3)
    text = pd.read_csv(paths["scada"], dtype=str, keep_default_na=False)
    numeric = text[list(CHANNELS)]
    junk = numeric.isin(["-", "#N/A"])
    assert 1 <= junk.sum().sum() <= 10
    as_numbers = pd.read_csv(paths["scada"], na_values=["-", "#N/A"])
    assert all(as_numbers[c].dtype == "float64" for c in CHANNELS)
    assert (paths["readme"].read_text().count("gearbox_bearing_temp")) >= 1


# --- CLI --------------------------------------------------------------------------------------------------------


def test_cli_writes_the_files_and_reports_progress(tmp_path):
    result = CliRunner().invoke(app, ["--out", str(tmp_path), "--turbines", "2", "--days", "2", "--seed", "4"])
    assert result.exit_code == 0, result.output
    assert "(2/2)" in result.stderr
    assert {p.name for p in tmp_path.iterdir()} == {"scada.csv", "labels.csv", "README.txt"}
    help_text = CliRunner().invoke(app, ["--help"]).output
    assert "Example: scada-synth --out" in help_text
    bad = CliRunner().invoke(app, ["--out", str(tmp_path / "x"), "--days", "1", "--start", "2024-13-01"])
    assert bad.exit_code == 2 and "start" in bad.stderr
