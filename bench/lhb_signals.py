"""La Haute Borne: per-signal scoring against the window-mean score, over training and injection seeds.

    python bench/lhb_signals.py --workdir artifacts/lhb_signals [--train-seeds 0 1 2] [--inject-seeds 0 1 2]
        [--tune-seeds 100 101] [--epochs 3] [--steps 250] [--variants NAME ...] [--fold winter|autumn|winter-short]
        [-- overrides ...]

Procedure (the project's own functions; every choice is made on training and validation data only):
  1. scada-prepare data=la_haute_borne: train Aug 1 - Nov 15, validation Nov 15 - Dec 15, test Dec 15 - Jan 14
     (--fold winter, the default); --fold autumn: train Aug 1 - Oct 1, validation October, test November;
     --fold winter-short: winter's validation and test, trained on Sep 15 - Nov 15 (two months, as autumn).
  2. scada-inject: the five fault kinds into R80736, into its test period once per --inject-seeds, and into its
     validation period once per --tune-seeds (for choosing settings); each copy prepared with the same config.
  3. Per --train-seeds: scada-train with group masks, then scada-export twice from the same checkpoint: the
     per-signal bundle (the config's settings) and the window-mean bundle (group masks) for comparison.
  4. The per-signal graph's residuals and predictions (onnxruntime) at every step of the validation and test
     periods of the clean data, computed once; an injected copy differs only on R80736 in its injected period,
     so only those steps are scored again and replace the clean ones. Per --engines: by the window graph (the
     whole L-step window per step) and by the edge's streaming engine (step.onnx stepped through each turbine's
     rows in time order, layer state carried); every later step runs on each, and both are reported.
  5. Every VARIANT (temporal aggregation, half-life, baseline, level percentile, skipped regimes, monitored
     features, stuck checks, levels per turbine for every group or some; infer.signals overrides on top of
     REFERENCE, so that a variant means the same whatever the shipped config) fits its centres, stuck checks and
     levels on the clean validation split
     (`trainer.evaluation.signals.fit_levels`, what scada-export runs) and runs the edge's tracker and alert state
     machine over validation + test (`runtime.signals`, `runtime.alerts`).
  6. The one event scorer (`trainer.evaluation.events.score_events`): faults detected net of the uninjected copy
     (an alert onset from 48 h before the fault to its end while the clean copy is not alarming), per class;
     false alerts per turbine-month on the untouched turbines (test period) and on R80736's uninjected copy;
     and the alerts the injected faults raise on the untouched turbines ("peer alerts": their onsets in the
     injected copy net of the clean copy; a fleet baseline moves with a faulty peer).
  7. The choice, on validation data only: levels fitted on one half of the validation month, false alerts
     counted on the other half (both ways, all turbines, clean data), plus the peer alerts per turbine-month of the
     validation injections (--tune-seeds), estimate each variant's false-alert rate; among the
     variants at or under 1 per turbine-month there, the one detecting most classes on the validation
     injections (--tune-seeds) wins (ties: fewer estimated false alerts); when none is under the budget, the one
     with the fewest estimated false alerts wins (ties: more classes). Still tied: the one with fewer overrides (a
     setting that validation cannot tell from its absence is left out). Every variant's test figures are
     printed, the chosen one marked.

Writes <workdir>/lhb_signals.json with every figure (per seed, per injection); the variants of an earlier run in
the same workdir with the same fold, seeds and overrides stay in it (a variant run again is replaced), so one
table can be built over several runs. `bench/lhb_folds.py` puts the folds' tables side by side.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "config.yaml"
TURBINE = "R80736"
FOLDS = {  # --fold: time splits, each forward in time (the data spans 2017-08-09 to 2018-01-13)
    "winter": {  # the default, and every figure before the twenty-eighth session
        "train_range": ["2017-08-01T00:00:00+00:00", "2017-11-15T00:00:00+00:00"],
        "val_range": ["2017-11-15T00:00:00+00:00", "2017-12-15T00:00:00+00:00"],
        "test_range": ["2017-12-15T00:00:00+00:00", "2018-01-14T00:00:00+00:00"],
    },
    "autumn": {  # another season with less history: two months of training, October to choose, November to test
        "train_range": ["2017-08-01T00:00:00+00:00", "2017-10-01T00:00:00+00:00"],
        "val_range": ["2017-10-01T00:00:00+00:00", "2017-11-01T00:00:00+00:00"],
        "test_range": ["2017-11-01T00:00:00+00:00", "2017-12-01T00:00:00+00:00"],
    },
    "winter-short": {  # winter's months to choose and test, trained on two months as autumn: history or season?
        "train_range": ["2017-09-15T00:00:00+00:00", "2017-11-15T00:00:00+00:00"],
        "val_range": ["2017-11-15T00:00:00+00:00", "2017-12-15T00:00:00+00:00"],
        "test_range": ["2017-12-15T00:00:00+00:00", "2018-01-14T00:00:00+00:00"],
    },
}
# every variant is these infer.signals settings plus its own overrides, whatever the shipped config says
REFERENCE = [
    "per_turbine=false",
    "min_steps=2000",
    "turbine_groups=[]",
    "level_margin=2.0",
    "halflife_steps=36",
    "group_halflife={}",
]  # group_halflife is set whole, not merged into the shipped one (`_variant_config`)
_OWN_T = "nacelle_above_ambient,gearbox,gen_bearing_above_ambient"  # component temperatures above ambient
_OWN_TP = f"power,{_OWN_T}"
# chosen on validation in the third session; the twenty-fourth chose it with a half-life of its own for direction
_CHOSEN = ["halflife_steps=36", "level_margin=2.5", "per_turbine=true", "min_steps=1000", f"turbine_groups=[{_OWN_TP}]"]
VARIANTS: dict[str, list[str]] = {  # name -> infer.signals overrides on top of REFERENCE
    "ewma72": ["halflife_steps=72"],
    "ewma72-m1.5": ["halflife_steps=72", "level_margin=1.5"],
    "ewma72-m2": ["halflife_steps=72", "level_margin=2.0"],
    "ewma36-m2": ["halflife_steps=36", "level_margin=2.0"],
    "ewma144-m1.5": ["halflife_steps=144", "level_margin=1.5"],
    "ewma144-m2": ["halflife_steps=144", "level_margin=2.0"],
    "ewma72-m2-p99.9": ["halflife_steps=72", "level_margin=2.0", "percentile=99.9"],
    "ewma72-m2-noskip": ["halflife_steps=72", "level_margin=2.0", "skip_flags=[]"],
    "ewma72-m2-own": ["halflife_steps=72", "level_margin=2.0", "baseline=none"],
    "ewma72-m2-derived": ["halflife_steps=72", "level_margin=2.0", "monitor_derived=true"],
    "ewma72-m2-nowind": ["halflife_steps=72", "level_margin=2.0", "unmonitored=[wind_speed]"],
    "ewma72-m2-nostuck": ["halflife_steps=72", "level_margin=2.0"],  # the stuck checks' levels out of reach
    "cusum1-m2": ["aggregator=cusum", "halflife_steps=null", "cusum_k=1.0", "level_margin=2.0"],
    "ewma36-m1.5": ["halflife_steps=36", "level_margin=1.5"],
    "ewma36-m1.75": ["halflife_steps=36", "level_margin=1.75"],
    "ewma72-m1.75": ["halflife_steps=72", "level_margin=1.75"],
    "ewma144-m1.75": ["halflife_steps=144", "level_margin=1.75"],
    # levels per turbine (a month of validation holds ~4,300 steps a turbine)
    "ewma36-m1.5-turbine": ["halflife_steps=36", "level_margin=1.5", "per_turbine=true", "min_steps=1000"],
    "ewma36-m2-turbine": ["halflife_steps=36", "level_margin=2.0", "per_turbine=true", "min_steps=1000"],
    "ewma36-m2.5-turbine": ["halflife_steps=36", "level_margin=2.5", "per_turbine=true", "min_steps=1000"],
    "ewma36-m3-turbine": ["halflife_steps=36", "level_margin=3.0", "per_turbine=true", "min_steps=1000"],
    "ewma72-m2.5-turbine": ["halflife_steps=72", "level_margin=2.5", "per_turbine=true", "min_steps=1000"],
    # levels per turbine for the groups whose normal level is a property of the machine (component temperatures
    # above ambient, the power curve), pooled for the others (direction, speeds, pitch, wind: fleet-comparable)
    "ewma36-m2-own-tp": [
        "halflife_steps=36",
        "level_margin=2.0",
        "per_turbine=true",
        "min_steps=1000",
        f"turbine_groups=[{_OWN_TP}]",
    ],
    "ewma36-m2.5-own-tp": _CHOSEN,
    # the chosen variant with another baseline or more peers: La Haute Borne's table has three turbines, so each
    # one's two peers' median is their mean, which a faulty peer moves by half its deviation
    "ewma36-m2.5-own-tp-peers2": [*_CHOSEN, "min_peers=2"],
    "ewma36-m2.5-own-tp-all": [*_CHOSEN, "baseline=fleet_all", "min_peers=2"],
    "ewma36-m2.5-own-tp-all1": [*_CHOSEN, "baseline=fleet_all"],
    "ewma36-m2.5-own-tp-none": [*_CHOSEN, "baseline=none"],
    "ewma36-m2.5-own-tp-fown": [*_CHOSEN, "baseline=fleet_and_own"],
    # the chosen variant with levels measured from each turbine's median aggregate: c + margin x (p - c)
    "ewma36-m2.5-own-tp-centred": [*_CHOSEN, "level_centred=true"],
    "ewma36-m2-own-tp-centred": [*_CHOSEN, "level_margin=2.0", "level_centred=true"],
    "ewma36-m3-own-tp-centred": [*_CHOSEN, "level_margin=3.0", "level_centred=true"],
    "ewma36-m3-own-tp": [*_CHOSEN, "level_margin=3.0"],  # the margin alone, against the centred x3
    # the chosen variant with a longer memory, for every group ...
    "ewma72-m2.5-own-tp": [*_CHOSEN, "halflife_steps=72"],
    "ewma144-m2.5-own-tp": [*_CHOSEN, "halflife_steps=144"],
    "ewma144-m2-own-tp": [*_CHOSEN, "halflife_steps=144", "level_margin=2.0"],
    # ... or for some groups (group_halflife): direction (yaw) and the gearbox remembered longer, power shorter
    "ewma36-m2.5-own-tp-dir144-gear72": [*_CHOSEN, "group_halflife={direction: 144, gearbox: 72}"],
    "ewma36-m2.5-own-tp-dir144": [*_CHOSEN, "group_halflife={direction: 144}"],  # shipped: the direction's alone
    "ewma36-m2-own-tp-dir144": [*_CHOSEN, "level_margin=2.0", "group_halflife={direction: 144}"],
    "ewma72-m2.5-own-tp-power36-dir144": [*_CHOSEN, "halflife_steps=72", "group_halflife={power: 36, direction: 144}"],
    "ewma144-m2.5-own-tp-power36": [*_CHOSEN, "halflife_steps=144", "group_halflife={power: 36}"],
    "ewma72-m2-own-tp": [
        "halflife_steps=72",
        "level_margin=2.0",
        "per_turbine=true",
        "min_steps=1000",
        f"turbine_groups=[{_OWN_TP}]",
    ],
    "ewma36-m2-own-t": [
        "halflife_steps=36",
        "level_margin=2.0",
        "per_turbine=true",
        "min_steps=1000",
        f"turbine_groups=[{_OWN_T}]",
    ],
}
MONTH_NS = 30 * 86400 * 10**9


def _split_overrides(splits: dict[str, list[str]]) -> list[str]:
    return [f"data.splits.{k}=[{a},{b}]" for k, (a, b) in splits.items()]


def _claim_fold(workdir: Path, splits: dict[str, list[str]]) -> None:
    """Record the fold's splits in `workdir` (its prepared data, checkpoints and residuals are reused by later runs);
    refuse a workdir that holds another fold's. A workdir prepared before folds existed holds the winter fold."""
    stamp = workdir / "fold.json"
    held = json.loads(stamp.read_text()) if stamp.is_file() else None
    if held is None and (workdir / "processed").exists():
        held = FOLDS["winter"]
    if held is not None and held != splits:
        name = next((k for k, v in FOLDS.items() if v == held), str(held))
        raise SystemExit(f"{workdir} holds the {name} fold's data: give this fold a --workdir of its own")
    stamp.write_text(json.dumps(splits, indent=2))


