"""The torch inference step: the clean pass (outputs) plus the scoring pass (anomaly score and RCA).

Clean pass: the model sees the window unmasked, M_mask = ones, and returns the forecast, fault probabilities
and (optionally) RUL. Scoring pass: `trainer.model.scoring.ScoringModule` (complementary mask-at-test patterns).
Both are modules with tensor-only inputs and tuple outputs, so `export/` can trace exactly this code.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException
from torch import nn

from scada_tcn.runtime.errors import ConfigError
from scada_tcn.runtime.vocab import ScoreKind
from scada_tcn.trainer.config import RootCfg, split_overrides, to_root
from scada_tcn.trainer.config.groups import feature_groups
from scada_tcn.trainer.model.masking import build_model_input, fill_missing
from scada_tcn.trainer.model.network import ModelConfig, MultiTaskTCN, predict_proba_fault, strip_weight_norm
from scada_tcn.trainer.model.scoring import ScoringModule
from scada_tcn.trainer.model.signals import SignalModule
from scada_tcn.trainer.model.streaming import StepModule

__all__ = [
    "CleanPass",
    "InferStepOutputs",
    "ReferenceModules",
    "build_reference",
    "checkpoint_config",
    "infer_step",
]


class CleanPass(nn.Module):
    """X (B, L, F), M_miss (B, L, F), Flags (B, L, R) -> the enabled clean-pass outputs, in `output_names` order.

    Missing elements are set to `fill_value`, the model input is X_in = [X, M_miss, ones, Flags] (nothing hidden,
    `build_model_input`), and the outputs are Y_hat (B, K, F), fault_prob (B, C) (`predict_proba_fault`) and
    rul (B, 1), each present only when its head is on. This is the module `export/` traces into clean.onnx, so
    the edge feeds the graph the windows as they come and does no model-input or activation math of its own.
    """

    def __init__(self, model: MultiTaskTCN, fill_value: float = 0.0) -> None:
        super().__init__()
        self.model = model
        self.fill_value = float(fill_value)
        cfg = model.cfg
        heads = (("Y_hat", cfg.forecast_enabled), ("fault_prob", cfg.fault_enabled), ("rul", cfg.rul_enabled))
        self.output_names: tuple[str, ...] = tuple(n for n, on in heads if on)

    def forward(self, X: torch.Tensor, M_miss: torch.Tensor, Flags: torch.Tensor) -> tuple[torch.Tensor, ...]:
        X0 = fill_missing(X, M_miss, self.fill_value)
        X_in = build_model_input(X0, M_miss, torch.ones_like(M_miss), Flags)  # (B, L, 3F + R)
        out = self.model(X_in, return_recon=False, return_forecast=True, return_fault=True, return_rul=True)
        probs = (
            None if out.fault_logits is None else predict_proba_fault(out.fault_logits, self.model.cfg.fault_multilabel)
        )
        found = {"Y_hat": out.Y_hat, "fault_prob": probs, "rul": out.rul}
        return tuple(found[name] for name in self.output_names)


@dataclass
class InferStepOutputs:
    """Clean-pass outputs (None where the head is disabled) and the scoring outputs."""

    Y_hat: torch.Tensor | None  # (B, K, F)
    fault_prob: torch.Tensor | None  # (B, C) probabilities (`predict_proba_fault`)
    rul: torch.Tensor | None  # (B, 1)
    s_now: torch.Tensor  # (B,)
    feat_contrib: torch.Tensor  # (B, F)
    top_idx: torch.Tensor  # (B, topn) int64
    E: torch.Tensor  # (B, L, F)


def infer_step(
    model: MultiTaskTCN, scoring: ScoringModule, X: torch.Tensor, M_miss: torch.Tensor, Flags: torch.Tensor
) -> InferStepOutputs:
    """Run the clean pass and the scoring pass in eval mode without gradients; the model's mode is restored."""
    if scoring.model is not model:
        msg = "infer_step: `scoring` wraps a different model than `model`; build it as ScoringModule(model, ...)"
        raise ValueError(msg)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            clean = CleanPass(model, fill_value=scoring.fill_value)
            outs = dict(zip(clean.output_names, clean(X, M_miss, Flags)))
            score = scoring(X, M_miss, Flags)
    finally:
        model.train(was_training)
    return InferStepOutputs(
        Y_hat=outs.get("Y_hat"),
        fault_prob=outs.get("fault_prob"),
        rul=outs.get("rul"),
        s_now=score.s_now,
        feat_contrib=score.feat_contrib,
        top_idx=score.top_idx,
        E=score.E,
    )


