"""Binning: right-closed end labels, range filter, dedupe, aggregation, batch vs incremental parity, causality."""

from __future__ import annotations

import numpy as np
import pytest

from scada_tcn.runtime.binning import BinStats, aggregate_bins, bin_end_ns, bin_timeline
from scada_tcn.runtime.errors import InputError, SpecError
from scada_tcn.runtime.open_bins import FULL, LATE, BinAccumulator, OpenBins
from scada_tcn.runtime.slots import rounds
from scada_tcn.runtime.spec import PipelineSpec

S = 1_000_000_000
DT = 600 * S
CHANNELS = ("wind_speed", "power", "wind_dir", "nacelle_dir", "status")
WS, PW, WD, ND, ST = range(5)


def ns(iso: str) -> int:
    return int(np.datetime64(iso, "ns").astype(np.int64))


T10 = ns("2024-03-01T10:00:00")


def make_spec(**over: object) -> PipelineSpec:
    d = PipelineSpec(
        dt_seconds=600,
        channels=CHANNELS,
        dedupe="last",
        aggregation={"status": "max"},
        valid_range={"wind_speed": (0.0, 60.0)},
        winsor_caps={},
        feature_channels=("wind_speed", "power", "wind_dir", "nacelle_dir"),
        angular_channels=("wind_dir", "nacelle_dir"),
        angle_units="deg",
        yaw_error=None,
        deltas=(),
        rolling=None,
        flag_names=("stopped",),
        flag_rules={"stopped": "status >= 2"},
        fill_value=0.0,
    ).to_dict()
    d.update(over)
    d["feature_names"] = []
    return PipelineSpec.from_dict(d)


def row(ws=np.nan, pw=np.nan, wd=np.nan, nd=np.nan, st=np.nan) -> list[float]:
    return [ws, pw, wd, nd, st]


def circ_dist(a, b, period=360.0):
    d = np.mod(np.asarray(a) - np.asarray(b), period)
    return np.minimum(d, period - d)


# ---------------------------------------------------------------- labels


def test_bin_end_is_right_closed_and_labelled_by_end():
    stamps = np.array(
        [
            T10,  # on the grid: keeps its stamp
            T10 + 1 * S,  # 10:00:01 -> 10:10
            T10 + DT - 1,  # 10:09:59.999999999 -> 10:10
            T10 + DT,  # 10:10 -> 10:10
            T10 + DT + 1,  # one ns later -> 10:20
        ],
        dtype=np.int64,
    )
    got = bin_end_ns(stamps, 600)
    assert got.tolist() == [T10, T10 + DT, T10 + DT, T10 + DT, T10 + 2 * DT]
    assert (got >= stamps).all()  # a bin never holds data stamped after its label
    assert bin_end_ns(np.array([-1, 0, 1], dtype=np.int64), 600).tolist() == [0, 0, DT]


def test_bin_end_refuses_float_timestamps_and_bad_dt():
    with pytest.raises(InputError, match="integer"):
        bin_end_ns(np.array([1.5e18]), 600)
    with pytest.raises(InputError, match="dt_seconds"):
        bin_end_ns(np.array([0], dtype=np.int64), 0)


# ---------------------------------------------------------------- batch adapter


def test_bin_timeline_aggregates_and_leaves_gaps_missing():
    spec = make_spec()
    ts = np.array([T10 + 1 * S, T10 + 300 * S, T10 + DT, T10 + 3 * DT], dtype=np.int64)
    vals = np.array(
        [
            row(4.0, 100.0, 350.0, 10.0, 0),
            row(6.0, 300.0, 10.0, 20.0, 2),
            row(8.0, np.nan, 20.0, 30.0, 1),
            row(5.0, 50.0, 90.0, 90.0, 0),
        ]
    )
    labels, out, stats = bin_timeline(ts, vals, spec)
    assert labels.tolist() == [T10 + DT, T10 + 2 * DT, T10 + 3 * DT]
    assert out.dtype == np.float64 and out.shape == (3, 5)
    np.testing.assert_allclose(out[0, [WS, PW, ST]], [6.0, 200.0, 2.0])  # mean, mean, max
    # 10:10:00 is on the grid, so the third sample shares the first bin: wind_dir 350, 10, 20 -> ~6.7 deg
    rad = np.deg2rad([350.0, 10.0, 20.0])
    assert out[0, WD] == pytest.approx(np.rad2deg(np.arctan2(np.sin(rad).sum(), np.cos(rad).sum())), abs=1e-12)
    assert out[0, ND] == pytest.approx(20.0)
    assert np.isnan(out[1]).all()  # empty bin stays missing, not interpolated
    np.testing.assert_allclose(out[2], [5.0, 50.0, 90.0, 90.0, 0.0])
    assert stats == BinStats(
        samples=4, duplicate_timestamps=0, exact_repeats=0, out_of_range={c: 0 for c in CHANNELS}, outside_grid=0
    )


def test_last_aggregation_takes_latest_timestamp_not_latest_arrival():
    spec = make_spec(aggregation={"power": "last", "status": "min"})
    ts = np.array([T10 + 500 * S, T10 + 100 * S, T10 + 300 * S], dtype=np.int64)
    vals = np.array([row(pw=5.0, st=3), row(pw=1.0, st=1), row(pw=3.0, st=2)])
    _, out, _ = bin_timeline(ts, vals, spec)
    assert out[0, PW] == 5.0 and out[0, ST] == 1.0


