"""`export_bundle`: a scada-train checkpoint -> a verified bundle directory (the function behind scada-export).

Steps: load the checkpoint (weights only) and its saved config, apply `infer.*` overrides, open the prepared data
the model was trained on (its fingerprint must match the checkpoint's), rebuild and export both graphs,
calibrate on the validation split, check torch/onnxruntime parity (unless `verify=False`), then hand
everything to `runtime.bundle.dump_bundle`, which validates and writes. A failed parity check writes nothing.
"""

from __future__ import annotations

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
    ScoringParams,
    Versions,
    dump_bundle,
)
from scada_tcn.runtime.registry import FeatureRegistry, FlagRegistry
from scada_tcn.runtime.scaling import RobustScaler
from scada_tcn.runtime.spec import PipelineSpec
from scada_tcn.runtime.vocab import ScoreMasks
from scada_tcn.trainer.calibration.fit import CALIBRATION_SPLIT, calibrate, feature_reference, fit_feature_scale
from scada_tcn.trainer.config import RootCfg
from scada_tcn.trainer.config.derive import alerting_params, fleet_params
from scada_tcn.trainer.config.groups import feature_groups
from scada_tcn.trainer.data.store import PreparedData
from scada_tcn.trainer.model.reference import build_reference, checkpoint_config
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
    fit_feature_scale(mods.scoring, data, cfg)  # feature_topk: baked into the scoring graph
    log(f"exporting {checkpoint}: L={mods.L}, F={data.F}, R={data.R}, receptive field {mods.model.receptive_field}")
    graphs = export_graphs(mods)
    log("calibrating on the validation split")
    cal = calibrate(mods.scoring, data, cfg)
    parity = None
    if verify:
        clip = ckpt["scaler"]["clip"]
        extreme = float(clip) if clip is not None else DEFAULT_EXTREME
        parity = verify_graphs(mods, graphs, _val_windows(data, cfg), atol=atol, rtol=rtol, extreme=extreme)
        if not parity.passed:
            bad = {k: v for k, v in parity.outputs.items() if v["n_bad"]}
            raise ExportError(
                f"torch/onnxruntime parity out of tolerance (atol={atol}, rtol={rtol}): {bad}; nothing was written"
            )
    mcfg, labels, inf = mods.model.cfg, cfg.data.labels, cfg.infer
    feature_reg = FeatureRegistry.from_dict(ckpt["feature_registry"])
    names = list(feature_reg.feature_names)
    groups = feature_groups(cfg).members(names) if mods.scoring.masks == ScoreMasks.group else None
    contents = BundleContents(
        dims=Dims(L=mods.L, K=mcfg.K, F=mcfg.F, R=mcfg.R, C=mcfg.C, RF=mcfg.receptive_field),
        dt_seconds=int(ckpt["pipeline_spec"]["dt_seconds"]),
        feature_registry=feature_reg,
        flag_registry=FlagRegistry.from_dict(ckpt["flag_registry"]),
        column_mapping=dict(cfg.data.columns),
        spec=PipelineSpec.from_dict(ckpt["pipeline_spec"]),
        scaler=RobustScaler.from_dict(ckpt["scaler"]),
        heads=Heads(mcfg.forecast_enabled, mcfg.fault_enabled, mcfg.fault_multilabel, mcfg.rul_enabled),
        class_names=tuple(labels.class_names) if labels.enabled else (),
        scoring=ScoringParams(
            masks=ScoreMasks(mods.scoring.masks),
            p_score=mods.scoring.p_score,
            groups=None if groups is None else {g: tuple(m) for g, m in groups.items()},
            context=tuple(names[i] for i in mods.scoring.context),
            passes=mods.scoring.P,
            seed=inf.score_seed,
            aggregation=inf.aggregation.name,
            halflife=inf.aggregation.halflife_steps,
            k=inf.aggregation.k,
            topn=inf.topn_features,
        ),
        calibration=cal.calibration,
        alerting=alerting_params(cfg),
        fleet=fleet_params(cfg),
        score_reference=cal.score_reference,
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
