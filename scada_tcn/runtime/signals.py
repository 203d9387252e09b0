"""Per-signal scoring: from each feature's residual at the newest step to one level-relative ratio per signal.

The per-signal graph (bundle `signals`) hides one feature group over the whole window per pass and returns, for
each feature f, its prediction at the newest step (`pred`, scaled units) and its signed residual in units of its
normal residual scale, z_f = (x_f - x_hat_f) / s_f (0 where f is missing at that step, or a context feature).
A *monitor* is what gets a level of its own:

* each monitored feature (`SignalSpec.monitored`: by default the primary signals, not their deltas and rolling
  statistics, which are model inputs hidden with their group): its deviation v_f = z_f, -z_f or |z_f| by its
  direction ("above": only a component running hot is a fault; "below": only power lost for the wind; "both"),
  minus its median on normal validation steps (`center`), then relative to the fleet when `baseline` is "fleet"
  (minus the median of the other turbines' same feature at the same step) or "fleet_all" (the median of every
  turbine's, its own included: with two peers the others' median is their mean, so a faulty turbine would move
  each peer's baseline by half its deviation; the median of all three stays between the healthy two) or
  "fleet_and_own" (the smaller of the aggregates relative to the others' median and of the turbine's own
  deviation: a healthy turbine whose peer ran away reads its own small value, and a farm-wide rise the small
  relative one), then
  aggregated over time (`runtime.aggregators`: EWMA, with one half-life or one per group (`group_halflife`), or
  one-sided CUSUM). Under every fleet baseline the turbine's
  own deviation is aggregated beside it on the same steps (`SignalStep.own`): with EWMA and "fleet" or
  "fleet_all", value = own - the peers' part exactly, so a record can show that a turbine's ratio came from its
  peers moving (a fault on a peer of a small farm), not from itself;
* each stuck-signal check (`StuckCheck`): the run of exact repeats of a raw channel counted on the steps where
  the model expected it to move (its feature's prediction moved by more than `min_move`), reset when the channel
  changes (`runtime.aggregators.StuckRun`). A frozen sensor or a seized pitch repeats; a live one does not.

Each monitor has its own alarm level (`SignalLevels`, fitted at export on the validation split, pooled and per
turbine where a turbine had enough validation steps). A step's ratio per monitor is value / level, a group's ratio
is the largest ratio of its monitors, the turbine-level score the largest of all; an alert fires when the score
reaches the alert state machine's T_on, i.e. when any monitor crosses its own level. Steps whose newest flags
include one of `skip_flags` (e.g. "stopped") are not scored: every monitor treats them as missing steps.

What adapts, and how it cannot learn a fault as normal: nothing here learns online. The fleet baseline is the
turbines at the same step (a fault on one turbine does not move its own "fleet" baseline, and moves its "fleet_all"
one by at most the spread of the healthy turbines when at least two others are observed), the centres and levels
are fixed at export, and the aggregators forget (EWMA) or restart (CUSUM, stuck runs) by their own rules only.
Refused (ValueError): arrays of the wrong shape, parameters that disagree in length, levels that are not finite
and > 0.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

from scada_tcn.runtime.aggregators import StuckRun, make_aggregator
from scada_tcn.runtime.digest import canonical_json
from scada_tcn.runtime.errors import check_keys
from scada_tcn.runtime.slots import kept_rows
from scada_tcn.runtime.vocab import Direction, ScoreAggregator, SignalBaseline, parse

__all__ = [
    "SignalLevels",
    "SignalParams",
    "SignalSpec",
    "SignalStep",
    "SignalTracker",
    "StuckCheck",
    "halflives",
    "invalid_halflives",
]


@dataclass(frozen=True)
class StuckCheck:
    """A raw channel's exact repeats (`repeat`: its index in the pipeline's repeat codes), counted while the
    prediction of `feature` moves by more than `min_move` (scaled units) from one step to the next."""

    channel: str
    repeat: int
    feature: int
    min_move: float

    def __post_init__(self) -> None:
        if self.repeat < 0 or self.feature < 0 or not (math.isfinite(self.min_move) and self.min_move >= 0):
            raise ValueError(f"StuckCheck {self.channel!r}: repeat and feature >= 0, min_move finite and >= 0")

    def to_dict(self) -> dict[str, Any]:
        return {"channel": self.channel, "repeat": self.repeat, "feature": self.feature, "min_move": self.min_move}

    @classmethod
    def from_dict(cls, d: Any) -> StuckCheck:
        d = check_keys(d, ("channel", "repeat", "feature", "min_move"), "signals.spec.stuck", ValueError)
        return cls(str(d["channel"]), int(d["repeat"]), int(d["feature"]), float(d["min_move"]))


@dataclass(frozen=True)
class SignalSpec:
    """What is monitored and how residuals become deviations (see the module docstring)."""

    features: tuple[str, ...]  # (F,) feature names
    groups: tuple[str, ...]  # (G,) group names
    group_of: tuple[int, ...]  # (F,) the group of each feature, -1 = context (never hidden, never scored)
    direction: tuple[Direction, ...]  # (F,)
    center: tuple[float, ...]  # (F,) median deviation of each feature on normal validation steps
    monitored: tuple[bool, ...]  # (F,) features with a level of their own
    stuck: tuple[StuckCheck, ...] = ()
    skip_flags: tuple[str, ...] = ()  # steps whose newest flags include one of these are not scored

    def __post_init__(self) -> None:
        F = len(self.features)
        if not (len(self.group_of) == len(self.direction) == len(self.center) == len(self.monitored) == F):
            raise ValueError(f"SignalSpec: group_of, direction, center and monitored need one entry per feature ({F})")
        if sorted(set(self.group_of) - {-1}) != list(range(len(self.groups))):
            raise ValueError(f"SignalSpec: group_of must use every group index 0 .. {len(self.groups) - 1}")
        object.__setattr__(self, "direction", tuple(parse(Direction, d, "signals.direction") for d in self.direction))
        object.__setattr__(self, "monitored", tuple(bool(m) for m in self.monitored))
        if not np.isfinite(np.asarray(self.center, dtype=np.float64)).all():
            raise ValueError("SignalSpec: center must be finite")
        gof = np.asarray(self.group_of)
        feat = np.flatnonzero(self.monitored)
        if (gof[feat] < 0).any():
            raise ValueError("SignalSpec: a context feature (group -1) cannot be monitored")
        bad = [c.channel for c in self.stuck if c.feature >= F or gof[c.feature] < 0]
        if bad:
            raise ValueError(f"SignalSpec: stuck checks {bad} must name a scored feature (0 .. {F - 1})")
        if feat.size + len(self.stuck) == 0:
            raise ValueError("SignalSpec: nothing is monitored (no monitored feature, no stuck check)")
        sign = np.array([{"above": 1.0, "below": -1.0, "both": 0.0}[d] for d in self.direction])
        object.__setattr__(self, "_sign", sign)
        object.__setattr__(self, "_feat", feat)
        group = np.concatenate([gof[feat], gof[[c.feature for c in self.stuck]].astype(np.int64)])
        object.__setattr__(self, "_member", group[None, :] == np.arange(len(self.groups))[:, None])  # (G, M)

    @property
    def n_groups(self) -> int:
        return len(self.groups)

    @property
    def monitor_names(self) -> tuple[str, ...]:
        """(M,) the monitored features, then `stuck:<channel>` per stuck check."""
        return tuple(self.features[j] for j in self._feat) + tuple(f"stuck:{c.channel}" for c in self.stuck)

    @property
    def monitor_features(self) -> np.ndarray:
        """(Mf,) the feature index of each monitored feature."""
        return self._feat.copy()

    def monitor_groups_in(self, names: Any) -> np.ndarray:
        """(M,) bool: the monitors whose group is one of `names` (unknown names are refused)."""
        unknown = sorted(set(names) - set(self.groups))
        if unknown:
            raise ValueError(f"SignalSpec: {unknown} are not groups; groups: {list(self.groups)}")
        return self._member[[self.groups.index(n) for n in dict.fromkeys(names)]].any(axis=0)

    def feature_deviation(self, resid: np.ndarray) -> np.ndarray:
        """(B, F) residuals z -> (B, F) deviations v - center (directional, or |z| for "both")."""
        z = np.asarray(resid, dtype=np.float64)
        v = np.where(self._sign == 0.0, np.abs(z), self._sign * z)
        return v - np.asarray(self.center)

    def skip_mask(self, flags: np.ndarray, flag_names: list[str] | tuple[str, ...]) -> np.ndarray:
        """(B, R) newest-step flags -> (B,) bool: steps that are not scored (any of `skip_flags` on)."""
        f = np.asarray(flags)
        if not self.skip_flags:
            return np.zeros(f.shape[0], dtype=bool)
        unknown = sorted(set(self.skip_flags) - set(flag_names))
        if unknown:
            raise ValueError(f"signals.skip_flags: {unknown} are not flags of this model; flags: {list(flag_names)}")
        idx = [list(flag_names).index(n) for n in self.skip_flags]
        return (f[:, idx] > 0.5).any(axis=1)

    def group_ratios(self, ratio: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(B, M) monitor ratios -> (B, G) each group's largest ratio (NaN: none defined) and its monitor (-1)."""
        r = np.where(self._member[None, :, :], np.nan_to_num(ratio, nan=-np.inf)[:, None, :], -np.inf)  # (B, G, M)
        top = r.argmax(axis=2)
        best = np.take_along_axis(r, top[..., None], axis=2)[..., 0]
        ok = np.isfinite(best)
        return np.where(ok, best, np.nan), np.where(ok, top, -1)

    def to_dict(self) -> dict[str, Any]:
        return {"features": list(self.features), "groups": list(self.groups), "group_of": list(self.group_of),
                "direction": [str(d) for d in self.direction], "center": [float(c) for c in self.center],
                "monitored": list(self.monitored), "stuck": [c.to_dict() for c in self.stuck],
                "skip_flags": list(self.skip_flags)}  # fmt: skip

    @classmethod
    def from_dict(cls, d: Any) -> SignalSpec:
        keys = ("features", "groups", "group_of", "direction", "center", "monitored", "stuck", "skip_flags")
        d = check_keys(d, keys, "signals.spec", ValueError)
        return cls(tuple(d["features"]), tuple(d["groups"]), tuple(int(g) for g in d["group_of"]),
                   tuple(d["direction"]), tuple(float(c) for c in d["center"]), tuple(bool(m) for m in d["monitored"]),
                   tuple(StuckCheck.from_dict(c) for c in d["stuck"]), tuple(d["skip_flags"]))  # fmt: skip


