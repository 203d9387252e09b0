"""Per-signal scoring's stateful parts: aggregators, stuck runs, repeat codes and the fleet tracker.

Each is checked against a brute-force reading of its docstring, and every stateful object against the generic
restart contract: stopped anywhere, saved through the daemon's state file and loaded into a fresh object, it goes
on exactly as if it had never stopped.
"""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import numpy as np
import pytest

from scada_tcn.runtime.aggregators import Cusum, Ewma, StuckRun, make_aggregator
from scada_tcn.runtime.digest import canonical_json
from scada_tcn.runtime.repeats import CHANGED, SAME, UNKNOWN, repeat_codes
from scada_tcn.runtime.signals import (
    SignalLevels,
    SignalParams,
    SignalSpec,
    SignalTracker,
    StuckCheck,
    halflives,
)
from scada_tcn.runtime.state_file import load_state, save_state
from scada_tcn.runtime.vocab import ScoreAggregator, SignalBaseline


def _series(T: int, width: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.normal(0.3, 1.0, (T, width))
    present = rng.random((T, width)) > 0.2
    present[T // 3 : T // 3 + 40] = False  # an outage longer than max_gap and several half-lives
    return y, present


def test_ewma_is_the_decayed_mean_of_observed_steps() -> None:
    y, p = _series(300, 3, 0)
    e = Ewma(3, halflife=7.0)
    a = 0.5 ** (1 / 7.0)
    for t in range(len(y)):
        e.update([0], y[t : t + 1], p[t : t + 1])
        w = a ** (t - np.arange(t + 1))[:, None] * p[: t + 1]  # the weight of each past observed step
        S, W = (w * np.where(p[: t + 1], y[: t + 1], 0)).sum(0) * (1 - a), w.sum(0) * (1 - a)
        want = np.where(W >= 0.25, S / np.where(W >= 0.25, W, 1), np.nan)
        np.testing.assert_allclose(e.get([0])[0], want, rtol=1e-10, atol=1e-12)
    assert np.isnan(Ewma(1, 3.0).get([0])).all()  # undefined before any observation


def test_an_ewma_with_a_half_life_per_column_is_one_ewma_per_column() -> None:
    y, p = _series(300, 3, 2)
    both = Ewma(3, halflife=(2.0, 36.0, 144.0))
    alone = [Ewma(1, h) for h in (2.0, 36.0, 144.0)]
    for t in range(len(y)):
        both.update([0, 1], np.repeat(y[t : t + 1], 2, axis=0), np.repeat(p[t : t + 1], 2, axis=0))
        for j, e in enumerate(alone):
            e.update([0], y[t : t + 1, j : j + 1], p[t : t + 1, j : j + 1])
        got = both.get([0, 1])
        want = np.concatenate([e.get([0]) for e in alone], axis=1)[0]
        np.testing.assert_array_equal(got[0], want)
        np.testing.assert_array_equal(got[1], want)
    for bad in ((1.0, 2.0), (1.0, 2.0, 0.0), (1.0, np.inf, 2.0), ("1", 2.0, 3.0), True):
        with pytest.raises(ValueError, match="halflife"):
            Ewma(3, halflife=bad)


def test_group_half_lives_reach_each_monitored_feature_of_the_group() -> None:
    """`group_halflife`: the EWMA of the named groups' monitored features remembers with their own half-life, the
    others with `halflife`; unknown groups, bad half-lives and half-lives without EWMA are refused."""
    spec, levels = _spec(), SignalLevels((1.0, 2.0, 0.5, 10.0, 20.0))
    params = SignalParams(spec, "ewma", 36.0, None, 144, "fleet", 1, levels, {"oil": 144.0})
    assert halflives(spec, 36.0, {"oil": 144.0}) == (36.0, 36.0, 144.0)  # power, pitch, oil
    assert halflives(spec, 36.0, {}) == 36.0
    tracker = SignalTracker.from_params(params)
    assert tracker.agg.halflife == tracker.own.halflife == (36.0, 36.0, 144.0)
    d = params.to_dict()
    assert d["group_halflife"] == {"oil": 144.0} and SignalParams.from_dict(d) == params
    uniform = SignalParams(spec, "ewma", 36.0, None, 144, "fleet", 1, levels)
    assert params.basis() != uniform.basis()  # another memory: a state's aggregates start again
    older = {k: v for k, v in uniform.to_dict().items() if k != "group_halflife"}  # a bundle of schema 8
    assert SignalParams.from_dict(older, group_halflife=False) == uniform
    before = hashlib.sha256(canonical_json({k: v for k, v in older.items() if k != "levels"})).hexdigest()
    assert uniform.basis() == before  # no group half-lives: a state saved under a schema-8 bundle resumes
    for bad, said in ((older, "group_halflife"), ({**d, "group_halflife": [1]}, "expected an object")):
        with pytest.raises(ValueError, match=said):
            SignalParams.from_dict(bad)
    with pytest.raises(ValueError, match=r"unknown keys \['group_halflife'\]"):
        SignalParams.from_dict(d, group_halflife=False)
    for groups, said in (({"gearbox": 72.0}, r"\['gearbox'\] are not groups"), ({"oil": 0.0}, "finite numbers"),
                         ({"oil": float("nan")}, "finite numbers")):  # fmt: skip
        with pytest.raises(ValueError, match=said):
            SignalParams(spec, "ewma", 36.0, None, 144, "fleet", 1, levels, groups)
    with pytest.raises(ValueError, match="need aggregator 'ewma'"):
        SignalParams(spec, "cusum", None, 1.0, 144, "fleet", 1, levels, {"oil": 72.0})
    quiet = dataclasses.replace(spec, monitored=(True, False, True, False, False))  # pitch: its stuck check only
    with pytest.raises(ValueError, match=r"\['pitch'\] have no monitored feature"):
        halflives(quiet, 36.0, {"pitch": 72.0})


def test_cusum_sums_above_k_and_restarts_after_a_long_gap() -> None:
    y, p = _series(300, 2, 1)
    c = Cusum(2, k=0.5, max_gap=10)
    S, gap = np.zeros(2), np.zeros(2)
    for t in range(len(y)):
        c.update([0], y[t : t + 1], p[t : t + 1])
        for j in range(2):
            if p[t, j]:
                S[j], gap[j] = max(0.0, S[j] + y[t, j] - 0.5), 0
            else:
                gap[j] += 1
                S[j] = 0.0 if gap[j] > 10 else S[j]
        np.testing.assert_allclose(c.get([0])[0], S, rtol=1e-12)


def test_stuck_run_counts_repeats_only_while_the_prediction_moves() -> None:
    r = StuckRun([0.1])
    steps = [  # code, pred, has_pred -> run
        (UNKNOWN, 0.0, True, 0),
        (SAME, 0.5, True, 1),  # moved by 0.5 > 0.1
        (SAME, 0.55, True, 1),  # the prediction stayed still: no evidence, no reset
        (SAME, 1.0, True, 2),
        (UNKNOWN, 2.0, True, 2),  # a missing step holds the run
        (SAME, 2.0, False, 2),  # no prediction (window not scored): holds, and forgets the previous one
        (SAME, 3.0, True, 2),  # no previous prediction to compare with
        (SAME, 4.0, True, 3),
        (CHANGED, 5.0, True, 0),  # the channel moved: alive
    ]
    for code, pred, ok, want in steps:
        r.update([0], [[code]], [[pred]], [[ok]])
        assert r.get([0])[0, 0] == want


def test_repeat_codes_stream_equals_batch() -> None:
    rng = np.random.default_rng(3)
    v = np.round(rng.normal(0, 1, (500, 3)), 1)
    v[rng.random(v.shape) < 0.1] = np.nan
    v[100:150, 0] = 7.0
    batch = repeat_codes(v)
    prev = None
    for t in range(len(v)):
        np.testing.assert_array_equal(repeat_codes(v[t : t + 1], prev)[0], batch[t])
        prev = v[t]
    assert (batch[101:150, 0] == SAME).all()
    assert ((batch == UNKNOWN) == ~(np.isfinite(v) & np.isfinite(np.vstack([np.full((1, 3), np.nan), v[:-1]])))).all()


def _spec() -> SignalSpec:
    return SignalSpec(
        features=("power", "pitch", "oil", "oil_delta", "wind_dir"),
        groups=("power", "pitch", "oil"),
        group_of=(0, 1, 2, 2, -1),
        direction=("below", "both", "above", "above", "both"),
        center=(0.1, 0.6, 0.0, 0.0, 0.0),
        monitored=(True, True, True, False, False),
        stuck=(StuckCheck("pitch", 0, 1, 0.05), StuckCheck("oil_temp", 1, 2, 0.02)),
        skip_flags=("stopped",),
    )


def _fleet_inputs(T: int, B: int, seed: int) -> list[tuple]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(T):
        resid = rng.normal(0, 1, (B, 5)).astype(np.float64)
        present = rng.random((B, 5)) > 0.1
        pred = rng.normal(0, 1, (B, 5))
        scored = rng.random(B) > 0.05
        repeat = np.stack([np.where(rng.random(B) < 0.5, SAME, CHANGED), rng.choice([0, 1, 2], B)], axis=1)
        skip = rng.random(B) < 0.05
        out.append((np.arange(B), [f"T{b}" for b in range(B)], resid, present, pred, scored, repeat.astype(np.uint8),
                    skip))  # fmt: skip
    return out


@pytest.mark.parametrize("aggregator", ["ewma", "cusum"])
def test_tracker_restarts_exactly_through_the_state_file(tmp_path: Path, aggregator: str) -> None:
    spec = _spec()
    levels = SignalLevels((1.0, 2.0, 0.5, 10.0, 20.0))
    kw = {"halflife": 12.0, "k": None} if aggregator == "ewma" else {"halflife": None, "k": 0.5}
    params = SignalParams(spec, aggregator, kw["halflife"], kw["k"], 20, "fleet", 1, levels)
    inputs = _fleet_inputs(200, 4, 5)
    whole = SignalTracker.from_params(params)
    ref = [whole.step(*x) for x in inputs]
    for cut in (0, 1, 77, 199):
        a = SignalTracker.from_params(params)
        for x in inputs[:cut]:
            a.step(*x)
        save_state(tmp_path / "s.npz", {"signals": a.state_dict()})
        b = SignalTracker.from_params(params)
        b.load_state_dict(load_state(tmp_path / "s.npz")["signals"])
        for x, r in zip(inputs[cut:], ref[cut:]):
            got = b.step(*x)
            for name in r._fields:
                np.testing.assert_array_equal(getattr(got, name), getattr(r, name), err_msg=f"{name} after {cut}")


def test_a_tracker_state_saved_before_the_own_aggregates_resumes_with_them_afresh(tmp_path: Path) -> None:
    """A state of the runtime before the own aggregates (no "own") resumes: the values, runs and levels carry on
    exactly; the own aggregates start again (undefined at first)."""
    params = SignalParams(_spec(), "ewma", 12.0, None, 20, "fleet", 1, SignalLevels((1.0, 2.0, 0.5, 10.0, 20.0)))
    inputs = _fleet_inputs(80, 4, 3)
    whole = SignalTracker.from_params(params)
    for x in inputs[:50]:
        whole.step(*x)
    state = whole.state_dict()
    del state["own"]
    save_state(tmp_path / "s.npz", {"signals": state})
    old = SignalTracker.from_params(params)
    old.load_state_dict(load_state(tmp_path / "s.npz")["signals"])
    for i, x in enumerate(inputs[50:]):
        want, got = whole.step(*x), old.step(*x)
        np.testing.assert_array_equal(got.value, want.value)
        assert i > 0 or np.isnan(got.own).all()


@pytest.mark.parametrize("aggregator", ["ewma", "cusum"])
@pytest.mark.parametrize("baseline", ["fleet", "fleet_all", "none"])
def test_several_time_steps_in_one_call_equal_one_call_per_step(aggregator: str, baseline: str) -> None:
    """`step_of` (a replay's chunk, offline tracking): bitwise what one call per time step gives, with the fleet
    changing from step to step (turbines absent from some steps, steps of one turbine) and the calls cut anywhere."""
    spec = _spec()
    kw = {"halflife": 6.0, "k": None} if aggregator == "ewma" else {"halflife": None, "k": 0.3}
    params = SignalParams(spec, aggregator, kw["halflife"], kw["k"], 3, baseline, 1,
                          SignalLevels((1.0, 2.0, 0.5, 10.0, 20.0)))  # fmt: skip
    rng = np.random.default_rng(11)
    steps = []
    for x in _fleet_inputs(120, 6, 3):
        keep = np.flatnonzero(rng.random(6) < rng.choice([0.2, 0.9]))  # a thin fleet at some steps
        steps.append(tuple(np.asarray(a)[keep] if not isinstance(a, list) else [a[i] for i in keep] for a in x))
    steps = [x for x in steps if len(x[1])]
    one = SignalTracker.from_params(params)
    ref = [one.step(*x) for x in steps]
    for cuts in ([0, len(steps)], [0, 1, 2, 50, 51, len(steps)], sorted({0, len(steps), *rng.integers(0, 120, 9)})):
        many = SignalTracker.from_params(params)
        for a, b in zip(cuts[:-1], cuts[1:]):
            part = steps[a:b]
            if not part:
                continue
            cat = [[t for x in part for t in x[1]] if k == 1 else np.concatenate([x[k] for x in part])
                   for k in range(8)]  # fmt: skip
            got = many.step(*cat, np.repeat(np.arange(a, b), [len(x[1]) for x in part]))
            for name in got._fields:
                if name == "own" and params.baseline == SignalBaseline.none:  # own is value: not kept twice
                    assert got.own is None and all(r.own is None for r in ref[a:b])
                    continue
                want = np.concatenate([getattr(r, name) for r in ref[a:b]])
                np.testing.assert_array_equal(getattr(got, name), want, err_msg=f"{name} in steps {a}..{b}")
    with pytest.raises(ValueError, match="non-decreasing"):
        many.step(*steps[0], np.arange(len(steps[0][1]))[::-1])


def test_tracker_fleet_baseline_groups_and_skip() -> None:
    spec = _spec()
    levels = SignalLevels((1.0, 2.0, 0.5, 10.0, 20.0))
    tr = SignalTracker(spec, ScoreAggregator.ewma, 1e-9, None, 20, "fleet", 1, levels)  # no memory: value = y
    resid = np.array([[-3.0, 0.0, 1.0, 9.0, 5.0], [0.0, 0.0, 0.0, 0.0, 0.0], [1.0, 0.0, -1.0, 0.0, 0.0]])
    present = np.ones((3, 5), bool)
    st = tr.step([0, 1, 2], ["a", "b", "c"], resid, present, np.zeros((3, 5)), np.ones(3, bool),
                 np.zeros((3, 2), np.uint8), np.array([False, False, True]))  # fmt: skip
    v = spec.feature_deviation(resid)[:, [0, 1, 2]]  # power (below), pitch (both), oil (above)
    # turbine c is skipped: neither scored nor a peer; a and b are each other's only peer
    np.testing.assert_allclose(st.value[:2, :3], v[:2] - v[[1, 0]], atol=1e-6)
    assert np.isnan(st.value[2, :3]).all() and st.score[2] == 0.0  # only its stuck runs (0: the channels moved)
    np.testing.assert_allclose(st.ratio[:2, :3], st.value[:2, :3] / np.array([1.0, 2.0, 0.5]))
    assert st.group_top[0, 2] in (2, 4)  # the oil group holds the oil feature and stuck:oil_temp
    np.testing.assert_allclose(st.score[:2], np.nanmax(st.ratio[:2], axis=1))
    assert spec.monitor_names == ("power", "pitch", "oil", "stuck:pitch", "stuck:oil_temp")
    with pytest.raises(ValueError, match="skip_flags"):
        spec.skip_mask(np.zeros((1, 1)), ["curtailed"])


def test_fleet_all_baseline_keeps_a_runaway_turbine_off_its_peers() -> None:
    """Three turbines, one whose oil temperature reads far below its prediction (a frozen or failed sensor): under
    `fleet` each healthy turbine's baseline is the mean of the runaway and the other healthy one, so a healthy
    turbine reads about half the runaway's deviation, the wrong way up: an alert on the wrong turbine;
    under `fleet_all` (the median of all three) it reads at most the healthy turbines' spread, and the runaway
    still reads its own deviation less a healthy value. `min_peers` counts the other turbines either way."""
    spec = _spec()
    levels = SignalLevels((1.0, 2.0, 0.5, 10.0, 20.0))
    resid = np.zeros((3, 5))
    # oil (direction above: its deviation is z): c reads far below its prediction, a and b are healthy
    resid[:, 2] = [0.1, -0.2, -12.0]
    present, pred, repeat, skip = np.ones((3, 5), bool), np.zeros((3, 5)), np.zeros((3, 2), np.uint8), np.zeros(3, bool)
    v = spec.feature_deviation(resid)[:, 2]
    got = {}
    for baseline in ("fleet", "fleet_all"):
        tr = SignalTracker(spec, ScoreAggregator.ewma, 1e-9, None, 20, baseline, 1, levels)  # no memory: value = y
        got[baseline] = tr.step([0, 1, 2], ["a", "b", "c"], resid, present, pred, np.ones(3, bool), repeat, skip)
    fleet, alls = got["fleet"].value[:, 2], got["fleet_all"].value[:, 2]
    np.testing.assert_allclose(fleet, v - np.array([(v[1] + v[2]) / 2, (v[0] + v[2]) / 2, (v[0] + v[1]) / 2]))
    assert (fleet[:2] / 0.5 > 10).all()  # the healthy turbines read half the runaway's 12: ten times their level
    np.testing.assert_allclose(alls, v - v[1])  # the median of the three is b's -0.2
    assert (np.abs(alls[:2]) <= abs(v[0] - v[1]) + 1e-12).all() and alls[2] < -11  # healthy: their spread at most
    tr = SignalTracker(spec, ScoreAggregator.ewma, 1e-9, None, 20, "fleet_all", 2, levels)
    st = tr.step([0, 1], ["a", "b"], resid[:2], present[:2], pred[:2], np.ones(2, bool), repeat[:2], skip[:2])
    assert np.isnan(st.value[:, :3]).all()  # one other turbine observed, 2 needed: nothing taken


@pytest.mark.parametrize("aggregator", ["ewma", "cusum"])
def test_own_deviation_beside_the_fleet_relative_one_shows_where_a_ratio_came_from(aggregator: str) -> None:
    """Under a fleet baseline each monitored feature's own deviation is aggregated on the same steps (`own`): a
    healthy turbine that reads high only because a peer ran away shows a small own value beside its large
    relative one. With every turbine observed, own is bitwise the value a tracker without a baseline gives."""
    spec = _spec()
    levels = SignalLevels((1.0, 2.0, 0.5, 10.0, 20.0))
    resid = np.zeros((3, 5))
    resid[:, 2] = [0.1, -0.2, -12.0]  # oil: c far below its prediction, a and b healthy
    present, pred, repeat, skip = np.ones((3, 5), bool), np.zeros((3, 5)), np.zeros((3, 2), np.uint8), np.zeros(3, bool)
    tr = SignalTracker(spec, ScoreAggregator.ewma, 1e-9, None, 20, "fleet", 1, levels)  # no memory: value = y
    st = tr.step([0, 1, 2], ["a", "b", "c"], resid, present, pred, np.ones(3, bool), repeat, skip)
    v = spec.feature_deviation(resid)[:, 2]
    assert (st.value[:2, 2] > 5).all() and np.allclose(st.own[:, 2], v)  # a, b: about 6 relative, 0.1/-0.2 own
    assert np.isnan(st.own[:, 3:]).all()  # the stuck checks have no own part

    kw = {"halflife": 6.0, "k": None} if aggregator == "ewma" else {"halflife": None, "k": 0.3}
    trackers = {b: SignalTracker(spec, aggregator, kw["halflife"], kw["k"], 3, b, 1, levels) for b in ("fleet", "none")}
    for x in _fleet_inputs(60, 4, 9):
        full = (*x[:3], np.ones((4, 5), bool), x[4], np.ones(4, bool), x[6], np.zeros(4, bool))
        fleet, alone = (trackers[b].step(*full) for b in ("fleet", "none"))
        assert alone.own is None
        np.testing.assert_array_equal(fleet.own[:, :3], alone.value[:, :3])


def test_fleet_and_own_baseline_needs_a_turbine_to_depart_from_its_peers_and_from_itself() -> None:
    """`fleet_and_own`: each feature's value is the smaller of its deviation relative to the other turbines'
    median and its own deviation. A healthy turbine whose peer ran away reads its own small value (no alert on
    the wrong turbine); a farm-wide rise (weather) reads the small relative value, as under `fleet`; a turbine
    that departs from both reads high."""
    spec = _spec()
    levels = SignalLevels((1.0, 2.0, 0.5, 10.0, 20.0))
    present, pred, repeat, skip = np.ones((3, 5), bool), np.zeros((3, 5)), np.zeros((3, 2), np.uint8), np.zeros(3, bool)

    def oil(values: list[float]) -> tuple[np.ndarray, np.ndarray]:
        resid = np.zeros((3, 5))
        resid[:, 2] = values  # oil, direction above: its deviation is z
        tr = SignalTracker(spec, ScoreAggregator.ewma, 1e-9, None, 20, "fleet_and_own", 1, levels)  # value = y
        st = tr.step([0, 1, 2], ["a", "b", "c"], resid, present, pred, np.ones(3, bool), repeat, skip)
        return st.value[:, 2], spec.feature_deviation(resid)[:, 2]

    value, v = oil([0.1, -0.2, -12.0])  # c reads far below its prediction: under `fleet` a and b read about +6
    np.testing.assert_allclose(value[:2], v[:2])
    np.testing.assert_allclose(value[2], min(v[2], v[2] - (v[0] + v[1]) / 2))
    value, v = oil([3.0, 3.2, 2.9])  # every turbine runs warm: a hot day, not a fault
    assert (np.abs(value) <= 0.3 + 1e-12).all()
    value, v = oil([4.0, 0.1, -0.1])  # a runs hot, its peers do not
    np.testing.assert_allclose(value[0], 4.0)


def test_a_step_is_observed_only_with_new_evidence() -> None:
    """`observed` (the steps alerts and drift count): scored, not skipped, and a monitored feature the aggregator
    took or a stuck-checked feature present. A turbine whose feed stopped (every feature missing) is not observed,
    nor one whose peers all went silent under the fleet baseline (nothing taken: its aggregates frozen) unless a
    stuck check reads one of its present channels."""
    spec = _spec()
    tr = SignalTracker(spec, ScoreAggregator.ewma, 36.0, None, 144, "fleet", 1, SignalLevels((1.0,) * 5))
    resid, pred, repeat, skip = np.zeros((2, 5)), np.zeros((2, 5)), np.zeros((2, 2), np.uint8), np.zeros(2, bool)
    for present, scored, want in (
        (np.ones((2, 5), bool), np.ones(2, bool), [True, True]),
        (np.array([[True] * 5, [False] * 5]), np.ones(2, bool), [True, False]),  # b's feed stopped
        (np.array([[True, False, False, True, True], [False] * 5]), np.array([True, False]), [False, False]),  # no peer
        (np.array([[True] * 5, [False] * 5]), np.array([True, False]), [True, False]),  # no peer; stuck checks read
    ):
        st = tr.step([0, 1], ["a", "b"], resid, present, pred, scored, repeat, skip)
        assert st.observed.tolist() == want, (present.tolist(), scored.tolist())


def test_params_round_trip_and_strict_keys() -> None:
    params = SignalParams(_spec(), "ewma", 36.0, None, 144, "fleet", 1, SignalLevels((1.0, 2.0, 0.5, 10.0, 20.0)))
    d = params.to_dict()
    assert SignalParams.from_dict(d) == params
    for bad in ({**d, "extra": 1}, {k: v for k, v in d.items() if k != "levels"}):
        with pytest.raises(ValueError):
            SignalParams.from_dict(bad)
    with pytest.raises(ValueError, match="levels"):
        SignalParams(_spec(), "ewma", 36.0, None, 144, "fleet", 1, SignalLevels((1.0,)))
    with pytest.raises(ValueError, match="finite levels"):
        SignalLevels((1.0, 0.0))
    with pytest.raises(ValueError):
        make_aggregator(ScoreAggregator.cusum, 2, 36.0, None, 10)
