"""The records the edge publishes, typed, and the one deduplication consumers and tests use.

Score topic (schema "scada-score/2"): one record per closed step of a turbine, in one of three statuses.

    "ok"                 {schema, status, turbine, ts (ISO-8601 UTC of the step end), seq (ts / dt), model_id,
                          bundle_id, score, threshold, threshold_source, regime, ratio (score / threshold), alert (state
                          after this step), top_features [{name, contribution}] (largest first), fault_probs
                          {class: p} | null, forecast {feature: [K values in feature units]} | null, rul | null,
                          missing_fraction (share of missing inputs in the window), missing_now (latest step)}
                         Per-signal bundles: score is the largest monitor ratio (a monitored feature's aggregate
                         or a stuck check's run over its own level; null until one is defined), threshold 1,
                         top_features "group:signal" with the group's ratio, and groups [{group, ratio, value,
                         [own], level, signal}] worst first, a group's entry being its worst monitor: "gearbox
                         1.8x, gearbox_bearing_above_ambient" or "pitch 2.1x, stuck:pitch" (a channel repeating
                         while the model expected it to move). Under a fleet baseline, own is the turbine's own
                         deviation aggregated on the same steps (null for a stuck check): a value far from own
                         came from the peers (with EWMA and baseline fleet or fleet_all, value = own - the
                         peers' part).
                         Fleet-relative window-mean bundles add fleet_score (null below min_peers peers) and
                         peers; threshold and ratio then refer to fleet_score.
    "warmup"             {schema, status, turbine, ts, seq, model_id, bundle_id, steps, steps_needed, missing_now}: the
                          turbine has fewer than L steps.
    "insufficient_data"  {schema, status, turbine, ts, seq, model_id, bundle_id, present_fraction, min_present_fraction,
                          alert, missing_now}: the window's present fraction is below the bundle's minimum, so no
                          score is computed (never a number over no data); the alert state is held.

Alert topic: {schema, turbine, ts, seq, model_id, bundle_id, score, [fleet_score], threshold, ratio, regime,
top_features, state ("on" | "off")} on every transition. Retained alert state: {schema, turbine, state, since, seq,
model_id, bundle_id, gateway} (gateway: the daemon's `gateway`, which publishes it; a daemon started without its
state clears the retained state of a turbine its own gateway published and no longer scores).

`model_id` names the model (graphs and registries), `bundle_id` the whole bundle that scored the step (its
settings too: levels, baseline, alerting; `runtime.bundle.compute_bundle_id`). A per-signal record is scored
when its fleet step is released (aggregates, levels, alert), and names the bundle that released it. A window-mean
fleet-relative record that waited in a state saved before records carried the bundle id has bundle_id null:
unknown.

Serialisation (`dumps`, orjson) is deterministic: sorted keys, no spaces, a number in the shortest form that
round-trips it (float64; a numpy float32 scalar or array as float32), NaN/inf as null. The forecast, float32, is
encoded once per record by `forecast_json` (the same bytes, a fraction of the cost) and carried as those bytes.
A step is scored once and its numbers do not depend on the batch it was scored in, so a redelivered or replayed
record is the same bytes. The score-topic records are plain slotted dataclasses: the engine fills a waiting
record's fleet-level fields (levels, alert state) in place when its fleet step is released, before it is
serialised; nothing changes a record after that.

Batched score topic (`topics.score_batch`): a message holds several score-topic records, each exactly the bytes it
would have on its turbine's topic, one per line (`batches`; `split_batch` gives them back), so the same rule
deduplicates them.

`dedupe(payloads)` is the consumer's rule: keep one record per (turbine, ts), count identical repeats, and report
any key that arrived with two different payloads (a broken contract, never expected).
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, NamedTuple

import numpy as np
import orjson

__all__ = [
    "SCHEMA",
    "AlertRecord",
    "AlertStateRecord",
    "Deduped",
    "InsufficientDataRecord",
    "RetainedAlertState",
    "ScoreRecord",
    "WarmupRecord",
    "batches",
    "dedupe",
    "dumps",
    "forecast_json",
    "iso_utc",
    "retained_alert_state",
    "split_batch",
]

SCHEMA = "scada-score/2"
_OPTIONS = orjson.OPT_SORT_KEYS | orjson.OPT_SERIALIZE_NUMPY


def _contiguous(x: Any) -> Any:
    """orjson's fallback: a strided float array (a view) as a contiguous float32 copy; anything else is refused."""
    if type(x) is np.ndarray and x.dtype.kind == "f":
        return np.ascontiguousarray(x, dtype=np.float32)
    raise TypeError(f"records.dumps: cannot serialise {type(x).__name__}")