@dataclass
class ReferenceModules:
    """A checkpoint's model (eval mode, weight norm baked in) and the modules built on it: the torch reference
    that `export/` traces and that `scada-infer --checkpoint` runs."""

    model: MultiTaskTCN
    clean: CleanPass
    scoring: ScoringModule | SignalModule  # per `cfg.infer.score`
    L: int
    step: StepModule | None = None  # per-signal scoring with the receptive field within the window: step.onnx


def scoring_module(
    model: MultiTaskTCN, cfg: RootCfg, aggregation: str, halflife: float | None = None, k: int | None = None
) -> ScoringModule:
    """The ScoringModule of `cfg` (mask layout, groups, context, seed) on `model` with the given aggregation."""
    inf = cfg.infer
    groups = feature_groups(cfg) if inf.score_masks == "group" or cfg.features.context else None
    group_of = groups.group_of if inf.score_masks == "group" else None
    return ScoringModule(
        model,
        cfg.data.windowing.L,
        model.cfg.F,
        p_score=None if group_of else inf.p_score,
        seed=inf.score_seed,
        aggregation=aggregation,
        topn=inf.topn_features,
        recent_halflife=halflife,
        fill_value=cfg.features.fill_value_c,
        k=k,
        group_of=group_of,
        context=groups.context if groups else (),
    ).eval()


def build_reference(ckpt: dict[str, Any], cfg: RootCfg) -> ReferenceModules:
    """Rebuild the model from a checkpoint, strip weight norm on a copy, and wrap it (scoring per `cfg.infer`)."""
    model = MultiTaskTCN(ModelConfig.from_dict(ckpt["model_config"]))
    model.load_state_dict(ckpt["model_state"])
    model = strip_weight_norm(copy.deepcopy(model)).eval()
    agg = cfg.infer.aggregation
    if cfg.infer.score == ScoreKind.per_signal:
        groups = feature_groups(cfg)
        scoring = SignalModule(model, cfg.data.windowing.L, groups.group_of, cfg.features.fill_value_c).eval()
    else:
        scoring = scoring_module(model, cfg, agg.name, agg.halflife_steps, agg.k)
    clean = CleanPass(model, cfg.features.fill_value_c).eval()
    step = StepModule(scoring).eval() if isinstance(scoring, SignalModule) and scoring.streams else None
    return ReferenceModules(model=model, clean=clean, scoring=scoring, L=cfg.data.windowing.L, step=step)


def checkpoint_config(ckpt: dict, overrides: Sequence[str] = (), data_dir: str | Path | None = None) -> RootCfg:
    """The checkpoint's saved config with `infer.*` overrides (other keys would contradict the trained model)."""
    groups, dotted = split_overrides(list(overrides))
    bad = sorted(groups) + [o for o in dotted if not o.startswith("infer.")]
    if bad:
        raise ConfigError(
            f"only infer.* overrides apply to a trained checkpoint (e.g. infer.calibration.percentile="
            f"99.9); got {bad}: the rest of the config is fixed by the checkpoint"
        )
    if data_dir is not None:
        dotted.append(f"data.paths.processed_dir={Path(data_dir)}")
    try:
        node = OmegaConf.merge(OmegaConf.structured(RootCfg), ckpt["cfg"], OmegaConf.from_dotlist(dotted))
    except OmegaConfBaseException as e:
        raise ConfigError(f"override {dotted}: {str(e).splitlines()[0]}") from e
    return to_root(node)
