"""scada-infer: the torch and the ONNX engine give the same numbers; results and alerts are complete."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from scada_tcn.runtime.bundle import load_bundle
from scada_tcn.trainer.evaluation.offline import run_batch_inference, setup_from_bundle, setup_from_checkpoint


@pytest.fixture(scope="module")
def both(tiny_run, tiny_bundle, tmp_path_factory):
    out = tmp_path_factory.mktemp("infer")
    bundle = load_bundle(tiny_bundle)
    data_dir = tiny_run.cfg().data.paths.processed_dir
    torch_sum = run_batch_inference(setup_from_checkpoint(tiny_run.checkpoint), "test", out / "torch", batch_size=64)
    onnx_sum = run_batch_inference(setup_from_bundle(bundle.path, data_dir), "test", out / "onnx", batch_size=100)
    return out, torch_sum, onnx_sum


def test_torch_and_onnx_engines_agree(both):
    out, ts, os_ = both
    a = pd.read_parquet(out / "torch" / "results.parquet")
    b = pd.read_parquet(out / "onnx" / "results.parquet")
    assert ts["windows"] == os_["windows"] == len(a) == len(b) > 100
    assert (a["turbine_id"] == b["turbine_id"]).all() and (a["t_end"] == b["t_end"]).all()
    np.testing.assert_allclose(a["score"], b["score"], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(a["forecast_mae"], b["forecast_mae"], rtol=1e-4, atol=1e-5)
    probs = [c for c in a.columns if c.startswith("p_")]
    assert len(probs) == 6
    np.testing.assert_allclose(a[probs].to_numpy(), b[probs].to_numpy(), atol=1e-5)
    # the torch engine calibrates exactly as the export did, so thresholds agree too
    np.testing.assert_allclose(a["threshold"], b["threshold"], rtol=1e-4)
    same_top = [x[0] == y[0] for x, y in zip(a["top_features"], b["top_features"])]
    assert np.mean(same_top) > 0.99
    assert (a["alert_on"] == b["alert_on"]).mean() > 0.99


def test_results_are_time_ordered_and_alerts_match_states(both):
    out, *_ = both
    res = pd.read_parquet(out / "onnx" / "results.parquet")
    for _, g in res.groupby("turbine_id"):
        assert g["t_end"].is_monotonic_increasing
    assert {"score", "threshold", "threshold_source", "regime", "top_features", "top_contrib", "y"} <= set(res.columns)
    np.testing.assert_allclose([sum(c) for c in res["top_contrib"]] <= res["score"] + 1e-5, True)
    events = [json.loads(x) for x in (out / "onnx" / "alerts.jsonl").read_text().splitlines()]
    for tid, g in res.groupby("turbine_id"):
        ev = [e for e in events if e["turbine_id"] == tid]
        flips = int((g["alert_on"].astype(int).diff().fillna(g["alert_on"].astype(int).iloc[0]) != 0).sum())
        assert len(ev) == flips
        assert all(a["event"] != b["event"] for a, b in zip(ev, ev[1:]))  # on, off, on, ...


def test_refuses_prepared_data_with_another_scaler(tiny_bundle, tiny_run, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(tiny_run.cfg().data.paths.processed_dir, other)
    setup_from_bundle(tiny_bundle, other)  # a moved copy is the same data
    path = other / "scalers" / "robust_scaler.json"
    sc = json.loads(path.read_text())
    sc["center"][0] += 1.0
    path.write_text(json.dumps(sc))
    with pytest.raises(ValueError, match="another scaler or feature spec"):
        setup_from_bundle(tiny_bundle, other)


def test_cli_needs_exactly_one_engine(tiny_run):
    from scada_tcn.trainer.cli.pipeline import infer_app

    r = CliRunner().invoke(infer_app, ["--split", "test"])
    assert r.exit_code == 2 and "exactly one of --checkpoint" in r.output


def test_graph_is_a_bundles_choice_and_a_step_graph_one_needs_a_step_graph(tiny_run, tiny_bundle):
    """`--graph` picks which ONNX graph scores a per-signal bundle: a window-mean bundle has no step graph, so
    `step` is refused with what to do and `auto` scores its windows; an unknown graph, and `--graph` with a
    checkpoint (the torch engine) or with `--records`, are refused."""
    from scada_tcn.trainer.cli.pipeline import evaluate_app, infer_app

    data_dir = tiny_run.cfg().data.paths.processed_dir
    assert load_bundle(tiny_bundle).stream is None
    assert setup_from_bundle(tiny_bundle, data_dir).graph == "window"
    with pytest.raises(ValueError, match="no step graph.*graph window"):
        setup_from_bundle(tiny_bundle, data_dir, graph="step")
    with pytest.raises(ValueError, match="graph must be one of"):
        setup_from_bundle(tiny_bundle, data_dir, graph="fast")
    r = CliRunner().invoke(infer_app, ["--checkpoint", str(tiny_run.checkpoint), "--graph", "window"])
    assert r.exit_code == 2 and "give it with --bundle" in r.output
    r = CliRunner().invoke(evaluate_app, ["--records", "scores.jsonl", "--graph", "step"])
    assert r.exit_code == 2 and "leave out ['--graph']" in r.output
