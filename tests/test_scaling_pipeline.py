"""runtime.scaling and runtime.pipeline: robust scaler, fill after mask, stream == batch, state."""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from scada_tcn.runtime.errors import InputError, ScalerError
from scada_tcn.runtime.features import FeatureState, build_features
from scada_tcn.runtime.fleet import Fleet
from scada_tcn.runtime.pipeline import ModelInputs, Preprocessor, StreamPreprocessor, scaled_mask
from scada_tcn.runtime.scaling import RobustScaler, fit_robust_scaler
from scada_tcn.runtime.slots import rounds
from scada_tcn.runtime.spec import PipelineSpec, RollingSpec
from tests.test_features import make_spec, make_timeline

TRAIN = 2500


def with_fill(spec: PipelineSpec, fill: float) -> PipelineSpec:
    d = spec.to_dict()
    d["fill_value"] = fill
    return PipelineSpec.from_dict(d)


def fitted(spec: PipelineSpec, raw: np.ndarray, clip: float | None = None) -> Preprocessor:
    """A Preprocessor whose scaler is fitted on the first TRAIN rows of `raw`."""
    E, _, _ = Preprocessor(spec, None).engineer(raw)
    scaler = fit_robust_scaler(E[:TRAIN], spec.feature_names, scaled_mask(spec), clip=clip)
    return Preprocessor(spec, scaler)


def stream(sp: StreamPreprocessor, raw: np.ndarray) -> ModelInputs:
    outs = [sp.step(r) for r in raw]
    return ModelInputs(*(np.array([getattr(o, k) for o in outs]) for k in ("X", "M_miss", "Flags", "Repeat")))


# --- scaler -----------------------------------------------------------------------------------------


def test_scaled_mask_leaves_sin_cos_unscaled() -> None:
    spec = make_spec()
    mask = scaled_mask(spec)
    off = [n for n, m in zip(spec.feature_names, mask) if not m]
    assert off == ["wind_dir_sin", "wind_dir_cos", "nacelle_dir_sin", "nacelle_dir_cos"]


def test_fit_on_train_slice_ignores_planted_extremes_outside_it() -> None:
    spec = make_spec()
    raw = make_timeline(5000, seed=3)
    planted = raw.copy()
    planted[TRAIN + 10 :: 50, 1] = 1e9  # extreme power readings after the training rows
    planted[TRAIN + 5 :: 70, 2] = -1e6
    clean_scaler = fitted(spec, raw).scaler
    pre = fitted(spec, planted)
    assert pre.scaler == clean_scaler
    X = pre.transform(planted).X
    j = spec.feature_names.index("power")
    assert np.nanmax(X[TRAIN:, j]) > 1e5  # the planted values are visible, not absorbed by the scale
    clipped = fitted(spec, planted, clip=5.0).transform(planted).X
    assert np.abs(clipped[:, scaled_mask(spec)]).max() <= 5.0


def test_median_iqr_and_recorded_fallbacks() -> None:
    rng = np.random.default_rng(0)
    n = 1000
    E = np.column_stack(
        [
            rng.normal(10, 2, n),  # ordinary: IQR
            np.where(rng.random(n) < 0.9, 7.0, rng.normal(7, 3, n)),  # IQR 0, spread in the tails: std
            np.full(n, 3.0),  # constant: unit
            np.sin(rng.uniform(0, 6, n)),  # unscaled
        ]
    )
    E[::13, 0] = np.nan
    names = ["a", "mostly_constant", "constant", "x_sin"]
    s = fit_robust_scaler(E, names, np.array([True, True, True, False]))
    assert s.scale_source == ("iqr", "std", "unit", "unit")
    a = E[~np.isnan(E[:, 0]), 0]
    q25, q75 = np.percentile(a, [25, 75])
    assert s.center[0] == np.median(a) and s.scale[0] == pytest.approx(q75 - q25)
    assert s.center[1] == 7.0 and s.scale[1] == pytest.approx(np.sqrt(np.mean((E[:, 1] - 7.0) ** 2)))
    assert (s.center[2], s.scale[2]) == (3.0, 1.0)
    assert (s.center[3], s.scale[3]) == (0.0, 1.0)
    X = s.transform(E)
    np.testing.assert_array_equal(X[:, 3], E[:, 3])
    np.testing.assert_array_equal(np.isnan(X), np.isnan(E))
    assert not s.center.flags.writeable


