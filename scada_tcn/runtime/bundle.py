"""The deployment bundle: what `scada-export` writes and the edge loads, and nothing else.

Format (schema version 7)
-------------------------
A bundle is a directory of three files:

- `clean.onnx`: inputs `X`, `M_miss` (batch, L, F) and `Flags` (batch, L, R) float32 -> `Y_hat` (batch, K, F),
  `fault_prob` (batch, C) (softmax, or a sigmoid per class for a multilabel head), `rul` (batch, 1), each output
  present only when its head is on (`heads`), in that order. The graph builds the model input itself.
- `scoring.onnx`: the same inputs -> for `scoring.kind` "per_signal" `resid` (batch, F): each feature's residual
  at the newest step, predicted with its group hidden, in units of its normal residual scale, and `pred`
  (batch, F), that prediction in scaled units (`runtime.signals`); for "window_mean" `s_now` (batch,),
  `feat_contrib` (batch, F), `top_idx` (batch, topn) int64, `E` (batch, L, F).
- `step.onnx` (per-signal bundles whose receptive field fits the window, `stream` non-null): the same scoring
  one step at a time, each convolution's past kept by the edge (`trainer.model.streaming.StepModule`): inputs
  `X`, `M_miss` (batch, F), `Flags` (batch, R), `tap_i_j` (batch x passes, channels_i): convolution i's input at
  t - (kernel_i - 1 - j) dilation_i for j < kernel_i - 1, and, with the fault head, `h_sum` (batch, hidden): the
  sum of the last L - 1 clean hidden states by `pairwise_sum`'s tree (`runtime.ring_sum`) ->
  `resid`, `pred` (batch, F), the clean-pass heads (`Y_hat` (batch, K, F), `fault_prob` (batch, C), `rul`
  (batch,)), `col_i` (batch x passes, channels_i): the column to store at t mod steps_i, and `h` (batch, hidden).
- `bundle.json`: UTF-8 JSON object (at most 16 MiB, no NaN or Infinity) with exactly these keys:

  schema_version   12 (3 -> 4: the clean graph takes X, M_miss, Flags and returns fault probabilities;
                   4 -> 5: per-signal scoring, the pipeline spec's repeat channels; 5 -> 6: step.onnx takes
                   the convolutions' past taps instead of their rings and no step index; 6 -> 7: step.onnx
                   takes the sum of the fault head's ring, h_sum, instead of the ring; 7 -> 8:
                   table_identifiers; 8 -> 9: signals.group_halflife; 9 -> 10: table_csv,
                   table_identifiers.turbine_id_from_file and time_format; 10 -> 11: pipeline_spec.hold_s;
                   11 -> 12: pipeline_spec.aggregation `time`, a held channel's time-weighted mean).
                   Versions 7 to 11 are read too: the graphs are the same; 7 has no table_identifiers
                   (`Bundle.table_identifiers` None), 7 and 8 no group half-lives (read as none), 7 to 9 no
                   table_csv (plain CSV: `Bundle.table_csv` None), no turbine_id_from_file (ids from a column)
                   and no time_format, 7 to 10 no hold_s (no channel holds), 7 to 11 no `time`
  model_id         sha256 hex of "scada-tcn-bundle/7" (the graphs' contract, unchanged by versions 8 to 12), the
                   sha256 of each graph (in file-name order) and the canonical JSON of the feature and flag
                   registries (`compute_model_id`)
  dims             `Dims`: window L, horizon K, features F, flags R, fault classes C, receptive field RF
  dt_seconds       step of the binned series
  feature_registry `scada_tcn.runtime.registry.FeatureRegistry`
  flag_registry    `scada_tcn.runtime.registry.FlagRegistry`
  column_mapping   channel -> raw column (the runtime's default)
  table_identifiers `TableIdentifiers`: the training table's turbine-id and time columns and the zone of its
                   naive stamps (data.identifiers; replay's defaults, so that a table in the training format
                   replays with no mapping); from version 10 also turbine_id_from_file, the pattern that takes
                   the id from each file's name when turbine_id_col is null, and time_format, the strptime
                   format of its stamps, or "epoch_ms" (null: ISO-8601 or epoch seconds)
  table_csv        `TableCsv`: how the training table's CSV was written (data.csv: delimiter, decimal mark, encoding,
                   lines before the header; replay's defaults)
  pipeline_spec    `scada_tcn.runtime.spec.PipelineSpec`: binning, QC, winsor caps, features, flags
  scaler           `scada_tcn.runtime.scaling.RobustScaler` (its `scaled` says which columns are scaled)
  heads            `Heads`: forecast, fault, fault_multilabel, rul
  class_names      fault class names (class 0 normal); len C when the fault head is on
  scoring          `ScoringParams`: kind "per_signal" or "window_mean"; masks "element" (passes =
                   round(1/p_score) random patterns; groups null) or "group" (one pass per group, hidden over
                   the whole window; p_score null); context = features that are inputs only, never hidden or
                   scored; groups and context partition the features; window_mean only: aggregation, halflife
                   for recent_weighted, k for feature_topk (its per-feature levels are graph constants)
  signals          per_signal only (else null): `runtime.signals.SignalParams`: monitored features and their
                   directions and centres, stuck-signal checks, skipped flags, temporal aggregation, baseline
                   and each monitor's level
  stream           `StreamParams` of step.onnx (passes, per convolution [channels, steps, dilation, kernel],
                   hidden, h_ring), or null: the bundle has no step graph and is scored window by window
  calibration      window_mean only (else null): `scada_tcn.runtime.calibration.Calibration`
  alerting         `AlertingParams`: T_on, T_off (multiples of the threshold), N_on, N_off (steps)
  fleet            `FleetParams`: relative (thresholds and alerts on the fleet-relative score), min_peers,
                   min_present_fraction (the share of present inputs a window needs to be scored at all)
  score_reference  `ScoreReference`: quantiles of validation scores, for drift checks
  feature_reference `scada_tcn.runtime.drift.DriftReference` of the validation split
  versions         `Versions`: torch, onnx, onnxruntime, package, opset, ir_version at export
  checksums        {graph file: sha256 hex} for clean.onnx, scoring.onnx and, when it streams, step.onnx
  data_fingerprint fingerprint of the prepared training data
  parity           null (export ran with --no-verify) or `ParityReport`

Every section is a typed record with `to_dict` / `from_dict`; `BundleContents` holds them all and `Bundle` adds
what `dump_bundle` computes (model id, checksums) and what loading brings (path, graph bytes). `bundle.json`
is the root of trust: the checksums cover the graphs, and the model id covers graphs and registries.

Refused, with a `BundleError` that names the file, key or graph: a schema version not in `READ_VERSIONS`
(older bundles: export again); an unknown or missing key at any level (a null table_identifiers from version 8
on, a null table_csv from version 10 on, included); a value of the wrong type; registries, spec, scaler, dims
and heads that disagree; a missing graph; a graph whose sha256 differs from `checksums`; a model id that does
not match; a graph that onnxruntime cannot open or whose input/output names, types or shapes disagree with `dims`
(the batch axis must be symbolic); a recorded parity check that failed. `dump_bundle` validates the same way
before and after writing.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import onnxruntime as ort

from scada_tcn.runtime.calibration import Calibration
from scada_tcn.runtime.csv_table import PARQUET_KINDS, CsvDialect, dialect_problem, read_encoding
from scada_tcn.runtime.digest import canonical_json
from scada_tcn.runtime.drift import DriftReference
from scada_tcn.runtime.errors import BundleError, ConfigError
from scada_tcn.runtime.flags import compile_rules
from scada_tcn.runtime.ids import id_pattern_problem
from scada_tcn.runtime.pipeline import scaled_mask
from scada_tcn.runtime.registry import FeatureRegistry, FlagRegistry
from scada_tcn.runtime.scaling import RobustScaler
from scada_tcn.runtime.signals import SignalParams
from scada_tcn.runtime.spec import PipelineSpec, with_hold_default
from scada_tcn.runtime.telemetry import EPOCH_MILLIS, time_format_problem, zone_problem
from scada_tcn.runtime.vocab import ScoreAggregation, ScoreKind, ScoreMasks, parse

__all__ = [
    "BUNDLE_JSON",
    "GRAPH_FILES",
    "StreamParams",
    "graph_names",
    "GRAPH_INPUTS",
    "MAX_JSON_BYTES",
    "SCHEMA_VERSION",
    "TableCsv",
    "TableFormat",
    "TableIdentifiers",
    "TOP_KEYS",
    "AlertingParams",
    "Bundle",
    "BundleContents",
    "Dims",
    "FleetParams",
    "Heads",
    "ParityReport",
    "ScoreReference",
    "ScoringParams",
    "Versions",
    "compute_bundle_id",
    "compute_model_id",
    "dump_bundle",
    "expected_graph_io",
    "load_bundle",
    "open_session",
]

SCHEMA_VERSION = 12
READ_VERSIONS = (7, 8, 9, 10, 11, 12)  # 7: no table_identifiers; 7, 8: no signals.group_halflife; 7-9: no
# table_csv; 7-10: no pipeline_spec.hold_s; 7-11: no aggregation `time`
_MODEL_ID_VERSION = 7  # the graphs' and registries' contract in the model id: versions 8 to 12 added metadata only
BUNDLE_JSON = "bundle.json"
GRAPH_FILES = {"clean": "clean.onnx", "scoring": "scoring.onnx", "step": "step.onnx"}
GRAPH_INPUTS = ("X", "M_miss", "Flags")  # the window graphs: the windows as the pipeline writes them
MAX_JSON_BYTES = 16 * 1024 * 1024
TOP_KEYS = (
    "schema_version", "model_id", "dims", "dt_seconds", "feature_registry", "flag_registry", "column_mapping",
    "table_identifiers", "table_csv", "pipeline_spec", "scaler", "heads", "class_names", "scoring", "signals", "stream",
    "calibration", "alerting", "fleet",
    "score_reference", "feature_reference", "versions", "checksums", "data_fingerprint", "parity",
)  # fmt: skip
_FLOAT, _INT64 = "tensor(float)", "tensor(int64)"


def _fail(msg: str) -> BundleError:
    return BundleError(f"{BUNDLE_JSON}: {msg}")


class _Section:
    """Typed reads of one JSON object of bundle.json; every failure is a BundleError naming `where.key`."""

    def __init__(self, d: Any, keys: tuple[str, ...], where: str) -> None:
        if not isinstance(d, dict):
            raise _fail(f"{where}: expected an object, got {type(d).__name__}")
        unknown, missing = sorted(set(d) - set(keys)), sorted(set(keys) - set(d))
        if unknown:
            raise _fail(f"{where}: unknown key {unknown[0]!r} (unknown {unknown}); allowed keys: {list(keys)}")
        if missing:
            raise _fail(f"{where}: missing key {missing[0]!r} (missing {missing})")
        self.d, self.where = d, where

    def raw(self, k: str) -> Any:
        return self.d[k]

    def int(self, k: str, lo: int = 0) -> int:
        v = self.d[k]
        if isinstance(v, bool) or not isinstance(v, int) or v < lo:
            raise _fail(f"{self.where}.{k}: expected an integer >= {lo}, got {v!r}")
        return v

    def num(self, k: str, lo: float | None = None, hi: float | None = None) -> float:
        v = self.d[k]
        ok = not isinstance(v, bool) and isinstance(v, (int, float)) and math.isfinite(v)
        if not ok or (lo is not None and v < lo) or (hi is not None and v > hi):
            rng = "" if lo is None else f" >= {lo:g}" if hi is None else f" in [{lo:g}, {hi:g}]"
            raise _fail(f"{self.where}.{k}: expected a finite number{rng}, got {v!r}")
        return float(v)

    def opt_num(self, k: str, lo: float | None = None) -> float | None:
        return None if self.d[k] is None else self.num(k, lo)

    def opt_int(self, k: str, lo: int = 0) -> int | None:
        return None if self.d[k] is None else self.int(k, lo)

    def typed(self, k: str, typ: type) -> Any:
        v = self.d[k]
        if not isinstance(v, typ) or (typ is not bool and isinstance(v, bool)):
            raise _fail(f"{self.where}.{k}: expected {typ.__name__}, got {type(v).__name__}")
        return v

    def strs(self, k: str) -> tuple[str, ...]:
        v = self.typed(k, list)
        if not all(isinstance(s, str) for s in v):
            raise _fail(f"{self.where}.{k}: expected a list of strings")
        return tuple(v)

    def str_map(self, k: str) -> dict[str, str]:
        v = self.typed(k, dict)
        if not all(isinstance(s, str) for s in v.values()):
            raise _fail(f"{self.where}.{k}: expected an object of strings")
        return dict(v)

    def enum(self, k: str, enum: type) -> Any:
        try:
            return parse(enum, self.d[k], f"{self.where}.{k}")
        except ValueError as e:
            raise _fail(str(e)) from None


def _nested(parse_fn: Any, d: Any, where: str) -> Any:
    """A section owned by another module (its from_dict raises ValueError/TypeError) -> BundleError."""
    try:
        return parse_fn(d)
    except BundleError:
        raise
    except (ValueError, TypeError, KeyError, AttributeError) as e:
        raise _fail(f"{where}: {e}") from e


# ----------------------------------------------------------------------------------------------- records


@dataclass(frozen=True)
class Dims:
    L: int
    K: int
    F: int
    R: int
    C: int
    RF: int

    def to_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Any) -> Dims:
        s = _Section(d, ("L", "K", "F", "R", "C", "RF"), "dims")
        return cls(**{k: s.int(k, 0 if k in ("R", "C", "K") else 1) for k in ("L", "K", "F", "R", "C", "RF")})


@dataclass(frozen=True)
class Heads:
    forecast: bool
    fault: bool
    fault_multilabel: bool
    rul: bool

    @property
    def clean_outputs(self) -> tuple[str, ...]:
        """The clean graph's outputs, in order."""
        on = (("Y_hat", self.forecast), ("fault_prob", self.fault), ("rul", self.rul))
        return tuple(n for n, enabled in on if enabled)

    def to_dict(self) -> dict[str, bool]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Any) -> Heads:
        s = _Section(d, ("forecast", "fault", "fault_multilabel", "rul"), "heads")
        return cls(**{k: s.typed(k, bool) for k in ("forecast", "fault", "fault_multilabel", "rul")})