def _ns(x: str) -> int:
    return pd.Timestamp(x).value


def _alerts(res: pd.DataFrame, alerting: Any) -> pd.DataFrame:
    from scada_tcn.trainer.evaluation.offline import apply_alerts

    res = res.sort_values(["turbine_id", "t_end"]).reset_index(drop=True)
    res["t_end"] = pd.to_datetime(res["t_end"], utc=True)
    if "threshold" not in res:  # per-signal: the score is the largest monitor ratio, alerting at 1
        res["threshold"] = 1.0
    if "top_features" not in res:
        res["top_features"] = [()] * len(res)
    apply_alerts(res, alerting)
    return res


def _part(df: pd.DataFrame, lo: int, hi: int) -> pd.DataFrame:
    t = df["t_end"].astype("int64")
    return df[(t >= lo) & (t < hi) & df["score"].notna()]


def _false_rate(df: pd.DataFrame, dt_ns: int, lo: int, hi: int) -> float:
    from scada_tcn.trainer.evaluation.events import score_events, timelines_from_table

    return score_events(timelines_from_table(_part(df, lo, hi)), [], 0, dt_ns)["false_alerts_per_turbine_month"]


def _judge(clean: pd.DataFrame, injected: pd.DataFrame, labels: Path, dt_ns: int, lo: int, hi: int) -> dict[str, Any]:
    """Detections net of the clean copy on TURBINE, and false alerts on the untouched turbines, within [lo, hi)."""
    from lhb_injection import peer_alerts  # this folder is on sys.path when the script runs

    from scada_tcn.trainer.evaluation.edge_records import read_fault_labels
    from scada_tcn.trainer.evaluation.events import score_events, timelines_from_table

    c, i = _part(clean, lo, hi), _part(injected, lo, hi)
    faults = read_fault_labels(labels)
    det = score_events(timelines_from_table(i[i.turbine_id == TURBINE]), faults, 48 * 3600 * 10**9, dt_ns,
                       clean=timelines_from_table(c))  # fmt: skip
    found = [e for e in det["events"] if e["detected"]]
    # the injected faults' alerts on the other turbines (their injected copy net of the clean one): a fleet baseline
    # moves with a faulty peer
    leak = peer_alerts(c, i, TURBINE, pd.Timedelta(dt_ns, "ns"))
    return {
        "detected": det["n_detected"], "events": det["n_events"], "classes": sorted({e["fault"] for e in found}),
        "lead_h": [e["lead_ns"] / 3.6e12 for e in found], "false_on_injected": det["n_false_alerts"],
        "untouched_false_per_month": _false_rate(c[c.turbine_id != TURBINE], dt_ns, lo, hi),
        "peer_alerts": leak["n_onsets"], "peer_alerts_per_month": leak["false_alerts_per_turbine_month"],
        "uninjected_false_per_month": _false_rate(c[c.turbine_id == TURBINE], dt_ns, lo, hi),
    }  # fmt: skip


