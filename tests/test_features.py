"""runtime.features: angle math, mask semantics, batch == incremental, causality, state."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from numpy.lib.stride_tricks import sliding_window_view

from scada_tcn.runtime.errors import InputError, SpecError
from scada_tcn.runtime.features import FeatureState, build_features, sin_cos, wrap_angle, yaw_error
from scada_tcn.runtime.spec import PipelineSpec, RollingSpec, YawErrorSpec

CHANNELS = ("wind_speed", "power", "gearbox_oil_temp", "wind_dir", "nacelle_dir", "status")


def make_spec(**overrides: object) -> PipelineSpec:
    """The example spec of the brief; keyword overrides replace fields (feature_names re-derived)."""
    kw: dict[str, object] = dict(
        dt_seconds=600,
        channels=CHANNELS,
        dedupe="last",
        aggregation={"status": "max"},
        valid_range={},
        winsor_caps={},
        feature_channels=("wind_speed", "power", "gearbox_oil_temp", "wind_dir", "nacelle_dir"),
        angular_channels=("wind_dir", "nacelle_dir"),
        angle_units="deg",
        yaw_error=YawErrorSpec("wind_dir", "nacelle_dir", "yaw_error"),
        deltas=("gearbox_oil_temp", "yaw_error"),
        rolling=RollingSpec(("power", "gearbox_oil_temp"), (6, 36), ("mean", "std")),
        flag_names=("stopped", "curtailed"),
        flag_rules={"stopped": "status >= 2", "curtailed": "power <= 0 and wind_speed > 4"},
        fill_value=0.0,
    )
    kw.update(overrides)
    return PipelineSpec(**kw)  # type: ignore[arg-type]


def make_timeline(T: int, seed: int = 0, units: str = "deg") -> np.ndarray:
    """Realistic binned raw (T, 6): gaps, duplicate (repeated) values, frozen stretches, long channel outages."""
    rng = np.random.default_rng(seed)
    full = 360.0 if units == "deg" else 2 * np.pi
    ws = np.clip(8 + np.cumsum(rng.normal(0, 0.3, T)) % 10, 0, 25)
    power = np.clip(1500 + 400 * np.sin(np.arange(T) / 50) + rng.normal(0, 5, T), -20, 2100)
    temp = 50 + 0.5 * np.sin(np.arange(T) / 300) + 0.01 * rng.standard_normal(T)
    wdir = (full - 0.01 * full + np.cumsum(rng.normal(0, 0.005 * full, T))) % full  # hovers around the wrap
    ndir = (wdir + rng.normal(0, 0.02 * full, T)) % full
    status = rng.choice([0.0, 1.0, 2.0, 3.0], T, p=[0.85, 0.05, 0.05, 0.05])
    raw = np.column_stack([ws, power, temp, wdir, ndir, status])
    raw[rng.random(raw.shape) < 0.02] = np.nan  # scattered missing cells
    for start in rng.integers(0, T - 50, max(T // 500, 1)):  # whole-row gaps
        raw[start : start + rng.integers(1, 40)] = np.nan
    for start in rng.integers(1, T - T // 4, max(T // 600, 1)):  # frozen sensors / duplicated samples
        n = rng.integers(2, min(250, T // 4))
        raw[start : start + n, 1:3] = raw[start - 1, 1:3]
    raw[T // 5 : T // 5 + T // 6, 2] = np.nan  # gearbox temperature missing for a long span
    raw[T // 2 : T // 2 + T // 8, 3] = np.nan  # wind direction missing for a long span
    raw[-T // 10 :, 4] = np.nan  # nacelle direction missing to the end
    return raw


def assert_rel_close(a: np.ndarray, b: np.ndarray, rtol: float = 1e-9) -> None:
    """Same NaN pattern and |a-b| <= rtol*|b| elementwise (exact where b is 0)."""
    np.testing.assert_array_equal(np.isnan(a), np.isnan(b))
    ok = ~np.isnan(b)
    np.testing.assert_allclose(a[ok], b[ok], rtol=rtol, atol=0)


def run_stream(state: FeatureState, raw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    rows = [state.step(r) for r in raw]
    return np.array([e for e, _ in rows]), np.array([m for _, m in rows])


# --- math ----------------------------------------------------------------------------------------


def test_wrap_angle_half_open_interval() -> None:
    x = np.array([-180.0, 180.0, 540.0, -540.0, 359.0, -1e-17, 179.999, np.nan, 720.0, -181.0])
    got = wrap_angle(x, "deg")
    np.testing.assert_array_equal(got[[0, 1, 2, 3]], -180.0)
    assert got[4] == -1.0 and got[8] == 0.0 and got[9] == 179.0
    assert np.isnan(got[7])
    ok = ~np.isnan(got)
    assert np.all((got[ok] >= -180) & (got[ok] < 180))
    r = wrap_angle(np.array([np.pi, -np.pi, 3 * np.pi, -1e-18, 7.0]), "rad")
    assert np.all((r >= -np.pi) & (r < np.pi))
    np.testing.assert_allclose(r[4], 7.0 - 2 * np.pi)
    with pytest.raises(SpecError, match="units"):
        wrap_angle(x, "grad")


def test_sin_cos_and_yaw_error() -> None:
    s, c = sin_cos(np.array([0.0, 90.0, np.nan]), "deg")
    np.testing.assert_allclose(s[:2], [0.0, 1.0], atol=1e-15)
    np.testing.assert_allclose(c[:2], [1.0, 0.0], atol=1e-15)
    assert np.isnan(s[2]) and np.isnan(c[2])
    sr, cr = sin_cos(np.array([np.pi / 2]), "rad")
    np.testing.assert_allclose([sr[0], cr[0]], [1.0, 0.0], atol=1e-15)
    ye = yaw_error(np.array([359.0, 1.0, 10.0, np.nan, 5.0]), np.array([1.0, 359.0, 10.0, 3.0, np.nan]), "deg")
    np.testing.assert_allclose(ye[:3], [-2.0, 2.0, 0.0])
    assert np.isnan(ye[3:]).all()


# --- batch adapter: shapes and mask semantics -------------------------------------------------------


def test_columns_shapes_and_dtypes() -> None:
    spec = make_spec()
    raw = make_timeline(400)
    E, M = build_features(raw, spec)
    assert E.shape == M.shape == (400, spec.n_features)
    assert E.dtype == np.float64 and M.dtype == np.uint8
    np.testing.assert_array_equal(M == 0, np.isnan(E))
    col = {n: j for j, n in enumerate(spec.feature_names)}
    present = ~np.isnan(raw[:, 1])
    np.testing.assert_array_equal(E[present, col["power"]], raw[present, 1])


def test_mask_semantics_for_each_feature_kind() -> None:
    spec = make_spec()
    col = {n: j for j, n in enumerate(spec.feature_names)}
    raw = np.tile([8.0, 1500.0, 50.0, 10.0, 20.0, 0.0], (60, 1))
    raw[:, 1] += np.arange(60)
    raw[10, 3] = np.nan  # wind_dir missing
    raw[20, 4] = np.nan  # nacelle_dir missing
    raw[30, 2] = np.nan  # gearbox temperature missing
    raw[40, 1] = np.nan  # power missing
    E, M = build_features(raw, spec)
    miss = M == 0
    # angles: sin/cos missing iff the angle is missing
    np.testing.assert_array_equal(np.nonzero(miss[:, col["wind_dir_sin"]])[0], [10])
    np.testing.assert_array_equal(np.nonzero(miss[:, col["wind_dir_cos"]])[0], [10])
    np.testing.assert_array_equal(np.nonzero(miss[:, col["nacelle_dir_cos"]])[0], [20])
    # yaw error: missing iff either side is missing
    np.testing.assert_array_equal(np.nonzero(miss[:, col["yaw_error"]])[0], [10, 20])
    np.testing.assert_allclose(E[~miss[:, col["yaw_error"]], col["yaw_error"]], -10.0)
    # deltas: missing at the first step and where the current or previous step is missing
    np.testing.assert_array_equal(np.nonzero(miss[:, col["gearbox_oil_temp_delta"]])[0], [0, 30, 31])
    np.testing.assert_array_equal(np.nonzero(miss[:, col["yaw_error_delta"]])[0], [0, 10, 11, 20, 21])
    # rolling: the first w-1 steps and every window holding the missing step
    for w in (6, 36):
        exp = np.zeros(60, bool)
        exp[: w - 1] = True
        exp[40 : 40 + w] = True
        for s in ("mean", "std"):
            np.testing.assert_array_equal(miss[:, col[f"power_r{s}{w}"]], exp)
    np.testing.assert_allclose(E[5, col["power_rmean6"]], 1500 + 2.5)
    assert np.isnan(E[miss]).all() and not np.isnan(E[~miss]).any()
    # other columns are untouched by a missing power value
    assert not miss[40, col["gearbox_oil_temp_rmean6"]]


def _two_pass_std(x: np.ndarray, w: int) -> np.ndarray:
    """Reference population std per window: two-pass on values shifted by the window's last one."""
    win = sliding_window_view(x, w)
    out = np.full(x.size, np.nan)
    out[w - 1 :] = (win - win[:, -1:]).std(axis=1)
    return out