@dataclass(frozen=True)
class ScoringParams:
    kind: ScoreKind
    masks: ScoreMasks
    p_score: float | None  # element masks only
    groups: dict[str, tuple[str, ...]] | None  # group masks only: group name -> its features
    context: tuple[str, ...]  # features that are model inputs only: never hidden, never scored
    passes: int
    seed: int
    aggregation: ScoreAggregation | None  # window_mean only
    halflife: float | None  # recent_weighted only
    k: int | None  # feature_topk only
    topn: int

    def __post_init__(self) -> None:
        if (self.kind == ScoreKind.per_signal) != (self.aggregation is None):
            raise _fail("scoring.aggregation: required by, and only allowed with, kind 'window_mean'")
        if self.kind == ScoreKind.per_signal and self.masks != ScoreMasks.group:
            raise _fail("scoring: kind 'per_signal' scores one group per pass: masks must be 'group'")
        element = self.masks == ScoreMasks.element
        if element != (self.p_score is not None) or element == (self.groups is not None):
            raise _fail(
                "scoring: masks 'element' takes p_score and groups null; masks 'group' takes groups and p_score null"
            )
        if (self.aggregation == ScoreAggregation.recent_weighted) != (self.halflife is not None):
            raise _fail("scoring.halflife: required by, and only allowed with, aggregation 'recent_weighted'")
        if (self.aggregation == ScoreAggregation.feature_topk) != (self.k is not None):
            raise _fail("scoring.k: required by, and only allowed with, aggregation 'feature_topk'")

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": str(self.kind),
            "masks": str(self.masks),
            "p_score": self.p_score,
            "groups": None if self.groups is None else {g: list(m) for g, m in self.groups.items()},
            "context": list(self.context),
            "passes": self.passes,
            "seed": self.seed,
            "aggregation": None if self.aggregation is None else str(self.aggregation),
            "halflife": self.halflife,
            "topn": self.topn,
            "k": self.k,
        }

    @classmethod
    def from_dict(cls, d: Any) -> ScoringParams:
        keys = ("kind", "masks", "p_score", "groups", "context", "passes", "seed", "aggregation", "halflife", "topn",
                "k")  # fmt: skip
        s = _Section(d, keys, "scoring")
        groups = None
        if s.raw("groups") is not None:
            g = _Section(s.typed("groups", dict), tuple(s.raw("groups")), "scoring.groups")
            groups = {str(name): g.strs(name) for name in s.raw("groups")}
        return cls(
            kind=s.enum("kind", ScoreKind), masks=s.enum("masks", ScoreMasks), p_score=s.opt_num("p_score"),
            groups=groups, context=s.strs("context"), passes=s.int("passes", 2), seed=s.int("seed"),
            aggregation=None if s.raw("aggregation") is None else s.enum("aggregation", ScoreAggregation),
            halflife=s.opt_num("halflife", 1e-12),
            k=s.opt_int("k", 1), topn=s.int("topn", 1),
        )  # fmt: skip