def test_valid_range_turns_impossible_readings_into_missing_and_counts_them():
    spec = make_spec()
    ts = np.array([T10 + 10 * S, T10 + 20 * S, T10 + 30 * S, T10 + 40 * S], dtype=np.int64)
    vals = np.array([row(ws=-1.0, pw=np.inf), row(ws=61.0), row(ws=60.0), row(ws=0.0)])
    _, out, stats = bin_timeline(ts, vals, spec)
    assert out[0, WS] == 30.0  # only 60 and 0 are kept (bounds inclusive)
    assert np.isnan(out[0, PW])  # +-inf is impossible on any channel
    assert stats.out_of_range == {"wind_speed": 2, "power": 1, "wind_dir": 0, "nacelle_dir": 0, "status": 0}
    # without a range: -inf is impossible too, the largest finite float is not (batch and incremental alike)
    big = np.finfo(np.float64).max
    vals = np.array([row(pw=-np.inf), row(pw=big), row(pw=-big)])
    _, out, stats = bin_timeline(ts[:3], vals, spec)
    assert out[0, PW] == 0.0 and stats.out_of_range["power"] == 1  # (big - big) / 2
    acc = BinAccumulator(spec, grace_seconds=0)
    for t, v in zip(ts[:3], vals):
        acc.add_deferred(int(t), v)
    assert acc.out_of_range.tolist() == [0, 1, 0, 0, 0]


@pytest.mark.parametrize(
    "rule, expected, expected_repeat_case",
    [("first", 1.0, 1.0), ("last", 2.0, 3.0), ("mean", 2.0, 2.0), ("max", 3.0, 3.0), ("min", 1.0, 1.0)],
)
def test_dedupe_rules_over_distinct_values_in_first_appearance_order(rule, expected, expected_repeat_case):
    spec = make_spec(dedupe=rule)
    t = T10 + 60 * S
    # same timestamp: 1, 3, 2, then a redelivered 1 and a NaN (ignored)
    ts = np.array([t, t, t, t, t], dtype=np.int64)
    vals = np.array([row(ws=1.0), row(ws=3.0), row(ws=2.0), row(ws=1.0), row(ws=np.nan)])
    _, out, stats = bin_timeline(ts, vals, spec)
    assert out[0, WS] == pytest.approx(expected)
    assert stats.duplicate_timestamps == 4 and stats.exact_repeats == 1
    # 1, 3, 1: the repeated 1 keeps its first position, so "last" is 3
    _, out2, _ = bin_timeline(ts[:3], np.array([row(ws=1.0), row(ws=3.0), row(ws=1.0)]), spec)
    assert out2[0, WS] == pytest.approx(expected_repeat_case)
    # the accumulator resolves the same samples the same way
    acc = BinAccumulator(spec, grace_seconds=0)
    for v in vals:
        acc.add(t, v)
    [closed] = acc.close_until(T10 + DT)
    assert closed.values[WS] == out[0, WS]


def test_dedupe_is_per_channel_and_does_not_mix_timestamps():
    spec = make_spec(dedupe="first")
    t = T10 + 60 * S
    ts = np.array([t, t, t + S], dtype=np.int64)
    vals = np.array([row(ws=1.0), row(ws=5.0, pw=7.0), row(ws=3.0)])
    _, out, _ = bin_timeline(ts, vals, spec)
    assert out[0, WS] == 2.0  # first of (1, 5) at t, then 3 at t + 1s: mean(1, 3)
    assert out[0, PW] == 7.0  # power was only present in the second sample


def test_circular_mean_wraps_through_zero():
    spec = make_spec()
    ts = np.array([T10 + S, T10 + 2 * S], dtype=np.int64)
    _, out, _ = bin_timeline(ts, np.array([row(wd=350.0, nd=359.0), row(wd=10.0, nd=3.0)]), spec)
    assert 0.0 <= out[0, WD] < 360.0 and circ_dist(out[0, WD], 0.0) < 1e-9
    assert out[0, ND] == pytest.approx(1.0)
    rad = make_spec(angle_units="rad")
    _, out_r, _ = bin_timeline(ts, np.array([row(wd=2 * np.pi - 0.1, nd=-0.1), row(wd=0.1, nd=-0.3)]), rad)
    assert circ_dist(out_r[0, WD], 0.0, 2 * np.pi) < 1e-12
    assert out_r[0, ND] == pytest.approx(2 * np.pi - 0.2)  # mapped back into [0, 2pi)


def test_grid_bounds_pad_with_missing_and_drop_outside_samples():
    spec = make_spec()
    ts = np.array([T10 - 5 * S, T10 + 5 * S, T10 + DT + 5 * S], dtype=np.int64)
    vals = np.array([row(ws=1.0), row(ws=2.0), row(ws=3.0)])
    labels, out, stats = bin_timeline(ts, vals, spec, grid_start_ns=T10 + DT, grid_end_ns=T10 + 4 * DT)
    assert labels.tolist() == [T10 + k * DT for k in (1, 2, 3, 4)]
    assert out[0, WS] == 2.0 and out[1, WS] == 3.0 and np.isnan(out[2:]).all()
    assert stats.outside_grid == 1
    with pytest.raises(InputError, match="multiple"):
        bin_timeline(ts, vals, spec, grid_start_ns=T10 + 1)
    with pytest.raises(InputError, match="before grid start"):
        bin_timeline(ts, vals, spec, grid_start_ns=T10 + 4 * DT, grid_end_ns=T10)
    labels0, out0, _ = bin_timeline(np.empty(0, np.int64), np.empty((0, 5)), spec, T10, T10 + DT)
    assert labels0.tolist() == [T10, T10 + DT] and np.isnan(out0).all()