@dataclass(frozen=True)
class SignalLevels:
    """Each monitor's alarm level, pooled and per turbine; `fallbacks` says which turbines use the pooled ones."""

    pooled: tuple[float, ...]  # (M,)
    per_turbine: dict[str, tuple[float, ...]] = field(default_factory=dict)
    fallbacks: dict[str, str] = field(default_factory=dict)
    percentile: float = 100.0
    n_steps: int = 0

    def __post_init__(self) -> None:
        for key, v in {"pooled": self.pooled, **self.per_turbine}.items():
            a = np.asarray(v, dtype=np.float64)
            if a.shape != (len(self.pooled),) or not (np.isfinite(a) & (a > 0)).all():
                raise ValueError(f"SignalLevels: {key} must hold {len(self.pooled)} finite levels > 0")

    def source_of(self, turbine: str) -> str:
        """Where the levels of `turbine` come from: "turbine" (its own) or "pooled"."""
        return "turbine" if turbine in self.per_turbine else "pooled"

    def for_turbine(self, turbine: str) -> tuple[np.ndarray, str]:
        """The (M,) levels of `turbine` and their source (`source_of`)."""
        source = self.source_of(turbine)
        levels = self.per_turbine[turbine] if source == "turbine" else self.pooled
        return np.asarray(levels, dtype=np.float64), source

    def to_dict(self) -> dict[str, Any]:
        return {"pooled": [float(x) for x in self.pooled],
                "per_turbine": {t: [float(x) for x in v] for t, v in self.per_turbine.items()},
                "fallbacks": dict(self.fallbacks), "percentile": float(self.percentile),
                "n_steps": int(self.n_steps)}  # fmt: skip

    @classmethod
    def from_dict(cls, d: Any) -> SignalLevels:
        d = check_keys(d, ("pooled", "per_turbine", "fallbacks", "percentile", "n_steps"), "signals.levels",
                       ValueError)  # fmt: skip
        return cls(tuple(float(x) for x in d["pooled"]),
                   {str(t): tuple(float(x) for x in v) for t, v in dict(d["per_turbine"]).items()},
                   {str(k): str(v) for k, v in dict(d["fallbacks"]).items()}, float(d["percentile"]),
                   int(d["n_steps"]))  # fmt: skip


