"""trainer.model.scoring and trainer.model.reference: complete deterministic mask-at-test scoring and the inference
step."""

from __future__ import annotations

import pytest
import torch

from scada_tcn.trainer.model.masking import build_model_input
from scada_tcn.trainer.model.network import ModelConfig, MultiTaskTCN, predict_proba_fault
from scada_tcn.trainer.model.reference import CleanPass, infer_step
from scada_tcn.trainer.model.scoring import ScoringModule, scoring_patterns, stable_topk_indices

L, F, R, K, C = 20, 5, 2, 3, 4


def _model(norm: str = "weight_norm") -> MultiTaskTCN:
    torch.manual_seed(0)
    cfg = ModelConfig(F=F, R=R, K=K, C=C, D=16, num_blocks=3, dropout=0.3, norm=norm, rul_enabled=True)
    return MultiTaskTCN(cfg).eval()


def _window(B: int, seed: int = 0, p_missing: float = 0.2):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(B, L, F, generator=g)
    M_miss = (torch.rand(B, L, F, generator=g) >= p_missing).float()
    Flags = (torch.rand(B, L, R, generator=g) > 0.5).float()
    return X * M_miss, M_miss, Flags


def _scoring(model=None, **kw) -> ScoringModule:
    args = {"p_score": 0.25, "seed": 3, "aggregation": "masked_mean", "topn": 3} | kw
    return ScoringModule(model or _model(), L, F, **args).eval()


def test_patterns_cover_every_element_exactly_once():
    for P in (2, 3, 4, 7):
        pat = scoring_patterns(L, F, P, seed=11)
        assert pat.shape == (P, L, F)
        assert torch.equal(pat.sum(0), torch.ones(L, F))
        counts = pat.sum((1, 2))
        assert counts.max() - counts.min() <= 1  # balanced passes
    assert torch.equal(scoring_patterns(L, F, 4, 11), scoring_patterns(L, F, 4, 11))
    assert not torch.equal(scoring_patterns(L, F, 4, 11), scoring_patterns(L, F, 4, 12))
    assert _scoring(p_score=0.3).P == 3 and _scoring(p_score=0.1).P == 10


def test_model_sees_each_present_element_hidden_exactly_once():
    scoring = _scoring()
    X, M_miss, Flags = _window(3)
    seen = []
    handle = scoring.model.register_forward_hook(lambda mod, args, out: seen.append(args[0].detach().clone()))
    with torch.no_grad():
        scoring(X, M_miss, Flags)
    handle.remove()
    (X_in,) = seen  # one model call for all passes
    P = scoring.P
    assert X_in.shape == (3 * P, L, 3 * F + R)
    X_in = X_in.reshape(3, P, L, 3 * F + R)
    X_c, M_slot, M_score, Fl = X_in[..., :F], X_in[..., F : 2 * F], X_in[..., 2 * F : 3 * F], X_in[..., 3 * F :]
    hidden = 1 - M_score
    assert torch.equal(hidden.sum(1), M_miss), "present elements hidden exactly once, missing never"
    assert (X_c[hidden == 1] == 0.0).all()
    assert torch.equal(M_slot, M_miss.unsqueeze(1).expand_as(M_slot))
    assert torch.equal(Fl, Flags.unsqueeze(1).expand_as(Fl))


def test_E_is_abs_error_at_the_hiding_pass():
    scoring = _scoring()
    X, M_miss, Flags = _window(2, seed=4)
    with torch.no_grad():
        out = scoring(X, M_miss, Flags)
        expected = torch.zeros(2, L, F)
        for p in range(scoring.P):
            hide = scoring.hide[p] * M_miss  # (B, L, F)
            M_score = 1 - hide
            X_in = build_model_input(X * M_score, M_miss, M_score, Flags)
            X_hat = scoring.model(X_in).X_hat
            expected += hide * (X_hat - X).abs()
    torch.testing.assert_close(out.E, expected, atol=1e-6, rtol=1e-5)
    assert (out.E[M_miss == 0] == 0).all()


def test_missing_values_never_scored_and_cannot_move_the_score():
    scoring = _scoring()
    X, M_miss, Flags = _window(4, seed=5)
    X_garbage = X.clone()
    X_garbage[M_miss == 0] = torch.randn(int((M_miss == 0).sum())) * 100.0
    X_nan = X.clone()
    X_nan[M_miss == 0] = float("nan")
    with torch.no_grad():
        ref = scoring(X, M_miss, Flags)
        for other in (scoring(X_garbage, M_miss, Flags), scoring(X_nan, M_miss, Flags)):
            for a, b in zip(ref, other):
                assert torch.equal(a, b)
    assert (ref.E[M_miss == 0] == 0).all()


@pytest.mark.parametrize("aggregation", ["masked_mean", "recent_weighted"])
def test_deterministic_and_batch_invariant(aggregation):
    scoring = _scoring(aggregation=aggregation, recent_halflife=5.0)
    X, M_miss, Flags = _window(9, seed=6)
    with torch.no_grad():
        one = scoring(X[4:5], M_miss[4:5], Flags[4:5])
        again = scoring(X[4:5], M_miss[4:5], Flags[4:5])
        big = scoring(X, M_miss, Flags)
        mid = scoring(X[2:7], M_miss[2:7], Flags[2:7])
    for a, b in zip(one, again):
        assert torch.equal(a, b)
    for other, i in ((big, 4), (mid, 2)):
        torch.testing.assert_close(other.s_now[i : i + 1], one.s_now, atol=1e-6, rtol=0)
        torch.testing.assert_close(other.feat_contrib[i : i + 1], one.feat_contrib, atol=1e-6, rtol=0)
        torch.testing.assert_close(other.E[i : i + 1], one.E, atol=1e-6, rtol=0)
        assert torch.equal(other.top_idx[i : i + 1], one.top_idx)


