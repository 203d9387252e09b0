"""The deployment bundle: what `scada-export` writes and the edge loads, and nothing else.

Format (schema version 2)
-------------------------
A bundle is a directory of three files:

- `clean.onnx`: input `X_in` (batch, L, 3F+R) float32 -> `Y_hat` (batch, K, F), `fault_logits` (batch, C),
  `rul` (batch, 1), each output present only when its head is on (`heads`), in that order.
- `scoring.onnx`: inputs `X`, `M_miss` (batch, L, F) and `Flags` (batch, L, R) float32 -> `s_now` (batch,),
  `feat_contrib` (batch, F), `top_idx` (batch, topn) int64, `E` (batch, L, F).
- `bundle.json`: UTF-8 JSON object (at most 16 MiB, no NaN or Infinity) with exactly these keys:

  schema_version   3 (version 2 added scoring.masks, groups and context, and pipeline_spec.yaw_error's
                   wind_speed and min_wind_speed; version 3 added fleet)
  model_id         sha256 hex of "scada-tcn-bundle/3", the sha256 of each graph (in file-name order) and the
                   canonical JSON of the feature and flag registries (`compute_model_id`)
  dims             {L, K, F, R, C, RF}: window, horizon, features, flags, fault classes, receptive field
  dt_seconds       step of the binned series
  feature_registry {feature_names, raw_channel_names, angular_channel_names, engineered_version}
  flag_registry    {flag_names, flags_version}
  column_mapping   channel -> raw column (the runtime's default)
  pipeline_spec    `runtime.spec.PipelineSpec.to_dict()`: binning, QC, winsor caps, feature engineering, flags
  scaler           `runtime.scaling.RobustScaler.to_dict()` (its `scaled` says which columns are scaled)
  heads            {forecast, fault, fault_multilabel, rul}: booleans
  class_names      fault class names (class 0 normal); len C when the fault head is on
  scoring          {masks, p_score, groups, context, passes, seed, aggregation, halflife, topn, k}: masks
                   "element" (passes = round(1/p_score) random patterns; groups null) or "group" (one pass per
                   group, the group hidden over the whole window; groups = name -> feature names; p_score null);
                   context = the features that are inputs only, never hidden or scored; groups and context
                   partition the features; halflife for recent_weighted, k for feature_topk (the per-feature
                   error levels it divides by are constants of scoring.onnx)
  calibration      `runtime.calibration.Calibration.to_dict()`
  alerting         {T_on, T_off, N_on, N_off}: T_* are multiples of the calibrated threshold
  fleet            {relative, min_peers, min_present_fraction}: relative = thresholds and alerts apply to the
                   fleet-relative score (`runtime.peers`), from windows whose present fraction reaches
                   min_present_fraction and that have at least min_peers such windows of other turbines at their step
  score_reference  {split, n_windows, levels, values}: quantiles of validation scores, for drift checks
  feature_reference `runtime.drift.DriftReference.to_dict()`: per-feature quantiles, mean, std of the validation
                   split (present values), for `scada-evaluate --drift`; its feature names are the registry's
  versions         {torch, onnx, onnxruntime, package, opset, ir_version} at export
  checksums        {"clean.onnx": sha256 hex, "scoring.onnx": sha256 hex}
  data_fingerprint fingerprint of the prepared training data
  parity           null (export ran with --no-verify) or {atol, rtol, extreme, passed, outputs, cases}

`bundle.json` is the root of trust: the checksums cover the graphs, and the model id covers graphs and registries.

Refused, with a `BundleError` that names the file, key or graph: a schema version other than 3; an unknown or
missing key at any level; a value of the wrong type; registries, spec, scaler, dims and heads that disagree; a
missing graph; a graph whose sha256 differs from `checksums`; a model id that does not match; a graph that
onnxruntime cannot open or whose input/output names, types or shapes disagree with `dims` (the batch axis must
be symbolic); a recorded parity check that failed. `dump_bundle` validates the same way before and after writing.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from scada_tcn.runtime.calibration import Calibration
from scada_tcn.runtime.drift import DriftReference
from scada_tcn.runtime.errors import BundleError
from scada_tcn.runtime.flags import compile_rules
from scada_tcn.runtime.pipeline import scaled_mask
from scada_tcn.runtime.scaling import RobustScaler
from scada_tcn.runtime.spec import PipelineSpec

__all__ = [
    "SCHEMA_VERSION",
    "BUNDLE_JSON",
    "GRAPH_FILES",
    "MAX_JSON_BYTES",
    "Dims",
    "ScoringParams",
    "AlertingParams",
    "FleetParams",
    "ScoreReference",
    "Bundle",
    "compute_model_id",
    "dump_bundle",
    "load_bundle",
    "open_session",
    "expected_graph_io",
]

SCHEMA_VERSION = 3
BUNDLE_JSON = "bundle.json"
GRAPH_FILES = {"clean": "clean.onnx", "scoring": "scoring.onnx"}
MAX_JSON_BYTES = 16 * 1024 * 1024
TOP_KEYS = (
    "schema_version",
    "model_id",
    "dims",
    "dt_seconds",
    "feature_registry",
    "flag_registry",
    "column_mapping",
    "pipeline_spec",
    "scaler",
    "heads",
    "class_names",
    "scoring",
    "calibration",
    "alerting",
    "fleet",
    "score_reference",
    "feature_reference",
    "versions",
    "checksums",
    "data_fingerprint",
    "parity",
)
_COMPUTED = ("schema_version", "model_id", "checksums")  # written by dump_bundle, not by the caller
AGGREGATIONS = ("masked_mean", "recent_weighted", "feature_topk")
SCORE_MASKS = ("element", "group")
_FLOAT, _INT64 = "tensor(float)", "tensor(int64)"


def _fail(msg: str) -> BundleError:
    return BundleError(f"{BUNDLE_JSON}: {msg}")


def _keys(d: Any, allowed: tuple[str, ...], where: str) -> dict[str, Any]:
    if not isinstance(d, dict):
        raise _fail(f"{where}: expected an object, got {type(d).__name__}")
    unknown, missing = sorted(set(d) - set(allowed)), sorted(set(allowed) - set(d))
    if unknown:
        raise _fail(f"{where}: unknown key {unknown[0]!r} (unknown {unknown}); allowed keys: {list(allowed)}")
    if missing:
        raise _fail(f"{where}: missing key {missing[0]!r} (missing {missing})")
    return d


def _int(d: dict, k: str, where: str, lo: int = 0) -> int:
    v = d[k]
    if isinstance(v, bool) or not isinstance(v, int) or v < lo:
        raise _fail(f"{where}.{k}: expected an integer >= {lo}, got {v!r}")
    return v


def _num(d: dict, k: str, where: str, lo: float | None = None) -> float:
    v = d[k]
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or (lo is not None and v < lo):
        raise _fail(f"{where}.{k}: expected a finite number{'' if lo is None else f' >= {lo:g}'}, got {v!r}")
    return float(v)


def _typed(d: dict, k: str, where: str, typ: type | tuple[type, ...]) -> Any:
    v = d[k]
    if not isinstance(v, typ) or (typ is not bool and isinstance(v, bool)):
        raise _fail(f"{where}.{k}: expected {getattr(typ, '__name__', typ)}, got {type(v).__name__}")
    return v


def _strs(d: dict, k: str, where: str) -> list[str]:
    v = _typed(d, k, where, list)
    if not all(isinstance(s, str) for s in v):
        raise _fail(f"{where}.{k}: expected a list of strings")
    return list(v)


def _str_map(d: dict, k: str, where: str) -> dict[str, str]:
    v = _typed(d, k, where, dict)
    if not all(isinstance(s, str) for s in v.values()):
        raise _fail(f"{where}.{k}: expected an object of strings")
    return dict(v)


# ----------------------------------------------------------------------------------------------- records


@dataclass(frozen=True)
class Dims:
    L: int
    K: int
    F: int
    R: int
    C: int
    RF: int

    @property
    def F_in(self) -> int:
        return 3 * self.F + self.R


@dataclass(frozen=True)
class ScoringParams:
    masks: str  # element | group
    p_score: float | None  # element masks only
    groups: dict[str, tuple[str, ...]] | None  # group masks only: group name -> its features
    context: tuple[str, ...]  # features that are model inputs only: never hidden, never scored
    passes: int
    seed: int
    aggregation: str
    halflife: float | None
    k: int | None
    topn: int


@dataclass(frozen=True)
class AlertingParams:
    T_on: float  # multiples of the calibrated threshold
    T_off: float
    N_on: int
    N_off: int


@dataclass(frozen=True)
class FleetParams:
    relative: bool  # thresholds and alerts apply to score - median(other turbines' scores at the same step)
    min_peers: int
    min_present_fraction: float  # windows below it are neither fleet-scored nor peers (the window index's rule)


@dataclass(frozen=True)
class ScoreReference:
    split: str
    n_windows: int
    levels: tuple[float, ...]
    values: tuple[float, ...]


@dataclass(frozen=True)
class Bundle:
    """A loaded, validated bundle. `graphs` holds the verified bytes of each graph (open with `open_session`)."""

    path: Path
    model_id: str
    dims: Dims
    dt_seconds: int
    spec: PipelineSpec
    feature_registry: dict[str, Any]
    flag_registry: dict[str, Any]
    column_mapping: dict[str, str]
    scaler: RobustScaler
    class_names: tuple[str, ...]
    forecast_enabled: bool
    fault_enabled: bool
    fault_multilabel: bool
    rul_enabled: bool
    scoring: ScoringParams
    calibration: Calibration
    alerting: AlertingParams
    fleet: FleetParams
    score_reference: ScoreReference
    feature_reference: DriftReference
    versions: dict[str, Any]
    checksums: dict[str, str]
    data_fingerprint: str
    parity: dict[str, Any] | None
    graphs: dict[str, bytes] = field(repr=False, compare=False, default_factory=dict)

    @property
    def clean_outputs(self) -> tuple[str, ...]:
        heads = (("Y_hat", self.forecast_enabled), ("fault_logits", self.fault_enabled), ("rul", self.rul_enabled))
        return tuple(n for n, on in heads if on)


# ----------------------------------------------------------------------------------------------- checks


def compute_model_id(checksums: Mapping[str, str], feature_registry: Mapping, flag_registry: Mapping) -> str:
    """sha256 over the graphs' checksums (in file-name order) and the canonical JSON of both registries."""
    h = hashlib.sha256(f"scada-tcn-bundle/{SCHEMA_VERSION}\n".encode())
    for name in sorted(checksums):
        h.update(f"{name}:{checksums[name]}\n".encode())
    reg = {"feature_registry": feature_registry, "flag_registry": flag_registry}
    h.update(json.dumps(reg, sort_keys=True, separators=(",", ":")).encode())
    return h.hexdigest()


