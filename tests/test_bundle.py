"""The bundle contract (runtime/bundle.py): a pinned tiny bundle, exact refusal messages, and a fuzz of corruptions.

The tiny bundle is built without torch: two hand-written ONNX graphs with the bundle's I/O names and shapes
(L=4, K=1, F=2, R=1, C=2, topn=1), so these tests pin the format, not the model.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper  # noqa: E402

from scada_tcn.runtime import bundle_copy  # noqa: E402
from scada_tcn.runtime.bundle import (  # noqa: E402
    SCHEMA_VERSION,
    TOP_KEYS,
    Bundle,
    BundleContents,
    compute_bundle_id,
    compute_model_id,
    dump_bundle,
    load_bundle,
)
from scada_tcn.runtime.calibration import fit_percentile_calibration  # noqa: E402
from scada_tcn.runtime.drift import DriftReference  # noqa: E402
from scada_tcn.runtime.errors import BundleError, ConfigError, InputError  # noqa: E402
from scada_tcn.runtime.scaling import RobustScaler  # noqa: E402
from scada_tcn.runtime.scorer import OnnxScorer  # noqa: E402
from scada_tcn.runtime.spec import PipelineSpec  # noqa: E402

L, K, F, R, C, TOPN = 4, 1, 2, 1, 2, 1

# the pinned format: every key of bundle.json and of each section
GOLDEN_KEYS = {
    "<top>": sorted(TOP_KEYS),
    "dims": ["C", "F", "K", "L", "R", "RF"],
    "feature_registry": ["angular_channel_names", "engineered_version", "feature_names", "raw_channel_names"],
    "flag_registry": ["flag_names", "flags_version"],
    "table_identifiers": ["naive_timezone", "time_col", "time_format", "turbine_id_col", "turbine_id_from_file"],
    "table_csv": ["decimal", "delimiter", "encoding", "skip_lines"],
    "heads": ["fault", "fault_multilabel", "forecast", "rul"],
    "scoring": [
        "aggregation",
        "context",
        "groups",
        "halflife",
        "k",
        "kind",
        "masks",
        "p_score",
        "passes",
        "seed",
        "topn",
    ],
    "calibration": [
        "fallbacks",
        "fitted_on",
        "global_threshold",
        "method",
        "min_windows",
        "n_windows",
        "params",
        "per_regime",
        "per_turbine",
        "per_turbine_regime",
        "percentile",
    ],
    "alerting": ["N_off", "N_on", "T_off", "T_on"],
    "fleet": ["min_peers", "min_present_fraction", "relative"],
    "score_reference": ["levels", "n_windows", "split", "values"],
    "feature_reference": ["feature_names", "levels", "mean", "n", "quantiles", "std"],
    "versions": ["ir_version", "onnx", "onnxruntime", "opset", "package", "torch"],
    "checksums": ["clean.onnx", "scoring.onnx"],
    "parity": ["atol", "cases", "extreme", "outputs", "passed", "rtol"],
}


def _model(nodes, inputs, outputs, inits=()) -> bytes:
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(inits))
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], producer_name="test_bundle")
    m.ir_version = 10
    onnx.checker.check_model(m, full_check=True)
    return m.SerializeToString()


def _vi(name: str, shape: list, elem=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, elem, shape)


def tiny_graphs() -> dict[str, bytes]:
    """clean: Y_hat = X[:, -1:, :], fault_prob = softmax of the mean over time of X[:, :, :C]; scoring: reductions."""
    i64 = lambda name, v: helper.make_tensor(name, TensorProto.INT64, [len(v)], v)  # noqa: E731
    clean = _model(
        [
            helper.make_node("Slice", ["X", "s_last", "e_last", "ax1"], ["Y_hat"]),
            helper.make_node("Slice", ["X", "z", "c", "ax2"], ["head"]),
            helper.make_node("ReduceMean", ["head", "ax1"], ["logits"], keepdims=0),
            helper.make_node("Softmax", ["logits"], ["fault_prob"], axis=-1),
        ],
        [_vi("X", ["batch", L, F]), _vi("M_miss", ["batch", L, F]), _vi("Flags", ["batch", L, R])],
        [_vi("Y_hat", ["batch", K, F]), _vi("fault_prob", ["batch", C])],
        [i64("s_last", [-1]), i64("e_last", [L]), i64("ax1", [1]), i64("ax2", [2]), i64("z", [0]), i64("c", [C])],
    )
    scoring = _model(
        [
            helper.make_node("Mul", ["X", "M_miss"], ["Xm"]),
            helper.make_node("Abs", ["Xm"], ["E"]),
            helper.make_node("ReduceSum", ["E", "ax1"], ["feat_contrib"], keepdims=0),
            helper.make_node("ReduceSum", ["feat_contrib", "ax1"], ["s_now"], keepdims=0),
            helper.make_node("TopK", ["feat_contrib", "k"], ["vals", "top_idx"]),
        ],
        [_vi("X", ["batch", L, F]), _vi("M_miss", ["batch", L, F]), _vi("Flags", ["batch", L, R])],
        [
            _vi("s_now", ["batch"]),
            _vi("feat_contrib", ["batch", F]),
            _vi("top_idx", ["batch", TOPN], TensorProto.INT64),
            _vi("E", ["batch", L, F]),
        ],
        [i64("ax1", [1]), i64("k", [TOPN])],
    )
    return {"clean": clean, "scoring": scoring}


def tiny_manifest() -> dict:
    """The bundle.json sections of a tiny bundle, as plain JSON (what `BundleContents.to_dict` writes)."""
    spec = PipelineSpec(
        dt_seconds=600,
        channels=("wind_speed", "power"),
        dedupe="last",
        aggregation={},
        valid_range={},
        winsor_caps={},
        feature_channels=("wind_speed", "power"),
        angular_channels=(),
        angle_units="deg",
        yaw_error=None,
        deltas=(),
        rolling=None,
        flag_names=("stopped",),
        flag_rules={"stopped": "power <= 0"},
        fill_value=0.0,
    )
    scaler = RobustScaler(spec.feature_names, [1.0, 2.0], [3.0, 4.0], [True, True], 20.0, ("iqr", "iqr"))
    scores = np.linspace(0.0, 1.0, 40)
    cal = fit_percentile_calibration(scores, ["T1"] * 30 + ["T2"] * 10, ["normal"] * 40, 99.0, 20, fitted_on="test")
    stats = {"max_abs": 0.0, "max_rel": 0.0, "n_bad": 0}
    return {
        "dims": {"L": L, "K": K, "F": F, "R": R, "C": C, "RF": 5},
        "dt_seconds": 600,
        "feature_registry": {
            "feature_names": list(spec.feature_names),
            "raw_channel_names": ["wind_speed", "power"],
            "angular_channel_names": [],
            "engineered_version": "e1",
        },
        "flag_registry": {"flag_names": ["stopped"], "flags_version": "f1"},
        "column_mapping": {"wind_speed": "ws", "power": "p"},
        "table_identifiers": {
            "turbine_id_col": "turbine_id",
            "time_col": "timestamp",
            "naive_timezone": None,
            "turbine_id_from_file": None,
            "time_format": None,
        },
        "table_csv": {"delimiter": ",", "decimal": ".", "skip_lines": 0, "encoding": "utf-8"},
        "pipeline_spec": spec.to_dict(),
        "scaler": scaler.to_dict(),
        "heads": {"forecast": True, "fault": True, "fault_multilabel": False, "rul": False},
        "class_names": ["normal", "fault"],
        "scoring": {
            "kind": "window_mean",
            "masks": "element",
            "p_score": 0.25,
            "groups": None,
            "context": [],
            "passes": 4,
            "seed": 1,
            "aggregation": "masked_mean",
            "halflife": None,
            "topn": TOPN,
            "k": None,
        },
        "signals": None,
        "stream": None,
        "calibration": cal.to_dict(),
        "alerting": {"T_on": 1.0, "T_off": 0.8, "N_on": 3, "N_off": 6},
        "fleet": {"relative": False, "min_peers": 1, "min_present_fraction": 0.5},
        "score_reference": {"split": "val", "n_windows": 40, "levels": [0.0, 0.5, 1.0], "values": [0.0, 0.5, 1.0]},
        "feature_reference": DriftReference.fit(
            np.arange(20.0).reshape(10, 2), list(spec.feature_names), levels=[0.0, 0.5, 1.0]
        ).to_dict(),
        "versions": {"torch": "t", "onnx": "o", "onnxruntime": "r", "package": "p", "opset": 18, "ir_version": 10},
        "data_fingerprint": "fp",
        "parity": {
            "atol": 1e-5,
            "rtol": 1e-4,
            "extreme": 20.0,
            "passed": True,
            "outputs": {"scoring/s_now": stats},
            "cases": {"val": {"n_windows": 1, "outputs": {"scoring/s_now": stats}}},
        },
    }


def tiny_contents(**changes) -> BundleContents:
    """The tiny bundle as typed records; `changes` replace whole sections of the JSON before parsing."""
    return BundleContents.from_dict(tiny_manifest() | changes)


@pytest.fixture()
def bundle_dir(tmp_path) -> Path:
    dump_bundle(tmp_path / "b", tiny_graphs(), tiny_contents())
    return tmp_path / "b"


def _edit(path: Path, fn) -> None:
    doc = json.loads((path / "bundle.json").read_text())
    fn(doc)
    (path / "bundle.json").write_text(json.dumps(doc))


def _message(path: Path) -> str:
    with pytest.raises(BundleError) as e:
        load_bundle(path)
    return str(e.value)


# ----------------------------------------------------------------------------------------------- golden


def test_tiny_bundle_key_set_is_pinned(bundle_dir):
    doc = json.loads((bundle_dir / "bundle.json").read_text())
    got = {"<top>": sorted(doc)} | {k: sorted(doc[k]) for k in GOLDEN_KEYS if k != "<top>"}
    assert doc["signals"] is None  # a window_mean bundle
    assert got == GOLDEN_KEYS
    assert sorted(p.name for p in bundle_dir.iterdir()) == ["bundle.json", "clean.onnx", "scoring.onnx"]
    assert doc["schema_version"] == SCHEMA_VERSION == 12
    sha = {f: hashlib.sha256((bundle_dir / f).read_bytes()).hexdigest() for f in ("clean.onnx", "scoring.onnx")}
    assert doc["checksums"] == sha and doc["stream"] is None  # no step graph: scored window by window
    assert doc["model_id"] == compute_model_id(sha, doc["feature_registry"], doc["flag_registry"])


def test_dump_load_round_trip(bundle_dir):
    b = load_bundle(bundle_dir)
    assert isinstance(b, Bundle) and b.clean_outputs == ("Y_hat", "fault_prob")
    assert b.spec.feature_names == ("wind_speed", "power") and b.scaler.clip == 20.0
    assert b.calibration.threshold_for("T1") == (b.calibration.per_turbine["T1"], "turbine")
    assert b.calibration.threshold_for("T2")[1] == "global"  # 10 windows < min_windows=20, recorded
    assert "T2" in b.calibration.fallbacks
    again = dump_bundle(bundle_dir.parent / "again", tiny_graphs(), tiny_contents())
    assert again.model_id == b.model_id
    body = {k: v for k, v in b.to_dict().items() if k not in ("schema_version", "model_id", "checksums")}
    assert BundleContents.from_dict(body).to_dict() == body == tiny_contents().to_dict()  # symmetric
    assert b.to_dict() == json.loads((bundle_dir / "bundle.json").read_text())
    assert (bundle_dir.parent / "again" / "bundle.json").read_bytes() == (bundle_dir / "bundle.json").read_bytes()


def test_dump_refuses_invalid_contents_and_writes_nothing(tmp_path):
    good = tiny_contents()
    bad = dataclasses.replace(good, dims=dataclasses.replace(good.dims, F=3))
    with pytest.raises(BundleError, match="inconsistent bundle: dims F=3, R=1 but the registries hold 2 features"):
        dump_bundle(tmp_path / "b", tiny_graphs(), bad)
    assert not (tmp_path / "b").exists()
    with pytest.raises(BundleError, match="contents must be a BundleContents, got dict"):
        dump_bundle(tmp_path / "b", tiny_graphs(), tiny_manifest())
    with pytest.raises(BundleError, match=r"graphs must be exactly \['clean', 'scoring'\]"):
        dump_bundle(tmp_path / "b", {"clean": b""}, good)


def test_scorer_runs_the_tiny_graphs_and_checks_inputs(bundle_dir):
    s = OnnxScorer(load_bundle(bundle_dir))
    X = np.arange(2 * L * F, dtype=np.float32).reshape(2, L, F)
    M = np.ones_like(X)
    M[0, 0, 0] = 0.0
    out = s.score(X, M, np.zeros((2, L, R), np.float32))
    np.testing.assert_allclose(out.s_now, np.abs(X * M).sum(axis=(1, 2)))
    np.testing.assert_allclose(out.Y_hat, X[:, -1:, :])  # the graph reads X as the scorer got it
    assert out.fault_prob.shape == (2, C) and np.allclose(out.fault_prob.sum(axis=1), 1.0) and out.rul is None
    with pytest.raises(InputError, match=r"X must be a float32 numpy array, got float64"):
        s.score(X.astype(np.float64), M, np.zeros((2, L, R), np.float32))
    with pytest.raises(InputError, match=r"Flags must be \(B, 4, 1\) with B >= 1, got \(2, 4, 2\)"):
        s.score(X, M, np.zeros((2, L, 2), np.float32))
    with pytest.raises(InputError, match="M_miss has batch 1, X has 2"):
        s.score(X, M[:1], np.zeros((2, L, R), np.float32))


# ----------------------------------------------------------------------------------------------- refusals


def test_refuses_tampered_graph(bundle_dir):
    path = bundle_dir / "scoring.onnx"
    recorded = hashlib.sha256(path.read_bytes()).hexdigest()
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01
    path.write_bytes(bytes(data))
    actual = hashlib.sha256(bytes(data)).hexdigest()
    assert _message(bundle_dir) == (
        f"scoring.onnx: sha256 mismatch: bundle.json records {recorded}, the file has "
        f"{actual}; the graph was modified after export"
    )


def test_refuses_unknown_key(bundle_dir):
    _edit(bundle_dir, lambda d: d.update(extra=1))
    assert _message(bundle_dir) == (
        f"bundle.json: <top level>: unknown key 'extra' (unknown ['extra']); allowed keys: {list(TOP_KEYS)}"
    )
    _edit(bundle_dir, lambda d: (d.pop("extra"), d["scoring"].update(temperature=2.0)))
    assert _message(bundle_dir).startswith("bundle.json: scoring: unknown key 'temperature'")


def test_refuses_missing_key(bundle_dir):
    _edit(bundle_dir, lambda d: d.pop("scaler"))
    assert _message(bundle_dir) == "bundle.json: <top level>: missing key 'scaler' (missing ['scaler'])"
    _edit(bundle_dir, lambda d: (d.update(scaler=tiny_manifest()["scaler"]), d["alerting"].pop("N_off")))
    assert _message(bundle_dir) == "bundle.json: alerting: missing key 'N_off' (missing ['N_off'])"


def test_refuses_graph_shapes_that_disagree_with_dims(bundle_dir):
    # dims are not covered by a checksum: bundle.json is the root of trust, so the graphs themselves must agree
    _edit(bundle_dir, lambda d: d["dims"].update(L=5))
    assert _message(bundle_dir) == (
        "clean.onnx: input 'X' is tensor(float) ['batch', 4, 2], expected tensor(float) ['batch', 5, 2] from the "
        "bundle dims Dims(L=5, K=1, F=2, R=1, C=2, RF=5) (a symbolic batch axis)"
    )
    _edit(bundle_dir, lambda d: d["dims"].update(L=4, C=3))
    assert _message(bundle_dir).startswith("bundle.json: inconsistent bundle: 2 class_names for C=3 fault classes")
    _edit(bundle_dir, lambda d: (d["dims"].update(C=2), d["scoring"].update(topn=2)))
    assert _message(bundle_dir).startswith("scoring.onnx: output 'top_idx' is tensor(int64) ['batch', 1], expected")


def test_refuses_dims_f_edit_through_the_registries(bundle_dir):
    _edit(bundle_dir, lambda d: d["dims"].update(F=3))
    assert "dims F=3, R=1 but the registries hold 2 features, 1 flags" in _message(bundle_dir)


def test_refuses_registry_edit_through_the_model_id(bundle_dir):
    _edit(bundle_dir, lambda d: d["feature_registry"].update(engineered_version="e2"))
    assert _message(bundle_dir).startswith("bundle.json: model_id '")


def test_refuses_unknown_schema_version(bundle_dir):
    for v in (1, 2, 3, 4, 5, 6, 13, 0, "8", 8.0, True, None):
        _edit(bundle_dir, lambda d, v=v: d.update(schema_version=v))
        assert _message(bundle_dir) == (
            f"bundle.json: schema_version {v!r} is not supported (this runtime reads versions (7, 8, 9, 10, 11, 12)); "
            "export the model again with a scada-export of the same release as this runtime"
        )


def test_a_bundle_of_schema_7_loads_with_its_ids_and_replays_with_the_old_defaults(bundle_dir):
    """Version 8 added table_identifiers only: a version-7 bundle (the same graphs) loads on a gateway whose
    runtime was upgraded, with the same model id (its states resume) and the same bundle id as before; replay
    assumes what it assumed for it (turbine_id, timestamp, no zone). Each version's keys are exactly its own."""
    v8 = load_bundle(bundle_dir)  # version 10, whose table_csv says plain CSV, as replay reads version 7 and 8
    assert v8.table_format[1:4] == ("turbine_id", "timestamp", None)
    _edit(bundle_dir, lambda d: (d.pop("table_identifiers"), d.pop("table_csv"), d["pipeline_spec"].pop("hold_s"),
                                 d.update(schema_version=7)))  # fmt: skip
    v7 = load_bundle(bundle_dir)
    doc = json.loads((bundle_dir / "bundle.json").read_text())
    assert (v7.schema_version, v7.model_id, v7.table_identifiers) == (7, v8.model_id, None)
    assert v7.to_dict() == doc and v7.bundle_id == compute_bundle_id(doc) != v8.bundle_id
    assert v7.table_format == v8.table_format  # SCHEMA7_IDENTIFIERS: the defaults runtime.yaml had
    _edit(bundle_dir, lambda d: d.update(table_identifiers=None))
    assert "unknown key 'table_identifiers'" in _message(bundle_dir)
    _edit(bundle_dir, lambda d: d.update(schema_version=8))
    assert "table_identifiers: null; a bundle of this version names the training table's id" in _message(bundle_dir)
    d = {"turbine_id_col": "Wind_turbine_name", "time_col": "Date_time", "naive_timezone": "Europe/Paris"}
    _edit(bundle_dir, lambda doc: doc.update(table_identifiers=d))
    assert load_bundle(bundle_dir).table_format[1:4] == ("Wind_turbine_name", "Date_time", "Europe/Paris")
    for bad, said in (({**d, "naive_timezone": "Europe/Pari"}, "unknown time zone 'Europe/Pari'"),
                      ({**d, "time_col": "Wind_turbine_name"}, "time_col: a column name other than the id column"),
                      ({**d, "turbine_id_col": None}, "turbine_id_col: a column name expected"),
                      ({**d, "naive_timezone": 1}, "a zone name or null expected"),
                      ({**d, "extra": 1}, "unknown key 'extra'")):  # fmt: skip
        _edit(bundle_dir, lambda doc, bad=bad: doc.update(table_identifiers=bad))
        assert said in _message(bundle_dir)