@dataclass(frozen=True)
class SignalParams:
    """The bundle's `signals` section: monitors, their temporal aggregation, the baseline and the levels."""

    spec: SignalSpec
    aggregator: ScoreAggregator
    halflife: float | None  # ewma
    k: float | None  # cusum allowance
    max_gap: int  # cusum: missing steps after which the sum restarts
    baseline: SignalBaseline  # none | fleet (minus the other turbines' median at the step) | fleet_all (all's)
    min_peers: int
    levels: SignalLevels
    group_halflife: dict[str, float] = field(default_factory=dict)  # ewma: these groups' half-lives, not `halflife`

    def __post_init__(self) -> None:
        object.__setattr__(self, "aggregator", parse(ScoreAggregator, self.aggregator, "signals.aggregator"))
        object.__setattr__(self, "baseline", parse(SignalBaseline, self.baseline, "signals.baseline"))
        if (self.aggregator == ScoreAggregator.ewma) != (self.halflife is not None):
            raise ValueError("signals.halflife: required by, and only allowed with, aggregator 'ewma'")
        halflives(self.spec, self.halflife, self.group_halflife)  # refuses unknown groups and bad half-lives
        if (self.aggregator == ScoreAggregator.cusum) != (self.k is not None):
            raise ValueError("signals.k: required by, and only allowed with, aggregator 'cusum'")
        if len(self.levels.pooled) != len(self.spec.monitor_names):
            raise ValueError(f"signals.levels: {len(self.levels.pooled)} for {len(self.spec.monitor_names)} monitors")

    def to_dict(self) -> dict[str, Any]:
        return {"spec": self.spec.to_dict(), "aggregator": str(self.aggregator), "halflife": self.halflife,
                "group_halflife": {g: float(h) for g, h in sorted(self.group_halflife.items())}, "k": self.k,
                "max_gap": self.max_gap, "baseline": str(self.baseline), "min_peers": self.min_peers,
                "levels": self.levels.to_dict()}  # fmt: skip

    def basis(self) -> str:
        """sha256 of everything the tracker's state depends on: these parameters but the levels, which only compare
        its values. A state kept under another basis holds aggregates of other deviations or another memory. No
        group half-lives: the basis of a bundle written before they existed (a state saved under it resumes)."""
        doc = {k: v for k, v in self.to_dict().items() if k != "levels" and (k != "group_halflife" or v)}
        return hashlib.sha256(canonical_json(doc)).hexdigest()

    @classmethod
    def from_dict(cls, d: Any, group_halflife: bool = True) -> SignalParams:
        """`group_halflife` False: a section written before that key (bundle schema < 9), read as none."""
        keys = ("spec", "aggregator", "halflife", *(("group_halflife",) if group_halflife else ()), "k", "max_gap",
                "baseline", "min_peers", "levels")  # fmt: skip
        d = check_keys(d, keys, "signals", ValueError)
        groups = d["group_halflife"] if group_halflife else {}
        if not isinstance(groups, dict):
            raise ValueError(f"signals.group_halflife: expected an object group -> steps, got {type(groups).__name__}")
        return cls(SignalSpec.from_dict(d["spec"]), d["aggregator"],
                   None if d["halflife"] is None else float(d["halflife"]), None if d["k"] is None else float(d["k"]),
                   int(d["max_gap"]), d["baseline"], int(d["min_peers"]), SignalLevels.from_dict(d["levels"]),
                   {str(g): float(h) for g, h in groups.items()})  # fmt: skip