def test_bin_timeline_refuses_bad_input_and_contradictory_spec():
    spec = make_spec()
    ts = np.array([T10], dtype=np.int64)
    with pytest.raises(InputError, match=r"\(1, 5\)"):
        bin_timeline(ts, np.zeros((1, 4)), spec)
    with pytest.raises(InputError, match="integer"):
        bin_timeline(ts.astype(float), np.zeros((1, 5)), spec)
    with pytest.raises(SpecError, match="circular mean"):
        bin_timeline(ts, np.zeros((1, 5)), make_spec(aggregation={"wind_dir": "max"}))


def test_batch_does_not_mutate_inputs_and_ignores_input_order():
    rng = np.random.default_rng(1)
    spec = make_spec()
    ts = T10 + rng.integers(0, 20 * DT, 500)
    vals = rng.uniform(-5, 70, (500, 5))
    vals[rng.random((500, 5)) < 0.2] = np.nan
    ts_copy, vals_copy = ts.copy(), vals.copy()
    labels, out, _ = bin_timeline(ts, vals, spec)
    np.testing.assert_array_equal(ts, ts_copy)
    np.testing.assert_array_equal(vals, vals_copy)
    perm = rng.permutation(500)
    labels_p, out_p, _ = bin_timeline(ts[perm], vals[perm], spec)
    np.testing.assert_array_equal(labels, labels_p)
    np.testing.assert_allclose(out, out_p, rtol=0, atol=1e-12)


def test_redelivered_samples_change_nothing_in_batch():
    rng = np.random.default_rng(2)
    spec = make_spec(dedupe="last")
    n = 400
    ts = T10 + np.sort(rng.integers(0, 30 * DT, n))
    vals = rng.uniform(0, 50, (n, 5))
    again = rng.integers(0, n, 150)  # earlier samples delivered again, later in the file
    labels, out, stats = bin_timeline(ts, vals, spec)
    labels2, out2, stats2 = bin_timeline(np.concatenate([ts, ts[again]]), np.vstack([vals, vals[again]]), spec)
    np.testing.assert_array_equal(labels, labels2)
    np.testing.assert_array_equal(out, out2)
    assert stats.exact_repeats == 0 and stats2.exact_repeats == 5 * 150  # every value of every redelivered row


def test_causality_later_samples_never_change_earlier_bins():
    rng = np.random.default_rng(3)
    spec = make_spec(dedupe="mean")
    n = 2000
    ts = T10 + rng.integers(0, 100 * DT, n)
    vals = rng.uniform(0, 50, (n, 5))
    labels, out, _ = bin_timeline(ts, vals, spec, grid_start_ns=T10, grid_end_ns=T10 + 100 * DT)
    for k in (0, 17, 50, 99):
        cut = T10 + k * DT  # a bin end
        after = ts > cut
        vals2 = vals.copy()
        vals2[after] = rng.uniform(0, 50, (after.sum(), 5))  # change everything stamped after the cut
        extra_ts = cut + 1 + rng.integers(0, 5 * DT, 50)  # and add new samples after it
        ts3 = np.concatenate([ts, extra_ts])
        vals3 = np.vstack([vals2, rng.uniform(0, 50, (50, 5))])
        labels3, out3, _ = bin_timeline(ts3, vals3, spec, grid_start_ns=T10, grid_end_ns=T10 + 100 * DT)
        keep = labels3 <= cut
        np.testing.assert_array_equal(out3[keep], out[keep])
        assert not np.array_equal(out3[~keep], out[~keep], equal_nan=True)  # the change did land later


# ---------------------------------------------------------------- incremental adapter


def test_add_closes_earlier_bins_with_gaps_as_missing():
    acc = BinAccumulator(make_spec(), grace_seconds=60)
    assert acc.add(T10 + 5 * S, np.array(row(ws=3.0))) == []
    assert acc.add(T10 + DT - S, np.array(row(ws=5.0))) == []  # same bin, stays open
    closed = acc.add(T10 + 3 * DT + 5 * S, np.array(row(ws=7.0)))  # bin 10:40 arrives
    assert [c.end_ns for c in closed] == [T10 + DT, T10 + 2 * DT]  # 10:30 stays open for its grace (60 s)
    assert closed[0].values[WS] == 4.0
    assert np.isnan(closed[1].values).all()
    assert closed[0].values.dtype == np.float64 and closed[0].values.shape == (5,)
    assert acc.add(T10 + 3 * DT - 10 * S, np.array(row(ws=2.0))) == []  # out of order by 15 s: finds its bin
    [last] = acc.add(T10 + 3 * DT + 60 * S, np.array(row(ws=8.0)))  # 10:30 + grace
    assert last.end_ns == T10 + 3 * DT and last.values[WS] == 2.0 and acc.late_dropped == 0


