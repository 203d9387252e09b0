"""Deterministic, complete mask-at-test scoring as one `nn.Module` (spec G scoring, invariant L).

The spec's scoring stream samples one random M_score per call; that makes a window's score depend on the draw.
Here the scoring masks are fixed instead, P complementary patterns over (time step, feature) of one of two kinds:
- "element": P = round(1 / p_score) patterns of single elements, built once from `seed`;
- "group": one pattern per feature group (`trainer.config.groups`), hiding the group at every step of the window,
  so a signal is scored on how well the rest of the turbine predicts it (the model must be trained with
  `train.group_mask_prob` > 0). This catches slow drifts that an element mask lets the model copy from the
  neighbouring steps.
Pass p hides the elements assigned to p; every present element is hidden in exactly one pass, so every present
element is scored exactly once, and a window always gets the same score whatever batch it is in. Context
features (`context`, e.g. the absolute wind direction: weather, not turbine health) are the exception: model
inputs in every pass, never hidden, never scored, and left out of every denominator. Missing elements are never
hidden, never scored, and the value stored there is
replaced by `fill_value` before the model sees it, so it cannot move the score.

For each window, with E the absolute reconstruction error of each present element at the pass that hid it
(0 where missing or context), S_f = 0 for context features and 1 otherwise, and w_l a weight per time step:

    feat_contrib[f] = sum_l w_l E[l, f] / max(sum_{l,f} w_l M_miss[l, f] S_f, eps)
    s_now           = sum_f feat_contrib[f]

- "masked_mean": w_l = 1, so s_now = sum E / (number of present scored elements).
- "recent_weighted": w_l = 0.5 ** ((L - 1 - l) / recent_halflife): the latest step weighs 1, a step
  `recent_halflife` steps older weighs 1/2.

`s_now` is defined as the sum of the contributions, so the two always agree. `top_idx` orders features by
contribution, largest first; equal contributions keep the lower feature index first, identically in torch and
in the exported graph (`stable_topk_indices`).

The forward pass is written for `torch.onnx.export(dynamo=True)`: no Python branching on data, no `.item()`, no
numpy, static shapes except the batch; the P passes run as one model call of batch B*P. Call `.eval()` first.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from scada_tcn.runtime.vocab import ScoreAggregation, allowed
from scada_tcn.trainer.model.masking import apply_mask, build_model_input
from scada_tcn.trainer.model.network import MultiTaskTCN, pairwise_sum

__all__ = ["ScoreOutputs", "ScoringModule", "group_patterns", "scoring_patterns", "stable_topk_indices"]


class ScoreOutputs(NamedTuple):
    s_now: torch.Tensor  # (B,) float32
    feat_contrib: torch.Tensor  # (B, F) float32, sums to s_now
    top_idx: torch.Tensor  # (B, topn) int64
    E: torch.Tensor  # (B, L, F) float32, 0 where missing


def scoring_patterns(L: int, F: int, P: int, seed: int) -> torch.Tensor:
    """(P, L, F) float32 0/1: pattern[p, l, f] = 1 iff (l, f) is hidden in pass p; each (l, f) in exactly one pass.

    (l, f) goes to pass perm[l * F + f] % P with perm a permutation of L*F drawn from a generator seeded by
    `seed`, so passes hide floor or ceil of L*F/P elements each and the layout is spread over time and features.
    """
    g = torch.Generator(device="cpu").manual_seed(int(seed))
    perm = torch.randperm(L * F, generator=g)
    assign = (perm % P).reshape(L, F)
    return (assign.unsqueeze(0) == torch.arange(P).reshape(P, 1, 1)).to(torch.float32)


def positive_scale(scale: torch.Tensor, F: int, what: str) -> torch.Tensor:
    """`scale` as a float32 (F,) tensor; ValueError unless it has that shape and is finite and > 0."""
    scale = torch.as_tensor(scale, dtype=torch.float32)
    if scale.shape != (F,) or not bool(torch.isfinite(scale).all()) or bool((scale <= 0).any()):
        raise ValueError(f"{what} must be ({F},) finite and > 0, got {tuple(scale.shape)}")
    return scale


def pass_inputs(
    X0: torch.Tensor, present: torch.Tensor, hide: torch.Tensor, Flags: torch.Tensor, fill_value: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """The model inputs of every pass: pass p hides the present elements of pattern `hide[p]` (P, L, F).

    Returns X_in (B*P, L, 3F + R) and the per-pass keep mask (B, P, L, F): 0 where pass p hides an element."""
    B, L, F = X0.shape
    P, R = hide.shape[0], Flags.shape[2]
    keep = 1.0 - hide.unsqueeze(0) * present.unsqueeze(1)  # (B, P, L, F)
    X_corrupt = apply_mask(X0.unsqueeze(1).expand(B, P, L, F), keep, fill_value)
    X_in = build_model_input(
        X_corrupt.reshape(B * P, L, F),
        present.unsqueeze(1).expand(B, P, L, F).reshape(B * P, L, F),
        keep.reshape(B * P, L, F),
        Flags.unsqueeze(1).expand(B, P, L, R).reshape(B * P, L, R),
    )
    return X_in, keep


def group_patterns(L: int, group_of: tuple[int, ...] | list[int]) -> torch.Tensor:
    """(G, L, F) float32 0/1: pattern[g, l, f] = 1 iff feature f is in group g (every step l), G = max + 1.

    A feature of group -1 (context) is in no pattern."""
    groups = torch.as_tensor(list(group_of), dtype=torch.int64)
    G = int(groups.max()) + 1
    if sorted(set(groups.tolist()) - {-1}) != list(range(G)) or G < 2:
        raise ValueError(f"group_of must use every group index 0 .. G-1 with G >= 2, got {list(group_of)}")
    per_feature = (groups.reshape(1, -1) == torch.arange(G).reshape(G, 1)).to(torch.float32)  # (G, F)
    return per_feature.unsqueeze(1).expand(G, L, groups.numel()).contiguous()


def stable_topk_indices(x: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the k largest entries along the last axis, largest first; equal values keep the lower index first.

    Built from a pairwise rank, O(n^2) per row (n = F, small), because the two obvious ops fail us: `torch.topk`
    orders ties differently from ONNX TopK (torch CPU gave [4, 1, 6] where onnxruntime gave [4, 1, 2]), and a
    stable `torch.sort` has no ONNX conversion (`aten.sort.stable`). Comparisons and sums give the same answer in
    both backends.
    """
    n = x.shape[-1]
    idx = torch.arange(n, device=x.device)
    xf, xg = x.unsqueeze(-1), x.unsqueeze(-2)  # (..., n, 1) candidate f, (..., 1, n) other g
    g_first = (xg > xf) | ((xg == xf) & (idx.reshape(1, n) < idx.reshape(n, 1)))  # (..., n, n): g ranks before f
    rank = g_first.to(torch.int64).sum(dim=-1)  # (..., n): a permutation of 0 .. n-1
    hit = rank.unsqueeze(-1) == torch.arange(k, device=x.device)  # (..., n, k): f holds rank j
    return (hit.to(torch.int64) * idx.reshape(n, 1)).sum(dim=-2)  # (..., k)


