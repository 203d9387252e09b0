"""Feature and flag registries: the order of the model's feature and flag columns, and what produced them.

A registry is derived from a `PipelineSpec` (`registries_from_spec`) and recorded with every artifact (the
prepared data, each checkpoint, the bundle): names in model order, plus a short digest of the feature
engineering (or flag rules) that produced them, so two artifacts with the same names but different engineering
are told apart. `to_dict` / `from_dict` round-trip through plain JSON types and refuse unknown or missing keys.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from scada_tcn.runtime.errors import SpecError, check_keys
from scada_tcn.runtime.spec import PipelineSpec

__all__ = ["FeatureRegistry", "FlagRegistry", "registries_from_spec"]

_ENGINEERING_KEYS = (
    "feature_channels",
    "angular_channels",
    "angle_units",
    "yaw_error",
    "differences",
    "deltas",
    "rolling",
)


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


def _fields(d: Any, keys: tuple[str, ...], where: str) -> dict[str, Any]:
    return check_keys(d, keys, where, SpecError)


def _names(d: dict[str, Any], key: str, where: str) -> tuple[str, ...]:
    v = d[key]
    if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
        raise SpecError(f"{where}.{key}: expected a list of names")
    return tuple(v)


def _version(d: dict[str, Any], key: str, where: str) -> str:
    if not isinstance(d[key], str):
        raise SpecError(f"{where}.{key}: expected a string")
    return d[key]


@dataclass(frozen=True)
class FeatureRegistry:
    feature_names: tuple[str, ...]
    raw_channel_names: tuple[str, ...]
    angular_channel_names: tuple[str, ...]
    engineered_version: str  # digest of the feature-engineering part of the spec

    def to_dict(self) -> dict[str, Any]:
        return {
            "feature_names": list(self.feature_names),
            "raw_channel_names": list(self.raw_channel_names),
            "angular_channel_names": list(self.angular_channel_names),
            "engineered_version": self.engineered_version,
        }

    @classmethod
    def from_dict(cls, d: Any, where: str = "feature_registry") -> FeatureRegistry:
        d = _fields(d, ("feature_names", "raw_channel_names", "angular_channel_names", "engineered_version"), where)
        return cls(
            _names(d, "feature_names", where),
            _names(d, "raw_channel_names", where),
            _names(d, "angular_channel_names", where),
            _version(d, "engineered_version", where),
        )


@dataclass(frozen=True)
class FlagRegistry:
    flag_names: tuple[str, ...]
    flags_version: str  # digest of the flag rules

    def to_dict(self) -> dict[str, Any]:
        return {"flag_names": list(self.flag_names), "flags_version": self.flags_version}

    @classmethod
    def from_dict(cls, d: Any, where: str = "flag_registry") -> FlagRegistry:
        d = _fields(d, ("flag_names", "flags_version"), where)
        return cls(_names(d, "flag_names", where), _version(d, "flags_version", where))


def registries_from_spec(spec: PipelineSpec) -> tuple[FeatureRegistry, FlagRegistry]:
    """The registries a spec implies: its feature and flag order and the digests of what produced them."""
    d = spec.to_dict()
    return (
        FeatureRegistry(
            tuple(spec.feature_names),
            tuple(spec.feature_channels),
            tuple(spec.angular_channels),
            _digest({k: d[k] for k in _ENGINEERING_KEYS}),
        ),
        FlagRegistry(tuple(spec.flag_names), _digest(d["flag_rules"])),
    )
