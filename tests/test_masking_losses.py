"""trainer.model.masking, trainer.training.losses and trainer.training.step: mask semantics, loss masks and
reductions, the two-stream step."""

from __future__ import annotations

import pytest
import torch

from scada_tcn.trainer.model.masking import apply_mask, build_model_input, mask_stats, sample_mask
from scada_tcn.trainer.model.network import ModelConfig, MultiTaskTCN
from scada_tcn.trainer.training.losses import (
    fault_loss,
    forecast_loss,
    huber_elementwise,
    masked_huber_loss,
    recon_loss,
    regime_weights,
)
from scada_tcn.trainer.training.step import TrainStepConfig, eval_losses, train_step


def _miss(shape=(8, 50, 6), p_missing=0.3, seed=0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(shape, generator=g) >= p_missing).float()


# ------------------------------------------------------------------------------------------- masking


def test_sample_mask_hides_only_present_values():
    M_miss = _miss()
    M_mask = sample_mask(M_miss, 0.3, torch.Generator().manual_seed(1))
    assert M_mask.dtype == torch.float32 and M_mask.shape == M_miss.shape
    assert set(M_mask.unique().tolist()) <= {0.0, 1.0}
    hidden = M_mask == 0
    assert (M_miss[hidden] == 1).all(), "a missing element was hidden"
    assert (M_mask[M_miss == 0] == 1).all(), "missing elements must be kept (M_mask = 1)"
    stats = mask_stats(M_mask, M_miss)
    assert stats["n_present"] == M_miss.sum().item()
    assert stats["n_masked"] == hidden.sum().item()
    assert 0.25 < stats["mask_rate"] < 0.35


def test_sample_mask_reproducible_from_generator():
    M_miss = _miss()
    a = sample_mask(M_miss, 0.2, torch.Generator().manual_seed(7))
    b = sample_mask(M_miss, 0.2, torch.Generator().manual_seed(7))
    c = sample_mask(M_miss, 0.2, torch.Generator().manual_seed(8))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    g = torch.Generator().manual_seed(7)
    first, second = sample_mask(M_miss, 0.2, g), sample_mask(M_miss, 0.2, g)
    assert torch.equal(first, a) and not torch.equal(first, second)  # the generator advances


def test_sample_mask_rejects_bad_p():
    with pytest.raises(ValueError, match="p_mask"):
        sample_mask(_miss(), 1.5)


def test_apply_mask_and_model_input_order():
    B, L, F, R = 2, 5, 3, 2
    X = torch.randn(B, L, F)
    M_miss = _miss((B, L, F))
    M_mask = sample_mask(M_miss, 0.5, torch.Generator().manual_seed(0))
    Flags = torch.ones(B, L, R, dtype=torch.uint8)
    X_c = apply_mask(X, M_mask, fill_value=-9.0)
    assert torch.equal(X_c[M_mask == 1], X[M_mask == 1])
    assert (X_c[M_mask == 0] == -9.0).all()
    X_in = build_model_input(X_c, M_miss, M_mask, Flags)
    assert X_in.shape == (B, L, 3 * F + R) and X_in.dtype == torch.float32
    assert torch.equal(X_in[..., :F], X_c)
    assert torch.equal(X_in[..., F : 2 * F], M_miss)
    assert torch.equal(X_in[..., 2 * F : 3 * F], M_mask)
    assert torch.equal(X_in[..., 3 * F :], Flags.float())
    with pytest.raises(ValueError, match="M_mask"):
        build_model_input(X_c, M_miss, M_mask[:, :, :2], Flags)
    with pytest.raises(ValueError, match="Flags"):
        build_model_input(X_c, M_miss, M_mask, Flags[:, :4])


# ------------------------------------------------------------------------------------------- losses


def test_huber_elementwise():
    e = torch.tensor([-3.0, -1.0, 0.0, 0.5, 2.0])
    torch.testing.assert_close(huber_elementwise(e, 1.0), torch.tensor([2.5, 0.5, 0.0, 0.125, 1.5]))