@dataclass(frozen=True)
class AlertingParams:
    T_on: float  # multiples of the calibrated threshold
    T_off: float
    N_on: int  # consecutive steps
    N_off: int

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Any) -> AlertingParams:
        s = _Section(d, ("T_on", "T_off", "N_on", "N_off"), "alerting")
        return cls(s.num("T_on", 1e-12), s.num("T_off", 1e-12), s.int("N_on", 1), s.int("N_off", 1))


@dataclass(frozen=True)
class FleetParams:
    relative: bool  # thresholds and alerts apply to score - median(other turbines' scores at the same step)
    min_peers: int
    min_present_fraction: float  # a window below it is not scored (nor a peer): the window index's rule

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Any) -> FleetParams:
        s = _Section(d, ("relative", "min_peers", "min_present_fraction"), "fleet")
        return cls(s.typed("relative", bool), s.int("min_peers", 1), s.num("min_present_fraction", 0.0, 1.0))


@dataclass(frozen=True)
class ScoreReference:
    split: str
    n_windows: int
    levels: tuple[float, ...]
    values: tuple[float, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"split": self.split, "n_windows": self.n_windows, "levels": list(self.levels),
                "values": list(self.values)}  # fmt: skip

    @classmethod
    def from_dict(cls, d: Any) -> ScoreReference:
        s = _Section(d, ("split", "n_windows", "levels", "values"), "score_reference")
        levels = tuple(_Section({"v": v}, ("v",), "score_reference.levels").num("v") for v in s.typed("levels", list))
        values = tuple(_Section({"v": v}, ("v",), "score_reference.values").num("v") for v in s.typed("values", list))
        if len(levels) != len(values) or not levels:
            raise _fail("score_reference: levels and values must be non-empty and of equal length")
        return cls(s.typed("split", str), s.int("n_windows", 1), levels, values)