def invalid_halflives(group_halflife: dict[str, Any]) -> dict[str, Any]:
    """The entries of a group -> half-life mapping that are not finite numbers of steps > 0 (the config checks
    and `halflives` refuse them)."""
    return {g: h for g, h in group_halflife.items() if not (isinstance(h, (int, float)) and math.isfinite(h) and h > 0)}


def halflives(spec: SignalSpec, halflife: float | None, group_halflife: dict[str, float]) -> Any:
    """The EWMA half-life of each monitored feature (`monitor_features` order): its group's in `group_halflife`,
    else `halflife`; one number when no group has its own (None without EWMA). Refused (ValueError): group
    half-lives without `halflife` (EWMA), an unknown group or one without a monitored feature, a half-life that
    is not a finite number > 0."""
    if not group_halflife:
        return halflife
    if halflife is None:
        raise ValueError("signals.group_halflife: half-lives per group need aggregator 'ewma'")
    bad = invalid_halflives(group_halflife)
    if bad:
        raise ValueError(f"signals.group_halflife: half-lives must be finite numbers of steps > 0, got {bad}")
    n = len(spec.monitor_features)  # the monitored features come first among the monitors
    try:
        mine = {g: spec.monitor_groups_in([g])[:n] for g in group_halflife}
    except ValueError as e:  # an unknown group
        raise ValueError(f"signals.group_halflife: {e}") from e
    idle = sorted(g for g, m in mine.items() if not m.any())
    if idle:
        raise ValueError(f"signals.group_halflife: {idle} have no monitored feature, so no EWMA (stuck checks and "
                         "unmonitored features have none): their half-lives would change nothing")  # fmt: skip
    out = np.full(n, float(halflife))
    for g, m in mine.items():
        out[m] = float(group_halflife[g])
    return tuple(out.tolist())


