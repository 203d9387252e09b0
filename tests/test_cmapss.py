"""C-MAPSS converter on the real NASA files, its configs, and the turbine-split patterns and last-window indexing."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from scada_tcn.runtime.errors import ConfigError, InputError
from scada_tcn.trainer.config import load_config
from scada_tcn.trainer.data.tables import parse_timestamps
from scada_tcn.trainer.data.windowing import (
    check_turbine_patterns,
    label_timeline,
    load_label_events,
    turbine_split,
    window_starts,
)
from scada_tcn.trainer.sources.cmapss import NEAR_FAILURE_RUL, convert, write_cmapss
from tests.conftest import CONFIG, shared_data_or_skip

DT_NS = 600 * 10**9


@pytest.fixture(scope="module")
def fd001():
    src = shared_data_or_skip("nasa_cmapss")
    return src, *convert(src, "FD001")


@pytest.mark.realdata
def test_fd001_table_rows_units_and_columns(fd001):
    _, table, _ = fd001
    assert len(table) == 20_631 + 13_096
    ids = table["turbine_id"].unique()
    assert sum(i.startswith("train_") for i in ids) == 100 and sum(i.startswith("test_") for i in ids) == 100
    assert list(table.columns[:3]) == ["turbine_id", "timestamp", "cycle"]
    assert [f"s{i}" for i in range(1, 22)] == list(table.columns[6:27]) and table.columns[-1] == "rul"
    # timestamps: fixed epoch + cycle * 10 min
    ts = parse_timestamps(table["timestamp"].head(3), None, "t")
    assert np.array_equal(np.diff(ts), [DT_NS, DT_NS])
    assert table["timestamp"].iloc[0] == "2000-01-01T00:10:00+00:00"


@pytest.mark.realdata
def test_fd001_rul_targets(fd001):
    src, table, _ = fd001
    g = table.groupby("turbine_id")
    last = g.tail(1).set_index("turbine_id")["rul"]
    assert (last[[t for t in last.index if t.startswith("train_")]] == 0).all()  # run to failure
    true_after = np.loadtxt(src / "RUL_FD001.txt")
    assert np.array_equal(last[[f"test_{u:03d}" for u in range(1, 101)]].to_numpy(), true_after)
    # RUL falls by one per cycle; test_001 has 31 cycles and RUL 112 after them
    t1 = table[table["turbine_id"] == "test_001"]
    assert len(t1) == 31 and t1["rul"].iloc[0] == 112 + 30 and (np.diff(t1["rul"]) == -1).all()


@pytest.mark.realdata
def test_fd001_labels_cover_exactly_rul_below_30(fd001, tmp_path):
    src, table, labels = fd001
    true_after = np.loadtxt(src / "RUL_FD001.txt")
    assert (labels["fault"] == "near_failure").all()
    assert labels["turbine_id"].str.startswith("train_").sum() == 100
    assert labels["turbine_id"].str.startswith("test_").sum() == int((true_after < NEAR_FAILURE_RUL).sum())
    labels.to_csv(tmp_path / "labels.csv", index=False)
    events = load_label_events(tmp_path / "labels.csv", ["normal", "near_failure"], None)
    for tid in ("train_001", "test_018", "test_001"):  # test_018: RUL 7 after 32 cycles; test_001: never < 30
        part = table[table["turbine_id"] == tid]
        ts = parse_timestamps(part["timestamp"], None, "t")
        y = label_timeline(ts, DT_NS, [e for e in events if e.turbine_id == tid], 2, False)
        assert np.array_equal(y, (part["rul"].to_numpy() < NEAR_FAILURE_RUL).astype(np.int64)), tid


@pytest.mark.realdata
def test_write_and_fd003(tmp_path):
    src = shared_data_or_skip("nasa_cmapss")
    s = write_cmapss(src, "FD003", tmp_path)
    assert s["rows"] == 24_720 + 16_596 and s["train_units"] == 100 and s["test_units"] == 100
    assert {p.name for p in tmp_path.iterdir()} == {"cmapss.csv", "labels.csv", "README.txt"}
    back = pd.read_csv(tmp_path / "cmapss.csv", nrows=5)
    assert back["turbine_id"].iloc[0] == "train_001" and back["rul"].iloc[0] > 0


def test_converter_refusals(tmp_path):
    with pytest.raises(InputError, match="unknown C-MAPSS subset"):
        convert(tmp_path, "FD009")
    with pytest.raises(InputError, match="not found"):
        convert(tmp_path, "FD001")
    row = " ".join(["1", "1"] + ["0.5"] * 24)
    (tmp_path / "train_FD001.txt").write_text(f"{row}\n{row.replace('1 1', '1 2', 1)}\n")
    (tmp_path / "test_FD001.txt").write_text(f"{row}\n")
    (tmp_path / "RUL_FD001.txt").write_text("10\n20\n")
    with pytest.raises(InputError, match="2 values for 1 test units"):
        convert(tmp_path, "FD001")
    (tmp_path / "test_FD001.txt").write_text(f"{row.replace('1 1', '1 3', 1)}\n")
    with pytest.raises(InputError, match="cycles are not 1, 2"):
        convert(tmp_path, "FD001")


@pytest.mark.parametrize("name", ["cmapss_fd001", "cmapss_fd003"])
def test_cmapss_configs_compose(name):
    cfg = load_config(CONFIG, [f"data={name}"])
    assert cfg.data.windowing.L == 30 and cfg.data.windowing.K == 0 and cfg.data.windowing.include_last
    assert cfg.model.heads.rul.enabled and cfg.data.rul.enabled and cfg.data.rul.cap == 125
    assert cfg.model.heads.fault.enabled and cfg.data.labels.class_names == ["normal", "near_failure"]
    assert "rul" not in cfg.data.columns.values() and "s1" not in cfg.features.raw_channels
    with pytest.raises(ConfigError, match="receptive field"):
        load_config(CONFIG, [f"data={name}", "model.tcn.num_blocks=3"])  # 1 + 2*2*7 = 29 < 30


def test_turbine_patterns_split_and_refuse():
    data = load_config(CONFIG, ["data=cmapss_fd001"]).data
    assert [turbine_split(t, data) for t in ("train_001", "train_005", "train_100", "test_042", "other")] == [
        0,
        1,
        1,
        2,
        -1,
    ]
    ids = [f"train_{u:03d}" for u in range(1, 101)]
    assert sum(turbine_split(t, data) == 1 for t in ids) == 20  # every 5th unit validates
    check_turbine_patterns(ids + ["test_001"], data)
    with pytest.raises(InputError, match=r"data.splits.test_turbines: \['test_\*'\] match no turbine"):
        check_turbine_patterns(ids, data)
    both = load_config(CONFIG, ["data=cmapss_fd001", "data.splits.val_turbines=[train_00*]"]).data
    with pytest.raises(InputError, match="matches .*train_turbines.*val_turbines"):
        turbine_split("train_001", both)
    with pytest.raises(ConfigError, match="neither turbine ids"):
        load_config(CONFIG, ["data=cmapss_fd001", "data.splits.val_turbines=['train 1']"])


def test_window_starts_include_last():
    assert window_starts(10, 3, 0, 3, False).tolist() == [0, 3, 6]
    assert window_starts(10, 3, 0, 3, True).tolist() == [0, 3, 6, 7]  # the last window ends at step 9
    assert window_starts(10, 3, 2, 3, True).tolist() == [0, 3, 5]  # last complete window: targets end at 9
    assert window_starts(9, 3, 0, 3, True).tolist() == [0, 3, 6]  # already there: not repeated
    assert window_starts(2, 3, 0, 1, True).tolist() == []


def test_rul_config_checks():
    with pytest.raises(ConfigError, match="model.heads.rul.enabled=True but data.rul.enabled=False"):
        load_config(CONFIG, ["data=cmapss_fd001", "data.rul.enabled=false"])
    with pytest.raises(ConfigError, match="model.heads.rul.enabled=False but data.rul.enabled=True"):
        load_config(CONFIG, ["data=cmapss_fd001", "model.heads.rul.enabled=false"])
    with pytest.raises(ConfigError, match="leak"):
        load_config(CONFIG, ["data=cmapss_fd001", "data.columns.target=rul"])
    with pytest.raises(ConfigError, match="data.rul.cap must be > 0"):
        load_config(CONFIG, ["data=cmapss_fd001", "data.rul.cap=0"])


def test_cli_help_and_error(tmp_path):
    from typer.testing import CliRunner

    from scada_tcn.trainer.cli.cmapss import app

    runner = CliRunner()
    assert "scada-cmapss --subset FD001" in runner.invoke(app, ["--help"]).output
    bad = runner.invoke(app, ["--subset", "FD009", "--out", str(tmp_path)])
    assert bad.exit_code == 2 and "unknown C-MAPSS subset" in bad.output
