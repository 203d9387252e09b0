"""The project's vocabularies: every closed set of choices that a config, a spec or a bundle names.

Each is a `StrEnum` whose member names equal their values, so the trainer's OmegaConf schema validates a YAML
string against it (OmegaConf matches enum members by name), the edge parses the same strings from bundle.json,
and a member compares equal to its plain string. `parse(Enum, value, where)` turns a string into a member or
raises a ValueError that names the key and lists the allowed values; callers wrap it in their own error type.

>>> ScoreAggregation("masked_mean") == "masked_mean"
True
"""

from __future__ import annotations

from enum import StrEnum
from typing import TypeVar

__all__ = [
    "AngleUnits",
    "BinAggregation",
    "CalibrationMethod",
    "DedupeRule",
    "Direction",
    "ScoreAggregator",
    "ScoreKind",
    "SignalBaseline",
    "RollingStat",
    "ScoreAggregation",
    "ScoreMasks",
    "allowed",
    "parse",
]

E = TypeVar("E", bound=StrEnum)


class DedupeRule(StrEnum):
    """How distinct values of one channel at one timestamp are collapsed (binning)."""

    first = "first"
    last = "last"
    mean = "mean"
    max = "max"
    min = "min"


class BinAggregation(StrEnum):
    """How the samples of one channel in one bin are aggregated (angular channels: the circular mean, or `time`).
    `time`: the time-weighted mean of the values holding over the bin, each from its stamp until the next (a
    report-by-exception channel of instantaneous readings: `runtime.hold`)."""

    mean = "mean"
    max = "max"
    min = "min"
    last = "last"
    time = "time"


class RollingStat(StrEnum):
    """Causal rolling statistics a feature spec may ask for."""

    mean = "mean"
    std = "std"


class AngleUnits(StrEnum):
    deg = "deg"
    rad = "rad"


class ScoreMasks(StrEnum):
    """Scoring-pass layout: random element patterns, or one pass per feature group hidden over the window."""

    element = "element"
    group = "group"


class ScoreAggregation(StrEnum):
    """How the window's reconstruction errors become one score."""

    masked_mean = "masked_mean"
    recent_weighted = "recent_weighted"
    feature_topk = "feature_topk"


class CalibrationMethod(StrEnum):
    """How a threshold is fitted from normal scores: a percentile, or a peaks-over-threshold GPD tail."""

    percentile = "percentile"
    evt = "evt"


class ScoreKind(StrEnum):
    """What a bundle scores: the window-mean reconstruction error (one number per window, kept for comparison),
    or per-signal residuals at the newest step with a level per signal group."""

    window_mean = "window_mean"
    per_signal = "per_signal"


class Direction(StrEnum):
    """Which deviation of a feature from its prediction is a fault."""

    both = "both"
    above = "above"  # a component running hot
    below = "below"  # power lost for the wind


class ScoreAggregator(StrEnum):
    """Temporal aggregation of a group's deviation (`runtime.aggregators`)."""

    ewma = "ewma"
    cusum = "cusum"


class SignalBaseline(StrEnum):
    """What a group's deviation is taken relative to before aggregation."""

    none = "none"
    fleet = "fleet"  # minus the median of the other turbines' same group at the same step
    fleet_all = "fleet_all"  # minus the median of every turbine's at the step, its own included (`peers`)
    fleet_and_own = "fleet_and_own"  # the smaller of `fleet`'s and the turbine's own: it must depart from both


def allowed(enum: type[StrEnum]) -> list[str]:
    """The allowed values of `enum`, in definition order."""
    return [m.value for m in enum]


def parse(enum: type[E], value: object, where: str) -> E:
    """`value` as a member of `enum`; ValueError naming `where` and the allowed values otherwise."""
    if isinstance(value, str):
        try:
            return enum(value)
        except ValueError:
            pass
    raise ValueError(f"{where}: unknown {value!r}; allowed {allowed(enum)}")