def test_close_until_waits_for_grace_and_emits_empty_bins():
    acc = BinAccumulator(make_spec(), grace_seconds=120)
    assert acc.close_until(T10 + 10 * DT) == []  # nothing before the first sample
    acc.add(T10 + 5 * S, np.array(row(ws=3.0)))  # bin 10:10
    assert acc.close_until(T10 + DT + 119 * S) == []
    [b] = acc.close_until(T10 + DT + 120 * S)  # end + grace <= now
    assert b.end_ns == T10 + DT and b.values[WS] == 3.0
    closed = acc.close_until(T10 + 3 * DT + 120 * S)
    assert [c.end_ns for c in closed] == [T10 + 2 * DT, T10 + 3 * DT]
    assert all(np.isnan(c.values).all() for c in closed)
    assert acc.close_until(T10 + 3 * DT + 121 * S) == []  # nothing emitted twice


def test_late_samples_are_dropped_and_counted_without_raising():
    acc = BinAccumulator(make_spec(), grace_seconds=0)
    acc.add(T10 + 5 * S, np.array(row(ws=3.0)))
    [first] = acc.add(T10 + DT + 5 * S, np.array(row(ws=4.0)))
    assert acc.add(T10 + 6 * S, np.array(row(ws=100.0))) == []  # bin 10:10 already closed
    assert acc.add(T10 + 5 * S, np.array(row(ws=3.0))) == []  # a redelivery of a closed bin's sample
    assert acc.late_dropped == 2
    assert first.values[WS] == 3.0
    [second] = acc.close_until(T10 + 2 * DT)
    assert second.end_ns == T10 + 2 * DT and second.values[WS] == 4.0


def test_earlier_bin_before_first_close_extends_the_stream():
    acc = BinAccumulator(make_spec(), grace_seconds=0)
    acc.add(T10 + DT + 5 * S, np.array(row(ws=4.0)))
    acc.add(T10 - 5 * S, np.array(row(ws=1.0)))  # nothing emitted yet: not late
    closed = acc.close_until(T10 + 2 * DT)
    assert [c.end_ns for c in closed] == [T10, T10 + DT, T10 + 2 * DT]
    assert closed[0].values[WS] == 1.0 and np.isnan(closed[1].values).all() and closed[2].values[WS] == 4.0
    assert acc.late_dropped == 0


def test_accumulator_redelivery_changes_nothing():
    spec = make_spec(dedupe="last")
    a, b = BinAccumulator(spec, 0), BinAccumulator(spec, 0)
    s1, s2 = (T10 + 5 * S, np.array(row(ws=3.0, st=1))), (T10 + 9 * S, np.array(row(ws=5.0, st=0)))
    a.add(*s1)
    a.add(*s2)
    for s in (s1, s1, s2, s1):  # the same sample twice, and an earlier one again later
        b.add(*s)
    [ca], [cb] = a.close_until(T10 + DT), b.close_until(T10 + DT)
    np.testing.assert_array_equal(ca.values, cb.values)
    assert b.late_dropped == 0


def test_accumulator_refuses_bad_input_but_not_late_data():
    acc = BinAccumulator(make_spec(), grace_seconds=0)
    with pytest.raises(InputError, match=r"\(5,\)"):
        acc.add(T10, np.zeros(4))
    with pytest.raises(InputError, match="integer"):
        acc.add(float(T10), np.zeros(5))
    with pytest.raises(SpecError, match="grace"):
        BinAccumulator(make_spec(), grace_seconds=-1)
    values = np.array(row(ws=99.0))
    acc.add(T10, values)
    assert values[WS] == 99.0  # caller's vector untouched by the range filter
    assert acc.out_of_range[WS] == 1


# ---------------------------------------------------------------- parity on a long random stream

PARITY_CHANNELS = CHANNELS + ("temp",)


def parity_spec(rule: str) -> PipelineSpec:
    return make_spec(
        channels=list(PARITY_CHANNELS),
        dedupe=rule,
        aggregation={"status": "max", "power": "last", "temp": "min"},
    )


def random_stream(rng: np.random.Generator, n_bins: int = 4000):
    """Arrival-ordered (ts, row) events with jitter, gaps, duplicates, redeliveries (some late), NaN, bad values."""
    events: list[tuple[int, np.ndarray]] = []
    history: list[tuple[int, np.ndarray]] = []
    n_late = 0
    k = 0
    while k < n_bins:
        k += int(rng.choice([1, 1, 1, 2, 3, 25]))  # gaps of one to many bins
        end = T10 + k * DT
        m = int(rng.integers(1, 9))
        offs = rng.integers(0, DT, m)
        offs[rng.random(m) < 0.1] = 0  # stamped exactly on the grid
        rows = np.column_stack(
            [
                np.where(rng.random(m) < 0.05, rng.choice([-3.0, 75.0], m), rng.uniform(0, 25, m)),
                rng.normal(1000, 400, m),
                np.mod(rng.normal(0, 20, m), 360),  # near 0/360
                rng.uniform(0, 360, m),
                rng.integers(0, 4, m).astype(float),
                rng.normal(10, 3, m),
            ]
        )
        rows[rng.random(rows.shape) < 0.1] = np.nan
        bin_events = [(int(end - o), r) for o, r in zip(offs, rows)]
        for i in rng.integers(0, m, int(rng.integers(0, 3))):  # same stamp, different values
            bin_events.append((bin_events[i][0], rows[i] + rng.normal(0, 1, rows.shape[1])))
        for i in rng.integers(0, len(bin_events), int(rng.integers(0, 3))):  # exact redelivery, bin still open
            bin_events.append((bin_events[i][0], bin_events[i][1].copy()))
        order = rng.permutation(len(bin_events))
        bin_events = [bin_events[i] for i in order]
        late = [history[i] for i in rng.integers(0, len(history), int(rng.integers(0, 3)))] if history else []
        n_late += len(late)
        events += bin_events[:1] + [(t, r.copy()) for t, r in late] + bin_events[1:]
        history += bin_events
    return events, n_late