@dataclass(frozen=True)
class TableIdentifiers:
    """The training table's turbine-id and time columns, and the IANA zone of its stamps without an offset (None:
    such stamps were refused): scada-prepare's data.identifiers, replay's defaults."""

    turbine_id_col: str | None  # None: the id comes from each file's name (schema 10)
    time_col: str
    naive_timezone: str | None
    turbine_id_from_file: str | None = None  # data.identifiers.turbine_id_from_file (schema 10)
    time_format: str | None = None  # data.identifiers.time_format (schema 10)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Any, version: int = SCHEMA_VERSION) -> TableIdentifiers:
        names = ("turbine_id_col", "time_col", "naive_timezone") + (
            ("turbine_id_from_file", "time_format") if version >= 10 else ()
        )
        _Section(d, names, "table_identifiers")
        pattern = d.get("turbine_id_from_file")
        id_col, time_col = d["turbine_id_col"], d["time_col"]
        if id_col is not None or version < 10:  # ids from a column
            if not isinstance(id_col, str) or not id_col or pattern is not None:
                raise _fail(f"table_identifiers.turbine_id_col: a column name expected (and turbine_id_from_file "
                            f"null), got {id_col!r}")  # fmt: skip
        else:  # ids from the file names
            problem = id_pattern_problem(pattern, "table_identifiers.turbine_id_from_file")
            if problem:
                raise _fail(problem + " (or a turbine_id_col)")
        if not isinstance(time_col, str) or not time_col or time_col == id_col:
            raise _fail(f"table_identifiers.time_col: a column name other than the id column expected, got "
                        f"{time_col!r}")  # fmt: skip
        zone = d["naive_timezone"]
        problem = zone_problem(zone, "table_identifiers.naive_timezone") if isinstance(zone, str) else None
        if (zone is not None and not isinstance(zone, str)) or problem:
            raise _fail(problem or f"table_identifiers.naive_timezone: a zone name or null expected, got {zone!r}")
        fmt = d.get("time_format")
        problem = time_format_problem(fmt, "table_identifiers.time_format")
        if problem:
            raise _fail(problem)
        return cls(id_col, time_col, zone, pattern, fmt)


# what a bundle of schema 7 (no table_identifiers) leaves replay to assume: runtime.yaml's old defaults
SCHEMA7_IDENTIFIERS = TableIdentifiers("turbine_id", "timestamp", None)


@dataclass(frozen=True)
class TableCsv:
    """How the training table's CSV was written (scada-prepare's data.csv): replay's defaults."""

    delimiter: str
    decimal: str
    skip_lines: int
    encoding: str

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Any) -> TableCsv:
        _Section(d, ("delimiter", "decimal", "skip_lines", "encoding"), "table_csv")
        problem = dialect_problem(d["delimiter"], d["decimal"], d["skip_lines"], "table_csv", d["encoding"])
        if problem:
            raise _fail(problem)
        return cls(d["delimiter"], d["decimal"], d["skip_lines"], d["encoding"])


class TableFormat(NamedTuple):
    """A raw table's layout as replay reads it: channel -> column, the turbine-id and time columns, the zone of
    stamps without an offset, how its CSV is written, and the pattern that takes the turbine id from each file's
    name (then `turbine_id_col` is None)."""

    columns: dict[str, str]
    turbine_id_col: str | None
    time_col: str
    naive_timezone: str | None
    dialect: CsvDialect = CsvDialect()
    turbine_id_from_file: str | None = None
    time_format: str | None = None  # a strptime format of the stamps, or EPOCH_MILLIS; None: ISO-8601 or epoch seconds

    def describe(self, files: Sequence[str | Path]) -> str:
        """One line saying how `files` are read (scada-prepare's summary, replay's first line): what a user checks
        first when the counts look wrong."""
        d = self.dialect
        parts = [f"{len(files)} file{'s' * (len(files) != 1)}"]
        if any(not str(f).lower().endswith(PARQUET_KINDS) for f in files):
            skipped = f", {d.skip_lines} lines skipped before the header" if d.skip_lines else ""
            encoding = "" if read_encoding(d.encoding) == "utf-8-sig" else f", encoding {d.encoding}"
            parts.append(f"CSV separated by {d.delimiter!r}, decimal mark {d.decimal!r}{skipped}{encoding}")
        parts.append(f"turbine ids from column {self.turbine_id_col!r}" if self.turbine_id_col is not None
                     else f"turbine ids from the file names by '{self.turbine_id_from_file}'")  # fmt: skip
        stamps = ("ISO-8601 or epoch seconds" if self.time_format is None else "epoch milliseconds" if
                  self.time_format == EPOCH_MILLIS else f"written as {self.time_format!r}")  # fmt: skip
        zone = f", naive ones in {self.naive_timezone}" if self.naive_timezone else ""
        parts.append(f"stamps in column {self.time_col!r}, {stamps}{zone}")
        return "; ".join(parts)


@dataclass(frozen=True)
class Versions:
    torch: str
    onnx: str
    onnxruntime: str
    package: str
    opset: int
    ir_version: int

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Any) -> Versions:
        s = _Section(d, ("torch", "onnx", "onnxruntime", "package", "opset", "ir_version"), "versions")
        names = {k: s.typed(k, str) for k in ("torch", "onnx", "onnxruntime", "package")}
        return cls(**names, opset=s.int("opset", 1), ir_version=s.int("ir_version", 1))


def _parity_stats(d: Any, where: str) -> dict[str, dict[str, float]]:
    out = {}
    for name, stats in _Section({"x": d}, ("x",), where).typed("x", dict).items():
        s = _Section(stats, ("max_abs", "max_rel", "n_bad"), f"{where}.{name}")
        out[name] = {"max_abs": s.num("max_abs", 0.0), "max_rel": s.num("max_rel", 0.0), "n_bad": s.int("n_bad")}
    return out


@dataclass(frozen=True)
class StreamParams:
    """The step graph's state (`step.onnx`, `trainer.model.streaming.StepModule`): P rows per turbine (the clean
    pass and one per group), per convolution (channels, ring steps S = (k - 1) d, dilation d, kernel k), the
    hidden size D and whether the fault head's ring of clean hidden states is kept."""

    passes: int
    convs: tuple[tuple[int, int, int, int], ...]
    hidden: int
    h_ring: bool

    def to_dict(self) -> dict[str, Any]:
        return {"passes": self.passes, "convs": [list(c) for c in self.convs], "hidden": self.hidden,
                "h_ring": self.h_ring}  # fmt: skip

    @classmethod
    def from_dict(cls, d: Any) -> StreamParams:
        s = _Section(d, ("passes", "convs", "hidden", "h_ring"), "stream")
        convs = s.typed("convs", list)
        ok = all(isinstance(c, list) and len(c) == 4 and all(type(x) is int and x >= 1 for x in c) for c in convs)
        if not convs or not ok or any(c[1] != (c[3] - 1) * c[2] for c in convs):
            raise _fail("stream.convs: a non-empty list of [channels, steps, dilation, kernel] with steps = "
                        "(kernel - 1) * dilation, all integers >= 1")  # fmt: skip
        return cls(s.int("passes", 2), tuple(tuple(c) for c in convs), s.int("hidden", 1), s.typed("h_ring", bool))


