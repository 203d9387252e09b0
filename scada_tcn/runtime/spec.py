"""The preprocessing contract shared by `scada-prepare` (batch) and the edge daemon (incremental).

A `PipelineSpec` says everything needed to turn raw SCADA samples of one turbine into model inputs:

    raw samples (ts, channel values)
      -> binning to `dt_seconds` (bins are right-closed and labelled by their end: a sample stamped t
         lands in the bin (k*dt - dt, k*dt] with k = ceil(t / dt), counted from the Unix epoch, so a bin
         never holds data stamped after its label): values outside `valid_range` become missing as
         impossible readings, duplicate timestamps are collapsed by `dedupe`, then per-channel
         aggregation (angular channels always use the circular mean); a report-by-exception channel
         of `hold_s` holds its last value into bins where it sent nothing (`runtime.hold`), and one
         aggregated by `time` is the time-weighted mean of the values holding over the bin
      -> winsorize caps (fitted on the training split only)
      -> engineered features and their missingness mask (angles as sin/cos, wrapped yaw error, channel
         differences such as a temperature above ambient, deltas, strict-present causal rolling mean/std)
      -> robust scaling, then the fill value where the mask says missing
      -> flags from per-step rules over the binned channels, and the exact-repeat codes of
         `repeat_channels` (`runtime.repeats`: the stuck-signal check's evidence).

Every name list fixes an order; `feature_names` and `flag_names` are derived here and nowhere else.
`to_dict` / `from_dict` round-trip through plain JSON types and reject unknown or missing keys; a spec written
before `hold_s` existed (bundle schema 10 and older, checkpoints and prepared folders of then) is read through
`with_hold_default`, as holding nothing.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from scada_tcn.runtime.errors import SpecError, check_keys
from scada_tcn.runtime.vocab import AngleUnits, BinAggregation, DedupeRule, RollingStat, parse

MAX_HOLD_S = 366 * 86_400  # the longest a report-by-exception value may hold: a year


def _enum(enum: type, value: object, where: str):  # noqa: ANN202
    try:
        return parse(enum, value, where)
    except ValueError as e:
        raise SpecError(str(e)) from None


def _check_keys(d: dict[str, Any], required: set[str], where: str) -> None:
    check_keys(d, sorted(required), where, SpecError)


def _list(d: dict[str, Any], key: str) -> list[Any]:
    if not isinstance(d[key], list):
        raise SpecError(f"pipeline spec.{key}: expected a list, got {type(d[key]).__name__}")
    return d[key]


def _names(d: dict[str, Any], key: str) -> tuple[str, ...]:
    items = _list(d, key)
    if not all(isinstance(x, str) for x in items):
        raise SpecError(f"pipeline spec.{key}: expected a list of names, got {items!r}")
    return tuple(items)


def _mapping(d: dict[str, Any], key: str) -> dict[str, Any]:
    if not isinstance(d[key], dict):
        raise SpecError(f"pipeline spec.{key}: expected a mapping, got {type(d[key]).__name__}")
    return dict(d[key])


def _unique(names: tuple[str, ...], what: str) -> None:
    seen = [n for i, n in enumerate(names) if n in names[:i]]
    if seen:
        raise SpecError(f"{what}: duplicate names {seen}")


@dataclass(frozen=True)
class RollingSpec:
    """Causal rolling statistics over the last `w` steps (strict present: any missing step -> missing)."""

    channels: tuple[str, ...]
    windows: tuple[int, ...]
    stats: tuple[str, ...]

    def __post_init__(self) -> None:
        bad = [w for w in self.windows if not isinstance(w, int) or isinstance(w, bool) or w < 1]
        if bad:
            raise SpecError(f"rolling.windows must be positive integers, got {bad}")
        object.__setattr__(self, "stats", tuple(_enum(RollingStat, s, "rolling.stats") for s in self.stats))

    def output_names(self) -> list[str]:
        return [f"{c}_r{s}{w}" for c in self.channels for w in self.windows for s in self.stats]


@dataclass(frozen=True)
class YawErrorSpec:
    """yaw_error = wrap(wind_dir - nacelle_dir) into [-180, 180) deg or [-pi, pi) rad.

    With `min_wind_speed`, the yaw error is missing at steps whose `wind_speed` channel is below it or missing:
    below cut-in the turbine does not track the wind, so the angle between them is not a yaw error.
    """

    wind_dir: str
    nacelle_dir: str
    output_name: str
    wind_speed: str | None = None
    min_wind_speed: float | None = None

    def __post_init__(self) -> None:
        if (self.wind_speed is None) != (self.min_wind_speed is None):
            raise SpecError("yaw_error: wind_speed and min_wind_speed go together (both set, or both null)")
        if self.min_wind_speed is not None and not math.isfinite(self.min_wind_speed):
            raise SpecError(f"yaw_error.min_wind_speed must be finite, got {self.min_wind_speed}")


@dataclass(frozen=True)
class PipelineSpec:
    """Everything needed to rebuild model inputs from raw samples; see the module docstring."""

    dt_seconds: int
    channels: tuple[str, ...]  # order of the raw channel vector (feature channels + flag sources)
    dedupe: str
    aggregation: Mapping[str, str]  # channel -> aggregation; channels not listed use "mean"
    valid_range: Mapping[str, tuple[float, float]]
    winsor_caps: Mapping[str, tuple[float, float]]  # fitted caps in channel units (empty before fitting)
    feature_channels: tuple[str, ...]
    angular_channels: tuple[str, ...]
    angle_units: str
    yaw_error: YawErrorSpec | None
    deltas: tuple[str, ...]
    rolling: RollingSpec | None
    flag_names: tuple[str, ...]
    flag_rules: Mapping[str, str]  # flag -> rule over channels ("power <= 0 and wind_speed > 4", or a bare channel)
    fill_value: float
    differences: Mapping[str, tuple[str, str]] = field(default_factory=dict)  # name -> (a, b): a - b
    feature_names: tuple[str, ...] = field(default=())
    repeat_channels: tuple[str, ...] = ()  # channels whose exact repeats feed the stuck-signal check
    hold_s: Mapping[str, int] = field(default_factory=dict)  # report-by-exception channel -> seconds a value holds

    def __post_init__(self) -> None:
        for name in ("aggregation", "valid_range", "winsor_caps", "flag_rules", "differences", "hold_s"):  # read-only
            object.__setattr__(self, name, MappingProxyType(dict(getattr(self, name))))
        if not isinstance(self.dt_seconds, int) or isinstance(self.dt_seconds, bool) or self.dt_seconds <= 0:
            raise SpecError(f"dt_seconds must be a positive integer, got {self.dt_seconds!r}")
        object.__setattr__(self, "dedupe", _enum(DedupeRule, self.dedupe, "dedupe"))
        object.__setattr__(self, "angle_units", _enum(AngleUnits, self.angle_units, "angle_units"))
        if not math.isfinite(self.fill_value):
            raise SpecError(f"fill_value must be finite, got {self.fill_value}")
        _unique(self.channels, "channels")
        _unique(self.repeat_channels, "repeat_channels")
        chans = set(self.channels)
        for what, names in (
            ("feature_channels", self.feature_channels),
            ("angular_channels", self.angular_channels),
            ("aggregation", tuple(self.aggregation)),
            ("valid_range", tuple(self.valid_range)),
            ("winsor_caps", tuple(self.winsor_caps)),
            ("repeat_channels", self.repeat_channels),
            ("hold_s", tuple(self.hold_s)),
        ):
            unknown = sorted(set(names) - chans)
            if unknown:
                raise SpecError(f"{what}: unknown channels {unknown}; known channels: {list(self.channels)}")
        bad_hold = {c: s for c, s in self.hold_s.items()
                    if isinstance(s, bool) or not isinstance(s, int) or not 1 <= s <= MAX_HOLD_S}  # fmt: skip
        if bad_hold:
            raise SpecError(f"hold_s: seconds a value holds must be integers from 1 to {MAX_HOLD_S:,} (a year), "
                            f"got {bad_hold}")  # fmt: skip
        both = sorted(set(self.hold_s) & set(self.repeat_channels))
        if both:
            raise SpecError(
                f"hold_s: {both} are also repeat_channels; a report-by-exception channel repeats between its changes "
                "by design, so the stuck-signal check would read a steady value as a frozen sensor: remove them from "
                "one of the two"
            )
        not_feat = sorted(set(self.angular_channels) - set(self.feature_channels))
        if not_feat:
            raise SpecError(f"angular_channels {not_feat} must also be feature channels")
        agg = {c: _enum(BinAggregation, a, f"aggregation.{c}") for c, a in self.aggregation.items()}
        object.__setattr__(self, "aggregation", MappingProxyType(agg))
        angular_set = sorted(c for c, a in self.aggregation.items() if c in self.angular_channels and a != "time")
        if angular_set:
            raise SpecError(
                f"aggregation: angular channels {angular_set} always use the circular mean (or its time-weighted "
                "form, time); remove them"
            )
        unheld = sorted(c for c, a in self.aggregation.items() if a == "time" and c not in self.hold_s)
        if unheld:
            raise SpecError(
                f"aggregation: {unheld} use time (the time-weighted mean), which reads a channel's values as holding "
                "from their stamps on: give each one in hold_s how long its value holds"
            )
        angular_caps = sorted(set(self.winsor_caps) & set(self.angular_channels))
        if angular_caps:
            raise SpecError(f"winsor_caps: clipping the angular channels {angular_caps} makes no sense; remove them")
        for what, ranges in (("valid_range", self.valid_range), ("winsor_caps", self.winsor_caps)):
            for c, pair in ranges.items():
                if len(pair) != 2:
                    raise SpecError(f"{what}.{c}: expected (low, high), got {pair!r}")
                lo, hi = pair
                if not lo <= hi:
                    raise SpecError(f"{what}.{c}: low {lo} must be <= high {hi}")
        for name, pair in self.differences.items():
            bad = [c for c in pair if c not in chans or c in self.angular_channels]
            if len(pair) != 2 or bad:
                raise SpecError(
                    f"differences.{name}: expected two non-angular channels of {list(self.channels)}, got {list(pair)}"
                )
        if self.yaw_error is not None:
            for side in (self.yaw_error.wind_dir, self.yaw_error.nacelle_dir):
                if side not in self.angular_channels:
                    raise SpecError(f"yaw_error: {side!r} must be an angular channel {list(self.angular_channels)}")
            ws = self.yaw_error.wind_speed
            if ws is not None and (ws not in chans or ws in self.angular_channels):
                raise SpecError(f"yaw_error.wind_speed: {ws!r} must be a non-angular channel of {list(self.channels)}")
        base = self.base_names()
        for what, names in (
            ("deltas", self.deltas),
            ("rolling.channels", self.rolling.channels if self.rolling else ()),
        ):
            unknown = sorted(set(names) - set(base))
            if unknown:
                raise SpecError(f"{what}: unknown engineered columns {unknown}; allowed: {base}")
        if set(self.flag_rules) != set(self.flag_names):
            raise SpecError(
                f"flag_rules must define exactly the flags {list(self.flag_names)}; got {sorted(self.flag_rules)}"
            )
        _unique(self.flag_names, "flag_names")
        derived = tuple(self.derive_feature_names())
        _unique(derived, "feature names")
        if not self.feature_names:
            object.__setattr__(self, "feature_names", derived)
        elif tuple(self.feature_names) != derived:
            raise SpecError(
                "feature_names do not match the order derived from the feature spec:\n"
                f"  given:   {list(self.feature_names)}\n  derived: {list(derived)}"
            )

    def base_names(self) -> list[str]:
        """Engineered columns before deltas and rolling: raw channels (angles as sin/cos), yaw error, differences."""
        names: list[str] = []
        for c in self.feature_channels:
            names += [f"{c}_sin", f"{c}_cos"] if c in self.angular_channels else [c]
        if self.yaw_error is not None:
            names.append(self.yaw_error.output_name)
        return names + list(self.differences)

    def derive_feature_names(self) -> list[str]:
        names = self.base_names() + [f"{c}_delta" for c in self.deltas]
        if self.rolling is not None:
            names += self.rolling.output_names()
        return names

    def feature_bases(self) -> list[str]:
        """Per feature, the base column it is computed from (aligned with feature_names).

        A raw channel and its sin/cos are based on the channel; yaw error and differences on themselves; a delta
        or rolling statistic on the column it differences or rolls. Features sharing a base carry the same signal.
        """
        bases = [c for c in self.feature_channels for _ in ((0, 1) if c in self.angular_channels else (0,))]
        if self.yaw_error is not None:
            bases.append(self.yaw_error.output_name)
        bases += list(self.differences) + list(self.deltas)
        if self.rolling is not None:
            bases += [c for c in self.rolling.channels for _ in self.rolling.windows for _ in self.rolling.stats]
        return bases

    @property
    def n_features(self) -> int:
        return len(self.feature_names)

    @property
    def n_flags(self) -> int:
        return len(self.flag_names)

    def with_winsor_caps(self, caps: dict[str, tuple[float, float]]) -> PipelineSpec:
        """A copy with fitted winsorize caps."""
        d = self.to_dict()
        d["winsor_caps"] = {k: [float(lo), float(hi)] for k, (lo, hi) in caps.items()}
        return PipelineSpec.from_dict(d)

    def to_dict(self) -> dict[str, Any]:
        return {
            "dt_seconds": int(self.dt_seconds),
            "channels": list(self.channels),
            "dedupe": self.dedupe,
            "aggregation": dict(self.aggregation),
            "valid_range": {k: [float(a), float(b)] for k, (a, b) in self.valid_range.items()},
            "winsor_caps": {k: [float(a), float(b)] for k, (a, b) in self.winsor_caps.items()},
            "feature_channels": list(self.feature_channels),
            "angular_channels": list(self.angular_channels),
            "angle_units": self.angle_units,
            "yaw_error": None
            if self.yaw_error is None
            else {
                "wind_dir": self.yaw_error.wind_dir,
                "nacelle_dir": self.yaw_error.nacelle_dir,
                "output_name": self.yaw_error.output_name,
                "wind_speed": self.yaw_error.wind_speed,
                "min_wind_speed": None
                if self.yaw_error.min_wind_speed is None
                else float(self.yaw_error.min_wind_speed),
            },
            "deltas": list(self.deltas),
            "rolling": None
            if self.rolling is None
            else {
                "channels": list(self.rolling.channels),
                "windows": [int(w) for w in self.rolling.windows],
                "stats": list(self.rolling.stats),
            },
            "flag_names": list(self.flag_names),
            "flag_rules": dict(self.flag_rules),
            "fill_value": float(self.fill_value),
            "differences": {k: list(v) for k, v in self.differences.items()},
            "feature_names": list(self.feature_names),
            "repeat_channels": list(self.repeat_channels),
            "hold_s": {k: int(v) for k, v in self.hold_s.items()},
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PipelineSpec:
        _check_keys(d, {f for f in cls.__dataclass_fields__}, "pipeline spec")
        ye = d["yaw_error"]
        if ye is not None:
            _check_keys(
                ye,
                {"wind_dir", "nacelle_dir", "output_name", "wind_speed", "min_wind_speed"},
                "pipeline spec.yaw_error",
            )
        ro = d["rolling"]
        if ro is not None:
            _check_keys(ro, {"channels", "windows", "stats"}, "pipeline spec.rolling")

        def _ranges(m: dict[str, Any], what: str) -> dict[str, tuple[float, float]]:
            out = {}
            for k, v in m.items():
                if len(v) != 2:
                    raise SpecError(f"{what}.{k}: expected [low, high], got {v!r}")
                out[k] = (float(v[0]), float(v[1]))
            return out

        return cls(
            dt_seconds=d["dt_seconds"],
            channels=_names(d, "channels"),
            dedupe=d["dedupe"],
            aggregation=_mapping(d, "aggregation"),
            valid_range=_ranges(d["valid_range"], "valid_range"),
            winsor_caps=_ranges(d["winsor_caps"], "winsor_caps"),
            feature_channels=_names(d, "feature_channels"),
            angular_channels=_names(d, "angular_channels"),
            angle_units=d["angle_units"],
            yaw_error=None
            if ye is None
            else YawErrorSpec(
                ye["wind_dir"], ye["nacelle_dir"], ye["output_name"], ye["wind_speed"], ye["min_wind_speed"]
            ),
            deltas=_names(d, "deltas"),
            rolling=None
            if ro is None
            else RollingSpec(_names(ro, "channels"), tuple(_list(ro, "windows")), _names(ro, "stats")),
            flag_names=_names(d, "flag_names"),
            flag_rules=_mapping(d, "flag_rules"),
            fill_value=float(d["fill_value"]),
            differences={k: tuple(v) for k, v in _mapping(d, "differences").items()},
            feature_names=_names(d, "feature_names"),
            repeat_channels=_names(d, "repeat_channels"),
            hold_s=_mapping(d, "hold_s"),
        )


def with_hold_default(d: Mapping[str, Any]) -> dict[str, Any]:
    """A spec dict written before `hold_s` existed (no such key) as one that holds nothing; others as they are."""
    return {**d, "hold_s": {}} if "hold_s" not in d else dict(d)