def expected_graph_io(b: Bundle, graph: str) -> tuple[list[tuple], list[tuple]]:
    """(inputs, outputs) as (name, type, shape) with None for the symbolic batch axis."""
    d = b.dims
    if graph == "clean":
        shapes = {"Y_hat": [None, d.K, d.F], "fault_logits": [None, d.C], "rul": [None, 1]}
        return [("X_in", _FLOAT, [None, d.L, d.F_in])], [(n, _FLOAT, shapes[n]) for n in b.clean_outputs]
    if graph == "scoring":
        ins = [
            ("X", _FLOAT, [None, d.L, d.F]),
            ("M_miss", _FLOAT, [None, d.L, d.F]),
            ("Flags", _FLOAT, [None, d.L, d.R]),
        ]
        outs = [
            ("s_now", _FLOAT, [None]),
            ("feat_contrib", _FLOAT, [None, d.F]),
            ("top_idx", _INT64, [None, b.scoring.topn]),
            ("E", _FLOAT, [None, d.L, d.F]),
        ]
        return ins, outs
    raise BundleError(f"unknown graph {graph!r}; allowed {sorted(GRAPH_FILES)}")


def _check_io(sess: ort.InferenceSession, b: Bundle, graph: str) -> None:
    file = GRAPH_FILES[graph]
    for kind, got_args, want in zip(
        ("input", "output"), (sess.get_inputs(), sess.get_outputs()), expected_graph_io(b, graph)
    ):
        got_names, want_names = [a.name for a in got_args], [w[0] for w in want]
        if got_names != want_names:
            raise BundleError(f"{file}: {kind} names {got_names} differ from the expected {want_names}")
        for a, (name, typ, shape) in zip(got_args, want):
            batch_ok = len(a.shape) >= 1 and not isinstance(a.shape[0], int)
            if a.type != typ or len(a.shape) != len(shape) or not batch_ok or list(a.shape[1:]) != shape[1:]:
                shown = ["batch"] + shape[1:]
                raise BundleError(
                    f"{file}: {kind} {name!r} is {a.type} {list(a.shape)}, expected {typ} {shown} from the bundle "
                    f"dims {b.dims} (a symbolic batch axis first)"
                )


