"""Smoke test for the export path: ScoringModule and CleanPass through torch.onnx.export(dynamo=True), opset 18,
dynamic batch, run in onnxruntime at batch 1 and 7 and compared with torch.

What this pins for the export issue:
- the model is exported after `strip_weight_norm` on a copy;
- both modules take (X, M_miss, Flags) and return tuples, so input and output names can be given directly;
- one `Dim("batch")` object is shared by all inputs (the modules compare batch sizes across inputs);
- `top_idx` comes from `stable_topk_indices` because `torch.sort(stable=True)` has no ONNX conversion and
  `torch.topk` breaks ties differently from ONNX TopK.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")
onnx = pytest.importorskip("onnx")

from scada_tcn.trainer.model.network import ModelConfig, MultiTaskTCN, strip_weight_norm  # noqa: E402
from scada_tcn.trainer.model.reference import CleanPass  # noqa: E402
from scada_tcn.trainer.model.scoring import ScoreOutputs, ScoringModule  # noqa: E402

L, F, R, K, C = 24, 4, 2, 3, 3
OPSET = 18
INPUTS = ("X", "M_miss", "Flags")


def _window(B: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    M_miss = (torch.rand(B, L, F, generator=g) > 0.2).float()
    M_miss[0, :, [1, 3]] = 0.0  # fully missing features: their contributions tie at exactly 0
    X = torch.randn(B, L, F, generator=g) * M_miss
    Flags = (torch.rand(B, L, R, generator=g) > 0.5).float()
    return X, M_miss, Flags


def _export_and_compare(module: torch.nn.Module, output_names: list[str], path) -> None:
    batch = torch.export.Dim("batch", min=1, max=4096)
    torch.onnx.export(
        module,
        _window(3, seed=0),
        str(path),
        dynamo=True,
        external_data=False,
        opset_version=OPSET,
        input_names=list(INPUTS),
        output_names=output_names,
        dynamic_shapes={name: {0: batch} for name in INPUTS},
        verbose=False,
    )
    proto = onnx.load(str(path))
    assert [o.name for o in proto.graph.output] == output_names
    assert not proto.graph.input[0].type.tensor_type.shape.dim[0].HasField("dim_value"), "batch must be dynamic"
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for B in (1, 7):
        args = _window(B, seed=B)
        with torch.no_grad():
            ref = module(*args)
        got = sess.run(output_names, {n: a.numpy() for n, a in zip(INPUTS, args)})
        for name, r, g in zip(output_names, ref, got):
            r = r.numpy()
            assert g.shape == r.shape and g.dtype == r.dtype, name
            if r.dtype == np.int64:
                np.testing.assert_array_equal(g, r, err_msg=f"{name} at batch {B}")
            else:
                np.testing.assert_allclose(g, r, atol=1e-5, rtol=1e-4, err_msg=f"{name} at batch {B}")


@pytest.fixture(scope="module")
def export_model() -> MultiTaskTCN:
    torch.manual_seed(0)
    cfg = ModelConfig(F=F, R=R, K=K, C=C, D=16, num_blocks=3, dropout=0.1, norm="weight_norm", rul_enabled=True)
    return strip_weight_norm(copy.deepcopy(MultiTaskTCN(cfg))).eval()


def test_scoring_module_exports_and_matches(export_model, tmp_path):
    scoring = ScoringModule(
        export_model, L, F, p_score=0.25, seed=7, aggregation="recent_weighted", topn=F, recent_halflife=6.0
    ).eval()
    _export_and_compare(scoring, list(ScoreOutputs._fields), tmp_path / "scoring.onnx")


def test_clean_pass_exports_and_matches(export_model, tmp_path):
    clean = CleanPass(export_model).eval()
    _export_and_compare(clean, list(clean.output_names), tmp_path / "clean.onnx")