def test_rolling_columns_match_references() -> None:
    spec = make_spec()
    raw = make_timeline(3000, seed=4)
    E, _ = build_features(raw, spec)
    col = {n: j for j, n in enumerate(spec.feature_names)}
    for c in ("power", "gearbox_oil_temp"):
        x = E[:, col[c]]
        for w in (6, 36):
            assert_rel_close(E[:, col[f"{c}_rmean{w}"]], pd.Series(x).rolling(w).mean().to_numpy(), 1e-11)
            # pandas' online rolling std is not exact here (e.g. ~6e-5 instead of 0 on frozen power
            # after varying data), so the std reference is an exact two-pass per window
            assert_rel_close(E[:, col[f"{c}_rstd{w}"]], _two_pass_std(x, w), 1e-9)


# --- incremental == batch ---------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1])
def test_incremental_equals_batch_every_step(seed: int) -> None:
    spec = make_spec(rolling=RollingSpec(("power", "gearbox_oil_temp", "yaw_error"), (6, 36, 144), ("mean", "std")))
    raw = make_timeline(6000, seed=seed)
    E, M = build_features(raw, spec)
    Ei, Mi = run_stream(FeatureState(spec), raw)
    np.testing.assert_array_equal(Mi, M)
    assert_rel_close(Ei, E, 1e-9)
    # frozen stretches give exact zeros in both adapters
    col = spec.feature_names.index("power_rstd36")
    np.testing.assert_array_equal(Ei[:, col] == 0.0, E[:, col] == 0.0)
    assert (E[:, col] == 0.0).sum() > 0


