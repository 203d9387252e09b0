"""scada-prepare end to end on small hand-made tables: outputs, train-only fitting, labels, windows, errors."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from scada_tcn.runtime.errors import InputError
from scada_tcn.runtime.scaling import RobustScaler
from scada_tcn.runtime.spec import PipelineSpec
from scada_tcn.trainer.config import load_config
from scada_tcn.trainer.data.prepare import format_summary, prepare
from scada_tcn.trainer.data.registry import load_registry

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "config.yaml"
T0 = pd.Timestamp("2024-01-01T00:00:00Z")
SPLITS = [
    "data.splits.train_range=[2024-01-01T00:00:00+00:00,2024-01-15T00:00:00+00:00]",
    "data.splits.val_range=[2024-01-15T00:00:00+00:00,2024-01-20T00:00:00+00:00]",
    "data.splits.test_range=[2024-01-20T00:00:00+00:00,2024-02-10T00:00:00+00:00]",
]


def _table(days=30, turbines=("WT01", "WT02"), seed=0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    n = days * 144
    frames = []
    for tid in turbines:
        t = T0 + pd.to_timedelta(np.arange(1, n + 1) * 10, unit="min")
        ws = np.clip(7 + 3 * np.sin(np.arange(n) / 50) + rng.normal(0, 1, n), 0, None)
        df = pd.DataFrame(
            {
                "turbine_id": tid,
                "timestamp": t.strftime("%Y-%m-%dT%H:%M:%S+00:00"),
                "wind_speed": ws,
                "power": np.clip((ws - 3.5) ** 3 * 8, 0, 2050),
                "rotor_speed": np.clip(ws * 1.5, 0, 15),
                "gen_speed": np.clip(ws * 150, 0, 1500),
                "pitch": np.where(ws > 12, ws - 12, 0.0),
                "wind_dir": (200 + np.cumsum(rng.normal(0, 2, n))) % 360,
                "ambient_temp": 5 + 3 * np.sin(np.arange(n) / 144 * 2 * np.pi),
                "nacelle_temp": 20 + rng.normal(0, 0.3, n),
                "gearbox_oil_temp": 55 + rng.normal(0, 0.5, n),
                "gearbox_bearing_temp": 60 + rng.normal(0, 0.5, n),
                "gen_bearing_temp": 40 + rng.normal(0, 0.5, n),
                "status": np.where(rng.random(n) < 0.02, 2, 0),
            }
        )
        df["nacelle_dir"] = (df["wind_dir"] + rng.normal(0, 3, n)) % 360
        frames.append(df)
    return pd.concat(frames, ignore_index=True)


def _labels(path: Path) -> Path:
    pd.DataFrame(
        {
            "turbine_id": ["WT01", "WT02"],
            "start": ["2024-01-22T00:00:00+00:00", "2024-01-05T00:00:00+00:00"],
            "end": ["2024-01-24T00:00:00+00:00", "2024-01-06T00:00:00+00:00"],
            "fault": ["gearbox_overheat", "pitch_stuck"],
        }
    ).to_csv(path, index=False)
    return path


def _cfg(tmp_path, df, *extra):
    df.to_csv(tmp_path / "scada.csv", index=False)
    return load_config(
        CONFIG,
        [
            f"data.paths.raw_dir={tmp_path / 'scada.csv'}",
            f"data.paths.processed_dir={tmp_path / 'processed'}",
            f"data.paths.labels_file={_labels(tmp_path / 'labels.csv')}",
            "data.windowing.L=24",
            "data.windowing.K=3",
            "data.windowing.stride=2",
            "model.tcn.num_blocks=2",
            *SPLITS,
            *extra,
        ],
    )


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("prep")
    cfg = _cfg(tmp, _table())
    return cfg, prepare(cfg), tmp / "processed"


def test_outputs_have_the_contract_shapes(prepared):
    cfg, summary, out = prepared
    spec = PipelineSpec.from_dict(json.loads((out / "pipeline_spec.json").read_text()))
    feat, flags = load_registry(out / "registries")
    assert list(feat.feature_names) == list(spec.feature_names) == summary["feature_names"]
    assert summary["read"] == (
        "1 file; CSV separated by ',', decimal mark '.'; turbine ids from column 'turbine_id'; "
        "stamps in column 'timestamp', ISO-8601 or epoch seconds"
    )
    assert list(flags.flag_names) == list(cfg.flags.flag_names)
    F, R = summary["F"], summary["R"]
    for tid in ("WT01", "WT02"):
        d = out / "turbines" / tid
        X, M, Fl, ts = (np.load(d / f) for f in ("X.npy", "M_miss.npy", "Flags.npy", "timestamps.npy"))
        assert X.dtype == np.float32 and M.dtype == np.uint8 and Fl.dtype == np.float32 and ts.dtype == np.int64
        assert X.shape == M.shape == (len(ts), F) and Fl.shape == (len(ts), R)
        assert np.isfinite(X).all()
        assert (X[M == 0] == cfg.features.fill_value_c).all()
        assert np.all(np.diff(ts) == 600 * 10**9)
    assert summary["turbines"] == ["WT01", "WT02"] and summary["raw_rows"] == 2 * 30 * 144
    assert set(summary["missing_fraction"]) == set(feat.feature_names)
    assert (out / "config.yaml").is_file() and len((out / "fingerprint.txt").read_text().strip()) == 64


def test_windows_stay_inside_their_split(prepared):
    cfg, summary, out = prepared
    idx = pd.read_parquet(out / "window_index.parquet")
    L, K = cfg.data.windowing.L, cfg.data.windowing.K
    assert {s: int((idx.split == s).sum()) for s in ("train", "val", "test")} == summary["windows"]
    bounds = {"train": SPLITS[0], "val": SPLITS[1], "test": SPLITS[2]}
    for tid, g in idx.groupby("turbine_id"):
        ts = np.load(out / "turbines" / tid / "timestamps.npy")
        for split, g2 in g.groupby("split"):
            a, b = (pd.Timestamp(x).value for x in bounds[split].split("=[")[1].rstrip("]").split(","))
            first = ts[g2.start.to_numpy()]
            last = ts[g2.start.to_numpy() + L + K - 1]
            assert (first >= a).all() and (last < b).all()
        assert (g.t_end.to_numpy() == ts[g.start.to_numpy() + L - 1]).all()


def test_labels_follow_the_label_file(prepared):
    cfg, _, out = prepared
    names = cfg.data.labels.class_names
    y = np.load(out / "turbines" / "WT01" / "labels.npy")
    ts = np.load(out / "turbines" / "WT01" / "timestamps.npy")
    inside = (ts > pd.Timestamp("2024-01-22T00:00Z").value) & (
        ts - 600 * 10**9 < pd.Timestamp("2024-01-24T00:00Z").value
    )
    assert (y[inside] == names.index("gearbox_overheat")).all() and (y[~inside] == 0).all()
    idx = pd.read_parquet(out / "window_index.parquet")
    w = idx[idx.turbine_id == "WT01"]
    # window_last: the label of the last input step
    np.testing.assert_array_equal(w.y.to_numpy(), y[w.start.to_numpy() + cfg.data.windowing.L - 1])
    assert w.has_label.all()


def test_scaler_and_winsor_caps_use_training_rows_only(tmp_path):
    base = _table()
    planted = base.copy()
    test_rows = pd.to_datetime(planted.timestamp) >= pd.Timestamp("2024-01-20T00:00Z")
    planted.loc[test_rows, "wind_speed"] = 59.0  # valid but extreme, only in the test split
    planted.loc[test_rows, "gearbox_oil_temp"] = 110.0
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    sa, sb = prepare(_cfg(tmp_path / "a", base)), prepare(_cfg(tmp_path / "b", planted))
    assert sa["winsor_caps"] == sb["winsor_caps"]

    def load(p):
        return RobustScaler.from_dict(json.loads((p / "processed/scalers/robust_scaler.json").read_text()))

    ra, rb = load(tmp_path / "a"), load(tmp_path / "b")
    np.testing.assert_array_equal(ra.center, rb.center)
    np.testing.assert_array_equal(ra.scale, rb.scale)


def test_empty_turbine_is_skipped_and_reported(tmp_path):
    df = _table(turbines=("WT01", "WT02", "WT03"))
    chans = [c for c in df.columns if c not in ("turbine_id", "timestamp")]
    df.loc[df.turbine_id == "WT03", chans] = np.nan
    s = prepare(_cfg(tmp_path, df))
    assert s["turbines"] == ["WT01", "WT02"] and "WT03" in s["skipped_turbines"]


def test_non_numeric_cells_are_counted_in_the_summary(tmp_path):
    df = _table()
    df["power"] = df["power"].astype(str)
    df.loc[[5, 17, 99], "power"] = ["-", "#N/A", "n/a"]
    s = prepare(_cfg(tmp_path, df))
    assert s["non_numeric_cells"] == {"power": 3} and s["non_numeric_examples"] == {"power": "-"}
    assert "non-numeric cells made missing: power 3 (e.g. '-')" in format_summary(s)


def test_training_split_without_rows_is_refused(tmp_path):
    cfg = _cfg(tmp_path, _table(), "data.splits.train_range=[2023-01-01T00:00:00+00:00,2023-02-01T00:00:00+00:00]")
    with pytest.raises(InputError, match="training split holds no rows"):
        prepare(cfg)


def test_unknown_fault_class_in_labels_is_refused(tmp_path):
    cfg = _cfg(tmp_path, _table())
    pd.DataFrame(
        {
            "turbine_id": ["WT01"],
            "start": ["2024-01-02T00:00:00+00:00"],
            "end": ["2024-01-03T00:00:00+00:00"],
            "fault": ["bird_strike"],
        }
    ).to_csv(cfg.data.paths.labels_file, index=False)
    with pytest.raises(InputError, match="bird_strike"):
        prepare(cfg)


def test_a_csv_of_epoch_seconds_prepares_as_the_same_table_with_iso_stamps(tmp_path):
    """Epoch seconds in a CSV (read as text) are stamps as replay and the daemon read them: the same arrays, windows
    and summary as the ISO-stamped table. scada-prepare used to refuse them as "expected ISO-8601"."""
    iso = _table(days=22)
    seconds = (pd.to_datetime(iso["timestamp"]) - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(seconds=1)
    epoch = iso.assign(timestamp=seconds.astype(str))
    assert epoch["timestamp"].iloc[0] == str(int(T0.timestamp()) + 600)
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    a, b = prepare(_cfg(tmp_path / "a", iso)), prepare(_cfg(tmp_path / "b", epoch))
    assert {k: v for k, v in a.items() if k != "files"} == {k: v for k, v in b.items() if k != "files"}
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a" / "processed").rglob("*.npy"))
    assert len(files) == 12
    for f in files:
        np.testing.assert_array_equal(np.load(tmp_path / "a" / f), np.load(tmp_path / "b" / f), err_msg=str(f))
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "a" / "processed" / "window_index.parquet"),
                                  pd.read_parquet(tmp_path / "b" / "processed" / "window_index.parquet"))  # fmt: skip
