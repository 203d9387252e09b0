"""bench/lhb_injection.py scores injected faults with the project's scorer, net of the uninjected copy."""

import pandas as pd

from bench.lhb_injection import detections, peer_alerts, untouched_alerts
from scada_tcn.trainer.evaluation.metrics import MONTH_NS

HOUR = pd.Timedelta(hours=1)
T = pd.date_range("2024-01-01", periods=24, freq="1h", tz="UTC")


def _table(on: str, turbine: str = "T1") -> pd.DataFrame:
    return pd.DataFrame({"turbine_id": turbine, "t_end": T[: len(on)], "alert_on": [c == "1" for c in on]})


def _labels(*spans: tuple[int, int]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "turbine_id": "T1",
            "start": [T[a].isoformat() for a, _ in spans],
            "end": [T[b].isoformat() for _, b in spans],
            "fault": [f"f{i}" for i in range(len(spans))],
        }
    )


def test_onset_inside_the_fault_counts_with_its_lead():
    inj, orig = _table("000000110000"), _table("000000000000")
    found = detections(orig, inj, _labels((4, 9)), 3 * HOUR, HOUR)
    (e,) = found["events"]
    assert e["detected"] and e["lead_ns"] == -2 * HOUR.value and e["onset_ns"] == T[6].value
    assert (found["n_detected"], found["n_false_alerts"], found["n_onsets_masked_by_clean"]) == (1, 0, 0)


def test_tail_of_the_previous_alarm_does_not_count():
    # the first fault's alarm is still on when the second starts, and turns on nowhere inside the second
    inj, orig = _table("011111110000"), _table("000000000000")
    first, second = detections(orig, inj, _labels((1, 3), (5, 9)), HOUR, HOUR)["events"]
    assert first["detected"] and first["lead_ns"] == 0
    assert not second["detected"] and second["lead_ns"] is None and second["coverage"] == 3 / 4  # span [1, 8] h


def test_alarm_on_the_uninjected_copy_at_the_onset_cancels_it():
    inj = _table("000001100000")  # onset at 5 h, inside the fault [4, 9] h
    masked = detections(_table("000001000000"), inj, _labels((4, 9)), 3 * HOUR, HOUR)
    assert not masked["events"][0]["detected"]
    assert (masked["n_onsets"], masked["n_onsets_masked_by_clean"], masked["n_false_alerts"]) == (0, 1, 0)
    earlier = detections(_table("001000000000"), inj, _labels((4, 9)), 3 * HOUR, HOUR)
    assert earlier["events"][0]["detected"] and earlier["events"][0]["lead_ns"] == -HOUR.value  # only the step counts


def test_untouched_alerts_counts_onsets_on_the_other_turbines():
    res = pd.concat([_table("011001110001", "T1"), _table("010100000000", "T2"), _table("111111111111", "T3")])
    raised, months = untouched_alerts(res, "T3", HOUR)
    assert raised == 3 + 2  # T1: onsets at 1, 5, 11 h; T2: at 1, 3 h
    assert months == 2 * 12 * HOUR.value / MONTH_NS


def test_peer_alerts_are_the_untouched_turbines_onsets_net_of_the_uninjected_copy():
    orig = pd.concat([_table("000000000000", "T1"), _table("000110000000", "T2"), _table("000000000000", "T3")])
    # the fault on T1 moves T2 (an onset at 7 h the clean copy lacks; the one at 3 h is in both) and T3 (at 9 h)
    inj = pd.concat([_table("000001111000", "T1"), _table("000110011000", "T2"), _table("000000000110", "T3")])
    leak = peer_alerts(orig, inj, "T1", HOUR)
    assert (leak["n_onsets"], leak["n_onsets_masked_by_clean"], leak["n_false_alerts"]) == (2, 1, 2)
    assert peer_alerts(orig, orig, "T1", HOUR)["n_onsets"] == 0