def test_incremental_equals_batch_without_rolling_or_yaw_in_radians() -> None:
    spec = make_spec(angle_units="rad", yaw_error=None, deltas=("power", "wind_dir_sin"), rolling=None)
    raw = make_timeline(800, seed=2, units="rad")
    E, M = build_features(raw, spec)
    Ei, Mi = run_stream(FeatureState(spec), raw)
    np.testing.assert_array_equal(Mi, M)
    np.testing.assert_array_equal(Ei, E)


def test_yaw_error_missing_below_min_wind_speed_in_both_adapters() -> None:
    ye = YawErrorSpec("wind_dir", "nacelle_dir", "yaw_error", "wind_speed", 9.0)
    spec = make_spec(yaw_error=ye, rolling=RollingSpec(("power", "yaw_error"), (6, 36), ("mean", "std")))
    raw = make_timeline(3000, seed=3)
    E, M = build_features(raw, spec)
    j = spec.feature_names.index("yaw_error")
    idle = ~(raw[:, 0] >= 9.0)  # below the threshold, or wind speed missing
    assert idle.sum() > 300 and (~idle).sum() > 300
    assert (M[idle, j] == 0).all() and np.isnan(E[idle, j]).all()
    tracked = ~idle & ~np.isnan(raw[:, 3]) & ~np.isnan(raw[:, 4])
    np.testing.assert_array_equal(E[tracked, j], yaw_error(raw[tracked, 3], raw[tracked, 4], "deg"))
    Ei, Mi = run_stream(FeatureState(spec), raw)
    np.testing.assert_array_equal(Mi, M)
    assert_rel_close(Ei, E, 1e-9)
    round_trip = PipelineSpec.from_dict(spec.to_dict())
    assert round_trip.yaw_error == ye and round_trip.to_dict() == spec.to_dict()
    with pytest.raises(SpecError, match="wind_speed and min_wind_speed go together"):
        YawErrorSpec("wind_dir", "nacelle_dir", "yaw_error", "wind_speed", None)
    with pytest.raises(SpecError, match="yaw_error.wind_speed: 'wind_dir' must be a non-angular channel"):
        make_spec(yaw_error=YawErrorSpec("wind_dir", "nacelle_dir", "yaw_error", "wind_dir", 3.0))


