"""The torch inference step: the clean pass (outputs) plus the scoring pass (anomaly score and RCA).

Clean pass: the model sees the window unmasked, M_mask = ones, and returns the forecast, fault logits and
(optionally) RUL. Scoring pass: `trainer.scoring.ScoringModule` (complementary mask-at-test patterns). Both are
modules with tensor-only inputs and tuple outputs, so `export/` can trace exactly this code.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from trainer.masking import build_model_input, fill_missing
from trainer.model import MultiTaskTCN
from trainer.scoring import ScoringModule

__all__ = ["CleanPass", "InferStepOutputs", "infer_step"]


class CleanPass(nn.Module):
    """X (B, L, F), M_miss (B, L, F), Flags (B, L, R) -> tuple of the enabled outputs, in `output_names` order.

    The order is Y_hat (B, K, F), fault_logits (B, C), rul (B, 1), each present only when its head is
    enabled in the model config. Missing elements are set to `fill_value` before the model sees them.
    """

    def __init__(self, model: MultiTaskTCN, fill_value: float = 0.0) -> None:
        super().__init__()
        self.model = model
        self.fill_value = float(fill_value)
        cfg = model.cfg
        names = []
        if cfg.forecast_enabled:
            names.append("Y_hat")
        if cfg.fault_enabled:
            names.append("fault_logits")
        if cfg.rul_enabled:
            names.append("rul")
        self.output_names: tuple[str, ...] = tuple(names)

    def forward(self, X: torch.Tensor, M_miss: torch.Tensor, Flags: torch.Tensor) -> tuple[torch.Tensor, ...]:
        X0 = fill_missing(X, M_miss, self.fill_value)
        X_in = build_model_input(X0, M_miss, torch.ones_like(M_miss), Flags)  # (B, L, 3F + R)
        out = self.model(
            X_in, return_recon=False, return_forecast=True, return_fault=True, return_rul=True
        )
        return tuple(getattr(out, name) for name in self.output_names)


@dataclass
class InferStepOutputs:
    """Clean-pass outputs (None where the head is disabled) and the scoring outputs."""

    Y_hat: torch.Tensor | None  # (B, K, F)
    fault_logits: torch.Tensor | None  # (B, C) logits; see trainer.model.predict_proba_fault
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
        fault_logits=outs.get("fault_logits"),
        rul=outs.get("rul"),
        s_now=score.s_now,
        feat_contrib=score.feat_contrib,
        top_idx=score.top_idx,
        E=score.E,
    )
