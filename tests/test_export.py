"""scada-export on the tiny trained model (tests/conftest.py `tiny_run`): graphs, parity, calibration, the CLI.

Parity is checked the way the edge runs: the bundle is loaded by `runtime.bundle.load_bundle`, sessions are
opened by the runtime, and every output is compared with the torch modules that were exported.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxscript")

import scada_tcn  # noqa: E402
from scada_tcn.export.bundle_writer import export_bundle  # noqa: E402
from scada_tcn.export.onnx_export import IR_VERSION, OPSET, ExportError  # noqa: E402
from scada_tcn.export.verify import compare, resid_inherited, run_both, topn_disagreements, verify_graphs  # noqa: E402
from scada_tcn.runtime.bundle import load_bundle, open_session  # noqa: E402
from scada_tcn.runtime.calibration import Calibration, CalibrationError, fit_percentile_calibration, regime_of  # noqa: E402
from scada_tcn.runtime.errors import ConfigError  # noqa: E402
from scada_tcn.runtime.scorer import OnnxScorer  # noqa: E402
from scada_tcn.trainer.calibration.fit import calibrate  # noqa: E402
from scada_tcn.trainer.data.store import PreparedData  # noqa: E402
from scada_tcn.trainer.evaluation.offline import TorchEngine  # noqa: E402
from scada_tcn.trainer.model.reference import build_reference, checkpoint_config  # noqa: E402
from scada_tcn.trainer.training.fit import load_checkpoint  # noqa: E402

ISSUE_KEYS = {  # bundle.json keys named by the issue
    "schema_version",
    "model_id",
    "dims",
    "dt_seconds",
    "feature_registry",
    "flag_registry",
    "column_mapping",
    "pipeline_spec",
    "scaler",
    "class_names",
    "scoring",
    "calibration",
    "alerting",
    "score_reference",
    "versions",
    "checksums",
    "data_fingerprint",
    "parity",
}


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models gain nothing from threads on a shared 2-core machine
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def exported(tiny_run):
    """The tiny checkpoint exported with nothing but its path (into <run>/bundle)."""
    bundle = export_bundle(tiny_run.checkpoint)
    ckpt = load_checkpoint(tiny_run.checkpoint)
    cfg = checkpoint_config(ckpt)
    return bundle, build_reference(ckpt, cfg), cfg


@pytest.fixture(scope="module")
def val_batch(exported):
    _, _, cfg = exported
    ds = PreparedData(cfg).dataset(cfg, "val")
    b = ds.__getitems__(list(range(0, 64 * 7, 7)))
    return b["X"].numpy(), b["M_miss"].numpy(), b["Flags"].numpy()


def test_export_with_checkpoint_path_only(exported, tiny_run):
    bundle, _, _ = exported
    assert bundle.path == tiny_run.checkpoint.parent.parent / "bundle"
    again = load_bundle(bundle.path)
    assert again.model_id == bundle.model_id and again.parity.passed
    assert bundle.versions.opset == OPSET and bundle.versions.ir_version == IR_VERSION
    assert bundle.dims.L == 24 and bundle.dims.K == 3 and bundle.dims.RF == 13
    assert bundle.clean_outputs == ("Y_hat", "fault_prob")
    ids = dataclasses.asdict(exported[2].data.identifiers)  # the training table's layout, replay's defaults
    assert bundle.table_identifiers.to_dict() == ids and ids["turbine_id_from_file"] is ids["time_format"] is None
    assert bundle.table_format[1:4] == (ids["turbine_id_col"], ids["time_col"], ids["naive_timezone"])
    plain = {"delimiter": ",", "decimal": ".", "skip_lines": 0, "encoding": "utf-8"}
    assert bundle.table_csv.to_dict() == dataclasses.asdict(exported[2].data.csv) == plain
    assert bundle.table_format.columns == dict(exported[2].data.columns)


def test_cli_export_with_checkpoint_path_only(exported, tiny_run):
    from typer.testing import CliRunner

    from scada_tcn.export.cli import app

    help_text = CliRunner().invoke(app, ["--help"]).output
    assert "Example: scada-export" in help_text
    result = CliRunner().invoke(app, [str(tiny_run.checkpoint)])
    assert result.exit_code == 0, result.output
    assert "model id" in result.output and "bundle id" in result.output
    assert "parity within atol=1e-05" in result.output
    assert load_bundle(exported[0].path).model_id == exported[0].model_id  # the export is deterministic
    bad = CliRunner().invoke(app, [str(tiny_run.checkpoint), "train.epochs=3"])
    assert bad.exit_code == 2 and "only infer.* overrides apply to a trained checkpoint" in bad.output


def test_graphs_pass_full_checker_with_pinned_versions(exported):
    bundle, _, _ = exported
    for name in ("clean.onnx", "scoring.onnx"):
        proto = onnx.load(str(bundle.path / name))
        onnx.checker.check_model(proto, full_check=True)
        onnx.shape_inference.infer_shapes(proto, check_type=True, strict_mode=True)
        assert proto.ir_version == IR_VERSION
        assert {o.domain: o.version for o in proto.opset_import}[""] == OPSET
        assert not any("parametrizations" in i.name for i in proto.graph.initializer), "weight norm not stripped"
        assert not proto.graph.input[0].type.tensor_type.shape.dim[0].HasField("dim_value"), "batch must be dynamic"
        assert not any(i.data_location == onnx.TensorProto.EXTERNAL for i in proto.graph.initializer)


def test_graphs_hold_no_trace_of_the_exporting_source(exported):
    """No node carries the exporter's stack traces (this install's paths and line numbers): the same checkpoint
    exported from another folder, or after a comment moved the model code's lines, gets the same model id."""
    bundle, _, _ = exported
    root = str(Path(scada_tcn.__file__).resolve().parent.parent).encode()
    for name, data in bundle.graphs.items():
        proto = onnx.ModelProto.FromString(data)
        assert not [n.name for n in proto.graph.node if n.metadata_props], name
        assert root not in data, name


