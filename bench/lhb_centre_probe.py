"""A probe, not a product setting: does a slow, robust, per-turbine centre make La Haute Borne's detections hold
across seasons? (twenty-ninth session, docs/results.md).

The tracker's EWMA takes each monitored deviation y (after the fleet baseline) less a centre c of its own (turbine,
monitor), taken before the step: `c <- c + a clip(y - c, -k, k)`, a = 1 - 2^(-1/H), on observed steps only, from c =
0 (the exported centre, the validation median, is already subtracted). A 70 h fault (420 steps) moves c by at most
`(1 - (1 - a)^420) k`: 0.13 k at H = 2016 steps (two weeks). The levels are fitted on the centred aggregates, as the
export would.

It runs `bench/lhb_signals.py` on a workdir that already holds a fold's models (the same cached residuals) with
the centre patched into `SignalTracker`'s aggregators, and writes its figures to `lhb_centre_probe_c<H>k<k>.json`
in that workdir (`bench/lhb_folds.py --results` reads it): the fold's `lhb_signals.json` is left as it was.

    python bench/lhb_centre_probe.py --halflife 2016 --clip 1 -- --workdir /work/lhb_autumn --fold autumn
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np

import scada_tcn.runtime.signals as signals
from scada_tcn.runtime.aggregators import _Slots

sys.path.insert(0, str(Path(__file__).resolve().parent))
import lhb_signals  # noqa: E402  (this folder)

BASES = ("ewma36-m2.5-own-tp-dir144", "ewma36-m2-own-tp-dir144")


class Centred:
    """An aggregator fed its input less a slow, clipped centre per (slot, column)."""

    def __init__(self, inner: Any, halflife: float, clip: float) -> None:
        self.inner, self.a, self.k = inner, 1 - 0.5 ** (1 / halflife), clip
        self._c = _Slots(inner.width, {"c": 0.0})  # the runtime aggregators' per-slot arrays

    def update(self, slots: Any, y: Any, present: Any) -> None:
        idx, x = np.asarray(slots, dtype=np.int64), np.asarray(y, dtype=np.float64)
        self._c.grow(int(idx.max()) + 1 if idx.size else 0)
        c, p = self._c._arrays["c"], np.asarray(present, dtype=bool)
        prev = c[idx]
        c[idx] = prev + np.where(p, self.a * np.clip(x - prev, -self.k, self.k), 0.0)
        self.inner.update(idx, x - prev, p)

    def get(self, slots: Any) -> np.ndarray:
        return self.inner.get(slots)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--halflife", type=float, default=2016.0, help="the centre's half-life in steps")
    ap.add_argument("--clip", type=float, default=1.0, help="the largest move of y - c a step takes in")
    ap.add_argument("rest", nargs=argparse.REMAINDER, help="-- then lhb_signals.py's arguments (--workdir, --fold)")
    a = ap.parse_args()
    rest = a.rest[1:] if a.rest[:1] == ["--"] else a.rest
    if "--workdir" not in rest[:-1]:
        ap.error("give lhb_signals.py's arguments after --, with the --workdir of a fold already run")
    make = signals.make_aggregator
    signals.make_aggregator = lambda *p, **k: Centred(make(*p, **k), a.halflife, a.clip)
    names = [f"{b}-c{a.halflife:g}k{a.clip:g}" for b in BASES]
    for name, base in zip(names, BASES):
        lhb_signals.VARIANTS[name] = lhb_signals.VARIANTS[base]
    w = Path(rest[rest.index("--workdir") + 1])
    kept, probe = w / "lhb_signals.json", w / f"lhb_centre_probe_c{a.halflife:g}k{a.clip:g}.json"
    if not kept.is_file():
        raise SystemExit(f"{kept} is missing: run bench/lhb_signals.py --workdir {w} --fold ... first (the probe "
                         "reuses its models)")  # fmt: skip
    shutil.copyfile(kept, w / "lhb_signals.json.keep")
    sys.argv = [sys.argv[0], *rest, "--variants", *names, "--engines", "window"]
    try:
        lhb_signals.main()
        results = json.loads(kept.read_text())
        for name in names:  # the centre's half-life and clip are settings the overrides do not hold
            results["variants"][name]["settings"] += 2
        probe.write_text(json.dumps(results, indent=2))
    finally:
        shutil.move(w / "lhb_signals.json.keep", kept)
    print(f"wrote {probe}; {kept} as it was")


if __name__ == "__main__":
    main()