def _subset(steps: Any, keep: np.ndarray) -> Any:
    from scada_tcn.trainer.evaluation.signals import SignalSteps

    return SignalSteps(**{k: v[keep] for k, v in steps.__dict__.items()})


def _merge(base: Any, part: Any, lo: int, hi: int) -> Any:
    """`base` with TURBINE's steps in [lo, hi) replaced by `part`'s."""
    from scada_tcn.trainer.evaluation.signals import SignalSteps

    drop = (base.turbine == TURBINE) & (base.t_end >= lo) & (base.t_end < hi)
    take = (part.t_end >= lo) & (part.t_end < hi)
    cat = {k: np.concatenate([v[~drop], getattr(part, k)[take]]) for k, v in base.__dict__.items()}
    order = np.lexsort((cat["turbine"].astype(str), cat["t_end"]))
    return SignalSteps(**{k: v[order] for k, v in cat.items()})


def _steps(cache: Path, compute: Any) -> Any:
    from scada_tcn.trainer.evaluation.signals import SignalSteps

    if cache.is_file():
        z = np.load(cache, allow_pickle=True)
        return SignalSteps(**{k: z[k] for k in z.files})
    steps = compute()
    np.savez(cache, **steps.__dict__)
    return steps


def _stream_steps(base: Any, data_dir: Path, bundle_dir: Path) -> Any:
    """`base` (steps scored by the window graph) with the residuals and predictions of the edge's streaming engine
    instead: each turbine's prepared rows stepped through step.onnx in time order, layer state carried from step
    to step (`StepResiduals`, as `scada-infer --bundle` scores)."""
    from scada_tcn.runtime.bundle import load_bundle
    from scada_tcn.trainer.evaluation.signals import SignalSteps, StepResiduals

    resid, pred = base.resid.copy(), base.pred.copy()
    series, where = [], []
    for tid in sorted(set(base.turbine)):
        rows = np.flatnonzero((base.turbine == tid) & base.scored)
        tdir = Path(data_dir) / "turbines" / tid
        ts = np.load(tdir / "timestamps.npy")
        idx = np.searchsorted(ts, base.t_end[rows])
        if not (ts[idx] == base.t_end[rows]).all():
            raise ValueError(f"{tid}: the steps are not those of {tdir}")
        series.append(tuple(np.load(tdir / f"{n}.npy", mmap_mode="r") for n in ("X", "M_miss", "Flags")) + (idx,))
        where.append(rows)
    for rows, (r, p) in zip(where, StepResiduals(load_bundle(bundle_dir)).many(series)):
        resid[rows], pred[rows] = r, p
    return SignalSteps(**{**base.__dict__, "resid": resid, "pred": pred})


