"""The multitask causal TCN: one backbone, a reconstruction head and optional forecast / fault / RUL heads.

Contract
- Input `X_in` is (B, L, F_in) float32 with F_in = 3F + R, concatenated as [X_corrupt, M_miss, M_mask, Flags]
  (see `trainer.model.masking.build_model_input`). The model does not know about training streams or scoring masks;
  it only consumes X_in.
- Causal: every convolution pads on the left only and layer norm normalises over channels at one time step, so
  the hidden state, the reconstruction and the forecast at time t depend on inputs at times <= t only. The fault
  head pools over the whole window by design (a window-level label).
- Receptive field: each residual block holds TWO causal convs, so an output sees
  `receptive_field(k, dilations) = 1 + 2 (k - 1) sum(dilations)` steps, the last one included. The spec's
  `1 + (k-1) sum(d)` describes one conv per block; this is the network actually built here.
- Heads return raw values and logits; `predict_proba_fault` turns fault logits into probabilities.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import weight_norm

from scada_tcn.trainer.config.choices import Norm
from scada_tcn.trainer.model.geometry import receptive_field, resolve_dilations

__all__ = [
    "NORMS",
    "ModelConfig",
    "CausalConv1d",
    "ChannelLayerNorm",
    "ResidualBlock",
    "TCNBackbone",
    "ReconHead",
    "ForecastHead",
    "FaultHead",
    "RULHead",
    "ModelOutputs",
    "MultiTaskTCN",
    "pairwise_sum",
    "predict_proba_fault",
    "strip_weight_norm",
    "receptive_field",
    "resolve_dilations",
]

NORMS = tuple(n.value for n in Norm)


@dataclass
class ModelConfig:
    """Everything needed to rebuild a `MultiTaskTCN`; stored as a plain dict in checkpoints (`to_dict`).

    F, R, K, C are the data dims (features, flags, forecast horizon, fault classes). `dilations` holds the
    resolved per-block dilations (`resolve_dilations`); left empty it becomes 1, 2, 4, ... of length
    `num_blocks`. A head hidden size of None means the head is a single Linear layer.
    """

    F: int
    R: int
    K: int
    C: int
    D: int = 64
    kernel_size: int = 3
    num_blocks: int = 4
    dilations: list[int] = field(default_factory=list)
    dropout: float = 0.1
    norm: str = "weight_norm"
    forecast_enabled: bool = True
    fault_enabled: bool = True
    fault_multilabel: bool = False
    rul_enabled: bool = False
    forecast_hidden: int | None = None
    fault_hidden: int | None = None
    rul_hidden: int | None = None
    rul_scale: float = 1.0  # the RUL head's output unit: it learns rul / rul_scale and returns rul (in steps)

    def __post_init__(self) -> None:
        if not self.dilations:
            self.dilations = resolve_dilations("powers_of_two", self.num_blocks)
        self.dilations = [int(d) for d in self.dilations]
        self.norm = str(self.norm)  # a plain string in checkpoints (they load with weights_only)
        problems = []
        if self.F < 1:
            problems.append(f"F must be >= 1, got {self.F}")
        if self.R < 0:
            problems.append(f"R must be >= 0, got {self.R}")
        if self.forecast_enabled and self.K < 1:
            problems.append(f"K must be >= 1 with the forecast head enabled, got {self.K}")
        if self.fault_enabled and self.C < (1 if self.fault_multilabel else 2):
            min_c = 1 if self.fault_multilabel else 2
            problems.append(f"C must be >= {min_c} with the fault head enabled, got {self.C}")
        if self.D < 1:
            problems.append(f"D must be >= 1, got {self.D}")
        if self.kernel_size < 1:
            problems.append(f"kernel_size must be >= 1, got {self.kernel_size}")
        if len(self.dilations) != self.num_blocks or any(d < 1 for d in self.dilations):
            problems.append(f"dilations must hold num_blocks={self.num_blocks} positive integers, got {self.dilations}")
        if not 0.0 <= self.dropout < 1.0:
            problems.append(f"dropout must be in [0, 1), got {self.dropout}")
        if self.norm not in NORMS:
            problems.append(f"norm: unknown {self.norm!r}; allowed {list(NORMS)}")
        for name in ("forecast_hidden", "fault_hidden", "rul_hidden"):
            h = getattr(self, name)
            if h is not None and h < 1:
                problems.append(f"{name} must be None or >= 1, got {h}")
        if not self.rul_scale > 0:
            problems.append(f"rul_scale must be > 0, got {self.rul_scale}")
        if problems:
            raise ValueError("invalid ModelConfig: " + "; ".join(problems))

    @property
    def F_in(self) -> int:
        return 3 * self.F + self.R

    @property
    def receptive_field(self) -> int:
        return receptive_field(self.kernel_size, self.dilations)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"ModelConfig.from_dict: unknown keys {unknown}; allowed keys: {sorted(known)}")
        return cls(**d)


# ----------------------------------------------------------------------------------------------- backbone


class CausalConv1d(nn.Module):
    """Conv1d over (B, C_in, L) -> (B, C_out, L) that pads (k-1)*dilation steps on the left only."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int, dilation: int, bias: bool = True) -> None:
        super().__init__()
        self.left_pad = (kernel_size - 1) * dilation
        self.conv = nn.Conv1d(in_ch, out_ch, kernel_size, dilation=dilation, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(nn.functional.pad(x, (self.left_pad, 0)))


class ChannelLayerNorm(nn.Module):
    """LayerNorm over the channels of each time step of (B, C, L): no mixing across time, so it stays causal."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.ln = nn.LayerNorm(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ln(x.transpose(1, 2)).transpose(1, 2)


class ResidualBlock(nn.Module):
    """Two causal convs (each conv -> norm -> ReLU -> dropout) plus a residual, then ReLU.

    The residual goes through a 1x1 conv when `in_ch != out_ch` (the first block, F_in -> D).
    """

    def __init__(
        self, in_ch: int, out_ch: int, kernel_size: int, dilation: int, dropout: float, norm: str = "none"
    ) -> None:
        super().__init__()
        if norm not in NORMS:
            raise ValueError(f"ResidualBlock: unknown norm {norm!r}; allowed {list(NORMS)}")
        self.conv1 = CausalConv1d(in_ch, out_ch, kernel_size, dilation)
        self.conv2 = CausalConv1d(out_ch, out_ch, kernel_size, dilation)
        if norm == "weight_norm":
            weight_norm(self.conv1.conv)
            weight_norm(self.conv2.conv)
        self.norm1 = ChannelLayerNorm(out_ch) if norm == "layer_norm" else nn.Identity()
        self.norm2 = ChannelLayerNorm(out_ch) if norm == "layer_norm" else nn.Identity()
        self.dropout = nn.Dropout(dropout)
        self.proj = nn.Conv1d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (B, C_in, L)
        y = self.dropout(torch.relu(self.norm1(self.conv1(x))))  # (B, C_out, L)
        y = self.dropout(torch.relu(self.norm2(self.conv2(y))))
        return torch.relu(y + self.proj(x))


class TCNBackbone(nn.Module):
    """Stack of residual blocks, one per dilation: (B, L, F_in) -> H (B, L, D)."""

    def __init__(
        self, F_in: int, D: int, kernel_size: int, dilations: list[int], dropout: float, norm: str = "none"
    ) -> None:
        super().__init__()
        self.F_in = F_in
        self.kernel_size = kernel_size
        self.dilations = list(dilations)
        self.receptive_field = receptive_field(kernel_size, self.dilations)
        chans = [F_in] + [D] * len(self.dilations)
        self.blocks = nn.ModuleList(
            ResidualBlock(chans[i], chans[i + 1], kernel_size, d, dropout, norm) for i, d in enumerate(self.dilations)
        )

    def forward(self, x_in: torch.Tensor) -> torch.Tensor:
        h = x_in.transpose(1, 2)  # (B, F_in, L)
        for block in self.blocks:
            h = block(h)  # (B, D, L)
        return h.transpose(1, 2)  # (B, L, D)


# ----------------------------------------------------------------------------------------------- heads


def _mlp(d_in: int, d_out: int, hidden: int | None) -> nn.Module:
    if hidden is None:
        return nn.Linear(d_in, d_out)
    return nn.Sequential(nn.Linear(d_in, hidden), nn.ReLU(), nn.Linear(hidden, d_out))


class ReconHead(nn.Module):
    """Timewise Linear: H (B, L, D) -> X_hat (B, L, F)."""

    def __init__(self, D: int, F: int) -> None:
        super().__init__()
        self.proj = nn.Linear(D, F)

    def forward(self, H: torch.Tensor) -> torch.Tensor:
        return self.proj(H)


class ForecastHead(nn.Module):
    """Summary of the last step, MLP D -> K*F: H (B, L, D) -> Y_hat (B, K, F)."""

    def __init__(self, D: int, K: int, F: int, summary: str = "last", hidden: int | None = None) -> None:
        super().__init__()
        if summary != "last":
            raise ValueError(f"ForecastHead: unknown summary {summary!r}; allowed ['last']")
        self.K, self.F = K, F
        self.mlp = _mlp(D, K * F, hidden)

    def forward(self, H: torch.Tensor) -> torch.Tensor:
        # the last step is the only one whose history is the whole window, and it is causal by construction
        return self.mlp(H[:, -1, :]).reshape(-1, self.K, self.F)  # (B, K, F)


class FaultHead(nn.Module):
    """Mean pooling over L, then an MLP: H (B, L, D) -> logits (B, C) (softmax or sigmoid applied outside)."""

    def __init__(self, D: int, C: int, pooling: str = "mean", hidden: int | None = None) -> None:
        super().__init__()
        if pooling != "mean":
            raise ValueError(f"FaultHead: unknown pooling {pooling!r}; allowed ['mean']")
        self.mlp = _mlp(D, C, hidden)

    def forward(self, H: torch.Tensor) -> torch.Tensor:
        return self.mlp(pairwise_sum(H, 1) / H.shape[1])  # (B, C): the mean over time, batch-invariant


class RULHead(nn.Module):
    """Remaining useful life from the last step: H (B, L, D) -> (B, 1), in steps.

    The MLP works at the scale of rul / `scale` (e.g. the target cap), which keeps its output near 1; the
    multiplication is part of the graph, so an exported model returns steps too."""

    def __init__(self, D: int, hidden: int | None = None, scale: float = 1.0) -> None:
        super().__init__()
        self.mlp = _mlp(D, 1, hidden)
        self.scale = float(scale)

    def forward(self, H: torch.Tensor) -> torch.Tensor:
        return self.mlp(H[:, -1, :]) * self.scale  # (B, 1)


# ----------------------------------------------------------------------------------------------- model


@dataclass
class ModelOutputs:
    """Outputs of one forward pass; a field is None unless it was requested and its head exists."""

    X_hat: torch.Tensor | None = None  # (B, L, F)
    Y_hat: torch.Tensor | None = None  # (B, K, F)
    fault_logits: torch.Tensor | None = None  # (B, C)
    rul: torch.Tensor | None = None  # (B, 1)


class MultiTaskTCN(nn.Module):
    """Backbone + reconstruction head (always built) + the heads that `cfg` enables."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.backbone = TCNBackbone(cfg.F_in, cfg.D, cfg.kernel_size, cfg.dilations, cfg.dropout, cfg.norm)
        self.recon_head = ReconHead(cfg.D, cfg.F)
        self.forecast_head = (
            ForecastHead(cfg.D, cfg.K, cfg.F, hidden=cfg.forecast_hidden) if cfg.forecast_enabled else None
        )
        self.fault_head = FaultHead(cfg.D, cfg.C, hidden=cfg.fault_hidden) if cfg.fault_enabled else None
        self.rul_head = RULHead(cfg.D, hidden=cfg.rul_hidden, scale=cfg.rul_scale) if cfg.rul_enabled else None

    @property
    def receptive_field(self) -> int:
        return self.backbone.receptive_field

    def forward(
        self,
        X_in: torch.Tensor,
        return_recon: bool = True,
        return_forecast: bool = True,
        return_fault: bool = True,
        return_rul: bool = False,
    ) -> ModelOutputs:
        """X_in (B, L, 3F+R) -> ModelOutputs; requested outputs of heads the config disables stay None."""
        if X_in.dim() != 3 or X_in.shape[-1] != self.cfg.F_in:
            msg = (
                f"MultiTaskTCN expects X_in of shape (B, L, F_in={self.cfg.F_in}) = (B, L, 3F+R) with "
                f"F={self.cfg.F}, R={self.cfg.R}; got {tuple(X_in.shape)}"
            )
            raise ValueError(msg)
        H = self.backbone(X_in)  # (B, L, D)
        out = ModelOutputs()
        if return_recon:
            out.X_hat = self.recon_head(H)
        if return_forecast and self.forecast_head is not None:
            out.Y_hat = self.forecast_head(H)
        if return_fault and self.fault_head is not None:
            out.fault_logits = self.fault_head(H)
        if return_rul and self.rul_head is not None:
            out.rul = self.rul_head(H)
        return out


def pairwise_sum(x: torch.Tensor, dim: int) -> torch.Tensor:
    """Sum over `dim` as a fixed tree of elementwise adds (halves, zero-padded to a power of two).

    A reduction op (torch `sum`, ONNX ReduceSum) may order its additions by the shape of the whole tensor, so a
    window's score would change in the last bits with the batch it is computed in (onnxruntime: up to 1.2e-7 on
    s_now between batch 1 and 64). Elementwise adds in a fixed tree give each window the same bits whatever batch
    it is in, in torch and in the exported graph alike, so a published score never depends on batching.
    """
    dim = dim % x.dim()
    n = x.shape[dim]
    size = 1 << max(n - 1, 0).bit_length()
    if size != n:
        pad = list(x.shape)
        pad[dim] = size - n
        x = torch.cat([x, torch.zeros(pad, dtype=x.dtype, device=x.device)], dim=dim)
    while size > 1:
        size //= 2
        x = x.narrow(dim, 0, size) + x.narrow(dim, size, size)
    return x.squeeze(dim)


def predict_proba_fault(logits: torch.Tensor, multilabel: bool) -> torch.Tensor:
    """Fault logits (B, C) -> probabilities: sigmoid per class if multilabel, else softmax over classes."""
    return torch.sigmoid(logits) if multilabel else torch.softmax(logits, dim=-1)


def strip_weight_norm(model: nn.Module) -> nn.Module:
    """Bake weight-norm parametrizations into plain weights, in place; outputs are unchanged.

    After this the weight is a stored tensor, so an exported graph no longer recomputes g * v / ||v|| per call.
    Training afterwards would optimise the plain weight, so strip only a copy meant for export or inference.
    """
    for module in model.modules():
        if parametrize.is_parametrized(module, "weight"):
            parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)
    return model