def test_table_csv_came_with_schema_10_and_older_bundles_replay_plain_csv(bundle_dir):
    """Version 10 added table_csv (how the training table's CSV was written: data.csv) and the turbine-id pattern
    of per-turbine files (data.identifiers.turbine_id_from_file): a version-9 bundle loads with the same model
    id, and replay reads its tables as plain CSV with ids from a column, as it always did. From version 10 both
    are required and checked as scada-prepare checks its config."""
    v10 = load_bundle(bundle_dir)
    assert v10.table_csv.to_dict() == {"delimiter": ",", "decimal": ".", "skip_lines": 0, "encoding": "utf-8"}
    ids = {"turbine_id_col": None, "time_col": "# Date and time", "naive_timezone": "UTC",
           "turbine_id_from_file": r"Turbine_Data_(Kelmarsh_\d+)_", "time_format": "%d.%m.%Y %H:%M"}  # fmt: skip
    _edit(bundle_dir, lambda d: d.update(table_identifiers=ids))
    assert load_bundle(bundle_dir).table_format[1:4] + load_bundle(bundle_dir).table_format[5:] == (
        None, "# Date and time", "UTC", r"Turbine_Data_(Kelmarsh_\d+)_", "%d.%m.%Y %H:%M")  # fmt: skip
    for bad, said in (({**ids, "turbine_id_col": "WTG"}, "turbine_id_col: a column name expected (and "
                                                         "turbine_id_from_file null)"),
                      ({**ids, "turbine_id_from_file": None}, "turbine_id_from_file: a regular expression expected"),
                      ({**ids, "turbine_id_from_file": "(a)(b)"}, "has 2 groups; put one around the id"),
                      ({**ids, "turbine_id_from_file": "(a"}, "is not a regular expression"),
                      ({**ids, "time_format": "%d.%m.%Y"}, "time_format: '%d.%m.%Y' does not hold the year, month"),
                      ({**ids, "time_format": 1}, "time_format: a strptime format")):  # fmt: skip
        _edit(bundle_dir, lambda doc, bad=bad: doc.update(table_identifiers=bad))
        assert said in _message(bundle_dir)
    by_column = {**ids, "turbine_id_col": "turbine_id", "turbine_id_from_file": None, "time_format": None}
    _edit(bundle_dir, lambda d: d.update(table_identifiers=by_column))
    _edit(bundle_dir, lambda d: (d.pop("table_csv"), d["table_identifiers"].pop("turbine_id_from_file"),
                                 d["table_identifiers"].pop("time_format"), d["pipeline_spec"].pop("hold_s"),
                                 d.update(schema_version=9)))  # fmt: skip
    v9 = load_bundle(bundle_dir)
    assert (v9.schema_version, v9.model_id, v9.table_csv) == (9, v10.model_id, None)
    assert v9.table_format.dialect[:3] == (",", ".", 0) and v9.table_format.turbine_id_from_file is None
    assert v9.table_format.turbine_id_col == "turbine_id"
    assert v9.to_dict() == json.loads((bundle_dir / "bundle.json").read_text())
    _edit(
        bundle_dir,
        lambda d: d.update(table_csv={"delimiter": ";", "decimal": ".", "skip_lines": 0, "encoding": "utf-8"}),
    )
    assert "unknown key 'table_csv'" in _message(bundle_dir)
    _edit(bundle_dir, lambda d: d.update(schema_version=10, table_csv=None, table_identifiers=by_column))
    assert "table_csv: null; a bundle of this version says how the training table's CSV" in _message(bundle_dir)
    good = {"delimiter": ";", "decimal": ",", "skip_lines": 9, "encoding": "cp1252"}
    _edit(bundle_dir, lambda d: d.update(table_csv=good))
    assert load_bundle(bundle_dir).table_format.dialect == (";", ",", 9, "mapping.csv", "cp1252")
    for bad, said in (({**good, "delimiter": ":"}, "table_csv.delimiter: one of [',', ';', '\\t', '|'] expected"),
                      ({**good, "delimiter": ","}, "table_csv: decimal ',' needs another delimiter"),
                      ({**good, "decimal": "·"}, "table_csv.decimal: '.' or ',' expected"),
                      ({**good, "skip_lines": -1}, "table_csv.skip_lines: a whole number of lines"),
                      ({**good, "skip_lines": True}, "table_csv.skip_lines: a whole number of lines"),
                      ({**good, "delimiter": [";"]}, "table_csv.delimiter: one of"),
                      ({**good, "encoding": "base64"}, "table_csv.encoding: a text encoding such as"),
                      ({**good, "sep": ";"}, "unknown key 'sep'")):  # fmt: skip
        _edit(bundle_dir, lambda doc, bad=bad: doc.update(table_csv=bad))
        assert said in _message(bundle_dir)


