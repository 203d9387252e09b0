"""`export_bundle`: a scada-train checkpoint -> a verified bundle directory (the function behind scada-export).

Steps: load the checkpoint (weights only) and its saved config, apply `infer.*` overrides, open the prepared data
the model was trained on (its fingerprint must match the checkpoint's), rebuild and export both graphs,
calibrate on the validation split, check torch/onnxruntime parity (unless `verify=False`), then hand
everything to `runtime.bundle.dump_bundle`, which validates and writes. A failed parity check writes nothing.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch

from scada_tcn.export.onnx_export import IR_VERSION, OPSET, ExportError, export_graphs
from scada_tcn.export.tolerances import DEFAULT_ATOL, DEFAULT_EXTREME, DEFAULT_RTOL
from scada_tcn.export.verify import verify_graphs
from scada_tcn.runtime.bundle import (
    Bundle,
    BundleContents,
    Dims,
    Heads,
    ScoreReference,
    ScoringParams,
    StreamParams,
    TableCsv,
    TableIdentifiers,
    Versions,
    dump_bundle,
)
from scada_tcn.runtime.registry import FeatureRegistry, FlagRegistry
from scada_tcn.runtime.scaling import RobustScaler
from scada_tcn.runtime.spec import PipelineSpec
from scada_tcn.runtime.vocab import ScoreKind, ScoreMasks
from scada_tcn.trainer.calibration.fit import (
    CALIBRATION_SPLIT,
    QUANTILE_LEVELS,
    calibrate,
    feature_reference,
    fit_feature_scale,
)
from scada_tcn.trainer.config import RootCfg
from scada_tcn.trainer.config.derive import alerting_params, fleet_params
from scada_tcn.trainer.config.groups import feature_groups
from scada_tcn.trainer.data.store import PreparedData
from scada_tcn.trainer.data.windowing import SPLITS, step_splits
from scada_tcn.trainer.evaluation.signals import fit_signals
from scada_tcn.trainer.model.reference import build_reference, checkpoint_config
from scada_tcn.trainer.model.signals import SignalModule
from scada_tcn.trainer.training.fit import load_checkpoint

__all__ = ["export_bundle", "default_out_dir"]


def default_out_dir(checkpoint: str | Path, cfg: RootCfg) -> Path:
    """<run output dir>/bundle: the folder above checkpoints/ when the checkpoint sits there, else cfg.output_dir."""
    p = Path(checkpoint).resolve()
    run_dir = p.parent.parent if p.parent.name == "checkpoints" else Path(cfg.output_dir)
    return run_dir / "bundle"


def _val_windows(data: PreparedData, cfg: RootCfg, n: int = 64) -> tuple[np.ndarray, ...]:
    ds = data.dataset(cfg, CALIBRATION_SPLIT)
    if len(ds) == 0:
        raise ExportError(f"the {CALIBRATION_SPLIT!r} split has no windows to verify and calibrate on")
    pick = np.linspace(0, len(ds) - 1, min(n, len(ds))).round().astype(int).tolist()
    b = ds.__getitems__(pick)
    return b["X"].numpy(), b["M_miss"].numpy(), b["Flags"].numpy()


def _val_series(data: PreparedData, cfg: RootCfg, n_steps: int = 2000, n_turbines: int = 2) -> tuple[np.ndarray, ...]:
    """Consecutive steps of the validation split (and what follows it) of up to `n_turbines` turbines, from each
    one's first validation step, as many as all of them have (at most `n_steps`): the step graph's check."""
    parts = []
    for tdir in sorted((Path(data.dir) / "turbines").iterdir()):
        split = step_splits(np.load(tdir / "timestamps.npy"), tdir.name, cfg.data)
        first = np.flatnonzero(split == SPLITS.index(CALIBRATION_SPLIT))
        if first.size:
            arrays = [np.load(tdir / f"{n}.npy", mmap_mode="r") for n in ("X", "M_miss", "Flags")]
            parts.append([np.asarray(a[first[0] : first[0] + n_steps], dtype=np.float32) for a in arrays])
        if len(parts) == n_turbines:
            break
    T = min((p[0].shape[0] for p in parts), default=0)
    if T < 2 * cfg.data.windowing.L:
        raise ExportError(f"the {CALIBRATION_SPLIT!r} split has {T} consecutive steps; the step graph's check needs "
                          f"at least 2 L = {2 * cfg.data.windowing.L}")  # fmt: skip
    return tuple(np.stack([p[k][:T] for p in parts]) for k in range(3))


def export_bundle(
    checkpoint: str | Path,
    out_dir: str | Path | None = None,
    data_dir: str | Path | None = None,
    overrides: Sequence[str] = (),
    verify: bool = True,
    atol: float = DEFAULT_ATOL,
    rtol: float = DEFAULT_RTOL,
    log: Callable[[str], None] = lambda m: None,
) -> Bundle:
    """Export `checkpoint` into a bundle directory (default `<run output dir>/bundle`) and return it, loaded."""
    ckpt = load_checkpoint(checkpoint)
    cfg = checkpoint_config(ckpt, overrides, data_dir)
    out = Path(out_dir) if out_dir is not None else default_out_dir(checkpoint, cfg)
    data = PreparedData(cfg)
    if data.fingerprint != ckpt["data_fingerprint"]:
        raise ExportError(
            f"prepared data in {data.dir} (fingerprint {data.fingerprint[:12]}) is not the data the "
            f"checkpoint was trained on ({ckpt['data_fingerprint'][:12]}); pass --data with that folder"
        )
    mods = build_reference(ckpt, cfg)
    per_signal = isinstance(mods.scoring, SignalModule)
    signals, calibration = None, None
    if per_signal:  # residual scales (baked into the graph), centres and each group's level
        log("fitting the per-signal residual scales and levels on the validation split")
        signals, val_scores = fit_signals(mods.scoring, data, cfg, log=log)
        score_reference = ScoreReference(
            "val", int(val_scores.size), tuple(QUANTILE_LEVELS),
            tuple(float(v) for v in np.quantile(val_scores, QUANTILE_LEVELS)),
        )  # fmt: skip
    else:
        fit_feature_scale(mods.scoring, data, cfg)  # feature_topk: baked into the scoring graph
    log(f"exporting {checkpoint}: L={mods.L}, F={data.F}, R={data.R}, receptive field {mods.model.receptive_field}")
    graphs = export_graphs(mods)
    if not per_signal:
        log("calibrating on the validation split")
        cal = calibrate(mods.scoring, data, cfg)
        calibration, score_reference = cal.calibration, cal.score_reference
    parity = None
    if verify:
        clip = ckpt["scaler"]["clip"]
        extreme = float(clip) if clip is not None else DEFAULT_EXTREME
        series = _val_series(data, cfg) if mods.step is not None else None
        parity = verify_graphs(mods, graphs, _val_windows(data, cfg), atol=atol, rtol=rtol, extreme=extreme,
                               series=series)  # fmt: skip
        if not parity.passed:
            bad = {k: v for k, v in parity.outputs.items() if v["n_bad"]}
            raise ExportError(
                f"torch/onnxruntime parity out of tolerance (atol={atol}, rtol={rtol}): {bad}; nothing was written"
            )
    mcfg, labels, inf = mods.model.cfg, cfg.data.labels, cfg.infer
    feature_reg = FeatureRegistry.from_dict(ckpt["feature_registry"])
    names = list(feature_reg.feature_names)
    masks = ScoreMasks.group if per_signal else ScoreMasks(mods.scoring.masks)
    groups = feature_groups(cfg).members(names) if masks == ScoreMasks.group else None
    context = feature_groups(cfg).context if per_signal else mods.scoring.context
    ids = cfg.data.identifiers
    contents = BundleContents(
        dims=Dims(L=mods.L, K=mcfg.K, F=mcfg.F, R=mcfg.R, C=mcfg.C, RF=mcfg.receptive_field),
        dt_seconds=int(ckpt["pipeline_spec"]["dt_seconds"]),
        feature_registry=feature_reg,
        flag_registry=FlagRegistry.from_dict(ckpt["flag_registry"]),
        column_mapping=dict(cfg.data.columns),
        table_identifiers=TableIdentifiers(**dataclasses.asdict(ids)),  # data.identifiers, field for field
        table_csv=TableCsv(**dataclasses.asdict(cfg.data.csv)),
        spec=PipelineSpec.from_dict(ckpt["pipeline_spec"]),
        scaler=RobustScaler.from_dict(ckpt["scaler"]),
        heads=Heads(mcfg.forecast_enabled, mcfg.fault_enabled, mcfg.fault_multilabel, mcfg.rul_enabled),
        class_names=tuple(labels.class_names) if labels.enabled else (),
        scoring=ScoringParams(
            kind=ScoreKind.per_signal if per_signal else ScoreKind.window_mean,
            masks=masks,
            p_score=None if per_signal else mods.scoring.p_score,
            groups=None if groups is None else {g: tuple(m) for g, m in groups.items()},
            context=tuple(names[i] for i in context),
            passes=mods.scoring.G if per_signal else mods.scoring.P,
            seed=inf.score_seed,
            aggregation=None if per_signal else inf.aggregation.name,
            halflife=None if per_signal else inf.aggregation.halflife_steps,
            k=None if per_signal else inf.aggregation.k,
            topn=inf.topn_features,
        ),
        signals=signals,
        stream=None
        if mods.step is None
        else StreamParams(mods.step.P, tuple(mods.step.convs), mods.step.D, mods.step.ring),
        calibration=calibration,
        alerting=alerting_params(cfg),
        fleet=fleet_params(cfg),
        score_reference=score_reference,
        feature_reference=feature_reference(data, cfg),
        versions=Versions(
            torch=torch.__version__,
            onnx=onnx.__version__,
            onnxruntime=ort.__version__,
            package=importlib.metadata.version("scada-tcn"),
            opset=OPSET,
            ir_version=IR_VERSION,
        ),
        data_fingerprint=ckpt["data_fingerprint"],
        parity=parity,
    )
    bundle = dump_bundle(out, graphs, contents)
    log(f"wrote {out} (model id {bundle.model_id[:12]})")
    return bundle