@dataclass(frozen=True)
class ParityReport:
    """Torch vs onnxruntime at export: per output "graph/name" {max_abs, max_rel, n_bad}, overall and per case."""

    atol: float
    rtol: float
    extreme: float
    passed: bool
    outputs: dict[str, dict[str, float]]
    cases: dict[str, dict[str, Any]]  # case -> {n_windows, outputs}

    def to_dict(self) -> dict[str, Any]:
        return {"atol": self.atol, "rtol": self.rtol, "extreme": self.extreme, "passed": self.passed,
                "outputs": self.outputs, "cases": self.cases}  # fmt: skip

    @classmethod
    def from_dict(cls, d: Any) -> ParityReport:
        s = _Section(d, ("atol", "rtol", "extreme", "passed", "outputs", "cases"), "parity")
        atol, rtol, extreme = s.num("atol", 0.0), s.num("rtol", 0.0), s.num("extreme", 0.0)
        if not s.typed("passed", bool):
            raise _fail("parity.passed is false: the export's torch/onnxruntime parity check failed; re-export")
        cases = {}
        for case, c in s.typed("cases", dict).items():
            cs = _Section(c, ("n_windows", "outputs"), f"parity.cases.{case}")
            cases[case] = {"n_windows": cs.int("n_windows", 1),
                           "outputs": _parity_stats(c["outputs"], f"parity.cases.{case}.outputs")}  # fmt: skip
        return cls(atol, rtol, extreme, True, _parity_stats(d["outputs"], "parity.outputs"), cases)


