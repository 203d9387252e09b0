"""The step graph: per-signal scoring of one new step per turbine, with the layers' past as state.

    StepModule(signals): X, M_miss (B, F), Flags (B, R), tap_0_0 .. tap_{n-1}_{k-2} (B P, C_i)[, h_sum]
        -> resid, pred (B, F)[, Y_hat (B, K, F)][, fault_prob (B, C)][, rul (B,)], col_0 .. col_{n-1}[, h]

A turbine is P = G + 1 rows of the model call: pass 0 hides nothing (`CleanPass`), pass g + 1 hides group g, as
`SignalModule` does over a whole window. Each causal convolution of the backbone (two per residual block; kernel
k, dilation d) needs its input at t - (k - 1) d, ..., t - d, t. The edge keeps the last S = (k - 1) d inputs of
each convolution in a ring (`runtime.stream`) and passes the k - 1 past ones, `tap_i_j` (B P, C_i) = the input at
t - (k - 1 - j) d, as graph inputs: each is one contiguous block of a time-major ring, handed to onnxruntime
without a copy. The graph runs the convolution as k matrix products, one per tap, and returns each convolution's
new input column `col_i` (B P, C_i), which the edge stores in its ring. Layout matters more than arithmetic here:
channel-major rings gathered inside the graph cost 47 us per turbine-step at 1000 turbines (one core), taps as
inputs and squeezes instead of strided selects 9.6 us, 60 % of it the matrix products. Every layer runs on the
step's rows (B P, channels): the first block's 1 x 1 projection is a matrix product (an ONNX Conv on (rows, C, 1)
took 14 % of the graph), and a norm runs in its step form (`_norm`), with no reshapes around it.

Equality with the window graph: a ring of zeros is the window graph's left zero padding, so stepping a window's L
steps from zeros reproduces the window graph at every position, and with the receptive field RF <= L the newest
position of a window depends on its last RF steps only. Hence the step graph's resid, pred, Y_hat and rul at t
equal the window graph's for the window ending at t, whatever the stream saw before (float rounding aside), and a
ring rebuilt by stepping the last L steps from zeros holds exactly the values the uninterrupted stream holds.

The fault head pools the clean hidden state over the last L steps: the edge keeps a ring of the L - 1 before t
(column tau mod (L - 1)) and passes its sum by `pairwise_sum`'s tree, `h_sum` (B, D), kept up to date a column at
a time (`runtime.ring_sum`: the same bits as summing the ring, without reading it at every step); the graph adds
the new one and returns it, `h`. Before the stream has L steps the ring holds zeros, like the window graph's
padding; after that the pool sees the stream's own history where the window graph sees padding in its first
RF - 1 positions, so fault_prob is the stream's own (not the window graph's).
"""

from __future__ import annotations

import torch
from torch import nn

from scada_tcn.trainer.model.masking import apply_mask
from scada_tcn.trainer.model.network import ChannelLayerNorm, pairwise_sum, predict_proba_fault
from scada_tcn.trainer.model.scoring import pass_inputs
from scada_tcn.trainer.model.signals import SignalModule

__all__ = ["StepModule"]


