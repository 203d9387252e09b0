"""The step graph's torch module against the window module it streams, for each norm a backbone may have.

The export checks the step graph on real data for the model it exports; this covers the norms and the residual
projection of models the fixtures do not train (`StepModule` runs one step's rows, (B x P, channels), so each
norm has a step form of its own)."""

from __future__ import annotations

import pytest
import torch

from scada_tcn.trainer.model.network import ModelConfig, MultiTaskTCN, pairwise_sum
from scada_tcn.trainer.model.signals import SignalModule
from scada_tcn.trainer.model.streaming import StepModule

L, F, R = 32, 5, 2
GROUP_OF = (0, 0, 1, 1, -1)


def _stream(step: StepModule, X: torch.Tensor, M: torch.Tensor, Fl: torch.Tensor) -> list[dict[str, torch.Tensor]]:
    """Step (B, T, ...) series from zero state, each convolution's past and the fault head's pool kept here as
    the edge keeps them (taps of the stored columns, the pool's sum by `pairwise_sum`)."""
    B, T, _ = X.shape
    cols: list[list[torch.Tensor]] = [[] for _ in step.convs]
    hs: list[torch.Tensor] = []
    outs = []
    for t in range(T):
        taps = [cols[i][t - (k - 1 - j) * d] if t - (k - 1 - j) * d >= 0 else torch.zeros(B * step.P, c)
                for i, (c, _, d, k) in enumerate(step.convs) for j in range(k - 1)]  # fmt: skip
        ring = torch.zeros(B, L - 1, step.D)
        for tau in range(max(0, t - L + 1), t):
            ring[:, tau % (L - 1)] = hs[tau]
        with torch.no_grad():
            out = dict(zip(step.output_names, step(X[:, t], M[:, t], Fl[:, t], *taps, pairwise_sum(ring, 1))))
        for i, c in enumerate(cols):
            c.append(out[f"col_{i}"])
        hs.append(out["h"])
        outs.append(out)
    return outs


@pytest.mark.parametrize("norm", ["none", "weight_norm", "layer_norm"])
def test_each_step_equals_the_window_ending_there(norm):
    """resid and pred at every step t >= L - 1 equal the window module's for the window ending at t (the first
    block projects F_in = 3F + R inputs to D channels: its 1 x 1 projection is a matrix product in the step)."""
    torch.manual_seed(0)
    cfg = ModelConfig(F=F, R=R, K=2, C=3, D=8, num_blocks=3, dropout=0.0, norm=norm)
    model = MultiTaskTCN(cfg).eval()
    if norm == "layer_norm":  # away from LayerNorm's initial identity, so a wrong axis shows
        for block in model.backbone.blocks:
            for ln in (block.norm1.ln, block.norm2.ln):
                torch.nn.init.normal_(ln.weight, 1.0, 0.5)
                torch.nn.init.normal_(ln.bias, 0.0, 0.5)
    assert model.receptive_field <= L
    window = SignalModule(model, L, GROUP_OF).eval()
    step = StepModule(window).eval()
    B, T = 3, L + 6
    X = torch.randn(B, T, F)
    M = (torch.rand(B, T, F) > 0.15).float()
    Fl = (torch.rand(B, T, R) > 0.7).float()
    outs = _stream(step, X * M, M, Fl)
    for t in range(L - 1, T):
        with torch.no_grad():
            resid, pred = window(X[:, t - L + 1 : t + 1] * M[:, t - L + 1 : t + 1], M[:, t - L + 1 : t + 1],
                                 Fl[:, t - L + 1 : t + 1])  # fmt: skip
        torch.testing.assert_close(outs[t]["resid"], resid, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(outs[t]["pred"], pred, atol=1e-5, rtol=1e-4)
