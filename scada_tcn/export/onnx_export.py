"""Trace the clean pass, the scoring pass and, for a model that streams, the step graph into ONNX graphs.

Contract
--------
- The model is rebuilt from the checkpoint alone, weight norm is baked into plain weights on a copy
  (`strip_weight_norm`), and the copy is put in eval mode: the graphs hold no `g * v / ||v||` per call and
  no dropout.
- Both graphs take the windows as the pipeline writes them: X, M_miss (B, L, F), Flags (B, L, R)
  (`runtime.bundle.GRAPH_INPUTS`), and build the model input inside.
- `clean.onnx`: `trainer.model.reference.CleanPass` -> Y_hat (B, K, F), fault_prob (B, C), rul (B, 1), the outputs
  of the heads that are on, in that order (`runtime.bundle.Heads.clean_outputs`).
- `scoring.onnx`: the scoring module of the config traced whole: `trainer.model.signals.SignalModule` -> resid
  (B, F) (per-signal scoring), or `trainer.model.scoring.ScoringModule` -> s_now (B,), feat_contrib (B, F),
  top_idx (B, topn), E (B, L, F) (window-mean scoring); its `output_names` name the outputs.
- `step.onnx` (per-signal scoring whose receptive field fits the window): `trainer.model.streaming.StepModule`,
  one step per turbine with the layers' rings as inputs (`runtime.bundle` documents the inputs and outputs).
- Exporter: `torch.onnx.export(dynamo=True)` at opset `OPSET`, one shared dynamic batch axis, a single file
  (`external_data=False`), IR version pinned to `IR_VERSION` (onnxruntime refuses graphs stamped newer than it
  knows). Every graph passes `onnx.checker.check_model(full_check=True)` and strict shape inference, or the export
  fails with ExportError.
"""

from __future__ import annotations

import logging
import tempfile
import warnings
from pathlib import Path
from typing import Any

import onnx
import torch
from torch import nn

from scada_tcn.runtime.bundle import GRAPH_INPUTS
from scada_tcn.trainer.model.reference import ReferenceModules
from scada_tcn.trainer.model.streaming import StepModule

__all__ = [
    "OPSET",
    "IR_VERSION",
    "ExportError",
    "export_graphs",
    "export_module",
    "check_graph",
    "strip_node_metadata",
]

OPSET = 18
IR_VERSION = 10  # onnx 1.16; opset 18 needs >= 8, and every onnxruntime >= 1.17 reads it
MAX_BATCH = 4096


class ExportError(ValueError):
    """The export cannot produce a valid bundle: bad checkpoint, graph check failed, parity out of tolerance."""


def check_graph(proto: onnx.ModelProto, what: str) -> None:
    """Full checker and strict shape inference; no weight-norm parametrization may survive in the graph."""
    try:
        onnx.checker.check_model(proto, full_check=True)
        onnx.shape_inference.infer_shapes(proto, check_type=True, strict_mode=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as e:
        raise ExportError(f"{what}: the exported graph fails the ONNX checks: {e}") from e
    left = [i.name for i in proto.graph.initializer if "parametrizations" in i.name]
    if left:
        raise ExportError(f"{what}: weight-norm parametrizations survived the export: {left[:3]}")


def export_module(
    module: nn.Module,
    example: tuple[torch.Tensor, ...],
    input_names: tuple[str, ...],
    output_names: tuple[str, ...],
    what: str,
    dynamic_shapes: Any = None,
) -> bytes:
    """Export `module` (batch axis dynamic on every input unless `dynamic_shapes` says otherwise), pin opset and IR
    version, check, return the bytes."""
    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)  # one object: the modules compare batch sizes
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        path = Path(tmp) / "graph.onnx"
        level = logging.getLogger("torch").level
        logging.getLogger("torch").setLevel(logging.ERROR)  # the exporter logs about optional torchvision ops
        try:
            torch.onnx.export(
                module,
                example,
                str(path),
                dynamo=True,
                external_data=False,
                opset_version=OPSET,
                input_names=list(input_names),
                output_names=list(output_names),
                dynamic_shapes=dynamic_shapes or {n: {0: batch} for n in input_names},
                verbose=False,
            )
        finally:
            logging.getLogger("torch").setLevel(level)
        proto = onnx.load(str(path))
    opsets = {o.domain: o.version for o in proto.opset_import}
    if opsets.get("", opsets.get("ai.onnx")) != OPSET:
        raise ExportError(f"{what}: the exporter wrote opsets {opsets}, expected the default domain at {OPSET}")
    if proto.ir_version > IR_VERSION:
        proto.ir_version = IR_VERSION
    if [o.name for o in proto.graph.output] != list(output_names):
        raise ExportError(f"{what}: outputs {[o.name for o in proto.graph.output]}, expected {list(output_names)}")
    strip_node_metadata(proto)
    check_graph(proto, what)
    return proto.SerializeToString()


def strip_node_metadata(proto: onnx.ModelProto) -> None:
    """Drop the exporter's per-node debugging metadata (the source stack trace of each node, with the exporting
    install's file paths and line numbers; module scopes), in place: a graph's bytes, and so the bundle's model id,
    then depend on the model alone, not on where the package is installed or on a comment edited above the
    module (which changed the step graph's checksum, and so the model id, of the same checkpoint)."""
    for nodes in (proto.graph.node, *(f.node for f in proto.functions)):
        for node in nodes:
            del node.metadata_props[:]


def _example(L: int, F: int, R: int, B: int = 2) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(0)
    M_miss = (torch.rand(B, L, F, generator=g) > 0.2).float()
    return torch.randn(B, L, F, generator=g) * M_miss, M_miss, (torch.rand(B, L, R, generator=g) > 0.5).float()


def export_step(step: StepModule) -> bytes:
    """step.onnx: the batch axis dynamic (B turbines, B x passes tap rows)."""
    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    taps = tuple({0: step.P * batch} for _, _, _, k in step.convs for _ in range(k - 1))
    shapes = ({0: batch}, {0: batch}, {0: batch}, taps + (({0: batch},) if step.ring else ()))
    return export_module(step, step.example(), step.input_names, step.output_names, "step.onnx", shapes)


def export_graphs(mods: ReferenceModules) -> dict[str, bytes]:
    """{"clean": bytes, "scoring": bytes[, "step": bytes]}: the graphs, exported and checked."""
    cfg = mods.model.cfg
    example = _example(mods.L, cfg.F, cfg.R)
    with torch.no_grad():
        clean = export_module(mods.clean, example, GRAPH_INPUTS, mods.clean.output_names, "clean.onnx")
        scoring = export_module(mods.scoring, example, GRAPH_INPUTS, mods.scoring.output_names, "scoring.onnx")
        graphs = {"clean": clean, "scoring": scoring}
        if mods.step is not None:
            graphs["step"] = export_step(mods.step)
    return graphs