@pytest.mark.parametrize("rule", ["first", "last", "mean", "max", "min"])
def test_batch_and_incremental_agree_on_a_long_random_stream(rule):
    rng = np.random.default_rng(["first", "last", "mean", "max", "min"].index(rule))
    spec = parity_spec(rule)
    grace = 90
    events, n_late = random_stream(rng)
    assert len(events) > 3000 and n_late > 50

    acc = BinAccumulator(spec, grace_seconds=grace)
    emitted = []
    now = events[0][0]
    for i, (t, r) in enumerate(events):
        emitted += acc.add(t, r)
        now = max(now, t)
        emitted += acc.close_until(now + int(rng.integers(0, grace * S)))  # wall clock slightly ahead of data
        if i + 1 < len(events) and events[i + 1][0] > now + 3 * DT:  # idle through a gap: empty bins close
            emitted += acc.close_until(events[i + 1][0] - DT)
    last_end = int(bin_end_ns(np.array([now]), 600)[0])
    emitted += acc.close_until(last_end + grace * S)

    ts = np.array([t for t, _ in events], dtype=np.int64)
    vals = np.stack([r for _, r in events])
    labels, out, stats = bin_timeline(ts, vals, spec)

    ends = np.array([c.end_ns for c in emitted])
    np.testing.assert_array_equal(ends, labels)  # same contiguous grid, each bin emitted once, in order
    np.testing.assert_allclose(np.stack([c.values for c in emitted]), out, rtol=0, atol=1e-12)
    assert acc.late_dropped == n_late
    assert stats.exact_repeats > 0 and stats.duplicate_timestamps > 0 and stats.out_of_range["wind_speed"] > 0
    assert np.isnan(out).all(axis=1).sum() > 100  # long gaps are present and missing
    wd = out[:, WD][~np.isnan(out[:, WD])]
    assert (wd >= 0).all() and (wd < 360).all() and (wd > 300).any() and (wd < 60).any()


@pytest.mark.parametrize("rule", ["first", "mean"])
def test_fleet_aggregation_of_many_turbines_equals_each_alone(rule):
    """`aggregate_bins` over the closed bins of several turbines at once (as a fleet drains them) gives each
    turbine's bins exactly as binning them alone: same timestamps in different turbines never mix, and repeats,
    duplicates, angles and out-of-range values are treated per turbine."""
    rng = np.random.default_rng(7)
    spec = parity_spec(rule)
    accs = [BinAccumulator(spec, grace_seconds=60) for _ in range(4)]
    streams = [random_stream(np.random.default_rng(k))[0] for k in range(4)]  # same stamps across turbines
    raw, alone = [], []
    cursor = [0] * 4
    while any(c < len(s) for c, s in zip(cursor, streams)):
        k = int(rng.integers(0, 4))  # interleaved arrival across turbines
        if cursor[k] >= len(streams[k]):
            continue
        t, r = streams[k][cursor[k]]
        cursor[k] += 1
        got = accs[k].add_deferred(t, r)
        if got is not None:
            raw.append(got)
            alone.append(aggregate_bins([got], accs[0].plan))
    assert len(raw) > 1000 and sum(r.ts.size for r in raw) > sum(r.n_bins for r in raw)  # bins of several samples
    together = aggregate_bins(raw, accs[0].plan)
    np.testing.assert_array_equal(together, np.concatenate(alone))


def sorted_chunks(rng: np.random.Generator, events: list, n_chunks: int) -> list[list[tuple[int, np.ndarray]]]:
    """The events sorted by stamp (stable), cut into chunks of random sizes (some inside one bin); some chunks
    start with a few older rows (a stale export: late when their bin has closed), each chunk non-decreasing."""
    ordered = [events[i] for i in np.argsort([t for t, _ in events], kind="stable")]
    cuts = np.sort(rng.choice(np.arange(1, len(ordered)), n_chunks - 1, replace=False))
    chunks = [list(c) for c in np.split(np.arange(len(ordered)), cuts)]
    out = []
    for c in chunks:
        rows = [ordered[i] for i in c]
        if c[0] > 50 and rng.random() < 0.3:  # stale rows ahead of the chunk, sorted among themselves
            old = sorted(rng.choice(c[0], 3, replace=False).tolist())
            rows = [(ordered[i][0], ordered[i][1].copy()) for i in old] + rows
        out.append(rows)
    return out


