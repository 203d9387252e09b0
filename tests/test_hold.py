"""Report-by-exception channels (`spec.hold_s`, `runtime.hold`): the rule, batch and stream alike, causality, state,
the decoders' UNREAD, and the config and spec checks."""

from __future__ import annotations

import json

import numpy as np
import pytest

from scada_tcn.runtime.binning import _circular, bin_timeline
from scada_tcn.runtime.errors import ConfigError, InputError, SpecError
from scada_tcn.runtime.fleet import Fleet
from scada_tcn.runtime.hold import UNREAD, is_unread
from scada_tcn.runtime.journal import Journal
from scada_tcn.runtime.open_bins import BinAccumulator, OpenBins
from scada_tcn.runtime.pipeline import Preprocessor
from scada_tcn.runtime.spec import PipelineSpec
from scada_tcn.runtime.state_file import load_state, save_state
from scada_tcn.runtime.telemetry import Sample
from scada_tcn.trainer.config import load_config
from scada_tcn.trainer.config.derive import spec_from_config
from tests.test_binning import CHANNELS, DT, T10, WD, S, make_spec
from tests.test_config import CONFIG
from tests.test_features import make_spec as make_feature_spec
from tests.test_features import make_timeline
from tests.test_runtime_units import _decoder
from tests.test_scaling_pipeline import fitted

HOLDS = {"power": 3600, "wind_dir": 1800, "status": 7200}  # 6, 3 and 12 steps of 10 minutes
NOW = 1_717_200_600 * S


def _reference(ts: np.ndarray, vals: np.ndarray, hold_s: dict[str, int]) -> tuple[np.ndarray, np.ndarray]:
    """The rule, one bin at a time: binning without holds, then a held channel's bin with neither a value nor an
    UNREAD takes the value of the latest stamp before it (its distinct values in order of first appearance, the
    last: dedupe "last"), unless an UNREAD came at or after that stamp or the value is more than hold_s old."""
    grid, out, _ = bin_timeline(ts, vals, make_spec())
    for name, seconds in hold_s.items():
        c = CHANNELS.index(name)
        carry: tuple[int, float] | None = None
        for i, end in enumerate(grid.tolist()):
            inside = [(int(t), v) for t, v in zip(ts, vals[:, c]) if end - DT < t <= end and not np.isnan(v)]
            unread = [int(t) for t, v in zip(ts, vals[:, c]) if end - DT < t <= end and is_unread(v)]
            if inside or unread:
                latest = max([t for t, _ in inside] + unread)
                values = list(dict.fromkeys(v for t, v in inside if t == latest))
                carry = None if latest in unread else (latest, values[-1])
            elif carry is not None and end - carry[0] <= seconds * S:
                out[i, c] = _circular(np.array([carry[1]]), 360.0)[0] if name == "wind_dir" else carry[1]
    return grid, out


