"""trainer.model.network: causality, receptive field, shapes, config validation, weight-norm stripping."""

from __future__ import annotations

import copy

import pytest
import torch

from scada_tcn.trainer.model.network import (
    NORMS,
    CausalConv1d,
    ModelConfig,
    MultiTaskTCN,
    predict_proba_fault,
    receptive_field,
    resolve_dilations,
    strip_weight_norm,
)

F, R, K, C = 3, 2, 4, 3


def _model(norm: str = "none", **kw) -> MultiTaskTCN:
    torch.manual_seed(0)
    cfg = ModelConfig(F=F, R=R, K=K, C=C, D=12, kernel_size=3, num_blocks=3, dropout=0.2, norm=norm, **kw)
    return MultiTaskTCN(cfg).eval()


def _x_in(B: int, L: int, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, L, 3 * F + R, generator=g)


# ------------------------------------------------------------------------------------------- geometry


def test_resolve_dilations_and_receptive_field_formula():
    assert resolve_dilations("powers_of_two", 4) == [1, 2, 4, 8]
    assert resolve_dilations("explicit", 3, [1, 3, 9]) == [1, 3, 9]
    with pytest.raises(ValueError, match="dilation_list"):
        resolve_dilations("explicit", 3, [1, 2])
    with pytest.raises(ValueError, match="unknown"):
        resolve_dilations("fibonacci", 3)
    # two causal convs per block
    assert receptive_field(3, [1, 2, 4]) == 1 + 2 * 2 * 7
    assert receptive_field(5, [1, 3]) == 1 + 2 * 4 * 4
    assert _model().receptive_field == receptive_field(3, [1, 2, 4]) == 29


def test_causal_conv_pads_left_only():
    conv = CausalConv1d(2, 3, kernel_size=3, dilation=2)
    x = torch.randn(1, 2, 10)
    y = conv(x)
    assert y.shape == (1, 3, 10)
    x2 = x.clone()
    x2[..., 7] += 5.0
    y2 = conv(x2)
    assert torch.equal(y[..., :7], y2[..., :7])
    assert not torch.equal(y[..., 7], y2[..., 7])


@pytest.mark.parametrize("norm", NORMS)
def test_causality_backbone_and_recon_bit_identical(norm):
    model = _model(norm)
    L = 40
    x = _x_in(2, L)
    with torch.no_grad():
        H = model.backbone(x)
        X_hat = model(x).X_hat
        for t in (0, 1, 13, 28, L - 1):
            x2 = x.clone()
            x2[:, t, :] += torch.randn(2, 3 * F + R) * 3.0
            H2 = model.backbone(x2)
            X_hat2 = model(x2).X_hat
            assert torch.equal(H[:, :t], H2[:, :t]), f"backbone leaks the future at t={t}"
            assert torch.equal(X_hat[:, :t], X_hat2[:, :t]), f"recon head leaks the future at t={t}"
            assert not torch.equal(X_hat[:, t], X_hat2[:, t])


@pytest.mark.parametrize("norm", NORMS)
def test_impulse_reach_equals_receptive_field(norm):
    model = _model(norm)
    rf = model.receptive_field
    L, t0 = rf + 15, 4
    reach = 0
    with torch.no_grad():
        for seed in range(3):  # a ReLU can block one path; the max over a few inputs is the true reach
            x = _x_in(1, L, seed)
            x2 = x.clone()
            x2[:, t0, :] += 10.0
            changed = (model.backbone(x) != model.backbone(x2)).any(dim=-1)[0]  # (L,)
            assert not changed[:t0].any()
            reach = max(reach, int(changed.nonzero().max()) - t0 + 1)
    assert reach == rf == model.backbone.receptive_field


# ------------------------------------------------------------------------------------------- forward


def test_forward_shapes_and_requested_outputs():
    model = _model("weight_norm", rul_enabled=True)
    x = _x_in(5, 30)
    out = model(x)
    assert out.X_hat.shape == (5, 30, F)
    assert out.Y_hat.shape == (5, K, F)
    assert out.fault_logits.shape == (5, C)
    assert out.rul is None  # not requested by default
    out = model(x, return_recon=False, return_forecast=False, return_fault=False, return_rul=True)
    assert out.X_hat is None and out.Y_hat is None and out.fault_logits is None
    assert out.rul.shape == (5, 1)
    assert model.backbone(x).shape == (5, 30, 12)


def test_disabled_heads_are_absent_and_stay_none():
    torch.manual_seed(0)
    cfg = ModelConfig(F=F, R=R, K=0, C=0, D=8, num_blocks=2, forecast_enabled=False, fault_enabled=False)
    model = MultiTaskTCN(cfg)
    assert model.forecast_head is None and model.fault_head is None
    out = model(_x_in(2, 10))
    assert out.X_hat.shape == (2, 10, F) and out.Y_hat is None and out.fault_logits is None


def test_bad_input_shape_raises_with_dims():
    model = _model()
    with pytest.raises(ValueError, match=r"F_in=11"):
        model(torch.randn(2, 10, 3 * F))
    with pytest.raises(ValueError, match="3F\\+R"):
        model(torch.randn(10, 3 * F + R))


def test_model_config_validation_and_roundtrip():
    cfg = ModelConfig(F=F, R=R, K=K, C=C, num_blocks=5)
    assert cfg.dilations == [1, 2, 4, 8, 16] and cfg.F_in == 3 * F + R
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown keys"):
        ModelConfig.from_dict({**cfg.to_dict(), "depth": 3})
    with pytest.raises(ValueError, match="norm"):
        ModelConfig(F=F, R=R, K=K, C=C, norm="batch_norm")
    with pytest.raises(ValueError, match="dilations"):
        ModelConfig(F=F, R=R, K=K, C=C, num_blocks=3, dilations=[1, 2])
    with pytest.raises(ValueError, match="K must be"):
        ModelConfig(F=F, R=R, K=0, C=C)
    with pytest.raises(ValueError, match="dropout"):
        ModelConfig(F=F, R=R, K=K, C=C, dropout=1.0)


def test_predict_proba_fault():
    logits = torch.randn(4, 3)
    p = predict_proba_fault(logits, multilabel=False)
    torch.testing.assert_close(p.sum(-1), torch.ones(4))
    torch.testing.assert_close(predict_proba_fault(logits, multilabel=True), torch.sigmoid(logits))


def test_strip_weight_norm_keeps_outputs():
    model = _model("weight_norm", rul_enabled=True)
    x = _x_in(3, 25)
    with torch.no_grad():
        before = model(x, return_rul=True)
    stripped = strip_weight_norm(copy.deepcopy(model))
    assert not any(hasattr(m, "parametrizations") for m in stripped.modules())
    assert hasattr(model.backbone.blocks[0].conv1.conv, "parametrizations")  # the original is untouched
    with torch.no_grad():
        after = stripped(x, return_rul=True)
    for name in ("X_hat", "Y_hat", "fault_logits", "rul"):
        torch.testing.assert_close(getattr(after, name), getattr(before, name), atol=1e-6, rtol=1e-6)
