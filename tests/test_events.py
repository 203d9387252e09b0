"""The project's event scorer (trainer.evaluation.events) on timelines built by hand, one rule per test."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from scada_tcn.trainer.evaluation.events import Timeline, alert_spans, score_events, timelines_from_table
from scada_tcn.trainer.evaluation.metrics import MONTH_NS, MetricsError

H = 3_600 * 10**9
T0 = 1_700_000_000 * 10**9


def _tl(states: str, on_before: bool = False) -> Timeline:
    """One step per hour from T0; '1' = alert on after that step."""
    return Timeline(T0 + H * np.arange(len(states)), np.array([c == "1" for c in states]), on_before)


def _f(turbine: str, start_h: float, end_h: float, fault: str = "gear") -> tuple[str, int, int, str]:
    return turbine, T0 + int(start_h * H), T0 + int(end_h * H), fault


def _score(timelines: dict, faults: list, lead_h: float, **kw) -> dict:
    return score_events(timelines, faults, max_lead_ns=int(lead_h * H), dt_ns=H, **kw)


def test_an_alert_already_on_before_the_window_detects_nothing():
    # on from 1 h; the fault [5, 7] h opens its window at 3 h: the onset at 1 h is earlier
    out = _score({"T": _tl("0111111100")}, [_f("T", 5, 7)], lead_h=2)
    (e,) = out["events"]
    assert not e["detected"] and e["onset_ns"] is None and e["lead_ns"] is None
    assert (out["n_detected"], out["n_onsets"], out["n_false_alerts"]) == (0, 1, 1)
    assert e["coverage"] == 1.0  # the alert is on all through the fault, yet it did not detect it


def test_an_onset_inside_the_fault_detects_it_with_a_negative_lead():
    out = _score({"T": _tl("0000001100")}, [_f("T", 4, 8)], lead_h=2)
    (e,) = out["events"]
    assert e["detected"] and e["onset_ns"] == T0 + 6 * H and e["lead_ns"] == -2 * H
    assert (out["n_detected"], out["detection_rate"], out["n_false_alerts"]) == (1, 1.0, 0)
    assert out["lead_ns_median"] == out["lead_ns_mean"] == -2 * H


def test_an_onset_in_the_lead_span_detects_with_a_positive_lead():
    out = _score({"T": _tl("0011000000")}, [_f("T", 4, 8)], lead_h=3)
    assert out["events"][0]["detected"] and out["events"][0]["lead_ns"] == 2 * H
    # closed window: an onset exactly max_lead before the start counts, one nanosecond more does not
    assert score_events({"T": _tl("0011000000")}, [_f("T", 4, 8)], 2 * H, H)["events"][0]["lead_ns"] == 2 * H
    late = score_events({"T": _tl("0011000000")}, [_f("T", 4, 8)], 2 * H - 1, H)
    assert not late["events"][0]["detected"] and late["n_false_alerts"] == 1


def test_an_onset_after_the_end_is_a_false_alert():
    out = _score({"T": _tl("0000000011")}, [_f("T", 2, 5)], lead_h=1)
    assert not out["events"][0]["detected"] and out["n_detected"] == 0
    assert (out["n_onsets"], out["n_false_alerts"]) == (1, 1)
    # 10 steps of 1 h: 9 h between the first and last stamp plus one step
    assert out["turbine_months"] == 10 * H / MONTH_NS and MONTH_NS == 30.4375 * 86_400 * 10**9
    assert out["false_alerts_per_turbine_month"] == 1 / out["turbine_months"]


def test_an_alert_open_at_the_end_is_cut_at_the_last_scored_step():
    tl = _tl("0000001111")  # on from 6 h to the last step, 9 h
    assert alert_spans(tl.ts_ns, tl.on) == [(T0 + 6 * H, T0 + 9 * H)]
    out = _score({"T": tl}, [_f("T", 5, 12)], lead_h=0)  # the fault runs past the data
    assert out["events"][0]["coverage"] == 3 / 7 and (out["covered_ns"], out["fault_ns"]) == (3 * H, 7 * H)
    assert out["alert_coverage"] == 3 / 7 and out["events"][0]["lead_ns"] == -1 * H
    # a span ends at the first step off again; one on at the first step starts there
    ts = np.arange(7) * 10
    assert alert_spans(ts, np.array([0, 1, 1, 0, 0, 1, 1], bool)) == [(10, 30), (50, 60)]
    assert alert_spans(ts, np.zeros(7, bool)) == [] and alert_spans(ts[:2], np.array([True, False])) == [(0, 10)]


def test_on_before_carries_an_earlier_alert_into_the_timeline():
    carried = _score({"T": _tl("1100000000", on_before=True)}, [_f("T", 0, 1)], lead_h=0)
    assert not carried["events"][0]["detected"] and carried["n_onsets"] == 0
    assert carried["events"][0]["coverage"] == 1.0  # the span [0, 2] h starts at the first step
    fresh = _score({"T": _tl("1100000000")}, [_f("T", 0, 1)], lead_h=0)
    assert fresh["events"][0]["lead_ns"] == 0 and fresh["n_onsets"] == 1  # the first step is an onset


def test_net_of_the_clean_copy():
    injected = _tl("0001100110")  # onsets at 3 h and 7 h
    ts = T0 + H * np.array([0, 1, 2, 3, 4, 5, 6, 8, 9])  # the clean copy has no step at 7 h
    clean = Timeline(ts, np.array([0, 0, 0, 1, 0, 0, 1, 1, 0], bool))
    faults = [_f("T", 2, 4, "gear"), _f("T", 6, 8, "yaw")]
    out = _score({"T": injected}, faults, lead_h=0, clean={"T": clean})
    # 3 h: the clean copy is on -> neither a detection nor a false alert; 7 h: a missing clean step is not on
    assert [e["detected"] for e in out["events"]] == [False, True]
    assert out["events"][1]["lead_ns"] == -1 * H
    assert (out["n_onsets"], out["n_onsets_masked_by_clean"], out["n_false_alerts"]) == (1, 1, 0)
    gross = _score({"T": injected}, faults, lead_h=0)
    assert [e["detected"] for e in gross["events"]] == [True, True] and gross["n_onsets_masked_by_clean"] == 0
    other = _score({"T": injected}, faults, lead_h=0, clean={"U": clean})  # a turbine the copy lacks: nothing masked
    assert other["n_detected"] == 2 and other["n_onsets_masked_by_clean"] == 0
    assert out["events"][0]["coverage"] == 0.5  # the timeline's own span [3, 5] h over the fault [2, 4] h


def test_one_alert_spanning_two_faults_detects_only_the_first():
    out = _score({"T": _tl("0011111111100")}, [_f("T", 3, 5), _f("T", 8, 10)], lead_h=1)
    first, second = out["events"]
    assert first["detected"] and first["lead_ns"] == 1 * H
    assert not second["detected"] and second["coverage"] == 1.0
    assert (out["n_detected"], out["n_onsets"], out["n_false_alerts"]) == (1, 1, 0)


def test_per_class_breakdown_and_fleet_totals():
    timelines = {"A": _tl("0010000010"), "B": _tl("0000001000"), "C": _tl("0000000000")}
    faults = [_f("A", 4, 5, "gear"), _f("B", 10, 11, "gear"), _f("A", 8, 9, "yaw"), _f("C", 1, 2, "yaw")]
    out = _score(timelines, faults, lead_h=4)
    assert [e["lead_ns"] for e in out["events"]] == [2 * H, 4 * H, 0, None]
    assert out["by_fault"] == {
        "gear": {"n_events": 2, "n_detected": 2, "detection_rate": 1.0, "lead_ns_median": 3.0 * H},
        "yaw": {"n_events": 2, "n_detected": 1, "detection_rate": 0.5, "lead_ns_median": 0.0},
    }
    assert (out["n_events"], out["n_detected"], out["detection_rate"]) == (4, 3, 0.75)
    assert out["lead_ns_median"] == 2 * H and out["lead_ns_mean"] == 2 * H
    assert out["turbine_months"] == 30 * H / MONTH_NS and out["n_false_alerts"] == 0
    assert out["events"][2] == {
        "turbine": "A",
        "fault": "yaw",
        "start_ns": T0 + 8 * H,
        "end_ns": T0 + 9 * H,
        "detected": True,
        "onset_ns": T0 + 8 * H,
        "lead_ns": 0,
        "coverage": 1.0,
    }
    assert json.loads(json.dumps(out)) == out  # plain types only
    assert all(type(v) is float for e in out["events"] for k, v in e.items() if k == "coverage")


def test_matches_a_step_by_step_definition_on_random_timelines():
    rng = np.random.default_rng(0)
    for _ in range(30):
        n = int(rng.integers(1, 40))
        ts = np.cumsum(rng.integers(1, 4, n)) * H  # gaps between scored steps
        on = rng.random(n) < 0.4
        clean = Timeline(ts[rng.random(n) < 0.8], np.zeros(0, bool))
        clean = clean._replace(on=rng.random(clean.ts_ns.size) < 0.3)
        faults = []
        for _ in range(int(rng.integers(0, 4))):
            a = int(rng.integers(0, int(ts[-1]) // H + 2)) * H
            faults.append(("T", a, a + int(rng.integers(0, 5)) * H, "f"))
        lead = int(rng.integers(0, 4)) * H
        out = score_events({"T": Timeline(ts, on)}, faults, lead, H, clean={"T": clean})
        clean_on = dict(zip(clean.ts_ns.tolist(), clean.on.tolist()))
        onsets = [int(t) for k, t in enumerate(ts) if on[k] and (k == 0 or not on[k - 1])]
        counted = [t for t in onsets if not clean_on.get(t, False)]
        spans = alert_spans(ts, on)
        for e, (_, a, b, _) in zip(out["events"], faults):
            hits = [t for t in counted if a - lead <= t <= b]
            assert e["onset_ns"] == (hits[0] if hits else None)
            covered = sum(max(0, min(b, s1) - max(a, s0)) for s0, s1 in spans)
            assert e["coverage"] == pytest.approx(covered / (b - a), nan_ok=True) if b > a else np.isnan(e["coverage"])
        false = [t for t in counted if not any(a - lead <= t <= b for _, a, b, _ in faults)]
        assert (out["n_onsets"], out["n_false_alerts"]) == (len(counted), len(false))
        assert out["n_onsets_masked_by_clean"] == len(onsets) - len(counted)


def test_empty_denominators_are_nan():
    none = _score({"T": _tl("0000")}, [], lead_h=1)
    assert none["n_events"] == 0 and none["false_alerts_per_turbine_month"] == 0.0 and none["by_fault"] == {}
    assert all(np.isnan(none[k]) for k in ("detection_rate", "lead_ns_median", "lead_ns_mean", "alert_coverage"))
    nothing = _score({}, [], lead_h=1)
    assert nothing["turbine_months"] == 0.0 and np.isnan(nothing["false_alerts_per_turbine_month"])
    point = _score({"T": _tl("0100")}, [_f("T", 1, 1)], lead_h=0)  # a zero-length fault: detected, no coverage
    assert point["events"][0]["detected"] and np.isnan(point["events"][0]["coverage"])


def test_timelines_from_a_results_table():
    t = pd.Timestamp("2024-01-01T00:00Z") + pd.to_timedelta([2, 0, 1, 1, 0], unit="h")
    table = pd.DataFrame(
        {"turbine_id": ["A", "A", "A", "B", "B"], "t_end": t, "alert_on": [True, False, True, False, True]}
    )
    kept = table.copy()
    tls = timelines_from_table(table)
    t0 = pd.Timestamp("2024-01-01T00:00Z").value
    assert list(tls) == ["A", "B"]
    assert tls["A"].ts_ns.tolist() == [t0, t0 + H, t0 + 2 * H] and tls["A"].on.tolist() == [False, True, True]
    assert tls["B"].ts_ns.tolist() == [t0, t0 + H] and tls["B"].on.tolist() == [True, False]
    pd.testing.assert_frame_equal(table, kept)
    as_ns = timelines_from_table(table.assign(t_end=table["t_end"].astype("datetime64[us, UTC]")))
    assert as_ns["A"].ts_ns.tolist() == tls["A"].ts_ns.tolist()  # the unit of the column does not matter
    with pytest.raises(MetricsError, match="turbine 'A'.*strictly increasing"):
        timelines_from_table(table.assign(t_end=t[[0, 0, 1, 1, 0]]))
    with pytest.raises(MetricsError, match="'alert_on' bool"):
        timelines_from_table(table.assign(alert_on=1.0))
    with pytest.raises(MetricsError, match="int ns or datetimes"):
        timelines_from_table(table.assign(t_end=0.5))


def test_bad_inputs_are_refused():
    ok = {"T": _tl("0110")}
    with pytest.raises(MetricsError, match="turbine 'U' has no timeline"):
        _score(ok, [_f("U", 1, 2)], lead_h=0)
    with pytest.raises(MetricsError, match="end_ns >= start_ns"):
        _score(ok, [_f("T", 2, 1)], lead_h=0)
    with pytest.raises(MetricsError, match="integer ns"):
        _score(ok, [("T", 0.5, 1.0, "gear")], lead_h=0)
    with pytest.raises(MetricsError, match="\\(turbine, start_ns, end_ns, fault class\\)"):
        _score(ok, [("T", 1, 2)], lead_h=0)
    with pytest.raises(MetricsError, match="max_lead_ns must be an integer >= 0"):
        score_events(ok, [], max_lead_ns=-1, dt_ns=H)
    with pytest.raises(MetricsError, match="max_lead_ns must be an integer >= 0"):
        score_events(ok, [], max_lead_ns=True, dt_ns=H)
    with pytest.raises(MetricsError, match="dt_ns must be an integer >= 1"):
        score_events(ok, [], max_lead_ns=0, dt_ns=0)
    with pytest.raises(MetricsError, match="step 2 is at or before step 1"):
        _score({"T": Timeline(np.array([0, 5, 5]), np.zeros(3, bool))}, [], lead_h=0)
    with pytest.raises(MetricsError, match="non-empty"):
        _score({"T": Timeline(np.zeros(0, np.int64), np.zeros(0, bool))}, [], lead_h=0)
    with pytest.raises(MetricsError, match="on a \\(T,\\) bool array"):
        _score({"T": Timeline(np.arange(3), np.array([0, 1, 0]))}, [], lead_h=0)
    with pytest.raises(MetricsError, match="clean\\['T'\\]"):
        _score(ok, [], lead_h=0, clean={"T": (np.arange(3) * 1.0, np.zeros(3, bool))})