@pytest.mark.parametrize(("rule", "grace"), [("last", 0), ("mean", 0), ("mean", 150), ("first", 10**9)])
def test_add_many_equals_one_sample_at_a_time(rule, grace):
    """`add_many_deferred` (replay's chunks) leaves the state, closes the bins and names the closing sample exactly
    as the same samples added one by one: repeats inside a chunk and across its edge, stale rows (late), chunks
    that close nothing, out-of-range values, a grace less than a step, and one of years (a step, then)."""
    rng = np.random.default_rng(11)
    spec = parity_spec(rule)
    events, _ = random_stream(rng, n_bins=1500)
    chunks = sorted_chunks(rng, events, 400)
    assert any(len(c) < 3 for c in chunks)
    one, many = BinAccumulator(spec, grace), BinAccumulator(spec, grace)
    one_bins, one_closers, many_bins, many_closers = [], [], [], []
    at = 0
    for chunk in chunks:
        for t, r in chunk:
            raw = one.add_deferred(t, r)
            if raw is not None:
                one_bins.append(aggregate_bins([raw], one.plan))
                one_closers += [at] * raw.n_bins
            at += 1
        ts = np.array([t for t, _ in chunk], dtype=np.int64)
        raw, closers, _ = many.add_many_deferred(ts, np.stack([r for _, r in chunk]))
        if raw is not None:
            many_bins.append(aggregate_bins([raw], many.plan))
            many_closers += (at - len(chunk) + closers).tolist()
    assert one.late_dropped > 20 and (one.out_of_range > 0).any()
    np.testing.assert_array_equal(np.concatenate(many_bins), np.concatenate(one_bins))
    assert many_closers == one_closers
    a, b = one.state_dict(), many.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    with pytest.raises(InputError, match="non-decreasing"):
        many.add_many_deferred(np.array([T10 + 9000 * DT, T10 + 8999 * DT]), np.zeros((2, len(PARITY_CHANNELS))))