def _group_halflife(override: str) -> dict[str, Any] | None:
    """The mapping of a `group_halflife={...}` override, None for any other override."""
    return yaml.safe_load(override.split("=", 1)[1]) if override.startswith("group_halflife=") else None


def _variant_config(base: list[str], overrides: list[str]) -> Any:
    """The config of a variant: REFERENCE and its overrides as infer.signals keys on top of `base`. The last
    group_halflife given is the whole mapping (a dotted override of a mapping would be merged into the shipped
    config's, keeping groups the variant does not name)."""
    from scada_tcn.trainer.config import load_config

    given = [*REFERENCE, *overrides]
    groups = [g for g in map(_group_halflife, given) if g is not None]
    rest = [f"infer.signals.{o}" for o in given if _group_halflife(o) is None]
    cfg = load_config(CONFIG, [*base, *rest])
    cfg.infer.signals.group_halflife = {str(g): float(h) for g, h in (groups[-1] if groups else {}).items()}
    return cfg


def _run_variant(name: str, overrides: list[str], base: list[str], data: Any, steps: dict[str, Any],
                 copies: dict[str, Any], alerting: Any, dt_ns: int, seed: int,
                 splits: dict[str, list[str]]) -> dict[str, Any]:  # fmt: skip
    """Fit the variant on clean validation, run it over every copy, judge; and its validation estimate."""
    from scada_tcn.runtime.signals import SignalLevels, SignalParams, SignalTracker
    from scada_tcn.runtime.windows import missing_now
    from scada_tcn.trainer.evaluation.signals import fit_levels, track

    cfg = _variant_config(base, overrides)
    flags = list(data.flag_reg.flag_names)
    (v_lo, v_hi), (t_lo, t_hi) = (tuple(_ns(x) for x in splits[k]) for k in ("val_range", "test_range"))
    clean = steps["clean"]

    def fit(lo: int, hi: int) -> SignalParams:
        params, _ = fit_levels(_subset(clean, (clean.t_end >= lo) & (clean.t_end < hi)), data, cfg)
        if name.endswith("nostuck"):
            n = len(params.spec.monitor_features)
            pooled = params.levels.pooled[:n] + (1e12,) * len(params.spec.stuck)
            params = SignalParams(**{**params.__dict__, "levels": SignalLevels(pooled)})
        return params

    def alerts(params: SignalParams, st: Any) -> pd.DataFrame:
        """The tracker's records with the edge's alerts: a step that is no new evidence (`scored` False: skipped,
        or nothing monitored present) holds the alert (`Engine._release_signals`), though it keeps its frozen
        score in the timeline."""
        res = track(SignalTracker.from_params(params), st, sorted(set(st.turbine)), flags)
        held = res["score"].where(res["scored"])  # NaN: `apply_alerts` leaves the state as it was
        res = res.assign(missing_now=missing_now(st.present), frozen=res["score"], score=held)
        res = _alerts(res, alerting)
        return res.assign(score=res.pop("frozen"))

    params = fit(v_lo, v_hi)
    res = {n: alerts(params, st) for n, st in steps.items()}
    out: dict[str, Any] = {"test": [], "tune": []}
    for cname, (_, labels) in copies.items():
        kind = "test" if cname.startswith("test") else "tune" if cname.startswith("tune") else None
        if kind is not None:
            lo, hi = (t_lo, t_hi) if kind == "test" else (v_lo, v_hi)
            out[kind].append({"seed": seed, "inject": cname, **_judge(res["clean"], res[cname], labels, dt_ns, lo, hi)})
    mid = v_lo + (v_hi - v_lo) // 2  # validation-only estimate of the false-alert rate: two folds of a half month
    val = _subset(clean, clean.t_end < v_hi)
    folds = [_false_rate(alerts(fit(a, b), val), dt_ns, c, d) for a, b, c, d in ((v_lo, mid, mid, v_hi),
                                                                                 (mid, v_hi, v_lo, mid))]  # fmt: skip
    out["val_false_per_month"] = float(np.mean(folds))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", type=Path, default=ROOT / "artifacts" / "lhb_signals")
    ap.add_argument("--train-seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--inject-seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--tune-seeds", type=int, nargs="+", default=[100, 101])
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--steps", type=int, default=250)
    ap.add_argument(
        "--variants",
        nargs="+",
        choices=list(VARIANTS),
        default=list(VARIANTS),
        help="run only these variants (default: all)",
    )
    ap.add_argument(
        "--engines",
        nargs="+",
        choices=["window", "stream"],
        default=["window", "stream"],
        help="the edge engines whose residuals are judged (default both: the same data, the same variants)",
    )
    ap.add_argument(
        "--fold",
        choices=list(FOLDS),
        default="winter",
        help="the time splits (winter: the default; autumn: train Aug-Sep, choose on October, test November; "
        "winter-short: winter trained on two months, mid-Sep to mid-Nov); use a workdir per fold",
    )
    ap.add_argument("overrides", nargs="*", help="config overrides for every run")
    a = ap.parse_args()
    splits = FOLDS[a.fold]
    import torch

    from scada_tcn.export.bundle_writer import export_bundle
    from scada_tcn.runtime.bundle import load_bundle
    from scada_tcn.runtime.scorer import OnnxScorer
    from scada_tcn.trainer.config import load_config
    from scada_tcn.trainer.data.prepare import prepare
    from scada_tcn.trainer.data.store import PreparedData
    from scada_tcn.trainer.evaluation.offline import infer_split, setup_from_bundle
    from scada_tcn.trainer.evaluation.signals import signal_steps
    from scada_tcn.trainer.sources.inject import inject_table
    from scada_tcn.trainer.training.fit import fit

    torch.set_num_threads(1)
    w = a.workdir
    w.mkdir(parents=True, exist_ok=True)
    _claim_fold(w, splits)
    base = ["data=la_haute_borne", *_split_overrides(splits), "train.group_mask_prob=0.5", "infer.score=per_signal",
            f"train.epochs={a.epochs}", f"train.max_steps_per_epoch={a.steps}", "train.early_stopping_patience=100",
            *a.overrides]  # fmt: skip
    clean_cfg = [*base, f"data.paths.processed_dir={w / 'processed'}"]
    cfg0 = load_config(CONFIG, [*clean_cfg, f"output_dir={w / 'run0'}"])
    copies: dict[str, tuple[Path, Path | None]] = {"clean": (w / "processed", None)}
    if not (w / "processed" / "window_index.parquet").is_file():
        prepare(cfg0)
    for kind, seeds, rng in (("test", a.inject_seeds, splits["test_range"]), ("tune", a.tune_seeds,
                                                                              splits["val_range"])):  # fmt: skip
        for s in seeds:
            name = f"{kind}{s}"
            inj = inject_table(cfg0.data, TURBINE, w / f"raw_{name}", seed=s, start=rng[0], end=rng[1])
            out = w / f"processed_{name}"
            if not (out / "window_index.parquet").is_file():
                prepare(load_config(CONFIG, [*base, f"data.paths.raw_dir={inj['scada']}",
                                             f"data.paths.processed_dir={out}"]))  # fmt: skip
            copies[name] = (out, inj["labels"])
    dt_ns = int(cfg0.data.sampling.dt_minutes * 60 * 10**9)
    data = PreparedData(cfg0)
    same = {"fold": a.fold, "splits": splits, "seeds": a.train_seeds, "inject_seeds": a.inject_seeds,
            "tune_seeds": a.tune_seeds, "overrides": a.overrides}  # fmt: skip
    earlier = _earlier_variants(w / "lhb_signals.json", same, a.variants, a.engines)
    results: dict[str, Any] = {**same, **earlier, "window_mean": {"test": []},  # earlier runs' other variants first
                               "stream_resid_max_abs_diff": [], "stream_resid_beyond_tolerance": []}  # fmt: skip
    for seed in a.train_seeds:
        run = w / f"run{seed}"
        cfg = load_config(CONFIG, [*clean_cfg, f"output_dir={run}", f"seed={seed}"])
        best = run / "checkpoints" / "best.pt"
        t0 = time.perf_counter()
        if not best.is_file():
            fit(cfg, log=lambda m: None)
        print(f"[seed {seed}] trained in {time.perf_counter() - t0:.0f} s", flush=True)
        sig = export_bundle(best, out_dir=run / "bundle_signals", overrides=["infer.score=per_signal"])
        win = export_bundle(best, out_dir=run / "bundle_window", overrides=["infer.score=window_mean",
                                                                             "infer.score_masks=group"])  # fmt: skip
        scorer = OnnxScorer(load_bundle(sig.path))

        def resid(X: np.ndarray, M: np.ndarray, F: np.ndarray, s: OnnxScorer = scorer) -> tuple:
            out = s.score(X, M, F)
            return out.resid, out.pred

        t0 = time.perf_counter()
        parts: dict[str, Any] = {}  # per injected copy: TURBINE's steps in its injected split
        steps = {"clean": _steps(run / "steps_clean.npz",
                                 lambda c=cfg: signal_steps(data, c, ("val", "test"), resid))}  # fmt: skip
        for name, (pdir, _) in copies.items():
            if name == "clean":
                continue
            split = "test" if name.startswith("test") else "val"
            rng = splits["test_range" if split == "test" else "val_range"]
            cdata = PreparedData(load_config(CONFIG, [*base, f"data.paths.processed_dir={pdir}"]))
            part = _steps(
                run / f"steps_{name}.npz",
                lambda c=cdata, sp=split, k=cfg: signal_steps(c, k, (sp,), resid, turbines=[TURBINE]),
            )
            parts[name] = part
            steps[name] = _merge(steps["clean"], part, _ns(rng[0]), _ns(rng[1]))
        print(f"[seed {seed}] residuals of {len(steps)} copies in {time.perf_counter() - t0:.0f} s", flush=True)
        by_engine = {"window": steps} if "window" in a.engines else {}
        if "stream" in a.engines:
            t0 = time.perf_counter()
            sclean = _steps(run / "stream_clean.npz",
                            lambda st=steps["clean"], b=sig.path: _stream_steps(st, data.dir, b))  # fmt: skip
            streamed = {"clean": sclean}
            for name, (pdir, _) in copies.items():
                if name != "clean":
                    rng = splits["test_range" if name.startswith("test") else "val_range"]
                    lo, hi = _ns(rng[0]), _ns(rng[1])
                    part = _steps(run / f"stream_{name}.npz",
                                  lambda st=parts[name], d=pdir, b=sig.path: _stream_steps(st, d, b))  # fmt: skip
                    streamed[name] = _merge(sclean, part, lo, hi)
            gaps = {k: np.abs(streamed[k].resid - steps[k].resid) for k in steps}
            diff = max(float(g.max()) for g in gaps.values())
            beyond = sum(int((g > 1e-5 + 1e-4 * np.abs(steps[k].resid)).sum()) for k, g in gaps.items())
            results["stream_resid_max_abs_diff"].append(diff)
            results["stream_resid_beyond_tolerance"].append(beyond)
            by_engine["stream"] = streamed
            print(f"[seed {seed}] streamed {len(streamed)} copies through step.onnx in "
                  f"{time.perf_counter() - t0:.0f} s; max |resid stream - window| {diff:.2e}, {beyond} values beyond "
                  "the export's parity tolerance (1e-5 + 1e-4 |window|)", flush=True)  # fmt: skip
        for engine, st in by_engine.items():
            for vname in a.variants:
                vo = VARIANTS[vname]
                r = _run_variant(vname, vo, clean_cfg, data, st, copies, sig.alerting, dt_ns, seed, splits)
                into = results["variants"] if engine == "window" else results["stream"]
                entry = into.setdefault(vname, {"test": [], "tune": [], "val_false_per_month": [],
                                                "settings": _settings(vo)})  # fmt: skip
                entry["test"] += r["test"]
                entry["tune"] += r["tune"]
                entry["val_false_per_month"].append(r["val_false_per_month"])
        wres = {}
        for name, (pdir, _) in copies.items():
            if name.startswith("tune"):
                continue
            setup = setup_from_bundle(win.path, pdir)
            wres[name] = _alerts(infer_split(setup, "test")[0], setup.alerting)
        t_lo, t_hi = (_ns(x) for x in splits["test_range"])
        for name, (_, labels) in copies.items():
            if name.startswith("test"):
                results["window_mean"]["test"].append(
                    {"seed": seed, "inject": name, **_judge(wres["clean"], wres[name], labels, dt_ns, t_lo, t_hi)}
                )
        (w / "lhb_signals.json").write_text(json.dumps(results, indent=2, default=float))
        _report(results)


