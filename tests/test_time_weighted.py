"""Time-weighted means of report-by-exception channels (`aggregation: time`, `binning._time_weigh`): the rule, batch
and stream alike, causality, how close it comes to a dense signal's mean, and the spec's and config's checks."""

from __future__ import annotations

import math

import numpy as np
import pytest

from scada_tcn.runtime.binning import bin_timeline
from scada_tcn.runtime.errors import ConfigError, SpecError
from scada_tcn.runtime.fleet import Fleet
from scada_tcn.runtime.hold import UNREAD, is_unread
from scada_tcn.runtime.open_bins import BinAccumulator
from scada_tcn.runtime.pipeline import Preprocessor
from scada_tcn.runtime.spec import PipelineSpec
from scada_tcn.runtime.state_file import load_state, save_state
from scada_tcn.trainer.config import load_config
from scada_tcn.trainer.config.derive import spec_from_config
from tests.test_binning import CHANNELS, DT, T10, WD, S, make_spec
from tests.test_config import CONFIG
from tests.test_features import make_spec as make_feature_spec
from tests.test_features import make_timeline
from tests.test_hold import HOLDS, _random_feed, _report_by_exception, random_values
from tests.test_scaling_pipeline import fitted

TIMED = {"power": "time", "wind_dir": "time", "status": "max"}


def _timed_spec() -> PipelineSpec:
    return make_spec(hold_s=HOLDS, aggregation=TIMED)


def _reference(
    ts: np.ndarray, vals: np.ndarray, holds: dict[str, int] = HOLDS, dedupe: str = "last"
) -> tuple[np.ndarray, np.ndarray]:
    """The rule, one bin at a time: the held binning for the other channels; for power and wind_dir the events of
    the channel in time order (a stamp's distinct values, in order of first appearance, collapsed by `dedupe`; an
    UNREAD winning its stamp), each value holding from its stamp to the next event or its hold's end, and each bin
    the mean of what holds over [E - dt, E) weighted by how long (circular for the angle). A bin over which nothing
    holds keeps the held binning's value."""
    collapse = {"first": lambda d: d[0], "last": lambda d: d[-1], "mean": lambda d: sum(d) / len(d), "max": max,
                "min": min}[dedupe]  # fmt: skip
    grid, out, _ = bin_timeline(ts, vals, make_spec(hold_s=holds, dedupe=dedupe))
    for name in ("power", "wind_dir"):
        c, hold = CHANNELS.index(name), holds[name] * S
        at: dict[int, list[float]] = {}
        for t, v in zip(ts.tolist(), vals[:, c]):
            if is_unread(v) or not np.isnan(v):
                at.setdefault(t, []).append(math.nan if is_unread(v) else float(v))
        events = {
            t: math.nan if any(map(math.isnan, vs)) else collapse(list(dict.fromkeys(vs))) for t, vs in at.items()
        }
        stamps = sorted(events)
        for i, end in enumerate(grid.tolist()):
            weights: list[tuple[float, float]] = []
            for k, t in enumerate(stamps):
                stop = min(stamps[k + 1] if k + 1 < len(stamps) else end, t + hold, end)
                held = max(0, stop - max(t, end - DT))
                if held and not math.isnan(events[t]):
                    weights.append((held, events[t]))
            total = sum(w for w, _ in weights)
            if not total:
                continue
            if name == "wind_dir":
                sin = sum(w * math.sin(math.radians(v)) for w, v in weights)
                cos = sum(w * math.cos(math.radians(v)) for w, v in weights)
                deg = math.degrees(math.atan2(sin, cos)) % 360.0
                out[i, c] = 0.0 if deg >= 360.0 else deg  # the mod of a tiny negative angle rounds up to 360
            else:
                out[i, c] = sum(w * v for w, v in weights) / total
    return grid, out