@pytest.mark.parametrize("B", [1, 64])
def test_parity_every_output(exported, val_batch, B):
    bundle, mods, _ = exported
    sessions = {g: open_session(bundle, g) for g in ("clean", "scoring")}
    X, M, Fl = (a[:B] for a in val_batch)
    ref, got = run_both(mods, sessions, X, M, Fl)
    assert set(ref) == {f"clean/{n}" for n in bundle.clean_outputs} | {
        f"scoring/{n}" for n in ("s_now", "feat_contrib", "top_idx", "E")
    }
    for name in ref:
        assert got[name].shape == ref[name].shape and got[name].dtype == ref[name].dtype, name
        if name != "scoring/top_idx":
            np.testing.assert_allclose(got[name], ref[name], atol=1e-5, rtol=1e-4, err_msg=name)
    # the runtime scorer and the torch engine return the same numbers end to end, probabilities included
    out = OnnxScorer(bundle).score(X, M, Fl)
    torch_out = TorchEngine(mods).score(X, M, Fl)
    for name in ("s_now", "feat_contrib", "Y_hat", "fault_prob"):
        np.testing.assert_allclose(getattr(out, name), getattr(torch_out, name), atol=1e-5, rtol=1e-4, err_msg=name)
    np.testing.assert_allclose(out.fault_prob.sum(axis=1), 1.0, atol=1e-6)
    assert out.rul is None and out.top_idx.dtype == np.int64


def test_topn_agrees_where_not_tied(exported, val_batch):
    bundle, mods, _ = exported
    sessions = {g: open_session(bundle, g) for g in ("clean", "scoring")}
    X, M, Fl = (a.copy() for a in val_batch)
    M[:16, :, ::3] = 0.0  # whole features missing: their contributions tie at exactly 0
    X[:16, :, ::3] = 0.0
    ref, got = run_both(mods, sessions, X, M, Fl)
    contrib, i_ref, i_got = ref["scoring/feat_contrib"], ref["scoring/top_idx"], got["scoring/top_idx"]
    assert topn_disagreements(contrib, i_ref, i_got, atol=1e-5, rtol=1e-4) == 0
    srt = -np.sort(-contrib, axis=1)
    gaps = np.diff(-srt[:, : bundle.scoring.topn + 1], axis=1)
    untied = (np.abs(gaps) > 1e-5).all(axis=1)
    assert untied.sum() >= 32
    np.testing.assert_array_equal(i_got[untied], i_ref[untied])


