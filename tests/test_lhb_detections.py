"""The injected-fault detection rule of bench/lhb_injection.py on a timeline built by hand."""

import pandas as pd

from bench.lhb_injection import detections


def _table(on: str) -> pd.DataFrame:
    t = pd.date_range("2024-01-01", periods=len(on), freq="1h", tz="UTC")
    return pd.DataFrame({"turbine_id": "T1", "t_end": t, "alert_on": [c == "1" for c in on]})


def _labels(*spans: tuple[int, int]) -> pd.DataFrame:
    t = pd.date_range("2024-01-01", periods=24, freq="1h", tz="UTC")
    return pd.DataFrame(
        {
            "turbine_id": "T1",
            "start": [t[a].isoformat() for a, _ in spans],
            "end": [t[b].isoformat() for _, b in spans],
            "fault": [f"f{i}" for i in range(len(spans))],
        }
    )


def test_onset_inside_the_fault_counts_with_hours_after_start():
    inj, orig = _table("000000110000"), _table("000000000000")
    (d,) = detections(orig, inj, _labels((4, 9)), pd.Timedelta(hours=3))
    assert d["detected"] and d["hours_after_start"] == 2.0 and not d["uninjected_alarmed"]


def test_tail_of_the_previous_alarm_does_not_count():
    # the first fault's alarm is still on when the second starts, and turns on nowhere inside the second
    inj, orig = _table("011111110000"), _table("000000000000")
    first, second = detections(orig, inj, _labels((1, 3), (5, 9)), pd.Timedelta(hours=1))
    assert first["detected"] and first["hours_after_start"] == 0.0
    assert not second["detected"] and second["hours_after_start"] != second["hours_after_start"]  # NaN


def test_alarm_on_the_uninjected_copy_cancels_the_detection():
    inj = _table("000001100000")
    (d,) = detections(_table("001000000000"), inj, _labels((4, 9)), pd.Timedelta(hours=3))
    assert not d["detected"] and d["uninjected_alarmed"]
    (d,) = detections(_table("001000000000"), inj, _labels((4, 9)), pd.Timedelta(hours=1))
    assert d["detected"]  # the uninjected alarm lies before the lead span