def test_hold_s_came_with_schema_11_and_older_bundles_hold_nothing(bundle_dir):
    """Version 11 added pipeline_spec.hold_s (report-by-exception channels): a version-10 bundle loads with the same
    model id and no channel held; each version's spec keys are exactly its own."""
    v11 = load_bundle(bundle_dir)
    assert dict(v11.spec.hold_s) == {} and v11.to_dict()["pipeline_spec"]["hold_s"] == {}
    _edit(bundle_dir, lambda d: d["pipeline_spec"].update(hold_s={"power": 3600}))
    held = load_bundle(bundle_dir)
    assert dict(held.spec.hold_s) == {"power": 3600} and held.model_id == v11.model_id
    assert held.bundle_id != v11.bundle_id and held.to_dict() == json.loads((bundle_dir / "bundle.json").read_text())
    for bad, said in (({"power": 0}, "hold_s: seconds a value holds must be integers from 1 to"),
                      ({"power": 60.5}, "hold_s: seconds a value holds must be integers from 1 to"),
                      ({"pitch": 60}, "hold_s: unknown channels ['pitch']")):  # fmt: skip
        _edit(bundle_dir, lambda d, bad=bad: d["pipeline_spec"].update(hold_s=bad))
        assert said in _message(bundle_dir)
    _edit(bundle_dir, lambda d: d["pipeline_spec"].pop("hold_s"))
    assert "missing" in _message(bundle_dir) and "hold_s" in _message(bundle_dir)
    _edit(bundle_dir, lambda d: d.update(schema_version=10))
    v10 = load_bundle(bundle_dir)
    assert (v10.schema_version, v10.model_id, dict(v10.spec.hold_s)) == (10, v11.model_id, {})
    assert v10.to_dict() == json.loads((bundle_dir / "bundle.json").read_text())
    _edit(bundle_dir, lambda d: d["pipeline_spec"].update(hold_s={}))
    assert "pipeline_spec.hold_s: unknown in schema_version 10 (from 11 on)" in _message(bundle_dir)


