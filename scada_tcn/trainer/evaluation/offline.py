"""`scada-infer`: batch inference over every window of a prepared split, with the torch or the ONNX engine.

Engines share one verb and one result record: `score(X, M_miss, Flags) -> runtime.scorer.ScoreBatch`.
`--checkpoint` runs the torch reference (`trainer.model.reference`), `--bundle` the exported graphs through
`runtime.scorer.OnnxScorer`; both give the same numbers (the export's parity tolerance). Thresholds come from
the bundle's calibration, or, for a checkpoint, from the same calibration the export fits (the validation
split's fault-free windows). Alerts come from `runtime.alerts.AlertState`, the edge's state machine, fed each
turbine's windows in time order: debounce counts consecutive scored windows (`data.windowing.stride` steps apart).
Per-signal scoring runs over each turbine's series when the receptive field fits in L, each step once: the torch
engine's module (`SeriesResiduals`), or a bundle's step graph (`StepResiduals`, the edge's streaming engine, every
turbine's step in one call); both give the windows' newest outputs within the export's parity tolerance.

Writes `results.parquet` (one row per window: turbine, window end time, score, threshold and its source,
regime, top features by name with their contributions, fault probabilities, forecast error, label, predicted
and true RUL when the model has the RUL head) and
`alerts.jsonl` (one line per alert transition), and returns a summary.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd
import torch
from omegaconf import OmegaConf

from scada_tcn.runtime.alerts import AlertState
from scada_tcn.runtime.bundle import AlertingParams, FleetParams, load_bundle
from scada_tcn.runtime.calibration import Calibration, regime_of
from scada_tcn.runtime.drift import DriftReference
from scada_tcn.runtime.errors import SpecError
from scada_tcn.runtime.peers import fleet_relative
from scada_tcn.runtime.scorer import OnnxScorer, ScoreBatch
from scada_tcn.runtime.signals import SignalParams, SignalTracker, worst_first
from scada_tcn.runtime.windows import missing_now, sent_nothing
from scada_tcn.trainer.calibration.fit import calibrate, feature_reference, fit_feature_scale
from scada_tcn.trainer.config import RootCfg, to_root
from scada_tcn.trainer.config.derive import alerting_params, fleet_params
from scada_tcn.trainer.data.store import PreparedData
from scada_tcn.trainer.data.windowing import SPLITS
from scada_tcn.trainer.evaluation.progress import progress_of
from scada_tcn.trainer.evaluation.signals import (
    SignalSteps,
    StepResiduals,
    fit_signals,
    module_residuals,
    signal_steps,
    track,
)
from scada_tcn.trainer.model.reference import ReferenceModules, build_reference, checkpoint_config
from scada_tcn.trainer.model.signals import SignalModule
from scada_tcn.trainer.training.fit import load_checkpoint


class Engine(Protocol):
    def score(self, X: np.ndarray, M_miss: np.ndarray, Flags: np.ndarray) -> ScoreBatch: ...

    def clean(self, X: np.ndarray, M_miss: np.ndarray, Flags: np.ndarray) -> dict[str, np.ndarray]: ...


class TorchEngine:
    """The torch reference: the scoring module and the clean pass of a checkpoint."""

    def __init__(self, ref: ReferenceModules) -> None:
        self.ref = ref

    def clean(self, X: np.ndarray, M_miss: np.ndarray, Flags: np.ndarray) -> dict[str, np.ndarray]:
        """The clean pass alone: its outputs by name."""
        with torch.no_grad():
            out = self.ref.clean(*(torch.from_numpy(a) for a in (X, M_miss, Flags)))
        return {n: t.numpy() for n, t in zip(self.ref.clean.output_names, out)}

    def score(self, X: np.ndarray, M_miss: np.ndarray, Flags: np.ndarray) -> ScoreBatch:
        clean = self.clean(X, M_miss, Flags)
        with torch.no_grad():
            s = self.ref.scoring(*(torch.from_numpy(a) for a in (X, M_miss, Flags)))
        outs = (s,) if isinstance(s, torch.Tensor) else tuple(s)
        scoring = {n: t.numpy() for n, t in zip(self.ref.scoring.output_names, outs)}
        rul = clean["rul"][:, 0] if "rul" in clean else None
        return ScoreBatch(Y_hat=clean.get("Y_hat"), fault_prob=clean.get("fault_prob"), rul=rul, **scoring)


@dataclass
class InferSetup:
    cfg: RootCfg
    data: PreparedData
    engine: Engine
    engine_name: str
    calibration: Calibration | None  # window_mean
    calibration_source: str
    alerting: AlertingParams
    fleet: FleetParams
    class_names: list[str]
    feature_reference: DriftReference  # validation split, for drift checks
    signals: SignalParams | None = None  # per_signal: the levels and the tracker's parameters
    graph: str = "window"  # onnx per_signal: "step" (step.onnx over each turbine's series) or "window"
    log: Callable[[str], None] | None = None  # progress lines of long scoring (the CLIs: stderr)

    def engine_fields(self) -> dict[str, str]:
        """What scored, as the reports record it: the engine, and for ONNX the graph."""
        return {"engine": self.engine_name} | ({"graph": self.graph} if self.engine_name == "onnx" else {})


def setup_from_checkpoint(checkpoint: str | Path, data_dir: str | Path | None = None) -> InferSetup:
    """Torch engine; thresholds fitted on the validation split exactly as `scada-export` does."""
    ckpt = load_checkpoint(checkpoint)
    cfg = checkpoint_config(ckpt, (), data_dir)
    data = PreparedData(cfg)
    _same_features(data, ckpt["scaler"], ckpt["pipeline_spec"], f"checkpoint {checkpoint}")
    ref = build_reference(ckpt, cfg)
    names = list(cfg.data.labels.class_names) if cfg.data.labels.enabled else []
    if isinstance(ref.scoring, SignalModule):  # the scales, centres and levels the export fits
        params, _ = fit_signals(ref.scoring, data, cfg)
        src = "fitted now on the validation split"
        ref_drift = feature_reference(data, cfg)
        return InferSetup(
            cfg,
            data,
            TorchEngine(ref),
            "torch",
            None,
            src,
            alerting_params(cfg),
            fleet_params(cfg),
            names,
            ref_drift,
            params,
        )
    fit_feature_scale(ref.scoring, data, cfg)  # the same levels the export bakes into the graph
    cal = calibrate(ref.scoring, data, cfg).calibration
    return InferSetup(
        cfg,
        data,
        TorchEngine(ref),
        "torch",
        cal,
        f"fitted now: {cal.fitted_on}",
        alerting_params(cfg),
        fleet_params(cfg),
        names,
        feature_reference(data, cfg),
    )


GRAPHS = ("auto", "step", "window")


def setup_from_bundle(
    bundle_dir: str | Path, data_dir: str | Path, threads: int = 1, graph: str = "auto"
) -> InferSetup:
    """ONNX engine and the bundle's own calibration and alerting parameters. `graph` scores a per-signal bundle's
    steps: "step" through its step graph (each turbine's series stepped once, as the edge's default streaming
    engine), "window" through the window graph (L times the arithmetic), "auto" the step graph where the bundle
    has one (the edge's `compute.engine: auto`)."""
    if graph not in GRAPHS:
        raise SpecError(f"graph must be one of {list(GRAPHS)}, got {graph!r}")
    bundle = load_bundle(bundle_dir)
    if graph == "step" and bundle.stream is None:
        raise SpecError(f"bundle {bundle_dir} has no step graph (step.onnx: per-signal bundles whose receptive field "
                        "fits the window have one): score its windows with graph window")  # fmt: skip
    cfg_path = Path(data_dir) / "config.yaml"
    if not cfg_path.is_file():
        raise SpecError(f"{data_dir} holds no config.yaml: pass the processed_dir written by scada-prepare")
    saved = OmegaConf.to_container(OmegaConf.load(cfg_path))
    saved["data"]["paths"]["processed_dir"] = str(data_dir)  # the folder may have been moved or copied
    cfg = to_root(saved)
    data = PreparedData(cfg)
    _same_features(data, bundle.scaler.to_dict(), bundle.spec.to_dict(), f"bundle {bundle_dir}")
    if bundle.fleet.relative and cfg.data.windowing.min_present_fraction != bundle.fleet.min_present_fraction:
        raise SpecError(
            f"{data_dir} was prepared with windowing.min_present_fraction="
            f"{cfg.data.windowing.min_present_fraction}, the bundle's fleet-relative scores use "
            f"{bundle.fleet.min_present_fraction}: the peer sets would differ; prepare with the bundle's"
        )
    engine = OnnxScorer(bundle, intra_op_threads=threads)
    return InferSetup(
        cfg,
        data,
        engine,
        "onnx",
        bundle.calibration,
        f"bundle {bundle.bundle_id[:12]} (model {bundle.model_id[:12]})",
        bundle.alerting,
        bundle.fleet,
        list(bundle.class_names),
        bundle.feature_reference,
        bundle.signals,
        "step" if graph != "window" and bundle.stream is not None else "window",
    )


def setup_from_args(
    checkpoint: str | None, bundle: str | None, data: str | None, graph: str = "auto"
) -> tuple[InferSetup, Path]:
    """The engine the command line asks for (exactly one of checkpoint or bundle; `graph` for a bundle, see
    `setup_from_bundle`) and its run folder."""
    if (checkpoint is None) == (bundle is None):
        raise SpecError("give exactly one of --checkpoint (torch engine) or --bundle (onnxruntime engine)")
    if bundle is not None:
        if data is None:
            raise SpecError("--bundle needs --data PREPARED_DIR (the folder scada-prepare wrote)")
        return setup_from_bundle(bundle, data, graph=graph), Path(bundle).resolve().parent
    if graph != "auto":
        raise SpecError("--graph chooses between a bundle's ONNX graphs: give it with --bundle, not --checkpoint")
    assert checkpoint is not None
    return setup_from_checkpoint(checkpoint, data), Path(checkpoint).resolve().parent.parent


def _same_features(data: PreparedData, scaler: dict[str, Any], spec: dict[str, Any], what: str) -> None:
    """The prepared arrays must come from the model's own preprocessing: same spec (winsor caps included) and
    scaler. Other data prepared with them (e.g. a copy with injected faults) is fine."""
    if data.scaler != scaler or data.pipeline_spec != spec:
        raise SpecError(
            f"{what}: {data.dir} was prepared with another scaler or feature spec than the model was trained "
            "with, so its features differ. Score new raw data with `scada-runtime replay`."
        )


def _forecast_mae(Y_hat: np.ndarray, Y_true: np.ndarray, M_future: np.ndarray) -> np.ndarray:
    n = M_future.sum(axis=(1, 2))
    err = (np.abs(Y_hat - Y_true) * M_future).sum(axis=(1, 2))
    return np.where(n > 0, err / np.maximum(n, 1), np.nan)


@dataclass
class SplitArrays:
    """Arrays for evaluation: `contrib` in the row order of the results table; the clean-pass ones (forecast and
    fault outputs, with `y`, the labels of those windows) in the order of the split's index windows."""

    contrib: np.ndarray  # (N, F) feature contributions (window_mean) or deviations (per_signal)
    Y_hat: np.ndarray | None  # (W, K, F)
    Y_true: np.ndarray  # (W, K, F)
    M_future: np.ndarray  # (W, K, F)
    fault_prob: np.ndarray | None  # (W, C)
    y: np.ndarray | None = None  # (W,) class labels of the index windows


def infer_split(
    setup: InferSetup, split: str, batch_size: int = 256, collect: bool = False
) -> tuple[pd.DataFrame, float, SplitArrays | None]:
    """Score `split` in time order per turbine -> results table, rows/s, and (with `collect`) the arrays.

    Window-mean bundles: one row per window of the split's index. Per-signal bundles: one row per scored step
    (`infer_signals`), and the clean-pass arrays (forecast, fault) still over the index windows."""
    if setup.signals is not None:
        return infer_signals(setup, split, batch_size, collect)
    ds = setup.data.dataset(setup.cfg, split)
    if len(ds) == 0:
        raise SpecError(f"split {split!r} has no windows in {setup.data.dir}")
    order = np.lexsort((ds.t_end, ds.codes))
    names = setup.data.feature_reg.feature_names
    rows: list[pd.DataFrame] = []
    arrays: dict[str, list[np.ndarray]] = {"contrib": [], "Y_hat": [], "Y_true": [], "M_future": [], "fault_prob": []}
    t0 = time.perf_counter()
    progress = progress_of(setup.log, f"scored windows of {split}", len(order))
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        b = ds.__getitems__(idx.tolist())
        X, M, Fl = (b[k].numpy() for k in ("X", "M_miss", "Flags"))
        out = setup.engine.score(X, M, Fl)
        part = {
            "turbine_id": [ds.turbines[c] for c in ds.codes[idx]],
            "t_end": pd.to_datetime(ds.t_end[idx], utc=True),
            "score": out.s_now.astype(np.float64),
            "missing_now": missing_now(M[:, -1, :]),
            "regime": regime_of(Fl[:, -1, :], setup.data.flag_reg.flag_names),
            "top_features": [[names[j] for j in row] for row in out.top_idx],
            "top_contrib": [out.feat_contrib[i, row].astype(np.float64).tolist() for i, row in enumerate(out.top_idx)],
        }
        if out.Y_hat is not None:
            part["forecast_mae"] = _forecast_mae(out.Y_hat, b["Y_true"].numpy(), b["M_future"].numpy())
        if out.fault_prob is not None:
            for j, c in enumerate(setup.class_names):
                part[f"p_{c}"] = out.fault_prob[:, j].astype(np.float64)
        if ds.y is not None and ds.y.ndim == 1:
            part["y"] = ds.y[idx]
        if out.rul is not None:
            part["rul"] = np.asarray(out.rul, np.float64).reshape(-1)
            if ds.rul is not None:
                part["rul_true"] = np.where(ds.has_rul[idx] > 0.5, ds.rul[idx], np.nan).astype(np.float64)
        rows.append(pd.DataFrame(part))
        progress(start + len(idx))
        if collect:
            for k, v in (
                ("contrib", out.feat_contrib),
                ("Y_hat", out.Y_hat),
                ("Y_true", b["Y_true"].numpy()),
                ("M_future", b["M_future"].numpy()),
                ("fault_prob", out.fault_prob),
            ):
                if v is not None:
                    arrays[k].append(v)
    rate = len(order) / (time.perf_counter() - t0)
    res = pd.concat(rows, ignore_index=True)
    if setup.fleet.relative:  # every indexed window passed min_present_fraction, so every one is a peer
        rel, peers = fleet_relative(
            res["score"].to_numpy(), ds.t_end[order], np.ones(len(res), bool), setup.fleet.min_peers
        )
        res.insert(res.columns.get_loc("score") + 1, "score_raw", res["score"])
        res["score"], res["peers"] = rel, peers
    thr = [setup.calibration.threshold_for(t, r) for t, r in zip(res["turbine_id"], res["regime"])]
    res["threshold"] = [t for t, _ in thr]
    res["threshold_source"] = [s for _, s in thr]
    if not collect:
        return res, rate, None
    cat = {k: np.concatenate(v) if v else None for k, v in arrays.items()}
    y = res["y"].to_numpy() if "y" in res else None
    return res, rate, SplitArrays(cat["contrib"], cat["Y_hat"], cat["Y_true"], cat["M_future"], cat["fault_prob"], y)


def infer_signals(
    setup: InferSetup, split: str, batch_size: int = 256, collect: bool = False
) -> tuple[pd.DataFrame, float, SplitArrays | None]:
    """Per-signal scores of every step of `split` (the validation split first warms the aggregators up for the
    test split, as a gateway fed since then would be): the edge's tracker over the engine's residuals. One row per
    scored step; `top_features` names each group's worst monitor as "group:monitor", worst group first."""
    warm = ("val",) if split == "test" else ()
    tables, rate, arrays = _signal_tables(setup, (*warm, split), batch_size, collect)
    return tables[-1], rate, arrays


def infer_val_and_test(
    setup: InferSetup, batch_size: int = 256
) -> tuple[pd.DataFrame, pd.DataFrame, float, SplitArrays]:
    """`infer_split`'s results of the validation split and of the test split (rate and arrays of the test
    split). A per-signal setup scores the two in one pass: the test split's warm-up is the validation split, whose
    steps the tracker, starting at the same first step, scores exactly as it does alone."""
    if setup.signals is None:
        val, _, _ = infer_split(setup, "val", batch_size)
        test, rate, arrays = infer_split(setup, "test", batch_size, collect=True)
    else:
        (val, test), rate, arrays = _signal_tables(setup, ("val", "test"), batch_size, True)
    assert arrays is not None
    return val, test, rate, arrays


def _signal_tables(
    setup: InferSetup, splits: tuple[str, ...], batch_size: int, collect: bool
) -> tuple[list[pd.DataFrame], float, SplitArrays | None]:
    """Per-signal results of each of `splits` (in time order) from one pass of the tracker over all of them; the
    rate and (with `collect`) the arrays of the last."""
    assert setup.signals is not None
    params = setup.signals
    t0 = time.perf_counter()

    def run(X: np.ndarray, M: np.ndarray, F: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        out = setup.engine.score(X, M, F)
        return out.resid, out.pred

    eng = setup.engine
    residuals: Any = run
    if isinstance(eng, TorchEngine):
        residuals = module_residuals(eng.ref.scoring)
    elif isinstance(eng, OnnxScorer) and setup.graph == "step":  # the edge's streaming engine: each step once
        residuals = StepResiduals(eng.bundle, eng.intra_op_threads)
    steps = signal_steps(setup.data, setup.cfg, splits, residuals, batch_size, log=setup.log)
    turbines = sorted(set(steps.turbine))
    flag_names = list(setup.data.flag_reg.flag_names)
    full = track(SignalTracker.from_params(params), steps, turbines, flag_names)
    keeps = [(steps.split == SPLITS.index(split)) & full["scored"].to_numpy() for split in splits]
    rate = int(keeps[-1].sum()) / (time.perf_counter() - t0)
    tables = [_signal_table(setup, full, steps, keep) for keep in keeps]
    if not collect:
        return tables, rate, None
    keep = keeps[-1]
    clean = _window_pass(setup, splits[-1], batch_size)
    dev = params.spec.feature_deviation(steps.resid[keep])  # (N, F)
    return tables, rate, SplitArrays(np.where(steps.present[keep], dev, 0.0), *clean)


def _signal_table(setup: InferSetup, full: pd.DataFrame, steps: SignalSteps, keep: np.ndarray) -> pd.DataFrame:
    """The results table of the tracked steps `keep` of `full` (see `infer_signals`)."""
    assert setup.signals is not None
    params = setup.signals
    res = full[keep].reset_index(drop=True)
    groups, monitors = list(params.spec.groups), params.spec.monitor_names
    ratios = res[[f"ratio_{g}" for g in groups]].to_numpy()
    ranked = worst_first(ratios, res[[f"top_{g}" for g in groups]].to_numpy())
    topn = setup.cfg.infer.topn_features
    res["t_end"] = pd.to_datetime(res["t_end"], utc=True)
    res["threshold"] = 1.0  # the score is the largest monitor ratio: each monitor is over its own level
    res["threshold_source"] = [params.levels.for_turbine(t)[1] for t in res["turbine_id"]]
    res["regime"] = "per_signal"
    res["missing_now"] = missing_now(steps.present[keep])
    res["top_features"] = [[f"{groups[j]}:{monitors[m]}" for j, m in rk[:topn]] for rk in ranked]
    res["top_contrib"] = [[float(ratios[i, j]) for j, _ in rk[:topn]] for i, rk in enumerate(ranked)]
    if setup.class_names:
        res["y"] = steps.label[keep].astype(np.int64)
    return res


def _window_pass(setup: InferSetup, split: str, batch_size: int) -> tuple:
    """The clean-pass arrays over the split's index windows: (Y_hat, Y_true, M_future, fault_prob, y)."""
    ds = setup.data.dataset(setup.cfg, split)
    order = np.lexsort((ds.t_end, ds.codes))
    parts: dict[str, list[np.ndarray]] = {"Y_hat": [], "Y_true": [], "M_future": [], "fault_prob": []}
    progress = progress_of(setup.log, f"clean pass over the windows of {split}", len(order))
    for start in range(0, len(order), batch_size):
        b = ds.__getitems__(order[start : start + batch_size].tolist())
        out = setup.engine.clean(*(b[k].numpy() for k in ("X", "M_miss", "Flags")))  # the scoring pass is not needed
        progress(min(start + batch_size, len(order)))
        for k, v in (("Y_hat", out.get("Y_hat")), ("Y_true", b["Y_true"].numpy()), ("M_future", b["M_future"].numpy()),
                     ("fault_prob", out.get("fault_prob"))):  # fmt: skip
            if v is not None:
                parts[k].append(v)
    cat = {k: np.concatenate(v) if v else None for k, v in parts.items()}
    y = ds.y[order] if ds.y is not None and ds.y.ndim == 1 else None
    return cat["Y_hat"], cat["Y_true"], cat["M_future"], cat["fault_prob"], y


def apply_alerts(res: pd.DataFrame, alerting: AlertingParams) -> list[dict[str, Any]]:
    """Run the edge's alert state machine over each turbine's windows in time order; adds `alert_on`.

    A window without a score (NaN: a fleet-relative score with too few peers), or whose newest step the turbine
    sent nothing for (`missing_now` 1: no new evidence), leaves its turbine's state as it was, as on the edge."""
    state = AlertState(alerting.T_on, alerting.T_off, alerting.N_on, alerting.N_off)
    turbines = sorted(res["turbine_id"].unique())
    slot = res["turbine_id"].map({t: i for i, t in enumerate(turbines)}).to_numpy()
    pos = res.groupby("turbine_id").cumcount().to_numpy()  # k-th window of its turbine (rows are time-sorted)
    score, thr = res["score"].to_numpy(), res["threshold"].to_numpy()
    if "missing_now" not in res:
        raise SpecError("apply_alerts: the results have no 'missing_now' column (written by an older scada-infer?): "
                        "score the split again with infer_split")  # fmt: skip
    scored = np.isfinite(score) & ~sent_nothing(res["missing_now"].to_numpy())
    by_pos = np.argsort(pos, kind="stable")
    bounds = np.searchsorted(pos[by_pos], np.arange(int(pos.max()) + 2))
    on = np.zeros(len(res), bool)
    events: list[dict[str, Any]] = []
    for k in range(len(bounds) - 1):  # one vectorised step per window position across the fleet
        at = by_pos[bounds[k] : bounds[k + 1]]
        held, rows = at[~scored[at]], at[scored[at]]
        states = state.get()
        on[held] = [bool(states[i]) if i < len(states) else False for i in slot[held]]
        tr = state.step(slot[rows], score[rows], thr[rows])
        on[rows] = tr.on
        for r, up, down in zip(rows, tr.turned_on, tr.turned_off):
            if up or down:
                events.append(
                    {
                        "turbine_id": res.at[r, "turbine_id"],
                        "ts": res.at[r, "t_end"].isoformat(),
                        "event": "on" if up else "off",
                        "score": float(res.at[r, "score"]),
                        "threshold": float(res.at[r, "threshold"]),
                        "top_features": list(res.at[r, "top_features"]),
                    }
                )
    res["alert_on"] = on
    events.sort(key=lambda e: (e["ts"], e["turbine_id"]))
    return events


def run_batch_inference(setup: InferSetup, split: str, out_dir: str | Path, batch_size: int = 256) -> dict[str, Any]:
    """Score, threshold and alert every window of `split`; write results.parquet and alerts.jsonl."""
    res, rate, _ = infer_split(setup, split, batch_size)
    events = apply_alerts(res, setup.alerting)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    res.to_parquet(out / "results.parquet", index=False)
    with (out / "alerts.jsonl").open("w") as f:
        for e in events:
            f.write(json.dumps(e) + "\n")
    summary = {
        **setup.engine_fields(),
        "split": split,
        "windows": int(len(res)),
        "windows_per_s": rate,
        "turbines": sorted(res["turbine_id"].unique().tolist()),
        "alerts_raised": sum(e["event"] == "on" for e in events),
        "calibration": setup.calibration_source,
        "results": str(out / "results.parquet"),
        "alerts": str(out / "alerts.jsonl"),
    }
    (out / "infer_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary
