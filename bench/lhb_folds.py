"""La Haute Borne across seasons: `bench/lhb_signals.py`'s folds side by side, and a choice made on every fold's
validation month.

    python bench/lhb_folds.py artifacts/lhb_winter artifacts/lhb_autumn

Each argument is a workdir of `lhb_signals.py` (one per `--fold`; run the same `--variants` in each, in one run or
several: a workdir's `lhb_signals.json` keeps the variants of its earlier runs). Prints, as a Markdown table, per
fold and variant: the classes detected (median and range over training x injection seeds), the runs that detect
each class, false alerts per turbine-month (the untouched turbines; the injected turbine's clean copy), the median
onset after the fault's start, the peer alerts (test / validation injections), and the validation figures the
choice uses (the choice is made on the window graph's residuals; rows marked [stream] are the variants judged on
the streaming engine's, where `--engines` included it). Then each fold's own choice (step 7 of `lhb_signals.py`)
and the choice across seasons: the same rule over the variants every fold ran, with a variant's largest validation
estimate over the folds and its validation classes summed over them. Test figures play no part in any choice."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from lhb_signals import _estimate, _summary, choose, pick, settings_of  # noqa: E402

CLASSES = ("gearbox_overheat", "pitch_stuck", "sensor_freeze", "yaw_misalignment", "underperformance")


def _span(values: list[float], fmt: str = "{:.2f}") -> str:
    return f"{fmt.format(np.median(values))} ({fmt.format(min(values))}-{fmt.format(max(values))})"


def row(fold: str, name: str, v: dict[str, Any], mark: str = "") -> str:
    """One Markdown row of a variant's test and validation figures (`v`: an entry of lhb_signals.json)."""
    t, tune = v["test"], v.get("tune", [])
    n = [len(r["classes"]) for r in t]
    per = ", ".join(str(sum(c in r["classes"] for r in t)) for c in CLASSES)
    onset = [-x for r in t for x in r["lead_h"]]
    peers = f"{sum(r['peer_alerts'] for r in t)} / {sum(r['peer_alerts'] for r in tune)}" if tune else ""
    val = f"{_estimate(v):.2f} | {_summary(tune)['classes']:.1f}" if tune else " | "
    return (f"| {fold} | {name}{mark} | {_span(n, '{:.0f}')} | {per} | "
            f"{_span([r['untouched_false_per_month'] for r in t])} | "
            f"{_span([r['uninjected_false_per_month'] for r in t])} | "
            f"{np.median(onset) if onset else float('nan'):.1f} | {peers} | {val} |")  # fmt: skip


def across(folds: dict[str, dict[str, Any]]) -> str | None:
    """The choice over every fold's validation: the variants every fold ran, each with its largest estimate and
    its validation classes summed over the folds."""
    names = set.intersection(*(set(r["variants"]) for r in folds.values()))
    est = {k: max(_estimate(r["variants"][k]) for r in folds.values()) for k in sorted(names)}
    tune = {k: sum(_summary(r["variants"][k]["tune"]).get("classes", 0.0) for r in folds.values()) for k in est}
    return pick(est, tune, {k: max(settings_of(k, r["variants"][k]) for r in folds.values()) for k in est})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("workdirs", nargs="+", type=Path, help="lhb_signals.py workdirs, one per fold")
    ap.add_argument(
        "--results",
        default="lhb_signals.json",
        help="the file of each workdir to read (lhb_centre_probe_c2016k1.json: a probe's figures)",
    )
    a = ap.parse_args()
    folds: dict[str, dict[str, Any]] = {}
    for w in a.workdirs:
        path = w / a.results
        if not path.is_file():
            raise SystemExit(f"{path} is missing: run bench/lhb_signals.py --workdir {w} --fold ... first")
        r = json.loads(path.read_text())
        fold = r.get("fold", "winter")  # a run before folds existed holds the winter fold
        if fold in folds:
            raise SystemExit(f"{w}: a second workdir of the {fold} fold")
        folds[fold] = r
    print(
        f"| fold | variant | classes (of 5) | runs detecting {', '.join(CLASSES)} | untouched f/tm | "
        "uninjected f/tm | onset after start (h) | peer alerts, test / val. | val. estimate | val. classes |"
    )
    print("| --- " * 10 + "|")
    for fold, r in folds.items():
        chosen = choose(r["variants"])
        for name, v in r["variants"].items():
            print(row(fold, name, v, " (chosen on this fold)" if name == chosen else ""))
        for name, v in r.get("stream", {}).items():  # the same variants judged on the streaming engine's residuals
            print(row(fold, name, v, " [stream]"))
        if r["window_mean"]["test"]:
            print(row(fold, "window-mean score", {"test": r["window_mean"]["test"]}))
    for fold, r in folds.items():
        print(f"{fold}: chosen on its validation month: {choose(r['variants'])}")
    if len(folds) > 1:
        print(f"across {' and '.join(folds)} (every fold's validation): {across(folds)}")


if __name__ == "__main__":
    main()