def test_time_came_with_schema_12_and_the_edge_may_time_weigh_a_held_channel(bundle_dir):
    """Version 12 added the aggregation `time` (a held channel's time-weighted mean): a version-11 bundle with it is
    refused. `with_time_weighted` (runtime.yaml's mapping.time_weighted) gives the same model scoring a source
    that sends instantaneous readings: its bundle id names the changed setting, and the bundle's own setting or
    None gives the bundle itself; a channel that does not hold, or no channel of the bundle, is refused."""
    _edit(bundle_dir, lambda d: d["pipeline_spec"].update(hold_s={"power": 3600}))
    held = load_bundle(bundle_dir)
    timed = held.with_time_weighted(["power"])
    assert timed.spec.aggregation["power"] == "time" and held.spec.aggregation.get("power") is None
    assert (timed.model_id, timed.graphs) == (held.model_id, held.graphs) and timed.bundle_id != held.bundle_id
    assert timed.schema_version == SCHEMA_VERSION and compute_bundle_id(timed.to_dict()) == timed.bundle_id
    assert held.with_time_weighted(None) is held and held.with_time_weighted([]) is held
    _edit(bundle_dir, lambda d: d["pipeline_spec"].update(aggregation={"power": "time"}))
    written = load_bundle(bundle_dir)
    assert written.bundle_id == timed.bundle_id and written.with_time_weighted(["power", "power"]) is written
    assert written.with_time_weighted([]).spec.aggregation.get("power") is None
    with pytest.raises(ConfigError, match=r"mapping.time_weighted: \['wind_speed'\] do not hold in this bundle"):
        held.with_time_weighted(["wind_speed"])
    with pytest.raises(ConfigError, match=r"mapping.time_weighted: \['pitch'\] are not channels of this bundle"):
        held.with_time_weighted(["pitch"])
    _edit(bundle_dir, lambda d: d.update(schema_version=11))
    assert "pipeline_spec.aggregation: time is unknown in schema_version 11 (from 12 on)" in _message(bundle_dir)
    _edit(bundle_dir, lambda d: d["pipeline_spec"].update(aggregation={}))
    assert load_bundle(bundle_dir).schema_version == 11
    _edit(bundle_dir, lambda d: d["pipeline_spec"].update(aggregation={"power": "max"}))
    with pytest.raises(ConfigError, match=r"\['power'\] aggregate by \['max'\] in this bundle, not by their mean"):
        load_bundle(bundle_dir).with_time_weighted(["power"])


