"""scada-prepare on the real ENGIE La Haute Borne SCADA (../shared/data; skipped with the reason when absent)."""

import numpy as np
import pandas as pd

from scada_tcn.trainer.config import load_config
from scada_tcn.trainer.data.prepare import prepare
from tests.conftest import CONFIG, shared_data_or_skip


def test_prepare_la_haute_borne(tmp_path):
    shared_data_or_skip("engie_la_haute_borne", "la_haute_borne_scada_2017-08_2018-01_3turbines.csv.gz")
    cfg = load_config(CONFIG, ["data=la_haute_borne", f"data.paths.processed_dir={tmp_path}"])
    s = prepare(cfg)
    assert s["turbines"] == ["R80711", "R80721", "R80736"] and s["raw_rows"] == 63_214
    assert s["steps"] == 3 * 22_554  # every turbine on the full 10-min grid, gaps kept as missing steps
    # R80711 lacks 2017-11-19 -> 2017-12-13 in this copy: a month of missing steps, never interpolated
    X = np.load(tmp_path / "turbines" / "R80711" / "M_miss.npy")
    ts = np.load(tmp_path / "turbines" / "R80711" / "timestamps.npy")
    gap = (ts > pd.Timestamp("2017-11-20T00:00Z").value) & (ts < pd.Timestamp("2017-12-12T00:00Z").value)
    assert gap.sum() > 3000 and (X[gap] == 0).all()
    assert 0.05 < s["missing_fraction"]["power"] < 0.1
    assert all(s["windows"][k] > 5000 for k in ("train", "val", "test"))
    assert s["R"] == 3 and s["F"] == len(s["feature_names"]) == 29
    assert "gearbox_oil_above_ambient" in s["feature_names"] and "ambient_temp" not in s["feature_names"]
