"""EVT (peaks-over-threshold) calibration at export: fitted per group, parameters in the bundle, fallbacks
recorded, and the runtime reads it like any calibration."""

from __future__ import annotations

import numpy as np
import pytest

from scada_tcn.runtime.calibration import Calibration, fit_calibration
from scada_tcn.trainer.calibration.evt import pot_threshold


def _pot(x):
    fit = pot_threshold(x, 0.9, 0.001, 30)
    return fit["threshold"], {k: float(v) for k, v in fit.items() if k != "threshold"}


def test_evt_groups_params_and_fallbacks():
    rng = np.random.default_rng(0)
    s = np.concatenate([rng.exponential(1.0, 4000), rng.exponential(2.0, 4000), rng.exponential(1.0, 100)])
    turb = ["A"] * 4000 + ["B"] * 4000 + ["C"] * 100
    cal = fit_calibration(s, turb, ["normal"] * len(s), "evt", _pot, min_windows=50, fitted_on="test")
    # exponential tails: the threshold for exceedance 1e-3 is scale * ln(1000)
    assert cal.per_turbine["A"] == pytest.approx(np.log(1000), rel=0.15)
    assert cal.per_turbine["B"] == pytest.approx(2 * np.log(1000), rel=0.15)
    assert "C" not in cal.per_turbine and "fit refused" in cal.fallbacks["C"]  # 10 excesses < 30
    assert set(cal.params) == {"<global>", "A", "B"} and set(cal.params["A"]) == {"u", "xi", "sigma", "n_excess"}
    again = Calibration.from_dict(cal.to_dict())
    assert again == cal and again.threshold_for("C") == (cal.global_threshold, "global")


def test_export_with_evt_writes_the_tail_into_the_bundle(tiny_run, tmp_path):
    from scada_tcn.export.bundle_writer import export_bundle

    b = export_bundle(
        tiny_run.checkpoint,
        out_dir=tmp_path / "b",
        verify=False,
        overrides=[
            "infer.calibration.method=evt",
            "infer.calibration.evt_tail_quantile=0.9",
            "infer.calibration.evt_exceedance_prob=0.005",
        ],
    )
    cal = b.calibration
    assert cal.method == "evt" and "<global>" in cal.params
    assert cal.params["<global>"]["n_excess"] >= 30
    assert all(k in cal.params or k in cal.fallbacks for k in cal.per_turbine)
    assert "POT tail" in cal.fitted_on


def test_regime_of_a_model_without_flags():
    from scada_tcn.runtime.calibration import regime_of

    assert regime_of(np.zeros((3, 0), np.float32), []) == ["normal"] * 3