@dataclass(frozen=True)
class BundleContents:
    """Everything `scada-export` decides; `dump_bundle` adds the checksums and the model id."""

    dims: Dims
    dt_seconds: int
    feature_registry: FeatureRegistry
    flag_registry: FlagRegistry
    column_mapping: dict[str, str]
    table_identifiers: TableIdentifiers | None  # None: a bundle of schema 7
    table_csv: TableCsv | None  # None: a bundle of schema 7 to 9 (plain CSV)
    spec: PipelineSpec
    scaler: RobustScaler
    heads: Heads
    class_names: tuple[str, ...]
    scoring: ScoringParams
    signals: SignalParams | None  # per_signal bundles
    stream: StreamParams | None  # per_signal bundles whose receptive field fits the window: step.onnx
    calibration: Calibration | None  # window_mean bundles
    alerting: AlertingParams
    fleet: FleetParams
    score_reference: ScoreReference
    feature_reference: DriftReference
    versions: Versions
    data_fingerprint: str
    parity: ParityReport | None

    def to_dict(self) -> dict[str, Any]:
        """The bundle.json sections this record holds, as plain JSON types."""
        return {
            "dims": self.dims.to_dict(),
            "dt_seconds": self.dt_seconds,
            "feature_registry": self.feature_registry.to_dict(),
            "flag_registry": self.flag_registry.to_dict(),
            "column_mapping": dict(self.column_mapping),
            "table_identifiers": None if self.table_identifiers is None else self.table_identifiers.to_dict(),
            "table_csv": None if self.table_csv is None else self.table_csv.to_dict(),
            "pipeline_spec": self.spec.to_dict(),
            "scaler": self.scaler.to_dict(),
            "heads": self.heads.to_dict(),
            "class_names": list(self.class_names),
            "scoring": self.scoring.to_dict(),
            "signals": None if self.signals is None else self.signals.to_dict(),
            "stream": None if self.stream is None else self.stream.to_dict(),
            "calibration": None if self.calibration is None else self.calibration.to_dict(),
            "alerting": self.alerting.to_dict(),
            "fleet": self.fleet.to_dict(),
            "score_reference": self.score_reference.to_dict(),
            "feature_reference": self.feature_reference.to_dict(),
            "versions": self.versions.to_dict(),
            "data_fingerprint": self.data_fingerprint,
            "parity": None if self.parity is None else self.parity.to_dict(),
        }

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> BundleContents:
        """Parse the sections (after the top-level keys were checked) and check them against each other."""
        top = _Section(dict(doc), tuple(doc), "<top level>")
        version = doc.get("schema_version", SCHEMA_VERSION)
        spec_doc = doc["pipeline_spec"]
        if version < 11 and isinstance(spec_doc, dict):  # written before report-by-exception holds: none
            if "hold_s" in spec_doc:
                raise _fail(f"pipeline_spec.hold_s: unknown in schema_version {version} (from 11 on)")
            spec_doc = with_hold_default(spec_doc)
        timed = spec_doc.get("aggregation") if version < 12 and isinstance(spec_doc, dict) else None
        if isinstance(timed, dict) and "time" in timed.values():
            raise _fail(f"pipeline_spec.aggregation: time is unknown in schema_version {version} (from 12 on)")
        spec = _nested(PipelineSpec.from_dict, spec_doc, "pipeline_spec")
        _nested(compile_rules, spec, "pipeline_spec")
        scaler = _nested(RobustScaler.from_dict, doc["scaler"], "scaler")
        for name, obj, written in (("pipeline_spec", spec, spec_doc), ("scaler", scaler, doc["scaler"])):
            if obj.to_dict() != written:  # from_dict is lenient about container types; the file must be canonical
                raise _fail(f"{name}: not in the canonical form its to_dict() writes (a value of the wrong type?)")
        contents = cls(
            dims=Dims.from_dict(doc["dims"]),
            dt_seconds=top.int("dt_seconds", 1),
            feature_registry=_nested(FeatureRegistry.from_dict, doc["feature_registry"], "feature_registry"),
            flag_registry=_nested(FlagRegistry.from_dict, doc["flag_registry"], "flag_registry"),
            column_mapping=top.str_map("column_mapping"),
            table_identifiers=None
            if doc.get("table_identifiers") is None
            else TableIdentifiers.from_dict(doc["table_identifiers"], version),
            table_csv=None if doc.get("table_csv") is None else TableCsv.from_dict(doc["table_csv"]),
            spec=spec,
            scaler=scaler,
            heads=Heads.from_dict(doc["heads"]),
            class_names=top.strs("class_names"),
            scoring=ScoringParams.from_dict(doc["scoring"]),
            signals=None
            if doc["signals"] is None
            else _nested(partial(SignalParams.from_dict, group_halflife=version >= 9), doc["signals"], "signals"),
            stream=None if doc["stream"] is None else StreamParams.from_dict(doc["stream"]),
            calibration=None
            if doc["calibration"] is None
            else _nested(Calibration.from_dict, doc["calibration"], "calibration"),
            alerting=AlertingParams.from_dict(doc["alerting"]),
            fleet=FleetParams.from_dict(doc["fleet"]),
            score_reference=ScoreReference.from_dict(doc["score_reference"]),
            feature_reference=_nested(DriftReference.from_dict, doc["feature_reference"], "feature_reference"),
            versions=Versions.from_dict(doc["versions"]),
            data_fingerprint=top.typed("data_fingerprint", str),
            parity=None if doc["parity"] is None else ParityReport.from_dict(doc["parity"]),
        )
        contents.check()
        return contents

    def check(self) -> None:
        """The sections must agree with each other; one BundleError lists every disagreement."""
        spec, dims, sc = self.spec, self.dims, self.scoring
        fr, gr = self.feature_registry, self.flag_registry
        p = []
        if (fr.feature_names, fr.raw_channel_names, fr.angular_channel_names, gr.flag_names) != (
            spec.feature_names, spec.feature_channels, spec.angular_channels, spec.flag_names
        ):  # fmt: skip
            p.append("the registries' feature, channel or flag names differ from pipeline_spec's")
        scaled_ok = np.array_equal(self.scaler.scaled, scaled_mask(spec))
        if tuple(self.scaler.feature_names) != tuple(spec.feature_names) or not scaled_ok:
            p.append("the scaler's features or scaled columns differ from pipeline_spec's")
        if (dims.F, dims.R) != (spec.n_features, spec.n_flags):
            p.append(f"dims F={dims.F}, R={dims.R} but the registries hold {spec.n_features} features, "
                     f"{spec.n_flags} flags")  # fmt: skip
        if self.dt_seconds != spec.dt_seconds:
            p.append(f"dt_seconds={self.dt_seconds} but pipeline_spec.dt_seconds={spec.dt_seconds}")
        if set(self.column_mapping) != set(spec.channels):
            p.append(f"column_mapping channels {sorted(self.column_mapping)} differ from the spec's "
                     f"{sorted(spec.channels)}")  # fmt: skip
        if self.heads.fault and len(self.class_names) != dims.C:
            p.append(f"{len(self.class_names)} class_names for C={dims.C} fault classes")
        if not self.heads.clean_outputs:
            p.append("no head of the clean graph is on")
        if sc.p_score is not None and (not 0.0 < sc.p_score < 1.0 or sc.passes != round(1 / sc.p_score)):
            p.append(f"scoring.passes={sc.passes} is not round(1/p_score) for p_score={sc.p_score} in (0, 1)")
        if not set(sc.context) < set(spec.feature_names) or len(set(sc.context)) != len(sc.context):
            p.append("scoring.context must list distinct features of the registry, leaving one scored")
        if sc.groups is not None:
            grouped = [f for members in sc.groups.values() for f in members] + list(sc.context)
            if sorted(grouped) != sorted(spec.feature_names) or any(not m for m in sc.groups.values()):
                p.append("scoring.groups must be non-empty groups that, with scoring.context, hold every feature "
                         "of the registry once")  # fmt: skip
            if sc.passes != len(sc.groups):
                p.append(f"scoring.passes={sc.passes} but there are {len(sc.groups)} groups")
        per_signal = sc.kind == ScoreKind.per_signal
        if per_signal != (self.signals is not None) or per_signal == (self.calibration is not None):
            p.append("signals and calibration: per_signal bundles carry signals (calibration null), window_mean "
                     "bundles calibration (signals null)")  # fmt: skip
        elif self.signals is not None and sc.groups is not None:
            index = {f: i for i, members in enumerate(sc.groups.values()) for f in members}
            want = tuple(index.get(f, -1) for f in spec.feature_names)
            sig = self.signals.spec
            if (sig.features, sig.groups, sig.group_of) != (tuple(spec.feature_names), tuple(sc.groups), want):
                p.append("signals.spec: its features, groups and each feature's group differ from the registry, "
                         "scoring.groups and context")  # fmt: skip
            bad = [c.channel for c in sig.stuck if spec.repeat_channels[c.repeat : c.repeat + 1] != (c.channel,)]
            if bad:
                p.append(f"signals.spec.stuck: {bad} are not at their index of pipeline_spec.repeat_channels")
            if not set(sig.skip_flags) <= set(spec.flag_names):
                p.append(f"signals.spec.skip_flags {list(sig.skip_flags)} are not all flags {list(spec.flag_names)}")
        st = self.stream
        if st is not None:
            want_p = None if sc.groups is None else len(sc.groups) + 1
            if not per_signal or dims.RF > dims.L or st.passes != want_p or st.h_ring != self.heads.fault:
                p.append(f"stream: a step graph needs a per_signal bundle with RF={dims.RF} <= L={dims.L}, passes = "
                         f"groups + 1 ({want_p}) and h_ring exactly when the fault head is on")  # fmt: skip
        if not 1 <= sc.topn <= dims.F:
            p.append(f"scoring.topn={sc.topn} is not in [1, F={dims.F}]")
        if self.alerting.T_off > self.alerting.T_on:
            p.append(f"alerting.T_off={self.alerting.T_off} > T_on={self.alerting.T_on}")
        if tuple(self.feature_reference.feature_names) != tuple(spec.feature_names):
            p.append("feature_reference.feature_names differ from the feature registry")
        if p:
            raise _fail("inconsistent bundle: " + "; ".join(p))