class StepModule(nn.Module):
    """The step graph of a per-signal bundle; see the module docstring."""

    def __init__(self, signals: SignalModule) -> None:
        super().__init__()
        self.signals = signals
        model = signals.model
        cfg = model.cfg
        if not signals.streams:
            raise ValueError(
                f"StepModule: receptive field {model.receptive_field} > L={signals.L}: the newest position of a "
                "window would see zero padding that a stream does not have; such a model scores windows only"
            )
        self.F, self.R, self.L, self.D = signals.F, signals.R, signals.L, cfg.D
        hide = signals.hide[:, 0, :]  # (G, F)
        self.P = hide.shape[0] + 1
        self.register_buffer("hide", torch.cat([torch.zeros(1, self.F), hide]), persistent=False)  # (P, F)
        self.convs: list[tuple[int, int, int, int]] = []  # (channels, steps S, dilation, kernel) per convolution
        weights = []
        for block in model.backbone.blocks:
            for conv in (block.conv1.conv, block.conv2.conv):
                out_ch, in_ch, k = conv.weight.shape
                self.convs.append((in_ch, (k - 1) * conv.dilation[0], conv.dilation[0], k))
                weights.append(conv.weight.detach().permute(2, 1, 0).contiguous())
        for i, w in enumerate(weights):  # (k, C, O): w[j] = tap j (j = k - 1: the newest step)
            self.register_buffer(f"w{i}", w, persistent=False)
        for b, block in enumerate(model.backbone.blocks):  # the 1 x 1 residual projections as (C, O) matrices
            if not isinstance(block.proj, nn.Identity):
                self.register_buffer(f"proj{b}", block.proj.weight.detach()[:, :, 0].t().contiguous(), False)
        heads = (("Y_hat", cfg.forecast_enabled), ("fault_prob", cfg.fault_enabled), ("rul", cfg.rul_enabled))
        self.heads = tuple(n for n, on in heads if on)
        self.ring = cfg.fault_enabled
        n = len(self.convs)
        taps = (f"tap_{i}_{j}" for i, (_, _, _, k) in enumerate(self.convs) for j in range(k - 1))
        self.input_names = ("X", "M_miss", "Flags", *taps, *(("h_sum",) * self.ring))
        self.output_names = ("resid", "pred", *self.heads, *(f"col_{i}" for i in range(n)), *(("h",) * self.ring))

    def _conv(self, i: int, conv: nn.Conv1d, x: torch.Tensor, taps: list[torch.Tensor]) -> torch.Tensor:
        w = getattr(self, f"w{i}")
        out = x @ w[len(taps)] + conv.bias
        for j, tap in enumerate(taps):  # tap j: the input at t - (k - 1 - j) d
            out = out + tap @ w[j]
        return out

    def forward(self, X: torch.Tensor, M_miss: torch.Tensor, Flags: torch.Tensor, *state):
        B, F = X.shape
        P, sig = self.P, self.signals
        taps, at = [], 0
        for _, _, _, k in self.convs:
            taps.append(list(state[at : at + k - 1]))
            at += k - 1
        present = (M_miss > 0.5).to(torch.float32)
        X0 = apply_mask(X, present, sig.fill_value)
        # the window passes' inputs at one step; pass 0 hides nothing (its mask is all ones): the clean pass
        x_in, _ = pass_inputs(X0.unsqueeze(1), present.unsqueeze(1), self.hide.unsqueeze(1), Flags.unsqueeze(1),
                              sig.fill_value)  # fmt: skip
        x_in = x_in[:, 0]  # (B P, F_in)
        h, cols = x_in, []
        for b, block in enumerate(sig.model.backbone.blocks):
            cols.append(h)
            y = torch.relu(_norm(block.norm1, self._conv(2 * b, block.conv1.conv, h, taps[2 * b])))
            cols.append(y)
            y = torch.relu(_norm(block.norm2, self._conv(2 * b + 1, block.conv2.conv, y, taps[2 * b + 1])))
            res = h if isinstance(block.proj, nn.Identity) else h @ getattr(self, f"proj{b}") + block.proj.bias
            h = torch.relu(y + res)
        model, cfg = sig.model, sig.model.cfg
        x_hat = model.recon_head(h).reshape(B, P, F)
        pred = (x_hat[:, 1:] * sig.own.unsqueeze(0)).sum(dim=1)  # (B, F): one non-zero term per scored feature
        resid = sig.residual(X, M_miss, pred)
        clean = h.reshape(B, P, self.D)[:, 0]  # (B, D)
        found: dict[str, torch.Tensor] = {}
        if cfg.forecast_enabled:
            found["Y_hat"] = model.forecast_head.mlp(clean).reshape(B, cfg.K, F)
        if cfg.fault_enabled:
            pooled = (state[-1] + clean) / self.L  # the ring's L - 1 (summed by the edge) and this step
            found["fault_prob"] = predict_proba_fault(model.fault_head.mlp(pooled), cfg.fault_multilabel)
        if cfg.rul_enabled:
            found["rul"] = (model.rul_head.mlp(clean) * model.rul_head.scale)[:, 0]
        return (resid, pred, *(found[n] for n in self.heads), *cols, *([clean] if self.ring else []))

    def example(self, B: int = 2) -> tuple[torch.Tensor, ...]:
        """Inputs of B turbines with random taps (for tracing and tests)."""
        g = torch.Generator().manual_seed(0)
        M = (torch.rand(B, self.F, generator=g) > 0.2).float()
        taps = [torch.randn(B * self.P, c, generator=g) for c, _, _, k in self.convs for _ in range(k - 1)]
        h = [pairwise_sum(torch.randn(B, self.L - 1, self.D, generator=g), 1)] if self.ring else []
        flags = (torch.rand(B, self.R, generator=g) > 0.5).float()
        return (torch.randn(B, self.F, generator=g) * M, M, flags, *taps, *h)


def _norm(norm: nn.Module, y: torch.Tensor) -> torch.Tensor:
    """A block's norm on one step's (rows, channels): none for `nn.Identity` (no reshapes left in the graph: a
    small farm's call is mostly per-node overhead), the LayerNorm itself for `ChannelLayerNorm`."""
    if isinstance(norm, nn.Identity):
        return y
    if isinstance(norm, ChannelLayerNorm):
        return norm.ln(y)
    raise TypeError(f"StepModule: no step form for the norm {type(norm).__name__}")