def test_scaler_refusals() -> None:
    E = np.random.default_rng(1).normal(size=(50, 3))
    E[:, 1] = np.nan
    with pytest.raises(ScalerError, match=r"no present training value: \['b'\]"):
        fit_robust_scaler(E, ["a", "b", "c"], np.array([True, True, False]))
    s = fit_robust_scaler(E, ["a", "b", "c"], np.array([True, False, True]))  # unscaled all-NaN is fine
    with pytest.raises(ScalerError, match=r"\(T, 3\)"):
        s.transform(np.zeros((4, 2)))
    with pytest.raises(ScalerError, match="names differ"):
        s.transform(np.zeros((4, 3)), ["a", "c", "b"])
    with pytest.raises(ScalerError, match="scaled_mask"):
        fit_robust_scaler(E, ["a", "b", "c"], np.array([1, 0, 1]))
    with pytest.raises(ScalerError, match="clip"):
        fit_robust_scaler(E, ["a", "b", "c"], np.array([True, False, True]), clip=-1.0)


def test_to_dict_round_trip_and_strictness() -> None:
    spec = make_spec()
    s = fitted(spec, make_timeline(3000), clip=4.0).scaler
    assert s is not None
    d = json.loads(json.dumps(s.to_dict()))
    back = RobustScaler.from_dict(d)
    assert back == s
    np.testing.assert_array_equal(back.center, s.center)
    np.testing.assert_array_equal(back.scale, s.scale)
    with pytest.raises(ScalerError, match=r"unknown keys \['bogus'\]"):
        RobustScaler.from_dict({**d, "bogus": 1})
    with pytest.raises(ScalerError, match=r"missing keys \['clip'\]"):
        RobustScaler.from_dict({k: v for k, v in d.items() if k != "clip"})
    with pytest.raises(ScalerError, match="one per feature"):
        RobustScaler.from_dict({**d, "scale": d["scale"][:-1]})
    with pytest.raises(ScalerError, match="unscaled"):
        RobustScaler.from_dict({**d, "center": [1.0] * len(d["center"])})


# --- pipeline ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("fill", [0.0, -3.5])
def test_fill_never_hides_a_missing_value(fill: float) -> None:
    spec = with_fill(make_spec(), fill)
    raw = make_timeline(4000, seed=2)
    pre = fitted(spec, raw)
    E, M, Flags = pre.engineer(raw)
    out = pre.transform(raw)
    assert out.X.dtype == np.float32 and out.M_miss.dtype == np.uint8 and out.Flags.dtype == np.float32
    assert out.X.shape == out.M_miss.shape == (4000, spec.n_features) and out.Flags.shape == (4000, spec.n_flags)
    np.testing.assert_array_equal(out.M_miss, M)
    np.testing.assert_array_equal(M == 0, np.isnan(E))
    assert np.all(out.X[M == 0] == np.float32(fill))
    assert np.isfinite(out.X).all()
    np.testing.assert_array_equal(out.Flags, Flags)


def test_finish_refusals() -> None:
    spec = make_spec()
    raw = make_timeline(600)
    E, M, _ = Preprocessor(spec, None).engineer(raw)
    with pytest.raises(ScalerError, match="no scaler"):
        Preprocessor(spec, None).finish(E, M)
    pre = fitted(spec, make_timeline(3000))
    bad = M.copy()
    bad[np.argwhere(M == 0)[0][0], np.argwhere(M == 0)[0][1]] = 1
    with pytest.raises(InputError, match="disagrees"):
        pre.finish(E, bad)
    with pytest.raises(InputError, match="uint8"):
        pre.finish(E, M.astype(bool))
    other = make_spec(rolling=RollingSpec(("power",), (6,), ("mean",)))
    with pytest.raises(ScalerError, match="does not match"):
        Preprocessor(other, pre.scaler)
    with pytest.raises(ScalerError, match="fitted scaler"):
        StreamPreprocessor(spec, None)  # type: ignore[arg-type]
    with pytest.raises(InputError, match="C=6"):
        pre.transform(raw[:, :5])


