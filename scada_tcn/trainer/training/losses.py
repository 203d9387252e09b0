"""Loss functions with explicit masks and reductions (spec F losses, invariant L).

- Reconstruction counts only hidden-and-present elements: target mask `(1 - M_mask) * M_miss`.
- Forecast ignores future steps whose target is missing (`M_future`, the M_miss of the K future steps).
- Fault counts only windows with a label and divides by their number (0 when there is none).
- RUL counts only windows with a target (`has_rul`): Huber on (pred - min(rul, cap)) / cap, divided by their number.
- Optional per-sample weights (B,) (regime weighting) scale each sample's contribution to the numerator; the
  denominators stay plain counts, so a weight below 1 lowers that sample's share of the total loss.

Masked-out elements contribute exactly zero loss and exactly zero gradient, even if the target holds NaN there.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = [
    "huber_elementwise",
    "huber_loss",
    "masked_huber_loss",
    "recon_loss",
    "forecast_loss",
    "fault_loss",
    "rul_loss",
    "regime_weights",
]


def huber_elementwise(err: torch.Tensor, delta: float) -> torch.Tensor:
    """Huber per element: 0.5 e^2 where |e| <= delta, else delta (|e| - delta/2)."""
    if delta <= 0:
        raise ValueError(f"huber delta must be > 0, got {delta}")
    a = err.abs()
    return torch.where(a <= delta, 0.5 * err * err, delta * (a - 0.5 * delta))


def huber_loss(y_true: torch.Tensor, y_pred: torch.Tensor, delta: float, reduction: str = "mean") -> torch.Tensor:
    """Unmasked Huber loss reduced by "mean" or "sum"."""
    loss = huber_elementwise(y_pred - y_true, delta)
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    raise ValueError(f"huber_loss: unknown reduction {reduction!r}; allowed ['mean', 'sum']")


def _per_sample(weight: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor | None:
    """(B,) sample weights -> broadcastable to `like` (B, ...)."""
    if weight is None:
        return None
    if weight.dim() != 1 or weight.shape[0] != like.shape[0]:
        raise ValueError(f"sample_weight must be (B,) with B={like.shape[0]}, got {tuple(weight.shape)}")
    return weight.reshape(-1, *([1] * (like.dim() - 1))).to(like.dtype)


def masked_huber_loss(
    y_true: torch.Tensor,
    y_pred: torch.Tensor,
    mask: torch.Tensor,
    delta: float,
    eps: float = 1e-6,
    sample_weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """sum(huber * mask [* w]) / max(sum(mask), eps); `mask` has y_true's shape, 1 = counted."""
    if not (y_true.shape == y_pred.shape == mask.shape):
        msg = (
            f"masked_huber_loss: shapes differ: y_true {tuple(y_true.shape)}, y_pred {tuple(y_pred.shape)}, "
            f"mask {tuple(mask.shape)}"
        )
        raise ValueError(msg)
    mask = mask.to(y_pred.dtype)
    # select before the Huber so a non-finite target outside the mask cannot poison the value or the gradient
    err = torch.where(mask != 0, y_pred - y_true, torch.zeros_like(y_pred))
    num_mask = mask if sample_weight is None else mask * _per_sample(sample_weight, mask)
    return (huber_elementwise(err, delta) * num_mask).sum() / mask.sum().clamp_min(eps)


