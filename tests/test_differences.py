"""Channel-difference features (e.g. a temperature above ambient): values, masks, batch/stream parity, deltas
and rolling statistics on top of them."""

import numpy as np
import pytest

from scada_tcn.runtime.errors import SpecError
from scada_tcn.runtime.features import FeatureState, build_features
from scada_tcn.runtime.spec import PipelineSpec, RollingSpec


def _spec(**over):
    kw = dict(
        dt_seconds=600,
        channels=("power", "ambient_temp", "gearbox_oil_temp", "wind_dir"),
        dedupe="last",
        aggregation={},
        valid_range={},
        winsor_caps={},
        feature_channels=("power", "ambient_temp", "wind_dir"),
        angular_channels=("wind_dir",),
        angle_units="deg",
        yaw_error=None,
        deltas=("oil_rel",),
        rolling=RollingSpec(("oil_rel",), (3,), ("mean", "std")),
        flag_names=(),
        flag_rules={},
        fill_value=0.0,
        differences={"oil_rel": ("gearbox_oil_temp", "ambient_temp")},
    )
    kw.update(over)
    return PipelineSpec(**kw)


def test_names_values_and_masks():
    spec = _spec()
    assert spec.feature_names == (
        "power",
        "ambient_temp",
        "wind_dir_sin",
        "wind_dir_cos",
        "oil_rel",
        "oil_rel_delta",
        "oil_rel_rmean3",
        "oil_rel_rstd3",
    )
    raw = np.array(
        [
            [1.0, 10.0, 50.0, 0.0],
            [1.0, np.nan, 51.0, 0.0],
            [1.0, 12.0, 53.0, 0.0],
            [1.0, 12.0, 54.0, 0.0],
            [1.0, 12.0, 55.0, 0.0],
        ]
    )
    E, M = build_features(raw, spec)
    j = spec.feature_names.index("oil_rel")
    np.testing.assert_array_equal(E[:, j], [40.0, np.nan, 41.0, 42.0, 43.0])
    np.testing.assert_array_equal(M[:, j], [1, 0, 1, 1, 1])  # missing when either side is
    d = spec.feature_names.index("oil_rel_delta")
    np.testing.assert_array_equal(M[:, d], [0, 0, 0, 1, 1])
    r = spec.feature_names.index("oil_rel_rmean3")
    np.testing.assert_array_equal(M[:, r], [0, 0, 0, 0, 1])
    assert E[4, r] == 42.0


def test_stream_equals_batch_with_differences():
    spec = _spec()
    rng = np.random.default_rng(0)
    raw = np.column_stack(
        [
            rng.uniform(0, 2000, 3000),
            10 + rng.normal(0, 3, 3000),
            60 + rng.normal(0, 0.2, 3000),
            rng.uniform(0, 360, 3000),
        ]
    )
    raw[rng.random(raw.shape) < 0.05] = np.nan
    E, M = build_features(raw, spec)
    st = FeatureState(spec)
    for t in range(len(raw)):
        e, m = st.step(raw[t])
        np.testing.assert_array_equal(m, M[t])
        np.testing.assert_allclose(e, E[t], rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("pair", [("gearbox_oil_temp", "nope"), ("wind_dir", "ambient_temp"), ("power",)])
def test_bad_differences_are_refused(pair):
    with pytest.raises(SpecError, match="differences.x"):
        _spec(differences={"x": pair}, deltas=(), rolling=None)


def test_round_trip():
    spec = _spec()
    assert PipelineSpec.from_dict(spec.to_dict()) == spec