def test_winsor_caps_shape_features_but_not_flags() -> None:
    spec = make_spec().with_winsor_caps({"power": (100.0, 1600.0), "status": (0.0, 1.0)})
    raw = make_timeline(3000, seed=1)
    E, _, Flags = Preprocessor(spec, None).engineer(raw)
    p = E[:, spec.feature_names.index("power")]
    assert np.nanmax(p) == 1600.0 and np.nanmin(p) >= 100.0
    assert np.nanmax(E[:, spec.feature_names.index("power_rmean36")]) <= 1600.0
    # flags read the binned readings: a cap on status (a feature-scaling concern) must not hide a stop
    uncapped = Preprocessor(make_spec(), None).engineer(raw)[2]
    np.testing.assert_array_equal(Flags, uncapped)
    assert Flags[:, spec.flag_names.index("stopped")].any()


def test_flags_follow_the_rules_where_sources_are_present() -> None:
    spec = make_spec()
    raw = make_timeline(3000, seed=4)
    _, _, Flags = Preprocessor(spec, None).engineer(raw)
    status, power, ws = raw[:, 5], raw[:, 1], raw[:, 0]
    ok = ~np.isnan(status)
    np.testing.assert_array_equal(Flags[ok, 0], (status[ok] >= 2).astype(np.float32))
    ok = ~np.isnan(power) & ~np.isnan(ws)
    np.testing.assert_array_equal(Flags[ok, 1], ((power[ok] <= 0) & (ws[ok] > 4)).astype(np.float32))


def test_stream_equals_batch_every_step() -> None:
    spec = make_spec(rolling=RollingSpec(("power", "gearbox_oil_temp"), (6, 36, 144), ("mean", "std")),
                     repeat_channels=("power", "gearbox_oil_temp"))  # fmt: skip
    raw = make_timeline(5000, seed=6)
    raw[100:160, list(spec.channels).index("gearbox_oil_temp")] = 55.5  # a frozen sensor: a run of repeats
    pre = fitted(spec, raw)
    batch = pre.transform(raw)
    out = stream(StreamPreprocessor(spec, pre.scaler), raw)  # type: ignore[arg-type]
    np.testing.assert_array_equal(out.M_miss, batch.M_miss)
    np.testing.assert_array_equal(out.Flags, batch.Flags)
    np.testing.assert_array_equal(out.Repeat, batch.Repeat)
    assert (batch.Repeat[101:160, 1] == 1).all() and batch.Repeat.shape == (5000, 2)
    np.testing.assert_allclose(out.X, batch.X, rtol=1e-6, atol=1e-6)  # float32 of values equal to ~1e-13


def test_a_chunk_of_several_steps_per_turbine_equals_a_step_at_a_time() -> None:
    """`StreamPreprocessor.step_many` with a turbine's consecutive steps in one call (a replay's chunk: slots
    repeat, each one's rows in order, turbines interleaved or not, some absent) gives bitwise what one call per
    time step gives, and leaves the same state (deltas, rolling rings, repeat codes)."""
    spec = make_spec(rolling=RollingSpec(("power", "gearbox_oil_temp"), (6, 36, 144), ("mean", "std")),
                     repeat_channels=("power", "gearbox_oil_temp"))  # fmt: skip
    raw = make_timeline(3000, seed=12)
    raw[200:260, list(spec.channels).index("power")] = 1234.5  # a run of repeats across calls
    scaler = fitted(spec, raw).scaler
    rng = np.random.default_rng(13)
    S = 5
    rows = raw[rng.integers(0, raw.shape[0], 4000)]  # any rows: each slot's are its consecutive steps
    rows[rng.random(rows.shape) < 0.1] = np.nan
    slots = rng.integers(0, S, rows.shape[0])
    slots[1000:1400] = 2  # one turbine's backlog
    whole, steps = StreamPreprocessor(spec, scaler, slots=S), StreamPreprocessor(spec, scaler, slots=S)
    cuts = [0, 1, 7, 300, 1000, 1400, 2999, 4000]
    for a, b in zip(cuts[:-1], cuts[1:]):
        got = whole.step_many(slots[a:b], rows[a:b])
        for r in rounds(slots[a:b]):  # distinct slots per call: a time step of the fleet
            want = steps.step_many(slots[a:b][r], rows[a:b][r])
            for name in ("X", "M_miss", "Flags", "Repeat"):
                np.testing.assert_array_equal(getattr(got, name)[r], getattr(want, name), err_msg=name)
    empty = whole.step_many(np.zeros(0, np.int64), np.zeros((0, len(spec.channels))))  # nothing closed: no change
    assert empty.X.shape == (0, spec.n_features) and empty.Repeat.shape == (0, 2)
    for slot in range(S):
        x, y = whole.state_dict(slot), steps.state_dict(slot)
        np.testing.assert_array_equal(x["prev"], y["prev"])
        for key in ("prev_base", "ring"):
            np.testing.assert_array_equal(x["features"][key], y["features"][key])


