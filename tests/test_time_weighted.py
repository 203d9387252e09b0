"""Time-weighted means of report-by-exception channels (`aggregation: time`, `binning._time_weigh`): the rule, batch
and stream alike, causality, how close it comes to a dense signal's mean, and the spec's and config's checks."""

from __future__ import annotations

import math

import numpy as np
import pytest

from scada_tcn.runtime.binning import bin_timeline
from scada_tcn.runtime.errors import ConfigError, SpecError
from scada_tcn.runtime.hold import UNREAD, is_unread
from scada_tcn.runtime.open_bins import BinAccumulator
from scada_tcn.runtime.spec import PipelineSpec
from scada_tcn.trainer.config import load_config
from scada_tcn.trainer.config.derive import spec_from_config
from tests.test_binning import CHANNELS, DT, T10, WD, S, make_spec
from tests.test_config import CONFIG
from tests.test_hold import HOLDS, _random_feed

TIMED = {"power": "time", "wind_dir": "time", "status": "max"}


def _timed_spec() -> PipelineSpec:
    return make_spec(hold_s=HOLDS, aggregation=TIMED)


def _reference(ts: np.ndarray, vals: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The rule, one bin at a time: the held binning for the other channels; for power and wind_dir the events of
    the channel in time order (a stamp's distinct values collapsed to the last, an UNREAD winning its stamp), each
    value holding from its stamp to the next event or its hold's end, and each bin the mean of what holds over
    [E - dt, E) weighted by how long (circular for the angle). A bin over which nothing holds keeps the held
    binning's value."""
    grid, out, _ = bin_timeline(ts, vals, make_spec(hold_s=HOLDS))
    for name in ("power", "wind_dir"):
        c, hold = CHANNELS.index(name), HOLDS[name] * S
        at: dict[int, list[float]] = {}
        for t, v in zip(ts.tolist(), vals[:, c]):
            if is_unread(v) or not np.isnan(v):
                at.setdefault(t, []).append(math.nan if is_unread(v) else float(v))
        # the distinct values in order of first appearance, the last (dedupe "last"); an UNREAD wins its stamp
        events = {t: math.nan if any(map(math.isnan, vs)) else list(dict.fromkeys(vs))[-1] for t, vs in at.items()}
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
    """Random sparse feeds (several values at a stamp, UNREADs, stamps on the grid): `bin_timeline` gives the rule's
    numbers, and a `BinAccumulator` fed them one by one the same bits."""
    rng = np.random.default_rng(17)
    compared = 0
    for _ in range(200):
        ts, vals = _random_feed(rng)
        vals[:, 1] = np.where(np.isnan(vals[:, 1]) | is_unread(vals[:, 1]), vals[:, 1], vals[:, 1] * 97.3)
        grid, out, _ = bin_timeline(ts, vals, _timed_spec())
        ref_grid, ref = _reference(ts, vals)
        np.testing.assert_array_equal(grid, ref_grid)
        np.testing.assert_allclose(out, ref, rtol=1e-12, atol=1e-9)
        acc = BinAccumulator(_timed_spec(), grace_seconds=0)
        closed = [b for t, v in zip(ts, vals) for b in acc.add(int(t), v)] + acc.close_until(int(grid[-1]))
        np.testing.assert_array_equal(np.stack([b.values for b in closed]), out)
        compared += int((~np.isnan(out[:, 1])).sum())
    assert compared > 2000


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