def _earlier_variants(path: Path, same: dict[str, Any], rerun: list[str], engines: list[str]
                      ) -> dict[str, dict[str, Any]]:  # fmt: skip
    """Per engine (results key), the variants of an earlier run in this workdir (the same cached models) that this
    run does not run again on that engine, when it had the same fold, seeds and overrides; they stay in
    lhb_signals.json and the table."""
    old = json.loads(path.read_text()) if path.is_file() else {}
    if any(old.get(k) != v for k, v in same.items()):
        return {"variants": {}, "stream": {}}
    again = {key: set(rerun) if engine in engines else set() for key, engine in (("variants", "window"),
                                                                                 ("stream", "stream"))}  # fmt: skip
    return {key: {k: v for k, v in old.get(key, {}).items() if k not in again[key]} for key in again}


def _summary(rows: list[dict[str, Any]]) -> dict[str, float]:
    if not rows:
        return {}
    leads = [x for r in rows for x in r["lead_h"]]
    return {
        "classes": float(np.median([len(r["classes"]) for r in rows])),
        "detected": float(np.median([r["detected"] for r in rows])),
        "untouched": float(np.median([r["untouched_false_per_month"] for r in rows])),
        "uninjected": float(np.median([r["uninjected_false_per_month"] for r in rows])),
        "peers": float(np.median([r["peer_alerts"] for r in rows])),
        "lead": float(np.median(leads)) if leads else float("nan"),
    }


