"""Raw table loading: column mapping, timestamps, non-numeric cells and the errors a user sees."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from scada_tcn.runtime.errors import InputError
from scada_tcn.trainer.config import load_config
from scada_tcn.trainer.data.tables import load_raw_table, parse_timestamps

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "config.yaml"
CHANNELS = [
    "wind_speed",
    "power",
    "rotor_speed",
    "gen_speed",
    "pitch",
    "wind_dir",
    "nacelle_dir",
    "ambient_temp",
    "nacelle_temp",
    "gearbox_oil_temp",
    "gearbox_bearing_temp",
    "gen_bearing_temp",
    "status",
]


def _frame(stamps, turbine="WT01"):
    rng = np.random.default_rng(0)
    df = pd.DataFrame({"turbine_id": turbine, "timestamp": stamps})
    for c in CHANNELS:
        df[c] = rng.uniform(1, 10, len(stamps)).round(3)
    return df


def _cfg(path, *extra):
    return load_config(CONFIG, [f"data.paths.raw_dir={path}", *extra]).data


def test_loads_csv_and_maps_columns(tmp_path):
    df = _frame(["2024-01-01T00:10:00+00:00", "2024-01-01T00:20:00+01:00"])
    df.to_csv(tmp_path / "a.csv", index=False)
    t = load_raw_table(_cfg(tmp_path / "a.csv"))
    assert t.channels == tuple(CHANNELS)
    assert t.values.shape == (2, len(CHANNELS)) and t.values.dtype == np.float64
    np.testing.assert_allclose(t.values[:, 1], df["power"].to_numpy())
    expected = pd.to_datetime(["2024-01-01T00:10:00Z", "2023-12-31T23:20:00Z"]).as_unit("ns").asi8
    np.testing.assert_array_equal(t.ts_ns, expected)


def test_folder_of_csv_and_parquet(tmp_path):
    _frame(["2024-01-01T00:10:00+00:00"], "WT01").to_csv(tmp_path / "a.csv", index=False)
    _frame(["2024-01-01T00:10:00+00:00"], "WT02").to_parquet(tmp_path / "b.parquet", index=False)
    t = load_raw_table(_cfg(tmp_path))
    assert sorted(t.turbine_ids) == ["WT01", "WT02"] and len(t.files) == 2


def test_non_numeric_cells_become_missing_and_are_counted(tmp_path):
    df = _frame(["2024-01-01T00:10:00+00:00"] * 3)
    df["power"] = df["power"].astype(str)
    df.loc[0, "power"] = "-"
    df.loc[1, "power"] = "#N/A"
    df.to_csv(tmp_path / "a.csv", index=False)
    t = load_raw_table(_cfg(tmp_path / "a.csv"))
    assert np.isnan(t.values[:2, 1]).all() and np.isfinite(t.values[2, 1])
    assert t.non_numeric["power"] == 2 and t.non_numeric["wind_speed"] == 0


def test_missing_id_or_time_column(tmp_path):
    _frame(["2024-01-01T00:10:00+00:00"]).drop(columns=["turbine_id"]).to_csv(tmp_path / "a.csv", index=False)
    with pytest.raises(InputError, match=r"columns \['turbine_id'\] not found"):
        load_raw_table(_cfg(tmp_path / "a.csv"))
    with pytest.raises(InputError, match=r"columns \['when'\] not found"):
        _frame(["2024-01-01T00:10:00+00:00"]).to_csv(tmp_path / "b.csv", index=False)
        load_raw_table(_cfg(tmp_path / "b.csv", "data.identifiers.time_col=when"))


def test_unknown_mapped_column(tmp_path):
    _frame(["2024-01-01T00:10:00+00:00"]).to_csv(tmp_path / "a.csv", index=False)
    with pytest.raises(InputError, match=r"columns \['Ws_avg'\] not found"):
        load_raw_table(_cfg(tmp_path / "a.csv", "data.columns.wind_speed=Ws_avg"))


def test_unparseable_and_mixed_timestamps(tmp_path):
    _frame(["2024-01-01T00:10:00+00:00", "yesterday"]).to_csv(tmp_path / "a.csv", index=False)
    with pytest.raises(InputError, match="unparseable timestamps, e.g. \\['yesterday'\\]"):
        load_raw_table(_cfg(tmp_path / "a.csv"))
    _frame(["2024-01-01T00:10:00+00:00", "2024-01-01 00:20:00"]).to_csv(tmp_path / "b.csv", index=False)
    with pytest.raises(InputError, match="mixed time zones"):
        load_raw_table(_cfg(tmp_path / "b.csv"))


def test_naive_timestamps_need_a_declared_zone(tmp_path):
    _frame(["2024-07-01 12:00:00"]).to_csv(tmp_path / "a.csv", index=False)
    with pytest.raises(InputError, match="naive_timezone"):
        load_raw_table(_cfg(tmp_path / "a.csv"))
    t = load_raw_table(_cfg(tmp_path / "a.csv", "data.identifiers.naive_timezone=Europe/Paris"))
    assert t.ts_ns[0] == pd.Timestamp("2024-07-01T10:00:00Z").value


def test_missing_input_path(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        load_raw_table(_cfg(tmp_path / "nothing.csv"))


def test_the_trainer_and_the_edge_read_timestamps_alike():
    """scada-prepare reads a column (each distinct cell once), the edge one message at a time: the same stamps must
    give the same instants."""
    from scada_tcn.runtime.telemetry import parse_timestamp_ns

    iso = [
        "2024-01-01T00:10:00+00:00",
        "2024-01-01T00:10:00Z",
        "2024-03-31T03:10:00+02:00",
        "2017-10-29T02:30:00+01:00",
        "2024-01-01T00:10:00.250+00:00",
        "2024-06-30T23:59:59.999999-07:00",
        "2024-01-01 00:10:00+05:30",
    ]
    got = parse_timestamps(pd.Series(iso), None, "t")
    assert got.tolist() == [parse_timestamp_ns(s) for s in iso]
    epochs = [1704067800, 1704068400, 1704069000]
    assert parse_timestamps(pd.Series(epochs), None, "t").tolist() == [parse_timestamp_ns(s) for s in epochs]
    frac = [1704067800.5, 1704068400.25]
    assert parse_timestamps(pd.Series(frac), None, "t").tolist() == [parse_timestamp_ns(s) for s in frac]


def test_scada_prepare_reads_iso_stamps_by_the_runtimes_grammar_not_by_pandas(monkeypatch):
    """One reading of a stamp: scada-prepare's ISO-8601 column goes through `stamps.iso_ns`, as replay's cells and
    the daemon's messages do, never through pandas' parser (whose ISO-8601 rules change between the versions the
    project allows: pandas 2.2 reads a year-2500 stamp as unparseable, 3.x as a date). Random stamps in the forms
    the grammar takes (separators, one-digit fields, fractions, offsets, local times around both DST changes) give
    the instants replay gives them, cell for cell."""
    from zoneinfo import ZoneInfo

    from scada_tcn.runtime.stamps import iso_utc_ns

    def refuse(*args, **kwargs):
        raise AssertionError("scada-prepare parsed stamps with pandas")

    monkeypatch.setattr(pd, "to_datetime", refuse)
    rng = np.random.default_rng(7)
    for zone in ("UTC", "Europe/Paris", "America/New_York"):
        for offsets in (True, False):
            stamps = []
            for _ in range(400):
                y, mo, d = 2017, int(rng.choice([3, 10, 11])), int(rng.integers(1, 29))
                h, mi, s = int(rng.integers(0, 24)), int(rng.integers(0, 60)), int(rng.integers(0, 60))
                sep, tee = str(rng.choice(["-", "/", "."])), str(rng.choice(["T", " "]))
                frac = str(rng.choice(["", ".5", ".123456789", ".1234567891234"]))
                text = f"{y}{sep}{mo}{sep}{d:02d}{tee}{h}:{mi:02d}:{s:02d}{frac}"
                if offsets:
                    text += str(rng.choice(["Z", "+02:00", "-0530", "+1", " +01:00"]))
                stamps.append(text)
            want = [iso_utc_ns(t, ZoneInfo(zone)) for t in stamps]
            keep = [t for t, w in zip(stamps, want) if isinstance(w, int)]  # DST-skipped or repeated: below
            got = parse_timestamps(pd.Series(keep), None if offsets else zone, "t")
            assert got.tolist() == [w for w in want if isinstance(w, int)], (zone, offsets)
    with pytest.raises(InputError, match=r"1 local times that a DST change in Europe/Paris skips, e\.g\. "):
        parse_timestamps(pd.Series(["2017-03-26 01:50", "2017-03-26 02:30"]), "Europe/Paris", "t")
    limits = ["2255-03-14T17:00+02:00", "1684-10-19T05:00-03:00"]  # in range in UTC, not as wall-clock times
    assert parse_timestamps(pd.Series(limits), None, "t").tolist() == [iso_utc_ns(t) for t in limits]
    assert parse_timestamps(pd.Series(["2255-03-14 17:30"]), "Etc/GMT-2", "t").tolist() == [8999998200000000000]
    with pytest.raises(InputError, match=r"1 stamps out of range, e\.g\. \['2500-01-01T00:00Z'\]"):
        parse_timestamps(pd.Series(["2017-03-26T01:50Z", "2500-01-01T00:00Z"]), None, "t")
    with pytest.raises(InputError, match=r"1 stamps out of range, e\.g\. \['9999-10-31 01:30'\]"):
        parse_timestamps(pd.Series(["2017-03-26 01:50", "9999-10-31 01:30"]), "Europe/Paris", "t", held=[])
    with pytest.raises(InputError, match=r"2 unparseable timestamps, e\.g\. \['', '2017-W12'\]"):
        parse_timestamps(pd.Series(["2017-03-26T01:50Z", None, "2017-W12"]), None, "t")