def test_masked_mean_and_contributions():
    scoring = _scoring()
    X, M_miss, Flags = _window(5, seed=7)
    with torch.no_grad():
        s_now, contrib, top_idx, E = scoring(X, M_miss, Flags)
    torch.testing.assert_close(contrib.sum(-1), s_now, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(s_now, E.sum((1, 2)) / M_miss.sum((1, 2)))
    torch.testing.assert_close(contrib, E.sum(1) / M_miss.sum((1, 2)).unsqueeze(1))
    assert top_idx.dtype == torch.int64 and top_idx.shape == (5, 3)
    assert torch.equal(top_idx, torch.sort(contrib, dim=-1, descending=True, stable=True).indices[:, :3])


def test_recent_weighted():
    model = _model()
    hl = 4.0
    scoring = _scoring(model, aggregation="recent_weighted", recent_halflife=hl)
    X, M_miss, Flags = _window(3, seed=8)
    with torch.no_grad():
        s_now, contrib, _, E = scoring(X, M_miss, Flags)
        flat = _scoring(model, aggregation="recent_weighted", recent_halflife=1e9)(X, M_miss, Flags)
        mean = _scoring(model)(X, M_miss, Flags)
    w = 0.5 ** (torch.arange(L - 1, -1, -1, dtype=torch.float32) / hl)
    assert w[-1] == 1.0 and w[-1 - 4] == 0.5
    w = w.reshape(1, L, 1)
    torch.testing.assert_close(s_now, (w * E).sum((1, 2)) / (w * M_miss).sum((1, 2)))
    torch.testing.assert_close(contrib.sum(-1), s_now, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(flat.s_now, mean.s_now)  # an infinite half-life is the plain mean


def test_stable_topk_ties_keep_lower_index_first():
    x = torch.tensor([[0.0, 1.0, 1.0, 0.0, 2.0, 0.0, 1.0], [3.0, 3.0, 3.0, 3.0, 3.0, 3.0, 3.0]])
    assert stable_topk_indices(x, 4).tolist() == [[4, 1, 2, 6], [0, 1, 2, 3]]
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        x = torch.randint(0, 4, (6, 9), generator=g).float()
        ref = torch.sort(x, dim=-1, descending=True, stable=True).indices[:, :5]
        assert torch.equal(stable_topk_indices(x, 5), ref)
    # fully missing features contribute exactly 0 and tie: lower index first
    scoring = _scoring(topn=F)
    X, M_miss, Flags = _window(1, seed=9)
    M_miss[..., [1, 3]] = 0.0
    with torch.no_grad():
        top = scoring(X * M_miss, M_miss, Flags).top_idx[0].tolist()
    assert top[-2:] == [1, 3]


def test_bad_arguments_and_shapes():
    model = _model()
    for kw, msg in (
        ({"p_score": 0.8}, "P=round"),
        ({"p_score": 0.0}, "p_score"),
        ({"aggregation": "max"}, "aggregation"),
        ({"aggregation": "recent_weighted"}, "recent_halflife"),
        ({"topn": F + 1}, "topn"),
    ):
        with pytest.raises(ValueError, match=msg):
            _scoring(model, **kw)
    with pytest.raises(ValueError, match="does not match"):
        ScoringModule(model, L, F + 1, 0.25, 0, topn=1)
    scoring = _scoring(model)
    X, M_miss, Flags = _window(2)
    with pytest.raises(ValueError, match="X must be"):
        scoring(X[:, :-1], M_miss[:, :-1], Flags[:, :-1])
    with pytest.raises(ValueError, match="Flags must be"):
        scoring(X, M_miss, Flags[..., :1])


def test_infer_step_clean_pass_and_scores():
    model = _model()
    scoring = _scoring(model)
    model.train()  # dropout on: infer_step must switch it off
    X, M_miss, Flags = _window(4, seed=10)
    out = infer_step(model, scoring, X, M_miss, Flags)
    assert model.training, "infer_step restores the caller's mode"
    assert out.Y_hat.shape == (4, K, F) and out.fault_prob.shape == (4, C) and out.rul.shape == (4, 1)
    assert not out.s_now.requires_grad
    with torch.no_grad():
        model.eval()
        X_in = build_model_input(X, M_miss, torch.ones_like(M_miss), Flags)
        ref = model(X_in, return_recon=False, return_rul=True)
        score = scoring(X, M_miss, Flags)
    assert torch.equal(out.Y_hat, ref.Y_hat)
    assert torch.equal(out.fault_prob, predict_proba_fault(ref.fault_logits, model.cfg.fault_multilabel))
    assert torch.equal(out.rul, ref.rul)
    assert torch.equal(out.s_now, score.s_now) and torch.equal(out.top_idx, score.top_idx)
    assert CleanPass(model).output_names == ("Y_hat", "fault_prob", "rul")
    with pytest.raises(ValueError, match="different model"):
        infer_step(_model(), scoring, X, M_miss, Flags)