@dataclass(frozen=True)
class Bundle(BundleContents):
    """A loaded, validated bundle. `graphs` holds the verified bytes of each graph (open with `open_session`)."""

    path: Path = Path()
    schema_version: int = SCHEMA_VERSION
    model_id: str = ""
    bundle_id: str = ""
    checksums: dict[str, str] = field(default_factory=dict)
    graphs: dict[str, bytes] = field(repr=False, compare=False, default_factory=dict)

    @property
    def clean_outputs(self) -> tuple[str, ...]:
        return self.heads.clean_outputs

    @property
    def table_format(self) -> TableFormat:
        """The training table's layout (a bundle of schema 7: its columns and `SCHEMA7_IDENTIFIERS`; before schema
        10: plain CSV)."""
        ids = self.table_identifiers or SCHEMA7_IDENTIFIERS
        csv = {} if self.table_csv is None else self.table_csv.to_dict()
        return TableFormat(dict(self.column_mapping), ids.turbine_id_col, ids.time_col, ids.naive_timezone,
                           CsvDialect(**csv, settings="mapping.csv"), ids.turbine_id_from_file,
                           ids.time_format)  # fmt: skip

    def with_time_weighted(self, channels: Sequence[str] | None) -> Bundle:
        """This bundle scoring a source whose `channels` are instantaneous readings held until the next (runtime.yaml's
        `mapping.time_weighted`): their bins aggregate by `time` and the other channels' `time` becomes `mean`. None,
        or the bundle's own channels: this bundle. Otherwise a bundle of the current schema whose `bundle_id` is that
        of its own document, so its records and state name the settings that scored them. Each channel must hold
        (the spec's `hold_s`) and aggregate by its mean (or `time`); else ConfigError, naming runtime.yaml's key."""
        spec = self.spec
        own = {c for c, a in spec.aggregation.items() if a == "time"}
        if channels is None or set(channels) == own:
            return self
        unknown = sorted(set(channels) - set(spec.channels))
        if unknown:
            raise ConfigError(
                f"mapping.time_weighted: {unknown} are not channels of this bundle: {list(spec.channels)}"
            )
        bad = sorted(set(channels) - set(spec.hold_s))
        if bad:
            raise ConfigError(
                f"mapping.time_weighted: {bad} do not hold in this bundle (pipeline_spec.hold_s: "
                f"{dict(spec.hold_s)}): a time-weighted mean reads each value as holding until the next; export the "
                "model with data.qc.hold_s giving them how long their values hold"
            )
        other = sorted(c for c in channels if spec.aggregation.get(c, "mean") not in ("mean", "time"))
        if other:
            how = [str(spec.aggregation[c]) for c in other]
            raise ConfigError(
                f"mapping.time_weighted: {other} aggregate by {how} in this bundle, not by their mean: a "
                "time-weighted mean would change what the model was trained on"
            )
        agg = {c: a for c, a in spec.aggregation.items() if a != "time"} | dict.fromkeys(channels, "time")
        timed = dataclasses.replace(
            self, spec=PipelineSpec.from_dict({**spec.to_dict(), "aggregation": agg}), schema_version=SCHEMA_VERSION
        )
        return dataclasses.replace(timed, bundle_id=compute_bundle_id(timed.to_dict()))

    def to_dict(self) -> dict[str, Any]:
        """The whole bundle.json document, keys in the documented order (of its schema version)."""
        doc = {"schema_version": self.schema_version, "model_id": self.model_id, **super().to_dict(),
               "checksums": dict(self.checksums)}  # fmt: skip
        if self.schema_version < 9 and doc["signals"] is not None:  # written before group half-lives (none)
            doc["signals"] = {k: v for k, v in doc["signals"].items() if k != "group_halflife"}
        if self.schema_version < 10 and doc["table_identifiers"] is not None:  # before ids from file names (none)
            old = ("turbine_id_from_file", "time_format")
            doc["table_identifiers"] = {k: v for k, v in doc["table_identifiers"].items() if k not in old}
        if self.schema_version < 11:  # before report-by-exception holds (none)
            doc["pipeline_spec"] = {k: v for k, v in doc["pipeline_spec"].items() if k != "hold_s"}
        return {k: doc[k] for k in top_keys(self.schema_version)}


# ----------------------------------------------------------------------------------------------- checks


def top_keys(version: int) -> tuple[str, ...]:
    """bundle.json's top-level keys in schema `version` (7 has no table_identifiers, 7 to 9 no table_csv)."""
    absent = {"table_csv"} if version >= 8 else {"table_csv", "table_identifiers"}
    return TOP_KEYS if version >= 10 else tuple(k for k in TOP_KEYS if k not in absent)


def graph_names(b: BundleContents) -> tuple[str, ...]:
    """The graphs of this bundle: clean and scoring, and step when it streams."""
    return ("clean", "scoring", "step") if b.stream is not None else ("clean", "scoring")


def compute_model_id(checksums: Mapping[str, str], feature_registry: Mapping, flag_registry: Mapping) -> str:
    """sha256 over the graphs' checksums (in file-name order) and the canonical JSON of both registries."""
    h = hashlib.sha256(f"scada-tcn-bundle/{_MODEL_ID_VERSION}\n".encode())
    for name in sorted(checksums):
        h.update(f"{name}:{checksums[name]}\n".encode())
    h.update(canonical_json({"feature_registry": feature_registry, "flag_registry": flag_registry}))
    return h.hexdigest()


def compute_bundle_id(doc: Mapping[str, Any]) -> str:
    """sha256 over the canonical JSON of a whole bundle.json document (`Bundle.bundle_id`), under its version."""
    h = hashlib.sha256(f"scada-tcn-bundle-json/{doc['schema_version']}\n".encode())
    h.update(canonical_json(doc))
    return h.hexdigest()


def expected_graph_io(b: BundleContents, graph: str) -> tuple[list[tuple], list[tuple]]:
    """(inputs, outputs) as (name, type, shape) with None for the symbolic batch axis."""
    d = b.dims
    ins = [("X", _FLOAT, [None, d.L, d.F]), ("M_miss", _FLOAT, [None, d.L, d.F]), ("Flags", _FLOAT, [None, d.L, d.R])]
    if graph == "clean":
        shapes = {"Y_hat": [None, d.K, d.F], "fault_prob": [None, d.C], "rul": [None, 1]}
        return ins, [(n, _FLOAT, shapes[n]) for n in b.heads.clean_outputs]
    if graph == "scoring" and b.scoring.kind == ScoreKind.per_signal:
        return ins, [("resid", _FLOAT, [None, d.F]), ("pred", _FLOAT, [None, d.F])]
    if graph == "scoring":
        outs = [("s_now", _FLOAT, [None]), ("feat_contrib", _FLOAT, [None, d.F]),
                ("top_idx", _INT64, [None, b.scoring.topn]), ("E", _FLOAT, [None, d.L, d.F])]  # fmt: skip
        return ins, outs
    if graph == "step" and b.stream is not None:
        st = b.stream
        ins = [("X", _FLOAT, [None, d.F]), ("M_miss", _FLOAT, [None, d.F]), ("Flags", _FLOAT, [None, d.R])]
        ins += [(f"tap_{i}_{j}", _FLOAT, [None, c]) for i, (c, _, _, k) in enumerate(st.convs) for j in range(k - 1)]
        ins += [("h_sum", _FLOAT, [None, st.hidden])] if st.h_ring else []
        shapes = {"Y_hat": [None, d.K, d.F], "fault_prob": [None, d.C], "rul": [None]}
        outs = [("resid", _FLOAT, [None, d.F]), ("pred", _FLOAT, [None, d.F])]
        outs += [(n, _FLOAT, shapes[n]) for n in b.heads.clean_outputs]
        outs += [(f"col_{i}", _FLOAT, [None, c]) for i, (c, _, _, _) in enumerate(st.convs)]
        outs += [("h", _FLOAT, [None, st.hidden])] if st.h_ring else []
        return ins, outs
    raise BundleError(f"unknown graph {graph!r}; allowed {sorted(GRAPH_FILES)}")