class ScoringModule(nn.Module):
    """X (B, L, F), M_miss (B, L, F), Flags (B, L, R) -> ScoreOutputs(s_now, feat_contrib, top_idx, E)."""

    def __init__(
        self,
        model: MultiTaskTCN,
        L: int,
        F: int,
        p_score: float | None,
        seed: int,
        aggregation: str = "masked_mean",
        topn: int = 5,
        recent_halflife: float | None = None,
        fill_value: float = 0.0,
        eps: float = 1e-6,
        k: int | None = None,
        group_of: tuple[int, ...] | list[int] | None = None,
        context: tuple[int, ...] | list[int] = (),
    ) -> None:
        super().__init__()
        problems = []
        if L < 1:
            problems.append(f"L must be >= 1, got {L}")
        if F != model.cfg.F:
            problems.append(f"F={F} does not match the model's F={model.cfg.F}")
        if (p_score is None) == (group_of is None):
            problems.append("give p_score (element masks) or group_of (group masks), not both or neither")
        elif group_of is not None and len(group_of) != F:
            problems.append(f"group_of has {len(group_of)} entries for F={F} features")
        elif p_score is not None and not 0.0 < p_score < 1.0:
            problems.append(f"p_score must be in (0, 1), got {p_score}")
        elif p_score is not None and round(1.0 / p_score) < 2:
            problems.append(f"p_score={p_score} gives P=round(1/p_score)=1 pass; use p_score <= 0.66 for P >= 2")
        if any(not 0 <= c < F for c in context) or len(set(context)) != len(context) or len(context) >= F:
            problems.append(
                f"context must be distinct feature indices in [0, F={F}) leaving one scored, got {list(context)}"
            )
        elif group_of is not None and [i for i, g in enumerate(group_of) if g < 0] != sorted(context):
            problems.append("group_of must be -1 exactly at the context features")
        if aggregation not in set(ScoreAggregation):
            problems.append(f"aggregation: unknown {aggregation!r}; allowed {allowed(ScoreAggregation)}")
        if aggregation == "recent_weighted" and (recent_halflife is None or not recent_halflife > 0):
            problems.append(f"recent_weighted needs recent_halflife > 0 (steps), got {recent_halflife}")
        if (aggregation == "feature_topk") != (k is not None) or (k is not None and not 1 <= k <= F):
            problems.append(
                f"feature_topk needs, and only it takes, k in [1, F={F}]; got aggregation={aggregation!r}, k={k}"
            )
        if not 1 <= topn <= F:
            problems.append(f"topn must be in [1, F={F}], got {topn}")
        if problems:
            raise ValueError("invalid ScoringModule: " + "; ".join(problems))

        self.model = model
        self.output_names = tuple(ScoreOutputs._fields)  # s_now, feat_contrib, top_idx, E
        self.L, self.F, self.R = L, F, model.cfg.R
        scored = torch.ones(F)
        scored[list(context)] = 0.0
        hide = scoring_patterns(L, F, round(1.0 / p_score), seed) if group_of is None else group_patterns(L, group_of)
        hide = hide * scored  # context features are never hidden
        self.P = hide.shape[0]
        self.masks = "element" if group_of is None else "group"
        self.p_score, self.seed, self.aggregation, self.topn = p_score, seed, aggregation, topn
        self.recent_halflife, self.fill_value, self.eps, self.k = recent_halflife, float(fill_value), eps, k
        # derived from the constructor arguments, so not part of the state_dict; export bakes them in as constants
        self.context = tuple(sorted(context))
        self.register_buffer("hide", hide, persistent=False)  # (P, L, F)
        self.register_buffer("scored", scored, persistent=False)  # (F,) 0 at context features
        if aggregation == "recent_weighted":
            age = torch.arange(L - 1, -1, -1, dtype=torch.float64)  # L-1 ... 0 steps before the latest
            time_weight = torch.pow(0.5, age / float(recent_halflife)).to(torch.float32)
        else:
            time_weight = torch.ones(L, dtype=torch.float32)
        self.register_buffer("time_weight", time_weight, persistent=False)  # (L,)
        # feature_topk: each feature's error over its typical level on normal validation windows (set_feature_scale)
        self.register_buffer("feature_scale", torch.ones(F), persistent=False)  # (F,)
        self.feature_scale_fitted = False

    def set_feature_scale(self, scale: torch.Tensor) -> None:
        """The per-feature error levels that feature_topk divides by (fitted at export on normal windows)."""
        self.feature_scale.copy_(positive_scale(scale, self.F, "feature scale"))
        self.feature_scale_fitted = True

    def per_feature_error(self, E: torch.Tensor, M_miss: torch.Tensor) -> torch.Tensor:
        """(B, L, F) hidden-element errors -> (B, F) time-weighted mean error of each feature over its present steps."""
        present = (M_miss > 0.5).to(torch.float32) * self.scored
        tw = self.time_weight.reshape(1, self.L, 1)
        return pairwise_sum(E * tw, 1) / pairwise_sum(present * tw, 1).clamp_min(self.eps)

    def _check(self, X: torch.Tensor, M_miss: torch.Tensor, Flags: torch.Tensor) -> None:
        if X.dim() != 3 or X.shape[1] != self.L or X.shape[2] != self.F:
            raise ValueError(f"ScoringModule: X must be (B, L={self.L}, F={self.F}), got {tuple(X.shape)}")
        if M_miss.shape != X.shape:
            raise ValueError(f"ScoringModule: M_miss {tuple(M_miss.shape)} must match X {tuple(X.shape)}")
        if Flags.dim() != 3 or Flags.shape[:2] != X.shape[:2] or Flags.shape[2] != self.R:
            msg = f"ScoringModule: Flags must be (B, L={self.L}, R={self.R}), got {tuple(Flags.shape)}"
            raise ValueError(msg)

    def forward(self, X: torch.Tensor, M_miss: torch.Tensor, Flags: torch.Tensor) -> ScoreOutputs:
        self._check(X, M_miss, Flags)
        B = X.shape[0]
        P, L, F = self.P, self.L, self.F
        present = (M_miss > 0.5).to(torch.float32)  # (B, L, F)
        X0 = apply_mask(X, present, self.fill_value)  # the value stored at a missing element is never read

        # pass p hides the present elements of pattern p
        X_in, keep = pass_inputs(X0, present, self.hide, Flags, self.fill_value)  # (B*P, L, 3F + R)
        X_hat = self.model(X_in, return_recon=True, return_forecast=False, return_fault=False).X_hat
        X_hat = X_hat.reshape(B, P, L, F)

        # each present scored element is hidden in exactly one pass: summing over P picks that pass's error
        err = (X_hat - X0.unsqueeze(1)).abs()  # (B, P, L, F)
        E = torch.where(keep < 0.5, err, torch.zeros_like(err)).sum(dim=1)  # (B, L, F)

        tw = self.time_weight.reshape(1, L, 1)
        if self.aggregation == "feature_topk":
            # mean of the k worst features, each relative to its normal level: a fault on one or two channels is
            # not averaged away by the healthy ones
            norm = self.per_feature_error(E, M_miss) / self.feature_scale  # (B, F)
            pick = torch.zeros_like(norm).scatter(1, stable_topk_indices(norm, int(self.k)), 1.0)
            feat_contrib = norm * pick / float(self.k)  # (B, F)
        else:
            denom = pairwise_sum(pairwise_sum(present * self.scored * tw, 2), 1).clamp_min(self.eps)  # (B,)
            feat_contrib = pairwise_sum(E * tw, 1) / denom.unsqueeze(1)  # (B, F)
        s_now = pairwise_sum(feat_contrib, -1)  # (B,)
        top_idx = stable_topk_indices(feat_contrib, self.topn)  # (B, topn)
        return ScoreOutputs(s_now, feat_contrib, top_idx, E)