def test_pipeline_no_lookahead() -> None:
    spec = make_spec(repeat_channels=("power",))
    raw = make_timeline(3000, seed=9)
    pre = fitted(spec, raw)
    base = pre.transform(raw)
    rng = np.random.default_rng(10)
    for t in rng.integers(0, raw.shape[0] - 1, 25):
        pert = raw.copy()
        tail = pert[t + 1 :]
        tail[:] = rng.uniform(-100, 3000, tail.shape)
        tail[rng.random(tail.shape) < 0.3] = np.nan
        out = pre.transform(pert)
        for k in ("X", "M_miss", "Flags", "Repeat"):
            np.testing.assert_array_equal(getattr(out, k)[: t + 1], getattr(base, k)[: t + 1])


def test_stream_state_dict_round_trip_mid_stream() -> None:
    spec = make_spec()
    raw = make_timeline(2000, seed=12)
    pre = fitted(spec, raw)
    a = StreamPreprocessor(spec, pre.scaler)  # type: ignore[arg-type]
    stream(a, raw[:1100])
    state = json.loads(json.dumps(_jsonable(a.state_dict())))  # survives a JSON trip
    b = StreamPreprocessor(spec, pre.scaler)  # type: ignore[arg-type]
    b.load_state_dict(state)
    ra, rb = stream(a, raw[1100:]), stream(b, raw[1100:])
    for k in ("X", "M_miss", "Flags"):
        np.testing.assert_array_equal(getattr(ra, k), getattr(rb, k))
    with pytest.raises(InputError, match="features"):
        b.load_state_dict({"nope": 1})


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, np.ndarray):
        return [None if np.isnan(v) else float(v) for v in x.ravel()] if x.ndim == 1 else [_jsonable(r) for r in x]
    return x


# --- generic: every stateful class ------------------------------------------------------------------


def _cases() -> list[tuple[type, Callable[[Any, np.ndarray], Any]]]:
    return [
        (FeatureState, lambda o, raw: [o.step(r) for r in raw]),
        (StreamPreprocessor, lambda o, raw: [o.step(r) for r in raw]),
        (Preprocessor, lambda o, raw: [o.transform(raw[:200]), o.engineer(raw[200:])]),
    ]


def _flat(x: Any) -> list[np.ndarray]:
    if isinstance(x, ModelInputs):
        return [x.X, x.M_miss, x.Flags]
    if isinstance(x, (list, tuple)):
        return [a for item in x for a in _flat(item)]
    return [np.asarray(x)]


@pytest.mark.parametrize("cls,drive", _cases(), ids=lambda c: getattr(c, "__name__", "drive"))
def test_stateful_classes_generic(cls: type, drive: Callable[[Any, np.ndarray], Any]) -> None:
    spec = make_spec()
    raw = make_timeline(3000, seed=13)
    scaler = fitted(spec, raw).scaler
    available = {"spec": spec, "scaler": scaler, "slots": 1}
    params = {p: available[p] for p in inspect.signature(cls).parameters}
    obj = cls(**params)
    part1, part2 = raw[:400].copy(), raw[400:800].copy()
    keep1, keep2 = part1.copy(), part2.copy()
    drive(obj, part1)
    np.testing.assert_array_equal(part1, keep1)  # inputs are not mutated

    # rebuilt from its parameters (read back from the used object) == a brand-new object
    rebuilt = cls(**{p: getattr(obj, p) for p in params})
    fresh = cls(**params)
    for a, b in zip(_flat(drive(rebuilt, part2)), _flat(drive(fresh, part2)), strict=True):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(part2, keep2)

    if hasattr(obj, "state_dict"):
        clone = cls(**params)
        clone.load_state_dict(obj.state_dict())
        for a, b in zip(_flat(drive(obj, part2)), _flat(drive(clone, part2)), strict=True):
            np.testing.assert_array_equal(a, b)


def test_build_features_matches_preprocessor_without_caps() -> None:
    spec = make_spec()
    raw = make_timeline(800, seed=14)
    E, M = build_features(raw, spec)
    E2, M2, _ = Preprocessor(spec, None).engineer(raw)
    np.testing.assert_array_equal(E, E2)
    np.testing.assert_array_equal(M, M2)