def test_refuses_failed_parity_and_missing_graph(bundle_dir):
    _edit(bundle_dir, lambda d: d["parity"].update(passed=False))
    assert "parity.passed is false" in _message(bundle_dir)
    (bundle_dir / "clean.onnx").unlink()
    assert _message(bundle_dir) == f"clean.onnx: graph file missing from {bundle_dir}"


# ----------------------------------------------------------------------------------------------- fuzz


def _paths(d, prefix=()):
    """Every key path into nested dicts of bundle.json."""
    for k, v in d.items():
        yield (*prefix, k)
        if isinstance(v, dict):
            yield from _paths(v, (*prefix, k))


def _corruptions(doc):
    for path in _paths(doc):

        def setter(d, value, path=path):
            for k in path[:-1]:
                d = d[k]
            if value is _DELETE:
                del d[path[-1]]
            else:
                d[path[-1]] = value

        yield f"delete {'.'.join(path)}", lambda d, s=setter: s(d, _DELETE)
        for label, value in (("str", "x"), ("float", 1.5), ("list", []), ("dict", {}), ("null", None), ("neg", -3)):
            yield f"{label} at {'.'.join(path)}", lambda d, s=setter, v=value: s(d, copy.deepcopy(v))
    for section in [k for k, v in doc.items() if isinstance(v, dict)]:
        yield f"unknown key in {section}", lambda d, s=section: d[s].update(zzz=1)