def _feed(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A sparse feed over 20 bins, its stamps on a lattice of 1 ns, 7 s, a minute or a step (so several samples
    often share a stamp, on a step's end or not), each channel in 40 % of the samples from a few values, and an
    UNREAD in 8 %."""
    n = int(rng.integers(1, 50))
    lattice = int(rng.choice([1, 7 * S, 60 * S, DT]))
    return T10 + np.sort(rng.integers(0, 20 * DT, n)) // lattice * lattice, random_values(rng, n, 97.3)


def _assert_close(out: np.ndarray, ref: np.ndarray) -> None:
    """Equal within 1e-9, the wind direction on the circle (0 and 359.99999999999994 are one direction)."""
    np.testing.assert_array_equal(np.isnan(out), np.isnan(ref))
    gap = np.abs(np.nan_to_num(out) - np.nan_to_num(ref))
    gap[:, WD] = np.minimum(gap[:, WD], 360.0 - gap[:, WD])
    assert gap.max(initial=0.0) <= 1e-9 + 1e-12 * np.abs(np.nan_to_num(ref)).max(initial=0.0)


def test_a_value_weighs_by_how_long_it_held_in_the_step():
    """Power 1,000 kW since 09:55, 1,500 from 10:08, a failed read at 10:15, 500 at 10:19: the step ending 10:10
    holds 1,000 for 8 minutes and 1,500 for 2 (1,100 kW, where the samples' mean reads 1,500), the one ending 10:20
    holds 1,500 for 5 minutes, nothing for 4 (the failed read) and 500 for 1 (1,333.3). A value stamped on a step's
    end holds in the next step only; the hold runs out inside a step (an hour after 10:19, at 11:19); wind
    direction 350 then 10 degrees averages across north."""
    spec = _timed_spec()
    m = 60 * S
    ts = T10 + np.array([-5 * m, 8 * m, 15 * m, 19 * m, 19 * m, 30 * m])
    vals = np.full((6, len(CHANNELS)), np.nan)
    vals[:4, 1] = [1000.0, 1500.0, UNREAD, 500.0]
    vals[4, WD], vals[5, WD] = 350.0, 10.0  # 10:19 and 10:30 (on the end of the step ending 10:30)
    grid, out, _ = bin_timeline(ts, vals, spec)
    assert ((grid - T10) // DT).tolist() == list(range(0, 4))
    power, wdir = out[:, 1], out[:, WD]
    assert power[0] == 1000.0  # 09:55 alone in its step: nothing held before it, so its own value
    assert power[1] == pytest.approx((8 * 1000 + 2 * 1500) / 10)
    assert power[2] == pytest.approx((5 * 1500 + 1 * 500) / 6)
    assert power[3] == 500.0
    mean = bin_timeline(ts, vals, make_spec(hold_s=HOLDS))[1]
    assert mean[1, 1] == 1500.0 and mean[2, 1] == 500.0  # the samples' mean: the step's last minutes only
    assert wdir[2] == pytest.approx(350.0) and wdir[3] == pytest.approx(350.0)  # 10 at 10:30 holds after the step
    ts2 = np.append(ts, T10 + 50 * m)  # the steps until the wind direction's hold ends (30 minutes after 10:30)
    vals2 = np.vstack([vals, np.full(len(CHANNELS), np.nan)])
    vals2[6, 0] = 5.0
    out2 = bin_timeline(ts2, vals2, spec)[1]
    assert out2[4, WD] == pytest.approx(10.0) and out2[5, WD] == pytest.approx(10.0)
    late = T10 + 24 * 60 * m  # power's hold ends at 11:19, inside the step ending 11:20: 1 minute of 500 there
    ts3, vals3 = np.append(ts, late), np.vstack([vals, np.full(len(CHANNELS), np.nan)])
    vals3[-1, 0] = 5.0
    g3, out3 = bin_timeline(ts3, vals3, spec)[:2]
    at = {int((g - T10) // DT): v for g, v in zip(g3, out3[:, 1])}
    assert at[8] == 500.0 and np.isnan(at[9])


def test_batch_and_stream_follow_the_rule():
    """Random sparse feeds (several values at a stamp, on a step's end or inside it, UNREADs), holds from 7 s to an
    hour (shorter and longer than a step) and each dedupe rule: `bin_timeline` gives the rule's numbers, and a
    `BinAccumulator` fed them one by one the same bits."""
    rng = np.random.default_rng(17)
    compared = 0
    for _ in range(400):
        ts, vals = _feed(rng)
        holds = {"power": int(rng.choice([7, 60, 300, 600, 1800])), "wind_dir": int(rng.choice([60, 900, 3600])),
                 "status": 7200}  # fmt: skip
        dedupe = str(rng.choice(["first", "last", "mean", "max", "min"]))
        spec = make_spec(hold_s=holds, aggregation=TIMED, dedupe=dedupe)
        grid, out, _ = bin_timeline(ts, vals, spec)
        ref_grid, ref = _reference(ts, vals, holds, dedupe)
        np.testing.assert_array_equal(grid, ref_grid)
        _assert_close(out, ref)
        acc = BinAccumulator(spec, grace_seconds=0)
        closed = [b for t, v in zip(ts, vals) for b in acc.add(int(t), v)] + acc.close_until(int(grid[-1]))
        np.testing.assert_array_equal(np.stack([b.values for b in closed]), out)
        compared += int((~np.isnan(out[:, 1])).sum())
    assert compared > 2000


def test_a_fleet_time_weighs_as_the_batch_does_in_any_chunks_and_across_a_restart(tmp_path):
    """Report-by-exception feeds of three turbines with three time-weighted channels: a Fleet fed them by
    `add_batch` (the daemon) in 5, 97 and 1,000 chunks, restarted half-way from its state file, and by `add_many`
    (replay) in 1, 7 and 300 chunks, gives `Preprocessor(bin_timeline(...))`'s rows at every step, bit for bit."""
    holds = {"wind_speed": 1800, "power": 3600, "wind_dir": 3600, "status": 7200}
    spec = make_feature_spec(hold_s=holds, aggregation={c: "time" for c in ("wind_speed", "power", "wind_dir")})
    scaler = fitted(spec, make_timeline(2000, seed=3)).scaler
    rng = np.random.default_rng(11)
    feeds = {name: _report_by_exception(make_timeline(300, seed=40 + k), rng, T10 + k * DT)
             for k, name in enumerate(["T1", "T2", "T3"])}  # fmt: skip
    order = np.argsort(np.concatenate([f[0] for f in feeds.values()]), kind="stable")
    names = np.repeat(list(feeds), [f[0].size for f in feeds.values()])[order]
    ts = np.concatenate([f[0] for f in feeds.values()])[order]
    vals = np.concatenate([f[1] for f in feeds.values()])[order]
    pre = Preprocessor(spec, scaler)
    want = {name: (bin_timeline(t, v, spec)[0], pre.transform(bin_timeline(t, v, spec)[1]).X)
            for name, (t, v) in feeds.items()}  # fmt: skip
    for how, chunks in [("batch", 5), ("batch", 97), ("batch", 1000), ("many", 1), ("many", 7), ("many", 300)]:
        fleet, steps = Fleet(spec, scaler, 36, 0.0, 10, windows=False), []
        for k, chunk in enumerate(np.array_split(np.arange(ts.size), chunks)):
            if how == "batch":
                fleet.add_batch(names[chunk].tolist(), ts[chunk], vals[chunk])
            else:
                fleet.add_many(names[chunk], ts[chunk], vals[chunk])
            steps += fleet.drain()
            if k == chunks // 2 and how == "batch":
                save_state(tmp_path / "state.npz", {"fleet": fleet.state_dict()})
                fleet = Fleet(spec, scaler, 36, 0.0, 10, windows=False)
                fleet.load_state_dict(load_state(tmp_path / "state.npz")["fleet"])
        fleet.close_until(int(ts.max()) + 2 * DT)
        steps += fleet.drain()
        for name, (grid, X) in want.items():
            mine = [s for s in steps if s.turbine == name][: grid.size]
            assert [s.end_ns for s in mine] == grid.tolist(), (how, chunks)
            np.testing.assert_array_equal(np.stack([s.rows.X for s in mine]), X)


def test_a_steady_value_reads_exactly_and_extremes_stay_finite():
    """A value held over whole steps reads exactly as sent (as the hold gives it without `time`), so does an angle;
    values near the float range stay finite; stamps near the end of the int64 clock give the numbers they give in
    2024; a step given a value only by a hold running out in it counts as held."""
    for value in (1023.6432494005135, 0.1, -7.3e-5):
        ts, vals = T10 + np.array([60, 45 * 60]) * S, np.full((2, len(CHANNELS)), np.nan)
        vals[0, 1], vals[0, WD], vals[1, 0] = value, 123.456789, 5.0
        plain = bin_timeline(ts, vals, make_spec(hold_s=HOLDS))[1]
        timed = bin_timeline(ts, vals, _timed_spec())[1]
        np.testing.assert_array_equal(timed[:3, [1, WD]], plain[:3, [1, WD]])
    ts, vals = T10 + np.array([60, 300]) * S, np.full((2, len(CHANNELS)), np.nan)
    vals[:, 1] = [1e300, -1e300]
    assert np.isfinite(bin_timeline(ts, vals, _timed_spec())[1][0, 1])
    rng = np.random.default_rng(3)
    late = (np.iinfo(np.int64).max - 30 * DT) // DT * DT  # a grid stamp in 2262
    for _ in range(50):
        ts, vals = _feed(rng)
        now, then = bin_timeline(ts, vals, _timed_spec()), bin_timeline(ts - T10 + late, vals, _timed_spec())
        np.testing.assert_array_equal(now[1], then[1])
    ts, vals = T10 + np.array([8 * 60, 25 * 60]) * S, np.full((2, len(CHANNELS)), np.nan)
    vals[0, 1], vals[1, 0] = 100.0, 5.0
    grid, out, stats = bin_timeline(ts, vals, make_spec(hold_s={"power": 300}, aggregation={"power": "time"}))
    assert out[:, 1].tolist()[:2] == [100.0, 100.0] and np.isnan(out[2, 1])  # 10:08 + 5 min ends inside 10:20's
    assert stats.held == {"power": 1}


def test_causality_a_step_never_weighs_a_later_value():
    """Cutting a feed at any stamp changes no step that ended before the cut."""
    rng = np.random.default_rng(19)
    compared = 0
    for _ in range(60):
        ts, vals = _random_feed(rng)
        grid, whole, _ = bin_timeline(ts, vals, _timed_spec())
        cut = int(rng.integers(1, ts.size + 1))
        g, part, _ = bin_timeline(
            ts[:cut], vals[:cut], _timed_spec(), grid_start_ns=int(grid[0]), grid_end_ns=int(grid[-1])
        )
        before = g < ts[cut] if cut < ts.size else np.ones(g.size, dtype=bool)
        np.testing.assert_array_equal(part[before], whole[before])
        compared += int(before.sum())
    assert compared > 300


def test_a_deadbanded_signal_averages_to_the_dense_mean():
    """A 1-second signal (a slow random walk with ramps), sent only when it moves more than a 20 kW deadband from
    the value last sent: the time-weighted step means stay within the deadband of the dense signal's means, where
    the mean of the sent samples strays far beyond it."""
    rng = np.random.default_rng(23)
    n = 6 * 3600 * 6  # six hours of seconds, 36 steps
    steps = np.cumsum(rng.normal(0, 1.0, n)) + 300 * np.sin(np.arange(n) / 2000.0)
    ramp = np.repeat(rng.choice([0.0, 3.0, -3.0], n // 120, p=[0.8, 0.1, 0.1]), 120)
    dense = 1000.0 + steps + np.cumsum(ramp)
    sent, last = [], math.inf
    for i, v in enumerate(dense):
        if abs(v - last) > 20.0:
            sent.append(i)
            last = v
    t = T10 + (np.array(sent) + 1) * S  # second i covers (i, i + 1]: its reading at its end
    vals = np.full((t.size, len(CHANNELS)), np.nan)
    vals[:, 1] = dense[sent]
    truth = dense.reshape(-1, 600).mean(axis=1)
    timed = bin_timeline(t, vals, make_spec(hold_s={"power": 3600}, aggregation={"power": "time"}))[1][:, 1]
    plain = bin_timeline(t, vals, make_spec(hold_s={"power": 3600}))[1][:, 1]
    assert t.size < n / 10 and timed.size == truth.size
    err_timed, err_plain = np.abs(timed[1:] - truth[1:]), np.abs(plain[1:] - truth[1:])
    assert err_timed.max() <= 20.0
    assert err_plain.max() > 2 * err_timed.max() and err_plain.mean() > 2 * err_timed.mean()


def test_the_spec_and_the_config_refuse_time_without_a_hold():
    """`time` reads values as holding, so it needs the channel's hold; angular channels may use it; the config's
    message names data.qc."""
    with pytest.raises(SpecError, match=r"\['power'\] use time .* give each one in hold_s"):
        make_spec(aggregation={"power": "time"})
    with pytest.raises(SpecError, match="always use the circular mean"):
        make_spec(hold_s=HOLDS, aggregation={"wind_dir": "max"})
    spec = _timed_spec()
    assert PipelineSpec.from_dict(spec.to_dict()).aggregation == spec.aggregation
    cfg = load_config(CONFIG, ["data.qc.hold_s={power: 3600}", "data.qc.aggregation={power: time}"])
    assert spec_from_config(cfg).aggregation["power"] == "time"
    with pytest.raises(ConfigError, match=r"data.qc.aggregation: \['power'\] use time"):
        load_config(CONFIG, ["data.qc.aggregation={power: time}"])
