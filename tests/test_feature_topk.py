"""feature_topk: the mean of the k worst features, each over its normal error level (fitted at export)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from scada_tcn.trainer.model.network import ModelConfig, MultiTaskTCN
from scada_tcn.trainer.model.scoring import ScoringModule

L, F, R = 16, 6, 2


def _windows(B=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    M = (torch.rand(B, L, F, generator=g) > 0.2).float()
    return torch.randn(B, L, F, generator=g) * M, M, (torch.rand(B, L, R, generator=g) > 0.7).float()


def test_contributions_are_the_k_worst_normalised_features():
    torch.manual_seed(0)
    model = MultiTaskTCN(ModelConfig(F=F, R=R, K=2, C=2, D=8, num_blocks=2, fault_enabled=False)).eval()
    sc = ScoringModule(model, L, F, 0.25, seed=1, aggregation="feature_topk", topn=3, k=2).eval()
    scale = torch.tensor([0.5, 1.0, 2.0, 4.0, 1.0, 0.25])
    sc.set_feature_scale(scale)
    X, M, Fl = _windows()
    with torch.no_grad():
        out = sc(X, M, Fl)
    norm = sc.per_feature_error(out.E, M) / scale
    expected = torch.sort(norm, dim=1, descending=True).values[:, :2].mean(dim=1)
    torch.testing.assert_close(out.s_now, expected)
    torch.testing.assert_close(out.feat_contrib.sum(-1), out.s_now)
    assert ((out.feat_contrib > 0).sum(-1) <= 2).all()
    assert (out.top_idx[:, :2].sort(-1).values == torch.topk(norm, 2).indices.sort(-1).values).all()
    with pytest.raises(ValueError, match="feature scale"):
        sc.set_feature_scale(torch.zeros(F))
    with pytest.raises(ValueError, match="feature_topk needs"):
        ScoringModule(model, L, F, 0.25, seed=1, aggregation="feature_topk", topn=3)


def test_export_and_both_engines_with_feature_topk(tiny_run, tmp_path):
    from scada_tcn.export.bundle_writer import export_bundle
    from scada_tcn.trainer.evaluation.offline import run_batch_inference, setup_from_bundle, setup_from_checkpoint

    ov = ["infer.aggregation.name=feature_topk", "infer.aggregation.k=3"]
    b = export_bundle(tiny_run.checkpoint, out_dir=tmp_path / "bundle", overrides=ov)  # parity checked inside
    assert b.scoring.aggregation == "feature_topk" and b.scoring.k == 3 and b.parity.passed
    data = tiny_run.cfg().data.paths.processed_dir
    run_batch_inference(setup_from_bundle(b.path, data), "test", tmp_path / "onnx")
    ck = setup_from_checkpoint(tiny_run.checkpoint)
    assert ck.engine.ref.scoring.aggregation == "masked_mean"  # the checkpoint's own config
    a = pd.read_parquet(tmp_path / "onnx" / "results.parquet")
    assert np.isfinite(a["score"]).all() and (a["score"] > 0).all()
    assert all(len([c for c in contrib if c > 0]) <= 3 for contrib in a["top_contrib"])