def worst_first(group_ratio: np.ndarray, group_top: np.ndarray) -> list[list[tuple[int, int]]]:
    """Per row of (N, G) group ratios and their monitors (`SignalSpec.group_ratios`): the (group, monitor) pairs
    of the groups with a defined ratio, worst first (ties in group order). How records and reports name what
    drove a score."""
    order = np.argsort(-np.nan_to_num(group_ratio, nan=-np.inf), axis=1, kind="stable").tolist()
    return [[(j, t[j]) for j in o if t[j] >= 0] for o, t in zip(order, group_top.tolist())]


def _starts(step_of: np.ndarray | None, B: int) -> np.ndarray:
    """(T,) the first row of each time step of `SignalTracker.step`'s rows (one step when `step_of` is None)."""
    if step_of is None:
        return np.zeros(1 if B else 0, dtype=np.int64)
    k = np.asarray(step_of)
    if k.shape != (B,) or (k[1:] < k[:-1]).any():
        raise ValueError(f"SignalTracker.step: step_of must be (B={B},) and non-decreasing (time steps in order)")
    return np.flatnonzero(np.r_[True, k[1:] != k[:-1]]) if B else np.zeros(0, dtype=np.int64)


_PARTS = ("aggregator", "stuck", "own")  # the tracker's state


class SignalStep(NamedTuple):
    """One step of a fleet's turbines (B rows): monitors' values, levels and ratios, and their group maxima."""

    y: np.ndarray  # (B, Mf) monitored features' deviations, relative to the baseline
    has: np.ndarray  # (B, Mf) bool: observed (and, with the fleet baseline, with its peers)
    value: np.ndarray  # (B, M) aggregates (features) and runs (stuck checks), NaN while undefined
    own: np.ndarray | None  # (B, M) under a fleet baseline: each feature's own deviation aggregated on the same
    # steps (NaN while undefined, and for the stuck checks); None without a baseline (own is value)
    level: np.ndarray  # (B, M)
    ratio: np.ndarray  # (B, M) value / level, NaN while undefined
    group_ratio: np.ndarray  # (B, G) the largest ratio of each group's monitors, NaN: none defined
    group_top: np.ndarray  # (B, G) the monitor that set it, -1: none
    score: np.ndarray  # (B,) the largest ratio, NaN when none is defined
    observed: np.ndarray  # (B,) bool: a step with new evidence (alerts count only these): scored, not skipped, and
    # a monitored feature taken (with its peers, under the fleet baseline) or a stuck-checked feature present (a
    # scored step of a turbine whose feed stopped, or whose peers all did, is not)