def dumps(record: dict[str, Any]) -> bytes:
    """Deterministic compact JSON (sorted keys; floats in their shortest round-trip form, float32 arrays and numpy
    float32 scalars as float32; NaN/inf -> null)."""
    return orjson.dumps(record, default=_contiguous, option=_OPTIONS)


@functools.lru_cache(maxsize=16)
def _forecast_layout(names: tuple[str, ...]) -> tuple[bytes, np.ndarray]:
    """The %-template of a forecast object keyed by `names` in sorted order, and the row order that sorts them."""
    order = np.array(sorted(range(len(names)), key=names.__getitem__), dtype=np.int64)
    keys = [orjson.dumps(names[i]).replace(b"%", b"%%") for i in order]
    return b"{" + b",".join(k + b":[%b]" for k in keys) + b"}", order


def forecast_json(names: Sequence[str], rows: np.ndarray) -> list[bytes]:
    """(B, F, K) forecasts and F distinct names -> per row the JSON object {feature: [K values]}, the very bytes
    `dumps` writes for dict(zip(names, rows[b])) (sorted keys, float32 shortest form, NaN as null), each row
    serialised as one array and its rows keyed by a template: F small arrays per record cost orjson about twice as
    much."""
    rows = np.asarray(rows, dtype=np.float32)
    if rows.ndim != 3 or rows.shape[1] != len(names):
        raise ValueError(f"forecast_json: rows must be (B, F={len(names)}, K), got {rows.shape}")
    B, F, K = rows.shape
    if F == 0:
        return [b"{}"] * B
    fmt, order = _forecast_layout(tuple(names))
    if K == 0:
        return [fmt % ((b"",) * F)] * B
    opt = orjson.OPT_SERIALIZE_NUMPY
    # [[a,b],[c,d],...] -> a,b | c,d | ... (a split of the whole batch's text is slower: one large buffer)
    return [fmt % tuple(orjson.dumps(r, option=opt)[2:-2].split(b"],[")) for r in np.ascontiguousarray(rows[:, order])]


def batches(payloads: Iterable[bytes], max_bytes: int) -> Iterable[bytes]:
    """Score-topic payloads, in order, joined one per line into messages of at most `max_bytes` (a record longer
    than that goes alone)."""
    part: list[bytes] = []
    size = 0
    for p in payloads:
        if part and size + len(p) > max_bytes:
            yield b"\n".join(part)
            part, size = [], 0
        part.append(p)
        size += len(p) + 1
    if part:
        yield b"\n".join(part)


def split_batch(message: bytes) -> list[bytes]:
    """The records of a batched score message, in order (each the bytes of a single score-topic message)."""
    return message.split(b"\n")


@functools.lru_cache(maxsize=4096)  # a fleet step's records share their stamp
def iso_utc(ns: int) -> str:
    """ns since the epoch -> 'YYYY-MM-DDTHH:MM:SS[.ffffff]Z'."""
    s, rem = divmod(int(ns), 1_000_000_000)
    dt = datetime.fromtimestamp(s, tz=UTC)
    frac = f".{rem // 1000:06d}" if rem else ""
    return dt.strftime("%Y-%m-%dT%H:%M:%S") + frac + "Z"


