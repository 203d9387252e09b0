"""The per-signal scoring graph: each feature's residual at the newest step, predicted from the other signals.

    SignalModule(model, L, group_of): X (B, L, F), M_miss (B, L, F), Flags (B, L, R) -> resid (B, F), pred (B, F)

Pass g hides feature group g at every step of the window (missing values always read as `fill_value`), so the
model predicts that signal from the other groups and the context features, with the whole window of left
context; the G passes run as one model call of batch B*G. For each scored feature f, resid[f] is
(x_f - x_hat_f) / scale_f at the newest step, from the pass that hid f's group: signed, in units of the feature's
normal residual scale (`set_scale`, fitted at export on normal validation windows). It is 0 where f is missing at
the newest step and for context features (group -1), which are inputs in every pass and never scored. pred[f]
is x_hat_f itself (scaled units; 0 for context features): the stuck-signal check reads from it whether the model
expected f to move.

Each element is scored once, when it is the newest step, with full left context (L >= the receptive field, or
the window as context otherwise). The graph has no reduction whose order depends on the batch (the pick of a
feature's own pass adds one non-zero term), so a window's residuals do not depend on the batch it is in. What
the edge does with them (directions, group deviations, temporal aggregation, levels) is `runtime.signals`.
"""

from __future__ import annotations

import torch
from torch import nn

from scada_tcn.trainer.model.masking import apply_mask
from scada_tcn.trainer.model.network import MultiTaskTCN
from scada_tcn.trainer.model.scoring import group_patterns, pass_inputs, positive_scale

__all__ = ["SignalModule"]


class SignalModule(nn.Module):
    """X, M_miss, Flags -> resid (B, F), pred (B, F); see the module docstring."""

    def __init__(self, model: MultiTaskTCN, L: int, group_of: tuple[int, ...] | list[int], fill_value: float = 0.0):
        super().__init__()
        F = model.cfg.F
        if len(group_of) != F:
            raise ValueError(f"SignalModule: group_of has {len(group_of)} entries for F={F} features")
        if L < 1:
            raise ValueError(f"SignalModule: L must be >= 1, got {L}")
        self.model = model
        self.output_names = ("resid", "pred")
        self.L, self.F, self.R = L, F, model.cfg.R
        self.group_of = tuple(int(g) for g in group_of)
        self.fill_value = float(fill_value)
        hide = group_patterns(L, self.group_of)  # (G, L, F)
        self.G = hide.shape[0]
        self.register_buffer("hide", hide, persistent=False)
        self.register_buffer("own", hide[:, -1, :].clone(), persistent=False)  # (G, F): the pass that scores f
        scored = torch.tensor([g >= 0 for g in self.group_of], dtype=torch.bool)
        self.register_buffer("scored", scored, persistent=False)
        self.register_buffer("scale", torch.ones(F), persistent=False)  # (F,) normal residual scale
        self.scale_fitted = False

    @property
    def streams(self) -> bool:
        """The receptive field fits in L: a step's outputs are its window's newest ones whatever came before the
        window, so it can be computed over a series (`predict_series`) or stepped (`StepModule`)."""
        return self.model.receptive_field <= self.L

    def set_scale(self, scale: torch.Tensor) -> None:
        """Each feature's normal residual scale (fitted at export; the graph bakes it in)."""
        self.scale.copy_(positive_scale(scale, self.F, "SignalModule: scale"))
        self.scale_fitted = True

    def predict(self, X: torch.Tensor, M_miss: torch.Tensor, Flags: torch.Tensor) -> torch.Tensor:
        """(B, F): each feature at the newest step as predicted with its group hidden over the window."""
        if X.dim() != 3 or X.shape[1:] != (self.L, self.F) or M_miss.shape != X.shape:
            raise ValueError(f"SignalModule: X and M_miss must be (B, {self.L}, {self.F}), got {tuple(X.shape)}")
        if Flags.dim() != 3 or Flags.shape[:2] != X.shape[:2] or Flags.shape[2] != self.R:
            raise ValueError(f"SignalModule: Flags must be (B, {self.L}, {self.R}), got {tuple(Flags.shape)}")
        return self._passes(X, M_miss, Flags, self.hide)[:, :, -1, :].mul(self.own).sum(dim=1)

    def predict_series(self, X: torch.Tensor, M_miss: torch.Tensor, Flags: torch.Tensor) -> torch.Tensor:
        """(T, F): `predict` at every step of one series X, M_miss (T, F), Flags (T, R), each step with the series
        before it as context. A step's prediction depends on its last `model.receptive_field` steps only, so from
        that step on it equals `predict` of the window ending there when the module `streams`."""
        T = X.shape[0]
        if X.dim() != 2 or X.shape[1] != self.F or M_miss.shape != X.shape or Flags.shape != (T, self.R):
            raise ValueError(f"SignalModule.predict_series: X, M_miss (T, {self.F}), Flags (T, {self.R}); got "
                             f"{tuple(X.shape)}, {tuple(M_miss.shape)}, {tuple(Flags.shape)}")  # fmt: skip
        hide = self.hide[:, :1, :].expand(self.G, T, self.F)  # every step hides the same group
        return self._passes(X[None], M_miss[None], Flags[None], hide)[0].mul(self.own[:, None, :]).sum(dim=0)

    def _passes(self, X: torch.Tensor, M_miss: torch.Tensor, Flags: torch.Tensor, hide: torch.Tensor) -> torch.Tensor:
        """(B, G, L', F): the reconstruction of every step by every pass, X, M_miss (B, L', F), Flags (B, L', R)."""
        (B, L, F), G = X.shape, self.G
        present = (M_miss > 0.5).to(torch.float32)
        X0 = apply_mask(X, present, self.fill_value)  # the value stored at a missing element is never read
        X_in, _ = pass_inputs(X0, present, hide, Flags, self.fill_value)  # (B*G, L', 3F + R)
        X_hat = self.model(X_in, return_recon=True, return_forecast=False, return_fault=False).X_hat
        return X_hat.reshape(B, G, L, F)  # summed over g with `own`: one non-zero term per scored feature

    def residual(self, x: torch.Tensor, m_miss: torch.Tensor, pred: torch.Tensor) -> torch.Tensor:
        """(B, F) scaled residual of the newest step x (B, F) against `pred`; 0 where missing or not scored."""
        ok = (m_miss > 0.5) & self.scored
        return torch.where(ok, (x - pred) / self.scale, torch.zeros_like(pred))

    def forward(self, X: torch.Tensor, M_miss: torch.Tensor, Flags: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pred = self.predict(X, M_miss, Flags)
        return self.residual(X[:, -1, :], M_miss[:, -1, :], pred), pred