def _estimate(variant: dict[str, Any]) -> float:
    """A variant's false alerts per turbine-month estimated on validation data: the clean folds' rate plus the
    median rate of the alerts the validation injections raised on the untouched turbines (step 7)."""
    peers = [r["peer_alerts_per_month"] for r in variant["tune"]]
    return float(np.median(variant["val_false_per_month"])) + (float(np.median(peers)) if peers else 0.0)


def _settings(overrides: list[str]) -> int:
    """How many settings a variant's overrides make: one per key, one per group of a group_halflife mapping."""
    return sum(1 if (g := _group_halflife(o)) is None else len(g) for o in overrides)


def settings_of(name: str, v: dict[str, Any]) -> int:
    """A results entry's settings (`_settings` of its overrides, written with its figures; a probe adds its own);
    an entry written before they were recorded counts its VARIANTS overrides."""
    if "settings" in v:
        return int(v["settings"])
    if name not in VARIANTS:
        raise SystemExit(f"variant {name!r} records no settings and is not in VARIANTS: the choice cannot count them")
    return _settings(VARIANTS[name])


def choose(variants: dict[str, Any]) -> str | None:
    """The variant chosen on validation data only (see step 7 of the module docstring)."""
    est = {k: _estimate(v) for k, v in variants.items()}
    tune = {k: _summary(v["tune"]).get("classes", 0.0) for k, v in variants.items()}
    return pick(est, tune, {k: settings_of(k, v) for k, v in variants.items()})