@dataclass(slots=True)
class _Step:
    """What every score-topic record names: the turbine, the step end, the model and the bundle that scored it."""

    turbine: str
    end_ns: int
    dt_ns: int
    model_id: str
    bundle_id: str | None  # None: unknown (a waiting record of a state saved before records carried it)

    def _head(self, status: str) -> dict[str, Any]:
        return {"schema": SCHEMA, "status": status, "turbine": self.turbine, "ts": iso_utc(self.end_ns),
                "seq": self.end_ns // self.dt_ns, "model_id": self.model_id, "bundle_id": self.bundle_id}  # fmt: skip


@dataclass(slots=True)
class WarmupRecord(_Step):
    steps: int
    steps_needed: int
    missing_now: float

    def to_dict(self) -> dict[str, Any]:
        return self._head("warmup") | {
            "steps": self.steps, "steps_needed": self.steps_needed, "missing_now": self.missing_now
        }  # fmt: skip


@dataclass(slots=True)
class InsufficientDataRecord(_Step):
    present_fraction: float
    min_present_fraction: float
    alert: bool  # the held alert state
    missing_now: float

    def to_dict(self) -> dict[str, Any]:
        return self._head("insufficient_data") | {
            "present_fraction": self.present_fraction, "min_present_fraction": self.min_present_fraction,
            "alert": self.alert, "missing_now": self.missing_now,
        }  # fmt: skip


@dataclass(slots=True)
class ScoreRecord(_Step):
    score: float | None  # None: a per-signal step whose aggregates are not defined yet (no number over no data)
    threshold: float
    threshold_source: str
    regime: str
    alert: bool
    top_features: tuple[tuple[str, float], ...]
    fault_probs: dict[str, float] | None
    forecast: bytes | None = field(compare=False)  # the JSON object {feature: [K values]} (`forecast_json`)
    rul: float | None
    missing_fraction: float
    missing_now: float
    relative: bool = False  # a fleet-relative bundle: fleet_score and peers are published
    fleet_score: float | None = None
    peers: int = 0
    turned: str | None = field(default=None, compare=False)  # "on" / "off" when this step changed the alert
    groups: tuple[dict[str, Any], ...] | None = None  # per-signal: {group, ratio, value, level, signal}, worst first

    @property
    def ratio(self) -> float | None:
        value = self.fleet_score if self.relative else self.score
        return None if value is None else value / self.threshold

    def to_dict(self) -> dict[str, Any]:
        d = self._head("ok") | {
            "score": self.score, "threshold": self.threshold, "threshold_source": self.threshold_source,
            "regime": self.regime, "ratio": self.ratio, "alert": self.alert,
            "top_features": [{"name": n, "contribution": c} for n, c in self.top_features],
            "fault_probs": self.fault_probs, "rul": self.rul,
            "forecast": None if self.forecast is None else orjson.Fragment(self.forecast),
            "missing_fraction": self.missing_fraction, "missing_now": self.missing_now,
        }  # fmt: skip
        if self.relative:
            d |= {"fleet_score": self.fleet_score, "peers": self.peers}
        if self.groups is not None:
            d["groups"] = list(self.groups)  # the dicts are built for this record alone
        return d

    def state_dict(self) -> dict[str, Any]:
        """Every field at full precision (a waiting fleet-relative record in the state file)."""
        return {
            "turbine": self.turbine, "end_ns": self.end_ns, "dt_ns": self.dt_ns, "model_id": self.model_id,
            "bundle_id": self.bundle_id, "score": self.score, "threshold": self.threshold,
            "threshold_source": self.threshold_source,
            "regime": self.regime, "alert": self.alert, "top_features": [list(t) for t in self.top_features],
            "fault_probs": self.fault_probs, "rul": self.rul, "relative": self.relative,
            "forecast": None if self.forecast is None else orjson.loads(self.forecast),  # float32 values, exactly
            "missing_fraction": self.missing_fraction, "missing_now": self.missing_now,
            "fleet_score": self.fleet_score, "peers": self.peers, "turned": self.turned,
            "groups": None if self.groups is None else [dict(g) for g in self.groups],
        }  # fmt: skip

    @classmethod
    def from_state_dict(cls, d: dict[str, Any]) -> ScoreRecord:
        d = dict(d)
        d["top_features"] = tuple((str(n), None if c is None else float(c)) for n, c in d["top_features"])
        d["groups"] = None if d["groups"] is None else tuple(dict(g) for g in d["groups"])
        if d["forecast"] is not None:
            f = dict(d["forecast"])
            rows = np.asarray([list(f.values())], dtype=np.float32) if f else np.zeros((1, 0, 0), np.float32)
            d["forecast"] = forecast_json(list(f), rows)[0]
        return cls(**d)


@dataclass(frozen=True)
class AlertRecord:
    record: ScoreRecord  # the step that turned the alert on or off

    def to_dict(self) -> dict[str, Any]:
        full = self.record.to_dict()
        keep = ("schema", "turbine", "ts", "seq", "model_id", "bundle_id", "score", "fleet_score", "threshold",
                "ratio", "regime", "top_features")  # fmt: skip
        return {k: full[k] for k in keep if k in full} | {"state": self.record.turned}


@dataclass(frozen=True)
class AlertStateRecord:
    record: ScoreRecord  # the step since which the state holds
    gateway: str | None = None  # the gateway that publishes it (the daemon's `gateway`; None: not given, no key)

    def to_dict(self) -> dict[str, Any]:
        r = self.record
        doc = {"schema": SCHEMA, "turbine": r.turbine, "state": "on" if r.alert else "off",
               "since": iso_utc(r.end_ns), "seq": r.end_ns // r.dt_ns, "model_id": r.model_id,
               "bundle_id": r.bundle_id}  # fmt: skip
        return doc if self.gateway is None else doc | {"gateway": self.gateway}


class RetainedAlertState(NamedTuple):
    """What a retained alert state says: whether it is on, and the gateway that published it (None: a record of
    a daemon from before records named their gateway, or one written by hand)."""

    on: bool
    gateway: str | None


def retained_alert_state(payload: bytes, turbine: str) -> RetainedAlertState | None:
    """A retained alert state's payload (`AlertStateRecord`) read, or None when it is not the alert state of
    `turbine` (not JSON, another shape, another turbine's, a gateway that is not a string)."""
    try:
        doc = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(doc, dict) or doc.get("turbine") != turbine or doc.get("state") not in ("on", "off"):
        return None
    gateway = doc.get("gateway")
    if gateway is not None and not isinstance(gateway, str):
        return None
    return RetainedAlertState(doc["state"] == "on", gateway)


@dataclass
class Deduped:
    """One payload per (turbine, ts), the count of identical repeats, and the keys that arrived differently."""

    records: dict[tuple[str, str], bytes]
    duplicates: int
    conflicts: dict[tuple[str, str], list[bytes]]
    meta: dict[tuple[str, str], tuple[int, Any]] = field(repr=False)  # (seq, status) per key, read when parsed

    def seqs(self, status: str | None = None) -> dict[str, set[int]]:
        """Per turbine, the distinct `seq` of the kept records (of one status, or all)."""
        out: dict[str, set[int]] = {}
        for key, (seq, st) in self.meta.items():
            if status is None or st == status:
                out.setdefault(key[0], set()).add(seq)
        return out


def dedupe(payloads: Iterable[bytes]) -> Deduped:
    """Score-topic payloads in arrival order -> one per (turbine, ts); see the module docstring."""
    records: dict[tuple[str, str], bytes] = {}
    meta: dict[tuple[str, str], tuple[int, Any]] = {}
    conflicts: dict[tuple[str, str], list[bytes]] = {}
    duplicates = 0
    for p in payloads:
        d = orjson.loads(p)
        key = (str(d["turbine"]), str(d["ts"]))
        seen = records.get(key)
        if seen is None:
            records[key], meta[key] = p, (int(d["seq"]), d.get("status"))
        elif seen == p:
            duplicates += 1
        else:
            conflicts.setdefault(key, [seen]).append(p)
    return Deduped(records, duplicates, conflicts, meta)