class SignalTracker:
    """The stateful part of per-signal scoring for a fleet, shared by the export, `scada-infer` and the edge.

    `step(slots, turbines, resid, present, pred, scored, repeat, skip)` takes the B turbines that closed ONE time
    step (so the fleet baseline compares turbines at the same step; slots distinct): the graph's resid and pred
    (B, F), the newest step's presence (B, F), whether the window was scored (B,) (a window with too little data
    is a missing step for the features and gives no prediction; its repeat codes still count), the repeat codes
    (B, S) and the skip mask (B,) (`SignalSpec.skip_mask`). Without `levels` the ratios are NaN.
    With `step_of` (B,) the rows are several time steps, each one's rows together and the steps in time order
    (`step_of` non-decreasing; slots distinct within a step): the same as one call per step, with only the
    aggregators' recursions taken a step at a time (a replay's chunk, offline tracking).
    `state_dict()` / `load_state_dict()` carry the aggregators' state (the daemon's state file holds it).
    """

    def __init__(
        self,
        spec: SignalSpec,
        aggregator: ScoreAggregator,
        halflife: float | None,
        k: float | None,
        max_gap: int,
        baseline: SignalBaseline,
        min_peers: int,
        levels: SignalLevels | None = None,
        group_halflife: dict[str, float] | None = None,
    ) -> None:
        self.spec = spec
        self.baseline = parse(SignalBaseline, baseline, "signals.baseline")
        self.min_peers = int(min_peers)
        self.levels = levels
        n_feat = len(spec.monitor_features)
        kind = parse(ScoreAggregator, aggregator, "signals.aggregator")
        hl = halflives(spec, halflife, group_halflife or {})
        self.agg = make_aggregator(kind, n_feat, hl, k, int(max_gap)) if n_feat else None
        relative = n_feat and self.baseline != SignalBaseline.none
        self.own = make_aggregator(kind, n_feat, hl, k, int(max_gap)) if relative else None
        self.stuck = StuckRun([c.min_move for c in spec.stuck]) if spec.stuck else None
        self._level_cache: dict[str, np.ndarray] = {}
        self._stuck_features = np.array([c.feature for c in spec.stuck], dtype=np.int64)

    @classmethod
    def from_params(cls, p: SignalParams) -> SignalTracker:
        """The tracker a bundle's `signals` section describes, with its levels."""
        return cls(
            p.spec, p.aggregator, p.halflife, p.k, p.max_gap, p.baseline, p.min_peers, p.levels, p.group_halflife
        )

    def step(
        self,
        slots: Any,
        turbines: list[str],
        resid: np.ndarray,
        present: np.ndarray,
        pred: np.ndarray,
        scored: np.ndarray,
        repeat: np.ndarray,
        skip: np.ndarray,
        step_of: np.ndarray | None = None,
    ) -> SignalStep:
        slots = np.asarray(slots, dtype=np.int64)
        B, F, sp = slots.size, len(self.spec.features), self.spec
        z, p, pr = (np.asarray(a) for a in (resid, present, pred))
        ok = np.asarray(scored, dtype=bool) & ~np.asarray(skip, dtype=bool)
        if z.shape != (B, F) or p.shape != (B, F) or pr.shape != (B, F) or ok.shape != (B,):
            raise ValueError(f"SignalTracker.step: resid, present, pred (B={B}, F={F}) and scored, skip (B,); got "
                             f"{z.shape}, {p.shape}, {pr.shape}, {ok.shape}")  # fmt: skip
        starts = _starts(step_of, B)
        spans = list(zip(starts.tolist(), [*starts[1:].tolist(), B]))
        feat = sp.monitor_features
        own_y = y = sp.feature_deviation(z)[:, feat]
        has = p.astype(bool)[:, feat] & ok[:, None]
        if self.baseline != SignalBaseline.none:
            y, has = self._fleet_relative(y, has, starts)
        values = []
        own_v = None if self.own is None else self._aggregate(self.own, slots, own_y, has, spans)
        if self.agg is not None:
            v = self._aggregate(self.agg, slots, y, has, spans)
            values.append(np.minimum(v, own_v) if self.baseline == SignalBaseline.fleet_and_own else v)
        own = None if own_v is None else np.concatenate([own_v, np.full((B, len(sp.stuck)), np.nan)], axis=1)
        if self.stuck is not None:
            codes = np.asarray(repeat)[:, [c.repeat for c in sp.stuck]]
            moving = pr[:, [c.feature for c in sp.stuck]].astype(np.float64)
            taken, v = np.repeat(ok[:, None], len(sp.stuck), axis=1), np.empty((B, len(sp.stuck)))
            for a, b in spans:
                self.stuck.update(slots[a:b], codes[a:b], moving[a:b], taken[a:b])
                v[a:b] = self.stuck.get(slots[a:b])
            values.append(v)
        value = np.concatenate(values, axis=1) if values else np.zeros((B, 0))
        if self.levels is None:
            level = np.full_like(value, np.nan)
        else:
            level = np.stack([self._levels_of(t) for t in turbines]) if B else value.copy()
        ratio = value / level
        group_ratio, group_top = sp.group_ratios(ratio)
        finite = np.isfinite(ratio)
        score = np.where(finite.any(axis=1), np.where(finite, ratio, -np.inf).max(axis=1, initial=-np.inf), np.nan)
        # new evidence: a monitored feature the aggregator took (after the fleet baseline: without peers it takes
        # none and the score is frozen), or a stuck-checked feature present
        stuck_seen = p.astype(bool)[:, self._stuck_features].any(axis=1)
        return SignalStep(y, has, value, own, level, ratio, group_ratio, group_top, score,
                          has.any(axis=1) | (ok & stuck_seen))  # fmt: skip

    @staticmethod
    def _aggregate(agg: Any, slots: np.ndarray, y: np.ndarray, has: np.ndarray, spans: list) -> np.ndarray:
        """`agg` updated with the observed `y` of each time step in turn; (B, width) its values after each."""
        x, v = np.where(has, y, 0.0), np.empty(y.shape)
        for a, b in spans:  # the recursion, a time step at a time
            agg.update(slots[a:b], x[a:b], has[a:b])
            v[a:b] = agg.get(slots[a:b])
        return v

    def _levels_of(self, turbine: str) -> np.ndarray:
        """The (M,) levels of `turbine` (cached: the levels do not change)."""
        lv = self._level_cache.get(turbine)
        if lv is None:
            assert self.levels is not None
            lv = self._level_cache[turbine] = self.levels.for_turbine(turbine)[0]
        return lv

    def _fleet_relative(self, y: np.ndarray, has: np.ndarray, starts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Each monitored feature minus the median of the other turbines' same feature at the same time step
        (`fleet`), or of every turbine's, its own included (`fleet_all`); observed ones only, and at least
        `min_peers` other turbines observed. `starts` (T,): the first row of each time step."""
        from scada_tcn.runtime.peers import median_of_all, median_of_others

        B, Mf = y.shape
        if B == 0:
            return y, has
        step = np.repeat(np.arange(starts.size), np.diff(np.append(starts, B)))
        col = np.arange(B) - starts[step]  # a turbine's column within its time step
        vals = np.full((starts.size, Mf, int(col.max()) + 1), np.nan)  # one row per (time step, feature)
        vals[step, :, col] = np.where(has, y, np.nan)
        median = median_of_all if self.baseline == SignalBaseline.fleet_all else median_of_others
        base = median(vals.reshape(-1, vals.shape[2])).reshape(vals.shape)[step, :, col]  # (B, Mf)
        peers = np.add.reduceat(has.astype(np.int64), starts, axis=0)[step] - has.astype(np.int64)
        ok = has & (peers >= self.min_peers) & np.isfinite(base)
        return np.where(ok, y - np.where(ok, base, 0.0), 0.0), ok

    def state_dict(self) -> dict[str, Any]:
        return {part: None if obj is None else obj.state_dict() for part, obj in self._parts()}

    def _parts(self) -> tuple[tuple[str, Any], ...]:
        return ("aggregator", self.agg), ("stuck", self.stuck), ("own", self.own)

    @staticmethod
    def _checked(state: Any, who: str) -> dict[str, Any]:
        """A `state_dict()`, or one saved before the own aggregates (no "own": they start afresh)."""
        older = isinstance(state, dict) and "own" not in state
        return check_keys(state, ("aggregator", "stuck") if older else _PARTS, who, ValueError)

    @staticmethod
    def select_state(state: dict[str, Any], keep: np.ndarray) -> dict[str, Any]:
        """A `state_dict()` of the old slots `keep` only (increasing), renumbered from 0 (`runtime.slots`)."""
        state = SignalTracker._checked(state, "SignalTracker.select_state")
        return {part: None if state[part] is None else kept_rows(state[part], keep) for part in state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        state = self._checked(state, "SignalTracker.load_state_dict")
        for part, obj in self._parts():
            if part not in state:  # saved before the own aggregates: they start afresh
                continue
            if (state[part] is None) != (obj is None):
                raise ValueError(f"SignalTracker.load_state_dict: {part} state does not match this bundle's monitors")
            if obj is not None:
                obj.load_state_dict(state[part])