_DELETE = object()


ALLOWED_EDITS = (
    "float at",
    "neg at pipeline_spec.fill_value",
    "str at",
    "null at parity",
    "null at scaler.clip",
    "delete calibration.per_turbine.",
    "delete calibration.fallbacks.",
    "dict at calibration.",
    "delete parity.",
    "dict at parity.",
)


def _reason(msg: str) -> str:
    """Group a message by file and section: 'bundle.json: scaler', 'clean.onnx', ..."""
    head, _, rest = msg.partition(": ")
    if head != "bundle.json":
        return head.split(" ")[0]
    section = rest.split(":")[0].split(" ")[0].split(".")[0].replace("<top", "<top level>")
    return f"bundle.json: {section}"


def test_fuzz_every_corruption_is_a_bundle_error(bundle_dir, tmp_path):
    base = json.loads((bundle_dir / "bundle.json").read_text())
    outcomes: Counter[str] = Counter()
    accepted = []
    work = tmp_path / "w"
    shutil.copytree(bundle_dir, work)
    cases = list(_corruptions(base))
    n_applied = 0
    raw = [
        ("truncated json", b'{"schema_version": 1, "dims"'),
        ("not utf-8", b"\xff\xfe{}"),
        ("json array", b"[1, 2]"),
        ("nan literal", json.dumps(base).replace('"max_abs": 0.0', '"max_abs": NaN', 1).encode()),
        ("empty", b""),
    ]
    for name, corrupt in cases:
        doc = copy.deepcopy(base)
        corrupt(doc)
        if doc == base:  # e.g. [] where the value already was []
            continue
        n_applied += 1
        (work / "bundle.json").write_text(json.dumps(doc))
        try:
            load_bundle(work)
        except BundleError as e:
            outcomes[_reason(str(e))] += 1
            continue
        accepted.append(name)
    for _name, data in raw:
        (work / "bundle.json").write_bytes(data)
        with pytest.raises(BundleError):
            load_bundle(work)
        outcomes["raw"] += 1
    (work / "bundle.json").write_text(json.dumps(base))
    for _name, data in (
        ("truncated graph", tiny_graphs()["clean"][:50]),
        ("random graph", bytes(range(256)) * 4),
        ("swapped graphs", tiny_graphs()["scoring"]),
    ):
        (work / "clean.onnx").write_bytes(data)
        with pytest.raises(BundleError, match="clean.onnx: sha256 mismatch"):
            load_bundle(work)
        outcomes["graph"] += 1
    n = n_applied + len(raw) + 3
    print(f"\n{n} corruptions: {len(accepted)} accepted (free text or optional values), rejections by reason:")
    for reason, count in outcomes.most_common():
        print(f"  {count:4d}  {reason}")
    print("accepted:", accepted)
    # what a valid bundle may still hold after an edit: numbers in range, free text, optional entries
    assert all(a.startswith(ALLOWED_EDITS) for a in accepted), sorted(
        a for a in accepted if not a.startswith(ALLOWED_EDITS)
    )
    assert sum(outcomes.values()) + len(accepted) == n
    assert sum(outcomes.values()) > 0.8 * n