def pick(est: dict[str, float], tune: dict[str, float], knobs: dict[str, int]) -> str | None:
    """The rule of step 7 over validation figures per variant: the estimated false alerts per turbine-month, the
    classes detected in the validation injections, and last the number of settings (`settings_of`)."""
    ok = [k for k in est if est[k] <= 1.0]
    if not ok:  # nothing meets the false-alert budget on validation: the quietest, then the most classes
        return min(est, key=lambda k: (est[k], -tune[k], knobs[k])) if est else None
    return max(ok, key=lambda k: (tune[k], -est[k], -knobs[k]))


def _report(results: dict[str, Any]) -> None:
    chosen = choose(results["variants"])
    print(f"\n{'variant':<28} {'classes':>7} {'detected':>8} {'untouched f/tm':>14} {'uninjected':>10} {'lead h':>7}"
          f" {'peer alerts':>11} | {'val est':>8} {'tune cls':>8}   (medians over seeds x injections)")  # fmt: skip
    print("val est: false alerts per turbine-month on clean validation folds + the validation injections' peer "
          "alerts per turbine-month (the choice's estimate, step 7)")  # fmt: skip

    def row(label: str, v: dict[str, Any], mark: str = "") -> None:
        t, tune = _summary(v["test"]), _summary(v["tune"])
        print(f"{label:<28} {t['classes']:>7.1f} {t['detected']:>8.1f} {t['untouched']:>14.2f} "
              f"{t['uninjected']:>10.2f} {t['lead']:>7.1f} {t['peers']:>11.1f} | "
              f"{_estimate(v):>8.2f} "
              f"{tune.get('classes', float('nan')):>8.1f}{mark}")  # fmt: skip

    for k, v in results["variants"].items():
        row(k, v, "  <- chosen on validation" if k == chosen else "")
    for k, v in results.get("stream", {}).items():  # the same variants on the streaming engine's residuals
        row(k + " [stream]", v)
    if results.get("stream_resid_max_abs_diff"):
        print(
            f"max |resid stream - window| per seed: {results['stream_resid_max_abs_diff']}; beyond the export's "
            f"parity tolerance: {results.get('stream_resid_beyond_tolerance')}"
        )
    t = _summary(results["window_mean"]["test"])
    if t:
        print(f"{'window-mean':<28} {t['classes']:>7.1f} {t['detected']:>8.1f} {t['untouched']:>14.2f} "
              f"{t['uninjected']:>10.2f} {t['lead']:>7.1f} {t['peers']:>11.1f}")  # fmt: skip


if __name__ == "__main__":
    main()