def test_fleet_add_many_and_add_batch_equal_one_sample_at_a_time() -> None:
    """`Fleet.add_many` (replay's chunks: rows sorted by time, one vectorised call per turbine) and
    `Fleet.add_batch` (the daemon's loop iterations: the whole fleet binned at once) give the steps, their closing
    order across turbines, the slots and the late count of feeding the rows one by one. A batch the fleet cannot
    take is refused before anything changes."""
    spec = make_spec(repeat_channels=("power",))
    rng = np.random.default_rng(21)
    scaler = fitted(spec, make_timeline(3000, seed=20)).scaler
    dt = spec.dt_seconds * 1_000_000_000
    t0 = 1_709_287_200 * 1_000_000_000
    events = []  # (turbine, stamp, row): 4 turbines, up to 3 samples a bin, gaps, shared stamps across turbines
    for k, name in enumerate(["T3", "T1", "T4", "T2"]):
        raw = make_timeline(700, seed=30 + k)
        for i in np.flatnonzero(rng.random(700) > 0.03):
            for _ in range(int(rng.integers(1, 4))):
                events.append((name, t0 + (i + k % 2) * dt - int(rng.integers(0, 3)) * 60_000_000_000, raw[i]))
    order = np.argsort([t for _, t, _ in events], kind="stable")
    events = [events[i] for i in order]
    cuts = np.sort(rng.choice(np.arange(1, len(events)), 40, replace=False))
    chunks = [[events[i] for i in c] for c in np.split(np.arange(len(events)), cuts)]
    chunks[20] = chunks[5][:4] + chunks[20]  # stale rows from an earlier chunk: late
    one, many, batch = (Fleet(spec, scaler, 36, 0.0, 10, windows=False) for _ in range(3))
    late_one = sum(one.add(n, t, r) == "late" for c in chunks for n, t, r in c)
    late_many = sum(many.add_many(np.array([n for n, _, _ in c]), np.array([t for _, t, _ in c], np.int64),
                                  np.stack([r for _, _, r in c])) for c in chunks)  # fmt: skip
    late_batch = sum(batch.add_batch([n for n, _, _ in c], np.array([t for _, t, _ in c], np.int64),
                                     np.stack([r for _, _, r in c])).late.size for c in chunks)  # fmt: skip
    a, b, c = one.drain(), many.drain(), batch.drain()
    assert late_one == late_many == late_batch == 4 and one.turbines == many.turbines == batch.turbines
    assert len(one.turbines) == 4
    assert len(a) == len(b) == len(c) > 2500 and [s.turbine for s in a[:8]] != sorted(s.turbine for s in a[:8])
    for sa, sb, sc in zip(a, b, c):
        assert (sa.turbine, sa.slot, sa.end_ns, sa.n_steps) == (sb.turbine, sb.slot, sb.end_ns, sb.n_steps)
        assert (sa.turbine, sa.slot, sa.end_ns, sa.n_steps) == (sc.turbine, sc.slot, sc.end_ns, sc.n_steps)
        for x, y, z in zip((*sa.rows, sa.repeat_now, sa.present), (*sb.rows, sb.repeat_now, sb.present),
                           (*sc.rows, sc.repeat_now, sc.present)):  # fmt: skip
            np.testing.assert_array_equal(x, y)
            np.testing.assert_array_equal(x, z)
    small = Fleet(spec, scaler, 36, 0.0, 2, windows=False)
    small.add("T1", t0, np.zeros(len(spec.channels)))
    before = small.state_dict()
    rows = np.zeros((3, len(spec.channels)))
    with pytest.raises(ValueError, match="beyond max_turbines"):  # T2 fits, T3 does not: neither is taken
        small.add_batch(["T1", "T2", "T3"], np.array([t0 + dt] * 3), rows)
    with pytest.raises(InputError, match="integer"):
        small.add_batch(["T1", "T2", "T1"], np.array([t0 + dt, t0 + dt, 0.5]), rows)
    assert small.turbines == ["T1"] and small.drain() == []
    assert str(small.state_dict()) == str(before)
    with pytest.raises(ValueError, match="one row per sample"):
        many.add_many(np.array(["T1"]), np.array([t0, t0 + dt]), np.zeros((2, len(spec.channels))))
