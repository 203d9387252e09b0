"""The registries on disk: saved beside the prepared data, loaded back, and compared with a config's.

The records themselves (`FeatureRegistry`, `FlagRegistry`, `registries_from_spec`) are the runtime's
(`scada_tcn.runtime.registry`), since the bundle carries them too. `assert_registry_compatible` refuses any
config, prepared data set or checkpoint whose order or engineering differs, listing the difference.
"""

from __future__ import annotations

import json
from pathlib import Path

from scada_tcn.runtime.errors import SpecError
from scada_tcn.runtime.registry import FeatureRegistry, FlagRegistry

REGISTRY_SCHEMA_VERSION = 1


def save_registry(feature_reg: FeatureRegistry, flag_reg: FlagRegistry, folder: str | Path) -> None:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for name, reg in (("feature_registry.json", feature_reg), ("flag_registry.json", flag_reg)):
        payload = {"schema_version": REGISTRY_SCHEMA_VERSION, **reg.to_dict()}
        (folder / name).write_text(json.dumps(payload, indent=2) + "\n")


def load_registry(folder: str | Path) -> tuple[FeatureRegistry, FlagRegistry]:
    folder = Path(folder)
    out = []
    for name, cls in (("feature_registry.json", FeatureRegistry), ("flag_registry.json", FlagRegistry)):
        path = folder / name
        if not path.is_file():
            raise SpecError(f"registry {path} not found: run scada-prepare first")
        d = json.loads(path.read_text())
        if d.pop("schema_version", None) != REGISTRY_SCHEMA_VERSION:
            raise SpecError(f"{path}: unknown registry schema version (expected {REGISTRY_SCHEMA_VERSION})")
        out.append(cls.from_dict(d, str(path)))
    return out[0], out[1]


def _diff(a: tuple[str, ...], b: tuple[str, ...]) -> str:
    first = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
    return (
        f"lengths {len(a)} vs {len(b)}; first difference at position {first}: "
        f"{a[first] if first < len(a) else '<end>'!r} vs {b[first] if first < len(b) else '<end>'!r}; "
        f"only in first: {sorted(set(a) - set(b))}, only in second: {sorted(set(b) - set(a))}"
    )


def assert_registry_compatible(
    feature_reg: FeatureRegistry, flag_reg: FlagRegistry, expected: tuple[FeatureRegistry, FlagRegistry], what: str
) -> None:
    """Raise unless both registries equal `expected` exactly (names, order and engineering versions)."""
    ef, eg = expected
    if feature_reg.feature_names != ef.feature_names:
        raise SpecError(
            f"{what}: feature order differs from the config: {_diff(feature_reg.feature_names, ef.feature_names)}"
        )
    if flag_reg.flag_names != eg.flag_names:
        raise SpecError(f"{what}: flag order differs from the config: {_diff(flag_reg.flag_names, eg.flag_names)}")
    if feature_reg.engineered_version != ef.engineered_version or flag_reg.flags_version != eg.flags_version:
        raise SpecError(
            f"{what}: same names but different feature engineering or flag rules "
            f"(versions {feature_reg.engineered_version}/{flag_reg.flags_version} vs "
            f"{ef.engineered_version}/{eg.flags_version}); re-run scada-prepare with this config"
        )