def test_the_copy_beside_the_state_file_reads_back_as_the_running_bundle(bundle_dir, tmp_path):
    """`bundle_copy` keeps the running bundle beside the daemon's state file, for the restart after a crash on
    another bundle: a bundle of an older schema and a time-weighted one (its own document, not the folder's) read
    back with their bundle ids; a copy is written once; `prune` deletes the others and a half-written one; an id
    that is not one (a path) finds nothing; a copy that does not read back as its bundle is refused."""
    state = tmp_path / "state" / "state.npz"
    state.parent.mkdir()
    _edit(bundle_dir, lambda d: (d["pipeline_spec"].update(hold_s={"power": 3600}), d.update(schema_version=11)))
    held = load_bundle(bundle_dir)
    timed = held.with_time_weighted(["power"])
    for b in (held, timed):
        where = bundle_copy.keep(b, state)
        assert where == bundle_copy.find(state, b.bundle_id) == bundle_copy.copies_dir(state) / b.bundle_id
        again = load_bundle(where)
        assert (again.bundle_id, again.model_id, again.graphs, again.schema_version) == (
            b.bundle_id, b.model_id, b.graphs, b.schema_version)  # fmt: skip
    assert load_bundle(bundle_copy.find(state, held.bundle_id)).spec.aggregation.get("power") is None
    stamp = (bundle_copy.find(state, held.bundle_id) / "bundle.json").stat().st_mtime_ns
    bundle_copy.keep(held, state)
    assert (bundle_copy.find(state, held.bundle_id) / "bundle.json").stat().st_mtime_ns == stamp
    (bundle_copy.copies_dir(state) / ".abc.tmp").mkdir()  # what a crash during a copy leaves
    assert bundle_copy.prune(state, timed.bundle_id) == [held.bundle_id]
    assert [p.name for p in bundle_copy.copies_dir(state).iterdir()] == [timed.bundle_id]
    assert bundle_copy.find(state, held.bundle_id) is None and bundle_copy.find(state, "../state") is None
    with pytest.raises(BundleError, match="beside the state file does not read back as it"):
        bundle_copy.keep(dataclasses.replace(held, bundle_id="0" * 64), state)
    assert bundle_copy.find(state, "0" * 64) is None
    where = bundle_copy.find(state, timed.bundle_id)  # damaged: a graph gone (the disk, a hand) ...
    (where / "clean.onnx").unlink()
    assert bundle_copy.keep(timed, state) == where and load_bundle(where).bundle_id == timed.bundle_id  # ... again
    _edit(bundle_dir, lambda d: d["alerting"].update(T_on=2))  # edited by hand: an integer the loader reads as 2.0
    edited = load_bundle(bundle_dir)
    assert edited.to_dict()["alerting"]["T_on"] == 2.0 and compute_bundle_id(edited.to_dict()) != edited.bundle_id
    assert load_bundle(bundle_copy.keep(edited, state)).bundle_id == edited.bundle_id  # its bundle.json as it is
