"""Feature groups: the features that carry one physical signal, hidden together by the group masks.

A feature's base is the column it is computed from (`PipelineSpec.feature_bases`): `power`, `power_rmean6`
and `power_rstd36` share the base `power`. Every base is a group of its own unless `features.mask_groups`
joins several bases into one named group, e.g. the sensors of one component (gearbox oil and gearbox bearing
temperature), or signals that are functions of each other (rotor and generator speed; wind direction, nacelle
direction and yaw error). Hiding a whole group over a window leaves the model nothing of that signal to copy,
so it must predict it from the rest of the turbine: a slow drift (a gearbox running hot for its load) then
shows as an error, where an element mask lets the model read the drifted level from the neighbouring steps.

`features.context` lists bases that are model inputs only: never hidden, never scored. The absolute wind
direction is one: it is weather, which no other channel predicts, and the yaw error carries its health signal.
"""

from __future__ import annotations

from dataclasses import dataclass

from scada_tcn.runtime.errors import ConfigError
from scada_tcn.trainer.config.derive import spec_from_config
from scada_tcn.trainer.config.schema import RootCfg

__all__ = ["FeatureGroups", "feature_groups"]


@dataclass(frozen=True)
class FeatureGroups:
    """Group names in order of first appearance, and each feature's group index (-1: a context feature)."""

    names: tuple[str, ...]
    group_of: tuple[int, ...]  # (F,)

    @property
    def context(self) -> tuple[int, ...]:
        """Indices of the context features: model inputs that are never hidden and never scored."""
        return tuple(i for i, g in enumerate(self.group_of) if g < 0)

    def members(self, feature_names: list[str]) -> dict[str, list[str]]:
        """Group name -> its feature names, in feature order (context features are in no group)."""
        return {g: [f for f, i in zip(feature_names, self.group_of) if i == k] for k, g in enumerate(self.names)}


def feature_groups(cfg: RootCfg) -> FeatureGroups:
    """The feature groups of `cfg`; raises ConfigError on an unknown base, a base in two groups or in a group and
    in `features.context`, an empty group."""
    bases = spec_from_config(cfg).feature_bases()
    known = list(dict.fromkeys(bases))
    unknown = [c for c in cfg.features.context if c not in known]
    if unknown:
        raise ConfigError(f"features.context: {unknown} are not base columns of the features; allowed {known}")
    group_of_base: dict[str, str] = {c: "context" for c in cfg.features.context}
    for name, members in cfg.features.mask_groups.items():
        if not members:
            raise ConfigError(f"features.mask_groups.{name} is empty; list the base columns it joins")
        unknown = [m for m in members if m not in known]
        if unknown:
            raise ConfigError(
                f"features.mask_groups.{name}: {unknown} are not base columns of the features; allowed {known}"
            )
        for m in members:
            if m in group_of_base:
                where = "features.context" if group_of_base[m] == "context" else repr(group_of_base[m])
                raise ConfigError(f"features.mask_groups: {m!r} is in both {where} and {name!r}")
            group_of_base[m] = name
        if name in known and name not in members:
            raise ConfigError(f"features.mask_groups.{name}: the name is a base column outside the group; rename it")
    per_feature = [None if b in cfg.features.context else group_of_base.get(b, b) for b in bases]
    names = tuple(dict.fromkeys(g for g in per_feature if g is not None))
    if len(names) < 2:
        raise ConfigError(f"the features form {len(names)} mask group besides the context; group masks need 2")
    return FeatureGroups(names=names, group_of=tuple(-1 if g is None else names.index(g) for g in per_feature))
