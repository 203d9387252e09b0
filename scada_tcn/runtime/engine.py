"""The scoring pipeline shared by `scada-runtime run` and `replay`: samples -> published records.

Contract
--------
    Engine.ingest_batch([Sample])    -> Fleet: binning, features, ring buffer (runtime.fleet); a loop iteration's
                                        samples, any turbines, binned for the fleet at once (`ingest`: one)
    Engine.ingest_many(ids, ts, X)   -> the same for a block of samples sorted by time (replay's chunks)
    Engine.tick(now_ns)              -> closes bins whose end + grace has passed
    Engine.flush() -> list[Output]   -> every step closed since the last flush, in closing order:
        warm-up steps (fewer than L steps): a `WarmupRecord`;
        windows below the bundle's `fleet.min_present_fraction` (`runtime.windows`): an `InsufficientDataRecord`,
        no score, the alert state held;
        the other windows: scored by the scorer in chunks of `max_batch` (the numbers do not depend on the
        chunk: the graphs are batch-invariant), the calibrated threshold of (turbine, regime at the last step),
        the alert state machine (runtime.alerts), then a `ScoreRecord`, an `AlertRecord` on every transition and
        the retained `AlertStateRecord` (on the turbine's first score and on every transition).

Every step of a turbine is closed once (runtime.fleet), so it is scored and serialised once, and the same input
sequence gives the same bytes: a redelivered score is byte-identical, and no step ever gets a second, different
score. The records and their serialisation are `runtime.records`.

Fleet-relative bundles (`fleet.relative`): thresholds and alerts apply to `fleet_score` = score minus the median
score of the other turbines at the same step (`runtime.peers`; only scored windows are peers). A closed step waits
until every turbine of the fleet has closed that step (`Fleet.open_from`: on the tick's clock at most the grace
period), then all of them are released together, in step order; a record below `min_peers` peers gets
fleet_score null and its alert state stays as it was. `flush(final=True)` releases every waiting step (end of a
replay, shutdown without a state file); waiting steps are part of `state_dict()`.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Collection, Mapping
from typing import Any, NamedTuple

import numpy as np

from scada_tcn.runtime.alerts import AlertState
from scada_tcn.runtime.bundle import Bundle
from scada_tcn.runtime.calibration import regime_of
from scada_tcn.runtime.drift import ScoreDriftMonitor
from scada_tcn.runtime.errors import BundleError, InputError
from scada_tcn.runtime.fleet import Dropped, Fleet, Step
from scada_tcn.runtime.ids import turbine_id_problem
from scada_tcn.runtime.open_bins import BinAccumulator
from scada_tcn.runtime.peers import fleet_relative
from scada_tcn.runtime.records import (
    AlertRecord,
    AlertStateRecord,
    InsufficientDataRecord,
    ScoreRecord,
    WarmupRecord,
    dumps,
    forecast_json,
)
from scada_tcn.runtime.scorer import ScoreBatch
from scada_tcn.runtime.signals import SignalTracker, worst_first
from scada_tcn.runtime.slots import rounds
from scada_tcn.runtime.stream import StepOutputs, StreamScorer
from scada_tcn.runtime.telemetry import Sample
from scada_tcn.runtime.windows import enough_present, sent_nothing

__all__ = ["Engine", "Output"]


def _nullable(a: np.ndarray) -> list[Any]:
    """`a` as (nested) lists of floats, None (published as null) where a value is not finite."""
    a = np.asarray(a, dtype=np.float64)
    return np.where(np.isfinite(a), a, None).tolist()


class Output(NamedTuple):
    kind: str  # "score", "alert" or "alert_state"
    turbine: str
    end_ns: int
    payload: bytes
    retain: bool
    state: str  # a score's status ("ok", "warmup", "insufficient_data"); an alert's new state ("on", "off")


class Resumed(NamedTuple):
    """What `Engine.load_state_dict` resumed from: the bundle that saved the state (None: a state saved before
    states named it), and whether the per-signal aggregates started again (saved under another basis)."""

    bundle_id: str | None
    signals_restarted: bool


class _Waiting(NamedTuple):
    """A step waiting for the rest of the fleet: the record (a scored one is a peer), the turbine's slot and, for
    per-signal bundles, the newest step's inputs of the tracker: residuals, presence and predictions (F,) of a
    scored window (None otherwise), its repeat codes (S,) and flags (R,)."""

    record: ScoreRecord | InsufficientDataRecord
    slot: int
    resid: np.ndarray | None = None
    present: np.ndarray | None = None
    pred: np.ndarray | None = None
    repeat: np.ndarray | None = None
    flags: np.ndarray | None = None


_WAITING_ARRAYS = ("resid", "present", "pred", "repeat", "flags")
_RELEASE_ROWS = 4096  # records per tracker call when a replay releases many fleet steps (bounded lists)


class Engine:
    """Fleet state + batched scoring + calibration + alerts -> serialised records; see the module docstring."""

    def __init__(
        self,
        bundle: Bundle,
        scorer: Any,
        grace_seconds: float,
        max_turbines: int,
        max_batch: int,
        on_inference: Callable[[float, int], None] | None = None,
        drift_window: int = 1000,
        max_per_stamp: int | None = None,
        gateway: str | None = None,
    ) -> None:
        if max_batch < 1:
            raise ValueError(f"Engine: max_batch must be >= 1, got {max_batch}")
        self.bundle = bundle
        self.scorer = scorer
        self.max_batch = int(max_batch)
        self.on_inference = on_inference
        self.gateway = gateway  # named in the retained alert states (the daemon's; replay publishes none)
        spec = bundle.spec
        self.L = int(bundle.dims.L)
        self.dt_ns = int(spec.dt_seconds) * 1_000_000_000
        self.feature_names = list(spec.feature_names)
        self.flag_names = list(spec.flag_names)
        self.class_names = list(bundle.class_names)
        self.min_present = float(bundle.fleet.min_present_fraction)
        self.streams = isinstance(scorer, StreamScorer)  # the step graph: every closed step advances the layer state
        self.fleet = Fleet(spec, bundle.scaler, self.L, grace_seconds, max_turbines, windows=not self.streams,
                           max_per_stamp=max_per_stamp)  # fmt: skip
        self._stepped: dict[int, tuple[StepOutputs, int]] = {}  # streaming: id(step) -> (its batch, row), until scored
        a = bundle.alerting
        self.alerts = AlertState(T_on=a.T_on, T_off=a.T_off, N_on=a.N_on, N_off=a.N_off)
        self._check_thresholds()
        ref = bundle.score_reference
        self.drift = ScoreDriftMonitor(ref.levels, ref.values, drift_window)  # fleet-wide score distribution
        self._scored_once: set[str] = set()
        self._signals = SignalTracker.from_params(bundle.signals) if bundle.signals is not None else None
        self._basis = None if bundle.signals is None else bundle.signals.basis()  # what the tracker's state means
        self._labels: dict[tuple[int, int], str] = {}  # per-signal: (group, monitor) -> "group:monitor"
        if self._signals is not None:
            sp = self._signals.spec
            self._labels = {(j, m): f"{g}:{name}" for j, g in enumerate(sp.groups)
                            for m, name in enumerate(sp.monitor_names)}  # fmt: skip
        self._relative = bool(bundle.fleet.relative) or self._signals is not None  # steps wait for the fleet
        self._pending: dict[int, list[_Waiting]] = {}  # fleet-relative: step end -> records awaiting peers
        self._signal_inputs: dict[int, tuple[np.ndarray, ...]] = {}  # per-signal: record id -> resid, present, pred
        self._center = np.asarray(bundle.scaler.center, dtype=np.float64)
        self._scale = np.asarray(bundle.scaler.scale, dtype=np.float64)

    def _check_thresholds(self) -> None:
        cal = self.bundle.calibration
        if cal is None:  # per-signal: the levels were checked by the bundle's loader (finite, > 0)
            return
        values = {"global": cal.global_threshold, **cal.per_turbine, **cal.per_regime, **cal.per_turbine_regime}
        bad = {k: v for k, v in values.items() if not v > 0}
        if bad:
            raise BundleError(f"calibration: thresholds must be > 0 for the alert state machine; bad: {bad}")

    def ingest(self, sample: Sample) -> str | None:
        """Feed one validated sample; why it was dropped ("late", "full": `Fleet.add`), None when stored."""
        return self.fleet.add(sample.turbine, sample.ts_ns, sample.values)

    def ingest_batch(self, samples: list[Sample]) -> Dropped:
        """Feed validated samples of any turbines in arrival order, binned for the whole fleet at once
        (`Fleet.add_batch`: the same as one `ingest` call each); returns those dropped (late, full) by index."""
        if not samples:
            return Dropped(np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64))
        C = len(self.bundle.spec.channels)
        values = np.array([s.values for s in samples], dtype=np.float64).reshape(len(samples), C)
        ts = np.array([s.ts_ns for s in samples], dtype=np.int64)
        return self.fleet.add_batch([s.turbine for s in samples], ts, values)

    def ingest_many(self, turbines: np.ndarray, ts_ns: np.ndarray, values: np.ndarray) -> int:
        """Feed n validated samples in arrival order, each turbine's stamps non-decreasing (`Fleet.add_many`: the
        same as n `ingest` calls); returns how many were late and dropped."""
        return self.fleet.add_many(turbines, ts_ns, values)

    def tick(self, now_ns: int) -> None:
        """Close bins whose end + grace <= now_ns (the daemon's tick, `Daemon._tick_clock`)."""
        self.fleet.close_until(now_ns)

    # ------------------------------------------------------------------------------------------------ flush
    def flush(self, final: bool = False) -> list[Output]:
        """Score every step closed since the last flush and return the records to publish, in order.

        Fleet-relative: records of steps the whole fleet has closed are released; `final` releases all."""
        steps = self.fleet.drain()
        if self.streams:
            self._advance(steps)
        ready = [s for s in steps if s.ready]
        present = np.array([s.present for s in ready], dtype=np.float64)
        ok = enough_present(present, self.min_present)
        before = self.alerts.get()  # an insufficient step holds its turbine's latest state, walked forward below
        held = {s.slot: bool(before[s.slot]) if s.slot < before.size else False for s in steps}
        scored = iter(self._score([s for s, k in zip(ready, ok) if k]))
        out: list[Output] = []
        r = 0
        for s in steps:  # per turbine in time order, so `held` walks each turbine's states forward
            if not s.ready:
                rec = WarmupRecord(s.turbine, s.end_ns, self.dt_ns, self.bundle.model_id, self.bundle.bundle_id,
                                   s.n_steps, self.L, s.missing_now)  # fmt: skip
                out.append(Output("score", s.turbine, s.end_ns, dumps(rec.to_dict()), False, "warmup"))
                continue
            r += 1
            if ok[r - 1]:
                rec = next(scored)
            else:
                rec = InsufficientDataRecord(s.turbine, s.end_ns, self.dt_ns, self.bundle.model_id,
                                             self.bundle.bundle_id, float(present[r - 1]), self.min_present,
                                             held[s.slot], s.missing_now)  # fmt: skip
            if self._relative:
                extra: tuple[Any, ...] = ()
                if self._signals is not None:
                    extra = (*self._signal_inputs.pop(id(rec), (None, None, None)), s.repeat_now, s.rows.Flags)
                self._pending.setdefault(s.end_ns, []).append(_Waiting(rec, s.slot, *extra))
                continue
            if isinstance(rec, ScoreRecord) and sent_nothing(rec.missing_now):  # no new evidence (`_score`)
                rec.alert = held[s.slot]
            held[s.slot] = rec.alert
            out.extend(self._outputs(rec))
        self._stepped.clear()
        if self._relative:
            out.extend(self._release_signals(final) if self._signals is not None else self._release(final))
        return out

    def _advance(self, steps: list[Step]) -> None:
        """Streaming: run the step graph over every closed step (warm-up and insufficient ones too: the layer
        state must see every step), one call per step end (each turbine's steps in time order)."""
        ends = np.array([s.end_ns for s in steps], dtype=np.int64)
        for end in np.unique(ends):
            group = [steps[i] for i in np.flatnonzero(ends == end)]
            group.sort(key=lambda s: s.slot)
            slots = np.array([s.slot for s in group], dtype=np.int64)
            X = np.stack([s.rows.X for s in group])
            M = np.stack([s.rows.M_miss for s in group]).astype(np.float32)
            Flags = np.stack([s.rows.Flags for s in group])
            t0 = time.perf_counter()
            res = self.scorer.step(slots, int(end) // self.dt_ns, X, M, Flags)
            if self.on_inference is not None:
                self.on_inference(time.perf_counter() - t0, len(group))
            for b, s in enumerate(group):
                self._stepped[id(s)] = (res, b)

    def _score(self, steps: list[Step]) -> list[ScoreRecord]:
        """Score `steps` (chunks of max_batch); without fleet-relative scores, also advance their alert states. A
        step where the turbine sent nothing (`missing_now` 1) is no new evidence, though its window still scores:
        it does not step the alert state machine, and `flush` gives it the state its turbine holds, as an
        insufficient step's (offline inference alike: `apply_alerts`)."""
        records: list[ScoreRecord] = []
        for i in range(0, len(steps), self.max_batch):
            records += self._score_chunk(steps[i : i + self.max_batch])
        if self._relative or not records:
            return records
        slots = np.array([s.slot for s in steps], dtype=np.int64)
        score = np.array([r.score for r in records], dtype=np.float64)
        thr = np.array([r.threshold for r in records], dtype=np.float64)
        on, t_on, t_off = (np.zeros(len(steps), dtype=bool) for _ in range(3))
        todo = np.flatnonzero(~sent_nothing([r.missing_now for r in records]))
        for r in rounds(slots[todo]) if todo.size else []:  # distinct slots: each turbine's steps in time order
            now = todo[r]
            tr = self.alerts.step(slots[now], score[now], thr[now])
            on[now], t_on[now], t_off[now] = tr.on, tr.turned_on, tr.turned_off
        for b, r in enumerate(records):
            r.alert, r.turned = bool(on[b]), "on" if t_on[b] else "off" if t_off[b] else None
        return records

    def _score_chunk(self, steps: list[Step]) -> list[ScoreRecord]:
        if self.streams:  # already computed by `_advance`, one batch per step end
            res = self._gather([self._stepped[id(s)] for s in steps])
        else:
            X = np.stack([s.window.X for s in steps])  # (B, L, F)
            M = np.stack([s.window.M_miss for s in steps]).astype(np.float32)  # the graphs take float32
            Flags = np.stack([s.window.Flags for s in steps])  # (B, L, R)
            t0 = time.perf_counter()
            res = self.scorer.score(X, M, Flags)
            if self.on_inference is not None:
                self.on_inference(time.perf_counter() - t0, len(steps))
        newest_flags = np.stack([s.rows.Flags for s in steps])
        newest_present = np.stack([s.rows.M_miss for s in steps]) > 0
        regimes = regime_of(newest_flags, self.flag_names)
        per_signal = self._signals is not None
        s_now = np.full(len(steps), np.nan) if per_signal else np.asarray(res.s_now, dtype=np.float64)
        if not per_signal:
            self.drift.update_many(s_now)
        missing = (1.0 - np.array([s.present for s in steps], dtype=np.float64)).tolist()
        forecasts = None
        if res.Y_hat is not None:  # (B, K, F) scaled -> per record {feature: [K values in feature units]}
            y = np.asarray(res.Y_hat, dtype=np.float64) * self._scale + self._center
            forecasts = forecast_json(self.feature_names, y.transpose(0, 2, 1))
        fault_probs = None if res.fault_prob is None or not self.class_names else np.asarray(res.fault_prob).tolist()
        rul = None if res.rul is None else np.asarray(res.rul, dtype=np.float64).reshape(len(steps), -1)[:, 0].tolist()
        if per_signal:  # float64 rows (views) for the tracker
            resid, pred = np.asarray(res.resid, np.float64), np.asarray(res.pred, np.float64)
        out = []
        for b, (s, regime) in enumerate(zip(steps, regimes)):
            if per_signal:  # the levels apply when the fleet's step is released (`_release_signals`)
                thr, source, top = 1.0, "", ()
            else:
                thr, source = self.bundle.calibration.threshold_for(s.turbine, regime)
                contrib = np.asarray(res.feat_contrib[b], dtype=np.float64)
                top = tuple((self.feature_names[int(j)], float(contrib[int(j)])) for j in res.top_idx[b])
            fault = None if fault_probs is None else dict(zip(self.class_names, fault_probs[b]))
            out.append(ScoreRecord(
                s.turbine, s.end_ns, self.dt_ns, self.bundle.model_id, self.bundle.bundle_id, score=float(s_now[b]),
                threshold=float(thr),
                threshold_source=source, regime=regime, alert=False, top_features=top, fault_probs=fault,
                forecast=None if forecasts is None else forecasts[b], rul=None if rul is None else rul[b],
                missing_fraction=missing[b], missing_now=s.missing_now, relative=self._relative and not per_signal,
            ))  # fmt: skip
            if per_signal:
                self._signal_inputs[id(out[-1])] = (resid[b], newest_present[b], pred[b])
        return out

    @staticmethod
    def _gather(rows: list[tuple[StepOutputs, int]]) -> ScoreBatch:
        """The step graph's outputs of `rows` ((batch, row) pairs from `_advance`) as one batch, in that order."""
        batches = {id(res): res for res, _ in rows}  # usually one: every step of one fleet step
        idx = np.array([b for _, b in rows], dtype=np.int64)
        if len(batches) > 1:  # steps of several step ends: the batches end to end, rows offset accordingly
            starts = np.cumsum([0] + [len(res.resid) for res in batches.values()])[:-1]
            offset = dict(zip(batches, starts.tolist()))
            idx += np.array([offset[id(res)] for res, _ in rows], dtype=np.int64)

        def part(k: int) -> np.ndarray | None:
            arrays = [res[k] for res in batches.values()]
            if arrays[0] is None:
                return None
            return (arrays[0] if len(arrays) == 1 else np.concatenate(arrays))[idx]

        resid, pred, Y_hat, fault_prob, rul = (part(k) for k in range(5))
        return ScoreBatch(Y_hat=Y_hat, fault_prob=fault_prob, rul=rul, resid=resid, pred=pred)

    def _release_signals(self, final: bool) -> list[Output]:
        """Per-signal bundles: the tracker, the levels and the alert steps of the fleet's closed steps, in order
        (whole fleet steps of about `_RELEASE_ROWS` records per tracker call: `SignalTracker.step`'s `step_of`)."""
        limit = self.fleet.open_from()
        out: list[Output] = []
        groups: list[list[_Waiting]] = []
        n = 0
        for end in sorted(e for e in self._pending if final or limit is None or e < limit):
            groups.append(self._pending.pop(end))
            n += len(groups[-1])
            if n >= _RELEASE_ROWS:
                out += self._release_steps(groups)
                groups, n = [], 0
        return out + self._release_steps(groups) if groups else out

    def _release_steps(self, groups: list[list[_Waiting]]) -> list[Output]:
        """`_release_signals` for the fleet steps `groups` (in time order)."""
        assert self._signals is not None
        sp, F = self._signals.spec, len(self.feature_names)
        rows = [w for group in groups for w in group]
        sizes = np.array([len(group) for group in groups], dtype=np.int64)
        starts = np.cumsum(sizes) - sizes
        slots = np.array([w.slot for w in rows], dtype=np.int64)
        turbines = [w.record.turbine for w in rows]
        sources = self._level_sources(turbines)
        scored = np.array([w.resid is not None for w in rows], dtype=bool)
        resid, pred = (np.stack([getattr(w, k) if w.resid is not None else np.zeros(F) for w in rows])
                       for k in ("resid", "pred"))  # fmt: skip
        present = np.stack([w.present if w.present is not None else np.zeros(F, bool) for w in rows])
        skip = sp.skip_mask(np.stack([w.flags for w in rows]), self.flag_names)
        st = self._signals.step(slots, turbines, resid, present, pred, scored, np.stack([w.repeat for w in rows]),
                                skip, np.repeat(np.arange(len(groups)), sizes))  # fmt: skip
        # steps without new evidence (unscored, skipped) hold the alert and leave the drift alone, as offline
        # inference leaves them out: their score is the aggregate frozen over the gap
        has = np.isfinite(st.score) & st.observed
        self.drift.update_many(st.score[has])
        turned_on, turned_off, alert = (np.zeros(len(rows), bool) for _ in range(3))
        for a, b in zip(starts.tolist(), (starts + sizes).tolist()):  # the alert steps, a fleet step at a time
            now = a + np.flatnonzero(has[a:b])
            if now.size:
                tr = self.alerts.step(slots[now], st.score[now], np.ones(now.size))
                turned_on[now], turned_off[now] = tr.turned_on, tr.turned_off
            states = np.append(self.alerts.get(), False)  # a slot never stepped is off
            alert[a:b] = states[np.minimum(slots[a:b], states.size - 1)]
        # plain lists, built once per release (NaN is published as null)
        names, monitors, labels, topn = list(sp.groups), sp.monitor_names, self._labels, self.bundle.scoring.topn
        ranked = worst_first(st.group_ratio, st.group_top)
        ratio, value, level, score = (_nullable(a) for a in (st.group_ratio, st.value, st.level, st.score))
        own = None if st.own is None else _nullable(st.own)
        out: list[Output] = []
        bundle_id = self.bundle.bundle_id  # the levels, aggregates and alert are this bundle's, whoever waited
        for b, w in enumerate(rows):
            rec = w.record
            rec.alert, rec.bundle_id = bool(alert[b]), bundle_id
            if not isinstance(rec, ScoreRecord):
                out.extend(self._outputs(rec))
                continue
            r, v, lv = ratio[b], value[b], level[b]
            if own is None:
                rec.groups = tuple({"group": names[j], "ratio": r[j], "value": v[m], "level": lv[m],
                                    "signal": monitors[m]} for j, m in ranked[b])  # fmt: skip
            else:  # a fleet baseline: the turbine's own deviation beside the one relative to its peers
                o = own[b]
                rec.groups = tuple({"group": names[j], "ratio": r[j], "value": v[m], "own": o[m], "level": lv[m],
                                    "signal": monitors[m]} for j, m in ranked[b])  # fmt: skip
            rec.top_features = tuple((labels[j, m], r[j]) for j, m in ranked[b][:topn])
            rec.score, rec.threshold, rec.threshold_source = score[b], 1.0, sources[rec.turbine]
            rec.regime = "skipped" if skip[b] else rec.regime
            rec.turned = "on" if turned_on[b] else "off" if turned_off[b] else None
            out.extend(self._outputs(rec))
        return out

    def _level_sources(self, turbines: Any) -> dict[str, str]:
        """Per turbine, where its levels come from ("turbine" or "pooled"; "" without levels)."""
        levels = self._signals.levels if self._signals is not None else None
        return {t: levels.source_of(t) if levels else "" for t in turbines}

    def _release(self, final: bool) -> list[Output]:
        """Fleet-relative scores and alert steps for the waiting steps that every turbine has closed."""
        limit = self.fleet.open_from()
        out: list[Output] = []
        for end in sorted(e for e in self._pending if final or limit is None or e < limit):
            group = self._pending.pop(end)
            scored = [b for b, w in enumerate(group) if isinstance(w.record, ScoreRecord)]
            raw = np.array([group[b].record.score for b in scored], dtype=np.float64)
            rel, peers = fleet_relative(raw, np.full(len(scored), end, np.int64), np.ones(len(scored), bool),
                                        self.bundle.fleet.min_peers)  # fmt: skip
            slots = np.array([group[b].slot for b in scored], dtype=np.int64)
            thr = np.array([group[b].record.threshold for b in scored], dtype=np.float64)
            has = np.isfinite(rel)
            new = has & ~sent_nothing([group[b].record.missing_now for b in scored])  # (`_score`)
            turned_on, turned_off = np.zeros(len(scored), bool), np.zeros(len(scored), bool)
            if new.any():  # one step per turbine: a step closes once per turbine
                tr = self.alerts.step(slots[new], rel[new], thr[new])
                turned_on[new], turned_off[new] = tr.turned_on, tr.turned_off
            states = self.alerts.get()
            for k, b in enumerate(scored):  # the waiting records are filled in place, then serialised
                rec = group[b].record
                rec.fleet_score, rec.peers = (float(rel[k]) if has[k] else None), int(peers[k])
                rec.turned = "on" if turned_on[k] else "off" if turned_off[k] else None
            for w in group:
                w.record.alert = bool(states[w.slot]) if w.slot < states.size else False
                out.extend(self._outputs(w.record))
        return out

    def _outputs(self, rec: ScoreRecord | InsufficientDataRecord) -> list[Output]:
        if isinstance(rec, InsufficientDataRecord):
            return [Output("score", rec.turbine, rec.end_ns, dumps(rec.to_dict()), False, "insufficient_data")]
        out = [Output("score", rec.turbine, rec.end_ns, dumps(rec.to_dict()), False, "ok")]
        first = rec.turbine not in self._scored_once
        self._scored_once.add(rec.turbine)
        if rec.turned is not None:
            out.append(Output("alert", rec.turbine, rec.end_ns, dumps(AlertRecord(rec).to_dict()), False, rec.turned))
        if rec.turned is not None or first:
            state = "on" if rec.alert else "off"
            doc = AlertStateRecord(rec, self.gateway).to_dict()
            out.append(Output("alert_state", rec.turbine, rec.end_ns, dumps(doc), True, state))
        return out

    # ------------------------------------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """Everything a restart needs to resume (call after `flush`): fleet, alert states, drift window."""
        pending = []
        for end in sorted(self._pending):
            for w in self._pending[end]:
                kind = "ok" if isinstance(w.record, ScoreRecord) else "insufficient"
                rec = w.record.state_dict() if kind == "ok" else dataclasses.asdict(w.record)
                item = {"kind": kind, "record": rec, "slot": w.slot} | {k: getattr(w, k) for k in _WAITING_ARRAYS}
                pending.append(item)
        return {
            "model_id": self.bundle.model_id,
            "bundle_id": self.bundle.bundle_id,
            "signals_basis": self._basis,
            "fleet": self.fleet.state_dict(),
            "alerts": self.alerts.state_dict(),
            "drift": self.drift.state_dict(),
            "scored_once": sorted(self._scored_once),
            "pending": pending,
            "signals": None if self._signals is None else self._signals.state_dict(),
            "stream": self.scorer.state_dict() if self.streams else None,
        }

    def load_state_dict(self, state: dict[str, Any]) -> Resumed:
        """Resume from `state_dict()`; refuses the state of another model (its features and scores differ).

        The state of another bundle of the same model (a re-export with other settings) resumes, except the
        per-signal tracker's when its basis differs (`SignalParams.basis`: another baseline, aggregation or
        monitors): its aggregates start again rather than mix two kinds of values. A state saved before states
        named their bundle (no `bundle_id`) resumes as before; its waiting window-mean records' bundle is unknown
        (null), and per-signal ones name the bundle that releases them (`_release_steps`)."""
        keys = {"model_id", "bundle_id", "signals_basis", "fleet", "alerts", "drift", "scored_once", "pending",
                "signals", "stream"}  # fmt: skip
        older = keys - {"bundle_id", "signals_basis"}
        if not isinstance(state, dict) or set(state) not in (keys, older):
            raise ValueError(f"Engine.load_state_dict: not an engine state (keys {sorted(keys)})")
        named = set(state) == keys  # else saved before states named their bundle
        restart_signals = named and state["signals_basis"] != self._basis
        if state["model_id"] != self.bundle.model_id:
            raise ValueError(
                f"Engine.load_state_dict: the state belongs to model {state['model_id'][:12]}, "
                f"this bundle is {self.bundle.model_id[:12]}"
            )
        pending: dict[int, list[_Waiting]] = {}
        for item in state["pending"]:
            if not isinstance(item, dict) or set(item) != {"kind", "record", "slot", *_WAITING_ARRAYS}:
                raise ValueError("Engine.load_state_dict: a waiting fleet-relative record lacks its fields")
            cls = ScoreRecord.from_state_dict if item["kind"] == "ok" else lambda d: InsufficientDataRecord(**d)
            try:
                rec = cls(item["record"] if named else {**item["record"], "bundle_id": None})
            except (TypeError, ValueError, KeyError) as e:
                raise ValueError(f"Engine.load_state_dict: a waiting record is malformed: {e}") from e
            arrays = [None if item[k] is None else np.asarray(item[k]) for k in _WAITING_ARRAYS]
            pending.setdefault(rec.end_ns, []).append(_Waiting(rec, int(item["slot"]), *arrays))
        self.fleet.load_state_dict(state["fleet"])
        self.alerts.load_state_dict(state["alerts"])
        self.drift.load_state_dict(state["drift"])
        self._scored_once = set(state["scored_once"])
        self._pending = pending
        if self._signals is not None and not restart_signals:
            self._signals.load_state_dict(state["signals"])
        if self.streams:
            if state["stream"] is None:
                raise ValueError("Engine.load_state_dict: the state was saved by the window engine; this one streams")
            self.scorer.load_state_dict(state["stream"])
            self._rebuild()
        return Resumed(state["bundle_id"] if named else None, restart_signals)

    def _rebuild(self) -> None:
        """Streaming: every turbine's layer state from the last L steps the fleet keeps (exact: the receptive field
        fits the window), turbines with the same history length and last step rebuilt together."""
        groups: dict[tuple[int, int], list[tuple[int, Any]]] = {}
        for name in self.fleet.turbines:
            window, n, last = self.fleet.window_of(name)
            if n:
                groups.setdefault((len(window.X), last), []).append((self.fleet.slot_of(name), window))
        for (_, last), items in groups.items():
            slots = np.array([slot for slot, _ in items], dtype=np.int64)
            X, M, Fl = (np.stack([getattr(w, f) for _, w in items]) for f in ("X", "M_miss", "Flags"))
            self.scorer.rebuild(slots, last // self.dt_ns, X, M.astype(np.float32), Fl)

    def score_drift(self) -> dict[str, Any]:
        """KS distance of the recent scores from the bundle's validation-score quantiles (None before any score)."""
        d = self.drift.get()
        return {"ks": None if math.isnan(d["ks"]) else round(float(d["ks"]), 6), "n": int(d["n"])}

    @staticmethod
    def alerts_on_in(state: Any) -> list[str]:
        """The turbines whose alert is on in a `state_dict()` (one this engine may refuse to resume: another model
        or engine): the fleet's turbines in slot order, as the alert states (fewer when the newest were never
        scored: off). ValueError when the state cannot say."""
        names = [t["name"] for t in Engine._fleet_of(state, "Engine.alerts_on_in")]
        try:
            on = np.asarray(state["alerts"]["on"], dtype=bool)
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"Engine.alerts_on_in: no alert states ({e!r})") from e
        if on.ndim != 1 or on.size > len(names):
            raise ValueError(f"Engine.alerts_on_in: alert states of shape {on.shape} for {len(names)} turbines")
        return [n for n, o in zip(names, on.tolist()) if o]

    @staticmethod
    def _fleet_of(state: Any, who: str) -> list[dict[str, Any]]:
        """The fleet's turbines of a `state_dict()`, in slot order, each named by a valid id; ValueError when the
        state cannot say (a state this engine may refuse: read for what can be carried over or retired)."""
        try:
            turbines = list(state["fleet"]["turbines"])
            names = [t["name"] for t in turbines]
        except (KeyError, TypeError) as e:
            raise ValueError(f"{who}: no fleet turbines ({e!r})") from e
        if not all(isinstance(n, str) and turbine_id_problem(n) is None for n in names):
            raise ValueError(f"{who}: a turbine id that breaks the id rule")
        return turbines

    def carry_alerts(self, turbines: list[str]) -> list[str]:
        """Turbines whose alert was on in a state this engine could not resume (another model, a damaged engine
        part): their alert stays on (`set_alerts`), so their records and the retained alert state, which
        consumers read as on, keep saying so until the turbine is scored and the alert turns off by its rule, with
        a published transition. The retained state is not published again at their first score here: the one the
        broker holds says since when the alert is on. Registered in the fleet (`Fleet.register`), they are part
        of the state saved. A turbine this engine has scored, or carried already, keeps its own alert state.
        Returns those carried (all but those and any beyond `max_turbines`)."""
        return self.set_alerts(dict.fromkeys((t for t in turbines if t not in self._scored_once), True))

    def alert_states(self) -> dict[str, bool]:
        """The alert state of each turbine this engine has scored or carried (whose retained state went out)."""
        on = self.alerts.get()
        slots = {t: self.fleet.slot_of(t) for t in self.fleet.turbines if t in self._scored_once}
        return {t: bool(slot < on.size and on[slot]) for t, slot in slots.items()}

    def set_alerts(self, states: Mapping[str, bool]) -> list[str]:
        """Take the alert states consumers hold (`states`, from the engine that published them: `alert_states`)
        where this engine's differ, scored here or not, counts cleared (`AlertState.hold`); turbines it lacks are
        registered (none beyond `max_turbines`). They count as scored: the retained state they have stands.
        Returns the turbines whose state changed."""
        on = self.alerts.get()  # (a turbine never scored nor carried is off)
        changed, slots = [], []
        for t, want in states.items():  # one name at a time: each takes room
            if not self.fleet.has_room(t):
                continue
            slot = self.fleet.register(t)
            self._scored_once.add(t)
            if bool(slot < on.size and on[slot]) != want:
                changed.append(t)
                slots.append(slot)
        self.alerts.hold(np.array(slots, dtype=np.int64), np.array([states[t] for t in changed], dtype=bool))
        return changed

    @staticmethod
    def without(state: Any, turbines: Collection[str]) -> tuple[dict[str, Any], int]:
        """A `state_dict()` without `turbines` (retired: a turbine decommissioned, an id mistyped by a publisher):
        every slot-indexed part (the fleet, the alert states, the signal tracker, the step graph's hidden states,
        the records waiting for their fleet step) keeps the other turbines' slots, renumbered in order, so the
        engine resumes them exactly and the retired ones take no room. Returns it and the number of waiting records
        of the retired turbines (dropped). ValueError when the state cannot say which slot is which turbine."""
        names = [t["name"] for t in Engine._fleet_of(state, "Engine.without")]
        try:
            gone = set(turbines)
            keep = np.array([i for i, n in enumerate(names) if n not in gone], dtype=np.int64)
            new_slot = {int(old): new for new, old in enumerate(keep)}
            pending = [item | {"slot": new_slot[item["slot"]]} for item in state["pending"] if item["slot"] in new_slot]
            out = dict(state)
            out["fleet"] = Fleet.select_state(state["fleet"], keep)
            out["alerts"] = AlertState.select_state(state["alerts"], keep)
            out["scored_once"] = [t for t in state["scored_once"] if t not in gone]
            out["pending"] = pending
            if state["signals"] is not None:
                out["signals"] = SignalTracker.select_state(state["signals"], keep)
            if state["stream"] is not None:
                out["stream"] = StreamScorer.select_state(state["stream"], keep)
        except (KeyError, TypeError, IndexError) as e:
            raise ValueError(f"Engine.without: not an engine state with its turbines' slots ({e!r})") from e
        return out, len(state["pending"]) - len(pending)

    @staticmethod
    def open_bins_in(state: Any) -> dict[str, dict[str, Any]]:
        """Per turbine of a `state_dict()` (one this engine may refuse to resume), the accumulator state of its
        open bins: the samples acknowledged and not yet in a closed step. ValueError when the state cannot say."""
        try:
            return {t["name"]: t["accumulator"] for t in Engine._fleet_of(state, "Engine.open_bins_in")}
        except (KeyError, TypeError) as e:
            raise ValueError(f"Engine.open_bins_in: a fleet turbine without its accumulator ({e!r})") from e

    @staticmethod
    def open_samples_in(bins: dict[str, dict[str, Any]]) -> dict[str, int]:
        """Per turbine of `open_bins_in`, the samples its open bins hold (0 for a malformed accumulator)."""
        return {t: BinAccumulator.samples_in(acc) for t, acc in bins.items()}

    def carry_open_bins(self, bins: dict[str, dict[str, Any]]) -> dict[str, int]:
        """Turbines' open bins from a state this engine could not resume (`open_bins_in`), so a model change loses
        none of the samples acknowledged before it: each turbine (registered in the fleet, as `carry_alerts`) starts
        where it stood, its open bins' samples closing its first step here, and the steps the other model scored
        stay closed; a channel's values by its name when the channels differ (none for a channel the state
        lacks). Returns the samples taken per turbine carried (none beyond `max_turbines`, none of a malformed
        accumulator state). SpecError when the state's step differs from this bundle's, or it shares no channel
        (use a fresh engine then: nothing is to be carried)."""
        carried = {}
        for t, acc in bins.items():
            if self.fleet.has_room(t):
                try:
                    carried[t] = self.fleet.take_open_bins(t, acc)
                except InputError:  # this turbine's bins only: the caller counts them as not carried
                    continue
        return carried

    def waiting(self) -> int:
        """Fleet-relative: scored steps held until every turbine has closed their step (0 otherwise)."""
        return sum(len(g) for g in self._pending.values())

    def alerts_on(self) -> int:
        return int(self.alerts.get().sum())