def _check_io(sess: ort.InferenceSession, b: BundleContents, graph: str) -> None:
    file = GRAPH_FILES[graph]
    for kind, got_args, want in zip(
        ("input", "output"), (sess.get_inputs(), sess.get_outputs()), expected_graph_io(b, graph)
    ):
        got_names, want_names = [a.name for a in got_args], [w[0] for w in want]
        if got_names != want_names:
            raise BundleError(f"{file}: {kind} names {got_names} differ from the expected {want_names}")
        for a, (name, typ, shape) in zip(got_args, want):
            ok = (
                a.type == typ
                and len(a.shape) == len(shape)
                and all(not isinstance(g, int) if w is None else g == w for g, w in zip(a.shape, shape))
            )  # None: the symbolic batch axis
            if not ok:
                shown = ["batch" if w is None else w for w in shape]
                raise BundleError(
                    f"{file}: {kind} {name!r} is {a.type} {list(a.shape)}, expected {typ} {shown} from the bundle "
                    f"dims {b.dims} (a symbolic batch axis)"
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


# ----------------------------------------------------------------------------------------------- files


def _parse(doc: dict[str, Any], path: Path, graphs: dict[str, bytes]) -> Bundle:
    """Validate a bundle.json document (whose schema version was checked) and build the Bundle."""
    top = _Section(doc, top_keys(doc["schema_version"]), "<top level>")
    if doc["schema_version"] >= 8 and doc["table_identifiers"] is None:
        raise _fail("table_identifiers: null; a bundle of this version names the training table's id and time "
                    "columns (data.identifiers): export the model again")  # fmt: skip
    if doc["schema_version"] >= 10 and doc["table_csv"] is None:
        raise _fail("table_csv: null; a bundle of this version says how the training table's CSV was written "
                    "(data.csv): export the model again")  # fmt: skip
    contents = BundleContents.from_dict(doc)
    files = tuple(sorted(GRAPH_FILES[g] for g in graph_names(contents)))
    checksums = _Section(doc["checksums"], files, "checksums").d
    for k, v in checksums.items():
        if not isinstance(v, str) or len(v) != 64 or any(c not in "0123456789abcdef" for c in v):
            raise _fail(f"checksums.{k}: expected a lowercase sha256 hex digest, got {v!r}")
    model_id = top.typed("model_id", str)
    expected_id = compute_model_id(checksums, doc["feature_registry"], doc["flag_registry"])
    if model_id != expected_id:
        raise _fail(f"model_id {model_id!r} does not match the graphs and registries (expected {expected_id!r})")
    fields = {f.name: getattr(contents, f.name) for f in dataclasses.fields(BundleContents)}
    return Bundle(**fields, path=path, schema_version=doc["schema_version"], model_id=model_id,
                  bundle_id=compute_bundle_id(doc), checksums=dict(checksums), graphs=graphs)  # fmt: skip


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
    if version not in READ_VERSIONS or type(version) is not int:
        raise _fail(
            f"schema_version {version!r} is not supported (this runtime reads versions {READ_VERSIONS}); "
            "export the model again with a scada-export of the same release as this runtime"
        )
    graphs: dict[str, bytes] = {}
    names = ("clean", "scoring", "step") if doc.get("stream") is not None else ("clean", "scoring")
    for graph in names:
        gpath = path / GRAPH_FILES[graph]
        if not gpath.is_file():
            raise BundleError(f"{GRAPH_FILES[graph]}: graph file missing from {path}")
        graphs[graph] = gpath.read_bytes()
    b = _parse(doc, path, graphs)
    for graph in graph_names(b):
        file = GRAPH_FILES[graph]
        actual = hashlib.sha256(graphs[graph]).hexdigest()
        if actual != b.checksums[file]:
            raise BundleError(
                f"{file}: sha256 mismatch: bundle.json records {b.checksums[file]}, the file has {actual}; "
                "the graph was modified after export"
            )
    if check_graphs:
        for graph in graph_names(b):
            open_session(b, graph, optimize=False)
    return b


def dump_bundle(out_dir: str | Path, graphs: Mapping[str, bytes], contents: BundleContents) -> Bundle:
    """Write `graphs` ({"clean": bytes, "scoring": bytes}) and bundle.json, validated, and return the loaded bundle.

    The model id and checksums are computed here. Nothing is written when the contents are invalid; bundle.json
    is written last, atomically.
    """
    out = Path(out_dir)
    if not isinstance(contents, BundleContents):
        raise BundleError(f"dump_bundle: contents must be a BundleContents, got {type(contents).__name__}")
    if sorted(graphs) != sorted(graph_names(contents)):
        raise BundleError(f"dump_bundle: graphs must be exactly {sorted(graph_names(contents))}, got {sorted(graphs)}")
    checksums = {GRAPH_FILES[g]: hashlib.sha256(graphs[g]).hexdigest() for g in sorted(graphs)}
    body = json.loads(json.dumps(contents.to_dict(), allow_nan=False))  # plain JSON types, as the loader sees them
    model_id = compute_model_id(checksums, body["feature_registry"], body["flag_registry"])
    doc = {"schema_version": SCHEMA_VERSION, "model_id": model_id, **body, "checksums": checksums}
    doc = {k: doc[k] for k in TOP_KEYS}
    _parse(doc, out, dict(graphs))
    out.mkdir(parents=True, exist_ok=True)
    for g, data in graphs.items():
        (out / GRAPH_FILES[g]).write_bytes(data)
    tmp = out / f".{BUNDLE_JSON}.tmp"
    tmp.write_text(json.dumps(doc, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    os.replace(tmp, out / BUNDLE_JSON)
    return load_bundle(out)