# --- causality --------------------------------------------------------------------------------------


def test_no_lookahead() -> None:
    spec = make_spec(rolling=RollingSpec(("power", "gearbox_oil_temp"), (6, 36, 144), ("mean", "std")))
    raw = make_timeline(2000, seed=5)
    E, M = build_features(raw, spec)
    rng = np.random.default_rng(6)
    for t in rng.integers(0, raw.shape[0] - 1, 30):
        pert = raw.copy()
        tail = pert[t + 1 :]
        tail[:] = rng.uniform(-500, 3000, tail.shape)
        tail[rng.random(tail.shape) < 0.3] = np.nan
        E2, M2 = build_features(pert, spec)
        np.testing.assert_array_equal(E2[: t + 1], E[: t + 1])
        np.testing.assert_array_equal(M2[: t + 1], M[: t + 1])


# --- state ------------------------------------------------------------------------------------------


def test_state_dict_round_trip_mid_stream() -> None:
    spec = make_spec()
    raw = make_timeline(1500, seed=8)
    a = FeatureState(spec)
    run_stream(a, raw[:700])
    state = a.state_dict()
    assert set(state) == {"feature_names", "prev_base", "ring"}
    b = FeatureState(spec)
    b.load_state_dict(state)
    state["ring"][:] = 1e9  # the object holds its own copy
    Ea, Ma = run_stream(a, raw[700:])
    Eb, Mb = run_stream(b, raw[700:])
    np.testing.assert_array_equal(Ea, Eb)
    np.testing.assert_array_equal(Ma, Mb)


def test_load_state_dict_refuses_mismatches() -> None:
    spec = make_spec()
    good = FeatureState(spec).state_dict()
    with pytest.raises(InputError, match="keys"):
        FeatureState(spec).load_state_dict({**good, "extra": 1})
    with pytest.raises(InputError, match="keys"):
        FeatureState(spec).load_state_dict({k: v for k, v in good.items() if k != "ring"})
    other = make_spec(rolling=RollingSpec(("power",), (6,), ("mean",)))
    with pytest.raises(InputError, match="saved for features"):
        FeatureState(other).load_state_dict(good)
    with pytest.raises(InputError, match="shape"):
        FeatureState(spec).load_state_dict({**good, "ring": np.zeros((2, 5))})


# --- refusals and purity ----------------------------------------------------------------------------


def test_refuses_bad_raw() -> None:
    spec = make_spec()
    with pytest.raises(InputError, match="C=6"):
        build_features(np.zeros((10, 5)), spec)
    with pytest.raises(InputError, match="float"):
        build_features(np.zeros((10, 6), dtype=int), spec)
    bad = np.zeros((10, 6))
    bad[3, 1] = np.inf
    with pytest.raises(InputError, match="power"):
        build_features(bad, spec)
    with pytest.raises(InputError, match=r"\(C,\)"):
        FeatureState(spec).step(np.zeros((1, 6)))


def test_inputs_not_mutated() -> None:
    spec = make_spec()
    raw = make_timeline(600)
    keep = raw.copy()
    build_features(raw, spec)
    run_stream(FeatureState(spec), raw)
    np.testing.assert_array_equal(raw, keep)
