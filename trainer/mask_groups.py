"""Feature groups: the features that carry one physical signal, hidden together by the group masks.

A feature's base is the column it is computed from (`PipelineSpec.feature_bases`): `power`, `power_rmean6`
and `power_rstd36` share the base `power`. Every base is a group of its own unless `features.mask_groups`
joins several bases into one named group, e.g. the sensors of one component (gearbox oil and gearbox bearing
temperature), or signals that are functions of each other (rotor and generator speed; wind direction, nacelle
direction and yaw error). Hiding a whole group over a window leaves the model nothing of that signal to copy,
so it must predict it from the rest of the turbine: a slow drift (a gearbox running hot for its load) then
shows as an error, where an element mask lets the model read the drifted level from the neighbouring steps.
"""

from __future__ import annotations

from dataclasses import dataclass

from trainer.config import RootCfg
from trainer.config_checks import ConfigError
from trainer.registry import spec_from_config

__all__ = ["FeatureGroups", "feature_groups"]


@dataclass(frozen=True)
class FeatureGroups:
    """Group names in order of first appearance, and each feature's group index."""

    names: tuple[str, ...]
    group_of: tuple[int, ...]  # (F,)

    def members(self, feature_names: list[str]) -> dict[str, list[str]]:
        """Group name -> its feature names, in feature order."""
        return {g: [f for f, i in zip(feature_names, self.group_of) if i == k] for k, g in enumerate(self.names)}


def feature_groups(cfg: RootCfg) -> FeatureGroups:
    """The feature groups of `cfg`; raises ConfigError on an unknown base, a base in two groups, an empty group."""
    bases = spec_from_config(cfg).feature_bases()
    known = list(dict.fromkeys(bases))
    group_of_base: dict[str, str] = {}
    for name, members in cfg.features.mask_groups.items():
        if not members:
            raise ConfigError(f"features.mask_groups.{name} is empty; list the base columns it joins")
        unknown = [m for m in members if m not in known]
        if unknown:
            raise ConfigError(f"features.mask_groups.{name}: {unknown} are not base columns of the features; "
                              f"allowed {known}")
        for m in members:
            if m in group_of_base:
                raise ConfigError(f"features.mask_groups: {m!r} is in both {group_of_base[m]!r} and {name!r}")
            group_of_base[m] = name
        if name in known and name not in members:
            raise ConfigError(f"features.mask_groups.{name}: the name is a base column outside the group; rename it")
    per_feature = [group_of_base.get(b, b) for b in bases]
    names = tuple(dict.fromkeys(per_feature))
    if len(names) < 2:
        raise ConfigError(f"the features form {len(names)} mask group; group masks need at least 2")
    return FeatureGroups(names=names, group_of=tuple(names.index(g) for g in per_feature))
