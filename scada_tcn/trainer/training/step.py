"""One training step with the spec's two streams (spec F step), and the same math without gradients for validation.

Stream A, masked reconstruction: M_mask = sample_mask(M_miss, p_mask), X_corrupt = apply_mask(X, M_mask, c),
X_in = [X_corrupt, M_miss, M_mask, Flags], L_rec on the hidden-and-present elements only. With `p_group` > 0
that share of the windows hides one whole feature group instead (`sample_group_mask`), which teaches the
model to predict a signal from the rest of the turbine, as the "group" scoring masks require.
Stream B, clean forecast + fault + RUL: M_mask = ones, L_pred on present future targets, L_fault on labelled
windows, L_rul on windows with a RUL target (`trainer.training.losses.rul_loss`).
Total: lambda_recon * L_rec + lambda_pred * L_pred + lambda_fault * L_fault + lambda_rul * L_rul.

Batch dict (tensors on one device): X (B, L, F), M_miss (B, L, F), Flags (B, L, R), Y_true (B, K, F),
M_future (B, K, F), y ((B,) int64 or (B, C) float), has_label (B,). Y_true / M_future are needed only with the
forecast head, y / has_label only with the fault head (without them L_fault is 0 and a warning is issued),
rul (B,) / has_rul (B,) only with the RUL head (required then).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import torch
from torch import nn

from scada_tcn.trainer.model.masking import (
    apply_mask,
    build_model_input,
    fill_missing,
    mask_stats,
    sample_group_mask,
    sample_mask,
)
from scada_tcn.trainer.model.network import MultiTaskTCN
from scada_tcn.trainer.training.losses import fault_loss, forecast_loss, recon_loss, regime_weights, rul_loss

__all__ = ["TrainStepConfig", "train_step", "eval_losses"]


@dataclass
class TrainStepConfig:
    """The knobs of one step. `regime_weight_map` maps a flag index to the loss weight while it is active."""

    p_mask: float = 0.15
    fill_value: float = 0.0
    huber_delta: float = 1.0
    lambda_recon: float = 1.0
    lambda_pred: float = 1.0
    lambda_fault: float = 1.0
    forecast_enabled: bool = True
    fault_enabled: bool = True
    fault_multilabel: bool = False
    rul_enabled: bool = False
    lambda_rul: float = 1.0
    rul_cap: float = 125.0  # RUL target min(rul, rul_cap); the loss works on rul / rul_cap
    regime_weight_map: dict[int, float] = field(default_factory=dict)
    amp: bool = False
    p_group: float = 0.0  # share of Stream A windows that hide one whole feature group instead of elements
    group_of: tuple[int, ...] = ()  # (F,) group index of each feature; required when p_group > 0
    group_index: torch.Tensor = field(init=False, repr=False)  # group_of as an int64 tensor, built once

    def __post_init__(self) -> None:
        problems = []
        if not 0.0 < self.p_mask < 1.0:
            problems.append(f"p_mask must be in (0, 1), got {self.p_mask}")
        if not self.huber_delta > 0:
            problems.append(f"huber_delta must be > 0, got {self.huber_delta}")
        if not 0.0 <= self.p_group <= 1.0:
            problems.append(f"p_group must be in [0, 1], got {self.p_group}")
        if self.p_group > 0 and not self.group_of:
            problems.append("p_group > 0 needs group_of, the group index of each feature")
        if not self.rul_cap > 0:
            problems.append(f"rul_cap must be > 0, got {self.rul_cap}")
        for name in ("lambda_recon", "lambda_pred", "lambda_fault", "lambda_rul"):
            if not getattr(self, name) >= 0:
                problems.append(f"{name} must be >= 0, got {getattr(self, name)}")
        if problems:
            raise ValueError("invalid TrainStepConfig: " + "; ".join(problems))
        self.group_index = torch.tensor(self.group_of, dtype=torch.int64)


def _require(batch: dict[str, torch.Tensor], key: str, why: str) -> torch.Tensor:
    if batch.get(key) is None:
        raise ValueError(f"batch has no {key!r}, which {why}; batch keys: {sorted(batch)}")
    return batch[key]


def _check_against_model(model: MultiTaskTCN, cfg: TrainStepConfig) -> None:
    m = model.cfg
    for name, want, have in (
        ("forecast_enabled", cfg.forecast_enabled, m.forecast_enabled),
        ("fault_enabled", cfg.fault_enabled, m.fault_enabled),
        ("rul_enabled", cfg.rul_enabled, m.rul_enabled),
    ):
        if want and not have:
            raise ValueError(f"TrainStepConfig.{name}=True but the model was built without that head")
    if cfg.fault_enabled and cfg.fault_multilabel != m.fault_multilabel:
        msg = (
            f"TrainStepConfig.fault_multilabel={cfg.fault_multilabel} != "
            f"ModelConfig.fault_multilabel={m.fault_multilabel}"
        )
        raise ValueError(msg)


def _losses(
    model: MultiTaskTCN, batch: dict[str, torch.Tensor], cfg: TrainStepConfig, generator: torch.Generator | None
) -> tuple[torch.Tensor, dict[str, float]]:
    """Both streams and the weighted total; shared by train_step and eval_losses so they cannot drift."""
    _check_against_model(model, cfg)
    M_miss = _require(batch, "M_miss", "every step needs")
    Flags = _require(batch, "Flags", "every step needs")
    X = fill_missing(_require(batch, "X", "every step needs"), M_miss, cfg.fill_value)
    w = regime_weights(Flags, cfg.regime_weight_map) if cfg.regime_weight_map else None
    ones = torch.ones_like(M_miss)
    zero = X.new_zeros(())

    # Stream A: masked reconstruction
    M_mask = sample_mask(M_miss, cfg.p_mask, generator)
    if cfg.p_group > 0:
        M_mask = sample_group_mask(M_miss, M_mask, cfg.group_index, cfg.p_group, generator)
    X_in_A = build_model_input(apply_mask(X, M_mask, cfg.fill_value), M_miss, M_mask, Flags)  # (B, L, 3F+R)
    # Stream B: clean input for forecast and fault
    X_in_B = build_model_input(X, M_miss, ones, Flags)
    with torch.autocast(device_type=X.device.type, enabled=cfg.amp):
        out_A = model(X_in_A, return_recon=True, return_forecast=False, return_fault=False)
        out_B = model(
            X_in_B,
            return_recon=False,
            return_forecast=cfg.forecast_enabled,
            return_fault=cfg.fault_enabled,
            return_rul=cfg.rul_enabled,
        )
    # losses in float32 whatever the autocast dtype
    L_rec = recon_loss(X, out_A.X_hat.float(), M_mask, M_miss, cfg.huber_delta, sample_weight=w)

    L_pred = zero
    if cfg.forecast_enabled:
        Y_true = _require(batch, "Y_true", "the forecast head needs")
        M_future = _require(batch, "M_future", "the forecast head needs (M_miss of the K future steps)")
        L_pred = forecast_loss(Y_true, out_B.Y_hat.float(), M_future, cfg.huber_delta, sample_weight=w)

    L_fault = zero
    if cfg.fault_enabled:
        if batch.get("y") is None or batch.get("has_label") is None:
            warnings.warn("fault head enabled but the batch has no 'y'/'has_label': fault loss set to 0", stacklevel=3)
        else:
            L_fault = fault_loss(
                out_B.fault_logits.float(), batch["y"], batch["has_label"], cfg.fault_multilabel, sample_weight=w
            )

    L_rul = zero
    if cfg.rul_enabled:
        rul = _require(batch, "rul", "the RUL head needs")
        has_rul = _require(batch, "has_rul", "the RUL head needs")
        L_rul = rul_loss(out_B.rul.float(), rul, has_rul, cfg.rul_cap, cfg.huber_delta, sample_weight=w)

    total = cfg.lambda_recon * L_rec + cfg.lambda_pred * L_pred + cfg.lambda_fault * L_fault + cfg.lambda_rul * L_rul
    logs = {
        "recon": float(L_rec.detach()),
        "pred": float(L_pred.detach()),
        "fault": float(L_fault.detach()),
        "rul": float(L_rul.detach()),
        **mask_stats(M_mask, M_miss),
        "batch_size": float(X.shape[0]),
    }
    return total, logs


def train_step(
    model: MultiTaskTCN,
    batch: dict[str, torch.Tensor],
    cfg: TrainStepConfig,
    optimizer: torch.optim.Optimizer,
    generator: torch.Generator | None,
    scaler: torch.amp.GradScaler | None = None,
    grad_clip: float | None = None,
) -> dict[str, float]:
    """One optimisation step. Returns floats: loss, recon, pred, fault, rul, mask_rate, n_present, n_masked, batch_size.

    `scaler` is an AMP GradScaler (fp16 on CUDA); with `grad_clip` the gradients are unscaled before clipping.
    """
    model.train()
    total, logs = _losses(model, batch, cfg, generator)
    optimizer.zero_grad(set_to_none=True)
    if scaler is not None:
        scaler.scale(total).backward()
        if grad_clip is not None:
            scaler.unscale_(optimizer)
            nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        scaler.step(optimizer)
        scaler.update()
    else:
        total.backward()
        if grad_clip is not None:
            nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        optimizer.step()
    return {"loss": float(total.detach()), **logs}


def eval_losses(
    model: MultiTaskTCN, batch: dict[str, torch.Tensor], cfg: TrainStepConfig, generator: torch.Generator | None
) -> dict[str, float]:
    """The train_step losses in eval mode without gradients (pass a fixed-seed generator for repeatable
    validation masks); the model's mode is restored afterwards."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            total, logs = _losses(model, batch, cfg, generator)
    finally:
        model.train(was_training)
    return {"loss": float(total.detach()), **logs}