def _random_feed(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A sparse feed over 40 bins: each channel in 40 % of the samples and UNREAD in 8 %, of a few values (so a
    bin's latest stamp often holds two), on the grid in a third of the feeds."""
    n = int(rng.integers(1, 60))
    ts = T10 + np.sort(rng.integers(0, 40 * DT, n))
    if rng.random() < 0.3:
        ts = ts // DT * DT
    return ts, random_values(rng, n)


def random_values(rng: np.random.Generator, n: int, unit: float = 1.0) -> np.ndarray:
    """n samples of the channels: each in 40 % of them, of the values 0 to 4 times `unit` (90 degrees for the wind
    direction), and UNREAD in 8 %."""
    vals = np.full((n, len(CHANNELS)), np.nan)
    for c in range(len(CHANNELS)):
        sent = rng.random(n) < 0.4
        vals[sent, c] = rng.integers(0, 5, sent.sum()) * (90.0 if c == WD else unit)
        vals[rng.random(n) < 0.08, c] = UNREAD
    return vals


def test_a_held_channel_takes_its_latest_value_until_it_runs_out_or_an_unread_ends_it():
    """A stopped turbine reports power 0 once at 10:03 and then nothing: the steps after take 0 for an hour (the
    step ending 11:00 is 57 minutes after it, the one ending 11:10 is 67), then are missing. A failed read ends the
    hold at once, a channel absent from a sample says nothing, and so does an impossible reading (a logger's -9999).
    Angles hold as a step of that one sample would read them; a channel not held stays missing, and a step with a
    value keeps its own. A `BinAccumulator` gives the same steps."""
    spec = make_spec(hold_s=HOLDS)
    ts = T10 + np.array([3 * 60, 3 * 60, 185 * 60, 200 * 60, 235 * 60]) * S
    vals = np.full((5, len(CHANNELS)), np.nan)
    vals[0, :3] = [5.0, 0.0, -10.0]  # wind speed, power, wind direction (359.99... wraps to 350)
    vals[1, 1] = 0.0  # the same power again at the same stamp: an exact repeat
    vals[2, 1], vals[2, 0] = 7.0, 6.0  # 13:05: power back
    vals[3, 1] = UNREAD  # 13:20: a failed read
    vals[4, 0] = 4.0  # 13:55: wind speed only
    grid, out, _ = bin_timeline(ts, vals, spec)
    acc = BinAccumulator(spec, grace_seconds=0)  # one turbine's incremental binning: the same numbers
    closed = [b for t, v in zip(ts, vals) for b in acc.add(int(t), v)] + acc.close_until(int(grid[-1]))
    np.testing.assert_array_equal(np.stack([b.values for b in closed]), out)
    steps = ((grid - T10) // DT).tolist()
    assert steps == list(range(1, 25))
    power, wind, wdir = out[:, 1], out[:, 0], out[:, 2]
    np.testing.assert_array_equal(power[:6], 0.0)  # 10:10 ... 11:00
    assert np.isnan(power[6:18]).all()  # 11:10 ... 13:00: more than an hour after 10:03
    assert power[18] == 7.0  # 13:10: its own value, sent at 13:05
    assert np.isnan(power[19:]).all()  # 13:20 on: ended by the failed read at 13:20
    assert wind[0] == 5.0 and np.isnan(wind[1:18]).all() and wind[18] == 6.0  # not held
    assert wdir[0] == 350.0 and (wdir[1:3] == 350.0).all() and np.isnan(wdir[3:]).all()  # 30 minutes
    unheld = bin_timeline(ts, vals, make_spec())[1]
    assert np.isnan(unheld[1:6, 1]).all()
    wind = make_spec(hold_s={"wind_speed": 3600})  # valid 0-60 m/s: -9999, a logger's "no value", is impossible
    ts2, v2 = T10 + np.array([3, 25]) * 60 * S, np.full((2, len(CHANNELS)), np.nan)
    v2[:, 0] = [5.0, -9999.0]
    out2 = bin_timeline(ts2, v2, wind)[1][:, 0]
    assert out2[0] == 5.0 and out2[1] == 5.0 and np.isnan(out2[2:]).all()  # ended at 10:25, kept in 10:20


def test_batch_binning_follows_the_rule():
    """Random sparse feeds with UNREADs, several values at a stamp and stamps on the grid: `bin_timeline` gives the
    rule's numbers (`_reference`, one bin at a time), and a `BinAccumulator` fed them one by one the same."""
    rng = np.random.default_rng(7)
    for _ in range(150):
        ts, vals = _random_feed(rng)
        grid, out, _ = bin_timeline(ts, vals, make_spec(hold_s=HOLDS))
        ref_grid, ref = _reference(ts, vals, HOLDS)
        np.testing.assert_array_equal(grid, ref_grid)
        np.testing.assert_allclose(out, ref, rtol=0, atol=1e-9)
        acc = BinAccumulator(make_spec(hold_s=HOLDS), grace_seconds=0)
        closed = [b for t, v in zip(ts, vals) for b in acc.add(int(t), v)] + acc.close_until(int(grid[-1]))
        np.testing.assert_array_equal(np.stack([b.values for b in closed]), out)


def _report_by_exception(raw: np.ndarray, rng: np.random.Generator, t0: int) -> tuple[np.ndarray, np.ndarray]:
    """A binned timeline as a report-by-exception feed: 1-3 samples a step, a channel sent only when it differs from
    its last sent value (and then at a random sample of the step), a failed read now and then."""
    ts, rows = [], []
    last = np.full(raw.shape[1], np.nan)
    for i, row in enumerate(raw):
        k = int(rng.integers(1, 4))
        stamps = t0 + i * DT - np.sort(rng.integers(0, DT // S, k))[::-1] * S
        block = np.full((k, raw.shape[1]), np.nan)
        for c, v in enumerate(row):
            if not np.isnan(v) and v != last[c]:
                block[int(rng.integers(k)), c] = v
                last[c] = v
            elif rng.random() < 0.01:
                block[int(rng.integers(k)), c] = UNREAD
                last[c] = np.nan
        ts += stamps.tolist()
        rows.append(block)
    return np.array(ts, dtype=np.int64), np.concatenate(rows)


def test_a_fleet_streams_report_by_exception_feeds_as_the_batch_reads_them(tmp_path):
    """The feature spec's timelines quantised (so values repeat and are not sent) as report-by-exception feeds of
    three turbines: a Fleet fed them in chunks of the daemon's size, restarted half-way from its state file, gives
    `Preprocessor(bin_timeline(...))`'s rows for every step; without holds the same feeds lose steps."""
    holds = {"wind_speed": 1800, "power": 3600, "wind_dir": 3600, "status": 7200}
    spec = make_feature_spec(hold_s=holds)
    scaler = fitted(spec, make_timeline(2000, seed=3)).scaler
    rng = np.random.default_rng(11)
    t0 = T10
    feeds = {}
    for k, name in enumerate(["T1", "T2", "T3"]):
        raw = make_timeline(400, seed=40 + k)
        raw[:, 0] = np.round(raw[:, 0])  # wind speed to 1 m/s, power to 50 kW, angles to 10 degrees
        raw[:, 1] = np.round(raw[:, 1] / 50) * 50
        raw[:, 3:5] = np.round(raw[:, 3:5] / 10) * 10 % 360
        feeds[name] = _report_by_exception(raw, rng, t0 + k * DT)
    order = np.argsort(np.concatenate([f[0] for f in feeds.values()]), kind="stable")
    names = np.repeat(list(feeds), [f[0].size for f in feeds.values()])[order]
    ts = np.concatenate([f[0] for f in feeds.values()])[order]
    vals = np.concatenate([f[1] for f in feeds.values()])[order]
    assert np.isnan(vals).mean() > 0.6 and is_unread(vals).sum() > 10
    fleet = Fleet(spec, scaler, 36, 0.0, 10, windows=False)
    steps = []
    for k, chunk in enumerate(np.array_split(np.arange(ts.size), 97)):
        fleet.add_batch(names[chunk].tolist(), ts[chunk], vals[chunk])
        steps += fleet.drain()
        if k == 48:
            save_state(tmp_path / "state.npz", {"fleet": fleet.state_dict()})
            fleet = Fleet(spec, scaler, 36, 0.0, 10, windows=False)
            fleet.load_state_dict(load_state(tmp_path / "state.npz")["fleet"])
    fleet.close_until(int(ts.max()) + 2 * DT)
    steps += fleet.drain()
    pre = Preprocessor(spec, scaler)
    held_steps = 0
    for name, (t, v) in feeds.items():
        grid, binned, _ = bin_timeline(t, v, spec)
        want = pre.transform(binned)
        mine = [s for s in steps if s.turbine == name][: grid.size]  # (the clock closed the others' last bins)
        assert [s.end_ns for s in mine] == grid.tolist()
        for got, X, M, F in zip(mine, want.X, want.M_miss, want.Flags):
            np.testing.assert_array_equal(got.rows.X, X)
            np.testing.assert_array_equal(got.rows.M_miss, M)
            np.testing.assert_array_equal(got.rows.Flags, F)
        unheld = bin_timeline(t, v, make_feature_spec())[1]
        held_steps += int((np.isnan(unheld) & ~np.isnan(binned)).sum())
    assert held_steps > 1000  # the values the holds gave back


def test_causality_a_step_never_holds_a_later_value():
    """Cutting a feed at any stamp changes no step that ended before the cut: a hold reaches forward only."""
    rng = np.random.default_rng(5)
    spec = make_spec(hold_s=HOLDS)
    compared = 0
    for _ in range(40):
        ts, vals = _random_feed(rng)
        grid, whole, _ = bin_timeline(ts, vals, spec)
        cut = int(rng.integers(1, ts.size + 1))
        g, part, _ = bin_timeline(ts[:cut], vals[:cut], spec, grid_start_ns=int(grid[0]), grid_end_ns=int(grid[-1]))
        before = g < ts[cut] if cut < ts.size else np.ones(g.size, dtype=bool)  # steps ended before the cut
        np.testing.assert_array_equal(part[before], whole[before])
        compared += int(before.sum())
    assert compared > 200


def test_open_bins_state_keeps_the_hold_and_reads_a_state_from_before_holds():
    """The accumulator state carries each channel's latest value; one saved before holds existed (no such keys)
    loads holding nothing, and one of the wrong shape is refused. Another model's state (a model change) gives its
    held values through this spec's valid range, as its samples."""
    spec = make_spec(hold_s=HOLDS)
    bins = OpenBins(spec, 0.0)
    bins.add_slot()
    bins.hold_ts[0, 1], bins.hold_val[0, 1] = T10, 42.0
    state = bins.state_dict(0)
    other = OpenBins(spec, 0.0)
    other.add_slot()
    other.load_state(0, other.checked_state(state))
    assert (other.hold_ts[0, 1], other.hold_val[0, 1]) == (T10, 42.0)
    old = {k: v for k, v in state.items() if k not in ("hold_ts", "hold_values")}
    other.load_state(0, other.checked_state(old))
    assert np.isnan(other.hold_val[0]).all()
    bins.hold_ts[0, 0], bins.hold_val[0, 0] = T10, 70.0  # wind speed 70 m/s: outside this spec's valid range
    other.load_state(0, other.checked_state(bins.state_dict(0)), through_range=True)  # another model's state
    assert np.isnan(other.hold_val[0, 0]) and other.hold_val[0, 1] == 42.0
    with pytest.raises(InputError, match=r"hold_ts \(3,\) and hold_values \(5,\) must be \(5,\)"):
        other.checked_state({**state, "hold_ts": state["hold_ts"][:3]})
    with pytest.raises(InputError, match="expected keys"):
        other.checked_state({**old, "hold_ts": state["hold_ts"]})


def test_decoders_read_failed_reads_and_nulls_as_unread_and_the_journal_keeps_them(tmp_path):
    """A JSON null (and `""` under numeric_strings), Kepware's `"q": false` and null are UNREAD (the hold ends); an
    absent key is plain NaN (it holds). The journal and the state file give the same bits back."""
    dec = _decoder()
    doc = dec.decode("s/x/WT1/t", b'{"ts": 1717200000, "values": {"P": null}}', NOW)
    assert is_unread(doc.values).tolist() == [True, False] and np.isnan(doc.values).all()
    text = _decoder(numeric_strings=True).decode("s/x/WT1/t", b'{"ts": 1717200000, "values": {"ws": ""}}', NOW)
    assert is_unread(text.values).tolist() == [False, True]
    kep = _decoder(tag_pattern=r"^Farm\.(?P<turbine>[^.]+)\.(?P<key>.+)$", epoch_unit="ms")
    els = [{"id": "Farm.WT1.P", "v": 1.0, "q": False, "t": 1717200000000},
           {"id": "Farm.WT1.ws", "v": None, "q": True, "t": 1717200000000}]  # fmt: skip
    (s,) = kep.decode_tags(json.dumps({"values": els}).encode(), NOW).samples
    assert is_unread(s.values).tolist() == [True, True] and s.failed == (0,)
    journal = Journal(tmp_path / "j", 2)
    journal.append(1, [Sample("WT1", 5, doc.values)], None)
    (frame,) = list(journal.read())
    assert is_unread(frame.samples[0].values).tolist() == [True, False]
    save_state(tmp_path / "s.npz", {"v": doc.values})
    assert is_unread(load_state(tmp_path / "s.npz")["v"]).tolist() == [True, False]


def test_the_spec_and_the_config_refuse_bad_holds():
    """hold_s names channels, whole seconds from 1 to a year (longer would overflow the ns clock), and no channel of
    the stuck-signal check; the config's message names data.qc.hold_s."""
    with pytest.raises(SpecError, match="unknown channels"):
        make_spec(hold_s={"pitch": 60})
    for bad in (0, -5, 1.5, True, 366 * 86_400 + 1, 10**10):
        with pytest.raises(SpecError, match=r"integers from 1 to 31,622,400 \(a year\)"):
            make_spec(hold_s={"power": bad})
    with pytest.raises(SpecError, match="also repeat_channels"):
        make_spec(hold_s={"power": 600}, repeat_channels=["power"])
    assert PipelineSpec.from_dict(make_spec(hold_s=HOLDS).to_dict()).hold_s == HOLDS
    cfg = load_config(CONFIG, ["data.qc.hold_s={power: 3600}"])
    assert dict(spec_from_config(cfg).hold_s) == {"power": 3600}
    stuck = cfg.features.repeat_channels[0]
    with pytest.raises(ConfigError, match=rf"^data.qc.hold_s: \['{stuck}'\] are also repeat_channels"):
        load_config(CONFIG, [f"data.qc.hold_s={{{stuck}: 600}}"])
