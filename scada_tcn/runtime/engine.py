"""The scoring pipeline shared by `scada-runtime run` and `replay`: samples -> published records.

Contract
--------
    Engine.ingest(Sample)            -> Fleet: binning, features, ring buffer (runtime.fleet)
    Engine.tick(now_ns)              -> closes bins whose end + grace has passed
    Engine.flush() -> list[Output]   -> every step closed since the last flush, in closing order:
        warm-up steps: a "warmup" record on the score topic;
        ready steps: ONE call of each graph for all of them (chunks of `max_batch`), the calibrated threshold
        of (turbine, regime at the last step), the alert state machine (runtime.alerts), then the score record,
        an alert record on every transition and the retained alert state (on the turbine's first score and on
        every transition).

Every step of a turbine is closed once (runtime.fleet), so it is scored and serialised once: a redelivered
score is the same bytes, and no step ever gets a second, different score. Serialisation is deterministic
(`dumps`: sorted keys, no spaces, floats as the shortest repr of their 9 significant digits, which round-trips
float32), so `replay` writes exactly the bytes `run` publishes. Score record (schema "scada-score/1"):

    {"status": "ok", "turbine", "ts" (ISO-8601 UTC of the step end), "seq" (ts / dt: consecutive steps differ
     by 1), "model_id", "score", "threshold", "threshold_source", "regime", "ratio" (score / threshold),
     "alert" (state after this step), "top_features" [{"name", "contribution"}] (largest first),
     "fault_probs" {class: p} | null, "forecast" {feature: [K values in feature units]} | null,
     "rul" | null, "missing_fraction" (share of missing inputs in the window), "missing_now" (latest step)}

Fleet-relative bundles (`fleet.relative`): thresholds and alerts apply to `fleet_score` = score minus the median
score of the other turbines at the same step (`runtime.peers`; windows below `fleet.min_present_fraction` are
neither scored that way nor peers). A scored step waits until every turbine of the fleet has closed that step
(`Fleet.open_from`: on the wall clock at most the grace period), then all of them are released together, in step
order. The record adds "fleet_score" (null below `min_peers` peers: the alert state then stays as it was) and
"peers", and "ratio" is fleet_score / threshold. `flush(final=True)` releases every waiting step (end of a replay,
shutdown without a state file); waiting steps are part of `state_dict()`.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, NamedTuple

import numpy as np

from scada_tcn.runtime.alerts import AlertState
from scada_tcn.runtime.calibration import regime_of
from scada_tcn.runtime.drift import ScoreDriftMonitor
from scada_tcn.runtime.errors import BundleError
from scada_tcn.runtime.fleet import Fleet, Step
from scada_tcn.runtime.peers import fleet_relative
from scada_tcn.runtime.telemetry import Sample

__all__ = ["Engine", "Output", "dumps", "iso_utc"]

SCHEMA = "scada-score/1"


class Output(NamedTuple):
    kind: str  # "score", "alert" or "alert_state"
    turbine: str
    end_ns: int
    payload: bytes
    retain: bool


def _clean(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    if isinstance(x, (bool, np.bool_)):
        return bool(x)
    if isinstance(x, (int, np.integer)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        v = float(x)
        return float(f"{v:.9g}") if math.isfinite(v) else None
    return x


def dumps(record: dict[str, Any]) -> bytes:
    """Deterministic compact JSON (sorted keys, 9 significant digits, NaN/inf -> null) as UTF-8 bytes."""
    return json.dumps(_clean(record), sort_keys=True, separators=(",", ":"), allow_nan=False).encode("utf-8")


def iso_utc(ns: int) -> str:
    """ns since the epoch -> 'YYYY-MM-DDTHH:MM:SS[.ffffff]Z'."""
    s, rem = divmod(int(ns), 1_000_000_000)
    dt = datetime.fromtimestamp(s, tz=UTC)
    frac = f".{rem // 1000:06d}" if rem else ""
    return dt.strftime("%Y-%m-%dT%H:%M:%S") + frac + "Z"


class Engine:
    """Fleet state + batched scoring + calibration + alerts -> serialised records; see the module docstring."""

    def __init__(
        self,
        bundle: Any,
        scorer: Any,
        grace_seconds: float,
        max_turbines: int,
        max_batch: int,
        on_inference: Callable[[float, int], None] | None = None,
        drift_window: int = 1000,
    ) -> None:
        if max_batch < 1:
            raise ValueError(f"Engine: max_batch must be >= 1, got {max_batch}")
        self.bundle = bundle
        self.scorer = scorer
        self.max_batch = int(max_batch)
        self.on_inference = on_inference
        spec = bundle.spec
        self.L = int(bundle.dims.L)
        self.dt_ns = int(spec.dt_seconds) * 1_000_000_000
        self.feature_names = list(spec.feature_names)
        self.flag_names = list(spec.flag_names)
        self.class_names = list(bundle.class_names) if bundle.class_names else []
        self.fleet = Fleet(spec, bundle.scaler, self.L, grace_seconds, max_turbines)
        a = bundle.alerting
        self.alerts = AlertState(T_on=a.T_on, T_off=a.T_off, N_on=a.N_on, N_off=a.N_off)
        self._check_thresholds()
        ref = bundle.score_reference
        self.drift = ScoreDriftMonitor(ref.levels, ref.values, drift_window)  # fleet-wide score distribution
        self._scored_once: set[str] = set()
        self._relative = bool(bundle.fleet.relative)
        self._pending: dict[int, list[dict[str, Any]]] = {}  # fleet-relative: step end -> records awaiting peers
        self._center = np.asarray(bundle.scaler.center, dtype=np.float64)
        self._scale = np.asarray(bundle.scaler.scale, dtype=np.float64)

    def _check_thresholds(self) -> None:
        cal = self.bundle.calibration
        values = {"global": cal.global_threshold, **cal.per_turbine, **cal.per_regime, **cal.per_turbine_regime}
        bad = {k: v for k, v in values.items() if not v > 0}
        if bad:
            raise BundleError(f"calibration: thresholds must be > 0 for the alert state machine; bad: {bad}")

    def ingest(self, sample: Sample) -> bool:
        """Feed one validated sample; False when it was late and dropped."""
        return self.fleet.add(sample.turbine, sample.ts_ns, sample.values)

    def tick(self, now_ns: int) -> None:
        """Close bins whose end + grace has passed on the wall clock."""
        self.fleet.close_until(now_ns)

    def flush(self, final: bool = False) -> list[Output]:
        """Score every step closed since the last flush and return the records to publish, in order.

        Fleet-relative: records of steps the whole fleet has closed are released; `final` releases all."""
        steps = self.fleet.drain()
        ready = [s for s in steps if s.window is not None]
        scored: dict[int, dict[str, Any]] = {}
        for i in range(0, len(ready), self.max_batch):
            scored.update(self._score(ready[i : i + self.max_batch], offset=i))
        out: list[Output] = []
        r = 0
        for s in steps:
            if s.window is None:
                out.append(self._warmup(s))
            elif self._relative:
                self._pending.setdefault(s.end_ns, []).append(scored[r])
                r += 1
            else:
                out.extend(self._records(scored[r]))
                r += 1
        if self._relative:
            out.extend(self._release(final))
        return out

    def _release(self, final: bool) -> list[Output]:
        """Fleet-relative scores and alert steps for the waiting steps that every turbine has closed."""
        limit = self.fleet.open_from()
        out: list[Output] = []
        for end in sorted(e for e in self._pending if final or limit is None or e < limit):
            group = self._pending.pop(end)
            raw = np.array([g["score"] for g in group], dtype=np.float64)
            eligible = np.array([g["_eligible"] for g in group], dtype=bool)
            rel, peers = fleet_relative(
                raw, np.full(len(group), end, dtype=np.int64), eligible, self.bundle.fleet.min_peers
            )
            slots = np.array([g["_slot"] for g in group], dtype=np.int64)
            thr = np.array([g["threshold"] for g in group], dtype=np.float64)
            ok = np.isfinite(rel)
            turned_on, turned_off = np.zeros(len(group), bool), np.zeros(len(group), bool)
            if ok.any():  # one step per turbine: a step closes once per turbine
                tr = self.alerts.step(slots[ok], rel[ok], thr[ok])
                turned_on[ok], turned_off[ok] = tr.turned_on, tr.turned_off
            states = self.alerts.get()
            for b, g in enumerate(group):
                g["fleet_score"] = float(rel[b]) if ok[b] else None
                g["peers"] = int(peers[b])
                g["ratio"] = float(rel[b]) / g["threshold"] if ok[b] else None
                g["alert"] = bool(states[g["_slot"]]) if g["_slot"] < len(states) else False
                g["_turned"] = "on" if turned_on[b] else "off" if turned_off[b] else None
                out.extend(self._records(g))
        return out

    def _warmup(self, s: Step) -> Output:
        rec = {
            "schema": SCHEMA,
            "status": "warmup",
            "turbine": s.turbine,
            "ts": iso_utc(s.end_ns),
            "seq": s.end_ns // self.dt_ns,
            "model_id": self.bundle.model_id,
            "steps": s.n_steps,
            "steps_needed": self.L,
            "missing_now": s.missing_now,
        }
        return Output("score", s.turbine, s.end_ns, dumps(rec), False)

    def _score(self, steps: list[Step], offset: int) -> dict[int, dict[str, Any]]:
        """One graph call for `steps`; alert states advance in time order (one round per repeat of a turbine)."""
        X = np.stack([s.window.X for s in steps])  # (B, L, F)
        M = np.stack([s.window.M_miss for s in steps]).astype(np.float32)  # the graphs take float32
        Flags = np.stack([s.window.Flags for s in steps])  # (B, L, R)
        t0 = time.perf_counter()
        res = self.scorer.score(X, M, Flags)
        if self.on_inference is not None:
            self.on_inference(time.perf_counter() - t0, len(steps))
        regimes = regime_of(Flags[:, -1, :], self.flag_names)
        thr = np.empty(len(steps))
        src: list[str] = []
        for b, (s, reg) in enumerate(zip(steps, regimes)):
            thr[b], source = self.bundle.calibration.threshold_for(s.turbine, reg)
            src.append(source)
        s_now = np.asarray(res.s_now, dtype=np.float64)
        self.drift.update_many(s_now)
        if self._relative:  # alerts wait for the peers (`_release`)
            out = {}
            for b, s in enumerate(steps):
                rec = self._fields(s, res, b, float(thr[b]), src[b], regimes[b], False)
                present = float(s.window.M_miss.mean())
                rec.update(_slot=s.slot, _end_ns=s.end_ns, _eligible=present >= self.bundle.fleet.min_present_fraction)
                out[offset + b] = rec
            return out
        on = np.zeros(len(steps), dtype=bool)
        t_on = np.zeros(len(steps), dtype=bool)
        t_off = np.zeros(len(steps), dtype=bool)
        slots = np.array([s.slot for s in steps], dtype=np.int64)
        todo = np.arange(len(steps))
        while todo.size:  # rounds of distinct slots keep each turbine's steps in time order
            _, first = np.unique(slots[todo], return_index=True)
            now = np.sort(todo[first])
            tr = self.alerts.step(slots[now], s_now[now], thr[now])
            on[now], t_on[now], t_off[now] = tr.on, tr.turned_on, tr.turned_off
            todo = np.setdiff1d(todo, now)
        out = {}
        for b, s in enumerate(steps):
            out[offset + b] = self._fields(s, res, b, float(thr[b]), src[b], regimes[b], bool(on[b]))
            out[offset + b].update(_turned="on" if t_on[b] else "off" if t_off[b] else None, _end_ns=s.end_ns)
        return out

    def _fields(self, s: Step, res: Any, b: int, thr: float, src: str, regime: str, on: bool) -> dict[str, Any]:
        score = float(res.s_now[b])
        contrib = np.asarray(res.feat_contrib[b], dtype=np.float64)
        top = [{"name": self.feature_names[int(j)], "contribution": contrib[int(j)]} for j in res.top_idx[b]]
        fault = None
        if res.fault_prob is not None and self.class_names:
            fault = {c: float(p) for c, p in zip(self.class_names, res.fault_prob[b])}
        forecast = None
        if res.Y_hat is not None:
            y = np.asarray(res.Y_hat[b], dtype=np.float64) * self._scale + self._center  # (K, F) feature units
            forecast = {name: y[:, j].tolist() for j, name in enumerate(self.feature_names)}
        rul = None
        if res.rul is not None:
            rul = float(np.asarray(res.rul[b]).reshape(-1)[0])
        return {
            "schema": SCHEMA,
            "status": "ok",
            "turbine": s.turbine,
            "ts": iso_utc(s.end_ns),
            "seq": s.end_ns // self.dt_ns,
            "model_id": self.bundle.model_id,
            "score": score,
            "threshold": thr,
            "threshold_source": src,
            "regime": regime,
            "ratio": score / thr,
            "alert": on,
            "top_features": top,
            "fault_probs": fault,
            "forecast": forecast,
            "rul": rul,
            "missing_fraction": float(1.0 - s.window.M_miss.mean()),
            "missing_now": s.missing_now,
        }

    def _records(self, rec: dict[str, Any]) -> list[Output]:
        turned, end_ns, turbine = rec.pop("_turned"), rec.pop("_end_ns"), rec["turbine"]
        for k in ("_slot", "_eligible"):
            rec.pop(k, None)
        out = [Output("score", turbine, end_ns, dumps(rec), False)]
        first = turbine not in self._scored_once
        self._scored_once.add(turbine)
        if turned is not None:
            alert = {
                k: rec[k]
                for k in (
                    "schema",
                    "turbine",
                    "ts",
                    "seq",
                    "model_id",
                    "score",
                    "fleet_score",
                    "threshold",
                    "ratio",
                    "regime",
                    "top_features",
                )
                if k in rec
            }
            alert["state"] = turned
            out.append(Output("alert", turbine, end_ns, dumps(alert), False))
        if turned is not None or first:
            state = {
                "schema": SCHEMA,
                "turbine": turbine,
                "state": "on" if rec["alert"] else "off",
                "since": rec["ts"],
                "seq": rec["seq"],
                "model_id": rec["model_id"],
            }
            out.append(Output("alert_state", turbine, end_ns, dumps(state), True))
        return out

    def state_dict(self) -> dict[str, Any]:
        """Everything a restart needs to resume (call after `flush`): fleet, alert states, drift window."""
        pending = [rec for end in sorted(self._pending) for rec in self._pending[end]]
        return {
            "model_id": self.bundle.model_id,
            "fleet": self.fleet.state_dict(),
            "alerts": self.alerts.state_dict(),
            "drift": self.drift.state_dict(),
            "scored_once": sorted(self._scored_once),
            "pending": pending,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume from `state_dict()`; refuses the state of another model (its features and scores differ)."""
        keys = {"model_id", "fleet", "alerts", "drift", "scored_once", "pending"}
        if not isinstance(state, dict) or set(state) != keys:
            raise ValueError(f"Engine.load_state_dict: not an engine state (keys {sorted(keys)})")
        if state["model_id"] != self.bundle.model_id:
            raise ValueError(
                f"Engine.load_state_dict: the state belongs to model {state['model_id'][:12]}, "
                f"this bundle is {self.bundle.model_id[:12]}"
            )
        self.fleet.load_state_dict(state["fleet"])
        self.alerts.load_state_dict(state["alerts"])
        self.drift.load_state_dict(state["drift"])
        self._scored_once = set(state["scored_once"])
        pending: dict[int, list[dict[str, Any]]] = {}
        for rec in state["pending"]:
            if not isinstance(rec, dict) or not {"_end_ns", "_slot", "_eligible", "score", "threshold"} <= set(rec):
                raise ValueError("Engine.load_state_dict: a waiting fleet-relative record lacks its step fields")
            pending.setdefault(int(rec["_end_ns"]), []).append(dict(rec))
        self._pending = pending

    def score_drift(self) -> dict[str, Any]:
        """KS distance of the recent scores from the bundle's validation-score quantiles (None before any score)."""
        d = self.drift.get()
        return {"ks": None if math.isnan(d["ks"]) else round(float(d["ks"]), 6), "n": int(d["n"])}

    def waiting(self) -> int:
        """Fleet-relative: scored steps held until every turbine has closed their step (0 otherwise)."""
        return sum(len(g) for g in self._pending.values())

    def alerts_on(self) -> int:
        return int(self.alerts.get().sum())