def open_session(
    b: Bundle, graph: str, intra_op_threads: int = 1, inter_op_threads: int = 1, optimize: bool = True
) -> ort.InferenceSession:
    """An onnxruntime CPU session on the verified bytes of `graph`, with explicit options and checked I/O."""
    if graph not in b.graphs:
        raise BundleError(f"unknown graph {graph!r}; allowed {sorted(b.graphs)}")
    for name, v in (("intra_op_threads", intra_op_threads), ("inter_op_threads", inter_op_threads)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise BundleError(f"open_session: {name} must be an integer >= 1, got {v!r}")
    so = ort.SessionOptions()
    so.intra_op_num_threads = intra_op_threads
    so.inter_op_num_threads = inter_op_threads
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = (
        ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize else ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    )
    so.log_severity_level = 3
    try:
        sess = ort.InferenceSession(b.graphs[graph], sess_options=so, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own exception types (Fail, InvalidGraph, ...)
        raise BundleError(f"{GRAPH_FILES[graph]}: onnxruntime {ort.__version__} cannot open it: {e}") from e
    _check_io(sess, b, graph)
    return sess


# ----------------------------------------------------------------------------------------------- parsing


def _parse_parity(p: Any) -> dict[str, Any] | None:
    if p is None:
        return None
    p = _keys(p, ("atol", "rtol", "extreme", "passed", "outputs", "cases"), "parity")
    _num(p, "atol", "parity", 0.0), _num(p, "rtol", "parity", 0.0), _num(p, "extreme", "parity", 0.0)
    if not _typed(p, "passed", "parity", bool):
        raise _fail("parity.passed is false: the export's torch/onnxruntime parity check failed; re-export")

    def stats(d: Any, where: str) -> None:
        for name, s in _typed({"x": d}, "x", where, dict).items():
            s = _keys(s, ("max_abs", "max_rel", "n_bad"), f"{where}.{name}")
            _num(s, "max_abs", f"{where}.{name}", 0.0), _num(s, "max_rel", f"{where}.{name}", 0.0)
            _int(s, "n_bad", f"{where}.{name}")

    stats(p["outputs"], "parity.outputs")
    for case, c in _typed(p, "cases", "parity", dict).items():
        c = _keys(c, ("n_windows", "outputs"), f"parity.cases.{case}")
        _int(c, "n_windows", f"parity.cases.{case}", 1)
        stats(c["outputs"], f"parity.cases.{case}.outputs")
    return p


def _parse(doc: dict[str, Any], path: Path, graphs: dict[str, bytes]) -> Bundle:
    """Validate a bundle.json document (whose schema version was checked) and build the Bundle."""
    _keys(doc, TOP_KEYS, "<top level>")
    dd = _keys(doc["dims"], ("L", "K", "F", "R", "C", "RF"), "dims")
    dims = Dims(**{k: _int(dd, k, "dims", 0 if k in ("R", "C", "K") else 1) for k in dd})
    fr = _keys(
        doc["feature_registry"],
        ("feature_names", "raw_channel_names", "angular_channel_names", "engineered_version"),
        "feature_registry",
    )
    gr = _keys(doc["flag_registry"], ("flag_names", "flags_version"), "flag_registry")
    for k in ("feature_names", "raw_channel_names", "angular_channel_names"):
        _strs(fr, k, "feature_registry")
    _strs(gr, "flag_names", "flag_registry")
    _typed(fr, "engineered_version", "feature_registry", str), _typed(gr, "flags_version", "flag_registry", str)
    column_mapping = _str_map(doc, "column_mapping", "<top level>")
    try:
        spec = PipelineSpec.from_dict(doc["pipeline_spec"])
        compile_rules(spec)
    except (ValueError, TypeError, KeyError, AttributeError) as e:
        raise _fail(f"pipeline_spec: {e}") from e
    try:
        scaler = RobustScaler.from_dict(doc["scaler"])
    except (ValueError, TypeError, KeyError) as e:
        raise _fail(f"scaler: {e}") from e
    for name, obj in (("pipeline_spec", spec), ("scaler", scaler)):
        if obj.to_dict() != doc[name]:  # from_dict is lenient about container types; the file must be canonical
            raise _fail(f"{name}: not in the canonical form its to_dict() writes (a value of the wrong type?)")
    hd = _keys(doc["heads"], ("forecast", "fault", "fault_multilabel", "rul"), "heads")
    heads = {k: _typed(hd, k, "heads", bool) for k in hd}
    class_names = _strs(doc, "class_names", "<top level>")
    sd = _keys(
        doc["scoring"],
        ("masks", "p_score", "groups", "context", "passes", "seed", "aggregation", "halflife", "topn", "k"),
        "scoring",
    )
    if sd["masks"] not in SCORE_MASKS:
        raise _fail(f"scoring.masks: unknown {sd['masks']!r}; allowed {list(SCORE_MASKS)}")
    element = sd["masks"] == "element"
    if element != (sd["p_score"] is not None) or element == (sd["groups"] is not None):
        raise _fail(
            "scoring: masks 'element' takes p_score and groups null; masks 'group' takes groups and p_score null"
        )
    groups = None
    if sd["groups"] is not None:
        gd = _typed(sd, "groups", "scoring", dict)
        groups = {str(g): tuple(_strs(gd, g, "scoring.groups")) for g in gd}
    if sd["aggregation"] not in AGGREGATIONS:
        raise _fail(f"scoring.aggregation: unknown {sd['aggregation']!r}; allowed {list(AGGREGATIONS)}")
    if (sd["aggregation"] == "recent_weighted") != (sd["halflife"] is not None):
        raise _fail("scoring.halflife: required by, and only allowed with, aggregation 'recent_weighted'")
    if (sd["aggregation"] == "feature_topk") != (sd["k"] is not None):
        raise _fail("scoring.k: required by, and only allowed with, aggregation 'feature_topk'")
    scoring = ScoringParams(
        masks=sd["masks"],
        groups=groups,
        context=tuple(_strs(sd, "context", "scoring")),
        p_score=None if sd["p_score"] is None else _num(sd, "p_score", "scoring"),
        passes=_int(sd, "passes", "scoring", 2),
        seed=_int(sd, "seed", "scoring"),
        aggregation=_typed(sd, "aggregation", "scoring", str),
        halflife=None if sd["halflife"] is None else _num(sd, "halflife", "scoring", 1e-12),
        topn=_int(sd, "topn", "scoring", 1),
        k=None if sd["k"] is None else _int(sd, "k", "scoring", 1),
    )
    try:
        calibration = Calibration.from_dict(doc["calibration"])
    except (ValueError, TypeError) as e:
        raise _fail(f"calibration: {e}") from e
    ad = _keys(doc["alerting"], ("T_on", "T_off", "N_on", "N_off"), "alerting")
    alerting = AlertingParams(
        _num(ad, "T_on", "alerting", 1e-12),
        _num(ad, "T_off", "alerting", 1e-12),
        _int(ad, "N_on", "alerting", 1),
        _int(ad, "N_off", "alerting", 1),
    )
    fd = _keys(doc["fleet"], ("relative", "min_peers", "min_present_fraction"), "fleet")
    fleet = FleetParams(
        _typed(fd, "relative", "fleet", bool),
        _int(fd, "min_peers", "fleet", 1),
        _num(fd, "min_present_fraction", "fleet"),
    )
    rd = _keys(doc["score_reference"], ("split", "n_windows", "levels", "values"), "score_reference")
    levels, values = _typed(rd, "levels", "score_reference", list), _typed(rd, "values", "score_reference", list)
    ref = ScoreReference(
        _typed(rd, "split", "score_reference", str),
        _int(rd, "n_windows", "score_reference", 1),
        tuple(_num({"v": v}, "v", "score_reference.levels") for v in levels),
        tuple(_num({"v": v}, "v", "score_reference.values") for v in values),
    )
    vd = _keys(doc["versions"], ("torch", "onnx", "onnxruntime", "package", "opset", "ir_version"), "versions")
    for k in ("torch", "onnx", "onnxruntime", "package"):
        _typed(vd, k, "versions", str)
    _int(vd, "opset", "versions", 1), _int(vd, "ir_version", "versions", 1)
    checksums = _keys(doc["checksums"], tuple(sorted(GRAPH_FILES.values())), "checksums")
    for k, v in checksums.items():
        if not isinstance(v, str) or len(v) != 64 or any(c not in "0123456789abcdef" for c in v):
            raise _fail(f"checksums.{k}: expected a lowercase sha256 hex digest, got {v!r}")
    model_id = _typed(doc, "model_id", "<top level>", str)
    fingerprint = _typed(doc, "data_fingerprint", "<top level>", str)
    dt = _int(doc, "dt_seconds", "<top level>", 1)
    parity = _parse_parity(doc["parity"])

    problems = []
    if (fr["feature_names"], fr["raw_channel_names"], fr["angular_channel_names"], gr["flag_names"]) != (
        list(spec.feature_names),
        list(spec.feature_channels),
        list(spec.angular_channels),
        list(spec.flag_names),
    ):
        problems.append("the registries' feature, channel or flag names differ from pipeline_spec's")
    if list(scaler.feature_names) != list(spec.feature_names) or not np.array_equal(scaler.scaled, scaled_mask(spec)):
        problems.append("the scaler's features or scaled columns differ from pipeline_spec's")
    if (dims.F, dims.R) != (spec.n_features, spec.n_flags):
        problems.append(
            f"dims F={dims.F}, R={dims.R} but the registries hold {spec.n_features} features, {spec.n_flags} flags"
        )
    if dt != spec.dt_seconds:
        problems.append(f"dt_seconds={dt} but pipeline_spec.dt_seconds={spec.dt_seconds}")
    if set(column_mapping) != set(spec.channels):
        problems.append(
            f"column_mapping channels {sorted(column_mapping)} differ from the spec's {sorted(spec.channels)}"
        )
    if heads["fault"] and len(class_names) != dims.C:
        problems.append(f"{len(class_names)} class_names for C={dims.C} fault classes")
    if not (heads["forecast"] or heads["fault"] or heads["rul"]):
        problems.append("no head of the clean graph is on")
    p_score = scoring.p_score
    if p_score is not None and (not 0.0 < p_score < 1.0 or scoring.passes != round(1 / p_score)):
        problems.append(
            f"scoring.passes={scoring.passes} is not round(1/p_score) for p_score={scoring.p_score} in (0, 1)"
        )
    if not set(scoring.context) < set(spec.feature_names) or len(set(scoring.context)) != len(scoring.context):
        problems.append("scoring.context must list distinct features of the registry, leaving one scored")
    if scoring.groups is not None:
        grouped = [f for members in scoring.groups.values() for f in members] + list(scoring.context)
        if sorted(grouped) != sorted(spec.feature_names) or any(not m for m in scoring.groups.values()):
            problems.append(
                "scoring.groups must be non-empty groups that, with scoring.context, hold every feature "
                "of the registry once"
            )
        if scoring.passes != len(scoring.groups):
            problems.append(f"scoring.passes={scoring.passes} but there are {len(scoring.groups)} groups")
    if not 1 <= scoring.topn <= dims.F:
        problems.append(f"scoring.topn={scoring.topn} is not in [1, F={dims.F}]")
    if not 0.0 <= fleet.min_present_fraction <= 1.0:
        problems.append(f"fleet.min_present_fraction={fleet.min_present_fraction} is not in [0, 1]")
    if alerting.T_off > alerting.T_on:
        problems.append(f"alerting.T_off={alerting.T_off} > T_on={alerting.T_on}")
    if len(ref.levels) != len(ref.values) or not ref.levels:
        problems.append("score_reference.levels and values must be non-empty and of equal length")
    try:
        feature_ref = DriftReference.from_dict(doc["feature_reference"])
    except (ValueError, TypeError) as e:
        raise _fail(f"feature_reference: {e}") from e
    if list(feature_ref.feature_names) != list(spec.feature_names):
        problems.append("feature_reference.feature_names differ from the feature registry")
    if problems:
        raise _fail("inconsistent bundle: " + "; ".join(problems))
    expected_id = compute_model_id(checksums, fr, gr)
    if model_id != expected_id:
        raise _fail(f"model_id {model_id!r} does not match the graphs and registries (expected {expected_id!r})")
    return Bundle(
        path=path,
        model_id=model_id,
        dims=dims,
        dt_seconds=dt,
        spec=spec,
        feature_registry=fr,
        flag_registry=gr,
        column_mapping=column_mapping,
        scaler=scaler,
        class_names=tuple(class_names),
        forecast_enabled=heads["forecast"],
        fault_enabled=heads["fault"],
        fault_multilabel=heads["fault_multilabel"],
        rul_enabled=heads["rul"],
        scoring=scoring,
        calibration=calibration,
        alerting=alerting,
        fleet=fleet,
        score_reference=ref,
        feature_reference=feature_ref,
        versions=dict(vd),
        checksums=dict(checksums),
        data_fingerprint=fingerprint,
        parity=parity,
        graphs=graphs,
    )


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not allowed")


def load_bundle(path: str | Path, check_graphs: bool = True) -> Bundle:
    """Read and validate a bundle directory; see the module docstring for what is refused."""
    path = Path(path)
    meta = path / BUNDLE_JSON
    if not meta.is_file():
        raise BundleError(f"{path}: no {BUNDLE_JSON}; is this a bundle written by scada-export?")
    if meta.stat().st_size > MAX_JSON_BYTES:
        raise BundleError(f"{meta}: {meta.stat().st_size} bytes is over the {MAX_JSON_BYTES}-byte limit")
    try:
        doc = json.loads(meta.read_bytes().decode("utf-8"), parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise BundleError(f"{meta}: not valid JSON: {e}") from e
    if not isinstance(doc, dict):
        raise _fail(f"expected a JSON object at the top level, got {type(doc).__name__}")
    version = doc.get("schema_version")
    if version != SCHEMA_VERSION or isinstance(version, bool):
        raise _fail(
            f"schema_version {version!r} is not supported (this runtime reads version {SCHEMA_VERSION}); "
            "export the model again with a scada-export of the same release as this runtime"
        )
    checksums = doc.get("checksums")
    graphs: dict[str, bytes] = {}
    for graph, file in GRAPH_FILES.items():
        gpath = path / file
        if not gpath.is_file():
            raise BundleError(f"{file}: graph file missing from {path}")
        graphs[graph] = gpath.read_bytes()
    b = _parse(doc, path, graphs)
    for graph, file in GRAPH_FILES.items():
        actual = hashlib.sha256(graphs[graph]).hexdigest()
        if actual != checksums[file]:
            raise BundleError(
                f"{file}: sha256 mismatch: bundle.json records {checksums[file]}, the file has {actual}; "
                "the graph was modified after export"
            )
    if check_graphs:
        for graph in GRAPH_FILES:
            open_session(b, graph, optimize=False)
    return b


def dump_bundle(out_dir: str | Path, graphs: Mapping[str, bytes], manifest: Mapping[str, Any]) -> Bundle:
    """Write `graphs` ({"clean": bytes, "scoring": bytes}) and bundle.json, validated, and return the loaded bundle.

    `manifest` holds every top-level key except schema_version, model_id and checksums, which are computed here.
    Nothing is written when the manifest is invalid; bundle.json is written last, atomically.
    """
    out = Path(out_dir)
    if sorted(graphs) != sorted(GRAPH_FILES):
        raise BundleError(f"dump_bundle: graphs must be exactly {sorted(GRAPH_FILES)}, got {sorted(graphs)}")
    bad = [k for k in _COMPUTED if k in manifest]
    if bad:
        raise BundleError(f"dump_bundle: {bad} are computed by dump_bundle; remove them from the manifest")
    checksums = {GRAPH_FILES[g]: hashlib.sha256(graphs[g]).hexdigest() for g in sorted(graphs)}
    doc = {"schema_version": SCHEMA_VERSION, "model_id": "", **manifest, "checksums": checksums}
    doc = json.loads(json.dumps(doc, allow_nan=False))  # plain JSON types only, as the loader will see them
    if isinstance(doc.get("feature_registry"), dict) and isinstance(doc.get("flag_registry"), dict):
        doc["model_id"] = compute_model_id(checksums, doc["feature_registry"], doc["flag_registry"])
    doc = {k: doc[k] for k in TOP_KEYS if k in doc} | {k: v for k, v in doc.items() if k not in TOP_KEYS}
    _parse(doc, out, dict(graphs))
    out.mkdir(parents=True, exist_ok=True)
    for g, data in graphs.items():
        (out / GRAPH_FILES[g]).write_bytes(data)
    tmp = out / f".{BUNDLE_JSON}.tmp"
    tmp.write_text(json.dumps(doc, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    os.replace(tmp, out / BUNDLE_JSON)
    return load_bundle(out)