def test_bundle_json_holds_every_key_of_the_issue(exported):
    bundle, _, _ = exported
    doc = json.loads((bundle.path / "bundle.json").read_text())
    assert ISSUE_KEYS <= set(doc)
    assert set(doc["dims"]) == {"L", "K", "F", "R", "C", "RF"}
    spec = doc["pipeline_spec"]
    for k in (
        "channels",
        "angular_channels",
        "angle_units",
        "yaw_error",
        "deltas",
        "rolling",
        "fill_value",
        "winsor_caps",
        "dt_seconds",
    ):
        assert k in spec
    assert doc["scaler"]["scaled"].count(False) == 4  # sin/cos of two angular channels are not scaled
    assert set(doc["scoring"]) == {
        "kind",
        "masks",
        "p_score",
        "groups",
        "context",
        "passes",
        "seed",
        "aggregation",
        "halflife",
        "topn",
        "k",
    }
    assert doc["scoring"]["context"] == [] and doc["scoring"]["kind"] == "window_mean" and doc["signals"] is None
    assert doc["scoring"]["masks"] == "element" and doc["scoring"]["groups"] is None
    assert doc["scoring"]["passes"] == 4
    assert set(doc["versions"]) >= {"torch", "onnx", "package"}
    assert doc["column_mapping"]["wind_speed"] == "wind_speed"
    assert doc["class_names"][0] == "normal" and len(doc["class_names"]) == doc["dims"]["C"]
    assert doc["score_reference"]["split"] == "val" and len(doc["score_reference"]["values"]) > 5
    assert set(doc["parity"]["cases"]) == {
        "val_batch64",
        "val_batch1",
        "all_missing",
        "all_flags_on",
        "extreme_values",
        "extreme_with_missing",
    }
    assert doc["calibration"]["min_windows"] == 20 and doc["calibration"]["n_windows"] > 0


def _plant(src, dst, label: int, magnitude: float):
    """Copy prepared data; turn 40 test windows of the first turbine into validation windows labelled `label`,
    after filling the test part of its series with huge values (val windows never read that part)."""
    shutil.copytree(src, dst)
    index = pd.read_parquet(dst / "window_index.parquet")
    tid = sorted(index["turbine_id"].unique())[0]
    test_rows = index[(index["split"] == "test") & (index["turbine_id"] == tid)]
    first = int(test_rows["start"].min())
    X = np.load(dst / "turbines" / tid / "X.npy")
    X[first:] = magnitude
    np.save(dst / "turbines" / tid / "X.npy", X)
    planted = test_rows.head(40).copy()
    planted["split"], planted["y"], planted["has_label"] = "val", label, True
    pd.concat([index, planted], ignore_index=True).to_parquet(dst / "window_index.parquet", index=False)


def test_calibration_never_sees_test_or_fault_labelled_windows(exported, tiny_run, tmp_path):
    _, mods, cfg = exported
    base = calibrate(mods.scoring, PreparedData(cfg), cfg).calibration
    results = {}
    for label in (2, 0):
        dst = tmp_path / f"label{label}"
        _plant(PreparedData(cfg).dir, dst, label, 50.0)
        c2 = tiny_run.cfg(f"data.paths.processed_dir={dst}")
        results[label] = calibrate(mods.scoring, PreparedData(c2), c2)
    faulty = results[2].calibration
    assert faulty.global_threshold == base.global_threshold and faulty.per_turbine == base.per_turbine
    assert results[2].n_excluded == 40
    # control: the same windows labelled normal do reach the threshold
    assert results[0].calibration.global_threshold > base.global_threshold


def test_fallback_recorded_when_min_windows_is_large(exported, tiny_run):
    _, mods, _ = exported
    cfg = checkpoint_config(
        load_checkpoint(tiny_run.checkpoint),
        ["infer.calibration.min_windows=100000", "infer.calibration.per_regime=true"],
    )
    cal = calibrate(mods.scoring, PreparedData(cfg), cfg).calibration
    assert cal.per_turbine == {} and cal.per_turbine_regime == {}
    assert cal.fallbacks["WT01"] == "491 windows < min_windows=100000; uses the global threshold"
    assert any(k.startswith("WT01|") for k in cal.fallbacks) and "<global>" in cal.fallbacks
    assert cal.threshold_for("WT01", "normal") == (cal.global_threshold, "global")


def test_export_refuses_overrides_outside_infer_and_parity_beyond_tolerance(exported, tiny_run, tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match=r"got \['model.tcn.D=8'\]"):
        checkpoint_config(load_checkpoint(tiny_run.checkpoint), ["model.tcn.D=8"])
    bundle, mods, cfg = exported
    graphs = {g: (bundle.path / f"{g}.onnx").read_bytes() for g in ("clean", "scoring")}
    monkeypatch.setattr("scada_tcn.export.bundle_writer.export_graphs", lambda m: graphs)  # skip re-tracing
    with pytest.raises(ExportError, match="parity out of tolerance .* nothing was written"):
        export_bundle(tiny_run.checkpoint, out_dir=tmp_path / "b", atol=0.0, rtol=0.0)
    assert not (tmp_path / "b").exists()