def test_masked_huber_reduction():
    y, yh = torch.zeros(2, 3), torch.tensor([[1.0, 2.0, 3.0], [0.5, 0.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    expected = (0.5 + 1.5 + 0.125) / 3
    torch.testing.assert_close(masked_huber_loss(y, yh, mask, delta=1.0), torch.tensor(expected))
    assert masked_huber_loss(y, yh, torch.zeros_like(mask), delta=1.0).item() == 0.0


def test_recon_loss_gradient_only_on_masked_and_present():
    B, L, F = 3, 20, 4
    M_miss = _miss((B, L, F))
    M_mask = sample_mask(M_miss, 0.4, torch.Generator().manual_seed(2))
    X = torch.randn(B, L, F)
    X[M_miss == 0] = float("nan")  # even a NaN at a missing position must not leak
    X_hat = torch.randn(B, L, F, requires_grad=True)
    loss = recon_loss(X, X_hat, M_mask, M_miss, delta=1.0)
    loss.backward()
    target = (1 - M_mask) * M_miss
    assert torch.isfinite(loss)
    assert (X_hat.grad[target == 0] == 0).all(), "gradient at an unmasked or missing element"
    assert (X_hat.grad[target == 1] != 0).all()
    ref = huber_elementwise(X_hat - torch.nan_to_num(X), 1.0)[target == 1].mean()
    torch.testing.assert_close(loss, ref)


def test_forecast_loss_ignores_missing_targets():
    B, K, F = 4, 3, 2
    Y_true, Y_hat = torch.randn(B, K, F), torch.randn(B, K, F, requires_grad=True)
    M_future = _miss((B, K, F), 0.4, seed=3)
    base = forecast_loss(Y_true, Y_hat, M_future, delta=1.0)
    Y_other = Y_true.clone()
    Y_other[M_future == 0] = 1e6
    assert forecast_loss(Y_other, Y_hat, M_future, delta=1.0).item() == base.item()
    base.backward()
    assert (Y_hat.grad[M_future == 0] == 0).all()


def test_fault_loss_only_on_labelled_windows_multiclass():
    logits = torch.randn(5, 3, requires_grad=True)
    y = torch.tensor([0, 2, -1, 1, -1])  # -1: placeholder for unlabelled windows
    has_label = torch.tensor([1, 1, 0, 1, 0])
    loss = fault_loss(logits, y, has_label, multilabel=False)
    lab = has_label.bool()
    ref = torch.nn.functional.cross_entropy(logits[lab], y[lab])  # mean over the 3 labelled
    torch.testing.assert_close(loss, ref)
    loss.backward()
    assert (logits.grad[~lab] == 0).all()
    logits2 = logits.detach().clone()
    logits2[~lab] = 100.0
    assert fault_loss(logits2, y, has_label, multilabel=False).item() == pytest.approx(loss.item())
    none = fault_loss(logits, y, torch.zeros(5), multilabel=False)
    assert none.item() == 0.0 and none.requires_grad


def test_fault_loss_multilabel():
    logits = torch.randn(4, 3)
    y = torch.tensor([[1, 0, 1], [0, 0, 0], [float("nan")] * 3, [0, 1, 0]])
    has_label = torch.tensor([True, True, False, True])
    loss = fault_loss(logits, y, has_label, multilabel=True)
    ref = torch.nn.functional.binary_cross_entropy_with_logits(logits[has_label], y[has_label])
    torch.testing.assert_close(loss, ref)
    with pytest.raises(ValueError, match="multiclass"):
        fault_loss(logits, y, has_label, multilabel=False)


def test_regime_weights_from_last_step():
    Flags = torch.zeros(4, 6, 3)
    Flags[0, -1, 0] = 1  # flag 0 active at the last step
    Flags[1, -1, [0, 1]] = 1  # flags 0 and 1: the smaller weight wins
    Flags[2, 0, 1] = 1  # active earlier only: ignored
    Flags[3, -1, 2] = 1  # flag not in the map: ignored
    w = regime_weights(Flags, {0: 0.5, 1: 0.2})
    torch.testing.assert_close(w, torch.tensor([0.5, 0.2, 1.0, 1.0]))
    torch.testing.assert_close(regime_weights(Flags, {}), torch.ones(4))
    with pytest.raises(ValueError, match="out of range"):
        regime_weights(Flags, {3: 0.5})
    # per-sample weights scale each sample's numerator share
    y, yh = torch.zeros(2, 2), torch.tensor([[1.0, 1.0], [0.0, 0.0]])
    loss = masked_huber_loss(y, yh, torch.ones(2, 2), 1.0, sample_weight=torch.tensor([0.5, 1.0]))
    torch.testing.assert_close(loss, torch.tensor(0.5 * 0.5 * 2 / 4))


# ------------------------------------------------------------------------------------------- train step


def _tiny_batch(B=4, L=16, F=3, R=1, K=2, C=3, seed=0) -> dict[str, torch.Tensor]:
    """Sinusoids with correlated features: learnable reconstruction and forecast."""
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(L + K, dtype=torch.float32).reshape(1, -1, 1)
    freq = 0.3 + 0.4 * torch.rand(B, 1, 1, generator=g)
    full = torch.sin(freq * t + 0.7 * torch.arange(F, dtype=torch.float32).reshape(1, 1, F))  # (B, L+K, F)
    M = (torch.rand(B, L, F, generator=g) > 0.1).float()
    return {
        "X": full[:, :L] * M,
        "M_miss": M,
        "Flags": (torch.rand(B, L, R, generator=g) > 0.5).float(),
        "Y_true": full[:, L:],
        "M_future": torch.ones(B, K, F),
        "y": torch.arange(B) % C,
        "has_label": torch.ones(B),
    }


def _tiny_model(seed=0) -> MultiTaskTCN:
    torch.manual_seed(seed)
    return MultiTaskTCN(ModelConfig(F=3, R=1, K=2, C=3, D=16, num_blocks=3, dropout=0.0, norm="none"))


def test_train_step_overfits_tiny_batch():
    batch, model = _tiny_batch(), _tiny_model()
    cfg = TrainStepConfig(p_mask=0.2)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    gen = torch.Generator().manual_seed(0)
    before = eval_losses(model, batch, cfg, torch.Generator().manual_seed(123))
    for _ in range(60):
        out = train_step(model, batch, cfg, opt, gen, grad_clip=5.0)
    after = eval_losses(model, batch, cfg, torch.Generator().manual_seed(123))
    assert after["loss"] < before["loss"] / 10, (before, after)
    assert set(out) == {"loss", "recon", "pred", "fault", "rul", "mask_rate", "n_present", "n_masked", "batch_size"}
    assert out["batch_size"] == 4.0 and out["n_present"] == batch["M_miss"].sum().item()
    assert all(isinstance(v, float) for v in out.values())


def test_same_seed_same_first_losses():
    def run(seed: int) -> list[dict[str, float]]:
        batch, model = _tiny_batch(), _tiny_model(seed)
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        gen = torch.Generator().manual_seed(seed)
        cfg = TrainStepConfig(p_mask=0.3, regime_weight_map={0: 0.5})
        return [train_step(model, batch, cfg, opt, gen) for _ in range(3)]

    assert run(0) == run(0)
    assert run(0) != run(1)


def test_train_step_loss_composition_and_eval_restores_mode():
    batch, model = _tiny_batch(), _tiny_model()
    cfg = TrainStepConfig(p_mask=0.3, lambda_recon=2.0, lambda_pred=0.5, lambda_fault=0.0)
    model.train()
    ev = eval_losses(model, batch, cfg, torch.Generator().manual_seed(5))
    assert model.training
    assert ev == eval_losses(model, batch, cfg, torch.Generator().manual_seed(5))
    assert ev["loss"] == pytest.approx(2.0 * ev["recon"] + 0.5 * ev["pred"])
    with pytest.raises(ValueError, match="Y_true"):
        eval_losses(model, {k: v for k, v in batch.items() if k != "Y_true"}, cfg, None)
    with pytest.warns(UserWarning, match="fault loss set to 0"):
        ev = eval_losses(model, {k: v for k, v in batch.items() if k != "y"}, cfg, None)
    assert ev["fault"] == 0.0
    no_fault = MultiTaskTCN(ModelConfig(F=3, R=1, K=2, C=0, D=8, num_blocks=2, fault_enabled=False))
    with pytest.raises(ValueError, match="fault_enabled"):
        eval_losses(no_fault, batch, cfg, None)
    with pytest.raises(ValueError, match="p_mask"):
        TrainStepConfig(p_mask=0.0)


def test_train_step_amp_path_with_grad_scaler():
    batch, model = _tiny_batch(), _tiny_model()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    scaler = torch.amp.GradScaler("cpu")  # on CUDA the caller passes GradScaler("cuda"); same code path
    out = train_step(model, batch, TrainStepConfig(amp=True), opt, torch.Generator().manual_seed(0), scaler, 1.0)
    assert all(torch.isfinite(torch.tensor(v)) for v in out.values())
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in model.parameters())