def _closed_rows(closed, plan) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(slot, end, closer, binned values) of every bin of a list of `ClosedBins`, in closing order (the sample that
    closed it; a slot's bins in time order), as the fleet orders its steps."""
    if not closed:
        return (np.zeros(0, np.int64),) * 3 + (np.zeros((0, len(plan.channels))),)
    n = np.concatenate([c.n_bins for c in closed])
    first = np.cumsum(n) - n
    slots = np.repeat(np.concatenate([c.slots for c in closed]), n)
    ends = np.repeat(np.concatenate([c.start_ns for c in closed]) - first * DT, n) + DT * np.arange(n.sum())
    closers = np.concatenate([c.closers for c in closed])
    o = np.argsort(closers, kind="stable")
    return slots[o], ends[o], closers[o], aggregate_bins(closed, plan)[o]


@pytest.mark.parametrize(("rule", "grace", "bound"), [("mean", 150, 3), ("last", 0, None), ("first", 10**9, 2)])
def test_a_fleet_batch_is_binned_as_one_sample_at_a_time(rule, grace, bound):
    """`OpenBins.add` of a loop iteration's samples (any turbines, several samples of one turbine, stamps out of
    order within the grace, exact repeats, redeliveries that are late, out-of-range values, a frozen stamp over the
    bound, a turbine's backlog in one message, in time order or not) in rounds and blocks leaves the state, says
    what became of each sample, closes the bins and names the closing sample exactly as one call per sample; ticks
    between the batches close the same bins; and each turbine's bins equal those of its own `BinAccumulator` fed
    its samples alone."""
    rng = np.random.default_rng(5)
    spec = parity_spec(rule)
    n_turbines = 9
    streams = [random_stream(np.random.default_rng(100 + k), n_bins=250)[0] for k in range(n_turbines)]
    frozen = streams[3][40][0]  # a collector whose clock stopped: 9 new readings under one stamp
    streams[3][41:41] = [(frozen, rng.uniform(1, 20, len(PARITY_CHANNELS))) for _ in range(9)]
    events, cursor = [], [0] * n_turbines
    while any(c < len(s) for c, s in zip(cursor, streams)):
        k = int(rng.integers(0, n_turbines))  # interleaved arrival across turbines
        burst = int(rng.integers(8, 80)) if rng.random() < 0.04 else 1  # a turbine's backlog in one message
        part = streams[k][cursor[k] : cursor[k] + burst]
        if burst > 1 and rng.random() < 0.7:  # as a store-and-forward buffer sends it: in time order
            part = sorted(part, key=lambda e: e[0])
        events += [(k, *e) for e in part]
        cursor[k] += len(part)
    batched, single = OpenBins(spec, grace, bound), OpenBins(spec, grace, bound)
    deep = []  # the blocks `batched.add` took in one `_add_sorted`: a turbine's time-ordered backlog
    sorted_block = batched._add_sorted
    batched._add_sorted = lambda slot, ts, vals: deep.append(ts.size) or sorted_block(slot, ts, vals)
    alone = [BinAccumulator(spec, grace, bound) for _ in range(n_turbines)]
    for _ in range(n_turbines):
        batched.add_slot(), single.add_slot()
    got, want, want_status, got_status, own = [], [], [], [], [[] for _ in range(n_turbines)]
    at, rounds = 0, 0
    cuts = np.cumsum(rng.integers(1, 120, len(events)))
    for a, b in zip(np.r_[0, cuts], cuts):
        part = events[a:b]
        if not part:
            break
        slots = np.array([k for k, _, _ in part])
        ts = np.array([t for _, t, _ in part], dtype=np.int64)
        vals = np.stack([r for _, _, r in part])
        status, closed = batched.add(slots, ts, vals, at)
        got_status.append(status)
        got.append(closed)
        rounds += int(np.bincount(slots).max() > 1)
        for i, (k, t, r) in enumerate(part):
            status, closed = single.add(np.array([k]), np.array([t]), r[None, :], at + i)
            want_status.append(status)
            want.append(closed)
            raw = alone[k].add_deferred(t, r)
            if raw is not None:
                own[k].append(aggregate_bins([raw], alone[k].plan))
        at += len(part)
        if rng.random() < 0.2:  # the daemon's tick, now and then
            now = int(ts.max()) + int(rng.integers(0, 2 * DT))
            got.append(batched.close_until(now, at))
            want.append(single.close_until(now, at))
            for k in range(n_turbines):
                raw = alone[k].close_until_deferred(now)
                if raw is not None:
                    own[k].append(aggregate_bins([raw], alone[k].plan))
    got_status, want_status = np.concatenate(got_status), np.concatenate(want_status)
    np.testing.assert_array_equal(got_status, want_status)
    assert rounds > 10 and (want_status == LATE).sum() > 20 and (bound is None or (want_status == FULL).sum() >= 6)
    assert len(deep) >= 5 and sum(deep) >= 50  # backlogs took the one-call path (the rest: rounds)
    g = _closed_rows([c for c in got if c is not None], batched.plan)
    w = _closed_rows([c for c in want if c is not None], single.plan)
    for x, y in zip(g, w):
        np.testing.assert_array_equal(x, y)
    for k in range(n_turbines):
        np.testing.assert_array_equal(g[3][g[0] == k], np.concatenate(own[k]))
        a_state, b_state = batched.state_dict(k), alone[k].state_dict()
        for key in a_state:
            np.testing.assert_array_equal(a_state[key], b_state[key], err_msg=key)
    for name in ("late_dropped", "full_dropped", "out_of_range", "open_from", "closed_any", "next_order"):
        np.testing.assert_array_equal(getattr(batched, name), getattr(single, name), err_msg=name)
    assert (batched.out_of_range > 0).any()


@pytest.mark.parametrize(
    ("case", "blocks"),
    [("one deep among shallow", [300]), ("wide", []), ("deep, out of order", []), ("deep, frozen stamp", [])],
)
def test_a_turbines_backlog_goes_as_one_block_and_a_wide_batch_as_rounds(case, blocks):
    """A call's slot much deeper than the others (a turbine's backlog in one message, in time order) takes one
    `add_sorted` pass; a batch wide and shallow (50 turbines x 40 samples) stays in rounds, where 50 blocks would
    cost more; a backlog out of time order, or over `max_per_stamp` under one stamp, stays in rounds. Each gives
    what one call per sample gives."""
    rng = np.random.default_rng(3)
    spec = parity_spec("mean")
    depth = {"one deep among shallow": [300] + [1] * 49, "wide": [40] * 50}.get(case, [300] + [1] * 49)
    slots = np.concatenate([np.full(d, k) for k, d in enumerate(depth)])
    ts = np.concatenate([T10 + (np.arange(d) + 1) * 30 * S for d in depth]).astype(np.int64)
    if case == "deep, out of order":
        ts[:300] = ts[:300][rng.permutation(300)]
    if case == "deep, frozen stamp":
        ts[100:110] = ts[100]  # 10 readings under one stamp, over the bound of 3
    order = rng.permutation(slots.size)
    order = order[np.argsort(slots[order] == 0, kind="stable")]  # the deep turbine's samples last, in their order
    order[slots[order] == 0] = np.flatnonzero(slots == 0)
    slots, ts = slots[order], ts[order]
    vals = rng.uniform(1, 20, (slots.size, len(PARITY_CHANNELS)))
    batched, single = OpenBins(spec, 120, 3), OpenBins(spec, 120, 3)
    for _ in depth:
        batched.add_slot(), single.add_slot()
    taken: list[int] = []
    sorted_block = batched._add_sorted
    batched._add_sorted = lambda slot, t, v: taken.append(t.size) or sorted_block(slot, t, v)
    status, closed = batched.add(slots, ts, vals)
    want = [single.add(slots[i : i + 1], ts[i : i + 1], vals[i : i + 1], i) for i in range(slots.size)]
    assert taken == blocks
    np.testing.assert_array_equal(status, np.concatenate([w[0] for w in want]))
    assert (case == "deep, frozen stamp") == (status == FULL).any()
    g = _closed_rows([closed], batched.plan)
    w = _closed_rows([c for _, c in want if c is not None], single.plan)
    assert g[0].size > 0
    for x, y in zip(g, w):
        np.testing.assert_array_equal(x, y)
    for k in range(len(depth)):
        a_state, b_state = batched.state_dict(k), single.state_dict(k)
        for key in a_state:
            np.testing.assert_array_equal(a_state[key], b_state[key], err_msg=key)


def test_rounds_hold_each_slots_rth_item_in_arrival_order():
    """`rounds` (the open bins', the fleet's and the alert steps' one grouping): round r holds, in arrival order,
    every slot's r-th item, and nothing else; random arrays of 0-40 items over 1-12 slots, distinct ones too."""
    rng = np.random.default_rng(11)
    for _ in range(500):
        slots = rng.integers(0, int(rng.integers(1, 12)), int(rng.integers(0, 40)))
        if rng.random() < 0.2:
            slots = rng.permutation(slots.size)  # distinct: one round
        got = rounds(slots)
        rank = np.array([np.count_nonzero(slots[:i] == s) for i, s in enumerate(slots)], dtype=np.int64)
        want = [np.flatnonzero(rank == r) for r in range(int(rank.max(initial=0)) + 1)]
        assert len(got) == len(want) and all(np.array_equal(g, w) for g, w in zip(got, want))


def test_a_frozen_clock_keeps_at_most_max_per_stamp_and_counts_the_rest():
    """A publisher whose stamps stopped advancing sends new values under one stamp: none closes a bin, so without
    a bound the open bin grows without end. With `max_per_stamp` the turbine keeps the first ones, counts the
    rest (repeats included), and the next stamp of a later bin still closes the bin with what was kept. A feed
    whose stamps advance (10 Hz here, a step open for its grace after its end) loses nothing to the bound."""
    spec = parity_spec("mean")
    cap, n = 50, 2000
    fast = BinAccumulator(spec, 120, cap)
    stamps = T10 + (np.arange(3 * 6000 + 600) + 1) * 10**8  # 10 Hz for 3 steps and 60 s
    ones = np.ones(len(PARITY_CHANNELS))
    assert sum(len(fast.add(int(t), ones * (k % 7))) for k, t in enumerate(stamps)) == 2
    assert fast.full_dropped == 0 and len(fast.state_dict()["ts_ns"]) == 6000 + 600  # the step within its grace
    split = BinAccumulator(spec, 120, 5)  # one channel per message, 3 readings of each within a whole second
    for k in range(3 * len(PARITY_CHANNELS)):
        row = np.full(len(PARITY_CHANNELS), np.nan)
        row[k % len(PARITY_CHANNELS)] = k
        split.add(T10 + DT - 30 * 10**9, row)
    assert split.full_dropped == 0  # 18 samples of one stamp, but 3 values of each channel: below the bound
    acc = BinAccumulator(spec, 0, cap)
    rows = np.random.default_rng(3).uniform(1, 20, (n, len(PARITY_CHANNELS)))
    rows[n // 2] = rows[0]  # an exact repeat once full: counted as dropped
    frozen = T10 + 17 * DT - 5 * 10**9
    assert all(acc.add_deferred(frozen, r) is None for r in rows)
    assert len(acc.state_dict()["ts_ns"]) == cap and acc.full_dropped == n - cap and acc.late_dropped == 0
    closed = acc.add(frozen + DT, rows[0])  # the next step: closes the frozen one, and is kept (room again)
    assert [b.end_ns for b in closed] == [T10 + 17 * DT]
    np.testing.assert_allclose(closed[0].values, rows[:cap].mean(axis=0))
    assert len(acc.state_dict()["ts_ns"]) == 1 and acc.full_dropped == n - cap
    with pytest.raises(SpecError, match="max_per_stamp"):
        BinAccumulator(spec, 0, 0)
    with pytest.raises(SpecError, match="max_per_stamp"):  # replay's path: a table is read in bounded chunks
        acc.add_many_deferred(np.full(2, frozen + DT), rows[:2])


def test_state_dict_round_trip_continues_the_stream():
    rng = np.random.default_rng(7)
    spec = parity_spec("mean")
    events, _ = random_stream(rng, n_bins=600)
    full, first_half = BinAccumulator(spec, 30), BinAccumulator(spec, 30)
    emitted_full = [b for t, r in events for b in full.add(t, r)]
    half = len(events) // 2
    emitted = [b for t, r in events[:half] for b in first_half.add(t, r)]
    state = first_half.state_dict()
    assert all(isinstance(v, (int, bool, np.ndarray)) for v in state.values())
    assert all(v.dtype.kind in "ifU" for v in state.values() if isinstance(v, np.ndarray))
    resumed = BinAccumulator(spec, 30)
    resumed.load_state_dict(state)
    emitted += [b for t, r in events[half:] for b in resumed.add(t, r)]
    assert [b.end_ns for b in emitted] == [b.end_ns for b in emitted_full]
    np.testing.assert_array_equal(np.stack([b.values for b in emitted]), np.stack([b.values for b in emitted_full]))
    assert resumed.late_dropped == full.late_dropped
    with pytest.raises(SpecError, match="dt_seconds"):
        BinAccumulator(make_spec(channels=list(PARITY_CHANNELS), dt_seconds=60), 0).load_state_dict(state)
    with pytest.raises(SpecError, match="channels"):
        BinAccumulator(make_spec(), 0).load_state_dict(state)


def test_take_over_keeps_the_open_bins_of_another_spec_through_its_own_range():
    """A model change at a restart: the new spec's accumulator takes the open bins of the old one's state. The
    samples closing its first bin are the ones acknowledged before the restart; a sample for a bin the old spec had
    emitted is late (that step was scored); the new spec's range, narrower here, applies to the samples taken."""
    old = BinAccumulator(make_spec(valid_range={"wind_speed": (0.0, 60.0)}), 0)
    for ws, t in ((5.0, "10:05"), (7.0, "10:12"), (40.0, "10:15"), (9.0, "10:18")):
        old.add(ns(f"2024-03-01T{t}:00"), np.array(row(ws=ws)))
    assert old.open_from == ns("2024-03-01T10:20:00")  # 10:10 emitted, 10:20 open with three samples
    new = BinAccumulator(make_spec(valid_range={"wind_speed": (0.0, 30.0)}), 0)
    assert new.take_over(old.state_dict()) == 3
    assert new.out_of_range.tolist() == [1, 0, 0, 0, 0]  # 40 m/s, possible before, impossible now
    assert new.add(ns("2024-03-01T10:09:00"), np.array(row(ws=1.0))) == [] and new.late_dropped == 1
    (closed,) = new.add(ns("2024-03-01T10:25:00"), np.array(row(ws=3.0)))
    assert closed.end_ns == ns("2024-03-01T10:20:00") and closed.values[0] == pytest.approx((7.0 + 9.0) / 2)
    with pytest.raises(SpecError, match="dt_seconds"):
        BinAccumulator(make_spec(dt_seconds=60), 0).take_over(old.state_dict())