def test_verify_reports_every_case(exported, val_batch):
    bundle, mods, _ = exported
    graphs = {g: (bundle.path / f"{g}.onnx").read_bytes() for g in ("clean", "scoring")}
    p = verify_graphs(mods, graphs, val_batch, extreme=20.0)
    assert p.passed and p.cases["val_batch1"]["n_windows"] == 8
    assert p.cases["all_missing"]["outputs"]["scoring/s_now"]["max_abs"] == 0.0


def test_a_residual_between_two_large_values_inherits_their_rounding_and_no_more():
    # found at a La Haute Borne export: the adversarial case feeds x = +-20 (the scaler's clip), the prediction
    # comes out near 20 too, and (x - pred) / scale near zero carries the float32 rounding of its operands
    atol, rtol, scale = 1e-5, 1e-4, np.array([0.05, 1.0])
    x = np.array([[20.0, 0.5]], dtype=np.float32)
    pred = np.array([[19.999, 0.4]], dtype=np.float32)
    torch_resid = (x - pred) / scale
    ulps = np.spacing(np.float32(20.0)) * 2  # pred two float32 steps off at 20: 3.8e-6
    onnx_resid = (x - (pred + np.array([[ulps, 0.0]], dtype=np.float32))) / scale
    inherited = resid_inherited(x, pred, scale, atol, rtol)
    assert compare(torch_resid, onnx_resid, atol, rtol)["n_bad"] == 1  # |resid| 0.02 alone does not bound it
    assert compare(torch_resid, onnx_resid, atol, rtol, inherited)["n_bad"] == 0
    wrong = torch_resid + np.array([[0.0, 5e-4]])  # a residual off at ordinary magnitudes is still caught
    assert compare(torch_resid, wrong, atol, rtol, inherited)["n_bad"] == 1
    assert compare(torch_resid, onnx_resid, 0.0, 0.0, resid_inherited(x, pred, scale, 0.0, 0.0))["n_bad"] == 1


# ----------------------------------------------------------------------------------------------- runtime.calibration


def test_regime_of_first_active_flag_in_registry_order():
    flags = np.array([[0, 0, 0], [0, 1, 1], [1, 0, 1], [0, 0, 0.4]], dtype=np.float32)
    assert regime_of(flags, ["stopped", "curtailed", "low_wind"]) == ["normal", "curtailed", "stopped", "normal"]
    with pytest.raises(CalibrationError, match=r"flags_last must be \(B, R=2\)"):
        regime_of(flags, ["a", "b"])


def test_percentile_calibration_levels_and_fallbacks():
    rng = np.random.default_rng(0)
    scores = rng.random(300)
    turbines = ["A"] * 200 + ["B"] * 100
    regimes = ["normal"] * 150 + ["stopped"] * 50 + ["normal"] * 100
    cal = fit_percentile_calibration(
        scores, turbines, regimes, 99.0, 120, per_turbine=True, per_regime=True, fitted_on="unit test"
    )
    assert cal.global_threshold == pytest.approx(np.percentile(scores, 99.0))
    assert cal.per_turbine == {"A": pytest.approx(np.percentile(scores[:200], 99.0))}
    assert cal.per_turbine_regime == {"A|normal": pytest.approx(np.percentile(scores[:150], 99.0))}
    assert cal.fallbacks == {
        "B": "100 windows < min_windows=120; uses the global threshold",
        "A|stopped": "50 windows < min_windows=120; uses the turbine threshold",
        "B|normal": "100 windows < min_windows=120; uses the global threshold",
    }
    assert cal.threshold_for("A", "normal")[1] == "turbine_regime"
    assert cal.threshold_for("A", "stopped")[1] == "turbine"
    assert cal.threshold_for("B", "normal")[1] == "global"
    assert cal.threshold_for("never-seen", "normal") == (cal.global_threshold, "global")
    assert Calibration.from_dict(cal.to_dict()) == cal
    with pytest.raises(CalibrationError, match=r"unknown keys \['x'\], missing keys \[\]"):
        Calibration.from_dict({**cal.to_dict(), "x": 1})
    with pytest.raises(CalibrationError, match="no windows to calibrate on"):
        fit_percentile_calibration(np.zeros(0), [], [], 99.0, 10)