def recon_loss(
    X: torch.Tensor,
    X_hat: torch.Tensor,
    M_mask: torch.Tensor,
    M_miss: torch.Tensor,
    delta: float,
    sample_weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """Masked reconstruction loss on exactly the hidden-and-present elements, (1 - M_mask) * M_miss."""
    target_mask = (1.0 - M_mask) * M_miss
    return masked_huber_loss(X, X_hat, target_mask, delta, sample_weight=sample_weight)


def forecast_loss(
    Y_true: torch.Tensor,
    Y_hat: torch.Tensor,
    M_future: torch.Tensor,
    delta: float,
    sample_weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """Huber forecast loss over the K future steps, ignoring targets that are missing (M_future == 0)."""
    return masked_huber_loss(Y_true, Y_hat, M_future, delta, sample_weight=sample_weight)


def fault_loss(
    logits: torch.Tensor,
    y: torch.Tensor,
    has_label: torch.Tensor,
    multilabel: bool,
    sample_weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """Cross-entropy (y (B,) int64) or BCE-with-logits (y (B, C) float, averaged over C) on labelled windows.

    Reduced by the number of labelled windows; exactly 0 (with a graph) when none is labelled. Labels of
    unlabelled windows are never read, so they may hold any placeholder (e.g. -1).
    """
    B, C = logits.shape
    lab = has_label.reshape(-1) > 0.5
    if lab.shape[0] != B:
        raise ValueError(f"fault_loss: has_label must be (B,) with B={B}, got {tuple(has_label.shape)}")
    if multilabel:
        if y.shape != (B, C):
            raise ValueError(f"fault_loss (multilabel): y must be (B, C) = {(B, C)} float, got {tuple(y.shape)}")
        y_safe = torch.where(lab[:, None], y.to(logits.dtype), torch.zeros_like(logits))
        per = nn.functional.binary_cross_entropy_with_logits(logits, y_safe, reduction="none").mean(dim=1)  # (B,)
    else:
        if y.shape != (B,) or y.dtype not in (torch.int64, torch.int32):
            msg = f"fault_loss (multiclass): y must be ({B},) int64 class indices, got {tuple(y.shape)} {y.dtype}"
            raise ValueError(msg)
        y_safe = torch.where(lab, y.long(), torch.zeros_like(y, dtype=torch.long))
        per = nn.functional.cross_entropy(logits, y_safe, reduction="none")  # (B,)
    w = lab.to(per.dtype)
    num_w = w if sample_weight is None else w * _per_sample(sample_weight, per)
    per = torch.where(lab, per, torch.zeros_like(per))
    return (per * num_w).sum() / w.sum().clamp_min(1.0)


def rul_loss(
    rul_hat: torch.Tensor,
    rul: torch.Tensor,
    has_rul: torch.Tensor,
    cap: float,
    delta: float,
    sample_weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """Huber loss of a RUL prediction (B,) against the piecewise-linear target min(rul, cap), both divided by
    `cap`, on the windows with a target (has_rul > 0.5) only; reduced by their number, exactly 0 when there is
    none. Targets of other windows are never read (they may hold NaN)."""
    if not cap > 0:
        raise ValueError(f"rul_loss: cap must be > 0, got {cap}")
    rul_hat = rul_hat.reshape(-1)
    B = rul_hat.shape[0]
    if rul.shape != (B,) or has_rul.shape != (B,):
        raise ValueError(f"rul_loss: rul and has_rul must be ({B},), got {tuple(rul.shape)} and {tuple(has_rul.shape)}")
    m = (has_rul > 0.5).to(rul_hat.dtype)
    target = torch.clamp(torch.nan_to_num(rul.to(rul_hat.dtype)), max=cap)
    return masked_huber_loss(target / cap, rul_hat / cap, m, delta, eps=1.0, sample_weight=sample_weight)


def regime_weights(Flags: torch.Tensor, weight_map: dict[int, float]) -> torch.Tensor:
    """Per-sample loss weights (B,) from the flags at the window's last step.

    A sample's weight is the smallest weight among the mapped flags active (> 0.5) at its last step, and 1 when
    none of them is active. Flags not in `weight_map` do not matter. The last step is used because it is the
    regime the window's latest reconstruction and forecast belong to.
    """
    if Flags.dim() != 3:
        raise ValueError(f"regime_weights: Flags must be (B, L, R), got {tuple(Flags.shape)}")
    B, _, R = Flags.shape
    w = torch.ones(B, dtype=torch.float32, device=Flags.device)
    if not weight_map:
        return w
    bad = sorted(i for i in weight_map if not 0 <= int(i) < R)
    if bad:
        raise ValueError(f"regime_weights: flag indices {bad} out of range for R={R}")
    negative = {i: v for i, v in weight_map.items() if not v >= 0}
    if negative:
        raise ValueError(f"regime_weights: weights must be >= 0, got {negative}")
    last = Flags[:, -1, :] > 0.5  # (B, R)
    best = torch.full((B,), float("inf"), dtype=torch.float32, device=Flags.device)
    for idx, weight in weight_map.items():
        cand = torch.where(last[:, int(idx)], torch.tensor(float(weight), device=Flags.device), best)
        best = torch.minimum(best, cand)
    return torch.where(torch.isinf(best), w, best)
